"""`tilize`: move the computation onto the device, as tile-layout tensors in DRAM.

What it does, per function:
- Function arguments and results stay host tensors. Each argument used by device ops goes through one
  `ttir.to_layout` to `#tt.layout<tile, dram, interleaved>` (located by the argument's name); each
  returned device value comes back through a `ttir.to_layout` to the function's result type. These
  are the host<->device edges, where data is tilized and untilized. A transpose of a float argument
  (a CNN image going NCHW -> NHWC) becomes part of its edge: `to_layout {perm}`, which the host does as
  it writes the input, so no device program moves the image. Likewise an argument whose device form
  starts with a change to row-major (a reshape regrouping rows) is written row-major by the host: that
  to_layout is its edge, and no untilize program runs.
- Every other tensor gets that encoding; element types stay (`layout` later picks data formats). The
  type keeps the logical shape: the tile padding (last two dims rounded up to 32, a rank-1 tensor
  taken as [1, N]) is derived from it, never stored.
- Weights (`#tt.weight<...>` constants) get device types. A dense splat constant used by a binary
  elementwise op (or as a branch of a where) whose other operands already give the result's shape
  becomes a host `tensor<f32>` scalar (`fuse` moves it into the fused body); any other inline constant
  used on the device becomes a weight with a device type.
- Device forms are materialised: matmul transposes become `ttir.transpose` ops (folded into a new
  weight `w.transpose` when the operand is a constant); `x / y` becomes `x * reciprocal(y)` (the
  reciprocal of a constant folded, as `decompose` does for inline ones); softmax along another axis than the last is wrapped in transposes
  moving that axis last and back; layer norm over several trailing dims reshapes them into one.
  Reshape and transpose chains that cancel out are folded. Gathers with constant indices, slices and
  concats off tile boundaries and reductions get their device forms (`movement`).
- Booleans and integers (`device_types`): boolean ops become exact arithmetic on 0/1 values, and
  every boolean or integer value computed on the device becomes a float (bf16 after `layout`) when that
  is exact; what is not is a UserError naming the ONNX node. An integer or boolean graph input used
  on the device crosses the edge as a float, except token ids (embedding indices), which cross as an
  int32 row-major buffer the lookup reads its row indices from.
- Embedding tables are row-major weights (`w.rows`, `#tt.layout<row_major, dram, interleaved>`, a page
  per row): the lookup fetches whole rows by index and tilizes them. A table that is also used as a
  matrix keeps its tile-layout weight for that use.
- Float constants are saturated into the bf16 range: a finite value beyond the largest bf16 (float32's
  lowest, -3.4028235e38, is the usual mask value) would otherwise round to infinity on the device, and
  a mask of -inf turns into NaN as soon as it is multiplied by 0 or subtracted from itself.
- A function that already has `ttir.to_layout` ops is tilized: it is left alone.

Masking: the device keeps the tile padding of every tensor at zero. Kernels that could make padding
non-zero (an exp, a bias add, a reciprocal) re-mask it before writing, and reductions over a padded
dim (softmax, layer norm, the K dim of a matmul) mask the padding so it does not enter the result.
So tilize's job is only the edges and the encodings: no pad or mask op appears in the IR.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ttc.ir.attributes import DenseAttr, NameLoc, UnknownLoc, WeightAttr
from ttc.ir.core import RETURN_OP, Function, Module, Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialect import Trait
from ttc.ir.dialects import ttir, ttmetal
from ttc.ir.dialects.tt import LayoutAttr
from ttc.ir.dialects.ttir import normalize_axis, window_edge
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.canonicalize import (
    FoldConstantOperands,
    IdentityTranspose,
    ReshapeOfReshape,
    ReshapeToSameType,
    TransposeOfTranspose,
    referenced_weights,
)
from ttc.passes.decompose import DivByConstant, DivByTensor, RsqrtOfSqrt
from ttc.passes.device_types import boolean_patterns, legalize
from ttc.passes.manager import Pass, register_pass
from ttc.passes.movement import movement_patterns
from ttc.passes.ops.geometry import is_row_major
from ttc.passes.rewriter import PatternRewriter, RewritePattern, apply_patterns_greedily, defining_op
from ttc.passes.windows import window_patterns

DEVICE_LAYOUT = LayoutAttr("tile", "dram", "interleaved")
ROW_MAJOR_LAYOUT = LayoutAttr("row_major", "dram", "interleaved")
F32 = ScalarType("f32")
I32 = ScalarType("i32")
BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
CONSTANT = ttir.CONSTANT.name
TO_LAYOUT = ttir.TO_LAYOUT.name
HOST_COMPUTE = ttmetal.HOST_COMPUTE.name


def device_type(type: TensorType) -> TensorType:
    """`type` as a device tensor: same shape and element type, tile layout in DRAM."""
    return type.with_encoding(DEVICE_LAYOUT)


def is_host_float(value: Value) -> bool:
    """A float tensor without a layout: a value tilize moves to the device."""
    t = value.type
    return isinstance(t, TensorType) and t.encoding is None and t.element_type.is_float


def node_name(op: Operation) -> str:
    """The ONNX node(s) an op comes from, for error messages."""
    return ", ".join(op.loc.names()) or str(op.loc)


def swap_perm(rank: int, axis: int) -> tuple[int, ...]:
    """The permutation exchanging `axis` and the last dim (its own inverse)."""
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return tuple(perm)


def permuted(type: TensorType, perm: tuple[int, ...]) -> TensorType:
    return type.with_shape(tuple(type.shape[p] for p in perm))


# ----------------------------------------------------------------------------------------------
# Device forms


class MaterializeMatmulTranspose(RewritePattern):
    """matmul {transpose_a/b = true} -> an explicit ttir.transpose of that operand, flags false."""

    root = ttir.MATMUL.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        flags = (op.attr("transpose_a"), op.attr("transpose_b"))
        if not any(flags):
            return rewriter.notify_match_failure(op, "no transposed operand")
        operands = list(op.operands)
        for index, flag in enumerate(flags):
            t = operands[index].type
            assert isinstance(t, TensorType)
            if flag and t.rank >= 2:
                perm = swap_perm(t.rank, t.rank - 2)
                operands[index] = rewriter.create_before(
                    op, ttir.TRANSPOSE.name, [operands[index]], [permuted(t, perm)], {"perm": perm}).result
        with rewriter.modify_op(op):
            op.set_operands(operands)
            op.attributes.update(transpose_a=False, transpose_b=False)
        return True


class SoftmaxToLastAxis(RewritePattern):
    """softmax along axis k -> transpose(k <-> last), softmax along the last axis, transpose back."""

    root = ttir.SOFTMAX.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x = op.operands[0]
        assert isinstance(x.type, TensorType)
        rank = x.type.rank
        axis = normalize_axis(op.attr("axis"), rank)
        if axis >= rank - 1:
            return rewriter.notify_match_failure(op, "already along the last axis")
        perm = swap_perm(rank, axis)
        moved = rewriter.create_before(op, ttir.TRANSPOSE.name, [x], [permuted(x.type, perm)], {"perm": perm})
        softmax = rewriter.create_before(op, ttir.SOFTMAX.name, [moved.result], [moved.result.type],
                                         {"axis": rank - 1})
        back = rewriter.create_before(op, ttir.TRANSPOSE.name, [softmax.result], [op.result.type], {"perm": perm})
        rewriter.replace_op(op, [back.result])
        return True


class LayerNormToLastAxis(RewritePattern):
    """layer norm over dims [k, rank) -> reshape them into one dim, layer norm over it, reshape back."""

    root = ttir.LAYER_NORM.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x = op.operands[0]
        assert isinstance(x.type, TensorType)
        rank = x.type.rank
        axis = normalize_axis(op.attr("axis"), rank)
        if axis >= rank - 1:
            return rewriter.notify_match_failure(op, "already along the last axis")
        size = math.prod(x.type.shape[axis:])
        for param in op.operands[1:]:
            assert isinstance(param.type, TensorType)
            if param.type.num_elements != size:
                raise UserError(f"node '{node_name(op)}': layer norm over dims {axis}..{rank - 1} with a scale "
                                f"or bias of shape {list(param.type.shape)} that broadcasts is not supported")
        flat = [rewriter.create_before(op, ttir.RESHAPE.name, [x], [x.type.with_shape((*x.type.shape[:axis], size))])]
        for param in op.operands[1:]:
            assert isinstance(param.type, TensorType)
            flat.append(rewriter.create_before(op, ttir.RESHAPE.name, [param], [param.type.with_shape((size,))]))
        attributes = {**op.attributes, "axis": axis}
        norm = rewriter.create_before(op, ttir.LAYER_NORM.name, [f.result for f in flat], [flat[0].result.type],
                                      attributes)
        back = rewriter.create_before(op, ttir.RESHAPE.name, [norm.result], [op.result.type])
        rewriter.replace_op(op, [back.result])
        return True


class FoldConstantMovement(FoldConstantOperands):
    """Fold the transposes, reshapes and reciprocals tilize makes of constants (into new weights)."""

    FOLDED = frozenset({ttir.TRANSPOSE.name, ttir.RESHAPE.name, ttir.RECIPROCAL.name})

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if op.name not in self.FOLDED:
            return False
        return super().match_and_rewrite(op, rewriter)


def device_form_patterns(module: Module) -> list[RewritePattern]:
    return [FoldConstantMovement(module), MaterializeMatmulTranspose(), SoftmaxToLastAxis(),
            LayerNormToLastAxis(), DivByConstant(), DivByTensor(), RsqrtOfSqrt(), ReshapeToSameType(), ReshapeOfReshape(),
            IdentityTranspose(), TransposeOfTranspose(), *window_patterns(module), *movement_patterns(module)]


# ----------------------------------------------------------------------------------------------
# Types, constants and edges


def saturate(array: np.ndarray) -> np.ndarray:
    """Finite values clipped to the bf16 range (infinities and NaN stay); `array` itself when nothing moves."""
    if array.dtype.kind != "f" or array.dtype.itemsize < 4 or not array.size:
        return array  # f16 and bf16 never exceed bf16's range
    if array.min() >= -BF16_MAX and array.max() <= BF16_MAX:  # two fast passes; NaN fails them
        return array
    finite = np.isfinite(array)
    if not (np.abs(array[finite]) > BF16_MAX).any():
        return array
    return np.where(finite, np.clip(array, -BF16_MAX, BF16_MAX), array).astype(array.dtype)


def saturate_constants(module: Module, func: Function) -> None:
    """Every float constant of the function within the bf16 range (see the module doc)."""
    for op in func.body.ops:
        if op.name != CONSTANT or not is_host_float(op.result):
            continue
        value = op.attributes["value"]
        if isinstance(value, DenseAttr):
            clipped = saturate(np.asarray(value.values))
            if clipped is not value.values:
                op.attributes["value"] = DenseAttr(value.type, clipped)
        elif value.name in module.weights:
            data = np.asarray(module.weights[value.name])
            clipped = saturate(data)
            if clipped is not data:
                module.weights[value.name] = clipped


def place_embedding_tables(module: Module, func: Function, rewriter: PatternRewriter) -> None:
    """Each embedding's table becomes a row-major device weight of its own (see the module doc)."""
    for op in list(func.body.ops):
        if op.name != ttir.EMBEDDING.name:
            continue
        if is_row_major(op.operands[0]):
            continue  # rows already (a row gather of `movement`)
        table = defining_op(op.operands[0], CONSTANT)
        if table is None:  # a computed table: untilized into rows on the device
            source = op.operands[0]
            assert isinstance(source.type, TensorType)
            rows = rewriter.create_before(op, TO_LAYOUT, [source], [source.type.with_encoding(ROW_MAJOR_LAYOUT)],
                                          loc=op.loc)
            with rewriter.modify_op(op):
                op.set_operand(0, rows.result)
            continue
        assert isinstance(table.result.type, TensorType)
        row_major = table.result.type.with_encoding(ROW_MAJOR_LAYOUT)
        value = table.attributes["value"]
        data = value.to_array() if isinstance(value, DenseAttr) else module.weights[value.name]
        name = module.add_weight(f"{weight_name(table)}.rows", np.asarray(data))
        rows = rewriter.create_before(table, CONSTANT, [], [row_major], {"value": WeightAttr(name)}, loc=table.loc)
        with rewriter.modify_op(op):
            op.set_operand(0, rows.result)
        if not table.result.uses:
            rewriter.erase_op(table)


