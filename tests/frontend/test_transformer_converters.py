"""The converters and the compile-time folding transformer exports need: each one-node graph imports to the
expected ttir ops, round-trips through text, and the test oracle (the ops' fold hooks) reproduces
onnxruntime exactly for integers and booleans, closely for floats. Constant subgraphs fold at import, with
no converter needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from frontend_helpers import evaluate, info, main_ops, make_model, roundtrip, run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

from ttc.frontend import import_model
from ttc.frontend.importer import check_supported
from ttc.ir import UserError
from ttc.ir.attributes import DenseAttr, WeightAttr

F32, I64, I32, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL
NP = {F32: np.float32, I64: np.int64, I32: np.int32, BOOL: np.bool_}


@dataclass
class Case:
    """One node with graph inputs x0.. (types given) and constant inputs (initializers named c0..)."""

    op_type: str
    inputs: list[tuple[tuple[int, ...], int]]
    ttir_ops: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    constants: list[np.ndarray] = field(default_factory=list)
    outputs: int = 1
    opset: int = 18
    constants_first: bool = False  # the node takes its constant inputs before the graph inputs

    def model(self) -> onnx.ModelProto:
        graph_inputs = [f"x{i}" for i in range(len(self.inputs))]
        constants = [f"c{i}" for i in range(len(self.constants))]
        names = constants + graph_inputs if self.constants_first else graph_inputs + constants
        outs = [f"y{i}" for i in range(self.outputs)]
        node = helper.make_node(self.op_type, names, outs, name=f"/{self.op_type.lower()}", **self.attrs)
        inputs = [info(f"x{i}", shape, elem) for i, (shape, elem) in enumerate(self.inputs)]
        inits = {f"c{i}": value for i, value in enumerate(self.constants)}
        model = make_model([node], inputs, [helper.make_empty_tensor_value_info(o) for o in outs], inits,
                           opset=self.opset)
        return onnx.shape_inference.infer_shapes(model)

    def feeds(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        out = {}
        for i, (shape, elem) in enumerate(self.inputs):
            values = rng.integers(0 if self.constants_first else -3, 4, shape) if elem != BOOL else \
                rng.integers(0, 2, shape)
            out[f"x{i}"] = values.astype(NP[elem])  # small integers: ties for the comparisons, valid table rows
        return out


def ints(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


CASES = {
    "equal": Case("Equal", [((3, 4), F32), ((4,), F32)], ["ttir.eq"]),
    "less": Case("Less", [((3, 4), F32), ((3, 1), F32)], ["ttir.lt"]),
    "greater_or_equal": Case("GreaterOrEqual", [((2, 3), F32), ((2, 3), F32)], ["ttir.ge"]),
    "and": Case("And", [((3, 1), BOOL), ((4,), BOOL)], ["ttir.logical_and"]),
    "or": Case("Or", [((3, 4), BOOL), ((3, 4), BOOL)], ["ttir.logical_or"]),
    "xor": Case("Xor", [((3, 4), BOOL), ((3, 4), BOOL)], ["ttir.logical_xor"]),
    "not": Case("Not", [((3, 4), BOOL)], ["ttir.logical_not"]),
    "isnan": Case("IsNaN", [((3, 4), F32)], ["ttir.isnan"]),
    "where": Case("Where", [((3, 1), BOOL), ((4,), F32), ((3, 4), F32)], ["ttir.where"]),
    "cast_to_bool": Case("Cast", [((3, 4), I64)], ["ttir.typecast"], {"to": BOOL}),
    "cast_to_float": Case("Cast", [((3, 4), BOOL)], ["ttir.typecast"], {"to": F32}),
    "cast_same_type": Case("Cast", [((3, 4), F32)], [], {"to": F32}),
    "neg": Case("Neg", [((3, 4), F32)], ["ttir.neg"]),
    "reciprocal": Case("Reciprocal", [((3, 4), F32)], ["ttir.reciprocal"]),
    "max": Case("Max", [((3, 4), F32), ((4,), F32), ((3, 1), F32)], ["ttir.maximum", "ttir.maximum"]),
    "split": Case("Split", [((2, 10), F32)], ["ttir.slice", "ttir.slice"], {"axis": 1}, [ints(3, 7)], outputs=2),
    "split_num_outputs": Case("Split", [((2, 7), F32)], ["ttir.slice"] * 3, {"axis": 1, "num_outputs": 3},
                              outputs=3),
    "slice": Case("Slice", [((4, 10), F32)], ["ttir.slice"], constants=[ints(1, -1), ints(100, 2), ints(0, 1),
                                                                          ints(2, -3)]),
    "concat": Case("Concat", [((2, 3), F32), ((2, 5), F32)], ["ttir.concat"], {"axis": -1}),
    "squeeze": Case("Squeeze", [((1, 3, 1, 4), F32)], ["ttir.reshape"], constants=[ints(0, 2)]),
    "unsqueeze": Case("Unsqueeze", [((3, 4), F32)], ["ttir.reshape"], constants=[ints(0, -1)]),
    "expand": Case("Expand", [((3, 1), F32)], ["ttir.broadcast"], constants=[ints(2, 1, 4)]),
    "gather_table": Case("Gather", [((2, 5), I64)], ["ttir.constant", "ttir.embedding"],
                         constants=[np.arange(40, dtype=np.float32).reshape(8, 5)], constants_first=True),
    "gather_constant_indices": Case("Gather", [((4, 6), F32)], ["ttir.constant", "ttir.gather"], {"axis": 1},
                                    [ints(5, 0, -1)]),
    "gather_nd_reshape": Case("GatherND", [((1, 6), F32)], ["ttir.reshape"],
                              constants=[np.stack([np.zeros(6, np.int64), np.arange(6)], -1).reshape(1, 1, 6, 2)]),
    "gather_elements": Case("GatherElements", [((3, 4), F32)], ["ttir.constant", "ttir.reshape", "ttir.gather"],
                            {"axis": 1}, [np.array([[3, 0], [1, 1], [2, 3]], np.int64)]),
    "compress": Case("Compress", [((3, 5), F32)], ["ttir.constant", "ttir.reshape", "ttir.gather"], {"axis": -1},
                     [np.array([True, False, True, True])]),
    "compress_flat": Case("Compress", [((3, 5), F32)], ["ttir.constant", "ttir.reshape", "ttir.gather"], {},
                          [np.array([False, True, False, False, True, True])]),
    "reduce_mean": Case("ReduceMean", [((2, 3, 4), F32)], ["ttir.reduce_mean"], {"keepdims": 0},
                        [ints(1)]),
    "reduce_sum_all": Case("ReduceSum", [((2, 3, 4), F32)], ["ttir.reduce_sum"]),
    "reduce_max_attr": Case("ReduceMax", [((2, 3, 4), F32)], ["ttir.reduce_max"], {"axes": [-1]}, opset=17),
    "gelu_tanh": Case("Gelu", [((3, 4), F32)], ["ttir.gelu"], {"approximate": "tanh"}, opset=20),
    "dropout": Case("Dropout", [((3, 4), F32)], []),
}


@pytest.mark.parametrize("name", CASES)
def test_converter(name: str) -> None:
    case = CASES[name]
    model = case.model()
    module = import_model(model)
    roundtrip(module)
    assert [op.name for op in main_ops(module) if op.name != "ttir.constant" or (op.result.users
            and op.result.users[0].name in ("ttir.embedding", "ttir.gather"))] == case.ttir_ops
    feeds = case.feeds()
    got, want = evaluate(module, feeds), run_onnxruntime(model, feeds)
    for output, expected in want.items():
        assert got[output].dtype == expected.dtype and got[output].shape == expected.shape, output
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(got[output], expected)
        else:
            np.testing.assert_allclose(got[output], expected, rtol=1e-5, atol=1e-6)


def test_gather_nd_by_computed_indices_compares_with_the_positions() -> None:
    node = helper.make_node("GatherND", ["x", "i"], ["y"], name="/ge")
    model = make_model([node], [info("x", [3, 4]), info("i", [2, 1], I64)], [info("y", [2, 4])])
    names = [op.name for op in main_ops(import_model(model))]
    assert names.count("ttir.eq") == 2 and "ttir.matmul" in names


def test_compress_by_a_computed_condition_is_rejected() -> None:
    node = helper.make_node("Compress", ["x", "c"], ["y"], name="/compress", axis=0)
    model = make_model([node], [info("x", [3, 4]), info("c", [3], BOOL)], [info("y", ["n", 4])])
    with pytest.raises(UserError, match=r"node '/compress' \(Compress\): the condition 'c' is computed at run time"):
        import_model(model)


def test_gather_nd_with_batch_dims_by_computed_indices_is_rejected() -> None:
    node = helper.make_node("GatherND", ["x", "i"], ["y"], name="/ge", batch_dims=1)
    model = make_model([node], [info("x", [2, 3, 4]), info("i", [2, 1], I64)], [info("y", [2, 4])])
    with pytest.raises(UserError, match=r"node '/ge' \(GatherND\): the indices 'i' are computed at run time"):
        import_model(model)


def test_gather_elements_by_computed_indices_compares_with_the_positions() -> None:
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], name="/ge", axis=0)
    model = make_model([node], [info("x", [3, 4]), info("i", [2, 4], I64)], [info("y", [2, 4])])
    names = [op.name for op in main_ops(import_model(model))]
    assert names.count("ttir.eq") == 2 and "ttir.reduce_sum" in names


# ----------------------------------------------------------------------------------------------
# Compile-time folding


def shape_chain_model() -> onnx.ModelProto:
    """Shape -> Gather -> Range -> Tile (no converter) -> Equal -> Where -> Add: all constant but the Add."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="/shape"),
             helper.make_node("Gather", ["shape", "one"], ["seq"], name="/seq", axis=0),
             helper.make_node("Range", ["zero", "seq", "step"], ["positions"], name="/range"),
             helper.make_node("Tile", ["positions", "reps"], ["tiled"], name="/tile"),
             helper.make_node("Equal", ["tiled", "zero"], ["first"], name="/eq"),
             helper.make_node("Where", ["first", "big", "small"], ["bias"], name="/where"),
             helper.make_node("Add", ["x", "bias"], ["y"], name="/add")]
    inits = {"one": np.int64(1), "zero": np.int64(0), "step": np.int64(1), "reps": ints(2),
             "big": np.float32(np.finfo(np.float32).min), "small": np.float32(0.5)}
    return make_model(nodes, [info("x", [2, 20, 40])], [info("y", [2, 20, 40])], inits)


