"""Fused elementwise kernels (`ttir.eltwise`).

Each core walks its batches x tile rows x tile columns of the result in blocks of 1 x block_w tiles.
The reader fetches every input's tiles of the block: a broadcast dimension has stride 0 (a [N] row is
read at tile row 0 for every row, a [M, 1] column at tile column 0, once per block). The compute
kernel runs the body's phases (`footprint.eltwise_plan`): FPU binary ops between CBs with in-tile
broadcasts, binary SFPU ops of two operands copied into Dst (half of the 8 slots each, so a block runs
in rounds of at most 4 tiles), SFPU chains in Dst, intermediates through CBs; the last phase re-masks the
padding when the body could have made it non-zero, and packs into the output CB the writer drains.
"""

from __future__ import annotations

from ttc.backend.kernel import KernelBuilder
from ttc.backend.program import Program, Schedule, cbs_of, schedule_of
from ttc.ir.core import Operation
from ttc.passes.footprint import (
    CB_OUT,
    HALF_DST,
    SFPU_BINARY,
    TILE,
    EltwisePlan,
    Phase,
    TileShape,
    affine_step,
    batch_offsets,
    eltwise_plan,
    tensor,
    tile_shape,
)


def input_strides(op: Operation, index: int, blocking: dict[str, int]) -> tuple[list[int], int, int, int]:
    """(per-batch first tiles, batch step, tile-row stride, tile-column stride) of input #index."""
    value, out = tensor(op.operands[index]), tile_shape(tensor(op.result).shape)
    source = tile_shape(value.shape)
    offsets = batch_offsets(value.shape, tensor(op.result).shape)
    step = affine_step(offsets, blocking["batches"])
    assert step is not None
    row_stride = source.ct if source.rows == out.rows else 0
    col_stride = 1 if source.cols == out.cols else 0
    return [int(o) for o in offsets], step, row_stride, col_stride


