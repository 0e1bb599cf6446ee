"""Softmax and layer norm along the last dim: each core takes whole rows of tiles.

A row's ct tiles are all in the input CB at once (reductions need them), and the row is then consumed
block by block (1 x block_w tiles), popping as it goes, so every compute op uses static offsets.

Softmax: max (reduce, the last tile's padding columns masked to -inf first), exp(x - max) with the
max broadcast along columns and the padding re-zeroed, sum (reduce), reciprocal, x * 1/sum, and the
padding rows zeroed. Sums over long rows run in groups of tiles (`reduce_row`), so that no chain of
bf16 roundings in Dst runs the whole row. Layer norm: mean (the sum times 1/width, the logical width,
on the SFPU in float32), centred values
with the padding re-zeroed (computed twice per block: once kept, once squared), variance (reduce),
rstd = rsqrt(var + eps), then centred x rstd x gamma + beta (gamma and beta rows broadcast along rows,
re-read per row block), padding rows zeroed.
"""

from __future__ import annotations

from ttc.backend.kernel import Index, KernelBuilder
from ttc.backend.program import Program, Schedule, cbs_of, schedule_of
from ttc.ir.core import Operation
from ttc.passes.footprint import (
    CB_BETA,
    CB_GAMMA,
    CB_GROUPS,
    CB_IN0,
    CB_MASKED,
    CB_OUT,
    CB_STAT,
    CB_STAT2,
    CB_TMP,
    CB_TMP2,
    CB_WIDE,
    CB_WIDE2,
    TILE,
    TileShape,
    row_sum_groups,
    tensor,
    tile_shape,
)


