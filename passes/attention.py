"""The grid pass's last step: attention as one program (`ttir.attention`, passes/ops/attention.py).

    %s = ttir.linear(%q, %kt, %b?)                 a plain matmul (no bias or activation; a residual %b: T5's
                                                   position bias)
    %p = ttir.softmax(%s, %mask?) {scale}          its only reader, along the last axis
    %y = ttir.linear(%p, %v)                       the probabilities' only reader, a plain matmul
  ->
    %y = ttir.attention(%q, %kt, %v, %mask?, %b?) {scale, bias, scores_format, probs_format, reduce_fidelity}

BERT, GPT-2 (a causal mask), ViT, T5 and Whisper reach this form after `fuse` folded the scale and the mask into the
softmax. The fused program keeps each core's scores row in L1 (the unfused matmul writes the scores to their
buffer, often DRAM: BERT-Large b12 s384 54 MiB per layer, read back by the softmax and its result again by the
second matmul), computing the same ops on the same formats, so the result has the unfused graph's bits.

The three ops are replaced when (1) the shapes suit the kernels (the head dim one accumulation chain of at most
SHORT_K_TILES tiles, every operand a tile-layout device tensor), (2) the cheapest fused candidate that fits L1 costs
fewer modelled cycles than the three programs' recorded costs, and (3) every program of the function still fits L1
with the new op in place of the three (the L1 heap replayed as allocate will place it: the query and key now live
until the second matmul's place, the scores and probabilities buffers are gone). Otherwise the three stay, as the
grid pass chose them: a row too long for the held K^T, V and the scores row falls back to the unfused programs.
"""

from __future__ import annotations

import numpy as np

from ttc.ir.attributes import fuse_locations
from ttc.ir.core import Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.ir.types import TensorType
from ttc.passes.fusion_fit import try_fuse
from ttc.passes.ops.attention import fits_one_chain
from ttc.passes.ops.gather import chain_operands, gather_of, is_folded, is_view, movement_chain
from ttc.passes.ops.geometry import is_row_major, is_sharded, layout, tensor, tile_shape
from ttc.passes.ops.interface import FIDELITY, GRID
from ttc.passes.ops.registry import op_kind


def plain_matmul(op: object, residual: bool = False) -> bool:
    """A `ttir.linear` with no bias, activation or residual (the products of an attention); with `residual`, the
    scores' product may add a residual (T5's position bias, fused into it), with no activation after it."""
    if not isinstance(op, Operation) or op.name != ttir.LINEAR.name or op.attributes.get("transpose_b") \
            or op.attributes.get("activation", "none") != "none":
        return False
    if op.attributes.get("residual"):
        return residual and len(op.operands) == 3 and op.attributes.get("residual_activation", "none") == "none"
    return len(op.operands) == 2


def only_reader(value: Value) -> Operation | None:
    """The one op using `value` (None when it has several uses or none)."""
    return value.uses[0][0] if len(value.uses) == 1 else None


def tile_device(value: Value) -> bool:
    t = value.type
    return isinstance(t, TensorType) and t.encoding is not None and not is_row_major(value) \
        and layout(t).tensor_layout == "tile"


def match(softmax: Operation) -> tuple[Operation, Operation] | None:
    """(scores matmul, second matmul) around `softmax` when the three form an attention the kernels run."""
    scores = softmax.operands[0]
    first = scores.owner
    second = only_reader(softmax.result)
    if not plain_matmul(first, residual=True) or not plain_matmul(second) or only_reader(scores) is not softmax:
        return None
    assert isinstance(first, Operation) and second is not None
    if second.operands[0] is not softmax.result or second.operands[1] is softmax.result:
        return None
    rank = tensor(scores).rank
    if rank < 2 or softmax.attr("axis") % rank != rank - 1:
        return None
    if any(tensor(v).rank < 2 for v in (*first.operands, second.operands[1])) \
            or tensor(second.result).shape[:-2] != tensor(scores).shape[:-2]:
        return None  # (a core walks the scores' batches: the result's must be the same)
    values = [*first.operands, second.operands[1], *softmax.operands[1:], second.result]
    if not all(tile_device(v) for v in values):
        return None
    return first, second


def tile_view(value: Value, reader: Operation, logical: tuple[int, ...]) -> tuple[Operation, tuple[int, ...]] | None:
    """(the gather program, [row stride, first tile of each batch]) when `value` is made by a gather that `reader`
    alone reads and that only picks strided tile rows of its source (an attention's head split: tile (b, r, c) of
    the result is the source's tile first[b] + r * stride + c, untransposed), so the reader can read the source in
    place; `logical` is the shape the reader takes it as (no broadcast batch dims). None otherwise."""
    end = value.owner
    if not isinstance(end, Operation) or op_kind(end) != "data_movement" or GRID not in end.attributes \
            or is_view(end) or only_reader(value) is not reader or tuple(tensor(value).shape) != tuple(logical):
        return None
    source = chain_operands(end)
    if len(source) != 1 or not tile_device(source[0]) or is_sharded(tensor(source[0])):
        return None
    gather = gather_of(end)
    if gather.transposed or gather.inputs is not None:
        return None
    view = strided_view(gather.source, tile_shape(tensor(value).shape))
    return None if view is None else (end, view)


