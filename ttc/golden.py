"""Golden comparison of emulator outputs against onnxruntime.

Pure numpy (plus onnxruntime for the reference run, imported only when a reference run is made); no
imports from other ttc modules but the error class, so the metrics can be trusted independently of the
compiler they judge. onnxruntime's own refusals (an opset or op version it does not implement, a model it
cannot load) become user errors that say onnxruntime refused, not tracebacks.

Float outputs pass on two metrics: the Pearson correlation (PCC, which judges the *pattern*) and the
relative L2 error (which judges the *magnitude*). Element-wise ``allclose`` is reported too, with
tolerances per data format, but is informational: a few outliers in a low-precision format should
not fail an otherwise faithful output. Integer and boolean outputs must match exactly.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ttc.ir.diagnostics import UserError

# Element-wise (rtol, atol) per data format, for outputs of O(1) magnitude.
# - f32: the emulator may sum in a different order than onnxruntime; over K ~ 1e3 terms that costs
#   about K * eps(f32) ~ 1e-4 relative to the terms, and cancellation makes it absolute near zero.
# - bf16: 8 significant bits, unit roundoff 2^-8 ~ 4e-3; a few roundings per op chain -> ~2e-2.
# - bfp8_b: 7-bit magnitudes sharing one exponent per 16 values, so the step is up to 1/64 of the
#   row's largest value: an absolute error of ~1e-2 per rounding, a few of them -> 5e-2.
# - bfp4_b: 3-bit magnitudes, the step is up to 1/4 of the row's largest value -> 0.3.
TOLERANCES: dict[str, tuple[float, float]] = {
    "f32": (1e-4, 1e-4),
    "bf16": (2e-2, 2e-2),
    "bfp8_b": (5e-2, 5e-2),
    "bfp4_b": (3e-1, 3e-1),
}


def tolerances(data_format: str) -> tuple[float, float]:
    """(rtol, atol) for ``data_format``; raises ValueError for an unknown format."""
    try:
        return TOLERANCES[data_format.lower()]
    except KeyError:
        raise ValueError(f"unknown data format {data_format!r}; known: {sorted(TOLERANCES)}") from None


def _split_nonfinite(a: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Finite parts of two same-size flat arrays, or None if their non-finite entries disagree.

    Non-finite entries agree when they sit at the same positions with the same values (NaN matches
    NaN, +inf matches +inf).
    """
    bad_a, bad_e = ~np.isfinite(a), ~np.isfinite(e)
    if not np.array_equal(bad_a, bad_e) or not np.array_equal(a[bad_a], e[bad_e], equal_nan=True):
        return None
    return a[~bad_a], e[~bad_e]


def pcc(actual: np.ndarray, expected: np.ndarray) -> float:
    """Pearson correlation of the flattened arrays, computed in float64, in [-1, 1].

    Degenerate cases, where the textbook formula divides by zero:
    - empty arrays -> 1.0 (nothing disagrees);
    - non-finite entries: if their positions and values match exactly, only the finite rest is
      compared (all entries non-finite and matching -> 1.0); otherwise 0.0;
    - both constant (this includes both all-zero) -> 1.0. PCC ignores offset and scale
      (pcc(x, a*x + b) == 1), and two constants are the limit of that; a difference in level is the
      job of the relative L2 error, which ``compare`` checks as well;
    - exactly one constant -> 0.0: a flat output carries none of the reference's pattern (or the
      reference has none to reproduce), so no correlation is claimed.
    Raises ValueError if the arrays differ in size.
    """
    a = np.asarray(actual, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    if a.size != e.size:
        raise ValueError(f"pcc: sizes differ ({a.size} vs {e.size})")
    finite = _split_nonfinite(a, e)
    if finite is None:
        return 0.0
    a, e = finite
    if a.size == 0:
        return 1.0
    # Test constancy on the raw values: x - x.mean() need not be exactly zero for a constant x.
    const_a, const_e = a.min() == a.max(), e.min() == e.max()
    if const_a and const_e:
        return 1.0
    if const_a or const_e:
        return 0.0
    # Scale to max |x| == 1 first, so that huge float64 values cannot overflow the mean or the sums.
    a = a / np.abs(a).max()
    e = e / np.abs(e).max()
    a -= a.mean()
    e -= e.mean()
    r = float(np.dot(a, e) / math.sqrt(float(np.dot(a, a)) * float(np.dot(e, e))))
    return min(1.0, max(-1.0, r))


@dataclass(frozen=True)
class OutputComparison:
    """Metrics of one output against its reference. NaN marks an undefined metric."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    pcc: float
    rel_l2_err: float
    max_abs_err: float
    max_rel_err: float
    allclose: bool
    passed: bool

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-safe dict: Python scalars, shape as a list, None for NaN/inf metrics."""

        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "name": self.name,
            "shape": [int(d) for d in self.shape],
            "dtype": self.dtype,
            "pcc": num(self.pcc),
            "rel_l2_err": num(self.rel_l2_err),
            "max_abs_err": num(self.max_abs_err),
            "max_rel_err": num(self.max_rel_err),
            "allclose": bool(self.allclose),
            "passed": bool(self.passed),
        }


