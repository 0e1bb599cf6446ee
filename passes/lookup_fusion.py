"""The grid pass's last steps, the third: row lookups fused into the elementwise op that alone reads them
(`ttir.lookup_eltwise`, passes/ops/lookup_eltwise.py).

    %l = ttir.embedding(%table, %ids) {pad_negative}      ids [tile rows, 32]: the rows [tile rows, 32, C]
    %v = ttir.reshape(%l)                                   (a view: [tile rows * 32, C]), read only by
    %y = ttir.eltwise(..., %v, ...) {body}
  ->
    %y = ttir.lookup_eltwise(..., %table, ..., %ids) {lookups = [i], body}

A max pool is the elementwise maximum of one lookup per kernel position (passes/windows.py): nine programs and
their launches for a 3x3 pool before the maximum's. The lookups of one eltwise (its result interleaved) are
replaced together when (1) each is a plain lookup (no im2col, no groups) whose result, or its view, the eltwise
alone reads, with the eltwise's result shape and the table's format, (2) the cheapest fused candidate that fits L1
costs fewer modelled cycles than the programs' recorded costs (`tt.cost`), and (3) every program of the function
still fits L1 with the fused op in their place. Otherwise they all stay as the grid pass chose them.
"""

from __future__ import annotations

from ttc.ir.attributes import fuse_locations
from ttc.ir.core import Operation, OpResult, Value
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.passes.attention import only_reader
from ttc.passes.fusion_fit import try_fuse
from ttc.passes.ops.gather import is_view
from ttc.passes.ops.geometry import is_row_major, is_sharded, tensor
from ttc.passes.ops.interface import FIDELITY, GRID
from ttc.passes.ops.lookup_eltwise import fits_cbs


def lookup_of(value: Value, eltwise: Operation) -> tuple[Operation, list[Operation]] | None:
    """The lookup (and the view between them) whose rows `value`, an input of `eltwise`, is, when it can fuse."""
    chain: list[Operation] = []
    if not isinstance(value, OpResult) or only_reader(value) is not eltwise:
        return None
    op = value.op
    if op.name == ttir.RESHAPE.name and is_view(op):
        chain.append(op)
        if not isinstance(op.operands[0], OpResult) or only_reader(op.operands[0]) is not op:
            return None
        op = op.operands[0].op
    if op.name != ttir.EMBEDDING.name or not op.attributes.get("pad_negative") or op.attributes.get("im2col") \
            or op.attributes.get("grouped") or GRID not in op.attributes:
        return None
    table, ids = (tensor(v) for v in op.operands)
    if not is_row_major(op.operands[0]) or is_row_major(op.result) or table.rank != 2 or table.shape[1] % 32 \
            or ids.rank != 2 or ids.shape[1] != 32 \
            or tensor(value).shape != (ids.shape[0] * 32, table.shape[1]) \
            or tensor(value).shape != tensor(eltwise.result).shape \
            or tensor(value).element_type != table.element_type:
        return None
    return op, chain


def fuse_lookups(func, device: DeviceAttr, max_cores: int, weights, multicast: bool = True) -> int:
    """Replace the lookups each eltwise alone reads, and the eltwise, by one program where it fits L1 and the cost
    model prefers it; the number of eltwise ops replaced."""
    fused_count = 0
    memo: dict = {}
    for eltwise in [op for op in func.body.ops if op.name == ttir.ELTWISE.name and GRID in op.attributes]:
        if not fits_cbs(len(eltwise.operands)) or is_sharded(tensor(eltwise.result)):
            continue  # (a sharded result's blockings are the grid pass's own: follow_sharding)
        found = {}
        for i, value in enumerate(eltwise.operands):
            if sum(1 for v in eltwise.operands if v is value) == 1:
                pair = lookup_of(value, eltwise)
                if pair is not None:
                    found[i] = pair
        if not found:
            continue
        lookups = sorted(found)
        operands = [found[i][0].operands[0] if i in found else v for i, v in enumerate(eltwise.operands)]
        operands += [found[i][0].operands[1] for i in lookups]
        fused = Operation(ttir.LOOKUP_ELTWISE.name, operands, [eltwise.result.type],
                          {"lookups": tuple(lookups), FIDELITY: eltwise.attributes.get(FIDELITY, "hifi4")},
                          loc=fuse_locations(*[found[i][0].loc for i in lookups], eltwise.loc))
        regions = list(eltwise.regions)
        fused.regions, eltwise.regions = regions, []
        for region in regions:
            region.parent = fused
        position = {id(op): n for n, op in enumerate(func.body.ops)}
        replaced = sorted([op for i in lookups for op in (found[i][0], *found[i][1])], key=lambda op: position[id(op)])
        if try_fuse(func, fused, [*replaced, eltwise], device, max_cores, weights, memo, multicast):
            fused_count += 1
            continue
        fused.regions, eltwise.regions = [], regions
        for region in regions:
            region.parent = eltwise
    return fused_count
