"""Where a model's modelled compute cycles go: per program kind, and per group of programs with the same counts
(the same layer of every block), the cores, the matrix unit's MVMUL and unpack cycles, every other tile op, the
launch, and the matrix work at the calibrated rate on the whole compute grid (the ideal of a perfectly balanced
program with no other tile op).

Usage: python benchmarks/compute_breakdown.py ROW [--kinds matmul,attention] [--top N]   (ROW as in bench_device.py)

Every figure is `ttc profile --static`'s counts through the cost model (`ttc.ir.target`), per core and program in
cycles, or summed over the programs in ms (docs/cost-model.md, "Where ViT's matmul cycles go").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_device import ROWS, model_path

from ttc import profile as ttc_profile
from ttc.compiler import CompileOptions, compile_for_api
from ttc.ir import target
from ttc.ir.dialects.tt import E150


def split(counts: target.Counts, device) -> dict[str, float]:
    """Per-core cycles of one program's compute: MVMUL (at the measured efficiency), the unpacker's excess over it,
    and every other tile op by key."""
    mvmul = unpacked = 0.0
    parts: dict[str, float] = defaultdict(float)
    for key, tiles in counts.tiles:
        cycles, operand_bytes = target.matrix_cycles(device, key)
        if cycles:
            mvmul += tiles * cycles / device.matmul_efficiency
            unpacked += tiles * operand_bytes / device.unpack_bytes_per_cycle
        else:
            parts[key] += tiles * target.tile_op_cycles(device, key)
    parts["mvmul"] = mvmul
    parts["unpack excess"] = max(unpacked - mvmul, 0.0)
    return dict(parts)


def ideal(counts: target.Counts, device) -> float:
    """The program's matrix work at the calibrated rate spread over the whole compute grid (cycles)."""
    return split(counts, device)["mvmul"] * counts.cores / device.compute_cores


def budget_ms(row) -> float | None:
    """The device time per batch the row's target allows (None for a DRAM-traffic target)."""
    what, value = row.target.split("=", 1)
    if what == "items/s>":
        return row.items * 1000 / float(value)
    if what == "ms<":
        return float(value)
    return None


def print_floors(row, profile, device) -> None:
    """What the row's programs cannot go below under the calibrated model, against its target's budget: their
    matrix work at the calibrated rate spread over the whole compute grid, their DRAM traffic at the chip's
    rate, each with the programs' launches (a fusion that removes programs removes their launches; nothing
    else here changes with the program structure)."""
    ms = 1 / (device.clock_mhz * 1000)
    launch = sum(p.launch_cycles for p in profile) * ms
    matrix = sum(ideal(p.counts, device) for p in profile) * ms
    dram = sum(p.dram_cycles for p in profile) * ms
    other = sum(cycles for p in profile for key, cycles in split(p.counts, device).items() if key != "mvmul") * ms
    budget = budget_ms(row)
    print(f"\nfloors under the calibrated model ({len(profile)} programs; launches {launch:.3f} ms)")
    if budget is not None:
        print(f"  target {row.target}: {budget:.3f} ms per batch of {row.items}")
    for name, floor in (("matrix work on the whole grid", matrix), ("DRAM traffic at the chip's rate", dram)):
        left = f", leaves {budget - floor - launch:.3f} ms of the budget" if budget is not None else ""
        print(f"  {name} {floor:.3f} ms + launches = {floor + launch:.3f} ms{left}")
    print(f"  every other tile op and the unpacker's excess (a core's cycles, summed over the programs): "
          f"{other:.3f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", choices=list(ROWS))
    parser.add_argument("--kinds", default="matmul", help="program kinds to list by group (comma-separated)")
    parser.add_argument("--top", type=int, default=8, help="list the N costliest groups")
    parser.add_argument("--cache")
    args = parser.parse_args(argv)
    row = ROWS[args.row]
    compiled = compile_for_api(str(model_path(row.model, args.cache)), CompileOptions(**row.settings))
    device = E150
    profile = ttc_profile.static_profile(compiled.module, compiled.device_weights)
    ms = 1 / (device.clock_mhz * 1000)
    by_kind: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    groups: dict[tuple, list] = defaultdict(list)
    for p in profile:
        table = by_kind[p.kind]
        table["time"] += p.time_us / 1000
        table["launch"] += p.launch_cycles * ms
        table["ideal (grid)"] += ideal(p.counts, device) * ms
        table["not compute-bound"] += (max(p.compute_cycles, p.dram_cycles, p.noc_cycles) - p.compute_cycles) * ms
        for key, cycles in split(p.counts, device).items():
            table[key] += cycles * ms
        if p.kind in args.kinds.split(","):
            groups[(p.kind, p.counts, round(p.cycles))].append(p)
    summary = ttc_profile.summarize(profile, device)
    print(f"{args.row}: {summary.time_us / 1000:.3f} ms, {summary.programs} programs; ms summed over programs")
    for kind, table in sorted(by_kind.items(), key=lambda kv: -kv[1]["time"]):
        parts = ", ".join(f"{key} {value:.3f}" for key, value in sorted(table.items(), key=lambda kv: -kv[1])
                          if key != "time" and value >= 0.0005)
        print(f"  {kind:13} {table['time']:8.3f}  {parts}")
    print_floors(row, profile, device)
    print(f"\ntop {args.top} groups of identical programs (cycles per core and program)")
    for (kind, counts, cycles), members in sorted(groups.items(), key=lambda kv: -len(kv[1]) * kv[0][2])[:args.top]:
        p = members[0]
        parts = ", ".join(f"{key} {value:,.0f}" for key, value in sorted(split(counts, device).items(),
                                                                             key=lambda kv: -kv[1]) if value)
        print(f"  {len(members):3d} x {kind} {ttc_profile.node_label(p, 30):30} {p.cores:4d} cores {p.bound:7} "
              f"{cycles:,} cycles ({len(members) * p.time_us / 1000:.3f} ms): {parts}, launch {p.launch_cycles:,.0f}; "
              f"matrix work on the whole grid {ideal(counts, device):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
