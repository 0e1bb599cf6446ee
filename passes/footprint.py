"""What a device op needs in L1: its circular buffers and its share of L1-resident tensors.

`circular_buffers(op, blocking)` is the one plan of an op's CBs (index, page size, pages, format);
the kernel generator emits exactly these configs, and `l1_footprint(op, device, blocking)` adds their
sizes to the per-core share of the op's L1 tensors. The layout, grid and allocate passes and the
lowering all go through these two functions, so they can never disagree about what fits.

The module also holds the geometry every stage shares: tile shapes, page sizes, op kinds, the data
movement chains lowered as one gather, and the eltwise body plan (which value lives in which CB),
since the CB plan of a fused elementwise op follows from it.

Blockings are dicts of ints, by op kind:
- matmul (`ttir.linear`, `ttir.matmul`): batches (per core), per_core_m, per_core_n, in0_block_w,
  out_subblock_h, out_subblock_w;
- eltwise, softmax, layer_norm: batches, rows, cols (output tiles per core: batch x tile rows x tile
  columns) and block_w (tiles per compute block, <= 8);
- data_movement: tiles (output tiles per core) and block (tiles per gather step, <= 8);
- embedding: batches, rows (output tile rows per core: whole rows of 32 looked-up table rows) and
  block_w (tiles per tilize step, <= 8);
- reduce: batches, lines (tile rows, or tile columns, reduced per core) and block_w (tiles per read);
- untilize: batches, rows (tile rows per core) and block_w (tiles per step).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ttc.ir.attributes import DenseAttr, Dims, TypeAttr
from ttc.ir.core import Module, Operation, OpResult, Value
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

MATMUL_OPS = frozenset({"ttir.linear", "ttir.matmul"})
MOVEMENT_OPS = frozenset({"ttir.transpose", "ttir.reshape", "ttir.slice", "ttir.concat"})
KINDS = {"ttir.linear": "matmul", "ttir.matmul": "matmul", "ttir.eltwise": "eltwise", "ttir.softmax": "softmax",
         "ttir.layer_norm": "layer_norm", "ttir.embedding": "embedding", "ttir.reduce_sum": "reduce",
         "ttir.reduce_max": "reduce",
         **{name: "data_movement" for name in MOVEMENT_OPS}}

# CB indices (tt-metal's c_in0.., c_out0, c_intermed0.. naming)
CB_IN0, CB_IN1, CB_BIAS = 0, 1, 2
CB_INDEX = 8
CB_OUT = 16
CB_FIRST_INTERM = 17
CB_PARTIALS, CB_BIASED = 24, 25
# softmax / layer norm intermediates
CB_GAMMA, CB_BETA = 1, 2
CB_MASKED, CB_STAT, CB_WIDE, CB_WIDE2, CB_STAT2, CB_TMP, CB_TMP2 = 17, 18, 19, 20, 21, 22, 23
CB_GROUPS = 26  # partial reductions of groups of tiles (blocked summation)
CB_TOTAL, CB_CHUNK = 27, 28  # matmul: the running sum of K chunks, and one chunk's sum


def align(size: int, alignment: int = ALIGNMENT) -> int:
    return -(-size // alignment) * alignment


def node_names(op: Operation) -> str:
    """The ONNX node(s) of an op for messages."""
    return ", ".join(f'"{n}"' for n in op.loc.names()) or str(op.loc)


def module_device(module: Module) -> DeviceAttr:
    """The module's device descriptor (`tt.device`), e150 when the module names none."""
    device = module.attributes.get(DEVICE_ATTR_NAME)
    return device if isinstance(device, DeviceAttr) else E150


# ----------------------------------------------------------------------------------------------
# Tensors in tile layout


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


# ----------------------------------------------------------------------------------------------
# Sharded tensors (L1 only, tile layout)

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


# ----------------------------------------------------------------------------------------------
# Op kinds and data movement chains


def op_kind(op: Operation) -> str | None:
    """"matmul", "eltwise", "softmax", "layer_norm", "data_movement", "embedding", "reduce", "untilize"
    or None (not a device program)."""
    if op.name == "ttir.to_layout":
        return "untilize" if is_untilize(op) else None
    return KINDS.get(op.name)


def is_row_major(value: Value) -> bool:
    t = value.type
    return isinstance(t, TensorType) and isinstance(t.encoding, LayoutAttr) and t.encoding.tensor_layout == "row_major"


def is_untilize(op: Operation) -> bool:
    """A device-to-device `ttir.to_layout` from tiles to rows (a program; host edges are transfers)."""
    source, result = op.operands[0].type, op.result.type
    return isinstance(source, TensorType) and isinstance(source.encoding, LayoutAttr) and \
        source.encoding.tensor_layout == "tile" and is_row_major(op.result) and isinstance(result, TensorType)


def is_folded(op: Operation) -> bool:
    """A transpose/reshape/slice whose only user is another one: the chain is lowered as one gather at its
    end. A concat only heads a chain (it reads several inputs), so nothing folds into one, and a view
    (`is_view`) is no program at all."""
    if op.name not in MOVEMENT_OPS or len(op.result.uses) != 1:
        return False
    user = op.result.uses[0][0]
    return user.name in MOVEMENT_OPS and user.name != "ttir.concat"


def movement_chain(op: Operation) -> list[Operation]:
    """The folded movement ops feeding `op` and `op` itself, in program order."""
    chain = [op]
    while chain[0].name != "ttir.concat" and isinstance(chain[0].operands[0], OpResult) \
            and is_folded(chain[0].operands[0].op):
        chain.insert(0, chain[0].operands[0].op)
    return chain