def takes_scalar(user: Operation, index: int) -> bool:
    """Whether operand `index` of `user` may be a host scalar: a broadcasting elementwise op (binary, or a
    where's branch) whose other operands are computed values that give the result's shape without it
    (so the scalar does not decide the shape)."""
    opdef = user.opdef
    if opdef is None or not opdef.has(Trait.BROADCASTABLE) or len(user.operands) not in (2, 3):
        return False
    if user.name == ttir.WHERE.name and index == 0:
        return False  # the condition is data
    others = [v for i, v in enumerate(user.operands) if i != index and defining_op(v, CONSTANT) is None]
    result = user.result.type
    assert isinstance(result, TensorType)
    shapes = [v.type.shape for v in others if isinstance(v.type, TensorType)]
    return bool(shapes) and tuple(np.broadcast_shapes(*shapes)) == result.shape


def weight_name(op: Operation) -> str:
    """A weight name from the constant's ONNX name: "/half/Constant" -> "half.Constant"."""
    names = op.loc.names()
    return re.sub(r"[^A-Za-z0-9_.]+", ".", names[0]).strip(".") if names else "constant"


def place_constant(module: Module, op: Operation, rewriter: PatternRewriter) -> None:
    """Give a float constant its device form: host scalars for the uses that take one, a weight with
    a device type for the others."""
    value, result = op.attributes["value"], op.result
    assert isinstance(result.type, TensorType)
    if result.type.num_elements == 0:
        check_empty_constant(op)
        return
    splat = isinstance(value, DenseAttr) and value.is_splat
    scalar_uses = [(user, i) for user, i in result.uses if splat and takes_scalar(user, i)]
    if result.type.rank == 0 and len(scalar_uses) == len(result.uses):
        return  # a host scalar already
    if scalar_uses:
        assert isinstance(value, DenseAttr)
        scalar_type = TensorType((), result.type.element_type)
        scalar = rewriter.create_before(op, CONSTANT, [], [scalar_type], {"value": DenseAttr(scalar_type, value.values)})
        for user, i in scalar_uses:
            with rewriter.modify_op(user):
                user.set_operand(i, scalar.result)
    if not result.uses:
        rewriter.erase_op(op)
        return
    with rewriter.modify_op(op):
        if isinstance(value, DenseAttr):
            op.attributes["value"] = WeightAttr(module.add_weight(weight_name(op), value.to_array()))
        result.type = device_type(result.type)


