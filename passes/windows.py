"""Device forms of sliding-window ops (`ttir.conv2d`, `ttir.pool2d`), applied by `tilize`.

Activations are the channels-last matrix [N*H*W, C] in tiles. A window op reads "sticks" (rows of C
channels) of its input by a compile-time index table, as Tenstorrent's convolutions do:

- the input's channels are widened to whole tiles (Cp, an exact selection matmul; `fuse` folds it into
  the linear making the input where it can, `WidenedLinear`) when C is not a multiple of 32, and the matrix
  is untilized once into a row-major buffer (a page per stick). A 1x1 stride-1 convolution reads each
  pixel's own stick: the plain matmul of its input by the weight's C rows, never widened;
- a convolution looks its im2col matrix up in one `ttir.embedding {im2col, pad_negative}`: a constant
  int32 table [KK, M_out] (KK kernel positions, M_out output pixels; -1 where the window lies in the
  padding, read as a zero stick); the reader fetches the sticks, compute tilizes them and the writer puts
  position k's tiles at column k * Cp / 32 of the output tile row, so the result is the [M_out, KK * Cp]
  matmul operand as it is read. One matmul by the stacked weight [KK * Cp, OC] follows (`fuse` adds the
  bias and activation to it: conv + batch norm + relu is one device op). Groups (AlexNet's 2, ShuffleNet's
  grouped 1x1, depthwise up to 32 channels) become a block-diagonal stacked weight; a wider depthwise
  convolution is one matmul batched over channel tiles (`depthwise_matmul`): a grouped lookup
  [Cp / 32, M_out, KK * 32] times the positions' diagonal blocks [Cp / 32, KK * 32, 32], so its work
  grows with C, not C squared. Beyond `MAX_IM2COL_IDS` output pixels (ResNet-50 at batch 8),
  or when the im2col matrix would take more than layout's `MAX_L1_SHARE` of a core's free L1 (ResNet-50's
  7x7 stem), the lookup and the product go by equal chunks of rows (`chunk_rows`: each chunk fits L1 instead
  of going through DRAM), joined along the rows after the product (a tree of concats of at most `MAX_JOINED`
  inputs; a max pool goes by MAX_IM2COL_IDS chunks). Beyond
  `MAX_POSITIONS` kernel positions (ViT's 16x16 patches, a 13x13 depthwise kernel) the window is split
  along K: a lookup of at most 128 positions and a product by their rows of the stacked weight per chunk,
  the partial products summed; positions that read only padding for every output pixel are dropped;
- an average pool is the same matmul with stacked identities, times a constant per-pixel 1 / count
  (count_include_pad either way, ceil_mode windows clipped). A pool whose one window per image holds the
  whole input (a kernel at least the input's size, no padding: ResNet's 7x7, EfficientNet's
  AvgPool2d(1280, ceil_mode)) is a mean or maximum along the rows of [N, H*W, C], for any kernel size;
- a max pool is the elementwise maximum of one stick lookup per kernel position (a padding position reads
  a stick of its own window instead, so it never wins); beyond `MAX_MAX_POSITIONS` positions it is
  separable (a pool along H, then one along W), and a 1-D one goes by levels (`two_level_max`).

Pad and Resize import as padded lookups of the channels-last matrix (`PaddedLookupToDevice`). The NCHW <->
channels-last changes left at the graph edges become row lookups around a tile transpose
(`ChannelLayoutEdge`). Index tables of a multiple of 32 ids are split into pages of 32 (one per output tile
row, so the looked-up tiles regroup without moving data).
"""

from __future__ import annotations

import math

import numpy as np

from ttc.ir.attributes import DenseAttr, WeightAttr
from ttc.ir.core import Module, Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr
from ttc.ir.dialects.ttir import window_output_shape, window_output_size
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.layout import MAX_L1_SHARE
from ttc.passes.movement import (
    CONSTANT,
    ROW_MAJOR,
    constant_array,
    exact_matmul,
    node_name,
    tensor,
    weight,
)
from ttc.passes.ops.gather import is_folded, movement_chain
from ttc.passes.ops.gather_map import row_gather_map
from ttc.passes.ops.geometry import module_device
from ttc.passes.rewriter import PatternRewriter, RewritePattern, defining_op

MAX_IM2COL_IDS = 16384  # output pixels per im2col lookup and product (larger convs go by chunks of rows)
MAX_POSITIONS = 128  # kernel positions of one window
MAX_MAX_POSITIONS = 9  # a max pool combines its positions in one fused eltwise op (beyond 9 inputs its body
# needs more than the 15 intermediate circular buffers); more positions go by levels of pools


def window_ids(op: Operation, kernel: tuple[int, int]) -> np.ndarray:
    """[KK, M_out] input rows (n * H * W + h * W + w) each output pixel reads per kernel position; -1 in
    the padding."""
    n, h, w = op.attr("input_shape")
    _, oh, ow = window_output_shape(op, kernel)
    (sh, sw), (ph, pw, _, _), (dh, dw) = op.attr("strides"), op.attr("pads"), op.attr("dilations")
    kh, kw = kernel
    ys = (np.arange(oh) * sh - ph)[None, :, None] + (np.arange(kh) * dh)[:, None, None]  # [kh, oh, 1]
    xs = (np.arange(ow) * sw - pw)[None, None, :] + (np.arange(kw) * dw)[:, None, None]  # [kw, 1, ow]
    ys = np.broadcast_to(ys[:, None, :, :], (kh, kw, oh, ow))
    xs = np.broadcast_to(xs[None, :, :, :], (kh, kw, oh, ow))
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    pixel = np.where(inside, ys * w + xs, -1).reshape(kh * kw, 1, oh * ow)
    batch = (np.arange(n) * h * w)[None, :, None]
    return np.where(pixel >= 0, pixel + batch, -1).reshape(kh * kw, n * oh * ow)


