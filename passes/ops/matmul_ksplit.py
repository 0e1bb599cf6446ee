"""The K-split matmul plan (`"ksplit": S` in a matmul blocking): a product whose output has too few tile blocks to
fill the grid (ResNet-50's stage-4 convolutions at batch 1: M = 2 tiles, N = 16, K = 144, 16 output blocks) puts
S cores on each output block, each taking a range of its K; the result is bit for bit the unsplit program's.

The unsplit chain (matmul.py, `accumulation_tiles`) accumulates K in C chunks: each chunk is a fresh chain in
the 16-bit Dst, and its sum, packed in the work format, is added in bf16 onto the running total of the chunks
before it (total + chunk, the total the FPU's first operand; the first chunk's packed sum is the first total).
Here the C chunks are dealt out in K order, C / S to a core (`chunks_per_core`): core j of a block computes the
sums of its chunks for every output subblock (the unsplit kernel's walk over its own K range, each chunk's sum
packed instead of added), and the block's last core, S - 1, gathers the others' chunk sums and runs the unsplit
chain of adds over all C of them in K order, then the epilogue (bias row, activation, masks, residual add and its
activation): the same adds of the same packed values as the unsplit kernel, so the same bits.

The exchange uses the multicast handshake of matmul_mcast.py. A core's chunk sums go from its compute kernel
(CB_SEND) through its writer to its own pages of an L1 scratch buffer and back through its reader (a semaphore
on the core itself orders the two): only the producer of a CB may multicast its reserved pages. Then, in S - 1
rounds, core r of each block (in K order) reads its sums into its reserved window of CB_GATHER and multicasts
them into the same window of its block's last core (`multicast_handshake`: the receiver, its pages reserved,
increments the sender's ready semaphore; the multicast sets the receiver's valid semaphore). No core reads bytes
another core writes (the race check of runtime/native_program.py): the scratch pages are each core's own.

The emulators run a program's cores in lockstep (runtime/multicast.py), and the kernels have no per-core branches:
a role is a runtime argument (an `enabled` flag of the semaphore and multicast ops, the valid columns of a NoC
transfer). So every core runs the chain and the epilogue: the others on zeros or on their own sums (their reads
of the bias and the residual zero-filled), their results dropped (they write nothing). The counts say so: each
core executes the C - 1 adds per output tile of the unsplit chain, the split divides only the products (and the
reloads between K steps); a hand-over of the running total core to core (each core adding its chunks onto its
predecessor's total) would put S waits in a row, which lockstep cores cannot overlap either. A padded grid's extra
cores (a unit count forming no rectangle) repeat the last core's operand reads and compute but send, receive and
write nothing. A row-major result (the untilize after the product fused into it: matmul_rows.py) is packed as rows
and written by matmul_rows.py's row writer on the finishing cores (a row count of 0 on the others).

Units: (batch groups, M blocks, N blocks, S), the K split fastest, so the cores of a block are consecutive in
row-major order. Offered for one batch group, no ragged N edge, the preferred subblock (matmul.subblock_choices),
at most `MAX_SUBBLOCKS` subblocks per core (the chain is unrolled over them: the offsets into the gathered sums
are static), the unicast row-outer walk, when the unsplit blocking has at most half the grid's cores; the grid
pass takes it only when the cost model ranks it cheaper. Semaphore messages and the rounds' latency are not counted (docs/cost-model.md, section 7).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import TensorType
from ttc.passes.ops.counting import Buffer, Plan, Weights, format_name
from ttc.passes.ops.geometry import (
    CB_BIAS,
    CB_BIASED,
    CB_IN0,
    CB_IN1,
    CB_OUT,
    CB_PARTIALS,
    CB_RESIDUAL,
    CB_TOTAL,
    GRID_CORES,
    TILE,
    cb,
    divisors,
    double,
    is_row_major,
    page_size,
    tensor,
    work_format,
)
from ttc.passes.ops.kernel import KernelBuilder
from ttc.passes.ops.program import Program, Schedule, schedule_of

KSPLIT = "ksplit"
CB_GATHER, CB_SEND = 4, 5  # the other cores' chunk sums (at the block's last core), this core's to send
CB_SUMS = 28  # this core's chunk sums of the whole block (chunk-major, subblocks row-major within a chunk)
SELF, READY, VALID = 0, 1, 2  # the writer -> reader hand-over on a core; the multicast handshake's semaphores
MAX_SUBBLOCKS = 8  # the chain is unrolled over the subblocks of a core's block
MAX_FILL = 2  # offered where the unsplit blocking's units take at most 1 / MAX_FILL of the grid


def is_ksplit(blocking: dict[str, int]) -> bool:
    return blocking.get(KSPLIT, 0) > 1


def chunks_per_core(shape, blocking: dict[str, int]) -> int:
    from ttc.passes.ops.matmul import accumulation_tiles

    return shape.kt // accumulation_tiles(shape.kt) // blocking[KSPLIT]


def ksplit_units(shape, blocking: dict[str, int]) -> tuple[int, int, int, int]:
    from ttc.passes.ops.matmul import matmul_units

    return (*matmul_units(shape, blocking), blocking[KSPLIT])


def ksplit_variants(op: Operation, shape, blocking: dict[str, int]) -> Iterator[dict[str, int]]:
    """The K splits of a unicast row-outer blocking (module doc): S a divisor >= 2 of the chunk count."""
    from ttc.passes.ops.matmul import accumulation_tiles, matmul_units, sub_blocks

    if blocking.get("n_outer") or shape.batches != 1 or shape.nt % blocking["per_core_n"]:
        return
    sh, sw = sub_blocks(blocking)
    if sh * sw > MAX_SUBBLOCKS:
        return
    blocks = math.prod(matmul_units(shape, blocking))
    if blocks * MAX_FILL > GRID_CORES:
        return
    chunks = shape.kt // accumulation_tiles(shape.kt)
    for split in divisors(chunks)[1:]:
        if blocks * split > GRID_CORES:
            break
        yield {**blocking, KSPLIT: split}


def scratch_type(op: Operation, shape, blocking: dict[str, int]) -> TensorType:
    """The sums' way from a core's writer to its reader: per unit (core), its chunk sums (chunk-major, subblock
    by subblock), as a column of h x w tile blocks in the work format."""
    w = blocking["out_subblock_w"]
    sent = chunks_per_core(shape, blocking) * blocking["per_core_m"] * blocking["per_core_n"]
    rows = math.prod(ksplit_units(shape, blocking)) * sent // w
    return TensorType((rows * TILE, w * TILE), work_format(tensor(op.result).element_type),
                      LayoutAttr("tile", "l1", "interleaved"))


def ksplit_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    from ttc.passes.ops.matmul import accumulation_tiles, matmul_shape, sub_blocks

    shape = matmul_shape(op)
    h, w, width = blocking["out_subblock_h"], blocking["out_subblock_w"], blocking["in0_block_w"]
    sh, sw = sub_blocks(blocking)
    split = blocking[KSPLIT]
    k_blocks = shape.kt // width // split
    per_core = chunks_per_core(shape, blocking)
    a, b, out = tensor(op.operands[0]), tensor(op.operands[1]), tensor(op.result)
    work = work_format(out.element_type)
    tiles, block_tiles, subblocks = h * w, blocking["per_core_m"] * blocking["per_core_n"], sh * sw
    cbs = [cb(CB_IN0, a.element_type, double(h * width, k_blocks * sh)),
           cb(CB_IN1, b.element_type, double(width * w, k_blocks * subblocks)),
           cb(CB_OUT, out.element_type, double(TILE, subblocks * h), page=w * TILE * page_size(out) // out.shape[-1])
           if is_row_major(op.result) else cb(CB_OUT, out.element_type, double(tiles, subblocks)),
           cb(CB_GATHER, work, (split - 1) * per_core * block_tiles),
           cb(CB_SEND, work, double(tiles, per_core * subblocks)),
           cb(CB_SUMS, work, per_core * block_tiles)]
    bias, residual = ttir.linear_bias(op), ttir.linear_residual(op)
    if bias is not None:
        cbs.append(cb(CB_BIAS, tensor(bias).element_type, double(w, subblocks)))
    if residual is not None:
        cbs.append(cb(CB_RESIDUAL, tensor(residual).element_type, double(tiles, subblocks)))
    if bias is not None or residual is not None:  # the value before the bias (or the residual) is added
        cbs.append(cb(CB_BIASED, work, tiles))
    if accumulation_tiles(shape.kt) > width:  # partial sums between the K steps of a chunk
        cbs.append(cb(CB_PARTIALS, work, block_tiles))
    if per_core * split > 2:  # the running total between two adds of the chain
        cbs.append(cb(CB_TOTAL, work, tiles))
    return sorted(cbs, key=lambda c: c.index)


# ----------------------------------------------------------------------------------------------
# Roles


def roles(units: tuple[int, ...], cores: int) -> dict[str, np.ndarray]:
    """Per core: its place j in its block, and whether it sends its chunk sums (j < S - 1) or finishes the block
    (j = S - 1: gathers the others' sums, reads the bias and the residual, writes the result). A padded grid's
    extra cores do neither."""
    count = math.prod(units)
    core = np.arange(cores)
    real = core < count
    j = np.minimum(core, count - 1) % units[-1]
    return {"j": j, "sends": real & (j < units[-1] - 1), "finishes": real & (j == units[-1] - 1)}


# ----------------------------------------------------------------------------------------------
# Counts


def plan_ksplit(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    from ttc.passes.ops.matmul import matmul_masks, matmul_shape, row_start

    shape = matmul_shape(op)
    a, wt, out = op.operands[0], op.operands[1], op.result
    out_type = tensor(out) if result_layout is None else tensor(out).with_encoding(result_layout)
    pcm, pcn, width, split = b["per_core_m"], b["per_core_n"], b["in0_block_w"], b[KSPLIT]
    h, w = b["out_subblock_h"], b["out_subblock_w"]
    sh, sw = pcm // h, pcn // w
    kt, nt = shape.kt, shape.nt
    kc = kt // split  # K tiles per core
    per_core = chunks_per_core(shape, b)
    has_bias = ttir.linear_bias(op) is not None
    residual = ttir.linear_residual(op)
    activation = op.attributes.get("activation", "none")
    units = ksplit_units(shape, b)
    plan = Plan(device, grid, units)
    out_tiles = pcm * pcn
    plan.tile(target.DATACOPY, out_tiles * (kc // width - per_core + int(any(matmul_masks(op)))))  # reloads, masks
    plan.tile(target.matmul_key(fidelity, format_name(a), format_name(wt)), out_tiles * kc)
    plan.tile(target.binary_key("add"), out_tiles * (per_core * split - 1 + int(has_bias)))  # the chain, the bias
    if activation != "none":
        plan.tile(target.sfpu_key(activation), out_tiles)
    if residual is not None:
        plan.tile(target.binary_key("add"), out_tiles)
        if op.attributes.get("residual_activation", "none") != "none":
            plan.tile(target.sfpu_key(op.attributes["residual_activation"]), out_tiles)

    unit = plan.unit
    m0, n0, k0 = row_start(shape.mt, pcm, unit[:, 1]), unit[:, 2] * pcn, unit[:, 3] * kc

    def a_pages() -> np.ndarray:  # per K step and subblock row, its rows of the core's K range
        rows = m0[:, None] + np.arange(pcm)[None, :]
        return (rows[:, :, None] * kt + k0[:, None, None] + np.arange(kc)[None, None, :]).reshape(plan.cores, -1)

    def b_pages() -> np.ndarray:  # per K step, subblock row and subblock, its columns of the core's K range
        pages = (k0[:, None, None] + np.arange(kc)[None, :, None]) * nt + n0[:, None, None] \
            + np.arange(pcn)[None, None, :]
        return np.tile(pages.reshape(plan.cores, -1), (1, sh))

    plan.static(Buffer.of(tensor(a), device), pcm * kc, page_lists=a_pages)
    plan.static(Buffer.of(tensor(wt), device), kc * pcn * sh, page_lists=b_pages)
    role = roles(units, plan.cores)
    finishing, sending = int(role["finishes"].sum()), int(role["sends"].sum())
    subblocks = sh * sw
    if has_bias:
        plan.masked(Buffer.of(tensor(ttir.linear_bias(op)), device), np.full(subblocks, w * finishing))
    scratch = Buffer(page_size(scratch_type(op, shape, b)), False, None)
    sent = per_core * out_tiles  # pages a sending core hands on
    plan.masked(scratch, np.full(per_core * subblocks, h * w * sending), write=True)  # its writer's
    plan.masked(scratch, np.full(split - 1, sent * sending // (split - 1)))  # its reader's, in its round
    # the rounds' multicasts: each sender's pages leave its port once and enter its block's last core
    plan.masked(Buffer(scratch.page, False, None), np.full(split - 1, 2 * sent * sending // (split - 1)))
    plan.builder.multicast(np.where(role["sends"], sent * scratch.page, 0), 1)
    outputs = [(Buffer.of(out_type, device), True)]
    if residual is not None:
        outputs.append((Buffer.of(tensor(residual), device), False))
    if is_row_major(op.result):  # the rows of the finishing cores (matmul_rows.py's writes)
        from ttc.passes.ops.matmul_rows import rows_written

        outputs = outputs[1:]
        rows_written(op, device, b, role["finishes"])(plan)
    for buf, write in outputs:
        plan.masked(buf, np.full(subblocks, h * w * finishing), write=write)
        if buf.owner_bank is not None:  # a sharded residual: the finishing cores' pages in their own shards
            last = role["finishes"]
            rows = m0[last, None] + np.arange(pcm)[None, :]
            pages = (rows[:, :, None] * nt + n0[last, None, None] + np.arange(pcn)[None, None, :]).reshape(len(rows), -1)
            local = int((buf.owner_bank(pages) == plan.banks[last, None]).sum())
            plan.builder.local_total += local * buf.page
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Kernels


def lower_ksplit(op: Operation) -> Program:
    from ttc.passes.ops.matmul import matmul_shape, row_start
    from ttc.passes.ops.program import cbs_of

    shape = matmul_shape(op)
    s = schedule_of(op)
    b = s.blocking
    pcm, pcn, split = b["per_core_m"], b["per_core_n"], b[KSPLIT]
    sent = chunks_per_core(shape, b) * pcm * pcn  # pages one core hands on
    kc = shape.kt // split
    role = roles(s.units, s.cores)
    gx, w = s.grid.x, b["out_subblock_w"]

    def per_core(fn) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(int(v) for v in fn(core, s.unit(core))) for core in range(s.cores))

    def place(unit: tuple[int, ...]) -> tuple[int, int, int]:
        """(first output row, first output column, place j in the block)"""
        return int(row_start(shape.mt, pcm, unit[1])), unit[2] * pcn, unit[3]

    def reader_args(core: int, unit: tuple[int, ...]) -> list[int]:
        m, n, j = place(unit)
        finishes, sends = bool(role["finishes"][core]), bool(role["sends"][core])
        first, last = core - j, core - j + split - 1  # the block's first and last cores
        rounds = []  # per round r: sender?, its valid columns, its (x, y)
        for r in range(split - 1):
            sender = sends and j == r
            rounds += [int(sender), w if sender else 0, (first + r) % gx, (first + r) // gx]
        residual = [m * shape.nt + n] if ttir.linear_residual(op) is not None else []
        return [m * shape.kt + j * kc, j * kc * shape.nt + n, n, pcn if finishes else 0, int(finishes),
                min(core, math.prod(s.units) - 1) * sent, last % gx, last // gx, *rounds, *residual]

    def compute_args(core: int, unit: tuple[int, ...]) -> list[int]:
        m, n, _ = place(unit)
        return [m, n]

    def writer_args(core: int, unit: tuple[int, ...]) -> list[int]:
        m, n, _ = place(unit)
        sends, finishes = bool(role["sends"][core]), bool(role["finishes"][core])
        rows = [m, n * TILE * page_size(tensor(op.result)) // tensor(op.result).shape[-1], TILE if finishes else 0] \
            if is_row_major(op.result) else []  # first tile row, its first byte, rows written per tile row
        return [m * shape.nt + n, pcn if finishes else 0, int(sends), w if sends else 0,
                min(core, math.prod(s.units) - 1) * sent, core % gx, core // gx, *rows]

    scratch = scratch_type(op, shape, b)
    kernels = (ksplit_reader(op, shape, s, scratch), ksplit_compute(op, shape, s), ksplit_writer(op, shape, s, scratch))
    return Program("matmul", s.grid, cbs_of(op, s), kernels,
                   (per_core(reader_args), per_core(compute_args), per_core(writer_args)), list(op.operands),
                   scratch=[scratch])


def subblock_walk(b: dict[str, int]) -> list[tuple[int, int, int]]:
    """(index, row, column) of a core's subblocks in the order its chunk sums hold them (row-major)."""
    sh, sw = b["per_core_m"] // b["out_subblock_h"], b["per_core_n"] // b["out_subblock_w"]
    return [(r * sw + c, r, c) for r in range(sh) for c in range(sw)]


def ksplit_reader(op: Operation, shape, s: Schedule, scratch: TensorType):
    """The unicast row-outer reader over the core's K range; then the rounds of the exchange (module doc), and
    per subblock the bias row and the residual tiles (read only where the core finishes the block)."""
    from ttc.passes.ops.matmul import ResidualReads
    from ttc.passes.ops.matmul_mcast import multicast_handshake

    b = s.blocking
    h, w, width, split = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"], b[KSPLIT]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width // split
    k = KernelBuilder(op.loc)
    a_gen, b_gen = k.addrgen(0, tensor(op.operands[0])), k.addrgen(1, tensor(op.operands[1]))
    bias = ttir.linear_bias(op)
    bias_gen = k.addrgen(2, tensor(bias)) if bias is not None else None
    scratch_gen = k.addrgen(len(op.operands), scratch)
    residual = ResidualReads(op, shape, k, 8 + 4 * (split - 1))
    # args: a start, b start, n, finishing columns, finishes?, this core's scratch page, its block's last core
    # (x, y); per round: sender?, its valid columns, the sender's (x, y); the residual's start
    with k.loop(k_blocks) as kb, k.loop(sh) as row:
        k.op("cb_reserve_back", cb=CB_IN0, pages=h * width)
        k.op("noc_read_tiles", a_gen, k.affine(k.arg(0), (row, h * shape.kt), (kb, width)), cb=CB_IN0, rows=h,
             cols=width, row_stride=shape.kt)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_IN0, pages=h * width)
        with k.loop(sw) as col:
            k.op("cb_reserve_back", cb=CB_IN1, pages=width * w)
            k.op("noc_read_tiles", b_gen, k.affine(k.arg(1), (kb, width * shape.nt), (col, w)), cb=CB_IN1,
                 rows=width, cols=w, row_stride=shape.nt)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_IN1, pages=width * w)
    # rounds: core r of each block reads back its sums and multicasts them to its block's last core
    sent = chunks_per_core(shape, b) * b["per_core_m"] * b["per_core_n"]
    for r in range(split - 1):
        sender, valid, at = k.arg(8 + 4 * r), k.arg(9 + 4 * r), (k.arg(10 + 4 * r), k.arg(11 + 4 * r))
        k.op("semaphore_wait", sender, semaphore=SELF, value=1)  # the sender's writer has written its sums
        k.op("cb_reserve_back", cb=CB_GATHER, pages=sent)
        k.op("noc_read_tiles", scratch_gen, k.arg(5), valid, cb=CB_GATHER, rows=sent // w, cols=w, row_stride=w)
        k.op("noc_read_barrier")
        last = (k.arg(6), k.arg(7))
        multicast_handshake(k, [(CB_GATHER, sent)], sender, k.arg(4), at, (*last, *last), 1, READY, VALID)
        k.op("cb_push_back", cb=CB_GATHER, pages=sent)
    for _, row, col in subblock_walk(b):
        edge = [k.affine(k.arg(3), (col, -w))]  # the finishing core's columns of this subblock (others: none)
        if bias_gen is not None:
            k.op("cb_reserve_back", cb=CB_BIAS, pages=w)
            k.op("noc_read_tiles", bias_gen, k.affine(k.arg(2), (col, w)), *edge, cb=CB_BIAS, rows=1, cols=w)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_BIAS, pages=w)
        residual.read(0, row, col, h, w, edge)
    return k.region()


