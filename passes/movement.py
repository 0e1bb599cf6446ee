"""Device forms of data movement and reductions, applied by `tilize`.

The device moves data as whole 32x32 tiles (`footprint.gather_map_of_inputs`): permutations, slices
and concatenations along tile boundaries. What does not fall on tile boundaries is rewritten here:

- `ttir.gather` with constant indices (ONNX Gather, GatherND, GatherElements of computed data) becomes
  slices of the runs of consecutive indices, concatenated along the axis and reshaped to the result:
  x[..., [4, 5, 6, 0], ...] = concat(x[..., 4:7, ...], x[..., 0:1, ...]).
- A slice or concat along the last two dims that is not tile-aligned becomes selection matmuls with
  0/1 matrices (weights): rows are selected by S @ x, columns by x @ S, and a concatenation is the sum
  of its inputs each placed by such a product. Every output element is one input element times 1 plus
  zeros, so the result is exact in bf16 at HiFi4 (pinned with `tt.math_fidelity`); this is how a
  matrix engine moves data it cannot address at element granularity. (An infinite or NaN element
  contaminates its row or column, as 0 * inf is NaN; masks are saturated to finite values by `tilize`.)
  Slices along batch dims and along tile boundaries stay slices.
- A chain of reshapes, transposes and slices that is not tile-granular but keeps every row of the last
  dim whole (a reshape regrouping rows across tiles, e.g. [3, 1, 70] -> [3, 70]) goes through rows, as
  tt-metal's reshape does: untilize (a device `ttir.to_layout` to row-major), then a row lookup
  (`ttir.embedding` of the row-major tensor by a constant int32 table of source rows), which tilizes.
  A chain whose first ops move whole tiles and whose rest moves whole rows is split there: the tile
  gather stays a program of its own and the row lookup reads its result.
- Any other movement of one tensor (rows split and merged into element-sized pieces: a flatten after a
  global pool, NHWC <-> NCHW on odd sizes, Swin's windows) is element-granular (`RowGather.elements`): the
  input's columns are stacked by exact selection matmuls ([W_in, ..., rows, 1], at most 64 columns per
  product), untilized (a page per element), every output element is looked up by a constant
  `.element_index` table (one `ttir.embedding`, [..., W_out, 1]), and a tile transpose and a row regroup
  give the result. Segments of one element are taken this way past 8 output columns (one lookup, not one
  per column).
- Reductions run along the last dim (`ttir.reduce_*` with axes = [rank - 1], keepdims) or the one before
  it; a reduction over both is one after the other, over batch dims a chain of elementwise adds (max,
  for a max) of the slices, and keepdims = false a reshape after. Beyond 16 slices, batch dims reduced
  together with the rows are merged into the rows first (a reshape keeping rows whole). A mean over several dims divides the
  sum once by the element count.
"""

from __future__ import annotations

import math

import numpy as np

from ttc.ir.attributes import DenseAttr, WeightAttr
from ttc.ir.core import Module, Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import LayoutAttr
from ttc.ir.dialects.ttir import matmul_shape, slice_shape
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.ops.gather import MOVEMENT_OPS, is_folded, movement_chain
from ttc.passes.ops.gather_map import Gather, _apply_step, chain_steps, gather_map_of_inputs, row_gather_map
from ttc.passes.ops.geometry import is_row_major
from ttc.passes.rewriter import PatternRewriter, RewritePattern, defining_op

CONSTANT = ttir.CONSTANT.name
EXACT_FIDELITY = "hifi4"
FIDELITY_ATTR = "tt.math_fidelity"
MAX_RUNS = 64  # a constant-index gather becomes at most this many slices
MAX_BATCH_REDUCE = 64  # a reduction over batch dims adds at most this many slices
MERGE_BATCH_REDUCE = 16  # beyond this many (a fused eltwise's inputs), batch dims are merged into rows if they can


def tensor(value: Value) -> TensorType:
    assert isinstance(value.type, TensorType)
    return value.type


