"""The fused attention device op (`ttir.attention`: softmax(Q @ K^T * scale (+ mask)) @ V), flash-attention style
as tt-metal's SDPA: the scores never leave L1.

`passes/attention.py` (the grid pass's last step) builds it from a plain matmul, the softmax that reads its product
only (with the scale and mask `fuse` folded into it) and the plain matmul that reads the probabilities only, when
it fits L1 and the cost model ranks it below the three programs.

Each core owns `rows` tile rows of `batches` consecutive (batch, head) matrices. Per batch the reader reads that
matrix's K^T ([kt, ct] tiles) and V ([ct, nt] tiles) once into CBs that hold them for all the core's rows; per tile
row it reads the row of Q (kt tiles) and, unless the core holds it, the row's mask tiles. Per tile row the compute
kernel then runs, op for op, what the three unfused programs run on that row:

- the scores row Q @ K^T (1 x ct tiles, in blocks of `block_w` columns: `matmul_tiles {accumulate = false}`
  over the kt tiles, one accumulation chain as the unfused matmul's, whose K of at most SHORT_K_TILES tiles is one chunk), packed in the
  unfused product's format into CB_SCORES;
- the softmax kernel's steps on it (row_ops.softmax_compute: x * scale (+ mask) block by block, the max with the
  padding columns masked, exp(x - max), the grouped sum, 1 / sum, the product with the padding rows zeroed),
  packed in the unfused softmax's format into CB_PROBS;
- probabilities @ V (1 x nt tiles in blocks of `out_w`), accumulated in the unfused matmul's chunks of K
  (`matmul.accumulation_tiles`: each chunk a fresh chain, its sum added in bf16 to the running total), packed into
  the output CB, which the writer writes.

The formats of every CB the values pass through are the unfused programs' (the scores' and probabilities' element
types are the op's `scores_format` and `probs_format`), so the result is bit for bit the unfused graph's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import ScalarType
from ttc.passes.ops.counting import Plan, Weights, format_name
from ttc.passes.ops.geometry import (
    CB_BIASED,
    CB_CHUNK,
    CB_GROUPS,
    CB_MASKED,
    CB_OUT,
    CB_STAT,
    CB_STAT2,
    CB_TMP,
    CB_TMP2,
    CB_TOTAL,
    CB_WIDE,
    HALF_DST,
    TILE,
    TileShape,
    affine_step,
    batch_groups,
    batch_offsets,
    cb,
    divisors,
    double,
    tensor,
    tile_shape,
    work_format,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.matmul import SHORT_K_TILES, accumulation_tiles, packed_add
from ttc.passes.ops.program import Program, Schedule, cbs_of, schedule_of
from ttc.passes.ops.registry import register
from ttc.passes.ops.row_ops import mask_block, reduce_row, row_sum_groups, static_row_tiles

CB_Q, CB_KT, CB_V, CB_MASK = 0, 1, 2, 3
CB_SCORES, CB_PROBS = 4, 5  # a row of scores (the softmax's input) and of probabilities (the second product's)
CB_BIAS_ROW = 6  # a row of the scores' bias (the unfused matmul's residual)
CB_SUM, CB_SCALED = CB_TMP, CB_TMP2  # x * scale + mask (row_ops' names), and a block of x * scale


@dataclass(frozen=True)
class AttentionShape:
    """Q [batches, rt, kt] @ K^T [kt, ct] -> scores [rt, ct]; probabilities @ V [ct, nt] -> [rt, nt], in tiles,
    with each batch's first tile in Q, K^T, V and the mask (None: no mask)."""

    batches: int
    rt: int
    kt: int
    ct: int
    nt: int
    scores: TileShape  # the logical scores (rows, cols for the padding masks)
    q_offsets: np.ndarray = field(compare=False)
    k_offsets: np.ndarray = field(compare=False)
    v_offsets: np.ndarray = field(compare=False)
    mask_offsets: np.ndarray | None = field(compare=False)
    mask_rows: bool = False  # the mask has a tile row per scores tile row (else one row broadcast along rows)
    bias_offsets: np.ndarray | None = field(compare=False, default=None)  # the scores' bias (laid out as they are)
    q_row_stride: int = 0  # tiles from one tile row of Q to the next in its buffer (kt, or a view's stride)
    v_row_stride: int = 0  # the same for V (nt, or a view's)
    out_offsets: np.ndarray | None = field(compare=False, default=None)  # each batch's first tile in the result
    out_row_stride: int = 0  # tiles from one tile row of the result to the next (nt, or a view's)


