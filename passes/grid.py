"""`grid`: choose each device op's core grid and per-core blocking with the cost model.

For every op that becomes a program, the pass enumerates the blockings whose work divides exactly over
the cores (so every core runs the same control flow), places the cores on a grid inside the device's
compute grid, ranks the candidates by `cost_model.estimate`, and takes the cheapest whose L1 footprint
(`registry.l1_footprint`: the kind's CBs, plus the L1 tensors live across the op) fits the L1 budget. It records

    tt.grid = #tt.grid<XxY>, tt.blocking = {...}, tt.cost = {cycles = N, bound = "..."},
    tt.math_fidelity = "hifi4"

A kind may offer a slower fallback plan (`DeviceOp.fallback_candidates`: the column-blocked untilize,
tilize and row lookup of rows too wide for L1): it is ranked and tried only after every candidate of the fast
plan, and only when none of those fits an empty L1, or none fits after the op's L1 intermediates were spilled
to DRAM. When nothing fits, it raises a UserError naming the ONNX node, the smallest footprint found and the
budget. Options: `math-fidelity` (lofi|hifi2|hifi3|hifi4), `reduce-fidelity` (the same choices, for the
programs other than matmuls that sum on the matrix unit: softmax, layer norm, reductions; default: as
`math-fidelity`), `max-cores` (0 = the whole compute grid),
`sharding` (true: matmul results may be sharded as below; false: they keep the layout pass's choice),
`multicast` (true: a matmul may take the multicast plan, passes/ops/matmul_mcast.py, and a layer norm the
multicast of its parameters, row_ops.PARAM_MCAST, when the cost model ranks it first; false: unicast plans
only, no K split either), `ksplit` (true: a matmul of few output blocks may split its K over the cores of each
block, passes/ops/matmul_ksplit.py, when the cost model ranks it first; false: never), `attention` (true: once
every op is placed, an attention's matmul, softmax and matmul become one `ttir.attention` program where it fits
L1 and costs less, passes/attention.py), `im2col` (true: a convolution's im2col lookup and its product become one
`ttir.im2col_linear` program, the product's reader gathering the rows, where it fits L1 and costs less,
passes/im2col_fusion.py), `untilize` (true: a product read only by an untilize writes rows itself,
passes/untilize_fusion.py and passes/ops/matmul_rows.py), `lookups` (true: the row lookups an eltwise alone reads
become one `ttir.lookup_eltwise` program with it, a max pool's positions and their maximum, passes/lookup_fusion.py),
`siblings` (true: linears sharing their first operand whose results feed head-split gathers become one product,
the weights side by side, passes/sibling_fusion.py), `head-views` (true: the fused attention reads Q and V in
place of their head splits' gathers and writes its head merge itself, where it fits).

Sharding (matmul / linear results): the result's memory layout is chosen with the grid. A tall and narrow
result (M tiles >= 4 x N tiles, at least 8 tile rows) may be L1 height-sharded: each core owns a band of
full-width output rows (per_core_n = N) and writes it into its own L1. A result large in both M and N (at
least 8 tiles each, no batch) may be L1 block-sharded: the cores form a 2-D grid (N blocks x M blocks), each
owning one per_core_m x per_core_n block. Other results stay interleaved (e.g. M of 1-4 tiles). Eligible
sharded candidates are ranked with the interleaved ones by the same cost model (a core's tiles in its own
shard move no NoC bytes, `cost_model.shard_locality`), and the cheapest that fits wins; a sharded one must
also fit L1 at every op its result lives across, and a shard above 40 % of a core's free L1 is not tried,
so a large activation falls back to interleaved (DRAM if layout left it there). The op records

    tt.sharding = {layout = "height_sharded", reason = "..."}

and its result type shows `#tt.layout<tile, l1, height_sharded, grid = 7x7, shard = 2x1>` (shard in tiles).
A sharded result layout already in the input IR is kept: only matching blockings are tried, and a shard that
cannot fit is a UserError naming the node and the core.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass

from ttc.ir.core import Module, Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects.tt import DeviceAttr, GridAttr, LayoutAttr
from ttc.ir.target import FIDELITY_PHASES, Cost
from ttc.passes.attention import fuse_attention
from ttc.passes.cost_model import Weights, estimate, matmul_units
from ttc.passes.im2col_fusion import fuse_im2col
from ttc.passes.l1_timeline import L1Timeline
from ttc.passes.liveness import (
    LiveRange,
    buffer_of,
    chain_end,
    live_ranges,
    other_l1_bytes,
    readers,
    sync_body_placement,
)
from ttc.passes.lookup_fusion import fuse_lookups
from ttc.passes.manager import Pass, register_pass
from ttc.passes.matmul_chunks import split_oversized_matmuls
from ttc.passes.ops.eltwise import overlapping
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.geometry import (
    cb_bytes,
    in_l1,
    is_sharded,
    l1_share,
    layout,
    module_device,
    node_names,
    shard_bytes,
    sharded_layout,
    tensor,
    tile_rows_cols,
    tile_shape,
)
from ttc.passes.ops.interface import BLOCKING, BY_COLUMN, COST, FIDELITY, GRID, SHARDING
from ttc.passes.ops.matmul import MatmulShape, matmul_shape, padding_rows_free
from ttc.passes.ops.matmul_ksplit import KSPLIT
from ttc.passes.ops.registry import (
    circular_buffers,
    core_units,
    device_op,
    l1_footprint,
    op_kind,
    op_l1_tensor_bytes,
    program_operands,
)
from ttc.passes.ops.row_ops import PARAM_MCAST
from ttc.passes.sibling_fusion import fuse_siblings
from ttc.passes.untilize_fusion import fuse_untilize


def grid_for(cores: int, device: DeviceAttr, max_cores: int = 0) -> GridAttr | None:
    """A grid for `cores` work units inside the compute grid: exactly `cores` cores when they form a
    rectangle (widest rows first); else the rectangle with the fewest cores beyond `cores` (a prime
    count of batches kept one per core, 13 > the grid's width), whose extra cores repeat the last unit's
    work (`ops.program.Schedule.unit`); None when `cores` exceeds the grid (or max_cores)."""
    gx, gy = device.compute_grid
    if max_cores and cores > max_cores:
        return None
    for x in range(min(cores, gx), 0, -1):
        if cores % x == 0 and cores // x <= gy:
            return GridAttr(x, cores // x)
    padded = [(x * -(-cores // x), -x) for x in range(min(cores, gx), 0, -1) if -(-cores // x) <= gy]
    if not padded:
        return None
    total, negative_x = min(padded)
    if max_cores and total > max_cores:
        return None
    return GridAttr(-negative_x, total // -negative_x)


# ----------------------------------------------------------------------------------------------
# Candidates


def candidates(op: Operation, fallback: bool = False) -> Iterator[dict[str, int]]:
    """The blockings the op's kernels support (its kind's `candidates`; with `fallback`, its
    `fallback_candidates`: a slower plan for when none of those fits L1)."""
    kind = device_op(op)
    if kind is None:
        raise ValueError(f"'{op.name}' is not a device program")
    return kind.fallback_candidates(op) if fallback else kind.candidates(op)


@dataclass(frozen=True)
class Choice:
    grid: GridAttr
    blocking: dict[str, int]
    cost: Cost
    footprint: int
    result_layout: LayoutAttr | None = None  # a sharded result layout (None: the result keeps its layout)
    reason: str = ""


def placements(op: Operation, device: DeviceAttr, max_cores: int = 0,
               fallback: bool = False) -> Iterator[tuple[GridAttr, dict[str, int]]]:
    """Every candidate blocking (or fallback blocking) whose cores fit on a grid inside the compute grid, with
    that grid."""
    kind = device_op(op)
    for blocking in candidates(op, fallback):
        cores = 1
        for units in core_units(op, blocking):
            cores *= units
        shape = kind.grid_shape(op, blocking) if kind is not None else None
        if shape is not None:  # the blocking's own grid (a multicast plan's rows and columns)
            x, y = shape
            fits = x <= device.compute_grid[0] and y <= device.compute_grid[1] and not (max_cores and x * y > max_cores)
            grid = GridAttr(x, y) if fits else None
        else:
            grid = grid_for(cores, device, max_cores)
        if grid is not None:
            yield grid, blocking


def tie_break(cost: Cost) -> tuple[float, float, float]:
    """The order of candidates: modelled cycles, then (equal times: a compute-bound op whose traffic differs)
    less DRAM time (fewer DRAM bytes, which other programs running beside it would contend for), then less
    NoC time."""
    return cost.cycles, cost.dram, cost.noc


def ranked(op: Operation, device: DeviceAttr, fidelity: str, max_cores: int = 0,
           weights: Weights | None = None, fallback: bool = False) -> list[tuple[GridAttr, dict, Cost]]:
    """The placed candidates (or fallback candidates), cheapest first (`tie_break`; full ties keep the
    enumeration order)."""
    kind = op_kind(op) or ""
    costed = [(grid, blocking, estimate(op, kind, device, grid, blocking, fidelity, weights=weights))
              for grid, blocking in placements(op, device, max_cores, fallback)]
    return sorted(costed, key=lambda c: tie_break(c[2]))


# ----------------------------------------------------------------------------------------------
# Sharding of matmul results

SHARD_MIN_M_TILES = 8  # fewer output tile rows (decoders at batch 1, classifier heads): interleaved
TALL_RATIO = 4  # height sharding: M tiles >= 4 x N tiles (tall and narrow, as early CNN layers)
BLOCK_MIN_TILES = 8  # block sharding: M and N both at least this many tiles
MAX_SHARD_SHARE = 0.4  # a shard taking more of a core's free L1 is not tried (as layout's MAX_L1_SHARE)
GIVEN = "given"  # the result's sharded layout came with the input IR


def is_intermediate(value: Value) -> bool:
    """Produced by a device program and read only by device programs (never by the host)."""
    return bool(value.uses) and all(op_kind(reader) is not None for reader in readers(value))


def sharding_options(op: Operation) -> tuple[tuple[str, ...], str]:
    """The sharded layouts a matmul's result may take, and otherwise why it stays interleaved."""
    t = tensor(op.result)
    if layout(t).tensor_layout != "tile":
        return (), "a row-major result"
    if not is_intermediate(op.result):
        return (), "the result is read by the host"
    if any(is_view(chain_end(user)) for user, _ in op.result.uses):
        return (), "the result is read through a view"
    rows, cols = tile_rows_cols(t)
    if rows < SHARD_MIN_M_TILES:
        return (), f"M {rows} tiles < {SHARD_MIN_M_TILES}: too few rows to shard"
    options = []
    if rows >= TALL_RATIO * cols:
        options.append("height_sharded")
    if tile_shape(t.shape).batches == 1 and cols >= BLOCK_MIN_TILES:  # (not a batch folded into M)
        options.append("block_sharded")
    if not options:
        return (), (f"M {rows} tiles < {TALL_RATIO} x N {cols} tiles (not tall) and N < {BLOCK_MIN_TILES} tiles "
                    "(not wide)")
    return tuple(options), ""


