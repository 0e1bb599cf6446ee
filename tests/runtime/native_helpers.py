"""Run every program of an executor on both emulators and compare them: the interpreter (runtime/interpreter.py,
the definition) and the native core (runtime/native_program.py), with 1 and 2 threads.

`dual_programs()` replaces the executor's enqueue_program host op: each program runs on the interpreter,
then from the same device state natively; DRAM and L1 bytes, the dirty marks of watched constants, the
profile and the fault text must be identical. The device goes on from the interpreter's state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ttc.ir.core import Operation, Value
from ttc.ir.diagnostics import DeviceFault
from ttc.runtime import executor
from ttc.runtime.device import Device
from ttc.runtime.interpreter import Program, ProgramPlan
from ttc.runtime.native_program import run_native


@dataclass
class State:
    dram: np.ndarray
    l1: np.ndarray
    dirty: tuple[set[str], set[str]]
    allocations: tuple[dict, dict]


def _l1_end(device: Device, op: Operation) -> int:
    ends = [a.end for a in device.l1.allocations.values()]
    ends += [c.address + c.size for c in op.attr("cbs") if c.address is not None]
    return min(max(ends, default=device.desc.l1_reserved), device.l1.data.shape[1])


def snapshot(device: Device, end: int) -> State:
    return State(device.dram.data.copy(), device.l1.data[:, :end].copy(),
                 (set(device.dram.dirty), set(device.l1.dirty)),
                 (dict(device.dram.allocations), dict(device.l1.allocations)))


def restore(device: Device, state: State) -> None:
    device.dram.data[...] = state.dram
    device.l1.data[:, : state.l1.shape[1]] = state.l1
    device.dram.dirty, device.l1.dirty = set(state.dirty[0]), set(state.dirty[1])


def assert_same_state(got: State, want: State, what: str) -> None:
    for name in ("dram", "l1"):
        a, b = getattr(got, name), getattr(want, name)
        if not np.array_equal(a, b):
            bank, offset = (int(i[0]) for i in np.nonzero(a != b))
            raise AssertionError(f"{what}: {name} differs first at bank {bank}, byte {offset:#x}")
    assert got.dirty == want.dirty, f"{what}: dirty marks {got.dirty} != {want.dirty}"
    assert got.allocations == want.allocations, f"{what}: allocation tables differ"


@dataclass
class DualEnqueue:
    """The enqueue_program host op on both emulators (see the module doc)."""

    threads: tuple[int, ...] = (1, 2)
    programs: int = 0
    faults: list[str] = field(default_factory=list)
    kernel_ops: set[str] = field(default_factory=set)

    def __call__(self, ex: Any, op: Operation, values: dict[Value, Any]) -> None:
        addresses = [ex.buffer(values, value).alloc.address for value in op.operands]
        plan = ex._plans.get(op)
        if plan is None:
            plan = ex._plans[op] = ProgramPlan(op)
        device = ex.device
        self.programs += 1
        self.kernel_ops.update(o.name for o in op.walk() if o.name.startswith("ttkernel."))
        end = _l1_end(device, op)
        before = snapshot(device, end)
        want_fault = None
        try:
            profile = Program(device, op, addresses, ex.step_budget, plan).run()
        except DeviceFault as fault:
            want_fault = str(fault)
        want = snapshot(device, end)
        for threads in self.threads:
            restore(device, before)
            try:
                got_profile = run_native(device, op, addresses, ex.step_budget, plan, threads)
            except DeviceFault as fault:
                assert want_fault is not None, f"native faulted, the interpreter did not:\n{fault}"
                assert str(fault) == want_fault, f"fault texts differ:\n{fault}\n!=\n{want_fault}"
                continue
            assert want_fault is None, f"the interpreter faulted, native did not:\n{want_fault}"
            assert got_profile == profile, f"profiles differ:\n{got_profile}\n!=\n{profile}"
            assert_same_state(snapshot(device, end), want, f"program {op.loc.names()} with {threads} thread(s)")
        restore(device, want)
        if want_fault is not None:
            self.faults.append(want_fault)
            raise DeviceFault(want_fault)
        ex.profile.append(profile)


@contextmanager
def dual_programs(threads: tuple[int, ...] = (1, 2)) -> Iterator[DualEnqueue]:
    """Within the block, every Executor runs each program on both emulators and compares them."""
    previous = executor.HOST_OPS["ttmetal.enqueue_program"]
    hook = DualEnqueue(threads)
    executor.HOST_OPS["ttmetal.enqueue_program"] = hook
    try:
        yield hook
    finally:
        executor.HOST_OPS["ttmetal.enqueue_program"] = previous