def node_name(op: Operation) -> str:
    return ", ".join(op.loc.names()) or str(op.loc)


def constant_array(module: Module, value: Value) -> np.ndarray | None:
    op = defining_op(value, CONSTANT)
    if op is None:
        return None
    attr = op.attributes["value"]
    if isinstance(attr, DenseAttr):
        return attr.to_array()
    return np.asarray(module.weights[attr.name]) if attr.name in module.weights else None


def is_tile_granular(in_shapes: list[tuple[int, ...]], step: tuple) -> bool:
    return isinstance(gather_map_of_inputs(tuple(in_shapes), (step,)), Gather)


def slice_step(begins, ends, steps) -> tuple:
    return ("slice", (tuple(begins), tuple(ends), tuple(steps)))


def create_slice(rewriter: PatternRewriter, op: Operation, x: Value, begins, ends, steps) -> Value:
    shape = slice_shape(tensor(x).shape, begins, ends, steps)
    attributes = {"begins": tuple(begins), "ends": tuple(ends), "steps": tuple(steps)}
    return rewriter.create_before(op, ttir.SLICE.name, [x], [tensor(x).with_shape(shape)], attributes).result


def weight(rewriter: PatternRewriter, module: Module, op: Operation, name: str, array: np.ndarray,
           like: TensorType) -> Value:
    """A new weight constant (host type; `tilize` places it on the device)."""
    ttype = TensorType(array.shape, like.element_type)
    stem = (node_name(op).strip("/").replace("/", ".") or "movement") + f".{name}"
    attr = WeightAttr(module.add_weight(stem, np.ascontiguousarray(array, np.float32)))  # copies only views
    return rewriter.create_before(op, CONSTANT, [], [ttype], {"value": attr}).result


def exact_matmul(rewriter: PatternRewriter, op: Operation, a: Value, b: Value) -> Value:
    """a @ b with one selected element per output: exact at HiFi4, which the grid pass keeps."""
    shape = matmul_shape(tensor(a).shape, tensor(b).shape)
    assert shape is not None
    like = tensor(b) if tensor(a).rank == 2 and tensor(b).rank > 2 else tensor(a)
    product = rewriter.create_before(op, ttir.MATMUL.name, [a, b], [like.with_shape(shape)])
    product.attributes[FIDELITY_ATTR] = EXACT_FIDELITY
    return product.result


# ----------------------------------------------------------------------------------------------
# Gathers with constant indices


class GatherToSlices(RewritePattern):
    """gather(x, constant indices, axis) -> reshape(concat(slices of the runs of consecutive indices))."""

    root = ttir.GATHER.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        data, indices = op.operands
        values = constant_array(self.module, indices)
        if values is None:
            raise UserError(f"node '{node_name(op)}': a gather by indices computed at run time has no device "
                            "kernel (constant indices move data; a constant table looked up by computed "
                            "indices is an embedding)")
        axis = op.attr("axis")
        shape = tensor(data).shape
        flat = values.astype(np.int64).ravel()
        flat = np.where(flat < 0, flat + shape[axis], flat)
        if ((flat < 0) | (flat >= shape[axis])).any():
            raise UserError(f"node '{node_name(op)}': gather index out of range for dim {axis} of size {shape[axis]}")
        runs = np.split(flat, np.nonzero(np.diff(flat) != 1)[0] + 1) if flat.size else []
        if len(runs) > MAX_RUNS:
            raise UserError(f"node '{node_name(op)}': the constant indices form {len(runs)} runs; the device "
                            f"moves at most {MAX_RUNS} slices per gather")
        pieces = []
        for run in runs:
            begins, ends = [0] * len(shape), list(shape)
            begins[axis], ends[axis] = int(run[0]), int(run[-1]) + 1
            pieces.append(create_slice(rewriter, op, data, begins, ends, [1] * len(shape)))
        value = pieces[0]
        if len(pieces) > 1:
            joined = list(shape)
            joined[axis] = flat.size
            value = rewriter.create_before(op, ttir.CONCAT.name, pieces, [tensor(data).with_shape(tuple(joined))],
                                           {"axis": axis}).result
        if tensor(value).shape != tensor(op.result).shape:
            value = rewriter.create_before(op, ttir.RESHAPE.name, [value], [tensor(op.result)]).result
        rewriter.replace_op(op, [value])
        return True


