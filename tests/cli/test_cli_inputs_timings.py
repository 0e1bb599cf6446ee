"""`ttc run`'s inputs (.npy and .npz, checked for shape and element type, never cast), `--golden` running the
model once, `--repeat N`, timing lines that say what they measure, and the run report's provenance."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from ttc import __version__, golden, zoo
from ttc.cli import main
from ttc.compiler import CompiledModel


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def two_inputs(tmp_path: Path) -> Path:
    """z = x + y, x and y [2, 32] float32."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"], name="add")], "add",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 32]) for n in "xy"],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 32])])
    path = tmp_path / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((2, 32)).astype(np.float32) for name in "xy"}


def outputs_of(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["z"]


def test_an_npz_feeds_every_input_by_name(two_inputs: Path, tmp_path: Path, capsys) -> None:
    given = arrays()
    np.savez(tmp_path / "in.npz", **given)
    code, _, _ = run(["run", str(two_inputs), "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")],
                     capsys)
    assert code == 0
    assert np.allclose(outputs_of(tmp_path / "o.npz"), given["x"] + given["y"], rtol=2e-2, atol=2e-2)


def test_name_equals_npz_takes_the_array_of_that_name(two_inputs: Path, tmp_path: Path, capsys) -> None:
    given = arrays()
    np.savez(tmp_path / "xs.npz", x=given["x"], other=np.zeros(3))
    np.save(tmp_path / "y.npy", given["y"])
    code, _, _ = run(["run", str(two_inputs), "--input", f"x={tmp_path / 'xs.npz'}", "--input",
                      f"y={tmp_path / 'y.npy'}", "-o", str(tmp_path / "o.npz")], capsys)
    assert code == 0
    assert np.allclose(outputs_of(tmp_path / "o.npz"), given["x"] + given["y"], rtol=2e-2, atol=2e-2)


