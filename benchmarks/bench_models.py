"""End-to-end speed of ttc on the reference models, against onnxruntime in the same run.

Usage: python benchmarks/bench_models.py [--repeats N] [--arch e150|e75] [--dtype bf16|bfp8_b]

For each model: compile time (ONNX -> allocated kernel programs), emulated run_s (warm median of N runs:
inputs written to emulated DRAM, every program interpreted on its cores, outputs read back), ort_s (warm
median of N onnxruntime CPU runs, default session options, same inputs), their ratio, the modelled device
time (the cost model's estimate of the real Grayskull), programs, cores of the largest grid and the golden
PCC. Wall times vary with the machine; the ratio is the figure to track.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import onnx

import ttc
from ttc import zoo
from ttc.evaluate import median_seconds
from ttc.golden import compare, run_onnxruntime, time_onnxruntime

MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp 784-256-10, batch 1": lambda: zoo.mlp(batch=1),
    "mlp 784-256-10, batch 32": lambda: zoo.mlp(batch=32),
    "encoder block s128 h256": lambda: zoo.encoder_block(),
    "BERT-base-size layer s128 h768": lambda: zoo.encoder_block(seq=128, hidden=768, heads=12, ffn=3072),
}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="e150", choices=("e150", "e75"))
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "bfp8_b"))
    args = parser.parse_args()

    header = (f"{'model':32} {'compile_s':>9} {'run_s':>8} {'ort_s':>9} {'run/ort':>8} {'device_ms':>9} "
              f"{'programs':>8} {'max cores':>9} {'pcc':>8}")
    print(header)
    print("-" * len(header))
    for name, make in MODELS.items():
        model = make()
        start = time.perf_counter()
        compiled = ttc.compile(model, arch=args.arch, dtype=args.dtype)
        compile_s = time.perf_counter() - start
        feeds = zoo.random_inputs(model, seed=0)
        outputs = compiled.run(feeds)
        reference = run_onnxruntime(model, feeds)
        pcc = min(compare(n, outputs[n], reference[n]).pcc for n in reference)
        run_s = median_seconds(lambda c=compiled, f=feeds: c.run(f), args.repeats)
        ort_s = time_onnxruntime(model, feeds, repeats=args.repeats)
        profile = compiled.profile
        device_ms = sum(p.time_us for p in profile) / 1000
        cores = max(p.cores for p in profile)
        print(f"{name:32} {compile_s:9.3f} {run_s:8.4f} {ort_s:9.6f} {run_s / ort_s:7.0f}x {device_ms:9.3f} "
              f"{len(profile):8d} {cores:9d} {pcc:8.5f}")


if __name__ == "__main__":
    main()