def check_empty_constant(op: Operation) -> None:
    """A constant without elements stays a host tensor: the function may return it (its type is its whole
    value, `lower-to-kernels` makes it on the host), no device op may take it."""
    users = [user for user, _ in op.result.uses if user.name != RETURN_OP]
    if users:
        raise UserError(f"node '{node_name(users[0])}': '{users[0].name}' takes the empty tensor "
                        f"{op.result.type} of node '{node_name(op)}'; tensors without elements have no device "
                        "layout, and the importer folds what depends only on their shape")


def add_encodings(func: Function, rewriter: PatternRewriter) -> None:
    """Every float tensor computed in the body (constants aside: they are placed already) goes on the device."""
    for op in func.body.ops:
        if op.name in (RETURN_OP, CONSTANT, TO_LAYOUT, HOST_COMPUTE):
            continue
        changed = False
        for result in op.results:
            if is_host_float(result):
                assert isinstance(result.type, TensorType)
                if result.type.num_elements == 0:
                    raise UserError(f"node '{node_name(op)}': '{op.name}' computes an empty tensor {result.type}; "
                                    "tensors without elements have no device layout")
                result.type = device_type(result.type)
                changed = True
        if changed:
            rewriter.notify_op_modified(op)


def permute_inputs_on_host(func: Function, rewriter: PatternRewriter) -> None:
    """A transpose of a float argument becomes its host -> device edge, `to_layout {perm}`: the host permutes
    the input as it writes it, and no device program moves it (a CNN's image going NCHW -> NHWC for its
    channels-last convolutions, an NHWC input going to NCHW); a `ttir.im2col` of one, `to_layout {window}`.
    Transposes and reshapes that cancel are folded first, so only a movement that remains is done on the host."""
    apply_patterns_greedily(func.op, [TransposeOfTranspose(), IdentityTranspose(), ReshapeOfReshape(),
                                      ReshapeToSameType()], rewriter=rewriter)
    for arg in func.args:
        if not isinstance(arg.type, TensorType) or not arg.type.element_type.is_float:
            continue
        permuted: dict[tuple[int, ...], Value] = {}
        for user, _ in list(arg.uses):
            if user.name == ttir.RESHAPE.name:
                split_on_host(func, arg, user, rewriter)
                continue
            if user.name == ttir.IM2COL.name:  # the host writes the im2col matrix (frontend: host_im2col)
                window = window_edge(user.attr("kernel"), user.attr("strides"), user.attr("pads"),
                                     user.attr("dilations"))
                edge = rewriter.create_before(func.body.ops[0], TO_LAYOUT, [arg], [device_type(user.result.type)],
                                              {"window": window}, loc=user.loc).result
                rewriter.replace_op(user, edge)
                continue
            if user.name != ttir.TRANSPOSE.name:
                continue
            perm = tuple(user.attr("perm"))
            if perm not in permuted:
                permuted[perm] = rewriter.create_before(func.body.ops[0], TO_LAYOUT, [arg],
                                                        [device_type(user.result.type)],
                                                        {"perm": perm}, loc=user.loc).result
            rewriter.replace_op(user, permuted[perm])


