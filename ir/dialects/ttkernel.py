"""The `ttkernel` dialect: kernel programs for one Tensix core, mirroring the TT-Metalium kernel API.

A program (`ttmetal.enqueue_program`) holds three kernel regions: reader (NCRISC), compute (TRISCs)
and writer (BRISC). Every core of the program's grid runs the same kernels; cores differ only in
their runtime arguments (`ttkernel.get_arg`). Loops have static trip counts, so all cores of a
program follow the same control flow and the emulator can run them in lockstep.

Values inside kernels have type `index` (a scalar that may differ per core) or `!ttkernel.addrgen`
(an interleaved address generator for one buffer). Tile ops work on *blocks* of tiles: one op moves
or computes `rows x cols` tiles, never one op per tile.

Circular buffers (CBs, index 0..31) follow the producer/consumer protocol:
    producer: cb_reserve_back(cb, n) -> write pages at the back -> cb_push_back(cb, n)
    consumer: cb_wait_front(cb, n) -> read pages at the front -> cb_pop_front(cb, n)
Tile ops address pages relative to the reserved back (producers) or the waited front (consumers)
with a `*_offset` attribute and must stay inside the reserved / waited window.

Dst (destination register) holds 16 tiles; with double buffering one acquire owns 8 of them.
The compute kernel's protocol per block: tile_regs_acquire -> math ops writing Dst ->
tile_regs_commit -> tile_regs_wait -> pack_tiles -> tile_regs_release.

Index arithmetic for a block of tiles `rows x cols`, used by several ops below:
    tile(r, c) = offset + r * row_stride + c * col_stride      (0 <= r < rows, 0 <= c < cols)
    Dst slot(r, c) = dst + r * cols + c
"""

from __future__ import annotations

from ttc.ir.core import Operation
from ttc.ir.dialect import (
    Attr,
    BoolAttr,
    Dialect,
    FloatAttr,
    Index,
    IntAttr,
    OpDef,
    Operand,
    Result,
    Trait,
    TypeAttrC,
    VerifyError,
    dialect_type,
    enum_attr,
)
from ttc.ir.types import DialectType

NUM_CBS = 32
DST_TILES = 16
NUM_SEMAPHORES = 4  # per program and core (ttc's choice; tt-metal reserves a small fixed semaphore area in L1)
ADDRGEN = DialectType("ttkernel", "addrgen")
AddrGen = dialect_type("ttkernel", "addrgen")

SFPU_FUNCTIONS = ("exp", "recip", "sqrt", "rsqrt", "sigmoid", "tanh", "gelu", "gelu_tanh", "erf", "relu",
                  "neg", "log", "square", "abs", "eqz", "nez", "ltz", "lez", "gtz", "gez", "isnan",
                  "add_scalar", "mul_scalar", "sub_from_scalar", "pow_scalar", "max_scalar", "where_nez",
                  "where_eqz", "isinf", "floor", "ceil", "trunc", "round", "sin", "cos", "tan", "asin", "acos",
                  "atan", "asinh", "acosh", "atanh", "softplus", "mish", "hardswish", "rpow_scalar", "eq_scalar", "ne_scalar", "lt_scalar", "le_scalar",
                  "gt_scalar", "ge_scalar")
SFPU_BINARY_FUNCTIONS = ("pow", "where_nez", "where_eqz")  # of two Dst slots (runtime.numerics.sfpu_binary)
BINARY_FUNCTIONS = ("add", "sub", "mul")
BROADCASTS = ("none", "row", "col", "scalar")

PURE = frozenset({Trait.PURE})


# ----------------------------------------------------------------------------------------------
# Verifiers


def _check_cb(op: Operation, *names: str) -> None:
    for name in names:
        cb = op.attr(name)
        if not 0 <= cb < NUM_CBS:
            raise VerifyError(f"circular buffer index {cb} ('{name}') is outside 0..{NUM_CBS - 1}")


def _check_positive(op: Operation, *names: str) -> None:
    for name in names:
        if op.attr(name) <= 0:
            raise VerifyError(f"'{name}' must be positive, got {op.attr(name)}")


def _check_dst(op: Operation, count: int) -> None:
    dst = op.attr("dst")
    if dst < 0 or dst + count > DST_TILES:
        raise VerifyError(f"Dst slots {dst}..{dst + count - 1} are outside 0..{DST_TILES - 1}")


