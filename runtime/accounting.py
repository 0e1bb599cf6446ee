"""The counting of one program as it runs: what each op counts, and the program's profile.

The emulators count; the target (`ttc.ir.target`) alone turns counts into cycles.

How ops count (every core runs the same ops, so tile counts are per core)
- A compute op counts the tiles it makes under one key of `ttc.ir.target` (`tile_count`, the one table):
  binary add/sub/mul by their name; copy, transpose, tilize, fill and mask "datacopy"; reduce-max
  "reduce_max"; a reduce-sum on the matrix unit at its fidelity; SFPU functions by name; matmul tile
  multiply-accumulates at their fidelity, with the data formats of their two operand CBs. Dst, CB, NoC and
  scalar ops and pack count no tiles.
- A NoC transfer counts its bytes per core (for a transfer whose pages differ by core, a ragged edge or a
  gather of one of several inputs: the pages of all cores // cores), and from or to DRAM the bytes of all
  cores (exactly) as DRAM bytes read or written. A page of a sharded buffer held by the accessing core itself is a
  local L1 access: it counts as local bytes, not as NoC traffic (`Accounting.charge_noc`).

Both emulators count the same: the native core gets each compute op's key and tiles in its op stream
(runtime/native_program.py encodes them) and its byte counts back from the run, and builds the profile here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ttc.ir import target
from ttc.ir.attributes import TypeAttr
from ttc.ir.core import Operation
from ttc.ir.dialects import ttkernel
from ttc.ir.dialects.tt import DeviceAttr

if TYPE_CHECKING:  # types only: accounting depends on no other part of the emulator
    from ttc.runtime.dataflow import AddrGen
    from ttc.runtime.device import Device


@dataclass(frozen=True)
class ProgramProfile:
    """One program's counts and the target's cycles for them (cycles per core; DRAM bytes of all cores)."""

    kind: str
    nodes: tuple[str, ...]
    cores: int
    counts: target.Counts
    compute_cycles: float
    dram_cycles: float
    noc_cycles: float
    launch_cycles: float
    cycles: float  # max(compute, DRAM, NoC) + launch
    bound: str  # "compute", "dram" or "noc"
    time_us: float

    @property
    def dram_bytes(self) -> int:
        return self.counts.dram_bytes

    @property
    def noc_bytes(self) -> int:  # per core
        return self.counts.noc_bytes

    @property
    def local_bytes(self) -> int:  # per core: sharded pages the core read or wrote in its own L1 (no NoC)
        return self.counts.local_bytes


# ----------------------------------------------------------------------------------------------
# What each compute op counts


def _block(a: Mapping[str, Any]) -> int:
    """Tiles of an op's rows x cols block (none when either is not positive)."""
    return max(a["rows"], 0) * max(a["cols"], 0)


FormatOf = Callable[[int], str]  # a CB index -> its data format's name
_Count = Callable[[Mapping[str, Any], FormatOf], tuple[str, int]]
_TILE_COUNTS: dict[str, _Count] = {
    ttkernel.COPY_TILES.name: lambda a, f: (target.DATACOPY, a["rows"] * a["cols"]),
    ttkernel.TRANSPOSE_TILES.name: lambda a, f: (target.DATACOPY, a["rows"] * a["cols"]),
    ttkernel.TILIZE_TILES.name: lambda a, f: (target.DATACOPY, a["cols"]),
    ttkernel.BINARY_TILES.name: lambda a, f: (target.binary_key(a["op"]), a["rows"] * a["cols"]),
    ttkernel.MATMUL_TILES.name: lambda a, f: (target.matmul_key(a["fidelity"], f(a["cb_a"]), f(a["cb_b"])),
                                           a["rows"] * a["cols"] * a["inner"]),
    ttkernel.REDUCE_TILES.name: lambda a, f: (target.reduce_sum_key(a["fidelity"]) if a["kind"] == "sum"
                                           else target.REDUCE_MAX, _block(a)),
    ttkernel.SFPU_TILES.name: lambda a, f: (target.sfpu_key(a["fn"]), a["count"]),
    ttkernel.SFPU_BINARY_TILES.name: lambda a, f: (target.sfpu_binary_key(a["fn"]), a["count"]),
    ttkernel.FILL_TILES.name: lambda a, f: (target.DATACOPY, a["count"]),
    ttkernel.MASK_TILES.name: lambda a, f: (target.DATACOPY, a["rows"] * a["cols"]),
}


def tile_count(name: str, attrs: Mapping[str, Any], format_of: FormatOf) -> tuple[str, int] | None:
    """(count key, tiles) of one execution of op `name` with attributes `attrs` (defaults filled in), per core;
    None for an op that makes no tiles of its own (Dst, CB, NoC, scalar ops; pack_tiles and pack_rows)."""
    count = _TILE_COUNTS.get(name)
    return count(attrs, format_of) if count is not None else None


def cb_formats(op: Operation) -> dict[int, str]:
    """A program's CB index -> data format name, from its `cbs` configuration."""
    formats = {}
    for config in op.attr("cbs"):
        fmt = config.format
        formats[config.index] = fmt.type.name if isinstance(fmt, TypeAttr) else "bf16"
    return formats


# ----------------------------------------------------------------------------------------------
# The profile


def profile_of(desc: DeviceAttr, op: Operation, counts: target.Counts) -> ProgramProfile:
    """The profile of program `op` from its counts: the target's cost."""
    cost = target.cost(desc, counts)
    return ProgramProfile(op.attr("kind"), op.loc.names(), counts.cores, counts, cost.compute, cost.dram, cost.noc,
                          cost.launch, cost.cycles, cost.bound, target.time_us(desc, cost.cycles))


class Accounting:
    """The counts of a running program (a mixin of `interpreter.Program`): handlers charge their op here."""

    desc: DeviceAttr
    device: Device
    op: Operation
    cores: int
    core_banks: np.ndarray  # L1 bank (device core) of each program core
    _counting: target.CountsBuilder | None = None
    _formats: dict[int, str] | None = None

    @property
    def counting(self) -> target.CountsBuilder:
        if self._counting is None:
            self._counting = target.CountsBuilder(self.cores)
        return self._counting

    def charge(self, op: Operation, attrs: Mapping[str, Any]) -> None:
        """Count the tiles `op` makes (`tile_count`), on every core."""
        if self._formats is None:
            self._formats = cb_formats(self.op)
        count = tile_count(op.name, attrs, self._formats.__getitem__)
        if count is not None:
            self.counting.tile(*count)

    def charge_noc(self, gen: AddrGen, pages: int, bank: np.ndarray | None = None,
                   wanted: np.ndarray | None = None, write: bool = False, total: int | None = None) -> None:
        """NoC (and DRAM) bytes of `pages` pages per core (`total`: the pages of all cores, when they differ
        by core); with a sharded addrgen, the pages located in the core's own bank (`bank` [cores, n],
        `wanted` masking the pages really moved) are local instead."""
        counting = self.counting
        if gen.memory_layout != "interleaved" and bank is not None:
            own = bank.reshape(bank.shape[0], -1) == self.core_banks[:, None]  # bank: [cores or 1, n]
            if wanted is not None:
                own &= wanted.reshape(self.cores, -1)
            counting.local_total += int(own.sum()) * gen.page_size
        counting.transfer(pages * gen.page_size, gen.memory is self.device.dram, write,
                          None if total is None else total * gen.page_size)

    def profile(self) -> ProgramProfile:
        return profile_of(self.desc, self.op, self.counting.counts())
