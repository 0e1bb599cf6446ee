"""Row lookups fused into the elementwise op that alone reads them (`ttir.lookup_eltwise`): the grid pass's
`passes/lookup_fusion.py` makes it from a `ttir.eltwise` and the `embedding {pad_negative}` lookups (each a page of
32 ids per tile row, `[tile rows, 32]`) of some of its inputs; a max pool's one lookup per kernel position and
their elementwise maximum (passes/windows.py) become one program instead of one per position and the maximum.

The program is the eltwise's (`eltwise.py`: its blockings, CB plan, compute and writer, through a stand-in
`ttir.eltwise` whose looked-up inputs are detached values of the lookups' result types, `as_eltwise`), with those
inputs made on the core instead of read:

- reader: per block (one tile row, block_w tile columns) and looked-up input, the index page of the tile row into
  the index CB and the 32 rows it names, the block's column segment of them, into the sticks CB
  (`noc_read_rows_indexed {pad_negative}`: -1 reads a zero row), as the lookup's reader does (with a segment when
  the block is narrower than a row, as its column-blocked plan does);
- compute: before the block's inputs are waited for, each looked-up input's rows tilized (`tilize_tiles`) and
  packed into the input's CB in the lookup result's format, the tiles the lookup packed and wrote; then the
  unchanged body.

The looked-up tiles are never written: the lookups' programs, their launches and their results' buffers go. Values
are the unfused programs' bit for bit (the same rows, the same tilize and pack, then the same body). A looked-up
input has the result's shape, so it is never a held input (eltwise.held_inputs) and every block reads its own rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation, Value
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.ops.counting import Buffer, Plan, Weights, constant_of
from ttc.passes.ops.eltwise import (
    eltwise_candidates,
    eltwise_cbs,
    eltwise_compute,
    eltwise_reader,
    eltwise_units,
    eltwise_writer,
    input_strides,
    plan_eltwise,
)
from ttc.passes.ops.eltwise_body import eltwise_plan
from ttc.passes.ops.geometry import (
    CB_OUT,
    ELEMENT_BYTES,
    TILE,
    cb,
    double,
    overlapped_start,
    page_size,
    tensor,
    tile_shape,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import Index, KernelBuilder
from ttc.passes.ops.program import Program, cbs_of, schedule_of
from ttc.passes.ops.registry import register


def lookups_of(op: Operation) -> list[int]:
    """The body inputs that are looked up, in the order of their index tables."""
    return [int(i) for i in op.attr("lookups")]


def sticks_cb(op: Operation) -> int:
    """The CB of one lookup's 32 rows (a block's segment of them) and, after it, the index page's: the first two
    CBs after the inputs' (eltwise.py gives input i CB i)."""
    return ttir.lookup_eltwise_inputs(op)


def fits_cbs(inputs: int) -> bool:
    """The inputs' CBs, the sticks' and the index page's fit below the output CB."""
    return inputs + 2 <= CB_OUT


def looked_type(op: Operation, index: int) -> TensorType:
    """The tiles the unfused lookup of input #index wrote: the body argument's shape in the table's format."""
    table = tensor(op.operands[index])
    shape = tensor(op.regions[0].blocks[0].args[index]).shape
    return TensorType(shape, table.element_type, LayoutAttr("tile", "l1", "interleaved"))


@contextlib.contextmanager
def as_eltwise(op: Operation) -> Iterator[Operation]:
    """The `ttir.eltwise` the fused op stands for (its body shared, its looked-up inputs detached values of the
    lookups' result types), for eltwise.py's blockings, CBs, counts and kernels; its operand uses are dropped
    afterwards."""
    lookups = set(lookups_of(op))
    n = ttir.lookup_eltwise_inputs(op)
    operands = [Value(looked_type(op, i)) if i in lookups else op.operands[i] for i in range(n)]
    proxy = Operation(ttir.ELTWISE.name, operands, [op.result.type], {}, loc=op.loc)
    proxy.regions = op.regions  # shared, not re-parented
    try:
        yield proxy
    finally:
        proxy.regions = []
        proxy.drop_operands()


def ids_of(op: Operation, j: int) -> Value:
    return op.operands[ttir.lookup_eltwise_inputs(op) + j]


def segment(op: Operation, index: int, width: int) -> tuple[int, int] | None:
    """(bytes per element, bytes of a block's segment of a row), or None when a block is the whole row."""
    table = tensor(op.operands[index])
    element = page_size(table) // table.shape[1]
    return None if width * TILE == table.shape[1] else (element, width * TILE * element)


def lookup_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """The eltwise's CBs, plus 32 rows of a block's width and an index page, double-buffered."""
    width = blocking["block_w"]
    table = tensor(op.operands[lookups_of(op)[0]])
    element = page_size(table) // table.shape[1]
    with as_eltwise(op) as proxy:
        cbs = eltwise_cbs(proxy, blocking)
    cbs += [cb(sticks_cb(op), table.element_type, double(TILE, 2), page=width * TILE * element),
            cb(sticks_cb(op) + 1, ScalarType("i32"), double(1, 2), page=TILE * ELEMENT_BYTES["i32"])]
    return sorted(cbs, key=lambda c: c.index)


