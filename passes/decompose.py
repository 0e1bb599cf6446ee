"""`decompose`: rewrite ttir ops into the ones the device has kernels for.

- Gemm -> matmul (transpose_a/transpose_b kept) * alpha (only if alpha != 1) + beta * C (only with C;
  the beta scale only if beta != 1; `canonicalize` later folds beta * C when C is a constant).
  `decompose{keep-gemm=true}` leaves Gemm alone.
- pow(x, 2) -> x * x; pow(x, 0.5) -> sqrt(x) (splat exponents, float for sqrt). Any other pow stays:
  the fused elementwise kernel computes it on the SFPU in float32 with one rounding (`pow_scalar` for a
  splat exponent, `rpow_scalar` for a splat base, the binary `pow` of two Dst slots otherwise), which
  beats exp(log(x) * y) with a bf16 rounding after every step.
- x / c -> x * (1 / c) for an inline float constant c (differs from the division by at most an ulp).
- reciprocal(sqrt(x)) -> rsqrt(x) when the square root has no other use (a norm's 1 / sqrt(var + eps)):
  one SFPU function, one rounding instead of two (numerics.md).
- The erf form of GELU, `x * 0.5 * (1 + erf(x / sqrt(2)))`, with the 0.5 applied to x, to the product
  or to the (1 + erf) factor and `x / 1.4142` or `x * 0.7071` inside, becomes `ttir.gelu` with the
  locations of all matched ops fused. The tanh form GPT-2 exports,
  `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))` (x^3 as a Pow or as products), becomes
  `ttir.gelu {approximate = "tanh"}` the same way.
- Mish spelt out, `x * tanh(softplus(x))` (ONNX's function body of Mish), becomes `ttir.mish`: one
  SFPU function, one rounding. HardSwish spelt out, `x * HardSigmoid(x, 1/6, 1/2)` (its ONNX function body,
  and older exporters' form) or `x * relu6(x + 3) / 6`, becomes `ttir.hardswish` the same way.

- RMS norm spelt out (Mistral's, Qwen2's and T5's `w * (x * rsqrt(mean(x^2, -1) + eps))`, as
  `pow(x, 2)` or `x * x`, ReduceMean over the last axis with keepdims, and `1 / sqrt` or rsqrt, the weight
  on either side) becomes `ttir.layer_norm {rms = true}` with the weight as its scale: the row-op kernels
  (and the split-row plan) instead of a square, a reduction and an elementwise program.

`ttir.softmax` and `ttir.layer_norm` stay as they are: the device has kernels for both, which beat
their decompositions (fewer passes over the data, a numerically stable reduction).
Every op created here carries the location of the op it replaces.

`DivByTensor` (x / y -> x * reciprocal(y) for any other float y) is defined here but not run by this
pass, which keeps a division by a variable: `tilize` applies it, folding the reciprocal of a weight
into a new weight (`#tt.weight<"w.reciprocal">`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ttc.ir.attributes import DenseAttr, fuse_locations
from ttc.ir.core import Module, Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.types import TensorType
from ttc.passes.canonicalize import constant_attr, splat_value
from ttc.passes.manager import Pass, register_pass
from ttc.passes.rewriter import PatternRewriter, RewritePattern, apply_patterns_greedily, defining_op


def is_float(value: Value) -> bool:
    return isinstance(value.type, TensorType) and value.type.element_type.is_float


def scalar_constant(rewriter: PatternRewriter, before: Operation, like: Value, number: float) -> Value:
    """A rank-0 `ttir.constant` of `like`'s element type, created before `before` with its location."""
    assert isinstance(like.type, TensorType)
    scalar_type = TensorType((), like.type.element_type)
    attr = DenseAttr(scalar_type, number)
    return rewriter.create_before(before, ttir.CONSTANT.name, [], [scalar_type], {"value": attr}).result


