"""A product written as rows (`ttir.linear` / `ttir.matmul` with a row-major result): the untilize that followed it
fused into it. The grid pass's `passes/untilize_fusion.py` makes it from a product whose only reader is the
untilize of its result (a convolution's output untilized into sticks for the next convolution's lookups).

The program is the matmul of `matmul.py` (every plan: unicast and multicast readers, the same compute) except the
end: the epilogue packs each finished h x w subblock from Dst as rows (`pack_rows`, 32 row pages of w tiles per
tile row of the subblock, in the rows' format) instead of tiles, and the writer stores each tile row's real rows as
a column segment of the row-major pages (`noc_write_rows` at the subblock's byte offset, clipped at the row's
end). The untilize copied the packed tiles into Dst and packed them as rows: Dst holds 16-bit values, so packing
them as bf16 rows directly gives the same bytes, and the untilize's program, launch and the tiles' buffer go.

Blockings: the matmul's, without a ragged N edge (a core's subblocks past it would have no columns to write), the K
split's too (matmul_ksplit.py: its finishing cores pack and write the rows, the others write none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from ttc.ir.core import Module, Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.passes.ops.counting import Buffer, Plan, Weights
from ttc.passes.ops.geometry import CB_OUT, TILE, cb, double, is_row_major, page_size, tensor
from ttc.passes.ops.kernel import KernelBuilder
from ttc.passes.ops.matmul import (
    MATMUL_OPS,
    MatmulOp,
    column_outer,
    lower_matmul,
    matmul_candidates,
    matmul_cbs,
    matmul_compute,
    matmul_shape,
    plan_matmul,
    row_start,
)
from ttc.passes.ops.program import Program, Schedule, schedule_of
from ttc.passes.ops.registry import register
from ttc.passes.ops.untilize import real_rows


def element_bytes(op: Operation) -> int:
    out = tensor(op.result)
    return page_size(out) // out.shape[-1]


def rows_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """The matmul's CBs, the output as 32 row pages of a subblock's width per tile row (double-buffered)."""
    out = tensor(op.result)
    sh, sw = blocking["per_core_m"] // blocking["out_subblock_h"], blocking["per_core_n"] // blocking["out_subblock_w"]
    pushes = blocking["batches"] * sh * sw * blocking["out_subblock_h"]
    rows = cb(CB_OUT, out.element_type, double(TILE, pushes),
              page=blocking["out_subblock_w"] * TILE * element_bytes(op))
    return [rows if c.index == CB_OUT else c for c in matmul_cbs(op, blocking)]


def pack_rows(k: KernelBuilder, h: int, w: int) -> None:
    """Dst's h x w subblock as rows: per tile row, its 32 rows of w tiles into 32 pages of CB_OUT."""
    k.op("tile_regs_commit")
    k.op("tile_regs_wait")
    for r in range(h):
        k.op("cb_reserve_back", cb=CB_OUT, pages=TILE)
        k.op("pack_rows", dst=r * w, cb=CB_OUT, col_offset=0, cols=w)
        k.op("cb_push_back", cb=CB_OUT, pages=TILE)
    k.op("tile_regs_release")


def segments(op: Operation, w: int, first_col: np.ndarray | int, col: np.ndarray | int):
    """(byte offset, bytes) in a row of the subblock starting at tile column first_col + col * w."""
    row_bytes = page_size(tensor(op.result))
    offset = (np.asarray(first_col) + np.asarray(col) * w) * TILE * element_bytes(op)
    return offset, np.minimum(w * TILE * element_bytes(op), row_bytes - offset)


def rows_written(op: Operation, device: DeviceAttr, b: dict[str, int], writes: np.ndarray | None = None):
    """plan_matmul's `write_out`: the rows of each tile row and subblock column (`rows_writer`'s writes); `writes`:
    the cores that write (the K split's finishing cores), else all."""
    shape = matmul_shape(op)
    w = b["out_subblock_w"]
    sw = b["per_core_n"] // w

    def write_out(plan: Plan) -> None:
        m0 = row_start(shape.mt, b["per_core_m"], plan.unit[:, 1])
        n0 = plan.unit[:, 2] * b["per_core_n"]
        tile_rows = m0[:, None] + np.arange(b["per_core_m"])[None, :]  # [cores, pcm]
        valid = np.clip(shape.rows - TILE * tile_rows, 0, TILE)
        if writes is not None:
            valid = valid * writes[:, None]
        _, size = segments(op, w, n0[:, None], np.arange(sw)[None, :])  # [cores, sw]
        totals = np.einsum("ci,cj->ij", valid, size)  # per (tile row, subblock column): bytes of all cores
        plan.masked(Buffer.of(tensor(op.result), device, page=1), np.tile(totals.ravel(), b["batches"]), write=True)

    return write_out