def plan_lookup(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    lookups = lookups_of(op)
    width = b["block_w"]
    tables = {}
    for j, i in enumerate(lookups):
        table = constant_of(ids_of(op, j), weights)
        tables[i] = (j, None if table is None else (table >= 0).sum(axis=-1))  # valid rows per tile row

    def gathered(plan: Plan, index: int, row0: np.ndarray, loop: np.ndarray) -> bool:
        if index not in tables:
            return False
        j, valid = tables[index]
        ids = ids_of(op, j)
        plan.tile(target.DATACOPY, len(loop) * width)  # the tilize
        plan.static(Buffer.of(tensor(ids), device), len(loop),
                    page_lists=lambda: row0[:, None] + loop[None, :, 1])
        rows = row0[:, None] + loop[None, :, 1]  # [cores, blocks]: the tile row each read looks up
        per_row = np.full(tensor(ids).shape[0], TILE) if valid is None else valid
        totals = per_row[rows].sum(axis=0)  # per read, the rows of all cores
        piece = segment(op, index, width)
        if piece is None:
            plan.masked(Buffer.of(tensor(op.operands[index]), device), totals)
        else:
            plan.masked(Buffer.of(tensor(op.operands[index]), device, page=1), totals * piece[1])
        return True

    with as_eltwise(op) as proxy:
        return plan_eltwise(proxy, device, b, fidelity, grid, result_layout, weights, gathered=gathered)


def lower_lookup(op: Operation) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    width = b["block_w"]
    lookups = lookups_of(op)
    n = ttir.lookup_eltwise_inputs(op)
    sticks, index_cb = sticks_cb(op), sticks_cb(op) + 1
    out = tile_shape(tensor(op.result).shape)
    with as_eltwise(op) as proxy:
        plan = eltwise_plan(proxy)
        strides = [None if i in lookups else input_strides(proxy, i, b) for i in range(n)]

        def origin(unit: tuple[int, ...]) -> tuple[int, int, int]:
            return unit[0] * b["batches"], int(overlapped_start(out.rt, b["rows"], unit[1])), unit[2] * b["cols"]

        def reader_args(unit: tuple[int, ...]) -> list[int]:
            """Per input its first tile (a looked-up one: the first tile row), then the first tile column."""
            batch, row, col = origin(unit)
            return [row if stride is None else stride[0][batch] + row * stride[2] + col * stride[3]
                    for stride in strides] + [col]

        def compute_args(unit: tuple[int, ...]) -> list[int]:
            _, row, col = origin(unit)
            return [row, col]

        def writer_args(unit: tuple[int, ...]) -> list[int]:
            batch, row, col = origin(unit)
            return [(batch * out.rt + row) * out.ct + col]

        gens: dict[int, tuple] = {}

        def gather(k: KernelBuilder, i: int, row: Index, col: Index) -> None:
            """Input #i's block: the index page of its tile row, then the 32 rows (their block's segment)."""
            if i not in gens:
                j = lookups.index(i)
                gens[i] = (k.addrgen(i, tensor(op.operands[i])), k.addrgen(n + j, tensor(ids_of(op, j))))
            table_gen, ids_gen = gens[i]
            k.op("cb_reserve_back", cb=index_cb, pages=1)
            k.op("noc_read_pages", ids_gen, k.add(k.arg(i), row), cb=index_cb, count=1)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=index_cb, pages=1)
            k.op("cb_wait_front", cb=index_cb, pages=1)
            piece = segment(op, i, width)
            part = () if piece is None else (k.mul(k.affine(k.arg(n), (col, width)), TILE * piece[0]), piece[1])
            k.op("cb_reserve_back", cb=sticks, pages=TILE)
            k.op("noc_read_rows_indexed", table_gen, 0, TILE, *part, cb=sticks, index_cb=index_cb, count=TILE,
                 wrap=tensor(op.operands[i]).shape[0], pad_negative=True)
            k.op("noc_read_barrier")
            k.op("cb_push_back", cb=sticks, pages=TILE)
            k.op("cb_pop_front", cb=index_cb, pages=1)

        def block_ready(k: KernelBuilder) -> None:
            for i in sorted(lookups):
                k.op("cb_wait_front", cb=sticks, pages=TILE)
                k.op("tile_regs_acquire")
                k.op("tilize_tiles", cb=sticks, col_offset=0, cols=width)
                k.pack_block(i, width)
                k.op("cb_pop_front", cb=sticks, pages=TILE)

        reader = eltwise_reader(proxy, plan, schedule, strides, gather=gather, gathered=frozenset(lookups))
        compute = eltwise_compute(proxy, plan, schedule, out, block_ready=block_ready)
        writer = eltwise_writer(proxy, schedule, out, output=len(op.operands))
    return Program("lookup_eltwise", schedule.grid, cbs_of(op, schedule), (reader, compute, writer),
                   (schedule.args(reader_args), schedule.args(compute_args), schedule.args(writer_args)),
                   list(op.operands))


class LookupEltwiseOp(DeviceOp):
    """An elementwise op reading some of its inputs by row lookups (the lookups fused into its reader)."""

    kind = "lookup_eltwise"
    op_names = frozenset({ttir.LOOKUP_ELTWISE.name})

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        with as_eltwise(op) as proxy:
            return iter(list(eltwise_candidates(proxy)))

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        return eltwise_units(tile_shape(tensor(op.result).shape), blocking)

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return lookup_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_lookup(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_lookup(op)


LOOKUP_ELTWISE = register(LookupEltwiseOp())