def shard_placement(op: Operation, memory_layout: str, grid: GridAttr, b: dict[str, int], device: DeviceAttr,
                    max_cores: int = 0) -> tuple[GridAttr, LayoutAttr] | None:
    """The grid and result layout of `b` with its result sharded so that every core writes its own shard,
    or None when the blocking does not cut the result that way."""
    shape = matmul_shape(op)
    groups, m_blocks, n_blocks = matmul_units(shape, b)
    if shape.nt % b["per_core_n"]:
        return None  # a ragged N edge
    if shape.mt % b["per_core_m"]:
        return None  # an overlapping M split: two cores would own the rows they share
    if grid.num_cores != math.prod(core_units(op, b)):
        return None  # cores repeating the last unit would hold shards nobody reads
    if b.get(BY_COLUMN):
        return None  # cores taking the units column by column: the shard maps follow the row-major order
    if b.get(KSPLIT):
        return None  # the K split's last cores alone write the result
    if memory_layout == "height_sharded":
        if n_blocks != 1 or (b["batches"] > 1 and b["per_core_m"] != shape.mt) or grid.num_cores < 2:
            return None
        return grid, sharded_layout(memory_layout, (grid.x, grid.y), (b["batches"] * b["per_core_m"], shape.nt))
    gx, gy = device.compute_grid
    if groups != 1 or m_blocks < 2 or n_blocks < 2 or n_blocks > gx or m_blocks > gy \
            or (max_cores and m_blocks * n_blocks > max_cores):
        return None
    return GridAttr(n_blocks, m_blocks), sharded_layout(memory_layout, (n_blocks, m_blocks),
                                                        (b["per_core_m"], b["per_core_n"]))