def program_operands(op: Operation) -> list[Value]:
    """The device values a program reads: a gather reads the input(s) of its whole chain."""
    if op.name in MOVEMENT_OPS:
        head = movement_chain(op)[0]
        return list(head.operands) if head.name == "ttir.concat" else [head.operands[0]]
    return list(op.operands)


Step = tuple[str, tuple]


def chain_steps(chain: Sequence[Operation]) -> tuple[tuple[tuple[int, ...], ...], tuple[Step, ...]]:
    """(input shapes, steps) of a data movement chain, hashable for caching its gather map."""
    steps: list[Step] = []
    for op in chain:
        if op.name == "ttir.transpose":
            steps.append(("transpose", tuple(op.attr("perm"))))
        elif op.name == "ttir.slice":
            steps.append(("slice", (tuple(op.attr("begins")), tuple(op.attr("ends")), tuple(op.attr("steps")))))
        elif op.name == "ttir.concat":
            steps.append(("concat", (op.attr("axis"),)))
        else:
            steps.append(("reshape", tensor(op.result).shape))
    inputs = chain[0].operands if chain[0].name == "ttir.concat" else chain[0].operands[:1]
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
    real = tiles >= 0
    element = np.where(real, tiles, 0)
    which = np.searchsorted(starts, element, side="right") - 1  # the input of every element
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
        transposed = False
    elif swapped.all():
        transposed = True
    else:
        return "elements move inside a tile in a way that is neither a copy nor a tile transpose"
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


def is_view(op: Operation) -> bool:
    """A movement op (chain) whose output tiles are its input's tiles in order: the result shares the
    input's buffer, no program runs (e.g. a reshape adding or dropping leading unit dims). `layout`
    gives a view its source's memory space, so the shared pages are the same pages."""
    if op.name not in MOVEMENT_OPS or is_folded(op):
        return False
    if op.name == "ttir.reshape" and is_row_major(op.operands[0]):  # rows stay rows
        return tensor(op.operands[0]).shape[-1:] == tensor(op.result).shape[-1:]
    in_shapes, steps = chain_steps(movement_chain(op))
    gather = gather_map_of_inputs(in_shapes, steps)
    if not isinstance(gather, Gather) or not gather.is_identity:
        return False
    if any(user.name == "ttir.to_layout" for user, _ in op.result.uses):
        return False  # read back to the host in its own shape
    return tensor(program_operands(op)[0]).element_type == tensor(op.result).element_type


def gather_of(op: Operation) -> Gather:
    """The gather of the chain ending at `op`; a UserError naming the nodes when not tile-granular."""
    chain = movement_chain(op)
    in_shapes, steps = chain_steps(chain)
    result = gather_map_of_inputs(in_shapes, steps)
    if isinstance(result, Gather):
        return result
    names = ", ".join(node_names(o) for o in chain)
    what = " then ".join(f"{o.name.split('.')[1]} to {list(tensor(o.result).shape)}" for o in chain)
    sources = " and ".join(str(list(shape)) for shape in in_shapes)
    raise UserError(f"node {names}: {what} from {sources} is not a tile-granular data movement "
                    f"({result}); only gathers of whole 32x32 tiles are supported (e.g. permutations that "
                    "keep the last two dims last, or regroup dims that are multiples of 32)")


# ----------------------------------------------------------------------------------------------
# Matmul geometry


@dataclass(frozen=True)
class MatmulShape:
    """[batch..., M, K] @ [batch..., K, N] in tiles, with per-batch tile offsets of a, b and out."""

    mt: int
    kt: int
    nt: int
    batches: int
    a_offsets: np.ndarray = field(compare=False)
    b_offsets: np.ndarray = field(compare=False)
    rows: int  # logical M and N, for masking
    cols: int


def matmul_shape(op: Operation) -> MatmulShape:
    a, b, out = tensor(op.operands[0]), tensor(op.operands[1]), tensor(op.result)
    if op.attributes.get("transpose_b") or op.attributes.get("transpose_a"):
        raise UserError(f"node {node_names(op)}: '{op.name}' with a transposed operand reached the backend "
                        "(tilize materialises transposes)")
    if b.rank < 2 or (a.rank == 1 and b.rank > 2):
        raise UserError(f"node {node_names(op)}: matmul of {list(a.shape)} by {list(b.shape)} is not supported "
                        "on the device (the second operand must be a matrix or a batch of matrices)")
    return _matmul_geometry(a.shape, b.shape, out.shape)


@functools.lru_cache(maxsize=256)
def _matmul_geometry(a: tuple[int, ...], b: tuple[int, ...], out: tuple[int, ...]) -> MatmulShape:
    ta, tb, to = tile_shape(a), tile_shape(b), tile_shape(out)
    return MatmulShape(ta.rt, ta.ct, tb.ct, to.batches, batch_offsets(a, out), batch_offsets(b, out),
                       to.rows, to.cols)


def matmul_masks(op: Operation) -> tuple[bool, bool]:
    """(rows, cols): which padding of a matmul's result its epilogue makes non-zero and must re-mask.
    The product of zero-padded operands has zero padding; a bias row fills the padding rows, an
    activation with f(0) != 0 (sigmoid) all of it."""
    shape = matmul_shape(op)
    activation = op.attributes.get("activation", "none")
    moves_zero = activation != "none" and not keeps_zero(activation, 0.0)
    rows = shape.rows % TILE != 0 and (len(op.operands) > 2 or moves_zero)
    return rows, shape.cols % TILE != 0 and moves_zero