def test_given_inputs_replace_random_ones(two_inputs: Path, tmp_path: Path, capsys) -> None:
    """Only the inputs not given are random: x from a file, y from the seed, the same twice."""
    np.save(tmp_path / "x.npy", arrays()["x"])
    for name in ("a", "b"):
        assert run(["run", str(two_inputs), "--input", f"x={tmp_path / 'x.npy'}", "--seed", "4", "-o",
                    str(tmp_path / f"{name}.npz")], capsys)[0] == 0
    assert np.array_equal(outputs_of(tmp_path / "a.npz"), outputs_of(tmp_path / "b.npz"))


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "x.npy", np.zeros((2, 32), np.float64)) or ["--input", f"x={d / 'x.npy'}"],
     "--input x ({d}/x.npy): data type tensor(double) does not match the model's tensor(float); feeds are never "
     "cast"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 32), np.int64)) or ["--input", f"x={d / 'x.npy'}"],
     "data type tensor(int64) does not match the model's tensor(float)"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 31), np.float32)) or ["--input", f"x={d / 'x.npy'}"],
     "--input x ({d}/x.npy): shape [2, 31] does not match the model's [2, 32] (dimension 1 is 31, expected 32)"),
    (lambda d: np.save(d / "x.npy", np.zeros((64,), np.float32)) or ["--input", f"x={d / 'x.npy'}"],
     "rank 1 (shape [64]) does not match the model's rank 2"),
    (lambda d: np.savez(d / "in.npz", x=np.zeros((2, 32), np.float32), w=np.zeros(2)) or ["--input", f"{d / 'in.npz'}"],
     "--input w ({d}/in.npz[w]): the model has no input of that name (its inputs: 'x', 'y')"),
    (lambda d: np.savez(d / "in.npz", y=np.zeros((2, 32), np.float32)) or ["--input", f"x={d / 'in.npz'}"],
     "--input x={d}/in.npz: the archive has no array 'x' (it holds 'y')"),
    (lambda d: np.savez(d / "in.npz", x=np.zeros((2, 32), np.float32)) or
     ["--input", f"{d / 'in.npz'}", "--input", f"x={d / 'in.npz'}"],
     "--input x: given twice ({d}/in.npz[x] and {d}/in.npz[x])"),
    (lambda d: np.save(d / "x.npy", np.zeros((2, 32), np.float32)) or ["--input", f"{d / 'x.npy'}"],
     "a .npy file holds one unnamed array; say which input it is: --input NAME={d}/x.npy"),
    (lambda d: (d / "x.npy").write_text("not numpy") and ["--input", f"x={d / 'x.npy'}"],
     "cannot read {d}/x.npy: not a .npy or .npz file"),
])
def test_bad_inputs_are_user_errors_naming_the_input_and_file(two_inputs: Path, tmp_path: Path, capsys, make,
                                                              message: str) -> None:
    args = make(tmp_path)
    code, out, err = run(["run", str(two_inputs), *args], capsys)
    assert code == 2 and out == ""
    assert message.format(d=tmp_path) in err, err


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times the emulator and onnxruntime run the model."""
    counts = {"emulator": 0, "onnxruntime": 0}
    real_run = CompiledModel.run

    def emulator_run(self, *args, **kwargs):
        counts["emulator"] += 1
        return real_run(self, *args, **kwargs)

    real_session = golden._session

    class CountingSession:
        def __init__(self, model) -> None:
            self.inner = real_session(model)

        def run(self, names, feeds):
            counts["onnxruntime"] += 1
            return self.inner.run(names, feeds)

    monkeypatch.setattr(CompiledModel, "run", emulator_run)
    monkeypatch.setattr(golden, "_session", CountingSession)
    return counts


def test_golden_runs_the_model_once(two_inputs: Path, tmp_path: Path, counted: dict[str, int], capsys) -> None:
    code, out, err = run(["run", str(two_inputs), "--golden", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0 and "PASS" in out
    assert counted == {"emulator": 1, "onnxruntime": 1}
    timings = json.loads((tmp_path / "r.json").read_text())["timings"]
    assert timings["emulator"]["warm_runs"] == 0 and timings["emulator"]["warm_median_s"] is None
    assert "first run, with one-time set-up; --repeat N for warm runs" in err


def test_repeat_times_n_more_runs_of_each(two_inputs: Path, tmp_path: Path, counted: dict[str, int], capsys) -> None:
    code, _, err = run(["run", str(two_inputs), "--golden", "--repeat", "4", "--json", str(tmp_path / "r.json")],
                       capsys)
    assert code == 0 and counted == {"emulator": 5, "onnxruntime": 5}
    timings = json.loads((tmp_path / "r.json").read_text())["timings"]
    for side in ("emulator", "onnxruntime"):
        assert timings[side]["warm_runs"] == 4 and timings[side]["warm_median_s"] > 0
    assert err.count("median of 4 warm runs (first run ") == 2
    code, _, err = run(["run", str(two_inputs), "--repeat", "0"], capsys)
    assert code == 2 and "--repeat needs at least 1 run, not 0" in err


def test_timing_lines_say_what_they_measure(two_inputs: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(["run", str(two_inputs), "--golden", "--emulator", "native", "--threads", "1",
                        "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0
    lines = err[err.index("timings:"):].splitlines()
    labels = [line.split("  ")[1] for line in lines[1:]]
    assert labels == ["compile", "emulator wall time", "onnxruntime CPU time", "modelled e150 device time"]
    assert "native core, 1 thread, " in lines[2] and "wall time on this host" in lines[3]
    report = json.loads((tmp_path / "r.json").read_text())
    device = report["timings"]["device"]
    assert device["arch"] == "e150" and device["programs"] >= 1 and device["modelled_s"] > 0
    assert f"cost model: {device['programs']} programs one after another" in lines[4]
    assert "run/ort" not in err  # a ratio of host times reads like the device's speed
    code, _, err = run(["run", str(two_inputs), "--emulator", "reference", "--quiet"], capsys)
    assert code == 0 and err == ""


def test_the_run_report_records_what_produced_it(tmp_path: Path, capsys) -> None:
    model = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10), batch=2), model)
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    args = ["run", str(model), "--arch", "e75", "--seed", "7", "--threads", "1", "--input",
            f"input={tmp_path / 'x.npy'}", "--json", str(tmp_path / "r.json")]
    assert run(args, capsys)[0] == 0
    provenance = json.loads((tmp_path / "r.json").read_text())["provenance"]
    assert provenance["ttc_version"] == __version__ and provenance["arch"] == "e75" and provenance["seed"] == 7
    assert provenance["options"]["arch"] == "e75" and provenance["options"]["math_fidelity"] == "hifi4"
    assert "pipeline" in provenance["options"] and provenance["emulator"] == "native" and provenance["threads"] == 1
    assert provenance["inputs"] == {"input": str(tmp_path / "x.npy")}
    assert provenance["command_line"] == shlex.join(["ttc", *args])
