"""The multicast matmul plans (`"mcast"` in a matmul blocking), after tt-metal's reuse-multicast matmuls
(matmul_multi_core_reuse_mcast_2d and _1d: sender and receiver reader kernels, a ready and a valid semaphore
per operand).

`"mcast": 1`, the 2-D plan. The grid is exactly n_blocks x (batch_groups * m_blocks): core (x, y) computes
output block (batch group g = y // m_blocks, m = y % m_blocks, n = x) for the consecutive batches of its group,
so the cores of a grid row share their in0 rows and the cores of a grid column their in1 columns. The first
core of each row reads the row's in0 blocks from DRAM (or L1) and multicasts them along the row. In1 goes down
the column: when every batch reads the same in1 matrix (a linear layer's weights: [batch..., M, K] @ [K, N])
the first core of the column reads it for the whole column; otherwise (attention's per-head products) the
first core of each batch group's rows reads its group's in1 blocks and multicasts them down those rows (nothing
to share when a group is one row).

The 2-D plan transposed (`"mcast": 1` with `"by_column": 1`, tt-metal's transpose_mcast): one batch group, the
grid m_blocks x n_blocks, core (x, y) computing M block x and N block y (the units taken column by column,
interface.unit_index); in0 goes down the columns from the top core of each, in1 along the rows from the first
core of each. It fits where the plain grid does not: a tall product of more M blocks than the grid has rows
(ResNet-50's stage-3 and stage-4 3x3 convolutions at batch 20, M 123 or 31 tiles by N 8 or 16 tiles, on up to
12 columns of M blocks). Its result is interleaved (the shard maps follow the row-major order).

`"mcast": 2` and `3`, the 1-D plans, for products the 2-D grid cannot spread: every core shares one operand.
With 2, all cores compute the same M rows (one batch group, per_core_m = M; a tall K x wide N layer such as a
late convolution whose M is a prime number of tiles) and core 0 multicasts in0 to the whole grid while every
core reads its own in1 columns; with 3, all cores compute the same N columns (per_core_n = N: a convolution's
few output channels over many rows of its im2col matrix) and core 0 multicasts in1 (and the bias) to the whole
grid while every core reads its own in0 rows; the batches must then share in1. Their grid is the unicast
plan's (`grid.grid_for`), cores past the last unit repeating its work (they take part in the handshake).

Every transfer is handshaken as in tt-metal: each receiver, with its CB pages reserved, increments the
sender's "ready" semaphore; the sender waits for all of them, resets it, multicasts the pages and sets the
receivers' "valid" semaphore; the receivers wait for it and reset it. The CBs, their push order and the
compute and writer kernels are the unicast plan's (matmul.py), so the result is bit for bit the unicast one
(the same K order). A fused residual is not shared: every core reads its own output block's tiles of it, as in
the unicast plan (not offered with a ragged N edge, whose receivers have no valid-column argument for it). Only
the reader differs: DRAM reads of a shared operand fall from every core's to one
core's per row, column, column segment or grid, while NoC bytes, link bytes and the fan-out rise (the counts
below, which the cost model weighs against the unicast plans).

A ragged N edge (the last N block has fewer valid tiles than per_core_n) is the unicast plan's: the core
reading the last block's in1 reads only the tiles before the edge and zero-fills the rest (a sender multicasts
the whole block); the writer drops the columns past the edge.

Offered for products over at least two cores that multicast something, when the operands multicast are
interleaved (a sharded operand's pages are local to some cores, which the multicast counts do not model). An
operand every core reads for itself (in0 of the in1 plan, in1 of the in0 plan) is read and counted as in the
unicast plan, so it may be sharded: a height-sharded convolution input is read from each core's own shard while
the weights come by multicast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.passes.ops.counting import Buffer, Plan
from ttc.passes.ops.geometry import CB_BIAS, CB_IN0, CB_IN1, is_sharded, tensor
from ttc.passes.ops.interface import BY_COLUMN
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.program import Schedule

MCAST = "mcast"
GRID_2D, IN0_TO_ALL, IN1_TO_ALL = 1, 2, 3  # the plans
IN0_READY, IN0_VALID, IN1_READY, IN1_VALID = 0, 1, 2, 3
# reader runtime arguments after the unicast plan's three (a start, b start, n) (transposed 2-D plan: "this row,
# last column" and "this column, last row" trade places, each operand's pair naming its own multicast's line):
# in0 sender?, in0 receiver?, in0 valid columns (in0_block_w where the core reads in0, 0: nothing read),
# [2-D: this row, last column;]
# in1 sender?, in1 receiver?, in1 valid columns (where the core reads in1: out_subblock_w, or at a ragged edge
# its output columns before the edge; 0: nothing read), [2-D: this column, the last row of its multicast, and
# when in1 is not shared by the whole column (`shared_in1`) the first row of its multicast (else row 0)]
MCAST_ARGS = 3


def is_mcast(blocking: dict[str, int]) -> bool:
    return bool(blocking.get(MCAST, 0))


def transposed(blocking: dict[str, int]) -> bool:
    """The transposed 2-D plan: M blocks along the grid's rows, N blocks down its columns."""
    return bool(blocking.get(BY_COLUMN, 0))