def split_on_host(func: Function, arg: Value, reshape: Operation, rewriter: PatternRewriter) -> None:
    """reshape -> transpose (-> reshape) of a float argument, each the only reader of the one before (a patch
    embedding's space-to-depth: [N, C, OH, KH, OW, KW] -> [N, OH, OW, C, KH, KW] -> [N*OH*OW, C*KH*KW]) becomes
    its host -> device edge, `to_layout {split, perm}`: the host regroups the input as it writes it, in the
    shape the last step gives, and no device program moves it."""
    users = [user for user, _ in reshape.result.uses]
    if len(users) != 1 or users[0].name != ttir.TRANSPOSE.name:
        return
    transpose = users[0]
    last = transpose
    following = [user for user, _ in transpose.result.uses]
    if len(following) == 1 and following[0].name == ttir.RESHAPE.name:
        last = following[0]
    edge = rewriter.create_before(func.body.ops[0], TO_LAYOUT, [arg], [device_type(last.result.type)],
                                  {"perm": tuple(transpose.attr("perm")),
                                   "split": tuple(tensor_shape(reshape.result))}, loc=transpose.loc).result
    rewriter.replace_op(last, edge)
    for op in (transpose, reshape) if last is not transpose else (reshape,):
        if not op.result.uses:
            rewriter.erase_op(op)


