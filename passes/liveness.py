"""Liveness of device values, shared by the layout and grid passes (and the L1 timeline): which ops read a
buffer (folded movement chains followed to their end, views to the readers of the view), the live range of
every device tensor a block produces, and the L1 bytes live across each op that its program does not touch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ttc.ir.core import Operation, Value
from ttc.ir.dialects.tt import DeviceAttr
from ttc.ir.types import TensorType
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.geometry import (
    in_l1,
    l1_share,
    tensor,
)
from ttc.passes.ops.registry import op_kind, program_operands


def chain_end(op: Operation) -> Operation:
    """The op that actually reads a value consumed by `op`: the end of a folded movement chain."""
    while is_folded(op):
        op = op.result.uses[0][0]
    return op


def readers(value: Value) -> list[Operation]:
    """The ops that read `value`'s buffer: users, with folded chains followed to their end and views
    followed to the readers of the view (which shares the buffer)."""
    found: list[Operation] = []
    for user, _ in value.uses:
        end = chain_end(user)
        if is_view(end):
            found += readers(end.result)
        else:
            found.append(end)
    return found


@dataclass(frozen=True)
class LiveRange:
    """A value produced by the op at `start` and last read by the op at `end` (body positions)."""

    value: Value
    start: int
    end: int


def live_ranges(ops: Sequence[Operation]) -> list[LiveRange]:
    """Live ranges of the device tensors the ops of one block produce (folded values excluded)."""
    position = {id(op): i for i, op in enumerate(ops)}
    ranges = []
    for i, op in enumerate(ops):
        if is_folded(op) or is_view(op):
            continue
        for result in op.results:
            ends = [position[id(reader)] for reader in readers(result) if id(reader) in position]
            ranges.append(LiveRange(result, i, max(ends, default=i)))
    return ranges


def buffer_of(value: Value) -> Value:
    """The value whose buffer `value` is: a view's result shares its source's pages (followed back)."""
    owner = value.owner
    while isinstance(owner, Operation) and op_kind(owner) is not None and is_view(owner):
        value = program_operands(owner)[0]
        owner = value.owner
    return value


def other_l1_bytes(ops: Sequence[Operation], device: DeviceAttr) -> dict[int, int]:
    """Per op (by id): per-core bytes of the L1 tensors live across it that its program does not touch."""
    ranges = [r for r in live_ranges(ops) if in_l1(r.value.type)]
    # the bytes of every L1 tensor live at each op (one sweep over the ranges' ends), less those the op touches
    shares = {id(r.value): (r, l1_share(tensor(r.value), device)) for r in ranges}
    change = [0] * (len(ops) + 1)
    for r, share in shares.values():
        if r.end < r.start:
            continue
        change[r.start] += share
        change[r.end + 1] -= share
    result: dict[int, int] = {}
    live = 0
    for i, op in enumerate(ops):
        live += change[i]
        untouched = live
        if op_kind(op):
            for touched in {id(buffer_of(v)) for v in (*program_operands(op), *op.results)}:
                found = shares.get(touched)
                if found is not None and found[0].start <= i <= found[0].end:
                    untouched -= found[1]
        result[id(op)] = untouched
    return result


def sync_body_placement(op: Operation) -> None:
    """A fused body's arguments take their operands' layout (memory space), keeping their element type."""
    for region in op.regions:
        for block in region.blocks:
            for arg, operand in zip(block.args, op.operands, strict=False):
                if isinstance(arg.type, TensorType) and isinstance(operand.type, TensorType):
                    arg.type = arg.type.with_encoding(operand.type.encoding)
