"""layout: data formats (bf16, bfp8_b matmul weights, f16 sources of a host-read softmax) and memory spaces
(L1 intermediates that fit)."""

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
    out = body_text(compile_graph(mlp(), pipeline="layout{precise-softmax=false}"))
    check(out,
          f'"ttir.to_layout"(%arg0) : (tensor<8x32xf32>) -> tensor<8x32xbf16, {DRAM}> loc("x")',
          f'"ttir.constant"() {{value = #tt.weight<"w1">}} : () -> tensor<32x64xbf16, {DRAM}>',
          f'"ttir.linear"(%0, %1, %2) {{activation = "relu", transpose_b = false}} : (tensor<8x32xbf16, {DRAM}>, '
          f'tensor<32x64xbf16, {DRAM}>, tensor<64xbf16, {DRAM}>) -> tensor<8x64xbf16, {L1}> loc("fc1")',
          f'-> tensor<8x16xbf16, {L1}> loc("fc2")',
          f'"ttir.softmax"(%5) {{axis = -1}} : (tensor<8x16xbf16, {L1}>) -> tensor<8x16xbf16, {DRAM}>',
          f'"ttir.to_layout"(%6) : (tensor<8x16xbf16, {DRAM}>) -> tensor<8x16xf32> loc("out")')


def test_bfp8_b_applies_to_matmul_weights_only() -> None:
    out = body_text(compile_graph(mlp(), pipeline="layout{dtype=bfp8_b precise-softmax=false}"))
    check(out, "tensor<32x64xbfp8_b, ", "tensor<64xbf16, ", "tensor<64x16xbfp8_b, ")
    assert "8x64xbfp8_b" not in out and "8x32xbfp8_b" not in out


def test_bfp8_b_activations_are_the_values_only_matmuls_read() -> None:
    """fc1's result feeds only fc2: bfp8_b; fc2's feeds a softmax and the input is the host's: bf16."""
    out = body_text(compile_graph(mlp(), pipeline="layout{dtype=bfp8_b activations=bfp8_b}"))
    check(out, f'"ttir.to_layout"(%arg0) : (tensor<8x32xf32>) -> tensor<8x32xbf16, {DRAM}> loc("x")',
          f'-> tensor<8x64xbfp8_b, {L1}> loc("fc1")', f'-> tensor<8x16xbf16, {L1}> loc("fc2")',
          f'-> tensor<8x16xbf16, {DRAM}> loc("softmax")')
    g = mlp()
    g.output(g.result, "hidden")  # the host reads fc1's result too
    assert "8x64xbfp8_b" not in body_text(compile_graph(g, pipeline="layout{dtype=bfp8_b activations=bfp8_b}"))


def test_bfp8_b_activations_follow_data_movement_into_a_matmul_and_stop_at_other_readers() -> None:
    """k is transposed into an activation x activation matmul: k and its transpose are bfp8_b together; v is
    also read by an add, so it stays bf16 (and so does the matmul's other operand, q, which a norm reads)."""
    g = Graph()
    x = g.input("x", (64, 64))
    q = g.op("ttir.linear", [x, g.weight("wq", np.ones((64, 64)))], (64, 64),
             'activation = "none", transpose_b = false', loc="q")
    k = g.op("ttir.linear", [x, g.weight("wk", np.ones((64, 64)))], (64, 64),
             'activation = "none", transpose_b = false', loc="k")
    kt = g.op("ttir.transpose", [k], (64, 64), "perm = [1, 0]", loc="kt")
    n = g.op("ttir.layer_norm", [q, g.weight("gamma", np.ones(64))], (64, 64), "axis = -1, epsilon = 1.0e-05",
             loc="ln")
    s = g.op("ttir.matmul", [q, kt], (64, 64), "transpose_a = false, transpose_b = false", loc="scores")
    g.output(g.op("ttir.add", [s, n], (64, 64), "", loc="sum"), "out")
    out = body_text(compile_graph(g, pipeline="layout{dtype=bfp8_b activations=bfp8_b}"))
    check(out, 'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("q")',
          'x64xbfp8_b, #tt.layout<tile, l1, interleaved>> loc("k")',
          'x64xbfp8_b, #tt.layout<tile, l1, interleaved>> loc("kt")')