def sub_blocks(blocking: dict[str, int]) -> tuple[int, int]:
    """(SH, SW): out subblocks per core along M and N."""
    return (blocking["per_core_m"] // blocking["out_subblock_h"],
            blocking["per_core_n"] // blocking["out_subblock_w"])


def double(pages: int, pushes: int) -> int:
    """Double-buffer a CB that is filled more than once, so the producer can run ahead."""
    return pages * 2 if pushes > 1 else pages


SHORT_K_TILES = 8  # K up to 256: one accumulation chain of at most 16 bf16 roundings is fine
MIN_CHUNK_TILES = 4  # chunks of at least 128 elements: each chunk's sum costs a tile add


def accumulation_tiles(kt: int) -> int:
    """K tiles accumulated in one chain of the 16-bit Dst (a chunk) before the chunk's sum is added, in
    bf16, to the running sum of the chunks before it.

    Dst rounds to bf16 every 16 products (one MVMUL), so a single chain over K = 3072 rounds a growing
    sum 192 times; in chunks of about 4 * sqrt(K) elements both chains (inside a chunk, and over the
    chunks) stay short, the way long reductions are blocked on hardware without fp32 accumulation: the
    relative error of a [128 x 3072] @ [3072 x 256] product falls from ~1.6e-2 to ~7e-3, and of a K = 768
    one from ~8e-3 to ~5e-3 (chunks of at least 4 tiles, as each costs a tile add). The chunk depends
    only on K, never on the grid or the blocking, so any blocking gives the same bits.
    """
    if kt <= SHORT_K_TILES:
        return kt
    target = max(MIN_CHUNK_TILES, 4 * math.sqrt(kt * TILE) / TILE)
    return min((d for d in range(1, kt + 1) if kt % d == 0), key=lambda d: (abs(d - target), d))


def matmul_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    shape = matmul_shape(op)
    h, w, width = blocking["out_subblock_h"], blocking["out_subblock_w"], blocking["in0_block_w"]
    sh, sw = sub_blocks(blocking)
    k_blocks = shape.kt // width
    in0_pushes = blocking["batches"] * k_blocks * sh
    a, b, out = tensor(op.operands[0]), tensor(op.operands[1]), tensor(op.result)
    cbs = [cb(CB_IN0, a.element_type, double(h * width, in0_pushes)),
           cb(CB_IN1, b.element_type, double(width * w, in0_pushes * sw)),
           cb(CB_OUT, out.element_type, double(h * w, blocking["batches"] * sh * sw))]
    if len(op.operands) > 2:
        cbs.append(cb(CB_BIAS, tensor(op.operands[2]).element_type, double(w, blocking["batches"] * sh * sw)))
        cbs.append(cb(CB_BIASED, out.element_type, h * w))
    block_tiles = blocking["per_core_m"] * blocking["per_core_n"]
    chunk = accumulation_tiles(shape.kt)
    if chunk > width:  # partial sums between the K steps of a chunk
        cbs.append(cb(CB_PARTIALS, out.element_type, block_tiles))
    if chunk < shape.kt:  # the running total of the chunks, and one chunk's sum
        cbs += [cb(CB_TOTAL, out.element_type, block_tiles), cb(CB_CHUNK, out.element_type, h * w)]
    return sorted(cbs, key=lambda c: c.index)


def cb(index: int, element_type: ScalarType, pages: int, page: int | None = None) -> CBConfigAttr:
    size = page if page is not None else tile_bytes(element_type)
    return CBConfigAttr(index, page_size=size, pages=pages, format=format_attr(element_type))


# ----------------------------------------------------------------------------------------------
# Eltwise body plan


UNARY_SFPU = {"ttir.relu": "relu", "ttir.sigmoid": "sigmoid", "ttir.tanh": "tanh", "ttir.exp": "exp",
              "ttir.erf": "erf", "ttir.sqrt": "sqrt", "ttir.rsqrt": "rsqrt", "ttir.neg": "neg",
              "ttir.reciprocal": "recip", "ttir.gelu": "gelu", "ttir.log": "log", "ttir.abs": "abs",
              "ttir.isnan": "isnan", "ttir.isinf": "isinf", "ttir.softplus": "softplus", "ttir.mish": "mish",
              **{f"ttir.{fn}": fn for fn in ("floor", "ceil", "trunc", "round", "sin", "cos", "tan", "asin", "acos",
                                             "atan", "asinh", "acosh", "atanh")}}
FPU_BINARY = {"ttir.add": "add", "ttir.sub": "sub", "ttir.mul": "mul"}
# Binary SFPU functions of two Dst slots (a phase copies both operands into Dst, then applies one).
SFPU_BINARY = frozenset({"pow", "where_nez", "where_eqz"})
# A comparison is the sign test of lhs - rhs (exact for bf16 operands: distinct values never differ by 0);
# against a scalar p it is one SFPU test x op p (an infinite p too, where x - p would give NaN for x = p).
COMPARE_SFPU = {"ttir.eq": "eqz", "ttir.ne": "nez", "ttir.lt": "ltz", "ttir.le": "lez", "ttir.gt": "gtz",
                "ttir.ge": "gez"}
SCALAR_COMPARES = {"eq_scalar": np.equal, "ne_scalar": np.not_equal, "lt_scalar": np.less,
                   "le_scalar": np.less_equal, "gt_scalar": np.greater, "ge_scalar": np.greater_equal}
SWAPPED = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}  # c op x == x SWAPPED[op] c
ZERO_PRESERVING = frozenset({"relu", "tanh", "erf", "sqrt", "neg", "gelu", "gelu_tanh", "mul_scalar", "square",
                             "abs", "isnan", "nez", "ltz", "gtz", "where_nez", "isinf", "floor", "ceil", "trunc",
                             "round", "sin", "tan", "asin", "atan", "asinh", "atanh", "mish"})


