"""The multicast matmul plan (`"mcast": 1` in a matmul blocking), after tt-metal's 2-D reuse-multicast matmul
(matmul_multi_core_reuse_mcast_2d: in0 sender/receiver and in1 sender/receiver kernels, a ready and a valid
semaphore per operand).

The grid is exactly n_blocks x m_blocks: core (x, y) computes output block (m = y, n = x), so the cores of a
grid row share their in0 rows and the cores of a grid column their in1 columns. The first core of each row
reads the row's in0 blocks from DRAM (or L1) and multicasts them along the row; the first core of each
column reads the column's in1 blocks and multicasts them down the column. Every transfer is handshaken as in
tt-metal: each receiver, with its CB pages reserved, increments the sender's "ready" semaphore; the sender
waits for all of them, resets it, multicasts the pages and sets the receivers' "valid" semaphore; the
receivers wait for it and reset it. The CBs, their push order and the compute and writer kernels are the
unicast plan's (matmul.py), so the result is bit for bit the unicast one (the same K order). A fused residual
is not shared: every core reads its own output block's tiles of it, as in the unicast plan. Only the reader
differs: DRAM reads fall from every core's to one core per row (in0) and per column (in1), while NoC bytes,
link bytes and the fan-out rise (the counts below, which the cost model weighs against the unicast plans).

Offered for one-batch, non-ragged products over at least two cores whose operands are interleaved (a
sharded operand's pages are local to some cores, which the multicast counts do not model).
"""

from __future__ import annotations

import numpy as np

from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.passes.ops.counting import Buffer, Plan
from ttc.passes.ops.geometry import CB_BIAS, CB_IN0, CB_IN1, is_sharded, tensor
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.program import Schedule

MCAST = "mcast"
IN0_READY, IN0_VALID, IN1_READY, IN1_VALID = 0, 1, 2, 3
# reader runtime arguments after the unicast plan's three (a start, b start, n):
# in0 sender?, in0 receiver?, in0 valid columns (in0_block_w on the sender, 0: nothing read), this row, last column;
# in1 sender?, in1 receiver?, in1 valid columns, this column, last row
MCAST_ARGS = 3


def is_mcast(blocking: dict[str, int]) -> bool:
    return bool(blocking.get(MCAST, 0))


def mcast_allowed(op: Operation, shape, blocking: dict[str, int]) -> bool:
    """Whether the multicast plan runs this blocking (see the module doc)."""
    m_blocks, n_blocks = shape.mt // blocking["per_core_m"], shape.nt // blocking["per_core_n"]
    return (shape.batches == 1 and shape.nt % blocking["per_core_n"] == 0 and m_blocks * n_blocks >= 2
            and not is_sharded(tensor(op.operands[0])) and not is_sharded(tensor(op.operands[1])))


def mcast_grid(shape, blocking: dict[str, int]) -> tuple[int, int]:
    """(x, y): one grid column per N block, one row per M block."""
    return shape.nt // blocking["per_core_n"], -(-shape.mt // blocking["per_core_m"])


def mcast_reader_args(x: int, y: int, grid: tuple[int, int], blocking: dict[str, int]) -> list[int]:
    gx, gy = grid
    s0, s1 = int(x == 0), int(y == 0)
    return [s0, 1 - s0, blocking["in0_block_w"] if s0 else 0, y, gx - 1,
            s1, 1 - s1, blocking["out_subblock_w"] if s1 else 0, x, gy - 1]


def plan_operands_mcast(plan: Plan, op: Operation, shape, b: dict[str, int], grid: tuple[int, int]) -> None:
    """The in0, in1 and bias traffic of the multicast reader (the output's is the unicast plan's)."""
    gx, gy = grid
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    device = plan.device
    a, wt = tensor(op.operands[0]), tensor(op.operands[1])
    abuf, wbuf = Buffer.of(a, device), Buffer.of(wt, device)
    in0, in1 = k_blocks * sh, k_blocks * sh * sw  # instances of each read
    plan.masked(abuf, np.full(in0, gy * h * width))  # one reader per row
    plan.masked(wbuf, np.full(in1, gx * width * w))  # one reader per column
    sent = np.zeros(plan.cores, dtype=np.int64)
    fanout = 0
    core_x, core_y = np.arange(plan.cores) % gx, np.arange(plan.cores) // gx
    if gx > 1:  # each row's sender: its pages leave once and enter the gx - 1 others
        plan.masked(Buffer(abuf.page, False, None), np.full(in0, gy * h * width * gx))
        sent += np.where(core_x == 0, in0 * h * width * abuf.page, 0)
        fanout = max(fanout, gx - 1)
    if gy > 1:
        plan.masked(Buffer(wbuf.page, False, None), np.full(in1, gx * width * w * gy))
        sent += np.where(core_y == 0, in1 * width * w * wbuf.page, 0)
        fanout = max(fanout, gy - 1)
    bias = ttir.linear_bias(op)
    if bias is not None:  # the bias row with the last K step's in1 blocks: read per column, multicast
        bbuf = Buffer.of(tensor(bias), device)
        plan.masked(bbuf, np.full(sh * sw, gx * w))
        if gy > 1:
            plan.masked(Buffer(bbuf.page, False, None), np.full(sh * sw, gx * w * gy))
            sent += np.where(core_y == 0, sh * sw * w * bbuf.page, 0)
    plan.builder.multicast(sent, fanout)