Candidate = tuple[GridAttr, dict[str, int], LayoutAttr | None, Cost]


def matmul_signature(op: Operation) -> tuple:
    """What a matmul's candidates and their costs depend on: its name, operand and result types (shapes, element
    types and layouts), attributes and whether its readers leave its padding rows free (`padding_rows_free`).
    Matmul counts never look at constant data, so two ops with the same signature (the same layer of a 24-layer
    encoder) rank the same candidates."""
    return (op.name, tuple(str(v.type) for v in op.operands), tuple(str(r.type) for r in op.results),
            tuple(sorted((key, str(value)) for key, value in op.attributes.items())), padding_rows_free(op))


def matmul_floor(op: Operation, device: DeviceAttr, fidelity: str, grid: GridAttr,
                 shape: MatmulShape | None = None) -> float:
    """A lower bound of the modelled cycles of any matmul plan of `op` (of `shape`, its `matmul_shape`) on `grid`:
    one launch, and every output tile's K products (the padded shape's, which every plan makes at least once)
    spread evenly over the grid's cores at the calibrated rate (`target.compute_cycles` counts a core's MVMULs at
    least at that rate, and a program takes at least its compute and its launch)."""
    shape = shape or matmul_shape(op)
    products = shape.batches * shape.mt * shape.nt * shape.kt
    per_core = products // max(grid.num_cores, 1)
    mvmul = device.matmul_cycles_per_phase * FIDELITY_PHASES[fidelity] / device.matmul_efficiency
    return device.launch_cycles + per_core * mvmul


def check_floor(floor: float, cost: Cost, op: Operation, grid: GridAttr, blocking: dict[str, int]) -> None:
    """A candidate's modelled cost is at least its `matmul_floor` (else the floor, which prunes the rankings, is
    wrong: an internal error)."""
    if cost.cycles < floor:
        raise AssertionError(f"matmul_floor {floor} exceeds the modelled {cost.cycles} cycles of {op.name} "
                             f"{blocking} on {grid}")


class MatmulRanking:
    """The candidates of `ranked_matmul`, costed as far as they are asked for: iterating yields them in the
    order a full sort by `tie_break` would (full ties in enumeration order), but a candidate is costed only once
    every candidate before it is, and none whose `matmul_floor` exceeds the cycles of the one yielded last. A
    caller that stops at the first candidate fitting L1 (`choose_matmul`) so skips most of the costing of a large
    op's hundreds of blockings. What has been costed is kept (the memo shares a ranking between ops of one
    signature)."""

    def __init__(self, op: Operation, device: DeviceAttr, fidelity: str, options: tuple[str, ...], max_cores: int,
                 weights: Weights | None) -> None:
        self.op, self.device, self.fidelity, self.weights = op, device, fidelity, weights
        self.entries: list[tuple[GridAttr, dict[str, int], LayoutAttr | None]] = []
        for grid, blocking in placements(op, device, max_cores):
            self.entries.append((grid, blocking, None))
            for memory_layout in options:
                placed = shard_placement(op, memory_layout, grid, blocking, device, max_cores)
                if placed is not None:
                    self.entries.append((placed[0], blocking, placed[1]))
        # (cycles, dram, noc, index, cost): a floor's entry has dram = noc = -inf and cost None, so that it is
        # costed before any costed entry of the same cycles is taken
        shape = matmul_shape(op)
        self.heap = [(matmul_floor(op, device, fidelity, grid, shape), -math.inf, -math.inf, index, None)
                     for index, (grid, _, _) in enumerate(self.entries)]
        heapq.heapify(self.heap)
        self.ordered: list[Candidate] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Candidate]:
        at = 0
        while True:
            if at < len(self.ordered):
                yield self.ordered[at]
                at += 1
                continue
            if not self.heap:
                return
            floor, _, _, index, cost = heapq.heappop(self.heap)
            grid, blocking, result_layout = self.entries[index]
            if cost is None:
                cost = estimate(self.op, "matmul", self.device, grid, blocking, self.fidelity, result_layout,
                                self.weights)
                check_floor(floor, cost, self.op, grid, blocking)
                heapq.heappush(self.heap, (*tie_break(cost), index, cost))
                continue
            self.ordered.append((grid, blocking, result_layout, cost))


