"""Runs a `ttmetal.enqueue_program` in the native core, with the observable behaviour of the interpreter.

    profile = run_native(device, op, buffer_addresses, step_budget, plan, threads)

is `Program(device, op, buffer_addresses, step_budget, plan).run()` (runtime/interpreter.py, the executable
definition) computed by `ttc.runtime._native.run_program`: the same DRAM and L1 bytes afterwards, the same
ProgramProfile, the same DeviceFault text, and the same dirty marks on watched constants.

What depends only on the IR (and the device and the op's runtime arguments) is encoded once per plan into
a flat op stream (`EncodedProgram`, kept on the plan): fixed-width int64 instructions with resolved
attributes and register numbers, loops as FOR_BEGIN / FOR_END with trip counts, float attributes and SFPU
tables by index. A program's runtime scalars (`scalar_args`) only change runtime argument values: a run whose
scalars differ from the last one's replaces those values in the encoded program (`substitute_scalars`), without
encoding it again. A run reserves the CBs in L1 (as the interpreter's launch does), calls the native core
once with the GIL released, and turns its result into a profile or a DeviceFault (the last run's profile again when
the counts are the same, as they are on every run of a static program).

The executor's host side in native mode is here too: `write_tensor` / `read_tensor` move a host tensor straight
into / out of a live interleaved buffer's tile pages (no packed copy in between) and `poison` marks a fresh
buffer, each one native call with the bytes and poison marks of device.py's Python paths.

Left to the interpreter (it runs the program instead): launch faults (a malformed program, a grid larger
than the device, a CB configuration or L1 overflow fault), and the one case where the interpreter mixes
cores in an address check: an address generator whose base differs between cores, over a memory holding
sharded buffers (the interpreter takes core 0's base to choose the sharded path for all).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from ttc.ir import target
from ttc.ir.core import Block, Operation, Value
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects import ttkernel
from ttc.runtime import formats, numerics
from ttc.runtime.accounting import ProgramProfile, cb_formats, profile_of, tile_count
from ttc.runtime.compute import F16_OVERFLOW, HALF_DST, dst_format_of
from ttc.runtime.dataflow import _format_of
from ttc.runtime.device import POISON_BLOCK, Allocation, Device, Fault, Memory
from ttc.runtime.formats import DataFormat
from ttc.runtime.handlers import Blocked
from ttc.runtime.interpreter import KERNELS, Program, ProgramPlan
from ttc.runtime.layout import data_format
from ttc.runtime.native_core import native

WIDTH: int = native.PROGRAM_WIDTH
OPCODES: dict[str, int] = {name: i for i, name in enumerate(native.PROGRAM_OPCODES)}
FAULT_KINDS: list[str] = list(native.PROGRAM_FAULTS)

FORMAT_CODES = {DataFormat.FLOAT32: 0, DataFormat.BFLOAT16: 1, DataFormat.FLOAT16: 2, DataFormat.BFP8_B: 3,
                DataFormat.BFP4_B: 4, DataFormat.INT32: 5}  # numerics.h Format
FORMATS = {code: fmt for fmt, code in FORMAT_CODES.items()}
LAYOUTS = ("interleaved", "height_sharded", "width_sharded", "block_sharded")
MEMORIES = ("dram", "l1")
DST_STATES = ("released", "acquired", "committed", "waited")
SCALAR_FUNCTIONS = ("add_scalar", "mul_scalar", "sub_from_scalar", "max_scalar", "where_nez", "where_eqz",
                    "eq_scalar", "ne_scalar", "lt_scalar", "le_scalar", "gt_scalar", "ge_scalar")  # ScalarFn
SFPU_BINARY = ("pow", "where_nez", "where_eqz")  # SfpuBinaryFn
FIDELITIES = {"lofi": 1, "hifi2": 2, "hifi3": 3, "hifi4": 4}
DIMS = ("row", "col", "scalar")
BCASTS = ("none", "row", "col", "scalar")
BINARY_OPS = ("add", "sub", "mul")

_ATTR = "_native_encodings"  # the plan's attribute holding its encodings (one per device descriptor)
_LAST = "_native_last"  # the plan's attribute holding the (device descriptor, encoding) it ran last


# ----------------------------------------------------------------------------------------------
# Encoding


@dataclass
class Encoding:
    """A program's op stream and what the Python side needs around a run (all fixed per plan and device)."""

    program: Any  # _native.EncodedProgram, or None when the interpreter runs this program (`fallback`)
    ops: list[Operation]  # op ids -> operations, for fault messages
    messages: list[str]  # RAISE texts
    reserves: list[tuple[int, int, int]]  # (index, address, size) of the CBs, in configuration order

    keys: tuple[str, ...] = ()  # the count keys the compute ops' charge fields name, by index
    grid_memories: frozenset[str] = frozenset()  # memories read through a per-core addrgen base
    fallback: bool = False
    cores: int = 0
    regions: tuple[tuple[int, int], ...] = ()  # (address, size) of the CBs
    last_profile: tuple[tuple[int, ...], ProgramProfile] | None = None  # (counts, profile) of the last run
    fits_l1: set[tuple[int, int]] = field(default_factory=set)  # L1 signatures the CBs were found to fit
    args: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per kernel: (offsets, IR values)
    scalars: dict[tuple[int, int], int] = field(default_factory=dict)  # the runtime scalars now in `program`

    def __post_init__(self) -> None:
        self.regions = tuple((address, size) for _, address, size in self.reserves)