def tensor_shape(value: Value) -> tuple[int, ...]:
    assert isinstance(value.type, TensorType)
    return tuple(value.type.shape)


def add_host_to_device(value: Value, anchor: Operation, loc, where: str, rewriter: PatternRewriter) -> None:
    """A to_layout host -> device before `anchor` for each device type the host `value` is used as (a use by
    a to_layout already is an edge: the permuted or row-major writes above)."""
    uses = [(user, i) for user, i in value.uses if user.name not in (RETURN_OP, HOST_COMPUTE, TO_LAYOUT)]
    if not uses or not isinstance(value.type, TensorType) or value.type.encoding is not None:
        return
    if value.type.num_elements == 0:
        raise UserError(f"{where} is an empty tensor {value.type}; tensors without elements have no device layout")
    edges: dict[TensorType, Value] = {}
    for user, i in uses:
        target = edge_type(value, user, i)
        if target not in edges:
            edges[target] = rewriter.create_before(anchor, TO_LAYOUT, [value], [target], loc=loc).result
        with rewriter.modify_op(user):
            user.set_operand(i, edges[target])


def edge_type(arg: Value, user: Operation, index: int) -> TensorType:
    """The device type an argument crosses the edge as for one use: token ids (embedding indices) as an
    int32 row-major buffer, everything else as a tile-layout float."""
    assert isinstance(arg.type, TensorType)
    if user.name == ttir.EMBEDDING.name and index == 1:
        return TensorType(arg.type.shape, I32, ROW_MAJOR_LAYOUT)
    return device_type(arg.type if arg.type.element_type.is_float else arg.type.with_element_type(F32))