def verify_cb_op(op: Operation) -> None:
    _check_cb(op, "cb")
    _check_positive(op, "pages")


def verify_noc_tiles(op: Operation) -> None:
    _check_cb(op, "cb")
    _check_positive(op, "rows", "cols")


def verify_row_segment(op: Operation) -> None:
    """`segment_offset` and `segment_size` (a column segment of each row page) come together."""
    _check_cb(op, "cb")
    fixed = 2 if op.name == NOC_READ_PAGES.name else 3
    if len(op.operands) not in (fixed, fixed + 2):
        raise VerifyError("a row segment takes both 'segment_offset' and 'segment_size' (or neither)")


def verify_block_compute(op: Operation) -> None:
    cbs = [name for name in ("cb", "cb_a", "cb_b") if op.opdef and op.opdef.attribute(name)]
    _check_cb(op, *cbs)
    _check_positive(op, "rows", "cols")
    _check_dst(op, op.attr("rows") * op.attr("cols"))


def verify_matmul(op: Operation) -> None:
    _check_cb(op, "cb_a", "cb_b")
    _check_positive(op, "rows", "cols", "inner")
    _check_dst(op, op.attr("rows") * op.attr("cols"))


def verify_dst_only(op: Operation) -> None:
    _check_positive(op, "count")
    _check_dst(op, op.attr("count"))


def verify_sfpu_binary(op: Operation) -> None:
    verify_dst_only(op)
    first, second, count = op.attr("dst"), op.attr("dst_b"), op.attr("count")
    if second < 0 or second + count > DST_TILES:
        raise VerifyError(f"Dst slots {second}..{second + count - 1} ('dst_b') are outside 0..{DST_TILES - 1}")
    if first < second + count and second < first + count:
        raise VerifyError(f"the operand slots {second}..{second + count - 1} overlap the result slots "
                          f"{first}..{first + count - 1}")


def verify_reduce(op: Operation) -> None:
    _check_cb(op, "cb")
    _check_positive(op, "rows", "cols")
    _check_dst(op, 1)


def verify_for(op: Operation) -> None:
    if op.attr("step") <= 0:
        raise VerifyError("loop step must be positive")
    body = op.regions[0]
    if len(body.blocks) != 1 or len(body.blocks[0].args) != 1 or not Index(body.blocks[0].args[0].type):
        raise VerifyError("the loop body is one block with one index argument (the induction variable)")


def verify_mask(op: Operation) -> None:
    _check_positive(op, "rows", "cols")
    _check_dst(op, op.attr("rows") * op.attr("cols"))


def verify_tilize(op: Operation) -> None:
    _check_cb(op, "cb")
    _check_positive(op, "cols")
    _check_dst(op, op.attr("cols"))


def verify_pack(op: Operation) -> None:
    _check_cb(op, "cb")
    verify_dst_only(op)


def verify_semaphore(op: Operation) -> None:
    sem = op.attr("semaphore")
    if not 0 <= sem < NUM_SEMAPHORES:
        raise VerifyError(f"semaphore {sem} is outside 0..{NUM_SEMAPHORES - 1}")


def verify_mcast(op: Operation) -> None:
    _check_cb(op, "cb")
    _check_positive(op, "pages")
    if op.attr("cb_offset") < 0:
        raise VerifyError(f"'cb_offset' must not be negative, got {op.attr('cb_offset')}")
    sem = op.attr("semaphore")
    if not -1 <= sem < NUM_SEMAPHORES:
        raise VerifyError(f"semaphore {sem} is outside 0..{NUM_SEMAPHORES - 1} (-1: none)")


# ----------------------------------------------------------------------------------------------
# Scalars and control flow


GET_ARG = OpDef("ttkernel.get_arg", "This core's runtime argument `index` (per-core table of the program)",
                results=(Result("value", Index),), attributes=(Attr("index", IntAttr),), traits=PURE)
CONSTANT = OpDef("ttkernel.constant", "A compile-time index constant", results=(Result("value", Index),),
                 attributes=(Attr("value", IntAttr),), traits=PURE)