class DecomposeGemm(RewritePattern):
    """alpha * op(a) @ op(b) + beta * c -> matmul, then mul and add only where they do something."""

    root = ttir.GEMM.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        alpha, beta = op.attr("alpha"), op.attr("beta")
        if not is_float(op.result) and (alpha != 1.0 or beta != 1.0):
            return rewriter.notify_match_failure(op, "alpha/beta scale an integer gemm")
        a, b, c = op.operand("a"), op.operand("b"), op.operand("c")
        result_type = op.result.type
        attributes = {"transpose_a": op.attr("transpose_a"), "transpose_b": op.attr("transpose_b")}
        value = rewriter.create_before(op, ttir.MATMUL.name, [a, b], [result_type], attributes).result
        if alpha != 1.0:
            scale = scalar_constant(rewriter, op, value, alpha)
            value = rewriter.create_before(op, ttir.MUL.name, [value, scale], [result_type]).result
        if c is not None:
            if beta != 1.0:
                scale = scalar_constant(rewriter, op, c, beta)
                c = rewriter.create_before(op, ttir.MUL.name, [c, scale], [c.type]).result
            value = rewriter.create_before(op, ttir.ADD.name, [value, c], [result_type]).result
        rewriter.replace_op(op, [value])
        return True


class PowBySplat(RewritePattern):
    """pow(x, 2) -> x * x and pow(x, 0.5) -> sqrt(x), when the exponent does not broadcast x."""

    root = ttir.POW.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x, exponent = op.operands
        power = splat_value(exponent)
        if x.type != op.result.type:
            return rewriter.notify_match_failure(op, "the exponent broadcasts the base to a new shape")
        if power == 2:
            new = rewriter.create_before(op, ttir.MUL.name, [x, x], [op.result.type])
        elif power == 0.5 and is_float(x):
            new = rewriter.create_before(op, ttir.SQRT.name, [x], [op.result.type])
        else:
            return rewriter.notify_match_failure(op, "exponent is not a splat 2, or 0.5 on floats")
        rewriter.replace_op(op, [new.result])
        return True


class DivByConstant(RewritePattern):
    """x / c -> x * (1 / c) for an inline float constant c."""

    root = ttir.DIV.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x, divisor = op.operands
        attr = constant_attr(divisor)
        if not isinstance(attr, DenseAttr) or not is_float(divisor):
            return rewriter.notify_match_failure(op, "divisor is not an inline float constant")
        with np.errstate(divide="ignore"):
            reciprocal = DenseAttr(attr.type, 1.0 / attr.values.astype(np.float64))
        constant = rewriter.create_before(op, ttir.CONSTANT.name, [], [divisor.type], {"value": reciprocal})
        mul = rewriter.create_before(op, ttir.MUL.name, [x, constant.result], [op.result.type])
        rewriter.replace_op(op, [mul.result])
        return True


class DivByTensor(RewritePattern):
    """x / y -> x * reciprocal(y) for a float divisor that is not an inline constant."""

    root = ttir.DIV.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x, divisor = op.operands
        if isinstance(constant_attr(divisor), DenseAttr) or not is_float(op.result):
            return rewriter.notify_match_failure(op, "divisor is an inline constant, or not float")
        reciprocal = rewriter.create_before(op, ttir.RECIPROCAL.name, [divisor], [divisor.type])
        mul = rewriter.create_before(op, ttir.MUL.name, [x, reciprocal.result], [op.result.type])
        rewriter.replace_op(op, [mul.result])
        return True


class RsqrtOfSqrt(RewritePattern):
    """reciprocal(sqrt(x)) -> rsqrt(x) when the square root has no other use."""

    root = ttir.RECIPROCAL.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        sqrt = defining_op(op.operands[0], ttir.SQRT.name)
        if sqrt is None or len(sqrt.result.uses) != 1 or not is_float(op.result):
            return rewriter.notify_match_failure(op, "not the reciprocal of a single-use float square root")
        x = sqrt.operands[0]
        rsqrt = rewriter.create_before(op, ttir.RSQRT.name, [x], [op.result.type], loc=fuse_locations(sqrt.loc, op.loc))
        rewriter.replace_op(op, [rsqrt.result])
        return True


# ----------------------------------------------------------------------------------------------
# GELU


def _is_splat_near(value: Value, target: float, rel_tol: float = 1e-6) -> bool:
    number = splat_value(value)
    return number is not None and math.isclose(float(number), target, rel_tol=rel_tol)


def _with_splat(op: Operation | None, target: float, rel_tol: float = 1e-6) -> Value | None:
    """The other operand of a binary op whose one operand is a splat close to `target` (either side)."""
    if op is None:
        return None
    lhs, rhs = op.operands
    return lhs if _is_splat_near(rhs, target, rel_tol) else rhs if _is_splat_near(lhs, target, rel_tol) else None


