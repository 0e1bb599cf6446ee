"""`ttc run --golden --per-op`: every device program is compared with its last ONNX node, and a broken
program is named as the first node below the threshold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
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
    # the Q, K and V projections as one product (grid's sibling linears): compared with their values side by side
    assert checks[0].fused[0] == "/layer0/attn/q_proj/MatMul" and checks[0].node == "/layer0/attn/v_proj/Add"
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
    softmax = next(op for op in module.walk() if op.name == "ttmetal.enqueue_program"
                   and op.attr("kind") in ("softmax", "attention"))  # (the softmax of a fused attention)
    exp = next(op for op in softmax.walk() if op.name == "ttkernel.sfpu_tiles" and op.attr("fn") == "exp")
    exp.attributes["fn"] = "relu"  # a wrong SFPU function in one compute kernel
    broken = tmp_path / "broken.ttc"
    write_artifact(broken, CompiledModel(module, compiled.device_weights, compiled.manifest))
    report_path = tmp_path / "r.json"
    code = main(["run", str(broken), "--golden", "--per-op", "--json", str(report_path)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    # the softmax runs inside the fused attention program, named by its last node (the head merge it writes)
    assert "first node below the threshold: /layer0/attn/merge/Reshape (Reshape" in out
    report = json.loads(report_path.read_text())
    assert report["per_op"]["first_failure"] == "/layer0/attn/merge/Reshape"
    broken_program = next(c["program"] for c in report["per_op"]["checks"] if c["node"] == "/layer0/attn/merge/Reshape")
    before = [c for c in report["per_op"]["checks"] if c["program"] < broken_program]
    assert before and all(c["passed"] for c in before)


def test_first_failure_is_none_when_all_pass(encoder) -> None:
    path, compiled = encoder
    assert first_failure(check_per_op(compiled, path, zoo.random_inputs(zoo.encoder_block()))) is None


def test_per_op_needs_golden(encoder, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = encoder
    assert main(["run", str(path), "--per-op"]) == 2
    assert "--per-op compares with onnxruntime: it needs --golden" in capsys.readouterr().err


def test_convolutional_activations_are_compared_in_nchw(tmp_path: Path) -> None:
    """Conv stages live channels-last ([N*H*W, C]) on the device; per-op moves them back to the node's NCHW
    layout, so a correct CNN passes at every node (a plain reshape would scramble them: PCC near 0)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ttc.per_op import in_onnx_layout

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c2"], ["y"], name="pool")]
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (12, 3, 3, 3)), ("w2", (20, 12, 1, 1)))]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "cnn.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(onnx.shape_inference.infer_shapes(model, strict_mode=True), path)
    checks = check_per_op(ttc.compile(str(path)), path,
                          {"x": rng.standard_normal((1, 3, 9, 11)).astype(np.float32)})
    compared = [c for c in checks if c.passed is not None]
    assert {"relu1", "conv2"} <= {c.node for c in compared}
    assert all(c.passed for c in compared), [c for c in compared if not c.passed]
    nhwc = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # [N, H, W, C]
    np.testing.assert_array_equal(in_onnx_layout(nhwc.reshape(24, 5), (2, 5, 3, 4)), nhwc.transpose(0, 3, 1, 2))
    square = np.arange(16.0).reshape(4, 4)  # a transformer's [S, N] product of a [1, S, N] node, S == N
    np.testing.assert_array_equal(in_onnx_layout(square, (1, 4, 4), spatial=False), square.reshape(1, 4, 4))


def test_unnamed_nodes_are_compared_by_the_importers_names(tmp_path: Path) -> None:
    """ONNX node names are optional; the importer names an unnamed node `OpType_index`, and per-op finds
    the node by that name, so every program is still compared."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "unnamed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 48])],
                              [numpy_helper.from_array(rng.standard_normal((96, 48)).astype(np.float32), "w")])
    path = tmp_path / "unnamed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    checks = check_per_op(ttc.compile(str(path)), path, {"x": rng.standard_normal((64, 96)).astype(np.float32)})
    compared = [c for c in checks if c.passed is not None]
    assert compared and all(c.passed for c in compared)
    assert compared[-1].node == "Softmax_2" and compared[-1].value == "y"


def test_a_mean_whose_scale_is_fused_into_the_next_program_is_not_compared(tmp_path) -> None:
    """RMS norm: ReduceMean runs as a sum whose 1/N scale fuses into the program ending at Div; the sum is not
    the mean's value, so it is not comparable (it used to be reported 512x off)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["m"], keepdims=1),
             helper.make_node("Add", ["m", "eps"], ["me"]), helper.make_node("Sqrt", ["me"], ["r"]),
             helper.make_node("Div", ["x", "r"], ["y"])]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 512])],
                              [numpy_helper.from_array(np.array([-1]), "axes"),
                               numpy_helper.from_array(np.array(1e-6, np.float32), "eps")])
    path = tmp_path / "rms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    x = np.random.default_rng(0).standard_normal((1, 64, 512)).astype(np.float32)
    checks = check_per_op(ttc.compile(str(path)), path, {"x": x})
    mean = next(c for c in checks if c.op_type == "ReduceMean")
    assert mean.passed is None and "fused into program" in mean.note
    assert first_failure(checks) is None and checks[-1].node == "Div_4" and checks[-1].passed
