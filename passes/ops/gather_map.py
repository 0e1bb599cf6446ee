"""Tile gather maps of data movement chains (transpose, reshape, slice, concat): which input tile every
output tile comes from, worked out with numpy at compile time; and the row maps of movements that keep rows
whole (for the row gathers of passes/movement.py)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ttc.ir.core import Operation
from ttc.ir.dialects import ttir
from ttc.passes.ops.geometry import (
    TILE,
    tensor,
    tile_shape,
)

Step = tuple[str, tuple]


def chain_steps(chain: Sequence[Operation]) -> tuple[tuple[tuple[int, ...], ...], tuple[Step, ...]]:
    """(input shapes, steps) of a data movement chain, hashable for caching its gather map."""
    steps: list[Step] = []
    for op in chain:
        if op.name == ttir.TRANSPOSE.name:
            steps.append(("transpose", tuple(op.attr("perm"))))
        elif op.name == ttir.SLICE.name:
            steps.append(("slice", (tuple(op.attr("begins")), tuple(op.attr("ends")), tuple(op.attr("steps")))))
        elif op.name == ttir.CONCAT.name:
            steps.append(("concat", (op.attr("axis"),)))
        else:
            steps.append(("reshape", tensor(op.result).shape))
    inputs = chain[0].operands if chain[0].name == ttir.CONCAT.name else chain[0].operands[:1]
    return tuple(tensor(v).shape for v in inputs), tuple(steps)


@dataclass(frozen=True)
class Gather:
    """A tile-granular data movement: output tile t comes from tile `source[t]` of input `inputs[t]`."""

    source: np.ndarray  # int64 [output tiles]
    transposed: bool  # every tile is transposed (last two dims swapped) rather than copied
    inputs: np.ndarray | None = None  # int64 [output tiles]: which input (None: the only one)

    @property
    def is_identity(self) -> bool:
        """Output tile t is input tile t, untransposed: the same pages (a view of the input)."""
        return not self.transposed and self.inputs is None and \
            np.array_equal(self.source, np.arange(len(self.source)))


def _apply_step(flat: np.ndarray, kind: str, arg: tuple) -> np.ndarray:
    if kind == "transpose":
        return np.transpose(flat, arg)
    if kind == "slice":
        return flat[tuple(slice(b, None if e < 0 else e, s) for b, e, s in zip(*arg, strict=True))]
    return flat.reshape(arg)


def gather_map(in_shape: tuple[int, ...], steps: tuple[Step, ...]) -> Gather | str:
    """The tile gather doing `steps` on one tensor of `in_shape` (see `gather_map_of_inputs`)."""
    return gather_map_of_inputs((tuple(in_shape),), tuple(steps))


def _row_concat(in_shapes: tuple[tuple[int, ...], ...], steps: tuple[Step, ...]) -> Gather | None:
    """The tile map of a concat of matrices along their rows (every one but the last a whole number of tile
    rows), found without the element-level map: each input's tiles follow the previous one's in order."""
    if len(steps) != 1 or steps[0] != ("concat", (0,)) or any(len(shape) != 2 for shape in in_shapes):
        return None
    if len({shape[1] for shape in in_shapes}) != 1 or any(shape[0] % TILE for shape in in_shapes[:-1]):
        return None
    counts = [tile_shape(shape).tiles for shape in in_shapes]
    source = np.concatenate([np.arange(count, dtype=np.int64) for count in counts])
    inputs = np.concatenate([np.full(count, i, dtype=np.int64) for i, count in enumerate(counts)])
    return Gather(source, False, inputs if len(in_shapes) > 1 else None)


def _row_regroup(in_shapes: tuple[tuple[int, ...], ...], steps: tuple[Step, ...]) -> Gather | None:
    """A reshape keeping the last dim that regroups whole tile rows (the rows of every matrix before and after
    a multiple of 32, e.g. [B, P, C] -> [B * P, C]): the same tiles in the same order, without the
    element-level map."""
    if len(in_shapes) != 1 or len(steps) != 1 or steps[0][0] != "reshape":
        return None
    source, result = in_shapes[0], tuple(steps[0][1])
    if len(source) < 2 or len(result) < 2 or source[-1] != result[-1]:
        return None
    if source[-2] % TILE or result[-2] % TILE:
        return None
    return Gather(np.arange(tile_shape(source).tiles, dtype=np.int64), False)


CHECK_TILES = 4096  # output tiles per chunk of the tile-granularity check


def _tile_labels(shape: tuple[int, ...], first_tile: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays of `shape`: each element's tile (numbered from `first_tile` in the runtime's tile order) and
    its position inside that tile (row * 32 + column)."""
    ts = tile_shape(shape)
    b = np.arange(ts.batches, dtype=dtype)[:, None, None]
    r = np.arange(ts.rows, dtype=dtype)[None, :, None]
    c = np.arange(ts.cols, dtype=dtype)[None, None, :]
    tile = first_tile + (b * ts.rt + r // TILE) * ts.ct + c // TILE
    position = ((r % TILE) * TILE + c % TILE).astype(np.int16)
    full = (ts.batches, ts.rows, ts.cols)
    return np.broadcast_to(tile, full).reshape(shape), np.broadcast_to(position, full).reshape(shape)


def _move(parts: list[np.ndarray], steps: tuple[Step, ...]) -> np.ndarray:
    flat = parts[0]
    for kind, arg in steps:
        flat = np.concatenate(parts, axis=arg[0]) if kind == "concat" else _apply_step(flat, kind, arg)
    return flat


def _as_tiles(values: np.ndarray, fill: int) -> np.ndarray:
    """A moved array in the output's tile layout: [tiles, 32, 32], `fill` in the padding."""
    out = tile_shape(values.shape)
    padded = np.full((out.batches, out.rt * TILE, out.ct * TILE), fill, dtype=values.dtype)
    padded[:, : out.rows, : out.cols] = values.reshape(out.batches, out.rows, out.cols)
    return padded.reshape(out.batches, out.rt, TILE, out.ct, TILE).transpose(0, 1, 3, 2, 4).reshape(-1, TILE, TILE)


_COPY = (np.arange(TILE)[:, None] * TILE + np.arange(TILE)[None, :]).astype(np.int16)


def _tile_flags(tile: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, bool] | str:
    """Output tiles labelled with each element's source tile (-1: padding) and its position in that tile ->
    (the real elements, each output tile's source tile in a numbering over all inputs, whether every tile is a
    copy, whether every tile is a transpose), or why some output tile takes data from several input tiles."""
    real = tile >= 0
    lo = np.where(real, tile, np.iinfo(tile.dtype).max).min(axis=(1, 2))
    hi = tile.max(axis=(1, 2))
    if (lo != hi).any():
        return "an output tile takes data from several input tiles"
    pad = ~real
    return real, lo.astype(np.int64), bool(((position == _COPY) | pad).all()), bool(((position == _COPY.T) | pad).all())


def _tile_check(tile: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool] | str:
    """The labels of a moved array ([batches, rows, cols]: source tiles, -1 in no element, and in-tile positions)
    -> (the real elements of each output tile, its source tile, transposed), or why the output tiles are not whole
    input tiles copied or transposed. Checked in chunks of about CHECK_TILES output tiles (whole batches, or bands
    of tile rows of one batch) so that a movement failing anywhere fails without the whole array in tile layout."""
    batches, rows, _ = tile.shape
    out = tile_shape(tile.shape)
    per_batch = out.rt * out.ct
    if per_batch >= CHECK_TILES:
        band = TILE * max(1, CHECK_TILES // max(out.ct, 1))
        chunks = [(slice(b, b + 1), slice(r, r + band)) for b in range(batches) for r in range(0, rows, band)]
    else:
        group = max(1, CHECK_TILES // max(per_batch, 1))
        chunks = [(slice(b, b + group), slice(0, rows)) for b in range(0, batches, group)]
    parts = []
    for bs, rs in chunks or [(slice(None), slice(None))]:
        flags = _tile_flags(_as_tiles(tile[bs, rs], -1), _as_tiles(position[bs, rs], 0))
        if isinstance(flags, str):
            return flags
        parts.append(flags)
    real = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    lo = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if all(p[2] for p in parts):
        return real, lo, False
    if all(p[3] for p in parts):
        return real, lo, True
    return "elements move inside a tile in a way that is neither a copy nor a tile transpose"


@functools.lru_cache(maxsize=256)
def gather_map_of_inputs(in_shapes: tuple[tuple[int, ...], ...], steps: tuple[Step, ...]) -> Gather | str:
    """The tile gather doing `steps` on tensors of `in_shapes` (several only when the first step is a concat),
    or why it is not tile-granular.

    Every input element is labelled with its tile and its position inside the tile, and the steps move the
    labels as they move the data: the map is tile-granular when every output tile takes all its data from
    one input tile, at the same in-tile positions (copy) or at swapped ones (transpose), and both tiles hold
    the same number of real elements (so the padding of one is the padding of the other, and stays zero).
    """
    quick = _row_concat(in_shapes, steps) or _row_regroup(in_shapes, steps)
    if quick is not None:
        return quick
    sources = [tile_shape(shape) for shape in in_shapes]
    tile_starts = np.cumsum([0, *(src.tiles for src in sources)])
    dtype = np.int32 if tile_starts[-1] < 2**31 - 1 else np.int64
    labels = [_tile_labels(shape, int(start), dtype) for shape, start in zip(in_shapes, tile_starts, strict=False)]
    tile = _move([t for t, _ in labels], steps)
    position = _move([p for _, p in labels], steps)
    out = tile_shape(tile.shape)
    checked = _tile_check(tile.reshape(out.batches, out.rows, out.cols),
                          position.reshape(out.batches, out.rows, out.cols))
    if isinstance(checked, str):
        return checked
    real, lo, transposed = checked
    source_input = np.searchsorted(tile_starts, lo, side="right") - 1
    source = lo - tile_starts[source_input]
    src_rows = np.array([s.rows for s in sources])[source_input]
    src_cols = np.array([s.cols for s in sources])[source_input]
    src_rt = source // np.array([s.ct for s in sources])[source_input] % np.array([s.rt for s in sources])[source_input]
    src_ct = source % np.array([s.ct for s in sources])[source_input]
    src_real = np.minimum(src_rows - src_rt * TILE, TILE) * np.minimum(src_cols - src_ct * TILE, TILE)
    if (real.sum(axis=(1, 2)) != src_real).any():
        return "an output tile would carry real data into its padding"
    return Gather(source, transposed, source_input if len(in_shapes) > 1 else None)


def row_gather_map(in_shape: tuple[int, ...], steps: tuple[Step, ...]) -> np.ndarray | None:
    """For a movement that keeps every row of the last dim whole: the source row of each output row
    (shaped like the output without its last dim), else None."""
    if not in_shape:
        return None
    width = in_shape[-1]
    flat = np.arange(math.prod(in_shape), dtype=np.int64).reshape(in_shape)
    for kind, arg in steps:
        if kind == "concat":
            return None
        flat = _apply_step(flat, kind, arg)
    if not flat.shape or flat.shape[-1] != width or not flat.size:
        return None
    first = flat[..., :1]
    if (first % width != 0).any() or not (flat == first + np.arange(width)).all():
        return None
    return first[..., 0] // width
