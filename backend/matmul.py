"""Matmul / linear kernels, after tt-metal's MatmulMultiCoreReuse program.

Each core computes a per_core_m x per_core_n block of output tiles for `batches` consecutive batches.
K is walked in steps of in0_block_w tiles; the block is computed in out_subblock_h x out_subblock_w
subblocks (<= 8 Dst tiles). Between K steps a subblock's partial sums go to an intermediate CB and come
back with copy_tiles: bf16 both ways, so the result is bit-identical to one long accumulation and does
not depend on the grid or the blocking. Compute ops address their CB windows with static offsets, so
the reader pushes operand chunks in the order the compute kernel uses them: per K step and subblock
row, the in0 rows (h x in0_block_w), and per subblock the in1 columns (in0_block_w x w) — in1 is read
once per subblock row (once in all when the subblock spans per_core_m).

Epilogue (last K step): bias = the packed result + the bias row (binary add, bcast row), activation
on the SFPU, padding re-masked where the bias or the activation made it non-zero.
"""

from __future__ import annotations

from ttc.backend.kernel import Index, KernelBuilder
from ttc.backend.program import Program, Schedule, cbs_of, schedule_of
from ttc.ir.core import Operation
from ttc.passes.footprint import (
    CB_BIAS,
    CB_BIASED,
    CB_IN0,
    CB_IN1,
    CB_OUT,
    CB_PARTIALS,
    TILE,
    MatmulShape,
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

    def reader_args(unit: tuple[int, ...]) -> list[int]:
        batch, m, n = unit[0] * b["batches"], unit[1] * b["per_core_m"], unit[2] * b["per_core_n"]
        return [int(shape.a_offsets[batch]) + m * shape.kt, int(shape.b_offsets[batch]) + n, n]

    def compute_args(unit: tuple[int, ...]) -> list[int]:
        return [unit[1] * b["per_core_m"], unit[2] * b["per_core_n"]]

    def writer_args(unit: tuple[int, ...]) -> list[int]:
        batch, m, n = unit[0] * b["batches"], unit[1] * b["per_core_m"], unit[2] * b["per_core_n"]
        return [(batch * shape.mt + m) * shape.nt + n]

    reader = matmul_reader(op, shape, schedule, a_step, b_step, has_bias)
    compute = matmul_compute(op, shape, schedule, has_bias, activation)
    writer = matmul_writer(op, shape, schedule)
    return Program("matmul", schedule.grid, cbs_of(op, schedule), (reader, compute, writer),
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


def matmul_reader(op: Operation, shape: MatmulShape, s: Schedule, a_step: int, b_step: int, has_bias: bool):
    b = s.blocking
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
                k.op("noc_read_tiles", b_gen, b_start, cb=CB_IN1, rows=width, cols=w, row_stride=shape.nt)
                if with_bias:
                    k.op("cb_reserve_back", cb=CB_BIAS, pages=w)
                    k.op("noc_read_tiles", bias_gen, k.affine(k.arg(2), (col, w)), cb=CB_BIAS, rows=1, cols=w)
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

    def k_step(first: bool, last: bool) -> None:
        with k.loop(sh) as row:
            k.op("cb_wait_front", cb=CB_IN0, pages=h * width)
            with k.loop(sw) as col:
                k.op("cb_wait_front", cb=CB_IN1, pages=width * w)
                k.op("tile_regs_acquire")
                if first:
                    k.op("fill_tiles", count=tiles, value=0.0)
                else:
                    k.op("cb_wait_front", cb=CB_PARTIALS, pages=tiles)
                    k.op("copy_tiles", cb=CB_PARTIALS, row_stride=w, rows=h, cols=w)
                    k.op("cb_pop_front", cb=CB_PARTIALS, pages=tiles)
                k.op("matmul_tiles", **matmul)
                k.op("cb_pop_front", cb=CB_IN1, pages=width * w)
                if last:
                    epilogue(row, col)
                else:
                    k.pack_block(CB_PARTIALS, tiles)
            k.op("cb_pop_front", cb=CB_IN0, pages=h * width)

    with k.loop(b["batches"]):
        k_step(first=True, last=k_blocks == 1)
        if k_blocks > 2:
            with k.loop(k_blocks - 2):
                k_step(first=False, last=False)
        if k_blocks > 1:
            k_step(first=False, last=True)
    return k.region()


def matmul_writer(op: Operation, shape: MatmulShape, s: Schedule):
    b = s.blocking
    h, w = b["out_subblock_h"], b["out_subblock_w"]
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(op.operands), tensor(op.result))
    with k.loop(b["batches"]) as batch:
        base = k.affine(k.arg(0), (batch, shape.mt * shape.nt))
        with k.loop(b["per_core_m"] // h) as row, k.loop(b["per_core_n"] // w) as col:
            start = k.affine(base, (row, h * shape.nt), (col, w))
            k.op("cb_wait_front", cb=CB_OUT, pages=h * w)
            k.op("noc_write_tiles", gen, start, cb=CB_OUT, rows=h, cols=w, row_stride=shape.nt)
            k.op("noc_write_barrier")
            k.op("cb_pop_front", cb=CB_OUT, pages=h * w)
    return k.region()
