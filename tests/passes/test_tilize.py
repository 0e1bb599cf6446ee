"""tilize: host<->device edges, device encodings, constants, materialised transposes, axis handling."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from ttc.ir import UserError, parse_module, print_module
from ttc.ir.diagnostics import IRError

if TYPE_CHECKING:
    from conftest import IRHarness

L = "#tt.layout<tile, dram, interleaved>"
T = "tensor<2x3xf32>"
D = f"tensor<2x3xf32, {L}>"


def dev(shape: str) -> str:
    return f"tensor<{shape}xf32, {L}>"


# ----------------------------------------------------------------------------------------------
# Edges and encodings


def test_edges_and_encodings(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f'%arg0: {T} {{ttir.name = "x"}}, %arg1: {T}', f'({T} {{ttir.name = "out"}}, {T}, {T})',
        f'%0 = "ttir.relu"(%arg0) : ({T}) -> {T} loc("relu")',
        f'%1 = "ttir.add"(%0, %arg1) : ({T}, {T}) -> {T} loc("add")',
        f'func.return %1, %1, %arg1 : {T}, {T}, {T} loc("ret")'))
    assert out == (
        f'%0 = "ttir.to_layout"(%arg0) : ({T}) -> {D} loc("x")\n'
        f'%1 = "ttir.to_layout"(%arg1) : ({T}) -> {D} loc(unknown)\n'
        f'%2 = "ttir.relu"(%0) : ({D}) -> {D} loc("relu")\n'
        f'%3 = "ttir.add"(%2, %1) : ({D}, {D}) -> {D} loc("add")\n'
        f'%4 = "ttir.to_layout"(%3) : ({D}) -> {T} loc("out")\n'
        f'func.return %4, %4, %arg1 : {T}, {T}, {T} loc("ret")')


def test_a_transposed_input_is_permuted_by_the_host_as_it_is_written(ir: IRHarness) -> None:
    """transpose(arg) becomes the argument's edge, to_layout {perm}: no device op moves the input. The
    argument's other uses still get a plain edge."""
    x, t = "tensor<1x3x4x5xf32>", "tensor<1x4x5x3xf32>"
    out = ir.run_body("tilize", ir.module(
        f'%arg0: {x} {{ttir.name = "image"}}', f"({t}, {x})",
        f'%0 = "ttir.transpose"(%arg0) {{perm = [0, 2, 3, 1]}} : ({x}) -> {t} loc("to_nhwc")',
        f'%1 = "ttir.relu"(%0) : ({t}) -> {t} loc("relu")',
        f'%2 = "ttir.exp"(%arg0) : ({x}) -> {x} loc("exp")',
        f'func.return %1, %2 : {t}, {x} loc("ret")'))
    edges = sorted(line.split(" = ", 1)[1] for line in out.splitlines()[:2])
    assert edges == [
        f'"ttir.to_layout"(%arg0) : ({x}) -> {dev("1x3x4x5")} loc("image")',
        f'"ttir.to_layout"(%arg0) {{perm = [0, 2, 3, 1]}} : ({x}) -> {dev("1x4x5x3")} loc("to_nhwc")']
    assert "ttir.transpose" not in out


@pytest.mark.parametrize(("perm", "result", "message"), [
    ("[0, 2, 1]", "tensor<2x3x4xf32, #tt.layout<tile, dram, interleaved>>", "gives 2x4x3, not 2x3x4"),
    ("[0, 0, 1]", "tensor<2x2x3xf32, #tt.layout<tile, dram, interleaved>>", "is not a permutation of 3 dims"),
])
def test_to_layout_perm_is_checked(perm: str, result: str, message: str) -> None:
    text = (f'module {{\n  func.func @main(%arg0: tensor<2x3x4xf32>) -> ({result}) {{\n'
            f'    %0 = "ttir.to_layout"(%arg0) {{perm = {perm}}} : (tensor<2x3x4xf32>) -> {result} loc("x")\n'
            f'    func.return %0 : {result} loc("r")\n  }}\n}}\n')
    from ttc.ir.verifier import verify
    with pytest.raises(IRError, match=message):
        verify(parse_module(text))


def test_output_round_trips_through_text(ir: IRHarness) -> None:
    module = ir.run("tilize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.sigmoid"(%arg0) : ({T}) -> {T} loc("s")',
        f'func.return %0 : {T} loc("ret")'))
    text = print_module(module)
    assert print_module(parse_module(text)) == text


