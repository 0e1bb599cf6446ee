"""Matmuls too large for any blocking, split along N before the grid pass chooses blockings.

A matmul core owns a per_core_m x per_core_n block of the output and keeps it in L1 while K is walked
(the partial sums, and for a long K the running total of the accumulation chunks: `ops.matmul`). With
at most one block per core, the block cannot be smaller than the output's tiles over the compute grid,
so a large enough output (an [8192, 8192] product) has no blocking that fits L1. Such a matmul of a
constant weight becomes column chunks: the weight (and the bias) split at compile time into pieces of
whole tiles, one product per piece (each reading the whole first operand, writing to DRAM), the pieces
joined along the last dim by a tree of tile-granular concats. A matmul is split only when its smallest
circular-buffer footprint exceeds a core's free L1 (it could never run whole), into as few pieces (doubling
their count) as keep each piece's under half of it (room for the L1 tensors around it).
"""

from __future__ import annotations

import numpy as np

from ttc.ir.attributes import DenseAttr, WeightAttr
from ttc.ir.core import Function, Module, Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.types import TensorType
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.geometry import cb_bytes, layout, tensor
from ttc.passes.ops.registry import circular_buffers, op_kind
from ttc.passes.rewriter import PatternRewriter, defining_op

MAX_JOINED = 4  # inputs of one concat of the pieces
DRAM_TILES = LayoutAttr("tile", "dram", "interleaved")


def cbs_fit(op: Operation, candidates, limit: int) -> bool:
    """Whether the CBs of some placed candidate of `op` (`candidates(op)`: (grid, blocking) pairs) take at most
    `limit` bytes (looking no further than the first that does)."""
    return any(cb_bytes(circular_buffers(op, blocking)) <= limit for _, blocking in candidates(op))


def constant_data(module: Module, value: Value) -> np.ndarray | None:
    const = defining_op(value, ttir.CONSTANT.name)
    if const is None:
        return None
    attr = const.attributes["value"]
    if isinstance(attr, DenseAttr):
        return np.broadcast_to(attr.to_array(), tensor(value).shape)
    return np.asarray(module.weights[attr.name]) if attr.name in module.weights else None


