"""fuse: matmul epilogues into ttir.linear, elementwise chains into ttir.eltwise; the zoo through the
ttir pipeline leaves only the ops the later passes expect."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import pytest

from ttc import zoo
from ttc.frontend import import_model
from ttc.ir import Module, Operation, TensorType, parse_module, print_module
from ttc.ir.attributes import DenseAttr
from ttc.ir.dialects.tt import LayoutAttr
from ttc.passes import PassManager

if TYPE_CHECKING:
    from conftest import IRHarness

L = "#tt.layout<tile, dram, interleaved>"
T = "tensor<2x3xf32>"
D = f"tensor<2x3xf32, {L}>"


def dev(shape: str) -> str:
    return f"tensor<{shape}xf32, {L}>"


# ----------------------------------------------------------------------------------------------
# ttir.linear


def test_mlp_layer_becomes_a_linear_with_bias_and_relu(ir: IRHarness) -> None:
    w = np.ones((20, 40), np.float32)
    out = ir.run_body("decompose,canonicalize,tilize,fuse", ir.module(
        '%arg0: tensor<2x40xf32> {ttir.name = "input"}', '(tensor<2x20xf32> {ttir.name = "hidden"})',
        '%0 = "ttir.constant"() {value = #tt.weight<"fc1.weight">} : () -> tensor<20x40xf32> loc("fc1.weight")',
        '%1 = "ttir.constant"() {value = #tt.weight<"fc1.bias">} : () -> tensor<20xf32> loc("fc1.bias")',
        '%2 = "ttir.gemm"(%arg0, %0, %1) {transpose_b = true} : (tensor<2x40xf32>, tensor<20x40xf32>, '
        'tensor<20xf32>) -> tensor<2x20xf32> loc("/fc1/Gemm")',
        '%3 = "ttir.relu"(%2) : (tensor<2x20xf32>) -> tensor<2x20xf32> loc("/relu1/Relu")',
        'func.return %3 : tensor<2x20xf32> loc(unknown)'),
        {"fc1.weight": w, "fc1.bias": np.zeros(20, np.float32)})
    assert out == (
        f'%0 = "ttir.to_layout"(%arg0) : (tensor<2x40xf32>) -> {dev("2x40")} loc("input")\n'
        f'%1 = "ttir.constant"() {{value = #tt.weight<"fc1.bias">}} : () -> {dev("20")} loc("fc1.bias")\n'
        f'%2 = "ttir.constant"() {{value = #tt.weight<"fc1.weight.transpose">}} : () -> {dev("40x20")} '
        'loc(fused["fc1.weight", "/fc1/Gemm"])\n'
        f'%3 = "ttir.linear"(%0, %2, %1) {{activation = "relu", transpose_b = false}} : '
        f'({dev("2x40")}, {dev("40x20")}, {dev("20")}) -> {dev("2x20")} loc(fused["/fc1/Gemm", "/relu1/Relu"])\n'
        f'%4 = "ttir.to_layout"(%3) : ({dev("2x20")}) -> tensor<2x20xf32> loc("hidden")\n'
        'func.return %4 : tensor<2x20xf32> loc(unknown)')


def gelu_mlp(ir: IRHarness) -> str:
    """matmul + bias, then erf-GELU as the PyTorch exporter writes it."""
    x, y = "tensor<4x8xf32>", "tensor<4x16xf32>"
    return ir.module(
        f"%arg0: {x}, %arg1: tensor<8x16xf32>, %arg2: tensor<16xf32>", y,
        '%c_sqrt2 = "ttir.constant"() {value = dense<1.4142135> : tensor<f32>} : () -> tensor<f32> loc("sqrt2")',
        '%c1 = "ttir.constant"() {value = dense<1.0> : tensor<f32>} : () -> tensor<f32> loc("one")',
        '%c_half = "ttir.constant"() {value = dense<0.5> : tensor<f32>} : () -> tensor<f32> loc("half")',
        f'%0 = "ttir.matmul"(%arg0, %arg1) : ({x}, tensor<8x16xf32>) -> {y} loc("/fc1/MatMul")',
        f'%1 = "ttir.add"(%0, %arg2) : ({y}, tensor<16xf32>) -> {y} loc("/fc1/Add")',
        f'%2 = "ttir.div"(%1, %c_sqrt2) : ({y}, tensor<f32>) -> {y} loc("/gelu/Div")',
        f'%3 = "ttir.erf"(%2) : ({y}) -> {y} loc("/gelu/Erf")',
        f'%4 = "ttir.add"(%3, %c1) : ({y}, tensor<f32>) -> {y} loc("/gelu/Add")',
        f'%5 = "ttir.mul"(%1, %4) : ({y}, {y}) -> {y} loc("/gelu/Mul")',
        f'%6 = "ttir.mul"(%5, %c_half) : ({y}, tensor<f32>) -> {y} loc("/gelu/half/Mul")',
        f'func.return %6 : {y} loc("ret")')


def test_erf_gelu_mlp_becomes_a_linear_with_gelu(ir: IRHarness) -> None:
    out = ir.run_body("decompose,canonicalize,tilize,fuse", gelu_mlp(ir))
    ir.check(out,
             f'%3 = "ttir.linear"(%0, %1, %2) {{activation = "gelu", transpose_b = false}} : '
             f'({dev("4x8")}, {dev("8x16")}, {dev("16")}) -> {dev("4x16")} loc(fused["/fc1/MatMul", "/fc1/Add", '
             '"/gelu/Div", "/gelu/Erf", "/gelu/Add", "/gelu/Mul", "/gelu/half/Mul"])',
             '%4 = "ttir.to_layout"(%3)')
    assert "ttir.eltwise" not in out


def test_gelu_without_decompose_is_a_linear_and_an_eltwise(ir: IRHarness) -> None:
    out = ir.run_body("tilize,fuse", gelu_mlp(ir))
    ir.check(out,
             '"ttir.linear"(%0, %1, %2) {activation = "none", transpose_b = false}',
             '"ttir.eltwise"(%3) ({',
             '"ttir.constant"() {value = dense<0.70710677> : tensor<f32>} : () -> tensor<f32> loc("/gelu/Div")',
             '"ttir.constant"() {value = dense<1.0> : tensor<f32>}',
             '"ttir.constant"() {value = dense<0.5> : tensor<f32>}',
             '"ttir.mul"(%arg3, %', '"ttir.erf"', '"ttir.add"', '"ttir.mul"(%arg3, %', '"ttir.mul"',
             '"ttir.yield"',
             'loc(fused["/gelu/Div", "/gelu/Erf", "/gelu/Add", "/gelu/Mul", "/gelu/half/Mul"])')


def matmul_then(ir: IRHarness, bias_type: str, *ops: str) -> str:
    return ir.module(
        f"%arg0: tensor<2x4xf32>, %arg1: tensor<4x3xf32>, %arg2: {bias_type}", T,
        f'%0 = "ttir.matmul"(%arg0, %arg1) : (tensor<2x4xf32>, tensor<4x3xf32>) -> {T} loc("mm")', *ops)


@pytest.mark.parametrize("activation", ["tanh", "hardswish"])
@pytest.mark.parametrize("bias_type", ["tensor<3xf32>", "tensor<1x3xf32>"])
def test_bias_row_on_either_side_joins_the_linear(ir: IRHarness, bias_type: str, activation: str) -> None:
    out = ir.run_body("tilize,fuse", matmul_then(
        ir, bias_type,
        f'%1 = "ttir.add"(%arg2, %0) : ({bias_type}, {T}) -> {T} loc("bias")',
        f'%2 = "ttir.{activation}"(%1) : ({T}) -> {T} loc("act")',
        f'func.return %2 : {T} loc("ret")'))
    assert out.splitlines()[3].startswith(
        f'%3 = "ttir.linear"(%0, %1, %2) {{activation = "{activation}", transpose_b = false}}')
    assert out.splitlines()[3].endswith('loc(fused["mm", "bias", "act"])')
    assert "ttir.eltwise" not in out


def test_an_activation_behind_a_reshape_joins_the_linear(ir: IRHarness) -> None:
    """GPT-2's Conv1D: a 2-D product viewed as [1, S, N], then the GELU. The activation moves into the
    linear and the reshape follows it (an elementwise op commutes with a reshape)."""
    v = "tensor<1x2x3xf32>"
    out = ir.run_body("tilize,fuse", ir.module(
        f"%arg0: tensor<2x4xf32>, %arg1: tensor<4x3xf32>, %arg2: tensor<3xf32>, %arg3: {v}", v,
        f'%0 = "ttir.matmul"(%arg0, %arg1) : (tensor<2x4xf32>, tensor<4x3xf32>) -> {T} loc("mm")',
        f'%1 = "ttir.add"(%0, %arg2) : ({T}, tensor<3xf32>) -> {T} loc("bias")',
        f'%2 = "ttir.reshape"(%1) : ({T}) -> {v} loc("view")',
        f'%3 = "ttir.add"(%arg3, %2) : ({v}, {v}) -> {v} loc("residual")',
        f'%4 = "ttir.sigmoid"(%3) : ({v}) -> {v} loc("sig")',
        f'func.return %4 : {v} loc("ret")'))
    ir.check(out, '"ttir.linear"(%0, %1, %2, %3) {activation = "none", residual = true, '
             'residual_activation = "none", transpose_b = false}', f'"ttir.reshape"(%4) : ({D}) -> {dev("1x2x3")}',
             '"ttir.eltwise"', '"ttir.sigmoid"')


def test_matmul_result_used_twice_keeps_its_epilogue_apart(ir: IRHarness) -> None:
    out = ir.run_body("tilize,fuse", matmul_then(
        ir, "tensor<3xf32>",
        f'%1 = "ttir.add"(%0, %arg2) : ({T}, tensor<3xf32>) -> {T} loc("bias")',
        f'%2 = "ttir.mul"(%1, %0) : ({T}, {T}) -> {T} loc("mul")',
        f'func.return %2 : {T} loc("ret")'))
    ir.check(out,
             '%3 = "ttir.linear"(%0, %1) {activation = "none", transpose_b = false}',
             '%4 = "ttir.eltwise"(%3, %2) ({',
             '"ttir.add"(%arg3, %arg4)', '"ttir.mul"(%', 'loc(fused["bias", "mul"])')


def test_activation_of_a_value_used_twice_stays_out_of_the_linear(ir: IRHarness) -> None:
    out = ir.run_body("tilize,fuse", matmul_then(
        ir, "tensor<3xf32>",
        f'%1 = "ttir.add"(%0, %arg2) : ({T}, tensor<3xf32>) -> {T} loc("bias")',
        f'%2 = "ttir.relu"(%1) : ({T}) -> {T} loc("relu")',
        f'func.return %1, %2 : {T}, {T} loc("ret")').replace(f"-> {T} {{", f"-> ({T}, {T}) {{"))
    ir.check(out,
             '%3 = "ttir.linear"(%0, %1, %2) {activation = "none", transpose_b = false}',
             '%4 = "ttir.eltwise"(%3) ({', '"ttir.relu"(%arg3)')


# ----------------------------------------------------------------------------------------------
# ttir.eltwise


def test_value_used_twice_is_not_fused_across(ir: IRHarness) -> None:
    out = ir.run_body("tilize,fuse", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.exp"(%arg0) : ({T}) -> {T} loc("exp")',
        f'%1 = "ttir.relu"(%0) : ({T}) -> {T} loc("relu")',
        f'%2 = "ttir.add"(%0, %1) : ({T}, {T}) -> {T} loc("add")',
        f'func.return %2 : {T} loc("ret")'))
    assert out == (
        f'%0 = "ttir.to_layout"(%arg0) : ({T}) -> {D} loc(unknown)\n'
        f'%1 = "ttir.eltwise"(%0) ({{\n'
        f'^bb0(%arg1: {D}):\n'
        f'%2 = "ttir.exp"(%arg1) : ({D}) -> {D} loc("exp")\n'
        f'"ttir.yield"(%2) : ({D}) -> () loc("exp")\n'
        f'}}) : ({D}) -> {D} loc("exp")\n'
        f'%3 = "ttir.eltwise"(%1) ({{\n'
        f'^bb0(%arg2: {D}):\n'
        f'%4 = "ttir.relu"(%arg2) : ({D}) -> {D} loc("relu")\n'
        f'%5 = "ttir.add"(%arg2, %4) : ({D}, {D}) -> {D} loc("add")\n'
        f'"ttir.yield"(%5) : ({D}) -> () loc("add")\n'
        f'}}) : ({D}) -> {D} loc(fused["relu", "add"])\n'
        f'%6 = "ttir.to_layout"(%3) : ({D}) -> {T} loc("add")\n'
        f'func.return %6 : {T} loc("ret")')


def test_broadcasting_inputs_and_splat_constants_inside_the_body(ir: IRHarness) -> None:
    out = ir.run_body("tilize,fuse", ir.module(
        f"%arg0: {T}, %arg1: tensor<3xf32>, %arg2: tensor<2x1xf32>", T,
        '%0 = "ttir.constant"() {value = dense<0.5> : tensor<f32>} : () -> tensor<f32> loc("half")',
        f'%1 = "ttir.add"(%arg0, %arg1) : ({T}, tensor<3xf32>) -> {T} loc("add")',
        f'%2 = "ttir.mul"(%1, %0) : ({T}, tensor<f32>) -> {T} loc("scale")',
        f'%3 = "ttir.sub"(%arg2, %2) : (tensor<2x1xf32>, {T}) -> {T} loc("sub")',
        f'func.return %3 : {T} loc("ret")'))
    b, c = dev("3"), dev("2x1")
    assert out.splitlines()[3:11] == [
        '%3 = "ttir.eltwise"(%0, %1, %2) ({',
        f'^bb0(%arg3: {D}, %arg4: {b}, %arg5: {c}):',
        '%4 = "ttir.constant"() {value = dense<0.5> : tensor<f32>} : () -> tensor<f32> loc("half")',
        f'%5 = "ttir.add"(%arg3, %arg4) : ({D}, {b}) -> {D} loc("add")',
        f'%6 = "ttir.mul"(%5, %4) : ({D}, tensor<f32>) -> {D} loc("scale")',
        f'%7 = "ttir.sub"(%arg5, %6) : ({c}, {D}) -> {D} loc("sub")',
        f'"ttir.yield"(%7) : ({D}) -> () loc("sub")',
        f'}}) : ({D}, {b}, {c}) -> {D} loc(fused["add", "scale", "sub"])']
    assert "dense<0.5>" not in out.splitlines()[0:3]  # the host constant left the function body


def test_one_splat_constant_used_by_two_chains_is_copied_into_both(ir: IRHarness) -> None:
    out = ir.run_body("tilize,fuse", ir.module(
        f"%arg0: {T}", T,
        '%0 = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("two")',
        f'%1 = "ttir.add"(%arg0, %0) : ({T}, tensor<f32>) -> {T} loc("m1")',  # (x * c would fold into the softmax)
        f'%2 = "ttir.softmax"(%1) {{axis = 1}} : ({T}) -> {T} loc("sm")',
        f'%3 = "ttir.mul"(%2, %0) : ({T}, tensor<f32>) -> {T} loc("m2")',
        f'func.return %3 : {T} loc("ret")'))
    assert out.count('"ttir.constant"() {value = dense<2.0> : tensor<f32>}') == 2
    ir.check(out, '"ttir.eltwise"(%0)', 'dense<2.0>', '"ttir.softmax"', '"ttir.eltwise"', 'dense<2.0>')


def test_division_in_device_ir_is_rewritten_before_fusing(ir: IRHarness) -> None:
    out = ir.run_body("fuse", ir.module(
        f"%arg0: {T}, %arg1: {T}", T,
        f'%0 = "ttir.to_layout"(%arg0) : ({T}) -> {D} loc("x")',
        f'%1 = "ttir.to_layout"(%arg1) : ({T}) -> {D} loc("y")',
        f'%2 = "ttir.div"(%0, %1) : ({D}, {D}) -> {D} loc("div")',
        f'%3 = "ttir.to_layout"(%2) : ({D}) -> {T} loc("out")',
        f'func.return %3 : {T} loc("ret")'))
    assert out.splitlines()[2:7] == [
        '%2 = "ttir.eltwise"(%1, %0) ({',  # inputs in order of first use
        f'^bb0(%arg2: {D}, %arg3: {D}):',
        f'%3 = "ttir.reciprocal"(%arg2) : ({D}) -> {D} loc("div")',
        f'%4 = "ttir.mul"(%arg3, %3) : ({D}, {D}) -> {D} loc("div")',
        f'"ttir.yield"(%4) : ({D}) -> () loc("div")']


def test_fused_location_ends_with_the_last_node(ir: IRHarness) -> None:
    out = ir.run_body("tilize,fuse", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.exp"(%arg0) : ({T}) -> {T} loc("/a/Gemm")',
        f'%1 = "ttir.neg"(%0) : ({T}) -> {T} loc("/b/Neg")',
        f'%2 = "ttir.sigmoid"(%1) : ({T}) -> {T} loc("/a/Gemm")',
        f'func.return %2 : {T} loc("ret")'))
    assert out.splitlines()[7].endswith(f'-> {D} loc(fused["/b/Neg", "/a/Gemm"])')


def test_fuse_twice_changes_nothing(ir: IRHarness) -> None:
    once = ir.run("tilize,fuse", gelu_mlp(ir))
    text = print_module(once)
    PassManager("fuse", stream=io.StringIO()).run(once)
    assert print_module(once) == text


# ----------------------------------------------------------------------------------------------
# The zoo through the ttir pipeline

DEVICE_LAYOUT = LayoutAttr("tile", "dram", "interleaved")
TOP_LEVEL_OPS = {"ttir.to_layout", "ttir.constant", "ttir.linear", "ttir.matmul", "ttir.eltwise", "ttir.softmax",
                 "ttir.layer_norm", "ttir.transpose", "ttir.reshape", "func.return"}
BODY_OPS = {"ttir.add", "ttir.sub", "ttir.mul", "ttir.maximum", "ttir.minimum", "ttir.relu", "ttir.sigmoid",
            "ttir.tanh", "ttir.exp", "ttir.erf", "ttir.sqrt", "ttir.rsqrt", "ttir.neg", "ttir.reciprocal",
            "ttir.gelu", "ttir.pow", "ttir.log"}
ACTIVATIONS = {"none", "relu", "gelu", "sigmoid", "tanh"}

MODELS = {
    # model: (ops after fuse by name, their count)
    "mlp": {"ttir.linear": 2},
    # the two residual adds join the epilogues of the attention output and the second FFN linear; the attention's
    # scale folds into the softmax
    "encoder_block": {"ttir.linear": 8, "ttir.eltwise": 0, "ttir.softmax": 1, "ttir.layer_norm": 2},
    "odd_shapes": {"ttir.linear": 2, "ttir.eltwise": 1, "ttir.softmax": 1},
    "elementwise_broadcast": {"ttir.eltwise": 1},
}


def check_body(op: Operation) -> None:
    block = op.regions[0].block
    assert [a.type for a in block.args] == [v.type for v in op.operands]
    assert block.ops[-1].name == "ttir.yield"
    for inner in block.ops[:-1]:
        if inner.name == "ttir.constant":
            value = inner.attributes["value"]
            assert isinstance(value, DenseAttr) and value.is_splat
            assert inner.result.type == TensorType((), value.type.element_type)  # a host scalar
            continue
        assert inner.name in BODY_OPS, inner.name


def check_device_contract(module: Module) -> dict[str, int]:
    """What layout, grid and lowering expect from tilize + fuse."""
    func = module.function()
    for t in (*func.type.inputs, *func.type.results):
        assert isinstance(t, TensorType) and t.encoding is None
    counts: dict[str, int] = {}
    for op in func.body.ops:
        assert op.name in TOP_LEVEL_OPS, f"{op.name} at {op.loc} is not a device op"
        counts[op.name] = counts.get(op.name, 0) + 1
        if op.name == "func.return":
            assert all(v.owner.name == "ttir.to_layout" or v in func.args for v in op.operands)
            continue
        if op.name == "ttir.to_layout":
            host_in = op.operands[0] in func.args
            assert host_in != (op.result.type.encoding is None), "to_layout only at the host<->device edges"
            if not host_in:
                assert [u.name for u in op.result.users] == ["func.return"]
            continue
        assert op.result.type.encoding == DEVICE_LAYOUT, f"{op.name} at {op.loc}: {op.result.type}"
        assert all(v.type.encoding == DEVICE_LAYOUT for v in op.operands)
        if op.name in ("ttir.softmax", "ttir.layer_norm"):
            assert op.attr("axis") % op.result.type.rank == op.result.type.rank - 1
        if op.name == "ttir.linear":
            assert op.attr("activation") in ACTIVATIONS and op.attr("transpose_b") is False
            if len(op.operands) == 3:
                n = op.result.type.shape[-1]
                assert op.operands[2].type.shape in ((n,), (1, n))
        if op.name == "ttir.eltwise":
            check_body(op)
    return counts


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("pipeline", ["decompose,canonicalize,tilize,fuse",
                                      "decompose,canonicalize,tilize,fuse,canonicalize"])
def test_zoo_models_keep_only_device_contract_ops(name: str, pipeline: str) -> None:
    module = import_model(getattr(zoo, name)())
    PassManager(pipeline, verify=True, stream=io.StringIO()).run(module)  # verifies after every pass
    counts = check_device_contract(module)
    for op_name, count in MODELS[name].items():
        assert counts.get(op_name, 0) == count, (op_name, counts)
    text = print_module(module)
    assert print_module(parse_module(text)) == text
    referenced = {op.attributes["value"].name for op in module.walk()
                  if op.name == "ttir.constant" and not isinstance(op.attributes["value"], DenseAttr)}
    assert referenced == set(module.weights)


@pytest.mark.parametrize(("residual", "attrs", "error"), [
    ("tensor<1x2x3xf32>", "residual = true", None),  # the product's tiles, a leading unit dim
    ("tensor<3x2xf32>", "residual = true", "does not hold the tiles of the result"),
    ("tensor<2x3xf32>", 'residual_activation = "relu"', "residual_activation without a residual"),
])
def test_linear_residual_verifier(residual: str, attrs: str, error: str | None) -> None:
    from ttc.ir.diagnostics import IRError
    from ttc.ir.verifier import verify

    text = (f'module {{\nfunc.func @main(%a: tensor<2x4xf32>, %b: tensor<4x3xf32>, %r: {residual}) -> tensor<2x3xf32> {{\n'
            f'  %0 = "ttir.linear"(%a, %b, %r) {{{attrs}}} : (tensor<2x4xf32>, tensor<4x3xf32>, {residual}) -> '
            'tensor<2x3xf32>\n  func.return %0 : tensor<2x3xf32>\n}\n}\n')
    if error is None:
        verify(parse_module(text))
        return
    with pytest.raises(IRError, match=error):
        verify(parse_module(text))


def test_a_residual_not_in_the_products_tiles_stays_an_eltwise() -> None:
    """[1, 4] @ [4, 1] viewed as a scalar plus a scalar (a Scan step's accumulator): the residual has no tile
    layout of the [1, 1] product, so the add is not fused into the linear (the verifier would reject it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import ttc

    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(4, 1), "w")
    shape = numpy_helper.from_array(np.array([], dtype=np.int64), "scalar")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Reshape", ["p", "scalar"], ["s"]),
         helper.make_node("Add", ["s", "acc"], ["y"])], "scan_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    compiled = ttc.compile(onnx.shape_inference.infer_shapes(model))  # fused, the verifier rejected it
    got = compiled.run({"x": np.array([[1, 2, 3, 4]], np.float32), "acc": np.array(0.5, np.float32)})["y"]
    assert float(got) == 20.5
