"""Matmul / linear kernels, after tt-metal's MatmulMultiCoreReuse program.

Each core computes a per_core_m x per_core_n block of output tiles for `batches` consecutive batches.
K is walked in steps of in0_block_w tiles; the block is computed in out_subblock_h x out_subblock_w
subblocks (<= 8 Dst tiles). Between K steps a subblock's partial sums go to an intermediate CB and come
back with copy_tiles (bf16 both ways, so this continues one accumulation chain exactly). A long K is
accumulated in chunks (`footprint.accumulation_tiles`, a whole number of K steps): each chunk is a fresh
chain in Dst, and its sum is added in bf16 to the running total of the chunks before it, so no chain of
16-bit Dst roundings runs the whole of K. The chunks depend only on K, so the result does not depend on
the grid or the blocking. Compute ops address their CB windows with static offsets, so
the reader pushes operand chunks in the order the compute kernel uses them: per K step and subblock
row, the in0 rows (h x in0_block_w), and per subblock the in1 columns (in0_block_w x w) — in1 is read
once per subblock row (once in all when the subblock spans per_core_m).

Epilogue (last K step): bias = the packed result + the bias row (binary add, bcast row), activation
on the SFPU, padding re-masked where the bias or the activation made it non-zero.

N may split raggedly over the cores (a vocabulary of 50257 columns is 1571 tiles, a prime): every core
runs the same loops over per_core_n tiles, and the last one reads and writes only the tiles before the
edge (`valid_cols` of the NoC ops, from its runtime arguments); its tiles past the edge compute on zeros
and are dropped.
"""

from __future__ import annotations

from ttc.backend.kernel import Index, KernelBuilder
from ttc.backend.program import Program, Schedule, cbs_of, schedule_of
from ttc.ir.core import Operation
from ttc.passes.footprint import (
    CB_BIAS,
    CB_BIASED,
    CB_CHUNK,
    CB_IN0,
    CB_IN1,
    CB_OUT,
    CB_PARTIALS,
    CB_TOTAL,
    TILE,
    MatmulShape,
    accumulation_tiles,
    affine_step,
    matmul_masks,
    matmul_shape,
    tensor,
)


def lower_matmul(op: Operation) -> Program:
    shape = matmul_shape(op)
    schedule = schedule_of(op)
    b = schedule.blocking
    has_bias = len(op.operands) > 2
    activation = op.attributes.get("activation", "none")
    a_step = affine_step(shape.a_offsets, b["batches"])
    b_step = affine_step(shape.b_offsets, b["batches"])
    assert a_step is not None and b_step is not None

    ragged = is_ragged(shape, b)

    def valid_n(n: int) -> list[int]:
        """The core's output tile columns before the ragged edge (only when there is one)."""
        return [min(b["per_core_n"], shape.nt - n)] if ragged else []

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        batch, m, n = unit[0] * b["batches"], unit[1] * b["per_core_m"], unit[2] * b["per_core_n"]
        return [int(shape.a_offsets[batch]) + m * shape.kt, int(shape.b_offsets[batch]) + n, n, *valid_n(n)]

    def compute_args(unit: tuple[int, ...]) -> list[int]:
        return [unit[1] * b["per_core_m"], unit[2] * b["per_core_n"]]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        batch, m, n = unit[0] * b["batches"], unit[1] * b["per_core_m"], unit[2] * b["per_core_n"]
        return [(batch * shape.mt + m) * shape.nt + n, *valid_n(n)]

    reader = matmul_reader(op, shape, schedule, a_step, b_step, has_bias)
    compute = matmul_compute(op, shape, schedule, has_bias, activation)
    writer = matmul_writer(op, shape, schedule)
    return Program("matmul", schedule.grid, cbs_of(op, schedule), (reader, compute, writer),
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


def is_ragged(shape: MatmulShape, blocking: dict[str, int]) -> bool:
    """The last core along N has fewer output tile columns than per_core_n (N does not divide evenly):
    its tiles past the edge are not read (zeros) and not written."""
    return shape.nt % blocking["per_core_n"] != 0


def matmul_reader(op: Operation, shape: MatmulShape, s: Schedule, a_step: int, b_step: int, has_bias: bool):
    b = s.blocking
    ragged = is_ragged(shape, b)
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    k = KernelBuilder(op.loc)
    a_gen, b_gen = k.addrgen(0, tensor(op.operands[0])), k.addrgen(1, tensor(op.operands[1]))
    bias_gen = k.addrgen(2, tensor(op.operands[2])) if has_bias else None

    def k_step(a_base: Index, b_base: Index, kb: Index, with_bias: bool) -> None:
        with k.loop(sh) as row:
            k.op("cb_reserve_back", cb=CB_IN0, pages=h * width)
            a_start = k.affine(a_base, (row, h * shape.kt), (kb, width))
            k.op("noc_read_tiles", a_gen, a_start, cb=CB_IN0, rows=h, cols=width, row_stride=shape.kt)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=CB_IN0, pages=h * width)
            with k.loop(sw) as col:
                k.op("cb_reserve_back", cb=CB_IN1, pages=width * w)
                b_start = k.affine(b_base, (kb, width * shape.nt), (col, w))
                edge = [k.affine(k.arg(3), (col, -w))] if ragged else []  # valid columns of this subblock
                k.op("noc_read_tiles", b_gen, b_start, *edge, cb=CB_IN1, rows=width, cols=w, row_stride=shape.nt)
                if with_bias:
                    k.op("cb_reserve_back", cb=CB_BIAS, pages=w)
                    k.op("noc_read_tiles", bias_gen, k.affine(k.arg(2), (col, w)), *edge, cb=CB_BIAS, rows=1, cols=w)
                k.op("noc_read_barrier")
                k.op("cb_push_back", cb=CB_IN1, pages=width * w)
                if with_bias:
                    k.op("cb_push_back", cb=CB_BIAS, pages=w)

    with k.loop(b["batches"]) as batch:
        a_base = k.affine(k.arg(0), (batch, a_step))
        b_base = k.affine(k.arg(1), (batch, b_step))
        plain = k_blocks - 1 if has_bias else k_blocks
        if plain:
            with k.loop(plain) as kb:
                k_step(a_base, b_base, kb, False)
        if has_bias:
            k_step(a_base, b_base, k_blocks - 1, True)
    return k.region()


