"""Rows to tiles on the device (`ttir.to_layout` from a row-major to a tile-layout device tensor), after
tt-metal's tilize op: the inverse of untilize.py, and the worked example of docs/adding-a-device-op.md.

Each core owns whole tile rows of the result (a batch of matrices stacks its tile rows). Per tile row the
reader fetches the 32 row pages of the row-major buffer (one page per row of the last dim) into the row CB;
the compute kernel tilizes them block_w tiles at a time (`tilize_tiles`: the 32 x 32 tile at a tile column of
the rows, zero past the end of a row, so the padding columns are zero) and packs the tiles; the writer stores
them. The rows of every matrix must be a whole number of tile rows (32): a ragged last tile row would need
its padding rows zero-filled, which this kernel does not do (the blocking is refused with a UserError).
Values are copied, and rounded only when the result's format is narrower than the rows' (f32 rows to bf16
tiles).

Rows too wide for L1 take the column-blocked plan, the grid pass's fallback (`fallback_candidates`): with
`segment` in the blocking, the reader fetches the 32 rows of a tile row one column block of that many tiles at
a time (`noc_read_pages` with a segment offset and size; the rest of each CB page zero, so a short last block
tilizes with zero padding columns) and compute tilizes each block as it comes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import TensorType
from ttc.passes.ops.counting import Buffer, Plan, Weights
from ttc.passes.ops.geometry import (
    CB_IN0,
    CB_OUT,
    TILE,
    TileShape,
    cb,
    column_block_candidates,
    double,
    is_row_major,
    node_names,
    page_size,
    row_segments,
    segment_bytes,
    tensor,
    tile_row_candidates,
    tile_shape,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import KernelBuilder
from ttc.passes.ops.program import Program, Schedule, cbs_of, schedule_of
from ttc.passes.ops.registry import register

CB_ROWS = CB_IN0


def is_tilize(op: Operation) -> bool:
    """A device-to-device `ttir.to_layout` from rows to tiles (a program; host edges are transfers)."""
    source, result = op.operands[0].type, op.result.type
    return is_row_major(op.operands[0]) and isinstance(result, TensorType) \
        and isinstance(result.encoding, LayoutAttr) and result.encoding.tensor_layout == "tile" \
        and isinstance(source, TensorType)


def tilize_shape(op: Operation) -> TileShape:
    """The result in tiles; a UserError when a matrix's rows are not whole tile rows."""
    shape = tile_shape(tensor(op.result).shape)
    if shape.rows % TILE:
        raise UserError(f"node {node_names(op)}: tilizing {tensor(op.operands[0])} on the device needs the rows of "
                        f"every matrix to be a multiple of {TILE} (it has {shape.rows})")
    return shape


