"""Tests for ttc.golden: PCC degenerate cases, compare() metrics and verdicts, JSON, onnxruntime helpers."""

import json
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import numpy_helper

from ttc import golden, zoo

RNG = np.random.default_rng(0)
X = RNG.standard_normal(1000).astype(np.float32)


# --- pcc ---------------------------------------------------------------------------------------


def test_pcc_identical_and_anticorrelated() -> None:
    assert golden.pcc(X, X) == pytest.approx(1.0)
    assert golden.pcc(-X, X) == pytest.approx(-1.0)
    assert golden.pcc(3 * X + 7, X) == pytest.approx(1.0)  # offset and scale invariant


def test_pcc_matches_numpy_corrcoef() -> None:
    y = X + 0.5 * RNG.standard_normal(X.size)
    assert golden.pcc(y, X) == pytest.approx(np.corrcoef(y, X)[0, 1], abs=1e-12)


def test_pcc_constant_cases() -> None:
    ones = np.ones(10)
    assert golden.pcc(ones, ones) == 1.0
    assert golden.pcc(np.zeros(10), np.zeros(10)) == 1.0
    assert golden.pcc(np.full(3, 0.1), np.full(3, 0.1)) == 1.0  # mean(0.1s) != 0.1 exactly
    assert golden.pcc(2 * ones, ones) == 1.0  # documented: level differences are rel_l2's job
    assert golden.pcc(ones, X[:10]) == 0.0
    assert golden.pcc(X[:10], np.zeros(10)) == 0.0


def test_pcc_empty() -> None:
    assert golden.pcc(np.array([]), np.array([])) == 1.0


def test_pcc_nonfinite() -> None:
    e = X.copy()
    e[[3, 5, 7]] = [np.nan, np.inf, -np.inf]
    a = e.copy()
    a[~np.isfinite(a)] = e[~np.isfinite(e)]
    a[np.isfinite(a)] += 1e-3
    assert golden.pcc(a, e) == pytest.approx(1.0, abs=1e-5)  # matching non-finite entries: compare the rest
    moved = e.copy()
    moved[[3, 4]] = moved[[4, 3]]  # NaN at another position
    assert golden.pcc(moved, e) == 0.0
    flipped = e.copy()
    flipped[5] = -np.inf  # same position, other value
    assert golden.pcc(flipped, e) == 0.0
    assert golden.pcc(X, e) == 0.0
    all_nan = np.full(4, np.nan)
    assert golden.pcc(all_nan, all_nan) == 1.0


def test_pcc_huge_values_do_not_overflow() -> None:
    big = X.astype(np.float64) * 1e300
    assert golden.pcc(big, big) == pytest.approx(1.0)


def test_pcc_size_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        golden.pcc(np.ones(3), np.ones(4))


@given(
    arrays(np.float64, st.integers(2, 50), elements=st.floats(-1e6, 1e6)),
    st.floats(0.1, 10),
    st.floats(-100, 100),
)
def test_pcc_properties(x: np.ndarray, scale: float, offset: float) -> None:
    r = golden.pcc(x, x)
    assert r == 1.0 or r == pytest.approx(1.0)
    assert -1.0 <= golden.pcc(x[::-1], x) <= 1.0
    assert golden.pcc(x[::-1], x) == pytest.approx(golden.pcc(x, x[::-1]))
    if x.max() - x.min() > 1e-3 * max(1.0, np.abs(x).max()):  # well-conditioned: affine invariance
        assert golden.pcc(scale * x + offset, x) == pytest.approx(1.0, abs=1e-6)


# --- compare -----------------------------------------------------------------------------------


def test_compare_bf16_rounding_passes() -> None:
    c = golden.compare("y", X.astype(ml_dtypes.bfloat16), X)
    assert c.passed and c.allclose
    assert c.shape == (1000,) and c.dtype == "float32"
    assert 0 < c.rel_l2_err < 2**-8
    assert c.pcc > 0.9999


def test_compare_rel_l2_and_thresholds() -> None:
    noisy = X + 0.1 * RNG.standard_normal(X.size).astype(np.float32)
    c = golden.compare("y", noisy, X)
    expected_rel = np.linalg.norm(noisy.astype(np.float64) - X) / np.linalg.norm(X.astype(np.float64))
    assert c.rel_l2_err == pytest.approx(expected_rel)
    assert c.max_abs_err == pytest.approx(np.abs(noisy.astype(np.float64) - X).max())
    assert not c.passed  # rel_l2 ~ 0.1 > 0.05, though pcc ~ 0.995 >= 0.99
    assert c.pcc >= 0.99
    assert golden.compare("y", noisy, X, rel_l2_threshold=0.2).passed
    assert not golden.compare("y", noisy, X, rel_l2_threshold=0.2, pcc_threshold=0.999).passed


def test_compare_scaled_output_fails_on_rel_l2() -> None:
    c = golden.compare("y", 2 * X, X)
    assert c.pcc == pytest.approx(1.0)
    assert c.rel_l2_err == pytest.approx(1.0)
    assert not c.passed


def test_compare_zero_reference() -> None:
    z = np.zeros(5, np.float32)
    assert golden.compare("z", z, z).rel_l2_err == 0.0
    assert golden.compare("z", z, z).passed
    c = golden.compare("z", z + 1, z)
    assert c.rel_l2_err == math.inf and not c.passed
    assert c.to_json()["rel_l2_err"] is None


