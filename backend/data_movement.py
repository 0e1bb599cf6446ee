"""Transposes, reshapes, slices and concatenations as tile gathers.

A chain of movement ops (`footprint.movement_chain`: transposes, reshapes and slices, possibly headed
by a concat) whose element map is tile-granular (`footprint.gather_map_of_inputs`) becomes one
program: the source tile of every output tile is computed at compile time and stored as an int32
row-major index table (a weight; -1 - i marks tile i wanted transposed; with n inputs, entry
i * n + k names tile i of input k). Each core owns a run of output tiles; per step its reader fetches
one table row (noc_read_pages), gathers the tiles it names (noc_read_tiles_indexed, once per input)
and the writer stores them in order. When the last two dims swap, the compute kernel transposes each
tile; otherwise the writer drains the reader's CB directly. Padding moves with its tile, so it stays
zero. A chain whose gather is the identity is a view (`footprint.is_view`): no program at all.
"""

from __future__ import annotations

import re

import numpy as np

from ttc.backend.kernel import KernelBuilder
from ttc.backend.program import ConstantBuffer, Program, Schedule, cbs_of, no_args, schedule_of
from ttc.ir.core import Module, Operation
from ttc.ir.dialects.tt import LayoutAttr
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.footprint import CB_IN0, CB_INDEX, CB_OUT, INDEX_ROW, gather_of, program_operands, tensor

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
    sources = program_operands(op)
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
    inputs = program_operands(op)
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
    gen = k.addrgen(len(program_operands(op)) + 1, tensor(op.result))
    with k.loop(b["tiles"] // block) as step:
        k.op("cb_wait_front", cb=cb, pages=block)
        k.op("noc_write_tiles", gen, k.affine(k.arg(0), (step, block)), cb=cb, rows=1, cols=block)
        k.op("noc_write_barrier")
        k.op("cb_pop_front", cb=cb, pages=block)
    return k.region()