def ranked_matmul(op: Operation, device: DeviceAttr, fidelity: str, options: tuple[str, ...],
                  max_cores: int = 0, weights: Weights | None = None,
                  memo: dict[tuple, MatmulRanking] | None = None) -> MatmulRanking:
    """Every placed matmul blocking with its result interleaved (as it is) and in each sharded layout of
    `options` it allows, cheapest first (`tie_break`: equal modelled times go to the one moving fewer DRAM
    bytes, then fewer NoC bytes), then keep the enumeration order (interleaved first); costed lazily
    (`MatmulRanking`). `memo` (one grid pass run) reuses the ranking of an op with the same signature."""
    if memo is not None:
        key = (matmul_signature(op), id(device), fidelity, options, max_cores)
        ranked = memo.get(key)
        if ranked is None:
            ranked = memo[key] = MatmulRanking(op, device, fidelity, options, max_cores, weights)
        # what is costed from now on is costed on this op, which has the signature the first one had when the
        # ranking was made (the first may since have taken its choice's sharded result type)
        ranked.op, ranked.weights = op, weights
        return ranked
    return MatmulRanking(op, device, fidelity, options, max_cores, weights)


_CB_FLOORS: dict[tuple, int] = {}  # min_cb_bytes of matmuls by signature, shared by the passes and compiles
_CB_FLOORS_KEPT = 4096


def min_cb_bytes(op: Operation, device: DeviceAttr, max_cores: int = 0, memo: dict[tuple, int] | None = None) -> int:
    """The smallest CB footprint over every grid and blocking of `op` (for the layout pass and the L1 checks of
    sharded results). The figure of a matmul is kept by signature (in `memo`, else in one table shared by the
    layout and grid passes of every compile): other kinds may hold a fused body region the signature does not
    see."""
    if op_kind(op) == "matmul":
        if memo is None:
            memo = _CB_FLOORS
            if len(memo) > _CB_FLOORS_KEPT:
                memo.clear()
        key = (matmul_signature(op), device, max_cores)
        if key not in memo:
            memo[key] = _min_cb_bytes(op, device, max_cores)
        return memo[key]
    return _min_cb_bytes(op, device, max_cores)


def _min_cb_bytes(op: Operation, device: DeviceAttr, max_cores: int) -> int:
    sizes = [cb_bytes(circular_buffers(op, blocking)) for _, blocking in placements(op, device, max_cores)]
    if not sizes:
        raise no_placement(op, device, max_cores)
    if min(sizes) > device.l1_free:  # no plan of the fast kind fits an empty L1: the fallback's, if any, counts
        sizes += [cb_bytes(circular_buffers(op, blocking))
                  for _, blocking in placements(op, device, max_cores, fallback=True)]
    return min(sizes)


def needs_fallback(op: Operation, device: DeviceAttr, max_cores: int = 0) -> bool:
    """No candidate of `op` fits even an empty L1 (its CBs alone exceed it): only a fallback plan can run."""
    sizes = [cb_bytes(circular_buffers(op, blocking)) for _, blocking in placements(op, device, max_cores)]
    return bool(sizes) and min(sizes) > device.l1_free


def no_placement(op: Operation, device: DeviceAttr, max_cores: int = 0) -> UserError:
    """No blocking of `op` splits its work into units that fit the device's core grid (or `max_cores`): e.g.
    more batches than cores, each of which must stay on a core of its own."""
    x, y = device.compute_grid
    limit = f"{max_cores} cores (grid{{max-cores={max_cores}}})" if max_cores else f"the {x}x{y} core grid"
    return UserError(f"node {node_names(op)}: no blocking of '{op.name}' {tensor(op.result)} fits {limit} on "
                     f"{device.arch}: every candidate splits its work into more units than that, each needing a "
                     "core of its own; not supported yet")


ROW_KINDS = frozenset({"softmax", "layer_norm"})  # counts that depend on types and attributes only


