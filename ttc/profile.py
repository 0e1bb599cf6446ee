"""`ttc profile`: the modelled device time of a model, program by program.

The emulator charges every program it runs by the cost model of docs/architecture.md section 7 (compute
cycles from the tile ops and math fidelity, NoC bytes per core, DRAM bytes of all cores against the chip's
bandwidth; the program takes the largest). Programs run one after another, so the modelled latency of an
inference is their sum. The report names each program by the ONNX nodes it implements (its last one, with
the count of the others fused into it), and sums the time by program kind and by bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ttc.ir.dialects.tt import DeviceAttr
from ttc.runtime.accounting import ProgramProfile


@dataclass(frozen=True)
class ProfileSummary:
    """What the programs of one inference add up to."""

    programs: int
    time_us: float
    by_kind: dict[str, tuple[int, float]]  # kind -> (programs, µs)
    by_bound: dict[str, tuple[int, float]]  # compute / dram / noc -> (programs, µs)
    mean_cores: float  # time-weighted cores per program
    compute_cores: int
    dram_bytes: int

    @property
    def inferences_per_s(self) -> float:
        return 1e6 / self.time_us if self.time_us else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"programs": self.programs, "time_us": self.time_us, "inferences_per_s": self.inferences_per_s,
                "mean_cores": self.mean_cores, "compute_cores": self.compute_cores, "dram_bytes": self.dram_bytes,
                "by_kind": {k: {"programs": n, "time_us": t} for k, (n, t) in self.by_kind.items()},
                "by_bound": {k: {"programs": n, "time_us": t} for k, (n, t) in self.by_bound.items()}}


def summarize(profile: Sequence[ProgramProfile], device: DeviceAttr) -> ProfileSummary:
    total = sum(p.time_us for p in profile)
    by_kind: dict[str, tuple[int, float]] = {}
    by_bound: dict[str, tuple[int, float]] = {}
    for p in profile:
        for table, key in ((by_kind, p.kind), (by_bound, p.bound)):
            count, time = table.get(key, (0, 0.0))
            table[key] = (count + 1, time + p.time_us)
    mean_cores = sum(p.cores * p.time_us for p in profile) / total if total else 0.0
    order = lambda table: dict(sorted(table.items(), key=lambda item: -item[1][1]))  # noqa: E731
    return ProfileSummary(len(profile), total, order(by_kind), order(by_bound), mean_cores, device.compute_cores,
                          sum(p.dram_bytes for p in profile))


def node_label(p: ProgramProfile, width: int = 48) -> str:
    """The program's last ONNX node, with the number of other nodes fused into it."""
    if not p.nodes:
        return "?"
    label = p.nodes[-1] + (f" (+{len(p.nodes) - 1})" if len(p.nodes) > 1 else "")
    return label if len(label) <= width else "..." + label[-(width - 3):]


def program_json(index: int, p: ProgramProfile) -> dict[str, Any]:
    return {"program": index, "kind": p.kind, "nodes": list(p.nodes), "cores": p.cores, "bound": p.bound,
            "time_us": p.time_us, "cycles": p.cycles, "compute_cycles": p.compute_cycles,
            "dram_cycles": p.dram_cycles, "noc_cycles": p.noc_cycles, "dram_bytes": p.dram_bytes,
            "noc_bytes_per_core": p.noc_bytes, "local_bytes_per_core": p.local_bytes}


def format_profile(profile: Sequence[ProgramProfile], device: DeviceAttr, top: int | None = None) -> str:
    """The per-program table (program order, or the `top` slowest), then the sums by kind and by bound."""
    summary = summarize(profile, device)
    rows = list(enumerate(profile))
    if top is not None:
        rows = sorted(rows, key=lambda row: -row[1].time_us)[:top]
    header = (f"{'#':>4} {'kind':12} {'cores':>5} {'bound':7} {'time_us':>9} {'share':>6} {'compute_cyc':>11} "
              f"{'dram_KiB':>9} {'noc_KiB/core':>12}  onnx node")
    lines = [header, "-" * len(header)]
    for index, p in rows:
        share = 100 * p.time_us / summary.time_us if summary.time_us else 0.0
        lines.append(f"{index:4d} {p.kind:12} {p.cores:5d} {p.bound:7} {p.time_us:9.2f} {share:5.1f}% "
                     f"{p.compute_cycles:11d} {p.dram_bytes / 1024:9.1f} {p.noc_bytes / 1024:12.1f}  {node_label(p)}")
    if top is not None and top < len(profile):
        lines.append(f"(the {top} slowest of {len(profile)} programs)")
    lines.append("")
    lines.append(f"modelled device time {summary.time_us / 1000:.3f} ms per inference "
                 f"({summary.inferences_per_s:.1f}/s) over {summary.programs} programs; "
                 f"{summary.mean_cores:.1f} of {summary.compute_cores} cores on average (time-weighted); "
                 f"DRAM traffic {summary.dram_bytes / 2**20:.1f} MiB")
    for title, table in (("by kind", summary.by_kind), ("by bound", summary.by_bound)):
        parts = [f"{key} {time / 1000:.3f} ms ({100 * time / summary.time_us:.0f}%, {count})"
                 for key, (count, time) in table.items()] if summary.time_us else []
        lines.append(f"{title}: " + ", ".join(parts))
    return "\n".join(lines)
