"""`ttc run --golden --per-op`: every device program is compared with its last ONNX node, and a broken
program is named as the first node below the threshold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ttc
from ttc import zoo
from ttc.artifact import write_artifact
from ttc.cli import main
from ttc.compiler import CompiledModel
from ttc.ir.parser import parse_module
from ttc.per_op import check_per_op, first_failure, instrument


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CompiledModel]:
    path = tmp_path_factory.mktemp("enc") / "encoder.onnx"
    zoo.save(zoo.encoder_block(), path)
    return path, ttc.compile(str(path))


def test_every_program_is_compared_at_its_last_onnx_node(encoder) -> None:
    path, compiled = encoder
    checks = check_per_op(compiled, path, zoo.random_inputs(zoo.encoder_block()))
    programs = sum(op.name == "ttmetal.enqueue_program" for op in compiled.module.walk())
    assert len(checks) == programs and all(c.passed for c in checks)
    gelu = next(c for c in checks if len(c.fused) == 7)  # fc1 matmul + bias + the erf-form GELU
    assert gelu.fused[0] == "/layer0/mlp/fc1/MatMul" and gelu.node == "/layer0/mlp/gelu/half/Mul"
    assert checks[-1].node == "/layer0/mlp_norm/LayerNormalization" and checks[-1].pcc > 0.99


def test_instrumenting_leaves_the_compiled_model_alone(encoder) -> None:
    _, compiled = encoder
    before = str(compiled.module)
    module, probes = instrument(compiled)
    assert str(compiled.module) == before
    assert len(module.function("main").return_op.operands) == 1 + len(probes)


def test_cli_names_the_first_broken_node(encoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, compiled = encoder
    module = parse_module(str(compiled.module))
    softmax = next(op for op in module.walk() if op.name == "ttmetal.enqueue_program" and op.attr("kind") == "softmax")
    exp = next(op for op in softmax.walk() if op.name == "ttkernel.sfpu_tiles" and op.attr("fn") == "exp")
    exp.attributes["fn"] = "relu"  # a wrong SFPU function in one compute kernel
    broken = tmp_path / "broken.ttc"
    write_artifact(broken, CompiledModel(module, compiled.device_weights, compiled.manifest))
    report_path = tmp_path / "r.json"
    code = main(["run", str(broken), "--golden", "--per-op", "--json", str(report_path)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert "first node below the threshold: /layer0/attn/Softmax (Softmax" in out
    report = json.loads(report_path.read_text())
    assert report["per_op"]["first_failure"] == "/layer0/attn/Softmax"
    before = [c for c in report["per_op"]["checks"] if c["program"] < 8]
    assert before and all(c["passed"] for c in before)


def test_first_failure_is_none_when_all_pass(encoder) -> None:
    path, compiled = encoder
    assert first_failure(check_per_op(compiled, path, zoo.random_inputs(zoo.encoder_block()))) is None


def test_per_op_needs_golden(encoder, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = encoder
    assert main(["run", str(path), "--per-op"]) == 2
    assert "--per-op compares with onnxruntime: it needs --golden" in capsys.readouterr().err
