"""The grid pass's last steps, the first of them: a convolution's im2col lookup fused into its product's reader
(`ttir.im2col_linear`, passes/ops/im2col_matmul.py).

    %c = ttir.embedding(%sticks, %ids) {im2col, pad_negative}      the im2col matrix [M, positions * C]
    %y = ttir.linear(%c, %w, %bias?, %residual?) {...}               its only reader, as in0 (or a ttir.matmul)
  ->
    %y = ttir.im2col_linear(%sticks, %ids, %w, %bias?, %residual?) {..., a_format}

Tenstorrent's convolutions gather their input patches in the product's reader from a row-major activation; ttc's
lookups wrote the im2col matrix first (a program, its launch, and the matrix in L1 or DRAM), and the product read
it back. The pair is replaced when (1) the product is unicast-able (two-dimensional, no transposed operand, its
result, when the grid pass sharded it, written shard by shard: `im2col_matmul.writes_shards`), (2) the cheapest fused candidate that fits L1
costs fewer modelled cycles than the two programs' recorded costs (`tt.cost`), and (3) every program of the
function still fits L1 with the fused op in their place (the L1 heap replayed as allocate will place it: the
im2col matrix is gone, the sticks live until the product). Otherwise both stay as the grid pass chose them.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ttc.ir.attributes import fuse_locations
from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.passes.attention import only_reader, recorded_cycles
from ttc.passes.cost_model import estimate
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.geometry import is_row_major, tensor
from ttc.passes.ops.im2col_matmul import rows_read
from ttc.passes.ops.interface import BLOCKING, COST, FIDELITY, GRID
from ttc.passes.ops.matmul_mcast import is_mcast
from ttc.passes.ops.registry import l1_footprint, op_kind

PRODUCTS = frozenset({ttir.LINEAR.name, ttir.MATMUL.name})


def match(lookup: Operation) -> Operation | None:
    """The product reading `lookup`'s im2col matrix when the pair can fuse."""
    if lookup.name != ttir.EMBEDDING.name or not lookup.attributes.get("im2col") \
            or not lookup.attributes.get("pad_negative") or lookup.attributes.get("grouped"):
        return None
    product = only_reader(lookup.result)
    if product is None or product.name not in PRODUCTS or product.operands[0] is not lookup.result \
            or any(v is lookup.result for v in product.operands[1:]) \
            or product.attributes.get("transpose_a") or product.attributes.get("transpose_b"):
        return None
    table, ids = lookup.operands
    if not is_row_major(table) or is_row_major(lookup.result) or tensor(table).rank != 2 or tensor(ids).rank != 3 \
            or tensor(table).shape[1] % 32:
        return None
    if tensor(product.result).rank != 2 or tensor(product.operands[1]).rank != 2 \
            or is_row_major(product.result) or tensor(lookup.result).rank != 2:
        return None
    return product


def fused_op(lookup: Operation, product: Operation) -> Operation:
    """The fused op (not yet in a block) of the pair."""
    table, ids = lookup.operands
    attributes = {key: product.attributes[key] for key in ("activation", "residual", "residual_activation")
                  if key in product.attributes}
    attributes["a_format"] = tensor(lookup.result).element_type.name
    attributes[FIDELITY] = product.attributes.get(FIDELITY, "hifi4")
    return Operation(ttir.IM2COL_LINEAR.name, [table, ids, *product.operands[1:]], [product.result.type], attributes,
                     loc=fuse_locations(lookup.loc, product.loc))


class Ranking:
    """The placed candidates of one fused-op signature (without multicast plans unless `multicast`), each costed
    when first asked: `cheapest` is the candidate `grid.ranked`'s order puts first among those that fit a budget
    (fewest modelled cycles by `tie_break`, ties in enumeration order), and costs none of those that do not."""

    def __init__(self, op: Operation, device: DeviceAttr, max_cores: int, fidelity: str, weights,
                 multicast: bool) -> None:
        from ttc.passes.grid import placements

        self.device, self.fidelity, self.weights = device, fidelity, weights
        self.placed = [(grid, blocking) for grid, blocking in placements(op, device, max_cores)
                       if multicast or not is_mcast(blocking)]
        self.costs: dict[int, object] = {}

    def cost(self, op: Operation, index: int):
        if index not in self.costs:
            grid, blocking = self.placed[index]
            self.costs[index] = estimate(op, op_kind(op) or "", self.device, grid, blocking, self.fidelity,
                                         weights=self.weights)
        return self.costs[index]

    def cheapest(self, op: Operation, budget: int) -> tuple | None:
        """(grid, blocking, cost) of the cheapest candidate whose footprint fits `budget`; None when none does."""
        from ttc.passes.grid import tie_break

        fitting = [i for i, (_, blocking) in enumerate(self.placed) if l1_footprint(op, self.device, blocking) <= budget]
        if not fitting:
            return None
        best = min(fitting, key=lambda i: (tie_break(self.cost(op, i)), i))
        return (*self.placed[best], self.costs[best])


