"""`ttc compile` and `ttc run`: artifacts, reports, IR dumps and the exit code of every failure."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ttc import zoo
from ttc.cli import main
from ttc.ir import parse_module, verify

REPORT_KEYS = {"outputs", "passed", "timings", "host_ops", "memory", "provenance"}
OUTPUT_KEYS = {"name", "shape", "dtype", "pcc", "rel_l2_err", "max_abs_err", "max_rel_err", "allclose", "passed"}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model" / "mlp.onnx"
    path.parent.mkdir()
    zoo.save(zoo.mlp(sizes=(64, 96, 10), batch=2), path)
    return path


@pytest.fixture
def artifact(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "mlp.ttc"
    assert run(["compile", str(model_path), "-o", str(out)], capsys)[0] == 0
    return out


def test_compile_writes_an_artifact_and_summarises_it(model_path: Path, capsys) -> None:
    code, out, err = run(["compile", str(model_path)], capsys)
    path = model_path.with_suffix(".ttc")  # default: beside the model
    assert code == 0 and out == ""
    assert f"wrote {path}" in err and "host ops 0" in err and "peak L1" in err
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read("manifest.json"))
        verify(parse_module(archive.read("program.mlir").decode()))
        stored = {info.filename: info.compress_type for info in archive.infolist()}
    assert names[:2] == ["manifest.json", "program.mlir"]
    assert all(stored[name] == zipfile.ZIP_STORED for name in names if name.startswith("weights/"))
    assert manifest["inputs"] == [{"name": "input", "shape": [2, 64], "dtype": "float32"}]
    assert manifest["outputs"][0]["name"] == "logits" and manifest["outputs"][0]["shape"] == [2, 10]
    assert manifest["arch"] == "e150" and manifest["options"]["math_fidelity"] == "hifi4"
    assert manifest["source_model"]["path"] == str(model_path.resolve())
    assert len(manifest["source_model"]["sha256"]) == 64 and manifest["ttc_version"]


def test_compile_twice_gives_byte_identical_artifacts(model_path: Path, tmp_path: Path, capsys) -> None:
    for name in ("a.ttc", "b.ttc"):
        assert run(["compile", str(model_path), "-o", str(tmp_path / name)], capsys)[0] == 0
    assert (tmp_path / "a.ttc").read_bytes() == (tmp_path / "b.ttc").read_bytes()


def test_compile_options_reach_the_manifest_and_the_program(model_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.ttc"
    args = ["compile", str(model_path), "-o", str(out), "--arch", "e75", "--dtype", "bfp8_b",
            "--math-fidelity", "lofi"]
    assert run(args, capsys)[0] == 0
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        text = archive.read("program.mlir").decode()
    assert manifest["arch"] == "e75" and manifest["options"]["dtype"] == "bfp8_b"
    assert 'arch = "e75"' in text and 'fidelity = "lofi"' in text and "bfp8_b" in text


def test_dump_ir_writes_every_pass_and_the_weights(model_path: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "dump"
    assert run(["compile", str(model_path), "-o", str(tmp_path / "m.ttc"), "--dump-ir", str(folder)], capsys)[0] == 0
    files = sorted(p.name for p in folder.iterdir())
    mlir = [name for name in files if name.endswith(".mlir")]
    assert mlir[0] == "00-import.mlir" and mlir[-1].endswith("-allocate.mlir")
    assert any(name.endswith("-lower-to-kernels.mlir") for name in mlir)
    assert any(name.endswith(".npz") for name in files)
    for name in mlir:
        verify(parse_module((folder / name).read_text(), name))


def test_print_ir_after_and_timing(model_path: Path, tmp_path: Path, capsys) -> None:
    code, _out, err = run(["compile", str(model_path), "-o", str(tmp_path / "m.ttc"), "--print-ir-after", "grid",
                          "--timing"], capsys)
    assert code == 0
    assert "IR Dump After Grid (grid)" in err and "(tilize) //" not in err
    assert "Execution time report" in err and "LowerToKernels" in err and "Total" in err


def test_print_ir_after_all(model_path: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run(["compile", str(model_path), "-o", str(tmp_path / "m.ttc"), "--print-ir-after-all"], capsys)
    assert code == 0
    for name in ("decompose", "tilize", "fuse", "layout", "grid", "lower-to-kernels", "allocate"):
        assert f"({name}) //-----" in err


def test_run_onnx_with_golden_and_json(model_path: Path, tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "report.json"
    code, out, err = run(["run", str(model_path), "--golden", "--json", str(report_path)], capsys)
    assert code == 0
    assert "logits" in out and "PASS" in out
    assert "emulator wall time" in err and "onnxruntime CPU time" in err and "modelled e150 device time" in err
    report = json.loads(report_path.read_text())
    assert set(report) == REPORT_KEYS and report["passed"] is True and report["host_ops"] == 0
    assert set(report["outputs"][0]) == OUTPUT_KEYS and report["outputs"][0]["pcc"] > 0.99
    timings = report["timings"]
    assert set(timings) == {"compile_s", "emulator", "onnxruntime", "device"}
    assert timings["compile_s"] > 0 and timings["emulator"]["first_run_s"] > 0
    assert timings["onnxruntime"]["first_run_s"] > 0 and timings["device"]["modelled_s"] > 0
    assert report["memory"]["dram_bytes"] > 0 and report["memory"]["l1_peak_bytes"] > 0


def test_run_artifact_uses_the_manifests_model(artifact: Path, tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "r.json"
    code, out, _ = run(["run", str(artifact), "--golden", "--json", str(report_path)], capsys)
    assert code == 0 and "PASS" in out
    assert json.loads(report_path.read_text())["timings"]["compile_s"] is None


def test_run_writes_outputs_and_reads_given_inputs(artifact: Path, tmp_path: Path, capsys) -> None:
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert run(["run", str(artifact), "--input", f"input={tmp_path / 'x.npy'}", "-o", str(tmp_path / "a.npz")],
               capsys)[0] == 0
    assert run(["run", str(artifact), "--seed", "5", "-o", str(tmp_path / "b.npz")], capsys)[0] == 0
    assert run(["run", str(artifact), "--seed", "5", "-o", str(tmp_path / "c.npz")], capsys)[0] == 0
    a, b, c = (np.load(tmp_path / f"{n}.npz")["logits"] for n in "abc")
    assert a.shape == (2, 10) and a.dtype == np.float32
    assert np.array_equal(b, c) and not np.array_equal(a, b)


def test_failed_golden_check_exits_1(artifact: Path, tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "r.json"
    code, out, _ = run(["run", str(artifact), "--golden", "--rel-l2", "0", "--json", str(report_path)], capsys)
    assert code == 1 and "FAIL" in out
    assert json.loads(report_path.read_text())["passed"] is False


def test_missing_source_model_exits_2(artifact: Path, model_path: Path, capsys) -> None:
    model_path.rename(model_path.with_name("moved.onnx"))
    code, _, err = run(["run", str(artifact), "--golden"], capsys)
    assert code == 2 and "source model" in err and "missing" in err and "--model" in err
    code, out, _ = run(["run", str(artifact), "--golden", "--model", str(model_path.with_name("moved.onnx"))],
                       capsys)
    assert code == 0 and "PASS" in out


def test_changed_source_model_exits_2(artifact: Path, model_path: Path, capsys) -> None:
    model = onnx.load(str(model_path))
    model.producer_name = "someone else"
    onnx.save(model, str(model_path))
    code, _, err = run(["run", str(artifact), "--golden"], capsys)
    assert code == 2 and ("sha256 differs" in err or "size differs" in err)


@pytest.mark.parametrize("args, message", [
    (["--input", "nope=x.npy"], "the model has no input of that name"),
    (["--input", "input"], "--input expects NAME=FILE.npy, FILE.npz or NAME=FILE.npz"),
    (["--input", "=x.npy"], "--input expects NAME=FILE.npy"),
    (["--input", "input=missing.npy"], "cannot read"),
])
def test_bad_inputs_exit_2(artifact: Path, args: list[str], message: str, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    args = [a.replace("x.npy", str(tmp_path / "x.npy")).replace("missing.npy", str(tmp_path / "missing.npy"))
            for a in args]
    code, _, err = run(["run", str(artifact), *args], capsys)
    assert code == 2 and message in err


def test_input_of_the_wrong_shape_exits_2(artifact: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 64), np.float32))
    code, _, err = run(["run", str(artifact), "--input", f"input={tmp_path / 'x.npy'}"], capsys)
    assert code == 2 and "shape [3, 64] does not match the model's [2, 64]" in err


def test_not_an_artifact_exits_2(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "bogus.ttc"
    bogus.write_text("hello")
    code, _, err = run(["run", str(bogus)], capsys)
    assert code == 2 and "not a valid .ttc artifact" in err
    code, _, err = run(["run", str(tmp_path / "absent.ttc")], capsys)
    assert code == 2 and "no such file" in err


def test_compile_errors_exit_2_and_leave_no_artifact(tmp_path: Path, capsys) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Bernoulli", ["x"], ["y"], name="odd")], "g", [x], [y])
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, _, err = run(["compile", str(path)], capsys)
    assert code == 2 and "Bernoulli" in err and "odd" in err
    assert not path.with_suffix(".ttc").exists()
    assert list(tmp_path.iterdir()) == [path]  # no half-written temporary either


def test_bad_pipeline_exits_2(model_path: Path, capsys) -> None:
    code, _, err = run(["compile", str(model_path), "--pipeline", "tilize,frobnicate"], capsys)
    assert code == 2 and "unknown pass 'frobnicate'" in err


def test_pipeline_that_stops_before_the_device_is_a_clear_error(model_path: Path, capsys) -> None:
    code, _, err = run(["compile", str(model_path), "--pipeline", "decompose,canonicalize"], capsys)
    assert code == 2 and "did not lower these ops to device programs: ttir.add" in err


# --- ttc profile ----------------------------------------------------------------------------------


def test_profile_lists_every_program_with_its_node_and_sums_the_time(artifact: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "profile.json"
    code, out, _ = run(["profile", str(artifact), "--json", str(report_path)], capsys)
    assert code == 0
    report = json.loads(report_path.read_text())
    programs = report["programs"]
    assert len(programs) == report["summary"]["programs"] >= 2 and report["device"] == "e150"
    assert report["summary"]["time_us"] == pytest.approx(sum(p["time_us"] for p in programs))
    for p in programs:
        assert p["bound"] in ("compute", "dram", "noc") and 1 <= p["cores"] <= 108 and p["nodes"]
        assert p["cycles"] == pytest.approx(max(p["compute_cycles"], p["dram_cycles"], p["noc_cycles"])
                                            + p["launch_cycles"])
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == len(programs)
    assert any("/fc2/Gemm" in row for row in rows)
    assert f"over {len(programs)} programs" in out and "by kind: matmul" in out and "by bound:" in out


def test_profile_top_lists_the_slowest_programs(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["profile", str(model_path), "--top", "1"], capsys)
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert code == 0 and len(rows) == 1 and "(the 1 slowest of" in out
    code, _, err = run(["profile", str(model_path), "--top", "0"], capsys)
    assert code == 2 and "--top needs a positive number" in err


def test_run_on_either_emulator_gives_the_same_bytes(model_path: Path, tmp_path: Path, capsys) -> None:
    outputs = {}
    for emulator, threads in (("native", "1"), ("native", "2"), ("reference", "1")):
        out = tmp_path / f"{emulator}{threads}.npz"
        code, _, _ = run(["run", str(model_path), "--emulator", emulator, "--threads", threads, "-o", str(out)], capsys)
        assert code == 0
        with np.load(out) as data:
            outputs[emulator, threads] = {name: data[name].tobytes() for name in data.files}
    assert outputs["native", "1"] == outputs["native", "2"] == outputs["reference", "1"]


def test_bad_emulator_options_are_user_errors(model_path: Path, capsys) -> None:
    code, _, err = run(["run", str(model_path), "--threads", "0"], capsys)
    assert code == 2 and "--threads needs at least 1 thread, not 0" in err
    code, _, err = run(["run", str(model_path), "--emulator", "fast"], capsys)
    assert code == 2 and "invalid choice: 'fast'" in err


def test_float16_overflow_is_a_device_fault_naming_the_node(tmp_path: Path, capsys) -> None:
    """`ttc run --softmax-precision f16` on a classifier whose logits pass 65504: the Gemm's Float16 Dst
    overflows, which is a device fault (exit 3) naming the Gemm's node, never a silent inf; the default bf16
    softmax runs it (its Dst holds bf16, whose range is float32's)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])
    prob = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2, 10])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [10, 64], np.full(640, 2000.0, np.float32))
    bias = helper.make_tensor("b", TensorProto.FLOAT, [10], np.zeros(10, np.float32))
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1, name="/classifier/fc"),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="/classifier/softmax")]
    graph = helper.make_graph(nodes, "head", [x], [prob], initializer=[weights, bias])
    path = tmp_path / "head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.save(tmp_path / "x.npy", np.ones((2, 64), np.float32))  # every logit 64 * 2000 = 128000
    given = ["--input", f"x={tmp_path / 'x.npy'}"]
    for emulator in ("native", "reference"):
        code, _, err = run(["run", str(path), "--softmax-precision", "f16", "--emulator", emulator, *given], capsys)
        assert code == 3, err
        assert "device fault: Float16 overflow: a value rounded to Float16 exceeds 65504" in err
        assert "--softmax-precision f16" in err and "compute kernel, op ttkernel.matmul_tiles" in err
        assert 'ONNX node(s) "/classifier/fc"' in err
    code, _, err = run(["run", str(path), *given], capsys)
    assert code == 0, err
