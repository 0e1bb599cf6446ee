"""`fuse`: make each device op do as much as it can in one pass over its data.

- Every `ttir.matmul` becomes a `ttir.linear(a, b, bias?) {activation, transpose_b}`: the bias is a
  following `add` of a row ([N] or [1, N], N the last result dim), the activation a following relu,
  gelu, sigmoid or tanh, also behind a reshape (GPT-2's Conv1D views its 2-D product as [1, S, N] before the
  GELU: the linear takes the activation and the reshape follows it). Then a residual add (a full device tensor
  of the sum's shape, also behind that reshape) and a relu/gelu/tanh after it join as `residual = true` (the
  residual its last operand) and `residual_activation`: the epilogue adds the residual's tiles to the packed
  result as the eltwise program would have (the same bits; `fuse{residual=false}` keeps them apart). An op
  joins only when the value before it has no other use.
- A convolution input's channel widening (`windows.padded_channels`: x @ eye(C, Cp)) of a linear's result that
  nothing else reads, by a constant weight and bias with an activation keeping zero, becomes that linear by its
  weight and bias widened with zero columns (`WidenedLinear`): the same tiles, one program less.
- Every maximal chain of elementwise ops (a single op too) becomes one `ttir.eltwise(inputs...)`.
  The body's block arguments mirror the inputs (each distinct value once); the body holds the
  original ops in program order, preceded by the host `tensor<f32>` splat constants they use, and
  ends with `ttir.yield`. Inputs broadcast numpy-style to the result, as the ops did. A chain is a
  tree: an op joins its user's chain only when its result has that single use, so a value also used
  elsewhere stays the result of its own fused op, and only while the chain keeps at most 16 distinct
  inputs (a CB each): a longer sum (an unaligned concat of 40 steps) becomes several fused ops.
- Divisions become products first (`x * reciprocal(y)`, or `x * (1 / c)` for a constant c): `tilize`
  already did this; here it guarantees that no division reaches a fused body.

Locations: a fused op's location fuses those of the ops it contains in program order, each name at
its last occurrence, so the last ONNX node of the chain (the one whose value it computes) comes last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ttc.ir.attributes import DenseAttr, FusedLoc, Location, WeightAttr, fuse_locations
from ttc.ir.builder import Builder
from ttc.ir.core import FUNC_OP, Block, Module, Operation, Region, Value
from ttc.ir.dialect import Trait
from ttc.ir.dialects import ttir
from ttc.ir.types import TensorType
from ttc.passes.decompose import DivByConstant, DivByTensor, RsqrtOfSqrt
from ttc.passes.manager import Pass, register_pass
from ttc.passes.movement import constant_array
from ttc.passes.ops.eltwise_body import keeps_zero
from ttc.passes.ops.geometry import tensor
from ttc.passes.rewriter import PatternRewriter, RewritePattern, apply_patterns_greedily, defining_op

ACTIVATIONS = {ttir.RELU.name: "relu", ttir.GELU.name: "gelu", ttir.SIGMOID.name: "sigmoid", ttir.TANH.name: "tanh",
               ttir.HARDSWISH.name: "hardswish"}


def in_function_body(op: Operation) -> bool:
    parent = op.parent_op
    return parent is not None and parent.name == FUNC_OP


def sole_user(value: Value) -> Operation | None:
    """The op using `value`, when that is its only use."""
    return value.uses[0][0] if len(value.uses) == 1 else None


def ordered_loc(ops: Sequence[Operation]) -> Location:
    """The fused location of `ops` (in program order) with each name at its last occurrence."""
    items: list[Location] = []
    for op in ops:
        for item in op.loc.locations if isinstance(op.loc, FusedLoc) else (op.loc,):
            if item in items:
                items.remove(item)
            items.append(item)
    return fuse_locations(*items)


# ----------------------------------------------------------------------------------------------
# Matmul epilogues


def activation_of(op: Operation) -> str:
    """The SFPU function of an activation op (the tanh form of GELU is its own function)."""
    if op.name == ttir.GELU.name and op.attributes.get("approximate") == "tanh":
        return "gelu_tanh"
    return ACTIVATIONS[op.name]


def is_bias_row(value: Value, result: TensorType) -> bool:
    """A [N] or [1, N] row, N the last dim of the matmul result."""
    if not result.shape or not isinstance(value.type, TensorType):
        return False
    n = result.shape[-1]
    return value.type.shape in ((n,), (1, n))


RESIDUAL_ACTIVATIONS = frozenset({"relu", "gelu", "gelu_tanh", "tanh"})  # f(0) = 0: the padding stays zero


def residual_of(add: Operation, value: Value, product: Sequence[int]) -> Value | None:
    """The other operand of `add` when it is a full tensor of `value`'s shape (a residual), not `value` itself,
    laid out in the tiles of the `product` shape the linear computes (a rank-0 Scan step's is not)."""
    if add.name != ttir.ADD.name or add.result.type != value.type or len(add.operands) != 2:
        return None
    other = add.operands[1] if add.operands[0] is value else add.operands[0]
    if other is value or not isinstance(other.type, TensorType) or not isinstance(value.type, TensorType):
        return None
    if other.type.shape != value.type.shape or other.type.encoding is None or not other.type.element_type.is_float:
        return None
    return other if ttir.holds_tiles_of(other.type.shape, product) else None


class FuseLinear(RewritePattern):
    """matmul [-> add of a bias row] [-> reshape] [-> relu/gelu/sigmoid/tanh] [-> add of a residual
    [-> relu/gelu/tanh]] -> one ttir.linear (the reshape, if any, then follows it)."""

    root = ttir.MATMUL.name

    def __init__(self, residual: bool = True) -> None:
        self.residual = residual

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if not in_function_body(op) or op.attr("transpose_a"):
            return rewriter.notify_match_failure(op, "not in a function body, or a transposed a")
        group, value, bias, activation = [op], op.result, None, "none"
        assert isinstance(value.type, TensorType)
        product_type = value.type
        add = sole_user(value)
        if add is not None and add.name == ttir.ADD.name and add.result.type == value.type:
            other = add.operands[1] if add.operands[0] is value else add.operands[0]
            if is_bias_row(other, value.type):
                group, value, bias = [*group, add], add.result, other
        # an activation, or a residual add, after a reshape of the product (GPT-2's Conv1D: a 2-D product viewed
        # as [1, S, N]) commutes with it: the linear takes them and the reshape follows it
        user, view = sole_user(value), None
        if user is not None and user.name == ttir.RESHAPE.name:
            after = sole_user(user.result)
            if after is not None and ((after.name in ACTIVATIONS and after.result.type == user.result.type) or
                                      (self.residual and residual_of(after, user.result, product_type.shape) is not None)):
                view, value = user, user.result
        act = sole_user(value)
        if act is not None and act.name in ACTIVATIONS and act.result.type == value.type:
            activation = activation_of(act)
            group, value = [*group, act], act.result
        residual, post = None, None
        add = sole_user(value) if self.residual else None
        if add is not None and (residual := residual_of(add, value, product_type.shape)) is not None:
            group, value = [*group, add], add.result
            post = sole_user(value)
            if post is not None and post.name in ACTIVATIONS and post.result.type == value.type and \
                    activation_of(post) in RESIDUAL_ACTIVATIONS:
                group, value = [*group, post], post.result
            else:
                post = None
        if view is not None and len(group) == 1 + (bias is not None):  # the reshape led to nothing fusible
            view, value = None, group[-1].result
        operands = [*op.operands, *([bias] if bias is not None else []), *([residual] if residual is not None else [])]
        attributes = {"activation": activation, "transpose_b": op.attr("transpose_b")}
        if residual is not None:
            attributes["residual"] = True
            attributes["residual_activation"] = activation_of(post) if post is not None else "none"
        if "tt.math_fidelity" in op.attributes:  # pinned (exact selection matmuls of `movement`)
            attributes["tt.math_fidelity"] = op.attributes["tt.math_fidelity"]
        last = group[-1]  # every operand (a residual too) is defined before it
        linear = rewriter.create_before(last, ttir.LINEAR.name, operands,
                                        [product_type if view is not None else value.type], attributes,
                                        loc=ordered_loc(group))
        result = linear.result
        if view is not None:  # linear {activation, residual} -> the reshape, in place of the last op
            result = rewriter.create_before(last, ttir.RESHAPE.name, [linear.result], [value.type],
                                            dict(view.attributes), loc=view.loc).result
        rewriter.replace_op(last, [result])
        members = group[:-1]
        if view is not None:  # erase in reverse program order: users before their producers
            members = [*members, view]
        for fused in sorted(members, key=lambda o: o.parent.index_of(o), reverse=True):
            rewriter.erase_op(fused)
        return True


class WidenedLinear(RewritePattern):
    """linear(x, S) with S a constant [C, Cp] that selects x's C columns into the first C of Cp (the identity, then
    zero columns; Cp within C's tiles: `windows.padded_channels` widens a convolution's input to whole tiles of
    channels so), and x a linear by a constant weight (and bias) with an activation keeping zero, used only here
    -> that linear by its weight and bias widened with zero columns, of result [.., Cp].

    Its tiles are the product's, computed the same way: the padding columns of every device tensor are zero
    (docs/passes.md), and here they are the widened columns, zero as S's product makes them (with finite values:
    an inf or NaN makes NaN there either way, in the linear's operand here, in its result there). The selection
    (a program, its launch and a pass over the data) is gone."""

    root = ttir.LINEAR.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if len(op.operands) != 2 or op.attr("transpose_b") or op.attributes.get("activation", "none") != "none":
            return rewriter.notify_match_failure(op, "not a plain product by a matrix")
        x, selection = op.operands
        producer = defining_op(x, ttir.LINEAR.name)
        if producer is None or sole_user(x) is not op or producer.attributes.get("residual"):
            return rewriter.notify_match_failure(op, "not the only reader of a linear without a residual")
        activation = producer.attributes.get("activation", "none")
        if activation != "none" and not keeps_zero(activation, 0.0):
            return rewriter.notify_match_failure(op, f"the linear's activation {activation} moves zero")
        s = constant_array(self.module, selection)
        shape = tensor(x).shape
        if s is None or s.ndim != 2 or not shape or s.shape[0] != shape[-1]:
            return rewriter.notify_match_failure(op, "not a constant matrix of x's columns")
        c, cp = s.shape
        if not (c < cp <= -(-c // 32) * 32) or not np.array_equal(s, np.eye(c, cp, dtype=s.dtype)):
            return rewriter.notify_match_failure(op, "not the widening of x's columns within their tiles")
        w_value, bias = producer.operands[1], ttir.linear_bias(producer)
        w = constant_array(self.module, w_value)
        b = constant_array(self.module, bias) if bias is not None else None
        transposed = bool(producer.attr("transpose_b"))
        if w is None or w.ndim != 2 or w.shape[0 if transposed else 1] != c or (bias is not None and b is None):
            return rewriter.notify_match_failure(op, "the linear's weight (or bias) is not a constant matrix (row)")

        def widened(value: Value, array: np.ndarray, axis: int, suffix: str) -> Value:
            pad = [(0, 0)] * array.ndim
            pad[axis] = (0, cp - c)
            array = np.pad(array, pad)
            name = self.module.add_weight(f"{constant_name(value)}.{suffix}", array)
            return rewriter.create_before(producer, ttir.CONSTANT.name, [], [tensor(value).with_shape(array.shape)],
                                          {"value": WeightAttr(name)}).result

        operands = [producer.operands[0], widened(w_value, w, 0 if transposed else 1, f"widened{cp}")]
        if bias is not None:
            assert b is not None
            operands.append(widened(bias, b, b.ndim - 1, f"widened{cp}"))
        linear = rewriter.create_before(producer, ttir.LINEAR.name, operands,
                                        [tensor(producer.result).with_shape(tensor(op.result).shape)],
                                        dict(producer.attributes), loc=producer.loc)
        rewriter.replace_op(op, [linear.result])
        rewriter.erase_op(producer)
        return True


def constant_name(value: Value) -> str:
    """The weight name of a weight constant (a stem for weights made from it), else "constant"."""
    op = defining_op(value, ttir.CONSTANT.name)
    attr = op.attributes.get("value") if op is not None else None
    return attr.name if isinstance(attr, WeightAttr) else "constant"


# ----------------------------------------------------------------------------------------------
# Elementwise chains


def is_fusible(op: Operation) -> bool:
    """An elementwise op on float tensors at function level (not yet inside a fused body)."""
    opdef = op.opdef
    if opdef is None or not opdef.has(Trait.ELEMENTWISE) or len(op.results) != 1:
        return False
    t = op.result.type
    return isinstance(t, TensorType) and t.element_type.is_float and in_function_body(op)


def is_body_constant(value: Value) -> bool:
    """A host scalar splat constant: it moves into the fused body instead of being an input."""
    op = defining_op(value, ttir.CONSTANT.name)
    attr = op.attributes.get("value") if op is not None else None
    return isinstance(attr, DenseAttr) and attr.is_splat and isinstance(value.type, TensorType) and \
        value.type.encoding is None and value.type.rank == 0


MAX_INPUTS = 16  # a fused eltwise reads each input from its own CB, below the output CB (CB_OUT)


def outside_inputs(op: Operation) -> set[int]:
    return {id(v) for v in op.operands if not is_body_constant(v)}


def chain_of(root: Operation) -> list[Operation]:
    """`root` and the fusible ops feeding it whose results have no other use, in program order; a producer
    joins only while the chain keeps at most MAX_INPUTS distinct inputs (a long sum of many terms, e.g. an
    unaligned concat of 40 steps, becomes several fused ops, each its own chain)."""
    members: list[Operation] = []
    inputs = outside_inputs(root)
    stack = [root]
    while stack:
        op = stack.pop()
        members.append(op)
        for value in op.operands:
            producer = defining_op(value)
            if producer is not None and len(value.uses) == 1 and is_fusible(producer):
                joined = (inputs - {id(value)}) | outside_inputs(producer)
                if len(joined) <= MAX_INPUTS:
                    inputs = joined
                    stack.append(producer)
    block = root.parent
    assert block is not None
    return sorted(members, key=block.index_of)


def build_body(members: Sequence[Operation]) -> tuple[list[Value], Block]:
    """The eltwise inputs and a body block computing the chain from them."""
    inside = {id(op.result) for op in members}
    inputs: list[Value] = []
    constants: list[Operation] = []
    for op in members:
        for value in op.operands:
            if id(value) in inside:
                continue
            producer = defining_op(value)
            if is_body_constant(value) and producer is not None:
                if producer not in constants:
                    constants.append(producer)
            elif value not in inputs:
                inputs.append(value)
    block = Block([v.type for v in inputs])
    mapping: dict[int, Value] = {id(v): arg for v, arg in zip(inputs, block.args, strict=True)}
    builder = Builder.at_end(block)
    for op in [*constants, *members]:
        clone = builder.create(op.name, [mapping[id(v)] for v in op.operands], op.result_types,
                               dict(op.attributes), op.loc)
        mapping[id(op.result)] = clone.result
    builder.create(ttir.YIELD.name, [mapping[id(members[-1].result)]], loc=members[-1].loc)
    return inputs, block


def chain_root(op: Operation) -> Operation:
    """The last op of the longest chain of sole fusible users from `op`."""
    while True:
        user = sole_user(op.result)
        if user is None or not is_fusible(user):
            return op
        op = user


class FuseEltwise(RewritePattern):
    """A maximal chain of elementwise ops ending at this op -> one ttir.eltwise with the chain as body."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if not is_fusible(op):
            return False
        user = sole_user(op.result)
        if user is not None and is_fusible(user) and op in chain_of(chain_root(user)):
            return rewriter.notify_match_failure(op, "joins the chain of its only user")
        members = chain_of(op)
        inputs, body = build_body(members)
        eltwise = rewriter.create_before(op, ttir.ELTWISE.name, inputs, [op.result.type], loc=ordered_loc(members))
        eltwise.add_region(Region([body]))
        rewriter.replace_op(op, [eltwise.result])
        for fused in reversed(members[:-1]):
            rewriter.erase_op(fused)
        return True


MASKED_SOFTMAX_MAX_TILES = 32  # rows of up to this many tiles take an additive mask into the softmax


class FuseSoftmaxMask(RewritePattern):
    """softmax(x + m), softmax(x * c + m) or softmax(x * c) along the last axis (c a splat constant), where that
    is an eltwise of those ops alone whose only user is the softmax and m broadcasts to x along batch dims and rows
    only (an attention's scale and mask: [B, 1, S, S], [B, 1, 1, S] or [S] added to [B, H, S, S] scores) ->
    softmax(x, m) {scale = c}: the softmax kernel computes x * c + m as it reads x (the eltwise's phases, so the
    same bits), and the sum makes no DRAM round trip of its own. Rows of at most MASKED_SOFTMAX_MAX_TILES tiles
    (the masked kernels hold the row, or a split plan's slice of it, whole: no row-chunked plan)."""

    def __init__(self, weights: dict[str, np.ndarray] | None = None) -> None:
        self.weights = weights or {}

    def is_zero(self, value: Value) -> bool:
        """A constant whose every element is 0 (ViT's folded [B, 1, S, S] attention mask): x + it is x."""
        producer = defining_op(value)
        if producer is None or producer.name != ttir.CONSTANT.name:
            return False
        data = producer.attributes.get("value")
        if isinstance(data, WeightAttr):
            array = self.weights.get(data.name)
            return array is not None and not np.any(array)
        return isinstance(data, DenseAttr) and data.is_splat and float(data.values) == 0.0

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if op.name != ttir.SOFTMAX.name or len(op.operands) != 1 or op.attr("scale") != 1.0 \
                or not in_function_body(op):
            return False
        out = op.result.type
        if not isinstance(out, TensorType) or out.rank < 2 or op.attr("axis") % out.rank != out.rank - 1 \
                or -(-out.shape[-1] // 32) > MASKED_SOFTMAX_MAX_TILES:
            return False
        producer = defining_op(op.operands[0])
        if producer is None or producer.name != ttir.ELTWISE.name or sole_user(producer.result) is not op \
                or len(producer.operands) not in (1, 2):
            return False
        if len(producer.operands) == 1:  # softmax(x * c): an attention scaled without a mask
            scale = scaled(producer.regions[0].blocks[0])
            [x] = producer.operands
            if scale is None or tuple(x.type.shape) != tuple(out.shape):  # type: ignore[union-attr]
                return False
            softmax = rewriter.create_before(op, ttir.SOFTMAX.name, [x], [out], {"axis": op.attr("axis"), "scale": scale},
                                             loc=ordered_loc([producer, op]))
            rewriter.replace_op(op, [softmax.result])
            rewriter.erase_op(producer)
            return True
        matched = scaled_sum(producer.regions[0].blocks[0])
        if matched is None:
            return False
        x_args, scale = matched
        full = tuple(out.shape)
        for x_arg in x_args:
            x, m = producer.operands if x_arg == 0 else reversed(producer.operands)
            mask = tuple(m.type.shape)  # type: ignore[union-attr]
            if tuple(x.type.shape) != full or not mask or mask[-1] != full[-1] \
                    or (len(mask) > 1 and mask[-2] not in (1, full[-2])) or ttir.broadcast_shape(mask, full) != full:
                continue
            operands = [x] if self.is_zero(m) else [x, m]  # x * c + 0 is x * c (the bits of the unfused sum)
            softmax = rewriter.create_before(op, ttir.SOFTMAX.name, operands, [out],
                                             {"axis": op.attr("axis"), "scale": scale},
                                             loc=ordered_loc([producer, op]))
            rewriter.replace_op(op, [softmax.result])
            rewriter.erase_op(producer)
            return True
        return False


def scaled(body: Block) -> float | None:
    """c when the body of a one-operand eltwise is x * c, c a splat constant."""
    ops = list(body.ops)
    if len(ops) != 3 or [o.name for o in ops[:2]] != [ttir.CONSTANT.name, ttir.MUL.name]:
        return None
    constant, mul = ops[:2]
    value = constant.attributes.get("value")
    if not isinstance(value, DenseAttr) or not value.is_splat or len(mul.operands) != 2 \
            or sorted(id(v) for v in mul.operands) != sorted((id(constant.result), id(body.args[0]))) \
            or [id(v) for v in ops[2].operands] != [id(mul.result)]:
        return None
    return float(value.values)


def scaled_sum(body: Block) -> tuple[tuple[int, ...], float] | None:
    """(the block arguments that may be x, c) when the body is x + m (either may be x; c = 1) or x * c + m, c a
    splat constant."""
    ops = list(body.ops)
    args = [id(a) for a in body.args]
    if len(ops) == 2 and ops[0].name == ttir.ADD.name and sorted(id(v) for v in ops[0].operands) == sorted(args):
        return (0, 1), 1.0
    if len(ops) != 4 or [o.name for o in ops[:3]] != [ttir.CONSTANT.name, ttir.MUL.name, ttir.ADD.name]:
        return None
    constant, mul, add = ops[:3]
    value = constant.attributes.get("value")
    if not isinstance(value, DenseAttr) or not value.is_splat:
        return None
    x = [v for v in mul.operands if v is not constant.result]
    other = [v for v in add.operands if v is not mul.result]
    if len(x) != 1 or id(x[0]) not in args or len(other) != 1 or id(other[0]) not in args or x[0] is other[0] \
            or len(mul.operands) != 2 or constant.result not in mul.operands or mul.result not in add.operands:
        return None
    return (args.index(id(x[0])),), float(value.values)


@register_pass
@dataclass
class Fuse(Pass):
    """Fuse matmul epilogues into ttir.linear and elementwise chains into ttir.eltwise."""

    name = "fuse"
    residual: bool = True  # a residual add (and a zero-keeping activation after it) joins a matmul's epilogue

    def run(self, module: Module) -> None:
        apply_patterns_greedily(module, [DivByConstant(), DivByTensor(), RsqrtOfSqrt()])
        apply_patterns_greedily(module, [FuseLinear(self.residual)])
        apply_patterns_greedily(module, [WidenedLinear(module)])
        apply_patterns_greedily(module, [FuseEltwise()])
        apply_patterns_greedily(module, [FuseSoftmaxMask(module.weights)])