def tilize_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """32 row pages (a tile row of the source) in, tiles out."""
    out = tile_shape(tensor(op.result).shape)
    tile_rows = blocking["batches"] * blocking["rows"]
    width = blocking["block_w"]
    source = tensor(op.operands[0])
    if "segment" in blocking:  # a column block of the 32 rows at a time
        pushes, page = tile_rows * (out.ct // blocking["segment"]), segment_bytes(source, blocking["segment"])
    else:
        pushes, page = tile_rows, page_size(source)
    return [cb(CB_ROWS, source.element_type, double(TILE, pushes), page=page),
            cb(CB_OUT, tensor(op.result).element_type, double(width, tile_rows * (out.ct // width)))]


def plan_tilize(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    out = tile_shape(tensor(op.result).shape)
    tile_rows = b["batches"] * b["rows"]
    plan = Plan(device, grid, (out.batches // b["batches"], out.rt // b["rows"]))
    plan.tile(target.DATACOPY, tile_rows * out.ct)  # tilize_tiles: one unpack per tile
    batch0, row0 = plan.unit[:, 0] * b["batches"], plan.unit[:, 1] * b["rows"]
    rows = tensor(op.operands[0])
    if "segment" in b:  # each column block of the 32 row pages, counted in bytes
        sizes = row_segments(page_size(rows), segment_bytes(rows, b["segment"]), out.ct // b["segment"])
        plan.masked(Buffer.of(rows, device, page=1), np.tile(sizes * TILE * plan.cores, tile_rows))
    else:
        plan.static(Buffer.of(rows, device), tile_rows * TILE)  # row pages (never sharded)

    def out_pages() -> np.ndarray:
        first = (batch0 * out.rt + row0) * out.ct
        loop = (np.arange(b["batches"])[:, None] * out.rt * out.ct + np.arange(b["rows"])[None, :] * out.ct).ravel()
        return (first[:, None, None] + loop[None, :, None] + np.arange(out.ct)[None, None, :]).reshape(plan.cores, -1)

    out_type = tensor(op.result) if result_layout is None else tensor(op.result).with_encoding(result_layout)
    plan.static(Buffer.of(out_type, device), tile_rows * out.ct, write=True, page_lists=out_pages)
    return plan.counts()


def lower_tilize(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    out = tilize_shape(op)

    def first_tile_row(unit: tuple[int, ...]) -> int:
        return unit[0] * b["batches"] * out.rt + unit[1] * b["rows"]

    kernels = (tilize_reader(op, schedule, out), tilize_compute(op, schedule, out),
               tilize_writer(op, schedule, out))
    args = (schedule.args(lambda unit: [first_tile_row(unit)]), schedule.args(lambda unit: []),
            schedule.args(lambda unit: [first_tile_row(unit) * out.ct]))
    return Program("tilize", schedule.grid, cbs_of(op, schedule), kernels, args, list(op.operands))


def tilize_reader(op: Operation, s: Schedule, out: TileShape):
    """Tile row t of the result is rows 32t..32t+31 of the source (pages of one row each)."""
    b = s.blocking
    k = KernelBuilder(op.loc)
    gen = k.addrgen(0, tensor(op.operands[0]))
    rows = tensor(op.operands[0])
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row:
        tile_row = k.affine(k.arg(0), (batch, out.rt), (row, 1))
        if "segment" in b:  # the 32 rows a column block at a time
            with k.loop(out.ct // b["segment"]) as segment:
                offset, size = k.row_segment(segment, page_size(rows), segment_bytes(rows, b["segment"]))
                k.op("cb_reserve_back", cb=CB_ROWS, pages=TILE)
                k.op("noc_read_pages", gen, k.mul(tile_row, TILE), offset, size, cb=CB_ROWS, count=TILE)
                k.op("noc_read_barrier")
                k.op("cb_push_back", cb=CB_ROWS, pages=TILE)
        else:
            k.op("cb_reserve_back", cb=CB_ROWS, pages=TILE)
            k.op("noc_read_pages", gen, k.mul(tile_row, TILE), cb=CB_ROWS, count=TILE)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_ROWS, pages=TILE)
    return k.region()


def tilize_compute(op: Operation, s: Schedule, out: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    segment = b.get("segment", out.ct)  # a column block of the rows per CB push (the whole row without one)
    with k.loop(b["batches"]), k.loop(b["rows"]), k.loop(out.ct // segment):
        tilize_blocks(k, CB_ROWS, segment // width, width)
    return k.region()

def tilize_blocks(k: KernelBuilder, cb_rows: int, blocks: int, width: int) -> None:
    """The 32 waited row pages of `cb_rows` tilized `blocks` blocks of `width` tiles, packed into the output CB."""
    k.op("cb_wait_front", cb=cb_rows, pages=TILE)
    for block in range(blocks):
        k.op("tile_regs_acquire")
        k.op("tilize_tiles", cb=cb_rows, col_offset=block * width, cols=width)
        k.pack_block(CB_OUT, width)
    k.op("cb_pop_front", cb=cb_rows, pages=TILE)


def tilize_writer(op: Operation, s: Schedule, out: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(1, tensor(op.result))
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row, k.loop(out.ct // width) as block:
        start = k.affine(k.arg(0), (batch, out.rt * out.ct), (row, out.ct), (block, width))
        k.op("cb_wait_front", cb=CB_OUT, pages=width)
        k.op("noc_write_tiles", gen, start, cb=CB_OUT, rows=1, cols=width)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=width)
    return k.region()


class TilizeOp(DeviceOp):
    """Rows to tiles on the device."""

    kind = "tilize"
    op_names = frozenset({ttir.TO_LAYOUT.name})

    def matches(self, op: Operation) -> bool:
        return is_tilize(op)

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return tile_row_candidates(tilize_shape(op))

    def fallback_candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return column_block_candidates(tilize_shape(op))

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        out = tile_shape(tensor(op.result).shape)
        return (out.batches // blocking["batches"], out.rt // blocking["rows"])

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return tilize_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_tilize(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_tilize(op)


TILIZE = register(TilizeOp())
