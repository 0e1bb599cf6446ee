"""Embedding lookups (`ttir.embedding`), after tt-metal's embedding op: rows fetched by index, then tilized.

The table is a row-major weight in DRAM (a page per table row); the indices are the int32 row-major
buffer of the token ids (a page per row of their last dim). Each core owns whole output tile rows: 32
consecutive ids of one index page. Per tile row its reader fetches the index page into an index CB
and then the 32 table rows those ids name into a row CB (`noc_read_rows_indexed`; past the last id of
a page, when the ids are not a multiple of 32, the rows are zero-filled: the output's padding rows).
The compute kernel tilizes the 32 rows, block_w tiles at a time, and the writer stores the tiles.
Nothing is rounded on the way: the rows are copied as stored (bf16) and tilized into bf16 tiles, so
the result is the table's bf16 rows exactly. A negative id counts from the end of the table, as in
ONNX Gather; an id outside the table is a device fault (naming core, kernel and ONNX node).
"""

from __future__ import annotations

from ttc.backend.kernel import Index, KernelBuilder
from ttc.backend.program import Program, Schedule, cbs_of, schedule_of
from ttc.ir.core import Operation
from ttc.passes.footprint import CB_IN0, CB_INDEX, CB_OUT, TILE, TileShape, embedding_geometry, tensor

CB_ROWS = CB_IN0


def lower_embedding(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    out, ids_per_page, _ = embedding_geometry(op)

    def origin(unit: tuple[int, ...]) -> tuple[int, int]:
        return unit[0] * b["batches"], unit[1] * b["rows"]

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        return list(origin(unit))  # first index page (batch), first tile row

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        batch, row = origin(unit)
        if op.attr("grouped"):  # position b's channel tile j sits in batch j, at column b of each tile row
            return [row * out.batches + batch]
        if op.attr("im2col"):  # batch (kernel position) b's tiles sit at column b * ct of each tile row
            return [row * out.batches * out.ct + batch * out.ct]
        return [(batch * out.rt + row) * out.ct]

    kernels = (embedding_reader(op, schedule, ids_per_page), embedding_compute(op, schedule, out),
               embedding_writer(op, schedule, out))
    args = (schedule.args(reader_args), schedule.args(lambda unit: []), schedule.args(writer_args))
    return Program("embedding", schedule.grid, cbs_of(op, schedule), kernels, args, list(op.operands))


def valid_rows(k: KernelBuilder, ids_per_page: int, tile_row: Index) -> Index:
    """Ids of the index page from 32 * tile_row on, at most 32."""
    if ids_per_page % TILE == 0:
        return TILE
    return k.minimum(TILE, k.affine(ids_per_page, (tile_row, -TILE)))


def embedding_reader(op: Operation, s: Schedule, ids_per_page: int):
    b = s.blocking
    k = KernelBuilder(op.loc)
    table = k.addrgen(0, tensor(op.operands[0]))
    ids = k.addrgen(1, tensor(op.operands[1]))
    im2col = bool(op.attr("im2col"))  # an index page per output tile row (32 ids), else one per batch
    tile_rows = tensor(op.operands[1]).shape[1] if im2col else 0  # ids [positions, tile rows, 32]
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row:
        tile_row = k.add(k.arg(1), row)
        page = k.affine(k.arg(1), (k.arg(0), tile_rows), (batch, tile_rows), (row, 1)) if im2col \
            else k.add(k.arg(0), batch)
        first = 0 if im2col else k.mul(tile_row, TILE)
        k.op("cb_reserve_back", cb=CB_INDEX, pages=1)
        k.op("noc_read_pages", ids, page, cb=CB_INDEX, count=1)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_INDEX, pages=1)
        k.op("cb_wait_front", cb=CB_INDEX, pages=1)
        k.op("cb_reserve_back", cb=CB_ROWS, pages=TILE)
        k.op("noc_read_rows_indexed", table, first, valid_rows(k, ids_per_page, tile_row),
             cb=CB_ROWS, index_cb=CB_INDEX, count=TILE, wrap=tensor(op.operands[0]).shape[0],
             **({"pad_negative": True} if op.attr("pad_negative") else {}))
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_ROWS, pages=TILE)
        k.op("cb_pop_front", cb=CB_INDEX, pages=1)
    return k.region()


def embedding_compute(op: Operation, s: Schedule, out: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    with k.loop(b["batches"]), k.loop(b["rows"]):
        k.op("cb_wait_front", cb=CB_ROWS, pages=TILE)
        for block in range(out.ct // width):
            k.op("tile_regs_acquire")
            k.op("tilize_tiles", cb=CB_ROWS, col_offset=block * width, cols=width)
            k.pack_block(CB_OUT, width)
        k.op("cb_pop_front", cb=CB_ROWS, pages=TILE)
    return k.region()


def embedding_writer(op: Operation, s: Schedule, out: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(2, tensor(op.result))
    batch_stride, row_stride = (out.ct, out.batches * out.ct) if op.attr("im2col") else (out.rt * out.ct, out.ct)
    col_stride = 1
    if op.attr("grouped"):  # [ct, M, positions * 32]: channel tiles a batch apart
        batch_stride, row_stride, col_stride = 1, out.batches, out.rt * out.batches
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row, k.loop(out.ct // width) as block:
        start = k.affine(k.arg(0), (batch, batch_stride), (row, row_stride), (block, width * col_stride))
        k.op("cb_wait_front", cb=CB_OUT, pages=width)
        k.op("noc_write_tiles", gen, start, cb=CB_OUT, rows=1, cols=width, col_stride=col_stride)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=width)
    return k.region()