def choose(op: Operation, device: DeviceAttr, budget: int, fidelity: str, max_cores: int = 0,
           weights: Weights | None = None, memo: dict[tuple, list] | None = None,
           fallback: bool = False, multicast: bool = True) -> Choice:
    """The cheapest placed candidate whose footprint fits `budget`; with `fallback`, when none does, the
    cheapest fallback candidate that fits; a UserError when none does. `memo` (one grid pass run) reuses the
    ranking of a row op with the same signature (`matmul_signature`: the 25 layer norms of a 12-layer encoder
    rank their split and whole-row candidates once)."""
    smallest = None
    if memo is not None and op_kind(op) in ROW_KINDS:
        key = ("row", matmul_signature(op), id(device), fidelity, max_cores)
        if key not in memo:
            memo[key] = ranked(op, device, fidelity, max_cores, weights)
        candidates = memo[key]
    else:
        candidates = ranked(op, device, fidelity, max_cores, weights)
    if fallback:  # tried in order after every candidate of the fast plan (a new list: the memo's stays)
        candidates = candidates + ranked(op, device, fidelity, max_cores, weights, fallback=True)
    if not multicast:
        candidates = [c for c in candidates if not c[1].get(PARAM_MCAST)]
    if not candidates:
        raise no_placement(op, device, max_cores)
    for grid, blocking, cost in candidates:
        footprint = l1_footprint(op, device, blocking)
        if footprint <= budget:
            return Choice(grid, blocking, cost, footprint)
        smallest = footprint if smallest is None else min(smallest, footprint)
    raise UserError(
        f"node {node_names(op)}: '{op.name}' does not fit in L1 on {device.arch}: its smallest footprint "
        f"over all grids and blockings is {smallest} bytes per core (circular buffers + L1 tensors), the "
        f"budget is {budget} bytes (l1_size - l1_reserved - other L1 tensors live across it); "
        "try layout{l1-intermediates=false}, a narrower last dimension, or splitting the op in the model")


@dataclass
class LiveL1:
    """The L1 tensors of one function as the pass goes: per op the bytes of other live L1 tensors, and what
    a sharded result would add at the ops it lives across."""

    ops: list[Operation]
    device: DeviceAttr
    max_cores: int
    others: dict[int, int]
    ranges: dict[int, LiveRange]
    cb_floor: dict[int, int]

    timeline: L1Timeline | None = None

    @classmethod
    def of(cls, ops: list[Operation], device: DeviceAttr, max_cores: int) -> LiveL1:
        return cls(ops, device, max_cores, other_l1_bytes(ops, device),
                   {id(r.value): r for r in live_ranges(ops)}, {}, L1Timeline(ops, device))

    def budget(self, op: Operation, result_layout: LayoutAttr | None = None) -> int:
        """What `op`'s footprint (CBs plus its own L1 tensors, its result in `result_layout` if given) may take:
        the L1 budget less the other L1 tensors live across it, and no more than the room below the lowest
        live L1 buffer, as allocate will place the buffers (the replayed heap: holes count against it)."""
        budget = self.device.l1_free - self.others[id(op)]
        if self.timeline is None:
            return budget
        result = tensor(op.result) if result_layout is None else tensor(op.result).with_encoding(result_layout)
        result_bytes = l1_share(result, self.device)
        room = self.timeline.room(result_bytes)
        if room is None:  # the result itself fits in no free range: what is left is short of it
            room = self.timeline.heap.largest_gap() - result_bytes
        return min(budget, room + op_l1_tensor_bytes(op, self.device, result_layout))

    def ran(self, index: int, op: Operation) -> None:
        """Op `index` is decided: its result buffer (in its final layout) joins the replayed heap, and the
        buffers it read last leave it."""
        if self.timeline is None:
            return
        if op_kind(op) is not None and not is_folded(op) and not is_view(op):
            for result in op.results:
                if not self.timeline.create(result, l1_share(tensor(result), self.device)):
                    raise UserError(f"node {node_names(op)}: L1 has no room for the result {tensor(result)} "
                                    f"beside the L1 buffers live across it; try layout{{l1-intermediates=false}}")
        self.timeline.finish(index)

    def _later_programs(self, value: Value) -> list[Operation]:
        live = self.ranges[id(value)]
        return [op for op in self.ops[live.start + 1: live.end + 1]
                if op_kind(op) is not None and not is_folded(op) and not is_view(op)]

    def fits_across(self, value: Value, extra: int) -> bool:
        """`extra` more bytes per core for `value` still leave every later op it lives across room for its
        smallest CBs."""
        for op in self._later_programs(value):
            if id(op) not in self.cb_floor:
                self.cb_floor[id(op)] = min_cb_bytes(op, self.device, self.max_cores)
            used = self.cb_floor[id(op)] + op_l1_tensor_bytes(op, self.device) + self.others[id(op)]
            if used + extra > self.device.l1_free:
                return False
        return True

    def grow(self, value: Value, extra: int) -> None:
        """`value` now takes `extra` more bytes per core: the ops it lives across without touching it see them."""
        for op in self._later_programs(value):
            if all(buffer_of(v) is not value for v in (*program_operands(op), *op.results)):
                self.others[id(op)] += extra


