"""Reductions along the last dim or the one before it (`ttir.reduce_sum`, `ttir.reduce_max`).

Each core owns whole lines: tile rows (a reduction along the last dim, into column 0) or tile columns
(along the dim before it, into row 0). The reader streams a line in blocks of block_w tiles. The
compute kernel keeps one Dst acquire per line and sums the line in groups (`footprint.reduce_groups`),
each group accumulating in its own Dst slot, so that no chain of bf16 roundings runs the whole line:
a sum of 768 values is 5 or 6 groups of ~8 roundings, whose sums are then added (the second, short
chain), instead of one chain of 48 roundings. A max needs no groups (it rounds nothing); when the
line's last tile has padding, that tile is copied into Dst and its padding set to -inf first, so that
zero padding never beats negative values. The group results (and that tile) are packed, reduced once
more into one tile, the tile's other columns (rows) are zeroed, and the writer stores it.
"""

from __future__ import annotations

from ttc.backend.kernel import KernelBuilder
from ttc.backend.program import Program, Schedule, cbs_of, schedule_of
from ttc.ir.core import Operation
from ttc.passes.footprint import (
    CB_GROUPS,
    CB_IN0,
    CB_OUT,
    TILE,
    Reduction,
    reduce_groups,
    reduction_of,
    tensor,
)


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
    groups = reduce_groups(reduction, width)
    per_group = reduction.streamed // width // groups if groups else 0
    partials = groups + int(reduction.masked_last)
    start = float("-inf") if reduction.kind == "max" else 0.0
    source = reduction.source
    k = KernelBuilder(op.loc)
    with k.loop(b["batches"]), k.loop(b["lines"]) as line:
        # Every group of blocks into its own Dst slot (and a masked last tile into the next one).
        k.op("tile_regs_acquire")
        if groups:
            k.op("fill_tiles", count=groups, value=start)
        for group in range(groups):
            with k.loop(per_group):
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
