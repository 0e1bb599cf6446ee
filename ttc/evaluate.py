"""Running a compiled model the way `ttc run` does: inputs (given or seeded random), the golden check
against onnxruntime, and warm timings of both."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ttc.compiler import CompiledModel, file_sha256
from ttc.golden import OutputComparison, compare, run_onnxruntime, time_onnxruntime
from ttc.ir.diagnostics import UserError

TIMING_REPEATS = 3


_INDEX_PRESERVING = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast", "Expand",
                               "Transpose", "Slice"})


def index_bounds(model: onnx.ModelProto | None) -> dict[str, int]:
    """For integer graph inputs that index a table (Gather of an initializer), possibly through
    value-preserving ops (a Reshape of input_ids, say): the size of the smallest table axis they index."""
    if model is None:
        return {}
    sizes = {init.name: list(init.dims) for init in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input[:1] if node.op_type in _INDEX_PRESERVING else node.input:
            consumers.setdefault(name, []).append(node)
    bounds: dict[str, int] = {}
    for graph_input in model.graph.input:
        pending, seen = [graph_input.name], set()
        while pending:
            value = pending.pop()
            if value in seen:
                continue
            seen.add(value)
            for node in consumers.get(value, []):
                if node.op_type in _INDEX_PRESERVING:
                    pending.extend(node.output)
                elif node.op_type == "Gather" and len(node.input) >= 2 and node.input[1] == value \
                        and node.input[0] in sizes:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = sizes[node.input[0]]
                    size = dims[axis if axis >= 0 else axis + len(dims)]
                    bounds[graph_input.name] = min(bounds.get(graph_input.name, size), size)
    return bounds


def make_inputs(compiled: CompiledModel, given: Mapping[str, np.ndarray], seed: int,
                model: onnx.ModelProto | None = None,
                sources: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """The given inputs (checked as onnxruntime checks feeds: name, rank, shape and element type, never cast)
    plus seeded random ones for the rest: floats standard normal, integers in [0, table size) when they index
    a table, else in [0, 2). `sources` names the file of each given input for messages."""
    from ttc.feeds import check_feeds, manifest_specs

    specs = manifest_specs(compiled.manifest["inputs"])
    sources = sources or {}

    def label(name: str) -> str:
        return f"--input {name}" + (f" ({sources[name]})" if name in sources else "")

    feeds = check_feeds(specs, given, label=label, allow_missing=True)
    rng = np.random.default_rng(seed)
    bounds = index_bounds(model)
    for spec in specs:
        if spec.name in feeds:
            continue
        shape, dtype = tuple(int(d) for d in spec.shape or ()), spec.dtype
        assert dtype is not None
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, bounds.get(spec.name, 2), shape).astype(dtype)
    return {spec.name: feeds[spec.name] for spec in specs}


def source_model_path(compiled: CompiledModel, override: str | None) -> Path:
    """The ONNX model to compare with: --model, else the manifest's source, used only when it is a regular file
    of the recorded size whose sha256 matches (its size is checked before the file is opened)."""
    import stat

    from ttc.fileio import file_kind, not_onnx_message

    if override:
        path = Path(override)
        if not path.is_file():
            raise UserError(f"--golden: the model {path} given with --model is missing or not a file")
        kind = file_kind(path)
        if kind is not None:
            raise UserError(f"--golden: {not_onnx_message(path, kind)}")
        return path
    source = compiled.manifest.get("source_model") or {}
    if not source.get("path"):
        raise UserError("--golden needs the source model: this artifact does not name one; pass --model M.onnx")
    path = Path(source["path"])
    if not source.get("sha256") or source.get("size") is None:
        raise UserError(f"--golden: the artifact does not record the size and sha256 of {path}, so it is not "
                        f"opened; pass --model M.onnx")
    try:
        info = path.stat()
    except OSError:
        raise UserError(f"--golden: the source model {path} is missing; pass --model M.onnx") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"--golden: the source model {path} is not a regular file, so it is not opened; pass "
                        f"--model M.onnx")
    if info.st_size != source["size"]:
        raise UserError(f"--golden: {path} is not the model this artifact was compiled from (size differs: "
                        f"{info.st_size} bytes, the artifact records {source['size']}); pass --model M.onnx")
    if file_sha256(path) != source["sha256"]:
        raise UserError(f"--golden: {path} is not the model this artifact was compiled from (sha256 differs)")
    return path


def median_seconds(fn: Any, repeats: int = TIMING_REPEATS) -> float:
    """Warm median: one untimed run, then the median of `repeats` timed runs."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def golden_compare(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], data_format: str,
                   pcc_threshold: float, rel_l2_threshold: float) -> list[OutputComparison]:
    return [compare(name, outputs[name], reference[name], data_format=data_format, pcc_threshold=pcc_threshold,
                    rel_l2_threshold=rel_l2_threshold) for name in reference]


def reference_outputs(model_path: Path, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    return run_onnxruntime(str(model_path), feeds, list(names))


def time_reference(model_path: Path, feeds: Mapping[str, np.ndarray]) -> float:
    return time_onnxruntime(str(model_path), feeds, repeats=TIMING_REPEATS)


def softmax_hints(compiled: CompiledModel, model_path: Path, feeds: Mapping[str, np.ndarray],
                  comparisons: Sequence[OutputComparison], pcc_threshold: float,
                  rel_l2_threshold: float) -> list[str]:
    """For each failed output that a Softmax computes in bf16 from logits that pass the golden rule (a
    1000-class classifier's large logits: their absolute bf16 errors become relative errors of the
    probabilities), a note naming `--softmax-precision f16`. Empty when nothing applies."""
    failed = {c.name for c in comparisons if not c.passed}
    if not failed or compiled.manifest["options"].get("softmax_precision", "bf16") != "bf16":
        return []
    model = onnx.load(str(model_path), load_external_data=False)
    softmaxes = {node.output[0]: node for node in model.graph.node
                 if node.op_type == "Softmax" and node.output and node.output[0] in failed}
    if not softmaxes:
        return []
    from ttc.per_op import check_per_op

    checks = {c.value: c for c in check_per_op(compiled, model_path, feeds, pcc_threshold, rel_l2_threshold)
              if c.passed is not None}
    hints = []
    for output, node in softmaxes.items():
        logits = checks.get(node.input[0])
        if logits is None or not logits.passed:
            continue
        hints.append(f"note: output '{output}' (Softmax '{node.name or output}') misses the golden rule while its "
                     f"logits '{node.input[0]}' pass (PCC {logits.pcc:.6f}, rel L2 {logits.rel_l2_err:.3e}): a bf16 "
                     "softmax of large logits; --softmax-precision f16 computes the softmax and its logits in "
                     "Float16, which removes the softmax's own bf16 rounding (the logits' error from earlier layers "
                     "stays)")
    return hints