def ksplit_compute(op: Operation, shape, s: Schedule):
    """The unsplit compute kernel's chunks over the core's K range, each chunk's sum kept (CB_SUMS) and sent
    (CB_SEND); then per subblock the unsplit chain of adds over the block's C chunk sums in K order (the gathered
    ones, then the core's own), and the unsplit epilogue."""
    from ttc.passes.ops.matmul import accumulation_tiles, product_epilogue

    b = s.blocking
    h, w, width, split = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"], b[KSPLIT]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    chunk_blocks = accumulation_tiles(shape.kt) // width
    per_core = chunks_per_core(shape, b)
    block_tiles = b["per_core_m"] * b["per_core_n"]
    tiles = h * w
    has_bias = ttir.linear_bias(op) is not None
    activation = op.attributes.get("activation", "none")
    k = KernelBuilder(op.loc)
    matmul = {"cb_a": CB_IN0, "a_row_stride": width, "cb_b": CB_IN1, "b_row_stride": w, "inner": width,
              "rows": h, "cols": w, "fidelity": s.fidelity}

    def k_step(fresh: bool, chunk_end: bool) -> None:
        with k.loop(sh):
            k.op("cb_wait_front", cb=CB_IN0, pages=h * width)
            with k.loop(sw):
                k.op("cb_wait_front", cb=CB_IN1, pages=width * w)
                k.op("tile_regs_acquire")
                if not fresh:
                    k.op("cb_wait_front", cb=CB_PARTIALS, pages=tiles)
                    k.op("copy_tiles", cb=CB_PARTIALS, row_stride=w, rows=h, cols=w)
                    k.op("cb_pop_front", cb=CB_PARTIALS, pages=tiles)
                k.op("matmul_tiles", **matmul, **({} if not fresh else {"accumulate": False}))
                k.op("cb_pop_front", cb=CB_IN1, pages=width * w)
                if chunk_end:  # the chunk's sum, kept and sent (the bits the unsplit kernel packs)
                    k.op("tile_regs_commit")
                    k.op("tile_regs_wait")
                    k.pack(CB_SUMS, tiles)
                    k.pack(CB_SEND, tiles)
                    k.op("tile_regs_release")
                else:
                    k.pack_block(CB_PARTIALS, tiles)
            k.op("cb_pop_front", cb=CB_IN0, pages=h * width)

    with k.loop(per_core):  # the chunks' sums, chunk after chunk
        k_step(True, chunk_blocks == 1)
        if chunk_blocks > 2:
            with k.loop(chunk_blocks - 2):
                k_step(False, False)
        if chunk_blocks > 1:
            k_step(False, True)

    gathered = (split - 1) * per_core
    k.op("cb_wait_front", cb=CB_GATHER, pages=gathered * block_tiles)
    k.op("cb_wait_front", cb=CB_SUMS, pages=per_core * block_tiles)
    for index, row, col in subblock_walk(b):
        sums = [(CB_GATHER, (g * block_tiles) + index * tiles) for g in range(gathered)] \
            + [(CB_SUMS, (c * block_tiles) + index * tiles) for c in range(per_core)]  # the C chunks in K order
        total = sums[0]
        for chunk in sums[1:]:  # total + chunk, as the unsplit chain adds them
            if total[0] == CB_TOTAL:
                k.op("cb_wait_front", cb=CB_TOTAL, pages=tiles)
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="add", cb_a=total[0], a_offset=total[1], a_row_stride=w, cb_b=chunk[0],
                 b_offset=chunk[1], b_row_stride=w, rows=h, cols=w)
            if total[0] == CB_TOTAL:
                k.op("cb_pop_front", cb=CB_TOTAL, pages=tiles)
            if chunk is not sums[-1]:
                k.pack_block(CB_TOTAL, tiles)
                total = (CB_TOTAL, 0)
        product_epilogue(k, op, shape, h, w, has_bias, activation,  # the unsplit epilogue (matmul_compute)
                         lambda: (k.add(k.arg(0), row * h), k.add(k.arg(1), col * w)))  # noqa: B023 (called now)
        if is_row_major(op.result):  # the untilize after it fused (matmul_rows.py)
            from ttc.passes.ops.matmul_rows import pack_rows

            pack_rows(k, h, w)
        else:
            k.pack_block(CB_OUT, tiles)
    k.op("cb_pop_front", cb=CB_GATHER, pages=gathered * block_tiles)
    k.op("cb_pop_front", cb=CB_SUMS, pages=per_core * block_tiles)
    return k.region()


