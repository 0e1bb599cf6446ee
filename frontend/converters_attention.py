"""Attention (opset 23: matmuls, softmax and additive masks, grouped and causal) and RotaryEmbedding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _tensor, converter
from ttc.frontend.converters_emitter import Emitter, _concat, _float_input, _slice_last
from ttc.frontend.converters_indexing import gather_rows
from ttc.ir.dialects import ttir

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


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
    wide = e.ctx.create(ttir.BROADCAST_OP.name, [lifted], _tensor(x).with_shape((b, h, reps, length, d)))
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