def lower_row_op(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    shape = tile_shape(tensor(op.operands[0]).shape)

    def first_tile(unit: tuple[int, ...]) -> list[int]:
        return [(unit[0] * b["batches"] * shape.rt + unit[1] * b["rows"]) * shape.ct]

    def first_row(unit: tuple[int, ...]) -> list[int]:
        return [unit[1] * b["rows"]]

    compute = softmax_compute if op.name == "ttir.softmax" else layer_norm_compute
    kernels = (row_reader(op, schedule, shape), compute(op, schedule, shape), row_writer(op, schedule, shape))
    kind = "softmax" if op.name == "ttir.softmax" else "layer_norm"
    return Program(kind, schedule.grid, cbs_of(op, schedule), kernels,
                   (schedule.args(first_tile), schedule.args(first_row), schedule.args(first_tile)),
                   list(op.operands))


def row_start(k: KernelBuilder, shape: TileShape, batch: Index, row: Index) -> Index:
    return k.affine(k.arg(0), (batch, shape.rt * shape.ct), (row, shape.ct))


def row_reader(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    width, blocks = b["block_w"], shape.ct // b["block_w"]
    k = KernelBuilder(op.loc)
    gens = [k.addrgen(i, tensor(v)) for i, v in enumerate(op.operands)]
    params = list(zip((CB_GAMMA, CB_BETA), gens[1:], strict=False))
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row:
        start = row_start(k, shape, batch, row)
        with k.loop(blocks) as block:
            k.op("cb_reserve_back", cb=CB_IN0, pages=width)
            k.op("noc_read_tiles", gens[0], k.affine(start, (block, width)), cb=CB_IN0, rows=1, cols=width)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_IN0, pages=width)
        if params:
            with k.loop(blocks) as block:
                for cb, gen in params:
                    k.op("cb_reserve_back", cb=cb, pages=width)
                    k.op("noc_read_tiles", gen, k.mul(block, width), cb=cb, rows=1, cols=width)
                k.op("noc_read_barrier")
                for cb, _ in params:
                    k.op("cb_push_back", cb=cb, pages=width)
    return k.region()


def row_writer(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(op.operands), tensor(op.result))
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row:
        start = row_start(k, shape, batch, row)
        with k.loop(shape.ct // width) as block:
            k.op("cb_wait_front", cb=CB_OUT, pages=width)
            k.op("noc_write_tiles", gen, k.affine(start, (block, width)), cb=CB_OUT, rows=1, cols=width)
            k.op("noc_write_barrier")
            k.op("cb_pop_front", cb=CB_OUT, pages=width)
    return k.region()


def reduce_row(k: KernelBuilder, cb: int, tiles: int, out_cb: int, kind: str, fidelity: str,
               sfpu: tuple[tuple[str, float], ...] = ()) -> None:
    """Dst = reduce of `tiles` tiles of cb along rows (column 0), then SFPU ops, packed into out_cb.

    A sum runs in groups (`footprint.row_sum_groups`), each group in its own Dst slot; the group sums are
    packed and reduced once more, so no chain of bf16 roundings runs the whole row. Scaling (a mean's
    1 / width) belongs in `sfpu` (mul_scalar: float32, one rounding), not in a bf16-rounded reduce scaler.
    """
    groups = row_sum_groups(tiles) if kind == "sum" else [(0, tiles)]
    start = float("-inf") if kind == "max" else 0.0
    k.op("tile_regs_acquire")
    k.op("fill_tiles", count=len(groups), value=start)
    for slot, (first, count) in enumerate(groups):
        k.op("reduce_tiles", kind=kind, dim="row", cb=cb, offset=first, rows=1, cols=count, dst=slot,
             fidelity=fidelity)
    if len(groups) > 1:
        k.pack_block(CB_GROUPS, len(groups))
        k.op("cb_wait_front", cb=CB_GROUPS, pages=len(groups))
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=start)
        k.op("reduce_tiles", kind=kind, dim="row", cb=CB_GROUPS, rows=1, cols=len(groups), fidelity=fidelity)
        k.op("cb_pop_front", cb=CB_GROUPS, pages=len(groups))
    for fn, param in sfpu:
        k.op("sfpu_tiles", fn=fn, count=1, param=param)
    k.pack_block(out_cb, 1)


def mask_block(k: KernelBuilder, shape: TileShape, row_tile: Index, col_tile: Index, width: int, rows: bool,
               cols: bool, dst: int = 0, fill: float = 0.0) -> None:
    """Padding of Dst slots dst..dst+width-1 (one row of tiles) = fill, along the dims asked."""
    if not (rows and shape.rows % TILE) and not (cols and shape.cols % TILE):
        return
    k.op("mask_tiles", k.index(row_tile), k.index(col_tile), rows=1, cols=width, dst=dst,
         valid_rows=shape.rows if rows else shape.rt * TILE, valid_cols=shape.cols if cols else shape.ct * TILE,
         fill=fill)


def softmax_compute(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    width, ct = b["block_w"], shape.ct
    padded = shape.cols % TILE != 0
    k = KernelBuilder(op.loc)
    with k.loop(b["batches"]), k.loop(b["rows"]) as row:
        k.op("cb_wait_front", cb=CB_IN0, pages=ct)
        # Row max; the last tile's padding columns are masked to -inf (they would beat negative rows).
        if padded:
            k.op("tile_regs_acquire")
            k.op("copy_tiles", cb=CB_IN0, offset=ct - 1, rows=1, cols=1)
            mask_block(k, shape, 0, ct - 1, 1, rows=False, cols=True, fill=float("-inf"))
            k.pack_block(CB_MASKED, 1)
            k.op("cb_wait_front", cb=CB_MASKED, pages=1)
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=float("-inf"))
        if ct - padded:
            k.op("reduce_tiles", kind="max", dim="row", cb=CB_IN0, rows=1, cols=ct - padded, fidelity=s.fidelity)
        if padded:
            k.op("reduce_tiles", kind="max", dim="row", cb=CB_MASKED, rows=1, cols=1, fidelity=s.fidelity)
        k.pack_block(CB_STAT, 1)
        if padded:
            k.op("cb_pop_front", cb=CB_MASKED, pages=1)
        # exp(x - max), padding columns back to zero.
        k.op("cb_wait_front", cb=CB_STAT, pages=1)
        with k.loop(ct // width) as block:
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="sub", cb_a=CB_IN0, cb_b=CB_STAT, b_col_stride=0, bcast="col", rows=1, cols=width)
            k.op("sfpu_tiles", fn="exp", count=width)
            mask_block(k, shape, 0, k.mul(block, width), width, rows=False, cols=True)
            k.pack_block(CB_WIDE, width)
            k.op("cb_pop_front", cb=CB_IN0, pages=width)
        k.op("cb_pop_front", cb=CB_STAT, pages=1)
        # 1 / sum, then the normalised row with its padding rows zeroed.
        k.op("cb_wait_front", cb=CB_WIDE, pages=ct)
        reduce_row(k, CB_WIDE, ct, CB_STAT2, "sum", s.fidelity, sfpu=(("recip", 0.0),))
        k.op("cb_wait_front", cb=CB_STAT2, pages=1)
        with k.loop(ct // width) as block:
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="mul", cb_a=CB_WIDE, cb_b=CB_STAT2, b_col_stride=0, bcast="col", rows=1,
                 cols=width)
            mask_block(k, shape, k.add(k.arg(0), row), k.mul(block, width), width, rows=True, cols=False)
            k.pack_block(CB_OUT, width)
            k.op("cb_pop_front", cb=CB_WIDE, pages=width)
        k.op("cb_pop_front", cb=CB_STAT2, pages=1)
    return k.region()


def layer_norm_compute(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    width, ct = b["block_w"], shape.ct
    has_beta = len(op.operands) > 2
    inverse_width = 1.0 / shape.cols
    k = KernelBuilder(op.loc)
    with k.loop(b["batches"]), k.loop(b["rows"]) as row:
        k.op("cb_wait_front", cb=CB_IN0, pages=ct)
        reduce_row(k, CB_IN0, ct, CB_STAT, "sum", s.fidelity, sfpu=(("mul_scalar", inverse_width),))
        # Centred values (kept) and their squares, padding columns zeroed.
        k.op("cb_wait_front", cb=CB_STAT, pages=1)
        with k.loop(ct // width) as block:
            k.op("tile_regs_acquire")
            for dst in (0, width):
                k.op("binary_tiles", op="sub", cb_a=CB_IN0, cb_b=CB_STAT, b_col_stride=0, bcast="col", rows=1,
                     cols=width, dst=dst)
                mask_block(k, shape, 0, k.mul(block, width), width, rows=False, cols=True, dst=dst)
            k.op("sfpu_tiles", fn="square", dst=width, count=width)
            k.op("tile_regs_commit")
            k.op("tile_regs_wait")
            k.pack(CB_WIDE, width)
            k.pack(CB_WIDE2, width, dst=width)
            k.op("tile_regs_release")
            k.op("cb_pop_front", cb=CB_IN0, pages=width)
        k.op("cb_pop_front", cb=CB_STAT, pages=1)
        # rstd = rsqrt(mean of squares + eps)
        k.op("cb_wait_front", cb=CB_WIDE2, pages=ct)
        reduce_row(k, CB_WIDE2, ct, CB_STAT2, "sum", s.fidelity,
                   sfpu=(("mul_scalar", inverse_width), ("add_scalar", float(op.attr("epsilon"))), ("rsqrt", 0.0)))
        k.op("cb_pop_front", cb=CB_WIDE2, pages=ct)
        # centred * rstd * gamma (+ beta), padding rows zeroed.
        k.op("cb_wait_front", cb=CB_WIDE, pages=ct)
        k.op("cb_wait_front", cb=CB_STAT2, pages=1)
        with k.loop(ct // width) as block:
            k.op("cb_wait_front", cb=CB_GAMMA, pages=width)
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="mul", cb_a=CB_WIDE, cb_b=CB_STAT2, b_col_stride=0, bcast="col", rows=1,
                 cols=width)
            k.pack_block(CB_TMP, width)
            k.op("cb_wait_front", cb=CB_TMP, pages=width)
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="mul", cb_a=CB_TMP, cb_b=CB_GAMMA, bcast="row", rows=1, cols=width)
            last = CB_TMP
            if has_beta:
                k.pack_block(CB_TMP2, width)
                k.op("cb_wait_front", cb=CB_BETA, pages=width)
                k.op("cb_wait_front", cb=CB_TMP2, pages=width)
                k.op("tile_regs_acquire")
                k.op("binary_tiles", op="add", cb_a=CB_TMP2, cb_b=CB_BETA, bcast="row", rows=1, cols=width)
            mask_block(k, shape, k.add(k.arg(0), row), k.mul(block, width), width, rows=True, cols=False)
            k.pack_block(CB_OUT, width)
            for cb in (CB_WIDE, last, CB_GAMMA, *((CB_TMP2, CB_BETA) if has_beta else ())):
                k.op("cb_pop_front", cb=cb, pages=width)
        k.op("cb_pop_front", cb=CB_STAT2, pages=1)
    return k.region()
