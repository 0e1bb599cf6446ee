"""The model families of issue 16 (tests/models/export_families.py) through ttc, against onnxruntime.

Usage: python benchmarks/bench_families.py [NAME ...] [--mini] [--all] [--repeats N] [--cache DIR]
       default: the full-size families at batch 1; --mini: the -mini variants; --all: both, plus
       Tenstorrent's configurations (resnet50-b20, bert-large-b12-s384, vit-base-b8; minutes each)

Needs the `models` extra for the exports (cached; see export_families.py). Per model: compile_s (ONNX file
-> allocated kernel programs, wall; compile_cpu, this process's CPU seconds of it, marked `over` beyond the
10 s budget of a batch-1 model, families_check.COMPILE_BUDGET_S), run_s (the emulated run: the first run, or
the warm median of N with --repeats), ort_s (warm median of onnxruntime CPU runs, same inputs), host ops, programs, the modelled e150
device time of one inference (the cost model's sum over the run's programs, as `ttc run --profile`), and the
golden rule's verdict with PCC and relative L2 error of the worst output. A model that does not compile
prints its error instead; the reference outputs are checked not degenerate in every case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
import export_families
import families_check

from ttc.golden import time_onnxruntime
from ttc.ir.diagnostics import TtcError

TENSTORRENT = ("resnet50-b20", "bert-large-b12-s384", "vit-base-b8")


def bench(name: str, cache: str | None, repeats: int) -> dict:
    path = export_families.export(name, cache)
    row: dict = {"model": name}
    feeds, _ = families_check.reference(path)  # DegenerateOutput if the test model is degenerate
    row["ort_s"] = time_onnxruntime(str(path), feeds, repeats=max(repeats, 3))
    try:
        compiled, compile_s, compile_cpu = families_check.compile_timed(path)
    except TtcError as error:
        row["error"] = f"exit {error.exit_code}: {str(error).splitlines()[0]}"
        return row
    row.update(compile_s=compile_s, compile_cpu=compile_cpu, host_ops=compiled.manifest["host_ops"],
               programs=compiled.manifest["programs"])
    run = families_check.golden(compiled, path)
    times = [run.run_s]
    for _ in range(repeats):
        start = time.perf_counter()
        compiled.run(run.feeds)
        times.append(time.perf_counter() - start)
    row["run_s"] = statistics.median(times[1:]) if repeats else run.run_s
    row["modelled_ms"] = sum(p.time_us for p in compiled.profile) / 1000
    worst = run.worst()
    row.update(passed=run.passed, pcc=worst.pcc, rel_l2=worst.rel_l2_err)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--mini", action="store_true", help="the -mini variants")
    parser.add_argument("--all", action="store_true", help="full-size, minis and Tenstorrent's configurations")
    parser.add_argument("--repeats", type=int, default=0, help="warm emulated runs to take the median of")
    parser.add_argument("--cache", help="model cache (default $TTC_MODEL_CACHE or ~/.cache/ttc/models)")
    args = parser.parse_args(argv)
    full = [n for n in export_families.FAMILIES if n not in export_families.MINI and n not in TENSTORRENT]
    if args.names:
        names = args.names
    elif args.all:
        names = [*full, *export_families.MINI, *TENSTORRENT]
    else:
        names = list(export_families.MINI) if args.mini else full
    header = (f"{'model':26} {'compile_s':>9} {'compile_cpu':>11} {'run_s':>8} {'ort_s':>8} {'host_ops':>8} "
              f"{'programs':>8} {'e150_ms':>8} {'golden':>6} {'pcc':>8} {'rel_l2':>8}")
    print(header)
    print("-" * len(header), flush=True)
    for name in names:
        row = bench(name, args.cache, args.repeats)
        if "error" in row:
            print(f"{name:26} {'-':>9} {'-':>11} {'-':>8} {row['ort_s']:8.3f}  {row['error'][:160]}", flush=True)
            continue
        over = name not in TENSTORRENT and row["compile_cpu"] >= families_check.COMPILE_BUDGET_S
        cpu = f"{row['compile_cpu']:.2f}" + (" over" if over else "")
        print(f"{name:26} {row['compile_s']:9.2f} {cpu:>11} {row['run_s']:8.3f} {row['ort_s']:8.3f} "
              f"{row['host_ops']:8d} {row['programs']:8d} {row['modelled_ms']:8.3f} {'pass' if row['passed'] else 'FAIL':>6} "
              f"{row['pcc']:8.5f} {row['rel_l2']:8.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