# ----------------------------------------------------------------------------------------------
# Slices and concatenations off tile boundaries


def selection_rows(size_in: int, begin: int, step: int, count: int) -> np.ndarray:
    """S [count, size_in] with S[i, begin + i * step] = 1 (S @ x selects rows)."""
    matrix = np.zeros((count, size_in), np.float32)
    matrix[np.arange(count), begin + np.arange(count) * step] = 1.0
    return matrix


class UnalignedSlice(RewritePattern):
    """A slice that is not tile-granular -> a batch-dim slice, then row and column selection matmuls
    (or tile-aligned slices) for the last two dims."""

    root = ttir.SLICE.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x = op.operands[0]
        shape = tensor(x).shape
        begins, ends, steps = (list(op.attr(name)) for name in ("begins", "ends", "steps"))
        if is_tile_granular([shape], slice_step(begins, ends, steps)):
            return rewriter.notify_match_failure(op, "moves whole tiles")
        rank = len(shape)
        matrix_dims = list(range(max(rank - 2, 0), rank))
        batch_begins = [b if d not in matrix_dims else 0 for d, b in enumerate(begins)]
        batch_ends = [e if d not in matrix_dims else shape[d] for d, e in enumerate(ends)]
        batch_steps = [s if d not in matrix_dims else 1 for d, s in enumerate(steps)]
        value = x
        if (batch_begins, batch_ends, batch_steps) != ([0] * rank, list(shape), [1] * rank):
            value = create_slice(rewriter, op, x, batch_begins, batch_ends, batch_steps)
        out = tensor(op.result).shape
        for dim in matrix_dims:
            current = tensor(value).shape
            if current[dim] == out[dim] and begins[dim] == 0 and steps[dim] == 1:
                continue
            one_begins, one_ends, one_steps = [0] * rank, list(current), [1] * rank
            one_begins[dim], one_ends[dim], one_steps[dim] = begins[dim], ends[dim], steps[dim]
            if is_tile_granular([current], slice_step(one_begins, one_ends, one_steps)):
                value = create_slice(rewriter, op, value, one_begins, one_ends, one_steps)
                continue
            select = selection_rows(current[dim], begins[dim], steps[dim], out[dim])
            if dim == rank - 1:
                value = exact_matmul(rewriter, op, value, weight(rewriter, self.module, op, "columns",
                                                                 select.T.copy(), tensor(x)))
            else:
                value = exact_matmul(rewriter, op, weight(rewriter, self.module, op, "rows", select, tensor(x)),
                                     value)
        rewriter.replace_op(op, [value])
        return True


class UnalignedConcat(RewritePattern):
    """A concat along one of the last two dims that is not tile-granular -> the sum of its inputs, each
    placed by a selection matmul."""

    root = ttir.CONCAT.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        shapes = [tensor(v).shape for v in op.operands]
        axis = op.attr("axis")
        if is_tile_granular(shapes, ("concat", (axis,))):
            return rewriter.notify_match_failure(op, "moves whole tiles")
        rank = len(shapes[0])
        total = tensor(op.result).shape[axis]
        placed, offset = [], 0
        for value, shape in zip(op.operands, shapes, strict=True):
            place = selection_rows(total, 0, 1, total)[:, offset: offset + shape[axis]]  # [total, size]
            if axis == rank - 1:
                placed.append(exact_matmul(rewriter, op, value, weight(rewriter, self.module, op, "place",
                                                                       place.T.copy(), tensor(value))))
            else:
                placed.append(exact_matmul(rewriter, op, weight(rewriter, self.module, op, "place", place,
                                                                tensor(value)), value))
            offset += shape[axis]
        total_value = placed[0]
        for other in placed[1:]:
            total_value = rewriter.create_before(op, ttir.ADD.name, [total_value, other], [tensor(op.result)]).result
        rewriter.replace_op(op, [total_value])
        return True


