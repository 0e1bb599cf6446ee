"""Elementwise ONNX ops composed of device ops: casts, activations (Elu, Selu, HardSwish, Clip, PRelu, ...),
SFPU functions (rounding, trigonometry, IsInf), Mod, Sum/Mean, SwiGLU and DequantizeLinear. E.g. Elu is
`where(x > 0, x, alpha * (exp(x) - 1))`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _tensor, converter
from ttc.frontend.converters_emitter import FLOAT_MAX, I1, Emitter, _float_input, _spread
from ttc.ir.dialects import ttir
from ttc.ir.dialects.ttir import broadcast_shape

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


# ----------------------------------------------------------------------------------------------
# Casts


@converter("CastLike", since=15)
def cast_like(ctx: NodeContext) -> Value:
    """Cast to the element type of the second input."""
    x, like = ctx.input(0), ctx.input(1)
    target = _tensor(like).element_type
    if target == _tensor(x).element_type:
        return x
    return ctx.create(ttir.TYPECAST.name, [x], _tensor(x).with_element_type(target))


# ----------------------------------------------------------------------------------------------
# Activations as compositions


@converter("Elu", since=6)
def elu(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    negative = e.scale(e.sub(e.unary("exp", x), e.const(1.0, x)), ctx.attr("alpha"))
    return e.where(e.compare("gt", x, e.const(0.0, x)), x, negative)


@converter("Selu", since=6)
def selu(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    negative = e.scale(e.sub(e.unary("exp", x), e.const(1.0, x)), ctx.attr("alpha"))
    return e.scale(e.where(e.compare("gt", x, e.const(0.0, x)), x, negative), ctx.attr("gamma"))


@converter("Celu", since=12)
def celu(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    alpha = ctx.attr("alpha")
    negative = e.scale(e.sub(e.unary("exp", e.scale(x, 1.0 / alpha)), e.const(1.0, x)), alpha)
    return e.add(e.unary("relu", x), e.binary("minimum", negative, e.const(0.0, x)))


@converter("ThresholdedRelu", since=10)
def thresholded_relu(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    return e.where(e.compare("gt", x, e.const(ctx.attr("alpha"), x)), x, e.const(0.0, x))


@converter("Softplus", since=1)
def softplus(ctx: NodeContext) -> Value:
    """log(1 + exp(x)): one SFPU function (a chain of bf16 steps loses e^x where 1 + e^x rounds to 1)."""
    return Emitter(ctx).unary("softplus", _float_input(ctx))


@converter("Softsign", since=1)
def softsign(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    return e.mul(x, e.unary("reciprocal", e.add(e.unary("abs", x), e.const(1.0, x))))


@converter("Mish", since=18)
def mish(ctx: NodeContext) -> Value:
    return Emitter(ctx).unary("mish", _float_input(ctx))


@converter("Swish", since=24)
def swish(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    alpha = ctx.attr("alpha")
    return e.mul(x, e.unary("sigmoid", e.scale(x, 1.0 if alpha is None else alpha)))


@converter("PRelu", since=9)
def prelu(ctx: NodeContext) -> Value:
    e, x, slope = Emitter(ctx), _float_input(ctx), ctx.input(1)
    return e.where(e.compare("lt", x, e.const(0.0, x)), e.mul(x, slope), x)


@converter("Sign", since=9)
def sign(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    zero = e.const(0.0, x)
    negative = e.where(e.compare("lt", x, zero), e.const(-1.0, x), zero)
    return e.where(e.compare("gt", x, zero), e.const(1.0, x), negative)


@converter("Shrink", since=9)
def shrink(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    lambd, bias = ctx.attr("lambd"), ctx.attr("bias")
    zero = e.const(0.0, x)
    low = e.where(e.compare("lt", x, e.const(-lambd, x)), e.add(x, e.const(bias, x)), zero)
    return e.where(e.compare("gt", x, e.const(lambd, x)), e.sub(x, e.const(bias, x)), low)


@converter("Sinh", since=9)
def sinh(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    return e.scale(e.sub(e.unary("exp", x), e.unary("exp", e.unary("neg", x))), 0.5)


@converter("Cosh", since=9)
def cosh(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    return e.scale(e.add(e.unary("exp", x), e.unary("exp", e.unary("neg", x))), 0.5)


@converter("Mean", since=13)
def mean(ctx: NodeContext) -> Value:
    e = Emitter(ctx)
    values = [ctx.input(i) for i in range(len(ctx.node.input)) if ctx.has_input(i)]
    total = values[0]
    for other in values[1:]:
        total = e.add(total, other)
    return e.scale(total, 1.0 / len(values))


# ----------------------------------------------------------------------------------------------
# SFPU functions: rounding, trigonometry, IsInf, and what composes from them

SFPU_UNARY = {"Floor": "floor", "Ceil": "ceil", "Round": "round", "Sin": "sin", "Cos": "cos", "Tan": "tan",
              "Asin": "asin", "Acos": "acos", "Atan": "atan", "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh"}


def _sfpu_unary(fn: str):
    def convert(ctx: NodeContext) -> Value:
        return Emitter(ctx).unary(fn, _float_input(ctx))

    return convert


for _op_type, _fn in SFPU_UNARY.items():
    converter(_op_type, since=6)(_sfpu_unary(_fn))


@converter("IsInf", since=10)
def is_inf(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    infinite = ctx.create(ttir.ISINF.name, [x], _tensor(x).with_element_type(I1))
    positive, negative = ctx.attr("detect_positive"), ctx.attr("detect_negative")
    if positive and negative:
        return infinite
    if not positive and not negative:
        return e.compare("ne", x, x)  # never true for an infinity: all false
    sign = e.compare("gt" if positive else "lt", x, e.const(0.0, x))
    return ctx.create(ttir.LOGICAL_AND.name, [infinite, sign], _tensor(infinite))


@converter("Mod", since=13)
def mod(ctx: NodeContext) -> Value:
    """Float Mod (integers are host ops): fmod = 1 is x - trunc(x / y) * y (C's fmod), fmod = 0 is
    x - floor(x / y) * y (the divisor's sign, as Python's %)."""
    e, x, y = Emitter(ctx), _float_input(ctx), _float_input(ctx, 1)
    # an infinite divisor clamped to the largest finite value: the quotient rounds to 0 (or -1), never inf * 0
    largest = min(FLOAT_MAX, float(np.finfo(_tensor(y).element_type.numpy_dtype()).max))
    finite = e.binary("minimum", e.binary("maximum", y, e.const(-largest, y)), e.const(largest, y))
    quotient = e.unary("trunc" if ctx.attr("fmod") else "floor", e.div(x, finite))
    result = e.sub(x, e.mul(quotient, finite))
    if ctx.attr("fmod"):
        return result  # fmod(x, +-inf) = x: the quotient was 0
    # x mod +-inf (the divisor's sign) is x when the signs agree or x is 0 (the quotient was 0), else the
    # divisor itself: there the quotient was -1 and the result x + clamped y, which doubled overflows to +-inf
    infinite = ctx.create(ttir.ISINF.name, [y], _tensor(y).with_element_type(I1))
    opposite = e.logical("and", infinite, e.compare("lt", e.mul(x, y), e.const(0.0, x)))
    return e.mul(result, e.add(e.cast(opposite, _tensor(x).element_type), e.const(1.0, x)))


@converter("DequantizeLinear", since=21)
def dequantize_linear(ctx: NodeContext) -> Value:
    """(x - zero_point) * scale with the scale (and zero point) per tensor, per `axis`, or per block of
    block_size along it; x converted to float on the device (int8/uint8 exactly, wider integers rounded
    as any float)."""
    e = Emitter(ctx)
    x, scale = ctx.input(0), ctx.input(1)
    element = _tensor(scale).element_type
    rank = _tensor(x).rank
    values = e.cast(x, element)
    if ctx.has_input(2):
        values = e.sub(values, _spread(ctx, e, e.cast(ctx.input(2), element), rank))
    return e.mul(values, _spread(ctx, e, scale, rank))


@converter("SwiGLU", since=28)
def swiglu(ctx: NodeContext) -> Value:
    """Swish(A) * B: a * sigmoid(alpha * a) * b."""
    e, a, b = Emitter(ctx), _float_input(ctx), _float_input(ctx, 1)
    alpha = ctx.attr("alpha")
    return e.mul(e.mul(a, e.unary("sigmoid", e.scale(a, 1.0 if alpha is None else alpha))), b)


# ----------------------------------------------------------------------------------------------
# Activations


def _scalar(ctx: NodeContext, value: float, name: str) -> Value:
    return ctx.constant(np.asarray(value, np.float32), f"{ctx.node.output[0]}.{name}")


def clamp(ctx: NodeContext, x: Value, low: float | None, high: float | None) -> Value:
    if low is not None:
        x = ctx.create(ttir.MAXIMUM.name, [x, _scalar(ctx, low, "min")], x.type)
    if high is not None:
        x = ctx.create(ttir.MINIMUM.name, [x, _scalar(ctx, high, "max")], x.type)
    return x


@converter("Clip", since=11)
def clip(ctx: NodeContext) -> Value:
    """max(x, min) then min(., max); a computed bound is a scalar tensor operand of the same ops, so
    min > max gives max, as ONNX's clip does."""
    x = ctx.input(0)
    bounds: list[float | Value | None] = []
    for index in (1, 2):
        if not ctx.has_input(index):
            bounds.append(None)
            continue
        value = ctx.input_constant(index)
        bounds.append(ctx.input(index) if value is None else float(value))
    if bounds[0] == 0.0:
        x, bounds[0] = ctx.create(ttir.RELU.name, [x], x.type), None
    for op_name, bound in zip((ttir.MAXIMUM.name, ttir.MINIMUM.name), bounds, strict=True):
        if bound is None:
            continue
        if isinstance(bound, float):
            bound = _scalar(ctx, bound, "min" if op_name == ttir.MAXIMUM.name else "max")
        x = ctx.create(op_name, [x, bound], x.type)
    return x


@converter("HardSigmoid", since=6)
def hard_sigmoid(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    affine = ctx.create(ttir.MUL.name, [x, _scalar(ctx, float(ctx.attr("alpha")), "alpha")], x.type)
    affine = ctx.create(ttir.ADD.name, [affine, _scalar(ctx, float(ctx.attr("beta")), "beta")], x.type)
    return clamp(ctx, ctx.create(ttir.RELU.name, [affine], x.type), None, 1.0)


@converter("HardSwish", since=14)
def hard_swish(ctx: NodeContext) -> Value:
    """x * relu6(x + 3) / 6: one SFPU function (a matmul epilogue takes it)."""
    return Emitter(ctx).unary("hardswish", _float_input(ctx))


@converter("LeakyRelu", since=6)
def leaky_relu(ctx: NodeContext) -> Value:
    """max(x, 0) + alpha * min(x, 0)."""
    x = ctx.input(0)
    positive = ctx.create(ttir.RELU.name, [x], x.type)
    negative = ctx.create(ttir.MINIMUM.name, [x, _scalar(ctx, 0.0, "zero")], x.type)
    negative = ctx.create(ttir.MUL.name, [negative, _scalar(ctx, float(ctx.attr("alpha")), "alpha")], x.type)
    return ctx.create(ttir.ADD.name, [positive, negative], x.type)


@converter("Sum", since=8)
def sum_(ctx: NodeContext) -> Value:
    values = [ctx.input(i) for i in range(len(ctx.node.input)) if ctx.has_input(i)]
    result = values[0]
    for value in values[1:]:
        shape = broadcast_shape(_tensor(result).shape, _tensor(value).shape)
        if shape is None:
            raise ctx.error("Sum operands do not broadcast")
        result = ctx.create(ttir.ADD.name, [result, value], _tensor(result).with_shape(shape))
    return result
