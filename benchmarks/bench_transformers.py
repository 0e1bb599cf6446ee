"""GPT-2 and BERT from Hugging Face (random weights) through ttc, against onnxruntime in the same run.

Usage: python benchmarks/bench_transformers.py [MODEL ...] [--repeats N] [--variants]
       MODEL in gpt2, bert, gpt2-tiny, bert-tiny (default: gpt2 bert)

Needs the `models` extra for the export (pip install -e '.[models]'); exports are cached (see
tests/models/export_hf.py). Per model and configuration: compile_s (ONNX file -> allocated kernel
programs), run_s (warm median of N emulated runs), ort_s (warm median of N onnxruntime runs, default
session options, same inputs), run/ort, host ops, DRAM and peak L1, and the golden metrics (PCC, relative
L2 error) of the output. --variants adds LoFi and bfp8_b weights beside the default bf16 / HiFi4.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnx

import ttc
from ttc.evaluate import make_inputs, median_seconds
from ttc.golden import compare, run_onnxruntime, time_onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "models"))
from export_hf import export

CONFIGS = {"bf16 hifi4": {}, "bf16 lofi": {"math_fidelity": "lofi"}, "bfp8_b hifi4": {"dtype": "bfp8_b"}}




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=["gpt2", "bert"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", action="store_true", help="also LoFi and bfp8_b weights")
    args = parser.parse_args()

    header = (f"{'model':10} {'config':13} {'compile_s':>9} {'run_s':>8} {'ort_s':>8} {'run/ort':>8} "
              f"{'host_ops':>8} {'DRAM MiB':>9} {'L1 KiB':>7} {'pcc':>8} {'rel_l2':>9}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        path = export(name)
        proto = onnx.load(str(path), load_external_data=False)
        ort_s = None
        reference = None
        for config, options in CONFIGS.items():
            if config != "bf16 hifi4" and not args.variants:
                continue
            start = time.perf_counter()
            compiled = ttc.compile(str(path), **options)
            compile_s = time.perf_counter() - start
            feeds = make_inputs(compiled, {}, seed=0, model=proto)
            outputs = compiled.run(feeds)
            if reference is None:
                reference = run_onnxruntime(str(path), feeds)
                ort_s = time_onnxruntime(str(path), feeds, repeats=args.repeats)
            run_s = median_seconds(lambda c=compiled, f=feeds: c.run(f), args.repeats)
            out = compiled.output_names[0]
            result = compare(out, outputs[out], reference[out])
            memory = compiled.manifest["memory"]
            print(f"{name:10} {config:13} {compile_s:9.2f} {run_s:8.3f} {ort_s:8.4f} {run_s / ort_s:7.1f}x "
                  f"{compiled.manifest['host_ops']:8d} {memory['dram_bytes'] / 2**20:9.1f} "
                  f"{memory['l1_peak_bytes'] / 1024:7.1f} {result.pcc:8.5f} {result.rel_l2_err:9.3e}", flush=True)


if __name__ == "__main__":
    main()
