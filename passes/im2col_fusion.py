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

from ttc.ir.attributes import fuse_locations
from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.passes.attention import only_reader
from ttc.passes.fusion_fit import try_fuse
from ttc.passes.ops.geometry import is_row_major, tensor
from ttc.passes.ops.interface import FIDELITY, GRID

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
        if try_fuse(func, fused, [lookup, product], device, max_cores, weights, memo, multicast):
            fused_count += 1
    return fused_count
