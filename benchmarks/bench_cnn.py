"""End-to-end speed of ttc on the convolutional test models, against onnxruntime in the same run.

Usage: python benchmarks/bench_cnn.py [NAME ...] [--repeats N] [--arch e150|e75] [--dtype bf16|bfp8_b]
       NAME from tests/models/cnn_models.py (default: light_squeezenet, light_resnet50, mobilenet_v3,
       resnet50_b1); models are built into the model cache on first use (the torch ones need the `models`
       extra).

For each model: compile time (ONNX -> allocated kernel programs), emulated run_s (warm median of N runs),
ort_s (warm median of N onnxruntime CPU runs on the same input), their ratio, host ops, programs, and the
worst PCC and relative L2 error over the outputs. Wall times vary with the machine; the ratio is the figure
to track.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

import ttc
from ttc.evaluate import median_seconds
from ttc.golden import compare, run_onnxruntime, time_onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
import cnn_models

DEFAULT = ("light_squeezenet", "light_resnet50", "mobilenet_v3", "resnet50_b1")




def image_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(7)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input if i.name not in initializers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--arch", default="e150", choices=("e150", "e75"))
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "bfp8_b"))
    args = parser.parse_args()

    header = (f"{'model':18} {'compile_s':>9} {'run_s':>8} {'ort_s':>8} {'run/ort':>8} {'host_ops':>8} "
              f"{'programs':>8} {'pcc':>8} {'rel_l2':>8}")
    print(header)
    print("-" * len(header))
    for name in args.names:
        model = onnx.load(cnn_models.model_path(name))
        start = time.perf_counter()
        compiled = ttc.compile(model, arch=args.arch, dtype=args.dtype)
        compile_s = time.perf_counter() - start
        feeds = image_feeds(model)
        outputs = compiled.run(feeds)
        reference = run_onnxruntime(model, feeds)
        results = [compare(n, outputs[n], reference[n]) for n in reference]
        run_s = median_seconds(lambda c=compiled, f=feeds: c.run(f), args.repeats)
        ort_s = time_onnxruntime(model, feeds, repeats=max(args.repeats, 3))
        print(f"{name:18} {compile_s:9.2f} {run_s:8.2f} {ort_s:8.4f} {run_s / ort_s:7.0f}x "
              f"{compiled.manifest['host_ops']:8d} {compiled.manifest['programs']:8d} "
              f"{min(r.pcc for r in results):8.5f} {max(r.rel_l2_err for r in results):8.4f}", flush=True)


if __name__ == "__main__":
    main()
