"""channels-last: NCHW layout changes sink through per-pixel ops and cancel between convolutions; per-channel
affine maps fold into the convolution; global pools and flattens read the channels-last matrix directly.
And the device forms `tilize` gives the window ops and the graph-edge layout changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from conftest import IRHarness

X = "tensor<1x4x5x5xf32>"
M = "tensor<25x4xf32>"
NHWC = "tensor<1x5x5x4xf32>"
W = "tensor<4x4x1x1xf32>"
CONV = ('{dilations = [1, 1], groups = 1, input_shape = [1, 5, 5], pads = [0, 0, 0, 0], strides = [1, 1]}')


def to_matrix(src: str, first: int) -> list[str]:
    return [f'%{first} = "ttir.transpose"({src}) {{perm = [0, 2, 3, 1]}} : ({X}) -> {NHWC} loc("t{first}")',
            f'%{first + 1} = "ttir.reshape"(%{first}) : ({NHWC}) -> {M} loc("r{first}")']


def to_nchw(src: str, first: int) -> list[str]:
    return [f'%{first} = "ttir.reshape"({src}) : ({M}) -> {NHWC} loc("r{first}")',
            f'%{first + 1} = "ttir.transpose"(%{first}) {{perm = [0, 3, 1, 2]}} : ({NHWC}) -> {X} loc("t{first}")']


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w1": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
            "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
            "s": rng.standard_normal((1, 4, 1, 1)).astype(np.float32)}


@pytest.mark.parametrize("unary", ["relu", "hardswish", "floor", "softplus"])
def test_layout_changes_between_convolutions_cancel_through_an_elementwise_op(ir: IRHarness, unary: str) -> None:
    """Through every elementwise op of one operand (not a list of activations: MobileNetV3's HardSwish once
    stopped them, and each convolution paid two layout changes)."""
    out = ir.run_body("channels-last", ir.module(
        f"%arg0: {X}", X,
        f'%w1 = "ttir.constant"() {{value = #tt.weight<"w1">}} : () -> {W} loc("w1")',
        f'%w2 = "ttir.constant"() {{value = #tt.weight<"w2">}} : () -> {W} loc("w2")',
        *to_matrix("%arg0", 0),
        f'%2 = "ttir.conv2d"(%1, %w1) {CONV} : ({M}, {W}) -> {M} loc("c1")',
        *to_nchw("%2", 3),
        f'%5 = "ttir.{unary}"(%4) : ({X}) -> {X} loc("act")',
        *to_matrix("%5", 6),
        f'%8 = "ttir.conv2d"(%7, %w2) {CONV} : ({M}, {W}) -> {M} loc("c2")',
        *to_nchw("%8", 9),
        f'func.return %10 : {X} loc("ret")'), weights())
    ir.check(out, '"ttir.transpose"(%arg0) {perm = [0, 2, 3, 1]}', '"ttir.conv2d"', f'"ttir.{unary}"(%4) : ({M}) -> {M}',
             '"ttir.conv2d"(%5', '"ttir.transpose"', "func.return")
    assert out.count('"ttir.transpose"') == 2  # once at the input, once at the output


def test_batchnorm_scale_and_shift_fold_into_the_convolution(ir: IRHarness) -> None:
    module = ir.run("channels-last", ir.module(
        f"%arg0: {X}", X,
        f'%w1 = "ttir.constant"() {{value = #tt.weight<"w1">}} : () -> {W} loc("w1")',
        '%s = "ttir.constant"() {value = #tt.weight<"s">} : () -> tensor<1x4x1x1xf32> loc("s")',
        *to_matrix("%arg0", 0),
        f'%2 = "ttir.conv2d"(%1, %w1) {CONV} : ({M}, {W}) -> {M} loc("conv")',
        *to_nchw("%2", 3),
        f'%5 = "ttir.mul"(%4, %s) : ({X}, tensor<1x4x1x1xf32>) -> {X} loc("bn")',
        f'%6 = "ttir.add"(%5, %s) : ({X}, tensor<1x4x1x1xf32>) -> {X} loc("bn_shift")',
        f'func.return %6 : {X} loc("ret")'), weights())
    out = ir.body(module)
    assert '"ttir.mul"' not in out and '"ttir.add"' not in out
    ir.check(out, '"ttir.conv2d"(%1, %2, %3)')
    assert 'loc(fused["conv", "bn", "bn_shift"])' in out
    conv = next(op for op in module.walk() if op.name == "ttir.conv2d")
    w = module.weights[conv.operands[1].owner.attributes["value"].name]
    b = module.weights[conv.operands[2].owner.attributes["value"].name]
    s = weights()["s"].reshape(4)
    np.testing.assert_allclose(w, weights()["w1"] * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(b, s, rtol=1e-6)


def test_global_pool_reads_the_channels_last_pixels(ir: IRHarness) -> None:
    out = ir.run_body("channels-last", ir.module(
        f"%arg0: {M}", "tensor<1x4xf32>",
        *to_nchw("%arg0", 0),
        f'%2 = "ttir.reduce_mean"(%1) {{axes = [2, 3], keepdims = true}} : ({X}) -> tensor<1x4x1x1xf32> loc("gap")',
        '%3 = "ttir.reshape"(%2) : (tensor<1x4x1x1xf32>) -> tensor<1x4xf32> loc("flatten")',
        'func.return %3 : tensor<1x4xf32> loc("ret")'))
    assert '"ttir.transpose"' not in out
    ir.check(out, f'"ttir.reshape"(%arg0) : ({M}) -> tensor<1x25x4xf32>',
             '"ttir.reduce_mean"(%0) {axes = [1], keepdims = true}', "-> tensor<1x4xf32>")


def test_window_ops_become_a_stick_lookup_and_a_matmul(ir: IRHarness) -> None:
    w3 = "tensor<4x4x3x3xf32>"
    conv3 = ('{dilations = [1, 1], groups = 1, input_shape = [1, 5, 5], pads = [1, 1, 1, 1], strides = [2, 2]}')
    out = ir.run_body("tilize", ir.module(
        f"%arg0: {M}", "tensor<9x4xf32>",
        f'%w = "ttir.constant"() {{value = #tt.weight<"w">}} : () -> {w3} loc("w")',
        f'%0 = "ttir.conv2d"(%arg0, %w) {conv3} : ({M}, {w3}) -> tensor<9x4xf32> loc("conv")',
        'func.return %0 : tensor<9x4xf32> loc("ret")'), {"w": np.ones((4, 4, 3, 3), np.float32)})
    ir.check(out, '"ttir.matmul"(%0, %2) {tt.math_fidelity = "hifi4"}',  # channels padded to a tile, exactly
             '"ttir.to_layout"(%3) : (tensor<25x32xf32, #tt.layout<tile, dram, interleaved>>) -> '
             'tensor<25x32xf32, #tt.layout<row_major, dram, interleaved>>',
             '-> tensor<9x1x32xi32, #tt.layout<row_major, dram, interleaved>>',  # an index page per tile row
             '"ttir.embedding"(%4, %5) {im2col = true, pad_negative = true}',
             '"ttir.matmul"(%6, %1) : (tensor<9x288xf32')


def test_stacked_conv_weight_transposes_in_blocks_like_one_copy(monkeypatch) -> None:
    """The blocked transposition of a weight without padded channels equals the plain one, with a last block
    that is not full."""
    from ttc.passes import windows

    monkeypatch.setattr(windows, "TRANSPOSE_BLOCK", 16)
    w = np.random.default_rng(3).standard_normal((40, 64, 3, 2)).astype(np.float32)
    expected = w.transpose(2, 3, 1, 0).reshape(3 * 2 * 64, 40)
    assert np.array_equal(windows.stacked_conv_weight(w, 1), expected)


@pytest.mark.parametrize("consumer", ["Gemm", "LayerNormalization", "MatMul"])
def test_global_pool_without_keepdims_feeds_a_matrix(consumer: str) -> None:
    """ReduceMean over H and W with keepdims=0 (a mobile vision transformer's pooler) before a classifier:
    the rewritten pool is already the [N, C] matrix (it used to be re-wrapped as NCHW: invalid IR)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import ttc
    from ttc.golden import compare

    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((16, 16, 1, 1)), "axes": np.array([2, 3], np.int64),
             "g": rng.standard_normal((16, 2)), "s": rng.standard_normal(16), "b": rng.standard_normal(16)}
    head = {"Gemm": helper.make_node("Gemm", ["p", "g"], ["y"]),
            "MatMul": helper.make_node("MatMul", ["p", "g"], ["y"]),
            "LayerNormalization": helper.make_node("LayerNormalization", ["p", "s", "b"], ["y"])}[consumer]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("ReduceMean", ["c", "axes"], ["p"], keepdims=0), head]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16 if consumer ==
                                                                                       "LayerNormalization" else 2])],
                              [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    import onnxruntime

    [expected] = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    got = ttc.compile(onnx.ModelProto.FromString(model.SerializeToString())).run({"x": x})["y"]
    assert compare("y", got, expected).passed
