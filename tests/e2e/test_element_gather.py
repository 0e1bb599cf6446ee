"""The element-granular fallback of data movement (`passes/movement.py`, `RowGather.elements`): a chain that
moves neither whole tiles, nor whole rows, nor a few aligned segments of rows runs on the device as a column
stack, an untilize, an element lookup (`ttir.embedding` by a constant `.element_index` table) and a tile
transpose, instead of a compile error. Every case is exact (the input's bf16 values, moved), the same on both
emulators, golden against onnxruntime, with no host op; a tile-granular chain still takes the tile gather.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ttc
from ttc.golden import compare, run_onnxruntime


def movement_model(shape: tuple[int, ...], nodes: list[tuple[str, dict, list[int] | None]]) -> onnx.ModelProto:
    """Relu (so the movement reads a device tensor), then the movement nodes: (op, attributes, reshape target)."""
    graph_nodes = [helper.make_node("Relu", ["x"], ["v0"])]
    initializers = []
    for i, (op, attrs, target) in enumerate(nodes):
        inputs = [f"v{i}"]
        if target is not None:
            initializers.append(helper.make_tensor(f"shape{i}", TensorProto.INT64, [len(target)], target))
            inputs.append(f"shape{i}")
        graph_nodes.append(helper.make_node(op, inputs, [f"v{i + 1}"], **attrs))
    graph_nodes.append(helper.make_node("Identity", [f"v{len(nodes)}"], ["y"]))
    graph = helper.make_graph(graph_nodes, "movement", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


def element_lookups(compiled: ttc.compiler.CompiledModel) -> int:
    return sum(name.endswith(".element_index") for name in compiled.module.weights)


CASES = {
    "pooled_flatten": ((1, 37, 1, 1), [("Reshape", {}, [1, 37])]),
    "nchw_to_nhwc_odd": ((1, 11, 7, 9), [("Transpose", {"perm": [0, 2, 3, 1]}, None)]),
    "nhwc_to_nchw_odd": ((1, 6, 9, 40), [("Transpose", {"perm": [0, 3, 1, 2]}, None)]),
    "flatten_then_transpose": ((1, 70, 3, 3), [("Reshape", {}, [1, 70, 9]), ("Transpose", {"perm": [0, 2, 1]}, None)]),
    "permute_3d": ((3, 10, 7), [("Transpose", {"perm": [2, 0, 1]}, None)]),
    "wide_rows": ((1, 37, 1500), [("Reshape", {}, [1, 1500, 37])]),  # stacked through the tile transpose
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_movement_off_tiles_rows_and_segments_runs_as_an_element_gather(name: str) -> None:
    shape, nodes = CASES[name]
    model = movement_model(shape, nodes)
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    assert element_lookups(compiled) >= 1  # the element-granular gather ran
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    expected = run_onnxruntime(model, {"x": x})["y"]
    native = compiled.run({"x": x})["y"]
    reference = compiled.run({"x": x}, emulator="reference")["y"]
    assert compare("y", native, expected).passed
    np.testing.assert_array_equal(native, reference)  # bit-exact on both emulators
    exact = np.maximum(expected, 0).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(native, exact)  # a movement rounds nothing: the bf16 input, moved


def test_tile_granular_movement_keeps_the_tile_gather() -> None:
    """A permutation keeping the last two dims last (whole tiles) and a transpose of tile-aligned matrices stay
    one tile-gather program each: no element lookup."""
    model = movement_model((2, 3, 64, 32), [("Transpose", {"perm": [1, 0, 3, 2]}, None)])
    compiled = ttc.compile(model)
    assert element_lookups(compiled) == 0
    kinds = [op.attributes["kind"] for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]
    assert "embedding" not in kinds and "untilize" not in kinds
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 32)).astype(np.float32)
    assert compare("y", compiled.run({"x": x})["y"], run_onnxruntime(model, {"x": x})["y"]).passed


def test_row_granular_movement_keeps_the_row_lookup() -> None:
    """A reshape regrouping whole rows takes the row lookup, not the element fallback."""
    model = movement_model((3, 1, 70), [("Reshape", {}, [3, 70])])
    compiled = ttc.compile(model)
    assert element_lookups(compiled) == 0
    assert any(name.endswith(".row_index") for name in compiled.module.weights)


def test_a_sum_of_40_terms_fuses_into_several_eltwise_ops() -> None:
    """An unaligned concat of many steps is a sum of 40 placements (LSTM outputs): the fuse pass stops a chain
    at 16 distinct inputs (one CB each), so the sum becomes several fused ops instead of an error."""
    terms = 40
    nodes = [helper.make_node("Sum", [f"x{i}" for i in range(terms)], ["y"])]
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, (3, 40)) for i in range(terms)]
    graph = helper.make_graph(nodes, "sum40", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, (3, 40))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    fused = [op for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"
             and op.attributes["kind"] == "eltwise"]
    assert len(fused) >= 3
    rng = np.random.default_rng(5)
    feeds = {f"x{i}": rng.standard_normal((3, 40)).astype(np.float32) for i in range(terms)}
    assert compare("y", compiled.run(feeds)["y"], run_onnxruntime(model, feeds)["y"]).passed
