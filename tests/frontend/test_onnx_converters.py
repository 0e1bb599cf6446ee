"""Each converter on a one-node graph: the ttir op and attributes it produces, and its numerics
against onnxruntime (through the test oracle). Plus the converter table itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
from frontend_helpers import evaluate, info, main_ops, make_model, roundtrip, run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

from ttc.frontend import converters, import_model
from ttc.frontend.converters import find_converter, reshape_target
from ttc.frontend.importer import attribute_default
from ttc.ir import UserError

F32 = TensorProto.FLOAT


@dataclass
class Case:
    """One node `op_type` with inputs x0, x1, ... and a single output y."""

    op_type: str
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    ttir_ops: list[str]  # the ops of @main, constants included
    attrs: dict[str, Any] = field(default_factory=dict)  # ONNX attributes
    expect: dict[str, Any] = field(default_factory=dict)  # attributes of the last ttir op
    inits: dict[str, np.ndarray] = field(default_factory=dict)  # initializers named x<i>
    positive: bool = False  # feed |x| (Sqrt, Pow)
    dtype: int = F32

    def model(self) -> onnx.ModelProto:
        names = [f"x{i}" for i in range(len(self.input_shapes))]
        node = helper.make_node(self.op_type, names, ["y"],
                                name=f"/{self.op_type.lower()}/{self.op_type}", **self.attrs)
        inputs = [info(n, s, self.dtype) for n, s in zip(names, self.input_shapes, strict=True)
                  if n not in self.inits]
        return make_model([node], inputs, [info("y", self.output_shape, self.dtype)], self.inits)


def reshape_case(source: tuple[int, ...], target: list[int], result: tuple[int, ...]) -> Case:
    return Case("Reshape", [source, (len(target),)], result, ["ttir.reshape"],
                inits={"x1": np.array(target, np.int64)})


def w(*shape: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


CASES = {
    # binary ops with numpy broadcasting: the result type is the broadcast shape
    "add_same": Case("Add", [(2, 3), (2, 3)], (2, 3), ["ttir.add"]),
    "add_vector": Case("Add", [(2, 3, 4), (4,)], (2, 3, 4), ["ttir.add"]),
    "sub_both_ways": Case("Sub", [(3, 1), (1, 4)], (3, 4), ["ttir.sub"]),
    "mul_rank_grows": Case("Mul", [(3, 1), (2, 1, 4)], (2, 3, 4), ["ttir.mul"]),
    "div_scalar": Case("Div", [(2, 5), ()], (2, 5), ["ttir.div"]),
    "pow": Case("Pow", [(2, 3), (3,)], (2, 3), ["ttir.pow"], positive=True),
    "add_weight": Case("Add", [(4, 5), (5,)], (4, 5), ["ttir.constant", "ttir.add"], inits={"x1": w(5)}),
    # unary ops
    "relu": Case("Relu", [(2, 7)], (2, 7), ["ttir.relu"]),
    "sigmoid": Case("Sigmoid", [(2, 7)], (2, 7), ["ttir.sigmoid"]),
    "tanh": Case("Tanh", [(2, 7)], (2, 7), ["ttir.tanh"]),
    "exp": Case("Exp", [(2, 7)], (2, 7), ["ttir.exp"]),
    "erf": Case("Erf", [(2, 7)], (2, 7), ["ttir.erf"]),
    "sqrt": Case("Sqrt", [(2, 7)], (2, 7), ["ttir.sqrt"], positive=True),
    # matrix products
    "matmul": Case("MatMul", [(3, 5), (5, 2)], (3, 2), ["ttir.matmul"]),
    "matmul_batched": Case("MatMul", [(2, 3, 5), (5, 4)], (2, 3, 4), ["ttir.matmul"]),
    "matmul_vector": Case("MatMul", [(5,), (5, 4)], (4,), ["ttir.matmul"]),
    "gemm_defaults": Case("Gemm", [(3, 5), (5, 2)], (3, 2), ["ttir.gemm"],
                          expect={"transpose_a": False, "transpose_b": False, "alpha": 1.0, "beta": 1.0}),
    "gemm_attrs": Case("Gemm", [(5, 3), (2, 5), (1, 2)], (3, 2), ["ttir.gemm"],
                       attrs={"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
                       expect={"transpose_a": True, "transpose_b": True, "alpha": 0.5, "beta": 2.0}),
    "gemm_bias_vector": Case("Gemm", [(3, 5), (5, 2), (2,)], (3, 2), ["ttir.constant", "ttir.constant", "ttir.gemm"],
                             inits={"x1": w(5, 2), "x2": w(2)}),
    # normalisations
    "softmax_default_axis": Case("Softmax", [(2, 3, 4)], (2, 3, 4), ["ttir.softmax"], expect={"axis": 2}),
    "softmax_axis_1": Case("Softmax", [(2, 3, 4)], (2, 3, 4), ["ttir.softmax"], attrs={"axis": 1},
                           expect={"axis": 1}),
    "layer_norm": Case("LayerNormalization", [(2, 3, 8), (8,), (8,)], (2, 3, 8),
                       ["ttir.constant", "ttir.constant", "ttir.layer_norm"], inits={"x1": w(8), "x2": w(8)},
                       expect={"axis": 2, "epsilon": 1e-05}),
    "layer_norm_axis_no_bias": Case("LayerNormalization", [(2, 3, 4), (3, 4)], (2, 3, 4), ["ttir.layer_norm"],
                                    attrs={"axis": 1, "epsilon": 1e-3}, expect={"axis": 1, "epsilon": 0.001}),
    # shape ops
    "transpose_default_perm": Case("Transpose", [(2, 3, 4)], (4, 3, 2), ["ttir.transpose"],
                                   expect={"perm": (2, 1, 0)}),
    "transpose_perm": Case("Transpose", [(2, 3, 4)], (2, 4, 3), ["ttir.transpose"], attrs={"perm": [0, 2, 1]},
                           expect={"perm": (0, 2, 1)}),
    "reshape_zero_and_minus_one": reshape_case((2, 3, 4), [0, -1], (2, 12)),
    "reshape_minus_one_first": reshape_case((2, 3, 4), [-1, 4], (6, 4)),
    "reshape_explicit": reshape_case((2, 3, 4), [4, 1, 6], (4, 1, 6)),
    "flatten": Case("Flatten", [(2, 3, 4)], (6, 4), ["ttir.reshape"], attrs={"axis": 2}),
    "identity": Case("Identity", [(2, 3)], (2, 3), []),
}


@pytest.mark.parametrize("name", CASES)
def test_converter(name: str) -> None:
    case = CASES[name]
    model = case.model()
    module = import_model(model)
    roundtrip(module)
    ops = main_ops(module)
    assert [op.name for op in ops] == case.ttir_ops
    if ops and ops[-1].name != "ttir.constant":
        assert str(ops[-1].loc) == f'loc("/{case.op_type.lower()}/{case.op_type}")'
        assert {key: ops[-1].attr(key) for key in case.expect} == case.expect
        assert ops[-1].result.type.shape == case.output_shape
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
             for v in model.graph.input}
    if case.positive:
        feeds = {k: np.abs(v) + 0.1 for k, v in feeds.items()}
    np.testing.assert_allclose(evaluate(module, feeds)["y"], run_onnxruntime(model, feeds)["y"], rtol=1e-5, atol=1e-6)


CONSTANTS = {
    "value_small": ({"value": numpy_helper.from_array(np.array([[1, 2], [3, 4]], np.int32), "v")},
                    'dense<[[1, 2], [3, 4]]> : tensor<2x2xi32>'),
    "value_float": ({"value_float": 0.25}, "dense<0.25> : tensor<f32>"),
    "value_floats": ({"value_floats": [1.0, 2.5]}, "dense<[1.0, 2.5]> : tensor<2xf32>"),
    "value_int": ({"value_int": 7}, "dense<7> : tensor<i64>"),
    "value_ints": ({"value_ints": [3, -1]}, "dense<[3, -1]> : tensor<2xi64>"),
    "value_bool": ({"value": numpy_helper.from_array(np.array([True, False]), "v")},
                   "dense<[true, false]> : tensor<2xi1>"),
    "value_large": ({"value": numpy_helper.from_array(np.ones((17,), np.float16), "v")}, '#tt.weight<"y">'),
}


@pytest.mark.parametrize("name", CONSTANTS)
def test_constant_forms(name: str) -> None:
    attrs, text = CONSTANTS[name]
    node = helper.make_node("Constant", [], ["y"], name="/c/Constant", **attrs)
    expected = run_onnxruntime_constant(node)
    output = info("y", expected.shape, helper.np_dtype_to_tensor_dtype(expected.dtype))
    module = import_model(make_model([node], [], [output]))
    roundtrip(module)
    [op] = main_ops(module)
    assert str(op.attributes["value"]) == text
    assert str(op.loc) == 'loc("/c/Constant")'
    actual = evaluate(module, {})["y"]
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def run_onnxruntime_constant(node: onnx.NodeProto) -> np.ndarray:
    """What onnxruntime makes of a lone Constant node."""
    graph = helper.make_graph([node], "c", [], [helper.make_empty_tensor_value_info("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return run_onnxruntime(model, {})["y"]


def test_shape_becomes_a_constant() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["y"], name="/shape/Shape", start=1)]
    module = import_model(make_model(nodes, [info("x", [2, 3, 4])], [info("y", [2], TensorProto.INT64)]))
    [op] = main_ops(module)
    assert str(op.attributes["value"]) == "dense<[3, 4]> : tensor<2xi64>"


@pytest.mark.parametrize(("elem", "ir_type"), [
    (TensorProto.FLOAT, "f32"), (TensorProto.FLOAT16, "f16"), (TensorProto.BFLOAT16, "bf16"),
    (TensorProto.DOUBLE, "f64"), (TensorProto.INT64, "i64"), (TensorProto.INT32, "i32"),
])
def test_element_types(elem: int, ir_type: str) -> None:
    node = helper.make_node("Add", ["a", "b"], ["y"], name="/add/Add")
    model = make_model([node], [info("a", [2, 3], elem), info("b", [3], elem)], [info("y", [2, 3], elem)])
    module = import_model(model)
    roundtrip(module)
    assert str(main_ops(module)[0].result.type) == f"tensor<2x3x{ir_type}>"


def test_bool_input() -> None:
    node = helper.make_node("Identity", ["a"], ["y"], name="/id")
    model = make_model([node], [info("a", [2], TensorProto.BOOL)], [info("y", [2], TensorProto.BOOL)])
    assert str(import_model(model).function("main").type) == "(tensor<2xi1>) -> tensor<2xi1>"


def test_pow_with_an_integer_exponent_converts_the_exponent() -> None:
    node = helper.make_node("Pow", ["x", "e"], ["y"], name="/pow/Pow")
    model = make_model([node], [info("x", [3]), info("e", [3], TensorProto.INT64)], [info("y", [3])])
    cast, power = main_ops(import_model(model))
    assert cast.name == "ttir.typecast" and str(cast.result.type) == "tensor<3xf32>"
    assert power.name == "ttir.pow" and power.operands[1] is cast.result


def test_strings_are_rejected_by_their_element_type() -> None:
    """A Constant making strings for a graph output: the element type is the error, named up front."""
    node = helper.make_node("Constant", [], ["y"], name="/c/Constant", value_strings=["a"])
    with pytest.raises(UserError, match=r"^graph output: value 'y' has element type STRING, which ttc does not "
                                        r"support$"):
        import_model(make_model([node], [], [info("y", [1], TensorProto.STRING)]))


# ----------------------------------------------------------------------------------------------
# The table and its helpers


@pytest.mark.parametrize(("source", "target", "allowzero", "expected"), [
    ((2, 3, 4), [0, -1], False, (2, 12)),
    ((2, 3, 4), [-1], False, (24,)),
    ((2, 3, 4), [0, 0, -1], False, (2, 3, 4)),
    ((2, 3, 4), [4, 0, 2], False, (4, 3, 2)),
    ((0, 3), [0, -1], True, None),  # allowzero: 0 is a real zero and -1 cannot be inferred
    ((0, 3), [3, 0], True, (3, 0)),
    ((2, 3, 4), [-1, -1], False, None),
    ((2, 3, 4), [5, -1], False, None),
    ((2, 3, 4), [7], False, None),
])
def test_reshape_target(source: tuple, target: list, allowzero: bool, expected: tuple | None) -> None:
    assert reshape_target(source, target, allowzero) == expected


def test_newest_converter_not_above_the_opset_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def old(ctx: Any) -> Any: ...
    def new(ctx: Any) -> Any: ...

    monkeypatch.setitem(converters._CONVERTERS, "TestOnly", {1: old, 13: new})
    assert find_converter("TestOnly", 12) is old
    assert find_converter("TestOnly", 13) is new
    assert find_converter("TestOnly", 21) is new
    assert find_converter("Softmax", 12) is None  # opset < 13 models are converted first
    assert find_converter("Nope", 17) is None


def test_attribute_defaults_come_from_the_schema() -> None:
    assert attribute_default("Gemm", 17, "alpha") == 1.0
    assert attribute_default("Softmax", 13, "axis") == -1
    assert attribute_default("LayerNormalization", 17, "epsilon") == 1e-05
    assert attribute_default("Transpose", 17, "perm") is None  # no default: reversed dims
    assert attribute_default("Reshape", 13, "allowzero") is None  # not in that version
    assert attribute_default("Reshape", 14, "allowzero") == 0
