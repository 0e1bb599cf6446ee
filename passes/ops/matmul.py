"""The matmul device op (`ttir.matmul`, `ttir.linear`; convolutions reach it as im2col matmuls): its
shape in tiles, candidate blockings, CB plan, counts and kernels, after tt-metal's MatmulMultiCoreReuse program;
`matmul_mcast.py` holds the multicast variant of the reader (blockings with `"mcast": 1`).

Each core computes a per_core_m x per_core_n block of output tiles for `batches` consecutive batches.
K is walked in steps of in0_block_w tiles; the block is computed in out_subblock_h x out_subblock_w
subblocks (<= 8 Dst tiles). Between K steps a subblock's partial sums go to an intermediate CB and come
back with copy_tiles (bf16 both ways, so this continues one accumulation chain exactly). A long K is
accumulated in chunks (`accumulation_tiles`, a whole number of K steps): each chunk is a fresh
chain in Dst, and its sum is added in bf16 to the running total of the chunks before it, so no chain of
16-bit Dst roundings runs the whole of K. The chunks depend only on K, so the result does not depend on
the grid or the blocking. Compute ops address their CB windows with static offsets, so
the reader pushes operand chunks in the order the compute kernel uses them: per K step and subblock
row, the in0 rows (h x in0_block_w), and per subblock the in1 columns (in0_block_w x w) — in1 is read
once per subblock row (once in all when the subblock spans per_core_m). With `n_outer = 1` the subblocks
are walked column by column instead (`column_outer`): per K step and subblock column the in1 columns once,
and per subblock the in0 rows, so in0 is read once per subblock column and in1 once in all (a tall block on
few columns, an im2col product whose M is prime, no longer reads its weight once per tile row).

Epilogue (last K step): bias = the packed result + the bias row (binary add, bcast row), activation
on the SFPU, padding re-masked where the bias or the activation made it non-zero. A fused residual
(`ttir.linear {residual}`, fuse.py) follows: the value so far is packed in the result's format (the bits
the unfused linear wrote to its buffer), the reader's tiles of the residual for the same subblock (CB 3)
are added to it by the FPU (the unfused eltwise add's op, operands and formats), then the
residual_activation on the SFPU: bit for bit the linear + eltwise pair it replaces.

A product of [batch..., M, K] by one shared [K, N] matrix (a linear layer on a batch of sequences) whose M is
whole tiles is one [batch * M, K] product (`foldable`): the pages are the same, and a core's block of rows may
span batches.

M may split into blocks of ceil(M / blocks) tile rows, the last block moved back to end at M
(`row_start`): the rows it shares with the block before it are computed by both cores, from the same operands
with the same chunks, and written by both with the same bytes.

N may split raggedly over the cores (a vocabulary of 50257 columns is 1571 tiles, a prime): every core
runs the same loops over per_core_n tiles, and the last one reads and writes only the tiles before the
edge (`valid_cols` of the NoC ops, from its runtime arguments); its tiles past the edge compute on zeros
and are dropped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation
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
    format_name,
)
from ttc.passes.ops.eltwise_body import keeps_zero
from ttc.passes.ops.geometry import (
    CB_BIAS,
    CB_BIASED,
    CB_CHUNK,
    CB_IN0,
    CB_IN1,
    CB_OUT,
    CB_PARTIALS,
    CB_RESIDUAL,
    CB_TOTAL,
    GRID_FILLS,
    HALF_DST,
    TILE,
    affine_step,
    batch_groups,
    batch_offsets,
    cb,
    divisors,
    double,
    is_row_major,
    node_names,
    overlapped_start,
    overlapping_splits,
    tensor,
    tile_shape,
    work_format,
)
from ttc.passes.ops.interface import BY_COLUMN, DeviceOp
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.program import (
    Program,
    Schedule,
    cbs_of,
    schedule_of,
)
from ttc.passes.ops.registry import register

MATMUL_OPS = frozenset({ttir.LINEAR.name, ttir.MATMUL.name})


@dataclass(frozen=True)
class MatmulShape:
    """[batch..., M, K] @ [batch..., K, N] in tiles, with per-batch tile offsets of a, b and out."""

    mt: int
    kt: int
    nt: int
    batches: int
    a_offsets: np.ndarray = field(compare=False)
    b_offsets: np.ndarray = field(compare=False)
    rows: int  # logical M and N, for masking
    cols: int


def matmul_shape(op: Operation) -> MatmulShape:
    a, b, out = tensor(op.operands[0]), tensor(op.operands[1]), tensor(op.result)
    if op.attributes.get("transpose_b") or op.attributes.get("transpose_a"):
        raise UserError(f"node {node_names(op)}: '{op.name}' with a transposed operand reached the backend "
                        "(tilize materialises transposes)")
    if b.rank < 2 or (a.rank == 1 and b.rank > 2):
        raise UserError(f"node {node_names(op)}: matmul of {list(a.shape)} by {list(b.shape)} is not supported "
                        "on the device (the second operand must be a matrix or a batch of matrices)")
    return _matmul_geometry(a.shape, b.shape, out.shape, padding_rows_free(op))


@functools.lru_cache(maxsize=256)
def _matmul_geometry(a: tuple[int, ...], b: tuple[int, ...], out: tuple[int, ...],
                     rows_free: bool = False) -> MatmulShape:
    ta, tb, to = tile_shape(a), tile_shape(b), tile_shape(out)
    a_offsets, b_offsets = batch_offsets(a, out), batch_offsets(b, out)
    if foldable(ta.rt, ta.ct, to.batches, to.rows, a_offsets, b_offsets, rows_free):
        return MatmulShape(to.batches * ta.rt, ta.ct, tb.ct, 1, a_offsets[:1], b_offsets[:1],
                           to.batches * to.rows, to.cols)
    return MatmulShape(ta.rt, ta.ct, tb.ct, to.batches, a_offsets, b_offsets, to.rows, to.cols)


def foldable(mt: int, kt: int, batches: int, rows: int, a_offsets: np.ndarray, b_offsets: np.ndarray,
             rows_free: bool = False) -> bool:
    """A batch of products by one shared in1 matrix (a linear layer's weights on [batch..., M, K]) whose in0 and
    output matrices lie one after the other with no padding rows between them (M a whole number of tiles) is
    one [batch * M, K] @ [K, N] product: the tile pages are the same, so the batches fold into M. Its blockings
    may then give a core more rows than one batch has (a 2-D multicast grid of batch * M / rows rows, in1 read
    once per grid column instead of once per batch group). Padding rows between the batches fold too when the
    epilogue never re-masks them (`rows_free`, `padding_rows_free`): the pages are the same, and only masking
    needs to know where a batch's rows end."""
    return batches > 1 and (rows % TILE == 0 or rows_free) and bool((b_offsets == b_offsets[0]).all()) \
        and bool((a_offsets == np.arange(batches) * mt * kt).all())


def padding_rows_free(op: Operation) -> bool:
    """No reader of the result looks at its padding rows, so the epilogue need not re-mask them (one datacopy
    per output tile less) and a batch of them may fold into M (`foldable`): every reader is a `ttir.linear`
    reading it as its first operand only, with a bias or an activation moving zero. Row r of a product depends
    on row r of its first operand alone (a block float shares exponents along a row's 16 values, never across
    rows), so the reader's padding rows are the only ones the garbage reaches, and the reader re-masks them
    (or, free itself, leaves them to its readers, which re-mask theirs): every value any other op reads is the
    bits it was. The ranking memo of the grid pass keys on this (`grid.matmul_signature`)."""
    if op.name not in MATMUL_OPS or not op.result.uses:
        return False
    for user, index in op.result.uses:
        if user.name != ttir.LINEAR.name or index != 0:
            return False
        activation = user.attributes.get("activation", "none")
        if ttir.linear_bias(user) is None and (activation == "none" or keeps_zero(activation, 0.0)):
            return False
    return True


def matmul_masks(op: Operation) -> tuple[bool, bool]:
    """(rows, cols): which padding of a matmul's result its epilogue makes non-zero and must re-mask.
    The product of zero-padded operands has zero padding; a bias row fills the padding rows, an
    activation with f(0) != 0 (sigmoid) all of it. Padding rows no reader looks at (`padding_rows_free`) stay
    as the epilogue left them."""
    shape = matmul_shape(op)
    activation = op.attributes.get("activation", "none")
    moves_zero = activation != "none" and not keeps_zero(activation, 0.0)
    rows = shape.rows % TILE != 0 and (ttir.linear_bias(op) is not None or moves_zero) and not padding_rows_free(op)
    return rows, shape.cols % TILE != 0 and moves_zero


def packed_add(k: KernelBuilder, packed: int, other: int, h: int, w: int, packed_first: bool) -> None:
    """Dst's h x w tiles packed to `packed`, then added (FPU, in the order the unfused ops add: the packed tiles
    as the first operand or the second) to the tiles at `other`'s front, both popped: a chunk's sum onto the
    running total, a residual onto the product."""
    tiles = h * w
    k.pack_block(packed, tiles)
    k.op("cb_wait_front", cb=packed, pages=tiles)
    k.op("cb_wait_front", cb=other, pages=tiles)
    k.op("tile_regs_acquire")
    a, b = (packed, other) if packed_first else (other, packed)
    k.op("binary_tiles", op="add", cb_a=a, a_row_stride=w, cb_b=b, b_row_stride=w, rows=h, cols=w)
    k.op("cb_pop_front", cb=a, pages=tiles)
    k.op("cb_pop_front", cb=b, pages=tiles)


N_OUTER = "n_outer"


def column_outer(blocking: dict[str, int]) -> bool:
    """The core walks its subblocks column by column (in1 read once per K step, in0 once per column)."""
    return bool(blocking.get(N_OUTER, 0))


def sub_blocks(blocking: dict[str, int]) -> tuple[int, int]:
    """(SH, SW): out subblocks per core along M and N."""
    return (blocking["per_core_m"] // blocking["out_subblock_h"],
            blocking["per_core_n"] // blocking["out_subblock_w"])


SHORT_K_TILES = 8  # K up to 256: one accumulation chain of at most 16 bf16 roundings is fine


MIN_CHUNK_TILES = 4  # chunks of at least 128 elements: each chunk's sum costs a tile add


@functools.lru_cache(maxsize=1024)
def accumulation_tiles(kt: int) -> int:
    """K tiles accumulated in one chain of the 16-bit Dst (a chunk) before the chunk's sum is added, in
    bf16, to the running sum of the chunks before it.

    Dst rounds to bf16 every 16 products (one MVMUL), so a single chain over K = 3072 rounds a growing
    sum 192 times; in chunks of about 4 * sqrt(K) elements both chains (inside a chunk, and over the
    chunks) stay short, the way long reductions are blocked on hardware without fp32 accumulation: the
    relative error of a [128 x 3072] @ [3072 x 256] product falls from ~1.6e-2 to ~7e-3, and of a K = 768
    one from ~8e-3 to ~5e-3 (chunks of at least 4 tiles, as each costs a tile add). The chunk depends
    only on K, never on the grid or the blocking, so any blocking gives the same bits.
    """
    if kt <= SHORT_K_TILES:
        return kt
    target = max(MIN_CHUNK_TILES, 4 * math.sqrt(kt * TILE) / TILE)
    return min((d for d in range(1, kt + 1) if kt % d == 0), key=lambda d: (abs(d - target), d))


def matmul_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    shape = matmul_shape(op)
    h, w, width = blocking["out_subblock_h"], blocking["out_subblock_w"], blocking["in0_block_w"]
    sh, sw = sub_blocks(blocking)
    k_blocks = shape.kt // width
    in0_pushes = blocking["batches"] * k_blocks * sh
    in1_pushes = blocking["batches"] * k_blocks * (sw if column_outer(blocking) else sh * sw)
    a, b, out = tensor(op.operands[0]), tensor(op.operands[1]), tensor(op.result)
    work = work_format(out.element_type)  # partial sums: a block-float result's are bf16
    cbs = [cb(CB_IN0, a.element_type, double(h * width, in0_pushes * (sw if column_outer(blocking) else 1))),
           cb(CB_IN1, b.element_type, double(width * w, in1_pushes)),
           cb(CB_OUT, out.element_type, double(h * w, blocking["batches"] * sh * sw))]
    bias, residual = ttir.linear_bias(op), ttir.linear_residual(op)
    if bias is not None:
        cbs.append(cb(CB_BIAS, tensor(bias).element_type, double(w, blocking["batches"] * sh * sw)))
    if residual is not None:
        cbs.append(cb(CB_RESIDUAL, tensor(residual).element_type, double(h * w, blocking["batches"] * sh * sw)))
    if bias is not None or residual is not None:  # the value before the bias (or the residual) is added
        cbs.append(cb(CB_BIASED, work, h * w))
    block_tiles = blocking["per_core_m"] * blocking["per_core_n"]
    chunk = accumulation_tiles(shape.kt)
    if chunk > width:  # partial sums between the K steps of a chunk
        cbs.append(cb(CB_PARTIALS, work, block_tiles))
    if chunk < shape.kt:  # the running total of the chunks, and one chunk's sum
        cbs += [cb(CB_TOTAL, work, block_tiles), cb(CB_CHUNK, work, h * w)]
    return sorted(cbs, key=lambda c: c.index)


def subblock_choices(per_core_m: int, per_core_n: int) -> list[tuple[int, int]]:
    """Out subblocks (h, w) with h * w <= 8: the preferred one (fewest in1 re-reads, most tiles), the
    preferred one of at most 4 tiles (a middle footprint: half the in0 CB of an 8-tile-high subblock, for a
    block that only just misses L1 with the preferred one), then 1 x 1 as the smallest footprint."""
    options = [(h, w) for h in divisors(per_core_m) for w in divisors(per_core_n) if h * w <= HALF_DST]

    def preferred(hws: list[tuple[int, int]]) -> tuple[int, int]:
        return min(hws, key=lambda hw: (per_core_m // hw[0], -hw[0] * hw[1], -hw[1]))

    middle = preferred([hw for hw in options if hw[0] * hw[1] <= HALF_DST // 2])
    return list(dict.fromkeys([preferred(options), middle, (1, 1)]))


RAGGED_SPLITS = 108  # ragged N splits are tried over up to this many cores (the e150 compute grid)


MIN_N_CORES = 8  # exact N splits over fewer cores than this are poor for a wide output


GRID_COLUMNS = 12  # ragged N splits over up to this many columns are always tried (the e150 compute grid's width)


def n_splits(nt: int) -> list[int]:
    """Output tile columns per core: the divisors of nt, and when none of them spreads N over 8 to 108
    cores (a prime nt such as a vocabulary's 1571 tiles) also ceil(nt / cores) for 2..108 cores, the last
    core taking the rest (a ragged split). Ragged splits over 2..12 columns are always tried: a 2-D
    multicast grid then fills the grid's width where no divisor of N does (BERT-Large's FFN, 128 tiles: 12
    columns of 11 on a 12 x 9 grid, 108 cores, against 8 columns of 16)."""
    exact = divisors(nt)
    cores = range(2, min(nt, GRID_COLUMNS) + 1)
    if nt >= MIN_N_CORES and not any(MIN_N_CORES <= nt // d <= RAGGED_SPLITS for d in exact):
        cores = range(2, min(nt, RAGGED_SPLITS) + 1)
    ragged = {-(-nt // c) for c in cores}
    return sorted(set(exact) | {n for n in ragged if nt % n})


MAX_OVERLAP_BLOCKS = 16  # overlapping M splits are tried over up to this many blocks of tile rows
# and over the block counts that fill the e150 compute grid beside 1, 2, 3, ... N blocks (geometry.GRID_FILLS)


def m_splits(mt: int) -> list[int]:
    """Output tile rows per core: the divisors of mt, and ceil(mt / blocks) for 2..16 blocks and for the block
    counts that fill the grid (`GRID_FILLS`: a 512-tile im2col chunk on 103 cores, not 64) where that does not
    divide mt (an overlapping split: the last block starts at mt - per_core_m, `row_start`)."""
    return sorted({*divisors(mt), *overlapping_splits(mt, {*range(2, MAX_OVERLAP_BLOCKS + 1), *GRID_FILLS})})


def row_start(mt: int, per_core_m: int, block: int | np.ndarray):
    """The first output tile row of M block `block`: block * per_core_m, the last block of an overlapping split
    moved back to end at mt. Its rows shared with the block before it are computed by both cores with the same
    operands and chunks (`accumulation_tiles` depends on K alone), so both write the same bytes to them."""
    return overlapped_start(mt, per_core_m, block)


def matmul_candidates(op: Operation) -> Iterator[dict[str, int]]:
    """K steps (in0_block_w) divide the accumulation chunk, so a chunk is whole K steps."""
    from ttc.passes.ops.matmul_ksplit import ksplit_variants
    from ttc.passes.ops.matmul_mcast import mcast_variants

    shape = matmul_shape(op)
    for batches in batch_groups([shape.a_offsets, shape.b_offsets], shape.batches):
        for pcm in m_splits(shape.mt):
            for pcn in n_splits(shape.nt):
                for i, (h, w) in enumerate(subblock_choices(pcm, pcn)):
                    for width in divisors(accumulation_tiles(shape.kt)):
                        blocking = {"batches": batches, "per_core_m": pcm, "per_core_n": pcn, "in0_block_w": width,
                                    "out_subblock_h": h, "out_subblock_w": w}
                        yield blocking
                        if pcm > h:  # in1 re-read per subblock row: also the column-outer walk
                            yield {**blocking, N_OUTER: 1}
                        if i == 0 or (h, w) != (1, 1):  # the multicast plans: not with a fallback 1 x 1 subblock
                            yield from mcast_variants(op, shape, blocking)
                        if i == 0:  # few output blocks: K over the cores of each block too (preferred subblock)
                            yield from ksplit_variants(op, shape, blocking)


def matmul_units(shape, b: dict[str, int]) -> tuple[int, int, int]:
    return shape.batches // b["batches"], -(-shape.mt // b["per_core_m"]), -(-shape.nt // b["per_core_n"])


def plan_matmul(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None,
                read_in0: Callable[[Plan], None] | None = None,
                write_out: Callable[[Plan], None] | None = None) -> Counts:
    """The counts of the kernels below; `read_in0` counts the in0 reads instead (a reader that gathers in0 itself:
    im2col_matmul.py), `write_out` the result's writes (a writer of rows: matmul_rows.py)."""
    shape = matmul_shape(op)
    a, w, out = op.operands[0], op.operands[1], op.result
    out_type = tensor(out) if result_layout is None else tensor(out).with_encoding(result_layout)
    batches, pcm, pcn, width = b["batches"], b["per_core_m"], b["per_core_n"], b["in0_block_w"]
    h, ww = b["out_subblock_h"], b["out_subblock_w"]
    sh, sw = pcm // h, pcn // ww
    kt, nt = shape.kt, shape.nt
    k_blocks = kt // width
    chunks = kt // accumulation_tiles(kt)
    has_bias = ttir.linear_bias(op) is not None
    residual = ttir.linear_residual(op)
    activation = op.attributes.get("activation", "none")
    plan = Plan(device, grid, matmul_units(shape, b), by_column=bool(b.get(BY_COLUMN)))
    out_tiles = batches * pcm * pcn
    plan.tile(target.DATACOPY, out_tiles * (k_blocks - chunks + int(any(matmul_masks(op)))))  # reloads, masks
    plan.tile(target.matmul_key(fidelity, format_name(a), format_name(w)), out_tiles * kt)
    plan.tile(target.binary_key("add"), out_tiles * (chunks - 1 + int(has_bias)))  # chunk sums, bias
    if activation != "none":
        plan.tile(target.sfpu_key(activation), out_tiles)
    if residual is not None:  # the residual add, and its activation
        plan.tile(target.binary_key("add"), out_tiles)
        if op.attributes.get("residual_activation", "none") != "none":
            plan.tile(target.sfpu_key(op.attributes["residual_activation"]), out_tiles)

    unit = plan.unit
    batch0, m0, n0 = unit[:, 0] * batches, row_start(shape.mt, pcm, unit[:, 1]), unit[:, 2] * pcn
    ragged = nt % pcn != 0
    valid = np.minimum(pcn, nt - n0)  # per core: output columns before the ragged edge
    edge = np.clip(valid[:, None] - np.arange(sw)[None, :] * ww, 0, ww)  # [cores, sw]: valid columns per subblock

    def a_pages() -> np.ndarray:  # every (batch, row, k) the core reads, once per K step and subblock row
        rows = (shape.a_offsets[batch0[:, None] + np.arange(batches)[None, :]] // kt)[:, :, None] \
            + m0[:, None, None] + np.arange(pcm)[None, None, :]
        return (rows.reshape(plan.cores, -1, 1) * kt + np.arange(kt)[None, None, :]).reshape(plan.cores, -1)

    from ttc.passes.ops.matmul_mcast import multicast_operands, plan_operands_mcast

    abuf = Buffer.of(tensor(a), device)
    wbuf = Buffer.of(tensor(w), device)
    a_reads, b_reads_per_k = (sw, 1) if column_outer(b) else (1, sh)  # reads of each in0 / in1 tile
    b_reads = batches * k_blocks * b_reads_per_k  # instances of each subblock column's read

    def a_pages_read() -> np.ndarray:
        return np.tile(a_pages(), (1, a_reads))

    shared = multicast_operands(b)  # the operands a multicast plan shares: it counts them (in1 with the bias)
    if shared:
        plan_operands_mcast(plan, op, shape, b, grid)
    if read_in0 is not None:
        read_in0(plan)
    elif 0 not in shared:
        plan.static(abuf, batches * pcm * kt * a_reads, page_lists=a_pages_read)
    if 1 not in shared and ragged:
        plan.masked(wbuf, np.repeat(width * edge.sum(axis=0), b_reads))
    elif 1 not in shared:
        def b_pages() -> np.ndarray:
            base = shape.b_offsets[batch0[:, None] + np.arange(batches)[None, :]] + n0[:, None]  # [cores, batches]
            grid_pages = np.arange(kt)[:, None] * nt + np.arange(pcn)[None, :]
            pages = base[:, :, None] + grid_pages.reshape(1, 1, -1)
            return np.repeat(pages.reshape(plan.cores, -1), b_reads_per_k, axis=1)

        plan.static(wbuf, batches * kt * pcn * b_reads_per_k, page_lists=b_pages)
    if has_bias and 1 not in shared:
        bias = ttir.linear_bias(op)
        bbuf = Buffer.of(tensor(bias), device)
        if ragged:
            plan.masked(bbuf, np.repeat(edge.sum(axis=0), batches * sh))
        else:
            plan.static(bbuf, batches * sh * pcn,
                        page_lists=lambda: np.repeat(n0[:, None] + np.arange(pcn)[None, :], batches * sh, axis=1))

    def out_pages() -> np.ndarray:
        rows = (batch0[:, None] + np.arange(batches)[None, :])[:, :, None] * shape.mt \
            + m0[:, None, None] + np.arange(pcm)[None, None, :]
        return (rows.reshape(plan.cores, -1, 1) * nt + n0[:, None, None]
                + np.arange(pcn)[None, None, :]).reshape(plan.cores, -1)

    # the residual's tiles of each output block (each core reads its own, in the multicast plan too)
    outputs = [(Buffer.of(out_type, device), True)] if write_out is None else []
    if write_out is not None:
        write_out(plan)
    if residual is not None:
        outputs.append((Buffer.of(tensor(residual), device), False))
    for buf, write in outputs:
        if ragged:
            plan.masked(buf, np.repeat(h * edge.sum(axis=0), batches * sh), write=write)
        else:
            plan.static(buf, out_tiles, write=write, page_lists=out_pages)
    return plan.counts()


def lower_matmul(op: Operation) -> Program:
    shape = matmul_shape(op)
    schedule = schedule_of(op)
    b = schedule.blocking
    has_bias = ttir.linear_bias(op) is not None
    has_residual = ttir.linear_residual(op) is not None
    activation = op.attributes.get("activation", "none")
    a_step = affine_step(shape.a_offsets, b["batches"])
    b_step = affine_step(shape.b_offsets, b["batches"])
    assert a_step is not None and b_step is not None

    ragged = is_ragged(shape, b)

    def valid_n(n: int) -> list[int]:
        """The core's output tile columns before the ragged edge (only when there is one)."""
        return [min(b["per_core_n"], shape.nt - n)] if ragged else []

    from ttc.passes.ops.matmul_mcast import is_mcast, mcast_reader, mcast_reader_args

    mcast = is_mcast(b)

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        batch, m, n = unit[0] * b["batches"], int(row_start(shape.mt, b["per_core_m"], unit[1])), \
            unit[2] * b["per_core_n"]
        extra = mcast_reader_args(shape, unit, (schedule.grid.x, schedule.grid.y), b) if mcast else valid_n(n)
        residual = [(batch * shape.mt + m) * shape.nt + n] if has_residual else []  # the output block's first tile
        return [int(shape.a_offsets[batch]) + m * shape.kt, int(shape.b_offsets[batch]) + n, n, *extra, *residual]

    def compute_args(unit: tuple[int, ...]) -> list[int]:
        return [int(row_start(shape.mt, b["per_core_m"], unit[1])), unit[2] * b["per_core_n"]]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        batch, m, n = unit[0] * b["batches"], int(row_start(shape.mt, b["per_core_m"], unit[1])), \
            unit[2] * b["per_core_n"]
        return [(batch * shape.mt + m) * shape.nt + n, *valid_n(n)]

    reader = mcast_reader(op, shape, schedule, a_step, b_step, has_bias) if mcast \
        else matmul_reader(op, shape, schedule, a_step, b_step, has_bias)
    compute = matmul_compute(op, shape, schedule, has_bias, activation)
    writer = matmul_writer(op, shape, schedule)
    return Program("matmul", schedule.grid, cbs_of(op, schedule), (reader, compute, writer),
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


def is_ragged(shape: MatmulShape, blocking: dict[str, int]) -> bool:
    """The last core along N has fewer output tile columns than per_core_n (N does not divide evenly):
    its tiles past the edge are not read (zeros) and not written."""
    return shape.nt % blocking["per_core_n"] != 0


class ResidualReads:
    """The reader's part of a fused residual: per output subblock of the last K step, its h x w tiles of the
    residual (laid out as the output: the block's first tile is the reader's last runtime argument) into CB 3."""

    def __init__(self, op: Operation, shape: MatmulShape, k: KernelBuilder, arg: int) -> None:
        residual = ttir.linear_residual(op)
        self.k, self.shape = k, shape
        self.gen = k.addrgen(len(op.operands) - 1, tensor(residual)) if residual is not None else None
        self.arg = arg

    def read(self, batch: Index | int, row: Index, col: Index, h: int, w: int, edge: list) -> None:
        if self.gen is None:
            return
        k, shape = self.k, self.shape
        start = k.affine(k.arg(self.arg), (batch, shape.mt * shape.nt), (row, h * shape.nt), (col, w))
        k.op("cb_reserve_back", cb=CB_RESIDUAL, pages=h * w)
        k.op("noc_read_tiles", self.gen, start, *edge, cb=CB_RESIDUAL, rows=h, cols=w, row_stride=shape.nt)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_RESIDUAL, pages=h * w)


def matmul_reader(op: Operation, shape: MatmulShape, s: Schedule, a_step: int, b_step: int, has_bias: bool):
    b = s.blocking
    ragged = is_ragged(shape, b)
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    k = KernelBuilder(op.loc)
    a_gen, b_gen = k.addrgen(0, tensor(op.operands[0])), k.addrgen(1, tensor(op.operands[1]))
    bias = ttir.linear_bias(op)
    bias_gen = k.addrgen(2, tensor(bias)) if bias is not None else None
    residual = ResidualReads(op, shape, k, 4 if ragged else 3)
    def read_in0(a_base: Index, row: Index, kb: Index) -> None:
        k.op("cb_reserve_back", cb=CB_IN0, pages=h * width)
        a_start = k.affine(a_base, (row, h * shape.kt), (kb, width))
        k.op("noc_read_tiles", a_gen, a_start, cb=CB_IN0, rows=h, cols=width, row_stride=shape.kt)

    def read_in1(b_base: Index, col: Index, kb: Index) -> list:
        """Reserve and read a subblock column's in1 block; returns its ragged-edge operand (valid columns)."""
        k.op("cb_reserve_back", cb=CB_IN1, pages=width * w)
        b_start = k.affine(b_base, (kb, width * shape.nt), (col, w))
        edge = [k.affine(k.arg(3), (col, -w))] if ragged else []  # valid columns of this subblock
        k.op("noc_read_tiles", b_gen, b_start, *edge, cb=CB_IN1, rows=width, cols=w, row_stride=shape.nt)
        return edge

    def read_bias(col: Index, edge: list) -> None:
        k.op("cb_reserve_back", cb=CB_BIAS, pages=w)
        k.op("noc_read_tiles", bias_gen, k.affine(k.arg(2), (col, w)), *edge, cb=CB_BIAS, rows=1, cols=w)

    def push(cb: int, pages: int, with_bias: bool) -> None:
        k.op("cb_push_back", cb=cb, pages=pages)
        if with_bias:
            k.op("cb_push_back", cb=CB_BIAS, pages=w)

    def k_step(batch: Index, a_base: Index, b_base: Index, kb: Index, last: bool) -> None:
        """One K block: row-outer (per subblock row the in0 rows, then per subblock the in1 columns) or, with
        `n_outer`, column-outer (per subblock column the in1 columns once, then per subblock the in0 rows); at the
        last K step each subblock's bias tiles come with its second read and its residual tiles after it."""
        with_bias = last and has_bias
        if column_outer(b):
            with k.loop(sw) as col:
                edge = read_in1(b_base, col, kb)
                k.op("noc_read_barrier")
                push(CB_IN1, width * w, False)
                with k.loop(sh) as row:
                    read_in0(a_base, row, kb)
                    if with_bias:
                        read_bias(col, edge)
                    k.op("noc_read_barrier")
                    push(CB_IN0, h * width, with_bias)
                    if last:
                        residual.read(batch, row, col, h, w, edge)
            return
        with k.loop(sh) as row:
            read_in0(a_base, row, kb)
            k.op("noc_read_barrier")
            push(CB_IN0, h * width, False)
            with k.loop(sw) as col:
                edge = read_in1(b_base, col, kb)
                if with_bias:
                    read_bias(col, edge)
                k.op("noc_read_barrier")
                push(CB_IN1, width * w, with_bias)
                if last:
                    residual.read(batch, row, col, h, w, edge)

    epilogue_reads = has_bias or residual.gen is not None  # read with the last K step's in1 blocks
    with k.loop(b["batches"]) as batch:
        a_base = k.affine(k.arg(0), (batch, a_step))
        b_base = k.affine(k.arg(1), (batch, b_step))
        plain = k_blocks - 1 if epilogue_reads else k_blocks
        if plain:
            with k.loop(plain) as kb:
                k_step(batch, a_base, b_base, kb, False)
        if epilogue_reads:
            k_step(batch, a_base, b_base, k_blocks - 1, True)
    return k.region()


def product_epilogue(k: KernelBuilder, op: Operation, shape: MatmulShape, h: int, w: int, has_bias: bool,
                     activation: str, origin: Callable[[], tuple[Index, Index]]) -> None:
    """A finished h x w subblock in Dst, up to its pack: the bias (packed as the unfused linear wrote it, then the
    row-broadcast add), the activation, the masks of padding rows and columns (`origin` gives the subblock's first
    tile row and column, emitted only when masking) and the residual (packed, then the unfused eltwise's add: zero
    padding stays zero) with its activation. The unsplit kernel's and the K split's last core's."""
    tiles = h * w
    mask_rows, mask_cols = matmul_masks(op)
    if has_bias:
        k.pack_block(CB_BIASED, tiles)
        k.op("cb_wait_front", cb=CB_BIASED, pages=tiles)
        k.op("cb_wait_front", cb=CB_BIAS, pages=w)
        k.op("tile_regs_acquire")
        k.op("binary_tiles", op="add", cb_a=CB_BIASED, a_row_stride=w, cb_b=CB_BIAS, b_row_stride=0,
             bcast="row", rows=h, cols=w)
        k.op("cb_pop_front", cb=CB_BIASED, pages=tiles)
        k.op("cb_pop_front", cb=CB_BIAS, pages=w)
    if activation != "none":
        k.op("sfpu_tiles", fn=activation, count=tiles)
    if mask_rows or mask_cols:
        row_tile, col_tile = origin()
        k.op("mask_tiles", row_tile, col_tile, rows=h, cols=w,
             valid_rows=shape.rows if mask_rows else shape.mt * TILE,
             valid_cols=shape.cols if mask_cols else shape.nt * TILE)
    if ttir.linear_residual(op) is not None:
        packed_add(k, CB_BIASED, CB_RESIDUAL, h, w, packed_first=True)
        residual_activation = op.attributes.get("residual_activation", "none")
        if residual_activation != "none":
            k.op("sfpu_tiles", fn=residual_activation, count=tiles)


def matmul_compute(op: Operation, shape: MatmulShape, s: Schedule, has_bias: bool, activation: str,
                   in0_ready: Callable[[KernelBuilder], None] | None = None,
                   pack_out: Callable[[KernelBuilder, int, int], None] | None = None):
    """`in0_ready` emits what makes each in0 block (before its wait) when compute makes it itself (im2col_matmul.py:
    the block tilized from looked-up rows); `pack_out` packs a finished h x w subblock from Dst instead of
    `pack_block` into CB_OUT (matmul_rows.py: as rows)."""
    b = s.blocking
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    chunk_blocks = accumulation_tiles(shape.kt) // width  # K blocks per accumulation chunk
    chunks = k_blocks // chunk_blocks
    k = KernelBuilder(op.loc)
    tiles = h * w
    matmul = {"cb_a": CB_IN0, "a_row_stride": width, "cb_b": CB_IN1, "b_row_stride": w, "inner": width,
              "rows": h, "cols": w, "fidelity": s.fidelity}

    def epilogue(row: Index, col: Index) -> None:
        product_epilogue(k, op, shape, h, w, has_bias, activation,
                         lambda: (k.affine(k.arg(0), (row, h)), k.affine(k.arg(1), (col, w))))
        if pack_out is not None:
            pack_out(k, h, w)
        else:
            k.pack_block(CB_OUT, tiles)

    def subblock(row: Index, col: Index, fresh: bool, chunk_end: bool, first_chunk: bool, last: bool,
                 done: int) -> None:
        """One subblock's K block, its operands waited; `done` (CB_IN0 or CB_IN1) is popped after the product."""
        k.op("tile_regs_acquire")
        if not fresh:  # (a fresh chain starts from zero: `accumulate = false`, no fill)
            k.op("cb_wait_front", cb=CB_PARTIALS, pages=tiles)
            k.op("copy_tiles", cb=CB_PARTIALS, row_stride=w, rows=h, cols=w)
            k.op("cb_pop_front", cb=CB_PARTIALS, pages=tiles)
        k.op("matmul_tiles", **matmul, **({} if not fresh else {"accumulate": False}))
        k.op("cb_pop_front", cb=done, pages=h * width if done == CB_IN0 else width * w)
        if chunk_end:
            finish_chunk(row, col, first_chunk, last)
        else:
            k.pack_block(CB_PARTIALS, tiles)

    def k_step(fresh: bool, chunk_end: bool, first_chunk: bool, last: bool) -> None:
        """One K block for every subblock: a fresh chain (a chunk's first block) or the chain continued from
        the partials; at a chunk's end its sum becomes, or is added to, the running total."""
        if column_outer(b):
            with k.loop(sw) as col:
                k.op("cb_wait_front", cb=CB_IN1, pages=width * w)
                with k.loop(sh) as row:
                    if in0_ready is not None:
                        in0_ready(k)
                    k.op("cb_wait_front", cb=CB_IN0, pages=h * width)
                    subblock(row, col, fresh, chunk_end, first_chunk, last, CB_IN0)
                k.op("cb_pop_front", cb=CB_IN1, pages=width * w)
            return
        with k.loop(sh) as row:
            if in0_ready is not None:
                in0_ready(k)
            k.op("cb_wait_front", cb=CB_IN0, pages=h * width)
            with k.loop(sw) as col:
                k.op("cb_wait_front", cb=CB_IN1, pages=width * w)
                subblock(row, col, fresh, chunk_end, first_chunk, last, CB_IN1)
            k.op("cb_pop_front", cb=CB_IN0, pages=h * width)

    def finish_chunk(row: Index, col: Index, first_chunk: bool, last: bool) -> None:
        """Dst holds a chunk's sum: add the running total (in bf16) unless it is the first chunk; then the
        epilogue after the last chunk, else the new total back to its CB."""
        if not first_chunk:
            packed_add(k, CB_CHUNK, CB_TOTAL, h, w, packed_first=False)
        if last:
            epilogue(row, col)
        else:
            k.pack_block(CB_TOTAL, tiles)

    def chunk(first_chunk: bool, last_chunk: bool) -> None:
        k_step(True, chunk_blocks == 1, first_chunk, last_chunk and chunk_blocks == 1)
        if chunk_blocks > 2:
            with k.loop(chunk_blocks - 2):
                k_step(False, False, first_chunk, False)
        if chunk_blocks > 1:
            k_step(False, True, first_chunk, last_chunk)

    with k.loop(b["batches"]):
        chunk(True, chunks == 1)
        if chunks > 2:
            with k.loop(chunks - 2):
                chunk(False, False)
        if chunks > 1:
            chunk(False, True)
    return k.region()


def matmul_writer(op: Operation, shape: MatmulShape, s: Schedule, output: int | None = None):
    """`output`: the result's buffer index when it is not the one after the op's operands."""
    b = s.blocking
    h, w = b["out_subblock_h"], b["out_subblock_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(op.operands) if output is None else output, tensor(op.result))
    ragged = is_ragged(shape, b)
    with k.loop(b["batches"]) as batch:
        base = k.affine(k.arg(0), (batch, shape.mt * shape.nt))
        outer, inner = k.loop(b["per_core_m"] // h), k.loop(b["per_core_n"] // w)
        if column_outer(b):
            outer, inner = inner, outer
        with outer as first, inner as second:
            row, col = (second, first) if column_outer(b) else (first, second)
            start = k.affine(base, (row, h * shape.nt), (col, w))
            edge = [k.affine(k.arg(1), (col, -w))] if ragged else []
            k.op("cb_wait_front", cb=CB_OUT, pages=h * w)
            k.op("noc_write_tiles", gen, start, *edge, cb=CB_OUT, rows=h, cols=w, row_stride=shape.nt)
            k.op("noc_write_barrier")
            k.op("cb_pop_front", cb=CB_OUT, pages=h * w)
    return k.region()


class MatmulOp(DeviceOp):
    """[batch..., M, K] @ [batch..., K, N] (+ bias row, activation)."""

    kind = "matmul"
    op_names = MATMUL_OPS

    def matches(self, op: Operation) -> bool:
        return not is_row_major(op.result)  # a product written as rows: matmul_rows.py

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return matmul_candidates(op)

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, ksplit_units

        return ksplit_units(matmul_shape(op), blocking) if is_ksplit(blocking) \
            else matmul_units(matmul_shape(op), blocking)

    def grid_shape(self, op: Operation, blocking: dict[str, int]) -> tuple[int, int] | None:
        from ttc.passes.ops.matmul_mcast import is_mcast, mcast_grid

        return mcast_grid(matmul_shape(op), blocking) if is_mcast(blocking) else None

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, ksplit_cbs

        return ksplit_cbs(op, blocking) if is_ksplit(blocking) else matmul_cbs(op, blocking)

    def scratch(self, op: Operation, blocking: dict[str, int]) -> list[TensorType]:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, scratch_type

        return [scratch_type(op, matmul_shape(op), blocking)] if is_ksplit(blocking) else []

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, plan_ksplit

        plan = plan_ksplit if is_ksplit(blocking) else plan_matmul
        return plan(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        from ttc.passes.ops.matmul_ksplit import is_ksplit, lower_ksplit

        return lower_ksplit(op) if is_ksplit(schedule_of(op).blocking) else lower_matmul(op)


MATMUL = register(MatmulOp())