class _Encoder:
    """Turns a plan's steps into instructions (see runtime/native/program.cpp for the field layout)."""

    def __init__(self, plan: ProgramPlan, op: Operation, device: Device) -> None:
        self.plan, self.op, self.device, self.desc = plan, op, device, device.desc
        self.code: list[list[int]] = []
        self.ops: list[Operation] = []
        self.op_ids: dict[Operation, int] = {}
        self.messages: list[str] = []
        self.regs: dict[Value, int] = {}
        self.uniform: list[bool] = []  # per register: the same on every core (decides the sharded fallback)
        self.agens: dict[Value, int] = {}
        self.agen_uniform: list[bool] = []
        self.fparams: list[float] = []
        self.tables: list[np.ndarray] = []
        self.table_overflows: list[np.ndarray] = []  # f16 programs: each table's Float16 overflow marks
        self.table_ids: dict[tuple[str, float], int] = {}
        self.grid_memories: set[str] = set()
        self.runtime_args = op.attr("runtime_args")
        self.dst_format = dst_format_of(op)
        self.formats = cb_formats(op)
        self.keys: dict[str, int] = {}  # count key -> its index in the charge fields
        self.kernel = 0

    # -- registers and side tables -------------------------------------------------------------

    def reg(self, value: Value | None = None, uniform: bool = True) -> int:
        index = len(self.uniform)
        self.uniform.append(uniform)
        if value is not None:
            self.regs[value] = index
        return index

    def use(self, value: Value) -> int:
        reg = self.regs.get(value)
        if reg is None:
            raise ValueError(f"a kernel value is used where it is not defined: {value!r}")
        return reg

    def fparam(self, value: float) -> int:
        self.fparams.append(float(value))
        return len(self.fparams) - 1

    def table(self, fn: str, param: float) -> int:
        key = (fn, float(param) if fn in ("pow_scalar", "rpow_scalar") else 0.0)
        index = self.table_ids.get(key)
        if index is None:
            if fn in ("pow_scalar", "rpow_scalar"):
                table = numerics.sfpu_param_table(fn, param, self.dst_format)
            else:
                table = numerics._sfpu_table(numerics.SFPU_FUNCTIONS[fn], self.dst_format)
            index = self.table_ids[key] = len(self.tables)
            self.tables.append(np.ascontiguousarray(table, dtype=np.float32))
            if self.dst_format == "f16":
                self.table_overflows.append(numerics.sfpu_table_overflow(fn, param, self.dst_format))
        return index

    def op_id(self, op: Operation) -> int:
        index = self.op_ids.get(op)
        if index is None:
            index = self.op_ids[op] = len(self.ops)
            self.ops.append(op)
        return index

    def emit(self, opcode: str, op: Operation, *fields: int) -> int:
        row = [OPCODES[opcode], self.op_id(op), *(int(f) for f in fields)]
        row += [0] * (WIDTH - len(row))
        self.code.append(row)
        return len(self.code) - 1

    def raise_(self, op: Operation, message: str, cb: int = -1) -> None:
        self.messages.append(message)
        self.emit("RAISE", op, len(self.messages) - 1, cb)

    def charge(self, op: Operation, a: dict[str, Any]) -> int:
        """The charge field of a compute op: its count key's index << 40 | the tiles it makes (what
        `accounting.tile_count` counts; runtime/native/program.cpp's Counters::charge adds it up)."""
        count = tile_count(op.name, a, self.formats.__getitem__)
        assert count is not None, op.name
        key, tiles = count
        index = self.keys.setdefault(key, len(self.keys))
        if index >= native.PROGRAM_COUNT_KEYS or not 0 <= tiles < 1 << 40:
            raise ValueError(f"{op.name}: {len(self.keys)} count keys or {tiles} tiles exceed the op stream's charge")
        return index << 40 | max(tiles, 0)

    # -- kernels ----------------------------------------------------------------------------------

    def encode(self) -> tuple[np.ndarray, list[int]]:
        starts = []
        for kernel, region in enumerate(self.op.regions):
            self.kernel = kernel
            starts.append(len(self.code))
            self.block(region.blocks[0])
            self.code.append([OPCODES["END"], -1] + [0] * (WIDTH - 2))
        return np.array(self.code, dtype=np.int64).reshape(-1, WIDTH), starts

    def block(self, block: Block) -> None:
        for step in self.plan.blocks[block]:
            op = step.op
            if step.body is not None:
                trips = step.trips
                iv = self.reg(step.body.args[0])
                counter = self.reg()
                begin = self.emit("FOR_BEGIN", op, iv, trips.start, trips.step, len(trips), 0, counter)
                self.block(step.body)
                self.code[begin][6] = self.emit("FOR_END", op, begin)
                continue
            encode = _ENCODERS.get(op.name)
            if encode is None:
                self.raise_(op, f"'{op.name}' is not a kernel op the device can execute")
                continue
            encode(self, op, step.attrs)

    def arg_uniform(self, index: int) -> bool:
        args = self.runtime_args[self.kernel]
        return all(len(a) > index for a in args) and len({a[index] for a in args}) == 1


Encode = Callable[[_Encoder, Operation, dict[str, Any]], None]
_ENCODERS: dict[str, Encode] = {}


def _encoder(name: str) -> Callable[[Encode], Encode]:
    def register(fn: Encode) -> Encode:
        _ENCODERS[f"ttkernel.{name}"] = fn
        return fn

    return register


KERNEL_OPS: frozenset[str] = frozenset()  # filled below: the ttkernel ops with a native encoding