BUFFER_ADDRESS = OpDef("ttkernel.buffer_address", "The allocated address of the program's buffer operand #`operand`",
                       results=(Result("value", Index),), attributes=(Attr("operand", IntAttr),), traits=PURE)
ADDI = OpDef("ttkernel.addi", "lhs + rhs", operands=(Operand("lhs", Index), Operand("rhs", Index)),
             results=(Result("value", Index),), traits=PURE)
MINI = OpDef("ttkernel.mini", "min(lhs, rhs)", operands=(Operand("lhs", Index), Operand("rhs", Index)),
             results=(Result("value", Index),), traits=PURE)
MULI = OpDef("ttkernel.muli", "lhs * rhs", operands=(Operand("lhs", Index), Operand("rhs", Index)),
             results=(Result("value", Index),), traits=PURE)
FOR = OpDef(
    "ttkernel.for", "for iv in range(lower, upper, step): body (static trip count; iv is the block argument)",
    results=(), regions=1,
    attributes=(Attr("lower", IntAttr, 0), Attr("upper", IntAttr), Attr("step", IntAttr, 1)),
    verify=verify_for,
)

# ----------------------------------------------------------------------------------------------
# Circular buffers


def cb_op(name: str, summary: str) -> OpDef:
    return OpDef(f"ttkernel.{name}", summary, results=(),
                 attributes=(Attr("cb", IntAttr), Attr("pages", IntAttr)), verify=verify_cb_op)


CB_RESERVE_BACK = cb_op("cb_reserve_back", "Producer: block until `pages` pages are free at the back")
CB_PUSH_BACK = cb_op("cb_push_back", "Producer: publish `pages` written pages to the consumer")
CB_WAIT_FRONT = cb_op("cb_wait_front", "Consumer: block until `pages` filled pages are at the front")
CB_POP_FRONT = cb_op("cb_pop_front", "Consumer: release `pages` pages from the front")

# ----------------------------------------------------------------------------------------------
# Data movement (reader / writer kernels)