def mcast_reader(op: Operation, shape, s: Schedule, has_bias: bool):
    """The reader: the unicast reader's pushes, each operand block read by its sender and multicast."""
    b = s.blocking
    gx, gy = s.grid.x, s.grid.y
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    k = KernelBuilder(op.loc)
    a_gen, b_gen = k.addrgen(0, tensor(op.operands[0])), k.addrgen(1, tensor(op.operands[1]))
    bias = ttir.linear_bias(op)
    bias_gen = k.addrgen(2, tensor(bias)) if bias is not None else None
    s0, r0, v0, row_y, last_x, s1, r1, v1, col_x, last_y = (k.arg(MCAST_ARGS + i) for i in range(10))
    from ttc.passes.ops.matmul import ResidualReads

    residual = ResidualReads(op, shape, k, MCAST_ARGS + 10)  # each core reads its own block's residual

    def share(blocks: list[tuple[int, int]], sender: Index, receiver: Index, at: tuple[Index, Index],
              rect: tuple[Index, Index, Index, Index], receivers: int, ready: int, valid: int) -> None:
        """tt-metal's handshake around the multicast of blocks (cb, pages) the sender has read; the last
        multicast sets the receivers' valid semaphore."""
        if not receivers:
            return
        k.op("semaphore_inc", *at, receiver, semaphore=ready)
        k.op("semaphore_wait", sender, semaphore=ready, value=receivers)
        k.op("semaphore_set", sender, semaphore=ready, value=0)
        for i, (cb, pages) in enumerate(blocks):
            last = i == len(blocks) - 1
            k.op("noc_mcast_cb", *rect, sender, cb=cb, pages=pages, semaphore=valid if last else -1, value=1)
        k.op("semaphore_wait", receiver, semaphore=valid, value=1)
        k.op("semaphore_set", receiver, semaphore=valid, value=0)

    def k_step(kb: Index, last: bool) -> None:
        with_bias = last and has_bias
        with k.loop(sh) as row:
            k.op("cb_reserve_back", cb=CB_IN0, pages=h * width)
            a_start = k.affine(k.arg(0), (row, h * shape.kt), (kb, width))
            k.op("noc_read_tiles", a_gen, a_start, v0, cb=CB_IN0, rows=h, cols=width, row_stride=shape.kt)
            k.op("noc_read_barrier")
            share([(CB_IN0, h * width)], s0, r0, (0, row_y), (0, row_y, last_x, row_y), gx - 1, IN0_READY, IN0_VALID)
            k.op("cb_push_back", cb=CB_IN0, pages=h * width)
            with k.loop(sw) as col:
                k.op("cb_reserve_back", cb=CB_IN1, pages=width * w)
                b_start = k.affine(k.arg(1), (kb, width * shape.nt), (col, w))
                k.op("noc_read_tiles", b_gen, b_start, v1, cb=CB_IN1, rows=width, cols=w, row_stride=shape.nt)
                if with_bias:  # the bias row goes down the column with the in1 block
                    k.op("cb_reserve_back", cb=CB_BIAS, pages=w)
                    k.op("noc_read_tiles", bias_gen, k.affine(k.arg(2), (col, w)), v1, cb=CB_BIAS, rows=1, cols=w)
                k.op("noc_read_barrier")
                blocks = [(CB_IN1, width * w), (CB_BIAS, w)] if with_bias else [(CB_IN1, width * w)]
                share(blocks, s1, r1, (col_x, 0), (col_x, 0, col_x, last_y), gy - 1, IN1_READY, IN1_VALID)
                k.op("cb_push_back", cb=CB_IN1, pages=width * w)
                if with_bias:
                    k.op("cb_push_back", cb=CB_BIAS, pages=w)
                if last:
                    residual.read(0, row, col, h, w, [])

    epilogue_reads = has_bias or residual.gen is not None
    plain = k_blocks - 1 if epilogue_reads else k_blocks
    if plain:
        with k.loop(plain) as kb:
            k_step(kb, False)
    if epilogue_reads:
        k_step(k_blocks - 1, True)
    return k.region()

