"""The checks every model-family test applies (tests/models/test_families.py, benchmarks/bench_families.py).

- `assert_not_degenerate`: onnxruntime's outputs must carry information, or a golden comparison passes
  vacuously (EfficientNet-B0 at HF's default initialisation outputs exactly zero): every float output has a
  standard deviation well above zero (relative to its magnitude) and no constant row (last axis).
- `golden`: the project's golden rule, `ttc.golden.compare` with its defaults (PCC >= 0.99, relative L2
  error <= 0.05 at bf16), against onnxruntime on the same seeded inputs (`ttc.evaluate.make_inputs`, as
  tests/models/test_hf_models.py does).
- `compile_timed`: ttc.compile with its wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

import ttc
from ttc.evaluate import index_bounds
from ttc.golden import OutputComparison, compare, run_onnxruntime

# A float output's std must exceed this fraction of its mean absolute value (a constant or near-constant
# output has ~0; a sane activation or logit tensor has O(1); softmax probabilities over thousands of
# classes with logits of std ~1 still have well over 0.1).
MIN_RELATIVE_STD = 0.05
# A row is constant when its values span less than this fraction of the whole output's std.
MIN_ROW_SPREAD = 1e-3


class DegenerateOutput(AssertionError):
    pass


def degeneracy(name: str, value: np.ndarray) -> str | None:
    """Why `value` (a reference output) is degenerate, or None."""
    if value.dtype.kind != "f":
        return None
    data = value.astype(np.float64)
    if not np.isfinite(data).all():
        return f"output '{name}' has non-finite values"
    std = float(data.std())
    scale = float(np.abs(data).mean())
    if scale == 0.0 or std <= MIN_RELATIVE_STD * scale:
        return f"output '{name}' is (nearly) constant: std {std:.3g}, mean |x| {scale:.3g}"
    if data.ndim >= 1 and data.shape[-1] > 1:
        rows = data.reshape(-1, data.shape[-1])
        spread = rows.max(axis=1) - rows.min(axis=1)
        constant = int((spread <= MIN_ROW_SPREAD * std).sum())
        if constant:
            return f"output '{name}' has {constant} constant rows of {rows.shape[0]} (last axis {data.shape[-1]})"
    return None


def assert_not_degenerate(outputs: dict[str, np.ndarray]) -> None:
    problems = [p for name, value in outputs.items() if (p := degeneracy(name, value))]
    if problems:
        raise DegenerateOutput("; ".join(problems))


COMPILE_BUDGET_S = 10.0  # a batch-1 family model's compile, CPU seconds (benchmarks/bench_families.py)


def compile_timed(path: Path, **options) -> tuple[ttc.compiler.CompiledModel, float, float]:
    """(compiled model, wall seconds, CPU seconds of this process): the CPU time is what the compile budget
    is checked against, since the wall time on a shared machine also counts other processes' work."""
    start, cpu = time.perf_counter(), time.process_time()
    compiled = ttc.compile(str(path), **options)
    return compiled, time.perf_counter() - start, time.process_time() - cpu


@dataclass
class GoldenRun:
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    results: list[OutputComparison]
    run_s: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def worst(self) -> OutputComparison:
        return max(self.results, key=lambda r: (not r.passed, r.rel_l2_err))


def model_feeds(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input, drawn as `ttc.evaluate.make_inputs` draws them (floats standard
    normal, integers below the size of the table they index, else 0/1), from the model alone, so a model
    that does not compile can still be checked for degenerate outputs."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    bounds = index_bounds(model)
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value for d in tensor.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[value.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[value.name] = rng.integers(0, bounds.get(value.name, 2), shape).astype(dtype)
    return feeds


def reference(path: Path, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(feeds, onnxruntime outputs), the outputs checked not degenerate (DegenerateOutput otherwise)."""
    feeds = model_feeds(path, seed)
    outputs = run_onnxruntime(str(path), feeds)
    assert_not_degenerate(outputs)
    return feeds, outputs


def golden(compiled: ttc.compiler.CompiledModel, path: Path, seed: int = 0) -> GoldenRun:
    """Run the compiled model and onnxruntime on the same seeded inputs; compare every output. The reference
    must not be degenerate (DegenerateOutput otherwise)."""
    feeds, reference_outputs = reference(path, seed)
    start = time.perf_counter()
    outputs = compiled.run(feeds)
    run_s = time.perf_counter() - start
    results = [compare(name, outputs[name], expected) for name, expected in reference_outputs.items()]
    return GoldenRun(feeds, outputs, reference_outputs, results, run_s)
