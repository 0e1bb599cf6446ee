"""`grid`: choose each device op's core grid and per-core blocking with the cost model.

For every op that becomes a program, the pass enumerates the blockings whose work divides exactly over
the cores (so every core runs the same control flow), places the cores on a grid inside the device's
compute grid, ranks the candidates by `cost_model.estimate`, and takes the cheapest whose L1 footprint
(`footprint.l1_footprint`, plus the L1 tensors live across the op) fits the L1 budget. It records

    tt.grid = #tt.grid<XxY>, tt.blocking = {...}, tt.cost = {cycles = N, bound = "..."},
    tt.math_fidelity = "hifi4"

When nothing fits, it raises a UserError naming the ONNX node, the smallest footprint found and the
budget. Options: `math-fidelity` (lofi|hifi2|hifi3|hifi4), `max-cores` (0 = the whole compute grid).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ttc.ir.core import Module, Operation
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects.tt import DeviceAttr, GridAttr
from ttc.passes.cost_model import FIDELITY_PHASES, Cost, estimate
from ttc.passes.footprint import (
    HALF_DST,
    accumulation_tiles,
    affine_step,
    batch_offsets,
    cb_bytes,
    circular_buffers,
    eltwise_plan,
    embedding_geometry,
    gather_of,
    is_folded,
    is_view,
    l1_footprint,
    matmul_shape,
    module_device,
    node_names,
    op_kind,
    other_l1_bytes,
    reduction_of,
    tensor,
    tile_shape,
)
from ttc.passes.manager import Pass, register_pass

GRID = "tt.grid"
BLOCKING = "tt.blocking"
COST = "tt.cost"
FIDELITY = "tt.math_fidelity"
LN_BLOCK_W = HALF_DST // 2  # layer norm holds a block twice in Dst (centred value and its square)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def grid_for(cores: int, device: DeviceAttr, max_cores: int = 0) -> GridAttr | None:
    """A grid of exactly `cores` cores inside the compute grid (widest rows first), or None."""
    gx, gy = device.compute_grid
    if max_cores and cores > max_cores:
        return None
    for x in range(min(cores, gx), 0, -1):
        if cores % x == 0 and cores // x <= gy:
            return GridAttr(x, cores // x)
    return None


def core_units(op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
    """How the op's work splits over cores, outermost first; cores take the units in row-major order."""
    kind = op_kind(op)
    if kind == "matmul":
        shape = matmul_shape(op)
        return (shape.batches // blocking["batches"], shape.mt // blocking["per_core_m"],
                -(-shape.nt // blocking["per_core_n"]))  # the last core along N may be ragged
    if kind == "data_movement":
        return (tile_shape(tensor(op.result).shape).tiles // blocking["tiles"],)
    out = tile_shape(tensor(op.result).shape)
    if kind == "embedding":
        out = embedding_geometry(op)[0]
    if kind in ("embedding", "untilize"):
        return (out.batches // blocking["batches"], out.rt // blocking["rows"])
    if kind == "reduce":
        return (out.batches // blocking["batches"], reduction_of(op).lines // blocking["lines"])
    return (out.batches // blocking["batches"], out.rt // blocking["rows"], out.ct // blocking["cols"])


# ----------------------------------------------------------------------------------------------
# Candidates


def subblock_choices(per_core_m: int, per_core_n: int) -> list[tuple[int, int]]:
    """Out subblocks (h, w) with h * w <= 8: the preferred one (fewest in1 re-reads, most tiles),
    then 1 x 1 as the smallest footprint."""
    options = [(h, w) for h in divisors(per_core_m) for w in divisors(per_core_n) if h * w <= HALF_DST]
    best = min(options, key=lambda hw: (per_core_m // hw[0], -hw[0] * hw[1], -hw[1]))
    return [best] if best == (1, 1) else [best, (1, 1)]


def batch_groups(offsets: list, batches: int) -> list[int]:
    """Batches per core whose tile offsets step affinely inside each group (a static loop stride)."""
    return [g for g in divisors(batches) if all(affine_step(o, g) is not None for o in offsets)]


RAGGED_SPLITS = 108  # ragged N splits are tried over up to this many cores (the e150 compute grid)


MIN_N_CORES = 8  # exact N splits over fewer cores than this are poor for a wide output


def n_splits(nt: int) -> list[int]:
    """Output tile columns per core: the divisors of nt, and when none of them spreads N over 8 to 108
    cores (a prime nt such as a vocabulary's 1571 tiles) also ceil(nt / cores) for 2..108 cores, the last
    core taking the rest (a ragged split)."""
    exact = divisors(nt)
    if nt < MIN_N_CORES or any(MIN_N_CORES <= nt // d <= RAGGED_SPLITS for d in exact):
        return exact
    ragged = {-(-nt // cores) for cores in range(2, min(nt, RAGGED_SPLITS) + 1)}
    return sorted(set(exact) | {n for n in ragged if nt % n})


def matmul_candidates(op: Operation) -> Iterator[dict[str, int]]:
    """K steps (in0_block_w) divide the accumulation chunk, so a chunk is whole K steps."""
    shape = matmul_shape(op)
    for batches in batch_groups([shape.a_offsets, shape.b_offsets], shape.batches):
        for pcm in divisors(shape.mt):
            for pcn in n_splits(shape.nt):
                for h, w in subblock_choices(pcm, pcn):
                    for width in divisors(accumulation_tiles(shape.kt)):
                        yield {"batches": batches, "per_core_m": pcm, "per_core_n": pcn, "in0_block_w": width,
                               "out_subblock_h": h, "out_subblock_w": w}


def row_candidates(op: Operation, kind: str) -> Iterator[dict[str, int]]:
    """Eltwise: any split of batches, tile rows and tile columns; softmax / layer norm: whole rows."""
    out = tile_shape(tensor(op.result).shape)
    if kind == "eltwise":
        eltwise_plan(op)  # a UserError for a body the kernel cannot run, before any candidate
        offsets = [batch_offsets(tensor(v).shape, tensor(op.result).shape) for v in op.operands]
    else:
        last_axis_only(op)
        offsets = []  # the input has the result's shape: any batch grouping steps affinely
    max_w = LN_BLOCK_W if kind == "layer_norm" else HALF_DST
    for batches in batch_groups(offsets, out.batches):
        for rows in divisors(out.rt):
            for cols in divisors(out.ct) if kind == "eltwise" else [out.ct]:
                for width in [d for d in divisors(cols) if d <= max_w][::-1]:
                    yield {"batches": batches, "rows": rows, "cols": cols, "block_w": width}


def last_axis_only(op: Operation) -> None:
    """Softmax and layer norm kernels reduce along the last dim (tilize moves other axes there)."""
    rank = tensor(op.operands[0]).rank
    axis = op.attr("axis")
    if rank and axis % rank != rank - 1:
        raise UserError(f"node {node_names(op)}: '{op.name}' along axis {axis} of a rank-{rank} tensor; the device "
                        "kernel reduces along the last axis only (run tilize first)")


def gather_candidates(op: Operation) -> Iterator[dict[str, int]]:
    gather_of(op)  # a UserError when the movement is not tile-granular
    total = tile_shape(tensor(op.result).shape).tiles
    for tiles in divisors(total):
        for block in [d for d in divisors(tiles) if d <= HALF_DST][::-1]:
            yield {"tiles": tiles, "block": block}


def embedding_candidates(op: Operation) -> Iterator[dict[str, int]]:
    """Whole tile rows per core (32 rows tilized or untilized together), any split of batches and rows."""
    out = embedding_geometry(op)[0] if op_kind(op) == "embedding" else tile_shape(tensor(op.result).shape)
    for batches in divisors(out.batches):
        for rows in divisors(out.rt):
            for width in [d for d in divisors(out.ct) if d <= HALF_DST][::-1]:
                yield {"batches": batches, "rows": rows, "block_w": width}


def reduce_candidates(op: Operation) -> Iterator[dict[str, int]]:
    """Whole lines per core; any split of batches and lines; blocks of tiles along a line."""
    reduction = reduction_of(op)
    for batches in divisors(reduction.source.batches):
        for lines in divisors(reduction.lines):
            widths = [d for d in divisors(reduction.streamed) if d <= HALF_DST][::-1] or [1]
            for width in widths:
                yield {"batches": batches, "lines": lines, "block_w": width}


def candidates(op: Operation) -> Iterator[dict[str, int]]:
    kind = op_kind(op)
    if kind == "reduce":
        return reduce_candidates(op)
    if kind == "matmul":
        return matmul_candidates(op)
    if kind in ("embedding", "untilize"):
        return embedding_candidates(op)  # the same work units: whole tile rows
    if kind == "data_movement":
        return gather_candidates(op)
    return row_candidates(op, kind or "")


@dataclass(frozen=True)
class Choice:
    grid: GridAttr
    blocking: dict[str, int]
    cost: Cost
    footprint: int


def placements(op: Operation, device: DeviceAttr, max_cores: int = 0) -> Iterator[tuple[GridAttr, dict[str, int]]]:
    """Every candidate blocking whose cores fit on a grid inside the compute grid, with that grid."""
    for blocking in candidates(op):
        cores = 1
        for units in core_units(op, blocking):
            cores *= units
        grid = grid_for(cores, device, max_cores)
        if grid is not None:
            yield grid, blocking


def ranked(op: Operation, device: DeviceAttr, fidelity: str, max_cores: int = 0) -> list[tuple[GridAttr, dict, Cost]]:
    """The placed candidates, cheapest first (ties keep the enumeration order)."""
    kind = op_kind(op) or ""
    costed = [(grid, blocking, estimate(op, kind, device, grid.num_cores, blocking, fidelity))
              for grid, blocking in placements(op, device, max_cores)]
    return sorted(costed, key=lambda c: c[2].cycles)


def min_cb_bytes(op: Operation, device: DeviceAttr, max_cores: int = 0) -> int:
    """The smallest CB footprint over every grid and blocking of `op` (for the layout pass)."""
    return min(cb_bytes(circular_buffers(op, blocking)) for _, blocking in placements(op, device, max_cores))


def choose(op: Operation, device: DeviceAttr, budget: int, fidelity: str, max_cores: int = 0) -> Choice:
    """The cheapest placed candidate whose footprint fits `budget`; a UserError when none does."""
    smallest = None
    for grid, blocking, cost in ranked(op, device, fidelity, max_cores):
        footprint = l1_footprint(op, device, blocking)
        if footprint <= budget:
            return Choice(grid, blocking, cost, footprint)
        smallest = footprint if smallest is None else min(smallest, footprint)
    raise UserError(
        f"node {node_names(op)}: '{op.name}' does not fit in L1 on {device.arch}: its smallest footprint "
        f"over all grids and blockings is {smallest} bytes per core (circular buffers + L1 tensors), the "
        f"budget is {budget} bytes (l1_size - l1_reserved - other L1 tensors live across it); "
        "try layout{l1-intermediates=false}, a narrower last dimension, or splitting the op in the model")


@register_pass
@dataclass
class Grid(Pass):
    """Choose each device op's core grid and blocking with the cost model, within L1 and the device."""

    name = "grid"
    math_fidelity: str = "hifi4"
    max_cores: int = 0

    def run(self, module: Module) -> None:
        if self.math_fidelity not in FIDELITY_PHASES:
            raise UserError(f"grid: unknown math fidelity '{self.math_fidelity}' "
                            f"(choose from {', '.join(FIDELITY_PHASES)})")
        device = module_device(module)
        for func in module.functions:
            ops = list(func.body.ops)
            others = other_l1_bytes(ops, device)
            for op in ops:
                if op_kind(op) is None or is_folded(op) or is_view(op):
                    continue
                fidelity = op.attributes.get(FIDELITY, self.math_fidelity)  # exact data movement pins hifi4
                choice = choose(op, device, device.l1_free - others[id(op)], fidelity, self.max_cores)
                op.attributes[GRID] = choice.grid
                op.attributes[BLOCKING] = dict(choice.blocking)
                op.attributes[COST] = choice.cost.as_attr()
                op.attributes[FIDELITY] = fidelity
