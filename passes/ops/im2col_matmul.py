"""A convolution's im2col lookup fused into its product (`ttir.im2col_linear`), after tt-metal's convolutions,
whose reader gathers the input patches itself: the grid pass's `passes/im2col_fusion.py` makes it from an
`embedding {im2col, pad_negative}` and the `ttir.linear` (or matmul) that is its only reader.

The program is the unicast (or in1-multicast) matmul of `matmul.py` (its blockings, CB plan, compute and writer, through a stand-in
linear whose in0 is the im2col matrix, `as_linear`), with in0 made on the core instead of read:

- reader: per in0 block (h tile rows x in0_block_w K tiles) and tile row, for each kernel position the block
  covers, the index page of (position, tile row) into CB_INDEX and the 32 sticks it names into CB_STICKS, a
  piece at a time (`noc_read_rows_indexed {pad_negative}`: -1 reads a zero row; a column segment of the sticks
  when a piece is narrower than a stick), as the unfused lookup's reader does; in1 as the unicast reader, or
  read by core 0 and multicast to the grid (`IN1_TO_ALL`);
- compute: before it waits for an in0 block (`matmul_compute`'s `in0_ready`), it tilizes the block's sticks
  (`tilize_tiles`) and packs them into CB_IN0 in the im2col matrix's format (`a_format`), the tiles the unfused
  lookup packed and wrote; then the unchanged product.

The im2col matrix is never written: the lookup's program, its launch and the matrix's buffer go. A row-major result
(the untilize after the product fused into it by `passes/untilize_fusion.py`, as for a plain product) packs each
finished subblock as rows and writes them with matmul_rows.py's writer (no ragged N edge). Values are the
unfused pair's bit for bit (the same rows, the same tilize and pack, then the same product). A stick read is a
piece of gcd(in0_block_w, stick tiles) tiles (`piece_tiles`), so every K block is whole pieces of one position
each; the K blocks repeat their pattern of pieces every lcm(in0_block_w, stick tiles) K tiles (`block_runs`), which
the reader walks as a loop over those periods with the blocks of one period unrolled. A block's sticks are re-read
(and re-tilized) whenever the walk re-reads in0: once per subblock column with `n_outer`, and on every core
computing an N block of the same rows, which is what makes the fusion costlier than the lookup on many-core 2-D
grids (the grid pass fuses only where the cost model prefers it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.ops.counting import Buffer, Plan, Weights, constant_of
from ttc.passes.ops.geometry import (
    CB_IN0,
    CB_INDEX,
    ELEMENT_BYTES,
    HALF_DST,
    TILE,
    cb,
    double,
    is_row_major,
    is_sharded,
    layout,
    page_size,
    tensor,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.matmul import (
    CB_BIAS,
    CB_IN1,
    ResidualReads,
    column_outer,
    is_ragged,
    matmul_candidates,
    matmul_cbs,
    matmul_compute,
    matmul_shape,
    matmul_units,
    matmul_writer,
    plan_matmul,
    row_start,
)
from ttc.passes.ops.matmul_mcast import (
    IN1_READY,
    IN1_TO_ALL,
    IN1_VALID,
    MCAST,
    MCAST_ARGS,
    is_mcast,
    mcast_reader_args,
    multicast_handshake,
)
from ttc.passes.ops.matmul_rows import element_bytes, pack_rows, rows_cbs, rows_writer, rows_written
from ttc.passes.ops.program import Program, Schedule, cbs_of, schedule_of
from ttc.passes.ops.registry import register

CB_STICKS = 4  # the looked-up rows of one tile row of an in0 block (row-major pages)


@dataclass(frozen=True)
class Im2col:
    """The lookup's geometry: kernel positions, index pages per position (M tile rows), channel tiles per stick."""

    positions: int
    tile_rows: int
    stick_tiles: int
    stick_bytes: int  # a table page (one stick)
    element_bytes: int


