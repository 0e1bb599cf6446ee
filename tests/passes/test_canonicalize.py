"""canonicalize: dead code, identities, constant folding (inline and into weights), constant dedup."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from conftest import IRHarness

T = "tensor<2x3xf32>"


def test_dead_code_is_erased_including_constants(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.constant"() {{value = dense<2.0> : {T}}} : () -> {T} loc("c")',
        f'%1 = "ttir.mul"(%arg0, %0) : ({T}, {T}) -> {T} loc("unused")',
        f'%2 = "ttir.relu"(%arg0) : ({T}) -> {T} loc("relu")',
        f'func.return %2 : {T} loc("ret")'))
    assert out == (f'%0 = "ttir.relu"(%arg0) : ({T}) -> {T} loc("relu")\n'
                   f'func.return %0 : {T} loc("ret")')


# ----------------------------------------------------------------------------------------------
# Reshape and transpose


def test_reshape_to_the_same_type_disappears(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.reshape"(%arg0) : ({T}) -> {T} loc("r")',
        f'func.return %0 : {T} loc("ret")'))
    assert out == f'func.return %arg0 : {T} loc("ret")'


def test_reshape_of_reshape_becomes_one_reshape(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", "tensor<3x2xf32>",
        f'%0 = "ttir.reshape"(%arg0) : ({T}) -> tensor<6xf32> loc("r1")',
        '%1 = "ttir.reshape"(%0) : (tensor<6xf32>) -> tensor<3x2xf32> loc("r2")',
        'func.return %1 : tensor<3x2xf32> loc("ret")'))
    assert out == (f'%0 = "ttir.reshape"(%arg0) : ({T}) -> tensor<3x2xf32> loc(fused["r1", "r2"])\n'
                   'func.return %0 : tensor<3x2xf32> loc("ret")')


def test_reshape_there_and_back_disappears(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.reshape"(%arg0) : ({T}) -> tensor<6xf32> loc("r1")',
        f'%1 = "ttir.reshape"(%0) : (tensor<6xf32>) -> {T} loc("r2")',
        f'func.return %1 : {T} loc("ret")'))
    assert out == f'func.return %arg0 : {T} loc("ret")'


def test_identity_transpose_disappears(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.transpose"(%arg0) {{perm = [0, 1]}} : ({T}) -> {T} loc("t")',
        f'func.return %0 : {T} loc("ret")'))
    assert out == f'func.return %arg0 : {T} loc("ret")'


def test_transpose_of_transpose_composes_the_permutations(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        "%arg0: tensor<2x3x4xf32>", "tensor<3x2x4xf32>",
        '%0 = "ttir.transpose"(%arg0) {perm = [1, 2, 0]} : (tensor<2x3x4xf32>) -> tensor<3x4x2xf32> loc("t1")',
        '%1 = "ttir.transpose"(%0) {perm = [0, 2, 1]} : (tensor<3x4x2xf32>) -> tensor<3x2x4xf32> loc("t2")',
        'func.return %1 : tensor<3x2x4xf32> loc("ret")'))
    assert out == ('%0 = "ttir.transpose"(%arg0) {perm = [1, 0, 2]} : (tensor<2x3x4xf32>) -> tensor<3x2x4xf32> '
                   'loc(fused["t1", "t2"])\n'
                   'func.return %0 : tensor<3x2x4xf32> loc("ret")')


def test_inverse_transposes_cancel(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.transpose"(%arg0) {{perm = [1, 0]}} : ({T}) -> tensor<3x2xf32> loc("t1")',
        f'%1 = "ttir.transpose"(%0) {{perm = [1, 0]}} : (tensor<3x2xf32>) -> {T} loc("t2")',
        f'func.return %1 : {T} loc("ret")'))
    assert out == f'func.return %arg0 : {T} loc("ret")'


def test_non_identity_transpose_stays(ir: IRHarness) -> None:
    op = f'%0 = "ttir.transpose"(%arg0) {{perm = [1, 0]}} : ({T}) -> tensor<3x2xf32> loc("t")'
    out = ir.run_body("canonicalize", ir.module(f"%arg0: {T}", "tensor<3x2xf32>", op,
                                           'func.return %0 : tensor<3x2xf32> loc("ret")'))
    assert out.splitlines()[0] == op


# ----------------------------------------------------------------------------------------------
# Binary identities


@pytest.mark.parametrize(("op", "constant", "operands"), [
    ("add", "0.0", "%arg0, %0"),
    ("add", "0.0", "%0, %arg0"),
    ("add", "-0.0", "%arg0, %0"),
    ("sub", "0.0", "%arg0, %0"),
    ("mul", "1.0", "%arg0, %0"),
    ("mul", "1.0", "%0, %arg0"),
    ("div", "1.0", "%arg0, %0"),
    ("pow", "1.0", "%arg0, %0"),
])
def test_binary_identity_folds_to_x(ir: IRHarness, op: str, constant: str, operands: str) -> None:
    types = ", ".join({"%arg0": T, "%0": "tensor<f32>"}[name] for name in operands.split(", "))
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.constant"() {{value = dense<{constant}> : tensor<f32>}} : () -> tensor<f32> loc("c")',
        f'%1 = "ttir.{op}"({operands}) : ({types}) -> {T} loc("op")',
        f'func.return %1 : {T} loc("ret")'))
    assert out == f'func.return %arg0 : {T} loc("ret")'


def test_integer_identities_fold_too(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        "%arg0: tensor<4xi32>", "tensor<4xi32>",
        '%0 = "ttir.constant"() {value = dense<1> : tensor<4xi32>} : () -> tensor<4xi32> loc("one")',
        '%1 = "ttir.div"(%arg0, %0) : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32> loc("div")',
        'func.return %1 : tensor<4xi32> loc("ret")'))
    assert out == 'func.return %arg0 : tensor<4xi32> loc("ret")'


@pytest.mark.parametrize("ops", [
    pytest.param(['%0 = "ttir.constant"() {value = dense<0.0> : tensor<2x3xf32>} : () -> tensor<2x3xf32> loc("c")',
                  '%1 = "ttir.add"(%arg0, %0) : (tensor<3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32> loc("op")'],
                 id="x+0 broadcasting x to a new shape"),
    pytest.param(['%0 = "ttir.constant"() {value = dense<0.0> : tensor<3xf32>} : () -> tensor<3xf32> loc("c")',
                  '%1 = "ttir.sub"(%0, %arg0) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32> loc("op")'],
                 id="0-x"),
    pytest.param(['%0 = "ttir.constant"() {value = dense<1.0> : tensor<3xf32>} : () -> tensor<3xf32> loc("c")',
                  '%1 = "ttir.div"(%0, %arg0) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32> loc("op")'],
                 id="1/x"),
    pytest.param(['%0 = "ttir.constant"() {value = dense<[1.0, 2.0, 1.0]> : tensor<3xf32>} : () -> tensor<3xf32> loc("c")',
                  '%1 = "ttir.mul"(%arg0, %0) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32> loc("op")'],
                 id="x*[1,2,1] not a splat"),
    pytest.param(['%0 = "ttir.constant"() {value = dense<1.0> : tensor<3xf32>} : () -> tensor<3xf32> loc("c")',
                  '%1 = "ttir.add"(%arg0, %0) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32> loc("op")'],
                 id="x+1"),
    pytest.param(['%0 = "ttir.constant"() {value = dense<1.0> : tensor<3xf32>} : () -> tensor<3xf32> loc("c")',
                  '%1 = "ttir.maximum"(%arg0, %0) : (tensor<3xf32>, tensor<3xf32>) -> tensor<3xf32> loc("op")'],
                 id="max(x,1)"),
])
def test_ops_that_are_not_identities_stay(ir: IRHarness, ops: list[str]) -> None:
    result = ops[1].split("-> ")[-1].split(" loc")[0]
    text = ir.module("%arg0: tensor<3xf32>", result, *ops, f'func.return %1 : {result} loc("ret")')
    assert ir.run_body("canonicalize", text) == ir.body(ir.run("", text))


# ----------------------------------------------------------------------------------------------
# Constant folding


def test_small_results_fold_to_an_inline_constant_with_fused_location(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        "", "tensor<2x2xf32>",
        '%0 = "ttir.constant"() {value = dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>} : () -> tensor<2x2xf32> loc("a")',
        '%1 = "ttir.constant"() {value = dense<10.0> : tensor<f32>} : () -> tensor<f32> loc("b")',
        '%2 = "ttir.mul"(%0, %1) : (tensor<2x2xf32>, tensor<f32>) -> tensor<2x2xf32> loc("mul")',
        '%3 = "ttir.transpose"(%2) {perm = [1, 0]} : (tensor<2x2xf32>) -> tensor<2x2xf32> loc("t")',
        'func.return %3 : tensor<2x2xf32> loc("ret")'))
    assert out == (
        '%0 = "ttir.constant"() {value = dense<[[10.0, 30.0], [20.0, 40.0]]> : tensor<2x2xf32>} : '
        '() -> tensor<2x2xf32> loc(fused["a", "b", "mul", "t"])\n'
        'func.return %0 : tensor<2x2xf32> loc("ret")')


def test_integer_division_folds_truncating(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        "", "tensor<2xi64>",
        '%0 = "ttir.constant"() {value = dense<[7, -7]> : tensor<2xi64>} : () -> tensor<2xi64> loc("a")',
        '%1 = "ttir.constant"() {value = dense<2> : tensor<2xi64>} : () -> tensor<2xi64> loc("b")',
        '%2 = "ttir.div"(%0, %1) : (tensor<2xi64>, tensor<2xi64>) -> tensor<2xi64> loc("div")',
        'func.return %2 : tensor<2xi64> loc("ret")'))
    assert out.splitlines()[0].startswith('%0 = "ttir.constant"() {value = dense<[3, -3]> : tensor<2xi64>}')


def test_large_splat_results_fold_inline(ir: IRHarness) -> None:
    big = "tensor<64x64xf32>"
    out = ir.run_body("canonicalize", ir.module(
        "", big,
        f'%0 = "ttir.constant"() {{value = dense<1.5> : {big}}} : () -> {big} loc("a")',
        f'%1 = "ttir.exp"(%0) : ({big}) -> {big} loc("exp")',
        f'%2 = "ttir.neg"(%1) : ({big}) -> {big} loc("neg")',
        f'func.return %2 : {big} loc("ret")'))
    assert out.splitlines()[0] == (f'%0 = "ttir.constant"() {{value = dense<-4.481689> : {big}}} : () -> {big} '
                                   'loc(fused["a", "exp", "neg"])')


WEIGHT_MODULE = """
module {
  func.func @main(%arg0: tensor<4x8xf32>) -> tensor<4x4xf32> {
    %0 = "ttir.constant"() {value = #tt.weight<"fc.weight">} : () -> tensor<4x8xf32> loc("fc.weight")
    %1 = "ttir.transpose"(%0) {perm = [1, 0]} : (tensor<4x8xf32>) -> tensor<8x4xf32> loc("fc/Transpose")
    %2 = "ttir.matmul"(%arg0, %1) : (tensor<4x8xf32>, tensor<8x4xf32>) -> tensor<4x4xf32> loc("fc/MatMul")
    func.return %2 : tensor<4x4xf32> loc("ret")
  }
}
"""


def weights() -> dict[str, np.ndarray]:
    return {"fc.weight": np.arange(32, dtype=np.float32).reshape(4, 8)}


def test_ops_on_weights_fold_into_a_new_weight(ir: IRHarness) -> None:
    module = ir.run("canonicalize", WEIGHT_MODULE, weights())
    assert ir.body(module).splitlines()[0] == (
        '%0 = "ttir.constant"() {value = #tt.weight<"fc.weight.transpose">} : () -> tensor<8x4xf32> '
        'loc(fused["fc.weight", "fc/Transpose"])')
    assert list(module.weights) == ["fc.weight.transpose"]  # the folded-away weight is dropped
    np.testing.assert_array_equal(module.weights["fc.weight.transpose"], weights()["fc.weight"].T)


def test_fold_weights_false_keeps_large_weight_computations(ir: IRHarness) -> None:
    module = ir.run("canonicalize{fold-weights=false}", WEIGHT_MODULE, weights())
    assert ir.body(module) == ir.body(ir.run("", WEIGHT_MODULE, weights()))
    assert list(module.weights) == ["fc.weight"]


def test_weights_without_data_are_not_folded(ir: IRHarness) -> None:
    module = ir.run("canonicalize", WEIGHT_MODULE)
    assert '"ttir.transpose"' in ir.body(module)


def test_weight_chains_fold_to_one_weight(ir: IRHarness) -> None:
    text = ir.module(
        "", "tensor<32xf32>",
        '%0 = "ttir.constant"() {value = #tt.weight<"w">} : () -> tensor<4x8xf32> loc("w")',
        '%1 = "ttir.transpose"(%0) {perm = [1, 0]} : (tensor<4x8xf32>) -> tensor<8x4xf32> loc("t")',
        '%2 = "ttir.reshape"(%1) : (tensor<8x4xf32>) -> tensor<32xf32> loc("r")',
        'func.return %2 : tensor<32xf32> loc("ret")')
    module = ir.run("canonicalize", text, {"w": np.arange(32, dtype=np.float32).reshape(4, 8)})
    assert ir.body(module).splitlines()[0] == (
        '%0 = "ttir.constant"() {value = #tt.weight<"w.transpose.reshape">} : () -> tensor<32xf32> '
        'loc(fused["w", "t", "r"])')
    assert list(module.weights) == ["w.transpose.reshape"]


def test_dead_weight_constants_go_with_their_data(ir: IRHarness) -> None:
    text = ir.module(
        "%arg0: tensor<4x8xf32>", "tensor<4x8xf32>",
        '%0 = "ttir.constant"() {value = #tt.weight<"fc.weight">} : () -> tensor<4x8xf32> loc("fc.weight")',
        'func.return %arg0 : tensor<4x8xf32> loc("ret")')
    assert ir.run_body("canonicalize", text) == 'func.return %arg0 : tensor<4x8xf32> loc("ret")'
    assert ir.run("canonicalize", text, weights()).weights == {}
    assert ir.run("canonicalize", text).weights == {}  # also when the data was never loaded


def test_unrelated_unused_weights_are_kept(ir: IRHarness) -> None:
    data = {**weights(), "spare": np.zeros(3, np.float32)}
    module = ir.run("canonicalize", WEIGHT_MODULE, data)
    assert sorted(module.weights) == ["fc.weight.transpose", "spare"]


# ----------------------------------------------------------------------------------------------
# Constant deduplication


def test_identical_constants_are_merged(ir: IRHarness) -> None:
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {T}", T,
        '%0 = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("c1")',
        f'%1 = "ttir.mul"(%arg0, %0) : ({T}, tensor<f32>) -> {T} loc("m1")',
        '%2 = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("c2")',
        f'%3 = "ttir.mul"(%1, %2) : ({T}, tensor<f32>) -> {T} loc("m2")',
        '%4 = "ttir.constant"() {value = dense<2.0> : tensor<1xf32>} : () -> tensor<1xf32> loc("other type")',
        f'%5 = "ttir.add"(%3, %4) : ({T}, tensor<1xf32>) -> {T} loc("a")',
        f'func.return %5 : {T} loc("ret")'))
    assert out == (
        '%0 = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("c1")\n'
        f'%1 = "ttir.mul"(%arg0, %0) : ({T}, tensor<f32>) -> {T} loc("m1")\n'
        f'%2 = "ttir.mul"(%1, %0) : ({T}, tensor<f32>) -> {T} loc("m2")\n'
        '%3 = "ttir.constant"() {value = dense<2.0> : tensor<1xf32>} : () -> tensor<1xf32> loc("other type")\n'
        f'%4 = "ttir.add"(%2, %3) : ({T}, tensor<1xf32>) -> {T} loc("a")\n'
        f'func.return %4 : {T} loc("ret")')
