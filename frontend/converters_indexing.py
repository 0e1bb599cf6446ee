"""Gathers and index-shaped ops: gathers by run-time indices (rows, by comparison for GatherElements and
GatherND), DepthToSpace/SpaceToDepth, Tile, OneHot, Trilu, EyeLike, Einsum, ReverseSequence.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _axis, _tensor, constant_ints, converter
from ttc.frontend.converters_emitter import Emitter, _concat_copies, _float_input, _slice_last
from ttc.ir.dialects import ttir

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


# ----------------------------------------------------------------------------------------------
# Gathers by run-time indices


def gather_rows(ctx: NodeContext, data: Value, indices: Value, axis: int) -> Value:
    """Gather of computed data by computed indices: the gathered axis moved first, the rest flattened into
    rows ([N, W]), a row lookup by index (`ttir.embedding`: the device untilizes the rows and reads them by
    index), then the index dims put back at `axis`."""
    e = Emitter(ctx)
    dims = _tensor(data).shape
    others = (*dims[:axis], *dims[axis + 1:])
    moved = e.transpose(data, (axis, *range(axis), *range(axis + 1, len(dims))))
    width = math.prod(others)
    table = e.reshape(moved, (dims[axis], width))
    index_shape = _tensor(indices).shape
    ids = indices if index_shape else e.reshape(indices, (1,))
    rows = ctx.create(ttir.EMBEDDING.name, [table, ids], _tensor(data).with_shape((*(index_shape or (1,)), width)))
    k = len(index_shape)
    unflat = e.reshape(rows, (*index_shape, *others))
    perm = (*(k + i for i in range(axis)), *range(k), *(k + axis + j for j in range(len(dims) - 1 - axis)))
    return e.transpose(unflat, perm)


@converter("DepthToSpace", since=13)
def depth_to_space(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), ctx.input(0)
    n, c, h, w = _tensor(x).shape
    b = ctx.attr("blocksize")
    if ctx.attr("mode") == "CRD":
        moved = e.transpose(e.reshape(x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    else:
        moved = e.transpose(e.reshape(x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    return e.reshape(moved, (n, c // (b * b), h * b, w * b))


@converter("SpaceToDepth", since=13)
def space_to_depth(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), ctx.input(0)
    n, c, h, w = _tensor(x).shape
    b = ctx.attr("blocksize")
    perm = (0, 1, 3, 5, 2, 4) if ctx.attr("mode") == "CRD" else (0, 3, 5, 1, 2, 4)
    moved = e.transpose(e.reshape(x, (n, c, h // b, b, w // b, b)), perm)
    return e.reshape(moved, (n, c * b * b, h // b, w // b))


@converter("Tile", since=13)
def tile(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    repeats = constant_ints(ctx, 1, "repeats") or []
    if len(repeats) != _tensor(x).rank or any(r < 1 for r in repeats):
        raise ctx.error(f"repeats {repeats} do not give a positive count per dim of {list(_tensor(x).shape)}")
    for axis, count in enumerate(repeats):
        if count > 1:
            x = _concat_copies(ctx, [x] * count, axis)
    return x


@converter("OneHot", since=11)
def one_hot(ctx: NodeContext) -> Value:
    """values[1] where the index (negative ones counted from depth) equals the position along `axis`,
    values[0] elsewhere: a comparison with the positions, exact for indices of any size."""
    e, indices = Emitter(ctx), ctx.input(0)
    depth = constant_ints(ctx, 1, "depth")
    values = ctx.input(2)
    if not depth or not _tensor(values).element_type.is_float:
        raise ctx.error("OneHot needs a constant depth and float values")
    depth_n = int(depth[0])
    if depth_n > 256:
        raise ctx.error(f"depth {depth_n}: positions above 256 do not compare exactly in bf16")
    rank = _tensor(indices).rank + 1
    axis = _axis(ctx, ctx.attr("axis"), rank)
    flat = e.cast(indices, _tensor(values).element_type)
    wrapped = e.where(e.compare("lt", flat, e.const(0.0, flat)), e.add(flat, e.const(float(depth_n), flat)), flat)
    shape = list(_tensor(indices).shape)
    lifted = e.reshape(wrapped, (*shape[:axis], 1, *shape[axis:]))
    positions_shape = [1] * rank
    positions_shape[axis] = depth_n
    hot = e.compare("eq", lifted, e.const(np.arange(depth_n).reshape(positions_shape), flat))
    off, on = _slice_last(ctx, values, 0, 1), _slice_last(ctx, values, 1, 2)
    return e.where(hot, on, off)


@converter("Trilu", since=14)
def trilu(ctx: NodeContext) -> Value:
    """Float Trilu: a select by the constant triangle (integers are host ops)."""
    e, x = Emitter(ctx), _float_input(ctx)
    k = (constant_ints(ctx, 1, "k") or [0])[0]
    rows, cols = _tensor(x).shape[-2:]
    keep = np.triu(np.ones((rows, cols), bool), k) if ctx.attr("upper") else np.tril(np.ones((rows, cols), bool), k)
    mask = ctx.constant(keep, f"{ctx.node.output[0]}.triangle")
    return e.where(mask, x, e.const(0.0, x))


@converter("Einsum", since=12)
def einsum(ctx: NodeContext) -> Value:
    """One or two operands. An ellipsis stands for letters of its own (the same dims in both operands); a
    letter repeated in a term takes the diagonal (a product by an identity mask, summed over one of the two
    axes); indices only one operand has and the output lacks are summed first; then the two operands become
    [batch, free, contracted] and [batch, contracted, free] by transposes and reshapes, one batched matmul,
    and the output order."""
    e = Emitter(ctx)
    equation = ctx.attr("equation").replace(" ", "")
    inputs_part, explicit, output = equation.partition("->")
    terms = inputs_part.split(",")
    operands = [_float_input(ctx, i) for i in range(len(terms))]
    if len(terms) > 2:
        raise ctx.error(f"equation '{equation}': ttc converts one or two operands")
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in equation]
    ellipses = {len(term.replace("...", "")) - _tensor(x).rank for term, x in zip(terms, operands, strict=True)
                if "..." in term}
    ellipsis = "".join(spare[:-min(ellipses)]) if ellipses and min(ellipses) < 0 else ""
    if len(ellipses) > 1:
        raise ctx.error(f"equation '{equation}': the ellipses stand for different numbers of dims")
    terms = [t.replace("...", ellipsis) for t in terms]
    if not explicit:  # the ellipsis, then the letters used once, in order
        letters = "".join(terms)
        output = ellipsis + "".join(sorted(c for c in set(letters) - set(ellipsis) if letters.count(c) == 1))
    output = output.replace("...", ellipsis)
    for position, (term, x) in enumerate(zip(terms, operands, strict=True)):
        if len(term) != _tensor(x).rank:
            raise ctx.error(f"equation '{equation}': term '{term}' for an operand of rank {_tensor(x).rank}")
        while len(set(term)) != len(term):
            x, term = _einsum_diagonal(e, x, term)
        terms[position], operands[position] = term, x
    reduced = []
    for position, (term, x) in enumerate(zip(terms, operands, strict=True)):
        others = "".join(t for i, t in enumerate(terms) if i != position) + output
        axes = [i for i, c in enumerate(term) if c not in others]
        if axes:
            x = e.reduce("sum", x, axes, False)
            term = "".join(c for c in term if c in others)
        reduced.append((term, x))
    if len(reduced) == 1:
        term, x = reduced[0]
        return e.transpose(x, [term.index(c) for c in output]) if term != output else x
    (ta, a), (tb, b) = reduced
    sizes = {c: _tensor(a).shape[i] for i, c in enumerate(ta)} | {c: _tensor(b).shape[i] for i, c in enumerate(tb)}
    batch = [c for c in ta if c in tb and c in output]
    contract = [c for c in ta if c in tb and c not in output]
    free_a = [c for c in ta if c not in tb]
    free_b = [c for c in tb if c not in ta]
    size = lambda chars: math.prod(sizes[c] for c in chars)  # noqa: E731
    a2 = e.reshape(e.transpose(a, [ta.index(c) for c in batch + free_a + contract]),
                   (size(batch), size(free_a), size(contract)))
    b2 = e.reshape(e.transpose(b, [tb.index(c) for c in batch + contract + free_b]),
                   (size(batch), size(contract), size(free_b)))
    product = e.matmul(a2, b2)
    order = batch + free_a + free_b
    unflat = e.reshape(product, tuple(sizes[c] for c in order))
    return e.transpose(unflat, [order.index(c) for c in output])


def _einsum_diagonal(e: Emitter, x: Value, term: str) -> tuple[Value, str]:
    """The diagonal of the first letter repeated in `term`: x times an identity mask over its two axes, summed
    over the second (exact: one value and zeros)."""
    letter = next(c for c in term if term.count(c) > 1)
    first, second = term.index(letter), term.index(letter, term.index(letter) + 1)
    shape = _tensor(x).shape
    if shape[first] != shape[second]:
        raise e.ctx.error(f"einsum letter '{letter}' stands for dims of {shape[first]} and {shape[second]}")
    mask = np.eye(shape[first], dtype=np.float32).reshape(
        [shape[first] if i == first else shape[second] if i == second else 1 for i in range(len(shape))])
    diagonal = e.reduce("sum", e.mul(x, e.const(mask, x)), [second], False)
    return diagonal, term[:second] + term[second + 1:]


def gather_elements_by_comparison(ctx: NodeContext, data: Value, indices: Value, axis: int) -> Value:
    """GatherElements by computed indices: along `axis` (moved last), each index compared with the
    positions 0..D-1 (and -D..-1) selects its element and a sum over the positions collects it; exact, as
    every sum holds one selected value and zeros, and the comparisons are exact for integers of any size.
    One index per line (a class label) selects in place, without moving the axis (`_select_along`)."""
    e = Emitter(ctx)
    dims, index_dims = _tensor(data).shape, _tensor(indices).shape
    size = dims[axis]
    if size > 255:
        raise ctx.error(f"a gather along a dim of {size} (positions above 255 do not compare exactly in bf16)")
    if any(index_dims[k] > dims[k] for k in range(len(dims)) if k != axis):
        raise ctx.error(f"indices {list(index_dims)} exceed the data {list(dims)} off the gathered axis")
    from ttc.frontend.converters import emit_slice

    ends = [index_dims[k] if k != axis else dims[k] for k in range(len(dims))]
    data = emit_slice(ctx, data, [0] * len(dims), ends, [1] * len(dims))
    last = len(dims) - 1
    if index_dims[axis] == 1 and (axis >= last - 1 or size <= 16):  # one index per line (a class label)
        return _select_along(ctx, e, data, e.cast(indices, _tensor(data).element_type), axis)
    perm = list(range(len(dims)))
    perm[axis], perm[last] = perm[last], perm[axis]
    moved = e.transpose(data, perm)
    positions = e.transpose(e.cast(indices, _tensor(data).element_type), perm)
    lifted = e.reshape(positions, (*_tensor(positions).shape, 1))
    spread = e.reshape(moved, (*_tensor(moved).shape[:-1], 1, size))
    forward = e.compare("eq", lifted, e.const(np.arange(size, dtype=np.float32), lifted))
    backward = e.compare("eq", lifted, e.const(np.arange(size, dtype=np.float32) - size, lifted))
    hit = ctx.create(ttir.LOGICAL_OR.name, [forward, backward], _tensor(forward))
    picked = e.reduce("sum", e.where(hit, spread, e.const(0.0, data)), [last + 1], False)
    return e.transpose(picked, perm)


def _select_along(ctx: NodeContext, e: Emitter, data: Value, positions: Value, axis: int) -> Value:
    """The element of each line along `axis` that `positions` (size 1 along it) names, in place: compared with
    the positions of the axis (and their negative forms), selected, summed along the axis (a reduction over a
    batch dim of at most 16 slices, or along the last two dims); no transposes of the data."""
    size = _tensor(data).shape[axis]
    rank = _tensor(data).rank
    along = np.arange(size, dtype=np.float32).reshape([size if k == axis else 1 for k in range(rank)])
    hit = e.logical("or", e.compare("eq", positions, e.const(along, positions)),
                    e.compare("eq", positions, e.const(along - size, positions)))
    return e.reduce("sum", e.where(hit, data, e.const(0.0, data)), [axis], True)


def gather_nd_by_comparison(ctx: NodeContext, data: Value, indices: Value) -> Value:
    """GatherND (batch_dims 0) by computed indices: each index component compared with the positions of its
    dim (and their negative forms) gives a one-hot row per dim, their outer product a one-hot row over the
    indexed leading dims, and its product with the data's rows [positions, rest] the gathered slices; exact,
    as each output sums one selected value and zeros and the comparisons are exact for integers of any size."""
    e = Emitter(ctx)
    dims, index_dims = _tensor(data).shape, _tensor(indices).shape
    depth = index_dims[-1]
    leading, rest = dims[:depth], dims[depth:]
    if max(leading, default=0) > 255:
        raise ctx.error(f"a gather over a dim of {max(leading)} (positions above 255 do not compare exactly in bf16)")
    from ttc.frontend.converters import emit_slice

    batch = index_dims[:-1]
    values = e.cast(indices, _tensor(data).element_type)
    one_hot = None
    for j, size in enumerate(leading):
        begins, ends = [0] * len(index_dims), list(index_dims)
        begins[-1], ends[-1] = j, j + 1
        component = emit_slice(ctx, values, begins, ends, [1] * len(index_dims))  # [*batch, 1]
        forward = e.compare("eq", component, e.const(np.arange(size, dtype=np.float32), component))
        backward = e.compare("eq", component, e.const(np.arange(size, dtype=np.float32) - size, component))
        hit = e.cast(ctx.create(ttir.LOGICAL_OR.name, [forward, backward], _tensor(forward)), _tensor(data).element_type)
        if one_hot is None:
            one_hot = hit
            continue
        width = _tensor(one_hot).shape[-1]
        one_hot = e.reshape(e.mul(e.reshape(one_hot, (*batch, width, 1)), e.reshape(hit, (*batch, 1, size))),
                            (*batch, width * size))
    assert one_hot is not None
    count = math.prod(batch)
    rows = e.reshape(data, (math.prod(leading), math.prod(rest)))
    picked = e.matmul(e.reshape(one_hot, (count, math.prod(leading))), rows)
    return e.reshape(picked, (*batch, *rest))


# ----------------------------------------------------------------------------------------------
# EyeLike, CumProd, DequantizeLinear


@converter("EyeLike", since=9)
def eye_like(ctx: NodeContext) -> Value:
    """A constant: only the input's (static) shape matters."""
    from onnx import helper

    rows, cols = _tensor(ctx.input(0)).shape
    dtype = ctx.attr("dtype")
    numpy_type = helper.tensor_dtype_to_np_dtype(dtype) if dtype else _tensor(ctx.input(0)).element_type.numpy_dtype()
    return ctx.constant(np.eye(rows, cols, ctx.attr("k") or 0, dtype=numpy_type))