def test_constant_subgraphs_fold_at_import_without_converters() -> None:
    model = shape_chain_model()
    check_supported(model)  # Tile has no converter, but its inputs are constants
    module = import_model(model)
    roundtrip(module)
    assert [op.name for op in main_ops(module)] == ["ttir.constant", "ttir.add"]
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 20, 40)).astype(np.float32)}
    np.testing.assert_array_equal(evaluate(module, feeds)["y"], run_onnxruntime(model, feeds)["y"])


def test_folded_values_are_inline_when_small_and_named_weights_when_large() -> None:
    module = import_model(shape_chain_model())
    (constant,) = [op for op in main_ops(module) if op.name == "ttir.constant"]
    assert isinstance(constant.attributes["value"], WeightAttr)  # 40 floats: a weight named after its value
    assert constant.attributes["value"].name == "bias" and str(constant.loc) == 'loc("/where")'
    node = helper.make_node("Add", ["a", "b"], ["s"], name="/small")
    mul = helper.make_node("Mul", ["x", "s"], ["y"], name="/mul")
    model = make_model([node, mul], [info("x", [2])], [info("y", [2])], {"a": np.float32([1, 2]), "b": np.float32([3, 4])})
    (small,) = [op for op in main_ops(import_model(model)) if op.name == "ttir.constant"]
    assert isinstance(small.attributes["value"], DenseAttr)


