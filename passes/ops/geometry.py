"""The geometry every device op shares: tiles and pages, shards, the L1 share of a tensor, the CB indices
and the CB plan helpers (`cb`, `double`, `cb_bytes`), and the candidate enumerations several kinds use.

The op modules (matmul.py, eltwise.py, ...) build their blockings, CB plans, counts and kernels on these;
nothing here knows an op kind.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ttc.ir.attributes import Dims, TypeAttr
from ttc.ir.core import Module, Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150, DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.types import ScalarType, TensorType

TILE = 32


ALIGNMENT = 32  # allocations in L1 and DRAM


HALF_DST = 8  # Dst tiles one tile_regs_acquire owns


INDEX_ROW = 8  # int32 entries per index-table page (32 bytes)


TILE_BYTES = {"f32": 4096, "bf16": 2048, "f16": 2048, "bfp8_b": 1088, "bfp4_b": 576, "i32": 4096}


ELEMENT_BYTES = {"f32": 4, "bf16": 2, "i32": 4}


CB_IN0, CB_IN1, CB_BIAS = 0, 1, 2


CB_RESIDUAL = 3  # matmul: a fused residual's tiles of the output subblock


CB_INDEX = 8


CB_OUT = 16


CB_FIRST_INTERM = 17


CB_PARTIALS, CB_BIASED = 24, 25


CB_GAMMA, CB_BETA = 1, 2


CB_MASKED, CB_STAT, CB_WIDE, CB_WIDE2, CB_STAT2, CB_TMP, CB_TMP2 = 17, 18, 19, 20, 21, 22, 23


CB_GROUPS = 26  # partial reductions of groups of tiles (blocked summation)


CB_TOTAL, CB_CHUNK = 27, 28  # matmul: the running sum of K chunks, and one chunk's sum

CB_CHUNK_GROUP = 29  # row ops: the running sum of one group of row chunks (a two-level running sum)


def align(size: int, alignment: int = ALIGNMENT) -> int:
    return -(-size // alignment) * alignment


def node_names(op: Operation) -> str:
    """The ONNX node(s) of an op for messages."""
    return ", ".join(f'"{n}"' for n in op.loc.names()) or str(op.loc)


def module_device(module: Module) -> DeviceAttr:
    """The module's device descriptor (`tt.device`), e150 when the module names none."""
    device = module.attributes.get(DEVICE_ATTR_NAME)
    return device if isinstance(device, DeviceAttr) else E150