def residual_block(post_norm: bool, fidelity: str = "") -> Graph:
    """h = norm(x); y = h + fc2(fc1(h)); then norm(y) (post-norm) or y (pre-norm: the stream runs on). fc2 may
    run at a fidelity of its own."""
    g = Graph()
    x = g.input("x", (64, 64))
    h = g.op("ttir.layer_norm", [x, g.weight("g0", np.ones(64))], (64, 64), "axis = -1, epsilon = 1.0e-05",
             loc="ln0")
    a = g.op("ttir.linear", [h, g.weight("w1", np.ones((64, 64)))], (64, 64),
             'activation = "relu", transpose_b = false', loc="fc1")
    own = f', tt.math_fidelity = "{fidelity}"' if fidelity else ""
    b = g.op("ttir.linear", [a, g.weight("w2", np.ones((64, 64)))], (64, 64),
             f'activation = "none", transpose_b = false{own}', loc="fc2")
    y = g.op("ttir.add", [h, b], (64, 64), "", loc="residual")
    if post_norm:
        y = g.op("ttir.layer_norm", [y, g.weight("g1", np.ones(64))], (64, 64), "axis = -1, epsilon = 1.0e-05",
                 loc="ln1")
    g.output(y, "out")
    return g


def test_matmul_fidelity_keeps_operands_b_of_post_norm_blocks_bf16_where_it_reads_their_bits() -> None:
    """matmul-fidelity=hifi2 (HiFi2 reads 6 mantissa bits of operand a, all of operand b): in a post-norm block
    fc1's result, fc2's operand a, is bfp8_b and the weights (operands b) bf16; in a pre-norm block, and at
    lofi, and for a matmul at a fidelity of its own that drops the bits, the weights are bfp8_b; without
    matmul-fidelity every weight is; an unknown fidelity is a user error."""
    hifi2 = "layout{dtype=bfp8_b activations=bfp8_b matmul-fidelity=hifi2}"
    out = body_text(compile_graph(residual_block(True), pipeline=hifi2))
    check(out, "tensor<64x64xbf16, ", f'-> tensor<64x64xbfp8_b, {L1}> loc("fc1")', "tensor<64x64xbf16, ")
    assert out.count("xbfp8_b, ") == 2  # fc1's result and fc2 reading it
    for graph, pipeline in ((residual_block(False), hifi2), (residual_block(True, "lofi"), hifi2),
                            (residual_block(True), hifi2.replace("hifi2", "lofi")),
                            (residual_block(True), "layout{dtype=bfp8_b activations=bfp8_b}")):
        out = body_text(compile_graph(graph, pipeline=pipeline))
        assert out.count("tensor<64x64xbfp8_b, #tt.layout<tile, dram") >= 2, (pipeline, out)  # w2 (and w1)
        assert "tensor<64x64xbf16, #tt.layout<tile, dram, interleaved>> loc(\"w2\")" not in out
    with pytest.raises(UserError, match="unknown matmul fidelity 'hifi5'"):
        compile_graph(mlp(), pipeline="layout{dtype=bfp8_b matmul-fidelity=hifi5}")


def test_block_float_results_keep_bf16_intermediates() -> None:
    """A program whose result is bfp8_b holds its partial sums and temporaries in bf16 (the Dst format)."""
    from ttc.ir.types import ScalarType
    from ttc.passes.ops.geometry import work_format

    assert work_format(ScalarType("bfp8_b")) == ScalarType("bf16")
    assert work_format(ScalarType("f16")) == ScalarType("f16")
    assert work_format(ScalarType("bf16")) == ScalarType("bf16")


def test_without_l1_intermediates_everything_stays_in_dram() -> None:
    out = body_text(compile_graph(mlp(), pipeline="layout{l1-intermediates=false}"))
    assert ", l1," not in out


def test_graph_outputs_and_inputs_stay_in_dram() -> None:
    g = mlp()
    g.output(g.result, "hidden")  # fc1's result is now also a graph output
    out = body_text(compile_graph(g, pipeline="layout{precise-softmax=false}"))
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


def test_unknown_activations_format_is_a_user_error() -> None:
    with pytest.raises(UserError, match="layout: unknown activations format 'f32'"):
        compile_text(mlp().text(), dict(mlp().weights), pipeline="layout{activations=f32}")


