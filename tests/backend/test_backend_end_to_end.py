"""Generated programs run on the emulator and match numpy float64 references (PCC >= 0.999), with the
numerics independent of the grid, the blocking and the card."""

from __future__ import annotations

import math

import numpy as np
import pytest
from backend_helpers import Graph, compile_graph, dev, pcc, programs, run

from ttc.ir.dialects.tt import E75, E150
from ttc.runtime.numerics import bf16_round

RNG = np.random.default_rng(7)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def linear_graph(a_shape, b_shape, out_shape, bias=None, activation="none", b_is_weight=True, b=None):
    g = Graph()
    x = g.input("a", a_shape)
    w = g.weight("w", b) if b_is_weight else g.input("b", b_shape)
    operands = [x, w]
    if bias is not None:
        operands.append(g.weight("bias", bias))
    y = g.op("ttir.linear", operands, out_shape, f'activation = "{activation}", transpose_b = false', loc="fc")
    g.output(y, "y")
    g.result = y
    return g


# ----------------------------------------------------------------------------------------------
# Matmul


@pytest.mark.parametrize(("m", "k", "n"), [(50, 70, 17), (3, 50, 70), (96, 200, 130)])
def test_matmul_odd_shapes(m: int, k: int, n: int) -> None:
    a, b = rand(m, k), rand(k, n)
    out = run(compile_graph(linear_graph((m, k), (k, n), (m, n), b=b)), {"a": a})["y"]
    assert pcc(out, a.astype(np.float64) @ b) >= 0.999


def test_batched_matmul_with_batched_and_shared_second_operand() -> None:
    a, b = rand(2, 3, 40, 64), rand(2, 3, 64, 50)
    g = linear_graph(a.shape, b.shape, (2, 3, 40, 50), b_is_weight=False)
    out = run(compile_graph(g), {"a": a, "b": b})["y"]
    assert pcc(out, a.astype(np.float64) @ b) >= 0.999
    shared = rand(64, 33)
    out = run(compile_graph(linear_graph(a.shape, shared.shape, (2, 3, 40, 33), b=shared)), {"a": a})["y"]
    assert pcc(out, a.astype(np.float64) @ shared) >= 0.999


@pytest.mark.parametrize("activation", ["relu", "gelu", "sigmoid", "tanh"])
def test_linear_with_bias_and_activation(activation: str) -> None:
    a, w, bias = rand(40, 96), rand(96, 70, scale=0.2), rand(70)
    module = compile_graph(linear_graph(a.shape, w.shape, (40, 70), bias=bias, activation=activation, b=w))
    out = run(module, {"a": a})["y"]
    pre = a.astype(np.float64) @ w + bias
    want = {"relu": lambda v: np.maximum(v, 0), "gelu": gelu, "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
            "tanh": np.tanh}[activation](pre)
    assert pcc(out, want) >= 0.999


def test_k_blocked_matmul_spills_partials_and_keeps_the_padding_zero() -> None:
    """One core and K = 256 tiles: a whole K row of in0 and column of in1 do not fit L1, so K is walked
    in steps with the partial sums spilled to a CB and reloaded; the bits equal those of 12 cores."""
    a, w, bias = rand(33, 8192), rand(8192, 40, scale=0.02), rand(40)
    g = linear_graph(a.shape, w.shape, (33, 40), bias=bias, activation="sigmoid", b=w)
    module = compile_graph(g, pipeline="layout,grid{max-cores=1},lower-to-kernels,allocate")
    (program,) = programs(module)
    assert program.attributes["grid"].num_cores == 1
    assert len([op for op in program.walk() if op.name == "ttkernel.matmul_tiles"]) > 1
    out = run(module, {"a": a})["y"]
    assert pcc(out, 1 / (1 + np.exp(-(a.astype(np.float64) @ w + bias)))) >= 0.999
    wide = run(compile_graph(g), {"a": a})["y"]
    np.testing.assert_array_equal(out.view(np.uint32), wide.view(np.uint32))


def test_same_matmul_on_different_grids_gives_identical_bits() -> None:
    a, b = rand(128, 192), rand(192, 160)
    g = linear_graph(a.shape, b.shape, (128, 160), b=b)
    outs, grids = [], []
    for pipeline in ("layout,grid{max-cores=1},lower-to-kernels,allocate", "layout,grid,lower-to-kernels,allocate",
                     "layout,grid{max-cores=2},lower-to-kernels,allocate"):
        module = compile_graph(g, pipeline=pipeline)
        grids.append(programs(module)[0].attributes["grid"].num_cores)
        outs.append(run(module, {"a": a})["y"])
    assert len(set(grids)) == 3
    for out in outs[1:]:
        np.testing.assert_array_equal(out.view(np.uint32), outs[0].view(np.uint32))


