"""Runs a compiled module's host schedule (`func.func @main` of ttmetal ops) on the emulated device.

    executor = Executor(module, device_weights)      # device_weights: name -> packed uint8 pages
    outputs = executor.run({"input": array})         # names from the "ttir.name" arg/res attributes
    executor.profile                                  # one ProgramProfile per program of the last run

The device lives as long as the executor: constants (`write_constant`) are written on the first run
and rewritten later only if something wrote over them, as weights stay resident in DRAM. Every
buffer still allocated when a run ends is freed, so the next run can allocate the same addresses.

Device states (a `create_buffer {state = NAME}`, the `kv-cache` pass's caches) keep their contents from one
run to the next: they start as zeros, a program writes into them, and the host reaches them only through
`write_state` / `read_state` (never as a run's input or output). Runtime scalars (`run(..., scalars=)`) are
values a program's `scalar_args` add to runtime arguments of its kernels on each run (e.g. the position a
cache entry is written at); the programs are not rebuilt for a new value. `transfers` counts the bytes the
last run moved between host and device.

What depends only on the IR (each program's `ProgramPlan`) is worked out on the first run and kept:
the module must not change while an executor runs it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ttc.ir.core import RETURN_OP, Module, Operation, Value
from ttc.ir.diagnostics import DeviceFault, UserError
from ttc.ir.dialects import ttmetal
from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150, DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttir import im2col_rows
from ttc.ir.types import TensorType
from ttc.runtime.accounting import ProgramProfile
from ttc.runtime.device import Allocation, Device, Fault, Memory, ShardSpec
from ttc.runtime.device_state import registered, scalar_args
from ttc.runtime.interpreter import DEFAULT_STEP_BUDGET, Program, ProgramPlan
from ttc.runtime.layout import num_pages, page_size, pages_to_tensor, tensor_to_pages, tile_grid


@dataclass(frozen=True)
class DeviceBuffer:
    """A live device buffer: its tensor type (logical shape, format, layout) and its allocation."""

    type: TensorType
    layout: LayoutAttr
    memory: Memory
    alloc: Allocation

    @functools.cached_property
    def key(self) -> tuple[str, int]:
        return self.memory.name, self.alloc.address

    @functools.cached_property
    def tensor_layout(self) -> str:
        return str(self.layout.tensor_layout)

    def write(self, pages: np.ndarray) -> None:
        """All pages [num_pages, page_size] from the host."""
        self.memory.write_buffer(self.alloc, pages)

    def read(self) -> np.ndarray:
        """All pages [num_pages, page_size] to the host."""
        return self.memory.read_buffer(self.alloc)


HostOp = Callable[["Executor", Operation, dict[Value, Any]], None]
HOST_OPS: dict[str, HostOp] = {}


def host_op(name: str) -> Callable[[HostOp], HostOp]:
    def register(fn: HostOp) -> HostOp:
        HOST_OPS[name] = fn
        return fn

    return register


EMULATORS = ("native", "reference")
DEFAULT_EMULATOR = "native"
_defaults: dict[str, Any] = {"emulator": DEFAULT_EMULATOR, "threads": None}  # see `using_emulator`


@contextmanager
def using_emulator(emulator: str, threads: int | None = None) -> Iterator[None]:
    """Within the block, executors created without an explicit choice use `emulator` (and `threads`): how tests
    run a whole compiled model on one emulator or the other."""
    if emulator not in EMULATORS:
        raise UserError(f"unknown emulator '{emulator}' (choose from {', '.join(EMULATORS)})")
    previous = dict(_defaults)
    _defaults.update(emulator=emulator, threads=threads)
    try:
        yield
    finally:
        _defaults.update(previous)


def default_threads() -> int:
    """Host threads of the native core by default: the CPU cores this process may use."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Executor:
    """Executes `@main` of an allocated module on one emulated device.

    `emulator` picks who runs each enqueue_program: "native" (the compiled core, runtime/native/) or "reference"
    (the Python interpreter, the executable definition); both give the same bits, profiles and faults.
    """

    def __init__(self, module: Module, device_weights: Mapping[str, np.ndarray], desc: DeviceAttr | None = None,
                 step_budget: int = DEFAULT_STEP_BUDGET, emulator: str | None = None,
                 threads: int | None = None, device: Device | None = None, dram_base: int = 0) -> None:
        """With `device`, the module runs on that (shared) device, its DRAM buffers `dram_base` bytes up in every
        bank, above another module's (its device states excepted: a state of the same name is the same buffer for
        every module on the device, at the address both were allocated)."""
        try:
            self.main = module.function("main")
        except KeyError:
            raise UserError("the module has no func.func @main to run") from None
        self.module = module
        self.desc = desc or module.attributes.get(DEVICE_ATTR_NAME) or E150
        if device is not None and device.desc != self.desc:
            raise UserError(f"the module is compiled for {self.desc}, not for the shared device {device.desc}")
        self.device = device if device is not None else Device(self.desc)
        self.shared = device is not None  # other executors use the device too (their constants are not ours)
        if dram_base % self.device.dram.alignment or dram_base < 0:
            raise UserError(f"dram_base {dram_base} is not a multiple of the DRAM alignment "
                            f"{self.device.dram.alignment}")
        self.dram_base = dram_base
        self.device_weights = dict(device_weights)
        self.step_budget = step_budget
        self.profile: list[ProgramProfile] = []
        self._live: dict[tuple[str, int], DeviceBuffer] = {}  # (memory, address) -> buffer allocated now
        self._plans: dict[Operation, ProgramPlan] = {}  # enqueue_program op -> its plan (kept across runs)
        # enqueue_program op -> (its buffer operands, its plan, whether it takes runtime scalars)
        self._programs: dict[Operation, tuple[tuple[Value, ...], ProgramPlan, bool]] = {}
        self._transfer_ops: dict[Operation, tuple] = {}  # write_buffer / read_buffer op -> `_transfer`
        self._buffer_specs: dict[Operation, BufferSpec] = {}  # create_buffer op -> what it allocates
        self.emulator = DEFAULT_EMULATOR
        self.threads = default_threads()
        self._run_native: Callable[..., ProgramProfile] | None = None
        self._configured: str | None = None  # the emulator the host transfer paths below were chosen for
        self.configure(emulator if emulator is not None else _defaults["emulator"],
                       threads if threads is not None else _defaults["threads"])
        self._constants: dict[Operation, tuple[Allocation, str]] = {}  # write_constant op -> its allocation, key
        self._host_models: dict[Operation, HostModel] = {}  # host_compute op -> its evaluator (kept across runs)
        self.scalars: dict[str, int] = {}  # the runtime scalars of the current run
        self._scalar_names: list[str] | None = None
        self._schedule: list[tuple[Operation, str]] | None = None  # @main's ops and their names
        # the schedule as run: Python host ops, and stretches of buffer and program ops (`Stretch`)
        self._units: list[tuple[Operation, str] | Stretch] | None = None
        self._constant_writes = 0  # weights written to the device so far (write_constant)
        self._record: list | None = None  # while a stretch is recorded: its programs' native runs (run_native)
        self._arg_names: list[str] | None = None  # @main's input and output names
        self._res_names: list[str] | None = None
        self.transfers = {"to_device": 0, "to_host": 0}  # bytes moved by the last run's write/read_buffer
        self._states: dict[str, Operation] = {op.attributes[ttmetal.STATE_ATTR]: op for op in self.main.body.ops
                                              if op.name == ttmetal.CREATE_BUFFER.name
                                              and ttmetal.STATE_ATTR in op.attributes}

    def configure(self, emulator: str | None = None, threads: int | None = None) -> None:
        """Choose the emulator and the native core's host threads for the next runs (None keeps the current)."""
        if emulator is not None:
            if emulator not in EMULATORS:
                raise UserError(f"unknown emulator '{emulator}' (choose from {', '.join(EMULATORS)})")
            self.emulator = emulator
        if threads is not None:
            if threads < 1:
                raise UserError(f"--threads needs at least 1 thread, not {threads}")
            self.threads = threads
        if self.emulator == "native" and self._run_native is None:
            from ttc.runtime.native_program import run_native

            self._run_native = run_native
        if self.emulator == self._configured:
            return
        self._configured = self.emulator
        # Host tensors <-> tile pages: in native mode by the native packers (the same bytes), else by formats.py.
        self._pack: dict[str, Any] = {}
        self._unpack: dict[str, Any] = {}
        # native: (write_tensor, read_tensor, poison, im2col) of native_program, the host paths in native code
        self._direct: tuple[Callable[..., Any], ...] | None = None
        if self.emulator == "native":
            from ttc.runtime import native_program

            self._pack = {"pack": native_program.pack_tiles, "pack_matrix": native_program.pack_matrix}
            self._unpack = {"unpack": native_program.unpack_tiles, "unpack_matrix": native_program.unpack_matrix}
            self._direct = (native_program.write_tensor, native_program.read_tensor, native_program.poison,
                            native_program.im2col)

    # -- running --------------------------------------------------------------------------------

    def run(self, inputs: Mapping[str, np.ndarray], on_program: Callable[[], None] | None = None,
            scalars: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Run @main on host inputs named by "ttir.name"; returns the named outputs. `on_program` is called
        after every device program (a progress bar's step); `scalars` gives the runtime scalars."""
        values: dict[Value, Any] = dict(zip(self.main.args, self._inputs(inputs), strict=True))
        self.scalars = self._scalars(scalars or {}) if scalars or self._scalar_names != [] else {}
        self.profile = []
        self.transfers = {"to_device": 0, "to_host": 0}
        if self._schedule is None:
            self._schedule = [(op, op.name) for op in self.main.body.ops]
            self._units = _units(self._schedule)
        assert self._units is not None
        program = ttmetal.ENQUEUE_PROGRAM.name
        try:
            for unit in self._units:
                if isinstance(unit, Stretch):
                    unit.run(self, values, on_program)
                    continue
                op, name = unit
                run = HOST_OPS.get(name)  # looked up each time: tests hook handlers in and out
                if run is None:
                    if name == RETURN_OP:
                        return self._outputs(op, values)
                    raise UserError(f"cannot execute '{name}' in @main: the host schedule holds only "
                                    f"{', '.join(sorted(HOST_OPS))} and func.return")
                try:
                    run(self, op, values)
                except Fault as fault:
                    raise _host_fault(fault, op) from None
                if on_program is not None and name == program:
                    on_program()
        finally:
            self._free_all()
        raise UserError("@main does not end with func.return")

    def _inputs(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._arg_names is None:
            self._arg_names = [self.main.arg_attrs(i).get("ttir.name", f"arg{i}") for i in range(len(self.main.args))]
        names = self._arg_names
        missing = [name for name in names if name not in inputs]
        if missing:
            raise UserError(f"missing input(s) {', '.join(repr(n) for n in missing)} "
                            f"(the model takes {', '.join(repr(n) for n in names)})")
        arrays = []
        for name, arg in zip(names, self.main.args, strict=True):
            array = np.asarray(inputs[name])
            assert isinstance(arg.type, TensorType)
            if array.shape != arg.type.shape:
                raise UserError(f"input '{name}' has shape {list(array.shape)}, the model expects "
                                f"{list(arg.type.shape)}")
            arrays.append(array)
        return arrays

    def runtime_scalars(self) -> list[str]:
        """The names of the runtime scalars the module's programs take."""
        if self._scalar_names is None:
            self._scalar_names = sorted({str(entry[2]) for op in self.main.body.ops
                                         if op.name == ttmetal.ENQUEUE_PROGRAM.name
                                         for entry in op.attributes.get(ttmetal.SCALAR_ARGS_ATTR) or ()})
        return self._scalar_names

    def _scalars(self, scalars: Mapping[str, int]) -> dict[str, int]:
        wanted = self.runtime_scalars()
        missing = [name for name in wanted if name not in scalars]
        unknown = [name for name in scalars if name not in wanted]
        if missing or unknown:
            raise UserError(f"the model's programs take the runtime scalar(s) {', '.join(map(repr, wanted)) or 'none'}"
                            + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
                            + (f"; unknown {', '.join(map(repr, unknown))}" if unknown else ""))
        values = {}
        for name, value in scalars.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise UserError(f"runtime scalar '{name}' must be an integer, not {value!r}")
            values[name] = int(value)
        return values

    # -- device states ----------------------------------------------------------------------------

    @property
    def states(self) -> list[str]:
        """The names of the module's device states."""
        return list(self._states)

    def _state(self, name: str) -> tuple[BufferSpec, Allocation]:
        """The state's buffer spec and allocation (allocated, zero-filled, on first use; not registered)."""
        op = self._states.get(name)
        if op is None:
            raise UserError(f"the model has no device state '{name}' (its states: {', '.join(self._states) or 'none'})")
        spec = state_spec(self, op)
        assert spec.alloc is not None
        return spec, spec.alloc

    def write_state(self, name: str, array: np.ndarray) -> int:
        """Host tensor -> the device state `name` (the whole buffer, as a write_buffer would); returns the bytes
        written."""
        spec, alloc = self._state(name)
        array = np.asarray(array)
        if array.shape != spec.type.shape:
            raise UserError(f"device state '{name}' has shape {list(spec.type.shape)}, not {list(array.shape)}")
        pages = tensor_to_pages(array, spec.type.element_type, str(spec.layout.tensor_layout), **self._pack)
        with registered(spec.memory, alloc):
            spec.memory.write_buffer(alloc, pages)
        return int(pages.nbytes)

    def state_bytes(self, name: str) -> int:
        """The bytes of the device state `name` (what write_state and read_state move)."""
        spec, _ = self._state(name)
        return spec.pages * spec.page_size

    def read_state(self, name: str) -> np.ndarray:
        """The device state `name` as a host float32 tensor."""
        spec, alloc = self._state(name)
        with registered(spec.memory, alloc):
            pages = spec.memory.read_buffer(alloc)
        return pages_to_tensor(pages, spec.type.shape, spec.type.element_type, str(spec.layout.tensor_layout),
                               **self._unpack).astype(np.float32)

    def _outputs(self, op: Operation, values: dict[Value, Any]) -> dict[str, np.ndarray]:
        outputs = {}
        if self._res_names is None:
            self._res_names = [self.main.res_attrs(i).get("ttir.name", f"result{i}") for i in range(len(op.operands))]
        for name, value in zip(self._res_names, op.operands, strict=True):
            result = values[value]
            if isinstance(result, DeviceBuffer):
                raise UserError(f"output '{name}' is a device buffer: the schedule must read_buffer it first")
            outputs[name] = result
        return outputs

    def _free_all(self) -> None:
        by_memory: dict[Memory, list[Allocation]] = {}
        for buffer in self._live.values():
            by_memory.setdefault(buffer.memory, []).append(buffer.alloc)
        for memory, allocs in by_memory.items():
            memory.free_buffers(allocs)
        self._live = {}

    def buffer(self, values: dict[Value, Any], value: Value) -> DeviceBuffer:
        buffer = values.get(value)
        if not isinstance(buffer, DeviceBuffer) or self._live.get(buffer.key) is not buffer:
            raise Fault("the buffer operand is not a live device buffer (deallocated or never created)")
        return buffer


def _host_fault(fault: Fault, op: Operation) -> DeviceFault:
    names = op.loc.names()
    nodes = ", ".join(f'"{n}"' for n in names) if names else "unknown"
    return DeviceFault(f"device fault: {fault.what}\n  in host op {op.name}, ONNX node(s) {nodes}")


def _layout(value: Value) -> tuple[TensorType, LayoutAttr]:
    ttype = value.type
    if not isinstance(ttype, TensorType) or not isinstance(ttype.encoding, LayoutAttr):
        raise UserError(f"{ttype} is not a device buffer type (a tensor with #tt.layout)")
    return ttype, ttype.encoding


def _to_host(array: np.ndarray, ttype: TensorType) -> np.ndarray:
    """Device values (float32 or int32) -> the host result's element type (float32, ints or bool)."""
    element = ttype.element_type
    if element.is_float:
        return array.astype(np.float32, copy=False)  # the array is the read's own
    if element.name == "i1":
        return array != 0
    if array.dtype.kind == "f":
        array = np.rint(array)
    return array.astype(element.numpy_dtype())


# ----------------------------------------------------------------------------------------------
# Run plans: stretches of the schedule replayed in one native call

# The host ops a stretch holds: what they do depends only on the schedule and the buffers live when it starts.
_STRETCH_OPS = (ttmetal.CREATE_BUFFER.name, ttmetal.WRITE_CONSTANT.name, ttmetal.ENQUEUE_PROGRAM.name,
                ttmetal.DEALLOCATE.name)


def _units(schedule: list[tuple[Operation, str]]) -> list[tuple[Operation, str] | Stretch]:
    """The schedule as `run` walks it: each maximal run of buffer and program ops one `Stretch` (when it holds a
    program), every other op on its own."""
    units: list[tuple[Operation, str] | Stretch] = []
    ops: list[tuple[Operation, str]] = []

    def close() -> None:
        if any(name == ttmetal.ENQUEUE_PROGRAM.name for _, name in ops):
            units.append(Stretch(list(ops)))
        else:
            units.extend(ops)
        ops.clear()

    for entry in schedule:
        if entry[1] in _STRETCH_OPS:
            ops.append(entry)
        else:
            close()
            units.append(entry)
    close()
    return units


@dataclass
class _MemoryState:
    """What a memory's allocation table holds (at a stretch's start: the key a replay must match; at its end: what
    a replay leaves)."""

    signature: tuple[int, int]
    count: int
    watch: np.ndarray  # the watched ranges (the same array object while they do not change)
    dirty: frozenset[str]
    allocations: dict[int, Allocation] = dataclasses.field(default_factory=dict)
    starts: list[int] = dataclasses.field(default_factory=list)
    buffers: dict[int, Allocation] = dataclasses.field(default_factory=dict)
    sharded: dict[int, Allocation] = dataclasses.field(default_factory=dict)
    version: int = 0

    @staticmethod
    def of(memory: Memory, whole: bool = False) -> _MemoryState:
        state = _MemoryState(memory.signature, len(memory.allocations), memory._watch_ranges, frozenset(memory.dirty),
                             version=memory.version)
        if whole:
            state.allocations, state.starts = dict(memory.allocations), list(memory._starts)
            state.buffers, state.sharded = dict(memory._buffers), dict(memory._sharded)
        return state

    def matches(self, memory: Memory) -> bool:
        return (memory.signature == self.signature and len(memory.allocations) == self.count
                and len(memory._buffers) == self.count and memory._watch_ranges is self.watch
                and memory.dirty == self.dirty)

    def restore(self, memory: Memory, start: _MemoryState) -> None:
        """Leave `memory` (in the state `start`) as the recorded stretch left it."""
        memory.allocations.clear()
        memory.allocations.update(self.allocations)
        memory._starts[:] = self.starts
        memory._buffers.clear()
        memory._buffers.update(self.buffers)
        memory._sharded.clear()
        memory._sharded.update(self.sharded)
        memory.signature = self.signature
        memory._stale = True
        memory.version += self.version - start.version


@dataclass
class _Replay:
    """A recorded stretch: its native run plan and what the Python side looks like before and after it."""

    plan: Any  # native RunPlan: the poison of fresh buffers and the programs, in schedule order
    step_ops: list[int]  # per plan step: the index of its op in the stretch
    start: tuple[_MemoryState, _MemoryState, int]  # DRAM, L1, live buffers of the executor
    end: tuple[_MemoryState, _MemoryState]
    live: dict[tuple[str, int], DeviceBuffer]  # the executor's live buffers at the end
    values: dict[Value, DeviceBuffer]  # the buffers the stretch creates
    profiles: list[ProgramProfile]
    programs_before: list[int]  # per plan step: how many of its steps before it are programs
    actions: list[tuple]  # per op: ("create", value, buffer) / ("free", buffer) / () (bookkeeping of a partial replay)


class Stretch:
    """A run of create_buffer, write_constant, enqueue_program and deallocate ops. What these do depends only on
    the schedule and on the device state where the stretch starts: the buffers live in each memory (by
    `Memory.signature`), the watched constants and which of them are dirty. A run (native emulator, no runtime
    scalars, no progress callback) that finds the state of an earlier run whose stretch wrote no constant, left
    every watched range clean and ran every program natively, replays it: one native call poisons the fresh buffers
    and runs the programs (with the buffer tables recorded for each), then the Python side takes the recorded
    final state (allocation tables, live buffers, profiles) at once. The allocations and frees then make the same
    checks with the same outcome, so skipping them finds every fault the schedule has; a program that faults,
    writes a watched range or gives other counts than recorded ends the replay there (the bookkeeping up to it is
    applied op by op and the rest of the stretch runs op by op)."""

    def __init__(self, ops: list[tuple[Operation, str]]) -> None:
        self.ops = ops
        self.replay: _Replay | None = None

    def run(self, ex: Executor, values: dict[Value, Any], on_program: Callable[[], None] | None) -> None:
        native = ex.emulator == "native" and ex._direct is not None and not ex.scalars \
            and all(HOST_OPS.get(name) is _HANDLERS[name] for name in _STRETCH_OPS)
        replay = self.replay
        if native and replay is not None and on_program is None and len(ex._live) == replay.start[2] \
                and replay.start[0].matches(ex.device.dram) and replay.start[1].matches(ex.device.l1):
            self._replay(ex, values, replay)
            return
        self._ops(ex, values, on_program, 0, native)

    def _ops(self, ex: Executor, values: dict[Value, Any], on_program: Callable[[], None] | None, first: int,
             record: bool) -> None:
        """The ops from `first` on, one by one (recording them into a replay when `record`)."""
        from ttc.runtime import native_program

        dram, l1 = ex.device.dram, ex.device.l1
        if record:
            start = (_MemoryState.of(dram), _MemoryState.of(l1), len(ex._live))
            writes = ex._constant_writes
            plan = native_program.native.RunPlan()
            step_ops: list[int] = []
            profiles: list[ProgramProfile] = []
            actions: list[tuple] = []
            created: dict[Value, DeviceBuffer] = {}
            ex._record = []
        program = ttmetal.ENQUEUE_PROGRAM.name
        try:
            for index in range(first, len(self.ops)):
                op, name = self.ops[index]
                try:
                    HOST_OPS[name](ex, op, values)
                except Fault as fault:
                    raise _host_fault(fault, op) from None
                if name == program:
                    if on_program is not None:
                        on_program()
                    if not record:
                        continue
                    runs, ex._record = ex._record, []
                    assert runs is not None
                    run = runs[0] if len(runs) == 1 else None
                    if run is None or run[3][0] is not None or any(hits is not None for hits in run[3][2]):
                        record = False  # left to the interpreter, or it faulted or wrote a watched range
                        ex._record = None
                        continue
                    encoding, addresses, tables, (_, counts, _, _) = run
                    plan.add_program(encoding.program, addresses, dram._data, l1._data, *tables, counts)
                    step_ops.append(index)
                    profiles.append(ex.profile[-1])
                    actions.append(())
                elif record and name == ttmetal.CREATE_BUFFER.name:
                    buffer = values[op.results[0]]
                    if ex._buffer_specs[op].poisoned:
                        plan.add_poison(MEMORY_IDS[buffer.memory.name], buffer.alloc.address, buffer.alloc.end)
                        step_ops.append(index)
                    created[op.results[0]] = buffer
                    actions.append(("create", op.results[0], buffer))
                elif record and name == ttmetal.DEALLOCATE.name:
                    actions.append(("free", values[_transfer(ex, op)[0]]))
                elif record:
                    actions.append(())
        finally:
            ex._record = None
        if record and first == 0 and ex._constant_writes == writes and start[0].dirty == frozenset(dram.dirty) \
                and start[1].dirty == frozenset(l1.dirty):
            program = ttmetal.ENQUEUE_PROGRAM.name
            before = list(itertools.accumulate((self.ops[i][1] == program for i in step_ops), initial=0))
            self.replay = _Replay(plan, step_ops, start, (_MemoryState.of(dram, True), _MemoryState.of(l1, True)),
                                  dict(ex._live), created, profiles, before[:-1], actions)

    def _replay(self, ex: Executor, values: dict[Value, Any], replay: _Replay) -> None:
        from ttc.runtime import native_program

        dram, l1 = ex.device.dram, ex.device.l1
        done, result, marked = replay.plan.run(dram._data, l1._data, dram._marks, l1._marks, dram._marked,
                                               l1._marked, 0, ex.step_budget, ex.threads)
        dram._marked, l1._marked = marked
        if result is None:  # all as recorded
            replay.end[0].restore(dram, replay.start[0])
            replay.end[1].restore(l1, replay.start[1])
            ex._live = dict(replay.live)
            values.update(replay.values)
            ex.profile.extend(replay.profiles)
            return
        # a program ran otherwise than recorded: the ops before it as bookkeeping, it as run_native ends, the rest
        # op by op (recorded again on a later run)
        self.replay = None
        at = replay.step_ops[done]
        for action in replay.actions[:at]:
            if not action:
                continue
            if action[0] == "create":
                buffer = action[2]
                buffer.memory.add(buffer.alloc)
                ex._live[buffer.key] = buffer
                values[action[1]] = buffer
            else:
                buffer = action[1]
                buffer.memory.free(buffer.alloc.address)
                del ex._live[buffer.key]
        ex.profile.extend(replay.profiles[:replay.programs_before[done]])
        op = self.ops[at][0]
        plan = ex._programs[op][1]
        encoding = plan.__dict__[native_program._LAST][1]
        ex.profile.append(native_program.finish(ex.device, op, encoding, result))
        self._ops(ex, values, None, at + 1, False)


MEMORY_IDS = {"DRAM": 0, "L1": 1}  # run_program's memory numbers


# ----------------------------------------------------------------------------------------------
# Host ops


@dataclass(frozen=True)
class BufferSpec:
    """What a create_buffer op allocates, worked out from its type once per executor."""

    type: TensorType
    layout: LayoutAttr
    memory: Memory
    address: int
    page_size: int
    pages: int
    shard: ShardSpec | None
    label: str
    constant: bool  # a write_constant fills it (else it is poisoned)
    alloc: Allocation | None = None  # what the first run allocated, registered again by later runs
    state: bool = False  # a device state: its contents persist across runs (never poisoned)
    buffer: DeviceBuffer | None = None  # the live buffer of `alloc`, the same object every run

    @property
    def poisoned(self) -> bool:
        """A fresh buffer of every run starts as POISON bytes (neither a constant nor a state)."""
        return not self.constant and not self.state


def buffer_spec(ex: Executor, op: Operation) -> BufferSpec:
    ttype, layout = _layout(op.results[0])
    address = op.attributes.get("address")
    if address is None:
        raise Fault(f"create_buffer of {ttype} has no address: the program was not allocated "
                    "(run the allocate pass)")
    memory = ex.device.memory(str(layout.memory_space))
    if memory is ex.device.dram and ttmetal.STATE_ATTR not in op.attributes:
        address += ex.dram_base  # a module sharing the device lives above the other's DRAM
    try:
        pages = num_pages(ttype.shape, str(layout.tensor_layout))
        size = page_size(ttype.shape, ttype.element_type, str(layout.tensor_layout))
    except ValueError as exc:
        raise UserError(f"cannot place {ttype} on the device: {exc}") from None
    shard = None if layout.memory_layout == "interleaved" else shard_spec(ex, ttype, layout)
    constant = any(user.name == ttmetal.WRITE_CONSTANT.name for user in op.results[0].users)
    state = op.attributes.get(ttmetal.STATE_ATTR)
    label = f"buffer {ttype}" if state is None else f"device state '{state}' {ttype}"
    return BufferSpec(ttype, layout, memory, address, size, pages, shard, label, constant, state=state is not None)


def state_spec(ex: Executor, op: Operation) -> BufferSpec:
    """A state's spec, allocated and zero-filled the first time (the allocation is then freed again: runs and
    `write_state` register it while they use it)."""
    spec = ex._buffer_specs.get(op)
    if spec is None:
        spec = ex._buffer_specs[op] = buffer_spec(ex, op)
    if spec.alloc is None:
        name = str(op.attributes[ttmetal.STATE_ATTR])
        if spec.shard is not None:
            raise UserError(f"device state '{name}' is sharded; a state is an interleaved buffer")
        alloc = ex.device.states.get(name)  # made by another module on this device
        if alloc is None:
            alloc = spec.memory.allocate(spec.address, spec.page_size, spec.pages, spec.label)
            spec.memory.write_buffer(alloc, np.zeros((spec.pages, spec.page_size), np.uint8))
            spec.memory.free(alloc.address)
            ex.device.states[name] = alloc
        elif (alloc.address, alloc.page_size, alloc.num_pages) != (spec.address, spec.page_size, spec.pages):
            raise UserError(f"device state '{name}' is {alloc.num_pages} pages of {alloc.page_size} bytes at "
                            f"{alloc.address:#x} on the shared device, but this module has it as {spec.pages} pages "
                            f"of {spec.page_size} bytes at {spec.address:#x}")
        spec = ex._buffer_specs[op] = dataclasses.replace(spec, alloc=alloc)
    return spec


@host_op(ttmetal.CREATE_BUFFER.name)
def create_buffer(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    """Register the buffer at its allocated address (interleaved pages in DRAM or L1, or L1 shards)."""
    spec = ex._buffer_specs.get(op)
    if spec is None or spec.buffer is None:  # the first run (or a state `write_state` allocated): work it out
        buffer = _new_buffer(ex, op)
        spec = ex._buffer_specs[op]
    else:  # later runs register the same allocation again
        buffer = spec.buffer
        buffer.memory.add(buffer.alloc)
    if spec.poisoned:  # constants stay resident between runs; everything else starts unwritten
        if ex._direct is not None:
            ex._direct[2](buffer.memory, buffer.alloc)  # the same in one native call
        else:
            buffer.memory.poison(buffer.alloc)
    ex._live[buffer.key] = buffer
    values[op.results[0]] = buffer


def _new_buffer(ex: Executor, op: Operation) -> DeviceBuffer:
    """The buffer of a create_buffer op, allocated (or its earlier allocation registered again), kept in its spec
    with the DeviceBuffer that later runs reuse."""
    spec = state_spec(ex, op) if ttmetal.STATE_ATTR in op.attributes else ex._buffer_specs.get(op)
    if spec is None:
        spec = ex._buffer_specs[op] = buffer_spec(ex, op)
    memory = spec.memory
    if spec.alloc is not None:
        alloc = memory.add(spec.alloc)
    elif spec.shard is None:
        alloc = memory.allocate(spec.address, spec.page_size, spec.pages, spec.label)
    else:
        alloc = memory.allocate_sharded(spec.address, spec.page_size, spec.pages, spec.shard, spec.label)
    buffer = DeviceBuffer(spec.type, spec.layout, memory, alloc)
    ex._buffer_specs[op] = dataclasses.replace(spec, alloc=alloc, buffer=buffer)
    return buffer


def shard_spec(ex: Executor, ttype: TensorType, layout: LayoutAttr) -> ShardSpec:
    """The page -> (core, offset) map of a sharded tile buffer: shard k on core k of the layout's grid."""
    if layout.memory_space != "l1" or layout.tensor_layout != "tile" or layout.grid is None or layout.shard is None:
        raise UserError(f"a sharded buffer lives in L1 in tile layout with a grid and a shard shape, not {ttype}")
    _, cols = tile_grid(ttype.shape)
    shard_rows, shard_cols = (int(d) for d in layout.shard)
    banks = tuple(int(b) for b in ex.device.core_ids(int(layout.grid[0]), int(layout.grid[1])))
    return ShardSpec(cols, shard_rows, shard_cols, banks, str(layout.memory_layout))


@host_op(ttmetal.WRITE_BUFFER.name)
def write_buffer(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    """Host tensor -> buffer pages (reshape to `split` and permute when the op has them, or the im2col matrix of
    `window`; pad to tiles, tilize, convert to the buffer's format)."""
    source, target, perm, split, window = _transfer(ex, op)
    host, buffer = np.asarray(values[source]), ex.buffer(values, target)
    if window is not None:
        host = (im2col_rows if ex._direct is None else ex._direct[3])(host, window)
    if split is not None:
        host = host.reshape(split)
    if perm is not None:  # copied in the order numpy finds fastest (reshape copies in C order: far slower)
        moved = host.transpose(perm)
        host = np.empty(moved.shape, moved.dtype)
        np.copyto(host, moved)
    host = host.reshape(buffer.type.shape)
    if ex._direct is not None:  # native: packed straight into the buffer's pages
        written = ex._direct[0](buffer.memory, buffer.alloc, host, buffer.type.element_type, buffer.tensor_layout)
        if written:
            ex.transfers["to_device"] += written
            return
    pages = tensor_to_pages(host, buffer.type.element_type, buffer.tensor_layout, **ex._pack)
    buffer.write(pages)
    ex.transfers["to_device"] += int(pages.nbytes)


def _transfer(ex: Executor, op: Operation) -> tuple[Value, Value | None, tuple[int, ...] | None,
                                                      tuple[int, ...] | None, tuple[int, ...] | None]:
    """A host op's first two operands and a write_buffer's reshapes, looked up once per op: (first operand, second
    or None, perm, split, window)."""
    known = ex._transfer_ops.get(op)
    if known is None:
        operands = op.operands
        perm, split, window = (op.attributes.get(name) for name in ("perm", "split", "window"))
        known = ex._transfer_ops[op] = (operands[0], operands[1] if len(operands) > 1 else None,
                                        *(None if v is None else tuple(v) for v in (perm, split, window)))
    return known


@host_op(ttmetal.WRITE_CONSTANT.name)
def write_constant(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    """A weight, already packed into pages, -> the buffer; skipped when it is still resident."""
    buffer = ex.buffer(values, _transfer(ex, op)[0])
    known = ex._constants.get(op)  # the checks below passed for this allocation on an earlier run
    if known is not None and known[0] is buffer.alloc \
            and buffer.memory.is_clean(known[1], buffer.alloc.address, buffer.alloc.end):
        return
    name = op.attr("value").name
    data = ex.device_weights.get(name)
    if data is None:
        raise UserError(f"weight '{name}' is not among the device weights")
    expected = (buffer.alloc.num_pages, buffer.alloc.page_size)
    if np.shape(data) != expected or np.asarray(data).dtype != np.uint8:
        raise UserError(f"weight '{name}' is {np.asarray(data).dtype} {list(np.shape(data))}, but its buffer "
                        f"{buffer.type} needs uint8 pages {list(expected)}")
    start, end = buffer.alloc.address, buffer.alloc.end
    key = f"constant {name} at {start:#x}" + (f" of module {id(ex.module):#x}" if ex.shared else "")
    ex._constants[op] = (buffer.alloc, key)
    if buffer.memory.is_clean(key, start, end):
        return
    buffer.write(np.asarray(data))
    buffer.memory.watch(key, start, end)
    ex._constant_writes += 1


@host_op(ttmetal.ENQUEUE_PROGRAM.name)
def enqueue_program(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    """Run the program's kernels on its grid; record its profile."""
    known = ex._programs.get(op)
    if known is None:  # the first run: the op's buffer operands, plan and whether it takes runtime scalars
        plan = ex._plans.get(op)
        if plan is None:
            plan = ex._plans[op] = ProgramPlan(op)
        known = ex._programs[op] = (op.operands, plan, bool(op.attributes.get(ttmetal.SCALAR_ARGS_ATTR)))
    operands, plan, takes_scalars = known
    live = ex._live
    addresses = []
    for value in operands:  # `Executor.buffer` inline: a program runs on many buffers
        buffer = values.get(value)
        if not isinstance(buffer, DeviceBuffer) or live.get(buffer.key) is not buffer:
            raise Fault("the buffer operand is not a live device buffer (deallocated or never created)")
        addresses.append(buffer.alloc.address)
    scalars = scalar_args(op, ex.scalars) if takes_scalars else {}
    if ex.emulator == "native":
        assert ex._run_native is not None
        ex.profile.append(ex._run_native(ex.device, op, addresses, ex.step_budget, plan, ex.threads,
                                         scalars=scalars, record=ex._record))
    else:
        ex.profile.append(Program(ex.device, op, addresses, ex.step_budget, plan, scalars=scalars).run())


@host_op(ttmetal.READ_BUFFER.name)
def read_buffer(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    """Buffer pages -> host tensor of the logical shape (untilize, crop, convert)."""
    buffer = ex.buffer(values, _transfer(ex, op)[0])
    array = None
    if ex._direct is not None:  # native: unpacked straight from the buffer's pages
        array = ex._direct[1](buffer.memory, buffer.alloc, buffer.type.shape, buffer.type.element_type,
                              buffer.tensor_layout)
    if array is not None:
        ex.transfers["to_host"] += buffer.alloc.num_pages * buffer.alloc.page_size
    else:
        pages = buffer.read()
        ex.transfers["to_host"] += int(pages.nbytes)
        array = pages_to_tensor(pages, buffer.type.shape, buffer.type.element_type, buffer.tensor_layout,
                                **ex._unpack)
    result = op.results[0]
    assert isinstance(result.type, TensorType)
    values[result] = _to_host(array, result.type)


@dataclass(frozen=True)
class HostModel:
    """A host op's one-node model, decoded once per executor: onnx's reference evaluator and its feeds' names and
    dtypes (building the evaluator costs far more than running one node)."""

    evaluator: Any
    names: tuple[str, ...]
    dtypes: tuple[np.dtype, ...]


def host_model(ex: Executor, op: Operation) -> HostModel:
    model = ex._host_models.get(op)
    if model is not None:
        return model
    import base64

    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load_model_from_string(base64.b64decode(op.attr("model")))
    # onnx's evaluator would read external data relative to the current folder: a host-op model holds its data
    for tensor in [*proto.graph.initializer, *(a.t for n in proto.graph.node for a in n.attribute if a.HasField("t"))]:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise UserError(f"host op at {op.loc}: its embedded model references external data ('{tensor.name}')")
    names = tuple(v.name for v in proto.graph.input)
    dtypes = tuple(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
                   for v in proto.graph.input)
    model = ex._host_models[op] = HostModel(ReferenceEvaluator(proto), names, dtypes)
    return model


@host_op(ttmetal.HOST_COMPUTE.name)
def host_compute(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    """An ONNX node on the host: its one-node model (onnx's reference evaluator, built on the first run) on the
    operands."""
    model = host_model(ex, op)
    feeds = {name: np.asarray(values[v]).astype(dtype)
             for name, dtype, v in zip(model.names, model.dtypes, op.operands, strict=True)}
    results = model.evaluator.run(None, feeds)
    for value, array in zip(op.results, results, strict=True):
        ttype = value.type
        assert isinstance(ttype, TensorType)
        array = np.asarray(array).astype(ttype.element_type.numpy_dtype())
        if ttype.is_static:
            array = array.reshape(ttype.shape)
        elif array.ndim != ttype.rank or any(d not in (None, n) for d, n in zip(ttype.shape, array.shape, strict=True)):
            raise UserError(f"host op {op.attr('op_type')}: result of shape {list(array.shape)} is not {ttype}")
        values[value] = array


@host_op(ttmetal.EMPTY_TENSOR.name)
def empty_tensor(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    """A tensor without elements: its type is its whole value."""
    ttype = op.results[0].type
    assert isinstance(ttype, TensorType)
    values[op.results[0]] = np.zeros(ttype.shape, ttype.element_type.numpy_dtype())


@host_op(ttmetal.DEALLOCATE.name)
def deallocate(ex: Executor, op: Operation, values: dict[Value, Any]) -> None:
    known = ex._transfer_ops.get(op)
    buffer = ex.buffer(values, (known or _transfer(ex, op))[0])
    buffer.memory.free(buffer.alloc.address)
    del ex._live[buffer.key]


_HANDLERS = {name: HOST_OPS[name] for name in _STRETCH_OPS}  # a stretch replays these (not handlers hooked in)