def test_compare_allclose_by_format() -> None:
    y = X * (1 + 0.01)  # 1% off everywhere
    assert not golden.compare("y", y, X, data_format="f32").allclose
    assert golden.compare("y", y, X, data_format="bf16").allclose
    assert golden.compare("y", y, X, data_format="BFP8_B").allclose
    with pytest.raises(ValueError):
        golden.compare("y", y, X, data_format="fp13")


def test_compare_integer_and_bool_exact() -> None:
    i = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert golden.compare("i", i.copy(), i).passed
    assert golden.compare("i", i.astype(np.int32), i).passed  # values decide, not the width
    off = i.copy()
    off[2, 3] += 1
    c = golden.compare("i", off, i)
    assert not c.passed and not c.allclose
    assert c.pcc > 0.99  # metrics would pass a float output; integers need exactness

    mask = RNG.random(20) > 0.5
    assert golden.compare("m", mask.copy(), mask).passed
    assert not golden.compare("m", ~mask, mask).passed
    assert golden.compare("m", mask, mask).dtype == "bool"


def test_compare_shape_mismatch() -> None:
    c = golden.compare("y", X[:999], X)
    assert not c.passed and not c.allclose
    assert all(math.isnan(v) for v in (c.pcc, c.rel_l2_err, c.max_abs_err, c.max_rel_err))
    assert not golden.compare("y", X.reshape(10, 100), X).passed  # same size, other shape
    assert not golden.compare("i", np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64)).passed


def test_compare_nonfinite() -> None:
    e = X.copy()
    e[0] = np.nan
    assert golden.compare("y", e.copy(), e).passed
    a = e.copy()
    a[0] = 0.0
    c = golden.compare("y", a, e)
    assert not c.passed and c.pcc == 0.0 and c.rel_l2_err == math.inf


def test_compare_empty() -> None:
    c = golden.compare("e", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    assert c.passed and c.pcc == 1.0 and c.rel_l2_err == 0.0


def test_comparison_is_frozen() -> None:
    c = golden.compare("y", X, X)
    with pytest.raises(AttributeError):
        c.passed = False  # type: ignore[misc]


def test_to_json_keys_and_serialisable() -> None:
    keys = {"name", "shape", "dtype", "pcc", "rel_l2_err", "max_abs_err", "max_rel_err", "allclose", "passed"}
    cases = [
        golden.compare("ok", X.reshape(10, 100), X.reshape(10, 100)),
        golden.compare("bad_shape", X[:5], X),
        golden.compare("int", np.arange(3), np.arange(3)),
        golden.compare("nan", np.full(3, np.nan), np.zeros(3)),
    ]
    for c in cases:
        d = c.to_json()
        assert set(d) == keys
        text = json.dumps(d, allow_nan=False)  # raises on NaN/inf
        assert json.loads(text) == d
    assert cases[0].to_json()["shape"] == [10, 100]
    assert cases[1].to_json()["pcc"] is None
    assert type(cases[2].to_json()["pcc"]) is float


def test_format_report() -> None:
    cs = [golden.compare("logits", X, X), golden.compare("a_longer_name", X[:3], X)]
    text = golden.format_report(cs)
    lines = text.splitlines()
    assert "pcc" in lines[0] and "rel_l2" in lines[0]
    assert "PASS" in lines[2] and "FAIL" in lines[3]
    assert len(lines[2]) == len(lines[3])  # fixed width
    assert lines[-1] == "1/2 outputs passed"
    assert golden.format_report([]).splitlines()[-1] == "0/0 outputs passed"


# --- onnxruntime ---------------------------------------------------------------------------------


def test_run_onnxruntime_proto_and_path(tmp_path) -> None:
    model = zoo.mlp(batch=2, sizes=(8, 4, 3))
    feeds = zoo.random_inputs(model)
    out = golden.run_onnxruntime(model, feeds)
    assert list(out) == ["logits"] and out["logits"].shape == (2, 3)
    path = tmp_path / "m.onnx"
    zoo.save(model, path)
    again = golden.run_onnxruntime(path, feeds, output_names=["logits"])
    np.testing.assert_array_equal(again["logits"], out["logits"])
    again = golden.run_onnxruntime(str(path), feeds)
    np.testing.assert_array_equal(again["logits"], out["logits"])


def test_run_onnxruntime_matches_numpy() -> None:
    model = zoo.mlp(batch=2, sizes=(8, 4, 3))
    feeds = zoo.random_inputs(model)
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = np.maximum(feeds["input"] @ w["fc1.weight"].T + w["fc1.bias"], 0)
    ref = h @ w["fc2.weight"].T + w["fc2.bias"]
    np.testing.assert_allclose(golden.run_onnxruntime(model, feeds)["logits"], ref, rtol=1e-5, atol=1e-6)


def test_time_onnxruntime() -> None:
    model = zoo.odd_shapes()
    t = golden.time_onnxruntime(model, zoo.random_inputs(model), repeats=3)
    assert isinstance(t, float) and 0 < t < 10
    with pytest.raises(ValueError):
        golden.time_onnxruntime(model, zoo.random_inputs(model), repeats=0)


def test_run_onnxruntime_with_no_names_asked_returns_nothing() -> None:
    """onnxruntime reads an empty list of output names as "all outputs"; asking for none gives none (per-op
    mode on a model none of whose nodes a program can be matched to)."""
    model = zoo.mlp()
    feeds = zoo.random_inputs(model)
    assert golden.run_onnxruntime(model, feeds, []) == {}
    assert set(golden.run_onnxruntime(model, feeds)) == {o.name for o in model.graph.output}
