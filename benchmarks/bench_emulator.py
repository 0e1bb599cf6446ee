"""The emulator's speed: the native core and the Python reference against onnxruntime, in the same run.

Usage: python benchmarks/bench_emulator.py [MODEL ...] [--repeats N] [--threads N] [--no-reference] [--cpu]
       MODEL in mlp, gpt2, bert, resnet50_b1, mobilenet_v3 (default: all)

Per model: programs per inference, native_s and reference_s (warm medians of N runs of each emulator, inputs
written to emulated DRAM, every program executed on its cores, outputs read back), ort_s (warm median of N
onnxruntime CPU runs with the same thread count, same inputs), native/ort, reference/native, whether the two
emulators' outputs are byte-identical, the native run's mean time per program, and its overhead per program
(the median over runs of a run's time outside the native core's run_program and run-plan calls, both taken in the same run: host ops, buffers, Python around each program). Then the start-up time of
`ttc --version` and of a first `ttc run examples/mlp.onnx` (fresh processes). GPT-2 and BERT need the `models`
extra for the export; the CNNs are built into the model cache on first use (tests/models/cnn_models.py).
Wall times vary with the machine; the ratios are the figures to track. With --cpu the medians are CPU times of
the process on one thread (native core and onnxruntime alike): on a machine shared with other busy processes
they stay put where wall times double.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))

import ttc  # noqa: E402
from ttc.evaluate import make_inputs  # noqa: E402
from ttc.runtime.executor import default_threads  # noqa: E402

MODELS = ("mlp", "gpt2", "bert", "resnet50_b1", "mobilenet_v3")
TARGETS = {"gpt2": 5.0, "bert": 5.0, "resnet50_b1": 8.0, "mobilenet_v3": 30.0}  # native/ort (issue 12)
OVERHEAD_TARGET_US = 50.0  # per program, on the MLP
STARTUP_TARGET_S = 0.5


def model_path(name: str) -> Path:
    if name == "mlp":
        return ROOT / "examples" / "mlp.onnx"
    if name in ("gpt2", "bert"):
        from export_hf import export

        return export(name)
    import cnn_models

    return cnn_models.model_path(name)  # built into the cache on first use


CLOCK = time.perf_counter  # --cpu: time.process_time


def median(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: plans, tables, resident weights
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return statistics.median(times)


def native_overhead_seconds(compiled: ttc.CompiledModel, feeds: dict[str, np.ndarray], repeats: int) -> float:
    """Median over runs of a run's time outside the native core's run_program and RunPlan.run calls (the Python
    around them: host ops, buffers, encoding lookups, profiles), each run's total and core time taken in the same
    run. A run plan's replay counts as core time whole (the fresh buffers' poison fills in it too)."""
    from ttc.runtime import native_program

    native = native_program.native
    inner, replay = native.run_program, native.RunPlan.run
    spent = [0.0]

    def timed(*args: object, **kwargs: object) -> object:
        start = CLOCK()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += CLOCK() - start

    def timed_replay(*args: object, **kwargs: object) -> object:
        start = CLOCK()
        try:
            return replay(*args, **kwargs)
        finally:
            spent[0] += CLOCK() - start

    native.run_program, native.RunPlan.run = timed, timed_replay
    try:
        samples = []
        for _ in range(repeats):
            spent[0] = 0.0
            start = CLOCK()
            compiled.run(feeds)
            samples.append(CLOCK() - start - spent[0])
        return statistics.median(samples)
    finally:
        native.run_program, native.RunPlan.run = inner, replay


def ort_seconds(path: Path, feeds: dict[str, np.ndarray], threads: int, repeats: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return median(lambda: session.run(None, feeds), repeats)


def same_bytes(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.ascontiguousarray(a[k]).view(np.uint8),
                                                       np.ascontiguousarray(b[k]).view(np.uint8)) for k in a)


def startup_seconds(args: list[str], repeats: int = 3) -> float:
    ttc_cli = Path(sys.executable).with_name("ttc")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()  # wall time always (a child process)
        subprocess.run([str(ttc_cli), *args], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) Python reference emulator")
    parser.add_argument("--cpu", action="store_true",
                        help="time the process's CPU time on one thread instead of wall time (a shared, loaded "
                             "machine: other processes change wall times far more than CPU times)")
    args = parser.parse_args()
    if args.cpu:
        global CLOCK
        CLOCK = time.process_time
        args.threads = 1

    header = (f"{'model':14} {'programs':>8} {'native_s':>9} {'reference_s':>11} {'ort_s':>9} {'native/ort':>10} "
              f"{'target':>6} {'ref/native':>10} {'same bits':>9} {'us/program':>10} {'overhead us/program':>19}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{'CPU' if args.cpu else 'wall'} times; threads: {args.threads} (ttc native core and onnxruntime); load average {load:.1f} on {os.cpu_count()} CPUs")
    print(header)
    print("-" * len(header))
    for name in args.models:
        path = model_path(name)
        proto = onnx.load(str(path), load_external_data=False)
        compiled = ttc.compile(str(path))
        feeds = make_inputs(compiled, {}, seed=0, model=proto)
        native = compiled.run(feeds, emulator="native", threads=args.threads)
        programs = len(compiled.profile)
        native_s = median(lambda c=compiled, f=feeds: c.run(f, emulator="native"), args.repeats)
        overhead = native_overhead_seconds(compiled, feeds, args.repeats) / programs
        reference_s, same = None, None
        if not args.no_reference:
            reference = compiled.run(feeds, emulator="reference")
            same = same_bytes(native, reference)
            reference_s = median(lambda c=compiled, f=feeds: c.run(f, emulator="reference"), max(1, args.repeats // 3))
        ort_s = ort_seconds(path, feeds, args.threads, args.repeats)
        ref_text = f"{reference_s:11.3f}" if reference_s is not None else f"{'-':>11}"
        ratio_text = f"{reference_s / native_s:9.1f}x" if reference_s is not None else f"{'-':>10}"
        same_text = {None: "-", True: "yes", False: "NO"}[same]
        target = f"{TARGETS[name]:5.0f}x" if name in TARGETS else f"{'-':>6}"
        if name == "mlp":
            target = f"{'-':>6}"
        overhead_text = f"{overhead * 1e6:.0f}" + (f" (<= {OVERHEAD_TARGET_US:.0f})" if name == "mlp" else "")
        print(f"{name:14} {programs:8d} {native_s:9.4f} {ref_text} {ort_s:9.5f} {native_s / ort_s:9.1f}x "
              f"{target} {ratio_text} {same_text:>9} {native_s / programs * 1e6:10.0f} {overhead_text:>19}")
    print()
    print(f"start-up (target {STARTUP_TARGET_S} s): ttc --version {startup_seconds(['--version']):.3f} s, first ttc run "
          f"examples/mlp.onnx {startup_seconds(['run', 'examples/mlp.onnx']):.3f} s"
          + (" (no bytecode caches: every module compiles from source on every start; an editable install writes "
             "them)" if not Path(importlib.util.cache_from_source(str(ROOT / "ttc" / "cli.py"))).exists() else ""))


if __name__ == "__main__":
    main()