def keeps_zero(fn: str, param: float) -> bool:
    """f(0) == 0, so an SFPU op leaves zero padding zero."""
    if fn in ZERO_PRESERVING:
        return True
    if fn in SCALAR_COMPARES:
        return not SCALAR_COMPARES[fn](0.0, param)
    return (fn == "pow_scalar" and param > 0) or (fn == "max_scalar" and param <= 0) or \
        (fn in ("add_scalar", "sub_from_scalar", "where_eqz") and param == 0)


def binary_keeps_zero(fn: str, a_zero: bool, b_zero: bool) -> bool:
    """Whether a binary SFPU op leaves padding zero, given whether its operands' padding is zero."""
    if fn == "where_nez":
        return a_zero or b_zero  # 0 unless a is non-zero, and then b
    if fn == "where_eqz":
        return b_zero  # b or 0
    return False  # pow: 0 ** 0 = 1


@dataclass(frozen=True)
class Phase:
    """One Dst round of an eltwise block: an entry op filling Dst (copy from a CB, an FPU binary op of
    two CBs with B broadcast per `bcast`, or a binary SFPU op of the two operands copied into Dst), SFPU
    ops in place, then a pack into `out_cb`.

    `a_full` / `b_full` / `full`: the operand / result has block_w tiles per block (else 1 tile: a
    value broadcast along the columns, read with column stride 0).
    """

    op: str  # "copy", "add", "sub", "mul", or a binary SFPU function (SFPU_BINARY)
    a_cb: int
    a_full: bool
    out_cb: int
    full: bool
    b_cb: int = -1
    b_full: bool = True
    bcast: str = "none"
    sfpu: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class EltwisePlan:
    """Which CB holds which value of an eltwise body, and the phases computing one block."""

    inputs: tuple[bool, ...]  # per input (CB i): full (block_w tiles) or one tile per block
    input_bcast: tuple[tuple[bool, bool], ...]  # per input: (broadcast along rows, along columns)
    phases: tuple[Phase, ...]
    interms: tuple[tuple[int, bool], ...]  # (cb, full)
    zero_cb: int | None  # a CB holding one zero tile (for expanding a broadcast operand)
    mask_rows: bool
    mask_cols: bool


@dataclass
class _Value:
    row_b: bool  # broadcast along rows (one row) relative to the result
    col_b: bool
    zero_rows: bool  # padding rows are zero
    zero_cols: bool
    cb: int | None = None
    uses: int = 0

    @property
    def full(self) -> bool:
        return not self.col_b