def ranking(op: Operation, device: DeviceAttr, max_cores: int, fidelity: str, weights, memo: dict,
            multicast: bool = True) -> Ranking:
    """`op`'s candidates (`Ranking`). `memo` (one function's fusions) keeps them, and the costs asked so far, by
    signature: the op's types and attributes (`grid.matmul_signature`) and, for a fused lookup, the rows its
    index table reads (`im2col_matmul.rows_read`, all its counts look at in the table), so the same convolution
    in every block of a stage is costed once."""
    from ttc.passes.grid import matmul_signature

    read = rows_read(op.operands[1], weights) if op.name == ttir.IM2COL_LINEAR.name else None
    key = (matmul_signature(op), fidelity, multicast, None if read is None else digest(read))
    if key not in memo:
        memo[key] = Ranking(op, device, max_cores, fidelity, weights, multicast)
    return memo[key]


def digest(array: np.ndarray) -> tuple:
    """What identifies an array's contents."""
    return array.dtype.str, array.shape, hashlib.blake2b(np.ascontiguousarray(array).tobytes()).digest()


def fits_l1(ops: list[Operation], fused: Operation, device: DeviceAttr, max_cores: int, candidates: Ranking,
            cycles: float) -> tuple | None:
    """Replay the function's L1 with `fused` in `ops` (as the attention step does): the cheapest of `candidates`
    (grid, blocking, cost) that fits, or None when none does, it costs no fewer modelled cycles than `cycles`
    (the replay stops there) or another program no longer fits."""
    from ttc.ir.diagnostics import UserError
    from ttc.passes.grid import LiveL1

    live = LiveL1.of(ops, device, max_cores)
    chosen = None
    for index, op in enumerate(ops):
        if op_kind(op) is None or is_folded(op) or is_view(op):
            live.ran(index, op)
            continue
        budget = live.budget(op)
        if op is fused:
            chosen = candidates.cheapest(op, budget)
            if chosen is None or chosen[2].cycles >= cycles:
                return None
        elif l1_footprint(op, device, dict(op.attributes[BLOCKING])) > budget:
            return None
        try:
            live.ran(index, op)
        except UserError:
            return None
    return chosen


def fuse_im2col(func, device: DeviceAttr, max_cores: int, weights, multicast: bool = True) -> int:
    """Replace each im2col lookup and its product by one program where it fits L1 and the cost model prefers it;
    the number replaced."""
    fused_count = 0
    memo: dict = {}
    for lookup in [op for op in func.body.ops if op.name == ttir.EMBEDDING.name]:
        product = match(lookup)
        if product is None or GRID not in product.attributes or GRID not in lookup.attributes:
            continue
        fused = fused_op(lookup, product)
        body = func.body
        product.result.replace_all_uses_with(fused.result)
        trial = [fused if op is product else op for op in body.ops if op is not lookup]
        unfused = recorded_cycles([lookup, product])
        candidates = ranking(fused, device, max_cores, fused.attributes[FIDELITY], weights, memo, multicast)
        chosen = fits_l1(trial, fused, device, max_cores, candidates, unfused)
        if chosen is None:
            fused.result.replace_all_uses_with(product.result)
            fused.drop_operands()
            continue
        grid, blocking, cost = chosen
        fused.attributes[GRID] = grid
        fused.attributes[BLOCKING] = dict(blocking)
        fused.attributes[COST] = cost.as_attr()
        body.insert_before(product, fused)
        product.erase()
        lookup.erase()
        fused_count += 1
    return fused_count