def ids_page(m: int) -> int:
    """Ids per index page: 32 (a page per output tile row, so a reader fetches only the ids it uses) when
    m is a multiple of 32, else all m (the looked-up tiles regroup without moving either way)."""
    return 32 if m % 32 == 0 else m


def untilized(rewriter: PatternRewriter, op: Operation, x: Value) -> Value:
    """x's sticks as a row-major buffer (a page per row)."""
    return rewriter.create_before(op, ttir.TO_LAYOUT.name, [x], [tensor(x).with_encoding(ROW_MAJOR)]).result


def im2col_lookup(rewriter: PatternRewriter, module: Module, op: Operation, rows: Value, ids: np.ndarray,
                  grouped: bool = False) -> Value:
    """[M_out, KK * Cp] in one lookup (`ttir.embedding {im2col}`) of the row-major sticks `rows`: the sticks of
    kernel position k are written at tile column k * Cp / 32 of each output tile row, the matmul operand as it
    is read. `grouped`: [Cp / 32, M_out, KK * 32] instead, channel tile j of every position in batch j."""
    source = tensor(rows).with_encoding(None)
    positions, m = ids.shape
    rt = -(-m // 32)
    paged = np.full((positions, rt * 32), -1, np.int32)  # -1: a zero row (padding pixels and rows past M)
    paged[:, :m] = ids
    paged = paged.reshape(positions, rt, 32)  # an index page per output tile row: 128 B read per 32 rows
    stem = node_name(op).strip("/").replace("/", ".") or "window"
    name = module.add_weight(f"{stem}.window_index", paged)
    index = rewriter.create_before(op, CONSTANT, [], [TensorType(paged.shape, ScalarType("i32"), ROW_MAJOR)],
                                   {"value": WeightAttr(name)}).result
    if grouped:
        return rewriter.create_before(op, ttir.EMBEDDING.name, [rows, index],
                                      [source.with_shape((source.shape[1] // 32, m, positions * 32))],
                                      {"pad_negative": True, "im2col": True, "grouped": True}).result
    return rewriter.create_before(op, ttir.EMBEDDING.name, [rows, index],
                                  [source.with_shape((m, positions * source.shape[1]))],
                                  {"pad_negative": True, "im2col": True}).result


def position_lookup(rewriter: PatternRewriter, module: Module, op: Operation, rows: Value, ids: np.ndarray,
                    k: int) -> Value:
    """[M_out, C]: the sticks of kernel position k (ids [M_out], -1: zero) looked up in the row-major `rows`."""
    source = tensor(rows).with_encoding(None)
    m = ids.size
    page = ids_page(m)
    paged = ids.reshape(m // page, page) if page < m else ids
    stem = node_name(op).strip("/").replace("/", ".") or "window"
    name = module.add_weight(f"{stem}.window_index{k}", paged.astype(np.int32))
    index = rewriter.create_before(op, CONSTANT, [], [TensorType(paged.shape, ScalarType("i32"), ROW_MAJOR)],
                                   {"value": WeightAttr(name)}).result
    looked = rewriter.create_before(op, ttir.EMBEDDING.name, [rows, index],
                                    [source.with_shape((*paged.shape, source.shape[1]))],
                                    {"pad_negative": True}).result
    if page == m:
        return looked
    return rewriter.create_before(op, ttir.RESHAPE.name, [looked], [source.with_shape((m, source.shape[1]))]).result


def combine(rewriter: PatternRewriter, op: Operation, kind: str, values: list[Value]) -> Value:
    total = values[0]
    for value in values[1:]:
        total = rewriter.create_before(op, kind, [total, value], [tensor(total)]).result
    return total


def conv_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """ONNX weight [OC, C / groups, KH, KW] -> [KK, C, OC] (block-diagonal over the groups)."""
    oc, cg, kh, kw = w.shape
    per_group = oc // groups
    dense = np.zeros((kh * kw, cg * groups, oc), np.float32)
    for g in range(groups):
        block = w[g * per_group:(g + 1) * per_group].reshape(per_group, cg, kh * kw).transpose(2, 1, 0)
        dense[:, g * cg:(g + 1) * cg, g * per_group:(g + 1) * per_group] = block
    return dense


def padded_channels(rewriter: PatternRewriter, module: Module, op: Operation, x: Value) -> Value:
    """x [rows, C] widened to whole tiles of channels [rows, 32 * ceil(C / 32)] (zero columns) by an exact
    selection matmul, so that sticks of several kernel positions join along the channels tile by tile."""
    c = tensor(x).shape[1]
    width = -(-c // 32) * 32
    if width == c:
        return x
    select = weight(rewriter, module, op, "channel_pad", np.eye(c, width, dtype=np.float32), tensor(x))
    return exact_matmul(rewriter, op, x, select)


def windowed_matmul(rewriter: PatternRewriter, module: Module, op: Operation, x: Value, ids: np.ndarray,
                    stacked: np.ndarray, name: str, result: TensorType) -> Value:
    """im2col(x) @ stacked: for each output pixel the sticks of its KK kernel positions (channels padded to Cp)
    times the stacked weight [KK * Cp, OC] (a weight constant `name`). Kernel positions that read only padding
    for every output pixel (a kernel larger than its padded input) are dropped with their weight rows. Beyond
    MAX_IM2COL_IDS output pixels, or when the lookup would not fit L1 (`chunk_rows`), the lookup and the product
    go by equal chunks of rows, joined after the product
    (tile rows: a tile-granular concat); beyond MAX_POSITIONS kernel positions by chunks of positions (a K
    split: one lookup and one product by the chunk's weight rows each), the partial products summed."""
    width = -(-tensor(x).shape[1] // 32) * 32  # Cp
    used = (ids >= 0).any(axis=1)
    if not used.any():
        used[0] = True  # every window lies in the padding: one all-zero position keeps the shapes
    if not used.all():
        ids = ids[used]
        stacked = stacked.reshape(used.size, width, -1)[used].reshape(-1, stacked.shape[-1])
    positions, m = ids.shape
    like = tensor(op.operands[1]) if len(op.operands) > 1 else result
    if positions == 1 and m == tensor(x).shape[0] and (ids == np.arange(m)).all():
        # every pixel reads its own stick (a 1x1 stride-1 convolution): the plain matmul of x by the weight's rows
        # of its C channels (those of the padding channels are zero), with no widening
        b = weight(rewriter, module, op, name, stacked[:tensor(x).shape[1]], like)
        return rewriter.create_before(op, ttir.MATMUL.name, [x, b], [result]).result
    splits = [(first, min(first + MAX_POSITIONS, positions)) for first in range(0, positions, MAX_POSITIONS)]
    bs = [weight(rewriter, module, op, name if len(splits) == 1 else f"{name}.k{index}",
                 stacked[first * width:last * width], like) for index, (first, last) in enumerate(splits)]
    x = padded_channels(rewriter, module, op, x)
    rows = untilized(rewriter, op, x)
    products = []
    step = chunk_rows(m, min(positions, MAX_POSITIONS) * width, module_device(module))
    for start in range(0, m, step):
        part = ids[:, start:start + step]
        total: Value | None = None
        for (first, last), b in zip(splits, bs, strict=True):
            chunk = part[first:last]
            if last - first == 1:
                cols = position_lookup(rewriter, module, op, rows, chunk[0], start * positions + first)
            else:
                cols = im2col_lookup(rewriter, module, op, rows, chunk)
            product = rewriter.create_before(op, ttir.MATMUL.name, [cols, b],
                                             [result.with_shape((part.shape[1], result.shape[1]))]).result
            total = product if total is None else rewriter.create_before(
                op, ttir.ADD.name, [total, product], [tensor(product)]).result
        assert total is not None
        products.append(total)
    return joined_rows(rewriter, op, products, result)


def chunk_rows(m: int, cols: int, device: DeviceAttr) -> int:
    """Output pixels per chunk of an im2col lookup [m, cols] (bf16 tiles; the last chunk takes the rest): m when
    m is at most MAX_IM2COL_IDS and its pages spread over the cores' L1 take at most layout's `MAX_L1_SHARE` of a
    core's free L1 (so layout may place it in L1); MAX_IM2COL_IDS when a chunk of that many fits; else the fewest
    equal chunks of whole tile rows that fit, so each chunk can live in L1 between its lookup and its product
    instead of going through DRAM. Of those chunk counts, the first whose chunks all split over the cores evenly
    (`splits_evenly`) wins: a chunk of a prime number of tile rows would run its product on one core."""
    tile_rows, tile_cols = -(-m // 32), -(-cols // 32)
    limit = int(device.l1_free * MAX_L1_SHARE)

    def fits(rows: int) -> bool:
        return -(-rows * tile_cols // device.compute_cores) * TILE_BYTES <= limit

    if m <= MAX_IM2COL_IDS and fits(tile_rows):
        return m
    if fits(MAX_IM2COL_IDS // 32):
        return MAX_IM2COL_IDS
    fitting = []
    for chunks in range(-(-m // MAX_IM2COL_IDS), tile_rows + 1):
        rows = -(-tile_rows // chunks)  # tile rows per chunk
        if not fits(rows) and rows > 1:
            continue
        last = tile_rows - rows * (-(-tile_rows // rows) - 1)
        if splits_evenly(rows, device.compute_cores) and splits_evenly(last, device.compute_cores):
            return rows * 32
        fitting.append(rows)
        if len(fitting) > MAX_EXTRA_CHUNKS:
            break
    return fitting[0] * 32


MAX_EXTRA_CHUNKS = 8  # chunk counts tried beyond the fewest that fit L1, for chunks that split evenly


def splits_evenly(rows: int, cores: int) -> bool:
    """Whether `rows` tile rows divide over at most `cores` cores with at most twice the rows per core of a
    perfect spread (a matmul's M splits only by divisors)."""
    per_core = min(rows // c for c in range(1, min(rows, cores) + 1) if rows % c == 0)
    return per_core <= 2 * -(-rows // cores)


TILE_BYTES = 32 * 32 * 2  # a bf16 tile
MAX_JOINED = 4  # inputs of one concat of row chunks (a concat's circular buffers grow with its inputs)


def joined_rows(rewriter: PatternRewriter, op: Operation, parts: list[Value], result: TensorType) -> Value:
    """The row chunks `parts` joined along the rows into `result`, by a tree of concats of at most MAX_JOINED
    inputs each."""
    while len(parts) > 1:
        grouped = []
        for first in range(0, len(parts), MAX_JOINED):
            group = parts[first:first + MAX_JOINED]
            if len(group) == 1:
                grouped.append(group[0])
                continue
            rows = sum(tensor(part).shape[0] for part in group)
            like = result if len(parts) <= MAX_JOINED else result.with_shape((rows, result.shape[1]))
            grouped.append(rewriter.create_before(op, ttir.CONCAT.name, group, [like], {"axis": 0}).result)
        parts = grouped
    return parts[0]


def depthwise_matmul(rewriter: PatternRewriter, module: Module, op: Operation, x: Value, ids: np.ndarray,
                     w: np.ndarray, result: TensorType) -> Value:
    """A depthwise convolution (a channel per group) as one matmul batched over channel tiles: batch j is
    [M_out, KK * 32] (channel tile j at every kernel position, `im2col_lookup(grouped)`) times [KK * 32, 32]
    (the positions' diagonal weight blocks), so no product of unrelated channels is ever formed; the
    [Cp / 32, M_out, 32] result moves tiles to [M_out, Cp] (a tile gather), then the channel padding goes.
    The dense block-diagonal weight gives the same values (its zero tiles add 0 to Dst) at Cp / 32 times
    the work."""
    c = tensor(x).shape[1]
    x = padded_channels(rewriter, module, op, x)
    ct = tensor(x).shape[1] // 32
    positions, m = ids.shape
    cols = im2col_lookup(rewriter, module, op, untilized(rewriter, op, x), ids, grouped=True)
    blocks = np.zeros((ct * 32, positions, 32), np.float32)  # [channel, position, lane of its tile]
    channels = np.arange(c)
    blocks[channels, :, channels % 32] = w.reshape(c, positions)
    diagonal = np.ascontiguousarray(blocks.reshape(ct, 32, positions, 32).transpose(0, 2, 1, 3))
    b = weight(rewriter, module, op, "w_diagonal", diagonal.reshape(ct, positions * 32, 32), result)
    product = rewriter.create_before(op, ttir.MATMUL.name, [cols, b], [result.with_shape((ct, m, 32))]).result
    moved = rewriter.create_before(op, ttir.TRANSPOSE.name, [product], [result.with_shape((m, ct, 32))],
                                   {"perm": (1, 0, 2)}).result
    value = rewriter.create_before(op, ttir.RESHAPE.name, [moved], [result.with_shape((m, ct * 32))]).result
    if ct * 32 == c:
        return value
    return rewriter.create_before(op, ttir.SLICE.name, [value], [result],
                                  {"begins": (0, 0), "ends": (m, c), "steps": (1, 1)}).result


def is_depthwise(w: np.ndarray, groups: int) -> bool:
    """One input and one output channel per group, with more than a tile of channels (below that the
    block-diagonal product is a single tile wide anyway)."""
    return groups > 32 and w.shape[0] == groups and w.shape[1] == 1


def stacked_weight(dense: np.ndarray, channels: int) -> np.ndarray:
    """[KK, C, OC] -> [KK * Cp, OC] with zero rows for the padded channels."""
    positions, c, oc = dense.shape
    width = -(-channels // 32) * 32
    stacked = np.zeros((positions, width, oc), np.float32)
    stacked[:, :c] = dense
    return stacked.reshape(positions * width, oc)


def stacked_conv_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """ONNX weight [OC, C / groups, KH, KW] -> the im2col matmul weight [KK * Cp, OC]."""
    oc, cg, kh, kw = w.shape
    if groups == 1 and cg % 32 == 0:  # no padding, no blocks: a transposition
        stacked = np.empty((kh * kw, cg, oc), w.dtype)
        source = w.reshape(oc, cg, kh * kw)
        for first in range(0, oc, TRANSPOSE_BLOCK):  # in column blocks: twice as fast as one strided copy
            stacked[:, :, first:first + TRANSPOSE_BLOCK] = source[first:first + TRANSPOSE_BLOCK].transpose(2, 1, 0)
        return stacked.reshape(kh * kw * cg, oc)
    return stacked_weight(conv_weight(w, groups), cg * groups)


TRANSPOSE_BLOCK = 256  # output channels per block of the weight transposition


def computed_weight_conv(rewriter: PatternRewriter, module: Module, op: Operation) -> Value:
    """A convolution whose weight is computed on the device (no stacked weight can be made at compile time):
    the sum over kernel positions k of the sticks position k reads [M_out, C] times that position's weight
    W[:, :, i, j] [OC, C / groups] (sliced on the device, the product transposing it), per group, the groups
    joined along the channels."""
    x, w_value = op.operands[0], op.operands[1]
    oc, cg, kh, kw = tensor(w_value).shape
    groups = op.attr("groups")
    per_group = oc // groups
    ids = window_ids(op, (kh, kw))
    rows = untilized(rewriter, op, x)
    like = tensor(op.result)
    m = like.shape[0]

    def sliced(value: Value, begins: tuple[int, ...], ends: tuple[int, ...]) -> Value:
        shape = tuple(e - b for b, e in zip(begins, ends, strict=True))
        if shape == tensor(value).shape:
            return value
        return rewriter.create_before(op, ttir.SLICE.name, [value], [tensor(value).with_shape(shape)],
                                      {"begins": begins, "ends": ends, "steps": (1,) * len(shape)}).result

    totals: list[Value | None] = [None] * groups
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        w_k = sliced(w_value, (0, 0, i, j), (oc, cg, i + 1, j + 1))
        w_k = rewriter.create_before(op, ttir.RESHAPE.name, [w_k], [tensor(w_value).with_shape((oc, cg))]).result
        sticks = position_lookup(rewriter, module, op, rows, ids[k], k)
        for g in range(groups):
            a = sliced(sticks, (0, g * cg), (m, (g + 1) * cg))
            b = sliced(w_k, (g * per_group, 0), ((g + 1) * per_group, cg))
            product = rewriter.create_before(op, ttir.MATMUL.name, [a, b], [like.with_shape((m, per_group))],
                                             {"transpose_b": True}).result
            total = totals[g]
            totals[g] = product if total is None else rewriter.create_before(
                op, ttir.ADD.name, [total, product], [tensor(product)]).result
    if groups == 1:
        assert totals[0] is not None
        return totals[0]
    return rewriter.create_before(op, ttir.CONCAT.name, totals, [like], {"axis": 1}).result


class Conv2dToDevice(RewritePattern):
    """conv2d -> im2col (row lookup) and one matmul with the stacked weight, then the bias."""

    root = ttir.CONV2D.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x, w_value = op.operands[0], op.operands[1]
        _, _, kh, kw = tensor(w_value).shape
        result = tensor(op.result)
        w = constant_array(self.module, w_value)
        if w is None:
            value = computed_weight_conv(rewriter, self.module, op)
        else:
            w = np.asarray(w, np.float32)
            ids = window_ids(op, (kh, kw))
            if is_depthwise(w, op.attr("groups")) and ids.shape[1] <= MAX_IM2COL_IDS:
                value = None
                flat = w.reshape(w.shape[0], -1)
                for first in range(0, ids.shape[0], MAX_POSITIONS):  # a K split beyond MAX_POSITIONS
                    part = depthwise_matmul(rewriter, self.module, op, x, ids[first:first + MAX_POSITIONS],
                                            flat[:, first:first + MAX_POSITIONS], result)
                    value = part if value is None else rewriter.create_before(op, ttir.ADD.name, [value, part],
                                                                              [result]).result
            else:
                stacked = stacked_conv_weight(w, op.attr("groups"))
                value = windowed_matmul(rewriter, self.module, op, x, ids, stacked, "w", result)
        if len(op.operands) == 3:
            value = rewriter.create_before(op, ttir.ADD.name, [value, op.operands[2]], [result]).result
        rewriter.replace_op(op, [value])
        return True


def pool_divisors(op: Operation, kernel: tuple[int, int]) -> np.ndarray:
    """Per output pixel, the count an average divides by: the window's positions inside the padded input
    (count_include_pad) or inside the input."""
    n, h, w = op.attr("input_shape")
    _, oh, ow = window_output_shape(op, kernel)
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = op.attr("strides"), op.attr("pads"), op.attr("dilations")
    include = op.attr("count_include_pad")

    def count(size: int, out: int, stride: int, k: int, begin: int, end: int, dilation: int) -> np.ndarray:
        positions = (np.arange(out) * stride - begin)[:, None] + np.arange(k)[None, :] * dilation
        low, high = (-begin, size + end) if include else (0, size)
        return ((positions >= low) & (positions < high)).sum(axis=1)

    counts = count(h, oh, sh, kernel[0], pt, pb, dh)[:, None] * count(w, ow, sw, kernel[1], pl, pr, dw)[None, :]
    return np.tile(counts.reshape(-1), n).astype(np.float64)


class Pool2dToDevice(RewritePattern):
    """max: the elementwise maximum of the looked-up sticks of the KK positions; avg: their sum as a matmul
    of the im2col matrix by stacked identities, times 1 / count per output pixel."""

    root = ttir.POOL2D.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        x = op.operands[0]
        kernel = tuple(op.attr("kernel"))
        positions = math.prod(kernel)
        result = tensor(op.result)
        n, h, w = op.attr("input_shape")
        if self.covers_input(op):
            rewriter.replace_op(op, [self.global_reduce(rewriter, op, x, n, h * w)])
            return True
        ids = window_ids(op, kernel)
        if op.attr("kind") == "max":
            if positions > MAX_MAX_POSITIONS and min(kernel) > 1:
                rewriter.replace_op(op, [self.separable_max(rewriter, op, x)])
                return True
            if positions > MAX_MAX_POSITIONS and self.by_levels(op):
                rewriter.replace_op(op, [self.two_level_max(rewriter, op, x)])
                return True
            if positions > MAX_MAX_POSITIONS:
                raise UserError(f"node '{node_name(op)}': a {kernel[0]}x{kernel[1]} max pool has more than "
                                f"{MAX_MAX_POSITIONS} positions")
            first_valid = ids[np.argmax(ids >= 0, axis=0), np.arange(ids.shape[1])]
            rows = untilized(rewriter, op, x)
            ids = np.where(ids >= 0, ids, first_valid[None, :])
            m = ids.shape[1]
            if m <= MAX_IM2COL_IDS:
                pieces = [position_lookup(rewriter, self.module, op, rows, ids[k], k) for k in range(positions)]
                rewriter.replace_op(op, [combine(rewriter, op, ttir.MAXIMUM.name, pieces)])
                return True
            chunks = []  # beyond MAX_IM2COL_IDS output pixels by chunks of rows, as a convolution goes
            for start in range(0, m, MAX_IM2COL_IDS):
                part = ids[:, start:start + MAX_IM2COL_IDS]
                pieces = [position_lookup(rewriter, self.module, op, rows, part[k], start * positions + k)
                          for k in range(positions)]
                chunks.append(combine(rewriter, op, ttir.MAXIMUM.name, pieces))
            rewriter.replace_op(op, [joined_rows(rewriter, op, chunks, result)])
            return True
        c = tensor(x).shape[1]
        summed = stacked_weight(np.broadcast_to(np.eye(c, dtype=np.float32), (positions, c, c)), c)
        value = windowed_matmul(rewriter, self.module, op, x, ids, summed, "sum", result)
        divisors = pool_divisors(op, kernel)
        if np.all(divisors == divisors[0]):
            scale_type = TensorType((), result.element_type)
            scale = rewriter.create_before(op, CONSTANT, [], [scale_type],
                                           {"value": DenseAttr(scale_type, float(1.0 / divisors[0]))}).result
        else:
            scale = weight(rewriter, self.module, op, "inv_count", (1.0 / divisors)[:, None], result)
        value = rewriter.create_before(op, ttir.MUL.name, [value, scale], [result]).result
        rewriter.replace_op(op, [value])
        return True

    @staticmethod
    def separable_max(rewriter: PatternRewriter, op: Operation, x: Value) -> Value:
        """A max pool with too many positions for one fused maximum: the maximum over a box is the maximum
        along W of the maxima along H, two pools of kh and kw positions."""
        n, h, w = op.attr("input_shape")
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = (op.attr(name) for name in ("kernel", "strides", "pads",
                                                                                      "dilations"))
        common = {"kind": "max", "ceil_mode": op.attr("ceil_mode"), "count_include_pad": False}
        column = {**common, "kernel": (kh, 1), "input_shape": (n, h, w), "strides": (sh, 1), "pads": (pt, 0, pb, 0),
                  "dilations": (dh, 1)}
        oh = window_output_size(h, kh, sh, pt, pb, dh, bool(op.attr("ceil_mode")))
        rows = rewriter.create_before(op, ttir.POOL2D.name, [x], [tensor(x).with_shape((n * oh * w, tensor(x).shape[1]))],
                                      column).result
        row = {**common, "kernel": (1, kw), "input_shape": (n, oh, w), "strides": (1, sw), "pads": (0, pl, 0, pr),
               "dilations": (1, dw)}
        return rewriter.create_before(op, ttir.POOL2D.name, [rows], [tensor(op.result)], row).result

    @staticmethod
    def by_levels(op: Operation) -> bool:
        """A 1-D max pool `two_level_max` rewrites: dilated only where the dilation is at most the input's
        length (so a sub-window starting within its reach of the input holds an input position)."""
        _, h, w = op.attr("input_shape")
        axis = 0 if op.attr("kernel")[0] > 1 else 1
        return op.attr("kernel")[1 - axis] == 1 and op.attr("dilations")[axis] <= (h, w)[axis]

    @staticmethod
    def two_level_max(rewriter: PatternRewriter, op: Operation, x: Value) -> Value:
        """A 1-D max pool (kernel k x 1 or 1 x k, dilation d) of more than MAX_MAX_POSITIONS positions: the
        maximum over a window of positions q + j * d (j < k) is that over b sub-windows of a positions starting
        at q + t * g * d (t < b, g <= a, (b - 1) * g + a = k, overlapping where g < a): a stride-1 pool of a
        positions dilated by d, then a pool of b positions dilated by g * d with the original stride (each level
        rewritten in turn). The first level pads no more than (a - 1) * d positions on either side, so every
        sub-window it forms holds an input position; sub-windows wholly in the padding are the second level's
        padding instead (never a zero that could win)."""
        n, h, w = op.attr("input_shape")
        axis = 0 if op.attr("kernel")[0] > 1 else 1
        k, s, size = op.attr("kernel")[axis], op.attr("strides")[axis], (h, w)[axis]
        d = op.attr("dilations")[axis]
        pads = op.attr("pads")
        pb = pads[axis]
        out = window_output_shape(op, op.attr("kernel"))[1 + axis]
        b = min(MAX_MAX_POSITIONS, math.isqrt(k - 1) + 1)
        g = k // b
        a = k - (b - 1) * g
        reach = (a - 1) * d  # a sub-window's extent past its first position
        first_begin = min(pb, reach)
        needed = s * (out - 1) - pb + (b - 1) * g * d + first_begin + 1  # sub-windows the second level reads
        shortest = size + first_begin - reach
        first_end = min(max(needed - shortest, 0), reach)
        length = shortest + first_end
        second_end = max(needed - length, 0)

        def along(value: int, other: int) -> tuple[int, int]:
            return (value, other) if axis == 0 else (other, value)

        first_shape = (length, w) if axis == 0 else (h, length)
        first = {"kind": "max", "ceil_mode": False, "count_include_pad": False, "input_shape": (n, h, w),
                 "kernel": along(a, 1), "strides": (1, 1), "dilations": along(d, 1),
                 "pads": (*along(first_begin, 0), *along(first_end, 0))}
        like = tensor(x)
        level = rewriter.create_before(op, ttir.POOL2D.name, [x], [like.with_shape((n * math.prod(first_shape),
                                                                                   like.shape[1]))], first).result
        second = {"kind": "max", "ceil_mode": False, "count_include_pad": False, "input_shape": (n, *first_shape),
                  "kernel": along(b, 1), "strides": along(s, op.attr("strides")[1 - axis]), "dilations": along(g * d, 1),
                  "pads": (*along(pb - first_begin, pads[1 - axis]), *along(second_end, pads[3 - axis]))}
        assert window_output_size(length, b, s, pb - first_begin, second_end, g * d) == out, (k, s, size, pads)
        return rewriter.create_before(op, ttir.POOL2D.name, [level], [tensor(op.result)], second).result

    @staticmethod
    def covers_input(op: Operation) -> bool:
        """One window per image that holds the whole unpadded input (ResNet's 7x7 average pool, or a kernel
        larger than the input: HF EfficientNet's AvgPool2d(1280, ceil_mode=True) on 7x7, its window clipped):
        an average of it divides by H * W either way of count_include_pad, as no padding is counted."""
        n, h, w = op.attr("input_shape")
        kh, kw = op.attr("kernel")
        return (kh >= h and kw >= w and not any(op.attr("pads")) and tuple(op.attr("dilations")) == (1, 1)
                and tensor(op.result).shape[0] == n)

    @staticmethod
    def global_reduce(rewriter: PatternRewriter, op: Operation, x: Value, n: int, pixels: int) -> Value:
        """A pool over the whole image: the mean (or maximum) of each image's pixels, a reduction along the rows
        of [N, H*W, C] rather than a window lookup, for a kernel of any size."""
        like = tensor(x)
        c = like.shape[1]
        kind = ttir.REDUCE_MAX.name if op.attr("kind") == "max" else ttir.REDUCE_MEAN.name
        by_image = rewriter.create_before(op, ttir.RESHAPE.name, [x], [like.with_shape((n, pixels, c))]).result
        mean = rewriter.create_before(op, kind, [by_image], [like.with_shape((n, 1, c))],
                                      {"axes": (1,), "keepdims": True}).result
        return rewriter.create_before(op, ttir.RESHAPE.name, [mean], [tensor(op.result)]).result


# ----------------------------------------------------------------------------------------------
# Layout changes at the graph edges: NCHW <-> the channels-last matrix


def row_lookup(rewriter: PatternRewriter, module: Module, op: Operation, x: Value, steps: tuple,
               result: TensorType) -> Value:
    """A movement that keeps rows whole (`steps` of `footprint`): untilize, then look the rows up."""
    rows = row_gather_map(tensor(x).shape, steps)
    assert rows is not None
    source = tensor(x)
    width = source.shape[-1]
    untilized = rewriter.create_before(op, ttir.TO_LAYOUT.name, [x], [source.with_encoding(ROW_MAJOR)]).result
    table_type = TensorType((source.num_elements // width, width), source.element_type, ROW_MAJOR)
    table = rewriter.create_before(op, ttir.RESHAPE.name, [untilized], [table_type]).result
    stem = node_name(op).strip("/").replace("/", ".") or "rows"
    count = rows.size
    page = ids_page(count) if rows.ndim == 1 else count
    if page < count:  # an index page per `page` rows, the looked-up tiles regrouped without moving
        rows = rows.reshape(count // page, page)
    name = module.add_weight(f"{stem}.row_index", rows.astype(np.int32))
    ids = rewriter.create_before(op, CONSTANT, [], [TensorType(rows.shape, ScalarType("i32"), ROW_MAJOR)],
                                 {"value": WeightAttr(name)}).result
    looked_type = result if page == count else result.with_shape((*rows.shape, width))
    looked = rewriter.create_before(op, ttir.EMBEDDING.name, [table, ids], [looked_type]).result
    if page == count:
        return looked
    return rewriter.create_before(op, ttir.RESHAPE.name, [looked], [result]).result


def channel_change(chain: list[Operation]) -> str | None:
    """"to_channels_last" for transpose(0, 2, .., R-1, 1) + reshape to [N*H*W, C] (N*L, N*D*H*W for 3-, 5-D),
    "to_nchw" for reshape from [N*H*W, C] to [N, H, W, C] + transpose(0, R-1, 1, .., R-2) (or a reshape of
    [.., C] to [N, C, 1, 1]), else None."""
    names = [op.name for op in chain]
    if names == [ttir.TRANSPOSE.name, ttir.RESHAPE.name]:
        n, c, *spatial = tensor(chain[0].operands[0]).shape
        rank = len(spatial) + 2
        if rank >= 3 and tuple(chain[0].attr("perm")) == (0, *range(2, rank), 1) \
                and tensor(chain[1].result).shape == (n * math.prod(spatial), c):
            return "to_channels_last"
    if names == [ttir.RESHAPE.name, ttir.TRANSPOSE.name]:
        n, *spatial, c = tensor(chain[0].result).shape
        rank = len(spatial) + 2
        source = tensor(chain[0].operands[0]).shape  # rows of C: [N*H*W, C], or with unit dims in front
        if rank >= 3 and tuple(chain[1].attr("perm")) == (0, rank - 1, *range(1, rank - 1)) \
                and source[-1:] == (c,) and math.prod(source[:-1]) == n * math.prod(spatial) \
                and all(d == 1 for d in source[:-2]):
            return "to_nchw"
    if names == [ttir.RESHAPE.name] and tensor(chain[0].result).rank == 4:
        _n, c, h, w = tensor(chain[0].result).shape
        source = tensor(chain[0].operands[0]).shape
        if (h, w) == (1, 1) and c > 1 and source[-1:] == (c,):
            return "to_nchw"  # [.., C] (one pixel per image) -> [N, C, 1, 1]
    return None


class ChannelLayoutEdge(RewritePattern):
    """NCHW <-> [N*H*W, C] (where the graph enters or leaves the channels-last form) as row lookups around
    a transpose of whole tiles: the device moves rows and tiles, not single elements. NCHW -> rows (n, h)
    of [C, W] (a row lookup), tile transpose to [W, C], rows regrouped to [N*H*W, C]; and back. An NCDHW
    tensor goes the same way with rows (n, d, h), an NCL one with rows n (no lookup before or after the
    transpose)."""

    def __init__(self, root: str, module: Module) -> None:
        self.root = root
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        if is_folded(op):
            return rewriter.notify_match_failure(op, "not the end of its movement chain")
        chain = movement_chain(op)
        kind = channel_change(chain)
        if kind is None:
            return rewriter.notify_match_failure(op, "not an NCHW <-> channels-last change")
        x = chain[0].operands[0]
        like = tensor(x)
        nchw = like.shape if kind == "to_channels_last" else tensor(op.result).shape
        n, c, *outer_dims, w = nchw
        rows = n * math.prod(outer_dims)
        # [N, C, (D,) H, W] <-> [N, (D,) H, C, W]: C moves next to W
        to_rows = (0, *range(2, len(nchw) - 1), 1, len(nchw) - 1)
        from_rows = (0, len(nchw) - 2, *range(1, len(nchw) - 2), len(nchw) - 1)
        if kind == "to_channels_last":
            steps = (("transpose", to_rows), ("reshape", (rows, c, w)))
            by_rows = x if len(nchw) == 3 else row_lookup(rewriter, self.module, op, x, steps,
                                                            like.with_shape((rows, c, w)))
            swapped = rewriter.create_before(op, ttir.TRANSPOSE.name, [by_rows], [like.with_shape((rows, w, c))],
                                             {"perm": (0, 2, 1)}).result
            value = row_lookup(rewriter, self.module, op, swapped, (("reshape", (rows * w, c)),),
                               like.with_shape((rows * w, c)))
        else:
            by_rows = row_lookup(rewriter, self.module, op, x, (("reshape", (rows, w, c)),),
                                 like.with_shape((rows, w, c)))
            swapped = rewriter.create_before(op, ttir.TRANSPOSE.name, [by_rows], [like.with_shape((rows, c, w))],
                                             {"perm": (0, 2, 1)}).result
            steps = (("reshape", (n, *outer_dims, c, w)), ("transpose", from_rows))
            value = swapped if len(nchw) == 3 else row_lookup(rewriter, self.module, op, swapped, steps,
                                                              like.with_shape(nchw))
        rewriter.replace_op(op, [value])
        return True


class PaddedLookupToDevice(RewritePattern):
    """embedding {pad_negative} of a computed matrix by constant ids (Pad, Resize) -> untilize the matrix and
    read the ids from a row-major int32 index buffer, as the window ops do."""

    root = ttir.EMBEDDING.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        table, indices = op.operands
        ids = constant_array(self.module, indices)
        if not op.attr("pad_negative") or ids is None or tensor(indices).encoding is not None \
                or defining_op(table, CONSTANT) is not None:
            return rewriter.notify_match_failure(op, "not a padded lookup of a computed matrix by constant ids")
        source = tensor(table)
        rows = rewriter.create_before(op, ttir.TO_LAYOUT.name, [table], [source.with_encoding(ROW_MAJOR)]).result
        flat = ids.astype(np.int32).reshape(-1)
        page = ids_page(flat.size)
        paged = flat.reshape(flat.size // page, page) if page < flat.size else flat
        stem = node_name(op).strip("/").replace("/", ".") or "lookup"
        name = self.module.add_weight(f"{stem}.row_index", paged)
        index = rewriter.create_before(op, CONSTANT, [], [TensorType(paged.shape, ScalarType("i32"), ROW_MAJOR)],
                                       {"value": WeightAttr(name)}).result
        result = tensor(op.result)
        looked = rewriter.create_before(op, ttir.EMBEDDING.name, [rows, index],
                                        [result.with_shape((*paged.shape, source.shape[1]))],
                                        {"pad_negative": True}).result
        if tensor(looked).shape != result.shape:
            looked = rewriter.create_before(op, ttir.RESHAPE.name, [looked], [result]).result
        rewriter.replace_op(op, [looked])
        return True


MAX_PAGE_IDS = 2048  # ids of one index page: a reader holds a whole page (two, double-buffered) in L1
MAX_SPLIT_BATCHES = 64  # index pages of a ragged lookup split into one lookup each (beyond: left as it is)


class LargeIndexPage(RewritePattern):
    """A lookup by constant ids whose index page (the ids' last dim) is longer than MAX_PAGE_IDS: its reader
    would hold the whole page in L1 (a 640x640 ConvTranspose's zero-stuffing reads 410881 ids, 1.6 MB a
    page). The ids go in pages of 32 instead, one per output tile row, so the footprint no longer grows with
    the lookup: [B * L / 32, 32] when the page length L is a multiple of 32 (the result regrouped, a view);
    else each page as a one-position im2col lookup (ids [1, ceil(L / 32), 32], -1 past L: zero rows in the
    output's padding), the B results joined along the batch (a tile-granular concat). Negative ids of a
    plain lookup (counted from the table's end, as ONNX Gather) are resolved first, as a padded lookup
    reads -1 as a zero row."""

    root = ttir.EMBEDDING.name

    def __init__(self, module: Module) -> None:
        self.module = module

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        table, indices = op.operands
        if op.attr("im2col") or tensor(indices).rank == 0 or tensor(indices).shape[-1] <= MAX_PAGE_IDS:
            return rewriter.notify_match_failure(op, "an index page of at most MAX_PAGE_IDS ids")
        ids = constant_array(self.module, indices)
        if ids is None:
            return rewriter.notify_match_failure(op, "the ids are computed")
        ids = np.asarray(ids).astype(np.int64)
        length = ids.shape[-1]
        batches = ids.size // length
        if length % 32 and batches > MAX_SPLIT_BATCHES:
            return rewriter.notify_match_failure(op, "too many ragged index pages to split")
        if not op.attr("pad_negative"):
            ids = np.where(ids < 0, ids + tensor(table).shape[0], ids)
        result = tensor(op.result)
        width = result.shape[-1]
        stem = node_name(op).strip("/").replace("/", ".") or "lookup"
        pad = {"pad_negative": True} if op.attr("pad_negative") else {}

        def index(array: np.ndarray) -> Value:
            name = self.module.add_weight(f"{stem}.paged_index", array.astype(np.int32))
            return rewriter.create_before(op, CONSTANT, [], [TensorType(array.shape, ScalarType("i32"), ROW_MAJOR)],
                                          {"value": WeightAttr(name)}).result

        if length % 32 == 0:
            paged = ids.reshape(-1, 32)
            looked = rewriter.create_before(op, ttir.EMBEDDING.name, [table, index(paged)],
                                            [result.with_shape((paged.shape[0], 32, width))], pad).result
            rewriter.replace_op(op, [rewriter.create_before(op, ttir.RESHAPE.name, [looked], [result]).result])
            return True
        tile_rows = -(-length // 32)
        parts = []
        # each page's rows as [1, .., 1, L, W] (an im2col result may have leading unit dims), so no reshape
        # follows it (a reshape then a transpose would read as a layout edge, ChannelLayoutEdge)
        piece = result.with_shape((*([1] * (result.rank - 2)), length, width)) if batches == 1 or result.rank > 2 \
            else result.with_shape((length, width))
        for page in ids.reshape(batches, length):
            padded = np.full(tile_rows * 32, -1, np.int64)
            padded[:length] = page
            parts.append(rewriter.create_before(op, ttir.EMBEDDING.name,
                                                [table, index(padded.reshape(1, tile_rows, 32))], [piece],
                                                {"pad_negative": True, "im2col": True}).result)
        while len(parts) > 1:  # a tree of concats along the batch, at most MAX_JOINED inputs each
            joined = []
            for first in range(0, len(parts), MAX_JOINED):
                group = parts[first:first + MAX_JOINED]
                joined.append(group[0] if len(group) == 1 else rewriter.create_before(
                    op, ttir.CONCAT.name, group, [tensor(group[0]).with_shape(
                        (*tensor(group[0]).shape[:-3], sum(tensor(g).shape[-3] for g in group), length, width))],
                    {"axis": result.rank - 3}).result)
            parts = joined
        value = parts[0]
        if tensor(value).shape != result.shape:
            value = rewriter.create_before(op, ttir.RESHAPE.name, [value], [result]).result
        rewriter.replace_op(op, [value])
        return True


def window_patterns(module: Module) -> list[RewritePattern]:
    return [Conv2dToDevice(module), Pool2dToDevice(module), PaddedLookupToDevice(module), LargeIndexPage(module),
            ChannelLayoutEdge(ttir.RESHAPE.name, module), ChannelLayoutEdge(ttir.TRANSPOSE.name, module)]