def ksplit_writer(op: Operation, shape, s: Schedule, scratch: TensorType):
    """The core's chunk sums to its own scratch pages and an increment of its own SELF semaphore (where the core
    sends; its reader reads them back in its round); then per subblock the result (where it finishes)."""
    b = s.blocking
    h, w = b["out_subblock_h"], b["out_subblock_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    tiles = h * w
    k = KernelBuilder(op.loc)
    scratch_gen = k.addrgen(len(op.operands), scratch)
    out_gen = k.addrgen(len(op.operands) + 1, tensor(op.result))
    # args: the output block's first tile, finishing columns, sends?, sent columns, its scratch page, its (x, y)
    with k.loop(chunks_per_core(shape, b)) as chunk, k.loop(sh * sw) as index:
        k.op("cb_wait_front", cb=CB_SEND, pages=tiles)
        k.op("noc_write_tiles", scratch_gen, k.affine(k.arg(4), (chunk, sh * sw * tiles), (index, tiles)), k.arg(3),
             cb=CB_SEND, rows=h, cols=w, row_stride=w)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_SEND, pages=tiles)
    k.op("semaphore_inc", k.arg(5), k.arg(6), k.arg(2), semaphore=SELF)
    if is_row_major(op.result):  # matmul_rows.rows_writer's rows, as many as arg 9 allows (the finishing core's)
        from ttc.passes.ops.matmul_rows import element_bytes, write_subblock_rows

        row_bytes, block_bytes = page_size(tensor(op.result)), w * TILE * element_bytes(op)
        with k.loop(sh) as row, k.loop(sw) as col:
            write_subblock_rows(k, out_gen, shape.rows, row, col, h, row_bytes, block_bytes, row_arg=7, offset_arg=8,
                                limit_arg=9)
        return k.region()
    with k.loop(sh) as row, k.loop(sw) as col:
        k.op("cb_wait_front", cb=CB_OUT, pages=tiles)
        k.op("noc_write_tiles", out_gen, k.affine(k.arg(0), (row, h * shape.nt), (col, w)),
             k.affine(k.arg(1), (col, -w)), cb=CB_OUT, rows=h, cols=w, row_stride=shape.nt)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=CB_OUT, pages=tiles)
    return k.region()
