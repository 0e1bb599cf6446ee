"""Transposes, reshapes, slices and concatenations as tile gathers.

A chain of movement ops (`movement_chain`: transposes, reshapes and slices, possibly headed
by a concat) whose element map is tile-granular (`gather_map.gather_map_of_inputs`) becomes one
program: the source tile of every output tile is computed at compile time and stored as an int32
row-major index table (a weight; -1 - i marks tile i wanted transposed; with n inputs, entry
i * n + k names tile i of input k). Each core owns a run of output tiles; per step its reader fetches
one table row (noc_read_pages), gathers the tiles it names (noc_read_tiles_indexed, once per input)
and the writer stores them in order. When the last two dims swap, the compute kernel transposes each
tile; otherwise the writer drains the reader's CB directly. Padding moves with its tile, so it stays
zero. A chain whose gather is the identity is a view (`is_view`): no program at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from ttc.ir import target
from ttc.ir.core import Module, Operation, OpResult, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.ops.counting import (
    Buffer,
    Plan,
    Weights,
)
from ttc.passes.ops.gather_map import (
    Gather,
    chain_steps,
    gather_map_of_inputs,
)
from ttc.passes.ops.geometry import (
    CB_IN0,
    CB_INDEX,
    CB_OUT,
    HALF_DST,
    INDEX_ROW,
    cb,
    divisors,
    double,
    is_row_major,
    node_names,
    tensor,
    tile_shape,
)
from ttc.passes.ops.interface import DeviceOp
from ttc.passes.ops.kernel import KernelBuilder
from ttc.passes.ops.program import (
    ConstantBuffer,
    Program,
    Schedule,
    cbs_of,
    no_args,
    schedule_of,
)
from ttc.passes.ops.registry import register

MOVEMENT_OPS = frozenset({ttir.TRANSPOSE.name, ttir.RESHAPE.name, ttir.SLICE.name, ttir.CONCAT.name})


def is_folded(op: Operation) -> bool:
    """A transpose/reshape/slice whose only user is another one: the chain is lowered as one gather at its
    end. A concat only heads a chain (it reads several inputs), so nothing folds into one, and a view
    (`is_view`) is no program at all."""
    if op.name not in MOVEMENT_OPS or len(op.result.uses) != 1:
        return False
    user = op.result.uses[0][0]
    return user.name in MOVEMENT_OPS and user.name != ttir.CONCAT.name


def movement_chain(op: Operation) -> list[Operation]:
    """The folded movement ops feeding `op` and `op` itself, in program order."""
    chain = [op]
    while chain[0].name != ttir.CONCAT.name and isinstance(chain[0].operands[0], OpResult) \
            and is_folded(chain[0].operands[0].op):
        chain.insert(0, chain[0].operands[0].op)
    return chain


def chain_operands(op: Operation) -> list[Value]:
    """The device values the gather ending at `op` reads: the input(s) of its whole chain."""
    head = movement_chain(op)[0]
    return list(head.operands) if head.name == ttir.CONCAT.name else [head.operands[0]]


def is_view(op: Operation) -> bool:
    """A movement op (chain) whose output tiles are its input's tiles in order: the result shares the
    input's buffer, no program runs (e.g. a reshape adding or dropping leading unit dims). `layout`
    gives a view its source's memory space, so the shared pages are the same pages."""
    if op.name not in MOVEMENT_OPS or is_folded(op):
        return False
    if op.name == ttir.RESHAPE.name and is_row_major(op.operands[0]):  # rows stay rows
        return tensor(op.operands[0]).shape[-1:] == tensor(op.result).shape[-1:]
    in_shapes, steps = chain_steps(movement_chain(op))
    gather = gather_map_of_inputs(in_shapes, steps)
    if not isinstance(gather, Gather) or not gather.is_identity:
        return False
    if any(user.name == ttir.TO_LAYOUT.name for user, _ in op.result.uses):
        return False  # read back to the host in its own shape
    return tensor(chain_operands(op)[0]).element_type == tensor(op.result).element_type


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


