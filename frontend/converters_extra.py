"""More ONNX converters: ops that decompose into the device's existing ttir ops.

Every converter here builds its op out of ttir ops the device already runs (elementwise arithmetic,
SFPU functions, compares and selects, reductions, softmax, matmul, movement), so no new kernel is
needed: e.g. Elu is `where(x > 0, x, alpha * (exp(x) - 1))`, LogSoftmax is
`x - max - log(sum(exp(x - max)))` and ReduceL2 is `sqrt(sum(x * x))`. Registered with the same
`@converter` table as `converters.py` (the importer imports this module).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _axis, _tensor, constant_ints, converter
from ttc.ir import ScalarType
from ttc.ir.dialects.ttir import broadcast_shape, matmul_shape, reduced_shape

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value

I1 = ScalarType("i1")
FLOAT_MAX = 3.0e38  # finite in float32 and in bf16 (whose largest is about 3.39e38)


# ----------------------------------------------------------------------------------------------
# Building blocks


class Emitter:
    """ttir ops located at one node, with numpy broadcasting and scalar constants of the data's type."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.count = 0

    def const(self, value: float | np.ndarray, like: Value) -> Value:
        """A constant of `like`'s element type (rank 0 for a number)."""
        self.count += 1
        dtype = _tensor(like).element_type.numpy_dtype()
        name = f"{self.ctx.node.output[0] or self.ctx.name}.c{self.count}"
        return self.ctx.constant(np.asarray(value, dtype=dtype), name)

    def binary(self, op: str, a: Value, b: Value, element: ScalarType | None = None) -> Value:
        shape = broadcast_shape(_tensor(a).shape, _tensor(b).shape)
        if shape is None:
            raise self.ctx.error(f"shapes {_tensor(a).shape} and {_tensor(b).shape} do not broadcast")
        result = _tensor(a).with_shape(shape)
        if element is not None:
            result = result.with_element_type(element)
        return self.ctx.create(f"ttir.{op}", [a, b], result)

    def add(self, a: Value, b: Value) -> Value:
        return self.binary("add", a, b)

    def sub(self, a: Value, b: Value) -> Value:
        return self.binary("sub", a, b)

    def mul(self, a: Value, b: Value) -> Value:
        return self.binary("mul", a, b)

    def div(self, a: Value, b: Value) -> Value:
        return self.binary("div", a, b)

    def compare(self, op: str, a: Value, b: Value) -> Value:
        return self.binary(op, a, b, I1)

    def logical(self, op: str, a: Value, b: Value) -> Value:
        return self.binary(f"logical_{op}", a, b, I1)

    def unary(self, op: str, x: Value, attributes: dict | None = None) -> Value:
        return self.ctx.create(f"ttir.{op}", [x], x.type, attributes)

    def scale(self, x: Value, factor: float) -> Value:
        return x if factor == 1.0 else self.mul(x, self.const(factor, x))

    def where(self, cond: Value, x: Value, y: Value) -> Value:
        shape = broadcast_shape(broadcast_shape(_tensor(cond).shape, _tensor(x).shape), _tensor(y).shape)
        return self.ctx.create("ttir.where", [cond, x, y], _tensor(x).with_shape(shape))

    def reduce(self, op: str, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
        axes = tuple(sorted(axes))
        shape = reduced_shape(_tensor(x).shape, axes, keepdims)
        return self.ctx.create(f"ttir.reduce_{op}", [x], _tensor(x).with_shape(shape),
                               {"axes": axes, "keepdims": keepdims})

    def reshape(self, x: Value, shape: tuple[int, ...]) -> Value:
        if _tensor(x).shape == tuple(shape):
            return x
        return self.ctx.create("ttir.reshape", [x], _tensor(x).with_shape(tuple(shape)))

    def transpose(self, x: Value, perm: Sequence[int]) -> Value:
        shape = _tensor(x).shape
        if tuple(perm) == tuple(range(len(shape))):
            return x
        return self.ctx.create("ttir.transpose", [x], _tensor(x).with_shape(tuple(shape[p] for p in perm)),
                               {"perm": tuple(perm)})

    def matmul(self, a: Value, b: Value) -> Value:
        shape = matmul_shape(_tensor(a).shape, _tensor(b).shape)
        if shape is None:
            raise self.ctx.error(f"cannot multiply shapes {_tensor(a).shape} and {_tensor(b).shape}")
        return self.ctx.create("ttir.matmul", [a, b], _tensor(a).with_shape(shape))

    def softmax(self, x: Value, axis: int) -> Value:
        return self.ctx.create("ttir.softmax", [x], x.type, {"axis": axis})

    def cast(self, x: Value, element: ScalarType) -> Value:
        if _tensor(x).element_type == element:
            return x
        return self.ctx.create("ttir.typecast", [x], _tensor(x).with_element_type(element))

    def log_sum_exp(self, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
        """log(sum(exp(x))) over `axes`, shifted by the max so exp never overflows."""
        peak = self.reduce("max", x, axes, True)
        total = self.reduce("sum", self.unary("exp", self.sub(x, peak)), axes, True)
        result = self.add(self.unary("log", total), peak)
        return result if keepdims else self.reshape(result, reduced_shape(_tensor(x).shape, tuple(axes), False))


def _float_input(ctx: NodeContext, index: int = 0) -> Value:
    x = ctx.input(index)
    if not _tensor(x).element_type.is_float:
        raise ctx.error(f"input {index} is {_tensor(x).element_type}; this op is converted for float tensors")
    return x


# ----------------------------------------------------------------------------------------------
# Casts


@converter("CastLike", since=15)
def cast_like(ctx: NodeContext) -> Value:
    """Cast to the element type of the second input."""
    x, like = ctx.input(0), ctx.input(1)
    target = _tensor(like).element_type
    if target == _tensor(x).element_type:
        return x
    return ctx.create("ttir.typecast", [x], _tensor(x).with_element_type(target))


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
# Softmax family and reductions


@converter("LogSoftmax", since=13)
def log_softmax(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    return _log_softmax(e, x, axis)


def _log_softmax(e: Emitter, x: Value, axis: int) -> Value:
    """(x - max) - log(sum(exp(x - max))): the shift once, so large inputs do not cancel in bf16."""
    shifted = e.sub(x, e.reduce("max", x, [axis], True))
    return e.sub(shifted, e.unary("log", e.reduce("sum", e.unary("exp", shifted), [axis], True)))


def _reduce_axes(ctx: NodeContext, axes_input: bool) -> tuple[list[int] | None, bool]:
    """(sorted axes, keepdims); axes None when the op is the identity (noop_with_empty_axes)."""
    x = ctx.input(0)
    rank = _tensor(x).rank
    axes = constant_ints(ctx, 1, "axes") if axes_input else ctx.attr("axes")
    if not axes:
        if ctx.attr("noop_with_empty_axes"):
            return None, bool(ctx.attr("keepdims"))
        axes = list(range(rank))
    return sorted({_axis(ctx, a, rank) for a in axes}), bool(ctx.attr("keepdims"))


def _reduction(kind: str, axes_input: bool):
    def convert(ctx: NodeContext) -> Value:
        e = Emitter(ctx)
        if kind == "min" and _tensor(ctx.input(0)).element_type == I1:  # all(): the minimum of 0/1 floats
            as_float = e.cast(ctx.input(0), ScalarType("f32"))
            axes, keepdims = _reduce_axes(ctx, axes_input)
            if axes is None:
                return ctx.input(0)
            smallest = e.unary("neg", e.reduce("max", e.unary("neg", as_float), axes, keepdims))
            return e.cast(smallest, I1)
        x = _float_input(ctx)
        axes, keepdims = _reduce_axes(ctx, axes_input)
        if axes is None:
            identity = {"l1": lambda: e.unary("abs", x), "l2": lambda: e.unary("abs", x),
                        "sum_square": lambda: e.mul(x, x), "log_sum": lambda: e.unary("log", x),
                        "log_sum_exp": lambda: x, "min": lambda: x}
            return identity[kind]()
        if kind == "l1":
            return e.reduce("sum", e.unary("abs", x), axes, keepdims)
        if kind == "l2":
            return e.unary("sqrt", e.reduce("sum", e.mul(x, x), axes, keepdims))
        if kind == "sum_square":
            return e.reduce("sum", e.mul(x, x), axes, keepdims)
        if kind == "log_sum":
            return e.unary("log", e.reduce("sum", x, axes, keepdims))
        if kind == "log_sum_exp":
            return e.log_sum_exp(x, axes, keepdims)
        assert kind == "min"
        return e.unary("neg", e.reduce("max", e.unary("neg", x), axes, keepdims))

    return convert


for _op_type, _kind in (("ReduceL1", "l1"), ("ReduceL2", "l2"), ("ReduceSumSquare", "sum_square"),
                        ("ReduceLogSum", "log_sum"), ("ReduceLogSumExp", "log_sum_exp"), ("ReduceMin", "min")):
    converter(_op_type, since=13)(_reduction(_kind, axes_input=False))
    converter(_op_type, since=18)(_reduction(_kind, axes_input=True))


# ----------------------------------------------------------------------------------------------
# Normalisations


def _normalize(e: Emitter, x: Value, axes: Sequence[int], epsilon: float, center: bool) -> tuple[Value, Value, Value]:
    """(normalised x, mean, 1/stddev) over `axes` (kept as unit dims); RMS when not `center`."""
    count = math.prod(_tensor(x).shape[a] for a in axes)
    mean = e.scale(e.reduce("sum", x, axes, True), 1.0 / count)
    centered = e.sub(x, mean) if center else x
    variance = e.scale(e.reduce("sum", e.mul(centered, centered), axes, True), 1.0 / count)
    inv_std = e.unary("rsqrt", e.add(variance, e.const(epsilon, x)))
    return e.mul(centered, inv_std), mean, inv_std


@converter("LayerNormalization", since=17)
def layer_norm(ctx: NodeContext) -> Value | list[Value]:
    """The device's layer norm when only Y is used; with Mean or InvStdDev used, the composition (sums,
    rsqrt) that gives them too."""
    x = ctx.input(0)
    rank = _tensor(x).rank
    axis = _axis(ctx, ctx.attr("axis"), rank)
    if not (ctx.output_used(1) or ctx.output_used(2)):
        operands = [x, ctx.input(1), ctx.input(2)] if ctx.has_input(2) else [x, ctx.input(1)]
        return ctx.create("ttir.layer_norm", operands, x.type, {"axis": axis, "epsilon": ctx.attr("epsilon")})
    e = Emitter(ctx)
    normed, mean, inv_std = _normalize(e, x, range(axis, rank), ctx.attr("epsilon"), center=True)
    y = e.mul(normed, ctx.input(1))
    if ctx.has_input(2):
        y = e.add(y, ctx.input(2))
    return [y, mean, inv_std]


@converter("RMSNormalization", since=23)
def rms_norm(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    rank = _tensor(x).rank
    axis = _axis(ctx, ctx.attr("axis"), rank)
    normed, _, _ = _normalize(e, x, range(axis, rank), ctx.attr("epsilon"), center=False)
    return e.mul(normed, ctx.input(1))


@converter("MeanVarianceNormalization", since=13)
def mean_variance_norm(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    rank = _tensor(x).rank
    axes = sorted({_axis(ctx, a, rank) for a in ctx.attr("axes")})
    normed, _, _ = _normalize(e, x, axes, 1e-9, center=True)
    return normed


# ----------------------------------------------------------------------------------------------
# Attention (opset 23): matmuls, softmax and additive masks

MASKED = -30000.0  # the bias of a masked position: exp(MASKED + score - max) is 0; finite in f16 and bf16
FULLY_MASKED = -10000.0  # a row whose bias never rises above this attends to nothing (its output is 0)


def _split_heads(e: Emitter, x: Value, heads: int) -> Value:
    """[B, S, H * D] -> [B, H, S, D]."""
    b, s, hidden = _tensor(x).shape
    return e.transpose(e.reshape(x, (b, s, heads, hidden // heads)), (0, 2, 1, 3))


def _repeat_heads(e: Emitter, x: Value, reps: int) -> Value:
    """[B, H, L, D] -> [B, H * reps, L, D], each head repeated `reps` times in place (GQA)."""
    b, h, length, d = _tensor(x).shape
    lifted = e.reshape(x, (b, h, 1, length, d))
    wide = e.ctx.create("ttir.broadcast", [lifted], _tensor(x).with_shape((b, h, reps, length, d)))
    return e.reshape(wide, (b, h * reps, length, d))


def _causal_bias(q_len: int, kv_len: int, offset: int) -> np.ndarray:
    allowed = np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None] + offset
    return np.where(allowed, 0.0, MASKED).astype(np.float32)


@converter("Attention", since=23)
def attention(ctx: NodeContext) -> list[Value]:
    """Scaled dot-product attention as the device runs it: scores = Q @ K^T * scale (softcapped), plus the
    additive bias of the mask and the causal rule, softmax over the keys (rows with every key masked give
    0), times V. 3-D inputs split into heads and merge back; past keys/values are concatenated before
    (present_key / present_value), and K/V heads repeat for grouped queries."""
    e = Emitter(ctx)
    q, k, v = _float_input(ctx, 0), _float_input(ctx, 1), _float_input(ctx, 2)
    if ctx.has_input(6) and ctx.has_input(4):
        raise ctx.error("nonpad_kv_seqlen cannot be combined with past_key / past_value")
    three_d = _tensor(q).rank == 3
    if three_d:
        q_heads, kv_heads = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if not q_heads or not kv_heads:
            raise ctx.error("3-D inputs need q_num_heads and kv_num_heads")
        q, k, v = _split_heads(e, q, q_heads), _split_heads(e, k, kv_heads), _split_heads(e, v, kv_heads)
    elif _tensor(q).rank != 4:
        raise ctx.error(f"Q of rank {_tensor(q).rank}: Attention takes 3-D or 4-D inputs")
    past = _tensor(ctx.input(4)).shape[2] if ctx.has_input(4) else 0
    if ctx.has_input(4):
        k = _concat(ctx, [ctx.input(4), k], 2)
    if ctx.has_input(5):
        v = _concat(ctx, [ctx.input(5), v], 2)
    present_k, present_v = k, v
    batch, q_heads, q_len, head = _tensor(q).shape
    kv_heads, kv_len = _tensor(k).shape[1], _tensor(k).shape[2]
    if q_heads != kv_heads:
        if q_heads % kv_heads:
            raise ctx.error(f"{q_heads} query heads do not group over {kv_heads} key/value heads")
        k, v = _repeat_heads(e, k, q_heads // kv_heads), _repeat_heads(e, v, q_heads // kv_heads)
    scale = ctx.attr("scale")
    scale = 1.0 / math.sqrt(head) if scale is None else scale
    scores = e.scale(e.matmul(q, e.transpose(k, (0, 1, 3, 2))), scale)
    softcap = ctx.attr("softcap") or 0.0
    if softcap > 0:
        scores = e.scale(e.unary("tanh", e.scale(scores, 1.0 / softcap)), softcap)
    bias = _attention_bias(ctx, e, q, q_len, kv_len, past)
    with_bias = scores if bias is None else e.add(scores, bias)
    probs = e.softmax(with_bias, 3)
    if bias is not None:
        row_max = e.reduce("max", bias, [_tensor(bias).rank - 1], True)
        probs = e.where(e.compare("lt", row_max, e.const(FULLY_MASKED, q)), e.const(0.0, q), probs)
    y = e.matmul(probs, v)
    if three_d:
        y = e.reshape(e.transpose(y, (0, 2, 1, 3)), (batch, q_len, q_heads * _tensor(v).shape[3]))
    mode = ctx.attr("qk_matmul_output_mode") or 0
    if mode == 2 and bias is not None:  # masked positions read -inf, as the reference's bias has them
        masked = e.compare("lt", bias, e.const(FULLY_MASKED, q))
        with_bias = e.where(masked, e.const(-np.inf, q), with_bias)
    qk = {0: scores, 1: scores, 2: with_bias, 3: probs}.get(mode)
    if qk is None:
        raise ctx.error(f"qk_matmul_output_mode {mode} is not one of 0..3")
    return [y, present_k, present_v, qk]


def _concat(ctx: NodeContext, values: list[Value], axis: int) -> Value:
    shape = list(_tensor(values[0]).shape)
    shape[axis] = sum(_tensor(v).shape[axis] for v in values)
    return ctx.create("ttir.concat", values, _tensor(values[0]).with_shape(tuple(shape)), {"axis": axis})


def _window_attr(ctx: NodeContext, name: str) -> int:
    value = ctx.attr(name)
    return -1 if value is None else int(value)


def _attention_bias(ctx: NodeContext, e: Emitter, q: Value, q_len: int, kv_len: int, past: int) -> Value | None:
    """The additive bias of the mask (booleans: MASKED where false; padded to kv_len with MASKED), the
    causal rule (key j visible from query i when j <= i + offset) and the sliding window
    (-right <= i + offset - j <= left), or None without any. The offset is the past length, or per batch
    nonpad_kv_seqlen[b] - q_len, which also masks keys j >= nonpad_kv_seqlen[b]: those rules compare the
    integer lengths with constants of small integers, exact on the device."""
    if ctx.has_input(6):
        return _nonpad_bias(ctx, e, q, q_len, kv_len, _mask_bias(ctx, e, q, kv_len))
    bias = _mask_bias(ctx, e, q, kv_len)
    if ctx.attr("is_causal"):
        causal = e.const(_causal_bias(q_len, kv_len, past), q)
        bias = causal if bias is None else e.add(bias, causal)
    left, right = _window_attr(ctx, "left_window_size"), _window_attr(ctx, "right_window_size")
    if left >= 0 or right >= 0:
        diff = np.arange(q_len)[:, None] + past - np.arange(kv_len)[None, :]
        allowed = ((diff <= left) | (left < 0)) & ((-diff <= right) | (right < 0))
        window = e.const(np.where(allowed, 0.0, MASKED).astype(np.float32), q)
        bias = window if bias is None else e.add(bias, window)
    return bias


def _nonpad_bias(ctx: NodeContext, e: Emitter, q: Value, q_len: int, kv_len: int, bias: Value | None) -> Value:
    lengths = ctx.input(6)
    batch = _tensor(lengths).shape[0]
    # as floats (rounded, but never across the small integer bounds below) moved to [B, 1, 1, 1]
    lengths = e.reshape(e.cast(lengths, _tensor(q).element_type), (batch, 1, 1, 1))
    i, j = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]

    def rule(op: str, bound: np.ndarray) -> Value:  # lengths <op> bound[i, j], as 0 / MASKED
        allowed = e.compare(op, lengths, e.const(bound.reshape(1, 1, *bound.shape), lengths))
        return e.where(allowed, e.const(0.0, q), e.const(MASKED, q))

    terms = [rule("gt", j + 0 * i)]  # key j is not padding
    if ctx.attr("is_causal"):
        terms.append(rule("ge", j - i + q_len))
    left, right = _window_attr(ctx, "left_window_size"), _window_attr(ctx, "right_window_size")
    if left >= 0:
        terms.append(rule("le", left + q_len + j - i))
    if right >= 0:
        terms.append(rule("ge", j - i + q_len - right))
    for term in terms:
        bias = term if bias is None else e.add(bias, term)
    assert bias is not None
    return bias


def _mask_bias(ctx: NodeContext, e: Emitter, q: Value, kv_len: int) -> Value | None:
    bias = None
    if ctx.has_input(3):
        mask = ctx.input(3)
        if _tensor(mask).element_type.name == "i1":
            mask = e.where(mask, e.const(0.0, q), e.const(MASKED, q))
        elif _tensor(mask).element_type != _tensor(q).element_type:
            raise ctx.error(f"attn_mask of type {_tensor(mask).element_type}: a boolean or Q's float type")
        short = kv_len - _tensor(mask).shape[-1]
        if short > 0:
            fill = np.full((*_tensor(mask).shape[:-1], short), MASKED, _tensor(q).element_type.numpy_dtype())
            mask = _concat(ctx, [mask, e.const(fill, q)], _tensor(mask).rank - 1)
        bias = mask
    return bias


# ----------------------------------------------------------------------------------------------
# Losses: class labels select by comparison with the class indices (exact for labels of any size)


def _nll(ctx: NodeContext, e: Emitter, log_probs: Value, target: Value, weight: Value | None) -> Value:
    """NegativeLogLikelihoodLoss of log-probabilities [N, C, d...] and labels [N, d...]: the label's
    column picked by a one-hot (labels == class index), weighted, ignore_index weighted 0, reduced."""
    shape = _tensor(log_probs).shape
    classes = shape[1]
    if not _tensor(target).element_type.is_integer:
        raise ctx.error("the target must hold integer class labels")
    ignore = ctx.attr("ignore_index")
    if abs(ignore or 0) > 255 or classes > 256:
        raise ctx.error("class indices and ignore_index must lie within +-255 (labels compare exactly in bf16)")
    element = _tensor(log_probs).element_type
    target = e.cast(target, element)  # rounds large labels, but never onto a class index or ignore_index
    labels = e.reshape(target, (shape[0], 1, *shape[2:]))
    index_shape = (1, classes, *([1] * (len(shape) - 2)))
    onehot = e.cast(e.compare("eq", labels, e.const(np.arange(classes).reshape(index_shape), target)), element)
    picked = e.reduce("sum", e.mul(log_probs, onehot), [1], False)
    if weight is not None:
        per_class = e.reshape(weight, index_shape)
        sample_weight = e.reduce("sum", e.mul(onehot, per_class), [1], False)
    else:
        sample_weight = e.reduce("sum", onehot, [1], False)
    if ignore is not None:
        valid = e.cast(e.compare("ne", target, e.const(ignore, target)), _tensor(log_probs).element_type)
        sample_weight = e.mul(sample_weight, valid)
    loss = e.unary("neg", e.mul(picked, sample_weight))
    reduction = ctx.attr("reduction") or "mean"
    if reduction == "none":
        return loss
    every = list(range(_tensor(loss).rank))
    total = e.reduce("sum", loss, every, False)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ctx.error(f"reduction '{reduction}' is not none, sum or mean")
    return e.div(total, e.reduce("sum", sample_weight, every, False))


@converter("NegativeLogLikelihoodLoss", since=13)
def nll_loss(ctx: NodeContext) -> Value:
    e = Emitter(ctx)
    return _nll(ctx, e, _float_input(ctx), ctx.input(1), ctx.input(2) if ctx.has_input(2) else None)


@converter("SoftmaxCrossEntropyLoss", since=13)
def softmax_cross_entropy(ctx: NodeContext) -> list[Value]:
    """NLL of log_softmax over the classes (axis 1); the log-probabilities are the optional 2nd output."""
    e, scores = Emitter(ctx), _float_input(ctx)
    log_probs = _log_softmax(e, scores, 1)
    loss = _nll(ctx, e, log_probs, ctx.input(1), ctx.input(2) if ctx.has_input(2) else None)
    return [loss, log_probs]


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
    rows = ctx.create("ttir.embedding", [table, ids], _tensor(data).with_shape((*(index_shape or (1,)), width)))
    k = len(index_shape)
    unflat = e.reshape(rows, (*index_shape, *others))
    perm = (*(k + i for i in range(axis)), *range(k), *(k + axis + j for j in range(len(dims) - 1 - axis)))
    return e.transpose(unflat, perm)


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
    infinite = ctx.create("ttir.isinf", [x], _tensor(x).with_element_type(I1))
    positive, negative = ctx.attr("detect_positive"), ctx.attr("detect_negative")
    if positive and negative:
        return infinite
    if not positive and not negative:
        return e.compare("ne", x, x)  # never true for an infinity: all false
    sign = e.compare("gt" if positive else "lt", x, e.const(0.0, x))
    return ctx.create("ttir.logical_and", [infinite, sign], _tensor(infinite))


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
    infinite = ctx.create("ttir.isinf", [y], _tensor(y).with_element_type(I1))
    opposite = e.logical("and", infinite, e.compare("lt", e.mul(x, y), e.const(0.0, x)))
    return e.mul(result, e.add(e.cast(opposite, _tensor(x).element_type), e.const(1.0, x)))


# ----------------------------------------------------------------------------------------------
# Scans as products with triangular constants, normalisations, depth <-> space


def _along_last(e: Emitter, x: Value, axis: int, fn) -> Value:
    """fn applied with `axis` moved last (a transpose there and back)."""
    rank = _tensor(x).rank
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return e.transpose(fn(e.transpose(x, perm)), perm)


def _prefix_matrix(n: int, exclusive: bool, reverse: bool) -> np.ndarray:
    """U with (x @ U)[j] = the sum of x[i] over the prefix (suffix when reverse) of j."""
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    keep = (i >= j if reverse else i <= j) & ((i != j) if exclusive else True)
    return keep.astype(np.float32)


@converter("CumSum", since=14)
def cumsum(ctx: NodeContext) -> Value:
    """Float prefix sums along `axis`: a product with a 0/1 triangular matrix (integers are host ops)."""
    e, x = Emitter(ctx), _float_input(ctx)
    axes = constant_ints(ctx, 1, "axis") or [0]
    axis = _axis(ctx, axes[0], _tensor(x).rank)
    n = _tensor(x).shape[axis]
    weights = _prefix_matrix(n, bool(ctx.attr("exclusive")), bool(ctx.attr("reverse")))
    if _tensor(x).rank == 1:
        return e.reshape(e.matmul(e.reshape(x, (1, n)), e.const(weights, x)), (n,))
    return _along_last(e, x, axis, lambda moved: e.matmul(moved, e.const(weights, x)))


@converter("Hardmax", since=13)
def hardmax(ctx: NodeContext) -> Value:
    """1 at the first maximum along `axis`: the maxima (x == max), of which the one whose running count
    (a prefix-sum product) is 1."""
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    n = _tensor(x).shape[axis]

    def first_maximum(moved: Value) -> Value:
        last = _tensor(moved).rank - 1
        peak = e.cast(e.compare("eq", moved, e.reduce("max", moved, [last], True)), _tensor(x).element_type)
        count = e.matmul(peak, e.const(_prefix_matrix(n, False, False), x))
        first = e.mul(peak, e.cast(e.compare("eq", count, e.const(1.0, x)), _tensor(x).element_type))
        return first

    if _tensor(x).rank == 1:
        return e.reshape(first_maximum(e.reshape(x, (1, n))), (n,))
    return _along_last(e, x, axis, first_maximum)


@converter("LpNormalization", since=1)
def lp_normalization(ctx: NodeContext) -> Value:
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, ctx.attr("axis"), _tensor(x).rank)
    p = ctx.attr("p")
    # a zero vector stays zero (0 * 1 / tiny, not 0 * inf): the norm is at least the smallest normal float
    tiny = e.const(float(np.finfo(np.float32).tiny), x)
    if p == 2:
        return e.mul(x, e.unary("rsqrt", e.binary("maximum", e.reduce("sum", e.mul(x, x), [axis], True), tiny)))
    if p == 1:
        return e.div(x, e.binary("maximum", e.reduce("sum", e.unary("abs", x), [axis], True), tiny))
    raise ctx.error(f"p = {p}: LpNormalization takes p = 1 or 2")


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


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (opset 23)


def _slice_last(ctx: NodeContext, x: Value, begin: int, end: int, step: int = 1) -> Value:
    from ttc.frontend.converters import emit_slice

    shape = _tensor(x).shape
    begins, ends, steps = [0] * len(shape), list(shape), [1] * len(shape)
    begins[-1], ends[-1], steps[-1] = begin, end, step
    return emit_slice(ctx, x, begins, ends, steps)


@converter("RotaryEmbedding", since=23)
def rotary_embedding(ctx: NodeContext) -> Value:
    """x rotated pairwise by the cached angles: halves (or interleaved pairs) x1, x2 of the first
    rotary_embedding_dim features become x1 cos - x2 sin and x1 sin + x2 cos. The caches are looked up by
    position_ids (a row lookup) or given per [batch, seq]."""
    e, x = Emitter(ctx), _float_input(ctx)
    cos, sin = ctx.input(1), ctx.input(2)
    if ctx.has_input(3):
        cos = gather_rows(ctx, cos, ctx.input(3), 0)
        sin = gather_rows(ctx, sin, ctx.input(3), 0)
    shape = _tensor(x).shape
    if len(shape) == 3:
        heads = ctx.attr("num_heads")
        if not heads:
            raise ctx.error("a 3-D input needs num_heads")
        work = e.reshape(x, (shape[0], shape[1], heads, shape[2] // heads))
        angles = (shape[0], shape[1], 1)
    else:
        work = x
        angles = (shape[0], 1, shape[2])
    head = _tensor(work).shape[-1]
    rotary = ctx.attr("rotary_embedding_dim") or head
    half = rotary // 2
    cos, sin = e.reshape(cos, (*angles, half)), e.reshape(sin, (*angles, half))
    if ctx.attr("interleaved"):
        x1, x2 = _slice_last(ctx, work, 0, rotary, 2), _slice_last(ctx, work, 1, rotary, 2)
    else:
        x1, x2 = _slice_last(ctx, work, 0, half), _slice_last(ctx, work, half, rotary)
    real = e.sub(e.mul(cos, x1), e.mul(sin, x2))
    imag = e.add(e.mul(sin, x1), e.mul(cos, x2))
    if ctx.attr("interleaved"):
        pair_shape = (*_tensor(real).shape, 1)
        pairs = _concat(ctx, [e.reshape(real, pair_shape), e.reshape(imag, pair_shape)], len(pair_shape) - 1)
        rotated = e.reshape(pairs, (*_tensor(real).shape[:-1], rotary))
    else:
        rotated = _concat(ctx, [real, imag], _tensor(real).rank - 1)
    if rotary < head:
        rotated = _concat(ctx, [rotated, _slice_last(ctx, work, rotary, head)], _tensor(real).rank - 1)
    return e.reshape(rotated, shape)


# ----------------------------------------------------------------------------------------------
# Tile, OneHot, Trilu, ReduceProd, Einsum


def _concat_copies(ctx: NodeContext, pieces: list[Value], axis: int) -> Value:
    """pieces concatenated along `axis`, eight at a time (an unaligned concat sums its placed inputs)."""
    while len(pieces) > 1:
        pieces = [group[0] if len(group) == 1 else _concat(ctx, group, axis)
                  for group in (pieces[i:i + 8] for i in range(0, len(pieces), 8))]
    return pieces[0]


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


def _reduce_prod(e: Emitter, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
    """The product along each axis as a chain of elementwise products of its slices (exact bf16 products)."""
    for axis in axes:
        shape = _tensor(x).shape
        slices = [_slice_axis(e.ctx, x, axis, i) for i in range(shape[axis])]
        product = slices[0]
        for other in slices[1:]:
            product = e.mul(product, other)
        x = product
    return x if keepdims else e.reshape(x, tuple(d for i, d in enumerate(_tensor(x).shape) if i not in axes))


def _slice_axis(ctx: NodeContext, x: Value, axis: int, index: int) -> Value:
    from ttc.frontend.converters import emit_slice

    shape = _tensor(x).shape
    begins, ends = [0] * len(shape), list(shape)
    begins[axis], ends[axis] = index, index + 1
    return emit_slice(ctx, x, begins, ends, [1] * len(shape))


def _reduce_prod_converter(axes_input: bool):
    def convert(ctx: NodeContext) -> Value:
        e, x = Emitter(ctx), _float_input(ctx)
        axes, keepdims = _reduce_axes(ctx, axes_input)
        if axes is None:
            return x
        if any(_tensor(x).shape[a] == 0 for a in axes):
            raise ctx.error("a product over an empty dim (the result is all ones) is not supported")
        if sum(_tensor(x).shape[a] for a in axes) > 64:
            raise ctx.error("a product over more than 64 slices")
        return _reduce_prod(e, x, axes, keepdims)

    return convert


converter("ReduceProd", since=13)(_reduce_prod_converter(axes_input=False))
converter("ReduceProd", since=18)(_reduce_prod_converter(axes_input=True))


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
    hit = ctx.create("ttir.logical_or", [forward, backward], _tensor(forward))
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
        hit = e.cast(ctx.create("ttir.logical_or", [forward, backward], _tensor(forward)), _tensor(data).element_type)
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


@converter("InstanceNormalization", since=6)
def instance_norm(ctx: NodeContext) -> Value:
    """Per sample and channel over the spatial dims, then the channel's scale and bias."""
    e, x = Emitter(ctx), _float_input(ctx)
    rank = _tensor(x).rank
    normed, _, _ = _normalize(e, x, range(2, rank), ctx.attr("epsilon"), center=True)
    channel = (_tensor(x).shape[1], *([1] * (rank - 2)))
    return e.add(e.mul(normed, e.reshape(ctx.input(1), channel)), e.reshape(ctx.input(2), channel))


@converter("GroupNormalization", since=21)
def group_norm(ctx: NodeContext) -> Value:
    """Per sample and group of channels: the groups as a dim ([N, G, C/G * spatial]), normalised over it,
    back to the input's shape, then per-channel scale and bias."""
    e, x = Emitter(ctx), _float_input(ctx)
    shape = _tensor(x).shape
    groups = ctx.attr("num_groups")
    grouped = e.reshape(x, (shape[0], groups, math.prod(shape[1:]) // groups))
    normed, _, _ = _normalize(e, grouped, [2], ctx.attr("epsilon"), center=True)
    channel = (shape[1], *([1] * (len(shape) - 2)))
    back = e.reshape(normed, shape)
    return e.add(e.mul(back, e.reshape(ctx.input(1), channel)), e.reshape(ctx.input(2), channel))


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


@converter("CumProd", since=26)
def cumprod(ctx: NodeContext) -> Value:
    """Float prefix products along `axis`: a running product of the slices (exact bf16 products), then
    concatenated back (integers are host ops)."""
    e, x = Emitter(ctx), _float_input(ctx)
    axis = _axis(ctx, (constant_ints(ctx, 1, "axis") or [0])[0], _tensor(x).rank)
    n = _tensor(x).shape[axis]
    if n > 64:
        raise ctx.error(f"a running product over {n} slices (at most 64)")
    slices = [_slice_axis(ctx, x, axis, i) for i in range(n)]
    if ctx.attr("reverse"):
        slices.reverse()
    running, results = None, []
    for piece in slices:
        if ctx.attr("exclusive"):
            results.append(e.const(np.ones(_tensor(piece).shape), x) if running is None else running)
            running = piece if running is None else e.mul(running, piece)
        else:
            running = piece if running is None else e.mul(running, piece)
            results.append(running)
    if ctx.attr("reverse"):
        results.reverse()
    return _concat_copies(ctx, results, axis)


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


def _spread(ctx: NodeContext, e: Emitter, param: Value, rank: int) -> Value:
    """A quantisation parameter shaped to broadcast against x: a scalar, a vector along `axis`, or blocks
    repeated block_size times along it."""
    shape = _tensor(param).shape
    if _tensor(param).num_elements == 1:
        return e.reshape(param, ())
    axis = _axis(ctx, ctx.attr("axis") if ctx.attr("axis") is not None else 1, rank)
    block = ctx.attr("block_size") or 0
    if len(shape) == 1 and not block:
        return e.reshape(param, tuple(shape[0] if d == axis else 1 for d in range(rank)))
    if not block:
        raise ctx.error(f"a scale of shape {list(shape)} without block_size")
    lifted = e.reshape(param, (*shape[:axis + 1], 1, *shape[axis + 1:]))
    wide = ctx.create("ttir.broadcast", [lifted], _tensor(param).with_shape((*shape[:axis + 1], block, *shape[axis + 1:])))
    return e.reshape(wide, (*shape[:axis], shape[axis] * block, *shape[axis + 1:]))


@converter("SwiGLU", since=28)
def swiglu(ctx: NodeContext) -> Value:
    """Swish(A) * B: a * sigmoid(alpha * a) * b."""
    e, a, b = Emitter(ctx), _float_input(ctx), _float_input(ctx, 1)
    alpha = ctx.attr("alpha")
    return e.mul(e.mul(a, e.unary("sigmoid", e.scale(a, 1.0 if alpha is None else alpha))), b)


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