ADDRGEN_OP = OpDef(
    "ttkernel.addrgen",
    "Address generator over a buffer at `base`. Interleaved: page i lives in bank i % banks at "
    "base + (i // banks) * page_size; banks are the DRAM channels or the compute cores' L1. Sharded "
    "(`memory_layout` height_sharded / block_sharded, L1 only): page i lives in the L1 of the core holding "
    "its shard, at base + its place in the shard (the buffer's #tt.layout grid and shard say which)",
    operands=(Operand("base", Index),), results=(Result("addrgen", AddrGen),),
    attributes=(Attr("page_size", IntAttr), Attr("memory", enum_attr("dram", "l1")),
                Attr("format", TypeAttrC),
                Attr("memory_layout", enum_attr("interleaved", "height_sharded", "width_sharded", "block_sharded"),
                     "interleaved")),
    traits=PURE,
)
NOC_READ_TILES = OpDef(
    "ttkernel.noc_read_tiles",
    "Read tiles tile(r, c) of the buffer (index arithmetic with `start`) into the reserved back pages "
    "of `cb`, row-major from page `cb_offset`; data is valid only after noc_read_barrier. With "
    "`valid_cols`, the tiles of block columns c >= valid_cols (past a ragged edge; any value, <= 0 "
    "meaning none) are not read: their pages are zero-filled",
    operands=(Operand("addrgen", AddrGen), Operand("start", Index), Operand("valid_cols", Index, optional=True)),
    results=(),
    attributes=(Attr("cb", IntAttr), Attr("cb_offset", IntAttr, 0), Attr("rows", IntAttr), Attr("cols", IntAttr),
                Attr("row_stride", IntAttr, 0), Attr("col_stride", IntAttr, 1)),
    verify=verify_noc_tiles,
)
NOC_READ_TILES_INDEXED = OpDef(
    "ttkernel.noc_read_tiles_indexed",
    "Gather: read `count` tiles whose page indices are the int32 values in the waited front page of "
    "`index_cb` (from `index_offset`), into the reserved back of `cb`. A negative index -1 - i "
    "means tile i transposed is wanted (the compute kernel transposes; the reader fetches tile i). "
    "With `sources` > 1 the buffers of a concatenation share one table: an entry e names tile "
    "e // sources of buffer e % sources, and this op reads only the entries of buffer `source`, "
    "leaving the other CB pages to the reads of the other buffers",
    operands=(Operand("addrgen", AddrGen),), results=(),
    attributes=(Attr("cb", IntAttr), Attr("cb_offset", IntAttr, 0), Attr("index_cb", IntAttr),
                Attr("index_offset", IntAttr, 0), Attr("count", IntAttr), Attr("sources", IntAttr, 1),
                Attr("source", IntAttr, 0)),
)
NOC_WRITE_TILES = OpDef(
    "ttkernel.noc_write_tiles",
    "Write the waited front pages of `cb` (from `cb_offset`, row-major) to tiles tile(r, c) of the "
    "buffer; the data has left L1 only after noc_write_barrier. With `valid_cols`, the tiles of block "
    "columns c >= valid_cols (past a ragged edge) are not written",
    operands=(Operand("addrgen", AddrGen), Operand("start", Index), Operand("valid_cols", Index, optional=True)),
    results=(),
    attributes=(Attr("cb", IntAttr), Attr("cb_offset", IntAttr, 0), Attr("rows", IntAttr), Attr("cols", IntAttr),
                Attr("row_stride", IntAttr, 0), Attr("col_stride", IntAttr, 1)),
    verify=verify_noc_tiles,
)
NOC_READ_PAGES = OpDef(
    "ttkernel.noc_read_pages",
    "Read `count` whole pages start.. of a row-major buffer (e.g. an index table) into `cb`'s reserved back. "
    "With `segment_offset` and `segment_size` (bytes), only a column segment of each page is read: its "
    "`segment_size` bytes from byte `segment_offset` land at the start of the CB page, the rest of which is "
    "zero-filled (a row wider than a CB page, read in segments); a segment past the page is a device fault",
    operands=(Operand("addrgen", AddrGen), Operand("start", Index), Operand("segment_offset", Index, optional=True),
              Operand("segment_size", Index, optional=True)), results=(),
    attributes=(Attr("cb", IntAttr), Attr("cb_offset", IntAttr, 0), Attr("count", IntAttr)),
    verify=verify_row_segment,
)
NOC_READ_ROWS_INDEXED = OpDef(
    "ttkernel.noc_read_rows_indexed",
    "Row lookup (tt-metal's embedding reader): fill `count` reserved back pages of `cb` (from `cb_offset`) "
    "with pages of a row-major buffer: page j < `valid` is the buffer page whose index is the int32 value "
    "at position `index_offset` + j of the waited front page of `index_cb`; pages j >= `valid` are "
    "zero-filled (padding rows of the last tile row). With `wrap` > 0 a negative index i reads page "
    "i + wrap (ONNX Gather's indices from the end); with `pad_negative` a negative index gives a zero page "
    "(convolution padding). With `segment_offset` and `segment_size` (bytes), only a column segment of each "
    "row is read, to the start of its CB page, the rest of which is zero-filled (rows wider than a CB page, "
    "read in segments); a segment past the row is a device fault",
    operands=(Operand("addrgen", AddrGen), Operand("index_offset", Index), Operand("valid", Index),
              Operand("segment_offset", Index, optional=True), Operand("segment_size", Index, optional=True)),
    results=(),
    attributes=(Attr("cb", IntAttr), Attr("cb_offset", IntAttr, 0), Attr("index_cb", IntAttr),
                Attr("count", IntAttr), Attr("wrap", IntAttr, 0), Attr("pad_negative", BoolAttr, False)),
    verify=verify_row_segment,
)
NOC_WRITE_ROWS = OpDef(
    "ttkernel.noc_write_rows",
    "Write the first `valid` of `count` waited front pages of `cb` (row-major rows) to pages start.. of a "
    "row-major buffer; the pages past `valid` (padding rows of the last tile row) are not written. With "
    "`segment_offset` and `segment_size` (bytes), each row writes the first `segment_size` bytes of its CB "
    "page to bytes `segment_offset`.. of its buffer page (a column segment of a row wider than a CB page); "
    "a segment past the buffer page or longer than a CB page is a device fault",
    operands=(Operand("addrgen", AddrGen), Operand("start", Index), Operand("valid", Index),
              Operand("segment_offset", Index, optional=True), Operand("segment_size", Index, optional=True)),
    results=(),
    attributes=(Attr("cb", IntAttr), Attr("count", IntAttr)),
    verify=verify_row_segment,
)
NOC_READ_BARRIER = OpDef("ttkernel.noc_read_barrier", "Wait until every issued NoC read has landed", results=())
NOC_WRITE_BARRIER = OpDef("ttkernel.noc_write_barrier", "Wait until every issued NoC write has left", results=())