def test_precise_softmax_makes_a_host_read_softmax_and_its_logits_f16() -> None:
    """The probabilities and the logits become f16; the hidden layer before them, weights and the input stay bf16
    (the option never widens to the network)."""
    out = body_text(compile_graph(mlp(), pipeline="layout{precise-softmax=true bounded-f16=false}"))
    check(out,
          f'"ttir.to_layout"(%arg0) : (tensor<8x32xf32>) -> tensor<8x32xbf16, {DRAM}> loc("x")',
          f'"ttir.constant"() {{value = #tt.weight<"w1">}} : () -> tensor<32x64xbf16, {DRAM}>',
          f'tensor<64xbf16, {DRAM}>) -> tensor<8x64xbf16, {L1}> loc("fc1")',
          f'-> tensor<8x16xf16, {L1}> loc("fc2")',
          f'"ttir.softmax"(%5) {{axis = -1}} : (tensor<8x16xf16, {L1}>) -> tensor<8x16xf16, {DRAM}>',
          f'"ttir.to_layout"(%6) : (tensor<8x16xf16, {DRAM}>) -> tensor<8x16xf32> loc("out")')
    assert "8x16xf16" in body_text(compile_graph(mlp(), pipeline="layout{dtype=bfp8_b precise-softmax=true bounded-f16=false}"))


def test_bf16_everywhere_by_default() -> None:
    assert "f16," not in body_text(compile_graph(mlp(), pipeline="layout")).replace("bf16,", "")


def test_precise_softmax_stops_at_the_logits_and_at_softmaxes_the_host_does_not_read() -> None:
    g = Graph()
    h = g.op("ttir.linear", [g.input("x", (32, 64)), g.weight("w1", np.ones((64, 64)))], (32, 64),
             'activation = "none", transpose_b = false', loc="fc1")
    n = g.op("ttir.layer_norm", [h, g.weight("gamma", np.ones(64))], (32, 64), "axis = -1, epsilon = 1.0e-05",
             loc="ln")
    p = g.op("ttir.softmax", [n], (32, 64), "axis = -1", loc="attention")
    y = g.op("ttir.linear", [p, g.weight("w2", np.ones((64, 64)))], (32, 64),
             'activation = "none", transpose_b = false', loc="fc2")
    g.output(g.op("ttir.softmax", [y], (32, 64), "axis = -1", loc="classes"), "out")
    out = body_text(compile_graph(g, pipeline="layout{precise-softmax=true bounded-f16=false}"))
    check(out, 'xbf16, #tt.layout<tile, l1, interleaved>> loc("fc1")', 'bf16, #tt.layout<tile, l1, interleaved>> loc("ln")',
          'bf16, #tt.layout<tile, l1, interleaved>> loc("attention")', 'xf16, #tt.layout<tile, l1, interleaved>> loc("fc2")',
          'xf16, #tt.layout<tile, dram, interleaved>> loc("classes")')


def test_precise_softmax_keeps_copied_tiles_in_one_format() -> None:
    """A transpose of the (bf16) input copies its tiles: its result stays bf16 although the softmax is
    computed from it; the linear after it becomes f16."""
    g = Graph()
    t = g.op("ttir.transpose", [g.input("x", (64, 32))], (32, 64), "perm = [1, 0]", loc="t")
    y = g.op("ttir.linear", [t, g.weight("w", np.ones((64, 64)))], (32, 64),
             'activation = "none", transpose_b = false', loc="fc")
    g.output(g.op("ttir.softmax", [y], (32, 64), "axis = -1", loc="classes"), "out")
    out = body_text(compile_graph(g, pipeline="layout{precise-softmax=true bounded-f16=false}"))
    check(out, 'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("t")', 'x64xf16, #tt.layout<tile, l1, interleaved>> loc("fc")')


def test_precise_softmax_follows_its_probabilities_through_data_movement_to_the_host() -> None:
    """A softmax along a non-last axis comes back through a transpose: it counts as host-read, and the
    transposes on both sides are f16 with it."""
    g = Graph()
    y = g.op("ttir.linear", [g.input("x", (32, 64)), g.weight("w", np.ones((64, 64)))], (32, 64),
             'activation = "none", transpose_b = false', loc="fc")
    t = g.op("ttir.transpose", [y], (64, 32), "perm = [1, 0]", loc="to_last")
    s = g.op("ttir.softmax", [t], (64, 32), "axis = -1", loc="classes")
    g.output(g.op("ttir.transpose", [s], (32, 64), "perm = [1, 0]", loc="back"), "out")
    out = body_text(compile_graph(g, pipeline="layout{precise-softmax=true bounded-f16=false}"))
    check(out, 'xf16, #tt.layout<tile, l1, interleaved>> loc("fc")', 'xf16, #tt.layout<tile, l1, interleaved>> loc("to_last")',
          'xf16, #tt.layout<tile, l1, interleaved>> loc("classes")', 'xf16, #tt.layout<tile, dram, interleaved>> loc("back")')