def attention_mask(op: Operation) -> Value | None:
    return op.operands[3] if len(op.operands) > 3 + int(bool(op.attributes.get("bias"))) else None


def scores_bias(op: Operation) -> Value | None:
    """The tensor added to the scores before the softmax (`bias = true`: the last operand; the unfused matmul's
    residual), or None."""
    return op.operands[-1] if op.attributes.get("bias") else None


def view_of(op: Operation, name: str) -> tuple[int, np.ndarray] | None:
    """(row stride, first tile of each batch) of the operand read through a tile view (`query_view`, `value_view`;
    ttir.attention_views), or None."""
    view = op.attributes.get(name)
    return None if view is None else (int(view[0]), np.asarray(view[1:], dtype=np.int64))


def attention_shape(op: Operation) -> AttentionShape:
    kt, out = tensor(op.operands[1]).shape, ttir.attention_result_shape(op)
    q, v = ttir.attention_views(op)
    scores_shape = ttir.matmul_shape(q, kt)
    assert scores_shape is not None
    scores, result = tile_shape(scores_shape), tile_shape(out)
    mask = attention_mask(op)
    mask_offsets, mask_rows = None, False
    if mask is not None:
        mask_offsets = batch_offsets(tensor(mask).shape, scores_shape)
        mask_rows = tile_shape(tensor(mask).shape).rows == scores.rows
    bias = scores_bias(op)
    bias_offsets = None if bias is None else np.arange(scores.batches, dtype=np.int64) * scores.matrix_tiles
    q_view, v_view, out_view = (view_of(op, name) for name in ("query_view", "value_view", "result_view"))
    q_offsets = batch_offsets(q, scores_shape) if q_view is None else q_view[1]
    v_offsets = batch_offsets(v, out) if v_view is None else v_view[1]
    kt_tiles = tile_shape(q).ct
    return AttentionShape(scores.batches, scores.rt, kt_tiles, scores.ct, result.ct, scores,
                          q_offsets, batch_offsets(kt, scores_shape), v_offsets, mask_offsets, mask_rows, bias_offsets,
                          kt_tiles if q_view is None else q_view[0], result.ct if v_view is None else v_view[0],
                          np.arange(result.batches, dtype=np.int64) * result.matrix_tiles if out_view is None
                          else out_view[1], result.ct if out_view is None else out_view[0])


def scores_format(op: Operation) -> ScalarType:
    return ScalarType(op.attr("scores_format"))


def probs_format(op: Operation) -> ScalarType:
    return ScalarType(op.attr("probs_format"))


def out_width(nt: int) -> int:
    """Output tiles per Dst block of the second product: the widest divisor of nt that fits half of Dst."""
    return max(d for d in divisors(nt) if d <= HALF_DST)


def has_prologue(op: Operation) -> bool:
    return attention_mask(op) is not None or op.attr("scale") != 1.0


def holds_mask(op: Operation, blocking: dict[str, int]) -> bool:
    """Whether a core reads its mask's tile row once and keeps it for all its rows (row_ops.holds_mask's rule:
    every row of the core reads the same tile row of the mask, and its batches share one matrix of it)."""
    shape = attention_shape(op)
    if shape.mask_offsets is None or blocking["batches"] * blocking["rows"] == 1:
        return False
    step = affine_step(shape.mask_offsets, blocking["batches"])
    return (blocking["rows"] == 1 or not shape.mask_rows) and (blocking["batches"] == 1 or step == 0)


def fits_one_chain(op: Operation) -> bool:
    """The scores' K (the head dim) is one accumulation chunk, so one `matmul_tiles` per block is the unfused
    matmul's chain (longer heads are not fused)."""
    kt = tile_shape(ttir.attention_views(op)[0]).ct
    return kt <= SHORT_K_TILES and accumulation_tiles(kt) == kt


