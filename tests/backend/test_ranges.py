"""Value ranges (passes/ranges.py) and layout's bounded-f16: Float16 exactly where a value's range is proven
below 65504 at every step, bf16 elsewhere; and the bounds are sound (never below what the values reach)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from backend_helpers import BACKEND, Graph, body_text, check, compile_graph, dev, pcc, run

from ttc.ir.dialects import ttir
from ttc.passes.ranges import Range, _spectral_norms, _weight_stats, unary_range, value_ranges

LAYOUT = "layout{bounded-f16=true}"
LINEAR = 'activation = "none", transpose_b = false'


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def attention_like(gamma: float = 1.0, mask: float | None = None) -> Graph:
    """x -> linear (from the input: unbounded) -> layer norm -> linear -> (+ mask) -> softmax -> linear."""
    r = rng()
    g = Graph()
    h = g.op(ttir.LINEAR.name, [g.input("x", (32, 64)), g.weight("w0", r.normal(0, 0.1, (64, 64)))], (32, 64),
             LINEAR, loc="fc0")
    n = g.op(ttir.LAYER_NORM.name, [h, g.weight("gamma", np.full(64, gamma))], (32, 64),
             "axis = -1, epsilon = 1.0e-05", loc="ln")
    s = g.op(ttir.LINEAR.name, [n, g.weight("wq", r.normal(0, 0.1, (64, 64)))], (32, 64), LINEAR, loc="scores")
    if mask is not None:
        t = dev((32, 64))
        s = g.op(ttir.ELTWISE.name, [s, g.weight("mask", np.triu(np.full((32, 64), mask), 1))], (32, 64),
                 loc="masked", body=[f'%0 = "ttir.add"(%b0, %b1) : ({t}, {t}) -> {t}', f'"ttir.yield"(%0) : ({t}) -> ()'])
    p = g.op(ttir.SOFTMAX.name, [s], (32, 64), "axis = -1", loc="probs")
    y = g.op(ttir.LINEAR.name, [p, g.weight("wv", r.normal(0, 0.1, (64, 64)))], (32, 64), LINEAR, loc="mixed")
    g.output(y, "out")
    return g


def test_float16_where_a_norm_bounds_the_values_and_bf16_before_it() -> None:
    out = body_text(compile_graph(attention_like(), pipeline=LAYOUT))
    check(out, 'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("fc0")',  # computed from the graph input
          'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("ln")',  # a norm's variance stays bf16
          'x64xf16, #tt.layout<tile, l1, interleaved>> loc("scores")', 'x64xf16, #tt.layout<tile, l1, interleaved>> '
          'loc("probs")', 'x64xf16, #tt.layout<tile, dram, interleaved>> loc("mixed")')


def test_bounded_f16_off_keeps_bf16_everywhere() -> None:
    out = body_text(compile_graph(attention_like(), pipeline="layout{bounded-f16=false}"))
    assert "xf16," not in out


def test_a_range_past_float16_stays_bf16() -> None:
    """A norm scale of 30000 bounds the scores by ~2e5, past 65504: the scores and the softmax reading them
    stay bf16; the probabilities' consumer is bounded again (a convex combination of wv's rows)."""
    out = body_text(compile_graph(attention_like(gamma=30000.0), pipeline=LAYOUT))
    check(out, 'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("scores")',
          'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("probs")',
          'x64xf16, #tt.layout<tile, dram, interleaved>> loc("mixed")')


def test_a_huge_additive_mask_keeps_the_softmax_input_bf16() -> None:
    """-1e38 (a finfo.min style mask) cannot be held in Float16: the masked logits and the softmax reading them
    stay bf16; the probabilities' consumer is bounded again (a convex combination) and becomes f16."""
    out = body_text(compile_graph(attention_like(mask=-1.0e38), pipeline=LAYOUT))
    check(out, 'x64xf16, #tt.layout<tile, l1, interleaved>> loc("scores")',
          'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("masked")',
          'x64xbf16, #tt.layout<tile, l1, interleaved>> loc("probs")',
          'x64xf16, #tt.layout<tile, dram, interleaved>> loc("mixed")')


def test_bounded_f16_runs_and_matches_float64() -> None:
    g = attention_like()
    module = compile_graph(g, pipeline="layout{bounded-f16=true}," + BACKEND.split(",", 1)[1])
    x = rng(1).standard_normal((32, 64)).astype(np.float32)
    got = run(module, {"x": x})["out"]
    w = {k: v.astype(np.float64) for k, v in g.weights.items()}
    h = x @ w["w0"]
    n = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * w["gamma"]
    s = n @ w["wq"]
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ w["wv"]
    assert pcc(got, want) > 0.999
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02