def split_oversized_matmuls(module: Module, func: Function, device: DeviceAttr, placements) -> int:
    """Split every matmul of a constant 2-D weight whose smallest CB footprint over the placed candidates
    (`placements(op)`: (grid, blocking) pairs) exceeds a core's free L1 into column chunks; the number split."""
    split = 0
    rewriter = PatternRewriter()
    for op in list(func.body.ops):
        if op_kind(op) != "matmul" or is_folded(op) or is_view(op) or op.attributes.get("transpose_b"):
            continue
        if cbs_fit(op, placements, device.l1_free):
            continue
        w = constant_data(module, op.operands[1])
        bias_value = ttir.linear_bias(op)
        bias = constant_data(module, bias_value) if bias_value is not None else None
        if w is None or w.ndim != 2 or (bias_value is not None and bias is None):
            continue
        if ttir.linear_residual(op) is not None:  # the pieces cannot share a residual: add it after the join
            if tensor(ttir.linear_residual(op)).shape != tensor(op.result).shape:
                continue
            op = unfuse_residual(rewriter, op)
        if chunk_columns(module, rewriter, op, w, bias, device.l1_free // 2, placements):
            split += 1
    return split


def unfuse_residual(rewriter: PatternRewriter, op: Operation) -> Operation:
    """Split a linear's fused residual (and its activation) off into an eltwise program after it, as fuse would
    have left it; the linear without it, writing to DRAM."""
    from ttc.ir.builder import Builder
    from ttc.ir.core import Block, Region

    residual = ttir.linear_residual(op)
    assert residual is not None
    attributes = {k: v for k, v in op.attributes.items() if k not in ("residual", "residual_activation")}
    result = tensor(op.result)
    product = rewriter.create_before(op, op.name, op.operands[:-1], [result.with_encoding(DRAM_TILES)], attributes)
    body = Block([product.result.type, residual.type])
    builder = Builder.at_end(body)
    value = builder.create(ttir.ADD.name, list(body.args), [result], loc=op.loc).result
    after = op.attributes.get("residual_activation", "none")
    if after != "none":
        name = {"relu": ttir.RELU, "tanh": ttir.TANH, "gelu": ttir.GELU, "gelu_tanh": ttir.GELU}[after].name
        value = builder.create(name, [value], [result], {"approximate": "tanh"} if after == "gelu_tanh" else {},
                               loc=op.loc).result
    builder.create(ttir.YIELD.name, [value], loc=op.loc)
    eltwise = rewriter.create_before(op, ttir.ELTWISE.name, [product.result, residual], [result])
    eltwise.add_region(Region([body]))
    rewriter.replace_op(op, [eltwise.result])
    return product


def chunk_columns(module: Module, rewriter: PatternRewriter, op: Operation, w: np.ndarray, bias: np.ndarray | None,
                  limit: int, placements) -> bool:
    """Replace `op` by products of column pieces of `w` joined along the last dim, with the fewest pieces whose
    first (widest) piece fits `limit`; False when even one-tile-wide pieces do not."""
    n = w.shape[1]
    tiles = -(-n // 32)
    count = 1
    while count < tiles:
        count = min(2 * count, tiles)
        width = -(-tiles // count) * 32
        pieces = pieces_of(module, rewriter, op, w, bias, width)
        if cbs_fit(pieces[0].owner, placements, limit):  # type: ignore[union-attr]
            result = tensor(op.result)
            while len(pieces) > 1:
                joined = []
                for first in range(0, len(pieces), MAX_JOINED):
                    group = pieces[first:first + MAX_JOINED]
                    if len(group) == 1:
                        joined.append(group[0])
                        continue
                    cols = sum(tensor(p).shape[-1] for p in group)
                    like = result if len(pieces) <= MAX_JOINED else \
                        result.with_shape((*result.shape[:-1], cols)).with_encoding(DRAM_TILES)
                    joined.append(rewriter.create_before(op, ttir.CONCAT.name, group, [like],
                                                         {"axis": result.rank - 1}).result)
                pieces = joined
            rewriter.replace_op(op, [pieces[0]])
            return True
        for piece in pieces:  # not small enough: undo and try more pieces
            erase_piece(module, rewriter, piece)
    return False


def pieces_of(module: Module, rewriter: PatternRewriter, op: Operation, w: np.ndarray, bias: np.ndarray | None,
              width: int) -> list[Value]:
    """The products of column pieces `width` wide (the last one the rest), each writing to DRAM."""
    result, w_type = tensor(op.result), tensor(op.operands[1])
    stem = "_".join(op.loc.names()) or "matmul"
    pieces = []
    for first in range(0, w.shape[1], width):
        cols = min(width, w.shape[1] - first)
        operands = [op.operands[0], constant(module, rewriter, op, f"{stem}.w_cols{first}",
                                             w[:, first:first + cols], w_type.with_shape((w.shape[0], cols)))]
        if bias is not None:
            b_type = tensor(op.operands[2])
            operands.append(constant(module, rewriter, op, f"{stem}.bias_cols{first}",
                                     np.broadcast_to(bias, b_type.shape)[..., first:first + cols],
                                     b_type.with_shape((*b_type.shape[:-1], cols))))
        piece_type = result.with_shape((*result.shape[:-1], cols)).with_encoding(DRAM_TILES)
        pieces.append(rewriter.create_before(op, op.name, operands, [piece_type], dict(op.attributes)).result)
    return pieces


def constant(module: Module, rewriter: PatternRewriter, op: Operation, name: str, data: np.ndarray,
             like: TensorType) -> Value:
    stored = module.add_weight(name, np.ascontiguousarray(data, np.float32))
    assert layout(like) is not None
    return rewriter.create_before(op, ttir.CONSTANT.name, [], [like], {"value": WeightAttr(stored)}).result


def erase_piece(module: Module, rewriter: PatternRewriter, piece: Value) -> None:
    """Erase a trial piece's product and its weight constants (and their data)."""
    product = piece.owner
    assert isinstance(product, Operation)
    constants = [v.owner for v in product.operands[1:]]
    rewriter.erase_op(product)
    for const in constants:
        if isinstance(const, Operation) and not const.result.uses:
            module.weights.pop(const.attributes["value"].name, None)
            rewriter.erase_op(const)
