"""The cycle accounting of one program: what each op is charged, and the program's profile.

How ops are charged (per core; every core runs the same ops, so the charges are the same on every core)
- A compute op costs the descriptor's per-tile cycles (`tile_op_cycles`) times the tiles it makes:
  binary add/sub/mul by their name; copy, transpose, tilize, fill and mask "datacopy"; reduce-max "add";
  SFPU functions by name (`sfpu_cost_key`). Matmul and reduce-sum cost matmul_cycles_per_phase x the
  fidelity's phases per tile-MAC. Pack is part of the op costs; Dst, CB, NoC and scalar ops cost no
  compute cycles (`op_cycles`, the one table of compute charges).
- A NoC transfer charges its bytes per core to the NoC and, from or to DRAM, the bytes of all cores to
  DRAM; a page of a sharded buffer held by the accessing core itself is a local L1 access: it counts
  as `local_bytes`, not as NoC traffic (`Accounting.charge_noc`).
- A program takes the max of compute cycles, NoC bytes over noc_bytes_per_cycle and DRAM bytes over the
  chip's DRAM bandwidth (`profile_of`).

Both emulators report the same profile: the native core gets each op's compute cycles at encoding
(runtime/native_program.py) and its byte counts back from the run, and builds the profile here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ttc.ir.core import Operation
from ttc.ir.dialects.tt import DeviceAttr
from ttc.runtime import numerics

if TYPE_CHECKING:  # types only: accounting depends on no other part of the emulator
    from ttc.runtime.dataflow import AddrGen
    from ttc.runtime.device import Device

# SFPU functions without their own entry in the descriptor's tile_op_cycles cost like these.
SFPU_COST_KEYS = {"rsqrt": "recip", "tanh": "sigmoid", "gelu_tanh": "gelu", "erf": "gelu",
                  "pow_scalar": "exp", "rpow_scalar": "exp", "softplus": "log", "mish": "log", "pow": "log"}
_DEFAULT_SFPU_COST_KEY = "mul"  # one simple SFPU pass (relu, neg, abs, square, *_scalar)


@dataclass(frozen=True)
class ProgramProfile:
    """The cost model's record of one program (cycles are per core; DRAM bytes are for all cores)."""

    kind: str
    nodes: tuple[str, ...]
    cores: int
    compute_cycles: int
    dram_bytes: int
    noc_bytes: int  # per core
    dram_cycles: float
    noc_cycles: float
    cycles: float
    bound: str  # "compute", "dram" or "noc"
    time_us: float
    local_bytes: int = 0  # per core: sharded pages the core read or wrote in its own L1 (no NoC)


# ----------------------------------------------------------------------------------------------
# Compute charges


def tile_op_cycles(desc: DeviceAttr, key: str, tiles: int) -> int:
    """`tiles` tiles of the descriptor's per-tile op `key`."""
    return desc.tile_op_cycles[key] * tiles


def matmul_cycles(desc: DeviceAttr, tile_macs: int, fidelity: str) -> int:
    """`tile_macs` 32x32x32 tile multiply-accumulates at `fidelity` (one matmul pass per fidelity phase)."""
    return desc.matmul_cycles_per_phase * numerics.MathFidelity.parse(fidelity).phases * tile_macs


def sfpu_cost_key(desc: DeviceAttr, fn: str) -> str:
    """The tile_op_cycles entry a unary SFPU function costs: its own, else the one it is costed like."""
    return fn if fn in desc.tile_op_cycles else SFPU_COST_KEYS.get(fn, _DEFAULT_SFPU_COST_KEY)


def sfpu_binary_cost_key(fn: str) -> str:
    """The tile_op_cycles entry a binary SFPU function costs (they have no entries of their own)."""
    return SFPU_COST_KEYS.get(fn, _DEFAULT_SFPU_COST_KEY)


def _block(a: Mapping[str, Any]) -> int:
    """Tiles of an op's rows x cols block (none when either is not positive)."""
    return max(a["rows"], 0) * max(a["cols"], 0)