def test_e150_and_e75_give_identical_bits() -> None:
    a, w, bias, x = rand(200, 300), rand(300, 260, scale=0.1), rand(260), rand(768, 64)
    g = linear_graph(a.shape, w.shape, (200, 260), bias=bias, activation="gelu", b=w)
    g.output(g.op("ttir.softmax", [g.input("x", x.shape)], x.shape, "axis = -1", loc="sm"), "s")
    on_e150, on_e75 = compile_graph(g, device=E150), compile_graph(g, device=E75)
    assert [p.attributes["grid"] for p in programs(on_e150)] != [p.attributes["grid"] for p in programs(on_e75)]
    y150, y75 = run(on_e150, {"a": a, "x": x}), run(on_e75, {"a": a, "x": x})
    for name in ("y", "s"):
        np.testing.assert_array_equal(y150[name].view(np.uint32), y75[name].view(np.uint32))


def test_bfp8_weights_keep_accuracy() -> None:
    a, w = rand(64, 128), rand(128, 96)
    module = compile_graph(linear_graph(a.shape, w.shape, (64, 96), b=w),
                           pipeline="layout{dtype=bfp8_b},grid{math-fidelity=lofi},lower-to-kernels,allocate")
    assert "bfp8_b" in str(programs(module)[0].attributes["cbs"])
    assert pcc(run(module, {"a": a})["y"], a.astype(np.float64) @ w) >= 0.99


# ----------------------------------------------------------------------------------------------
# Eltwise


def test_eltwise_chain_with_broadcasting() -> None:
    """out = exp(-0.5 * relu((a + row) * col - 0.25)) / (1 + scalar) with a [2, 40, 70] row [70],
    a [40, 1] column and a [1] scalar tensor: FPU ops with row / col / scalar broadcasts, SFPU chains."""
    a, row, col, s = rand(2, 40, 70), rand(70), rand(40, 1), np.abs(rand(1)) + 0.5
    g = Graph()
    va, vr, vc, vs = g.input("a", a.shape), g.input("row", row.shape), g.input("col", col.shape), g.input("s", s.shape)
    d = "tensor<2x40x70xf32, #tt.layout<tile, dram, interleaved>>"
    body = [
        '%c = "ttir.constant"() {value = dense<0.25> : tensor<f32>} : () -> tensor<f32> loc("c")',
        '%h = "ttir.constant"() {value = dense<-0.5> : tensor<f32>} : () -> tensor<f32> loc("h")',
        '%one = "ttir.constant"() {value = dense<1.0> : tensor<f32>} : () -> tensor<f32> loc("one")',
        f'%0 = "ttir.add"(%b0, %b1) : ({d}, {dev(row.shape)}) -> {d} loc("add")',
        f'%1 = "ttir.mul"(%b2, %0) : ({dev(col.shape)}, {d}) -> {d} loc("mul")',
        f'%2 = "ttir.sub"(%1, %c) : ({d}, tensor<f32>) -> {d} loc("sub")',
        f'%3 = "ttir.relu"(%2) : ({d}) -> {d} loc("relu")',
        f'%4 = "ttir.mul"(%3, %h) : ({d}, tensor<f32>) -> {d} loc("half")',
        f'%5 = "ttir.exp"(%4) : ({d}) -> {d} loc("exp")',
        f'%6 = "ttir.add"(%b3, %one) : ({dev(s.shape)}, tensor<f32>) -> {dev(s.shape)} loc("plus1")',
        f'%7 = "ttir.reciprocal"(%6) : ({dev(s.shape)}) -> {dev(s.shape)} loc("recip")',
        f'%8 = "ttir.mul"(%5, %7) : ({d}, {dev(s.shape)}) -> {d} loc("scale")',
        f'"ttir.yield"(%8) : ({d}) -> () loc("scale")']
    y = g.op("ttir.eltwise", [va, vr, vc, vs], a.shape, loc="chain", body=body)
    g.output(y, "y")
    out = run(compile_graph(g), {"a": a, "row": row, "col": col, "s": s})["y"]
    x = a.astype(np.float64)
    want = np.exp(-0.5 * np.maximum((x + row) * col - 0.25, 0)) / (1 + s)
    assert pcc(out, want) >= 0.999


