"""Fused elementwise kernels (`ttir.eltwise`).

Each core walks its batches x tile rows x tile columns of the result in blocks of 1 x block_w tiles. The tile
rows split by divisors or by overlapping blocks that fill the grid (`GRID_FILLS`, the last block moved back to end
at the last row, `geometry.overlapped_start`: both cores of a shared row compute and write the same bytes; a
ResNet max pool's [16384, 64] chunk on 103 cores, not 64); an overlapping split never takes a sharded result.
The reader fetches every input's tiles of the block: a broadcast dimension has stride 0 (a [N] row is
read at tile row 0 for every row, a [M, 1] column at tile column 0, once per block); an input whose tiles are
the same for every block of a core (`held_inputs`: a bias row on a core with one column block) is read once,
before the blocks, and stays at the front of its CB until the last block. The compute
kernel runs the body's phases (`eltwise_body.eltwise_plan`): FPU binary ops between CBs with in-tile
broadcasts, binary SFPU ops of two operands copied into Dst (half of the 8 slots each, so a block runs
in rounds of at most 4 tiles), SFPU chains in Dst, intermediates through CBs; the last phase re-masks the
padding when the body could have made it non-zero, and packs into the output CB the writer drains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.passes.ops.counting import (
    Buffer,
    Plan,
    Weights,
)
from ttc.passes.ops.eltwise_body import (
    SFPU_BINARY,
    EltwisePlan,
    Phase,
    eltwise_plan,
)
from ttc.passes.ops.geometry import (
    CB_OUT,
    GRID_FILLS,
    HALF_DST,
    TILE,
    TileShape,
    affine_step,
    batch_groups,
    batch_offsets,
    cb,
    divisors,
    double,
    overlapped_start,
    overlapping_splits,
    tensor,
    tile_shape,
    work_format,
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


def held_inputs(op: Operation, blocking: dict[str, int]) -> tuple[bool, ...]:
    """Per input: whether every block of a core reads the same tiles of it (a bias row when the core has one
    column block, a value broadcast along every dim it walks). The reader then reads those tiles once and the
    compute kernel keeps them at the front of the input's CB for all its blocks, instead of one read per block
    (the stem's [250880, 64] bias add read its 64-wide bias row 7840 times, 30.6 MiB)."""
    out = tile_shape(tensor(op.result).shape)
    col_blocks = blocking["cols"] // blocking["block_w"]
    if blocking["batches"] * blocking["rows"] * col_blocks == 1:
        return tuple(False for _ in op.operands)
    held = []
    for value in op.operands:
        source = tile_shape(tensor(value).shape)
        step = affine_step(batch_offsets(tensor(value).shape, tensor(op.result).shape), blocking["batches"])
        held.append((blocking["batches"] == 1 or step == 0) and (blocking["rows"] == 1 or source.rows != out.rows)
                    and (col_blocks == 1 or source.cols != out.cols))
    return tuple(held)


def eltwise_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    plan = eltwise_plan(op)
    width = blocking["block_w"]
    blocks = blocking["batches"] * blocking["rows"] * (blocking["cols"] // width)
    out_type = tensor(op.result).element_type
    held = held_inputs(op, blocking)
    cbs = [cb(i, tensor(value).element_type, (width if full else 1) if held[i] else double(width if full else 1, blocks))
           for i, (value, full) in enumerate(zip(op.operands, plan.inputs, strict=True))]
    cbs.append(cb(CB_OUT, out_type, double(width, blocks)))
    work = work_format(out_type)
    cbs += [cb(index, work, width if full else 1) for index, full in plan.interms]
    if plan.zero_cb is not None:
        cbs.append(cb(plan.zero_cb, work, 1))
    return sorted(cbs, key=lambda c: c.index)


def eltwise_candidates(op: Operation) -> Iterator[dict[str, int]]:
    """Any split of batches, tile rows and tile columns; blocks of up to 8 tiles along a row."""
    out = tile_shape(tensor(op.result).shape)
    eltwise_plan(op)  # a UserError for a body the kernel cannot run, before any candidate
    offsets = [batch_offsets(tensor(v).shape, tensor(op.result).shape) for v in op.operands]
    for batches in batch_groups(offsets, out.batches):
        for rows in divisors(out.rt) + overlapping_splits(out.rt, GRID_FILLS):
            for cols in divisors(out.ct):
                for width in [d for d in divisors(cols) if d <= HALF_DST][::-1]:
                    yield {"batches": batches, "rows": rows, "cols": cols, "block_w": width}


def eltwise_units(out: TileShape, blocking: dict[str, int]) -> tuple[int, int, int]:
    """(batch groups, tile row blocks, tile column blocks): the last row block of an overlapping split ends at the
    last tile row."""
    return out.batches // blocking["batches"], -(-out.rt // blocking["rows"]), out.ct // blocking["cols"]


def overlapping(op: Operation, blocking: dict[str, int]) -> bool:
    """The blocking splits the tile rows into overlapping blocks (two cores write the rows they share)."""
    return bool(tile_shape(tensor(op.result).shape).rt % blocking["rows"])


def plan_eltwise(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                 result_layout: LayoutAttr | None = None, weights: Weights | None = None,
                 gathered: Callable[[Plan, int, np.ndarray, np.ndarray], bool] | None = None) -> Counts:
    """`gathered(plan, index, first tile rows [cores], block loop [blocks, 3])` counts input #index's reads
    instead when it returns True (an input its reader gathers: lookup_eltwise.py)."""
    ep = eltwise_plan(op)
    out = tile_shape(tensor(op.result).shape)
    width = b["block_w"]
    col_blocks = b["cols"] // width
    blocks = b["batches"] * b["rows"] * col_blocks
    plan = Plan(device, grid, eltwise_units(out, b))
    if ep.zero_cb is not None:
        plan.tile(target.DATACOPY, 1)
    for number, phase in enumerate(ep.phases):
        tiles = blocks * (width if phase.full else 1)
        if phase.op == "copy":
            plan.tile(target.DATACOPY, tiles)
        elif phase.op in SFPU_BINARY:
            plan.tile(target.DATACOPY, 2 * tiles)
            plan.tile(target.sfpu_binary_key(phase.op), tiles)
        else:
            plan.tile(target.binary_key(phase.op), tiles)
        for fn, _ in phase.sfpu:
            plan.tile(target.sfpu_key(fn), tiles)
        if number == len(ep.phases) - 1 and (ep.mask_rows or ep.mask_cols):
            plan.tile(target.DATACOPY, tiles)

    unit = plan.unit
    batch0, row0, col0 = unit[:, 0] * b["batches"], overlapped_start(out.rt, b["rows"], unit[:, 1]), \
        unit[:, 2] * b["cols"]
    loop = np.stack([g.ravel() for g in np.meshgrid(np.arange(b["batches"]), np.arange(b["rows"]),
                                                    np.arange(col_blocks), indexing="ij")], axis=1)  # [blocks, 3]
    held = held_inputs(op, b)
    for index, (value, full, once) in enumerate(zip(op.operands, ep.inputs, held, strict=True)):
        if gathered is not None and gathered(plan, index, row0, loop):
            continue
        source = tile_shape(tensor(value).shape)
        offsets = batch_offsets(tensor(value).shape, tensor(op.result).shape)
        step = affine_step(offsets, b["batches"]) or 0
        rs = source.ct if source.rows == out.rows else 0
        cs = 1 if source.cols == out.cols else 0
        tiles = width if full else 1
        reads = loop[:1] if once else loop

        def in_pages(offsets=offsets, step=step, rs=rs, cs=cs, tiles=tiles, reads=reads) -> np.ndarray:
            first = offsets[batch0] + row0 * rs + col0 * cs
            starts = first[:, None] + (reads[:, 0] * step + reads[:, 1] * rs + reads[:, 2] * width * cs)[None, :]
            return (starts[:, :, None] + np.arange(tiles)[None, None, :]).reshape(plan.cores, -1)

        plan.static(Buffer.of(tensor(value), device), len(reads) * tiles, page_lists=in_pages)

    def out_pages() -> np.ndarray:
        first = (batch0 * out.rt + row0) * out.ct + col0
        starts = first[:, None] + (loop[:, 0] * out.rt * out.ct + loop[:, 1] * out.ct + loop[:, 2] * width)[None, :]
        return (starts[:, :, None] + np.arange(width)[None, None, :]).reshape(plan.cores, -1)

    result = tensor(op.result) if result_layout is None else tensor(op.result).with_encoding(result_layout)
    plan.static(Buffer.of(result, device), blocks * width, write=True, page_lists=out_pages)
    return plan.counts()


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
        return unit[0] * b["batches"], int(overlapped_start(out.rt, b["rows"], unit[1])), unit[2] * b["cols"]

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


def eltwise_reader(op: Operation, plan: EltwisePlan, s: Schedule, strides,
                   gather: Callable[[KernelBuilder, int, Index, Index], None] | None = None,
                   gathered: frozenset[int] = frozenset()) -> object:
    """`gather(k, index, row, col)` reads the block's rows of each input of `gathered` instead (lookup_eltwise.py:
    its compute tilizes them into the input's CB)."""
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gens = [None if i in gathered else k.addrgen(i, tensor(v)) for i, v in enumerate(op.operands)]
    held = held_inputs(op, b)
    assert not any(held[i] for i in gathered)
    if any(held):
        for i, (gen, full) in enumerate(zip(gens, plan.inputs, strict=True)):
            if held[i]:
                k.op("cb_reserve_back", cb=i, pages=width if full else 1)
                k.op("noc_read_tiles", gen, k.arg(i), cb=i, rows=1, cols=width if full else 1)
        k.op("noc_read_barrier")
        for i, full in enumerate(plan.inputs):
            if held[i]:
                k.op("cb_push_back", cb=i, pages=width if full else 1)
    loop_b, loop_r, loop_c = block_loops(k, b)
    with loop_b as batch, loop_r as row, loop_c as col:
        if gather is not None:
            for i in sorted(gathered):
                gather(k, i, row, col)
        for i, (gen, full) in enumerate(zip(gens, plan.inputs, strict=True)):
            if held[i] or i in gathered:
                continue
            _, step, rs, cs = strides[i]
            tiles = width if full else 1
            start = k.affine(k.arg(i), (batch, step), (row, rs), (col, width * cs))
            k.op("cb_reserve_back", cb=i, pages=tiles)
            k.op("noc_read_tiles", gen, start, cb=i, rows=1, cols=tiles)
        plain = [i for i in range(len(held)) if not held[i] and i not in gathered]
        if plain:
            k.op("noc_read_barrier")
        for i in plain:
            k.op("cb_push_back", cb=i, pages=width if plan.inputs[i] else 1)
    return k.region()


def eltwise_compute(op: Operation, plan: EltwisePlan, s: Schedule, out: TileShape,
                    block_ready: Callable[[KernelBuilder], None] | None = None) -> object:
    """`block_ready(k)` runs at the start of every block, before its inputs are waited for (lookup_eltwise.py:
    the gathered inputs' rows tilized into their CBs)."""
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    interm_pages = {index: (width if full else 1) for index, full in plan.interms}
    if plan.zero_cb is not None:
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=0.0)
        k.pack_block(plan.zero_cb, 1)
        k.op("cb_wait_front", cb=plan.zero_cb, pages=1)
    held = held_inputs(op, b)
    for i, full in enumerate(plan.inputs):
        if held[i]:
            k.op("cb_wait_front", cb=i, pages=width if full else 1)
    loop_b, loop_r, loop_c = block_loops(k, b)
    with loop_b, loop_r as row, loop_c as col:
        if block_ready is not None:
            block_ready(k)
        for i, full in enumerate(plan.inputs):
            if not held[i]:
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
            if not held[i]:
                k.op("cb_pop_front", cb=i, pages=width if full else 1)
        for index, pages in interm_pages.items():
            k.op("cb_pop_front", cb=index, pages=pages)
    for i, full in enumerate(plan.inputs):
        if held[i]:
            k.op("cb_pop_front", cb=i, pages=width if full else 1)
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


def eltwise_writer(op: Operation, s: Schedule, out: TileShape, output: int | None = None) -> object:
    """`output`: the result's buffer index when it is not the one after the op's operands (a fused op's stand-in)."""
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(op.operands) if output is None else output, tensor(op.result))
    loop_b, loop_r, loop_c = block_loops(k, b)
    with loop_b as batch, loop_r as row, loop_c as col:
        start = k.affine(k.arg(0), (batch, out.rt * out.ct), (row, out.ct), (col, width))
        k.op("cb_wait_front", cb=CB_OUT, pages=width)
        k.op("noc_write_tiles", gen, start, cb=CB_OUT, rows=1, cols=width)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=width)
    return k.region()


class EltwiseOp(DeviceOp):
    """A fused chain of elementwise ops."""

    kind = "eltwise"
    op_names = frozenset({ttir.ELTWISE.name})

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return eltwise_candidates(op)

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        return eltwise_units(tile_shape(tensor(op.result).shape), blocking)

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return eltwise_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_eltwise(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_eltwise(op)


ELTWISE = register(EltwiseOp())