# ----------------------------------------------------------------------------------------------
# Reductions


REDUCTIONS = (ttir.REDUCE_SUM.name, ttir.REDUCE_MEAN.name, ttir.REDUCE_MAX.name)


class ReductionToDeviceForm(RewritePattern):
    """Reductions become keepdims reductions along the last dim or the one before it (see the module doc)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x = op.operands[0]
        shape = tensor(x).shape
        rank = len(shape)
        axes = list(op.attr("axes"))
        if op.name != ttir.REDUCE_MEAN.name and op.attr("keepdims") and len(axes) == 1 and axes[0] >= rank - 2:
            return rewriter.notify_match_failure(op, "already a device form")
        if rank == 0 or not axes:
            rewriter.replace_op(op, [x])
            return True
        is_max = op.name == ttir.REDUCE_MAX.name
        kind = ttir.REDUCE_MAX.name if is_max else ttir.REDUCE_SUM.name
        value = x
        batch_axes = [a for a in axes if a < rank - 2]
        if math.prod(shape[a] for a in batch_axes) > MERGE_BATCH_REDUCE and self.merge_rows(rewriter, op, axes):
            return True
        if batch_axes:
            value = self.reduce_batch(rewriter, op, value, batch_axes, ttir.MAXIMUM.name if is_max else ttir.ADD.name)
        for axis in sorted((a for a in axes if a >= rank - 2), reverse=True):
            reduced = list(tensor(value).shape)
            reduced[axis] = 1
            value = rewriter.create_before(op, kind, [value], [tensor(value).with_shape(tuple(reduced))],
                                           {"axes": (axis,), "keepdims": True}).result
        if op.name == ttir.REDUCE_MEAN.name:
            count = math.prod(shape[a] for a in axes)
            scale_type = TensorType((), tensor(x).element_type)
            scale = rewriter.create_before(op, CONSTANT, [], [scale_type],
                                           {"value": DenseAttr(scale_type, 1.0 / count)}).result
            value = rewriter.create_before(op, ttir.MUL.name, [value, scale], [tensor(value)]).result
        if tensor(value).shape != tensor(op.result).shape:
            value = rewriter.create_before(op, ttir.RESHAPE.name, [value], [tensor(op.result)]).result
        rewriter.replace_op(op, [value])
        return True

    @staticmethod
    def merge_rows(rewriter: PatternRewriter, op: Operation, axes: list[int]) -> bool:
        """Many batch slices reduced together with the rows: when the reduced dims before the last are a run
        ending at rank - 2, merge them into one dim of rows (a reshape keeping rows whole) and reduce that."""
        x = op.operands[0]
        shape = tensor(x).shape
        rank = len(shape)
        leading = sorted(a for a in axes if a < rank - 1)
        first = leading[0]
        if leading != list(range(first, rank - 1)):
            return False
        rows = (*shape[:first], math.prod(shape[first:rank - 1]), shape[-1])
        merged = rewriter.create_before(op, ttir.RESHAPE.name, [x], [tensor(x).with_shape(rows)]).result
        new_axes = (first, first + 1) if rank - 1 in axes else (first,)
        reduced = tuple(1 if i in new_axes else n for i, n in enumerate(rows))
        value = rewriter.create_before(op, op.name, [merged], [tensor(x).with_shape(reduced)],
                                       {"axes": new_axes, "keepdims": True}).result
        if reduced != tensor(op.result).shape:
            value = rewriter.create_before(op, ttir.RESHAPE.name, [value], [tensor(op.result)]).result
        rewriter.replace_op(op, [value])
        return True

    @staticmethod
    def reduce_batch(rewriter: PatternRewriter, op: Operation, x: Value, axes: list[int], combine: str) -> Value:
        """Elementwise combination of the slices of x along batch `axes` (kept as size-1 dims)."""
        shape = tensor(x).shape
        count = math.prod(shape[a] for a in axes)
        if count > MAX_BATCH_REDUCE:
            raise UserError(f"node '{node_name(op)}': a reduction over batch dims of {count} slices (at most "
                            f"{MAX_BATCH_REDUCE}); the device reduces along the last two dims")
        kept = tuple(1 if d in axes else n for d, n in enumerate(shape))
        total = None
        for index in np.ndindex(*(shape[a] for a in axes)):
            begins = [0] * len(shape)
            ends = list(shape)
            for a, i in zip(axes, index, strict=True):
                begins[a], ends[a] = i, i + 1
            piece = create_slice(rewriter, op, x, begins, ends, [1] * len(shape))
            total = piece if total is None else rewriter.create_before(
                op, combine, [total, piece], [tensor(x).with_shape(kept)]).result
        assert total is not None
        return total


# ----------------------------------------------------------------------------------------------
# Row gathers

ROW_MAJOR = LayoutAttr("row_major", "dram", "interleaved")


class RowGather(RewritePattern):
    """A movement chain that is not tile-granular but moves whole rows -> untilize + row lookup."""

    def __init__(self, root: str, module: Module) -> None:
        self.root = root
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if is_folded(op):
            return rewriter.notify_match_failure(op, "not the end of its movement chain")
        chain = movement_chain(op)
        if chain[0].name == ttir.CONCAT.name:
            return self.after_concat(op, chain, rewriter)
        if is_row_major(chain[0].operands[0]):
            return rewriter.notify_match_failure(op, "it moves rows already")
        in_shapes, steps = chain_steps(chain)
        if isinstance(gather_map_of_inputs(in_shapes, steps), Gather):
            return rewriter.notify_match_failure(op, "moves whole tiles")
        x, rows = chain[0].operands[0], row_gather_map(in_shapes[0], steps)
        if rows is None:
            x, rows = tile_prefix_then_rows(chain, in_shapes, steps) or (x, None)
        if rows is None or (len(in_shapes[0]) < 2 and tensor(op.result).rank < 2):
            return self.segments(op, chain[0].operands[0], in_shapes[0], steps, rewriter)
        return self.row_lookup(op, x, rows, rewriter)

    def after_concat(self, op: Operation, chain: list[Operation], rewriter: PatternRewriter) -> bool:
        """A chain headed by a tile-granular concat whose rest is not (a Scan's stacked steps transposed and
        regrouped): the concat, or a longer tile-granular prefix, is its own gather; the rest is a row lookup
        or segments of that."""
        in_shapes, steps = chain_steps(chain)
        if len(chain) == 1 or isinstance(gather_map_of_inputs(in_shapes, steps), Gather):
            return rewriter.notify_match_failure(op, "a concat alone, or the chain moves whole tiles")
        if not isinstance(gather_map_of_inputs(in_shapes, steps[:1]), Gather):
            return rewriter.notify_match_failure(op, "the concat heading the chain is not tile-granular")
        split = tile_prefix_then_rows(chain, in_shapes, steps)
        if split is not None:
            return self.row_lookup(op, *split, rewriter)
        joined = chain[0].result
        return self.segments(op, joined, tensor(joined).shape, steps[1:], rewriter)

    def row_lookup(self, op: Operation, x: Value, rows: np.ndarray, rewriter: PatternRewriter) -> bool:
        """op's result as rows of x (untilized) looked up by the constant row ids `rows`."""
        source = tensor(x)
        width = source.shape[-1]
        untilized = rewriter.create_before(op, ttir.TO_LAYOUT.name, [x], [source.with_encoding(ROW_MAJOR)]).result
        table_type = TensorType((source.num_elements // width, width), source.element_type, ROW_MAJOR)
        table = rewriter.create_before(op, ttir.RESHAPE.name, [untilized], [table_type]).result
        ids_type = TensorType(rows.shape, ScalarType("i32"), ROW_MAJOR)
        name = self.module.add_weight(f"{(node_name(op).strip('/').replace('/', '.') or 'rows')}.row_index",
                                      rows.astype(np.int32))
        ids = rewriter.create_before(op, CONSTANT, [], [ids_type], {"value": WeightAttr(name)}).result
        gathered = rewriter.create_before(op, ttir.EMBEDDING.name, [table, ids], [tensor(op.result)]).result
        rewriter.replace_op(op, [gathered])
        return True


    def segments(self, op: Operation, x: Value, in_shape: tuple[int, ...], steps: tuple,
                 rewriter: PatternRewriter) -> bool:
        """A movement that splits or merges rows of the last dim, when every output row is a sequence of
        aligned segments of g input elements: stack the J = W_in / g column blocks of the input (one exact
        selection matmul, [J, ..., rows, g]), untilize the stack, look each output segment column up by row
        (m = W_out / g lookups) and concatenate them."""
        plan = segment_plan(in_shape, steps)
        if plan is None or (plan[0] == 1 and plan[1].shape[-1] > CONCAT_FAN_IN):
            return self.elements(op, x, in_shape, steps, rewriter)  # one element lookup, not a lookup per column
        g, sources = plan
        source, result = tensor(x), tensor(op.result)
        shape_in = in_shape if len(in_shape) >= 2 else (1, *in_shape)
        shape_out = result.shape if result.rank >= 2 else (1, *result.shape)
        blocks = shape_in[-1] // g
        lifted = rewriter.create_before(op, ttir.RESHAPE.name, [x], [source.with_shape((1, *shape_in))]).result
        stack_shape = (blocks, *shape_in[:-1], g)
        if blocks == 1:
            stack = lifted
        else:
            selection = np.zeros((blocks, *([1] * (len(shape_in) - 2)), shape_in[-1], g), np.float32)
            for j in range(blocks):
                selection[j, ..., j * g + np.arange(g), np.arange(g)] = 1.0
            stack = exact_matmul(rewriter, op, lifted, weight(rewriter, self.module, op, "segments", selection,
                                                                   source))
        stack_type = tensor(stack).with_shape(stack_shape)
        untilized = rewriter.create_before(op, ttir.TO_LAYOUT.name, [stack], [stack_type.with_encoding(ROW_MAJOR)]).result
        rows_in = math.prod(shape_in[:-1])
        table_type = TensorType((blocks * rows_in, g), source.element_type, ROW_MAJOR)
        table = rewriter.create_before(op, ttir.RESHAPE.name, [untilized], [table_type]).result
        pieces = []
        for c in range(sources.shape[-1]):
            ids = sources[..., c].reshape(shape_out[:-1]).astype(np.int32)
            name = self.module.add_weight(f"{(node_name(op).strip('/').replace('/', '.') or 'rows')}.segment_index",
                                          ids)
            ids_value = rewriter.create_before(op, CONSTANT, [], [TensorType(ids.shape, ScalarType("i32"), ROW_MAJOR)],
                                               {"value": WeightAttr(name)}).result
            piece_type = result.with_shape((*shape_out[:-1], g))
            pieces.append(rewriter.create_before(op, ttir.EMBEDDING.name, [table, ids_value], [piece_type]).result)
        joined = concat_tree(rewriter, op, pieces, len(shape_out) - 1)
        if shape_out != result.shape:
            joined = rewriter.create_before(op, ttir.RESHAPE.name, [joined], [result]).result
        rewriter.replace_op(op, [joined])
        return True


    def elements(self, op: Operation, x: Value, in_shape: tuple[int, ...], steps: tuple,
                 rewriter: PatternRewriter) -> bool:
        """The element-granular fallback, for any movement of one tensor: stack the W_in columns of the input
        (one exact selection matmul, [W_in, ..., rows, 1]), untilize the stack (a page per element), look every
        output element up by a constant table shaped (*output rows, W_out) (one `ttir.embedding`, giving
        [..., W_out, 1]), transpose the last two dims (whole tiles) and regroup the [..., 1, W_out] rows into
        the result (a view or a row lookup)."""
        sources = element_sources(in_shape, steps)
        if sources is None and len(in_shape) >= 2 and in_shape[-2] <= MAX_ELEMENT_COLUMNS < in_shape[-1]:
            # wide rows: stack the columns of the input's tile transpose (its rows) instead
            perm = (*range(len(in_shape) - 2), len(in_shape) - 1, len(in_shape) - 2)
            swapped = tuple(in_shape[p] for p in perm)
            turned = rewriter.create_before(op, ttir.TRANSPOSE.name, [x], [tensor(x).with_shape(swapped)],
                                            {"perm": perm}).result
            return self.elements(op, turned, swapped, (("transpose", perm), *steps), rewriter)
        if sources is None:
            return rewriter.notify_match_failure(op, f"more than {MAX_ELEMENT_COLUMNS} input columns to stack")
        source, result = tensor(x), tensor(op.result)
        shape_in = in_shape if len(in_shape) >= 2 else (1, *in_shape)
        shape_out = result.shape if result.rank >= 2 else (1, *result.shape)
        columns = shape_in[-1]
        lifted = rewriter.create_before(op, ttir.RESHAPE.name, [x], [source.with_shape((1, *shape_in))]).result
        if columns == 1:
            stack = lifted
        else:  # at most STACK_COLUMNS columns (the product's batches) per matmul, stacked by a batch concat
            chunks = []
            for first in range(0, columns, STACK_COLUMNS):
                count = min(STACK_COLUMNS, columns - first)
                selection = np.zeros((count, *([1] * (len(shape_in) - 2)), columns, 1), np.float32)
                selection[np.arange(count), ..., first + np.arange(count), 0] = 1.0
                chunks.append(exact_matmul(rewriter, op, lifted, weight(rewriter, self.module, op, "columns",
                                                                        selection, source)))
            stack = concat_tree(rewriter, op, chunks, 0)
        stack_type = tensor(stack).with_shape((columns, *shape_in[:-1], 1))
        untilized = rewriter.create_before(op, ttir.TO_LAYOUT.name, [stack],
                                           [stack_type.with_encoding(ROW_MAJOR)]).result
        table_type = TensorType((math.prod(stack_type.shape), 1), source.element_type, ROW_MAJOR)
        table = rewriter.create_before(op, ttir.RESHAPE.name, [untilized], [table_type]).result
        ids = sources.reshape(shape_out).astype(np.int32)
        name = self.module.add_weight(f"{(node_name(op).strip('/').replace('/', '.') or 'elements')}.element_index",
                                      ids)
        ids_value = rewriter.create_before(op, CONSTANT, [], [TensorType(ids.shape, ScalarType("i32"), ROW_MAJOR)],
                                           {"value": WeightAttr(name)}).result
        looked_up = rewriter.create_before(op, ttir.EMBEDDING.name, [table, ids_value],
                                           [result.with_shape((*shape_out, 1))]).result
        lying = rewriter.create_before(op, ttir.TRANSPOSE.name, [looked_up],
                                       [result.with_shape((*shape_out[:-1], 1, shape_out[-1]))],
                                       {"perm": (*range(len(shape_out) - 1), len(shape_out), len(shape_out) - 1)})
        value = rewriter.create_before(op, ttir.RESHAPE.name, [lying.result], [result]).result
        rewriter.replace_op(op, [value])
        return True


STACK_COLUMNS = 64  # columns stacked by one selection matmul (its batches, each a unit of work)
MAX_ELEMENT_COLUMNS = 1024  # the element fallback stacks the input's columns with a [W_in, W_in] selection


def element_sources(in_shape: tuple[int, ...], steps: tuple) -> np.ndarray | None:
    """For each output element (shaped like the output), its row in the stack of the input's columns (column j,
    input row r -> j * rows + r); None past MAX_ELEMENT_COLUMNS input columns."""
    if any(kind == "concat" for kind, _ in steps):
        return None
    width = in_shape[-1] if in_shape else 1
    if width > MAX_ELEMENT_COLUMNS:
        return None
    flat = np.arange(math.prod(in_shape), dtype=np.int64).reshape(in_shape)
    for kind, arg in steps:
        flat = _apply_step(flat, kind, arg)
    rows_in = math.prod(in_shape[:-1]) if len(in_shape) >= 2 else 1
    return (flat % width) * rows_in + flat // width


def tile_prefix_then_rows(chain: list[Operation], in_shapes: tuple, steps: tuple) -> tuple[Value, np.ndarray] | None:
    """A chain whose first ops move whole tiles (a tile transpose) and whose rest moves whole rows (AffineGrid's
    [N, 3, DHW] -> [N, DHW, 3] -> [N, D, H, W, 3]): the end of that prefix, left as its own gather, and the
    source row of each output row of the rest; None when there is no such split."""
    for k in range(1, len(chain)):
        if not isinstance(gather_map_of_inputs(in_shapes, steps[:k]), Gather):
            continue
        middle = chain[k - 1].result
        rows = row_gather_map(tensor(middle).shape, steps[k:])
        if rows is not None and tensor(middle).rank >= 2:
            return middle, rows
    return None


MAX_SEGMENT_BLOCKS = 64  # column blocks of the input, and segment columns of the output
CONCAT_FAN_IN = 8  # an unaligned concat is a fused sum of its inputs' placements: a few at a time


def concat_tree(rewriter: PatternRewriter, op: Operation, pieces: list[Value], axis: int) -> Value:
    """pieces concatenated along `axis`, at most CONCAT_FAN_IN at a time (a tree of concats)."""
    while len(pieces) > 1:
        groups = [pieces[i:i + CONCAT_FAN_IN] for i in range(0, len(pieces), CONCAT_FAN_IN)]
        joined = []
        for group in groups:
            if len(group) == 1:
                joined.append(group[0])
                continue
            shape = list(tensor(group[0]).shape)
            shape[axis] = sum(tensor(v).shape[axis] for v in group)
            joined.append(rewriter.create_before(op, ttir.CONCAT.name, group, [tensor(group[0]).with_shape(tuple(shape))],
                                                 {"axis": axis}).result)
        pieces = joined
    return pieces[0]


def segment_plan(in_shape: tuple[int, ...], steps: tuple) -> tuple[int, np.ndarray] | None:
    """(g, source rows): the widest g such that every output row is whole, aligned g-element segments of
    input rows, and for each output segment its row in the stack of the input's column blocks (block j,
    input row r -> j * rows + r), shaped (*output shape[:-1], W_out / g). None for a concat or when the
    blocks exceed MAX_SEGMENT_BLOCKS."""
    if not in_shape or any(kind == "concat" for kind, _ in steps):
        return None
    flat = np.arange(math.prod(in_shape), dtype=np.int64).reshape(in_shape)
    for kind, arg in steps:
        flat = _apply_step(flat, kind, arg)
    if not flat.size:
        return None
    flat = flat.reshape(1, -1) if flat.ndim < 2 else flat
    width_in, width_out = in_shape[-1], flat.shape[-1]
    common = math.gcd(width_in, width_out)
    for g in sorted((d for d in range(1, common + 1) if common % d == 0), reverse=True):
        segments = flat.reshape(*flat.shape[:-1], width_out // g, g)
        first = segments[..., 0]
        if (first % g).any() or not (segments == first[..., None] + np.arange(g)).all():
            continue
        if width_in // g > MAX_SEGMENT_BLOCKS or width_out // g > MAX_SEGMENT_BLOCKS:
            return None
        rows_in = math.prod(in_shape[:-1]) if len(in_shape) >= 2 else 1
        return g, ((first % width_in) // g) * rows_in + first // width_in
    return None


def movement_patterns(module: Module) -> list[RewritePattern]:
    return [GatherToSlices(module), UnalignedSlice(module), UnalignedConcat(module),
            *(ReductionToDeviceForm(root) for root in REDUCTIONS),
            *(RowGather(root, module) for root in sorted(MOVEMENT_OPS - {ttir.CONCAT.name}))]