def test_constants_become_weights_or_host_scalars(ir: IRHarness) -> None:
    module = ir.run("tilize", ir.module(
        f"%arg0: {T}", T,
        '%0 = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("two")',
        '%1 = "ttir.constant"() {value = dense<[1.0, 2.0, 3.0]> : tensor<3xf32>} : () -> tensor<3xf32> '
        'loc("/row/Constant")',
        f'%2 = "ttir.constant"() {{value = dense<0.5> : {T}}} : () -> {T} loc("half")',
        '%3 = "ttir.constant"() {value = dense<1.0> : tensor<2x1x3xf32>} : () -> tensor<2x1x3xf32> loc("ones")',
        f'%4 = "ttir.mul"(%arg0, %0) : ({T}, tensor<f32>) -> {T} loc("mul")',
        f'%5 = "ttir.add"(%4, %1) : ({T}, tensor<3xf32>) -> {T} loc("add")',
        f'%6 = "ttir.sub"(%5, %2) : ({T}, {T}) -> {T} loc("sub")',
        f'%7 = "ttir.add"(%6, %3) : ({T}, tensor<2x1x3xf32>) -> tensor<2x2x3xf32> loc("grow")',
        '%8 = "ttir.softmax"(%3) {axis = 2} : (tensor<2x1x3xf32>) -> tensor<2x1x3xf32> loc("sm")',
        '%9 = "ttir.add"(%7, %8) : (tensor<2x2x3xf32>, tensor<2x1x3xf32>) -> tensor<2x2x3xf32> loc("sum")',
        'func.return %9 : tensor<2x2x3xf32> loc("ret")').replace(f"-> {T} {{", "-> tensor<2x2x3xf32> {"))
    ir.check(ir.body(module),
             # a scalar used by elementwise ops stays a host scalar
             '%1 = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("two")',
             # a small non-splat constant becomes a weight named after its ONNX node
             f'%2 = "ttir.constant"() {{value = #tt.weight<"row.Constant">}} : () -> {dev("3")} loc("/row/Constant")',
             # a full-shape splat becomes a host scalar when the other operand has the result's shape
             '%3 = "ttir.constant"() {value = dense<0.5> : tensor<f32>} : () -> tensor<f32> loc("half")',
             # a splat that decides the result shape, or feeds a non-elementwise op, is a weight
             f'%4 = "ttir.constant"() {{value = #tt.weight<"ones">}} : () -> {dev("2x1x3")} loc("ones")',
             f'%5 = "ttir.mul"(%0, %1) : ({D}, tensor<f32>) -> {D} loc("mul")',
             f'%6 = "ttir.add"(%5, %2) : ({D}, {dev("3")}) -> {D} loc("add")',
             f'%7 = "ttir.sub"(%6, %3) : ({D}, tensor<f32>) -> {D} loc("sub")',
             f'%8 = "ttir.add"(%7, %4) : ({D}, {dev("2x1x3")}) -> {dev("2x2x3")} loc("grow")',
             '"ttir.softmax"(%4) {axis = 2}')
    assert sorted(module.weights) == ["ones", "row.Constant"]
    np.testing.assert_array_equal(module.weights["row.Constant"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(module.weights["ones"], np.ones((2, 1, 3), np.float32))


# ----------------------------------------------------------------------------------------------
# Matmul transposes


def test_transposed_weight_is_folded_into_a_new_weight(ir: IRHarness) -> None:
    w = np.arange(20, dtype=np.float32).reshape(5, 4)  # above the 16 elements that fold inline
    y = "tensor<2x5xf32>"
    module = ir.run("tilize", ir.module(
        "%arg0: tensor<2x4xf32>", y,
        '%0 = "ttir.constant"() {value = #tt.weight<"w">} : () -> tensor<5x4xf32> loc("w")',
        '%1 = "ttir.matmul"(%arg0, %0) {transpose_a = false, transpose_b = true} : '
        f'(tensor<2x4xf32>, tensor<5x4xf32>) -> {y} loc("/fc/Gemm")',
        f'func.return %1 : {y} loc("ret")'), {"w": w})
    assert ir.body(module) == (
        f'%0 = "ttir.to_layout"(%arg0) : (tensor<2x4xf32>) -> {dev("2x4")} loc(unknown)\n'
        f'%1 = "ttir.constant"() {{value = #tt.weight<"w.transpose">}} : () -> {dev("4x5")} '
        'loc(fused["w", "/fc/Gemm"])\n'
        f'%2 = "ttir.matmul"(%0, %1) {{transpose_a = false, transpose_b = false}} : ({dev("2x4")}, {dev("4x5")}) '
        f'-> {dev("2x5")} loc("/fc/Gemm")\n'
        f'%3 = "ttir.to_layout"(%2) : ({dev("2x5")}) -> {y} loc("/fc/Gemm")\n'
        f'func.return %3 : {y} loc("ret")')
    assert list(module.weights) == ["w.transpose"]  # the original is no longer referenced
    np.testing.assert_array_equal(module.weights["w.transpose"], w.T)


def test_transposed_activations_become_explicit_transposes(ir: IRHarness) -> None:
    a, b, y = "tensor<5x4x2xf32>", "tensor<5x3x4xf32>", "tensor<5x2x3xf32>"
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {a}, %arg1: {b}", y,
        f'%0 = "ttir.matmul"(%arg0, %arg1) {{transpose_a = true, transpose_b = true}} : ({a}, {b}) -> {y} loc("mm")',
        f'func.return %0 : {y} loc("ret")'))
    ir.check(out,
             f'%2 = "ttir.transpose"(%0) {{perm = [0, 2, 1]}} : ({dev("5x4x2")}) -> {dev("5x2x4")} loc("mm")',
             f'%3 = "ttir.transpose"(%1) {{perm = [0, 2, 1]}} : ({dev("5x3x4")}) -> {dev("5x4x3")} loc("mm")',
             f'%4 = "ttir.matmul"(%2, %3) {{transpose_a = false, transpose_b = false}} : '
             f'({dev("5x2x4")}, {dev("5x4x3")}) -> {dev("5x2x3")} loc("mm")')