def attention_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    s = attention_shape(op)
    q, k, v, out = (tensor(x) for x in (*op.operands[:3], op.result))
    rows = blocking["batches"] * blocking["rows"]
    width, ow = blocking["block_w"], out_width(s.nt)
    stat = work_format(probs_format(op))  # the softmax's statistics and temporaries (row_ops.row_op_cbs)
    partial = work_format(out.element_type)  # the second product's chunk sums (matmul.matmul_cbs)
    cbs = [cb(CB_Q, q.element_type, double(s.kt, rows)),
           cb(CB_KT, k.element_type, s.kt * s.ct), cb(CB_V, v.element_type, s.ct * s.nt),
           cb(CB_SCORES, scores_format(op), s.ct), cb(CB_PROBS, probs_format(op), s.ct),
           cb(CB_OUT, out.element_type, double(ow, rows * (s.nt // ow))),
           cb(CB_MASKED, stat, 1), cb(CB_STAT, stat, 1), cb(CB_WIDE, stat, s.ct), cb(CB_STAT2, stat, 1)]
    if len(row_sum_groups(s.ct)) > 1:
        cbs.append(cb(CB_GROUPS, stat, len(row_sum_groups(s.ct))))
    mask = attention_mask(op)
    if has_prologue(op):
        cbs.append(cb(CB_SUM, stat, s.ct))
    if mask is not None:
        pages = s.ct if holds_mask(op, blocking) else double(width, rows * (s.ct // width))
        cbs.append(cb(CB_MASK, tensor(mask).element_type, pages))
        if op.attr("scale") != 1.0:
            cbs.append(cb(CB_SCALED, stat, width))
    if accumulation_tiles(s.ct) < s.ct:  # the running total of the chunks, and one chunk's sum
        cbs += [cb(CB_TOTAL, partial, ow), cb(CB_CHUNK, partial, ow)]
    bias = scores_bias(op)
    if bias is not None:  # a row of it, and a block of the product before it is added (matmul.matmul_cbs)
        cbs += [cb(CB_BIAS_ROW, tensor(bias).element_type, double(s.ct, rows)),
                cb(CB_BIASED, work_format(scores_format(op)), width)]
    return sorted(cbs, key=lambda c: c.index)


def attention_candidates(op: Operation) -> Iterator[dict[str, int]]:
    """Any split of the (batch, head) matrices and their tile rows over cores, in blocks of up to half of Dst."""
    s = attention_shape(op)
    offsets = [s.q_offsets, s.k_offsets, s.v_offsets, s.out_offsets] \
        + ([] if s.mask_offsets is None else [s.mask_offsets]) + ([] if s.bias_offsets is None else [s.bias_offsets])
    widths = [d for d in divisors(s.ct) if d <= HALF_DST][::-1]
    for batches in batch_groups(offsets, s.batches):
        for rows in divisors(s.rt):
            for width in widths:
                yield {"batches": batches, "rows": rows, "block_w": width}


def attention_units(op: Operation, blocking: dict[str, int]) -> tuple[int, int]:
    s = attention_shape(op)
    return s.batches // blocking["batches"], s.rt // blocking["rows"]


# ----------------------------------------------------------------------------------------------
# Counts


def plan_attention(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str,
                   grid: tuple[int, int]) -> Counts:
    s = attention_shape(op)
    q, k, v = op.operands[:3]
    ct, nt = s.ct, s.nt
    reduce_fidelity = op.attr("reduce_fidelity")
    rows = b["batches"] * b["rows"]
    pad_rows, pad_cols = s.scores.rows % TILE != 0, s.scores.cols % TILE != 0
    chunks = ct // accumulation_tiles(ct)
    plan = Plan(device, grid, attention_units(op, b))
    # scores: one chain of kt products per tile (onto zeros: `accumulate = false`, no fill)
    plan.tile(target.matmul_key(fidelity, format_name(q), format_name(k)), rows * ct * s.kt)
    plan.tile(target.binary_key("add"), rows * ct * int(scores_bias(op) is not None))  # + the bias
    # the softmax (row_ops.plan_row_op's)
    scaled = int(op.attr("scale") != 1.0)
    plan.tile(target.DATACOPY, rows * ct * scaled)
    plan.tile(target.sfpu_key("mul_scalar"), rows * ct * scaled)
    plan.tile(target.binary_key("add"), rows * ct * int(attention_mask(op) is not None))
    plan.tile(target.DATACOPY, rows * (1 + 2 * int(pad_cols)))
    plan.tile(target.REDUCE_MAX, rows * ct)
    plan.tile(target.binary_key("sub"), rows * ct)
    plan.tile(target.sfpu_key("exp"), rows * ct)
    plan.tile(target.DATACOPY, rows * ct * (int(pad_cols) + int(pad_rows)))
    groups = len(row_sum_groups(ct))
    plan.tile(target.DATACOPY, rows * (groups + int(groups > 1)))
    plan.tile(target.reduce_sum_key(reduce_fidelity), rows * (ct + (groups if groups > 1 else 0)))
    plan.tile(target.sfpu_key("recip"), rows)
    plan.tile(target.binary_key("mul"), rows * ct)
    # probabilities @ V: a chain per chunk and tile (onto zeros), the chunk sums added
    plan.tile(target.matmul_key(fidelity, op.attr("probs_format"), format_name(v)), rows * nt * ct)
    plan.tile(target.binary_key("add"), rows * nt * (chunks - 1))

    unit = plan.unit
    batch0 = unit[:, 0] * b["batches"]
    row0 = unit[:, 1] * b["rows"]
    batch_loop = np.arange(b["batches"])

    def rows_of(offsets: np.ndarray, row_tiles: int) -> tuple[np.ndarray, np.ndarray]:
        """(first tile per core, offsets of the core's rows) of a [rt, row_tiles] operand read row by row."""
        first = offsets[batch0] + row0 * row_tiles
        step = affine_step(offsets, b["batches"])
        assert step is not None
        loop = (batch_loop[:, None] * step + np.arange(b["rows"])[None, :] * row_tiles).ravel()
        return first, loop

    first = s.q_offsets[batch0] + row0 * s.q_row_stride
    step = affine_step(s.q_offsets, b["batches"])
    assert step is not None
    static_row_tiles(plan, q, first, (batch_loop[:, None] * step + np.arange(b["rows"])[None, :] * s.q_row_stride).ravel(),
                     s.kt)
    step = affine_step(s.k_offsets, b["batches"])
    static_row_tiles(plan, k, s.k_offsets[batch0], batch_loop * step, s.kt * ct)
    step = affine_step(s.v_offsets, b["batches"])  # V's ct rows of nt tiles, s.v_row_stride apart
    static_row_tiles(plan, v, s.v_offsets[batch0],
                     (batch_loop[:, None] * step + np.arange(ct)[None, :] * s.v_row_stride).ravel(), nt)
    mask = attention_mask(op)
    if mask is not None:
        assert s.mask_offsets is not None
        step = affine_step(s.mask_offsets, b["batches"])
        rs = ct if s.mask_rows else 0
        mask_first = s.mask_offsets[batch0] + row0 * rs
        mask_loop = (batch_loop[:, None] * step + np.arange(b["rows"])[None, :] * rs).ravel()
        static_row_tiles(plan, mask, mask_first, mask_loop[:1] if holds_mask(op, b) else mask_loop, ct)
    bias = scores_bias(op)
    if bias is not None:  # its row of each scores row
        assert s.bias_offsets is not None
        first, loop = rows_of(s.bias_offsets, ct)
        static_row_tiles(plan, bias, first, loop, ct)
    assert s.out_offsets is not None
    out_step = affine_step(s.out_offsets, b["batches"])
    assert out_step is not None
    out_first = s.out_offsets[batch0] + row0 * s.out_row_stride
    out_loop = (batch_loop[:, None] * out_step + np.arange(b["rows"])[None, :] * s.out_row_stride).ravel()
    static_row_tiles(plan, op.result, out_first, out_loop, nt, write=True)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Kernels


def lower_attention(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    s = attention_shape(op)

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        batch, row = unit[0] * b["batches"], unit[1] * b["rows"]
        mask = [] if s.mask_offsets is None else \
            [int(s.mask_offsets[batch]) + row * (s.ct if s.mask_rows else 0)]
        bias = [] if s.bias_offsets is None else [int(s.bias_offsets[batch]) + row * s.ct]
        return [int(s.q_offsets[batch]) + row * s.q_row_stride, int(s.k_offsets[batch]), int(s.v_offsets[batch]),
                *mask, *bias]

    def compute_args(unit: tuple[int, ...]) -> list[int]:
        return [unit[1] * b["rows"]]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        assert s.out_offsets is not None
        return [int(s.out_offsets[unit[0] * b["batches"]]) + unit[1] * b["rows"] * s.out_row_stride]

    kernels = (attention_reader(op, schedule, s), attention_compute(op, schedule, s), attention_writer(op, schedule, s))
    return Program("attention", schedule.grid, cbs_of(op, schedule), kernels,
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


def attention_reader(op: Operation, sch: Schedule, s: AttentionShape):
    b = sch.blocking
    width = b["block_w"]
    k = KernelBuilder(op.loc)
    gens = [k.addrgen(i, tensor(v)) for i, v in enumerate(op.operands)]
    steps = [affine_step(offsets, b["batches"]) for offsets in (s.q_offsets, s.k_offsets, s.v_offsets)]
    held = holds_mask(op, b)

    def read(cb_index: int, gen: Value, start: Index, rows: int, cols: int, stride: int = 0) -> None:
        k.op("cb_reserve_back", cb=cb_index, pages=rows * cols)
        k.op("noc_read_tiles", gen, start, cb=cb_index, rows=rows, cols=cols, row_stride=stride or cols)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=cb_index, pages=rows * cols)

    if held:
        read(CB_MASK, gens[3], k.arg(3), 1, s.ct)
    with k.loop(b["batches"]) as batch:
        read(CB_KT, gens[1], k.affine(k.arg(1), (batch, steps[1])), s.kt, s.ct)
        read(CB_V, gens[2], k.affine(k.arg(2), (batch, steps[2])), s.ct, s.nt, s.v_row_stride)
        with k.loop(b["rows"]) as row:
            read(CB_Q, gens[0], k.affine(k.arg(0), (batch, steps[0]), (row, s.q_row_stride)), 1, s.kt)
            if s.bias_offsets is not None:  # the row of the scores' bias (the last operand and argument)
                bias_arg = 3 + int(s.mask_offsets is not None)
                read(CB_BIAS_ROW, gens[-1], k.affine(k.arg(bias_arg), (batch, s.rt * s.ct), (row, s.ct)), 1, s.ct)
            if s.mask_offsets is not None and not held:  # the row's mask tiles, block by block
                mask_step = affine_step(s.mask_offsets, b["batches"])
                start = k.affine(k.arg(3), (batch, mask_step), (row, s.ct if s.mask_rows else 0))
                with k.loop(s.ct // width) as block:
                    read(CB_MASK, gens[3], k.affine(start, (block, width)), 1, width)
    return k.region()


def attention_writer(op: Operation, sch: Schedule, s: AttentionShape):
    b = sch.blocking
    ow = out_width(s.nt)
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(op.operands), tensor(op.result))
    assert s.out_offsets is not None
    step = affine_step(s.out_offsets, b["batches"])
    with k.loop(b["batches"]) as batch, k.loop(b["rows"]) as row:
        start = k.affine(k.arg(0), (batch, step), (row, s.out_row_stride))
        with k.loop(s.nt // ow) as block:
            k.op("cb_wait_front", cb=CB_OUT, pages=ow)
            k.op("noc_write_tiles", gen, k.affine(start, (block, ow)), cb=CB_OUT, rows=1, cols=ow)
            k.op("noc_write_barrier")
            k.op("cb_pop_front", cb=CB_OUT, pages=ow)
    return k.region()


def scale_and_mask_block(k: KernelBuilder, op: Operation, s: AttentionShape, width: int,
                         mask_offset: int | None) -> None:
    """row_ops.scale_and_mask_block on the scores row: one block of x * scale (+ mask) from CB_SCORES' front
    into CB_SUM, with the unfused eltwise's phases and formats; pops the scores block (and the mask's, unless
    held: then it is at `mask_offset` of the held row)."""
    has_mask = attention_mask(op) is not None
    scale = float(op.attr("scale"))
    first = CB_SCORES
    if scale != 1.0:
        k.op("tile_regs_acquire")
        k.op("copy_tiles", cb=CB_SCORES, rows=1, cols=width, col_stride=1)
        k.op("sfpu_tiles", fn="mul_scalar", count=width, param=scale)
        if not has_mask:
            k.pack_block(CB_SUM, width)
            k.op("cb_pop_front", cb=CB_SCORES, pages=width)
            return
        k.pack_block(CB_SCALED, width)
        k.op("cb_wait_front", cb=CB_SCALED, pages=width)
        first = CB_SCALED
    if mask_offset is None:
        k.op("cb_wait_front", cb=CB_MASK, pages=width)
    k.op("tile_regs_acquire")
    at = {"b_offset": mask_offset} if mask_offset else {}
    k.op("binary_tiles", op="add", cb_a=first, cb_b=CB_MASK, **at, bcast="none" if s.mask_rows else "row",
         rows=1, cols=width)
    k.pack_block(CB_SUM, width)
    if scale != 1.0:
        k.op("cb_pop_front", cb=CB_SCALED, pages=width)
    if mask_offset is None:
        k.op("cb_pop_front", cb=CB_MASK, pages=width)
    k.op("cb_pop_front", cb=CB_SCORES, pages=width)


def attention_compute(op: Operation, sch: Schedule, s: AttentionShape):
    b = sch.blocking
    width, ct, nt = b["block_w"], s.ct, s.nt
    ow = out_width(nt)
    chunk = accumulation_tiles(ct)
    chunks = ct // chunk
    padded = s.scores.cols % TILE != 0
    reduce_fidelity = op.attr("reduce_fidelity")
    held = holds_mask(op, b)
    prologue = has_prologue(op)
    src = CB_SUM if prologue else CB_SCORES
    biased = scores_bias(op) is not None
    k = KernelBuilder(op.loc)
    if held:
        k.op("cb_wait_front", cb=CB_MASK, pages=ct)
    with k.loop(b["batches"]):
        k.op("cb_wait_front", cb=CB_KT, pages=s.kt * ct)
        k.op("cb_wait_front", cb=CB_V, pages=ct * nt)
        with k.loop(b["rows"]) as row:
            # the scores row: Q's row @ K^T, block by block (static offsets into the held K^T)
            k.op("cb_wait_front", cb=CB_Q, pages=s.kt)
            if biased:
                k.op("cb_wait_front", cb=CB_BIAS_ROW, pages=ct)
            for block in range(ct // width):
                k.op("tile_regs_acquire")
                k.op("matmul_tiles", cb_a=CB_Q, a_row_stride=s.kt, cb_b=CB_KT, b_offset=block * width,
                     b_row_stride=ct, inner=s.kt, rows=1, cols=width, fidelity=sch.fidelity, accumulate=False)
                if biased:  # the unfused residual epilogue: packed, then the FPU add of the bias's tiles
                    k.pack_block(CB_BIASED, width)
                    k.op("cb_wait_front", cb=CB_BIASED, pages=width)
                    k.op("tile_regs_acquire")
                    at = {"b_offset": block * width} if block else {}
                    k.op("binary_tiles", op="add", cb_a=CB_BIASED, a_row_stride=width, cb_b=CB_BIAS_ROW, **at,
                         b_row_stride=ct, rows=1, cols=width)
                    k.op("cb_pop_front", cb=CB_BIASED, pages=width)
                k.pack_block(CB_SCORES, width)
            k.op("cb_pop_front", cb=CB_Q, pages=s.kt)
            if biased:
                k.op("cb_pop_front", cb=CB_BIAS_ROW, pages=ct)
            # the softmax of the row (row_ops.softmax_compute), into CB_PROBS
            k.op("cb_wait_front", cb=CB_SCORES, pages=ct)
            if prologue:
                if held:
                    for block in range(ct // width):
                        scale_and_mask_block(k, op, s, width, block * width)
                else:
                    with k.loop(ct // width):
                        scale_and_mask_block(k, op, s, width, None)
                k.op("cb_wait_front", cb=CB_SUM, pages=ct)
            if padded:
                k.op("tile_regs_acquire")
                k.op("copy_tiles", cb=src, offset=ct - 1, rows=1, cols=1)
                mask_block(k, s.scores, 0, ct - 1, 1, rows=False, cols=True, fill=float("-inf"))
                k.pack_block(CB_MASKED, 1)
                k.op("cb_wait_front", cb=CB_MASKED, pages=1)
            k.op("tile_regs_acquire")
            k.op("fill_tiles", count=1, value=float("-inf"))
            if ct - padded:
                k.op("reduce_tiles", kind="max", dim="row", cb=src, rows=1, cols=ct - padded,
                     fidelity=reduce_fidelity)
            if padded:
                k.op("reduce_tiles", kind="max", dim="row", cb=CB_MASKED, rows=1, cols=1, fidelity=reduce_fidelity)
            k.pack_block(CB_STAT, 1)
            if padded:
                k.op("cb_pop_front", cb=CB_MASKED, pages=1)
            k.op("cb_wait_front", cb=CB_STAT, pages=1)
            with k.loop(ct // width) as block:
                k.op("tile_regs_acquire")
                k.op("binary_tiles", op="sub", cb_a=src, cb_b=CB_STAT, b_col_stride=0, bcast="col", rows=1,
                     cols=width)
                k.op("sfpu_tiles", fn="exp", count=width)
                mask_block(k, s.scores, 0, k.mul(block, width), width, rows=False, cols=True)
                k.pack_block(CB_WIDE, width)
                k.op("cb_pop_front", cb=src, pages=width)
            k.op("cb_pop_front", cb=CB_STAT, pages=1)
            k.op("cb_wait_front", cb=CB_WIDE, pages=ct)
            reduce_row(k, CB_WIDE, ct, CB_STAT2, "sum", reduce_fidelity, sfpu=(("recip", 0.0),))
            k.op("cb_wait_front", cb=CB_STAT2, pages=1)
            with k.loop(ct // width) as block:
                k.op("tile_regs_acquire")
                k.op("binary_tiles", op="mul", cb_a=CB_WIDE, cb_b=CB_STAT2, b_col_stride=0, bcast="col", rows=1,
                     cols=width)
                mask_block(k, s.scores, k.add(k.arg(0), row), k.mul(block, width), width, rows=True, cols=False)
                k.pack_block(CB_PROBS, width)
                k.op("cb_pop_front", cb=CB_WIDE, pages=width)
            k.op("cb_pop_front", cb=CB_STAT2, pages=1)
            # probabilities @ V in the unfused matmul's K chunks (static offsets into the row and the held V)
            k.op("cb_wait_front", cb=CB_PROBS, pages=ct)
            for col in range(nt // ow):
                for c in range(chunks):
                    k.op("tile_regs_acquire")
                    k.op("matmul_tiles", cb_a=CB_PROBS, a_offset=c * chunk, a_row_stride=ct, cb_b=CB_V,
                         b_offset=c * chunk * nt + col * ow, b_row_stride=nt, inner=chunk, rows=1, cols=ow,
                         fidelity=sch.fidelity, accumulate=False)
                    if c:  # the chunk's sum added to the running total (matmul_compute's finish_chunk)
                        packed_add(k, CB_CHUNK, CB_TOTAL, 1, ow, packed_first=False)
                    k.pack_block(CB_OUT if c == chunks - 1 else CB_TOTAL, ow)
            k.op("cb_pop_front", cb=CB_PROBS, pages=ct)
        k.op("cb_pop_front", cb=CB_V, pages=ct * nt)
        k.op("cb_pop_front", cb=CB_KT, pages=s.kt * ct)
    if held:
        k.op("cb_pop_front", cb=CB_MASK, pages=ct)
    return k.region()


class AttentionOp(DeviceOp):
    """softmax(Q @ K^T * scale (+ mask)) @ V with the scores kept in L1 (see the module doc)."""

    kind = "attention"
    op_names = frozenset({ttir.ATTENTION.name})

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return attention_candidates(op)

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        return attention_units(op, blocking)

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return attention_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_attention(op, device, blocking, fidelity, grid)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_attention(op)


ATTENTION = register(AttentionOp())
