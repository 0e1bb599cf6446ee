"""Importing whole graphs: the zoo models, the printed text, the function signature, constants and
weights, unsupported ops, and the numerics of the imported IR against onnxruntime."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from frontend_helpers import (
    evaluate,
    info,
    main_ops,
    make_model,
    op_names,
    roundtrip,
    run_onnxruntime,
)
from onnx import TensorProto, helper

from ttc import zoo
from ttc.frontend import import_model, supported_op_types
from ttc.ir import NameLoc, UserError, WeightAttr
from ttc.ir.dialects.tt import E75, E150

TTIR_OF = {
    "MatMul": "ttir.matmul", "Gemm": "ttir.gemm", "Add": "ttir.add", "Sub": "ttir.sub", "Mul": "ttir.mul",
    "Div": "ttir.div", "Relu": "ttir.relu", "Sigmoid": "ttir.sigmoid", "Tanh": "ttir.tanh", "Exp": "ttir.exp",
    "Erf": "ttir.erf", "Sqrt": "ttir.sqrt", "Pow": "ttir.pow", "Softmax": "ttir.softmax",
    "LayerNormalization": "ttir.layer_norm", "Transpose": "ttir.transpose", "Reshape": "ttir.reshape",
}  # fmt: skip

ZOO: dict[str, tuple[Callable[[], onnx.ModelProto], dict[str, int]]] = {
    "mlp": (zoo.mlp, {"ttir.constant": 4, "ttir.gemm": 2, "ttir.relu": 1}),
    "encoder_block": (zoo.encoder_block, {
        "ttir.constant": 20, "ttir.matmul": 8, "ttir.add": 9, "ttir.reshape": 4, "ttir.transpose": 4,
        "ttir.mul": 3, "ttir.softmax": 1, "ttir.layer_norm": 2, "ttir.div": 1, "ttir.erf": 1,
    }),
    "odd_shapes": (zoo.odd_shapes, {
        "ttir.constant": 6, "ttir.matmul": 1, "ttir.add": 1, "ttir.sigmoid": 1, "ttir.mul": 1, "ttir.sub": 1,
        "ttir.softmax": 1, "ttir.gemm": 1, "ttir.tanh": 1,
    }),
    "elementwise_broadcast": (zoo.elementwise_broadcast, {
        "ttir.constant": 4, "ttir.add": 2, "ttir.sub": 1, "ttir.mul": 2, "ttir.div": 1, "ttir.relu": 1,
        "ttir.sqrt": 1, "ttir.pow": 1, "ttir.exp": 1,
    }),
}


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_imports_verifies_and_round_trips(name: str) -> None:
    build, counts = ZOO[name]
    model = build()
    module = import_model(model)
    roundtrip(module)
    assert Counter(op_names(module)) == counts
    # one op per converted node, in node order, located at the node
    converted = [n for n in model.graph.node if n.op_type not in ("Constant", "Identity")]
    computed = [op for op in main_ops(module) if op.name != "ttir.constant"]
    assert [op.loc for op in computed] == [NameLoc(n.name) for n in converted]
    assert [op.name for op in computed] == [TTIR_OF[n.op_type] for n in converted]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_weights_are_the_large_initializers(name: str) -> None:
    model = ZOO[name][0]()
    module = import_model(model)
    # Learned parameters (float initializers of more than one element) are always weights.
    params = {t.name for t in model.graph.initializer
              if np.prod(t.dims) > 1 and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert set(module.weights) == params
    for op in main_ops(module):
        if op.name == "ttir.constant" and isinstance(op.attributes["value"], WeightAttr):
            assert module.weights[op.attributes["value"].name].shape == op.result.type.shape


@pytest.mark.parametrize("name", ["mlp", "odd_shapes", "elementwise_broadcast", "encoder_block"])
def test_zoo_numerics_match_onnxruntime(name: str) -> None:
    model = ZOO[name][0]()
    module = import_model(model)
    feeds = zoo.random_inputs(model)
    if name == "elementwise_broadcast":
        feeds = {k: np.abs(v) for k, v in feeds.items()}
    expected = run_onnxruntime(model, feeds)
    actual = evaluate(module, feeds)
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-4, atol=1e-5)


def test_small_mlp_text() -> None:
    module = import_model(zoo.mlp(batch=2, sizes=(20, 8, 3)))
    alias, *lines = roundtrip(module).splitlines()
    assert alias.startswith('#device = #tt.device<arch = "e150", worker_grid = 12x10,')
    assert lines[0] == 'module attributes {tt.device = #device} {'
    assert lines[1] == ('  func.func @main(%arg0: tensor<2x20xf32> {ttir.name = "input"}) -> '
                        '(tensor<2x3xf32> {ttir.name = "logits"}) {')
    assert lines[2] == '    %0 = "ttir.constant"() {value = #tt.weight<"fc1.weight">} : () -> tensor<8x20xf32> loc("fc1.weight")'
    assert lines[3] == '    %1 = "ttir.constant"() {value = #tt.weight<"fc1.bias">} : () -> tensor<8xf32> loc("fc1.bias")'
    assert lines[4] == '    %2 = "ttir.constant"() {value = #tt.weight<"fc2.weight">} : () -> tensor<3x8xf32> loc("fc2.weight")'
    assert lines[5].startswith('    %3 = "ttir.constant"() {value = #tt.weight<"fc2.bias">}')
    assert lines[6] == ('    %4 = "ttir.gemm"(%arg0, %0, %1) {alpha = 1.0, beta = 1.0, transpose_a = false, '
                        'transpose_b = true} : (tensor<2x20xf32>, tensor<8x20xf32>, tensor<8xf32>) -> '
                        'tensor<2x8xf32> loc("/fc1/Gemm")')
    assert lines[7] == '    %5 = "ttir.relu"(%4) : (tensor<2x8xf32>) -> tensor<2x8xf32> loc("/relu1/Relu")'
    assert lines[8].startswith('    %6 = "ttir.gemm"(%5, %2, %3) {')
    assert lines[8].endswith('-> tensor<2x3xf32> loc("/fc2/Gemm")')
    assert lines[9].startswith("    func.return %6 : tensor<2x3xf32>")
    assert lines[10:] == ["  }", "}"]


@pytest.mark.parametrize(("arch", "device"), [("e150", E150), ("e75", E75)])
def test_device_attribute(arch: str, device: object) -> None:
    module = import_model(zoo.mlp(sizes=(4, 2)), arch=arch)
    assert module.attributes["tt.device"] == device


def test_unknown_arch() -> None:
    with pytest.raises(UserError, match=r"unknown arch 'n300' \(known: e150, e75\)"):
        import_model(zoo.mlp(sizes=(4, 2)), arch="n300")


# ----------------------------------------------------------------------------------------------
# Signature


def test_arguments_and_results_follow_the_graph() -> None:
    nodes = [helper.make_node("Add", ["b", "w"], ["sum"], name="/add/Add"),
             helper.make_node("Relu", ["a"], ["r"], name="/relu/Relu")]
    model = make_model(nodes, [info("b", [2, 3]), info("w", [2, 3]), info("a", [4])],
                       [info("r", [4]), info("sum", [2, 3])], {"w": np.ones((2, 3), np.float32)})
    func = import_model(model).function("main")
    assert [func.arg_attrs(i) for i in range(len(func.args))] == [{"ttir.name": "b"}, {"ttir.name": "a"}]
    assert [func.res_attrs(i) for i in range(2)] == [{"ttir.name": "r"}, {"ttir.name": "sum"}]
    assert [str(t) for t in func.type.inputs] == ["tensor<2x3xf32>", "tensor<4xf32>"]


def test_outputs_that_are_inputs_or_constants() -> None:
    nodes = [helper.make_node("Constant", [], ["c"], name="/c/Constant", value_ints=[1, 2, 3])]
    model = make_model(nodes, [info("x", [2])], [info("x", [2]), info("w", [2, 2]), info("c", [3], TensorProto.INT64)],
                       {"w": np.eye(2, dtype=np.float32)})
    module = import_model(model)
    roundtrip(module)
    func = module.function("main")
    returned = func.return_op.operands
    assert returned[0] is func.args[0]
    assert [op.loc for op in main_ops(module)] == [NameLoc("w"), NameLoc("/c/Constant")]
    assert [str(v.type) for v in returned] == ["tensor<2xf32>", "tensor<2x2xf32>", "tensor<3xi64>"]
    feeds = {"x": np.array([1.0, -1.0], np.float32)}
    for key, value in run_onnxruntime(model, feeds).items():
        np.testing.assert_array_equal(evaluate(module, feeds)[key], value)


def test_graph_input_that_is_also_an_initializer_is_a_weight() -> None:
    node = helper.make_node("Add", ["x", "w"], ["y"], name="/add/Add")
    model = make_model([node], [info("x", [4]), info("w", [4])], [info("y", [4])], {"w": np.ones(4, np.float32)})
    func = import_model(model).function("main")
    assert len(func.args) == 1
    assert func.arg_attrs(0) == {"ttir.name": "x"}


# ----------------------------------------------------------------------------------------------
# Constants


def test_constants_once_at_the_top_in_graph_order_only_if_used() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["m"], name="/mul/Mul"),
        helper.make_node("Constant", [], ["k"], name="/k/Constant", value_float=2.0),
        helper.make_node("Constant", [], ["unused_c"], name="/unused/Constant", value_float=3.0),
        helper.make_node("Add", ["m", "k"], ["a"], name="/add/Add"),
        helper.make_node("Add", ["a", "small"], ["b"], name="/add2/Add"),
        helper.make_node("Mul", ["b", "big"], ["y"], name="/mul2/Mul"),
    ]
    inits = {"unused": np.ones(40, np.float32), "small": np.full(20, 0.5, np.float32)[:4],
             "big": np.arange(20, dtype=np.float32).reshape(5, 4)}
    model = make_model(nodes, [info("x", [5, 4])], [info("y", [5, 4])], inits)
    module = import_model(model)
    roundtrip(module)
    ops = main_ops(module)
    assert [(op.name, op.loc) for op in ops[:3]] == [
        ("ttir.constant", NameLoc("small")), ("ttir.constant", NameLoc("big")),
        ("ttir.constant", NameLoc("/k/Constant")),
    ]
    assert op_names(module).count("ttir.constant") == 3
    assert module.weights.keys() == {"small", "big"}
    assert ops[1].attributes["value"] == WeightAttr("big")
    assert ops[0].attributes["value"] == WeightAttr("small")
    assert str(ops[2].attributes["value"]) == "dense<2.0> : tensor<f32>"


def test_large_constant_node_is_a_weight_named_after_its_output() -> None:
    value = onnx.numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(4, 8), "t")
    nodes = [helper.make_node("Constant", [], ["table"], name="/t/Constant", value=value),
             helper.make_node("Add", ["x", "table"], ["y"], name="/add/Add")]
    module = import_model(make_model(nodes, [info("x", [4, 8])], [info("y", [4, 8])]))
    assert main_ops(module)[0].attributes["value"] == WeightAttr("table")
    np.testing.assert_array_equal(module.weights["table"], np.arange(32, dtype=np.float32).reshape(4, 8))


def test_unnamed_nodes_are_located_by_op_type_and_index() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Tanh", ["r"], ["y"])]
    module = import_model(make_model(nodes, [info("x", [3])], [info("y", [3])]))
    assert [op.loc for op in main_ops(module)] == [NameLoc("Relu_0"), NameLoc("Tanh_1")]


# ----------------------------------------------------------------------------------------------
# Errors


def test_unsupported_ops_are_reported_together() -> None:
    nodes = [
        helper.make_node("ConvInteger", ["x", "w"], ["c1"], name="/conv1/Conv"),
        helper.make_node("Relu", ["c1"], ["r"], name="/relu/Relu"),
        helper.make_node("ConvInteger", ["r", "w"], ["c2"], name="/conv2/Conv"),
        helper.make_node("Foo", ["c2"], ["y"], name="n7"),
    ]
    model = make_model(nodes, [info("x", [1, 1, 8, 8])], [info("y", [1, 1, 4, 4])],
                       {"w": np.ones((1, 1, 3, 3), np.float32)})
    message = "unsupported ONNX ops (3 nodes): ConvInteger (nodes: /conv1/Conv, /conv2/Conv), Foo (node: n7)"
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        import_model(model)


def test_ops_of_other_domains_are_unsupported() -> None:
    nodes = [helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="/fused", domain="com.microsoft"),
             helper.make_node("Relu", ["y"], ["z"])]
    model = make_model(nodes, [info("x", [2, 2])], [info("z", [2, 2])])
    with pytest.raises(UserError, match=r"^unsupported ONNX ops \(1 node\): com\.microsoft\.FusedMatMul "
                                        r"\(node: /fused\)$"):
        import_model(model)


def test_supported_op_types_cover_the_zoo() -> None:
    assert set(zoo.ALLOWED_OPS) <= set(supported_op_types())


def test_layer_norm_extra_outputs_select_the_composition() -> None:
    def model(outputs: list[str]) -> onnx.ModelProto:
        node = helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean", "inv_std"], name="/ln/LN")
        shapes = {"y": [2, 4], "mean": [2, 1], "inv_std": [2, 1]}
        return make_model([node], [info("x", [2, 4])], [info(o, shapes[o]) for o in outputs],
                          {"s": np.ones(4, np.float32)})

    assert op_names(import_model(model(["y"]))) == ["ttir.constant", "ttir.layer_norm"]
    composed = op_names(import_model(model(["y", "mean"])))
    assert "ttir.layer_norm" not in composed and {"ttir.reduce_sum", "ttir.rsqrt"} <= set(composed)


def test_reshape_needs_a_static_or_constant_shape() -> None:
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="/r/Reshape")
    model = make_model([node], [info("x", [2, 6]), info("shape", [2], TensorProto.INT64)], [info("y", [None, None])])
    with pytest.raises(UserError, match=r"^node '/r/Reshape' \(Reshape\): output 'y' has no static shape after shape "
                                        r"inference and the shape input 'shape' is not a constant$"):
        import_model(model)


def test_an_unsupported_element_type_is_reported_before_unsupported_ops() -> None:
    """A 4-bit output is the more basic limit: no converter could produce it."""
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="/q")
    model = make_model([node], [info("x", [2], TensorProto.FLOAT), info("s", [], TensorProto.FLOAT),
                                info("z", [], TensorProto.INT4)], [info("y", [2], TensorProto.INT4)])
    with pytest.raises(UserError, match=r"^graph input: value 'z' has element type INT4, which ttc does not support$"):
        import_model(model)


def test_unsupported_element_type() -> None:
    node = helper.make_node("Identity", ["x"], ["y"], name="/id")
    model = make_model([node], [info("x", [2], TensorProto.COMPLEX64)], [info("y", [2], TensorProto.COMPLEX64)])
    with pytest.raises(UserError, match=r"^graph input: value 'x' has element type COMPLEX64, which ttc does not support$"):
        import_model(model)
