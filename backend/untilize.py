"""Tiles to rows (`ttir.to_layout` from a tile-layout to a row-major device tensor), after tt-metal's
untilize op: the inverse of the embedding's tilize, for data movements that keep rows whole but are not
tile-granular (`movement.RowGather`).

Each core owns whole tile rows. The reader streams a tile row's ct tiles in blocks of block_w; the
compute kernel copies each block into Dst and packs it untilized into the 32 row pages of the row CB
(`pack_rows`, at the block's column); the writer stores the tile row's real rows (all 32, or fewer in
a matrix's last tile row) as pages of the row-major buffer. Values are copied, never rounded.
"""

from __future__ import annotations

from ttc.backend.kernel import Index, KernelBuilder
from ttc.backend.program import Program, Schedule, cbs_of, schedule_of
from ttc.ir.core import Operation
from ttc.passes.footprint import CB_IN0, CB_OUT, TILE, TileShape, tensor, tile_shape


def lower_untilize(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    source = tile_shape(tensor(op.operands[0]).shape)

    def origin(unit: tuple[int, ...]) -> tuple[int, int]:
        return unit[0] * b["batches"], unit[1] * b["rows"]

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        batch, row = origin(unit)
        return [(batch * source.rt + row) * source.ct]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        return list(origin(unit))  # first batch, first tile row

    kernels = (untilize_reader(op, schedule, source), untilize_compute(op, schedule, source),
               untilize_writer(op, schedule, source))
    args = (schedule.args(reader_args), schedule.args(lambda unit: []), schedule.args(writer_args))
    return Program("untilize", schedule.grid, cbs_of(op, schedule), kernels, args, list(op.operands))


def untilize_reader(op: Operation, s: Schedule, source: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(0, tensor(op.operands[0]))
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row, k.loop(source.ct // width) as block:
        start = k.affine(k.arg(0), (batch, source.rt * source.ct), (row, source.ct), (block, width))
        k.op("cb_reserve_back", cb=CB_IN0, pages=width)
        k.op("noc_read_tiles", gen, start, cb=CB_IN0, rows=1, cols=width)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_IN0, pages=width)
    return k.region()


def untilize_compute(op: Operation, s: Schedule, source: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    with k.loop(b["batches"]), k.loop(b["rows"]):
        k.op("cb_reserve_back", cb=CB_OUT, pages=TILE)
        for block in range(source.ct // width):
            k.op("cb_wait_front", cb=CB_IN0, pages=width)
            k.op("tile_regs_acquire")
            k.op("copy_tiles", cb=CB_IN0, rows=1, cols=width)
            k.op("tile_regs_commit")
            k.op("tile_regs_wait")
            k.op("pack_rows", cb=CB_OUT, col_offset=block * width, cols=width)
            k.op("tile_regs_release")
            k.op("cb_pop_front", cb=CB_IN0, pages=width)
        k.op("cb_push_back", cb=CB_OUT, pages=TILE)
    return k.region()


def real_rows(k: KernelBuilder, rows: int, tile_row: Index) -> Index:
    """Rows of the matrix from 32 * tile_row on, at most 32."""
    if rows % TILE == 0:
        return TILE
    return k.minimum(TILE, k.affine(rows, (tile_row, -TILE)))


def untilize_writer(op: Operation, s: Schedule, source: TileShape):
    b = s.blocking
    k = KernelBuilder(op.loc)
    gen = k.addrgen(1, tensor(op.result))
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row:
        tile_row = k.add(k.arg(1), row)
        first_page = k.affine(k.mul(k.add(k.arg(0), batch), source.rows), (tile_row, TILE))
        k.op("cb_wait_front", cb=CB_OUT, pages=TILE)
        k.op("noc_write_rows", gen, first_page, real_rows(k, source.rows, tile_row), cb=CB_OUT, count=TILE)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=TILE)
    return k.region()
