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
    TileShape,
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


PROBE_TILES = 64


def _tile_check(tiles: np.ndarray, starts: np.ndarray, sources: list[TileShape]) -> tuple[np.ndarray, np.ndarray, bool] | str:
    """Output tiles of source element ids (-1: padding) -> (their real elements, the source tile of each in a
    numbering over all inputs, transposed), or why they are not whole input tiles copied or transposed."""
    real = tiles >= 0
    element = np.where(real, tiles, 0)
    which = np.searchsorted(starts, element, side="right") - 1 if len(sources) > 1 else 0  # each element's input
    local = element - starts[which]
    rows = np.array([src.rows for src in sources])[which]
    cols = np.array([src.cols for src in sources])[which]
    rts = np.array([src.rt for src in sources])[which]
    cts = np.array([src.ct for src in sources])[which]
    tile_starts = np.cumsum([0, *(src.tiles for src in sources)])
    b, rc = np.divmod(local, rows * cols)
    r, c = np.divmod(rc, cols)
    tile_id = tile_starts[which] + (b * rts + r // TILE) * cts + c // TILE  # a numbering over all inputs
    lo = np.where(real, tile_id, np.iinfo(np.int64).max).min(axis=(1, 2))
    hi = np.where(real, tile_id, -1).max(axis=(1, 2))
    if (lo != hi).any():
        return "an output tile takes data from several input tiles"
    i, j = np.arange(TILE)[:, None], np.arange(TILE)[None, :]
    copied = ((r % TILE == i) & (c % TILE == j)) | ~real
    swapped = ((r % TILE == j) & (c % TILE == i)) | ~real
    if copied.all():
        return real, lo, False
    if swapped.all():
        return real, lo, True
    return "elements move inside a tile in a way that is neither a copy nor a tile transpose"


@functools.lru_cache(maxsize=64)
def gather_map_of_inputs(in_shapes: tuple[tuple[int, ...], ...], steps: tuple[Step, ...]) -> Gather | str:
    """The tile gather doing `steps` on tensors of `in_shapes` (several only when the first step is a concat),
    or why it is not tile-granular.

    Each output element's source element is computed with numpy; the map is tile-granular when every
    output tile takes all its data from one input tile, at the same in-tile positions (copy) or at
    swapped ones (transpose), and both tiles hold the same number of real elements (so the padding
    of one is the padding of the other, and stays zero).
    """
    quick = _row_concat(in_shapes, steps) or _row_regroup(in_shapes, steps)
    if quick is not None:
        return quick
    sizes = [math.prod(shape) for shape in in_shapes]
    starts = np.cumsum([0, *sizes])
    parts = [np.arange(start, start + size, dtype=np.int64).reshape(shape)
             for start, size, shape in zip(starts, sizes, in_shapes, strict=False)]
    flat = parts[0]
    for kind, arg in steps:
        flat = np.concatenate(parts, axis=arg[0]) if kind == "concat" else _apply_step(flat, kind, arg)
    sources = [tile_shape(shape) for shape in in_shapes]
    out = tile_shape(flat.shape)
    matrix = flat.reshape(out.batches, out.rows, out.cols)
    padded = np.full((out.batches, out.rt * TILE, out.ct * TILE), -1, dtype=np.int64)
    padded[:, : out.rows, : out.cols] = matrix
    tiles = padded.reshape(out.batches, out.rt, TILE, out.ct, TILE).transpose(0, 1, 3, 2, 4).reshape(-1, TILE, TILE)
    if len(tiles) > PROBE_TILES:  # a large movement that is not tile-granular mostly fails on its first tiles
        probe = _tile_check(tiles[:PROBE_TILES], starts, sources)
        if isinstance(probe, str):
            return probe
    checked = _tile_check(tiles, starts, sources)
    if isinstance(checked, str):
        return checked
    real, lo, transposed = checked
    tile_starts = np.cumsum([0, *(src.tiles for src in sources)])
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
