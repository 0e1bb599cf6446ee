"""The grid pass's last steps, the second: an untilize fused into the product before it (passes/ops/matmul_rows.py).

    %y = ttir.linear(%a, %w, ...)                      tiles, read only by:
    %r = ttir.to_layout(%y)  (tiles -> rows)            an untilize program (the sticks of a convolution's input)
  ->
    %r = ttir.linear(%a, %w, ...)                       its result row-major: the product packs and writes rows

A convolution's input is untilized into sticks for its lookups; when the sticks' tiles come from a product read by
nothing else (ResNet's 1x1 convolutions before each 3x3, and its stem's convolution, a fused lookup's product
`ttir.im2col_linear`, before the max pool), the product writes the rows itself and the untilize's program goes. The pair is replaced when (1) the product is two-dimensional with an interleaved (not sharded) tile
result, (2) the cheapest row-writing candidate that fits L1 costs fewer modelled cycles than the two programs'
recorded costs (`tt.cost`), and (3) every program of the function still fits L1 without the tiles' buffer
(the L1 heap replayed as allocate will place it). Otherwise both stay as the grid pass chose them.
"""

from __future__ import annotations

from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.passes.attention import only_reader
from ttc.passes.fusion_fit import fits_l1, ranking, recorded_cycles
from ttc.passes.ops.geometry import is_row_major, layout, tensor
from ttc.passes.ops.interface import BLOCKING, COST, FIDELITY, GRID, SHARDING
from ttc.passes.ops.matmul_rows import fits_rows
from ttc.passes.ops.registry import op_kind

PRODUCTS = frozenset({ttir.LINEAR.name, ttir.MATMUL.name, ttir.IM2COL_LINEAR.name})


def match(untilize: Operation) -> Operation | None:
    """The product whose tiles `untilize` alone reads, when the pair can fuse."""
    if op_kind(untilize) != "untilize" or BLOCKING not in untilize.attributes \
            or "segment" in untilize.attributes[BLOCKING]:
        return None
    source = untilize.operands[0]
    product = source.owner
    if not isinstance(product, Operation) or product.name not in PRODUCTS \
            or op_kind(product) not in ("matmul", "im2col_matmul") \
            or only_reader(source) is not untilize or GRID not in product.attributes:
        return None
    t = tensor(source)
    if layout(t).tensor_layout != "tile" or not is_row_major(untilize.result) \
            or tensor(untilize.result).shape != t.shape or tensor(untilize.result).element_type != t.element_type:
        return None
    if product.name == ttir.IM2COL_LINEAR.name:  # always a two-dimensional product (ttir.verify_im2col_linear)
        return product
    return product if fits_rows(product) else None


def fuse_untilize(func, device: DeviceAttr, max_cores: int, weights, multicast: bool = True) -> int:
    """Replace each untilize of a product's tiles by the product writing rows where it fits L1 and the cost model
    prefers it; the number replaced."""
    fused_count = 0
    memo: dict = {}
    for untilize in [op for op in func.body.ops if op_kind(op) == "untilize"]:
        product = match(untilize)
        if product is None:
            continue
        body = func.body
        tiles = product.result.type
        saved = {key: product.attributes[key] for key in (GRID, BLOCKING, COST, SHARDING) if key in product.attributes}
        unfused = recorded_cycles([product, untilize])
        users = list(untilize.result.uses)
        product.result.type = untilize.result.type
        for user, index in users:
            user.set_operand(index, product.result)
        trial = [op for op in body.ops if op is not untilize]
        candidates = ranking(product, device, max_cores, product.attributes.get(FIDELITY, "hifi4"), weights, memo,
                             multicast)
        chosen = fits_l1(trial, product, device, max_cores, candidates, unfused)
        if chosen is None:
            for user, index in users:
                user.set_operand(index, untilize.result)
            product.result.type = tiles
            product.attributes.update(saved)
            continue
        grid, blocking, cost = chosen
        product.attributes[GRID] = grid
        product.attributes[BLOCKING] = dict(blocking)
        product.attributes[COST] = cost.as_attr()
        product.attributes.pop(SHARDING, None)
        untilize.erase()
        fused_count += 1
    return fused_count