def lower_eltwise(op: Operation) -> Program:
    plan = eltwise_plan(op)
    schedule = schedule_of(op)
    b = schedule.blocking
    out = tile_shape(tensor(op.result).shape)
    strides = [input_strides(op, i, b) for i in range(len(op.operands))]

    def origin(unit: tuple[int, ...]) -> tuple[int, int, int]:
        return unit[0] * b["batches"], unit[1] * b["rows"], unit[2] * b["cols"]

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        batch, row, col = origin(unit)
        return [offsets[batch] + row * rs + col * cs for offsets, _, rs, cs in strides]

    def compute_args(unit: tuple[int, ...]) -> list[int]:
        _, row, col = origin(unit)
        return [row, col]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        batch, row, col = origin(unit)
        return [(batch * out.rt + row) * out.ct + col]

    kernels = (eltwise_reader(op, plan, schedule, strides), eltwise_compute(op, plan, schedule, out),
               eltwise_writer(op, schedule, out))
    return Program("eltwise", schedule.grid, cbs_of(op, schedule), kernels,
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


def block_loops(k: KernelBuilder, b: dict[str, int]):
    """Nested loops over (batch, tile row, column block) of one core's share."""
    return k.loop(b["batches"]), k.loop(b["rows"]), k.loop(b["cols"] // b["block_w"])


def eltwise_reader(op: Operation, plan: EltwisePlan, s: Schedule, strides) -> object:
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gens = [k.addrgen(i, tensor(v)) for i, v in enumerate(op.operands)]
    loop_b, loop_r, loop_c = block_loops(k, b)
    with loop_b as batch, loop_r as row, loop_c as col:
        for i, (gen, full) in enumerate(zip(gens, plan.inputs, strict=True)):
            _, step, rs, cs = strides[i]
            tiles = width if full else 1
            start = k.affine(k.arg(i), (batch, step), (row, rs), (col, width * cs))
            k.op("cb_reserve_back", cb=i, pages=tiles)
            k.op("noc_read_tiles", gen, start, cb=i, rows=1, cols=tiles)
        k.op("noc_read_barrier")
        for i, full in enumerate(plan.inputs):
            k.op("cb_push_back", cb=i, pages=width if full else 1)
    return k.region()


def eltwise_compute(op: Operation, plan: EltwisePlan, s: Schedule, out: TileShape) -> object:
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    interm_pages = {index: (width if full else 1) for index, full in plan.interms}
    if plan.zero_cb is not None:
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=0.0)
        k.pack_block(plan.zero_cb, 1)
        k.op("cb_wait_front", cb=plan.zero_cb, pages=1)
    loop_b, loop_r, loop_c = block_loops(k, b)
    with loop_b, loop_r as row, loop_c as col:
        for i, full in enumerate(plan.inputs):
            k.op("cb_wait_front", cb=i, pages=width if full else 1)
        for number, phase in enumerate(plan.phases):
            tiles = width if phase.full else 1
            for cb in (phase.a_cb, phase.b_cb):
                if cb in interm_pages:
                    k.op("cb_wait_front", cb=cb, pages=interm_pages[cb])
            masked = number == len(plan.phases) - 1 and (plan.mask_rows or plan.mask_cols)
            step = sfpu_binary_step(tiles) if phase.op in SFPU_BINARY else tiles
            for first in range(0, tiles, step):
                k.op("tile_regs_acquire")
                phase_entry(k, phase, first, step)
                for fn, param in phase.sfpu:
                    k.op("sfpu_tiles", fn=fn, count=step, param=float(param))
                if masked:
                    col_tile = k.add(k.affine(k.arg(1), (col, width)), first)
                    k.op("mask_tiles", k.add(k.arg(0), row), col_tile, rows=1, cols=step,
                         valid_rows=out.rows if plan.mask_rows else out.rt * TILE,
                         valid_cols=out.cols if plan.mask_cols else out.ct * TILE)
                k.pack_block(phase.out_cb, step)
        for i, full in enumerate(plan.inputs):
            k.op("cb_pop_front", cb=i, pages=width if full else 1)
        for index, pages in interm_pages.items():
            k.op("cb_pop_front", cb=index, pages=pages)
    if plan.zero_cb is not None:
        k.op("cb_pop_front", cb=plan.zero_cb, pages=1)
    return k.region()


def sfpu_binary_step(tiles: int) -> int:
    """Tiles per Dst round of a binary SFPU phase: both operands fill Dst, so at most half of one acquire's
    slots each; the largest divisor of the phase's tiles that fits."""
    return max(d for d in range(1, HALF_DST // 2 + 1) if tiles % d == 0)


def phase_entry(k: KernelBuilder, phase: Phase, first: int, tiles: int) -> None:
    """Fill Dst slots 0.. with tiles first..first+tiles-1 of the phase's entry op."""
    if phase.op == "copy":
        k.op("copy_tiles", cb=phase.a_cb, rows=1, cols=tiles, col_stride=int(phase.a_full))
    elif phase.op in SFPU_BINARY:
        k.op("copy_tiles", cb=phase.a_cb, offset=first * int(phase.a_full), rows=1, cols=tiles,
             col_stride=int(phase.a_full))
        k.op("copy_tiles", cb=phase.b_cb, offset=first * int(phase.b_full), rows=1, cols=tiles,
             col_stride=int(phase.b_full), dst=tiles)
        k.op("sfpu_binary_tiles", fn=phase.op, dst_b=tiles, count=tiles)
    else:
        k.op("binary_tiles", op=phase.op, cb_a=phase.a_cb, a_col_stride=int(phase.a_full), cb_b=phase.b_cb,
             b_col_stride=int(phase.b_full), bcast=phase.bcast, rows=1, cols=tiles)


def eltwise_writer(op: Operation, s: Schedule, out: TileShape) -> object:
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(op.operands), tensor(op.result))
    loop_b, loop_r, loop_c = block_loops(k, b)
    with loop_b as batch, loop_r as row, loop_c as col:
        start = k.affine(k.arg(0), (batch, out.rt * out.ct), (row, out.ct), (col, width))
        k.op("cb_wait_front", cb=CB_OUT, pages=width)
        k.op("noc_write_tiles", gen, start, cb=CB_OUT, rows=1, cols=width)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=width)
    return k.region()
