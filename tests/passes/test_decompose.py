"""decompose: Gemm, Pow, Div by constants, erf-GELU, Mish; Softmax and LayerNorm stay named ops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import IRHarness

A, B, Y = "tensor<4x8xf32>", "tensor<8x16xf32>", "tensor<4x16xf32>"
T = "tensor<2x3xf32>"


# ----------------------------------------------------------------------------------------------
# Gemm


def test_gemm_with_defaults_is_a_matmul_plus_bias(ir: IRHarness) -> None:
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {A}, %arg1: {B}, %arg2: tensor<16xf32>", Y,
        f'%0 = "ttir.gemm"(%arg0, %arg1, %arg2) : ({A}, {B}, tensor<16xf32>) -> {Y} loc("fc")',
        f'func.return %0 : {Y} loc("ret")'))
    assert out == (
        f'%0 = "ttir.matmul"(%arg0, %arg1) {{transpose_a = false, transpose_b = false}} : ({A}, {B}) -> {Y} loc("fc")\n'
        f'%1 = "ttir.add"(%0, %arg2) : ({Y}, tensor<16xf32>) -> {Y} loc("fc")\n'
        f'func.return %1 : {Y} loc("ret")')


def test_gemm_with_scales_and_transposes(ir: IRHarness) -> None:
    bt = "tensor<16x8xf32>"
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {A}, %arg1: {bt}, %arg2: {Y}", Y,
        f'%0 = "ttir.gemm"(%arg0, %arg1, %arg2) {{alpha = 2.0, beta = 0.5, transpose_b = true}} : '
        f'({A}, {bt}, {Y}) -> {Y} loc("fc")',
        f'func.return %0 : {Y} loc("ret")'))
    assert out == (
        f'%0 = "ttir.matmul"(%arg0, %arg1) {{transpose_a = false, transpose_b = true}} : ({A}, {bt}) -> {Y} loc("fc")\n'
        '%1 = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("fc")\n'
        f'%2 = "ttir.mul"(%0, %1) : ({Y}, tensor<f32>) -> {Y} loc("fc")\n'
        '%3 = "ttir.constant"() {value = dense<0.5> : tensor<f32>} : () -> tensor<f32> loc("fc")\n'
        f'%4 = "ttir.mul"(%arg2, %3) : ({Y}, tensor<f32>) -> {Y} loc("fc")\n'
        f'%5 = "ttir.add"(%2, %4) : ({Y}, {Y}) -> {Y} loc("fc")\n'
        f'func.return %5 : {Y} loc("ret")')


def test_gemm_without_bias_and_with_transposed_a_is_one_matmul(ir: IRHarness) -> None:
    at = "tensor<8x4xf32>"
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {at}, %arg1: {B}", Y,
        f'%0 = "ttir.gemm"(%arg0, %arg1) {{beta = 3.0, transpose_a = true}} : ({at}, {B}) -> {Y} loc("fc")',
        f'func.return %0 : {Y} loc("ret")'))
    assert out == (
        f'%0 = "ttir.matmul"(%arg0, %arg1) {{transpose_a = true, transpose_b = false}} : ({at}, {B}) -> {Y} loc("fc")\n'
        f'func.return %0 : {Y} loc("ret")')


def test_beta_times_a_constant_bias_folds_in_canonicalize(ir: IRHarness) -> None:
    out = ir.run_body("decompose,canonicalize", ir.module(
        f"%arg0: {A}, %arg1: {B}", Y,
        '%0 = "ttir.constant"() {value = dense<4.0> : tensor<16xf32>} : () -> tensor<16xf32> loc("bias")',
        f'%1 = "ttir.gemm"(%arg0, %arg1, %0) {{beta = 0.5}} : ({A}, {B}, tensor<16xf32>) -> {Y} loc("fc")',
        f'func.return %1 : {Y} loc("ret")'))
    ir.check(out,
             '"ttir.matmul"(%arg0, %arg1)',
             '%1 = "ttir.constant"() {value = dense<2.0> : tensor<16xf32>} : () -> tensor<16xf32> '
             'loc(fused["bias", "fc"])',
             '"ttir.add"(%0, %1)')


def test_keep_gemm_leaves_gemm_alone(ir: IRHarness) -> None:
    gemm = f'%0 = "ttir.gemm"(%arg0, %arg1) {{alpha = 2.0}} : ({A}, {B}) -> {Y} loc("fc")'
    out = ir.run_body("decompose{keep-gemm=true}", ir.module(
        f"%arg0: {A}, %arg1: {B}", Y, gemm, f'func.return %0 : {Y} loc("ret")'))
    assert out.splitlines()[0] == gemm


# ----------------------------------------------------------------------------------------------
# Pow and Div


def pow_module(ir: IRHarness, exponent: str, element: str = "f32") -> str:
    t = f"tensor<2x3x{element}>"
    return ir.module(
        f"%arg0: {t}", t,
        f'%0 = "ttir.constant"() {{value = dense<{exponent}> : tensor<{element}>}} : () -> tensor<{element}> loc("e")',
        f'%1 = "ttir.pow"(%arg0, %0) : ({t}, tensor<{element}>) -> {t} loc("pow")',
        f'func.return %1 : {t} loc("ret")')


def test_square_becomes_a_product(ir: IRHarness) -> None:
    assert ir.run_body("decompose", pow_module(ir, "2.0")) == (
        f'%0 = "ttir.mul"(%arg0, %arg0) : ({T}, {T}) -> {T} loc("pow")\n'
        f'func.return %0 : {T} loc("ret")')


def test_integer_square_becomes_a_product(ir: IRHarness) -> None:
    assert '"ttir.mul"(%arg0, %arg0)' in ir.run_body("decompose", pow_module(ir, "2", "i32"))


def test_power_one_half_becomes_sqrt(ir: IRHarness) -> None:
    assert ir.run_body("decompose", pow_module(ir, "0.5")) == (
        f'%0 = "ttir.sqrt"(%arg0) : ({T}) -> {T} loc("pow")\n'
        f'func.return %0 : {T} loc("ret")')


@pytest.mark.parametrize("exponent", ["3.0", "-0.5", "1.0"])
def test_other_powers_stay(ir: IRHarness, exponent: str) -> None:
    assert '"ttir.pow"' in ir.run_body("decompose", pow_module(ir, exponent))


def test_power_by_a_tensor_stays_for_the_sfpu(ir: IRHarness) -> None:
    """No exp(log(x) * y): the fused kernel computes x ** y on the SFPU with one rounding."""
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {T}, %arg1: {T}", T,
        f'%0 = "ttir.pow"(%arg0, %arg1) : ({T}, {T}) -> {T} loc("pow")',
        f'func.return %0 : {T} loc("ret")'))
    assert out == f'%0 = "ttir.pow"(%arg0, %arg1) : ({T}, {T}) -> {T} loc("pow")\nfunc.return %0 : {T} loc("ret")'


def test_square_that_broadcasts_the_base_stays(ir: IRHarness) -> None:
    out = ir.run_body("decompose", ir.module(
        "%arg0: tensor<3xf32>", T,
        f'%0 = "ttir.constant"() {{value = dense<2.0> : {T}}} : () -> {T} loc("e")',
        f'%1 = "ttir.pow"(%arg0, %0) : (tensor<3xf32>, {T}) -> {T} loc("pow")',
        f'func.return %1 : {T} loc("ret")'))
    assert '"ttir.pow"' in out


def test_division_by_a_constant_becomes_a_product_with_its_reciprocal(ir: IRHarness) -> None:
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {T}", T,
        '%0 = "ttir.constant"() {value = dense<[4.0, 0.5, -8.0]> : tensor<3xf32>} : () -> tensor<3xf32> loc("c")',
        f'%1 = "ttir.div"(%arg0, %0) : ({T}, tensor<3xf32>) -> {T} loc("div")',
        f'func.return %1 : {T} loc("ret")'))
    assert out == (
        '%0 = "ttir.constant"() {value = dense<[0.25, 2.0, -0.125]> : tensor<3xf32>} : () -> tensor<3xf32> '
        'loc("div")\n'
        f'%1 = "ttir.mul"(%arg0, %0) : ({T}, tensor<3xf32>) -> {T} loc("div")\n'
        f'func.return %1 : {T} loc("ret")')


def test_integer_division_stays(ir: IRHarness) -> None:
    t = "tensor<4xi32>"
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {t}", t,
        f'%0 = "ttir.constant"() {{value = dense<2> : {t}}} : () -> {t} loc("c")',
        f'%1 = "ttir.div"(%arg0, %0) : ({t}, {t}) -> {t} loc("div")',
        f'func.return %1 : {t} loc("ret")'))
    assert '"ttir.div"(%arg0, %0)' in out


def test_division_by_a_variable_stays(ir: IRHarness) -> None:
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {T}, %arg1: {T}", T,
        f'%0 = "ttir.div"(%arg0, %arg1) : ({T}, {T}) -> {T} loc("div")',
        f'func.return %0 : {T} loc("ret")'))
    assert '"ttir.div"(%arg0, %arg1)' in out


def test_reciprocal_of_a_square_root_becomes_rsqrt(ir: IRHarness) -> None:
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.sqrt"(%arg0) : ({T}) -> {T} loc("sqrt")',
        f'%1 = "ttir.reciprocal"(%0) : ({T}) -> {T} loc("recip")',
        f'func.return %1 : {T} loc("ret")'))
    assert out == (
        f'%0 = "ttir.rsqrt"(%arg0) : ({T}) -> {T} loc(fused["sqrt", "recip"])\n'
        f'func.return %0 : {T} loc("ret")')


def test_reciprocal_of_a_square_root_used_elsewhere_stays(ir: IRHarness) -> None:
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.sqrt"(%arg0) : ({T}) -> {T} loc("sqrt")',
        f'%1 = "ttir.reciprocal"(%0) : ({T}) -> {T} loc("recip")',
        f'%2 = "ttir.add"(%0, %1) : ({T}, {T}) -> {T} loc("add")',
        f'func.return %2 : {T} loc("ret")'))
    assert '"ttir.reciprocal"(%0)' in out and "rsqrt" not in out


# ----------------------------------------------------------------------------------------------
# GELU


def gelu_module(ir: IRHarness, *ops: str) -> str:
    """The constants %c_sqrt2, %c_rsqrt2, %c1 and %c_half, then `ops` computing %out from %arg0."""
    return ir.module(
        f"%arg0: {T}", T,
        '%c_sqrt2 = "ttir.constant"() {value = dense<1.4142135> : tensor<f32>} : () -> tensor<f32> loc("c")',
        '%c_rsqrt2 = "ttir.constant"() {value = dense<0.70710677> : tensor<f32>} : () -> tensor<f32> loc("c")',
        '%c1 = "ttir.constant"() {value = dense<1.0> : tensor<f32>} : () -> tensor<f32> loc("c")',
        '%c_half = "ttir.constant"() {value = dense<0.5> : tensor<f32>} : () -> tensor<f32> loc("c")',
        *ops,
        f'func.return %out : {T} loc("ret")')


def binary(name: str, result: str, lhs: str, rhs: str) -> str:
    types = ", ".join("tensor<f32>" if v.startswith("%c") else T for v in (lhs, rhs))
    return f'{result} = "ttir.{name}"({lhs}, {rhs}) : ({types}) -> {T} loc("{result[1:]}")'


ERF = f'%erf = "ttir.erf"(%t) : ({T}) -> {T} loc("erf")'

GELU_FORMS = {
    # x * 0.5 * (1 + erf(x / sqrt2)), as torch's exporter writes it
    "half x first": [binary("div", "%t", "%arg0", "%c_sqrt2"), ERF, binary("add", "%p", "%erf", "%c1"),
                     binary("mul", "%h", "%arg0", "%c_half"), binary("mul", "%out", "%h", "%p")],
    # 0.5 * x * (1 + erf(x * (1/sqrt2))), constants on the left
    "half x first, constants left": [
        binary("mul", "%t", "%c_rsqrt2", "%arg0"), ERF, binary("add", "%p", "%c1", "%erf"),
        binary("mul", "%h", "%c_half", "%arg0"), binary("mul", "%out", "%p", "%h")],
    # (x * (1 + erf(x / sqrt2))) * 0.5
    "half last": [binary("div", "%t", "%arg0", "%c_sqrt2"), ERF, binary("add", "%p", "%erf", "%c1"),
                  binary("mul", "%xp", "%arg0", "%p"), binary("mul", "%out", "%xp", "%c_half")],
    # 0.5 * ((1 + erf(x * 0.7071)) * x)
    "half last, mirrored": [binary("mul", "%t", "%arg0", "%c_rsqrt2"), ERF, binary("add", "%p", "%erf", "%c1"),
                            binary("mul", "%xp", "%p", "%arg0"), binary("mul", "%out", "%c_half", "%xp")],
    # x * ((1 + erf(x / sqrt2)) * 0.5)
    "half on the erf factor": [binary("div", "%t", "%arg0", "%c_sqrt2"), ERF, binary("add", "%p", "%erf", "%c1"),
                               binary("mul", "%hp", "%p", "%c_half"), binary("mul", "%out", "%arg0", "%hp")],
}


@pytest.mark.parametrize("form", GELU_FORMS)
def test_erf_gelu_becomes_gelu_with_all_locations_fused(ir: IRHarness, form: str) -> None:
    out = ir.run_body("decompose", gelu_module(ir, *GELU_FORMS[form]))
    lines = out.splitlines()
    assert len(lines) == 2, out  # every matched op and constant is gone
    assert lines[0].startswith(f'%0 = "ttir.gelu"(%arg0) : ({T}) -> {T} loc(fused[')
    matched = lines[0].split("fused[")[1].rstrip("])").replace('"', "").split(", ")
    assert sorted(matched) == sorted(op.split(" = ")[0][1:] for op in GELU_FORMS[form])
    assert lines[1] == f'func.return %0 : {T} loc("ret")'


def test_gelu_with_1_4142_spelled_short_is_recognised(ir: IRHarness) -> None:
    ops = [op.replace("%c_sqrt2", "%c_short") for op in GELU_FORMS["half x first"]]
    text = gelu_module(ir, *ops).replace(
        '%c1 = ', '%c_short = "ttir.constant"() {value = dense<1.4142> : tensor<f32>} : () -> tensor<f32> loc("c")\n'
                  '    %c1 = ')
    assert '"ttir.gelu"(%arg0)' in ir.run_body("decompose", text)


@pytest.mark.parametrize("change", [
    pytest.param(("%c_sqrt2", "%c_half"), id="erf of x * 0.5"),
    pytest.param(('"ttir.erf"', '"ttir.tanh"'), id="tanh instead of erf"),
    pytest.param(("%arg0, %c_half", "%arg1, %c_half"), id="different x in the two factors"),
])
def test_near_misses_are_not_gelu(ir: IRHarness, change: tuple[str, str]) -> None:
    ops = [op.replace(*change) for op in GELU_FORMS["half x first"]]
    text = gelu_module(ir, *ops).replace(f"%arg0: {T}", f"%arg0: {T}, %arg1: {T}")
    assert '"ttir.gelu"' not in ir.run_body("decompose", text)


def test_intermediate_values_used_elsewhere_survive(ir: IRHarness) -> None:
    ops = GELU_FORMS["half x first"]
    text = gelu_module(ir, *ops, binary("add", "%out2", "%out", "%erf")).replace(
        f"func.return %out : {T}", f"func.return %out2 : {T}")
    out = ir.run_body("decompose", text)
    ir.check(out, '"ttir.erf"', '%3 = "ttir.gelu"(%arg0)', '"ttir.add"(%3, %2)')


# ----------------------------------------------------------------------------------------------
# Named ops the device has kernels for


def test_softmax_and_layer_norm_stay_named_ops(ir: IRHarness) -> None:
    text = ir.module(
        f"%arg0: {T}, %arg1: tensor<3xf32>, %arg2: tensor<3xf32>", T,
        f'%0 = "ttir.softmax"(%arg0) {{axis = -1}} : ({T}) -> {T} loc("softmax")',
        f'%1 = "ttir.layer_norm"(%0, %arg1, %arg2) {{epsilon = 1e-05}} : ({T}, tensor<3xf32>, tensor<3xf32>) -> {T} '
        'loc("ln")',
        f'func.return %1 : {T} loc("ret")')
    assert ir.run_body("decompose,canonicalize", text) == ir.body(ir.run("", text))


# ----------------------------------------------------------------------------------------------
# Mish


@pytest.mark.parametrize("product", ["%arg0, %1", "%1, %arg0"])
def test_spelt_out_mish_becomes_mish(ir: IRHarness, product: str) -> None:
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {T}", T,
        f'%0 = "ttir.softplus"(%arg0) : ({T}) -> {T} loc("softplus")',
        f'%1 = "ttir.tanh"(%0) : ({T}) -> {T} loc("tanh")',
        f'%2 = "ttir.mul"({product}) : ({T}, {T}) -> {T} loc("mul")',
        f'func.return %2 : {T} loc("ret")'))
    assert out == (f'%0 = "ttir.mish"(%arg0) : ({T}) -> {T} loc(fused["softplus", "tanh", "mul"])\n'
                   f'func.return %0 : {T} loc("ret")')


def test_tanh_of_softplus_of_another_value_is_not_mish(ir: IRHarness) -> None:
    out = ir.run_body("decompose", ir.module(
        f"%arg0: {T}, %arg1: {T}", T,
        f'%0 = "ttir.softplus"(%arg1) : ({T}) -> {T} loc("softplus")',
        f'%1 = "ttir.tanh"(%0) : ({T}) -> {T} loc("tanh")',
        f'%2 = "ttir.mul"(%arg0, %1) : ({T}, {T}) -> {T} loc("mul")',
        f'func.return %2 : {T} loc("ret")'))
    assert '"ttir.mish"' not in out


def _hardswish_module(ir: IRHarness, gate: list[str], product: str, x: str = "%arg0") -> str:
    return ir.module(f"%arg0: {T}, %arg1: {T}", T, *gate,
                     f'%9 = "ttir.mul"({product}) : ({T}, {T}) -> {T} loc("mul")',
                     f'func.return %9 : {T} loc("ret")')


def _const(name: str, value: float) -> str:
    return f'%{name} = "ttir.constant"() {{value = dense<{value}> : tensor<f32>}} : () -> tensor<f32> loc("{name}")'


def _hard_sigmoid(x: str, beta: float = 0.5) -> list[str]:
    """HardSigmoid(x, 1/6, beta) as the importer writes it: min(relu(x * alpha + beta), 1)."""
    return [_const("a", 0.16666667), _const("b", beta), _const("one", 1.0),
            f'%0 = "ttir.mul"({x}, %a) : ({T}, tensor<f32>) -> {T} loc("alpha")',
            f'%1 = "ttir.add"(%b, %0) : (tensor<f32>, {T}) -> {T} loc("beta")',
            f'%2 = "ttir.relu"(%1) : ({T}) -> {T} loc("relu")',
            f'%3 = "ttir.minimum"(%2, %one) : ({T}, tensor<f32>) -> {T} loc("min")']


def _relu6_over_six(x: str) -> list[str]:
    return [_const("three", 3.0), _const("six", 6.0),
            f'%0 = "ttir.add"({x}, %three) : ({T}, tensor<f32>) -> {T} loc("add")',
            f'%1 = "ttir.relu"(%0) : ({T}) -> {T} loc("relu")',
            f'%2 = "ttir.minimum"(%six, %1) : (tensor<f32>, {T}) -> {T} loc("min")',
            f'%3 = "ttir.div"(%2, %six) : ({T}, tensor<f32>) -> {T} loc("div")']


@pytest.mark.parametrize("product", ["%arg0, %3", "%3, %arg0"])
@pytest.mark.parametrize("form", ["hard_sigmoid", "relu6"])
def test_spelt_out_hardswish_becomes_hardswish(ir: IRHarness, product: str, form: str) -> None:
    """ONNX's function body of HardSwish (x * HardSigmoid(x, 1/6, 1/2), as imported) and x * relu6(x + 3) / 6."""
    gate = _hard_sigmoid("%arg0") if form == "hard_sigmoid" else _relu6_over_six("%arg0")
    out = ir.run_body("decompose", _hardswish_module(ir, gate, product))
    assert out.splitlines()[-2].startswith(f'%0 = "ttir.hardswish"(%arg0) : ({T}) -> {T} loc(fused[')
    assert '"ttir.relu"' not in out and '"ttir.minimum"' not in out


@pytest.mark.parametrize(("gate", "product"), [(_hard_sigmoid("%arg1"), "%arg0, %3"),  # the gate of another value
                                               (_hard_sigmoid("%arg0", beta=0.4), "%arg0, %3"),  # another beta
                                               (_relu6_over_six("%arg1"), "%3, %arg0")])
def test_other_gates_are_not_hardswish(ir: IRHarness, gate: list[str], product: str) -> None:
    out = ir.run_body("decompose", _hardswish_module(ir, gate, product))
    assert '"ttir.hardswish"' not in out and '"ttir.relu"' in out