_Charge = Callable[[DeviceAttr, Mapping[str, Any]], int]
_COMPUTE_CHARGES: dict[str, _Charge] = {
    "ttkernel.copy_tiles": lambda d, a: tile_op_cycles(d, "datacopy", a["rows"] * a["cols"]),
    "ttkernel.transpose_tiles": lambda d, a: tile_op_cycles(d, "datacopy", a["rows"] * a["cols"]),
    "ttkernel.tilize_tiles": lambda d, a: tile_op_cycles(d, "datacopy", a["cols"]),
    "ttkernel.binary_tiles": lambda d, a: tile_op_cycles(d, a["op"], a["rows"] * a["cols"]),
    "ttkernel.matmul_tiles": lambda d, a: matmul_cycles(d, a["rows"] * a["cols"] * a["inner"], a["fidelity"]),
    "ttkernel.reduce_tiles": lambda d, a: matmul_cycles(d, _block(a), a["fidelity"]) if a["kind"] == "sum"
    else tile_op_cycles(d, "add", _block(a)),
    "ttkernel.sfpu_tiles": lambda d, a: tile_op_cycles(d, sfpu_cost_key(d, a["fn"]), a["count"]),
    "ttkernel.sfpu_binary_tiles": lambda d, a: tile_op_cycles(d, sfpu_binary_cost_key(a["fn"]), a["count"]),
    "ttkernel.fill_tiles": lambda d, a: tile_op_cycles(d, "datacopy", a["count"]),
    "ttkernel.mask_tiles": lambda d, a: tile_op_cycles(d, "datacopy", a["rows"] * a["cols"]),
}


def op_cycles(desc: DeviceAttr, name: str, attrs: Mapping[str, Any]) -> int:
    """Compute cycles (per core) of one op `name` with attributes `attrs` (defaults filled in); 0 for an op
    that costs no compute cycles of its own (Dst, CB, NoC, scalar ops; pack_tiles and pack_rows)."""
    charge = _COMPUTE_CHARGES.get(name)
    return charge(desc, attrs) if charge is not None else 0


# ----------------------------------------------------------------------------------------------
# The profile


def profile_of(desc: DeviceAttr, op: Operation, cores: int, compute_cycles: int, noc_bytes: int, dram_bytes: int,
               local_bytes: int) -> ProgramProfile:
    """The profile of program `op` on `cores` cores from its counts: `noc_bytes` per core (local accesses
    included), `dram_bytes` and `local_bytes` summed over the cores."""
    local = local_bytes // cores
    noc_bytes -= local
    dram = dram_bytes / desc.dram_bytes_per_cycle
    noc = noc_bytes / desc.noc_bytes_per_cycle
    costs = {"compute": float(compute_cycles), "dram": dram, "noc": noc}
    bound = max(costs, key=lambda k: costs[k])
    return ProgramProfile(op.attr("kind"), op.loc.names(), cores, compute_cycles, dram_bytes, noc_bytes, dram,
                          noc, costs[bound], bound, costs[bound] / desc.clock_mhz, local)


class Accounting:
    """The counts of a running program (a mixin of `interpreter.Program`): handlers charge their op here."""

    desc: DeviceAttr
    device: Device
    op: Operation
    cores: int
    core_banks: np.ndarray  # L1 bank (device core) of each program core
    compute_cycles: int = 0
    noc_bytes: int = 0  # per core
    dram_bytes: int = 0  # all cores
    local_bytes: int = 0  # sharded pages a core moved within its own L1, summed over the cores

    def charge(self, op: Operation, attrs: Mapping[str, Any]) -> None:
        """Charge the compute cycles of `op` (`op_cycles`), done on every core."""
        self.compute_cycles += op_cycles(self.desc, op.name, attrs)

    def charge_noc(self, gen: AddrGen, pages: int, bank: np.ndarray | None = None,
                   wanted: np.ndarray | None = None) -> None:
        """NoC (and DRAM) bytes of `pages` pages per core; with a sharded addrgen, the pages located in the
        core's own bank (`bank` [cores, n], `wanted` masking the pages really moved) are local instead."""
        if gen.memory_layout != "interleaved" and bank is not None:
            own = bank.reshape(bank.shape[0], -1) == self.core_banks[:, None]  # bank: [cores or 1, n]
            if wanted is not None:
                own &= wanted.reshape(self.cores, -1)
            self.local_bytes += int(own.sum()) * gen.page_size  # all cores; per core in profile()
        nbytes = pages * gen.page_size
        self.noc_bytes += nbytes
        if gen.memory is self.device.dram:
            self.dram_bytes += nbytes * self.cores

    def profile(self) -> ProgramProfile:
        return profile_of(self.desc, self.op, self.cores, self.compute_cycles, self.noc_bytes, self.dram_bytes,
                          self.local_bytes)