def choose_matmul(op: Operation, device: DeviceAttr, live: LiveL1, fidelity: str, max_cores: int = 0,
                  sharding: bool = True, weights: Weights | None = None,
                  memo: dict[tuple, MatmulRanking] | None = None, multicast: bool = True,
                  ksplit: bool = True) -> Choice:
    """The cheapest matmul candidate, its result interleaved or sharded, that fits L1 (see the module doc)."""
    given = layout(tensor(op.result)) if is_sharded(tensor(op.result)) else None
    if given is not None:
        options, why_not = (str(given.memory_layout),), GIVEN
    elif sharding:
        options, why_not = sharding_options(op)
    else:
        options, why_not = (), "sharding is off (grid{sharding=false})"
    budget = live.budget(op)
    best: dict[str, tuple[Candidate, int]] = {}  # first fitting candidate per result layout
    misfit: dict[str, tuple[int, str]] = {}  # per layout: the smallest rejected (footprint, why)
    ranking = ranked_matmul(op, device, fidelity, options, max_cores, weights, memo)
    if not len(ranking):
        raise no_placement(op, device, max_cores)
    candidates: Iterator[Candidate] = iter(ranking)
    if not multicast:  # (the K split hands its sums on by multicast too)
        candidates = (c for c in candidates if not c[1].get("mcast") and not c[1].get(KSPLIT))
    if not ksplit:
        candidates = (c for c in candidates if not c[1].get(KSPLIT))
    budgets: dict[str, int] = {}
    seen = False
    for candidate in candidates:
        seen = True
        grid, blocking, result_layout, cost = candidate
        kind = str(result_layout.memory_layout) if result_layout is not None else "interleaved"
        if kind in best or (given is not None and result_layout != given):
            continue
        key = str(result_layout)
        if key not in budgets:
            budgets[key] = live.budget(op, result_layout)
        budget = budgets[key]
        footprint = l1_footprint(op, device, blocking, result_layout)
        why = shard_misfit(op, result_layout, footprint, budget, live, device) if given is None and result_layout \
            else (f"{footprint} bytes per core exceed the budget of {budget}" if footprint > budget else None)
        if why is None:
            best[kind] = (candidate, footprint)
            if given is not None or len(best) == 1 + len(options):
                break
        elif kind not in misfit or footprint < misfit[kind][0]:
            misfit[kind] = (footprint, why)
    if not seen:
        raise no_placement(op, device, max_cores)
    if not best:
        smallest = min((f for f, _ in misfit.values()), default=0)
        if given is not None:
            raise UserError(
                f"node {node_names(op)}: the {given.memory_layout} result {tensor(op.result)} does not fit in L1 "
                f"on {device.arch}: its shard takes {shard_bytes(tensor(op.result))} bytes on core (0,0) and each "
                f"other core of grid {given.grid}, {smallest} bytes per core with the circular buffers and operands "
                f"of the smallest matching blocking, the budget is {budget} bytes (l1_size - l1_reserved - other L1 "
                "tensors live across it); use a larger grid or an interleaved layout")
        raise UserError(
            f"node {node_names(op)}: '{op.name}' does not fit in L1 on {device.arch}: its smallest footprint "
            f"over all grids and blockings is {smallest} bytes per core (circular buffers + L1 tensors), the "
            f"budget is {budget} bytes (l1_size - l1_reserved - other L1 tensors live across it); try "
            "layout{l1-intermediates=false}, a narrower last dimension, or splitting the op in the model")
    kind = min(best, key=lambda k: tie_break(best[k][0][3]))
    (grid, blocking, result_layout, cost), footprint = best[kind]
    reason = sharding_reason(op, kind, best, options, why_not, misfit)
    return Choice(grid, blocking, cost, footprint, result_layout, reason)


def followed_layout(op: Operation) -> LayoutAttr | None:
    """The sharded layout an elementwise op's result may take from its operands: that of its first sharded operand
    of the result's shape (a producer's shards flow on), when the result is a tile intermediate read by device
    programs alone and not through a view; None otherwise."""
    t = tensor(op.result)
    if layout(t).tensor_layout != "tile" or is_sharded(t) or not is_intermediate(op.result) \
            or any(is_view(chain_end(user)) for user, _ in op.result.uses):
        return None
    for operand in program_operands(op):
        source = tensor(operand)
        if is_sharded(source) and source.shape == t.shape:
            return layout(source)
    return None


def follow_sharding(op: Operation, interleaved: Choice, device: DeviceAttr, live: LiveL1, fidelity: str,
                    max_cores: int = 0, weights: Weights | None = None) -> Choice:
    """An elementwise op reading a sharded operand of its result's shape: its result takes that operand's sharded
    layout (each core writes its shard into its own L1) when a blocking doing so is cheaper than `interleaved`
    (`tie_break`) and fits L1 as a sharded matmul result must (`shard_misfit`); else `interleaved`."""
    result_layout = followed_layout(op)
    if result_layout is None:
        return interleaved
    budget = live.budget(op, result_layout)
    best: tuple[GridAttr, dict[str, int], Cost, int] | None = None
    for grid, blocking in placements(op, device, max_cores):
        if grid.num_cores != math.prod(core_units(op, blocking)) or overlapping(op, blocking):
            continue  # cores repeating the last unit, or sharing the rows of an overlapping split, would write
            # shards twice
        cost = estimate(op, "eltwise", device, grid, blocking, fidelity, result_layout, weights)
        if best is not None and tie_break(cost) >= tie_break(best[2]):
            continue
        footprint = l1_footprint(op, device, blocking, result_layout)
        if shard_misfit(op, result_layout, footprint, budget, live, device) is None:
            best = (grid, blocking, cost, footprint)
    if best is None or tie_break(best[2]) >= tie_break(interleaved.cost):
        return interleaved
    grid, blocking, cost, footprint = best
    readers_sharded = readers_cost(op, result_layout, device, fidelity, max_cores, weights)
    readers_interleaved = readers_cost(op, None, device, fidelity, max_cores, weights)
    total_sharded = tuple(a + b for a, b in zip(tie_break(cost), readers_sharded, strict=True))
    total_interleaved = tuple(a + b for a, b in zip(tie_break(interleaved.cost), readers_interleaved, strict=True))
    if total_sharded >= total_interleaved:
        return interleaved  # what the shards save here, the programs reading them lose (time, DRAM or NoC)
    reason = (f"{result_layout.memory_layout}: follows its operand's shards; {round(cost.cycles)} cycles "
              f"(NoC {round(cost.noc)}) vs interleaved {round(interleaved.cost.cycles)} (NoC "
              f"{round(interleaved.cost.noc)}); its readers' best {round(readers_sharded[0])} vs "
              f"{round(readers_interleaved[0])} cycles")
    return Choice(grid, blocking, cost, footprint, result_layout, reason)