def add_edges(func: Function, rewriter: PatternRewriter, host_types: dict[tuple[int, int], TensorType]) -> None:
    """to_layout host -> device after each used argument and host op result (one per device type it is used
    as), device -> host before the return and before host ops (as the types they had before `legalize`,
    `host_types`)."""
    anchor = func.body.ops[0]
    for index, arg in enumerate(func.args):
        name = func.arg_attrs(index).get("ttir.name")
        add_host_to_device(arg, anchor, NameLoc(name) if isinstance(name, str) else UnknownLoc(),
                           f"graph input '{name}'", rewriter)
    for op in list(func.body.ops):
        if op.name != HOST_COMPUTE:
            continue
        for i, value in enumerate(op.operands):
            if isinstance(value.type, TensorType) and value.type.encoding is not None:
                read = rewriter.create_before(op, TO_LAYOUT, [value], [host_types[(id(op), i)]], loc=op.loc)
                with rewriter.modify_op(op):
                    op.set_operand(i, read.result)
        ops = func.body.ops
        following = ops[ops.index(op) + 1]
        for result in op.results:
            add_host_to_device(result, following, op.loc, f"node '{node_name(op)}'", rewriter)
    ret = func.return_op
    to_host: dict[tuple[int, object], Value] = {}  # one read per value and host type
    for index, value in enumerate(ret.operands):
        t = value.type
        if not isinstance(t, TensorType) or t.encoding is None:
            continue
        host = func.type.results[index]
        key = (id(value), host)
        if key not in to_host:
            name = func.res_attrs(index).get("ttir.name")
            producer = defining_op(value)
            loc = NameLoc(name) if isinstance(name, str) else producer.loc if producer else UnknownLoc()
            to_host[key] = rewriter.create_before(ret, TO_LAYOUT, [value], [host], loc=loc).result
        with rewriter.modify_op(ret):
            ret.set_operand(index, to_host[key])


@register_pass
@dataclass
class Tilize(Pass):
    """Put tensors on the device (tile layout, DRAM) with host<->device edges; materialise device forms."""

    name = "tilize"

    def run(self, module: Module) -> None:
        functions = [f for f in module.functions if not any(op.name == TO_LAYOUT for op in f.body.ops)]
        in_use_before = referenced_weights(module)
        rewriter = PatternRewriter()
        host_types = {(id(op), i): v.type for f in functions for op in f.body.ops if op.name == HOST_COMPUTE
                      for i, v in enumerate(op.operands)}
        for func in functions:
            permute_inputs_on_host(func, rewriter)
            apply_patterns_greedily(func.op, [*device_form_patterns(module), *boolean_patterns()], rewriter=rewriter)
            legalize(module, func, rewriter)
            saturate_constants(module, func)
            place_embedding_tables(module, func, rewriter)
        for name in in_use_before - referenced_weights(module):
            module.weights.pop(name, None)  # weights folded or converted into new ones (w -> w.transpose)
        for func in functions:
            for op in list(func.body.ops):
                if op.name == CONSTANT and is_host_float(op.result):
                    place_constant(module, op, rewriter)
            add_encodings(func, rewriter)
            add_edges(func, rewriter, host_types)