def _mul_by(value: Value, target: float, rel_tol: float = 1e-6) -> tuple[Value, Operation] | None:
    """(x, the mul) when `value` is `x * c` or `c * x` with a splat c close to `target`."""
    op = defining_op(value, ttir.MUL.name)
    x = _with_splat(op, target, rel_tol)
    return None if x is None else (x, op)


def _erf_plus_one(value: Value) -> tuple[Value, list[Operation]] | None:
    """(x, matched ops) when `value` is `1 + erf(x / sqrt(2))` (either add order; / 1.4142 or * 0.7071)."""
    add = defining_op(value, ttir.ADD.name)
    erf_value = _with_splat(add, 1.0)
    erf = defining_op(erf_value, ttir.ERF.name) if erf_value is not None else None
    if erf is None:
        return None
    scaled = erf.operands[0]
    div = defining_op(scaled, ttir.DIV.name)
    if div is not None and _is_splat_near(div.operands[1], math.sqrt(2.0), rel_tol=1e-4):
        return div.operands[0], [div, erf, add]
    by_mul = _mul_by(scaled, 1.0 / math.sqrt(2.0), rel_tol=1e-4)
    if by_mul is not None:
        return by_mul[0], [by_mul[1], erf, add]
    return None


def _cube_of(value: Value) -> tuple[Value, list[Operation]] | None:
    """(x, matched ops) when `value` is x^3: pow(x, 3), (x * x) * x or x * (x * x)."""
    power = defining_op(value, ttir.POW.name)
    if power is not None and _is_splat_near(power.operands[1], 3.0):
        return power.operands[0], [power]
    outer = defining_op(value, ttir.MUL.name)
    if outer is None:
        return None
    for square_side, x in (outer.operands, outer.operands[::-1]):
        square = defining_op(square_side, ttir.MUL.name)
        if square is not None and square.operands[0] is x and square.operands[1] is x:
            return x, [square, outer]
    return None


def _tanh_plus_one(value: Value) -> tuple[Value, list[Operation]] | None:
    """(x, matched ops) when `value` is `1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))` (any operand order)."""
    add = defining_op(value, ttir.ADD.name)
    tanh_value = _with_splat(add, 1.0)
    tanh = defining_op(tanh_value, ttir.TANH.name) if tanh_value is not None else None
    scaled = _mul_by(tanh.operands[0], math.sqrt(2.0 / math.pi), rel_tol=1e-4) if tanh is not None else None
    inner = defining_op(scaled[0], ttir.ADD.name) if scaled is not None else None
    if inner is None:
        return None
    for x, term in (inner.operands, inner.operands[::-1]):
        cubed = _mul_by(term, 0.044715, rel_tol=1e-4)
        cube = _cube_of(cubed[0]) if cubed is not None else None
        if cube is not None and cube[0] is x:
            return x, [*cube[1], cubed[1], inner, scaled[1], tanh, add]
    return None


def _match_gelu(op: Operation, core_of=_erf_plus_one) -> tuple[Value, list[Operation]] | None:
    """(x, matched ops in data-flow order) when the mul `op` computes 0.5 * x * core(x), `core_of`
    matching the (1 + erf(...)) or (1 + tanh(...)) factor."""
    lhs, rhs = op.operands
    for half_side, other in ((lhs, rhs), (rhs, lhs)):
        # (x * 0.5) * (1 + erf(x / sqrt2))
        half_x = _mul_by(half_side, 0.5)
        core = core_of(other)
        if half_x is not None and core is not None and half_x[0] is core[0]:
            return core[0], [*core[1], half_x[1], op]
        # (x * (1 + erf(x / sqrt2))) * 0.5
        product = defining_op(other, ttir.MUL.name)
        if _is_splat_near(half_side, 0.5) and product is not None:
            for x, factor in (product.operands, product.operands[::-1]):
                core = core_of(factor)
                if core is not None and core[0] is x:
                    return x, [*core[1], product, op]
        # x * ((1 + erf(x / sqrt2)) * 0.5)
        half_factor = _mul_by(other, 0.5)
        if half_factor is not None:
            core = core_of(half_factor[0])
            if core is not None and core[0] is half_side:
                return half_side, [*core[1], half_factor[1], op]
    return None