def readers_cost(op: Operation, result_layout: LayoutAttr | None, device: DeviceAttr, fidelity: str,
                 max_cores: int = 0, weights: Weights | None = None) -> tuple[float, float, float]:
    """The `tie_break` terms (cycles, DRAM, NoC) of the cheapest candidate of every program reading `op`'s result,
    summed, with the result in `result_layout` (None: as it is), L1 fit aside: the price a layout puts on the
    readers."""
    saved = op.result.type
    if result_layout is not None:
        op.result.type = tensor(op.result).with_encoding(result_layout)
    try:
        total = (0.0, 0.0, 0.0)
        for user, _ in op.result.uses:
            reader = chain_end(user)
            if op_kind(reader) is None or is_view(reader):
                continue
            sync_body_placement(reader)
            costed = ranked(reader, device, fidelity, max_cores, weights)
            if costed:
                total = tuple(a + b for a, b in zip(total, tie_break(costed[0][2]), strict=True))
    finally:
        op.result.type = saved
        for user, _ in op.result.uses:
            sync_body_placement(chain_end(user))
    return total


def shard_misfit(op: Operation, result_layout: LayoutAttr, footprint: int, budget: int, live: LiveL1,
                 device: DeviceAttr) -> str | None:
    """Why the result cannot take `result_layout` with this blocking (None: it fits)."""
    shard = shard_bytes(tensor(op.result).with_encoding(result_layout))
    limit = int(device.l1_free * MAX_SHARD_SHARE)
    if shard > limit:
        return f"a shard of {shard} bytes per core is above {limit} ({MAX_SHARD_SHARE:.0%} of free L1)"
    if footprint > budget:
        return f"{footprint} bytes per core with its CBs exceed the budget of {budget}"
    if not live.fits_across(op.result, shard - l1_share(tensor(op.result), device)):
        return f"a shard of {shard} bytes per core leaves an op it lives across no room for its CBs"
    return None


def sharding_reason(op: Operation, kind: str, best: dict[str, tuple[Candidate, int]], options: tuple[str, ...],
                    why_not: str, misfit: dict[str, tuple[int, str]]) -> str:
    """Why the result got its layout: the rule that made sharding a candidate, and the modelled cycles."""
    rows, cols = tile_rows_cols(tensor(op.result))
    if not options:
        return f"interleaved: {why_not}"
    cycles = {k: round(c[3].cycles) for k, (c, _) in best.items()}
    noc = {k: round(c[3].noc) for k, (c, _) in best.items()}
    others = ", ".join(f"{k} {cycles[k]} (NoC {noc[k]})" for k in cycles if k != kind)
    unfit = "".join(f"; no {k} candidate fits L1 (best: {misfit[k][1]})" if k in misfit
                    else f"; no blocking cuts the result into {k} shards" for k in options if k not in best)
    if kind == "interleaved":
        versus = f", cheaper than {others}" if others else ""
        return f"interleaved: {cycles[kind]} cycles (NoC {noc[kind]}){versus}{unfit}"
    grid, _, result_layout, _ = best[kind][0]
    assert result_layout is not None and result_layout.shard is not None
    if why_not == GIVEN:
        rule = "given in the input IR"
    elif kind == "height_sharded":
        rule = f"M {rows} >= {TALL_RATIO} x N {cols} tiles"
    else:
        rule = f"M {rows} and N {cols} tiles both >= {BLOCK_MIN_TILES}"
    versus = f" vs {others}" if others else ""
    return (f"{kind}: {rule}; {grid.num_cores} cores own {result_layout.shard} tile shards; "
            f"{cycles[kind]} cycles (NoC {noc[kind]}){versus}{unfit}")


