"""Where a model's modelled DRAM traffic goes: per program kind, the DRAM bytes read and written, split into
constant reads (weights and index tables, which write_constant fills) and activation traffic.

Usage: python benchmarks/dram_breakdown.py ROW [--top N]   (ROW as in bench_device.py)

Every figure is `ttc profile --static`'s (ttc.profile.static_profile): the kernels' transfers counted without a
run, each one attributed to the buffer operand it reads or writes.
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
from ttc.ir.dialects import ttmetal
from ttc.ir.dialects.tt import E150

MiB = 2 ** 20


def by_operand(module, device_weights):
    """static_profile, each program with {(operand, written): DRAM bytes}."""
    counter_class = ttc_profile._StaticCounter
    seen: list[dict] = []

    def wrap(name, total_of):
        original = getattr(counter_class, name)

        def counted(self, gen, *args):
            if gen.dram:
                write, total = total_of(self, gen, *args)
                table = self.__dict__.setdefault("by_operand", defaultdict(int))
                table[(gen.operand, write)] += total
                if not seen or seen[-1] is not table:
                    seen.append(table)
            return original(self, gen, *args)
        return original, counted

    patches = {
        "_static": wrap("_static", lambda self, gen, pages, write, scale: (write, pages * gen.page_size * scale
                                                                          * self.cores)),
        "_masked": wrap("_masked", lambda self, gen, moved, write: (write, moved * gen.page_size)),
        "_bytes": wrap("_bytes", lambda self, gen, total, write: (write, total)),
    }
    for name, (_, counted) in patches.items():
        setattr(counter_class, name, counted)
    tables = []
    original_count = counter_class.count

    def count(self):
        result = original_count(self)
        tables.append(dict(getattr(self, "by_operand", {})))
        return result
    counter_class.count = count
    try:
        profile = ttc_profile.static_profile(module, device_weights)
    finally:
        for name, (original, _) in patches.items():
            setattr(counter_class, name, original)
        counter_class.count = original_count
    return profile, tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", choices=list(ROWS))
    parser.add_argument("--top", type=int, default=15, help="list the N programs moving most DRAM bytes")
    parser.add_argument("--cache")
    args = parser.parse_args(argv)
    row = ROWS[args.row]
    compiled = compile_for_api(str(model_path(row.model, args.cache)), CompileOptions(**row.settings))
    profile, tables = by_operand(compiled.module, compiled.device_weights)
    main_block = compiled.module.function("main").body
    constants = {id(op.operands[0]) for op in main_block.ops if op.name == ttmetal.WRITE_CONSTANT.name}
    programs = [op for op in main_block.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]
    table: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0, 0, 0.0])
    rows = []
    for op, p, moved in zip(programs, profile, tables, strict=True):
        const_read = sum(n for (i, w), n in moved.items() if not w and id(op.operands[i]) in constants)
        assert sum(moved.values()) == p.dram_bytes, (p.kind, moved, p.counts)
        entry = table[p.kind]
        entry[0] += 1
        entry[1] += p.time_us
        entry[2] += p.counts.dram_read - const_read
        entry[3] += const_read
        entry[4] += p.counts.dram_written
        entry[5] += p.time_us if p.bound == "dram" else 0.0
        rows.append((p.dram_bytes, p, const_read))
    summary = ttc_profile.summarize(profile, E150)
    print(f"{args.row}: {summary.time_us / 1000:.3f} ms, DRAM {summary.dram_bytes / MiB:.1f} MiB, "
          f"{summary.programs} programs")
    print(f"{'kind':14} {'progs':>5} {'ms':>8} {'act read':>9} {'const rd':>9} {'written':>9} {'dram-bound ms':>13}")
    totals = [0, 0.0, 0, 0, 0, 0.0]
    for kind, entry in sorted(table.items(), key=lambda kv: -sum(kv[1][2:5])):
        n, us, act, const, written, dram_us = entry
        totals = [a + b for a, b in zip(totals, entry, strict=True)]
        print(f"{kind:14} {n:5d} {us / 1000:8.3f} {act / MiB:9.1f} {const / MiB:9.1f} {written / MiB:9.1f} "
              f"{dram_us / 1000:13.3f}")
    n, us, act, const, written, dram_us = totals
    print(f"{'total':14} {n:5d} {us / 1000:8.3f} {act / MiB:9.1f} {const / MiB:9.1f} {written / MiB:9.1f} "
          f"{dram_us / 1000:13.3f}")
    print(f"\ntop {args.top} programs by DRAM bytes")
    for _, p, const in sorted(rows, key=lambda r: -r[0])[:args.top]:
        print(f"  {p.kind:13} {ttc_profile.node_label(p, 30):30} {p.cores:4d} cores {p.bound:7} {p.time_us:8.1f} us"
              f"  read {p.counts.dram_read / MiB:6.1f} (const {const / MiB:5.1f}) written "
              f"{p.counts.dram_written / MiB:5.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
