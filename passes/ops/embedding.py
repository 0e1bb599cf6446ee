"""Embedding lookups (`ttir.embedding`), after tt-metal's embedding op: rows fetched by index, then tilized.

The table is a row-major weight in DRAM (a page per table row); the indices are the int32 row-major
buffer of the token ids (a page per row of their last dim). Each core owns whole output tile rows: 32
consecutive ids of one index page. Per tile row its reader fetches the index page into an index CB
and then the 32 table rows those ids name into a row CB (`noc_read_rows_indexed`; past the last id of
a page, when the ids are not a multiple of 32, the rows are zero-filled: the output's padding rows).
The compute kernel tilizes the 32 rows, block_w tiles at a time, and the writer stores the tiles. The tile
rows may also split by overlapping blocks that fill the grid (`row_candidates`: an im2col lookup of 16 positions by
512 tile rows on 4 x 27 cores of 19 rows, not 64 cores of 128), the last block moved back to end at the last tile
row (`geometry.overlapped_start`): the rows it shares with the block before it are looked up and written by both
cores, the same bytes to the same tiles.
Nothing is rounded on the way: the rows are copied as stored (bf16) and tilized into bf16 tiles, so
the result is the table's bf16 rows exactly. A negative id counts from the end of the table, as in
ONNX Gather; an id outside the table is a device fault (naming core, kernel and ONNX node).

Table rows too wide for L1 (32 of them past a core's L1) take the column-blocked plan, the grid pass's
fallback (`fallback_candidates`): with `segment` in the blocking, the reader fetches the 32 rows of a tile row
one column block of that many tiles at a time (`noc_read_rows_indexed` with a segment offset and size; the
rest of each CB page zero, so a short last block tilizes with zero padding columns), and compute tilizes
each block as it comes. The same tiles and bytes in more, shorter reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import ScalarType
from ttc.passes.ops.counting import (
    Buffer,
    Plan,
    Weights,
    constant_of,
)
from ttc.passes.ops.geometry import (
    CB_IN0,
    CB_INDEX,
    CB_OUT,
    ELEMENT_BYTES,
    GRID_FILLS,
    HALF_DST,
    TILE,
    TileShape,
    cb,
    column_block_candidates,
    divisors,
    double,
    overlapped_start,
    overlapping_splits,
    page_size,
    row_segments,
    segment_bytes,
    tensor,
    tile_row_candidates,
    tile_shape,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.program import (
    Program,
    Schedule,
    cbs_of,
    schedule_of,
)
from ttc.passes.ops.registry import register
from ttc.passes.ops.tilize import tilize_blocks


def embedding_geometry(op: Operation) -> tuple[TileShape, int, int]:
    """(output tile shape, ids per index page, bytes per table row) of a `ttir.embedding`: output batch b
    holds the rows of index page b (a row of the ids' last dim), output tile row r its ids 32r.."""
    table, ids = tensor(op.operands[0]), tensor(op.operands[1])
    if op.attributes.get("im2col"):  # ids [positions, M tile rows, 32]; worked as [positions, M, width],
        m = tensor(op.result).shape[-2]  # written side by side (the result [.., M, ..]: leading unit dims allowed)
        return tile_shape((ids.shape[0], m, table.shape[1])), TILE, page_size(table)
    return tile_shape(tensor(op.result).shape), ids.shape[-1] if ids.shape else 1, page_size(table)


def embedding_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """Index page (the ids), 32 table rows per output tile row (row-major pages, tilized by compute), tiles."""
    out, ids_per_page, row_bytes = embedding_geometry(op)
    tile_rows = blocking["batches"] * blocking["rows"]
    width = blocking["block_w"]
    table = tensor(op.operands[0])
    if "segment" in blocking:  # a column block of the 32 rows at a time
        pushes, row_bytes = tile_rows * (out.ct // blocking["segment"]), segment_bytes(table, blocking["segment"])
    else:
        pushes = tile_rows
    return [cb(CB_IN0, table.element_type, double(TILE, pushes), page=row_bytes),
            cb(CB_INDEX, ScalarType("i32"), double(1, tile_rows), page=ids_per_page * ELEMENT_BYTES["i32"]),
            cb(CB_OUT, tensor(op.result).element_type, double(width, tile_rows * (out.ct // width)))]


def plan_embedding(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                   result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    out, ids_per_page, row_bytes = embedding_geometry(op)
    table, ids = op.operands
    width = b["block_w"]
    tile_rows = b["batches"] * b["rows"]
    plan = Plan(device, grid, embedding_units(out, b))
    plan.tile(target.DATACOPY, tile_rows * out.ct)
    batch0, row0 = plan.unit[:, 0] * b["batches"], overlapped_start(out.rt, b["rows"], plan.unit[:, 1])
    im2col = bool(op.attributes.get("im2col"))
    id_rows = tensor(ids).shape[1] if im2col else 0
    batch = np.arange(b["batches"])[:, None]
    row = np.arange(b["rows"])[None, :]
    tile_row = row0[:, None, None] + row[None]  # [cores, 1, rows]
    page = (row0[:, None, None] + (batch0[:, None, None] + batch[None]) * id_rows + row[None]) if im2col \
        else np.broadcast_to(batch0[:, None, None] + batch[None], (plan.cores, b["batches"], b["rows"]))
    plan.static(Buffer.of(tensor(ids), device), tile_rows, page_lists=lambda: np.broadcast_to(
        page, (plan.cores, b["batches"], b["rows"])).reshape(plan.cores, -1))
    valid = np.full(tile_row.shape, TILE) if ids_per_page % TILE == 0 \
        else np.minimum(TILE, ids_per_page - TILE * tile_row)
    wanted = np.arange(TILE)[None, None, None, :] < valid[..., None]  # [cores, 1, rows, 32]
    wanted = np.broadcast_to(wanted, (plan.cores, b["batches"], b["rows"], TILE))
    if op.attributes.get("pad_negative"):
        id_table = constant_of(ids, weights)
        if id_table is not None:
            flat = id_table.reshape(-1, id_table.shape[-1]) if not im2col else id_table.reshape(-1, TILE)
            first = 0 if im2col else TILE
            positions = np.arange(TILE)[None, None, None, :] + (0 if im2col else first * tile_row[..., None])
            pages = np.broadcast_to(page, (plan.cores, b["batches"], b["rows"]))[..., None]
            inside = wanted & (positions < flat.shape[-1])
            values = flat[pages, np.where(inside, positions, 0)]
            wanted = wanted & (values >= 0)
    rows_read = wanted.sum(axis=(0, 3)).ravel()  # per tile row, of all cores
    if "segment" in b:  # each column block of the rows, counted in bytes
        sizes = row_segments(row_bytes, segment_bytes(tensor(table), b["segment"]), out.ct // b["segment"])
        plan.masked(Buffer.of(tensor(table), device, page=1), (rows_read[:, None] * sizes[None, :]).ravel())
    else:
        plan.masked(Buffer.of(tensor(table), device, page=row_bytes), rows_read)
    col_blocks = out.ct // width
    plan.static(Buffer.of(tensor(op.result), device), tile_rows * col_blocks * width, write=True)
    return plan.counts()


CB_ROWS = CB_IN0


def row_candidates(out: TileShape) -> Iterator[dict[str, int]]:
    """`geometry.tile_row_candidates`, then the overlapping splits of the tile rows into the block counts that fill
    the grid beside each split of the batches (`GRID_FILLS`)."""
    yield from tile_row_candidates(out)
    for batches in divisors(out.batches):
        for rows in overlapping_splits(out.rt, GRID_FILLS):
            for width in [d for d in divisors(out.ct) if d <= HALF_DST][::-1]:
                yield {"batches": batches, "rows": rows, "block_w": width}


def embedding_units(out: TileShape, blocking: dict[str, int]) -> tuple[int, int]:
    """(batch blocks, tile row blocks): the last row block of an overlapping split ends at the last tile row."""
    return out.batches // blocking["batches"], -(-out.rt // blocking["rows"])


def lower_embedding(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    out, ids_per_page, _ = embedding_geometry(op)

    def origin(unit: tuple[int, ...]) -> tuple[int, int]:
        return unit[0] * b["batches"], int(overlapped_start(out.rt, b["rows"], unit[1]))

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
    row_ct = embedding_geometry(op)[0].ct
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
        valid = valid_rows(k, ids_per_page, tile_row)
        lookup = {"cb": CB_ROWS, "index_cb": CB_INDEX, "count": TILE, "wrap": tensor(op.operands[0]).shape[0],
                  **({"pad_negative": True} if op.attr("pad_negative") else {})}
        if "segment" in b:  # the 32 rows a column block at a time
            rows = tensor(op.operands[0])
            with k.loop(row_ct // b["segment"]) as segment:
                offset, size = k.row_segment(segment, page_size(rows), segment_bytes(rows, b["segment"]))
                k.op("cb_reserve_back", cb=CB_ROWS, pages=TILE)
                k.op("noc_read_rows_indexed", table, first, valid, offset, size, **lookup)
                k.op("noc_read_barrier")
                k.op("cb_push_back", cb=CB_ROWS, pages=TILE)
        else:
            k.op("cb_reserve_back", cb=CB_ROWS, pages=TILE)
            k.op("noc_read_rows_indexed", table, first, valid, **lookup)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_ROWS, pages=TILE)
        k.op("cb_pop_front", cb=CB_INDEX, pages=1)
    return k.region()


def embedding_compute(op: Operation, s: Schedule, out: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    segment = b.get("segment", out.ct)  # a column block of the rows per CB push (the whole row without one)
    with k.loop(b["batches"]), k.loop(b["rows"]), k.loop(out.ct // segment):
        tilize_blocks(k, CB_ROWS, segment // width, width)
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


class EmbeddingOp(DeviceOp):
    """Table rows looked up by index, tilized."""

    kind = "embedding"
    op_names = frozenset({ttir.EMBEDDING.name})

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return row_candidates(embedding_geometry(op)[0])

    def fallback_candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return column_block_candidates(embedding_geometry(op)[0])

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        return embedding_units(embedding_geometry(op)[0], blocking)

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return embedding_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_embedding(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_embedding(op)


EMBEDDING = register(EmbeddingOp())