# ----------------------------------------------------------------------------------------------
# Softmax and layer norm along the last axis


def test_softmax_along_another_axis_is_wrapped_in_transposes(ir: IRHarness) -> None:
    x, moved = "tensor<2x3x4xf32>", dev("2x4x3")
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {x}", x,
        f'%0 = "ttir.softmax"(%arg0) {{axis = 1}} : ({x}) -> {x} loc("/sm/Softmax")',
        f'func.return %0 : {x} loc("ret")'))
    assert out.splitlines()[1:4] == [
        f'%1 = "ttir.transpose"(%0) {{perm = [0, 2, 1]}} : ({dev("2x3x4")}) -> {moved} loc("/sm/Softmax")',
        f'%2 = "ttir.softmax"(%1) {{axis = 2}} : ({moved}) -> {moved} loc("/sm/Softmax")',
        f'%3 = "ttir.transpose"(%2) {{perm = [0, 2, 1]}} : ({moved}) -> {dev("2x3x4")} loc("/sm/Softmax")']


def test_softmax_along_the_last_axis_stays(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.softmax"(%arg0) {{axis = -1}} : ({T}) -> {T} loc("sm")',
        f'func.return %0 : {T} loc("ret")'))
    assert f'%1 = "ttir.softmax"(%0) {{axis = -1}} : ({D}) -> {D} loc("sm")' in out.splitlines()


def test_transposes_between_two_softmaxes_cancel(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.softmax"(%arg0) {{axis = 0}} : ({T}) -> {T} loc("sm1")',
        f'%1 = "ttir.softmax"(%0) {{axis = 0}} : ({T}) -> {T} loc("sm2")',
        f'func.return %1 : {T} loc("ret")'))
    assert [line.split(" {")[0].split(" : ")[0] for line in out.splitlines()[1:5]] == [
        '%1 = "ttir.transpose"(%0)', '%2 = "ttir.softmax"(%1)', '%3 = "ttir.softmax"(%2)',
        '%4 = "ttir.transpose"(%3)']


def test_layer_norm_over_two_dims_reshapes_them_into_one(ir: IRHarness) -> None:
    x = "tensor<2x4x5xf32>"
    scale = np.arange(20, dtype=np.float32).reshape(4, 5)
    module = ir.run("tilize", ir.module(
        f"%arg0: {x}", x,
        '%0 = "ttir.constant"() {value = #tt.weight<"s">} : () -> tensor<4x5xf32> loc("s")',
        f'%1 = "ttir.layer_norm"(%arg0, %0) {{axis = 1, epsilon = 1e-05}} : ({x}, tensor<4x5xf32>) -> {x} loc("ln")',
        f'func.return %1 : {x} loc("ret")'), {"s": scale})
    body = ir.body(module)  # the reshapes themselves move rows apart: they get their device forms
    assert '"ttir.layer_norm"(%' in body and f'{{axis = 1, epsilon = 1e-05}} : ({dev("2x20")}, {dev("20")}) ' \
        f'-> {dev("2x20")} loc("ln")' in body
    assert f'() -> {dev("20")} loc(fused["s", "ln"])' in body
    np.testing.assert_array_equal(module.weights["s.reshape"], scale.reshape(20))


