"""Reductions along the last dim or the one before it (`ttir.reduce_sum`, `ttir.reduce_max`).

Each core owns whole lines: tile rows (a reduction along the last dim, into column 0) or tile columns
(along the dim before it, into row 0). The reader streams a line in blocks of block_w tiles. The
compute kernel keeps one Dst acquire per line and sums the line in groups (`group_sizes`),
each group accumulating in its own Dst slot, so that no chain of bf16 roundings runs the whole line:
a sum of 768 values is 5 or 6 groups of ~8 roundings, whose sums are then added (the second, short
chain), instead of one chain of 48 roundings. A max needs no groups (it rounds nothing); when the
line's last tile has padding, that tile is copied into Dst and its padding set to -inf first, so that
zero padding never beats negative values. The group results (and that tile) are packed, reduced once
more into one tile, the tile's other columns (rows) are zeroed, and the writer stores it. A sum over a
line of more than SEGMENT_BLOCKS blocks runs in segments (`segmented_sum_compute`): each segment's groups
as above, their sum added to a one-tile running sum, so a 256k-element line stays accurate in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.passes.ops.counting import (
    Buffer,
    Plan,
    Weights,
)
from ttc.passes.ops.geometry import (
    CB_GROUPS,
    CB_IN0,
    CB_OUT,
    CB_STAT,
    HALF_DST,
    TILE,
    TileShape,
    cb,
    divisors,
    double,
    node_names,
    tensor,
    tile_shape,
    work_format,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import KernelBuilder
from ttc.passes.ops.program import (
    Program,
    Schedule,
    cbs_of,
    schedule_of,
)
from ttc.passes.ops.registry import register


@dataclass(frozen=True)
class Reduction:
    """A `ttir.reduce_sum` / `reduce_max` along the last dim ("row": every tile row is a line of ct tiles,
    reduced into column 0) or the one before ("col": every tile column, rt tiles, into row 0)."""

    dim: str  # "row" or "col"
    kind: str  # "sum" or "max"
    source: TileShape
    lines: int  # lines per batch (rt for rows, ct for columns)
    length: int  # tiles per line
    stride: int  # tile index step along a line
    masked_last: bool  # a max over a line whose last tile has padding: that tile is masked to -inf

    @property
    def streamed(self) -> int:
        """Tiles per line read in blocks (all but a masked last tile)."""
        return self.length - int(self.masked_last)


def reduction_of(op: Operation) -> Reduction:
    x = tensor(op.operands[0])
    axes = tuple(op.attr("axes"))
    if not op.attr("keepdims") or len(axes) != 1 or axes[0] < x.rank - 2:
        raise UserError(f"node {node_names(op)}: '{op.name}' over axes {list(axes)} reached the backend; the "
                        "device reduces one of the last two dims with keepdims (run tilize first)")
    source = tile_shape(x.shape)
    kind = "max" if op.name == ttir.REDUCE_MAX.name else "sum"
    if axes[0] == x.rank - 1:
        return Reduction("row", kind, source, source.rt, source.ct, 1, kind == "max" and source.cols % TILE != 0)
    return Reduction("col", kind, source, source.ct, source.rt, source.ct, kind == "max" and source.rows % TILE != 0)


SEGMENT_BLOCKS = 64  # sums over lines of more blocks than this run in segments (a running sum over them)


def reduce_segments(reduction: Reduction, block_w: int) -> list[int]:
    """Blocks of each segment a line's sum runs in: each segment is summed in groups (`group_sizes`), and the
    segment sums are chained through a one-tile running sum, so that a line of any length is three short
    chains of bf16 roundings (within a group, over the groups, over the segments) instead of a few long ones.
    About sqrt(blocks) segments of equal size when a divisor of the block count is near that, else segments
    of about sqrt(blocks) blocks and a shorter last one (a line of a prime number of blocks, 739, summed as
    one chain stalled in bf16: a 70,926-wide mean came out 6 times too small). One segment (the whole line) for a max and for lines of up to SEGMENT_BLOCKS blocks."""
    blocks = reduction.streamed // block_w
    if reduction.kind == "max" or blocks <= SEGMENT_BLOCKS:
        return [blocks]
    root = math.sqrt(blocks)
    even = min(divisors(blocks), key=lambda d: abs(d - root))
    if root / 2 <= even <= 2 * root:  # equal segments, when a divisor is near enough
        return [blocks // even] * even
    size = round(root)
    full = blocks // size
    return [size] * full + ([blocks - size * full] if blocks > size * full else [])


def group_sizes(reduction: Reduction, blocks: int) -> list[int]:
    """Blocks of each group a segment of `blocks` blocks is summed in (each in its own Dst slot, then the
    group sums are added): about sqrt(blocks) groups (at most HALF_DST - 1), equal when a divisor of the
    block count is near that, else of nearly equal size, so both chains of bf16 roundings stay short. One group for a max; none for no block."""
    if blocks == 0:
        return []
    if reduction.kind == "max":
        return [blocks]
    even = min((g for g in range(1, HALF_DST) if blocks % g == 0), key=lambda g: abs(g - math.sqrt(blocks)))
    count = max(1, min(HALF_DST - 1, round(math.sqrt(blocks))))
    if even >= count / 2:  # equal groups, when a divisor is near enough
        return [blocks // even] * even
    return [blocks // count + int(g < blocks % count) for g in range(count)]


def reduce_groups(reduction: Reduction, block_w: int) -> int:
    """The most groups a segment of the line is summed in (the pages of CB_GROUPS)."""
    return max(len(group_sizes(reduction, blocks)) for blocks in reduce_segments(reduction, block_w))


def reduce_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    reduction = reduction_of(op)
    x, out = tensor(op.operands[0]), tensor(op.result)
    lines = blocking["batches"] * blocking["lines"]
    width = blocking["block_w"]
    partials = reduce_groups(reduction, width) + int(reduction.masked_last)
    reads = lines * (reduction.streamed // width + int(reduction.masked_last))
    cbs = [cb(CB_IN0, x.element_type, double(width, reads)), cb(CB_OUT, out.element_type, double(1, lines)),
           cb(CB_GROUPS, work_format(out.element_type), max(partials, 1))]
    if len(reduce_segments(reduction, width)) > 1:
        cbs.append(cb(CB_STAT, work_format(out.element_type), 1))
    return cbs


def reduce_candidates(op: Operation) -> Iterator[dict[str, int]]:
    """Whole lines per core; any split of batches and lines; blocks of tiles along a line."""
    reduction = reduction_of(op)
    for batches in divisors(reduction.source.batches):
        for lines in divisors(reduction.lines):
            widths = [d for d in divisors(reduction.streamed) if d <= HALF_DST][::-1] or [1]
            for width in widths:
                yield {"batches": batches, "lines": lines, "block_w": width}


def plan_reduce(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    reduction = reduction_of(op)
    source = reduction.source
    width = b["block_w"]
    lines = b["batches"] * b["lines"]
    segments = reduce_segments(reduction, width)
    groups = len(group_sizes(reduction, segments[0]))
    partials = groups + int(reduction.masked_last)
    plan = Plan(device, grid, (source.batches // b["batches"], reduction.lines // b["lines"]))
    key = target.reduce_sum_key(fidelity) if reduction.kind == "sum" else target.REDUCE_MAX
    if len(segments) > 1:  # per segment its groups, their sum and the running sum; a zero start, a copy out, a mask
        per_segment = [len(group_sizes(reduction, blocks)) for blocks in segments]
        plan.tile(key, lines * (sum(segments) * width + sum(per_segment) + len(segments)))
        plan.tile(target.DATACOPY, lines * (1 + sum(per_segment) + len(segments) + 2))
    else:
        plan.tile(key, lines * (segments[0] * width + partials))
        plan.tile(target.DATACOPY, lines * (groups + 2 * int(reduction.masked_last) + 2))
    unit = plan.unit
    batch0, line0 = unit[:, 0] * b["batches"], unit[:, 1] * b["lines"]
    step = source.ct if reduction.dim == "row" else 1
    read = reduction.streamed // width * width + int(reduction.masked_last)

    def in_pages() -> np.ndarray:
        first = batch0 * source.matrix_tiles + line0 * step
        loop = (np.arange(b["batches"])[:, None] * source.matrix_tiles + np.arange(b["lines"])[None, :] * step).ravel()
        along = np.arange(read) * reduction.stride
        return (first[:, None, None] + loop[None, :, None] + along[None, None, :]).reshape(plan.cores, -1)

    plan.static(Buffer.of(tensor(op.operands[0]), device), lines * read, page_lists=in_pages)

    def out_pages() -> np.ndarray:
        first = batch0 * reduction.lines + line0
        loop = (np.arange(b["batches"])[:, None] * reduction.lines + np.arange(b["lines"])[None, :]).ravel()
        return first[:, None] + loop[None, :]

    plan.static(Buffer.of(tensor(op.result), device), lines, write=True, page_lists=out_pages)
    return plan.counts()


def lower_reduce(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    reduction = reduction_of(op)
    source = reduction.source

    def origin(unit: tuple[int, ...]) -> tuple[int, int]:
        return unit[0] * b["batches"], unit[1] * b["lines"]

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        batch, line = origin(unit)
        first = line * source.ct if reduction.dim == "row" else line
        return [batch * source.matrix_tiles + first]

    def compute_args(unit: tuple[int, ...]) -> list[int]:
        return [origin(unit)[1]]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        batch, line = origin(unit)
        return [batch * reduction.lines + line]

    kernels = (reduce_reader(op, schedule, reduction), reduce_compute(op, schedule, reduction),
               reduce_writer(op, schedule, reduction))
    return Program("reduce", schedule.grid, cbs_of(op, schedule), kernels,
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


def line_step(reduction: Reduction) -> int:
    """Tile index step from one line to the next within a batch."""
    return reduction.source.ct if reduction.dim == "row" else 1


def reduce_reader(op: Operation, s: Schedule, reduction: Reduction):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(0, tensor(op.operands[0]))
    with k.loop(b["batches"]) as batch, k.loop(b["lines"]) as line:
        start = k.affine(k.arg(0), (batch, reduction.source.matrix_tiles), (line, line_step(reduction)))
        with k.loop(reduction.streamed // width) as block:
            k.op("cb_reserve_back", cb=CB_IN0, pages=width)
            k.op("noc_read_tiles", gen, k.affine(start, (block, width * reduction.stride)), cb=CB_IN0, rows=1,
                 cols=width, col_stride=reduction.stride)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_IN0, pages=width)
        if reduction.masked_last:
            k.op("cb_reserve_back", cb=CB_IN0, pages=1)
            k.op("noc_read_tiles", gen, k.affine(start, (1, reduction.streamed * reduction.stride)), cb=CB_IN0,
                 rows=1, cols=1)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_IN0, pages=1)
    return k.region()


def reduce_compute(op: Operation, s: Schedule, reduction: Reduction):
    b = s.blocking
    width = b["block_w"]
    segments = reduce_segments(reduction, width)
    start = float("-inf") if reduction.kind == "max" else 0.0
    source = reduction.source
    k = KernelBuilder(op.loc)
    if len(segments) > 1:
        return segmented_sum_compute(k, s, reduction, segments)
    sizes = group_sizes(reduction, segments[0])
    groups = len(sizes)
    partials = groups + int(reduction.masked_last)
    with k.loop(b["batches"]), k.loop(b["lines"]) as line:
        # Every group of blocks into its own Dst slot (and a masked last tile into the next one).
        k.op("tile_regs_acquire")
        if groups:
            k.op("fill_tiles", count=groups, value=start)
        for group, blocks in enumerate(sizes):
            with k.loop(blocks):
                k.op("cb_wait_front", cb=CB_IN0, pages=width)
                k.op("reduce_tiles", kind=reduction.kind, dim=reduction.dim, cb=CB_IN0, rows=1, cols=width,
                     dst=group, fidelity=s.fidelity)
                k.op("cb_pop_front", cb=CB_IN0, pages=width)
        if reduction.masked_last:
            k.op("cb_wait_front", cb=CB_IN0, pages=1)
            k.op("copy_tiles", cb=CB_IN0, rows=1, cols=1, dst=groups)
            row_tile, col_tile = (0, source.ct - 1) if reduction.dim == "row" else (source.rt - 1, 0)
            k.op("mask_tiles", k.index(row_tile), k.index(col_tile), rows=1, cols=1, dst=groups,
                 valid_rows=source.rows if reduction.dim == "col" else source.rt * TILE,
                 valid_cols=source.cols if reduction.dim == "row" else source.ct * TILE, fill=float("-inf"))
            k.op("cb_pop_front", cb=CB_IN0, pages=1)
        k.pack_block(CB_GROUPS, partials)
        # The group results into one tile; only column 0 (row 0) of it is the result.
        k.op("cb_wait_front", cb=CB_GROUPS, pages=partials)
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=start)
        k.op("reduce_tiles", kind=reduction.kind, dim=reduction.dim, cb=CB_GROUPS, rows=1, cols=partials,
             fidelity=s.fidelity)
        k.op("cb_pop_front", cb=CB_GROUPS, pages=partials)
        out_tile = k.add(k.arg(0), line)  # the output tile's row (col) in its matrix
        row_tile, col_tile = (out_tile, 0) if reduction.dim == "row" else (0, out_tile)
        k.op("mask_tiles", row_tile, col_tile, rows=1, cols=1,
             valid_rows=source.rows if reduction.dim == "row" else 1,
             valid_cols=1 if reduction.dim == "row" else source.cols)
        k.pack_block(CB_OUT, 1)
    return k.region()


def segmented_sum_compute(k: KernelBuilder, s: Schedule, reduction: Reduction, segments: list[int]):
    """A long line's sum: per segment the groups in their Dst slots, their sum plus the running sum (a one-tile
    CB, column 0) packed back as the running sum; then the running sum with its other columns (rows) zeroed.
    The segments of equal size run in a loop, a shorter last one after it."""
    width = s.blocking["block_w"]
    source = reduction.source

    def segment(blocks: int) -> None:
        sizes = group_sizes(reduction, blocks)
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=len(sizes), value=0.0)
        for group, count in enumerate(sizes):
            with k.loop(count):
                k.op("cb_wait_front", cb=CB_IN0, pages=width)
                k.op("reduce_tiles", kind="sum", dim=reduction.dim, cb=CB_IN0, rows=1, cols=width, dst=group,
                     fidelity=s.fidelity)
                k.op("cb_pop_front", cb=CB_IN0, pages=width)
        k.pack_block(CB_GROUPS, len(sizes))
        k.op("cb_wait_front", cb=CB_GROUPS, pages=len(sizes))
        k.op("cb_wait_front", cb=CB_STAT, pages=1)
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=0.0)
        k.op("reduce_tiles", kind="sum", dim=reduction.dim, cb=CB_GROUPS, rows=1, cols=len(sizes),
             fidelity=s.fidelity)
        k.op("reduce_tiles", kind="sum", dim=reduction.dim, cb=CB_STAT, rows=1, cols=1, fidelity=s.fidelity)
        k.op("cb_pop_front", cb=CB_GROUPS, pages=len(sizes))
        k.op("cb_pop_front", cb=CB_STAT, pages=1)
        k.pack_block(CB_STAT, 1)

    uniform = sum(1 for blocks in segments if blocks == segments[0])
    with k.loop(s.blocking["batches"]), k.loop(s.blocking["lines"]) as line:
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=0.0)
        k.pack_block(CB_STAT, 1)
        with k.loop(uniform):
            segment(segments[0])
        for blocks in segments[uniform:]:
            segment(blocks)
        k.op("cb_wait_front", cb=CB_STAT, pages=1)
        k.op("tile_regs_acquire")
        k.op("copy_tiles", cb=CB_STAT, rows=1, cols=1)
        k.op("cb_pop_front", cb=CB_STAT, pages=1)
        out_tile = k.add(k.arg(0), line)
        row_tile, col_tile = (out_tile, 0) if reduction.dim == "row" else (0, out_tile)
        k.op("mask_tiles", row_tile, col_tile, rows=1, cols=1,
             valid_rows=source.rows if reduction.dim == "row" else 1,
             valid_cols=1 if reduction.dim == "row" else source.cols)
        k.pack_block(CB_OUT, 1)
    return k.region()


def reduce_writer(op: Operation, s: Schedule, reduction: Reduction):
    b = s.blocking
    k = KernelBuilder(op.loc)
    gen = k.addrgen(1, tensor(op.result))
    with k.loop(b["batches"]) as batch, k.loop(b["lines"]) as line:
        k.op("cb_wait_front", cb=CB_OUT, pages=1)
        k.op("noc_write_tiles", gen, k.affine(k.arg(0), (batch, reduction.lines), (line, 1)), cb=CB_OUT, rows=1,
             cols=1)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=1)
    return k.region()


class ReduceOp(DeviceOp):
    """A sum or max along one of the last two dims (keepdims)."""

    kind = "reduce"
    op_names = frozenset({ttir.REDUCE_SUM.name, ttir.REDUCE_MAX.name})

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return reduce_candidates(op)

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        return (reduction_of(op).source.batches // blocking["batches"], reduction_of(op).lines // blocking["lines"])

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return reduce_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_reduce(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_reduce(op)


REDUCE = register(ReduceOp())