# ----------------------------------------------------------------------------------------------
# Semaphores and multicast (inter-core traffic)
#
# Every core of a program has NUM_SEMAPHORES semaphores (counters in its L1), 0 at launch. Cores are named by
# their (x, y) place in the program's grid. The ops below take an optional `enabled` operand: on a core where
# it is 0 the op does nothing (all cores run the same kernels, so a sender's and a receiver's roles are runtime
# arguments, where tt-metal builds separate sender and receiver kernels).

SEMAPHORE_SET = OpDef(
    "ttkernel.semaphore_set", "Set this core's semaphore `semaphore` to `value` (its init; noc_semaphore_set)",
    operands=(Operand("enabled", Index, optional=True),), results=(),
    attributes=(Attr("semaphore", IntAttr), Attr("value", IntAttr, 0)), verify=verify_semaphore,
)
SEMAPHORE_WAIT = OpDef(
    "ttkernel.semaphore_wait",
    "Block until this core's semaphore `semaphore` is >= `value` (noc_semaphore_wait); a wait that no core "
    "can satisfy any more is a deadlock",
    operands=(Operand("enabled", Index, optional=True),), results=(),
    attributes=(Attr("semaphore", IntAttr), Attr("value", IntAttr)), verify=verify_semaphore,
)
SEMAPHORE_INC = OpDef(
    "ttkernel.semaphore_inc",
    "Atomically add `amount` to semaphore `semaphore` of the program's core (x, y) over the NoC "
    "(noc_semaphore_inc); a core outside the program's grid is a fault",
    operands=(Operand("x", Index), Operand("y", Index), Operand("enabled", Index, optional=True)), results=(),
    attributes=(Attr("semaphore", IntAttr), Attr("amount", IntAttr, 1)), verify=verify_semaphore,
)
NOC_MCAST_CB = OpDef(
    "ttkernel.noc_mcast_cb",
    "Multicast: write the reserved back pages cb_offset..cb_offset+pages-1 of `cb` from this core to the same "
    "L1 bytes (the same CB slots, inside their reserved back window) of every other core of the rectangle "
    "x0..x1, y0..y1 (inclusive, program-grid coordinates; noc_async_write_multicast); then, with `semaphore` "
    ">= 0, set that semaphore to `value` on each of them (noc_semaphore_set_multicast). The pages must have "
    "landed (noc_read_barrier); a rectangle outside the program's grid is a fault. The bytes leave the "
    "sender's port once, whatever the number of receivers",
    operands=(Operand("x0", Index), Operand("y0", Index), Operand("x1", Index), Operand("y1", Index),
              Operand("enabled", Index, optional=True)),
    results=(),
    attributes=(Attr("cb", IntAttr), Attr("cb_offset", IntAttr, 0), Attr("pages", IntAttr),
                Attr("semaphore", IntAttr, -1), Attr("value", IntAttr, 1)),
    verify=verify_mcast,
)

# ----------------------------------------------------------------------------------------------
# Compute kernel: Dst ownership

TILE_REGS_ACQUIRE = OpDef("ttkernel.tile_regs_acquire", "Math takes half of Dst (8 tiles); contents undefined",
                          results=())
TILE_REGS_COMMIT = OpDef("ttkernel.tile_regs_commit", "Math hands Dst to the packer", results=())
TILE_REGS_WAIT = OpDef("ttkernel.tile_regs_wait", "Packer waits for the committed Dst", results=())
TILE_REGS_RELEASE = OpDef("ttkernel.tile_regs_release", "Packer gives Dst back to math", results=())

_BLOCK = (Attr("rows", IntAttr), Attr("cols", IntAttr), Attr("dst", IntAttr, 0))


def _operand_block(prefix: str) -> tuple[Attr, ...]:
    key = f"{prefix}_" if prefix else ""
    return (Attr(f"{key}offset", IntAttr, 0), Attr(f"{key}row_stride", IntAttr, 0),
            Attr(f"{key}col_stride", IntAttr, 1))