def test_eltwise_row_minus_column_expands_a_broadcast_operand_and_masks_padding() -> None:
    """[1, 45] row - [30, 1] column -> [30, 45]: neither covers the other; maximum of two tensors."""
    row, col, full = rand(1, 45), rand(30, 1), rand(30, 45)
    g = Graph()
    vr, vc, vf = g.input("row", row.shape), g.input("col", col.shape), g.input("full", full.shape)
    d = dev((30, 45))
    body = [f'%0 = "ttir.sub"(%b0, %b1) : ({dev(row.shape)}, {dev(col.shape)}) -> {d} loc("sub")',
            f'%1 = "ttir.maximum"(%0, %b2) : ({d}, {d}) -> {d} loc("max")',
            f'%2 = "ttir.sigmoid"(%1) : ({d}) -> {d} loc("sig")',
            f'"ttir.yield"(%2) : ({d}) -> () loc("sig")']
    y = g.op("ttir.eltwise", [vr, vc, vf], (30, 45), loc="rc", body=body)
    z = g.op("ttir.linear", [y, g.weight("ones", np.ones((45, 32), np.float32))], (30, 32),
             'activation = "none", transpose_b = false', loc="sum")  # reads the padding: it must be zero
    g.output(y, "y")
    g.output(z, "z")
    out = run(compile_graph(g), {"row": row, "col": col, "full": full})
    want = 1 / (1 + np.exp(-np.maximum(row.astype(np.float64) - col, full)))
    assert pcc(out["y"], want) >= 0.999
    np.testing.assert_allclose(out["z"][:, 0], want.sum(axis=1), rtol=0.02)


# ----------------------------------------------------------------------------------------------
# Softmax and layer norm


@pytest.mark.parametrize("shape", [(2, 37, 50), (5, 300)])
def test_softmax_masks_padding(shape: tuple[int, ...]) -> None:
    x = rand(*shape, scale=2.0) - 3.0  # all-negative rows: zero padding would win the max
    g = Graph()
    y = g.op("ttir.softmax", [g.input("x", shape)], shape, "axis = -1", loc="softmax")
    g.output(y, "y")
    out = run(compile_graph(g), {"x": x})["y"]
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    want = e / e.sum(axis=-1, keepdims=True)
    assert pcc(out, want) >= 0.999
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=0.02)


@pytest.mark.parametrize(("shape", "with_bias"), [((3, 20, 70), True), ((40, 100), False)])
def test_layer_norm_masks_padding(shape: tuple[int, ...], with_bias: bool) -> None:
    x = rand(*shape) * 3 + 1
    gamma, beta = 1 + rand(shape[-1], scale=0.1), rand(shape[-1], scale=0.1)
    g = Graph()
    operands = [g.input("x", shape), g.weight("gamma", gamma)] + ([g.weight("beta", beta)] if with_bias else [])
    y = g.op("ttir.layer_norm", operands, shape, "axis = -1, epsilon = 1.0e-05", loc="ln")
    g.output(y, "y")
    out = run(compile_graph(g), {"x": x})["y"]
    x64 = x.astype(np.float64)
    norm = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    want = norm * gamma + (beta if with_bias else 0)
    assert pcc(out, want) >= 0.999


# ----------------------------------------------------------------------------------------------
# Data movement


def test_split_heads_reshape_transpose_is_one_gather() -> None:
    x = rand(1, 64, 128)
    g = Graph()
    split = g.op("ttir.reshape", [g.input("x", x.shape)], (1, 64, 4, 32), loc="split")
    q = g.op("ttir.transpose", [split], (1, 4, 64, 32), "perm = [0, 2, 1, 3]", loc="q_heads")
    k = g.op("ttir.transpose", [g.op("ttir.reshape", [g.input("x2", x.shape)], (1, 64, 4, 32), loc="split2")],
             (1, 4, 32, 64), "perm = [0, 2, 3, 1]", loc="k_heads")
    g.output(q, "q")
    g.output(k, "k")
    module = compile_graph(g)
    assert [p.attributes["kind"] for p in programs(module)] == ["data_movement", "data_movement"]
    out = run(module, {"x": x, "x2": x})
    heads = x.reshape(1, 64, 4, 32)
    np.testing.assert_array_equal(out["q"], bf16(heads.transpose(0, 2, 1, 3)))
    np.testing.assert_array_equal(out["k"], bf16(heads.transpose(0, 2, 3, 1)))


def test_transpose_of_last_dims_with_padding_and_merge_heads() -> None:
    x, h = rand(2, 40, 70), rand(1, 4, 64, 32)
    g = Graph()
    t = g.op("ttir.transpose", [g.input("x", x.shape)], (2, 70, 40), "perm = [0, 2, 1]", loc="t")
    merged = g.op("ttir.transpose", [g.input("h", h.shape)], (1, 64, 4, 32), "perm = [0, 2, 1, 3]", loc="merge")
    flat = g.op("ttir.reshape", [merged], (1, 64, 128), loc="merge_reshape")
    g.output(t, "t")
    g.output(flat, "flat")
    out = run(compile_graph(g), {"x": x, "h": h})
    np.testing.assert_array_equal(out["t"], bf16(x.transpose(0, 2, 1)))
    np.testing.assert_array_equal(out["flat"], bf16(h.transpose(0, 2, 1, 3).reshape(1, 64, 128)))


def bf16(x: np.ndarray) -> np.ndarray:
    return bf16_round(x)
