"""The target: what a program's counts cost on the device the module names (`#tt.device`).

This is the one cost model of ttc. Nothing else turns work into time:

- the grid pass plans each program's `Counts` (passes/cost_model.py) and ranks its candidates by `cost`;
- both emulators count what a program does as it runs (runtime/accounting.py) and report `cost` of those
  counts in `ttc profile`;
- `ttc profile --static` counts the compiled kernels without running them (ttc/profile.py).

A program is described only by counts (`Counts`): tile operations per kind (and fidelity and operand
formats for the matrix unit), DRAM bytes read and written, NoC bytes per core and on the busiest link,
multicast fan-out, cores launched. `cost(device, counts)` turns them into cycles with the descriptor's
figures alone (docs/cost-model.md derives and sources every one of them):

- compute, per core: the matrix unit's tile multiply-accumulates at `matmul_cycles_per_phase` x the
  fidelity's phases, divided by the measured `matmul_efficiency`, or the time the unpacker needs to bring
  the operand tiles in (`unpack_bytes_per_cycle`), whichever is longer; plus every other tile op at its
  `tile_op_cycles` figure (SFPU functions without their own figure cost like `sfpu_cost_keys` says);
- DRAM: the bytes of all cores over the achievable chip bandwidth (`dram_gbps` x `dram_efficiency`), or one
  core's share over what one core reaches alone (`dram_core_gbps`), whichever is longer;
- NoC, per core: the bytes through a core's port, or over the busiest link, over `noc_bytes_per_cycle`;
- time = max(compute, DRAM, NoC) + `launch_cycles` + `launch_cycles_per_core` x cores.

This module imports only the IR's descriptor; passes/, backend/ and runtime/ import it, never each other,
for anything about cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ttc.ir.dialects.tt import DeviceAttr

TILE_BYTES = {"f32": 4096, "bf16": 2048, "f16": 2048, "bfp8_b": 1088, "bfp4_b": 576, "i32": 4096}
FIDELITY_PHASES = {"lofi": 1, "hifi2": 2, "hifi3": 3, "hifi4": 4}
TILE_FLOPS = 2 * 32 ** 3  # one 32x32x32 tile multiply-accumulate
MATRIX_FLOPS_PER_PHASE = 2 * 32 * 32  # per core and cycle, one MVMUL per cycle, per fidelity phase (LoFi: 2048)

# ----------------------------------------------------------------------------------------------
# Count keys: what one tile op is, as the counts name it

DATACOPY = "datacopy"  # copy, transpose, tilize, fill and mask of a tile (an unpack, a pass, a pack)
REDUCE_MAX = "reduce_max"


def matmul_key(fidelity: str, a_format: str, b_format: str) -> str:
    """A 32x32x32 tile multiply-accumulate at `fidelity` of operands in these data formats."""
    return f"matmul.{fidelity}.{a_format}.{b_format}"


def reduce_sum_key(fidelity: str) -> str:
    """A tile summed on the matrix unit (against a scaler tile) at `fidelity`."""
    return f"reduce_sum.{fidelity}"


def binary_key(op: str) -> str:
    """An FPU binary op ("add", "sub", "mul") of two tiles."""
    return op


def sfpu_key(fn: str) -> str:
    return f"sfpu.{fn}"


def sfpu_binary_key(fn: str) -> str:
    return f"sfpu_binary.{fn}"


# ----------------------------------------------------------------------------------------------
# Counts


@dataclass(frozen=True)
class Counts:
    """What one program does, counted (the cost model's only input).

    Tile ops are per core (every core of a program runs the same kernels). NoC bytes are per core, the
    average over the program's cores (per transfer, the floor of it): bytes a core moves through its NoC port from or to DRAM or another
    core's L1 (`local_bytes` moved within its own L1, as sharded pages a core owns, are not NoC traffic).
    DRAM bytes are of all cores. `link_bytes` is the busiest NoC link beyond the cores' own ports and
    `mcast_fanout` the most cores one multicast packet reaches (0 and 1 for unicast programs); a
    multicast (`ttkernel.noc_mcast_cb`) sets them: the bytes a sender multicasts cross each link of its row
    or column once, so the busiest link carries what the busiest sender sent.
    """

    cores: int
    tiles: tuple[tuple[str, int], ...] = ()  # (key, tiles per core), sorted by key, no zero counts
    dram_read: int = 0
    dram_written: int = 0
    noc_bytes: int = 0
    local_bytes: int = 0
    link_bytes: int = 0
    mcast_fanout: int = 1
    programs: int = 1

    @staticmethod
    def tile_table(tiles: Mapping[str, int] | Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
        """The canonical form of a tile count table: sorted, zero counts dropped."""
        items = tiles.items() if isinstance(tiles, Mapping) else tiles
        merged: dict[str, int] = {}
        for key, count in items:
            merged[key] = merged.get(key, 0) + int(count)
        return tuple(sorted((k, n) for k, n in merged.items() if n))

    @property
    def dram_bytes(self) -> int:
        return self.dram_read + self.dram_written

    def tile_count(self, key: str) -> int:
        return dict(self.tiles).get(key, 0)

    @property
    def matmul_tiles(self) -> int:
        """Tile multiply-accumulates per core (every fidelity and format)."""
        return sum(n for key, n in self.tiles if key.startswith("matmul."))

    def to_json(self) -> dict[str, Any]:
        return {"cores": self.cores, "tiles": dict(self.tiles), "dram_read": self.dram_read,
                "dram_written": self.dram_written, "noc_bytes_per_core": self.noc_bytes,
                "local_bytes_per_core": self.local_bytes, "link_bytes": self.link_bytes,
                "mcast_fanout": self.mcast_fanout, "programs": self.programs}


@dataclass
class CountsBuilder:
    """Accumulates the counts of one program as its ops are met (planned or executed)."""

    cores: int
    tiles: dict[str, int] = field(default_factory=dict)
    dram_read: int = 0
    dram_written: int = 0
    noc_bytes: int = 0  # per core, local pages included (taken out in `counts`)
    local_total: int = 0  # sharded pages moved within their own core's L1, summed over the cores
    link_sent: dict[int, int] = field(default_factory=dict)  # core -> bytes it multicast (its outgoing links)
    mcast_fanout: int = 1

    def tile(self, key: str, tiles: int) -> None:
        if tiles:
            self.tiles[key] = self.tiles.get(key, 0) + int(tiles)

    def transfer(self, per_core_bytes: int, dram: bool, write: bool, total_bytes: int | None = None) -> None:
        """`per_core_bytes` moved by every core (for a transfer whose pages differ by core: the floor of the
        average, and `total_bytes` the bytes of all cores, which is what DRAM serves)."""
        self.noc_bytes += per_core_bytes
        if dram:
            total = per_core_bytes * self.cores if total_bytes is None else total_bytes
            if write:
                self.dram_written += total
            else:
                self.dram_read += total

    def multicast(self, sent: Iterable[int], fanout: int) -> None:
        """A multicast: `sent` bytes per core (in grid order) leave each sender once; `fanout` receivers at most."""
        for core, n in enumerate(sent):
            if n:
                self.link_sent[core] = self.link_sent.get(core, 0) + int(n)
        self.mcast_fanout = max(self.mcast_fanout, int(fanout))

    def counts(self) -> Counts:
        local = self.local_total // self.cores
        return Counts(self.cores, Counts.tile_table(self.tiles), self.dram_read, self.dram_written,
                      self.noc_bytes - local, local, max(self.link_sent.values(), default=0), self.mcast_fanout)


# ----------------------------------------------------------------------------------------------
# Cycles


def tile_op_cycles(device: DeviceAttr, key: str) -> int:
    """Cycles of one tile of an op other than the matrix unit's (per core)."""
    table = device.tile_op_cycles
    kind, _, fn = key.partition(".")
    if kind in ("sfpu", "sfpu_binary"):
        if kind == "sfpu" and fn in table:
            return table[fn]
        return table[device.sfpu_cost_keys.get(fn, device.sfpu_cost_keys["default"])]
    if key == REDUCE_MAX:
        return table["add"]
    return table[key]


def matrix_cycles(device: DeviceAttr, key: str) -> tuple[float, float]:
    """(MVMUL cycles at full utilisation, operand bytes unpacked) of one tile of a matrix-unit key, or
    (0, 0) for another key."""
    kind, _, rest = key.partition(".")
    if kind == "matmul":
        fidelity, a_format, b_format = rest.split(".")
        return (device.matmul_cycles_per_phase * FIDELITY_PHASES[fidelity],
                TILE_BYTES[a_format] + TILE_BYTES[b_format])
    if kind == "reduce_sum":
        return device.matmul_cycles_per_phase * FIDELITY_PHASES[rest], 0.0
    return 0.0, 0.0


@dataclass(frozen=True)
class Cost:
    """Modelled cycles of one program: compute and NoC per core, DRAM for the chip, and its launch."""

    compute: float
    dram: float
    noc: float
    launch: float

    @property
    def bound(self) -> str:
        terms = {"compute": self.compute, "dram": self.dram, "noc": self.noc}
        return max(terms, key=lambda k: terms[k])

    @property
    def cycles(self) -> float:
        return max(self.compute, self.dram, self.noc) + self.launch

    def as_attr(self) -> dict[str, object]:
        return {"cycles": round(self.cycles), "bound": self.bound}


def compute_cycles(device: DeviceAttr, counts: Counts) -> float:
    """Per core: the matrix unit (its MVMULs at the measured efficiency, or the unpacker bringing the
    operands in, whichever is longer), then every other tile op at its per-tile figure."""
    matrix = unpacked = other = 0.0
    for key, tiles in counts.tiles:
        mvmul, operand_bytes = matrix_cycles(device, key)
        if mvmul:
            matrix += tiles * mvmul
            unpacked += tiles * operand_bytes
        else:
            other += tiles * tile_op_cycles(device, key)
    return max(matrix / device.matmul_efficiency, unpacked / device.unpack_bytes_per_cycle) + other


def dram_cycles(device: DeviceAttr, counts: Counts) -> float:
    """The chip's DRAM traffic at the achievable bandwidth, or one core's share at one core's rate."""
    total = counts.dram_bytes
    return max(total / device.achievable_dram_bytes_per_cycle,
               total / counts.cores / device.dram_core_bytes_per_cycle)


def noc_cycles(device: DeviceAttr, counts: Counts) -> float:
    return max(counts.noc_bytes, counts.link_bytes) / device.noc_bytes_per_cycle


def launch_cycles(device: DeviceAttr, counts: Counts) -> float:
    return counts.programs * device.launch_cycles + device.launch_cycles_per_core * counts.cores


def cost(device: DeviceAttr, counts: Counts) -> Cost:
    """The modelled cycles of a program with these counts on `device`."""
    return Cost(compute_cycles(device, counts), dram_cycles(device, counts), noc_cycles(device, counts),
                launch_cycles(device, counts))


def time_us(device: DeviceAttr, cycles: float) -> float:
    return cycles / device.clock_mhz


# ----------------------------------------------------------------------------------------------
# Rooflines


def peak_matrix_flops_per_cycle(device: DeviceAttr, fidelity: str) -> float:
    """The derived peak of the whole compute grid at `fidelity` (docs/grayskull.md section 3)."""
    return device.compute_cores * MATRIX_FLOPS_PER_PHASE / FIDELITY_PHASES[fidelity]


def roofline_cycles(device: DeviceAttr, counts: Counts) -> float:
    """The least time any program with these counts can take: its FLOPs at the derived peak of the whole
    compute grid (per fidelity), its DRAM bytes at the achievable bandwidth, its per-core NoC bytes at the
    link rate. A modelled time below it flatters the compiler."""
    matrix = 0.0  # cycles of every fidelity's FLOPs at that fidelity's peak
    for key, tiles in counts.tiles:
        kind, _, rest = key.partition(".")
        if kind == "matmul":
            matrix += tiles * counts.cores * TILE_FLOPS / peak_matrix_flops_per_cycle(device, rest.split(".")[0])
    return max(matrix, counts.dram_bytes / device.achievable_dram_bytes_per_cycle,
               counts.noc_bytes / device.noc_bytes_per_cycle)