def result_view(value: Value) -> tuple[Operation, tuple[int, ...]] | None:
    """(the gather program, [row stride, first tile of each batch]) when `value` (an attention's result) is read only
    by a gather that puts each of its tile rows, untransposed, at strided tile rows of its own result (a head merge:
    result tile (b, r, c) goes to the gather's tile first[b] + r * stride + c, and every gather tile comes from one
    result tile), so the attention can write the gather's result itself. None otherwise."""
    user = only_reader(value)
    if user is None or user.name not in (ttir.TRANSPOSE.name, ttir.RESHAPE.name, ttir.SLICE.name):
        return None
    end = user
    while is_folded(end):
        end = end.result.uses[0][0]
    if op_kind(end) != "data_movement" or GRID not in end.attributes or is_view(end) \
            or not tile_device(end.result) or is_sharded(tensor(end.result)):
        return None
    gather = gather_of(end)
    shape = tile_shape(tensor(value).shape)
    if gather.transposed or gather.inputs is not None or len(gather.source) != shape.tiles \
            or len(np.unique(gather.source)) != shape.tiles:
        return None
    dest = np.empty(shape.tiles, dtype=np.int64)
    dest[gather.source] = np.arange(shape.tiles)
    view = strided_view(dest, shape)
    return None if view is None else (end, view)


def strided_view(tiles: np.ndarray, shape) -> tuple[int, ...] | None:
    """(row stride, first tile of each batch) when the tile numbers `tiles` (one per tile of `shape`, batch by batch
    and row by row) are each batch's rows at one stride from its first tile, whole rows of consecutive tiles and
    rows not overlapping; None otherwise."""
    tiles = tiles.reshape(shape.batches, shape.rt, shape.ct)
    first = tiles[:, 0, 0]
    stride = int(tiles[0, 1, 0] - first[0]) if shape.rt > 1 else shape.ct
    expected = first[:, None, None] + np.arange(shape.rt)[None, :, None] * stride + np.arange(shape.ct)[None, None, :]
    if stride < shape.ct or not np.array_equal(tiles, expected):
        return None
    return (stride, *(int(f) for f in first))


def attention_op(first: Operation, softmax: Operation, second: Operation,
                 replaced: list[Operation] | None = None) -> Operation:
    """The fused op (not yet in a block) of the three. Given a list `replaced`, a query or value made by a head
    split's gather (`tile_view`) is read in place from the gather's source, a head merge's gather reading the result
    (`result_view`) is written in place, and the list gets every op the fused one replaces in program order: the
    gathers' chains, the three, the merge's chain."""
    bias = ttir.linear_residual(first)
    q, v = first.operands[0], second.operands[1]
    result_type = second.result.type
    attributes = {"scale": float(softmax.attr("scale")), "bias": bias is not None,
                  "scores_format": tensor(first.result).element_type.name,
                  "probs_format": tensor(softmax.result).element_type.name,
                  "reduce_fidelity": softmax.attributes.get(FIDELITY, "hifi4"),
                  FIDELITY: second.attributes.get(FIDELITY, "hifi4")}
    if replaced is not None:
        kt, out = tensor(first.operands[1]).shape, tensor(second.result).shape
        for name, logical, reader in (("query_view", (*out[:-1], kt[-2]), first),
                                      ("value_view", (*out[:-2], kt[-1], out[-1]), second)):
            found = tile_view(q if name == "query_view" else v, reader, logical)
            if found is None:
                continue
            end, view = found
            replaced += movement_chain(end)
            attributes[name] = view
            if name == "query_view":
                q = chain_operands(end)[0]
            else:
                v = chain_operands(end)[0]
        replaced += [first, softmax, second]
        merge = result_view(second.result)
        if merge is not None:
            end, view = merge
            replaced += movement_chain(end)
            attributes |= {"result_view": view, "result_shape": tuple(out)}
            result_type = end.result.type
    operands = (q, first.operands[1], v, *softmax.operands[1:], *([bias] if bias is not None else []))
    ops = [first, softmax, second] if replaced is None else replaced
    return Operation(ttir.ATTENTION.name, operands, [result_type], attributes,
                     loc=fuse_locations(*(op.loc for op in ops)))


def fuse_attention(func, device: DeviceAttr, max_cores: int, weights, views: bool = True) -> None:
    """Replace each attention of `func` by one program where it fits L1 and the cost model prefers it; with `views`,
    one reading its query and value in place of their head splits' gathers where that fits."""
    memo: dict = {}
    for softmax in [op for op in func.body.ops if op.name == ttir.SOFTMAX.name]:
        found = match(softmax)
        if found is None:
            continue
        first, second = found
        if FIDELITY in first.attributes and first.attributes[FIDELITY] != second.attributes.get(FIDELITY):
            continue
        for in_place in (True, False) if views else (False,):  # read and written in place, else as before
            replaced: list[Operation] = []
            fused = attention_op(first, softmax, second, replaced if in_place else None)
            if in_place and len(replaced) == 3:  # no head split or merge to take in
                fused.drop_operands()
                continue
            if not fits_one_chain(fused):
                fused.drop_operands()
                break
            if try_fuse(func, fused, replaced if in_place else [first, softmax, second], device, max_cores, weights,
                        memo):
                break