def test_layer_norm_over_two_dims_with_a_broadcast_scale_is_an_error(ir: IRHarness) -> None:
    x = "tensor<2x3x4xf32>"
    with pytest.raises(UserError, match=r"node '/ln/LayerNormalization'.*broadcasts is not supported"):
        ir.run("tilize", ir.module(
            f"%arg0: {x}, %arg1: tensor<4xf32>", x,
            f'%0 = "ttir.layer_norm"(%arg0, %arg1) {{axis = 1}} : ({x}, tensor<4xf32>) -> {x} '
            'loc("/ln/LayerNormalization")',
            f'func.return %0 : {x} loc("ret")'))


# ----------------------------------------------------------------------------------------------
# Data movement folds, division, integers


def test_transposes_and_reshapes_that_cancel_are_folded(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {T}", T,
        '%0 = "ttir.transpose"(%arg0) {perm = [1, 0]} : (tensor<2x3xf32>) -> tensor<3x2xf32> loc("t1")',
        '%1 = "ttir.transpose"(%0) {perm = [1, 0]} : (tensor<3x2xf32>) -> tensor<2x3xf32> loc("t2")',
        f'%2 = "ttir.reshape"(%1) : ({T}) -> tensor<6xf32> loc("r1")',
        f'%3 = "ttir.reshape"(%2) : (tensor<6xf32>) -> {T} loc("r2")',
        f'%4 = "ttir.exp"(%3) : ({T}) -> {T} loc("exp")',
        f'func.return %4 : {T} loc("ret")'))
    assert out.splitlines()[1] == f'%1 = "ttir.exp"(%0) : ({D}) -> {D} loc("exp")'


def test_division_becomes_a_product_with_a_reciprocal(ir: IRHarness) -> None:
    t, d = "tensor<2x20xf32>", dev("2x20")
    divisor = np.arange(1, 21, dtype=np.float32)
    module = ir.run("tilize", ir.module(
        f"%arg0: {t}, %arg1: {t}", t,
        '%0 = "ttir.constant"() {value = #tt.weight<"d">} : () -> tensor<20xf32> loc("d")',
        f'%1 = "ttir.div"(%arg0, %arg1) : ({t}, {t}) -> {t} loc("div")',
        f'%2 = "ttir.div"(%1, %0) : ({t}, tensor<20xf32>) -> {t} loc("div_w")',
        f'func.return %2 : {t} loc("ret")'), {"d": divisor})
    ir.check(ir.body(module),
             f'%2 = "ttir.reciprocal"(%1) : ({d}) -> {d} loc("div")',
             f'%3 = "ttir.mul"(%0, %2) : ({d}, {d}) -> {d} loc("div")',
             f'%4 = "ttir.constant"() {{value = #tt.weight<"d.reciprocal">}} : () -> {dev("20")}',
             f'%5 = "ttir.mul"(%3, %4) : ({d}, {dev("20")}) -> {d} loc("div_w")')
    np.testing.assert_allclose(module.weights["d.reciprocal"], 1.0 / divisor)


def test_division_by_a_small_splat_weight_becomes_a_host_scalar(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {T}", T,
        '%0 = "ttir.constant"() {value = #tt.weight<"d">} : () -> tensor<3xf32> loc("d")',
        f'%1 = "ttir.div"(%arg0, %0) : ({T}, tensor<3xf32>) -> {T} loc("div")',
        f'func.return %1 : {T} loc("ret")'), {"d": np.full((3,), 4.0, np.float32)})
    ir.check(out,
             '%1 = "ttir.constant"() {value = dense<0.25> : tensor<f32>} : () -> tensor<f32> loc(fused["d", "div"])',
             f'%2 = "ttir.mul"(%0, %1) : ({D}, tensor<f32>) -> {D} loc("div")')


def test_integer_tensors_on_the_device_are_an_error_naming_the_node(ir: IRHarness) -> None:
    t = "tensor<4xi32>"
    with pytest.raises(UserError, match=r"node '/count/Add': the integer tensor tensor<4xi32> of unknown range"):
        ir.run("tilize", ir.module(
            f"%arg0: {t}", t,
            f'%0 = "ttir.add"(%arg0, %arg0) : ({t}, {t}) -> {t} loc("/count/Add")',
            f'func.return %0 : {t} loc("ret")'))


def test_integer_argument_returned_directly_stays_on_the_host(ir: IRHarness) -> None:
    t = "tensor<4xi64>"
    out = ir.run_body("tilize", ir.module(f"%arg0: {t}", t, f'func.return %arg0 : {t} loc("ret")'))
    assert out == f'func.return %arg0 : {t} loc("ret")'


def test_tilize_twice_changes_nothing(ir: IRHarness) -> None:
    text = ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.softmax"(%arg0) {{axis = 0}} : ({T}) -> {T} loc("sm")',
        f'func.return %0 : {T} loc("ret")')
    assert ir.run_body("tilize,tilize", text) == ir.run_body("tilize", text)
