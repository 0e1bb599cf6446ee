"""Split rows: a softmax or layer norm whose rows are few and long runs each row on `split` cores, each core
taking one column slice of ct / split tiles (a blocking with `"split": S`).

When rows are few (BERT's and GPT-2's layer norms: 128 rows x 768, four tile rows) the whole-row plans
(row_ops.py) use a handful of cores. Here the cores of a *group* (S consecutive cores of a grid row) share the
same rows (`batches` x `rows` tile rows per core, R in all, unrolled in the kernels) and each holds its slice of
them in L1 at once. A row statistic is then made of the slices' partial statistics in two exchanges:

    layer norm   1. partial sums -> mean      2. partial sums of squared centred values -> rstd
    softmax      1. partial maxima -> max     2. partial sums of exp(x - max) -> 1 / sum

Each exchange: the compute kernel packs its R partial tiles (one per row: column 0 holds the slice's row
statistics, the reduce's fill elsewhere) into CB_PART; the writer writes them into an L1 scratch buffer (page
((exchange * G + group) * R + r) * S + slice: every partial has its own page, so nothing is overwritten while a
peer may still read it) and, after the write barrier, increments semaphore 0 of every core of its group
(itself too); the reader waits until its semaphore reaches S times the exchanges so far (a running count:
no reset, so an increment of the next exchange cannot be lost), reads the group's R x S partials into
CB_PARTS, and the compute kernel reduces each row's S partials in slice order (`reduce_row`: the same order on
every core, so the cores of a group agree bit for bit), then the statistic's SFPU steps. Then each core
normalises its own slice (layer norm: its slice of gamma / beta read once, before the rows, and held for all R
of them when R > 1, or with `param_mcast` read by the first core of its grid column and multicast down the column,
whose cores hold the same slice (row_ops.share_params); the last step unrolled over the blocks, static offsets
into them). The partial sums are summed in groups (`row_sum_groups` of the slice, then of the S
partials), so the bits differ from the whole-row plan's (a different summation order), not the definition. A
block-float result keeps its partials, statistics and scratch in bf16 (`work_format`); only its output CB is bfp8_b.

The scratch buffer (`scratch`) is created before the program and freed after it; the grid pass counts its
L1 share in the op's footprint (`DeviceOp.scratch`). Semaphore messages are not counted (runtime/multicast.py).
The grid is the groups laid out `groups_x` to a grid row: x = S * groups_x, y = G / groups_x.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import TensorType
from ttc.passes.ops.counting import Buffer, Plan
from ttc.passes.ops.geometry import (
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
    batch_groups,
    batch_offsets,
    cb,
    divisors,
    double,
    page_size,
    tensor,
    tile_shape,
    work_format,
)
from ttc.passes.ops.kernel import KernelBuilder
from ttc.passes.ops.program import Program, Schedule, schedule_of
from ttc.passes.ops.row_ops import (
    CB_MASK,
    CB_SCALED,
    CB_SUM,
    PARAM_MCAST,
    _row_sum,
    block_pops,
    centred_block,
    has_prologue,
    holds_params,
    is_rms,
    mask_block,
    mask_walk,
    multicasts_params,
    param_cbs,
    plan_shared_params,
    read_params_once,
    reduce_row,
    row_sum_groups,
    scale_and_mask_block,
    scale_and_shift,
    share_params,
    softmax_mask,
    squares,
    static_row_tiles,
)

SPLIT, GROUPS_X = "split", "groups_x"
CB_PART, CB_PARTS = 24, 25  # this core's partial statistics (one tile per row); the group's (S per row)
SEMAPHORE = 0
EXCHANGES = 2  # (an RMS norm has no mean: one exchange, `exchanges`)
SPLIT_MIN_TILES = 4  # rows narrower than this are not split
MAX_SPLIT_ROWS = 8  # tile rows per core (the kernels unroll them)


def exchanges(op: Operation) -> int:
    """The row statistics exchanged: 2 (max and sum, or mean and rstd), 1 for an RMS norm (rstd)."""
    return 1 if is_rms(op) else EXCHANGES


def is_split(blocking: dict[str, int]) -> bool:
    return blocking.get(SPLIT, 0) > 1


def split_candidates(op: Operation, max_w: int) -> Iterator[dict[str, int]]:
    """Every split S >= 2 of the row's tiles (a divisor), R <= MAX_SPLIT_ROWS tile rows per core, any layout
    of the groups on grid rows (`groups_x` groups to a row), the widest Dst block dividing the slice."""
    out = tile_shape(tensor(op.result).shape)
    if out.ct < SPLIT_MIN_TILES:
        return
    mask = softmax_mask(op)  # a mask broadcast along batch dims: groups whose mask tiles step affinely
    offsets = [] if mask is None else [batch_offsets(tensor(mask).shape, tensor(op.result).shape)]
    for split in divisors(out.ct)[1:]:
        slice_w = out.ct // split
        width = max(d for d in divisors(slice_w) if d <= max_w)
        for batches in batch_groups(offsets, out.batches):
            for rows in divisors(out.rt):
                if batches * rows > MAX_SPLIT_ROWS:
                    continue
                groups = (out.batches // batches) * (out.rt // rows)
                for groups_x in divisors(groups):
                    b = {"batches": batches, "rows": rows, "cols": out.ct, "block_w": width, SPLIT: split,
                         GROUPS_X: groups_x}
                    yield b
                    if op.name == ttir.LAYER_NORM.name and len(op.operands) > 1 and groups // groups_x > 1:
                        yield {**b, PARAM_MCAST: 1}  # each grid column's slice read once, multicast down it


def split_units(op: Operation, b: dict[str, int]) -> tuple[int, int, int]:
    out = tile_shape(tensor(op.result).shape)
    return out.batches // b["batches"], out.rt // b["rows"], b[SPLIT]


def split_grid(op: Operation, b: dict[str, int]) -> tuple[int, int]:
    bu, ru, split = split_units(op, b)
    return split * b[GROUPS_X], bu * ru // b[GROUPS_X]


def scratch_type(op: Operation, b: dict[str, int]) -> TensorType:
    """The exchanges' L1 scratch: EXCHANGES x G x R tile rows of S partial tiles, in the statistics' format."""
    bu, ru, split = split_units(op, b)
    rows = exchanges(op) * bu * ru * b["batches"] * b["rows"]
    return TensorType((rows * TILE, split * TILE), work_format(tensor(op.result).element_type),
                      LayoutAttr("tile", "l1", "interleaved"))


def split_cbs(op: Operation, b: dict[str, int]) -> list[CBConfigAttr]:
    x, out = tensor(op.operands[0]), tensor(op.result)
    fmt = work_format(out.element_type)  # partials, statistics and temporaries (a block-float result's are bf16)
    rows, split, width = b["batches"] * b["rows"], b[SPLIT], b["block_w"]
    slice_w = tile_shape(x.shape).ct // split
    blocks = rows * (slice_w // width)
    cbs = [cb(CB_IN0, x.element_type, rows * slice_w), cb(CB_OUT, out.element_type, double(width, blocks)),
           cb(CB_STAT, fmt, rows), cb(CB_STAT2, fmt, rows), cb(CB_PART, fmt, rows), cb(CB_PARTS, fmt, rows * split)]
    groups = max(len(row_sum_groups(slice_w)), len(row_sum_groups(split)))
    if groups > 1:
        cbs.append(cb(CB_GROUPS, fmt, groups))
    if op.name == ttir.SOFTMAX.name:
        cbs += [cb(CB_MASKED, fmt, 1), cb(CB_WIDE, fmt, rows * slice_w)]
        if has_prologue(op):  # x * scale (+ mask) of the slice's rows, as the whole-row kernel makes it
            cbs.append(cb(CB_SUM, fmt, rows * slice_w))
        mask = softmax_mask(op)
        if mask is not None:
            cbs.append(cb(CB_MASK, tensor(mask).element_type, double(width, blocks)))
            if op.attr("scale") != 1.0:
                cbs.append(cb(CB_SCALED, fmt, width))
        return sorted(cbs, key=lambda c: c.index)
    params = slice_w if holds_params(op, b) else double(width, blocks)
    cbs += [cb(CB_GAMMA, tensor(op.operands[1]).element_type, params),
            cb(CB_WIDE, fmt, rows * slice_w), cb(CB_WIDE2, fmt, slice_w), cb(CB_TMP, fmt, width)]
    if len(op.operands) > 2:
        cbs += [cb(CB_BETA, tensor(op.operands[2]).element_type, params), cb(CB_TMP2, fmt, width)]
    return sorted(cbs, key=lambda c: c.index)


# ----------------------------------------------------------------------------------------------
# Counts


def row_offsets(shape: TileShape, b: dict[str, int]) -> list[int]:
    """Tile offset of each of a core's R rows from its first row's."""
    return [(r // b["rows"]) * shape.rt * shape.ct + (r % b["rows"]) * shape.ct for r in range(b["batches"] * b["rows"])]


def split_mask_first(op: Operation, b: dict[str, int], unit: tuple[int, ...]) -> int:
    """A masked softmax's first mask tile of a core: its first row's slice."""
    offsets, _, rs, _ = mask_walk(op, b["batches"])
    w = tile_shape(tensor(op.result).shape).ct // b[SPLIT]
    return int(offsets[unit[0] * b["batches"]]) + unit[1] * b["rows"] * rs + unit[2] * w


def split_mask_rows(op: Operation, b: dict[str, int]) -> list[int]:
    """Tile offset of each of a core's R rows' mask slice from its first row's."""
    _, step, rs, _ = mask_walk(op, b["batches"])
    return [(r // b["rows"]) * step + (r % b["rows"]) * rs for r in range(b["batches"] * b["rows"])]


def plan_split(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int]) -> Counts:
    shape = tile_shape(tensor(op.operands[0]).shape)
    rows, split = b["batches"] * b["rows"], b[SPLIT]
    w = shape.ct // split
    pad_rows, pad_cols = shape.rows % TILE != 0, shape.cols % TILE != 0
    plan = Plan(device, grid, split_units(op, b))
    if op.name == ttir.SOFTMAX.name:
        scaled = int(op.attr("scale") != 1.0)
        plan.tile(target.DATACOPY, rows * w * scaled)  # x * scale (a copy, an SFPU product)
        plan.tile(target.sfpu_key("mul_scalar"), rows * w * scaled)
        plan.tile(target.binary_key("add"), rows * w * int(softmax_mask(op) is not None))  # + mask
        plan.tile(target.DATACOPY, rows * (1 + 2 * int(pad_cols)))  # the -inf fill; the slice's masked last tile
        plan.tile(target.REDUCE_MAX, rows * w)
        plan.tile(target.DATACOPY, rows)  # the max of the partial maxima: a fill,
        plan.tile(target.REDUCE_MAX, rows * split)  # then the S partials
        plan.tile(target.binary_key("sub"), rows * w)
        plan.tile(target.sfpu_key("exp"), rows * w)
        plan.tile(target.DATACOPY, rows * w * (int(pad_cols) + int(pad_rows)))
        _row_sum(plan, rows, w, fidelity)
        _row_sum(plan, rows, split, fidelity)
        plan.tile(target.sfpu_key("recip"), rows)
        plan.tile(target.binary_key("mul"), rows * w)
    else:
        rms = is_rms(op)  # no mean: x copied twice instead of centred
        for _ in range(exchanges(op)):
            _row_sum(plan, rows, w, fidelity)
            _row_sum(plan, rows, split, fidelity)
        plan.tile(target.sfpu_key("mul_scalar"), exchanges(op) * rows)
        plan.tile(target.sfpu_key("add_scalar"), rows)
        plan.tile(target.sfpu_key("rsqrt"), rows)
        plan.tile(target.binary_key("sub"), 0 if rms else rows * w)
        plan.tile(target.DATACOPY, rows * w * ((1 if rms else int(pad_cols)) + int(pad_rows)))
        plan.tile(target.binary_key("mul"), 3 * rows * w)  # the squares, x rstd, x gamma
        plan.tile(target.binary_key("add"), rows * w * int(len(op.operands) > 2))

    unit = plan.unit
    first = (unit[:, 0] * b["batches"] * shape.rt + unit[:, 1] * b["rows"]) * shape.ct + unit[:, 2] * w
    offsets = np.asarray(row_offsets(shape, b))

    static_row_tiles(plan, op.operands[0], first, offsets, w)
    mask = softmax_mask(op)
    if mask is not None:  # each row's slice of the mask
        mask_first = np.asarray([split_mask_first(op, b, tuple(u)) for u in unit])
        static_row_tiles(plan, mask, mask_first, np.asarray(split_mask_rows(op, b)), w)
    param_rows = 1 if holds_params(op, b) else rows  # the slice of gamma / beta: once per core, or per row
    if multicasts_params(b):  # the first core of each grid column reads its slice, the column shares it
        plan_shared_params(plan, op.operands[1:], w, np.arange(plan.cores) < grid[0], grid[1] - 1)
    else:
        for param in op.operands[1:] if mask is None else ():
            static_row_tiles(plan, param, unit[:, 2] * w, np.zeros(param_rows, dtype=np.int64), w)
    scratch = Buffer(page_size(scratch_type(op, b)), False, None)
    plan.static(scratch, exchanges(op) * rows, write=True)
    plan.static(scratch, exchanges(op) * rows * split)
    static_row_tiles(plan, op.result, first, offsets, w, write=True)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Kernels


def lower_split(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    shape = tile_shape(tensor(op.operands[0]).shape)
    split, rows = b[SPLIT], b["batches"] * b["rows"]
    w = shape.ct // split
    bu, ru, _ = split_units(op, b)
    groups_x = b[GROUPS_X]

    def first_tile(unit: tuple[int, ...]) -> int:
        return (unit[0] * b["batches"] * shape.rt + unit[1] * b["rows"]) * shape.ct + unit[2] * w

    def group(unit: tuple[int, ...]) -> int:
        return unit[0] * ru + unit[1]

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        mask = [split_mask_first(op, b, unit)] if softmax_mask(op) is not None else []
        # the parameters' multicast (`share_params`): sender? (the column's first core), receiver?, valid, column
        sender = int(group(unit) < groups_x)
        shared = [sender, 1 - sender, w * sender, (group(unit) % groups_x) * split + unit[2]] \
            if multicasts_params(b) else []
        return [first_tile(unit), group(unit) * rows * split, unit[2] * w, *mask, *shared]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        g = group(unit)
        return [first_tile(unit), g * rows * split + unit[2], (g % groups_x) * split, g // groups_x]

    def compute_args(unit: tuple[int, ...]) -> list[int]:
        return [unit[1] * b["rows"], unit[2] * w]

    compute = split_softmax_compute if op.name == ttir.SOFTMAX.name else split_layer_norm_compute
    scratch = scratch_type(op, b)
    kernels = (split_reader(op, schedule, shape, scratch), compute(op, schedule, shape),
               split_writer(op, schedule, shape, scratch))
    assert bu * ru == groups_x * schedule.grid.y and split * groups_x == schedule.grid.x
    kind = "softmax" if op.name == ttir.SOFTMAX.name else "layer_norm"
    return Program(kind, schedule.grid, split_cbs(op, b), kernels,
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands), scratch=[scratch])


def split_reader(op: Operation, s: Schedule, shape: TileShape, scratch: TensorType):
    """The slice's R rows at once; per exchange, the wait for the group's S increments and the read of its
    R x S partials; then the parameters' slice, per row and block (layer norm)."""
    b = s.blocking
    split, rows, width = b[SPLIT], b["batches"] * b["rows"], b["block_w"]
    w = shape.ct // split
    groups = s.grid.num_cores // split
    k = KernelBuilder(op.loc)
    gens = [k.addrgen(i, tensor(v)) for i, v in enumerate(op.operands)]
    scratch_gen = k.addrgen(len(op.operands), scratch)
    params = list(zip((CB_GAMMA, CB_BETA), gens[1:], strict=False)) if op.name == ttir.LAYER_NORM.name else []
    held = holds_params(op, b)
    for offset in row_offsets(shape, b):
        k.op("cb_reserve_back", cb=CB_IN0, pages=w)
        k.op("noc_read_tiles", gens[0], k.add(k.arg(0), offset), cb=CB_IN0, rows=1, cols=w)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_IN0, pages=w)
    if softmax_mask(op) is not None:  # each row's slice of the mask, block by block
        for offset in split_mask_rows(op, b):
            with k.loop(w // width) as block:
                k.op("cb_reserve_back", cb=CB_MASK, pages=width)
                k.op("noc_read_tiles", gens[1], k.affine(k.add(k.arg(3), offset), (block, width)), cb=CB_MASK,
                     rows=1, cols=width)
                k.op("noc_read_barrier")
                k.op("cb_push_back", cb=CB_MASK, pages=width)
    for exchange in range(exchanges(op)):
        k.op("semaphore_wait", semaphore=SEMAPHORE, value=split * (exchange + 1))
        k.op("cb_reserve_back", cb=CB_PARTS, pages=rows * split)
        k.op("noc_read_tiles", scratch_gen, k.add(k.arg(1), exchange * groups * rows * split), cb=CB_PARTS,
             rows=rows, cols=split, row_stride=split)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_PARTS, pages=rows * split)
    if multicasts_params(b):  # from the first core of each grid column down the column
        column, height = k.arg(6), s.grid.y
        share_params(k, params, k.arg(2), w, (k.arg(3), k.arg(4), k.arg(5)), (column, 0),
                     (column, 0, column, height - 1), height - 1)
    elif held:
        read_params_once(k, params, k.arg(2), w)
    elif params:
        with k.loop(rows), k.loop(w // width) as block:
            for cb_index, gen in params:
                k.op("cb_reserve_back", cb=cb_index, pages=width)
                k.op("noc_read_tiles", gen, k.affine(k.arg(2), (block, width)), cb=cb_index, rows=1, cols=width)
            k.op("noc_read_barrier")
            for cb_index, _ in params:
                k.op("cb_push_back", cb=cb_index, pages=width)
    return k.region()


def split_writer(op: Operation, s: Schedule, shape: TileShape, scratch: TensorType):
    """Per exchange, this core's R partials into the scratch and an increment of every group core's semaphore;
    then the slice's output blocks."""
    b = s.blocking
    split, rows, width = b[SPLIT], b["batches"] * b["rows"], b["block_w"]
    w = shape.ct // split
    groups = s.grid.num_cores // split
    k = KernelBuilder(op.loc)
    scratch_gen = k.addrgen(len(op.operands), scratch)
    out_gen = k.addrgen(len(op.operands) + 1, tensor(op.result))
    for exchange in range(exchanges(op)):
        k.op("cb_wait_front", cb=CB_PART, pages=rows)
        k.op("noc_write_tiles", scratch_gen, k.add(k.arg(1), exchange * groups * rows * split), cb=CB_PART,
             rows=rows, cols=1, row_stride=split)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_PART, pages=rows)
        for peer in range(split):
            k.op("semaphore_inc", k.add(k.arg(2), peer), k.arg(3), semaphore=SEMAPHORE)
    for offset in row_offsets(shape, b):
        with k.loop(w // width) as block:
            k.op("cb_wait_front", cb=CB_OUT, pages=width)
            k.op("noc_write_tiles", out_gen, k.affine(k.add(k.arg(0), offset), (block, width)), cb=CB_OUT, rows=1,
                 cols=width)
            k.op("noc_write_barrier")
            k.op("cb_pop_front", cb=CB_OUT, pages=width)
    return k.region()


def combine(k: KernelBuilder, rows: int, split: int, kind: str, out_cb: int, fidelity: str,
            sfpu: tuple[tuple[str, float], ...] = ()) -> None:
    """Each row's statistic from the group's S partials in CB_PARTS (slice order), into out_cb (R tiles)."""
    k.op("cb_wait_front", cb=CB_PARTS, pages=rows * split)
    for r in range(rows):
        reduce_row(k, CB_PARTS, split, out_cb, kind, fidelity, sfpu=sfpu, offset=r * split)
    k.op("cb_pop_front", cb=CB_PARTS, pages=rows * split)
    k.op("cb_wait_front", cb=out_cb, pages=rows)


def split_layer_norm_compute(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    split, rows, width = b[SPLIT], b["batches"] * b["rows"], b["block_w"]
    w = shape.ct // split
    has_beta = len(op.operands) > 2
    inverse_width = 1.0 / shape.cols
    rms = is_rms(op)
    k = KernelBuilder(op.loc)
    k.op("cb_wait_front", cb=CB_IN0, pages=rows * w)
    if not rms:
        for r in range(rows):  # exchange 1: the slices' sums
            reduce_row(k, CB_IN0, w, CB_PART, "sum", s.fidelity, offset=r * w)
        combine(k, rows, split, "sum", CB_STAT, s.fidelity, sfpu=(("mul_scalar", inverse_width),))
    for r in range(rows):  # centred values (kept) and their squares, padding columns zeroed; exchange 2's sums
        with k.loop(w // width) as block:  # (an RMS norm: x itself, and its only exchange)
            centred_block(k, shape, width, rms, r, k.affine(k.arg(1), (block, width)))
        squares(k, r * w, w, width)
        k.op("cb_wait_front", cb=CB_WIDE2, pages=w)
        reduce_row(k, CB_WIDE2, w, CB_PART, "sum", s.fidelity)
        k.op("cb_pop_front", cb=CB_WIDE2, pages=w)
    if not rms:
        k.op("cb_pop_front", cb=CB_STAT, pages=rows)
    combine(k, rows, split, "sum", CB_STAT2, s.fidelity,
            sfpu=(("mul_scalar", inverse_width), ("add_scalar", float(op.attr("epsilon"))), ("rsqrt", 0.0)))
    k.op("cb_wait_front", cb=CB_WIDE, pages=rows * w)
    held = holds_params(op, b)
    if held:
        for cb_index in param_cbs(has_beta):
            k.op("cb_wait_front", cb=cb_index, pages=w)

    def normalise(r: int, block, param_offset: int | None) -> None:
        last = scale_and_shift(k, width, has_beta, stat_offset=r, param_offset=param_offset)
        mask_block(k, shape, k.add(k.arg(0), r % b["rows"]), k.affine(k.arg(1), (block, width)), width,
                   rows=True, cols=False)
        k.pack_block(CB_OUT, width)
        for cb_index in block_pops(last, has_beta, held):
            k.op("cb_pop_front", cb=cb_index, pages=width)

    for r in range(rows):  # centred x rstd x gamma (+ beta), padding rows zeroed
        if held:  # unrolled: each block's gamma / beta tiles at a static offset into the held slice
            for block in range(w // width):
                normalise(r, block, block * width)
        else:
            with k.loop(w // width) as block:
                normalise(r, block, None)
    if held:
        for cb_index in param_cbs(has_beta):
            k.op("cb_pop_front", cb=cb_index, pages=w)
    k.op("cb_pop_front", cb=CB_STAT2, pages=rows)
    return k.region()


def split_softmax_compute(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    split, rows, width = b[SPLIT], b["batches"] * b["rows"], b["block_w"]
    w = shape.ct // split
    padded = shape.cols % TILE != 0
    k = KernelBuilder(op.loc)
    k.op("cb_wait_front", cb=CB_IN0, pages=rows * w)
    src = CB_IN0
    if has_prologue(op):  # x * scale (+ mask) of every row's slice first, into CB_SUM (the whole-row kernel's steps)
        src = CB_SUM
        for _ in range(rows):
            with k.loop(w // width):
                scale_and_mask_block(k, op, width, None)
        k.op("cb_wait_front", cb=CB_SUM, pages=rows * w)
    for r in range(rows):  # exchange 1: the slices' maxima (the slice's last tile's padding columns -> -inf)
        if padded:
            k.op("tile_regs_acquire")
            k.op("copy_tiles", cb=src, offset=r * w + w - 1, rows=1, cols=1)
            mask_block(k, shape, 0, k.add(k.arg(1), w - 1), 1, rows=False, cols=True, fill=float("-inf"))
            k.pack_block(CB_MASKED, 1)
            k.op("cb_wait_front", cb=CB_MASKED, pages=1)
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=float("-inf"))
        if w - padded:
            k.op("reduce_tiles", kind="max", dim="row", cb=src, offset=r * w, rows=1, cols=w - padded,
                 fidelity=s.fidelity)
        if padded:
            k.op("reduce_tiles", kind="max", dim="row", cb=CB_MASKED, rows=1, cols=1, fidelity=s.fidelity)
        k.pack_block(CB_PART, 1)
        if padded:
            k.op("cb_pop_front", cb=CB_MASKED, pages=1)
    combine(k, rows, split, "max", CB_STAT, s.fidelity)
    for r in range(rows):  # exp(x - max), padding columns back to zero; exchange 2's sums
        with k.loop(w // width) as block:
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="sub", cb_a=src, cb_b=CB_STAT, b_offset=r, b_col_stride=0, bcast="col",
                 rows=1, cols=width)
            k.op("sfpu_tiles", fn="exp", count=width)
            mask_block(k, shape, 0, k.affine(k.arg(1), (block, width)), width, rows=False, cols=True)
            k.pack_block(CB_WIDE, width)
            k.op("cb_pop_front", cb=src, pages=width)
        k.op("cb_wait_front", cb=CB_WIDE, pages=(r + 1) * w)
        reduce_row(k, CB_WIDE, w, CB_PART, "sum", s.fidelity, offset=r * w)
    k.op("cb_pop_front", cb=CB_STAT, pages=rows)
    combine(k, rows, split, "sum", CB_STAT2, s.fidelity, sfpu=(("recip", 0.0),))
    for r in range(rows):  # x 1 / sum, padding rows zeroed
        with k.loop(w // width) as block:
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="mul", cb_a=CB_WIDE, cb_b=CB_STAT2, b_offset=r, b_col_stride=0, bcast="col",
                 rows=1, cols=width)
            mask_block(k, shape, k.add(k.arg(0), r % b["rows"]), k.affine(k.arg(1), (block, width)), width,
                       rows=True, cols=False)
            k.pack_block(CB_OUT, width)
            k.op("cb_pop_front", cb=CB_WIDE, pages=width)
    k.op("cb_pop_front", cb=CB_STAT2, pages=rows)
    return k.region()