@register_pass
@dataclass
class Grid(Pass):
    """Choose each device op's core grid and blocking with the cost model, within L1 and the device."""

    name = "grid"
    math_fidelity: str = "hifi4"
    # the fidelity of every other program that uses the matrix unit (the sums of softmax, layer norm and
    # reductions); empty: `math-fidelity`. The published preset keeps these statistics at hifi4.
    reduce_fidelity: str = ""
    max_cores: int = 0
    sharding: bool = True
    multicast: bool = True
    ksplit: bool = True  # a matmul of few output blocks may split K over cores (passes/ops/matmul_ksplit.py)
    attention: bool = True  # an attention's matmul, softmax and matmul as one program where cheaper (attention.py)
    head_views: bool = True  # that program reads Q and V in place of their head splits' gathers where it fits
    im2col: bool = True  # a convolution's lookup read by its product's reader where cheaper (im2col_fusion.py)
    untilize: bool = True  # a product's untilize fused into its pack and writer where cheaper (untilize_fusion.py)
    lookups: bool = True  # the row lookups an eltwise alone reads fused into its reader where cheaper (lookup_fusion.py)
    siblings: bool = True  # linears sharing their first operand, read by gathers, as one product (sibling_fusion.py)

    def run(self, module: Module) -> None:
        others = self.reduce_fidelity or self.math_fidelity
        for option, value in (("math fidelity", self.math_fidelity), ("reduce fidelity", others)):
            if value not in FIDELITY_PHASES:
                raise UserError(f"grid: unknown {option} '{value}' (choose from {', '.join(FIDELITY_PHASES)})")
        device = module_device(module)
        memo: dict[tuple, list] = {}  # matmul and row-op rankings by signature, for this run
        for func in module.functions:
            split_oversized_matmuls(module, func, device, lambda op: placements(op, device, self.max_cores))
            ops = list(func.body.ops)
            live = LiveL1.of(ops, device, self.max_cores)
            for index, op in enumerate(ops):
                if op_kind(op) is None or is_folded(op) or is_view(op):
                    live.ran(index, op)
                    continue
                default = self.math_fidelity if op_kind(op) == "matmul" else others
                fidelity = op.attributes.get(FIDELITY, default)  # exact data movement pins hifi4
                choice = None
                # a fallback plan only where no fast one fits an empty L1, or none fits after every spill
                has_fallback = op_kind(op) != "matmul" and any(True for _ in candidates(op, fallback=True))
                fallback = has_fallback and needs_fallback(op, device, self.max_cores)
                while choice is None:
                    try:
                        if op_kind(op) == "matmul":
                            choice = choose_matmul(op, device, live, fidelity, self.max_cores, self.sharding,
                                                   module.weights, memo, self.multicast, self.ksplit)
                            shard_result(op, choice, live, device)
                        else:
                            choice = choose(op, device, live.budget(op), fidelity, self.max_cores, module.weights,
                                            memo, fallback, self.multicast)
                            if self.sharding and op_kind(op) == "eltwise":
                                choice = follow_sharding(op, choice, device, live, fidelity, self.max_cores,
                                                         module.weights)
                                if choice.result_layout is not None:
                                    shard_result(op, choice, live, device)
                    except UserError:
                        if spill_to_dram(op, live, device):
                            continue
                        if fallback or not has_fallback:
                            raise
                        fallback = True
                op.attributes[GRID] = choice.grid
                op.attributes[BLOCKING] = dict(choice.blocking)
                op.attributes[COST] = choice.cost.as_attr()
                op.attributes[FIDELITY] = fidelity
                live.ran(index, op)
            if self.siblings:
                fuse_siblings(func, module, device, self.max_cores, self.multicast)
            if self.attention:
                fuse_attention(func, device, self.max_cores, module.weights, self.head_views)
            if self.im2col:
                fuse_im2col(func, device, self.max_cores, module.weights, self.multicast)
            if self.untilize:
                fuse_untilize(func, device, self.max_cores, module.weights, self.multicast)
            if self.lookups:
                fuse_lookups(func, device, self.max_cores, module.weights, self.multicast)


def spill_to_dram(op: Operation, live: LiveL1, device: DeviceAttr) -> bool:
    """No blocking of `op` fits L1 as `layout` placed its tensors (the heap the ops before it left, with the
    grid's own sharding decisions, may hold less room than `layout` found): one of its interleaved L1
    intermediates goes to DRAM and is streamed instead, its result first, then the operands it reads (whose
    producers and earlier readers keep their blockings: their footprints only shrink). False when none is
    left in L1."""
    t = tensor(op.result)
    if in_l1(t) and not is_sharded(t) and not is_folded(op) and not is_view(op):
        to_dram(op.result, live, device)
        return True
    for operand in program_operands(op):
        source = buffer_of(operand)
        producer = source.owner
        if in_l1(tensor(source)) and not is_sharded(tensor(source)) and isinstance(producer, Operation) \
                and op_kind(producer) is not None:
            to_dram(source, live, device)
            return True
    return False


def to_dram(value: Value, live: LiveL1, device: DeviceAttr) -> None:
    """`value`'s buffer (an interleaved L1 intermediate) in DRAM interleaved: the views sharing its pages and
    its readers' fused bodies follow, and the L1 bookkeeping (the replayed heap, the bytes live across later
    ops) gives its share back."""
    share = l1_share(tensor(value), device)
    dram = LayoutAttr(layout(tensor(value)).tensor_layout, "dram", "interleaved")
    if live.timeline is not None:
        address = live.timeline.address.pop(id(value), None)
        if address is not None:
            live.timeline.heap.free(address)
    live.grow(value, -share)
    pending = [value]
    while pending:
        shared = pending.pop()
        shared.type = tensor(shared).with_encoding(dram)
        for user, _ in shared.uses:
            end = chain_end(user)
            if is_view(end):
                pending.append(end.result)
            sync_body_placement(end)


def shard_result(op: Operation, choice: Choice, live: LiveL1, device: DeviceAttr) -> None:
    """Record the sharding decision; a newly sharded result takes its layout (and its users' fused bodies see
    it), and the ops it lives across count its shard."""
    layout_name = str(choice.result_layout.memory_layout) if choice.result_layout else "interleaved"
    op.attributes[SHARDING] = {"layout": layout_name, "reason": choice.reason}
    if choice.result_layout is None or choice.result_layout == layout(tensor(op.result)):
        return
    old_share = l1_share(tensor(op.result), device)
    op.result.type = tensor(op.result).with_encoding(choice.result_layout)
    live.grow(op.result, l1_share(tensor(op.result), device) - old_share)
    for user, _ in op.result.uses:
        sync_body_placement(user)