COPY_TILES = OpDef(
    "ttkernel.copy_tiles", "Dst slot(r, c) = tile(r, c) of `cb`'s waited front (unpack + datacopy)",
    results=(), attributes=(Attr("cb", IntAttr), *_operand_block(""), *_BLOCK), verify=verify_block_compute,
)
TRANSPOSE_TILES = OpDef(
    "ttkernel.transpose_tiles", "Dst slot(r, c) = transpose of tile(r, c) of `cb` (transpose_wh_tile)",
    results=(), attributes=(Attr("cb", IntAttr), *_operand_block(""), *_BLOCK), verify=verify_block_compute,
)
TILIZE_TILES = OpDef(
    "ttkernel.tilize_tiles",
    "Dst slot c = the 32x32 tile of the 32 waited front pages of `cb` (row-major rows, one row per page) "
    "at tile column `col_offset` + c, for c < `cols` (unpack-tilize); columns past the row are zero",
    results=(), attributes=(Attr("cb", IntAttr), Attr("col_offset", IntAttr, 0), Attr("cols", IntAttr),
                            Attr("dst", IntAttr, 0)),
    verify=verify_tilize,
)
PACK_ROWS = OpDef(
    "ttkernel.pack_rows",
    "Pack-untilize: Dst slots dst..dst+cols-1 (a row of tiles) into the 32 reserved back pages of `cb` "
    "(row-major rows, one per page) at element column 32 * `col_offset`; columns past a page are dropped",
    results=(), attributes=(Attr("cb", IntAttr), Attr("col_offset", IntAttr, 0), Attr("cols", IntAttr),
                            Attr("dst", IntAttr, 0)),
    verify=verify_tilize,
)
BINARY_TILES = OpDef(
    "ttkernel.binary_tiles",
    "Dst slot(r, c) = A(r, c) `op` B(r, c), A from `cb_a` and B from `cb_b` (FPU, bf16 result). "
    "`bcast` broadcasts inside B's tile: row = B's row 0 to every row, col = B's column 0 to every "
    "column, scalar = B[0, 0]",
    results=(),
    attributes=(Attr("op", enum_attr(*BINARY_FUNCTIONS)), Attr("cb_a", IntAttr), *_operand_block("a"),
                Attr("cb_b", IntAttr), *_operand_block("b"), Attr("bcast", enum_attr(*BROADCASTS), "none"),
                *_BLOCK),
    verify=verify_block_compute,
)
MATMUL_TILES = OpDef(
    "ttkernel.matmul_tiles",
    "Dst slot(r, c) += sum over k of A(r, k) @ B(k, c): A tile a_offset + r*a_row_stride + k, "
    "B tile b_offset + k*b_row_stride + c, both from waited fronts; accumulation follows the "
    "16-bit Dst numerics at `fidelity`. With accumulate = false the slots start from zero instead of their "
    "contents (a chain's first K block: tt-metal's matmul accumulates onto the zeros the packer leaves in Dst, "
    "with no fill op; the bits of fill_tiles 0.0 then matmul_tiles)",
    results=(),
    attributes=(Attr("cb_a", IntAttr), Attr("a_offset", IntAttr, 0), Attr("a_row_stride", IntAttr),
                Attr("cb_b", IntAttr), Attr("b_offset", IntAttr, 0), Attr("b_row_stride", IntAttr),
                Attr("inner", IntAttr), Attr("rows", IntAttr), Attr("cols", IntAttr), Attr("dst", IntAttr, 0),
                Attr("fidelity", enum_attr("lofi", "hifi2", "hifi3", "hifi4"), "hifi4"),
                Attr("accumulate", BoolAttr, True)),
    verify=verify_matmul,
)
REDUCE_TILES = OpDef(
    "ttkernel.reduce_tiles",
    "Dst slot `dst` accumulates the reduction (`kind`) of tiles tile(r, c) of `cb` along `dim`: row = "
    "across columns into column 0, col = across rows into row 0, scalar = both into [0, 0]; inputs "
    "are multiplied by `scaler` first (sums go through the matmul unit at `fidelity`)",
    results=(),
    attributes=(Attr("kind", enum_attr("sum", "max")), Attr("dim", enum_attr("row", "col", "scalar")),
                Attr("cb", IntAttr), *_operand_block(""), Attr("rows", IntAttr), Attr("cols", IntAttr),
                Attr("dst", IntAttr, 0), Attr("scaler", FloatAttr, 1.0),
                Attr("fidelity", enum_attr("lofi", "hifi2", "hifi3", "hifi4"), "hifi4")),
    verify=verify_reduce,
)
SFPU_TILES = OpDef(
    "ttkernel.sfpu_tiles", "Apply the SFPU function `fn` (with `param` for the *_scalar forms) to Dst slots "
    "dst..dst+count-1 in place (float32 math, result rounded to the Dst format)",
    results=(), attributes=(Attr("fn", enum_attr(*SFPU_FUNCTIONS)), Attr("dst", IntAttr, 0), Attr("count", IntAttr),
                            Attr("param", FloatAttr, 0.0)),
    verify=verify_dst_only,
)
SFPU_BINARY_TILES = OpDef(
    "ttkernel.sfpu_binary_tiles", "Dst slot dst+i = `fn`(slot dst+i, slot dst_b+i) for i < count, on the SFPU "
    "(float32 math from the two Dst-format operands, one rounding to the Dst format)",
    results=(), attributes=(Attr("fn", enum_attr(*SFPU_BINARY_FUNCTIONS)), Attr("dst", IntAttr, 0),
                            Attr("dst_b", IntAttr), Attr("count", IntAttr)),
    verify=verify_sfpu_binary,
)
FILL_TILES = OpDef(
    "ttkernel.fill_tiles", "Dst slots dst..dst+count-1 = `value` everywhere", results=(),
    attributes=(Attr("dst", IntAttr, 0), Attr("count", IntAttr), Attr("value", FloatAttr)), verify=verify_dst_only,
)
MASK_TILES = OpDef(
    "ttkernel.mask_tiles",
    "Set the padding of Dst slot(r, c) to `fill`: element (i, j) of the tile at tensor tile "
    "coordinates (row_tile + r, col_tile + c) is padding when its row >= valid_rows or its column "
    ">= valid_cols (the logical height and width of the tensor's last two dims)",
    operands=(Operand("row_tile", Index), Operand("col_tile", Index)), results=(),
    attributes=(Attr("rows", IntAttr), Attr("cols", IntAttr), Attr("dst", IntAttr, 0),
                Attr("valid_rows", IntAttr), Attr("valid_cols", IntAttr), Attr("fill", FloatAttr, 0.0)),
    verify=verify_mask,
)
PACK_TILES = OpDef(
    "ttkernel.pack_tiles", "Pack Dst slots dst..dst+count-1 into `cb`'s reserved back pages from `cb_offset`, "
    "converting to the CB's data format", results=(),
    attributes=(Attr("dst", IntAttr, 0), Attr("count", IntAttr), Attr("cb", IntAttr), Attr("cb_offset", IntAttr, 0)),
    verify=verify_pack,
)

