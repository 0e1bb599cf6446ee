"""Executes one `ttmetal.enqueue_program`: reader, compute and writer kernels on every core of its grid.

This module is the scheduler of the Python emulator (the executable definition of the device); the ops
live by concern in
- `handlers.py`: the registry (`HANDLERS`, one handler per ttkernel op; `@handler` registers one) and
  `Blocked`, what a handler returns when its op cannot proceed;
- `dataflow.py`: circular buffers (state, reserve/push/wait/pop), address generators, NoC reads, writes
  and barriers, bounds checks;
- `compute.py`: the Dst registers and their protocol, and the math and pack ops;
- `multicast.py`: semaphores and multicast writes between the program's cores;
- `accounting.py`: the cycle accounting (what each op is charged) and the program's profile.
Reading a handler tells what its op means. The kernel-value ops (get_arg, constant, buffer_address,
addi, muli, mini) are handled here, beside the runtime arguments they read. This module imports the
handler modules, so importing it completes the registry.

How it runs
- Lockstep cores. All cores of the grid run the same kernels with static trip counts, so they run
  together: an `index` value is a Python int (the same on every core) or an int64 array with one
  entry per core (from `ttkernel.get_arg`); every tile op gathers/scatters the blocks of all cores in
  one numpy operation. State that depends only on op attributes (CB counts and pointers, the Dst
  protocol state) is the same on every core and is kept once; the data (L1, Dst) is per core.
- Kernels are cooperative coroutines (generators). An op that cannot proceed (cb_reserve_back with
  too few free pages, cb_wait_front with too few filled pages) returns a `Blocked` and the kernel
  yields; the scheduler resumes kernels round-robin until all finish. A round in which no kernel
  executes an op is a deadlock; a step budget on executed kernel ops catches runaway programs.
- A plan (`ProgramPlan`) resolves each op's handler and attributes once per program op; `ttkernel.for`
  is the scheduler's own control flow.

Conventions fixed here where the dialect is silent
- A kernel may not end with NoC writes not barriered, nor the compute kernel with Dst not released.
- At program end every CB is empty: a page pushed and never popped, or reserved and never pushed, is a
  fault (the next program on these cores would start from a CB in a stale state).
- A fault names the first core (in grid order) that meets it and how many more do, the kernel, the CB
  and op, and the program's ONNX nodes; a Float16 overflow of any core is a fault at its op on all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ttc.ir.core import Block, Operation
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects import ttkernel
from ttc.runtime import multicast, numerics  # noqa: F401  (multicast: its handlers register on import)
from ttc.runtime.accounting import Accounting, ProgramProfile
from ttc.runtime.compute import F16_OVERFLOW, DstRegisters
from ttc.runtime.dataflow import CircularBuffer, CircularBuffers
from ttc.runtime.device import Device, Fault
from ttc.runtime.handlers import HANDLERS, Blocked, Handler, handler

DEFAULT_STEP_BUDGET = 5_000_000
KERNELS = ("reader", "compute", "writer")
_FOR = ttkernel.FOR.name


# ----------------------------------------------------------------------------------------------
# State


@dataclass
class Kernel:
    """One kernel of the program, run on every core: its values, NoC transfers in flight, and state."""

    name: str
    args: Sequence[Sequence[int]]  # per core, row-major over the grid
    env: dict[Any, Any] = field(default_factory=dict)
    op: Operation | None = None  # the op being executed, for fault messages
    blocked: Blocked | None = None
    pending_reads: set[int] = field(default_factory=set)  # CBs with un-barriered NoC reads into them
    pending_writes: set[int] = field(default_factory=set)  # CBs un-barriered NoC writes read from


@dataclass(frozen=True)
class Step:
    """One op of a kernel block as the scheduler runs it: its handler (None: not a kernel op) and its
    attributes with defaults filled in; a `ttkernel.for` has its body and trip range instead."""

    op: Operation
    run: Handler | None
    attrs: dict[str, Any]
    body: Block | None = None
    trips: range = range(0)


class ProgramPlan:
    """What a program's kernels need that depends only on the IR: the steps of every block, built once.

    The executor keeps one plan per enqueue_program op for as long as it runs the module, so a program
    run many times (every run of the model, every trip of a loop) looks its ops up once.
    """

    def __init__(self, op: Operation) -> None:
        self.blocks: dict[Block, list[Step]] = {}
        self.runtime_args: dict[tuple[str, int], int | np.ndarray] = {}  # (kernel, index) -> value(s)
        for region in op.regions:
            self._add(region.blocks[0])

    def _add(self, block: Block) -> None:
        steps = []
        for op in block.ops:
            attrs = _full_attrs(op)
            if op.name == _FOR:
                body = op.regions[0].blocks[0]
                self._add(body)
                steps.append(Step(op, None, attrs, body, range(attrs["lower"], attrs["upper"], attrs["step"])))
            else:
                steps.append(Step(op, HANDLERS.get(op.name), attrs))
        self.blocks[block] = steps


def _full_attrs(op: Operation) -> dict[str, Any]:
    """The op's attributes with the declared defaults filled in (looked up once per op)."""
    opdef = op.opdef
    attrs = {d.name: d.default for d in opdef.attributes if not d.required} if opdef else {}
    attrs.update(op.attributes)
    return attrs