class _EltwisePlanner:
    """Turns an eltwise body into phases: values used by an FPU op or used twice go through CBs,
    single-use chains of unary and scalar ops stay in Dst."""

    def __init__(self, op: Operation) -> None:
        self.op = op
        out = tile_shape(tensor(op.result).shape)
        self.out = out
        self.values: dict[int, _Value] = {}
        self.phases: list[Phase] = []
        self.interms: list[tuple[int, bool]] = []
        self.zero_cb: int | None = None
        self.expanded: dict[int, _Value] = {}  # by the CB of the broadcast value
        self.open: dict | None = None  # the phase being built; its value is in Dst
        self.open_value: int | None = None

    def kind(self, value: Value) -> tuple[bool, bool]:
        shape = tile_shape(tensor(value).shape)
        return shape.rows == 1 and self.out.rows > 1, shape.cols == 1 and self.out.cols > 1

    def fresh_cb(self) -> int:
        index = CB_FIRST_INTERM + len(self.interms) + (self.zero_cb is not None)
        if index >= 32:
            raise UserError(f"node {node_names(self.op)}: the fused elementwise body needs more than "
                            f"{32 - CB_FIRST_INTERM} intermediate circular buffers")
        return index

    def plan(self) -> EltwisePlan:
        block = self.op.regions[0].block
        if len(block.args) > CB_OUT:
            raise UserError(f"node {node_names(self.op)}: an eltwise op with {len(block.args)} inputs "
                            f"(at most {CB_OUT})")
        for i, arg in enumerate(block.args):
            row_b, col_b = self.kind(arg)
            self.values[id(arg)] = _Value(row_b, col_b, True, True, cb=i)
        instructions = self.instructions(block.ops)
        for _, operands, _, _ in instructions:
            for v in operands:
                self.values[v].uses += 1
        for name, operands, result, param in instructions:
            if name == "yield":
                return self.finish(operands[0])
            if name == "expand":
                self.broadcast(operands[0], result)
            elif len(operands) == 1:
                self.unary(name, param, operands[0], result)
            elif name in SFPU_BINARY:
                self.sfpu_binary(name, operands[0], operands[1], result)
            else:
                self.binary(name, operands[0], operands[1], result)
        raise AssertionError("eltwise body without ttir.yield")

    # -- the body as instructions on value ids ---------------------------------------------------

    def instructions(self, ops: Sequence[Operation]) -> list[tuple[str, tuple[int, ...], int, float]]:
        """(name, operand ids, result id, param): SFPU function names for unary and scalar ops,
        add/sub/mul for FPU binary ops; tensor maximum/minimum are rewritten with relu."""
        scalars: dict[int, float] = {}
        out: list[tuple[str, tuple[int, ...], int, float]] = []
        counter = iter(range(1 << 30))

        def temp(kind_of: int) -> int:
            new = -1 - next(counter)
            self.values[new] = _Value(*self.values_kind(kind_of))
            return new

        for inner in ops:
            ids = tuple(id(v) for v in inner.operands)
            if inner.name == "ttir.constant":
                scalars[id(inner.result)] = self.splat(inner)
                continue
            if inner.name == "ttir.yield":
                out.append(("yield", ids, 0, 0.0))
                continue
            result = id(inner.result)
            row_b, col_b = self.kind(inner.result)
            self.values[result] = _Value(row_b, col_b, True, True)
            if inner.name == "ttir.gelu" and inner.attributes.get("approximate") == "tanh":
                out.append(("gelu_tanh", ids, result, 0.0))
            elif inner.name in UNARY_SFPU:
                out.append((UNARY_SFPU[inner.name], ids, result, 0.0))
            elif inner.name == "ttir.broadcast":
                out.append(("expand", ids, result, 0.0))
            elif inner.name == "ttir.typecast":  # float -> float: every device float is one format
                out.append(("mul_scalar", ids, result, 1.0))
            elif inner.name == "ttir.where":
                out.extend(self.where_form(ids, scalars, result, temp))
            elif inner.name in COMPARE_SFPU:
                compare = inner.name.removeprefix("ttir.")
                if ids[0] in scalars:
                    out.append((f"{SWAPPED[compare]}_scalar", (ids[1],), result, scalars[ids[0]]))
                elif ids[1] in scalars:
                    out.append((f"{compare}_scalar", (ids[0],), result, scalars[ids[1]]))
                else:
                    difference = temp(result)
                    out += [("sub", ids, difference, 0.0), (COMPARE_SFPU[inner.name], (difference,), result, 0.0)]
            elif len(ids) == 2 and (ids[0] in scalars or ids[1] in scalars):
                out.extend(self.scalar_form(inner, ids, scalars, result, temp))
            elif inner.name in FPU_BINARY:
                out.append((FPU_BINARY[inner.name], ids, result, 0.0))
            elif inner.name == "ttir.pow":
                out.append(("pow", ids, result, 0.0))
            elif inner.name in ("ttir.maximum", "ttir.minimum"):
                a, b = ids
                diff, rect = temp(result), temp(result)
                first = (b, a) if inner.name == "ttir.maximum" else (a, b)
                out += [("sub", first, diff, 0.0), ("relu", (diff,), rect, 0.0),
                        ("add" if inner.name == "ttir.maximum" else "sub", (a, rect), result, 0.0)]
            else:
                raise UserError(f"node {node_names(inner)}: '{inner.name}' cannot run in a fused "
                                "elementwise kernel")
        return out

    def values_kind(self, value_id: int) -> tuple[bool, bool, bool, bool]:
        v = self.values[value_id]
        return v.row_b, v.col_b, True, True

    def splat(self, constant: Operation) -> float:
        value = constant.attributes.get("value")
        if not isinstance(value, DenseAttr) or not value.is_splat:
            raise UserError(f"node {node_names(constant)}: only splat scalar constants can sit in a fused body")
        return float(value.values)

    def where_form(self, ids: tuple[int, ...], scalars: dict[int, float], result: int,
                   temp) -> list[tuple[str, tuple[int, ...], int, float]]:
        """where(c, x, y) on 0/1 c: each branch's term selects it where c is non-zero (x) or zero (y), else
        0 (where_nez / where_eqz, of a scalar or of a tensor branch: no arithmetic on the branch, so an
        infinite or NaN element the select does not pick leaves no trace), and the result is their sum
        (one of the two is 0, so the sum is exact; a zero scalar branch adds nothing)."""
        c, x, y = ids
        out, terms = [], []
        for branch, select in ((x, "where_nez"), (y, "where_eqz")):
            if branch in scalars:
                if scalars[branch] != 0:
                    terms.append(temp(c))  # shaped like c
                    out.append((select, (c,), terms[-1], scalars[branch]))
            else:
                terms.append(temp(result))
                out.append((select, (c, branch), terms[-1], 0.0))
        if not terms:
            out.append(("mul_scalar", (c,), result, 0.0))
        elif len(terms) == 1:
            out.append(("add_scalar", (terms[0],), result, 0.0))
        else:
            out.append(("add", (terms[0], terms[1]), result, 0.0))
        return out

    def scalar_form(self, inner: Operation, ids: tuple[int, ...], scalars: dict[int, float], result: int,
                    temp) -> list[tuple[str, tuple[int, ...], int, float]]:
        left_scalar = ids[0] in scalars
        c = scalars[ids[0] if left_scalar else ids[1]]
        x = ids[1] if left_scalar else ids[0]
        name = inner.name
        if name == "ttir.add":
            return [("add_scalar", (x,), result, c)]
        if name == "ttir.mul":
            return [("mul_scalar", (x,), result, c)]
        if name == "ttir.sub":
            return [("sub_from_scalar", (x,), result, c)] if left_scalar else [("add_scalar", (x,), result, -c)]
        if name == "ttir.maximum":
            return [("max_scalar", (x,), result, c)]
        if name == "ttir.minimum":
            t1, t2 = temp(result), temp(result)
            return [("neg", (x,), t1, 0.0), ("max_scalar", (t1,), t2, -c), ("neg", (t2,), result, 0.0)]
        if name == "ttir.pow":
            return [("rpow_scalar" if left_scalar else "pow_scalar", (x,), result, c)]
        raise UserError(f"node {node_names(inner)}: '{name}' with a scalar {'base' if left_scalar else 'operand'} "
                        "cannot run in a fused elementwise kernel")

    # -- phases -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Pack the value in Dst into a fresh intermediate CB (it has later uses)."""
        if self.open is None:
            return
        value = self.values[self.open_value]
        index = self.fresh_cb()
        self.interms.append((index, value.full))
        self.phases.append(Phase(out_cb=index, full=value.full, **self.open))
        value.cb = index
        self.open, self.open_value = None, None

    def unary(self, fn: str, param: float, x: int, result: int) -> None:
        source, target = self.values[x], self.values[result]
        if not (self.open_value == x and source.uses == 1):
            self.close()
            self.open = {"op": "copy", "a_cb": source.cb, "a_full": source.full, "sfpu": ()}
        self.open["sfpu"] = (*self.open["sfpu"], (fn, param))
        self.open_value = result
        source.uses -= 1
        zero = keeps_zero(fn, param)
        target.zero_rows, target.zero_cols = source.zero_rows and zero, source.zero_cols and zero

    def broadcast(self, x: int, result: int) -> None:
        """ttir.broadcast: batch dims broadcast in the reader already; within the tiles the value is
        expanded to a full one (zero tile + the value broadcast) when it is a row, a column or a scalar."""
        source, uses = self.values[x], self.values[result].uses
        source.uses -= 1
        if not (source.row_b or source.col_b):  # only batch dims broadcast: the block holds it already
            source.uses += uses
            self.values[result] = source
            return
        self.close()
        expanded = self.expand(source)
        expanded.uses = uses
        self.values[result] = expanded

    def binary(self, fn: str, a_id: int, b_id: int, result: int) -> None:
        self.close()
        a, b, target = self.values[a_id], self.values[b_id], self.values[result]
        a.uses -= 1
        b.uses -= 1
        negate = False
        if not self.covers(a, b):
            if self.covers(b, a):
                a, b = b, a
                negate = fn == "sub"
            else:
                a = self.expand(a)
        bcast = _bcast(b.row_b and not a.row_b, b.col_b and not a.col_b)
        b_rows = b.zero_rows and bcast not in ("row", "scalar")
        b_cols = b.zero_cols and bcast not in ("col", "scalar")
        self.open = {"op": fn, "a_cb": a.cb, "a_full": a.full, "b_cb": b.cb, "b_full": b.full, "bcast": bcast,
                     "sfpu": (("neg", 0.0),) if negate else ()}
        self.open_value = result
        target.zero_rows = a.zero_rows and b_rows
        target.zero_cols = a.zero_cols and b_cols

    def sfpu_binary(self, fn: str, a_id: int, b_id: int, result: int) -> None:
        """Both operands are copied into Dst whole, so they must have the same shape of tiles: when their
        broadcasts differ, the broadcast ones are expanded to full values (and so is the result)."""
        self.close()
        a, b, target = self.values[a_id], self.values[b_id], self.values[result]
        a.uses -= 1
        b.uses -= 1
        if (a.row_b, a.col_b) != (b.row_b, b.col_b):
            a = self.expand(a) if a.row_b or a.col_b else a
            b = self.expand(b) if b.row_b or b.col_b else b
        target.row_b, target.col_b = a.row_b, a.col_b
        self.open = {"op": fn, "a_cb": a.cb, "a_full": a.full, "b_cb": b.cb, "b_full": b.full, "sfpu": ()}
        self.open_value = result
        target.zero_rows = binary_keeps_zero(fn, a.zero_rows, b.zero_rows)
        target.zero_cols = binary_keeps_zero(fn, a.zero_cols, b.zero_cols)

    @staticmethod
    def covers(a: _Value, b: _Value) -> bool:
        """a is broadcast along no dim that b is not: b can be the (broadcast) B operand."""
        return (b.row_b or not a.row_b) and (b.col_b or not a.col_b)

    def expand(self, value: _Value) -> _Value:
        """A full copy of a broadcast value: zero tile + value broadcast, into an intermediate CB (once per
        value: the CB holds it until the end of the block)."""
        assert value.cb is not None
        if value.cb in self.expanded:
            return replace(self.expanded[value.cb])
        if self.zero_cb is None:
            self.zero_cb = self.fresh_cb()
        index = self.fresh_cb()
        bcast = _bcast(value.row_b, value.col_b)
        self.interms.append((index, True))
        self.phases.append(Phase("add", self.zero_cb, False, index, True, value.cb, value.full, bcast))
        self.expanded[value.cb] = _Value(False, False, value.zero_rows and not value.row_b,
                                         value.zero_cols and not value.col_b, cb=index)
        return replace(self.expanded[value.cb])

    def finish(self, value_id: int) -> EltwisePlan:
        value = self.values[value_id]
        if self.open_value != value_id:
            self.close()
            self.open = {"op": "copy", "a_cb": value.cb, "a_full": value.full, "sfpu": ()}
        self.phases.append(Phase(out_cb=CB_OUT, full=True, **self.open))
        inputs = [self.values[id(arg)] for arg in self.op.regions[0].block.args]
        return EltwisePlan(
            inputs=tuple(v.full for v in inputs), input_bcast=tuple((v.row_b, v.col_b) for v in inputs),
            phases=tuple(self.phases), interms=tuple(self.interms), zero_cb=self.zero_cb,
            mask_rows=self.out.rows % TILE != 0 and not value.zero_rows,
            mask_cols=self.out.cols % TILE != 0 and not value.zero_cols)