def test_a_loop_of_constants_folds_with_its_scan_outputs_stacked() -> None:
    """A Loop whose trip count, initial values and the values its body reads from the graph (`step`) are all
    constants folds like any constant node; each iteration's scan output (a matrix here) gets a new first axis."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Add", ["acc", "step"], ["next"]),
         helper.make_node("Identity", ["acc"], ["scan"])], "body",
        [info("i", [], I64), info("cond", [], BOOL), info("acc", [2, 3])],
        [info("cond_out", [], BOOL), info("next", [2, 3]), info("scan", [2, 3])])
    loop = helper.make_node("Loop", ["n", "true", "init"], ["last", "all"], name="/loop", body=body)
    add = helper.make_node("Add", ["x", "all"], ["y"], name="/add")
    inits = {"n": np.int64(4), "true": np.bool_(True), "init": np.zeros((2, 3), np.float32),
             "step": np.ones((2, 3), np.float32)}
    model = make_model([loop, add], [info("x", [4, 2, 3])], [info("y", [4, 2, 3])], inits)
    module = import_model(model)
    assert [op.name for op in main_ops(module)] == ["ttir.constant", "ttir.add"]
    feeds = {"x": np.zeros((4, 2, 3), np.float32)}
    np.testing.assert_array_equal(evaluate(module, feeds)["y"], np.arange(4, dtype=np.float32)[:, None, None]
                                  * np.ones((4, 2, 3), np.float32))


def test_unsupported_ops_on_computed_values_are_still_reported() -> None:
    nodes = [helper.make_node("Add", ["x", "bias"], ["s"], name="/add"), helper.make_node("Det", ["s"], ["y"], name="/det")]
    bias = np.zeros((1, 3, 3), np.float32)
    model = make_model(nodes, [info("x", [2, 3, 3])], [info("y", [2])], {"bias": bias})
    with pytest.raises(UserError, match=r"unsupported ONNX ops \(1 node\): Det \(node: /det\)"):
        import_model(model)


def test_string_attributes_are_text() -> None:
    node = helper.make_node("Gelu", ["x"], ["y"], name="/gelu", approximate="none")
    module = import_model(make_model([node], [info("x", [3])], [info("y", [3])], opset=20))
    assert main_ops(module)[0].attributes == {"approximate": "none"}


def test_constant_node_values_fold_through_gather_of_shape() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="/s"),
             helper.make_node("Constant", [], ["i"], name="/i", value=numpy_helper.from_array(np.int64(-1))),
             helper.make_node("Gather", ["s", "i"], ["last"], name="/g", axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="/r")]
    nodes.insert(3, helper.make_node("Concat", ["neg", "last1"], ["shape"], name="/c", axis=0))
    nodes.insert(3, helper.make_node("Unsqueeze", ["last", "zero"], ["last1"], name="/u"))
    model = make_model(nodes, [info("x", [2, 3, 4])], [info("y", [6, 4])], {"neg": ints(-1), "zero": ints(0)})
    module = import_model(model)
    assert [op.name for op in main_ops(module)] == ["ttir.reshape"]