class FuseErfGelu(RewritePattern):
    """x * 0.5 * (1 + erf(x / sqrt(2))) in its common arrangements -> gelu(x)."""

    root = ttir.MUL.name
    approximate = "none"

    def match(self, op: Operation) -> tuple[Value, list[Operation]] | None:
        return _match_gelu(op, _erf_plus_one)

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        match = self.match(op)
        if match is None:
            return rewriter.notify_match_failure(op, f"not the {self.approximate} form of GELU")
        x, ops = match
        if x.type != op.result.type or not is_float(x):
            return rewriter.notify_match_failure(op, "GELU pattern broadcasts x or is not float")
        loc = fuse_locations(*(matched.loc for matched in ops))
        attributes = {"approximate": "tanh"} if self.approximate == "tanh" else {}
        gelu = rewriter.create_before(op, ttir.GELU.name, [x], [op.result.type], attributes, loc=loc)
        rewriter.replace_op(op, [gelu.result])
        return True


class FuseTanhGelu(FuseErfGelu):
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> gelu(x) {approximate = "tanh"}."""

    approximate = "tanh"

    def match(self, op: Operation) -> tuple[Value, list[Operation]] | None:
        return _match_gelu(op, _tanh_plus_one)


class FuseMish(RewritePattern):
    """x * tanh(softplus(x)) (either operand order) -> mish(x)."""

    root = ttir.MUL.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        for x, other in (op.operands, op.operands[::-1]):
            tanh = defining_op(other, ttir.TANH.name)
            softplus = defining_op(tanh.operands[0], ttir.SOFTPLUS.name) if tanh is not None else None
            if softplus is None or softplus.operands[0] is not x:
                continue
            if x.type != op.result.type or not is_float(x):
                return rewriter.notify_match_failure(op, "the mish pattern broadcasts x or is not float")
            loc = fuse_locations(softplus.loc, tanh.loc, op.loc)
            mish = rewriter.create_before(op, ttir.MISH.name, [x], [op.result.type], loc=loc)
            rewriter.replace_op(op, [mish.result])
            return True
        return rewriter.notify_match_failure(op, "not x * tanh(softplus(x))")


def _clamped(value: Value, high: float) -> tuple[Value, list[Operation]] | None:
    """(v, matched ops) when `value` is min(relu(v), high) (Clip(v, 0, high) as the importer writes it)."""
    minimum = defining_op(value, ttir.MINIMUM.name)
    inner = _with_splat(minimum, high)
    relu = defining_op(inner, ttir.RELU.name) if inner is not None else None
    return (relu.operands[0], [relu, minimum]) if relu is not None else None


def _hard_sigmoid_of(gate: Value) -> tuple[Value, list[Operation]] | None:
    """(x, matched ops) when `gate` is relu6(x + 3) / 6: as ONNX's HardSigmoid(x, 1/6, 1/2) is imported,
    min(relu(x * (1/6) + 1/2), 1), or as min(relu(x + 3), 6) times 1/6 (or divided by 6)."""
    clamped = _clamped(gate, 1.0)
    if clamped is not None:
        add = defining_op(clamped[0], ttir.ADD.name)
        scaled = _with_splat(add, 0.5)
        by_mul = _mul_by(scaled, 1.0 / 6.0) if scaled is not None else None
        if by_mul is not None:
            return by_mul[0], [by_mul[1], add, *clamped[1]]
    scale = defining_op(gate, ttir.MUL.name)
    six = _with_splat(scale, 1.0 / 6.0)
    if six is None:
        scale = defining_op(gate, ttir.DIV.name)
        six = scale.operands[0] if scale is not None and _is_splat_near(scale.operands[1], 6.0) else None
    clamped = _clamped(six, 6.0) if six is not None else None
    if clamped is not None:
        add = defining_op(clamped[0], ttir.ADD.name)
        x = _with_splat(add, 3.0)
        if x is not None:
            return x, [add, *clamped[1], scale]
    return None


class FuseHardSwish(RewritePattern):
    """x * relu6(x + 3) / 6, the gate written as HardSigmoid(x, 1/6, 1/2) (ONNX's function body of HardSwish,
    and older exporters' HardSwish) or as relu6(x + 3) / 6 (either operand order) -> hardswish(x)."""

    root = ttir.MUL.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        for x, gate in (op.operands, op.operands[::-1]):
            matched = _hard_sigmoid_of(gate)
            if matched is None or matched[0] is not x:
                continue
            if x.type != op.result.type or not is_float(x):
                return rewriter.notify_match_failure(op, "the hardswish pattern broadcasts x or is not float")
            loc = fuse_locations(*(m.loc for m in matched[1]), op.loc)
            hardswish = rewriter.create_before(op, ttir.HARDSWISH.name, [x], [op.result.type], loc=loc)
            rewriter.replace_op(op, [hardswish.result])
            return True
        return rewriter.notify_match_failure(op, "not x * relu6(x + 3) / 6")


# ----------------------------------------------------------------------------------------------
# RMS norm


def _single_use(value: Value, name: str) -> Operation | None:
    op = defining_op(value, name)
    return op if op is not None and len(value.uses) == 1 else None


class FuseRmsNorm(RewritePattern):
    """w * (x * rsqrt(reduce_mean(x * x, last axis, keepdims) + eps)) -> layer_norm(x, w) {rms = true}, for a
    float x and a weight w of shape [N] (N the last dim); the intermediate values have no other use."""

    root = ttir.MUL.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        for w, y in (op.operands, op.operands[::-1]):
            matched = self.normalised(y)
            if matched is None or not isinstance(w.type, TensorType) or op.result.type != y.type:
                continue
            x, eps, members = matched
            if w.type.shape != (x.type.shape[-1],) or w.type.element_type != x.type.element_type:
                continue
            block = op.parent
            assert block is not None
            loc = fuse_locations(*(m.loc for m in sorted([*members, op], key=block.index_of)))
            norm = rewriter.create_before(op, ttir.LAYER_NORM.name, [x, w], [op.result.type],
                                          {"axis": x.type.rank - 1, "epsilon": eps, "rms": True}, loc=loc)
            rewriter.replace_op(op, [norm.result])
            for member in members:  # users first
                rewriter.erase_op(member)
            return True
        return rewriter.notify_match_failure(op, "not w * (x * rsqrt(mean(x^2) + eps))")

    @staticmethod
    def normalised(y: Value) -> tuple[Value, float, list[Operation]] | None:
        """(x, eps, the matched ops from y's back to the square) when y = x * rsqrt(mean(x * x) + eps)."""
        scaled = _single_use(y, ttir.MUL.name)
        if scaled is None:
            return None
        for x, r in (scaled.operands, scaled.operands[::-1]):
            rsqrt = _single_use(r, ttir.RSQRT.name)
            add = _single_use(rsqrt.operands[0], ttir.ADD.name) if rsqrt is not None else None
            if add is None or not is_float(x) or x.type != y.type or x.type.rank < 1:
                continue
            for mean_value, eps_value in (add.operands, add.operands[::-1]):
                eps = splat_value(eps_value)
                found = FuseRmsNorm.mean_of(mean_value, x.type.rank, x.type.shape[-1])
                if eps is None or found is None:
                    continue
                square = _single_use(found[-1].operands[0], ttir.MUL.name)  # the reduction's operand
                if square is not None and square.operands[0] is x and square.operands[1] is x:
                    return x, float(eps), [scaled, rsqrt, add, *found, square]
        return None

    @staticmethod
    def mean_of(value: Value, rank: int, n: int) -> list[Operation] | None:
        """The reduction (then its scale) when `value` is the mean over the last axis with keepdims: a ReduceMean,
        or (the RMSNormalization op's composition) a sum times 1/N."""
        scale = None
        reduction = _single_use(value, ttir.REDUCE_MEAN.name)
        if reduction is None and (scale := _single_use(value, ttir.MUL.name)) is not None:
            for summed, factor in (scale.operands, scale.operands[::-1]):
                number = splat_value(factor)
                if number is not None and math.isclose(float(number), 1.0 / n, rel_tol=1e-6):
                    reduction = _single_use(summed, ttir.REDUCE_SUM.name)
                    break
        if reduction is None or not reduction.attr("keepdims"):
            return None
        if [a % rank for a in reduction.attr("axes")] != [rank - 1]:
            return None
        return [scale, reduction] if scale is not None else [reduction]


@register_pass
@dataclass
class Decompose(Pass):
    """Split Gemm, Pow and Div into device ops; recognise erf- and tanh-GELU, Mish, HardSwish and RMS norm."""

    name = "decompose"
    keep_gemm: bool = False

    def run(self, module: Module) -> None:
        patterns: list[RewritePattern] = [FuseErfGelu(), FuseTanhGelu(), PowBySplat(), FuseMish(), FuseHardSwish(),
                                          DivByConstant(), RsqrtOfSqrt()]
        if not self.keep_gemm:
            patterns.append(DecomposeGemm())
        apply_patterns_greedily(module, patterns)
        apply_patterns_greedily(module, [FuseRmsNorm()])  # on the squares and rsqrts made above
