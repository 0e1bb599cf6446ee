"""IR tests of the device forms transformer exports need: booleans and integers as exact 0/1 floats
(`device_types`), token ids and embedding tables (`tilize`), saturated masks, data movement and reductions
(`movement`), and the canonicalize / decompose patterns feeding them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from ttc.ir import UserError

if TYPE_CHECKING:
    from conftest import IRHarness

L = "#tt.layout<tile, dram, interleaved>"
R = "#tt.layout<row_major, dram, interleaved>"


def t(shape: str, element: str = "f32", layout: str | None = None) -> str:
    return f"tensor<{shape}x{element}{', ' + layout if layout else ''}>"


def ops_of(body: str) -> list[str]:
    return [line.split('"')[1] for line in body.splitlines() if line.count('"') >= 2 and "= " in line]


# ----------------------------------------------------------------------------------------------
# Booleans and integers


def test_bert_mask_chain_becomes_exact_float_arithmetic(ir: IRHarness) -> None:
    """int64 mask -> cast(i1) -> and -> where(0, lowest): a zero test, a product and one select."""
    mask, flags, both = t("1x40", "i64"), t("1x40", "i1"), t("40x40", "i1")
    out = ir.run_body("tilize", ir.module(
        f'%arg0: {mask} {{ttir.name = "attention_mask"}}', t("40x40"),
        f'%0 = "ttir.constant"() {{value = dense<true> : {t("40x1", "i1")}}} : () -> {t("40x1", "i1")} loc("ones")',
        '%1 = "ttir.constant"() {value = dense<0.0> : tensor<f32>} : () -> tensor<f32> loc("zero")',
        '%2 = "ttir.constant"() {value = dense<-3.4028234663852886e+38> : tensor<f32>} : () -> tensor<f32> '
        'loc("lowest")',
        f'%3 = "ttir.typecast"(%arg0) : ({mask}) -> {flags} loc("cast")',
        f'%4 = "ttir.logical_and"(%0, %3) : ({t("40x1", "i1")}, {flags}) -> {both} loc("and")',
        f'%5 = "ttir.where"(%4, %1, %2) : ({both}, tensor<f32>, tensor<f32>) -> {t("40x40")} loc("where")',
        f'func.return %5 : {t("40x40")} loc("ret")'))
    ir.check(out,
             f'"ttir.to_layout"(%arg0) : ({mask}) -> {t("1x40", "f32", L)} loc("attention_mask")',
             f'tensor<f32>) -> {t("1x40", "f32", L)} loc("cast")',
             f'"ttir.mul"(%1, %5) : ({t("40x1", "f32", L)}, {t("1x40", "f32", L)}) -> {t("40x40", "f32", L)} loc("and")',
             f'"ttir.where"(%6, %2, %3) : ({t("40x40", "f32", L)}, tensor<f32>, tensor<f32>) -> ')
    assert "dense<-3.3895314e38>" in out  # float32's lowest saturated to bf16's: finite on the device
    assert "i1" not in out.replace("attention_mask", "")


def test_logical_ops_become_arithmetic(ir: IRHarness) -> None:
    b = t("4x8", "i1")
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {b}, %arg1: {b}", f"({b}, {b}, {b})",
        f'%0 = "ttir.logical_or"(%arg0, %arg1) : ({b}, {b}) -> {b} loc("or")',
        f'%1 = "ttir.logical_xor"(%arg0, %arg1) : ({b}, {b}) -> {b} loc("xor")',
        f'%2 = "ttir.logical_not"(%arg0) : ({b}) -> {b} loc("not")',
        f'func.return %0, %1, %2 : {b}, {b}, {b} loc("ret")'))
    assert [op for op in ops_of(out) if op.startswith("ttir.") and op not in ("ttir.to_layout", "ttir.constant")] \
        == ["ttir.maximum", "ttir.ne", "ttir.eq"]
    ir.check(out, f'-> {b} loc("or")', f'-> {b} loc("xor")', f'-> {b} loc("not")')


def test_where_of_tensors_stays_a_select_on_a_float_condition(ir: IRHarness) -> None:
    """No c * x + (1 - c) * y: the fused kernel selects the branches (an infinite one must not give NaN)."""
    out = ir.run_body("tilize", ir.module(
        f'%arg0: {t("8x8", "i1")}, %arg1: {t("8x8")}, %arg2: {t("8x8")}', t("8x8"),
        f'%0 = "ttir.where"(%arg0, %arg1, %arg2) : ({t("8x8", "i1")}, {t("8x8")}, {t("8x8")}) -> {t("8x8")} '
        'loc("where")',
        f'func.return %0 : {t("8x8")} loc("ret")'))
    assert [op for op in ops_of(out) if op != "ttir.to_layout"] == ["ttir.where"]
    ir.check(out, f'"ttir.where"(%0, %1, %2) : ({t("8x8", "f32", L)}, {t("8x8", "f32", L)}, {t("8x8", "f32", L)})')


def test_token_ids_cross_as_int32_rows_and_tables_become_row_major(ir: IRHarness) -> None:
    ids, table = t("1x40", "i64"), t("50x64")
    out = ir.run_body("tilize", ir.module(
        f'%arg0: {ids} {{ttir.name = "input_ids"}}', t("1x40x64"),
        f'%0 = "ttir.constant"() {{value = #tt.weight<"wte">}} : () -> {table} loc("wte")',
        f'%1 = "ttir.embedding"(%0, %arg0) : ({table}, {ids}) -> {t("1x40x64")} loc("lookup")',
        f'%2 = "ttir.matmul"(%1, %0) {{transpose_b = true}} : ({t("1x40x64")}, {table}) -> {t("1x40x50")} '
        'loc("lm_head")',
        f'func.return %1 : {t("1x40x64")} loc("ret")'),
        weights={"wte": np.ones((50, 64), np.float32)})
    ir.check(out,
             f'"ttir.to_layout"(%arg0) : ({ids}) -> {t("1x40", "i32", R)} loc("input_ids")',
             f'#tt.weight<"wte.rows">}} : () -> {t("50x64", "f32", R)}',
             '"ttir.embedding"(')


def test_integers_of_unknown_range_in_arithmetic_are_an_error(ir: IRHarness) -> None:
    i = t("4", "i64")
    with pytest.raises(UserError, match=r"node 'double': the integer tensor tensor<4xi64> of unknown range "
                                        r"would be computed on the device"):
        ir.run("tilize", ir.module(f"%arg0: {i}", i, f'%0 = "ttir.add"(%arg0, %arg0) : ({i}, {i}) -> {i} loc("double")',
                                   f'func.return %0 : {i} loc("ret")'))


def test_float_to_int_conversion_is_an_error(ir: IRHarness) -> None:
    with pytest.raises(UserError, match=r"node 'trunc': a float -> integer conversion"):
        ir.run("tilize", ir.module(
            f"%arg0: {t('4')}", t("4", "i32"),
            f'%0 = "ttir.typecast"(%arg0) : ({t("4")}) -> {t("4", "i32")} loc("trunc")',
            f'%1 = "ttir.constant"() {{value = dense<2> : {t("4", "i32")}}} : () -> {t("4", "i32")} loc("two")',
            f'%2 = "ttir.mul"(%0, %1) : ({t("4", "i32")}, {t("4", "i32")}) -> {t("4", "i32")} loc("m")',
            f'func.return %2 : {t("4", "i32")} loc("ret")'))


def test_empty_tensors_are_an_error(ir: IRHarness) -> None:
    with pytest.raises(UserError, match=r"node 'r': 'ttir.relu' computes an empty tensor tensor<0x4xf32>"):
        ir.run("tilize", ir.module(f'%arg0: {t("0x4")} {{ttir.name = "x"}}', t("0x4"),
                                   f'%0 = "ttir.relu"(%arg0) : ({t("0x4")}) -> {t("0x4")} loc("r")',
                                   f'func.return %0 : {t("0x4")} loc("ret")'))


def test_an_empty_constant_is_returned_from_the_host_and_taken_by_no_device_op(ir: IRHarness) -> None:
    empty = t("3x0", "i64")
    returned = ir.run_body("tilize", ir.module(
        "", empty, f'%0 = "ttir.constant"() {{value = dense<[]> : {empty}}} : () -> {empty} loc("e")',
        f'func.return %0 : {empty} loc("ret")'))
    assert ops_of(returned) == ["ttir.constant"] and empty in returned  # an integer host tensor still
    with pytest.raises(UserError, match=r"node 'r': 'ttir.concat' takes the empty tensor tensor<0x4xf32> of node 'e'"):
        ir.run("tilize", ir.module(
            f'%arg0: {t("2x4")} {{ttir.name = "x"}}', t("2x4"),
            f'%0 = "ttir.constant"() {{value = dense<[]> : {t("0x4")}}} : () -> {t("0x4")} loc("e")',
            f'%1 = "ttir.concat"(%arg0, %0) {{axis = 0}} : ({t("2x4")}, {t("0x4")}) -> {t("2x4")} loc("r")',
            f'func.return %1 : {t("2x4")} loc("ret")'))


# ----------------------------------------------------------------------------------------------
# Movement and reductions


def test_gather_with_constant_indices_becomes_slices_and_a_concat(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {t('4x32x32')}", t("4x32x32"),
        f'%0 = "ttir.constant"() {{value = dense<[3, 0, 1, 2]> : {t("4", "i64")}}} : () -> {t("4", "i64")} loc("i")',
        f'%1 = "ttir.gather"(%arg0, %0) {{axis = 0}} : ({t("4x32x32")}, {t("4", "i64")}) -> {t("4x32x32")} loc("g")',
        f'func.return %1 : {t("4x32x32")} loc("ret")'))
    ir.check(out, "begins = [3, 0, 0], ends = [4, 32, 32]", "begins = [0, 0, 0], ends = [3, 32, 32]",
             '"ttir.concat"(%1, %2) {axis = 0}')


def test_unaligned_slice_becomes_an_exact_selection_matmul(ir: IRHarness) -> None:
    module = ir.run("tilize", ir.module(
        f"%arg0: {t('40x50')}", t("40x20"),
        f'%0 = "ttir.slice"(%arg0) {{begins = [0, 5], ends = [40, 45], steps = [1, 2]}} : ({t("40x50")}) -> '
        f'{t("40x20")} loc("s")',
        f'func.return %0 : {t("40x20")} loc("ret")'))
    (matmul,) = [op for op in module.walk() if op.name == "ttir.matmul"]
    assert matmul.attributes["tt.math_fidelity"] == "hifi4"
    select = module.weights[matmul.operands[1].owner.attributes["value"].name]
    expected = np.zeros((50, 20), np.float32)
    expected[5 + 2 * np.arange(20), np.arange(20)] = 1
    np.testing.assert_array_equal(select, expected)


def test_reductions_become_last_dim_forms(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {t('3x40x50')}", t("3x50"),
        f'%0 = "ttir.reduce_mean"(%arg0) {{axes = [1], keepdims = false}} : ({t("3x40x50")}) -> {t("3x50")} '
        'loc("mean")',
        f'func.return %0 : {t("3x50")} loc("ret")'))
    ir.check(out, '"ttir.reduce_sum"(%0) {axes = [1], keepdims = true}', "dense<0.025>", '"ttir.mul"(%1, %2)',
             f"-> {t('3x1x50', 'f32', R)}", '"ttir.embedding"(')


def test_movement_that_keeps_rows_goes_through_rows(ir: IRHarness) -> None:
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {t('2x40x64')}", t("80x64"),
        f'%0 = "ttir.reshape"(%arg0) : ({t("2x40x64")}) -> {t("80x64")} loc("flat")',
        f'func.return %0 : {t("80x64")} loc("ret")'))
    # the argument's first device use is a change to row-major: the host writes it row-major (no untilize)
    ir.check(out, f'"ttir.to_layout"(%arg0) : ({t("2x40x64")}) -> {t("2x40x64", "f32", R)}',
             f'-> {t("80x64", "f32", R)}', f'{t("80", "i32", R)}', '"ttir.embedding"(')


# ----------------------------------------------------------------------------------------------
# Canonicalize and decompose


def test_lookup_of_reshaped_and_cast_ids_takes_the_ids_as_they_are(ir: IRHarness) -> None:
    ids, table = t("2x32", "i64"), t("10x64")
    out = ir.run_body("canonicalize", ir.module(
        f"%arg0: {ids}, %arg1: {table}", t("64x64"),
        f'%0 = "ttir.reshape"(%arg0) : ({ids}) -> {t("64", "i64")} loc("flat")',
        f'%1 = "ttir.typecast"(%0) : ({t("64", "i64")}) -> {t("64", "i32")} loc("cast")',
        f'%2 = "ttir.embedding"(%arg1, %1) : ({table}, {t("64", "i32")}) -> {t("64x64")} loc("lookup")',
        f'func.return %2 : {t("64x64")} loc("ret")'))
    ir.check(out, f'"ttir.embedding"(%arg1, %arg0) : ({table}, {ids}) -> {t("2x32x64")}',
             f'"ttir.reshape"(%0) : ({t("2x32x64")}) -> {t("64x64")}')


def test_tanh_gelu_is_recognised(ir: IRHarness) -> None:
    x, s = t("4x8"), "tensor<f32>"

    def const(name: str, value: float) -> str:
        return f'%{name} = "ttir.constant"() {{value = dense<{value}> : {s}}} : () -> {s} loc("{name}")'

    out = ir.run_body("decompose", ir.module(
        f"%arg0: {x}", x, const("half", 0.5), const("three", 3.0), const("c", 0.044715),
        const("k", 0.7978846), const("one", 1.0),
        f'%0 = "ttir.mul"(%arg0, %half) : ({x}, {s}) -> {x} loc("m1")',
        f'%1 = "ttir.pow"(%arg0, %three) : ({x}, {s}) -> {x} loc("p")',
        f'%2 = "ttir.mul"(%1, %c) : ({x}, {s}) -> {x} loc("m2")',
        f'%3 = "ttir.add"(%arg0, %2) : ({x}, {x}) -> {x} loc("a1")',
        f'%4 = "ttir.mul"(%3, %k) : ({x}, {s}) -> {x} loc("m3")',
        f'%5 = "ttir.tanh"(%4) : ({x}) -> {x} loc("t")',
        f'%6 = "ttir.add"(%5, %one) : ({x}, {s}) -> {x} loc("a2")',
        f'%7 = "ttir.mul"(%0, %6) : ({x}, {x}) -> {x} loc("m4")',
        f'func.return %7 : {x} loc("ret")'))
    ir.check(out, f'"ttir.gelu"(%arg0) {{approximate = "tanh"}} : ({x}) -> {x} loc(fused["p", "m2", "a1", "m3", "t", '
                  '"a2", "m1", "m4"])')


def test_saturate_clips_finite_values_and_keeps_nan_and_inf() -> None:
    from ttc.passes.tilize import BF16_MAX, saturate

    inside = np.array([1.0, -3.0e38, 3.0e38], np.float32)
    assert saturate(inside) is inside  # nothing moves: the array itself
    mixed = np.array([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 2.0], np.float32)
    out = saturate(mixed)
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf
    assert out[3] == np.float32(BF16_MAX) and out[4] == -np.float32(BF16_MAX) and out[5] == 2.0
    with_nan = np.array([np.nan, 1.0], np.float32)
    assert np.array_equal(saturate(with_nan), with_nan, equal_nan=True)
