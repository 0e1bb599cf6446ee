"""The modelled e150 device figures of issue 21 against their targets (Tenstorrent's published e150 numbers).

Usage: python benchmarks/bench_device.py [ROW ...] [--settings table|default] [--cache DIR] [--json FILE]
       ROW: resnet50-b20, resnet50-b1, bert-large-b12-s384, bert-base-b1-s128, vit-base-b8, resnet50-b1-dram
       (default: all); --settings default compiles every row with bf16 and hifi4 (the "before" column)

Every figure is the calibrated cost model's (docs/cost-model.md) over the compiled programs, counted without a
run (`ttc profile --static`, ttc.profile.static_profile): modelled ms per batch, items/s, DRAM traffic per batch,
the weights' device bytes (packed, as written to DRAM) and the time-weighted average of cores busy. Nothing is
emulated, so a row takes its compile time (BERT-Large b12 s384: minutes). The models come from the model cache
(tests/models/export_families.py, cnn_models.py, export_hf.py; built on first use with the `models` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))

from ttc.compiler import CompileOptions, compile_for_api
from ttc.ir.dialects.tt import E150
from ttc.profile import static_profile, summarize

PUBLISHED = {"perf_preset": "published"}


@dataclass(frozen=True)
class Row:
    name: str
    model: str  # "families:NAME", "cnn:NAME" or "hf:NAME"
    items: int  # per batch
    unit: str
    settings: dict
    target: str  # "items/s>=N", "ms<=N" or "dram<=Nx" (times the weights' device bytes)


ROWS = {r.name: r for r in (
    Row("resnet50-b20", "families:resnet50-b20", 20, "img", PUBLISHED, "items/s>=7700"),
    Row("resnet50-b1", "cnn:resnet50_b1", 1, "img", {"dtype": "bfp8_b", "math_fidelity": "lofi"}, "ms<=0.7"),
    Row("bert-large-b12-s384", "families:bert-large-b12-s384", 12, "sent", PUBLISHED, "items/s>=406"),
    Row("bert-base-b1-s128", "hf:bert", 1, "sent", {"dtype": "bfp8_b"}, "ms<=1.6"),
    Row("vit-base-b8", "families:vit-base-b8", 8, "img", PUBLISHED, "items/s>=1570"),
    Row("resnet50-b1-dram", "cnn:resnet50_b1", 1, "img", PUBLISHED, "dram<=1.5x"),
)}


def model_path(spec: str, cache: str | None) -> Path:
    source, name = spec.split(":", 1)
    if source == "families":
        import export_families

        return export_families.export(name, cache)
    if source == "cnn":
        import cnn_models

        return cnn_models.model_path(name, cache)
    import export_hf

    return export_hf.export(name, cache)


def measure(row: Row, settings: dict, cache: str | None) -> dict:
    path = model_path(row.model, cache)
    start = time.process_time()
    compiled = compile_for_api(str(path), CompileOptions(**settings))
    compile_cpu_s = time.process_time() - start
    profile = static_profile(compiled.module, compiled.device_weights)
    summary = summarize(profile, E150)
    ms = summary.time_us / 1000
    by_bound = {bound: time_us / summary.time_us for bound, (_, time_us) in summary.by_bound.items()}
    weights = sum(page.nbytes for page in compiled.device_weights.values())
    return {"row": row.name, "settings": ",".join(f"{k}={v}" for k, v in settings.items()) or "bf16,hifi4",
            "ms": ms, "items_per_s": row.items * 1000 / ms, "dram_mib": summary.dram_bytes / 2**20,
            "weights_mib": weights / 2**20, "cores": summary.mean_cores, "by_bound": by_bound,
            "compile_cpu_s": compile_cpu_s, "target": row.target, "met": met(row, ms, summary.dram_bytes, weights)}


def met(row: Row, ms: float, dram: int, weights: int) -> bool:
    what, value = row.target.split("=", 1)
    if what == "items/s>":
        return row.items * 1000 / ms >= float(value)
    if what == "ms<":
        return ms <= float(value)
    return dram <= float(value.rstrip("x")) * weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="*", metavar="ROW", choices=[[], *ROWS], default=[])
    parser.add_argument("--settings", choices=("table", "default"), default="table",
                        help="table: each row's settings (default); default: bf16 and hifi4 everywhere")
    parser.add_argument("--cache", help="the model cache (default: ~/.cache/ttc/models)")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    args = parser.parse_args(argv)
    names = args.rows or list(ROWS)
    header = (f"{'row':20} {'settings':32} {'ms/batch':>9} {'items/s':>9} {'target':>14} {'met':>3} "
              f"{'DRAM MiB':>9} {'weights MiB':>11} {'cores':>6}  bound (share of time)")
    print(header)
    print("-" * len(header))
    results = []
    for name in names:
        row = ROWS[name]
        result = measure(row, row.settings if args.settings == "table" else {}, args.cache)
        results.append(result)
        bound = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["by_bound"].items())
        print(f"{name:20} {result['settings']:32} {result['ms']:9.3f} {result['items_per_s']:9.1f} "
              f"{row.target:>14} {'yes' if result['met'] else 'no':>3} {result['dram_mib']:9.1f} "
              f"{result['weights_mib']:11.1f} {result['cores']:6.1f}  {bound}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