def compare(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    data_format: str = "bf16",
    pcc_threshold: float = 0.99,
    rel_l2_threshold: float = 0.05,
) -> OutputComparison:
    """Compare one emulator output with its onnxruntime reference.

    - Shape mismatch: not passed, all metrics NaN.
    - Integer/bool reference: passed only on an exact match of the values.
    - Float reference: passed when pcc >= pcc_threshold and rel_l2_err <= rel_l2_threshold.
    rel_l2_err = ||actual - expected|| / ||expected||; when ||expected|| == 0 it is 0.0 for an exact
    match and inf otherwise. max_rel_err = max |actual - expected| / max(|expected|, atol), the atol
    of ``data_format`` keeping near-zero references from dominating. Metrics cover the finite
    entries; non-finite entries that do not match exactly make pcc 0.0 and the errors inf.
    """
    rtol, atol = tolerances(data_format)
    exp_arr = np.asarray(expected)
    act_arr = np.asarray(actual)
    shape = tuple(int(d) for d in exp_arr.shape)
    dtype = exp_arr.dtype.name
    if act_arr.shape != exp_arr.shape:
        nan = float("nan")
        return OutputComparison(name, shape, dtype, nan, nan, nan, nan, allclose=False, passed=False)

    a = act_arr.astype(np.float64).ravel()
    e = exp_arr.astype(np.float64).ravel()
    r = pcc(a, e)
    finite = _split_nonfinite(a, e)
    if finite is None:
        inf = float("inf")
        rel_l2 = max_abs = max_rel = inf
    else:
        fa, fe = finite
        diff = np.abs(fa - fe)
        ref_norm = float(np.linalg.norm(fe))
        diff_norm = float(np.linalg.norm(diff))
        if ref_norm > 0.0:
            rel_l2 = diff_norm / ref_norm
        elif diff_norm == 0.0:
            rel_l2 = 0.0
        else:
            rel_l2 = float("inf")
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(fe), atol)).max()) if diff.size else 0.0

    if exp_arr.dtype.kind in "iub":
        exact = bool(np.array_equal(act_arr, exp_arr))
        return OutputComparison(name, shape, dtype, r, rel_l2, max_abs, max_rel, exact, exact)

    close = bool(np.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True))
    passed = r >= pcc_threshold and rel_l2 <= rel_l2_threshold
    return OutputComparison(name, shape, dtype, r, rel_l2, max_abs, max_rel, close, passed)


ModelLike = str | os.PathLike[str] | onnx.ModelProto