def multicast_operands(blocking: dict[str, int]) -> tuple[int, ...]:
    """The operands (0: in0, 1: in1 with the bias) the blocking's plan multicasts; the others every core reads
    for itself as in the unicast plan (matmul.py counts them)."""
    return {0: (), GRID_2D: (0, 1), IN0_TO_ALL: (0,), IN1_TO_ALL: (1,)}[blocking.get(MCAST, 0)]


def shared_in1(shape) -> bool:
    """Every batch multiplies by the same in1 matrix (a broadcast weight), so a whole column shares it."""
    return bool((shape.b_offsets == shape.b_offsets[0]).all())


def _units(shape, blocking: dict[str, int]) -> tuple[int, int, int]:
    return (shape.batches // blocking["batches"], -(-shape.mt // blocking["per_core_m"]),
            -(-shape.nt // blocking["per_core_n"]))


def in1_rows(shape, blocking: dict[str, int]) -> int:
    """The grid rows one in1 multicast of the 2-D plan reaches: the whole column, or one batch group's rows."""
    groups, m_blocks, _ = _units(shape, blocking)
    return groups * m_blocks if shared_in1(shape) else m_blocks


def mcast_variants(op: Operation, shape, blocking: dict[str, int]) -> Iterator[dict[str, int]]:
    """The multicast plans of a unicast blocking (see the module doc); a multicast operand must be interleaved."""
    if blocking.get("n_outer"):  # the readers push in the row-outer order of the unicast reader's default walk
        return
    sharded0, sharded1 = is_sharded(tensor(op.operands[0])), is_sharded(tensor(op.operands[1]))
    groups, m_blocks, n_blocks = _units(shape, blocking)
    if ttir.linear_residual(op) is not None and shape.nt % blocking["per_core_n"]:
        return  # a residual read up to a ragged edge needs every core's valid columns (the unicast reader's)
    if (n_blocks > 1 or in1_rows(shape, blocking) > 1) and not sharded0 and not sharded1:
        yield {**blocking, MCAST: GRID_2D}
        if groups == 1 and m_blocks > 1 and n_blocks > 1:
            yield {**blocking, MCAST: GRID_2D, BY_COLUMN: 1}
    if groups * m_blocks == 1 and n_blocks > 1 and not sharded0:
        yield {**blocking, MCAST: IN0_TO_ALL}
    if n_blocks == 1 and groups * m_blocks > 1 and (groups == 1 or shared_in1(shape)) and not sharded1:
        yield {**blocking, MCAST: IN1_TO_ALL}


def mcast_allowed(op: Operation, shape, blocking: dict[str, int]) -> bool:
    """Whether the multicast plan `blocking[MCAST]` runs this blocking."""
    plain = {k: v for k, v in blocking.items() if k not in (MCAST, BY_COLUMN)}
    return any(v[MCAST] == blocking[MCAST] and transposed(v) == transposed(blocking)
               for v in mcast_variants(op, shape, plain))


def mcast_grid(shape, blocking: dict[str, int]) -> tuple[int, int] | None:
    """The 2-D plan's grid (x, y): one column per N block, one row per batch group and M block (M blocks rounded
    up: an overlapping M split, matmul.m_splits), transposed: one column per M block and one row per N block; None
    for the 1-D plans (any grid holding the units)."""
    if blocking[MCAST] != GRID_2D:
        return None
    groups, m_blocks, n_blocks = _units(shape, blocking)
    if transposed(blocking):
        return m_blocks, n_blocks
    return n_blocks, groups * m_blocks


def _in1_valid(shape, blocking: dict[str, int], n_block: int) -> int:
    """What a core reading in1 passes as its valid columns: the subblock's width, or at a ragged edge (and always
    where it reads in1 for itself, as the unicast reader's argument) its output columns before the edge (the
    reader subtracts each subblock's start)."""
    if shape.nt % blocking["per_core_n"] or blocking[MCAST] == IN0_TO_ALL:
        return min(blocking["per_core_n"], shape.nt - n_block * blocking["per_core_n"])
    return blocking["out_subblock_w"]


def mcast_reader_args(shape, unit: tuple[int, ...], grid: tuple[int, int], blocking: dict[str, int]) -> list[int]:
    """The multicast arguments of the core computing `unit` (batch group, m block, n block)."""
    group, m, x = unit
    width, v1 = blocking["in0_block_w"], _in1_valid(shape, blocking, x)
    if blocking[MCAST] != GRID_2D:  # core 0 (unit 0: the extra cores of a padded grid repeat the last unit) sends
        first = int(not any(unit))
        s0 = first if blocking[MCAST] == IN0_TO_ALL else 1
        s1 = first if blocking[MCAST] == IN1_TO_ALL else 1
        return [s0, 1 - s0, width if s0 else 0, s1, 1 - s1, v1 if s1 else 0]
    if transposed(blocking):  # core (m, x): in0 down column m from row 0, in1 along row x from column 0
        s0, s1 = int(x == 0), int(m == 0)
        return [s0, 1 - s0, width if s0 else 0, m, grid[1] - 1, s1, 1 - s1, v1 if s1 else 0, x, grid[0] - 1]
    y = group * -(-shape.mt // blocking["per_core_m"]) + m
    rows = in1_rows(shape, blocking)
    first = y - y % rows
    s0, s1 = int(x == 0), int(y == first)
    return [s0, 1 - s0, width if s0 else 0, y, grid[0] - 1,
            s1, 1 - s1, v1 if s1 else 0, x, first + rows - 1, *([] if shared_in1(shape) else [first])]


def plan_operands_mcast(plan: Plan, op: Operation, shape, b: dict[str, int], grid: tuple[int, int]) -> None:
    """The traffic of the operands the plan multicasts (`multicast_operands`; the others and the output are
    counted as in the unicast plan)."""
    gx = grid[0]
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    device = plan.device
    a, wt = tensor(op.operands[0]), tensor(op.operands[1])
    abuf, wbuf = Buffer.of(a, device), Buffer.of(wt, device)
    in0 = b["batches"] * k_blocks * sh  # instances of each read
    core_x, core_y = np.arange(plan.cores) % gx, np.arange(plan.cores) // gx
    everyone = np.ones(plan.cores, dtype=bool)
    core0 = np.arange(plan.cores) == 0
    if b[MCAST] == GRID_2D and transposed(b):  # in0 down each column, in1 along each row
        readers0, readers1 = core_y == 0, core_x == 0
        reach0, reach1 = grid[1], gx
    elif b[MCAST] == GRID_2D:
        rows = in1_rows(shape, b)
        readers0, readers1 = core_x == 0, core_y % rows == 0
        reach0, reach1 = gx, rows  # cores one multicast reaches, its sender included
    else:
        readers0 = core0 if b[MCAST] == IN0_TO_ALL else everyone
        readers1 = core0 if b[MCAST] == IN1_TO_ALL else everyone
        reach0 = plan.cores if b[MCAST] == IN0_TO_ALL else 1
        reach1 = plan.cores if b[MCAST] == IN1_TO_ALL else 1
    # per in1 subblock column: the tiles before the edge that all of in1's readers read (w, but at a ragged edge)
    valid = np.minimum(b["per_core_n"], shape.nt - plan.unit[:, 2] * b["per_core_n"])
    edge = np.clip(valid[:, None] - np.arange(sw)[None, :] * w, 0, w)[readers1].sum(axis=0)  # [sw]
    shared = multicast_operands(b)
    if 0 in shared:
        plan.masked(abuf, np.full(in0, int(readers0.sum()) * h * width))
    if 1 in shared:
        plan.masked(wbuf, np.tile(width * edge, in0))
    sent = np.zeros(plan.cores, dtype=np.int64)
    fanout = 0
    if reach0 > 1:  # each sender's pages leave once and enter the others it reaches
        plan.masked(Buffer(abuf.page, False, None), np.full(in0, int(readers0.sum()) * h * width * reach0))
        sent += np.where(readers0, in0 * h * width * abuf.page, 0)
        fanout = max(fanout, reach0 - 1)
    senders1 = int(readers1.sum())
    if reach1 > 1:
        plan.masked(Buffer(wbuf.page, False, None), np.full(in0 * sw, senders1 * width * w * reach1))
        sent += np.where(readers1, in0 * sw * width * w * wbuf.page, 0)
        fanout = max(fanout, reach1 - 1)
    bias = ttir.linear_bias(op)
    if bias is not None and 1 in shared:  # the bias row with the last K step's in1 blocks: read, multicast
        bbuf = Buffer.of(tensor(bias), device)
        last = b["batches"] * sh  # instances of the last K step
        plan.masked(bbuf, np.tile(edge, last))
        if reach1 > 1:
            plan.masked(Buffer(bbuf.page, False, None), np.full(last * sw, senders1 * w * reach1))
            sent += np.where(readers1, last * sw * w * bbuf.page, 0)
    plan.builder.multicast(sent, fanout)


def multicast_handshake(k: KernelBuilder, blocks: list[tuple[int, int]], sender: Index, receiver: Index,
                        at: tuple[Index, Index], rect: tuple[Index, Index, Index, Index], receivers: int,
                        ready: int, valid: int) -> None:
    """tt-metal's handshake around the multicast of blocks (cb, pages) the sender has read: each receiver (its
    CB pages reserved) increments the ready semaphore of the sender at `at`; the sender waits for all
    `receivers`, multicasts the blocks to `rect` (the last multicast setting the receivers' valid semaphore); a
    receiver waits for it. `sender` and `receiver` are this core's flags (0 or 1)."""
    k.op("semaphore_inc", *at, receiver, semaphore=ready)
    k.op("semaphore_wait", sender, semaphore=ready, value=receivers)
    k.op("semaphore_set", sender, semaphore=ready, value=0)
    for i, (cb, pages) in enumerate(blocks):
        last = i == len(blocks) - 1
        k.op("noc_mcast_cb", *rect, sender, cb=cb, pages=pages, semaphore=valid if last else -1, value=1)
    k.op("semaphore_wait", receiver, semaphore=valid, value=1)
    k.op("semaphore_set", receiver, semaphore=valid, value=0)

def mcast_reader(op: Operation, shape, s: Schedule, a_step: int, b_step: int, has_bias: bool):
    """The reader: the unicast reader's pushes, each shared operand block read by its sender and multicast."""
    b = s.blocking
    gx, gy = s.grid.x, s.grid.y
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    ragged = shape.nt % b["per_core_n"] != 0
    shared = multicast_operands(b)
    k = KernelBuilder(op.loc)
    a_gen, b_gen = k.addrgen(0, tensor(op.operands[0])), k.addrgen(1, tensor(op.operands[1]))
    bias = ttir.linear_bias(op)
    bias_gen = k.addrgen(2, tensor(bias)) if bias is not None else None
    # per operand: sender?, receiver?, valid columns, the sender's (x, y), the rectangle, receivers per multicast
    if b[MCAST] == GRID_2D and transposed(b):  # in0 down column col_x, in1 along row row_y
        s0, r0, v0, col_x, last_y, s1, r1, v1, row_y, last_x = (k.arg(MCAST_ARGS + i) for i in range(10))
        route0 = ((col_x, 0), (col_x, 0, col_x, last_y), gy - 1)
        route1 = ((0, row_y), (0, row_y, last_x, row_y), gx - 1)
    elif b[MCAST] == GRID_2D:
        s0, r0, v0, row_y, last_x, s1, r1, v1, col_x, last_y = (k.arg(MCAST_ARGS + i) for i in range(10))
        first_y = 0 if shared_in1(shape) else k.arg(MCAST_ARGS + 10)
        rows = in1_rows(shape, b)
        route0 = ((0, row_y), (0, row_y, last_x, row_y), gx - 1)
        route1 = ((col_x, first_y), (col_x, first_y, col_x, last_y), rows - 1)
    else:
        s0, r0, v0, s1, r1, v1 = (k.arg(MCAST_ARGS + i) for i in range(6))
        whole = ((0, 0), (0, 0, gx - 1, gy - 1), math.prod((gx, gy)) - 1)
        none = ((0, 0), (0, 0, 0, 0), 0)
        route0 = whole if b[MCAST] == IN0_TO_ALL else none
        route1 = whole if b[MCAST] == IN1_TO_ALL else none
    from ttc.passes.ops.matmul import ResidualReads

    n_args = 6 if b[MCAST] != GRID_2D else 10 if transposed(b) or shared_in1(shape) else 11  # mcast_reader_args'
    # count
    residual = ResidualReads(op, shape, k, MCAST_ARGS + n_args)  # each core reads its own block's residual

    def share(blocks: list[tuple[int, int]], sender: Index, receiver: Index,
              route: tuple[tuple[Index, Index], tuple[Index, Index, Index, Index], int], ready: int, valid: int) -> None:
        """tt-metal's handshake around the multicast of blocks (cb, pages) the sender has read; the last
        multicast sets the receivers' valid semaphore."""
        at, rect, receivers = route
        if receivers:
            multicast_handshake(k, blocks, sender, receiver, at, rect, receivers, ready, valid)

    def k_step(batch: Index, kb: Index, last: bool) -> None:
        with_bias = last and has_bias
        with k.loop(sh) as row:
            k.op("cb_reserve_back", cb=CB_IN0, pages=h * width)
            a_start = k.affine(k.arg(0), (batch, a_step), (row, h * shape.kt), (kb, width))
            a_valid = [v0] if 0 in shared else []  # (an operand every core reads is read as in the unicast plan)
            k.op("noc_read_tiles", a_gen, a_start, *a_valid, cb=CB_IN0, rows=h, cols=width, row_stride=shape.kt)
            k.op("noc_read_barrier")
            share([(CB_IN0, h * width)], s0, r0, route0, IN0_READY, IN0_VALID)
            k.op("cb_push_back", cb=CB_IN0, pages=h * width)
            with k.loop(sw) as col:
                k.op("cb_reserve_back", cb=CB_IN1, pages=width * w)
                b_start = k.affine(k.arg(1), (batch, b_step), (kb, width * shape.nt), (col, w))
                # the reader's valid columns of this subblock
                edge = [k.affine(v1, (col, -w))] if ragged else [v1] if 1 in shared else []
                k.op("noc_read_tiles", b_gen, b_start, *edge, cb=CB_IN1, rows=width, cols=w, row_stride=shape.nt)
                if with_bias:  # the bias row goes with the in1 block
                    k.op("cb_reserve_back", cb=CB_BIAS, pages=w)
                    k.op("noc_read_tiles", bias_gen, k.affine(k.arg(2), (col, w)), *edge, cb=CB_BIAS, rows=1, cols=w)
                k.op("noc_read_barrier")
                blocks = [(CB_IN1, width * w), (CB_BIAS, w)] if with_bias else [(CB_IN1, width * w)]
                share(blocks, s1, r1, route1, IN1_READY, IN1_VALID)
                k.op("cb_push_back", cb=CB_IN1, pages=width * w)
                if with_bias:
                    k.op("cb_push_back", cb=CB_BIAS, pages=w)
                if last:
                    residual.read(batch, row, col, h, w, [])

    epilogue_reads = has_bias or residual.gen is not None
    with k.loop(b["batches"]) as batch:
        plain = k_blocks - 1 if epilogue_reads else k_blocks
        if plain:
            with k.loop(plain) as kb:
                k_step(batch, kb, False)
        if epilogue_reads:
            k_step(batch, k_blocks - 1, True)
    return k.region()