# ----------------------------------------------------------------------------------------------
# The program


class Program(CircularBuffers, DstRegisters, Accounting):
    """One enqueue_program on a device: set up CBs, run the kernels, account cycles."""

    def __init__(self, device: Device, op: Operation, buffer_addresses: Sequence[int],
                 step_budget: int = DEFAULT_STEP_BUDGET, plan: ProgramPlan | None = None,
                 scalars: Mapping[tuple[int, int], int] | None = None) -> None:
        self.device = device
        # runtime scalars of this run: (kernel index, argument index) -> the value added to that argument on
        # every core (the executor's `scalar_args`; the plan keeps the IR's values)
        self.scalars = dict(scalars or {})
        self.desc = device.desc
        self.op = op
        self.buffer_addresses = list(buffer_addresses)
        self.step_budget = step_budget
        self.grid = op.attr("grid")
        self.cores = self.grid.num_cores
        self.steps = 0
        self.core_banks = np.zeros(0, dtype=np.int64)  # L1 bank (device core) of each program core
        self.cbs: dict[int, CircularBuffer] = {}
        self._init_dst(device, op)
        self.plan = plan if plan is not None else ProgramPlan(op)
        self.core_index: slice | np.ndarray = slice(0, 0)  # program cores in L1: a slice, or a column
        self.core_rows = 0  # when core_index is a column: the device's cores per row (the grid is a rectangle)

    # -- running --------------------------------------------------------------------------------

    def run(self) -> ProgramProfile:
        """Execute the program; raises DeviceFault naming core, kernel, CB, op and ONNX node."""
        try:
            self._launch()
            self._schedule()
        except Fault as fault:  # a launch fault: kernel faults are already DeviceFaults
            raise self._device_fault(fault) from None
        finally:
            self._release_cbs()
        return self.profile()

    def _launch(self) -> None:
        """Place the grid on the device and reserve the CBs in every core's L1 (L1 overflow checks)."""
        runtime_args = self.op.attr("runtime_args")
        if len(self.op.regions) != len(KERNELS) or len(runtime_args) != len(KERNELS) \
                or any(len(per_kernel) != self.cores for per_kernel in runtime_args):
            raise Fault("a program needs 3 kernels (reader, compute, writer) and runtime_args with one tuple "
                        "per core of its grid for each of them")
        ids = self.device.core_ids(self.grid.x, self.grid.y)
        self.core_banks = np.asarray(ids, dtype=np.int64)
        lo = int(ids[0])
        contiguous = np.array_equal(ids, np.arange(lo, lo + len(ids)))
        self.core_index = slice(lo, lo + len(ids)) if contiguous else ids[:, None]
        row = self.device.grid_x
        rectangle = (np.arange(self.grid.y)[:, None] * row + np.arange(self.grid.x)).ravel()
        self.core_rows = row if not contiguous and np.array_equal(ids, rectangle) else 0
        self._configure_cbs(self.op.attr("cbs"))

    def _schedule(self) -> None:
        """Round-robin over the kernels until all finish; a round without progress is a deadlock."""
        runtime_args = self.op.attr("runtime_args")
        kernels = [Kernel(name, runtime_args[i]) for i, name in enumerate(KERNELS)]
        running = {k.name: self._run_block(k, self.op.regions[i].blocks[0]) for i, k in enumerate(kernels)}
        live = list(kernels)
        while live:
            steps, progressed = self.steps, False
            for kernel in list(live):
                try:
                    kernel.blocked = next(running[kernel.name], None)
                    if kernel.blocked is None:  # the kernel ran to its end
                        live.remove(kernel)
                        progressed = True
                        self._finish(kernel)
                except Fault as fault:
                    raise self._device_fault(fault, kernel, kernel.op) from None
                except numerics.Float16Overflow:  # on any core: the op's numerics run on all of them at once
                    raise self._device_fault(Fault(F16_OVERFLOW), kernel, kernel.op) from None
            if live and not progressed and self.steps == steps:
                raise self._deadlock(live)
        self._check_drained()

    def _check_drained(self) -> None:
        """At program end every CB is empty: a page pushed and never popped (or reserved and never pushed)
        is a protocol error, as the next program on these cores would start from a CB in a stale state."""
        for index in sorted(self.cbs):
            cb = self.cbs[index]
            if cb.filled or cb.reserved:
                left = f"{cb.filled} page(s) pushed and never popped" if cb.filled \
                    else f"{cb.reserved} page(s) reserved and never pushed"
                raise Fault(f"CB protocol: the program ended with {left} in CB {index} "
                            "(a missing cb_pop_front / cb_push_back)", cb=index)

    def _run_block(self, kernel: Kernel, block: Block) -> Iterator[Blocked]:
        """Run a block's ops; yields while an op is blocked (the op is retried on resume)."""
        for step in self.plan.blocks[block]:
            op = kernel.op = step.op
            self.steps += 1
            if self.steps > self.step_budget:
                raise Fault(f"runaway program: more than {self.step_budget} kernel ops executed "
                            f"(the step budget)")
            if step.body is not None:
                iv_value = step.body.args[0]
                for iv in step.trips:
                    kernel.env[iv_value] = iv
                    yield from self._run_block(kernel, step.body)
                continue
            run = step.run
            if run is None:
                raise Fault(f"'{op.name}' is not a kernel op the device can execute")
            while (blocked := run(self, kernel, op, step.attrs)) is not None:
                yield blocked
                kernel.op = op

    def _finish(self, kernel: Kernel) -> None:
        """A kernel ended: its NoC writes must have completed and Dst must be released."""
        kernel.op = None
        if kernel.pending_writes:
            cb = min(kernel.pending_writes)
            raise Fault(f"the kernel ended with NoC writes from CB {cb} not completed "
                        "(missing noc_write_barrier)", cb=cb)
        if kernel.name == "compute" and self.dst_state != "released":
            raise Fault(f"the kernel ended with Dst {self.dst_state} (missing tile_regs_release)")

    # -- runtime arguments ----------------------------------------------------------------------

    def runtime_arg(self, kernel: Kernel, index: int) -> int | np.ndarray:
        key = (kernel.name, index)
        cache = self.plan.runtime_args
        if key not in cache:
            short = np.array([len(args) <= index for args in kernel.args])
            if short.any():
                raise Fault(f"runtime argument {index} is missing", cores=short)
            values = np.array([args[index] for args in kernel.args], dtype=np.int64)
            values.flags.writeable = False
            cache[key] = int(values[0]) if (values == values[0]).all() else values
        if self.scalars:
            added = self.scalars.get((KERNELS.index(kernel.name), index))
            if added is not None:
                return cache[key] + added
        return cache[key]

    # -- faults ---------------------------------------------------------------------------------

    def _device_fault(self, fault: Fault, kernel: Kernel | None = None, op: Operation | None = None) -> DeviceFault:
        where = [f"core {self._cores_text(fault.cores)}"]
        if kernel is not None:
            where.append(f"{kernel.name} kernel")
        if fault.cb is not None:
            where.append(f"CB {fault.cb}")
        if op is not None:
            where.append(f"op {op.name}")
        return DeviceFault(f"device fault: {fault.what}\n  at {', '.join(where)}\n  in {self._program_text()}")

    def _deadlock(self, live: list[Kernel]) -> DeviceFault:
        lines = []
        for kernel in live:
            blocked = kernel.blocked
            assert blocked is not None
            if blocked.what == "semaphore":
                core = np.arange(self.cores) == blocked.core
                lines.append(f"  {kernel.name} kernel on core {self._cores_text(core)}: {blocked.op.name} waits for "
                             f"semaphore {blocked.cb} to reach {blocked.want} (it holds {blocked.holds})")
                continue
            cb = self.cbs[blocked.cb]
            lines.append(f"  {kernel.name} kernel on core {self._cores_text(None)}: {blocked.op.name} waits for "
                         f"{blocked.want} {blocked.what} page(s) of CB {blocked.cb} ({cb.filled} of "
                         f"{cb.pages} filled)")
        return DeviceFault("device fault: deadlock: no kernel on any core can make progress\n"
                           + "\n".join(lines) + f"\n  in {self._program_text()}")

    def _cores_text(self, cores: np.ndarray | None) -> str:
        mask = np.ones(self.cores, dtype=bool) if cores is None \
            else np.broadcast_to(np.asarray(cores, dtype=bool), (self.cores,))  # one entry: every core
        first = int(np.argmax(mask))
        more = int(mask.sum()) - 1
        text = f"({first % self.grid.x},{first // self.grid.x})"
        return text + (f" and {more} more cores" if more > 1 else " and 1 more core" if more == 1 else "")

    def _program_text(self) -> str:
        names = self.op.loc.names()
        kind = self.op.attr("kind")
        nodes = ", ".join(f'"{n}"' for n in names) if names else "unknown"
        return f"program {kind + ' ' if kind else ''}on a {self.grid.x}x{self.grid.y} grid, ONNX node(s) {nodes}"


# ----------------------------------------------------------------------------------------------
# Kernel values


@handler("get_arg")
def get_arg(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """This core's runtime argument #index: runtime_args[kernel][core][index]."""
    k.env[op.results[0]] = p.runtime_arg(k, a["index"])


@handler("constant")
def constant(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = a["value"]


@handler("buffer_address")
def buffer_address(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """The allocated address of the program's buffer operand #operand."""
    index = a["operand"]
    if not 0 <= index < len(p.buffer_addresses):
        raise Fault(f"buffer operand #{index} does not exist (the program has {len(p.buffer_addresses)})")
    k.env[op.results[0]] = p.buffer_addresses[index]


@handler("addi")
def addi(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = k.env[op.operands[0]] + k.env[op.operands[1]]


@handler("muli")
def muli(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = k.env[op.operands[0]] * k.env[op.operands[1]]


@handler("mini")
def mini(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    k.env[op.results[0]] = np.minimum(k.env[op.operands[0]], k.env[op.operands[1]])
