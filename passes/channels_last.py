"""`channels-last`: keep convolutional activations in the device's channels-last form between ops.

The importer wraps every `ttir.conv2d` / `ttir.pool2d` between layout changes: NCHW -> [N*H*W, C]
(`to_nhwc`: transpose(0, 2, 3, 1) + reshape) and back (`from_nhwc`: reshape + transpose(0, 3, 1, 2)).
This pass moves the `from_nhwc` changes down through what works per pixel and per channel, so that
a `from_nhwc` meets the next op's `to_nhwc` and both cancel (`TransposeOfTranspose`, `ReshapeOfReshape`):

- elementwise ops of one operand: U(from_nhwc(y)) -> from_nhwc(U(y));
- binary elementwise ops of two channels-last values of one shape, or of one and a per-channel
  ([1, C, 1, 1]) or scalar constant (reshaped to [1, C]): B(from_nhwc(a), c) -> from_nhwc(B(a, c'));
- a concat along the channels: concat(from_nhwc(a), from_nhwc(b)) -> from_nhwc(concat(a, b, axis=1));
- a global reduction over H and W: reduce(from_nhwc(y)) -> a reduction over the pixels of y;
- a channel shuffle (reshape, transpose, reshape that permutes the channels) -> an exact permutation
  matmul of the channels;
- a flatten of several pixels per image followed by a product with a weight (a classifier after the
  last pool) -> a convolution whose kernel covers the image (the NCHW order folded into the weight).

Per-channel affine maps after a convolution (a BatchNormalization, a scale or a shift) fold into the
convolution's weight and bias at compile time: mul(conv2d(x, w, b), s) -> conv2d(x, w * s, b * s) and
add(conv2d(x, w, b), t) -> conv2d(x, w, b + t).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttc.ir.attributes import WeightAttr, fuse_locations
from ttc.ir.core import Module, Operation, Value
from ttc.ir.dialect import Trait
from ttc.ir.dialects import ttir
from ttc.ir.types import TensorType
from ttc.passes.canonicalize import canonicalization_patterns
from ttc.passes.manager import Pass, register_pass
from ttc.passes.movement import constant_array, tensor
from ttc.passes.rewriter import PatternRewriter, RewritePattern, apply_patterns_greedily, defining_op

TO_NCHW = (0, 3, 1, 2)


def from_nhwc(value: Value) -> tuple[Value, tuple[int, int, int, int]] | None:
    """(y, (N, C, H, W)) when value = transpose(reshape(y [.., C] -> [N, H, W, C]), (0, 3, 1, 2)); y is the
    matrix [N*H*W, C] or a reshape of it keeping the channels last."""
    op = defining_op(value, ttir.TRANSPOSE.name)
    if op is None or tuple(op.attr("perm")) != TO_NCHW:
        return None
    inner = defining_op(op.operands[0], ttir.RESHAPE.name)
    if inner is None or tensor(inner.result).rank != 4 or \
            tensor(inner.operands[0]).shape[-1:] != tensor(inner.result).shape[-1:]:
        return None
    n, c, h, w = tensor(value).shape
    return inner.operands[0], (n, c, h, w)


def make_nchw(rewriter: PatternRewriter, op: Operation, y: Value, dims: tuple[int, int, int, int]) -> Value:
    n, c, h, w = dims
    like = tensor(y)
    nhwc = rewriter.create_before(op, ttir.RESHAPE.name, [y], [like.with_shape((n, h, w, c))]).result
    return rewriter.create_before(op, ttir.TRANSPOSE.name, [nhwc], [like.with_shape((n, c, h, w))],
                                  {"perm": TO_NCHW}).result


def channel_values(module: Module, value: Value, channels: int) -> np.ndarray | None:
    """The constant as one value per channel [C] (a splat broadcast), when it is a scalar or [.., C, 1, 1]."""
    array = constant_array(module, value)
    if array is None:
        return None
    shape = array.shape
    if array.size == 1:
        return np.full(channels, float(array.reshape(-1)[0]), np.float32)
    if len(shape) >= 3 and shape[-3] == channels and shape[-2:] == (1, 1) and array.size == channels:
        return array.reshape(channels).astype(np.float32)
    return None


def new_weight(rewriter: PatternRewriter, module: Module, op: Operation, name: str, array: np.ndarray,
               like: TensorType) -> Value:
    names = op.loc.names()
    stem = (names[0].strip("/").replace("/", ".") if names else "conv") + f".{name}"
    attr = WeightAttr(module.add_weight(stem, np.asarray(array, np.float32)))  # weights are never changed in place
    return rewriter.create_before(op, ttir.CONSTANT.name, [], [TensorType(array.shape, like.element_type)],
                                  {"value": attr}).result


class SinkUnary(RewritePattern):
    """U(from_nhwc(y)) -> from_nhwc(U(y)) for unary elementwise ops."""

    def __init__(self, root: str) -> None:
        self.root = root

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if len(op.operands) != 1 or tensor(op.result).shape != tensor(op.operands[0]).shape:
            return rewriter.notify_match_failure(op, "not unary, or not of its operand's shape")
        source = from_nhwc(op.operands[0])
        if source is None:
            return rewriter.notify_match_failure(op, "operand is not channels-last")
        y, dims = source
        inner = rewriter.create_before(op, op.name, [y], [tensor(op.result).with_shape(tensor(y).shape)],
                                       dict(op.attributes)).result
        rewriter.replace_op(op, [make_nchw(rewriter, op, inner, dims)])
        return True


class SinkBinary(RewritePattern):
    """B(from_nhwc(a), from_nhwc(b)) or B(from_nhwc(a), per-channel constant) -> from_nhwc(B(a, ...))."""

    def __init__(self, root: str, module: Module) -> None:
        self.root = root
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if len(op.operands) != 2:
            return rewriter.notify_match_failure(op, "not binary")
        sources = [from_nhwc(v) for v in op.operands]
        known = [s for s in sources if s is not None]
        if not known:
            return rewriter.notify_match_failure(op, "no channels-last operand")
        if len(known) == 2 and known[0][1] != known[1][1]:
            return self.per_image(op, rewriter, known[0], known[1])
        dims = known[0][1]
        if tensor(op.result).shape != dims:
            return rewriter.notify_match_failure(op, "broadcasts the channels-last operand")
        operands = []
        for value, source in zip(op.operands, sources, strict=True):
            if source is not None:
                if source[1] != dims or tensor(source[0]).shape != tensor(known[0][0]).shape:
                    return rewriter.notify_match_failure(op, "channels-last operands of different shapes")
                operands.append(source[0])
                continue
            per_channel = channel_values(self.module, value, dims[1])
            if per_channel is None:
                return rewriter.notify_match_failure(op, "the other operand is not a per-channel constant")
            operands.append(new_weight(rewriter, self.module, op, "channels", per_channel[None, :], tensor(value)))
        like = tensor(known[0][0])
        inner = rewriter.create_before(op, op.name, operands, [tensor(op.result).with_shape(like.shape)],
                                       dict(op.attributes)).result
        rewriter.replace_op(op, [make_nchw(rewriter, op, inner, dims)])
        return True


    @staticmethod
    def per_image(op: Operation, rewriter: PatternRewriter, a: tuple, b: tuple) -> bool:
        """B(from_nhwc(x) [N, C, H, W], from_nhwc(s) [N, C, 1, 1]) (a squeeze-and-excite scale) -> the pixels
        [N, H*W, C] of x combined with s as [N, 1, C] (rows broadcast)."""
        (x, (n, c, h, w)), (scale, scale_dims) = a, b
        if scale_dims != (n, c, 1, 1):
            (x, (n, c, h, w)), (scale, scale_dims) = b, a
        if scale_dims != (n, c, 1, 1) or tensor(op.result).shape != (n, c, h, w):
            return rewriter.notify_match_failure(op, "channels-last operands that do not broadcast per image")
        like = tensor(x)
        pixels = rewriter.create_before(op, ttir.RESHAPE.name, [x], [like.with_shape((n, h * w, c))]).result
        per_image = rewriter.create_before(op, ttir.RESHAPE.name, [scale], [like.with_shape((n, 1, c))]).result
        if from_nhwc(op.operands[0]) is not None and from_nhwc(op.operands[0])[1] == (n, c, h, w):
            operands = [pixels, per_image]
        else:
            operands = [per_image, pixels]
        combined = rewriter.create_before(op, op.name, operands, [like.with_shape((n, h * w, c))],
                                          dict(op.attributes)).result
        matrix = rewriter.create_before(op, ttir.RESHAPE.name, [combined], [like.with_shape((n * h * w, c))]).result
        rewriter.replace_op(op, [make_nchw(rewriter, op, matrix, (n, c, h, w))])
        return True


class SinkConcat(RewritePattern):
    """concat(from_nhwc(a), from_nhwc(b), ..., axis=1) -> from_nhwc(concat(a, b, ..., axis=1))."""

    root = ttir.CONCAT.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if op.attr("axis") != 1 or tensor(op.result).rank != 4:
            return rewriter.notify_match_failure(op, "not along the channels of an NCHW tensor")
        sources = [from_nhwc(v) for v in op.operands]
        if any(s is None or tensor(s[0]).rank != 2 for s in sources):
            return rewriter.notify_match_failure(op, "an operand is not a channels-last matrix")
        n, c, h, w = tensor(op.result).shape
        ys = [s[0] for s in sources if s is not None]
        inner = rewriter.create_before(op, ttir.CONCAT.name, ys, [tensor(ys[0]).with_shape((n * h * w, c))],
                                       {"axis": 1}).result
        rewriter.replace_op(op, [make_nchw(rewriter, op, inner, (n, c, h, w))])
        return True


class GlobalPool(RewritePattern):
    """reduce over H and W of from_nhwc(y) -> reshape(reduce(reshape(y, [N, H*W, C]), axis 1)): [N, C], or
    [N, C, 1, 1] in channels-last form with keepdims."""

    def __init__(self, root: str) -> None:
        self.root = root

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        source = from_nhwc(op.operands[0])
        if source is None or tuple(op.attr("axes")) != (2, 3):
            return rewriter.notify_match_failure(op, "not a global pool of a channels-last value")
        y, (n, c, h, w) = source
        like = tensor(y)
        pixels = rewriter.create_before(op, ttir.RESHAPE.name, [y], [like.with_shape((n, h * w, c))]).result
        reduced = rewriter.create_before(op, op.name, [pixels], [like.with_shape((n, 1, c))],
                                         {"axes": (1,), "keepdims": True}).result
        matrix = rewriter.create_before(op, ttir.RESHAPE.name, [reduced], [like.with_shape((n, c))]).result
        if tensor(op.result).rank == 2:  # keepdims = false: [N, C] is the matrix itself, no layout to restore
            rewriter.replace_op(op, [matrix])
        else:
            rewriter.replace_op(op, [make_nchw(rewriter, op, matrix, (n, c, 1, 1))])
        return True


class ReshapeOfPixel(RewritePattern):
    """reshape(from_nhwc(y)) with one pixel per image (H = W = 1, e.g. a flatten after a global pool) ->
    reshape(y): NCHW and NHWC order the elements alike."""

    root = ttir.RESHAPE.name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        source = from_nhwc(op.operands[0])
        if source is None or source[1][2:] != (1, 1):
            return rewriter.notify_match_failure(op, "not a reshape of one channels-last pixel per image")
        with rewriter.modify_op(op):
            op.set_operand(0, source[0])
        return True


class FlattenIntoConv(RewritePattern):
    """matmul(flatten(from_nhwc(y)) [N, C*H*W], constant W) -> conv2d(y) with a kernel covering the whole
    H x W image: the classifier after the last pool reads the pixels in channels-last order, so the NCHW
    flatten order is folded into the weight ([C*H*W, OUT] is the conv weight [OUT, C, H, W] transposed)."""

    root = ttir.MATMUL.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        flatten = defining_op(op.operands[0], ttir.RESHAPE.name)
        source = from_nhwc(flatten.operands[0]) if flatten is not None else None
        w = constant_array(self.module, op.operands[1])
        if source is None or w is None or op.attr("transpose_a") or w.ndim != 2:
            return rewriter.notify_match_failure(op, "not a product of a flattened channels-last value by a weight")
        y, (n, c, h, w_) = source
        if tensor(flatten.result).shape != (n, c * h * w_) or (h, w_) == (1, 1):
            return rewriter.notify_match_failure(op, "not a flatten of several pixels per image")
        weight = np.asarray(w, np.float32)
        weight = weight if op.attr("transpose_b") else weight.T  # [OUT, C*H*W]
        out = weight.shape[0]
        like = tensor(y)
        matrix = y if like.rank == 2 else rewriter.create_before(
            op, ttir.RESHAPE.name, [y], [like.with_shape((n * h * w_, c))]).result
        kernel = new_weight(rewriter, self.module, op, "w", weight.reshape(out, c, h, w_), tensor(op.operands[1]))
        conv = rewriter.create_before(op, ttir.CONV2D.name, [matrix, kernel], [tensor(op.result).with_shape((n, out))],
                                      {"input_shape": (n, h, w_), "strides": (1, 1), "pads": (0, 0, 0, 0),
                                       "dilations": (1, 1), "groups": 1})
        rewriter.replace_op(op, [conv.result])
        return True


class ChannelShuffle(RewritePattern):
    """reshape(transpose(reshape(from_nhwc(y)))) that only permutes the channels -> from_nhwc(y @ P)."""

    root = ttir.RESHAPE.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        transpose = defining_op(op.operands[0], ttir.TRANSPOSE.name)
        split = defining_op(transpose.operands[0], ttir.RESHAPE.name) if transpose is not None else None
        source = from_nhwc(split.operands[0]) if split is not None else None
        if source is None or tensor(op.result).rank != 4:
            return rewriter.notify_match_failure(op, "not a reshape-transpose-reshape of a channels-last value")
        y, (n, c, h, w) = source
        if tensor(op.result).shape != (n, c, h, w):
            return rewriter.notify_match_failure(op, "changes the shape")
        index = np.arange(n * c * h * w).reshape(n, c, h, w)
        moved = np.transpose(index.reshape(tensor(split.result).shape), transpose.attr("perm")).reshape(n, c, h, w)
        channel_of = moved[0, :, 0, 0] // (h * w)
        if not (moved == index[:, channel_of]).all():
            return rewriter.notify_match_failure(op, "moves pixels, not only channels")
        permutation = np.zeros((c, c), np.float32)
        permutation[channel_of, np.arange(c)] = 1.0
        select = new_weight(rewriter, self.module, op, "shuffle", permutation, tensor(y))
        shuffled = rewriter.create_before(op, ttir.MATMUL.name, [y, select], [tensor(y)])
        shuffled.attributes["tt.math_fidelity"] = "hifi4"  # one selected element per output: exact
        rewriter.replace_op(op, [make_nchw(rewriter, op, shuffled.result, (n, c, h, w))])
        return True


class FoldAffineIntoConv(RewritePattern):
    """mul(conv2d, per-channel s) -> conv2d(w * s, b * s); add(conv2d, per-channel t) -> conv2d(w, b + t)."""

    def __init__(self, root: str, module: Module) -> None:
        self.root = root
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        for index in (0, 1):
            conv = defining_op(op.operands[index], ttir.CONV2D.name)
            if conv is None or len(conv.result.uses) != 1 or tensor(op.result).shape != tensor(conv.result).shape:
                continue
            other = op.operands[1 - index]
            oc = tensor(conv.result).shape[1]
            array = constant_array(self.module, other)
            if array is None or array.size not in (1, oc) or (array.size == oc and array.shape[-1] != oc):
                continue
            values = np.broadcast_to(np.asarray(array, np.float32).reshape(-1), (oc,))
            w = constant_array(self.module, conv.operands[1])
            bias = constant_array(self.module, conv.operands[2]) if len(conv.operands) == 3 else np.zeros(oc)
            if w is None or bias is None:
                continue
            w, bias = np.asarray(w, np.float32), np.asarray(bias, np.float32).reshape(oc)
            w_value = conv.operands[1]  # a shift keeps the weight (VGG's 400 MB classifier kernel is not copied)
            if op.name == ttir.MUL.name:
                w, bias = w * values[:, None, None, None], bias * values
                w_value = new_weight(rewriter, self.module, conv, "w", w, tensor(conv.operands[1]))
            else:
                bias = bias + values
            b_value = new_weight(rewriter, self.module, conv, "b", bias, tensor(conv.operands[1]))
            folded = rewriter.create_before(conv, ttir.CONV2D.name, [conv.operands[0], w_value, b_value],
                                            [tensor(conv.result)], dict(conv.attributes),
                                            loc=fuse_locations(conv.loc, op.loc))
            rewriter.replace_op(op, [folded.result])
            return True
        return rewriter.notify_match_failure(op, "not a convolution scaled or shifted per channel")


# every elementwise op of one operand (activations, roundings, tests, casts): each works per element
UNARY = tuple(op.name for op in ttir.TTIR.ops if Trait.ELEMENTWISE in op.traits and len(op.operands) == 1
              and op is not ttir.BROADCAST_OP)


def channels_last_patterns(module: Module) -> list[RewritePattern]:
    from ttc.ir.dialect import lookup_op

    binaries = [name for name in (ttir.ADD.name, ttir.SUB.name, ttir.MUL.name, ttir.DIV.name, ttir.MAXIMUM.name, ttir.MINIMUM.name,
                                  ttir.POW.name) if (opdef := lookup_op(name)) and opdef.has(Trait.BROADCASTABLE)]
    return [*(SinkUnary(name) for name in UNARY), *(SinkBinary(name, module) for name in binaries),
            SinkConcat(), ReshapeOfPixel(), FlattenIntoConv(module), ChannelShuffle(module), *(GlobalPool(name) for name in
                                                    (ttir.REDUCE_MEAN.name, ttir.REDUCE_MAX.name, ttir.REDUCE_SUM.name)),
            FoldAffineIntoConv(ttir.MUL.name, module), FoldAffineIntoConv(ttir.ADD.name, module)]


@register_pass
@dataclass
class ChannelsLast(Pass):
    """Sink NCHW layout changes so that back-to-back inverse changes cancel; fold per-channel affine maps
    into convolutions."""

    name = "channels-last"

    def run(self, module: Module) -> None:
        apply_patterns_greedily(module, [*channels_last_patterns(module), *canonicalization_patterns(module)])