def im2col_of(op: Operation) -> Im2col:
    table, ids = tensor(op.operands[0]), tensor(op.operands[1])
    return Im2col(ids.shape[0], ids.shape[1], table.shape[1] // TILE, page_size(table),
                  page_size(table) // table.shape[1])


def im2col_type(op: Operation) -> TensorType:
    """The im2col matrix [M, positions * C] the unfused lookup wrote (tiles in `a_format`)."""
    g, table = im2col_of(op), tensor(op.operands[0])
    return TensorType((tensor(op.result).shape[0], g.positions * table.shape[1]), ScalarType(op.attr("a_format")),
                      LayoutAttr("tile", "l1", "interleaved"))


def fused_bias(op: Operation) -> Value | None:
    return ttir.im2col_linear_bias(op)


def fused_residual(op: Operation) -> Value | None:
    return op.operands[-1] if op.attributes.get("residual") else None


@contextlib.contextmanager
def as_linear(op: Operation) -> Iterator[Operation]:
    """The `ttir.linear` the fused op stands for, its in0 a detached value of the im2col matrix's type (for
    matmul.py's geometry, blockings, CBs, counts and kernels); its operand uses are dropped afterwards."""
    bias, residual = fused_bias(op), fused_residual(op)
    operands = [Value(im2col_type(op)), op.operands[2], *([bias] if bias is not None else []),
                *([residual] if residual is not None else [])]
    attributes = {key: op.attributes[key] for key in ("activation", "residual", "residual_activation")
                  if key in op.attributes}
    proxy = Operation(ttir.LINEAR.name, operands, [op.result.type], attributes, loc=op.loc)
    try:
        yield proxy
    finally:
        proxy.drop_operands()


def piece_tiles(g: Im2col, width: int) -> int:
    """K tiles of one stick read (one CB push, one tilize): the largest divisor of gcd(in0_block_w, stick tiles)
    that fits half of Dst. K blocks and kernel positions both start at multiples of it, so every block is made
    of whole pieces, each a column segment of one position's sticks (or a whole stick)."""
    common = math.gcd(width, g.stick_tiles)
    return max(d for d in range(1, min(common, HALF_DST) + 1) if common % d == 0)


def block_runs(g: Im2col, width: int) -> list[list[tuple[int, int, int]]]:
    """Per K block of one period (the blocks after which the pattern repeats, lcm(width, stick tiles) tiles of K):
    its runs (position within the period, first tile within the stick, pieces), consecutive K tiles of one
    position."""
    piece = piece_tiles(g, width)
    period = g.stick_tiles // math.gcd(width, g.stick_tiles)
    blocks = []
    for i in range(period):
        runs: list[tuple[int, int, int]] = []
        for t in range(i * width, (i + 1) * width, piece):
            position, tile = divmod(t, g.stick_tiles)
            if runs and runs[-1][0] == position:
                runs[-1] = (position, runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((position, tile, 1))
        blocks.append(runs)
    return blocks


def fused_candidates(op: Operation) -> list[dict[str, int]]:
    """The unicast matmul blockings and the 1-D plan multicasting in1 (`IN1_TO_ALL`): every core gathers its own
    rows, so in0 is never multicast; nor the K split (its reader reads in0 tiles: matmul_ksplit.py)."""
    from ttc.passes.ops.matmul_ksplit import is_ksplit

    with as_linear(op) as proxy:
        shape = matmul_shape(proxy)
        rows = is_row_major(op.result)  # written as rows (matmul_rows.py): no ragged N edge
        return [b for b in matmul_candidates(proxy) if b.get(MCAST, 0) in (0, IN1_TO_ALL) and not is_ksplit(b)
                and writes_shards(op, shape, b) and not (rows and shape.nt % b["per_core_n"])]


def result_shards(op: Operation) -> LayoutAttr | None:
    t = tensor(op.result)
    return layout(t) if is_sharded(t) else None


def writes_shards(op: Operation, shape, b: dict[str, int]) -> bool:
    """A sharded result (the product's, as the grid pass chose it before fusing) takes only the blockings whose
    cores each write their own shard, on the layout's grid (`grid_shape`): as `grid.shard_placement` pairs them."""
    shards = result_shards(op)
    if shards is None:
        return True
    assert shards.grid is not None and shards.shard is not None
    _, m_blocks, n_blocks = matmul_units(shape, b)
    if shape.mt % b["per_core_m"] or shape.nt % b["per_core_n"] or b["per_core_m"] != shards.shard[0]:
        return False
    if str(shards.memory_layout) == "height_sharded":
        return n_blocks == 1 and m_blocks == shards.grid[0] * shards.grid[1]
    return b["per_core_n"] == shards.shard[1] and (n_blocks, m_blocks) == tuple(shards.grid)


def fused_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """The matmul's CBs, plus an index page and 32 sticks (one read) double-buffered."""
    g = im2col_of(op)
    piece = piece_tiles(g, blocking["in0_block_w"])
    with as_linear(op) as proxy:
        cbs = rows_cbs(proxy, blocking) if is_row_major(op.result) else matmul_cbs(proxy, blocking)
    cbs += [cb(CB_STICKS, tensor(op.operands[0]).element_type, double(TILE, 2), page=piece * TILE * g.element_bytes),
            cb(CB_INDEX, ScalarType("i32"), double(1, 2), page=TILE * ELEMENT_BYTES["i32"])]
    return sorted(cbs, key=lambda c: c.index)


def rows_read(ids: Value, weights: Weights | None) -> np.ndarray | None:
    """[positions, tile rows]: the rows of each tile row the fused reader really reads (its index entries >= 0),
    all the counts look at in the index table; None when the table is not at hand (then every row counts)."""
    id_table = constant_of(ids, weights)
    return None if id_table is None else (id_table >= 0).sum(axis=-1)


def plan_fused(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
               result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    g = im2col_of(op)
    table, ids = op.operands[0], op.operands[1]
    width, pcm = b["in0_block_w"], b["per_core_m"]
    piece = piece_tiles(g, width)
    pieces = g.stick_tiles // piece  # reads per position and tile row (whole sticks: 1)
    runs = sum(len(block) for block in block_runs(g, width))  # index pages per period and tile row
    periods = g.positions * g.stick_tiles // (width * len(block_runs(g, width)))
    valid = rows_read(ids, weights)
    if valid is None:
        valid = np.full((g.positions, g.tile_rows), TILE)

    with as_linear(op) as proxy:
        shape = matmul_shape(proxy)
        reads = b["per_core_n"] // b["out_subblock_w"] if column_outer(b) else 1  # of each in0 block

        def read_in0(plan: Plan) -> None:
            rows = row_start(shape.mt, pcm, plan.unit[:, 1])[:, None] + np.arange(pcm)[None, :]  # [cores, pcm]
            plan.tile(target.DATACOPY, pcm * shape.kt * reads)  # the tilize
            plan.static(Buffer.of(tensor(ids), device), pcm * periods * runs * reads)
            totals = valid[:, rows].sum(axis=1)  # [positions, pcm]: each read's rows over all cores
            instances = np.repeat(totals.ravel(), pieces * reads)
            if piece == g.stick_tiles:
                plan.masked(Buffer.of(tensor(table), device), instances)
            else:
                plan.masked(Buffer.of(tensor(table), device, page=1), instances * piece * TILE * g.element_bytes)

        return plan_matmul(proxy, device, b, fidelity, grid, result_layout, weights, read_in0=read_in0,
                           write_out=rows_written(proxy, device, b) if is_row_major(op.result) else None)


def lower_fused(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    with as_linear(op) as proxy:
        shape = matmul_shape(proxy)
        ragged = is_ragged(shape, b)
        has_residual = fused_residual(op) is not None

        def first_row(unit: tuple[int, ...]) -> int:
            return int(row_start(shape.mt, b["per_core_m"], unit[1]))

        def valid_n(n: int) -> list[int]:
            return [min(b["per_core_n"], shape.nt - n)] if ragged else []

        def reader_args(unit: tuple[int, ...]) -> list[int]:
            m, n = first_row(unit), unit[2] * b["per_core_n"]
            residual = [m * shape.nt + n] if has_residual else []
            extra = mcast_reader_args(shape, unit, (schedule.grid.x, schedule.grid.y), b) if is_mcast(b) \
                else valid_n(n)
            return [m, int(shape.b_offsets[0]) + n, n, *extra, *residual]

        def compute_args(unit: tuple[int, ...]) -> list[int]:
            return [first_row(unit), unit[2] * b["per_core_n"]]

        def writer_args(unit: tuple[int, ...]) -> list[int]:
            m, n = first_row(unit), unit[2] * b["per_core_n"]
            if rows:  # as matmul_rows.lower_rows: the first tile row, the byte offset of the first tile column
                return [m, n * TILE * element_bytes(proxy)]
            return [m * shape.nt + n, *valid_n(n)]

        g = im2col_of(op)
        rows = is_row_major(op.result)
        reader = fused_reader(op, shape, schedule, g)
        compute = matmul_compute(proxy, shape, schedule, fused_bias(op) is not None,
                                 op.attributes.get("activation", "none"), in0_ready=tilize_in0(b, g),
                                 pack_out=pack_rows if rows else None)
        writer = rows_writer(proxy, schedule, output=len(op.operands)) if rows \
            else matmul_writer(proxy, shape, schedule, output=len(op.operands))
    return Program("im2col_matmul", schedule.grid, cbs_of(op, schedule), (reader, compute, writer),
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


def tilize_in0(b: dict[str, int], g: Im2col):
    """The compute's making of one in0 block: per tile row and read, the 32 sticks tilized into CB_IN0."""
    h, width = b["out_subblock_h"], b["in0_block_w"]
    piece = piece_tiles(g, width)

    def emit(k: KernelBuilder) -> None:
        for _ in range(h * (width // piece)):
            k.op("cb_wait_front", cb=CB_STICKS, pages=TILE)
            k.op("tile_regs_acquire")
            k.op("tilize_tiles", cb=CB_STICKS, col_offset=0, cols=piece)
            k.pack_block(CB_IN0, piece)
            k.op("cb_pop_front", cb=CB_STICKS, pages=TILE)

    return emit


def fused_reader(op: Operation, shape, s: Schedule, g: Im2col):
    """matmul.matmul_reader's unicast walk (row-outer, or column-outer with `n_outer`) with in0 gathered. The K
    blocks are walked by periods (`block_runs`): a loop over the periods, the blocks of one period unrolled (each
    block's runs are fixed), the last period apart (its last block reads the bias and residual tiles)."""
    b = s.blocking
    ragged = is_ragged(shape, b)
    h, w, width = b["out_subblock_h"], b["out_subblock_w"], b["in0_block_w"]
    sh, sw = b["per_core_m"] // h, b["per_core_n"] // w
    piece = piece_tiles(g, width)
    blocks = block_runs(g, width)
    period_positions = len(blocks) * width // g.stick_tiles
    k = KernelBuilder(op.loc)
    table = tensor(op.operands[0])
    table_gen, ids_gen = k.addrgen(0, table), k.addrgen(1, tensor(op.operands[1]))
    b_gen = k.addrgen(2, tensor(op.operands[2]))
    bias = fused_bias(op)
    bias_gen = k.addrgen(3, tensor(bias)) if bias is not None else None
    mcast = is_mcast(b)  # in1 (and the bias) read by core 0 and multicast to the whole grid (IN1_TO_ALL)
    residual = ResidualReads(op, shape, k, MCAST_ARGS + 6 if mcast else 4 if ragged else 3)
    piece_bytes = piece * TILE * g.element_bytes

    def read_in0(row: Index, period: Index, runs: list[tuple[int, int, int]]) -> None:
        """The block's sticks: per tile row and run, its index page, then each piece's 32 rows."""
        for r in range(h):
            tile_row = k.add(k.affine(k.arg(0), (row, h)), r)
            for position, tile, pieces in runs:
                page = k.affine(tile_row, (period, period_positions * g.tile_rows), (position, g.tile_rows))
                k.op("cb_reserve_back", cb=CB_INDEX, pages=1)
                k.op("noc_read_pages", ids_gen, page, cb=CB_INDEX, count=1)
                k.op("noc_read_barrier")
                k.op("cb_push_back", cb=CB_INDEX, pages=1)
                k.op("cb_wait_front", cb=CB_INDEX, pages=1)
                for j in range(pieces):
                    k.op("cb_reserve_back", cb=CB_STICKS, pages=TILE)
                    segment = ((tile + j * piece) * TILE * g.element_bytes, piece_bytes) if piece < g.stick_tiles \
                        else ()
                    k.op("noc_read_rows_indexed", table_gen, 0, TILE, *segment, cb=CB_STICKS, index_cb=CB_INDEX,
                         count=TILE, wrap=table.shape[0], pad_negative=True)
                    k.op("noc_read_barrier")
                    k.op("cb_push_back", cb=CB_STICKS, pages=TILE)
                k.op("cb_pop_front", cb=CB_INDEX, pages=1)

    def read_in1(col: Index, kb: Index) -> list:
        k.op("cb_reserve_back", cb=CB_IN1, pages=width * w)
        start = k.affine(k.arg(1), (kb, width * shape.nt), (col, w))
        edge = [k.arg(MCAST_ARGS + 5)] if mcast else [k.affine(k.arg(3), (col, -w))] if ragged else []
        k.op("noc_read_tiles", b_gen, start, *edge, cb=CB_IN1, rows=width, cols=w, row_stride=shape.nt)
        return edge

    def share(with_bias: bool) -> None:
        """The multicast plan: core 0's in1 block (and bias row) to every core."""
        if not mcast or s.grid.num_cores == 1:
            return
        blocks = [(CB_IN1, width * w), (CB_BIAS, w)] if with_bias else [(CB_IN1, width * w)]
        multicast_handshake(k, blocks, k.arg(MCAST_ARGS + 3), k.arg(MCAST_ARGS + 4), (0, 0),
                            (0, 0, s.grid.x - 1, s.grid.y - 1), s.grid.num_cores - 1, IN1_READY, IN1_VALID)

    def read_bias(col: Index, edge: list) -> None:
        k.op("cb_reserve_back", cb=CB_BIAS, pages=w)
        k.op("noc_read_tiles", bias_gen, k.affine(k.arg(2), (col, w)), *edge, cb=CB_BIAS, rows=1, cols=w)

    def k_step(period: Index, i: int, last: bool) -> None:
        kb = k.affine(i, (period, len(blocks)))
        runs = blocks[i]
        with_bias = last and bias is not None
        if column_outer(b):
            with k.loop(sw) as col:
                edge = read_in1(col, kb)
                k.op("noc_read_barrier")
                k.op("cb_push_back", cb=CB_IN1, pages=width * w)
                with k.loop(sh) as row:
                    read_in0(row, period, runs)
                    if with_bias:
                        read_bias(col, edge)
                        k.op("noc_read_barrier")
                        k.op("cb_push_back", cb=CB_BIAS, pages=w)
                    if last:
                        residual.read(0, row, col, h, w, edge)
            return
        with k.loop(sh) as row:
            read_in0(row, period, runs)
            with k.loop(sw) as col:
                edge = read_in1(col, kb)
                if with_bias:
                    read_bias(col, edge)
                k.op("noc_read_barrier")
                share(with_bias)
                k.op("cb_push_back", cb=CB_IN1, pages=width * w)
                if with_bias:
                    k.op("cb_push_back", cb=CB_BIAS, pages=w)
                if last:
                    residual.read(0, row, col, h, w, [] if mcast else edge)

    periods = shape.kt // (width * len(blocks))
    if periods > 1:
        with k.loop(periods - 1) as period:
            for i in range(len(blocks)):
                k_step(period, i, False)
    for i in range(len(blocks)):
        k_step(periods - 1, i, i == len(blocks) - 1)
    return k.region()


class Im2colMatmulOp(DeviceOp):
    """A convolution's product reading its im2col rows by index (its lookup fused into its reader)."""

    kind = "im2col_matmul"
    op_names = frozenset({ttir.IM2COL_LINEAR.name})

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return iter(fused_candidates(op))

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        with as_linear(op) as proxy:
            return matmul_units(matmul_shape(proxy), blocking)

    def grid_shape(self, op: Operation, blocking: dict[str, int]) -> tuple[int, int] | None:
        shards = result_shards(op)
        return None if shards is None else (int(shards.grid[0]), int(shards.grid[1]))

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return fused_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_fused(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_fused(op)


IM2COL_MATMUL = register(Im2colMatmulOp())
