"""What the grid pass's fusion steps (attention.py, im2col_fusion.py, untilize_fusion.py, lookup_fusion.py) share: the candidates
of a fused op, costed once per signature and only as far as asked (`Ranking`), and the check that a fusion pays
and leaves every program of the function fitting L1 (`fits_l1`: allocate's L1 heap replayed with the fused op in
place of the ops it replaces)."""

from __future__ import annotations

import hashlib

import numpy as np

from ttc.ir.core import Operation
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.passes.cost_model import estimate
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.interface import BLOCKING, COST, FIDELITY, GRID
from ttc.passes.ops.matmul_mcast import is_mcast
from ttc.passes.ops.registry import l1_footprint, op_kind

PRODUCT_KINDS = frozenset({"matmul", "matmul_rows", "im2col_matmul"})  # (Ranking.floors_of)


def recorded_cycles(ops: list[Operation]) -> float:
    """The modelled cycles the grid pass recorded (`tt.cost`) for `ops`: what a fusion of them must beat (an op
    folded into a later gather has none: it runs no program)."""
    return sum(float(op.attributes[COST]["cycles"]) for op in ops if COST in op.attributes)


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
        self.footprints: dict[int, int] = {}  # candidate index -> its L1 footprint (the same for the signature)
        self.floors: list[float] | None = None  # per candidate: grid.matmul_floor (a product's kinds), once asked

    def cost(self, op: Operation, index: int):
        if index not in self.costs:
            grid, blocking = self.placed[index]
            self.costs[index] = cost = estimate(op, op_kind(op) or "", self.device, grid, blocking, self.fidelity,
                                                weights=self.weights)
            floors = self.floors_of(op)
            if floors is not None:
                from ttc.passes.grid import check_floor

                check_floor(floors[index], cost, op, grid, blocking)
        return self.costs[index]

    def floors_of(self, op: Operation) -> list[float] | None:
        """Each candidate's `grid.matmul_floor` when `op` is a product (a matmul, written as tiles or rows, or a
        convolution's im2col product: every plan of it makes the padded product's tile multiplies), else None."""
        if self.floors is None and op_kind(op) in PRODUCT_KINDS:
            from ttc.passes.grid import matmul_floor
            from ttc.passes.ops.im2col_matmul import as_linear
            from ttc.passes.ops.matmul import matmul_shape

            if op.name == ttir.IM2COL_LINEAR.name:
                with as_linear(op) as proxy:
                    shape = matmul_shape(proxy)
            else:
                shape = matmul_shape(op)
            self.floors = [matmul_floor(op, self.device, self.fidelity, grid, shape) for grid, _ in self.placed]
        return self.floors

    def footprint(self, op: Operation, index: int) -> int:
        if index not in self.footprints:
            self.footprints[index] = l1_footprint(op, self.device, self.placed[index][1])
        return self.footprints[index]

    def cheapest(self, op: Operation, budget: int) -> tuple | None:
        """(grid, blocking, cost) of the cheapest candidate whose footprint fits `budget`; None when none does."""
        from ttc.passes.grid import tie_break

        fitting = [i for i in range(len(self.placed)) if self.footprint(op, i) <= budget]
        if not fitting:
            return None
        floors = self.floors_of(op)
        if floors is None:
            best = min(fitting, key=lambda i: (tie_break(self.cost(op, i)), i))
            return (*self.placed[best], self.costs[best])
        # a product: in the order of the floors, stopping at the first floor above the best cost so far (its
        # candidate and every later one cost more; an equal floor may still tie and win on DRAM time)
        chosen: int | None = None
        for i in sorted(fitting, key=lambda i: (floors[i], i)):
            if chosen is not None and floors[i] > self.costs[chosen].cycles:
                break
            cost = self.cost(op, i)
            if chosen is None or (tie_break(cost), i) < (tie_break(self.costs[chosen]), chosen):
                chosen = i
        assert chosen is not None
        return (*self.placed[chosen], self.costs[chosen])


def ranking(op: Operation, device: DeviceAttr, max_cores: int, fidelity: str, weights, memo: dict,
            multicast: bool = True) -> Ranking:
    """`op`'s candidates (`Ranking`). `memo` (one function's fusions) keeps them, and the costs asked so far, by
    signature: the op's types and attributes (`grid.matmul_signature`) and, for a fused lookup, the rows its
    index table reads (`im2col_matmul.rows_read`, all its counts look at in the table), so the same convolution
    in every block of a stage (the same attention in every layer) is costed once."""
    from ttc.passes.grid import matmul_signature
    from ttc.passes.ops.im2col_matmul import rows_read

    read = rows_read(op.operands[1], weights) if op.name == ttir.IM2COL_LINEAR.name else None
    key = (matmul_signature(op), fidelity, multicast, None if read is None else digest(read))
    if op.name == ttir.LOOKUP_ELTWISE.name:  # its counts follow its body and the rows its index tables read
        from ttc.ir.printer import Printer
        from ttc.passes.ops.counting import constant_of

        printer = Printer(False)
        printer.op(op, 0)
        tables = [constant_of(v, weights) for v in op.operands[ttir.lookup_eltwise_inputs(op):]]
        key += ("\n".join(printer.lines), tuple(None if t is None else digest(t >= 0) for t in tables))
    if key not in memo:
        memo[key] = Ranking(op, device, max_cores, fidelity, weights, multicast)
    return memo[key]


