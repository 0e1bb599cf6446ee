"""The cache write (`ttir.kv_write`, made by the `kv-cache` pass): this call's key or value entry written into
the device-resident cache at a runtime position.

Both the entry and the cache are row-major (a page per row of the last dim, `kv-cache-rows`), so the rows of
one position are whole pages: with the cache [outer..., S, inner..., D] along axis a (outer = the product of
the dims before a, inner of those between a and the last), the entry's E positions of outer index o are the
E * inner consecutive pages from o * E * inner, and they go to the consecutive cache pages from
(o * S + position) * inner. Each core owns a run of outer indices; per outer index the reader fetches the
entry's pages into CB 0 and the writer stores them at the cache pages of the position. Nothing is computed:
the bytes are copied (the layout pass gives entry and cache one data format).

The position is the writer's runtime argument #1, a *runtime scalar*: the program records it in
`scalar_args` (kernel, argument, scalar name, exclusive upper bound), and each run substitutes the value
given for the scalar without re-encoding the program; a value outside [0, S - E] is a device fault naming
the core and CB before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from ttc.ir.core import Module, Operation
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.passes.ops.counting import Buffer, Plan, Weights
from ttc.passes.ops.geometry import CB_IN0, cb, double, is_row_major, node_names, page_size, tensor
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import KernelBuilder
from ttc.passes.ops.program import Program, Schedule, cbs_of, schedule_of
from ttc.passes.ops.registry import register

WRITER = 2  # the writer kernel's index in runtime_args
POSITION_ARG = 1  # the writer's runtime argument holding the position
MAX_CB_BYTES = 256 * 1024  # one outer index's entry pages must fit L1 at once


def is_kv_write(op: Operation) -> bool:
    return op.name == ttir.KV_WRITE.name and is_row_major(op.operands[0]) and is_row_major(op.result)


def geometry(op: Operation) -> tuple[int, int, int, int]:
    """(outer, entry positions E, cache positions S, inner) of the write."""
    entry, cache = tensor(op.operands[0]), tensor(op.result)
    axis = op.attr("axis")
    if axis >= cache.rank - 1:
        raise UserError(f"node {node_names(op)}: a cache growing along its last dim ({cache}) has no whole rows per "
                        "position; the device cache needs the position axis before the feature axis")
    outer = math.prod(cache.shape[:axis])
    inner = math.prod(cache.shape[axis + 1:-1])
    return outer, entry.shape[axis], cache.shape[axis], inner


def pages_per_outer(op: Operation) -> int:
    _, entry, _, inner = geometry(op)
    return entry * inner


def kv_write_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    entry = tensor(op.operands[0])
    pages = pages_per_outer(op)
    if pages * page_size(entry) > MAX_CB_BYTES:
        raise UserError(f"node {node_names(op)}: a cache entry of {pages} rows per head ({pages * page_size(entry)} "
                        f"bytes) does not fit one core's L1 at once; write fewer positions per call")
    return [cb(CB_IN0, entry.element_type, double(pages, blocking["outer"]), page=page_size(entry))]


def plan_kv_write(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                  result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    outer, _, _, _ = geometry(op)
    plan = Plan(device, grid, (outer // b["outer"],))
    pages = pages_per_outer(op) * b["outer"]
    plan.static(Buffer.of(tensor(op.operands[0]), device), pages)
    plan.static(Buffer.of(tensor(op.result), device), pages, write=True)
    return plan.counts()


def lower_kv_write(op: Operation) -> Program:
    schedule = schedule_of(op)
    _, entry_rows, slots, _ = geometry(op)
    if page_size(tensor(op.operands[0])) != page_size(tensor(op.result)):
        raise UserError(f"node {node_names(op)}: the cache entry {tensor(op.operands[0])} and the cache "
                        f"{tensor(op.result)} have different row sizes (data formats); the write copies rows")
    per_core = schedule.blocking["outer"]

    def first(unit: tuple[int, ...]) -> list[int]:
        return [unit[0] * per_core]

    kernels = (kv_reader(op, schedule), KernelBuilder(op.loc).region(), kv_writer(op, schedule))
    args = (schedule.args(first), schedule.args(lambda unit: []),
            schedule.args(lambda unit: [*first(unit), 0]))  # the position: 0 plus the run's scalar
    scalar = (WRITER, POSITION_ARG, op.attr("position"), slots - entry_rows + 1)
    return Program("kv_write", schedule.grid, cbs_of(op, schedule), kernels, args, list(op.operands),
                   scalar_args=(scalar,))


def kv_reader(op: Operation, s: Schedule):
    pages = pages_per_outer(op)
    k = KernelBuilder(op.loc)
    gen = k.addrgen(0, tensor(op.operands[0]))
    with k.loop(s.blocking["outer"]) as o:
        start = k.affine(k.mul(k.arg(0), pages), (o, pages))
        k.op("cb_reserve_back", cb=CB_IN0, pages=pages)
        k.op("noc_read_pages", gen, start, cb=CB_IN0, count=pages)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_IN0, pages=pages)
    return k.region()


def kv_writer(op: Operation, s: Schedule):
    _, _, slots, inner = geometry(op)
    pages = pages_per_outer(op)
    k = KernelBuilder(op.loc)
    gen = k.addrgen(1, tensor(op.result))
    position = k.mul(k.arg(POSITION_ARG), inner)
    with k.loop(s.blocking["outer"]) as o:
        start = k.affine(position, (k.arg(0), slots * inner), (o, slots * inner))
        k.op("cb_wait_front", cb=CB_IN0, pages=pages)
        k.op("noc_write_rows", gen, start, pages, cb=CB_IN0, count=pages)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_IN0, pages=pages)
    return k.region()


class KVWriteOp(DeviceOp):
    """A cache entry written into the device-resident cache at a runtime position."""

    kind = "kv_write"
    op_names = frozenset({ttir.KV_WRITE.name})

    def matches(self, op: Operation) -> bool:
        return is_kv_write(op)

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        outer = geometry(op)[0]
        for per_core in range(1, outer + 1):
            if outer % per_core == 0:
                yield {"outer": per_core}

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        return (geometry(op)[0] // blocking["outer"],)

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return kv_write_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_kv_write(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_kv_write(op)


KV_WRITE = register(KVWriteOp())
