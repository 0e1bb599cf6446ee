"""`canonicalize`: dead code, identities and constants folded away; duplicate constants merged.

- Pure ops without uses (constants too) are erased by the rewrite driver.
- Identities: reshape to its own type, transpose by the identity permutation, reshape of reshape,
  transpose of transpose, broadcasts, slices and typecasts that change nothing, and x+0, x-0, x*1,
  x/1, pow(x, 1) with a splat constant when the result type is x's own (a broadcasting constant that
  changes the shape keeps the op).
- A table lookup of reshaped indices looks up the indices as they are and reshapes the rows:
  embedding(t, reshape(ids)) -> reshape(embedding(t, ids)), and integer conversions of the indices
  go (the device reads ids as int32 whatever their type), so token ids reach the lookup untouched.
- Constant folding: an op with a `fold` hook whose operands are all `ttir.constant` is evaluated at
  compile time when its result is small (at most 16 elements, or a splat computed from splats) and
  becomes an inline `dense<...>`; with `fold-weights` (the default) a large result computed from
  weights becomes a new weight (`#tt.weight<"w.transpose">`), and weights no longer used are dropped
  from the module. The constant's location fuses those of the folded ops and their constants.
- Identical inline constants in a block are merged into the first one, as MLIR's CSE does.

Adding 0 is treated as an identity also for floats, where IEEE would turn -0.0 into +0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttc.ir.attributes import DenseAttr, WeightAttr, fuse_locations
from ttc.ir.core import Block, Module, Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.types import TensorType
from ttc.passes.manager import Pass, register_pass
from ttc.passes.rewriter import PatternRewriter, RewritePattern, apply_patterns_greedily, defining_op

MAX_INLINE_ELEMENTS = 16
CONSTANT = ttir.CONSTANT.name


def constant_attr(value: Value) -> DenseAttr | WeightAttr | None:
    """The value attribute of the `ttir.constant` producing `value`, if it is one."""
    op = defining_op(value, CONSTANT)
    return op.attributes.get("value") if op is not None else None


def splat_value(value: Value) -> float | int | bool | None:
    """The single element of a splat inline constant producing `value`."""
    attr = constant_attr(value)
    if not isinstance(attr, DenseAttr) or not attr.is_splat:
        return None
    return attr.values.item()


# ----------------------------------------------------------------------------------------------
# Identities


class ReshapeToSameType(RewritePattern):
    """reshape(x) -> x when the result type is x's type."""

    root = ttir.RESHAPE.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        source = op.operands[0]
        if source.type != op.result.type:
            return rewriter.notify_match_failure(op, "changes the type")
        rewriter.replace_op(op, [source])
        return True


class ReshapeOfReshape(RewritePattern):
    """reshape(reshape(x)) -> reshape(x): only the last shape matters."""

    root = ttir.RESHAPE.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        inner = defining_op(op.operands[0], ttir.RESHAPE.name)
        if inner is None:
            return rewriter.notify_match_failure(op, "operand is not a reshape")
        with rewriter.modify_op(op):
            op.set_operand(0, inner.operands[0])
            op.loc = fuse_locations(inner.loc, op.loc)
        return True


class IdentityTranspose(RewritePattern):
    """transpose(x, perm=[0, 1, ...]) -> x."""

    root = ttir.TRANSPOSE.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if tuple(op.attr("perm")) != tuple(range(len(op.attr("perm")))):
            return rewriter.notify_match_failure(op, "perm is not the identity")
        rewriter.replace_op(op, [op.operands[0]])
        return True


class TransposeOfTranspose(RewritePattern):
    """transpose(transpose(x, p1), p2) -> transpose(x, p1 o p2), or x when that is the identity."""

    root = ttir.TRANSPOSE.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        inner = defining_op(op.operands[0], ttir.TRANSPOSE.name)
        if inner is None:
            return rewriter.notify_match_failure(op, "operand is not a transpose")
        inner_perm, outer_perm = inner.attr("perm"), op.attr("perm")
        perm = tuple(inner_perm[p] for p in outer_perm)
        if perm == tuple(range(len(perm))):
            rewriter.replace_op(op, [inner.operands[0]])
            return True
        with rewriter.modify_op(op):
            op.set_operand(0, inner.operands[0])
            op.attributes["perm"] = perm
            op.loc = fuse_locations(inner.loc, op.loc)
        return True