def digest(array: np.ndarray) -> tuple:
    """What identifies an array's contents."""
    return array.dtype.str, array.shape, hashlib.blake2b(np.ascontiguousarray(array).tobytes()).digest()


def fits_l1(ops: list[Operation], fused: Operation, device: DeviceAttr, max_cores: int, candidates: Ranking,
            cycles: float, footprints: dict[int, tuple[Operation, int]] | None = None) -> tuple | None:
    """Replay the function's L1 with `fused` in `ops`: the cheapest of `candidates` (grid, blocking, cost) that
    fits, or None when none does, it costs no fewer modelled cycles than `cycles` (the replay stops there) or
    another program no longer fits."""
    chosen = fit_all_l1(ops, {id(fused): (candidates, cycles)}, device, max_cores, footprints)
    return None if chosen is None else chosen[id(fused)]


def fit_all_l1(ops: list[Operation], fused: dict[int, tuple[Ranking, float]], device: DeviceAttr,
               max_cores: int, footprints: dict[int, tuple[Operation, int]] | None = None) -> dict[int, tuple] | None:
    """`fits_l1` for several fused ops at once (by id: their candidates and the cycles each must beat) in one
    replay: each one's cheapest fitting candidate, or None when any of them finds none that beats its cycles or
    another program no longer fits. `footprints` keeps the other ops' L1 footprints (by id, with the op) across
    the replays of one fusion pass, in which only the fused ops change."""
    from ttc.passes.grid import LiveL1

    live = LiveL1.of(ops, device, max_cores)
    chosen: dict[int, tuple] = {}
    for index, op in enumerate(ops):
        if op_kind(op) is None or is_folded(op) or is_view(op):
            live.ran(index, op)
            continue
        budget = live.budget(op)
        if id(op) in fused:
            candidates, cycles = fused[id(op)]
            best = candidates.cheapest(op, budget)
            if best is None or best[2].cycles >= cycles:
                return None
            chosen[id(op)] = best
        elif footprint_of(op, device, footprints) > budget:
            return None
        try:
            live.ran(index, op)
        except UserError:
            return None
    return chosen


def footprint_of(op: Operation, device: DeviceAttr, footprints: dict[int, tuple[Operation, int]] | None) -> int:
    """`op`'s L1 footprint as placed (its blocking), kept in `footprints` when given."""
    kept = footprints.get(id(op)) if footprints is not None else None
    if kept is not None and kept[0] is op:
        return kept[1]
    value = l1_footprint(op, device, dict(op.attributes[BLOCKING]))
    if footprints is not None:
        footprints[id(op)] = (op, value)
    return value


FOOTPRINTS = "l1 footprints"  # try_fuse's key in its memo: the footprints of the ops its replays pass


def try_fuse(func, fused: Operation, replaced: list[Operation], device: DeviceAttr, max_cores: int, weights,
             memo: dict, multicast: bool = True) -> bool:
    """Put `fused` (not yet in a block; its result the last of `replaced`'s) in place of the ops `replaced`, in
    program order, where `fits_l1` finds a candidate for it (placed as that candidate); otherwise leave the
    function as it was. Whether it was put in."""
    last = replaced[-1]
    body = func.body
    last.result.replace_all_uses_with(fused.result)
    gone = {id(op) for op in replaced}
    trial = [fused if op is last else op for op in body.ops if op is last or id(op) not in gone]
    candidates = ranking(fused, device, max_cores, fused.attributes[FIDELITY], weights, memo, multicast)
    chosen = fits_l1(trial, fused, device, max_cores, candidates, recorded_cycles(replaced),
                     memo.setdefault(FOOTPRINTS, {}))
    if chosen is None:
        fused.result.replace_all_uses_with(last.result)
        fused.drop_operands()
        return False
    grid, blocking, cost = chosen
    fused.attributes[GRID] = grid
    fused.attributes[BLOCKING] = dict(blocking)
    fused.attributes[COST] = cost.as_attr()
    body.insert_before(last, fused)
    for op in reversed(replaced):
        op.erase()
    return True