@dataclass(frozen=True)
class TileShape:
    """A tensor as tile layout sees it: batch dims, then a rows x cols matrix padded to tiles."""

    batch: tuple[int, ...]
    rows: int
    cols: int

    @property
    def rt(self) -> int:
        return -(-self.rows // TILE)

    @property
    def ct(self) -> int:
        return -(-self.cols // TILE)

    @property
    def batches(self) -> int:
        return math.prod(self.batch)

    @property
    def matrix_tiles(self) -> int:
        return self.rt * self.ct

    @property
    def tiles(self) -> int:
        return self.batches * self.matrix_tiles


def tile_shape(shape: Sequence[int]) -> TileShape:
    """Rank 0 is [1, 1] and rank 1 [N] is [1, N], as the runtime's tile layout."""
    shape = tuple(shape)
    if not shape:
        return TileShape((), 1, 1)
    if len(shape) == 1:
        return TileShape((), 1, shape[0])
    return TileShape(shape[:-2], shape[-2], shape[-1])


def tensor(value: Value) -> TensorType:
    assert isinstance(value.type, TensorType), f"{value.type} is not a tensor"
    return value.type


def layout(t: TensorType) -> LayoutAttr:
    assert isinstance(t.encoding, LayoutAttr), f"{t} has no #tt.layout"
    return t.encoding


def format_attr(element_type: ScalarType) -> TypeAttr:
    return TypeAttr(element_type)


BLOCK_FLOATS = frozenset({"bfp8_b", "bfp4_b"})


def work_format(element_type: ScalarType) -> ScalarType:
    """The format of a program's intermediate CBs (partial sums, statistics, a fused body's temporaries) when
    its result is `element_type`: the result's own, except a block float's, whose intermediates hold the Dst
    format, bf16: a value the program reads back is never rounded to a shared exponent (docs/numerics.md)."""
    return ScalarType("bf16") if element_type.name in BLOCK_FLOATS else element_type


def tile_bytes(element_type: ScalarType) -> int:
    try:
        return TILE_BYTES[element_type.name]
    except KeyError:
        raise UserError(f"'{element_type}' is not a device data format") from None


def page_size(t: TensorType) -> int:
    """Bytes per page: a tile, or one row of the last dim for row-major buffers."""
    if layout(t).tensor_layout == "row_major":
        return (t.shape[-1] if t.shape else 1) * ELEMENT_BYTES[t.element_type.name]
    return tile_bytes(t.element_type)


def num_pages(t: TensorType) -> int:
    if layout(t).tensor_layout == "row_major":
        return math.prod(t.shape[:-1]) if len(t.shape) > 1 else 1
    return tile_shape(t.shape).tiles


def bank_share(t: TensorType, banks: int) -> int:
    """Bytes per bank of an interleaved buffer over `banks` banks (32 B aligned); of a sharded buffer, the
    bytes of one shard (every core keeps the shard's address range, as L1 is allocated in lockstep)."""
    if is_sharded(t):
        return shard_bytes(t)
    return align(-(-num_pages(t) // banks) * page_size(t))


def in_l1(t: object) -> bool:
    return isinstance(t, TensorType) and isinstance(t.encoding, LayoutAttr) and t.encoding.memory_space == "l1"


def l1_share(t: TensorType, device: DeviceAttr) -> int:
    """Per-core bytes of an L1 tensor: an interleaved one's pages spread over every compute core, a sharded
    one's shard."""
    return bank_share(t, device.compute_cores) if in_l1(t) else 0


SHARDED_LAYOUTS = ("height_sharded", "block_sharded")


def is_sharded(t: object) -> bool:
    return isinstance(t, TensorType) and isinstance(t.encoding, LayoutAttr) \
        and t.encoding.memory_layout != "interleaved"


@dataclass(frozen=True)
class ShardGeometry:
    """A tile tensor cut into shards of shard_rows x shard_cols tiles over its (rows x cols) tiles (batches
    stacked along the rows), row-major; shard k lives on core k of `grid` (row-major). Height sharding has
    full-width shards, block sharding one shard per core of a 2-D grid (shard columns = grid x)."""

    rows: int
    cols: int
    shard_rows: int
    shard_cols: int
    grid: tuple[int, int]

    @property
    def shards_per_row(self) -> int:
        return -(-self.cols // self.shard_cols)

    @property
    def shards(self) -> int:
        return -(-self.rows // self.shard_rows) * self.shards_per_row

    def owner(self, row: np.ndarray | int, col: np.ndarray | int) -> np.ndarray | int:
        """The shard (= core of the grid, row-major) holding tile (row, col)."""
        return (row // self.shard_rows) * self.shards_per_row + col // self.shard_cols


def tile_rows_cols(t: TensorType) -> tuple[int, int]:
    shape = tile_shape(t.shape)
    return shape.batches * shape.rt, shape.ct


def shard_geometry(t: TensorType) -> ShardGeometry:
    encoding = layout(t)
    if encoding.grid is None or encoding.shard is None or encoding.memory_space != "l1" \
            or encoding.tensor_layout != "tile":
        raise UserError(f"{t}: a sharded tensor lives in L1 in tile layout with a grid and a shard shape "
                        "(#tt.layout<tile, l1, height_sharded, grid = XxY, shard = RxC>)")
    rows, cols = tile_rows_cols(t)
    return ShardGeometry(rows, cols, int(encoding.shard[0]), int(encoding.shard[1]),
                         (int(encoding.grid[0]), int(encoding.grid[1])))


def shard_bytes(t: TensorType) -> int:
    """L1 bytes per core of one shard (32 B aligned)."""
    geometry = shard_geometry(t)
    return align(geometry.shard_rows * geometry.shard_cols * page_size(t))


def sharded_layout(memory_layout: str, grid: tuple[int, int], shard: tuple[int, int]) -> LayoutAttr:
    return LayoutAttr("tile", "l1", memory_layout, Dims(grid), Dims(shard))


def core_bank(core: int | np.ndarray, grid: tuple[int, int], device_x: int) -> int | np.ndarray:
    """The device core (row-major over a compute grid `device_x` cores wide) of core #core of a grid placed
    at (0, 0)."""
    return (core // grid[0]) * device_x + core % grid[0]


def batch_offsets(source: Sequence[int], result: Sequence[int]) -> np.ndarray:
    """For each flat batch index of `result`, the first tile of the matching matrix of `source`
    (numpy broadcasting of the batch dims; a broadcast dim repeats the same matrix)."""
    src, out = tile_shape(source), tile_shape(result)
    rank = max(len(src.batch), len(out.batch))
    batch = (1,) * (rank - len(src.batch)) + src.batch
    index = np.arange(src.batches, dtype=np.int64).reshape(batch)
    return np.broadcast_to(index, (1,) * (rank - len(out.batch)) + out.batch).ravel() * src.matrix_tiles


def affine_step(offsets: np.ndarray, group: int) -> int | None:
    """The constant step of `offsets` inside consecutive groups of `group` (None if not affine)."""
    if group == 1:
        return 0
    steps = np.diff(offsets.reshape(-1, group), axis=1)
    return int(steps.flat[0]) if (steps == steps.flat[0]).all() else None


def is_row_major(value: Value) -> bool:
    t = value.type
    return isinstance(t, TensorType) and isinstance(t.encoding, LayoutAttr) and t.encoding.tensor_layout == "row_major"


def double(pages: int, pushes: int) -> int:
    """Double-buffer a CB that is filled more than once, so the producer can run ahead."""
    return pages * 2 if pushes > 1 else pages


def cb(index: int, element_type: ScalarType, pages: int, page: int | None = None) -> CBConfigAttr:
    size = page if page is not None else tile_bytes(element_type)
    return CBConfigAttr(index, page_size=size, pages=pages, format=format_attr(element_type))


def cb_bytes(cbs: Sequence[CBConfigAttr]) -> int:
    """L1 bytes per core of these CBs, each aligned as the allocator places them."""
    return sum(align(c.page_size * c.pages) for c in cbs)


GRID_CORES = 108  # the e150 compute grid
# the block counts that fill the grid beside 1, 2, 3, ... blocks of another axis: overlapping splits tried besides
# the exact ones (matmul.m_splits, the embedding lookup's tile rows)
GRID_FILLS = tuple(sorted({GRID_CORES // n for n in range(1, GRID_CORES + 1)}))


def overlapping_splits(total: int, counts) -> list[int]:
    """ceil(total / blocks) for each of `counts` blocks (2..total) where that does not divide `total`: units per
    block of an overlapping split, whose last block ends at `total` (`overlapped_start`)."""
    return sorted({-(-total // blocks) for blocks in counts if 2 <= blocks <= total} - set(divisors(total)))


def overlapped_start(total: int, per_block: int, block):
    """The first unit of block `block` of `per_block` units: block * per_block, the last block of an overlapping
    split moved back to end at `total` (it shares units with the block before it)."""
    return np.minimum(block * per_block, total - per_block)


def divisors(n: int) -> list[int]:
    """The divisors of n, ascending: trial division up to sqrt(n), memoized (never a walk over all of n: a
    2^34 batch must not hang the grid pass)."""
    return list(_divisors(n))


@functools.lru_cache(maxsize=4096)
def _divisors(n: int) -> tuple[int, ...]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return tuple(small + [n // d for d in reversed(small) if d * d != n])


def batch_groups(offsets: list, batches: int) -> list[int]:
    """Batches per core whose tile offsets step affinely inside each group (a static loop stride)."""
    return [g for g in divisors(batches) if all(affine_step(o, g) is not None for o in offsets)]


def tile_row_candidates(out: TileShape) -> Iterator[dict[str, int]]:
    """Whole tile rows per core (32 rows tilized or untilized together), any split of batches and rows, blocks
    of up to 8 tiles along a row."""
    for batches in divisors(out.batches):
        for rows in divisors(out.rt):
            for width in [d for d in divisors(out.ct) if d <= HALF_DST][::-1]:
                yield {"batches": batches, "rows": rows, "block_w": width}


def column_block_candidates(out: TileShape) -> Iterator[dict[str, int]]:
    """The fallback of `tile_row_candidates` for rows too wide for L1 (untilize, tilize): whole tile rows per
    core as there, each tile row in column blocks of `segment` tiles (a proper divisor of its tiles, the widest
    first: fewer, longer NoC transfers), each block in blocks of block_w tiles (the widest divisor up to 8)."""
    for batches in divisors(out.batches):
        for rows in divisors(out.rt):
            for segment in divisors(out.ct)[:-1][::-1]:
                width = max(d for d in divisors(segment) if d <= HALF_DST)
                yield {"batches": batches, "rows": rows, "block_w": width, "segment": segment}


def row_segments(row_bytes: int, segment_bytes: int, count: int) -> np.ndarray:
    """Bytes of each of the `count` column segments of a row-major page of `row_bytes` (the last may be short)."""
    return np.minimum(segment_bytes, row_bytes - np.arange(count) * segment_bytes)


def segment_bytes(rows: TensorType, segment: int) -> int:
    """Bytes of a column block of `segment` tiles of one row of a row-major tensor."""
    return segment * TILE * ELEMENT_BYTES[rows.element_type.name]