def rms_norm_graph(width: int = 64) -> tuple[Graph, str]:
    """RMS norm as exporters decompose it: x * x, a sum over the last axis, then x * 1 / sqrt(sum / N + eps)."""
    g = Graph()
    x = g.input("x", (32, width))
    t, s = dev((32, width)), dev((32, 1))
    sq = g.op(ttir.ELTWISE.name, [x], (32, width), loc="square",
              body=[f'%0 = "ttir.mul"(%b0, %b0) : ({t}, {t}) -> {t}', f'"ttir.yield"(%0) : ({t}) -> ()'])
    total = g.op(ttir.REDUCE_SUM.name, [sq], (32, 1), "axes = [1], keepdims = true", loc="sum")
    scalar = "tensor<f32>"
    normed = g.op(ttir.ELTWISE.name, [total, x], (32, width), loc="rms", body=[
        f'%c = "ttir.constant"() {{value = dense<{1.0 / width}> : {scalar}}} : () -> {scalar}',
        f'%e = "ttir.constant"() {{value = dense<1.0e-06> : {scalar}}} : () -> {scalar}',
        f'%0 = "ttir.mul"(%b0, %c) : ({s}, {scalar}) -> {s}',
        f'%1 = "ttir.add"(%0, %e) : ({s}, {scalar}) -> {s}',
        f'%2 = "ttir.sqrt"(%1) : ({s}) -> {s}',
        f'%3 = "ttir.reciprocal"(%2) : ({s}) -> {s}',
        f'%4 = "ttir.mul"(%b1, %3) : ({t}, {s}) -> {t}',
        f'"ttir.yield"(%4) : ({t}) -> ()'])
    g.output(normed, "out")
    return g, normed


def test_the_rms_norm_idiom_bounds_an_unbounded_input_by_sqrt_n() -> None:
    g, _ = rms_norm_graph(64)
    module = compile_graph(g, pipeline="layout{bounded-f16=false}")
    ranges, peaks = value_ranges(module.function("main"), module.weights)
    bounded = [r for r in ranges.values() if r.magnitude > 0]
    # sqrt(64) = 8, with the slack for the device's bf16 statistic (NORM_SLACK) and roundings
    assert any(8.0 <= r.magnitude <= 8.0 * 1.2 and r.row_norm is not None for r in bounded)
    # its program reads the unbounded input (and sum) into Dst: its peak is not finite, so it stays bf16
    assert all(not math.isfinite(p) or p < 8.0 * 1.2 for p in peaks.values())
    assert "xf16," not in body_text(compile_graph(rms_norm_graph(64)[0], pipeline=LAYOUT))


@pytest.mark.parametrize("shape", [(64, 64), (512, 64), (96, 200)])
def test_spectral_bounds_are_upper_bounds(shape: tuple[int, int]) -> None:
    w = rng(2).normal(0, 0.05, shape).astype(np.float32)
    exact = np.linalg.norm(w.astype(np.float64), 2)
    column, absolute, spectral = _weight_stats(w[None])
    assert spectral >= exact
    assert column >= np.linalg.norm(w.astype(np.float64), axis=0).max()
    assert absolute >= np.abs(w.astype(np.float64)).sum(axis=0).max()
    assert exact <= _spectral_norms(w[None])[0] <= exact * (1 + 1e-6)


def test_unary_images() -> None:
    x = Range(-3.0, 2.0)
    assert unary_range("ttir.relu", x) == Range(0.0, 2.0)
    assert unary_range("sigmoid", x).hi < 1.0
    assert unary_range("ttir.reciprocal", x) is None  # 0 is in the interval
    assert unary_range("ttir.rsqrt", Range(4.0, 16.0)) == Range(0.25, 0.5)
    gelu = unary_range("gelu", x)
    assert gelu.lo <= -0.1699 and gelu.hi == 2.0


def test_matmul_bounds_hold_for_the_worst_aligned_inputs() -> None:
    """The Cauchy-Schwarz bound of a matmul after a norm is reached (within the rounding slack) by an input row
    aligned with W's largest column, and never exceeded by random rows."""
    r = rng(3)
    g = Graph()
    w = r.normal(0, 0.1, (64, 48))
    n = g.op(ttir.LAYER_NORM.name, [g.input("x", (32, 64)), g.weight("gamma", np.ones(64))], (32, 64),
             "axis = -1, epsilon = 1.0e-05", loc="ln")
    y = g.op(ttir.LINEAR.name, [n, g.weight("w", w)], (32, 48), LINEAR, loc="y")
    g.output(y, "out")
    module = compile_graph(g, pipeline="layout{bounded-f16=false}")
    ranges, _ = value_ranges(module.function("main"), module.weights)
    bound = max(r.magnitude for v, r in ranges.items() if getattr(v.type, "shape", None) == (32, 48))
    column = np.linalg.norm(w, axis=0).max()
    assert 8.0 * column <= bound <= 8.0 * column * 1.25  # ||x_hat|| = sqrt(64) = 8, and the rounding slack
    rows = r.standard_normal((1000, 64))
    rows = (rows - rows.mean(1, keepdims=True)) / rows.std(1, keepdims=True)
    assert np.abs(rows @ w).max() <= bound


@pytest.mark.parametrize("scale", [1e-3, 1.0, 3e4])
def test_bounded_f16_holds_whatever_the_input_scale(scale: float) -> None:
    """The f16 values are bounded by the norm, not by the input: inputs up to 3e4 (bf16 values past Float16's
    range after the first linear) run without a Float16 overflow fault and give finite outputs."""
    module = compile_graph(attention_like(), pipeline="layout{bounded-f16=true}," + BACKEND.split(",", 1)[1])
    x = (rng(4).standard_normal((32, 64)) * scale).astype(np.float32)
    out = run(module, {"x": x})["out"]
    assert np.isfinite(out).all()