def gather_cbs(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    gather = gather_of(op)
    fmt = tensor(op.result).element_type
    steps = blocking["tiles"] // blocking["block"]
    cbs = [cb(CB_IN0, tensor(chain_operands(op)[0]).element_type, double(blocking["block"], steps)),
           cb(CB_INDEX, ScalarType("i32"), 1, page=INDEX_ROW * 4)]
    if gather.transposed:
        cbs.append(cb(CB_OUT, fmt, double(blocking["block"], steps)))
    return cbs


def gather_candidates(op: Operation) -> Iterator[dict[str, int]]:
    gather_of(op)  # a UserError when the movement is not tile-granular
    total = tile_shape(tensor(op.result).shape).tiles
    for tiles in divisors(total):
        for block in [d for d in divisors(tiles) if d <= HALF_DST][::-1]:
            yield {"tiles": tiles, "block": block}


def plan_gather(op: Operation, device: DeviceAttr, b: dict[str, int], fidelity: str, grid: tuple[int, int],
                result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Counts:
    gather = gather_of(op)
    sources = chain_operands(op)
    total = tile_shape(tensor(op.result).shape).tiles
    tiles, block = b["tiles"], b["block"]
    steps = tiles // block
    plan = Plan(device, grid, (total // tiles,))
    if gather.transposed:
        plan.tile(target.DATACOPY, tiles)
    plan.static(Buffer(INDEX_ROW * 4, True, None), steps)  # one index-table row per step
    outputs = plan.unit[:, 0:1] * tiles + np.arange(tiles)[None, :]  # [cores, tiles]: the core's output tiles
    if len(sources) == 1:
        plan.static(Buffer.of(tensor(sources[0]), device), tiles, page_lists=lambda: gather.source[outputs])
    else:
        assert gather.inputs is not None
        which = gather.inputs[outputs].reshape(plan.cores, steps, block)
        for index, source in enumerate(sources):
            plan.masked(Buffer.of(tensor(source), device), (which == index).sum(axis=(0, 2)))
    plan.static(Buffer.of(tensor(op.result), device), tiles, write=True, page_lists=lambda: outputs)
    return plan.counts()


INDEX_TABLE_LAYOUT = LayoutAttr("row_major", "dram", "interleaved")


def index_table(source: np.ndarray, transposed: bool, block: int, inputs: np.ndarray | None = None,
                sources: int = 1) -> np.ndarray:
    """int32 [steps, INDEX_ROW]: row i holds the source tiles of output tiles i*block.., zero-padded."""
    entries = source * sources + inputs if inputs is not None else source
    entries = -1 - entries if transposed else entries
    rows = entries.reshape(-1, block)
    table = np.zeros((rows.shape[0], INDEX_ROW), dtype=np.int32)
    table[:, :block] = rows
    return table


def table_stem(op: Operation) -> str:
    """A weight name from the op's last ONNX node: "/attn/q_heads/Transpose" -> "attn.q_heads.Transpose"."""
    names = op.loc.names()
    stem = re.sub(r"[^A-Za-z0-9_.]+", ".", names[-1]).strip(".") if names else ""
    return f"{stem or 'gather'}.tile_index"


def lower_gather(op: Operation, module: Module) -> Program:
    schedule = schedule_of(op)
    b = schedule.blocking
    gather = gather_of(op)
    sources = chain_operands(op)
    table = index_table(gather.source, gather.transposed, b["block"], gather.inputs, len(sources))
    name = module.add_weight(table_stem(op), table)
    table_type = TensorType(table.shape, ScalarType("i32"), INDEX_TABLE_LAYOUT)
    steps = b["tiles"] // b["block"]

    def first_row(unit: tuple[int, ...]) -> list[int]:
        return [unit[0] * steps]

    def first_tile(unit: tuple[int, ...]) -> list[int]:
        return [unit[0] * b["tiles"]]

    kernels = (gather_reader(op, schedule, table_type), gather_compute(op, schedule, gather.transposed),
               gather_writer(op, schedule, gather.transposed))
    args = (schedule.args(first_row), no_args(schedule), schedule.args(first_tile))
    return Program("data_movement", schedule.grid, cbs_of(op, schedule), kernels, args, sources,
                   [ConstantBuffer(name, table_type, table)])


def gather_reader(op: Operation, s: Schedule, table_type: TensorType):
    b = s.blocking
    block = b["block"]
    k = KernelBuilder(op.loc)
    inputs = chain_operands(op)
    sources = [k.addrgen(i, tensor(value)) for i, value in enumerate(inputs)]
    table = k.addrgen(len(inputs), table_type)
    with k.loop(b["tiles"] // block) as step:
        k.op("cb_reserve_back", cb=CB_INDEX, pages=1)
        k.op("noc_read_pages", table, k.add(k.arg(0), step), cb=CB_INDEX, count=1)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_INDEX, pages=1)
        k.op("cb_wait_front", cb=CB_INDEX, pages=1)
        k.op("cb_reserve_back", cb=CB_IN0, pages=block)
        for index, source in enumerate(sources):
            attributes = {"sources": len(sources), "source": index} if len(sources) > 1 else {}
            k.op("noc_read_tiles_indexed", source, cb=CB_IN0, index_cb=CB_INDEX, count=block, **attributes)
        k.op("noc_read_barrier")
        k.op("cb_push_back", cb=CB_IN0, pages=block)
        k.op("cb_pop_front", cb=CB_INDEX, pages=1)
    return k.region()


def gather_compute(op: Operation, s: Schedule, transposed: bool):
    b = s.blocking
    block = b["block"]
    k = KernelBuilder(op.loc)
    if not transposed:
        return k.region()  # the writer drains the reader's CB
    with k.loop(b["tiles"] // block):
        k.op("cb_wait_front", cb=CB_IN0, pages=block)
        k.op("tile_regs_acquire")
        k.op("transpose_tiles", cb=CB_IN0, rows=1, cols=block)
        k.pack_block(CB_OUT, block)
        k.op("cb_pop_front", cb=CB_IN0, pages=block)
    return k.region()


def gather_writer(op: Operation, s: Schedule, transposed: bool):
    b = s.blocking
    block = b["block"]
    cb = CB_OUT if transposed else CB_IN0
    k = KernelBuilder(op.loc)
    gen = k.addrgen(len(chain_operands(op)) + 1, tensor(op.result))
    with k.loop(b["tiles"] // block) as step:
        k.op("cb_wait_front", cb=cb, pages=block)
        k.op("noc_write_tiles", gen, k.affine(k.arg(0), (step, block)), cb=cb, rows=1, cols=block)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=cb, pages=block)
    return k.region()


class GatherOp(DeviceOp):
    """A chain of movement ops run as one tile gather."""

    kind = "data_movement"
    op_names = MOVEMENT_OPS

    def operands(self, op: Operation) -> list[Value]:
        return chain_operands(op)

    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        return gather_candidates(op)

    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        return (tile_shape(tensor(op.result).shape).tiles // blocking["tiles"],)

    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        return gather_cbs(op, blocking)

    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Weights | None = None) -> Counts:
        return plan_gather(op, device, blocking, fidelity, grid, result_layout, weights)

    def lower(self, op: Operation, module: Module) -> Program:
        return lower_gather(op, module)


GATHER = register(GatherOp())