class SameTypeIdentity(RewritePattern):
    """broadcast(x), slice(x) or typecast(x) -> x when the result type is x's type (for a slice: the
    whole of x, in order)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        source = op.operands[0]
        if source.type != op.result.type:
            return rewriter.notify_match_failure(op, "changes the type")
        if op.name == ttir.SLICE.name and (any(b != 0 for b in op.attr("begins")) or any(s != 1 for s in op.attr("steps"))):
            return rewriter.notify_match_failure(op, "reorders or shifts the elements")
        rewriter.replace_op(op, [source])
        return True


class EmbeddingOfReshape(RewritePattern):
    """embedding(t, reshape(ids)) -> reshape(embedding(t, ids)): the rows come out in the same order."""

    root = ttir.EMBEDDING.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        table, indices = op.operands
        reshape = defining_op(indices, ttir.RESHAPE.name)
        if reshape is None:
            return rewriter.notify_match_failure(op, "the indices are not reshaped")
        source = reshape.operands[0]
        assert isinstance(source.type, TensorType) and isinstance(op.result.type, TensorType)
        rows_type = op.result.type.with_shape((*source.type.shape, op.result.type.shape[-1]))
        rows = rewriter.create_before(op, ttir.EMBEDDING.name, [table, source], [rows_type], loc=op.loc)
        back = rewriter.create_before(op, ttir.RESHAPE.name, [rows.result], [op.result.type], loc=reshape.loc)
        rewriter.replace_op(op, [back.result])
        return True


class EmbeddingOfIntCast(RewritePattern):
    """embedding(t, typecast(ids -> another integer type)) -> embedding(t, ids): the device reads the
    ids as int32 whatever their ONNX integer type."""

    root = ttir.EMBEDDING.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        cast = defining_op(op.operands[1], ttir.TYPECAST.name)
        if cast is None or not _is_integer(cast.operands[0]):
            return rewriter.notify_match_failure(op, "the indices are not an integer conversion")
        with rewriter.modify_op(op):
            op.set_operand(1, cast.operands[0])
        return True


def _is_integer(value: Value) -> bool:
    t = value.type
    return isinstance(t, TensorType) and t.element_type.is_integer and t.element_type.name != "i1"


class BinaryIdentity(RewritePattern):
    """x+0, 0+x, x-0, x*1, 1*x, x/1, pow(x, 1) -> x, when the op does not broadcast x to a new type."""

    def __init__(self, root: str, element: int, commutative: bool) -> None:
        self.root = root
        self.element = element
        self.commutative = commutative

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        lhs, rhs = op.operands
        sides = [(lhs, rhs), (rhs, lhs)] if self.commutative else [(lhs, rhs)]
        for x, other in sides:
            if splat_value(other) == self.element and x.type == op.result.type:
                rewriter.replace_op(op, [x])
                return True
        return rewriter.notify_match_failure(op, f"no splat {self.element} operand that keeps the other's type")


BINARY_IDENTITIES = [
    BinaryIdentity(ttir.ADD.name, 0, commutative=True),
    BinaryIdentity(ttir.SUB.name, 0, commutative=False),
    BinaryIdentity(ttir.MUL.name, 1, commutative=True),
    BinaryIdentity(ttir.DIV.name, 1, commutative=False),
    BinaryIdentity(ttir.POW.name, 1, commutative=False),
]


# ----------------------------------------------------------------------------------------------
# Constant folding


class FoldConstantOperands(RewritePattern):
    """An op whose operands are all constants becomes one constant (inline or a new weight)."""

    benefit = 2

    def __init__(self, module: Module, fold_weights: bool = True) -> None:
        self.module = module
        self.fold_weights = fold_weights

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        opdef = op.opdef
        if opdef is None or opdef.fold is None or not op.operands or len(op.results) != 1:
            return False
        attrs = [constant_attr(v) for v in op.operands]
        if any(a is None for a in attrs):
            return rewriter.notify_match_failure(op, "an operand is not a constant")
        weights = [a.name for a in attrs if isinstance(a, WeightAttr)]
        if any(name not in self.module.weights for name in weights):
            return rewriter.notify_match_failure(op, "weight data is not loaded")
        result_type = op.result.type
        assert isinstance(result_type, TensorType)
        small = result_type.num_elements <= MAX_INLINE_ELEMENTS
        splats = all(isinstance(a, DenseAttr) and a.is_splat for a in attrs)
        if not (small or splats or (self.fold_weights and weights)):
            return rewriter.notify_match_failure(op, "result too large to inline and not computed from weights")
        arrays = [self.module.weights[a.name] if isinstance(a, WeightAttr) else a.to_array() for a in attrs]
        folded = opdef.fold(arrays, op)
        if folded is None:
            return rewriter.notify_match_failure(op, "the fold hook declined")
        array = np.asarray(folded, dtype=result_type.element_type.numpy_dtype())
        if array.shape != result_type.shape:
            return rewriter.notify_match_failure(op, f"fold gave shape {array.shape}, expected {result_type.shape}")
        if small or not weights:
            value: DenseAttr | WeightAttr = DenseAttr(result_type, array)
            if not (small or value.is_splat):
                return rewriter.notify_match_failure(op, "result too large to inline")
        else:
            value = WeightAttr(self.module.add_weight(f"{weights[0]}.{op.name.split('.', 1)[1]}", array))
        producers = [defining_op(v) for v in op.operands]
        loc = fuse_locations(*(p.loc for p in producers if p is not None), op.loc)
        constant = rewriter.create_before(op, CONSTANT, [], [result_type], {"value": value}, loc)
        rewriter.replace_op(op, [constant.result])
        return True


def canonicalization_patterns(module: Module, fold_weights: bool = True) -> list[RewritePattern]:
    return [FoldConstantOperands(module, fold_weights), ReshapeToSameType(), ReshapeOfReshape(),
            IdentityTranspose(), TransposeOfTranspose(), *BINARY_IDENTITIES, EmbeddingOfReshape(), EmbeddingOfIntCast(),
            *(SameTypeIdentity(root) for root in (ttir.BROADCAST_OP.name, ttir.SLICE.name, ttir.TYPECAST.name))]


# ----------------------------------------------------------------------------------------------
# Constant deduplication and weight bookkeeping


def dedup_constants(block: Block, rewriter: PatternRewriter) -> None:
    """Replace each inline constant by the first identical one (same value and type) in `block`."""
    first: dict[tuple[DenseAttr, object], Operation] = {}
    for op in list(block.ops):
        value = op.attributes.get("value") if op.name == CONSTANT else None
        if not isinstance(value, DenseAttr):
            continue
        key = (value, op.result.type)
        if key in first:
            rewriter.replace_op(op, [first[key].result])
        else:
            first[key] = op


def referenced_weights(module: Module) -> set[str]:
    return {op.attributes["value"].name for op in module.walk()
            if op.name == CONSTANT and isinstance(op.attributes.get("value"), WeightAttr)}


@register_pass
@dataclass
class Canonicalize(Pass):
    """Erase dead code, fold identities and constants, merge duplicate constants."""

    name = "canonicalize"
    fold_weights: bool = True

    def run(self, module: Module) -> None:
        weights_before = set(module.weights)
        in_use_before = referenced_weights(module)
        rewriter = PatternRewriter()
        apply_patterns_greedily(module, canonicalization_patterns(module, self.fold_weights), rewriter=rewriter)
        for func in module.functions:
            dedup_constants(func.body, rewriter)
        # Weights this pass folded away (or created and folded again) leave the module.
        created = set(module.weights) - weights_before
        for name in (in_use_before | created) - referenced_weights(module):
            module.weights.pop(name, None)
