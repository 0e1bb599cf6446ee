"""Softmax and layer norm along the last dim: each core takes whole rows of tiles.

A row's ct tiles are all in the input CB at once (reductions need them), and the row is then consumed
block by block (1 x block_w tiles), popping as it goes, so every compute op uses static offsets.

Softmax: max (reduce, the last tile's padding columns masked to -inf first), exp(x - max) with the
max broadcast along columns and the padding re-zeroed, sum (reduce), reciprocal, x * 1/sum, and the
padding rows zeroed. Sums over long rows run in groups of tiles (`reduce_row`), so that no chain of
bf16 roundings in Dst runs the whole row. Layer norm: mean (the sum times 1/width, the logical width,
on the SFPU in float32), centred values
with the padding re-zeroed (kept; their squares the FPU product of each tile with itself: the bits of an SFPU
square, one exact product rounded once), variance (reduce),
rstd = rsqrt(var + eps), then centred x rstd x gamma + beta (gamma and beta rows broadcast along rows),
padding rows zeroed. Gamma and beta are the same for every row: with `hold` (a core of more than one tile row)
the reader reads their ct tiles once per core and the compute kernel keeps them at the front of their CBs,
its last step unrolled over the row's blocks (static offsets into them); without it they are re-read with
every row (less L1, for rows too wide to hold them beside the row). With `param_mcast` (any whole-row blocking of
more than one unit, even of one tile row per core) they are held and core 0 alone reads them, multicasting them to
the whole grid (`share_params`, tt-metal's ready / valid handshake on semaphores 1 and 2).

RMS norm (`ttir.layer_norm {rms = true}`, decompose.py): the layer norm without the mean: x itself (copied, its
padding already zero) in place of the centred values, so rstd = rsqrt(mean(x^2) + eps), then x rstd x gamma.

Rows too long for L1 (a blocking with `chunk`): the same math in three passes over chunks of the row, read
from DRAM three times, with the running max / sums in one-tile CBs (`chunked_softmax_compute`,
`chunked_layer_norm_compute`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation, Value
from ttc.ir.diagnostics import UserError
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
    CB_BETA,
    CB_CHUNK_GROUP,
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
    HALF_DST,
    TILE,
    TileShape,
    affine_step,
    batch_groups,
    batch_offsets,
    cb,
    divisors,
    double,
    node_names,
    tensor,
    tile_shape,
    work_format,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.matmul_mcast import multicast_handshake
from ttc.passes.ops.program import (
    Program,
    Schedule,
    cbs_of,
    schedule_of,
)
from ttc.passes.ops.registry import register

LN_BLOCK_W = HALF_DST // 2  # layer norm holds a block twice in Dst (centred value and its square)
# a masked softmax's mask tiles, its block of x * scale and its row of x * scale + mask (softmax uses none of them)
CB_MASK, CB_SCALED, CB_SUM = CB_GAMMA, CB_TMP2, CB_TMP
HOLD = "hold"  # a blocking whose cores read the per-row constants (gamma, beta) once, not once per row
# a blocking whose held gamma / beta one core reads and multicasts to the cores sharing them (`share_params`)
PARAM_MCAST = "param_mcast"
PARAM_READY, PARAM_VALID = 1, 2  # that multicast's handshake semaphores (the split plans' exchange uses 0)


def softmax_mask(op: Operation) -> Value | None:
    """The additive mask `fuse` folded into a softmax (softmax(x + mask)), if any."""
    return op.operands[1] if op.name == ttir.SOFTMAX.name and len(op.operands) > 1 else None


def has_prologue(op: Operation) -> bool:
    """A softmax of x * scale (+ mask) rather than of x: the kernels compute that row (or slice) first, whole-row
    and split plans (no row-chunked one)."""
    return op.name == ttir.SOFTMAX.name and (len(op.operands) > 1 or op.attr("scale") != 1.0)


def mask_walk(op: Operation, batches: int) -> tuple[np.ndarray, int, int, str]:
    """A masked softmax's mask: the first tile of its matrix for each batch of the result, the step between the
    batches of a core's group, the step between tile rows (0 for a [1, N] row broadcast along rows) and the
    in-tile broadcast of its tiles."""
    mask = softmax_mask(op)
    assert mask is not None
    out, source = tile_shape(tensor(op.result).shape), tile_shape(tensor(mask).shape)
    offsets = batch_offsets(tensor(mask).shape, tensor(op.result).shape)
    full = source.rows == out.rows
    step = affine_step(offsets, batches)
    assert step is not None, "a masked softmax's batch group whose mask tiles do not step affinely"
    return offsets, step, source.ct if full else 0, "none" if full else "row"


def holds_mask(op: Operation, blocking: dict[str, int]) -> bool:
    """Whether a masked softmax's core reads its mask's tiles once and keeps them for all its rows: every row
    of the core reads the same tile row of the mask (a [1, N] row broadcast along rows, or one tile row per
    core) and its batches share one matrix of it (the heads of one image: ViT's [B, 1, S, S] mask, otherwise
    re-read once per head, as the unfused eltwise's `held_inputs` did not)."""
    if softmax_mask(op) is None or blocking["batches"] * blocking["rows"] == 1:
        return False
    _, step, rs, _ = mask_walk(op, blocking["batches"])
    return (blocking["rows"] == 1 or rs == 0) and (blocking["batches"] == 1 or step == 0)


def holds_params(op: Operation, blocking: dict[str, int]) -> bool:
    """Whether a core reads layer norm's gamma / beta once and keeps them in L1 for all its rows: a whole-row
    blocking with `hold`, or any split blocking (its slice of them is small next to the R row slices it holds);
    never a row-chunked one (its point is not holding a row's tiles), nor a core of one tile row unless the
    parameters come by multicast (`multicasts_params`: then one read serves many cores)."""
    from ttc.passes.ops.row_split import is_split

    if op.name != ttir.LAYER_NORM.name or len(op.operands) < 2 or "chunk" in blocking:
        return False
    if multicasts_params(blocking):
        return True
    return blocking["batches"] * blocking["rows"] > 1 and (is_split(blocking) or bool(blocking.get(HOLD)))


def multicasts_params(blocking: dict[str, int]) -> bool:
    """Whether the held gamma / beta are read from DRAM by one core of each sharing rectangle (the whole grid of a
    whole-row plan, a grid column of a split plan) and multicast to the others (`share_params`)."""
    return bool(blocking.get(PARAM_MCAST))


def row_sum_groups(tiles: int) -> list[tuple[int, int]]:
    """(first tile, tiles) of the groups a row of `tiles` tiles is summed in: about sqrt(tiles) groups of
    nearly equal size (each in its own Dst slot, at most 8), so that neither the chain inside a group nor
    the one over the groups runs long in bf16; one group for rows of up to 4 tiles."""
    count = 1 if tiles <= 4 else min(HALF_DST, round(math.sqrt(tiles)))
    sizes = [tiles // count + (i < tiles % count) for i in range(count)]
    return [(sum(sizes[:i]), size) for i, size in enumerate(sizes)]


def is_rms(op: Operation) -> bool:
    """An RMS norm: a layer norm that does not centre its rows (no mean)."""
    return op.name == ttir.LAYER_NORM.name and bool(op.attributes.get("rms"))


def row_op_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """Softmax / layer norm keep a whole row of tiles (ct) per step in L1."""
    x, out = tensor(op.operands[0]), tensor(op.result)
    ct, width = tile_shape(x.shape).ct, blocking["block_w"]
    fmt = work_format(out.element_type)  # the statistics and temporaries (a block-float result's are bf16)
    rows = blocking["batches"] * blocking["rows"]
    if "chunk" in blocking:
        return chunked_row_op_cbs(op, blocking)
    cbs = [cb(CB_IN0, x.element_type, ct), cb(CB_OUT, out.element_type, double(width, rows * (ct // width)))]
    if len(row_sum_groups(ct)) > 1:
        cbs.append(cb(CB_GROUPS, fmt, len(row_sum_groups(ct))))
    if op.name == ttir.SOFTMAX.name:
        cbs += [cb(CB_MASKED, fmt, 1), cb(CB_STAT, fmt, 1), cb(CB_WIDE, fmt, ct), cb(CB_STAT2, fmt, 1)]
        mask = softmax_mask(op)
        if has_prologue(op):
            cbs.append(cb(CB_SUM, fmt, ct))
        if mask is not None:
            mask_pages = ct if holds_mask(op, blocking) else double(width, rows * (ct // width))
            cbs.append(cb(CB_MASK, tensor(mask).element_type, mask_pages))
            if op.attr("scale") != 1.0:
                cbs.append(cb(CB_SCALED, fmt, width))
        return sorted(cbs, key=lambda c: c.index)
    params = ct if holds_params(op, blocking) else double(width, rows * (ct // width))
    cbs += [cb(CB_GAMMA, tensor(op.operands[1]).element_type, params),
            cb(CB_STAT, fmt, 1), cb(CB_WIDE, fmt, ct), cb(CB_WIDE2, fmt, ct), cb(CB_STAT2, fmt, 1),
            cb(CB_TMP, fmt, width)]
    if len(op.operands) > 2:
        cbs += [cb(CB_BETA, tensor(op.operands[2]).element_type, params), cb(CB_TMP2, fmt, width)]
    return sorted(cbs, key=lambda c: c.index)


def chunked_row_op_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """A row-chunked softmax / layer norm keeps one chunk of the row in L1 (the input and the values it
    sums), not the whole row."""
    x, out = tensor(op.operands[0]), tensor(op.result)
    ct, width, chunk = tile_shape(x.shape).ct, blocking["block_w"], blocking["chunk"]
    fmt = work_format(out.element_type)
    rows = blocking["batches"] * blocking["rows"]
    cbs = [cb(CB_IN0, x.element_type, chunk), cb(CB_OUT, out.element_type, double(width, rows * (ct // width))),
           cb(CB_STAT, fmt, 1), cb(CB_STAT2, fmt, 1)]
    if chunk_sum_groups(ct // chunk)[1]:
        cbs.append(cb(CB_CHUNK_GROUP, fmt, 1))
    if len(row_sum_groups(chunk)) > 1:
        cbs.append(cb(CB_GROUPS, fmt, len(row_sum_groups(chunk))))
    if op.name == ttir.SOFTMAX.name:
        cbs += [cb(CB_MASKED, fmt, 1), cb(CB_WIDE, fmt, chunk)]
        return sorted(cbs, key=lambda c: c.index)
    cbs += [cb(CB_GAMMA, tensor(op.operands[1]).element_type, double(width, rows * (ct // width))),
            cb(CB_WIDE, fmt, width), cb(CB_WIDE2, fmt, chunk), cb(CB_TMP, fmt, width)]
    if len(op.operands) > 2:
        cbs += [cb(CB_BETA, tensor(op.operands[2]).element_type, double(width, rows * (ct // width))),
                cb(CB_TMP2, fmt, width)]
    return sorted(cbs, key=lambda c: c.index)


def last_axis_only(op: Operation) -> None:
    """Softmax and layer norm kernels reduce along the last dim (tilize moves other axes there)."""
    rank = tensor(op.operands[0]).rank
    axis = op.attr("axis")
    if rank and axis % rank != rank - 1:
        raise UserError(f"node {node_names(op)}: '{op.name}' along axis {axis} of a rank-{rank} tensor; the device "
                        "kernel reduces along the last axis only (run tilize first)")


CHUNKED_MIN_TILES = 17  # rows of at least this many tiles also get row-chunked (multi-pass) candidates


def row_candidates(op: Operation, max_w: int, chunked: bool = False) -> Iterator[dict[str, int]]:
    """Whole rows per core (the kernel reduces along them), any split of batches and tile rows.

    With `chunked`, rows of at least CHUNKED_MIN_TILES tiles also get candidates that hold only `chunk` tiles
    of a row in L1 at a time (a divisor of the row's tiles) and read the row three times: the grid pass takes
    them when no whole-row blocking fits L1 (they cost more, so a fitting whole-row one always wins)."""
    out = tile_shape(tensor(op.result).shape)
    last_axis_only(op)
    widths = [d for d in divisors(out.ct) if d <= max_w][::-1]
    mask = softmax_mask(op)  # a mask broadcast along batch dims: groups whose mask tiles step affinely
    offsets = [] if mask is None else [batch_offsets(tensor(mask).shape, tensor(op.result).shape)]
    for batches in batch_groups(offsets, out.batches):  # the input has the result's shape: any grouping is affine
        for rows in divisors(out.rt):
            for width in widths:
                yield {"batches": batches, "rows": rows, "cols": out.ct, "block_w": width}
                if op.name == ttir.LAYER_NORM.name and batches * rows > 1:  # gamma / beta held (more L1, fewer reads)
                    yield {"batches": batches, "rows": rows, "cols": out.ct, "block_w": width, HOLD: 1}
                if op.name == ttir.LAYER_NORM.name and len(op.operands) > 1 \
                        and (out.batches // batches) * (out.rt // rows) > 1:  # held, read once for the whole grid
                    yield {"batches": batches, "rows": rows, "cols": out.ct, "block_w": width, HOLD: 1, PARAM_MCAST: 1}
    if not chunked or out.ct < CHUNKED_MIN_TILES or has_prologue(op):
        return
    for batches in batch_groups([], out.batches):
        for rows in divisors(out.rt):
            for chunk in divisors(out.ct)[:-1]:
                for width in [w for w in widths if chunk % w == 0]:
                    yield {"batches": batches, "rows": rows, "cols": out.ct, "block_w": width, "chunk": chunk}


def _row_sum(plan: Plan, rows: int, tiles: int, fidelity: str) -> None:
    """`reduce_row` of a sum over `tiles` tiles, `rows` times: fills, the groups, the sum of the groups."""
    groups = len(row_sum_groups(tiles))
    extra = groups if groups > 1 else 0
    plan.tile(target.DATACOPY, rows * (groups + int(groups > 1)))
    plan.tile(target.reduce_sum_key(fidelity), rows * (tiles + extra))


def static_row_tiles(plan: Plan, value: Value, first, loop, width: int, repeat: int = 1, write: bool = False) -> None:
    """Count `repeat` passes over `width` consecutive tiles of `value`'s buffer at each core's `first` tile plus
    each offset of `loop` (rows of an input, a mask or a result; a parameter row with zero offsets)."""
    first = np.broadcast_to(np.asarray(first), (plan.cores,))
    loop = np.asarray(loop)

    def pages() -> np.ndarray:
        once = (first[:, None, None] + loop[None, :, None] + np.arange(width)[None, None, :]).reshape(plan.cores, -1)
        return np.tile(once, repeat) if repeat > 1 else once

    plan.static(Buffer.of(tensor(value), plan.device), repeat * len(loop) * width, write=write, page_lists=pages)


def plan_row_op(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    shape = tile_shape(tensor(op.operands[0]).shape)
    ct = shape.ct
    rows = b["batches"] * b["rows"]
    pad_rows, pad_cols = shape.rows % TILE != 0, shape.cols % TILE != 0
    plan = Plan(device, grid, (shape.batches // b["batches"], shape.rt // b["rows"]))
    reads = 1  # times the reader reads each row
    if "chunk" in b:
        chunk = b["chunk"]
        n = ct // chunk
        reads = 3
        groups = len(row_sum_groups(chunk))
        folds = chunk_sum_groups(n)[1]

        def running_sum() -> None:  # a zero start, per chunk the grouped sum plus the sum so far, a copy out;
            # per group of chunks (two levels) a zero start, and its fold into the row's sum (a fill, 2 tiles)
            plan.tile(target.DATACOPY, rows * (1 + n * (groups + int(groups > 1)) + 1 + 2 * folds))
            plan.tile(target.reduce_sum_key(fidelity),
                      rows * (n * (chunk + (groups if groups > 1 else 0) + 1) + 2 * folds))

        if op.name == ttir.SOFTMAX.name:
            # pass 1: the running max (an -inf start, per chunk a fill, the chunk's last tile copied and masked)
            plan.tile(target.DATACOPY, rows * (1 + n + 2 * n * int(pad_cols)))
            plan.tile(target.REDUCE_MAX, rows * (ct + n))
            # passes 2 and 3: exp(x - max) with the padding columns re-zeroed, twice
            plan.tile(target.binary_key("sub"), 2 * rows * ct)
            plan.tile(target.sfpu_key("exp"), 2 * rows * ct)
            plan.tile(target.DATACOPY, 2 * rows * ct * int(pad_cols))
            running_sum()  # pass 2, then 1 / sum
            plan.tile(target.sfpu_key("recip"), rows)
            plan.tile(target.binary_key("mul"), rows * ct)  # pass 3: x 1/sum, padding rows zeroed
            plan.tile(target.DATACOPY, rows * ct * int(pad_rows))
        elif is_rms(op):  # no mean: two passes (x^2 summed, then x rstd gamma), x copied in each
            reads = 2
            plan.tile(target.sfpu_key("mul_scalar"), rows)
            plan.tile(target.DATACOPY, 2 * rows * ct)
            plan.tile(target.sfpu_key("square"), rows * ct)
            running_sum()
            plan.tile(target.sfpu_key("add_scalar"), rows)
            plan.tile(target.sfpu_key("rsqrt"), rows)
            plan.tile(target.binary_key("mul"), 2 * rows * ct)
            plan.tile(target.DATACOPY, rows * ct * int(pad_rows))
        else:
            running_sum()  # pass 1: the mean
            plan.tile(target.sfpu_key("mul_scalar"), 2 * rows)
            # passes 2 and 3: centred values with the padding columns re-zeroed, twice; squared once
            plan.tile(target.binary_key("sub"), 2 * rows * ct)
            plan.tile(target.DATACOPY, 2 * rows * ct * int(pad_cols))
            plan.tile(target.sfpu_key("square"), rows * ct)
            running_sum()  # pass 2: the variance, then rstd
            plan.tile(target.sfpu_key("add_scalar"), rows)
            plan.tile(target.sfpu_key("rsqrt"), rows)
            plan.tile(target.binary_key("mul"), 2 * rows * ct)  # pass 3: x rstd x gamma (+ beta), rows zeroed
            plan.tile(target.binary_key("add"), rows * ct * int(len(op.operands) > 2))
            plan.tile(target.DATACOPY, rows * ct * int(pad_rows))
    elif op.name == ttir.SOFTMAX.name:
        scaled = int(op.attr("scale") != 1.0)
        plan.tile(target.DATACOPY, rows * ct * scaled)  # x * scale (a copy, an SFPU product)
        plan.tile(target.sfpu_key("mul_scalar"), rows * ct * scaled)
        plan.tile(target.binary_key("add"), rows * ct * int(softmax_mask(op) is not None))  # + mask
        plan.tile(target.DATACOPY, rows * (1 + 2 * int(pad_cols)))  # the -inf fill; the masked last tile
        plan.tile(target.REDUCE_MAX, rows * ct)
        plan.tile(target.binary_key("sub"), rows * ct)
        plan.tile(target.sfpu_key("exp"), rows * ct)
        plan.tile(target.DATACOPY, rows * ct * (int(pad_cols) + int(pad_rows)))
        _row_sum(plan, rows, ct, fidelity)
        plan.tile(target.sfpu_key("recip"), rows)
        plan.tile(target.binary_key("mul"), rows * ct)
    else:
        has_beta = len(op.operands) > 2
        rms = is_rms(op)  # no mean: x copied twice instead of centred
        for _ in range(1 if rms else 2):
            _row_sum(plan, rows, ct, fidelity)
        plan.tile(target.sfpu_key("mul_scalar"), (1 if rms else 2) * rows)
        plan.tile(target.sfpu_key("add_scalar"), rows)
        plan.tile(target.sfpu_key("rsqrt"), rows)
        plan.tile(target.binary_key("sub"), 0 if rms else rows * ct)
        plan.tile(target.DATACOPY, rows * ct * ((1 if rms else int(pad_cols)) + int(pad_rows)))
        plan.tile(target.binary_key("mul"), 3 * rows * ct)  # the squares, x rstd, x gamma
        plan.tile(target.binary_key("add"), rows * ct * int(has_beta))

    unit = plan.unit
    first = (unit[:, 0] * b["batches"] * shape.rt + unit[:, 1] * b["rows"]) * ct
    loop = (np.arange(b["batches"])[:, None] * shape.rt * ct + np.arange(b["rows"])[None, :] * ct).ravel()

    static_row_tiles(plan, op.operands[0], first, loop, ct, repeat=reads)
    mask = softmax_mask(op)
    if mask is not None:  # the mask's tiles of each row, or once per core (held)
        offsets, step, rs, _ = mask_walk(op, b["batches"])
        mask_first = offsets[unit[:, 0] * b["batches"]] + unit[:, 1] * b["rows"] * rs
        mask_loop = (np.arange(b["batches"])[:, None] * step + np.arange(b["rows"])[None, :] * rs).ravel()
        static_row_tiles(plan, mask, mask_first, mask_loop[:1] if holds_mask(op, b) else mask_loop, ct)
    param_rows = 1 if holds_params(op, b) else rows  # gamma / beta: once per core, or once per row
    if multicasts_params(b):  # core 0 reads them, the whole grid shares them
        plan_shared_params(plan, op.operands[1:], ct, np.arange(plan.cores) == 0, plan.cores - 1)
    else:
        for param in op.operands[1:] if mask is None else ():
            static_row_tiles(plan, param, 0, np.zeros(param_rows, dtype=np.int64), ct)
    static_row_tiles(plan, op.result, first, loop, ct, write=True)
    return plan.counts()


def plan_shared_params(plan: Plan, params: list[Value], tiles: int, senders: np.ndarray, receivers: int) -> None:
    """The traffic of `share_params`: each sender (a [cores] mask) reads `tiles` tiles of every parameter (the
    others read nothing) and multicasts them to the `receivers` other cores of its rectangle."""
    count = int(senders.sum())
    sent = np.zeros(plan.cores, dtype=np.int64)
    for param in params:
        buffer = Buffer.of(tensor(param), plan.device)
        plan.masked(buffer, np.array([count * tiles]))
        plan.masked(Buffer(buffer.page, False, None), np.array([count * tiles * (1 + receivers)]))
        sent += np.where(senders, tiles * buffer.page, 0)
    plan.builder.multicast(sent, receivers)


def share_params(k: KernelBuilder, params: list[tuple[int, object]], start: Index, tiles: int,
                 args: tuple[Index, Index, Index], sender_at: tuple[Index, Index],
                 rect: tuple[Index, Index, Index, Index], receivers: int) -> None:
    """`read_params_once` for cores that share their parameters: the sender of each rectangle reads the `tiles`
    tiles from `start` (its valid columns `tiles`, the receivers' 0: they read nothing) and multicasts them to the
    `receivers` other cores of `rect`, with tt-metal's handshake (matmul_mcast.py): each receiver, its CB pages
    reserved, increments the sender's ready semaphore; the sender waits for all of them, multicasts the pages
    (the last multicast setting the receivers' valid semaphore); a receiver waits for it before its push.
    `args`: (sender?, receiver?, valid columns) of this core."""
    sender, receiver, valid = args
    for cb_index, gen in params:
        k.op("cb_reserve_back", cb=cb_index, pages=tiles)
        k.op("noc_read_tiles", gen, start, valid, cb=cb_index, rows=1, cols=tiles)
    k.op("noc_read_barrier")
    multicast_handshake(k, [(cb_index, tiles) for cb_index, _ in params], sender, receiver, sender_at, rect,
                        receivers, PARAM_READY, PARAM_VALID)
    for cb_index, _ in params:
        k.op("cb_push_back", cb=cb_index, pages=tiles)


def lower_row_op(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    shape = tile_shape(tensor(op.operands[0]).shape)

    def first_tile(unit: tuple[int, ...]) -> list[int]:
        return [(unit[0] * b["batches"] * shape.rt + unit[1] * b["rows"]) * shape.ct]

    def first_row(unit: tuple[int, ...]) -> list[int]:
        return [unit[1] * b["rows"]]

    reader_args = first_tile
    if softmax_mask(op) is not None:
        offsets, _, rs, _ = mask_walk(op, b["batches"])

        def reader_args(unit: tuple[int, ...]) -> list[int]:
            return [*first_tile(unit), int(offsets[unit[0] * b["batches"]]) + unit[1] * b["rows"] * rs]
    elif multicasts_params(b):  # core 0 (unit 0: the extra cores of a padded grid repeat the last unit) sends

        def reader_args(unit: tuple[int, ...]) -> list[int]:
            sender = int(not any(unit))
            return [*first_tile(unit), sender, 1 - sender, shape.ct * sender]

    compute = softmax_compute if op.name == ttir.SOFTMAX.name else layer_norm_compute
    if "chunk" in b:
        compute = chunked_softmax_compute if op.name == ttir.SOFTMAX.name else chunked_layer_norm_compute
    kernels = (row_reader(op, schedule, shape), compute(op, schedule, shape), row_writer(op, schedule, shape))
    kind = "softmax" if op.name == ttir.SOFTMAX.name else "layer_norm"
    return Program(kind, schedule.grid, cbs_of(op, schedule), kernels,
                   (schedule.args(reader_args), schedule.args(first_row), schedule.args(first_tile)),
                   list(op.operands))


def row_start(k: KernelBuilder, shape: TileShape, batch: Index, row: Index) -> Index:
    return k.affine(k.arg(0), (batch, shape.rt * shape.ct), (row, shape.ct))


def row_reader(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    width, blocks = b["block_w"], shape.ct // b["block_w"]
    k = KernelBuilder(op.loc)
    gens = [k.addrgen(i, tensor(v)) for i, v in enumerate(op.operands)]
    mask = softmax_mask(op)
    params = list(zip((CB_GAMMA, CB_BETA), gens[1:], strict=False)) if mask is None else []
    held = holds_params(op, b)
    if multicasts_params(b):  # core 0 to the whole grid
        share_params(k, params, 0, shape.ct, (k.arg(1), k.arg(2), k.arg(3)), (0, 0),
                     (0, 0, s.grid.x - 1, s.grid.y - 1), s.grid.num_cores - 1)
    elif held:
        read_params_once(k, params, 0, shape.ct)
    mask_held = holds_mask(op, b)
    if mask_held:
        read_params_once(k, [(CB_MASK, gens[1])], k.arg(1), shape.ct)
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row:
        start = row_start(k, shape, batch, row)

        def read_block(block: Index) -> None:
            k.op("cb_reserve_back", cb=CB_IN0, pages=width)
            k.op("noc_read_tiles", gens[0], k.affine(start, (block, width)), cb=CB_IN0, rows=1, cols=width)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_IN0, pages=width)

        if "chunk" in b:
            # a chunked row is read three times; the last pass takes the parameters' block with each input block
            # (the input CB holds one chunk, so the compute kernel needs them interleaved)
            with k.loop(1 if is_rms(op) else 2), k.loop(blocks) as block:  # (an RMS norm has no mean pass)
                read_block(block)
            with k.loop(blocks) as block:
                read_block(block)
                for cb, gen in params:
                    k.op("cb_reserve_back", cb=cb, pages=width)
                    k.op("noc_read_tiles", gen, k.mul(block, width), cb=cb, rows=1, cols=width)
                if params:
                    k.op("noc_read_barrier")
                for cb, _ in params:
                    k.op("cb_push_back", cb=cb, pages=width)
            return k.region()
        with k.loop(blocks) as block:
            read_block(block)
        if mask is not None and not mask_held:  # the row's mask tiles, block by block
            _, step, rs, _ = mask_walk(op, b["batches"])
            mask_start = k.affine(k.arg(1), (batch, step), (row, rs))
            with k.loop(blocks) as block:
                k.op("cb_reserve_back", cb=CB_MASK, pages=width)
                k.op("noc_read_tiles", gens[1], k.affine(mask_start, (block, width)), cb=CB_MASK, rows=1, cols=width)
                k.op("noc_read_barrier")
                k.op("cb_push_back", cb=CB_MASK, pages=width)
        if params and not held:
            with k.loop(blocks) as block:
                for cb, gen in params:
                    k.op("cb_reserve_back", cb=cb, pages=width)
                    k.op("noc_read_tiles", gen, k.mul(block, width), cb=cb, rows=1, cols=width)
                k.op("noc_read_barrier")
                for cb, _ in params:
                    k.op("cb_push_back", cb=cb, pages=width)
    return k.region()


def read_params_once(k: KernelBuilder, params: list[tuple[int, object]], start: Index, tiles: int) -> None:
    """The parameters' `tiles` tiles from tile `start` into their CBs, once, for every row of the core."""
    for cb_index, gen in params:
        k.op("cb_reserve_back", cb=cb_index, pages=tiles)
        k.op("noc_read_tiles", gen, start, cb=cb_index, rows=1, cols=tiles)
    k.op("noc_read_barrier")
    for cb_index, _ in params:
        k.op("cb_push_back", cb=cb_index, pages=tiles)


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
               sfpu: tuple[tuple[str, float], ...] = (), offset: int = 0) -> None:
    """Dst = reduce of `tiles` tiles of cb along rows (column 0), then SFPU ops, packed into out_cb.

    A sum runs in groups (`footprint.row_sum_groups`), each group in its own Dst slot; the group sums are
    packed and reduced once more, so no chain of bf16 roundings runs the whole row. Scaling (a mean's
    1 / width) belongs in `sfpu` (mul_scalar: float32, one rounding), not in a bf16-rounded reduce scaler.
    The tiles start `offset` pages past cb's front.
    """
    groups = row_sum_groups(tiles) if kind == "sum" else [(0, tiles)]
    start = float("-inf") if kind == "max" else 0.0
    k.op("tile_regs_acquire")
    k.op("fill_tiles", count=len(groups), value=start)
    for slot, (first, count) in enumerate(groups):
        k.op("reduce_tiles", kind=kind, dim="row", cb=cb, offset=offset + first, rows=1, cols=count, dst=slot,
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
    src = CB_SUM if has_prologue(op) else CB_IN0
    mask_held = holds_mask(op, b)
    k = KernelBuilder(op.loc)
    if mask_held:
        k.op("cb_wait_front", cb=CB_MASK, pages=ct)
    with k.loop(b["batches"]), k.loop(b["rows"]) as row:
        k.op("cb_wait_front", cb=CB_IN0, pages=ct)
        if has_prologue(op):  # x * scale (+ mask), block by block, into CB_SUM: the phases of the unfused eltwise
            if mask_held:  # unrolled over the row's blocks
                for block in range(ct // width):
                    scale_and_mask_block(k, op, width, block * width)
            else:
                with k.loop(ct // width):
                    scale_and_mask_block(k, op, width, None)
            k.op("cb_wait_front", cb=CB_SUM, pages=ct)
        # Row max; the last tile's padding columns are masked to -inf (they would beat negative rows).
        if padded:
            k.op("tile_regs_acquire")
            k.op("copy_tiles", cb=src, offset=ct - 1, rows=1, cols=1)
            mask_block(k, shape, 0, ct - 1, 1, rows=False, cols=True, fill=float("-inf"))
            k.pack_block(CB_MASKED, 1)
            k.op("cb_wait_front", cb=CB_MASKED, pages=1)
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=float("-inf"))
        if ct - padded:
            k.op("reduce_tiles", kind="max", dim="row", cb=src, rows=1, cols=ct - padded, fidelity=s.fidelity)
        if padded:
            k.op("reduce_tiles", kind="max", dim="row", cb=CB_MASKED, rows=1, cols=1, fidelity=s.fidelity)
        k.pack_block(CB_STAT, 1)
        if padded:
            k.op("cb_pop_front", cb=CB_MASKED, pages=1)
        # exp(x - max), padding columns back to zero.
        k.op("cb_wait_front", cb=CB_STAT, pages=1)
        with k.loop(ct // width) as block:
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="sub", cb_a=src, cb_b=CB_STAT, b_col_stride=0, bcast="col", rows=1, cols=width)
            k.op("sfpu_tiles", fn="exp", count=width)
            mask_block(k, shape, 0, k.mul(block, width), width, rows=False, cols=True)
            k.pack_block(CB_WIDE, width)
            k.op("cb_pop_front", cb=src, pages=width)
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
    if mask_held:
        k.op("cb_pop_front", cb=CB_MASK, pages=ct)
    return k.region()


def scale_and_mask_block(k: KernelBuilder, op: Operation, width: int, mask_offset: int | None) -> None:
    """One block of a softmax's x * scale (+ mask) from CB_IN0's front into CB_SUM, with the unfused eltwise's
    phases and formats (a copy with the SFPU product packed to CB_SCALED, an FPU add of the mask's tiles; without
    a mask the product is the sum). The mask's block is at CB_MASK's front, or with `mask_offset` (a held mask)
    at that offset. Pops the x block (and the mask's, unless held)."""
    mask = softmax_mask(op)
    scale = float(op.attr("scale"))
    first = CB_IN0
    if scale != 1.0:
        k.op("tile_regs_acquire")
        k.op("copy_tiles", cb=CB_IN0, rows=1, cols=width, col_stride=1)
        k.op("sfpu_tiles", fn="mul_scalar", count=width, param=scale)
        if mask is None:  # x * scale + 0 (an all-zero mask fuse dropped): the product is the sum
            k.pack_block(CB_SUM, width)
            k.op("cb_pop_front", cb=CB_IN0, pages=width)
            return
        k.pack_block(CB_SCALED, width)
        k.op("cb_wait_front", cb=CB_SCALED, pages=width)
        first = CB_SCALED
    assert mask is not None
    out, source = tile_shape(tensor(op.result).shape), tile_shape(tensor(mask).shape)
    bcast = "none" if source.rows == out.rows else "row"
    if mask_offset is None:
        k.op("cb_wait_front", cb=CB_MASK, pages=width)
    k.op("tile_regs_acquire")
    at = {"b_offset": mask_offset} if mask_offset else {}
    k.op("binary_tiles", op="add", cb_a=first, cb_b=CB_MASK, **at, bcast=bcast, rows=1, cols=width)
    k.pack_block(CB_SUM, width)
    if scale != 1.0:
        k.op("cb_pop_front", cb=CB_SCALED, pages=width)
    if mask_offset is None:
        k.op("cb_pop_front", cb=CB_MASK, pages=width)
    k.op("cb_pop_front", cb=CB_IN0, pages=width)


def fill_stat(k: KernelBuilder, cb: int, value: float) -> None:
    """A one-tile statistic CB starts as `value` (the start of a running max or sum)."""
    k.op("tile_regs_acquire")
    k.op("fill_tiles", count=1, value=value)
    k.pack_block(cb, 1)


def add_chunk_sum(k: KernelBuilder, cb: int, chunk: int, acc: int, fidelity: str) -> None:
    """acc (a one-tile running sum in column 0, zeros elsewhere) += the row sums of the `chunk` tiles waiting
    in cb, summed in groups (`row_sum_groups`) as `reduce_row` does; pops the chunk."""
    groups = row_sum_groups(chunk)
    k.op("cb_wait_front", cb=cb, pages=chunk)
    k.op("tile_regs_acquire")
    k.op("fill_tiles", count=len(groups), value=0.0)
    for slot, (first, count) in enumerate(groups):
        k.op("reduce_tiles", kind="sum", dim="row", cb=cb, offset=first, rows=1, cols=count, dst=slot,
             fidelity=fidelity)
    if len(groups) > 1:
        k.pack_block(CB_GROUPS, len(groups))
        k.op("cb_wait_front", cb=CB_GROUPS, pages=len(groups))
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=0.0)
        k.op("reduce_tiles", kind="sum", dim="row", cb=CB_GROUPS, rows=1, cols=len(groups), fidelity=fidelity)
        k.op("cb_pop_front", cb=CB_GROUPS, pages=len(groups))
    k.op("cb_wait_front", cb=acc, pages=1)
    k.op("reduce_tiles", kind="sum", dim="row", cb=acc, rows=1, cols=1, fidelity=fidelity)
    k.op("cb_pop_front", cb=acc, pages=1)
    k.op("cb_pop_front", cb=cb, pages=chunk)
    k.pack_block(acc, 1)


CHUNK_CHAIN = 16  # running sums over more row chunks than this go in two levels


def chunk_sum_groups(chunks: int) -> tuple[int, int]:
    """(chunks per group, full groups) of the running sum over `chunks` row chunks: one chain (0, 0) up to
    CHUNK_CHAIN chunks; beyond, groups of about sqrt(chunks) chunks, each summed on its own (CB_CHUNK_GROUP)
    and then folded into the row's sum, the chunks left over added to it directly. A single chain of
    hundreds of chunk sums stalls in bf16 once the sum so far is 256 times a chunk's (a 65,537-wide softmax
    in 683 chunks summed its exp values 20% short); two levels keep both chains about sqrt(chunks) long."""
    if chunks <= CHUNK_CHAIN:
        return 0, 0
    size = math.isqrt(chunks)
    return size, chunks // size


def summed_chunks(k: KernelBuilder, chunks: int, acc: int, fidelity: str,
                  add_chunk: Callable[[Index, int], None]) -> None:
    """acc = the running sum over the row's chunks, starting from zero: `add_chunk(c, cb)` adds chunk c's
    sum into the one-tile running sum `cb` (`add_chunk_sum`); two levels beyond CHUNK_CHAIN chunks."""
    size, full = chunk_sum_groups(chunks)
    fill_stat(k, acc, 0.0)
    if not full:
        with k.loop(chunks) as c:
            add_chunk(c, acc)
        return
    with k.loop(full) as group:
        fill_stat(k, CB_CHUNK_GROUP, 0.0)
        with k.loop(size) as c:
            add_chunk(k.add(k.mul(group, size), c), CB_CHUNK_GROUP)
        k.op("cb_wait_front", cb=CB_CHUNK_GROUP, pages=1)
        k.op("cb_wait_front", cb=acc, pages=1)
        k.op("tile_regs_acquire")
        k.op("fill_tiles", count=1, value=0.0)
        k.op("reduce_tiles", kind="sum", dim="row", cb=CB_CHUNK_GROUP, rows=1, cols=1, fidelity=fidelity)
        k.op("reduce_tiles", kind="sum", dim="row", cb=acc, rows=1, cols=1, fidelity=fidelity)
        k.op("cb_pop_front", cb=CB_CHUNK_GROUP, pages=1)
        k.op("cb_pop_front", cb=acc, pages=1)
        k.pack_block(acc, 1)
    if chunks > size * full:
        with k.loop(chunks - size * full) as c:
            add_chunk(k.add(c, size * full), acc)


def apply_to_stat(k: KernelBuilder, cb: int, sfpu: tuple[tuple[str, float], ...]) -> None:
    """A one-tile statistic CB = SFPU functions of itself (a copy into Dst), left waiting at the front."""
    k.op("cb_wait_front", cb=cb, pages=1)
    k.op("tile_regs_acquire")
    k.op("copy_tiles", cb=cb, rows=1, cols=1)
    for fn, param in sfpu:
        k.op("sfpu_tiles", fn=fn, count=1, param=param)
    k.op("cb_pop_front", cb=cb, pages=1)
    k.pack_block(cb, 1)
    k.op("cb_wait_front", cb=cb, pages=1)


def chunked_softmax_compute(op: Operation, s: Schedule, shape: TileShape):
    """Softmax of rows longer than L1 holds, in three passes over chunks of `chunk` tiles (the reader reads
    the row three times): the running max, the running sum of exp(x - max), then exp(x - max) / sum.

    The running statistics live in one-tile CBs and are carried from chunk to chunk by reducing them once
    more with the next chunk (a reduce writes column 0 and keeps the fill elsewhere: -inf for the max, 0 for
    the sum), so a chunk's reduce starts from the row so far. The max is exact whatever the chunking, so the
    exp values are those of the whole-row kernel; the sum is grouped per chunk (`row_sum_groups`), then
    chained over the chunks."""
    b = s.blocking
    width, ct, chunk = b["block_w"], shape.ct, b["chunk"]
    chunks = ct // chunk
    padded = shape.cols % TILE != 0
    k = KernelBuilder(op.loc)

    def exp_block(c: Index, block: Index) -> None:
        k.op("cb_wait_front", cb=CB_IN0, pages=width)
        k.op("tile_regs_acquire")
        k.op("binary_tiles", op="sub", cb_a=CB_IN0, cb_b=CB_STAT, b_col_stride=0, bcast="col", rows=1, cols=width)
        k.op("sfpu_tiles", fn="exp", count=width)
        mask_block(k, shape, 0, k.affine(k.mul(c, chunk), (block, width)), width, rows=False, cols=True)
        k.pack_block(CB_WIDE, width)
        k.op("cb_pop_front", cb=CB_IN0, pages=width)

    with k.loop(b["batches"]), k.loop(b["rows"]) as row:
        # Pass 1: the running max; each chunk's last tile has its padding columns masked to -inf (a no-op but
        # for the row's last tile).
        fill_stat(k, CB_STAT, float("-inf"))
        with k.loop(chunks) as c:
            k.op("cb_wait_front", cb=CB_IN0, pages=chunk)
            if padded:
                k.op("tile_regs_acquire")
                k.op("copy_tiles", cb=CB_IN0, offset=chunk - 1, rows=1, cols=1)
                mask_block(k, shape, 0, k.add(k.mul(c, chunk), chunk - 1), 1, rows=False, cols=True,
                           fill=float("-inf"))
                k.pack_block(CB_MASKED, 1)
                k.op("cb_wait_front", cb=CB_MASKED, pages=1)
            k.op("cb_wait_front", cb=CB_STAT, pages=1)
            k.op("tile_regs_acquire")
            k.op("fill_tiles", count=1, value=float("-inf"))
            if chunk - padded:
                k.op("reduce_tiles", kind="max", dim="row", cb=CB_IN0, rows=1, cols=chunk - padded,
                     fidelity=s.fidelity)
            if padded:
                k.op("reduce_tiles", kind="max", dim="row", cb=CB_MASKED, rows=1, cols=1, fidelity=s.fidelity)
            k.op("reduce_tiles", kind="max", dim="row", cb=CB_STAT, rows=1, cols=1, fidelity=s.fidelity)
            k.op("cb_pop_front", cb=CB_STAT, pages=1)
            if padded:
                k.op("cb_pop_front", cb=CB_MASKED, pages=1)
            k.op("cb_pop_front", cb=CB_IN0, pages=chunk)
            k.pack_block(CB_STAT, 1)
        k.op("cb_wait_front", cb=CB_STAT, pages=1)
        # Pass 2: the running sum of exp(x - max), one grouped sum per chunk plus the sum so far.
        def add_exp_chunk(c: Index, acc: int) -> None:
            with k.loop(chunk // width) as block:
                exp_block(c, block)
            add_chunk_sum(k, CB_WIDE, chunk, acc, s.fidelity)

        summed_chunks(k, chunks, CB_STAT2, s.fidelity, add_exp_chunk)
        apply_to_stat(k, CB_STAT2, (("recip", 0.0),))
        # Pass 3: exp(x - max) again, times 1 / sum, padding rows zeroed.
        with k.loop(chunks) as c, k.loop(chunk // width) as block:
            exp_block(c, block)
            k.op("cb_wait_front", cb=CB_WIDE, pages=width)
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="mul", cb_a=CB_WIDE, cb_b=CB_STAT2, b_col_stride=0, bcast="col", rows=1,
                 cols=width)
            mask_block(k, shape, k.add(k.arg(0), row), k.affine(k.mul(c, chunk), (block, width)), width, rows=True,
                       cols=False)
            k.pack_block(CB_OUT, width)
            k.op("cb_pop_front", cb=CB_WIDE, pages=width)
        k.op("cb_pop_front", cb=CB_STAT2, pages=1)
        k.op("cb_pop_front", cb=CB_STAT, pages=1)
    return k.region()


def chunked_layer_norm_compute(op: Operation, s: Schedule, shape: TileShape):
    """Layer norm of rows longer than L1 holds, in three passes over chunks of `chunk` tiles (the reader
    reads the row three times, the parameters once, with the last pass): the running sum (mean = sum / width),
    the running sum of squared centred values (rstd = rsqrt(var + eps)), then centred x rstd x gamma (+ beta).
    The running sums live in one-tile CBs (`add_chunk_sum`)."""
    b = s.blocking
    width, ct, chunk = b["block_w"], shape.ct, b["chunk"]
    chunks = ct // chunk
    has_beta = len(op.operands) > 2
    inverse_width = 1.0 / shape.cols
    rms = is_rms(op)
    k = KernelBuilder(op.loc)

    def centred_block(c: Index, block: Index, out_cb: int, square: bool) -> None:
        k.op("cb_wait_front", cb=CB_IN0, pages=width)
        k.op("tile_regs_acquire")
        if rms:  # x itself (its padding is zero)
            k.op("copy_tiles", cb=CB_IN0, rows=1, cols=width)
        else:
            k.op("binary_tiles", op="sub", cb_a=CB_IN0, cb_b=CB_STAT, b_col_stride=0, bcast="col", rows=1, cols=width)
            mask_block(k, shape, 0, k.affine(k.mul(c, chunk), (block, width)), width, rows=False, cols=True)
        if square:
            k.op("sfpu_tiles", fn="square", count=width)
        k.pack_block(out_cb, width)
        k.op("cb_pop_front", cb=CB_IN0, pages=width)

    with k.loop(b["batches"]), k.loop(b["rows"]) as row:
        if not rms:  # Pass 1: the mean.
            summed_chunks(k, chunks, CB_STAT, s.fidelity,
                          lambda c, acc: add_chunk_sum(k, CB_IN0, chunk, acc, s.fidelity))
            apply_to_stat(k, CB_STAT, (("mul_scalar", inverse_width),))
        # Pass 2: rstd from the running sum of squared centred values.
        def add_square_chunk(c: Index, acc: int) -> None:
            with k.loop(chunk // width) as block:
                centred_block(c, block, CB_WIDE2, square=True)
            add_chunk_sum(k, CB_WIDE2, chunk, acc, s.fidelity)

        summed_chunks(k, chunks, CB_STAT2, s.fidelity, add_square_chunk)
        apply_to_stat(k, CB_STAT2, (("mul_scalar", inverse_width), ("add_scalar", float(op.attr("epsilon"))),
                                    ("rsqrt", 0.0)))
        # Pass 3: centred x rstd x gamma (+ beta), padding rows zeroed.
        with k.loop(chunks) as c, k.loop(chunk // width) as block:
            centred_block(c, block, CB_WIDE, square=False)
            k.op("cb_wait_front", cb=CB_WIDE, pages=width)
            last = scale_and_shift(k, width, has_beta)
            mask_block(k, shape, k.add(k.arg(0), row), k.affine(k.mul(c, chunk), (block, width)), width, rows=True,
                       cols=False)
            k.pack_block(CB_OUT, width)
            for cb in block_pops(last, has_beta, held=False):
                k.op("cb_pop_front", cb=cb, pages=width)
        k.op("cb_pop_front", cb=CB_STAT2, pages=1)
        if not rms:
            k.op("cb_pop_front", cb=CB_STAT, pages=1)
    return k.region()


def scale_and_shift(k: KernelBuilder, width: int, has_beta: bool, stat_offset: int = 0,
                    param_offset: int | None = None) -> int:
    """Layer norm's last step on one block of centred values (CB_WIDE) into Dst: x rstd (CB_STAT2's tile
    `stat_offset`, one column broadcast), x gamma, + beta when there is one. Gamma / beta are the block's
    `width` tiles at their CBs' fronts, or with `param_offset` (held parameters, waited for once) the tiles
    from that offset. Returns the CB of the product popped after packing (`block_pops`)."""
    if param_offset is None:
        k.op("cb_wait_front", cb=CB_GAMMA, pages=width)
    k.op("tile_regs_acquire")
    at = {"b_offset": stat_offset} if stat_offset else {}
    k.op("binary_tiles", op="mul", cb_a=CB_WIDE, cb_b=CB_STAT2, **at, b_col_stride=0, bcast="col", rows=1, cols=width)
    k.pack_block(CB_TMP, width)
    k.op("cb_wait_front", cb=CB_TMP, pages=width)
    k.op("tile_regs_acquire")
    param_at = {"b_offset": param_offset} if param_offset else {}
    k.op("binary_tiles", op="mul", cb_a=CB_TMP, cb_b=CB_GAMMA, **param_at, bcast="row", rows=1, cols=width)
    if has_beta:
        k.pack_block(CB_TMP2, width)
        if param_offset is None:
            k.op("cb_wait_front", cb=CB_BETA, pages=width)
        k.op("cb_wait_front", cb=CB_TMP2, pages=width)
        k.op("tile_regs_acquire")
        k.op("binary_tiles", op="add", cb_a=CB_TMP2, cb_b=CB_BETA, **param_at, bcast="row", rows=1, cols=width)
    return CB_TMP


def block_pops(last: int, has_beta: bool, held: bool) -> tuple[int, ...]:
    """The CBs a block of `scale_and_shift` pops after packing (held parameters stay)."""
    beta = () if not has_beta else (CB_TMP2,) if held else (CB_TMP2, CB_BETA)
    return (CB_WIDE, last, *(() if held else (CB_GAMMA,)), *beta)


def param_cbs(has_beta: bool) -> tuple[int, ...]:
    return (CB_GAMMA, CB_BETA) if has_beta else (CB_GAMMA,)


def centred_block(k: KernelBuilder, shape: TileShape, width: int, rms: bool, stat_offset: int, col_tile: Index) -> None:
    """One block of CB_IN0's front minus the row's mean (CB_STAT's tile `stat_offset`, one column broadcast), the
    padding columns zeroed (from tile column `col_tile`), into CB_WIDE; an RMS norm's is x itself (a copy).
    Pops the block."""
    k.op("tile_regs_acquire")
    if rms:
        k.op("copy_tiles", cb=CB_IN0, rows=1, cols=width)
    else:
        at = {"b_offset": stat_offset} if stat_offset else {}
        k.op("binary_tiles", op="sub", cb_a=CB_IN0, cb_b=CB_STAT, **at, b_col_stride=0, bcast="col", rows=1,
             cols=width)
        mask_block(k, shape, 0, col_tile, width, rows=False, cols=True)
    k.pack_block(CB_WIDE, width)
    k.op("cb_pop_front", cb=CB_IN0, pages=width)


def squares(k: KernelBuilder, first: int, tiles: int, width: int) -> None:
    """CB_WIDE2 = the squares of CB_WIDE's `tiles` tiles from `first` past its front (waited for here), block by
    block, unrolled (static offsets): the FPU product of each tile with itself, the bits of an SFPU square of the
    same value (the exact product rounded once to the Dst format)."""
    k.op("cb_wait_front", cb=CB_WIDE, pages=first + tiles)
    for block in range(tiles // width):
        at = {"a_offset": first + block * width, "b_offset": first + block * width} if first + block * width else {}
        k.op("tile_regs_acquire")
        k.op("binary_tiles", op="mul", cb_a=CB_WIDE, cb_b=CB_WIDE, **at, rows=1, cols=width)
        k.pack_block(CB_WIDE2, width)


def layer_norm_compute(op: Operation, s: Schedule, shape: TileShape):
    b = s.blocking
    width, ct = b["block_w"], shape.ct
    has_beta = len(op.operands) > 2
    inverse_width = 1.0 / shape.cols
    rms = is_rms(op)
    held = holds_params(op, b)
    k = KernelBuilder(op.loc)
    if held:
        for cb in param_cbs(has_beta):
            k.op("cb_wait_front", cb=cb, pages=ct)
    with k.loop(b["batches"]), k.loop(b["rows"]) as row:
        k.op("cb_wait_front", cb=CB_IN0, pages=ct)
        if not rms:
            reduce_row(k, CB_IN0, ct, CB_STAT, "sum", s.fidelity, sfpu=(("mul_scalar", inverse_width),))
            k.op("cb_wait_front", cb=CB_STAT, pages=1)
        # Centred values (kept), padding columns zeroed (an RMS norm: x itself), then their squares.
        with k.loop(ct // width) as block:
            centred_block(k, shape, width, rms, 0, k.mul(block, width))
        if not rms:
            k.op("cb_pop_front", cb=CB_STAT, pages=1)
        squares(k, 0, ct, width)
        # rstd = rsqrt(mean of squares + eps)
        k.op("cb_wait_front", cb=CB_WIDE2, pages=ct)
        reduce_row(k, CB_WIDE2, ct, CB_STAT2, "sum", s.fidelity,
                   sfpu=(("mul_scalar", inverse_width), ("add_scalar", float(op.attr("epsilon"))), ("rsqrt", 0.0)))
        k.op("cb_pop_front", cb=CB_WIDE2, pages=ct)
        # centred * rstd * gamma (+ beta), padding rows zeroed.
        k.op("cb_wait_front", cb=CB_WIDE, pages=ct)
        k.op("cb_wait_front", cb=CB_STAT2, pages=1)

        def normalise(block: Index, param_offset: int | None) -> None:
            last = scale_and_shift(k, width, has_beta, param_offset=param_offset)
            mask_block(k, shape, k.add(k.arg(0), row), k.mul(block, width), width, rows=True, cols=False)
            k.pack_block(CB_OUT, width)
            for cb in block_pops(last, has_beta, held):
                k.op("cb_pop_front", cb=cb, pages=width)

        if held:  # unrolled: each block's gamma / beta tiles at a static offset into the held row
            for block in range(ct // width):
                normalise(block, block * width)
        else:
            with k.loop(ct // width) as block:
                normalise(block, None)
        k.op("cb_pop_front", cb=CB_STAT2, pages=1)
    if held:
        for cb in param_cbs(has_beta):
            k.op("cb_pop_front", cb=cb, pages=ct)
    return k.region()


class RowOp(DeviceOp):
    """A row op along the last axis: softmax and layer norm share their units, CB plan, counts and kernels;
    they differ in the Dst block width of their candidates."""

    block_width = HALF_DST

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        from ttc.passes.ops.row_split import split_candidates

        yield from row_candidates(op, self.block_width, chunked=True)
        yield from split_candidates(op, self.block_width)

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        from ttc.passes.ops import row_split

        if row_split.is_split(blocking):
            return row_split.split_units(op, blocking)
        out = tile_shape(tensor(op.result).shape)
        return (out.batches // blocking["batches"], out.rt // blocking["rows"], out.ct // blocking["cols"])

    def grid_shape(self, op: Operation, blocking: dict[str, int]) -> tuple[int, int] | None:
        from ttc.passes.ops import row_split

        return row_split.split_grid(op, blocking) if row_split.is_split(blocking) else None

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        from ttc.passes.ops import row_split

        return row_split.split_cbs(op, blocking) if row_split.is_split(blocking) else row_op_cbs(op, blocking)

    def scratch(self, op: Operation, blocking: dict[str, int]) -> list[TensorType]:
        from ttc.passes.ops import row_split

        return [row_split.scratch_type(op, blocking)] if row_split.is_split(blocking) else []

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        from ttc.passes.ops import row_split

        if row_split.is_split(blocking):
            return row_split.plan_split(op, device, blocking, fidelity, grid)
        return plan_row_op(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        from ttc.passes.ops import row_split

        return row_split.lower_split(op) if row_split.is_split(schedule_of(op).blocking) else lower_row_op(op)


class SoftmaxOp(RowOp):
    """Softmax along the last axis."""

    kind = "softmax"
    op_names = frozenset({ttir.SOFTMAX.name})


class LayerNormOp(RowOp):
    """Layer normalization along the last axis (a block is held twice in Dst: blocks of up to 4 tiles)."""

    kind = "layer_norm"
    op_names = frozenset({ttir.LAYER_NORM.name})
    block_width = LN_BLOCK_W


SOFTMAX = register(SoftmaxOp())
LAYER_NORM = register(LayerNormOp())
