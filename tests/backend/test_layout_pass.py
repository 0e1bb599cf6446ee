"""layout: data formats (bf16, bfp8_b matmul weights) and memory spaces (L1 intermediates that fit)."""

from __future__ import annotations

import numpy as np
import pytest
from backend_helpers import Graph, body_text, check, compile_graph, compile_text

from ttc.ir import UserError
from ttc.ir.dialects.tt import E150

L1 = "#tt.layout<tile, l1, interleaved>"
DRAM = "#tt.layout<tile, dram, interleaved>"


def mlp(hidden: int = 64) -> Graph:
    """x -> linear(w1, b1, relu) -> linear(w2) -> softmax -> output, plus the hidden layer as an output."""
    g = Graph()
    x = g.input("x", (8, 32))
    h = g.op("ttir.linear", [x, g.weight("w1", np.ones((32, hidden))), g.weight("b1", np.ones(hidden))],
             (8, hidden), 'activation = "relu", transpose_b = false', loc="fc1")
    y = g.op("ttir.linear", [h, g.weight("w2", np.ones((hidden, 16)))], (8, 16),
             'activation = "none", transpose_b = false', loc="fc2")
    s = g.op("ttir.softmax", [y], (8, 16), "axis = -1", loc="softmax")
    g.output(s, "out")
    g.result = h
    return g


def test_formats_and_l1_intermediates() -> None:
    out = body_text(compile_graph(mlp(), pipeline="layout"))
    check(out,
          f'"ttir.to_layout"(%arg0) : (tensor<8x32xf32>) -> tensor<8x32xbf16, {DRAM}> loc("x")',
          f'"ttir.constant"() {{value = #tt.weight<"w1">}} : () -> tensor<32x64xbf16, {DRAM}>',
          f'"ttir.linear"(%0, %1, %2) {{activation = "relu", transpose_b = false}} : (tensor<8x32xbf16, {DRAM}>, '
          f'tensor<32x64xbf16, {DRAM}>, tensor<64xbf16, {DRAM}>) -> tensor<8x64xbf16, {L1}> loc("fc1")',
          f'-> tensor<8x16xbf16, {L1}> loc("fc2")',
          f'"ttir.softmax"(%5) {{axis = -1}} : (tensor<8x16xbf16, {L1}>) -> tensor<8x16xbf16, {DRAM}>',
          f'"ttir.to_layout"(%6) : (tensor<8x16xbf16, {DRAM}>) -> tensor<8x16xf32> loc("out")')


def test_bfp8_b_applies_to_matmul_weights_only() -> None:
    out = body_text(compile_graph(mlp(), pipeline="layout{dtype=bfp8_b}"))
    check(out, "tensor<32x64xbfp8_b, ", "tensor<64xbf16, ", "tensor<64x16xbfp8_b, ")
    assert "8x64xbfp8_b" not in out and "8x32xbfp8_b" not in out


def test_without_l1_intermediates_everything_stays_in_dram() -> None:
    out = body_text(compile_graph(mlp(), pipeline="layout{l1-intermediates=false}"))
    assert ", l1," not in out


def test_graph_outputs_and_inputs_stay_in_dram() -> None:
    g = mlp()
    g.output(g.result, "hidden")  # fc1's result is now also a graph output
    out = body_text(compile_graph(g, pipeline="layout"))
    check(out, f'-> tensor<8x64xbf16, {DRAM}> loc("fc1")', f'-> tensor<8x16xbf16, {L1}> loc("fc2")')


def test_an_intermediate_that_does_not_fit_stays_in_dram() -> None:
    """[4096, 4096] bf16 is 16384 tiles: 152 per core on 108 cores, 311,296 bytes. a and b fit in L1
    together; at the add, a third one would exceed the 875,136-byte budget, so c goes to DRAM."""
    shape = (4096, 4096)
    d = "tensor<4096x4096xf32, #tt.layout<tile, dram, interleaved>>"
    exp = [f'%0 = "ttir.exp"(%b0) : ({d}) -> {d} loc("e")', f'"ttir.yield"(%0) : ({d}) -> () loc("e")']
    add = [f'%0 = "ttir.add"(%b0, %b1) : ({d}, {d}) -> {d} loc("s")', f'"ttir.yield"(%0) : ({d}) -> () loc("s")']
    g = Graph()
    a = g.op("ttir.eltwise", [g.input("x", shape)], shape, loc="a", body=exp)
    b = g.op("ttir.eltwise", [a], shape, loc="b", body=exp)
    c = g.op("ttir.eltwise", [a, b], shape, loc="c", body=add)
    g.output(g.op("ttir.eltwise", [c], shape, loc="d", body=exp), "out")
    out = body_text(compile_graph(g, pipeline="layout"))
    check(out, f'-> tensor<4096x4096xbf16, {L1}> loc("a")', f'-> tensor<4096x4096xbf16, {L1}> loc("b")',
          f'-> tensor<4096x4096xbf16, {DRAM}> loc("c")', f'-> tensor<4096x4096xbf16, {DRAM}> loc("d")')
    assert 2 * 311296 < E150.l1_free < 3 * 311296


def test_unknown_dtype_is_a_user_error() -> None:
    with pytest.raises(UserError, match="layout: unknown dtype 'f16'"):
        compile_text(mlp().text(), dict(mlp().weights), pipeline="layout{dtype=f16}")