def _bcast(rows: bool, cols: bool) -> str:
    return "scalar" if rows and cols else "row" if rows else "col" if cols else "none"


def eltwise_plan(op: Operation) -> EltwisePlan:
    """The phases and CBs of a `ttir.eltwise` (independent of the blocking)."""
    return _EltwisePlanner(op).plan()


def eltwise_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    plan = eltwise_plan(op)
    width = blocking["block_w"]
    blocks = blocking["batches"] * blocking["rows"] * (blocking["cols"] // width)
    out_type = tensor(op.result).element_type
    cbs = [cb(i, tensor(value).element_type, double(width if full else 1, blocks))
           for i, (value, full) in enumerate(zip(op.operands, plan.inputs, strict=True))]
    cbs.append(cb(CB_OUT, out_type, double(width, blocks)))
    cbs += [cb(index, out_type, width if full else 1) for index, full in plan.interms]
    if plan.zero_cb is not None:
        cbs.append(cb(plan.zero_cb, out_type, 1))
    return sorted(cbs, key=lambda c: c.index)


# ----------------------------------------------------------------------------------------------
# Softmax, layer norm, data movement


def row_sum_groups(tiles: int) -> list[tuple[int, int]]:
    """(first tile, tiles) of the groups a row of `tiles` tiles is summed in: about sqrt(tiles) groups of
    nearly equal size (each in its own Dst slot, at most 8), so that neither the chain inside a group nor
    the one over the groups runs long in bf16; one group for rows of up to 4 tiles."""
    count = 1 if tiles <= 4 else min(HALF_DST, round(math.sqrt(tiles)))
    sizes = [tiles // count + (i < tiles % count) for i in range(count)]
    return [(sum(sizes[:i]), size) for i, size in enumerate(sizes)]


def row_op_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """Softmax / layer norm keep a whole row of tiles (ct) per step in L1."""
    x, out = tensor(op.operands[0]), tensor(op.result)
    ct, width = tile_shape(x.shape).ct, blocking["block_w"]
    fmt = out.element_type
    rows = blocking["batches"] * blocking["rows"]
    cbs = [cb(CB_IN0, x.element_type, ct), cb(CB_OUT, fmt, double(width, rows * (ct // width)))]
    if len(row_sum_groups(ct)) > 1:
        cbs.append(cb(CB_GROUPS, fmt, len(row_sum_groups(ct))))
    if op.name == "ttir.softmax":
        cbs += [cb(CB_MASKED, fmt, 1), cb(CB_STAT, fmt, 1), cb(CB_WIDE, fmt, ct), cb(CB_STAT2, fmt, 1)]
        return sorted(cbs, key=lambda c: c.index)
    cbs += [cb(CB_GAMMA, tensor(op.operands[1]).element_type, double(width, rows * (ct // width))),
            cb(CB_STAT, fmt, 1), cb(CB_WIDE, fmt, ct), cb(CB_WIDE2, fmt, ct), cb(CB_STAT2, fmt, 1),
            cb(CB_TMP, fmt, width)]
    if len(op.operands) > 2:
        cbs += [cb(CB_BETA, tensor(op.operands[2]).element_type, double(width, rows * (ct // width))),
                cb(CB_TMP2, fmt, width)]
    return sorted(cbs, key=lambda c: c.index)


def embedding_geometry(op: Operation) -> tuple[TileShape, int, int]:
    """(output tile shape, ids per index page, bytes per table row) of a `ttir.embedding`: output batch b
    holds the rows of index page b (a row of the ids' last dim), output tile row r its ids 32r.."""
    table, ids = tensor(op.operands[0]), tensor(op.operands[1])
    if op.attributes.get("im2col"):  # ids [positions, M tile rows, 32]; worked as [positions, M, width],
        m = tensor(op.result).shape[-2 if op.attributes.get("grouped") else 0]  # written side by side
        return tile_shape((ids.shape[0], m, table.shape[1])), TILE, page_size(table)
    return tile_shape(tensor(op.result).shape), ids.shape[-1] if ids.shape else 1, page_size(table)


def embedding_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """Index page (the ids), 32 table rows per output tile row (row-major pages, tilized by compute), tiles."""
    out, ids_per_page, row_bytes = embedding_geometry(op)
    tile_rows = blocking["batches"] * blocking["rows"]
    width = blocking["block_w"]
    return [cb(CB_IN0, tensor(op.operands[0]).element_type, double(TILE, tile_rows), page=row_bytes),
            cb(CB_INDEX, ScalarType("i32"), double(1, tile_rows), page=ids_per_page * ELEMENT_BYTES["i32"]),
            cb(CB_OUT, tensor(op.result).element_type, double(width, tile_rows * (out.ct // width)))]


@dataclass(frozen=True)
class Reduction:
    """A `ttir.reduce_sum` / `reduce_max` along the last dim ("row": every tile row is a line of ct tiles,
    reduced into column 0) or the one before ("col": every tile column, rt tiles, into row 0)."""

    dim: str  # "row" or "col"
    kind: str  # "sum" or "max"
    source: TileShape
    lines: int  # lines per batch (rt for rows, ct for columns)
    length: int  # tiles per line
    stride: int  # tile index step along a line
    masked_last: bool  # a max over a line whose last tile has padding: that tile is masked to -inf

    @property
    def streamed(self) -> int:
        """Tiles per line read in blocks (all but a masked last tile)."""
        return self.length - int(self.masked_last)


def reduction_of(op: Operation) -> Reduction:
    x = tensor(op.operands[0])
    axes = tuple(op.attr("axes"))
    if not op.attr("keepdims") or len(axes) != 1 or axes[0] < x.rank - 2:
        raise UserError(f"node {node_names(op)}: '{op.name}' over axes {list(axes)} reached the backend; the "
                        "device reduces one of the last two dims with keepdims (run tilize first)")
    source = tile_shape(x.shape)
    kind = "max" if op.name == "ttir.reduce_max" else "sum"
    if axes[0] == x.rank - 1:
        return Reduction("row", kind, source, source.rt, source.ct, 1, kind == "max" and source.cols % TILE != 0)
    return Reduction("col", kind, source, source.ct, source.rt, source.ct, kind == "max" and source.rows % TILE != 0)


def reduce_groups(reduction: Reduction, block_w: int) -> int:
    """Groups of blocks a line is summed in (each in its own Dst slot, then the group sums are added): the
    divisor of the block count nearest its square root, so both chains of bf16 roundings stay short."""
    blocks = reduction.streamed // block_w
    if blocks == 0 or reduction.kind == "max":
        return min(blocks, 1)
    options = [g for g in range(1, HALF_DST) if blocks % g == 0]
    return min(options, key=lambda g: abs(g - math.sqrt(blocks)))


def reduce_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    reduction = reduction_of(op)
    x, out = tensor(op.operands[0]), tensor(op.result)
    lines = blocking["batches"] * blocking["lines"]
    width = blocking["block_w"]
    partials = reduce_groups(reduction, width) + int(reduction.masked_last)
    reads = lines * (reduction.streamed // width + int(reduction.masked_last))
    return [cb(CB_IN0, x.element_type, double(width, reads)), cb(CB_OUT, out.element_type, double(1, lines)),
            cb(CB_GROUPS, out.element_type, max(partials, 1))]


def untilize_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """Tiles in, 32 row pages (a tile row, row-major) out."""
    x, out = tensor(op.operands[0]), tensor(op.result)
    shape = tile_shape(x.shape)
    tile_rows = blocking["batches"] * blocking["rows"]
    width = blocking["block_w"]
    return [cb(CB_IN0, x.element_type, double(width, tile_rows * (shape.ct // width))),
            cb(CB_OUT, out.element_type, double(TILE, tile_rows), page=page_size(out))]


def gather_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    gather = gather_of(op)
    fmt = tensor(op.result).element_type
    steps = blocking["tiles"] // blocking["block"]
    cbs = [cb(CB_IN0, tensor(program_operands(op)[0]).element_type, double(blocking["block"], steps)),
           cb(CB_INDEX, ScalarType("i32"), 1, page=INDEX_ROW * 4)]
    if gather.transposed:
        cbs.append(cb(CB_OUT, fmt, double(blocking["block"], steps)))
    return cbs


_CB_PLANS = {"matmul": matmul_cbs, "eltwise": eltwise_cbs, "softmax": row_op_cbs, "layer_norm": row_op_cbs,
             "data_movement": gather_cbs, "embedding": embedding_cbs, "reduce": reduce_cbs,
             "untilize": untilize_cbs}


def circular_buffers(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """The CB configs (no addresses) of `op`'s program under `blocking`."""
    kind = op_kind(op)
    if kind is None:
        raise ValueError(f"'{op.name}' is not a device program")
    return _CB_PLANS[kind](op, blocking)


def cb_bytes(cbs: Sequence[CBConfigAttr]) -> int:
    """L1 bytes per core of these CBs, each aligned as the allocator places them."""
    return sum(align(c.page_size * c.pages) for c in cbs)


def op_l1_tensor_bytes(op: Operation, device: DeviceAttr, result_layout: LayoutAttr | None = None) -> int:
    """Per-core share of the L1-resident tensors the op's program reads or writes (with `result_layout`, the
    result as if it had that layout)."""
    values = {id(v): tensor(v) for v in (*program_operands(op), *op.results)}
    if result_layout is not None:
        values[id(op.result)] = tensor(op.result).with_encoding(result_layout)
    return sum(l1_share(t, device) for t in values.values())


def l1_footprint(op: Operation, device: DeviceAttr, blocking: dict[str, int],
                 result_layout: LayoutAttr | None = None) -> int:
    """Per-core L1 bytes of `op` under `blocking`: its circular buffers plus its L1 tensors' shares (a sharded
    tensor's share is its shard)."""
    return cb_bytes(circular_buffers(op, blocking)) + op_l1_tensor_bytes(op, device, result_layout)


def sync_body_placement(op: Operation) -> None:
    """A fused body's arguments take their operands' layout (memory space), keeping their element type."""
    for region in op.regions:
        for block in region.blocks:
            for arg, operand in zip(block.args, op.operands, strict=False):
                if isinstance(arg.type, TensorType) and isinstance(operand.type, TensorType):
                    arg.type = arg.type.with_encoding(operand.type.encoding)


# ----------------------------------------------------------------------------------------------
# Liveness of device values (shared by layout and grid)


def chain_end(op: Operation) -> Operation:
    """The op that actually reads a value consumed by `op`: the end of a folded movement chain."""
    while is_folded(op):
        op = op.result.uses[0][0]
    return op


def readers(value: Value) -> list[Operation]:
    """The ops that read `value`'s buffer: users, with folded chains followed to their end and views
    followed to the readers of the view (which shares the buffer)."""
    found: list[Operation] = []
    for user, _ in value.uses:
        end = chain_end(user)
        if is_view(end):
            found += readers(end.result)
        else:
            found.append(end)
    return found


@dataclass(frozen=True)
class LiveRange:
    """A value produced by the op at `start` and last read by the op at `end` (body positions)."""

    value: Value
    start: int
    end: int


def live_ranges(ops: Sequence[Operation]) -> list[LiveRange]:
    """Live ranges of the device tensors the ops of one block produce (folded values excluded)."""
    position = {id(op): i for i, op in enumerate(ops)}
    ranges = []
    for i, op in enumerate(ops):
        if is_folded(op) or is_view(op):
            continue
        for result in op.results:
            ends = [position[id(reader)] for reader in readers(result) if id(reader) in position]
            ranges.append(LiveRange(result, i, max(ends, default=i)))
    return ranges


def other_l1_bytes(ops: Sequence[Operation], device: DeviceAttr) -> dict[int, int]:
    """Per op (by id): per-core bytes of the L1 tensors live across it that its program does not touch."""
    ranges = [r for r in live_ranges(ops) if in_l1(r.value.type)]
    result: dict[int, int] = {}
    for i, op in enumerate(ops):
        touched = {id(v) for v in (*program_operands(op), *op.results)} if op_kind(op) else set()
        result[id(op)] = sum(l1_share(tensor(r.value), device) for r in ranges
                             if r.start <= i <= r.end and id(r.value) not in touched)
    return result
