"""The planned counts of a device op: what its program will do under a grid and blocking, counted exactly.

The grid pass ranks candidates by `estimate`: the target's cost (`ttc.ir.target.cost`, the one cost model)
of the `Counts` this module plans. A plan counts what the kernels of backend/ will execute, op for op, in
the units the emulators count (runtime/accounting.py): tile ops per key and per core, NoC bytes per core
(the pages of all cores // cores for a transfer whose pages differ by core), DRAM bytes read and written,
sharded pages a core moves within its own L1. tests/e2e/test_cost_model.py checks, program by program over
every test model, that the plan equals what both emulators count, so a plan cannot claim less work than its
program does.

Per kind, the plan follows the kernel generator's loops (backend/<kind>.py): the same trip counts, the same
pages per transfer, the same runtime arguments per core (cores take the work units in row-major order; the
extra cores of a padded grid repeat the last unit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ttc.ir import target
from ttc.ir.attributes import WeightAttr
from ttc.ir.core import Operation, OpResult, Value
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.target import Cost, Counts
from ttc.passes.footprint import (
    INDEX_ROW,
    SFPU_BINARY,
    TILE,
    accumulation_tiles,
    affine_step,
    batch_offsets,
    core_bank,
    eltwise_plan,
    embedding_geometry,
    gather_of,
    is_sharded,
    layout,
    matmul_masks,
    matmul_shape,
    page_size,
    program_operands,
    reduce_groups,
    reduction_of,
    row_sum_groups,
    shard_geometry,
    tensor,
    tile_shape,
)

FIDELITY_PHASES = target.FIDELITY_PHASES
Weights = Mapping[str, np.ndarray]


def format_name(value: Value) -> str:
    return tensor(value).element_type.name


def constant_of(value: Value, weights: Weights | None) -> np.ndarray | None:
    """The array behind a weight constant, when the weights are at hand."""
    if weights is None or not isinstance(value, OpResult):
        return None
    attr = value.op.attributes.get("value")
    return weights.get(attr.name) if isinstance(attr, WeightAttr) else None


# ----------------------------------------------------------------------------------------------
# A plan under construction


@dataclass(frozen=True)
class Buffer:
    """How a program reaches one buffer: its page size, memory, and shard map (for local pages)."""

    page: int
    dram: bool
    owner_bank: Callable[[np.ndarray], np.ndarray] | None  # page -> bank (device core) of its shard

    @classmethod
    def of(cls, t: object, device: DeviceAttr, page: int | None = None, dram: bool | None = None) -> Buffer:
        from ttc.ir.types import TensorType

        assert isinstance(t, TensorType)
        owner = None
        if is_sharded(t):
            geometry = shard_geometry(t)
            device_x = device.compute_grid[0]

            def owner(pages: np.ndarray) -> np.ndarray:
                shard = geometry.owner(pages // geometry.cols, pages % geometry.cols)
                return core_bank(shard, geometry.grid, device_x)

        in_dram = layout(t).memory_space == "dram" if dram is None else dram
        return cls(page if page is not None else page_size(t), in_dram, owner)


class Plan:
    """The counts of one program as its kernels' loops are walked, per core and per transfer."""

    def __init__(self, device: DeviceAttr, grid: tuple[int, int], units: tuple[int, ...]) -> None:
        self.device = device
        self.cores = grid[0] * grid[1]
        self.units = units
        self.builder = target.CountsBuilder(self.cores)
        self.banks = core_bank(np.arange(self.cores), grid, device.compute_grid[0])
        count = math.prod(units)
        # per core: its work unit's coordinates (a padded grid's extra cores repeat the last unit)
        self.unit = np.stack(np.unravel_index(np.minimum(np.arange(self.cores), count - 1), units), axis=1) \
            if units else np.zeros((self.cores, 0), dtype=np.int64)

    def tile(self, key: str, tiles: int) -> None:
        self.builder.tile(key, tiles)

    def static(self, buffer: Buffer, pages: int, write: bool = False,
               page_lists: Callable[[], np.ndarray] | None = None) -> None:
        """`pages` pages per core (every core the same), and for a sharded buffer the pages themselves,
        `page_lists()` [cores, n] over all instances, to tell a core's own shard from the others."""
        self.builder.transfer(pages * buffer.page, buffer.dram, write)
        if buffer.owner_bank is not None and page_lists is not None and pages:
            listed = page_lists()
            self.builder.local_total += int((buffer.owner_bank(listed) == self.banks[:, None]).sum()) * buffer.page

    def masked(self, buffer: Buffer, totals: np.ndarray, write: bool = False) -> None:
        """A transfer whose pages differ by core: per instance the pages of all cores (`totals`), of which
        every core is counted the floor of the average on the NoC; DRAM serves them all."""
        totals = np.asarray(totals, dtype=np.int64)
        pages = int((totals // self.cores).sum())
        self.builder.transfer(pages * buffer.page, buffer.dram, write, int(totals.sum()) * buffer.page)

    def counts(self) -> Counts:
        return self.builder.counts()


def _grid(grid: tuple[int, int] | object) -> tuple[int, int]:
    if isinstance(grid, tuple):
        return grid
    return (int(grid.x), int(grid.y))  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# Matmul (backend/matmul.py)


def matmul_units(shape, b: dict[str, int]) -> tuple[int, int, int]:
    return shape.batches // b["batches"], shape.mt // b["per_core_m"], -(-shape.nt // b["per_core_n"])


def plan_matmul(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    shape = matmul_shape(op)
    a, w, out = op.operands[0], op.operands[1], op.result
    out_type = tensor(out) if result_layout is None else tensor(out).with_encoding(result_layout)
    batches, pcm, pcn, width = b["batches"], b["per_core_m"], b["per_core_n"], b["in0_block_w"]
    h, ww = b["out_subblock_h"], b["out_subblock_w"]
    sh, sw = pcm // h, pcn // ww
    kt, nt = shape.kt, shape.nt
    k_blocks = kt // width
    chunks = kt // accumulation_tiles(kt)
    has_bias = len(op.operands) > 2
    activation = op.attributes.get("activation", "none")
    plan = Plan(device, grid, matmul_units(shape, b))
    out_tiles = batches * pcm * pcn
    plan.tile(target.DATACOPY, out_tiles * (k_blocks + int(any(matmul_masks(op)))))  # fills, reloads, masks
    plan.tile(target.matmul_key(fidelity, format_name(a), format_name(w)), out_tiles * kt)
    plan.tile(target.binary_key("add"), out_tiles * (chunks - 1 + int(has_bias)))  # chunk sums, bias
    if activation != "none":
        plan.tile(target.sfpu_key(activation), out_tiles)

    unit = plan.unit
    batch0, m0, n0 = unit[:, 0] * batches, unit[:, 1] * pcm, unit[:, 2] * pcn
    ragged = nt % pcn != 0
    valid = np.minimum(pcn, nt - n0)  # per core: output columns before the ragged edge
    edge = np.clip(valid[:, None] - np.arange(sw)[None, :] * ww, 0, ww)  # [cores, sw]: valid columns per subblock

    def a_pages() -> np.ndarray:  # every (batch, row, k) the core reads, once per K step and subblock row
        rows = (shape.a_offsets[batch0[:, None] + np.arange(batches)[None, :]] // kt)[:, :, None] \
            + m0[:, None, None] + np.arange(pcm)[None, None, :]
        return (rows.reshape(plan.cores, -1, 1) * kt + np.arange(kt)[None, None, :]).reshape(plan.cores, -1)

    abuf = Buffer.of(tensor(a), device)
    plan.static(abuf, batches * pcm * kt, page_lists=a_pages)

    wbuf = Buffer.of(tensor(w), device)
    b_reads = batches * k_blocks * sh  # instances of each subblock column's read
    if ragged:
        plan.masked(wbuf, np.repeat(width * edge.sum(axis=0), b_reads))
    else:
        def b_pages() -> np.ndarray:
            base = shape.b_offsets[batch0[:, None] + np.arange(batches)[None, :]] + n0[:, None]  # [cores, batches]
            grid_pages = np.arange(kt)[:, None] * nt + np.arange(pcn)[None, :]
            pages = base[:, :, None] + grid_pages.reshape(1, 1, -1)
            return np.repeat(pages.reshape(plan.cores, -1), sh, axis=1)

        plan.static(wbuf, batches * kt * pcn * sh, page_lists=b_pages)
    if has_bias:
        bias = op.operands[2]
        bbuf = Buffer.of(tensor(bias), device)
        if ragged:
            plan.masked(bbuf, np.repeat(edge.sum(axis=0), batches * sh))
        else:
            plan.static(bbuf, batches * sh * pcn,
                        page_lists=lambda: np.repeat(n0[:, None] + np.arange(pcn)[None, :], batches * sh, axis=1))

    obuf = Buffer.of(out_type, device)
    if ragged:
        plan.masked(obuf, np.repeat(h * edge.sum(axis=0), batches * sh), write=True)
    else:
        def out_pages() -> np.ndarray:
            rows = (batch0[:, None] + np.arange(batches)[None, :])[:, :, None] * shape.mt \
                + m0[:, None, None] + np.arange(pcm)[None, None, :]
            return (rows.reshape(plan.cores, -1, 1) * nt + n0[:, None, None]
                    + np.arange(pcn)[None, None, :]).reshape(plan.cores, -1)

        plan.static(obuf, out_tiles, write=True, page_lists=out_pages)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Eltwise (backend/eltwise.py)


def plan_eltwise(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                 result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    ep = eltwise_plan(op)
    out = tile_shape(tensor(op.result).shape)
    width = b["block_w"]
    col_blocks = b["cols"] // width
    blocks = b["batches"] * b["rows"] * col_blocks
    plan = Plan(device, grid, (out.batches // b["batches"], out.rt // b["rows"], out.ct // b["cols"]))
    if ep.zero_cb is not None:
        plan.tile(target.DATACOPY, 1)
    for number, phase in enumerate(ep.phases):
        tiles = blocks * (width if phase.full else 1)
        if phase.op == "copy":
            plan.tile(target.DATACOPY, tiles)
        elif phase.op in SFPU_BINARY:
            plan.tile(target.DATACOPY, 2 * tiles)
            plan.tile(target.sfpu_binary_key(phase.op), tiles)
        else:
            plan.tile(target.binary_key(phase.op), tiles)
        for fn, _ in phase.sfpu:
            plan.tile(target.sfpu_key(fn), tiles)
        if number == len(ep.phases) - 1 and (ep.mask_rows or ep.mask_cols):
            plan.tile(target.DATACOPY, tiles)

    unit = plan.unit
    batch0, row0, col0 = unit[:, 0] * b["batches"], unit[:, 1] * b["rows"], unit[:, 2] * b["cols"]
    loop = np.stack([g.ravel() for g in np.meshgrid(np.arange(b["batches"]), np.arange(b["rows"]),
                                                    np.arange(col_blocks), indexing="ij")], axis=1)  # [blocks, 3]
    for value, full in zip(op.operands, ep.inputs, strict=True):
        source = tile_shape(tensor(value).shape)
        offsets = batch_offsets(tensor(value).shape, tensor(op.result).shape)
        step = affine_step(offsets, b["batches"]) or 0
        rs = source.ct if source.rows == out.rows else 0
        cs = 1 if source.cols == out.cols else 0
        tiles = width if full else 1

        def in_pages(offsets=offsets, step=step, rs=rs, cs=cs, tiles=tiles) -> np.ndarray:
            first = offsets[batch0] + row0 * rs + col0 * cs
            starts = first[:, None] + (loop[:, 0] * step + loop[:, 1] * rs + loop[:, 2] * width * cs)[None, :]
            return (starts[:, :, None] + np.arange(tiles)[None, None, :]).reshape(plan.cores, -1)

        plan.static(Buffer.of(tensor(value), device), blocks * tiles, page_lists=in_pages)

    def out_pages() -> np.ndarray:
        first = (batch0 * out.rt + row0) * out.ct + col0
        starts = first[:, None] + (loop[:, 0] * out.rt * out.ct + loop[:, 1] * out.ct + loop[:, 2] * width)[None, :]
        return (starts[:, :, None] + np.arange(width)[None, None, :]).reshape(plan.cores, -1)

    plan.static(Buffer.of(tensor(op.result), device), blocks * width, write=True, page_lists=out_pages)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Softmax and layer norm (backend/normalization.py)


def _row_sum(plan: Plan, rows: int, tiles: int, fidelity: str) -> None:
    """`reduce_row` of a sum over `tiles` tiles, `rows` times: fills, the groups, the sum of the groups."""
    groups = len(row_sum_groups(tiles))
    extra = groups if groups > 1 else 0
    plan.tile(target.DATACOPY, rows * (groups + int(groups > 1)))
    plan.tile(target.reduce_sum_key(fidelity), rows * (tiles + extra))


def plan_row_op(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    shape = tile_shape(tensor(op.operands[0]).shape)
    ct = shape.ct
    rows = b["batches"] * b["rows"]
    pad_rows, pad_cols = shape.rows % TILE != 0, shape.cols % TILE != 0
    plan = Plan(device, grid, (shape.batches // b["batches"], shape.rt // b["rows"]))
    if op.name == "ttir.softmax":
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
        for _ in range(2):
            _row_sum(plan, rows, ct, fidelity)
        plan.tile(target.sfpu_key("mul_scalar"), 2 * rows)
        plan.tile(target.sfpu_key("add_scalar"), rows)
        plan.tile(target.sfpu_key("rsqrt"), rows)
        plan.tile(target.binary_key("sub"), 2 * rows * ct)
        plan.tile(target.DATACOPY, rows * ct * (2 * int(pad_cols) + int(pad_rows)))
        plan.tile(target.sfpu_key("square"), rows * ct)
        plan.tile(target.binary_key("mul"), 2 * rows * ct)
        plan.tile(target.binary_key("add"), rows * ct * int(has_beta))

    unit = plan.unit
    first = (unit[:, 0] * b["batches"] * shape.rt + unit[:, 1] * b["rows"]) * ct
    loop = (np.arange(b["batches"])[:, None] * shape.rt * ct + np.arange(b["rows"])[None, :] * ct).ravel()

    def row_pages() -> np.ndarray:
        return (first[:, None, None] + loop[None, :, None] + np.arange(ct)[None, None, :]).reshape(plan.cores, -1)

    plan.static(Buffer.of(tensor(op.operands[0]), device), rows * ct, page_lists=row_pages)
    for param in op.operands[1:]:
        plan.static(Buffer.of(tensor(param), device), rows * ct,
                    page_lists=lambda: np.tile(np.arange(ct), (plan.cores, rows)))
    plan.static(Buffer.of(tensor(op.result), device), rows * ct, write=True, page_lists=row_pages)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Data movement (backend/data_movement.py)


def plan_gather(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    gather = gather_of(op)
    sources = program_operands(op)
    total = tile_shape(tensor(op.result).shape).tiles
    tiles, block = b["tiles"], b["block"]
    steps = tiles // block
    plan = Plan(device, grid, (total // tiles,))
    if gather.transposed:
        plan.tile(target.DATACOPY, tiles)
    plan.static(Buffer(INDEX_ROW * 4, True, None), steps)  # one index-table row per step
    outputs = plan.unit[:, 0:1] * tiles + np.arange(tiles)[None, :]  # [cores, tiles]: the core's output tiles
    if len(sources) == 1:
        plan.static(Buffer.of(tensor(sources[0]), device), tiles, page_lists=lambda: gather.source[outputs])
    else:
        assert gather.inputs is not None
        which = gather.inputs[outputs].reshape(plan.cores, steps, block)
        for index, source in enumerate(sources):
            plan.masked(Buffer.of(tensor(source), device), (which == index).sum(axis=(0, 2)))
    plan.static(Buffer.of(tensor(op.result), device), tiles, write=True, page_lists=lambda: outputs)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Embedding (backend/embedding.py)


def plan_embedding(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                   result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    out, ids_per_page, row_bytes = embedding_geometry(op)
    table, ids = op.operands
    width = b["block_w"]
    tile_rows = b["batches"] * b["rows"]
    plan = Plan(device, grid, (out.batches // b["batches"], out.rt // b["rows"]))
    plan.tile(target.DATACOPY, tile_rows * out.ct)
    batch0, row0 = plan.unit[:, 0] * b["batches"], plan.unit[:, 1] * b["rows"]
    im2col = bool(op.attributes.get("im2col"))
    id_rows = tensor(ids).shape[1] if im2col else 0
    batch = np.arange(b["batches"])[:, None]
    row = np.arange(b["rows"])[None, :]
    tile_row = row0[:, None, None] + row[None]  # [cores, 1, rows]
    page = (row0[:, None, None] + (batch0[:, None, None] + batch[None]) * id_rows + row[None]) if im2col \
        else np.broadcast_to(batch0[:, None, None] + batch[None], (plan.cores, b["batches"], b["rows"]))
    plan.static(Buffer.of(tensor(ids), device), tile_rows, page_lists=lambda: np.broadcast_to(
        page, (plan.cores, b["batches"], b["rows"])).reshape(plan.cores, -1))
    valid = np.full(tile_row.shape, TILE) if ids_per_page % TILE == 0 \
        else np.minimum(TILE, ids_per_page - TILE * tile_row)
    wanted = np.arange(TILE)[None, None, None, :] < valid[..., None]  # [cores, 1, rows, 32]
    wanted = np.broadcast_to(wanted, (plan.cores, b["batches"], b["rows"], TILE))
    if op.attributes.get("pad_negative"):
        id_table = constant_of(ids, weights)
        if id_table is not None:
            flat = id_table.reshape(-1, id_table.shape[-1]) if not im2col else id_table.reshape(-1, TILE)
            first = 0 if im2col else TILE
            positions = np.arange(TILE)[None, None, None, :] + (0 if im2col else first * tile_row[..., None])
            pages = np.broadcast_to(page, (plan.cores, b["batches"], b["rows"]))[..., None]
            inside = wanted & (positions < flat.shape[-1])
            values = flat[pages, np.where(inside, positions, 0)]
            wanted = wanted & (values >= 0)
    plan.masked(Buffer.of(tensor(table), device, page=row_bytes), wanted.sum(axis=(0, 3)).ravel())
    col_blocks = out.ct // width
    plan.static(Buffer.of(tensor(op.result), device), tile_rows * col_blocks * width, write=True)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Reductions (backend/reduction.py)


def plan_reduce(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    reduction = reduction_of(op)
    source = reduction.source
    width = b["block_w"]
    lines = b["batches"] * b["lines"]
    groups = reduce_groups(reduction, width)
    per_group = reduction.streamed // width // groups if groups else 0
    partials = groups + int(reduction.masked_last)
    plan = Plan(device, grid, (source.batches // b["batches"], reduction.lines // b["lines"]))
    key = target.reduce_sum_key(fidelity) if reduction.kind == "sum" else target.REDUCE_MAX
    plan.tile(key, lines * (groups * per_group * width + partials))
    plan.tile(target.DATACOPY, lines * (groups + 2 * int(reduction.masked_last) + 2))
    unit = plan.unit
    batch0, line0 = unit[:, 0] * b["batches"], unit[:, 1] * b["lines"]
    step = source.ct if reduction.dim == "row" else 1
    read = reduction.streamed // width * width + int(reduction.masked_last)

    def in_pages() -> np.ndarray:
        first = batch0 * source.matrix_tiles + line0 * step
        loop = (np.arange(b["batches"])[:, None] * source.matrix_tiles + np.arange(b["lines"])[None, :] * step).ravel()
        along = np.arange(read) * reduction.stride
        return (first[:, None, None] + loop[None, :, None] + along[None, None, :]).reshape(plan.cores, -1)

    plan.static(Buffer.of(tensor(op.operands[0]), device), lines * read, page_lists=in_pages)

    def out_pages() -> np.ndarray:
        first = batch0 * reduction.lines + line0
        loop = (np.arange(b["batches"])[:, None] * reduction.lines + np.arange(b["lines"])[None, :]).ravel()
        return first[:, None] + loop[None, :]

    plan.static(Buffer.of(tensor(op.result), device), lines, write=True, page_lists=out_pages)
    return plan.counts()


# ----------------------------------------------------------------------------------------------
# Untilize (backend/untilize.py)


def plan_untilize(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                  result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    source = tile_shape(tensor(op.operands[0]).shape)
    tile_rows = b["batches"] * b["rows"]
    plan = Plan(device, grid, (source.batches // b["batches"], source.rt // b["rows"]))
    plan.tile(target.DATACOPY, tile_rows * source.ct)
    batch0, row0 = plan.unit[:, 0] * b["batches"], plan.unit[:, 1] * b["rows"]

    def in_pages() -> np.ndarray:
        first = (batch0 * source.rt + row0) * source.ct
        loop = (np.arange(b["batches"])[:, None] * source.rt * source.ct
                + np.arange(b["rows"])[None, :] * source.ct).ravel()
        return (first[:, None, None] + loop[None, :, None] + np.arange(source.ct)[None, None, :]).reshape(plan.cores, -1)

    plan.static(Buffer.of(tensor(op.operands[0]), device), tile_rows * source.ct, page_lists=in_pages)
    tile_row = row0[:, None] + np.arange(b["rows"])[None, :]  # [cores, rows]
    valid = np.full(tile_row.shape, TILE) if source.rows % TILE == 0 else np.minimum(TILE, source.rows - TILE * tile_row)
    totals = np.tile(valid.sum(axis=0), b["batches"])
    plan.masked(Buffer.of(tensor(op.result), device), totals, write=True)
    return plan.counts()


_PLANS = {"matmul": plan_matmul, "eltwise": plan_eltwise, "softmax": plan_row_op, "layer_norm": plan_row_op,
          "data_movement": plan_gather, "embedding": plan_embedding, "reduce": plan_reduce,
          "untilize": plan_untilize}


def plan_counts(op: Operation, kind: str, device: DeviceAttr, grid: tuple[int, int] | object,
                blocking: dict[str, int], fidelity: str, result_layout: LayoutAttr | None = None,
                weights: Weights | None = None) -> Counts:
    """The counts of `op`'s program on `grid` with `blocking` (a matmul's result in `result_layout` if given;
    `weights` for constant index tables whose entries decide what is read)."""
    return _PLANS[kind](op, device, blocking, fidelity, _grid(grid), result_layout, weights)


def estimate(op: Operation, kind: str, device: DeviceAttr, grid: tuple[int, int] | object, blocking: dict[str, int],
             fidelity: str, result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Cost:
    """The target's cost of the planned counts."""
    return target.cost(device, plan_counts(op, kind, device, grid, blocking, fidelity, result_layout, weights))