def _session(model: ModelLike) -> Any:
    """A CPU onnxruntime session with default options (onnxruntime is imported here, on first use)."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    where = "the model" if isinstance(model, onnx.ModelProto) else os.fspath(model)
    try:
        return ort.InferenceSession(source, sess_options=ort.SessionOptions(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NotImplemented, InvalidProtobuf, ...
        raise UserError(f"--golden: onnxruntime cannot load {where}, so there is no reference to compare "
                        f"with: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 400 else line[:400] + "..."


def _run(sess: Any, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[Any]:
    """One onnxruntime run; its refusals (a feed it rejects, a kernel that fails) as user errors."""
    try:
        return sess.run(list(names) if names is not None else None, dict(feeds))
    except Exception as exc:
        raise UserError(f"--golden: onnxruntime failed to run the model, so there is no reference to compare "
                        f"with: {_first_line(exc)}") from None


def run_onnxruntime(
    model_path_or_proto: ModelLike,
    feeds: Mapping[str, np.ndarray],
    output_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run the model once in onnxruntime (CPU, default options); all outputs unless named."""
    if output_names is not None and not output_names:
        return {}  # onnxruntime reads an empty list of names as "all outputs"
    sess = _session(model_path_or_proto)
    names = list(output_names) if output_names is not None else [o.name for o in sess.get_outputs()]
    results = _run(sess, names, feeds)
    return {n: np.asarray(v) for n, v in zip(names, results, strict=True)}


@dataclass(frozen=True)
class TimedRun:
    """onnxruntime's outputs with the wall time of its first run and, after `repeat` more, their median."""

    outputs: dict[str, np.ndarray]
    first_s: float
    warm_median_s: float | None
    warm_runs: int


def run_onnxruntime_timed(model: ModelLike, feeds: Mapping[str, np.ndarray], output_names: Sequence[str],
                          repeat: int = 0) -> TimedRun:
    """Run the model once in onnxruntime (CPU, default options), timing that run (session creation is not
    timed), then `repeat` more warm runs for their median."""
    sess = _session(model)
    feed_dict = dict(feeds)
    names = list(output_names)
    start = time.perf_counter()
    results = _run(sess, names, feed_dict) if names else []
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        _run(sess, names or None, feed_dict)
        times.append(time.perf_counter() - start)
    outputs = {n: np.asarray(v) for n, v in zip(names, results, strict=True)}
    return TimedRun(outputs, first, statistics.median(times) if times else None, repeat)


def time_onnxruntime(model: ModelLike, feeds: Mapping[str, np.ndarray], repeats: int = 3) -> float:
    """Median wall time in seconds of ``repeats`` warm runs (after one untimed warm-up run).

    Session creation is not timed.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    sess = _session(model)
    feed_dict = dict(feeds)
    _run(sess, None, feed_dict)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _run(sess, None, feed_dict)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fmt(x: float, spec: str) -> str:
    return format(x, spec) if math.isfinite(x) else ("inf" if x == float("inf") else "-")


def format_report(comparisons: Iterable[OutputComparison]) -> str:
    """A fixed-width table, one row per output, and a summary line."""
    rows = list(comparisons)
    header = ("output", "shape", "dtype", "pcc", "rel_l2", "max_abs", "max_rel", "allclose", "result")
    table = [header]
    for c in rows:
        table.append(
            (
                c.name,
                "x".join(str(d) for d in c.shape) or "scalar",
                c.dtype,
                _fmt(c.pcc, ".6f"),
                _fmt(c.rel_l2_err, ".3e"),
                _fmt(c.max_abs_err, ".3e"),
                _fmt(c.max_rel_err, ".3e"),
                "yes" if c.allclose else "no",
                "PASS" if c.passed else "FAIL",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    left = {0, 1, 2}  # text columns left-aligned, numbers right-aligned

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            s.ljust(w) if i in left else s.rjust(w) for i, (s, w) in enumerate(zip(r, widths, strict=True))
        )

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in table[1:]]
    n_pass = sum(c.passed for c in rows)
    out.append(f"{n_pass}/{len(rows)} outputs passed")
    return "\n".join(out)