def matmul_compute(op: Operation, shape: MatmulShape, s: Schedule, has_bias: bool, activation: str):
    b = s.blocking
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    k_blocks = shape.kt // width
    mask_rows, mask_cols = matmul_masks(op)
    chunk_blocks = accumulation_tiles(shape.kt) // width  # K blocks per accumulation chunk
    chunks = k_blocks // chunk_blocks
    k = KernelBuilder(op.loc)
    tiles = h * w
    matmul = {"cb_a": CB_IN0, "a_row_stride": width, "cb_b": CB_IN1, "b_row_stride": w, "inner": width,
              "rows": h, "cols": w, "fidelity": s.fidelity}

    def epilogue(row: Index, col: Index) -> None:
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
            row_tile = k.affine(k.arg(0), (row, h))
            col_tile = k.affine(k.arg(1), (col, w))
            k.op("mask_tiles", row_tile, col_tile, rows=h, cols=w,
                 valid_rows=shape.rows if mask_rows else shape.mt * TILE,
                 valid_cols=shape.cols if mask_cols else shape.nt * TILE)
        k.pack_block(CB_OUT, tiles)

    def k_step(fresh: bool, chunk_end: bool, first_chunk: bool, last: bool) -> None:
        """One K block for every subblock: a fresh chain (a chunk's first block) or the chain continued from
        the partials; at a chunk's end its sum becomes, or is added to, the running total."""
        with k.loop(sh) as row:
            k.op("cb_wait_front", cb=CB_IN0, pages=h * width)
            with k.loop(sw) as col:
                k.op("cb_wait_front", cb=CB_IN1, pages=width * w)
                k.op("tile_regs_acquire")
                if fresh:
                    k.op("fill_tiles", count=tiles, value=0.0)
                else:
                    k.op("cb_wait_front", cb=CB_PARTIALS, pages=tiles)
                    k.op("copy_tiles", cb=CB_PARTIALS, row_stride=w, rows=h, cols=w)
                    k.op("cb_pop_front", cb=CB_PARTIALS, pages=tiles)
                k.op("matmul_tiles", **matmul)
                k.op("cb_pop_front", cb=CB_IN1, pages=width * w)
                if chunk_end:
                    finish_chunk(row, col, first_chunk, last)
                else:
                    k.pack_block(CB_PARTIALS, tiles)
            k.op("cb_pop_front", cb=CB_IN0, pages=h * width)

    def finish_chunk(row: Index, col: Index, first_chunk: bool, last: bool) -> None:
        """Dst holds a chunk's sum: add the running total (in bf16) unless it is the first chunk; then the
        epilogue after the last chunk, else the new total back to its CB."""
        if not first_chunk:
            k.pack_block(CB_CHUNK, tiles)
            k.op("cb_wait_front", cb=CB_CHUNK, pages=tiles)
            k.op("cb_wait_front", cb=CB_TOTAL, pages=tiles)
            k.op("tile_regs_acquire")
            k.op("binary_tiles", op="add", cb_a=CB_TOTAL, a_row_stride=w, cb_b=CB_CHUNK, b_row_stride=w,
                 rows=h, cols=w)
            k.op("cb_pop_front", cb=CB_TOTAL, pages=tiles)
            k.op("cb_pop_front", cb=CB_CHUNK, pages=tiles)
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


def matmul_writer(op: Operation, shape: MatmulShape, s: Schedule):
    b = s.blocking
    h, w = b["out_subblock_h"], b["out_subblock_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(op.operands), tensor(op.result))
    ragged = is_ragged(shape, b)
    with k.loop(b["batches"]) as batch:
        base = k.affine(k.arg(0), (batch, shape.mt * shape.nt))
        with k.loop(b["per_core_m"] // h) as row, k.loop(b["per_core_n"] // w) as col:
            start = k.affine(base, (row, h * shape.nt), (col, w))
            edge = [k.affine(k.arg(1), (col, -w))] if ragged else []
            k.op("cb_wait_front", cb=CB_OUT, pages=h * w)
            k.op("noc_write_tiles", gen, start, *edge, cb=CB_OUT, rows=h, cols=w, row_stride=shape.nt)
            k.op("noc_write_barrier")
            k.op("cb_pop_front", cb=CB_OUT, pages=h * w)
    return k.region()