@_encoder("get_arg")
def _get_arg(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("GET_ARG", op, e.reg(op.results[0], e.arg_uniform(a["index"])), a["index"])


@_encoder("constant")
def _constant(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("CONSTANT", op, e.reg(op.results[0]), a["value"])


@_encoder("buffer_address")
def _buffer_address(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("BUFFER_ADDRESS", op, e.reg(op.results[0]), a["operand"])


def _arith(opcode: str) -> Encode:
    def encode(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
        lhs, rhs = e.use(op.operands[0]), e.use(op.operands[1])
        e.emit(opcode, op, e.reg(op.results[0], e.uniform[lhs] and e.uniform[rhs]), lhs, rhs)

    return encode


_ENCODERS[ttkernel.ADDI.name] = _arith("ADDI")
_ENCODERS[ttkernel.MULI.name] = _arith("MULI")
_ENCODERS[ttkernel.MINI.name] = _arith("MINI")


def _cb_op(opcode: str) -> Encode:
    def encode(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
        e.emit(opcode, op, a["cb"], a["pages"])

    return encode


for _name in ("cb_reserve_back", "cb_push_back", "cb_wait_front", "cb_pop_front"):
    _ENCODERS[f"ttkernel.{_name}"] = _cb_op(_name.upper())


@_encoder("addrgen")
def _addrgen(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    base = e.use(op.operands[0])
    try:
        e.device.memory(a["memory"])
        fmt = _format_of(a["format"])
    except Fault as fault:
        e.raise_(op, fault.what)
        e.agens[op.results[0]] = len(e.agen_uniform)  # never read: the op faults first
        e.agen_uniform.append(True)
        return
    if not e.uniform[base]:
        e.grid_memories.add(a["memory"])
    gen = e.agens[op.results[0]] = len(e.agen_uniform)
    e.agen_uniform.append(e.uniform[base])
    e.emit("ADDRGEN", op, gen, base, a["page_size"], MEMORIES.index(a["memory"]),
           -1 if fmt is None else FORMAT_CODES[fmt], LAYOUTS.index(a["memory_layout"]))


def _optional(e: _Encoder, op: Operation, index: int) -> int:
    return e.use(op.operands[index]) if len(op.operands) > index else -1


def _noc_tiles(opcode: str) -> Encode:
    def encode(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
        e.emit(opcode, op, e.agens[op.operands[0]], e.use(op.operands[1]), _optional(e, op, 2), a["cb"],
               a["cb_offset"], a["rows"], a["cols"], a["row_stride"], a["col_stride"])

    return encode


_ENCODERS[ttkernel.NOC_READ_TILES.name] = _noc_tiles("NOC_READ_TILES")
_ENCODERS[ttkernel.NOC_WRITE_TILES.name] = _noc_tiles("NOC_WRITE_TILES")


@_encoder("noc_read_pages")
def _noc_read_pages(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("NOC_READ_PAGES", op, e.agens[op.operands[0]], e.use(op.operands[1]), -1, a["cb"], a["cb_offset"],
           a["count"], _optional(e, op, 2), _optional(e, op, 3))


@_encoder("noc_read_tiles_indexed")
def _noc_read_tiles_indexed(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("NOC_READ_TILES_INDEXED", op, e.agens[op.operands[0]], -1, -1, a["cb"], a["cb_offset"], a["index_cb"],
           a["index_offset"], a["count"], a["sources"], a["source"])


@_encoder("noc_read_rows_indexed")
def _noc_read_rows_indexed(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("NOC_READ_ROWS_INDEXED", op, e.agens[op.operands[0]], e.use(op.operands[1]), e.use(op.operands[2]),
           a["cb"], a["cb_offset"], a["index_cb"], a["count"], a["wrap"], bool(a["pad_negative"]), _optional(e, op, 3),
           _optional(e, op, 4))


@_encoder("noc_write_rows")
def _noc_write_rows(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("NOC_WRITE_ROWS", op, e.agens[op.operands[0]], e.use(op.operands[1]), e.use(op.operands[2]), a["cb"], 0,
           a["count"], _optional(e, op, 3), _optional(e, op, 4))


def _plain(opcode: str) -> Encode:
    def encode(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
        e.emit(opcode, op)

    return encode


for _name in ("noc_read_barrier", "noc_write_barrier", "tile_regs_acquire", "tile_regs_commit", "tile_regs_wait",
              "tile_regs_release"):
    _ENCODERS[f"ttkernel.{_name}"] = _plain(_name.upper())


def _copy(opcode: str) -> Encode:
    def encode(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
        e.emit(opcode, op, a["cb"], a["offset"], a["row_stride"], a["col_stride"], a["rows"], a["cols"], a["dst"],
               e.charge(op, a))

    return encode


_ENCODERS[ttkernel.COPY_TILES.name] = _copy("COPY_TILES")
_ENCODERS[ttkernel.TRANSPOSE_TILES.name] = _copy("TRANSPOSE_TILES")


@_encoder("tilize_tiles")
def _tilize(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("TILIZE_TILES", op, a["cb"], a["col_offset"], a["cols"], a["dst"], 0, 0, 0, e.charge(op, a))


@_encoder("pack_rows")
def _pack_rows(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("PACK_ROWS", op, a["cb"], a["col_offset"], a["cols"], a["dst"])


@_encoder("binary_tiles")
def _binary(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("BINARY_TILES", op, BINARY_OPS.index(a["op"]), a["cb_a"], a["a_offset"], a["a_row_stride"],
           a["a_col_stride"], a["cb_b"], a["b_offset"], a["b_row_stride"], a["b_col_stride"],
           BCASTS.index(a["bcast"]), a["rows"], a["cols"], a["dst"], e.charge(op, a))


@_encoder("matmul_tiles")
def _matmul(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    rows, cols, inner = a["rows"], a["cols"], a["inner"]
    e.emit("MATMUL_TILES", op, a["cb_a"], a["a_offset"], a["a_row_stride"], a["cb_b"], a["b_offset"],
           a["b_row_stride"], inner, rows, cols, a["dst"], FIDELITIES[a["fidelity"]], int(a["accumulate"]),
           e.charge(op, a))


@_encoder("reduce_tiles")
def _reduce(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("REDUCE_TILES", op, 0 if a["kind"] == "sum" else 1, DIMS.index(a["dim"]), a["cb"], a["offset"],
           a["row_stride"], a["col_stride"], a["rows"], a["cols"], a["dst"], e.fparam(a["scaler"]),
           FIDELITIES[a["fidelity"]], e.charge(op, a))


@_encoder("sfpu_tiles")
def _sfpu(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    fn = a["fn"]
    cycles = e.charge(op, a)
    if fn in SCALAR_FUNCTIONS:
        e.emit("SFPU_TILES", op, 1, SCALAR_FUNCTIONS.index(fn), a["dst"], a["count"], e.fparam(a["param"]), cycles)
    else:
        e.emit("SFPU_TILES", op, 0, e.table(fn, a["param"]), a["dst"], a["count"], 0, cycles)


@_encoder("sfpu_binary_tiles")
def _sfpu_binary(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("SFPU_BINARY_TILES", op, SFPU_BINARY.index(a["fn"]), a["dst"], a["dst_b"], a["count"], e.charge(op, a))


@_encoder("fill_tiles")
def _fill(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("FILL_TILES", op, a["dst"], a["count"], e.fparam(a["value"]), e.charge(op, a))


@_encoder("mask_tiles")
def _mask(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    rows, cols = a["rows"], a["cols"]
    e.emit("MASK_TILES", op, e.use(op.operands[0]), e.use(op.operands[1]), rows, cols, a["dst"], a["valid_rows"],
           a["valid_cols"], e.fparam(a["fill"]), e.charge(op, a))


@_encoder("pack_tiles")
def _pack(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    e.emit("PACK_TILES", op, a["dst"], a["count"], a["cb"], a["cb_offset"])


def _semaphore_ok(e: _Encoder, op: Operation, index: int, none_ok: bool = False) -> bool:
    """Whether the semaphore index is valid; if not, the op raises the interpreter's fault."""
    if 0 <= index < ttkernel.NUM_SEMAPHORES or (none_ok and index == -1):
        return True
    e.raise_(op, f"semaphore {index} is outside 0..{ttkernel.NUM_SEMAPHORES - 1}")
    return False


@_encoder("semaphore_set")
def _semaphore_set(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    if _semaphore_ok(e, op, a["semaphore"]):
        e.emit("SEM_SET", op, _optional(e, op, 0), a["semaphore"], a["value"])


@_encoder("semaphore_wait")
def _semaphore_wait(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    if _semaphore_ok(e, op, a["semaphore"]):
        e.emit("SEM_WAIT", op, _optional(e, op, 0), a["semaphore"], a["value"])


@_encoder("semaphore_inc")
def _semaphore_inc(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    if _semaphore_ok(e, op, a["semaphore"]):
        grid = e.op.attr("grid")
        e.emit("SEM_INC", op, e.use(op.operands[0]), e.use(op.operands[1]), _optional(e, op, 2), a["semaphore"],
               a["amount"], grid.x, grid.y)


@_encoder("noc_mcast_cb")
def _noc_mcast_cb(e: _Encoder, op: Operation, a: dict[str, Any]) -> None:
    if a["semaphore"] != -1 and not _semaphore_ok(e, op, a["semaphore"]):
        return
    grid = e.op.attr("grid")
    e.emit("NOC_MCAST", op, *(e.use(v) for v in op.operands[:4]), _optional(e, op, 4), a["cb"], a["cb_offset"],
           a["pages"], a["semaphore"], a["value"], grid.x, grid.y)


KERNEL_OPS = frozenset(_ENCODERS)


def _launch_ok(op: Operation, device: Device) -> bool:
    """Whether the interpreter's launch (`Program._launch` and `_configure_cbs` before the L1 reservations)
    passes; when it does not, the interpreter runs the program and reports the fault."""
    grid = op.attr("grid")
    runtime_args = op.attr("runtime_args")
    if len(op.regions) != len(KERNELS) or len(runtime_args) != len(KERNELS) \
            or any(len(per_kernel) != grid.num_cores for per_kernel in runtime_args):
        return False
    if grid.x > device.grid_x or grid.y > device.grid_y:
        return False
    seen = set()
    for config in op.attr("cbs"):
        if not 0 <= config.index < device.desc.num_cbs or config.index in seen or config.address is None \
                or config.page_size <= 0 or config.pages <= 0 or config.index >= 32:
            return False
        seen.add(config.index)
        try:
            _format_of(config.format)
        except Fault:
            return False
    l1 = device.l1
    placed = sorted((c.address, c.address + c.size) for c in op.attr("cbs"))
    if any(start % l1.alignment or start < l1.floor or end > l1.bank_size for start, end in placed):
        return False
    return all(end <= following for (_, end), (following, _) in itertools.pairwise(placed))  # no CBs overlap


def encode(plan: ProgramPlan, op: Operation, device: Device) -> Encoding:
    """The program's encoding for this device (built once per plan and device descriptor)."""
    last = plan.__dict__.get(_LAST)
    if last is not None and last[0] is device.desc:
        return last[1]
    cache = plan.__dict__.setdefault(_ATTR, {})
    key = id(device.desc)
    cached = cache.get(key)
    if cached is None or cached[0] is not device.desc:
        cached = cache[key] = (device.desc, _encode(plan, op, device))
    plan.__dict__[_LAST] = cached
    return cached[1]


def _encode(plan: ProgramPlan, op: Operation, device: Device) -> Encoding:
    if not _launch_ok(op, device):
        return Encoding(None, [], [], [], fallback=True)
    grid = op.attr("grid")
    e = _Encoder(plan, op, device)
    code, starts = e.encode()
    configs = op.attr("cbs")
    cbs = np.array([[c.index, c.address, c.page_size, c.pages,
                     -1 if _format_of(c.format) is None else FORMAT_CODES[_format_of(c.format)]] for c in configs],
                   dtype=np.int64).reshape(-1, 5)
    args = []
    for per_kernel in op.attr("runtime_args"):
        offsets = np.cumsum([0] + [len(a) for a in per_kernel], dtype=np.int64)
        values = np.array([v for a in per_kernel for v in a], dtype=np.int64)
        args.append((offsets, values))
    banks = [int(b) for b in device.core_ids(grid.x, grid.y)]
    tables = np.concatenate(e.tables) if e.tables else np.zeros(0, np.float32)
    overflows = np.concatenate(e.table_overflows).view(np.uint8) if e.table_overflows else np.zeros(0, np.uint8)
    program = native.EncodedProgram(code, starts, len(e.uniform), len(e.agen_uniform), cbs, args, banks,
                                    0 if e.dst_format == "bf16" else 1, e.fparams, tables, overflows)
    reserves = [(c.index, c.address, c.size) for c in configs]
    return Encoding(program, e.ops, e.messages, reserves, tuple(e.keys), frozenset(e.grid_memories),
                    cores=grid.num_cores, args=args)


def substitute_scalars(encoding: Encoding, scalars: dict[tuple[int, int], int]) -> None:
    """Runtime scalars into the encoded program's runtime arguments (the IR's value plus the scalar, on every
    core), replacing only the argument tables of the kernels whose scalars changed since the last run."""
    if scalars == encoding.scalars:
        return
    kernels = {kernel for kernel, _ in (*scalars, *encoding.scalars)}
    for kernel in sorted(kernels):
        offsets, values = encoding.args[kernel]
        values = values.copy()
        for (k, index), value in scalars.items():
            if k != kernel:
                continue
            have = np.diff(offsets) > index  # a core without the argument faults on reading it, as before
            values[offsets[:-1][have] + index] += value
        encoding.program.set_arg_values(kernel, values)
    encoding.scalars = dict(scalars)


# ----------------------------------------------------------------------------------------------
# Running


_NATIVE_CODEC_FORMATS = frozenset({DataFormat.FLOAT32, DataFormat.BFLOAT16, DataFormat.BFP8_B, DataFormat.BFP4_B})


def pack_tiles(tiles: np.ndarray, fmt: DataFormat) -> np.ndarray:
    """formats.pack_tiles in native code (the same bytes: test_native_numerics.py) for float formats; Float16
    (whose overflow the native packer flags for the program executor) and Int32 take the Python definition."""
    if fmt not in _NATIVE_CODEC_FORMATS:
        return formats.pack_tiles(tiles, fmt)
    return native.pack_tiles(np.ascontiguousarray(tiles, dtype=np.float32), FORMAT_CODES[fmt])


def unpack_tiles(data: np.ndarray, fmt: DataFormat) -> np.ndarray:
    """formats.unpack_tiles in native code for the formats of `pack_tiles`."""
    if fmt not in _NATIVE_CODEC_FORMATS:
        return formats.unpack_tiles(data, fmt)
    return native.unpack_tiles(np.ascontiguousarray(data), FORMAT_CODES[fmt])


def pack_matrix(values: np.ndarray, fmt: DataFormat) -> np.ndarray:
    """formats.tilize (zero padding) then pack_tiles of float32 matrices [batch, rows, cols], natively for the
    formats of `pack_tiles` (the same bytes: test_native_numerics.py)."""
    if fmt not in _NATIVE_CODEC_FORMATS:
        return formats.pack_tiles(formats.tilize(values, pad_value=0).reshape(-1, formats.TILE, formats.TILE), fmt)
    return native.pack_matrix(np.ascontiguousarray(values, dtype=np.float32), FORMAT_CODES[fmt])


def unpack_matrix(pages: np.ndarray, fmt: DataFormat, batch: int, rows: int, cols: int) -> np.ndarray:
    """unpack_tiles then formats.untilize, cropped to [batch, rows, cols] (natively as `unpack_tiles`)."""
    if fmt not in _NATIVE_CODEC_FORMATS:
        tiles = formats.unpack_tiles(pages, fmt).reshape(batch, -(-rows // formats.TILE), -(-cols // formats.TILE),
                                                         formats.TILE, formats.TILE)
        return formats.untilize(tiles, shape=(rows, cols))
    return native.unpack_matrix(np.ascontiguousarray(pages), FORMAT_CODES[fmt], batch, rows, cols)


def write_tensor(memory: Memory, alloc: Allocation, host: np.ndarray, element_type: Any, tensor_layout: str) -> int:
    """A host tensor of the buffer's logical shape -> the pages of the live interleaved buffer `alloc`, packed by the
    native core straight into the memory: the bytes (and poison marks) of `tensor_to_pages` then
    `Memory.write_buffer`. Returns the bytes written, or 0 when the tensor is not one of the float tile formats
    of the native packers in such a buffer (the caller takes the Python path then)."""
    target = _tile_target(memory, alloc, np.shape(host), element_type, tensor_layout)
    if target is None:
        return 0
    code, rows, cols = target
    values = np.ascontiguousarray(host, dtype=np.float32).reshape(-1, rows, cols)
    marked = memory._marked
    native.write_matrix(values, code, memory._data, memory._marks if marked else None, alloc.address,
                        alloc.num_pages)
    region_end = alloc.address + -(-alloc.num_pages // memory.banks) * alloc.page_size
    if marked:
        _unmarked(memory, alloc.address, region_end)
    memory.touch(alloc.address, region_end)
    return alloc.num_pages * alloc.page_size


def read_tensor(memory: Memory, alloc: Allocation, shape: tuple[int, ...], element_type: Any,
                tensor_layout: str) -> np.ndarray | None:
    """The live interleaved buffer `alloc` as a float32 host tensor of `shape`, unpacked by the native core straight
    from the memory (`Memory.read_buffer` then `pages_to_tensor`); None when `write_tensor` would not write it."""
    target = _tile_target(memory, alloc, shape, element_type, tensor_layout)
    if target is None:
        return None
    code, rows, cols = target
    marked = memory._marked
    batch = alloc.num_pages // (-(-rows // formats.TILE) * -(-cols // formats.TILE))
    out = native.read_matrix(memory._data, memory._marks if marked else None, alloc.address, alloc.num_pages, code,
                             batch, rows, cols)
    if marked:
        _unmarked(memory, alloc.address, alloc.address + -(-alloc.num_pages // memory.banks) * alloc.page_size)
    return out.reshape(shape)


def im2col(x: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """`ttir.im2col_rows` in one native pass (float32: the write packs tiles of a float format)."""
    return native.im2col(x, np.asarray(window, np.int64))


def poison(memory: Memory, alloc: Allocation) -> None:
    """`Memory.poison` with the fills and marks in one native call (the same bytes, marks and dirty watches)."""
    if memory._watch:
        memory.touch(alloc.address, alloc.end)
    if native.poison(memory._data, memory._marks, alloc.address, alloc.end):
        memory._marked = True


def _tile_target(memory: Memory, alloc: Allocation, shape: tuple[int, ...], element_type: Any,
                 tensor_layout: str) -> tuple[int, int, int] | None:
    """(format code, rows, cols) of a tensor the native host paths move: tile layout, a format of the native packers,
    a live interleaved buffer of that format's tiles with at least one page."""
    if tensor_layout != "tile" or alloc.shard is not None or not alloc.num_pages \
            or memory.allocations.get(alloc.address) is not alloc:
        return None
    fmt = data_format(element_type)
    if fmt not in _NATIVE_CODEC_FORMATS or alloc.page_size != fmt.tile_bytes:
        return None
    rows, cols = (1, 1) if not shape else (1, shape[0]) if len(shape) == 1 else shape[-2:]
    return FORMAT_CODES[fmt], rows, cols


def _unmarked(memory: Memory, start: int, end: int) -> None:
    """After the native core filled the marked blocks of [start, end): what `Memory._materialize` concludes."""
    if start < POISON_BLOCK and -(-end // POISON_BLOCK) >= memory._marks.shape[1]:
        memory._marked = False


def _sharded(memory: Memory) -> list[tuple]:
    """The memory's sharded buffers as run_program takes them; the same list while the same buffers are live (kept
    on the memory by its signature and the buffers' order)."""
    key = (memory.signature, tuple(memory._sharded))
    cache: dict = memory.__dict__.setdefault("_native_sharded", {})
    out = cache.get(key)
    if out is None:
        if len(cache) >= 256:
            cache.clear()
        out = cache[key] = _sharded_list(memory)
    return out


def _sharded_list(memory: Memory) -> list[tuple]:
    out = []
    for alloc in memory._sharded.values():
        spec = alloc.shard
        assert spec is not None
        out.append((alloc.address, alloc.page_size, alloc.num_pages, spec.cols, spec.shard_rows, spec.shard_cols,
                    spec.shards_per_row, LAYOUTS.index(spec.layout), np.asarray(spec.banks, dtype=np.int64)))
    return out


_NO_WATCH = np.zeros(0, dtype=np.int64)
_NO_SHARDS: list[tuple] = []  # never appended to


def run_native(device: Device, op: Operation, buffer_addresses: Sequence[int], step_budget: int, plan: ProgramPlan,
               threads: int = 1, *, races: list[tuple] | None = None,
               scalars: dict[tuple[int, int], int] | None = None, record: list | None = None) -> ProgramProfile:
    """Execute the program natively; the same result, memory and faults as `Program(...).run()`.

    With a `races` list, NoC transfers of different cores to the same bytes (one of them a write) are
    appended to it as (memory, bank, offset, core, writes, other core, writes): the interpreter runs the cores
    op by op, so such a program's result would depend on the order in which cores run.
    With a `record` list, a run of the native core appends (encoding, addresses, the memory tables it was passed,
    the run's result) to it, and a run left to the interpreter appends None (executor.py's run plans).
    """
    last = plan.__dict__.get(_LAST)  # `encode` inline for the usual case: the plan ran on this device last
    encoding = last[1] if last is not None and last[0] is device.desc else encode(plan, op, device)
    if encoding.fallback or (encoding.grid_memories
                             and any(device.memory(m)._sharded for m in encoding.grid_memories)):
        if record is not None:
            record.append(None)
        return Program(device, op, buffer_addresses, step_budget, plan, scalars=scalars or {}).run()
    l1, dram = device.l1, device.dram
    # The CBs' placement (alignment, L1 bounds, no overlap between them) was checked when encoding
    # (`_launch_ok`); what changes between runs is the live L1 buffers, checked again only when they changed.
    if not (l1.signature in encoding.fits_l1 and len(l1.allocations) == len(l1._buffers)):  # l1.only_buffers
        if not l1.regions_fit(encoding.regions):  # an L1 overflow: the interpreter's launch reports it
            if record is not None:
                record.append(None)
            return Program(device, op, buffer_addresses, step_budget, plan, scalars=scalars or {}).run()
        if l1.only_buffers:
            if len(encoding.fits_l1) >= 64:
                encoding.fits_l1.clear()
            encoding.fits_l1.add(l1.signature)
    if scalars or encoding.scalars:
        substitute_scalars(encoding, scalars or {})
    if l1._watch:
        for address, size in encoding.regions:
            l1.touch(address, address + size)  # the program writes its CBs (watched constants there go dirty)
    if races is not None:  # the race check hashes what cores write: every poisoned block filled first
        dram.data, l1.data  # noqa: B018
    tables = (dram._buffer_table() if dram._stale else dram._table, l1._buffer_table() if l1._stale else l1._table,
              _sharded(dram) if dram._sharded else _NO_SHARDS, _sharded(l1) if l1._sharded else _NO_SHARDS,
              dram._watch_ranges if dram._watch else _NO_WATCH, l1._watch_ranges if l1._watch else _NO_WATCH)
    result = native.run_program(encoding.program, buffer_addresses, dram._data, l1._data, *tables,
                                dram._marks if dram._marked else None, l1._marks if l1._marked else None, step_budget,
                                threads, races is not None)
    if record is not None:
        record.append((encoding, buffer_addresses, tables, result))
    if races is not None:
        races.extend(result[3])
    return finish(device, op, encoding, result)


def finish(device: Device, op: Operation, encoding: Encoding, result: tuple) -> ProgramProfile:
    """A native run's result (run_program's, or a run plan's for one of its programs) as the interpreter's: the
    dirty watches its writes met, then its DeviceFault or its profile."""
    fault, counts, dirty, _ = result
    dram, l1 = device.dram, device.l1
    if dirty[0] is not None or dirty[1] is not None:
        for memory, hits in ((dram, dirty[0]), (l1, dirty[1])):
            if hits is not None:  # the watched ranges a program's writes met
                memory.dirty.update(itertools.compress(memory._watch_keys, hits.tolist()))
    if fault is not None:
        raise _device_fault(encoding, device, op, fault) from None
    last = encoding.last_profile
    if last is not None and last[0] == counts:
        return last[1]  # a frozen record: the same counts give the same profile (a static program's every run)
    profile = profile_of(device.desc, op, native_counts(encoding, counts))
    encoding.last_profile = (counts, profile)
    return profile


def native_counts(encoding: Encoding, counts: tuple) -> target.Counts:
    """The native core's counts as the interpreter's `Accounting` gives them: tiles per key (per core), NoC
    bytes per core, DRAM bytes read and written and local bytes of all cores."""
    tiles, noc, dram, written, local, link, fanout = counts
    counting = target.CountsBuilder(encoding.cores)
    if link:
        counting.link_sent[0] = link  # the busiest sender's bytes (the maximum is what Counts keeps)
    counting.mcast_fanout = fanout
    for key, count in zip(encoding.keys, tiles, strict=False):
        counting.tile(key, count)
    counting.noc_bytes, counting.dram_read, counting.dram_written = noc, dram - written, written
    counting.local_total = local
    return counting.counts()


def _shell(device: Device, op: Operation) -> Program:
    """A Program with just what its profile and fault texts read (its __init__ would allocate Dst)."""
    shell = Program.__new__(Program)
    shell.device, shell.desc, shell.op = device, device.desc, op
    shell.grid = op.attr("grid")
    shell.cores = shell.grid.num_cores
    return shell


def _device_fault(encoding: Encoding, device: Device, op: Operation, fault: tuple) -> DeviceFault:
    kind_code, kernel, op_id, cb, params, mask, text, _first_core = fault
    kind = FAULT_KINDS[kind_code]
    shell = _shell(device, op)
    if kind == "DEADLOCK":
        return _deadlock(shell, encoding, params)
    what = text if kind == "INTERNAL" else _what(kind, params, cb, encoding, device, op)
    target = SimpleNamespace(name=KERNELS[kernel]) if kernel >= 0 else None
    where = encoding.ops[op_id] if op_id >= 0 else None
    return shell._device_fault(Fault(what, cores=mask, cb=cb if cb >= 0 else None), target, where)


def _deadlock(shell: Program, encoding: Encoding, params: tuple) -> DeviceFault:
    live = []
    cbs = {}
    for i in range(params[0]):
        kernel, op_id, cb, want, what, filled, pages = params[1 + 7 * i: 8 + 7 * i]
        if what == 2:  # a semaphore: `filled` is the value the first short core holds, `pages` that core
            blocked = Blocked(encoding.ops[op_id], cb, want, "semaphore", core=pages, holds=filled)
            live.append(SimpleNamespace(name=KERNELS[kernel], blocked=blocked))
            continue
        blocked = Blocked(encoding.ops[op_id], cb, want, "filled" if what else "free")
        live.append(SimpleNamespace(name=KERNELS[kernel], blocked=blocked))
        cbs[cb] = SimpleNamespace(filled=filled, pages=pages)
    shell.cbs = cbs
    return shell._deadlock(live)


def _cb_format(device: Device, op: Operation, cb: int) -> DataFormat | None:
    for config in op.attr("cbs"):
        if config.index == cb:
            return _format_of(config.format)
    return None


def _what(kind: str, p: tuple, cb: int, encoding: Encoding, device: Device, op: Operation) -> str:
    """The interpreter's fault text for a native fault record."""
    state = DST_STATES
    if kind == "ARG_MISSING":
        return f"runtime argument {p[0]} is missing"
    if kind == "BUFFER_OPERAND":
        return f"buffer operand #{p[0]} does not exist (the program has {p[1]})"
    if kind == "CB_NOT_CONFIGURED":
        return f"CB {cb} is not configured by the program"
    if kind == "RESERVE_TOO_MANY":
        return f"cb_reserve_back of {p[0]} pages: CB {cb} has only {p[1]} pages"
    if kind == "PUSH_TOO_MANY":
        return f"cb_push_back of {p[0]} pages but only {p[1]} are reserved"
    if kind == "PUSH_PENDING_READS":
        return f"cb_push_back of CB {cb} while NoC reads into it have not completed (missing noc_read_barrier)"
    if kind == "WAIT_TOO_MANY":
        return f"cb_wait_front for {p[0]} pages: CB {cb} has only {p[1]} pages"
    if kind == "POP_TOO_MANY":
        return f"cb_pop_front of {p[0]} pages but only {p[1]} were waited for"
    if kind == "POP_PENDING_WRITES":
        return f"cb_pop_front of CB {cb} while NoC writes from it have not completed (missing noc_write_barrier)"
    if kind == "WINDOW":
        where = "waited at the front" if p[2] else "reserved at the back"
        return f"page offset {p[0]} of CB {cb} is outside the {p[1]} page(s) {where}"
    if kind == "NOC_FORMAT":
        return f"the buffer's format {FORMATS[p[0]]} differs from CB {cb}'s format {FORMATS[p[1]]}"
    if kind == "NOC_PAGE_SIZE":
        return f"buffer pages of {p[0]} bytes do not fit CB {cb}'s {p[1]}-byte pages"
    if kind == "LAYOUT_MISMATCH":
        layout = LAYOUTS[p[0]]
        article = "an" if layout == "interleaved" else "a"
        return f"{article} {layout} address generator over a {LAYOUTS[p[1]]} buffer at {p[2]:#x}"
    if kind == "OUT_OF_BOUNDS":
        memory = device.memory(MEMORIES[p[0]])
        found = np.array([[bool(p[5])]])
        return memory._access_fault(("read", "write")[p[1]], np.array([[p[4]]]), np.array([[p[2]]]), p[3],
                                    np.array([[True]]), found).what
    if kind == "OUT_OF_BOUNDS_SHARDED":
        memory = device.memory(MEMORIES[p[0]])
        alloc = memory._sharded[p[3]]
        assert alloc.shard is not None
        return (f"out-of-bounds {memory.name} {('read', 'write')[p[1]]}: page {p[2]} of sharded {alloc.label} at "
                f"{alloc.address:#x}, which has {alloc.num_pages} pages in {len(alloc.shard.banks)} shards")
    if kind == "INDICES_OUTSIDE":
        return (f"indices {p[0]}..{p[0] + p[1] - 1} are outside the {p[2]} int32 values of a page of CB {cb}")
    if kind == "INDEX_POSITION":
        return f"index position {p[0]} is outside the {p[1]} int32 values of a page of CB {cb}"
    if kind == "NO_FORMAT":
        return f"CB {cb} has no data format"
    if kind == "TILE_PAGE":
        fmt = FORMATS[p[1]]
        return f"CB {cb} pages are {p[0]} bytes, not {fmt} tiles ({fmt.tile_bytes} bytes)"
    if kind == "TILIZE_FORMAT":
        fmt = _cb_format(device, op, cb)
        return f"CB {cb} holds {fmt} rows, which tilize cannot unpack (bf16 or float32 rows)"
    if kind == "UNTILIZE_FORMAT":
        fmt = _cb_format(device, op, cb)
        return f"CB {cb} holds {fmt} rows, which untilize cannot pack (bf16 or float32 rows)"
    if kind == "PACK_ROWS_COLUMN":
        return f"pack_rows at column {p[0]} is past the {p[1]}-element rows of CB {cb}"
    if kind == "PACK_ROWS_STATE":
        return f"pack_rows while Dst is {state[p[0]]} (pack runs between tile_regs_wait and tile_regs_release)"
    if kind == "PACK_STATE":
        return f"pack_tiles while Dst is {state[p[0]]} (pack runs between tile_regs_wait and tile_regs_release)"
    if kind == "MATH_STATE":
        return (f"a math op writes Dst while Dst is {state[p[0]]} "
                "(math runs between tile_regs_acquire and tile_regs_commit)")
    if kind == "DST_SLOTS":
        return (f"Dst slots {p[0]}..{p[0] + p[1] - 1} are outside the {HALF_DST} tiles one acquire owns "
                f"(0..{HALF_DST - 1})")
    if kind == "DST_PROTOCOL":
        name = native.PROGRAM_OPCODES[p[0]].lower()
        return f"Dst protocol violation: {name} while Dst is {state[p[1]]} (expected {state[p[2]]})"
    if kind == "RUNAWAY":
        return f"runaway program: more than {p[0]} kernel ops executed (the step budget)"
    if kind == "RAISED":
        return encoding.messages[p[0]]
    if kind == "END_PENDING_WRITES":
        return f"the kernel ended with NoC writes from CB {p[0]} not completed (missing noc_write_barrier)"
    if kind == "END_DST":
        return f"the kernel ended with Dst {state[p[0]]} (missing tile_regs_release)"
    if kind == "F16_OVERFLOW":
        return F16_OVERFLOW
    if kind == "MCAST_RECT":
        return f"multicast rectangle ({p[0]},{p[1]})-({p[2]},{p[3]}) is outside the program's {p[4]}x{p[5]} grid"
    if kind == "MCAST_PENDING_READS":
        return f"noc_mcast_cb of CB {cb} while NoC reads into it have not completed (missing noc_read_barrier)"
    if kind == "PUSH_UNLANDED":
        return (f"cb_push_back of CB {cb} before waiting for the multicast into it to land (missing "
                "semaphore_wait for the multicast's valid semaphore)")
    if kind == "SEM_TARGET":
        return f"semaphore increment of core ({p[0]},{p[1]}) outside the program's {p[2]}x{p[3]} grid"
    if kind == "SEGMENT_OUTSIDE":
        return f"a row segment of {p[0]} bytes at byte {p[1]} is outside the {p[2]}-byte pages of the buffer"
    if kind == "SEGMENT_CB":
        return f"a row segment of {p[0]} bytes does not fit CB {cb}'s {p[1]}-byte pages"
    if kind == "DRAINED":
        left = f"{p[0]} page(s) pushed and never popped" if p[0] else f"{p[1]} page(s) reserved and never pushed"
        return f"CB protocol: the program ended with {left} in CB {cb} (a missing cb_pop_front / cb_push_back)"
    raise AssertionError(f"unknown native fault kind {kind}")
