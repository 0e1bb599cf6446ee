"""`ttc profile --static`: the profile from the compiled program alone, the same table as running it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttc import zoo
from ttc.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model" / "encoder.onnx"
    path.parent.mkdir()
    zoo.save(zoo.encoder_block(seq=64, hidden=64, heads=2, ffn=128), path)
    return path


def test_static_profile_prints_the_executed_table(model_path: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The same rows, sums and JSON (every count of every program) with and without running the model; an
    artifact counts the same as the ONNX model it was compiled from."""
    reports, tables = {}, {}
    artifact = tmp_path / "encoder.ttc"
    assert run(["compile", str(model_path), "-o", str(artifact)], capsys)[0] == 0
    for name, args in (("executed", [str(model_path)]), ("static", [str(model_path), "--static"]),
                       ("reference", [str(model_path), "--emulator", "reference"]),
                       ("artifact", [str(artifact), "--static"])):
        report = tmp_path / f"{name}.json"
        code, out, _ = run(["profile", *args, "--json", str(report)], capsys)
        assert code == 0
        reports[name], tables[name] = json.loads(report.read_text()), out
    assert reports["static"] == reports["executed"] == reports["reference"] == reports["artifact"]
    assert tables["static"] == tables["executed"]
    assert len(reports["static"]["programs"]) >= 8  # (Q, K, V one product; the attention reads its heads in place)


def test_static_profile_of_a_large_matmul_is_fast_and_runs_nothing(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A 4096^3 matmul on the e75: counted from its kernels in well under a second (running it would take
    minutes), and its tile multiply-accumulates are the product's."""
    rng = np.random.default_rng(0)
    n = 4096
    weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=True)
    report = tmp_path / "mm.json"
    start = time.perf_counter()
    code, _, _ = run(["profile", str(path), "--static", "--arch", "e75", "--json", str(report)], capsys)
    elapsed = time.perf_counter() - start
    assert code == 0
    (program,) = json.loads(report.read_text())["programs"]
    macs = sum(n for key, n in program["counts"]["tiles"].items() if key.startswith("matmul."))
    assert macs * program["cores"] >= (n // 32) ** 3
    assert elapsed < 60  # compile included; the count itself is a fraction of a second
