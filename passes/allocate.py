"""`allocate`: addresses for every device buffer and circular buffer of the host schedule.

- DRAM buffers bottom-up, in lockstep across the channels: a buffer takes the same address range in
  every bank, ceil(pages / channels) x page_size bytes (32 B aligned).
- L1 buffers top-down, per-bank share over the compute cores (32 B aligned), never below l1_reserved. A
  sharded buffer takes one shard's bytes (`footprint.shard_bytes`) at the same address in every core, as
  tt-metal's lockstep L1 allocator does; the cores of its grid hold the shards.
- Both by liveness (create_buffer .. deallocate), reusing freed ranges first fit, except weights: a DRAM
  buffer filled by `write_constant` is allocated first, at the bottom of DRAM, and stays resident for the
  whole function (its deallocate is dropped). No other buffer ever takes its bytes, so running the
  model again finds its weights in place and writes none of them, as a deployed model keeps its weights
  on the device. When resident weights do not fit in DRAM beside the activations, the
  function is allocated again by liveness (each weight freed after its last use and written again on
  the next run), and the module says so (`tt.resident_weights` false). `allocate{resident-weights=false}`
  asks for liveness directly.
- The CBs of each program from l1_reserved upward (32 B aligned, in index order); together
  (`footprint.cb_bytes`) they must end below every L1 buffer live during the program.

Running out of DRAM or L1, or CBs overlapping live L1 buffers, is a UserError naming the bytes needed
and available and the ONNX node. The module records `tt.dram_peak_bytes` (the high-water mark of one
bank times the channels) and `tt.l1_peak_bytes` (per core: the largest CBs + live L1 buffers of any
program).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ttc.ir.core import Function, Module, Operation
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttmetal
from ttc.ir.dialects.tt import DeviceAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.passes.manager import Pass, register_pass
from ttc.passes.ops.geometry import (
    ALIGNMENT,
    align,
    bank_share,
    cb_bytes,
    is_sharded,
    layout,
    module_device,
    node_names,
    shard_geometry,
    tensor,
)

DRAM_PEAK = "tt.dram_peak_bytes"
L1_PEAK = "tt.l1_peak_bytes"
RESIDENT_WEIGHTS = "tt.resident_weights"


class Heap:
    """Address ranges of one memory (same in every bank), allocated first fit from the bottom or top."""

    def __init__(self, name: str, low: int, high: int, top_down: bool) -> None:
        self.name = name
        self.low = low
        self.high = high
        self.top_down = top_down
        self.used: dict[int, int] = {}  # address -> size
        self.high_water = low

    def gaps(self) -> list[tuple[int, int]]:
        """Free (start, end) ranges in address order."""
        gaps, cursor = [], self.low
        for start in sorted(self.used):
            if start > cursor:
                gaps.append((cursor, start))
            cursor = max(cursor, start + self.used[start])
        if cursor < self.high:
            gaps.append((cursor, self.high))
        return gaps

    def allocate(self, size: int) -> int | None:
        """First fit: the lowest gap bottom-up, the highest gap top-down; None when nothing fits."""
        gaps = self.gaps()
        for start, end in reversed(gaps) if self.top_down else gaps:
            address = (end - size) // ALIGNMENT * ALIGNMENT if self.top_down else align(start)
            if start <= address and address + size <= end:
                self.used[address] = size
                self.high_water = max(self.high_water, address + size)
                return address
        return None

    def free(self, address: int) -> None:
        del self.used[address]

    @property
    def lowest(self) -> int:
        """The lowest allocated address (the top when nothing is allocated)."""
        return min(self.used, default=self.high)

    @property
    def live_bytes(self) -> int:
        return sum(self.used.values())

    def largest_gap(self) -> int:
        return max((e - s for s, e in self.gaps()), default=0)


@dataclass
class Allocator:
    device: DeviceAttr
    dram: Heap
    l1: Heap
    l1_peak: int = 0

    @classmethod
    def for_device(cls, device: DeviceAttr) -> Allocator:
        return cls(device, Heap("DRAM", 0, device.dram_channel_size, top_down=False),
                   Heap("L1", align(device.l1_reserved), device.l1_size, top_down=True))

    def heap(self, space: str) -> Heap:
        return self.l1 if space == "l1" else self.dram

    def create(self, op: Operation) -> None:
        t = tensor(op.result)
        space = str(layout(t).memory_space)
        banks = self.device.compute_cores if space == "l1" else self.device.dram_channels
        size = bank_share(t, banks)
        heap = self.heap(space)
        address = heap.allocate(size)
        if address is None and is_sharded(t):
            geometry = shard_geometry(t)
            cores = geometry.shards
            raise UserError(f"node {node_names(op)}: L1 is full on core (0,0) (and each of the {cores} cores of grid "
                            f"{layout(t).grid} holding the {layout(t).memory_layout} buffer {t}): a shard of "
                            f"{geometry.shard_rows}x{geometry.shard_cols} tiles needs {size} bytes, the largest free "
                            f"range is {heap.largest_gap()} bytes ({heap.live_bytes} bytes per core in use); use "
                            "more cores (smaller shards) or an interleaved layout")
        if address is None:
            hint = "layout{l1-intermediates=false}" if space == "l1" else "layout{dtype=bfp8_b} or a smaller batch"
            raise UserError(f"node {node_names(op)}: {heap.name} is full: buffer {t} needs {size} bytes per bank, "
                            f"the largest free range is {heap.largest_gap()} bytes ({heap.live_bytes} bytes per "
                            f"bank in use); try {hint}")
        op.attributes["address"] = address

    def free(self, op: Operation) -> None:
        creator = op.operands[0].owner
        assert isinstance(creator, Operation) and creator.name == ttmetal.CREATE_BUFFER.name
        space = str(layout(tensor(op.operands[0])).memory_space)
        self.heap(space).free(creator.attributes["address"])

    def place_cbs(self, op: Operation) -> None:
        """CBs from l1_reserved upward; they must end below the live L1 buffers."""
        cbs: tuple[CBConfigAttr, ...] = op.attr("cbs")
        needed = cb_bytes(cbs)
        start = align(self.device.l1_reserved)
        limit = self.l1.lowest
        if start + needed > limit:
            raise UserError(f"node {node_names(op)}: the {op.attr('kind')} program's circular buffers need {needed} "
                            f"bytes of L1 per core from {start:#x}, but only {limit - start} bytes are free below "
                            f"the L1 buffers live during it ({self.l1.live_bytes} bytes per core); try "
                            "layout{l1-intermediates=false}")
        placed, address = [], start
        for cb in sorted(cbs, key=lambda c: c.index):
            placed.append(dataclasses.replace(cb, address=address))
            address += align(cb.page_size * cb.pages)
        op.attributes["cbs"] = tuple(placed)
        self.l1_peak = max(self.l1_peak, needed + self.l1.live_bytes)


def is_dram_weight(buffer: Operation) -> bool:
    """A create_buffer in DRAM that a write_constant fills (a weight or constant table)."""
    return str(layout(tensor(buffer.result)).memory_space) == "dram" \
        and any(user.name == ttmetal.WRITE_CONSTANT.name for user in buffer.result.users)


def is_state(buffer: Operation) -> bool:
    """A create_buffer of a device state (`kv-cache`): its contents persist from one run to the next."""
    return buffer.name == ttmetal.CREATE_BUFFER.name and ttmetal.STATE_ATTR in buffer.attributes


def allocate_function(func: Function, allocator: Allocator, resident_weights: bool = False) -> list[Operation]:
    """Allocate every buffer and CB of `func`; returns the deallocates of resident weights and device states
    (which the caller drops: those buffers stay allocated to the end).

    Device states, then resident weights, are allocated first, at the bottom of DRAM, before any activation:
    no other buffer of the function ever takes their bytes (within a run, or in the next one). States are
    resident whether the weights are or not: their contents are what the next run reads."""
    resident = [op for op in func.body.ops if is_state(op)]
    resident += [op for op in func.body.ops
                 if resident_weights and op.name == ttmetal.CREATE_BUFFER.name and is_dram_weight(op)]
    for op in resident:
        allocator.create(op)
    placed = set(resident)
    kept = []
    for op in func.body.ops:
        if op.name == ttmetal.CREATE_BUFFER.name and op not in placed:
            allocator.create(op)
        elif op.name == ttmetal.DEALLOCATE.name:
            if op.operands[0].owner in placed:
                kept.append(op)
            else:
                allocator.free(op)
        elif op.name == ttmetal.ENQUEUE_PROGRAM.name:
            allocator.place_cbs(op)
    return kept


def allocate_with_resident_weights(func: Function, device: DeviceAttr, resident_weights: bool) -> tuple[Allocator, bool]:
    """Allocate `func` with its DRAM weights resident when they fit (their deallocates dropped), else by
    liveness; returns the allocator and whether the weights are resident."""
    if resident_weights:
        allocator = Allocator.for_device(device)
        try:
            kept = allocate_function(func, allocator, resident_weights=True)
        except UserError:
            pass  # retried by liveness below: that error, if any, is the one to report
        else:
            for op in kept:
                op.erase()
            return allocator, True
    allocator = Allocator.for_device(device)
    for op in allocate_function(func, allocator):
        op.erase()
    return allocator, False


@register_pass
@dataclass
class Allocate(Pass):
    """Give device buffers and circular buffers their addresses (weights resident, the rest by liveness);
    record peak usage."""

    name = "allocate"
    resident_weights: bool = True

    def run(self, module: Module) -> None:
        device = module_device(module)
        dram_peak, l1_peak, resident = 0, 0, True
        for func in module.functions:
            allocator, kept = allocate_with_resident_weights(func, device, self.resident_weights)
            resident = resident and kept
            dram_peak = max(dram_peak, allocator.dram.high_water * device.dram_channels)
            l1_peak = max(l1_peak, allocator.l1_peak)
        module.attributes[DRAM_PEAK] = dram_peak
        module.attributes[L1_PEAK] = l1_peak
        module.attributes[RESIDENT_WEIGHTS] = resident
