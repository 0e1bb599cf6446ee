"""The grid pass's last steps, the first: sibling linears as one product (then attention.py, im2col_fusion.py,
untilize_fusion.py).

    %q = ttir.linear(%x, %wq, %bq)          the same first operand, constant weights (and biases) read by
    %k = ttir.linear(%x, %wk, %bk)          nothing else, the same epilogue, formats and layouts; each result
    %v = ttir.linear(%x, %wv, %bv)          whole tiles wide and read only by a gather program (a head split)
  ->
    %y = ttir.linear(%x, [%wq|%wk|%wv], [%bq|%bk|%bv])
    %q = ttir.slice(%y) ...                 tile-aligned column slices, folded into the gathers that read them

An attention's Q, K and V projections (BERT, T5, Whisper, ViT: three [d, d] weights) are three programs that each
read their weight; as one product the weights are read by one program (one launch, and a grid that fits the wider
N better). Every output tile is computed as before: the same K chain, accumulation chunks, bias, activation and
formats (members must agree on all of them), so the result has the separate products' bits. A slice folds into the
gather reading it (`gather.is_folded`), so no program is added; a result read by anything else (an eltwise, another
product, a view) would need a program of its own for its slice, and such linears stay apart.

The members are replaced when (1) the cheapest candidate of the joined product that fits L1 costs fewer modelled
cycles than the members' recorded costs (`tt.cost`) and (2) every program of the function still fits L1 with it in
their place (the L1 heap replayed as allocate will place it: the joined result lives until its last slice is read;
`fusion_fit.fits_l1`). It runs before the attention fusion, whose own check then replays L1 with the joined product
in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ttc.ir.attributes import DenseAttr, UnknownLoc, WeightAttr, fuse_locations
from ttc.ir.core import Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.ir.types import TensorType
from ttc.passes.cost_model import estimate
from ttc.passes.fusion_fit import fit_all_l1, ranking, recorded_cycles
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.geometry import TILE, is_sharded
from ttc.passes.ops.interface import BLOCKING, COST, FIDELITY, GRID, SHARDING
from ttc.passes.ops.registry import op_kind

GATHER_HEADS = frozenset({ttir.TRANSPOSE.name, ttir.RESHAPE.name, ttir.SLICE.name})


def gather_end(value: Value) -> Operation | None:
    """The op whose gather program reads `value`, when `value`'s only use heads a chain of transposes, reshapes and
    slices that runs as a program of its own (not a view): a column slice in front of it folds into that gather."""
    if len(value.uses) != 1 or value.uses[0][0].name not in GATHER_HEADS:
        return None
    user = value.uses[0][0]
    while is_folded(user):
        user = user.result.uses[0][0]
    return None if is_view(user) or GRID not in user.attributes else user


def constant_of(value: Value, weights: dict[str, np.ndarray]) -> DenseAttr | WeightAttr | None:
    """The value of the constant defining `value`, when it is read by nothing else (a weight read elsewhere too
    would be stored twice) and its data is loaded."""
    op = value.owner
    if not isinstance(op, Operation) or op.name != ttir.CONSTANT.name or len(value.uses) != 1:
        return None
    attr = op.attributes.get("value")
    if (isinstance(attr, WeightAttr) and attr.name in weights) or isinstance(attr, DenseAttr):
        return attr
    return None


def sibling_key(op: Operation, weights: dict[str, np.ndarray]) -> tuple | None:
    """What linears sharing their first operand must agree on to be one product; None when `op` cannot join one."""
    if op.name != ttir.LINEAR.name or op_kind(op) != "matmul" or op.attributes.get("residual") \
            or GRID not in op.attributes or len(op.operands) not in (2, 3):
        return None
    result, weight = op.result.type, op.operands[1].type
    if not isinstance(result, TensorType) or not isinstance(weight, TensorType) or weight.rank != 2 \
            or result.encoding is None or is_sharded(result) or result.shape[-1] % TILE:
        return None
    if any(constant_of(v, weights) is None for v in op.operands[1:]) or gather_end(op.result) is None:
        return None
    transpose_b = bool(op.attributes.get("transpose_b"))
    k = weight.shape[1 if transpose_b else 0]
    bias = op.operands[2].type if len(op.operands) == 3 else None
    return (id(op.operands[0]), transpose_b, k, op.attributes.get("activation", "none"), op.attributes.get(FIDELITY),
            result.shape[:-1], result.element_type, result.encoding, weight.element_type, weight.encoding,
            None if bias is None else (bias.shape[:-1], bias.element_type, bias.encoding))


def side_by_side(weights: dict[str, np.ndarray], add_weight, parts: Sequence[Value], axis: int,
                 joined: TensorType) -> WeightAttr:
    """The constants `parts` concatenated along `axis`, as a new weight."""
    attrs = [p.owner.attributes["value"] for p in parts]
    arrays = [weights[a.name] if isinstance(a, WeightAttr) else a.to_array() for a in attrs]
    array = np.concatenate(arrays, axis=axis)
    assert array.shape == joined.shape, (array.shape, joined.shape)
    first = next((a.name for a in attrs if isinstance(a, WeightAttr)), "siblings")
    return WeightAttr(add_weight(f"{first}.concat", array))


def fuse_siblings(func, module, device: DeviceAttr, max_cores: int, multicast: bool = True) -> int:
    """Join each group of sibling linears of `func` where it fits L1 and the cost model prefers it; the number of
    linears removed. All groups are tried in one replay of the function's L1 first (`fusion_fit.fit_all_l1`), and
    one by one only when that fails."""
    weights = module.weights
    groups: dict[tuple, list[Operation]] = {}
    for op in func.body.ops:
        key = sibling_key(op, weights)
        if key is not None:
            groups.setdefault(key, []).append(op)
    groups_of_two = [members for members in groups.values() if len(members) >= 2]
    if not groups_of_two:
        return 0
    memo: dict = {}
    joins = [Join(module, members, device, max_cores, multicast, memo) for members in groups_of_two]
    if len(joins) > 1:
        chosen = fit_all_l1(trial_ops(func, joins), {id(j.linear): (j.candidates, j.cycles) for j in joins},
                            device, max_cores)
        if chosen is not None:
            for j in joins:
                j.commit(chosen[id(j.linear)], device)
            return sum(len(j.members) - 1 for j in joins)
        for j in joins:
            j.undo()
        joins = [Join(module, members, device, max_cores, multicast, memo) for members in groups_of_two[:1]]
    removed = 0
    for index, members in enumerate(groups_of_two):
        j = joins[0] if index == 0 else Join(module, members, device, max_cores, multicast, memo)
        chosen = fit_all_l1(trial_ops(func, [j]), {id(j.linear): (j.candidates, j.cycles)}, device, max_cores)
        if chosen is None:
            j.undo()
        else:
            j.commit(chosen[id(j.linear)], device)
            removed += len(members) - 1
    return removed


def trial_ops(func, joins: list[Join]) -> list[Operation]:
    """The function's ops with the joins' members left out (their joined products are in place)."""
    gone = {id(m) for j in joins for m in j.members}
    return [op for op in func.body.ops if id(op) not in gone]


class Join:
    """One group's joined product put in before its first member, with the slices in place of the members' results
    (the members still in the block, unread): `commit` places it and erases the members, `undo` restores them."""

    def __init__(self, module, members: list[Operation], device: DeviceAttr, max_cores: int, multicast: bool,
                 memo: dict) -> None:
        self.module, self.members = module, members
        first = members[0]
        body = first.parent
        transpose_b = bool(first.attributes.get("transpose_b"))
        widths = [m.result.type.shape[-1] for m in members]
        created: list[Operation] = []
        self.new_weights: list[str] = []
        operands = [first.operands[0]]
        for slot in range(1, len(first.operands)):
            parts = [m.operands[slot] for m in members]
            part = parts[0].type
            axis = 0 if slot == 1 and transpose_b else part.rank - 1
            shape = list(part.shape)
            shape[axis] = sum(p.type.shape[axis] for p in parts)
            joined = TensorType(tuple(shape), part.element_type, part.encoding)
            value = side_by_side(module.weights, module.add_weight, parts, axis, joined)
            self.new_weights.append(value.name)
            constant = Operation(ttir.CONSTANT.name, [], [joined], {"value": value},
                                 loc=fuse_locations(*(p.owner.loc for p in parts)))
            created.append(constant)
            operands.append(constant.result)
        result = first.result.type
        wide = TensorType((*result.shape[:-1], sum(widths)), result.element_type, result.encoding)
        attributes = {k: v for k, v in first.attributes.items() if k not in (GRID, BLOCKING, COST, SHARDING)}
        self.linear = Operation(ttir.LINEAR.name, operands, [wide], attributes,
                                loc=fuse_locations(*(m.loc for m in members)))
        created.append(self.linear)
        begin = 0
        for member, width in zip(members, widths, strict=True):
            shape = member.result.type.shape
            created.append(Operation(ttir.SLICE.name, [self.linear.result], [member.result.type],
                                     {"begins": (0,) * (len(shape) - 1) + (begin,),
                                      "ends": (*shape[:-1], begin + width), "steps": (1,) * len(shape)},
                                     loc=UnknownLoc()))  # (it computes no node: the joined product does)
            begin += width
        for op in created:
            body.insert_before(first, op)
        self.created = created
        self.slices = created[-len(members):]
        self.ends = [gather_end(m.result) for m in members]
        for member, piece in zip(members, self.slices, strict=True):
            member.result.replace_all_uses_with(piece.result)
        self.candidates = ranking(self.linear, device, max_cores, first.attributes.get(FIDELITY, "hifi4"),
                                  module.weights, memo, multicast)
        self.cycles = recorded_cycles(members)

    def undo(self) -> None:
        for member, piece in zip(self.members, self.slices, strict=True):
            piece.result.replace_all_uses_with(member.result)
        for op in reversed(self.created):
            op.erase()
        for name in self.new_weights:
            self.module.weights.pop(name, None)

    def commit(self, chosen: tuple, device: DeviceAttr) -> None:
        grid, blocking, cost = chosen
        self.linear.attributes[GRID] = grid
        self.linear.attributes[BLOCKING] = dict(blocking)
        self.linear.attributes[COST] = cost.as_attr()
        for end in self.ends:  # the gathers now read the joined result: their recorded cost as the profile counts it
            assert end is not None
            end.attributes[COST] = estimate(end, op_kind(end) or "", device, end.attributes[GRID],
                                            dict(end.attributes[BLOCKING]), end.attributes.get(FIDELITY, "hifi4"),
                                            weights=self.module.weights).as_attr()
        for member in self.members:
            old = [v.owner for v in member.operands[1:]]
            member.erase()
            for constant in old:
                value = constant.attributes["value"]
                constant.erase()
                if isinstance(value, WeightAttr):
                    self.module.weights.pop(value.name, None)
