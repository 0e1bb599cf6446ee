"""Planned = executed, static = executed and the roofline audit (tests/cost_model_checks.py) on the small test
models: examples/mlp.onnx, the zoo models of test_golden_models.py, convolutions (im2col lookups with padding,
depthwise, grouped, pools), the sharded chains of test_sharding_golden.py, on both emulators; then across
the descriptor (e75, bfp8_b weights, LoFi). The reference models are checked in tests/models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from cost_model_checks import check_model
from onnx import TensorProto, helper, numpy_helper

from ttc import zoo
from ttc.compiler import CompileOptions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mlp.onnx"


def graph_model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, ...]], init: dict[str, np.ndarray],
                outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v))
                                           for k, v in inputs.items()],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def cnn() -> onnx.ModelProto:
    """A padded 3x3 conv + relu, a max pool, a depthwise conv over 72 channels (2.25 tiles), a grouped 1x1
    conv, a global average pool and a classifier: im2col lookups with padding, row lookups, tile gathers."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="/relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="/pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="/dw", pads=[1, 1, 1, 1], group=72),
             helper.make_node("Conv", ["c2", "w3"], ["c3"], name="/grouped", group=4),
             helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="/gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="/flatten"),
             helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], name="/fc", transB=1)]
    init = {"w1": rng.standard_normal((72, 3, 3, 3)) / 5, "b1": rng.standard_normal(72) * 0.1,
            "w2": rng.standard_normal((72, 1, 3, 3)) / 3, "w3": rng.standard_normal((40, 18, 1, 1)) / 4,
            "w4": rng.standard_normal((10, 40)) / 6, "b4": rng.standard_normal(10) * 0.1}
    return graph_model(nodes, {"x": (1, 3, 30, 30)}, init, ["y"])


def conv_chain() -> onnx.ModelProto:
    """ResNet's first stage at 56 x 56: the convolutions' results are height-sharded."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="/relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="/conv2"),
             helper.make_node("Add", ["c2", "c2"], ["s"], name="/add"),
             helper.make_node("Conv", ["s", "w3", "b3"], ["y"], name="/conv3", pads=[1, 1, 1, 1])]
    init = {"w1": rng.standard_normal((32, 16, 3, 3)) / 12, "b1": rng.standard_normal(32) * 0.1,
            "w2": rng.standard_normal((64, 32, 1, 1)) / 6, "b2": rng.standard_normal(64) * 0.1,
            "w3": rng.standard_normal((32, 64, 3, 3)) / 24, "b3": rng.standard_normal(32) * 0.1}
    return graph_model(nodes, {"x": (1, 16, 56, 56)}, init, ["y"])


def matmul_chain() -> onnx.ModelProto:
    """[512 x 384] @ [384 x 512] -> relu -> softmax -> @ [512 x 96]: block-sharded products."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="/relu"),
             helper.make_node("Softmax", ["r"], ["s"], name="/softmax"),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="/fc2")]
    init = {"w1": rng.standard_normal((384, 512)) / np.sqrt(384), "w2": rng.standard_normal((512, 96)) / 16}
    return graph_model(nodes, {"x": (512, 384)}, init, ["y"])


MODELS = {
    "examples/mlp.onnx": lambda: EXAMPLE,
    "mlp_b32": lambda: zoo.mlp(batch=32),
    "encoder_seq100": lambda: zoo.encoder_block(seq=96, hidden=128, heads=4, ffn=256),
    "odd_shapes": zoo.odd_shapes,
    "elementwise_broadcast": zoo.elementwise_broadcast,
    "cnn": cnn,
    "conv_chain (sharded)": conv_chain,
    "matmul_chain (sharded)": matmul_chain,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_planned_equals_executed_on_both_emulators(name: str) -> None:
    assert check_model(MODELS[name](), emulators=("native", "reference")) >= 1


@pytest.mark.parametrize("options", [CompileOptions(arch="e75"), CompileOptions(dtype="bfp8_b", math_fidelity="lofi")],
                         ids=["e75", "bfp8-lofi"])
def test_planned_equals_executed_across_the_descriptor(options: CompileOptions) -> None:
    for make in (zoo.encoder_block, cnn):
        check_model(make(), options=options)


def test_the_grid_dump_and_the_profile_agree_on_the_example() -> None:
    """The disagreement that started it: /fc1/Gemm of examples/mlp.onnx was 7,630 cycles in the grid pass's
    tt.cost and 5,550 in `ttc profile`; now both are the target's cost of the same counts."""
    from cost_model_checks import compile_with_plans, run_profile

    plans, compiled = compile_with_plans(EXAMPLE)
    profile = run_profile(compiled, EXAMPLE, "native")
    fc1 = next(i for i, p in enumerate(profile) if "/fc1/Gemm" in p.nodes)
    assert plans[fc1].recorded_cycles == round(profile[fc1].cycles)