def plan_rows(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
              result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    return plan_matmul(op, device, b, fidelity, grid, result_layout, weights, write_out=rows_written(op, device, b))


def rows_writer(op: Operation, s: Schedule, output: int | None = None):
    """Per finished subblock (in the compute's walk), per tile row: its real rows as a segment of the pages.
    `output`: the result's buffer index when it is not the one after the op's operands (a fused op's stand-in)."""
    shape = matmul_shape(op)
    b = s.blocking
    h, w = b["out_subblock_h"], b["out_subblock_w"]
    k = KernelBuilder(op.loc)
    out = tensor(op.result)
    gen = k.addrgen(len(op.operands) if output is None else output, out)
    row_bytes, block_bytes = page_size(out), w * TILE * element_bytes(op)
    outer, inner = k.loop(b["per_core_m"] // h), k.loop(b["per_core_n"] // w)
    if column_outer(b):
        outer, inner = inner, outer
    with outer as first, inner as second:
        row, col = (second, first) if column_outer(b) else (first, second)
        write_subblock_rows(k, gen, shape.rows, row, col, h, row_bytes, block_bytes, row_arg=0, offset_arg=1)
    return k.region()


def write_subblock_rows(k: KernelBuilder, gen, rows: int, row, col, h: int, row_bytes: int, block_bytes: int,
                        row_arg: int, offset_arg: int, limit_arg: int | None = None) -> None:
    """One finished subblock's rows, tile row by tile row from CB_OUT: subblock (row, col) of a core whose first tile
    row and first byte within a row are runtime arguments `row_arg` and `offset_arg`; each tile row's real rows (of
    `rows`), no more than runtime argument `limit_arg` when given, as a segment of the pages."""
    offset = k.affine(k.arg(offset_arg), (col, block_bytes))
    size = block_bytes if row_bytes % block_bytes == 0 else \
        k.minimum(block_bytes, k.affine(row_bytes, (offset, -1)))
    for r in range(h):
        tile_row = k.add(k.affine(k.arg(row_arg), (row, h)), r)
        k.op("cb_wait_front", cb=CB_OUT, pages=TILE)
        first = k.mul(tile_row, TILE)
        count = real_rows(k, rows, tile_row)
        if limit_arg is not None:
            count = k.minimum(count, k.arg(limit_arg))
        k.op("noc_write_rows", gen, first, count, offset, size, cb=CB_OUT, count=TILE)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=TILE)


def lower_rows(op: Operation) -> Program:
    """The matmul's program (its reader and arguments) with the compute packing rows and the rows writer."""
    program = lower_matmul(op)
    schedule = schedule_of(op)
    shape, b = matmul_shape(op), schedule.blocking
    compute = matmul_compute(op, shape, schedule, ttir.linear_bias(op) is not None,
                             op.attributes.get("activation", "none"), pack_out=pack_rows)
    bytes_per_tile = TILE * element_bytes(op)

    def writer_args(unit: tuple[int, ...]) -> list[int]:  # first tile row, byte offset of the first tile column
        return [int(row_start(shape.mt, b["per_core_m"], unit[1])), unit[2] * b["per_core_n"] * bytes_per_tile]

    return dataclasses.replace(program, kind="matmul_rows", kernels=(program.kernels[0], compute, rows_writer(op, schedule)),
                               runtime_args=(*program.runtime_args[:2], schedule.args(writer_args)))


def fits_rows(op: Operation) -> bool:
    """A two-dimensional product (one batch group of M tile rows) written as rows of its last dim."""
    shape = matmul_shape(op)
    return shape.batches == 1 and tensor(op.result).rank == 2


class MatmulRowsOp(MatmulOp):
    """A product whose result is row-major: the untilize after it fused into its pack and writer."""

    kind = "matmul_rows"
    op_names = MATMUL_OPS

    def matches(self, op: Operation) -> bool:
        return is_row_major(op.result)

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        shape = matmul_shape(op)  # (the K split's finishing cores write the rows: matmul_ksplit.py)
        return (b for b in matmul_candidates(op) if shape.nt % b["per_core_n"] == 0)

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, ksplit_cbs

        return ksplit_cbs(op, blocking) if is_ksplit(blocking) else rows_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, plan_ksplit

        plan = plan_ksplit if is_ksplit(blocking) else plan_rows
        return plan(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, lower_ksplit

        if is_ksplit(schedule_of(op).blocking):
            return dataclasses.replace(lower_ksplit(op), kind="matmul_rows")
        return lower_rows(op)


MATMUL_ROWS = register(MatmulRowsOp())
