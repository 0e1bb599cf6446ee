"""The allocator's L1 heap replayed over one function's device ops, for the passes that decide what lives
in L1 (layout, grid) before `allocate` gives the addresses.

`allocate` places L1 buffers top down, first fit, by liveness, and each program's circular buffers from
`l1_reserved` upward, below the lowest L1 buffer live during the program. What a program's CBs may take
is therefore not `l1_free` minus the bytes of the live L1 buffers but the room below the lowest of them:
a freed buffer leaves a hole above, and a later buffer that does not fit in the hole goes below it.
`L1Timeline` replays the create/free order lower-to-kernels emits (an op's result buffer right before its
program, every buffer freed after its last reader) on allocate's own `Heap`, so the room it reports is
the room allocate finds.
"""

from __future__ import annotations

from collections.abc import Sequence

from ttc.ir.core import Operation, Value
from ttc.ir.dialects.tt import DeviceAttr
from ttc.passes.allocate import Heap
from ttc.passes.liveness import LiveRange, live_ranges
from ttc.passes.ops.geometry import align


class L1Timeline:
    """Replays the L1 buffers of `ops` in program order: `create` a value's buffer when its op runs,
    `room` for an op's CBs, `finish` an op (freeing the buffers it read last)."""

    def __init__(self, ops: Sequence[Operation], device: DeviceAttr,
                 ranges: Sequence[LiveRange] | None = None) -> None:
        """`ranges`: `live_ranges(ops)` when the caller has them already (a replay per trial placement)."""
        self.ending: dict[int, list[Value]] = {}
        for live in live_ranges(ops) if ranges is None else ranges:
            self.ending.setdefault(live.end, []).append(live.value)
        self.heap = Heap("L1", align(device.l1_reserved), device.l1_size, top_down=True)
        self.address: dict[int, int] = {}  # id(value) -> its buffer's address

    def room(self, result_bytes: int = 0) -> int | None:
        """Per-core bytes from the CB base up to the lowest live L1 buffer, once a result of `result_bytes`
        per core is created (0: none in L1); None when that result does not fit at all."""
        if not result_bytes:
            return self.heap.lowest - self.heap.low
        address = self.heap.allocate(result_bytes)
        if address is None:
            return None
        room = self.heap.lowest - self.heap.low
        self.heap.free(address)
        return room

    def create(self, value: Value, size: int) -> bool:
        """Allocate `value`'s L1 buffer (`size` bytes per core; 0: not in L1); False when it does not fit."""
        if not size:
            return True
        address = self.heap.allocate(size)
        if address is None:
            return False
        self.address[id(value)] = address
        return True

    def finish(self, index: int) -> None:
        """The op at `index` has run: free the L1 buffers it was the last to read."""
        for value in self.ending.get(index, []):
            address = self.address.pop(id(value), None)
            if address is not None:
                self.heap.free(address)