@converter("ReverseSequence", since=10)
def reverse_sequence(ctx: NodeContext) -> Value:
    """Reverse the first L_b steps of each batch entry b along the time axis. With the data as [B, T, rest],
    output step t takes source step s when L_b == s + t + 1 (then t < L_b) or, past the length, when s == t
    and L_b <= t: a one-hot [B, T, T] selection from comparisons of the lengths with constants (exact for
    integers of any size while the constants stay within 255) times the data, an exact product."""
    e, x = Emitter(ctx), _float_input(ctx)
    shape = _tensor(x).shape
    batch_axis, time_axis = ctx.attr("batch_axis"), ctx.attr("time_axis")
    if sorted((batch_axis, time_axis)) != [0, 1]:
        raise ctx.error(f"batch_axis {batch_axis} and time_axis {time_axis} must be 0 and 1")
    steps, batch = shape[time_axis], shape[batch_axis]
    if 2 * steps - 1 > 255:
        raise ctx.error(f"a time axis of {steps} steps (lengths compare exactly with positions up to 255 only)")
    rest = math.prod(shape[2:])
    data = e.reshape(e.transpose(x, (batch_axis, time_axis, *range(2, len(shape)))), (batch, steps, rest))
    lengths = e.reshape(e.cast(ctx.input(1), _tensor(x).element_type), (batch, 1, 1))
    t, s = np.arange(steps)[:, None], np.arange(steps)[None, :]
    reversed_step = e.compare("eq", lengths, e.const((s + t + 1)[None].astype(np.float32), lengths))
    past_length = e.logical("and", e.compare("le", lengths, e.const(np.broadcast_to(t, (steps, steps))[None]
                                                                     .astype(np.float32), lengths)),
                            e.const(np.eye(steps, dtype=bool)[None], reversed_step))
    one_hot = e.cast(e.logical("or", reversed_step, past_length), _tensor(x).element_type)
    picked = e.reshape(e.matmul(one_hot, data), (batch, steps, *shape[2:]))
    return e.transpose(picked, (batch_axis, time_axis, *range(2, len(shape))))
