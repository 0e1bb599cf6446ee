"""Tiles to rows (`ttir.to_layout` from a tile-layout to a row-major device tensor), after tt-metal's
untilize op: the inverse of the embedding's tilize, for data movements that keep rows whole but are not
tile-granular (`movement.RowGather`).

Each core owns whole tile rows. The reader streams a tile row's ct tiles in blocks of block_w; the
compute kernel copies each block into Dst and packs it untilized into the 32 row pages of the row CB
(`pack_rows`, at the block's column); the writer stores the tile row's real rows (all 32, or fewer in
a matrix's last tile row) as pages of the row-major buffer. Values are copied, never rounded.

Rows too wide for L1 (32 row pages of the whole width, double-buffered, past a core's L1: about 8k bf16
elements) take the column-blocked plan, the grid pass's fallback (`fallback_candidates`, tried only when no
whole-row blocking fits): a blocking with `segment` walks each tile row in column blocks of that many tiles;
compute packs a block's rows into 32 row pages one block wide, and the writer stores each row's segment at
its byte offset in the row-major page (`noc_write_rows` with a segment offset and size; the last segment short
when the blocks overrun the row). The same tiles, values and bytes as the whole-row plan, in more and shorter
writes.
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
from ttc.ir.types import TensorType
from ttc.passes.ops.counting import (
    Buffer,
    Plan,
    Weights,
)
from ttc.passes.ops.geometry import (
    CB_IN0,
    CB_OUT,
    TILE,
    TileShape,
    cb,
    column_block_candidates,
    double,
    is_row_major,
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


def is_untilize(op: Operation) -> bool:
    """A device-to-device `ttir.to_layout` from tiles to rows (a program; host edges are transfers)."""
    source, result = op.operands[0].type, op.result.type
    return isinstance(source, TensorType) and isinstance(source.encoding, LayoutAttr) and \
        source.encoding.tensor_layout == "tile" and is_row_major(op.result) and isinstance(result, TensorType)


def untilize_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """Tiles in, 32 row pages (a tile row, row-major; a column block of it with `segment`) out."""
    x, out = tensor(op.operands[0]), tensor(op.result)
    shape = tile_shape(x.shape)
    tile_rows = blocking["batches"] * blocking["rows"]
    width = blocking["block_w"]
    if "segment" in blocking:
        pushes, page = tile_rows * (shape.ct // blocking["segment"]), segment_bytes(out, blocking["segment"])
    else:
        pushes, page = tile_rows, page_size(out)
    return [cb(CB_IN0, x.element_type, double(width, tile_rows * (shape.ct // width))),
            cb(CB_OUT, out.element_type, double(TILE, pushes), page=page)]



def plan_untilize(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                  result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    source = tile_shape(tensor(op.operands[0]).shape)
    tile_rows = b["batches"] * b["rows"]
    plan = Plan(device, grid, (source.batches // b["batches"], source.rt // b["rows"]))
    plan.tile(target.DATACOPY, tile_rows * source.ct)
    batch0, row0 = plan.unit[:, 0] * b["batches"], plan.unit[:, 1] * b["rows"]

    def in_pages() -> np.ndarray:
        first = (batch0 * source.rt + row0) * source.ct
        loop = (np.arange(b["batches"])[:, None] * source.rt * source.ct
                + np.arange(b["rows"])[None, :] * source.ct).ravel()
        return (first[:, None, None] + loop[None, :, None] + np.arange(source.ct)[None, None, :]).reshape(plan.cores, -1)

    plan.static(Buffer.of(tensor(op.operands[0]), device), tile_rows * source.ct, page_lists=in_pages)
    tile_row = row0[:, None] + np.arange(b["rows"])[None, :]  # [cores, rows]
    valid = np.full(tile_row.shape, TILE) if source.rows % TILE == 0 else np.minimum(TILE, source.rows - TILE * tile_row)
    totals = np.tile(valid.sum(axis=0), b["batches"])
    if "segment" not in b:
        plan.masked(Buffer.of(tensor(op.result), device), totals, write=True)
        return plan.counts()
    out = tensor(op.result)  # per tile row, each column segment of its rows: counted in bytes
    sizes = row_segments(page_size(out), segment_bytes(out, b["segment"]), source.ct // b["segment"])
    plan.masked(Buffer.of(out, device, page=1), (totals[:, None] * sizes[None, :]).ravel(), write=True)
    return plan.counts()


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
    if "segment" in b:  # per column block of the tile row, its rows packed into 32 pages of the block's width
        with k.loop(b["batches"]), k.loop(b["rows"]), k.loop(source.ct // b["segment"]):
            untilize_blocks(k, b["segment"] // width, width)
        return k.region()
    with k.loop(b["batches"]), k.loop(b["rows"]):
        untilize_blocks(k, source.ct // width, width)
    return k.region()


def untilize_blocks(k: KernelBuilder, blocks: int, width: int) -> None:
    """`blocks` blocks of `width` tiles packed side by side into the 32 row pages of the output CB."""
    k.op("cb_reserve_back", cb=CB_OUT, pages=TILE)
    for block in range(blocks):
        k.op("cb_wait_front", cb=CB_IN0, pages=width)
        k.op("tile_regs_acquire")
        k.op("copy_tiles", cb=CB_IN0, rows=1, cols=width)
        k.op("tile_regs_commit")
        k.op("tile_regs_wait")
        k.op("pack_rows", cb=CB_OUT, col_offset=block * width, cols=width)
        k.op("tile_regs_release")
        k.op("cb_pop_front", cb=CB_IN0, pages=width)
    k.op("cb_push_back", cb=CB_OUT, pages=TILE)


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
        valid = real_rows(k, source.rows, tile_row)
        if "segment" in b:  # each column block's row segments at their offset in the rows
            out = tensor(op.result)
            with k.loop(source.ct // b["segment"]) as segment:
                offset, size = k.row_segment(segment, page_size(out), segment_bytes(out, b["segment"]))
                k.op("cb_wait_front", cb=CB_OUT, pages=TILE)
                k.op("noc_write_rows", gen, first_page, valid, offset, size, cb=CB_OUT, count=TILE)
                k.op("noc_write_barrier")
                k.op("cb_pop_front", cb=CB_OUT, pages=TILE)
            return k.region()
        k.op("cb_wait_front", cb=CB_OUT, pages=TILE)
        k.op("noc_write_rows", gen, first_page, valid, cb=CB_OUT, count=TILE)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=TILE)
    return k.region()


class UntilizeOp(DeviceOp):
    """Tiles to rows on the device."""

    kind = "untilize"
    op_names = frozenset({ttir.TO_LAYOUT.name})

    def matches(self, op: Operation) -> bool:
        return is_untilize(op)

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return tile_row_candidates(tile_shape(tensor(op.result).shape))

    def fallback_candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return column_block_candidates(tile_shape(tensor(op.result).shape))

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        out = tile_shape(tensor(op.result).shape)
        return (out.batches // blocking["batches"], out.rt // blocking["rows"])

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return untilize_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_untilize(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_untilize(op)


UNTILIZE = register(UntilizeOp())