TTKERNEL = Dialect(
    "ttkernel", "Kernel-level ops (TT-Metalium kernel API), on blocks of tiles.",
    ops=[GET_ARG, CONSTANT, BUFFER_ADDRESS, ADDI, MULI, MINI, FOR,
         CB_RESERVE_BACK, CB_PUSH_BACK, CB_WAIT_FRONT, CB_POP_FRONT,
         ADDRGEN_OP, NOC_READ_TILES, NOC_READ_TILES_INDEXED, NOC_READ_ROWS_INDEXED, NOC_WRITE_TILES, NOC_READ_PAGES,
         NOC_WRITE_ROWS, NOC_READ_BARRIER, NOC_WRITE_BARRIER,
         SEMAPHORE_SET, SEMAPHORE_WAIT, SEMAPHORE_INC, NOC_MCAST_CB,
         TILE_REGS_ACQUIRE, TILE_REGS_COMMIT, TILE_REGS_WAIT, TILE_REGS_RELEASE,
         COPY_TILES, TRANSPOSE_TILES, TILIZE_TILES, BINARY_TILES, MATMUL_TILES, REDUCE_TILES, SFPU_TILES,
         SFPU_BINARY_TILES, FILL_TILES, MASK_TILES, PACK_TILES, PACK_ROWS],
).register()
