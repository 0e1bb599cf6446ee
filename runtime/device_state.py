"""Device states and runtime scalars, for the executor (runtime/executor.py).

A device state is a DRAM buffer whose contents persist from one run to the next (`create_buffer {state}`, the
`kv-cache` pass's caches); between runs the host reaches it through the executor's `write_state` / `read_state`,
which register its allocation for the access (`registered`). A runtime scalar is a value each run gives by name;
a program's `scalar_args` add it to runtime arguments of its kernels (`scalar_args` turns them into the
{(kernel, argument): value} both emulators take), after checking it against the argument's bound.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace

from ttc.ir.core import Operation
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttmetal
from ttc.runtime.device import Allocation, Fault, Memory
from ttc.runtime.interpreter import KERNELS, Program


@contextmanager
def registered(memory: Memory, alloc: Allocation) -> Iterator[None]:
    """`alloc` live in `memory` for the block (a state reached between runs), unless it is already."""
    live = memory_holds(memory, alloc)
    if not live:
        memory.add(alloc)
    try:
        yield
    finally:
        if not live:
            memory.free(alloc.address)


def memory_holds(memory: Memory, alloc: Allocation) -> bool:
    return memory.allocations.get(alloc.address) is alloc



def scalar_args(op: Operation, scalars: Mapping[str, int]) -> dict[tuple[int, int], int]:
    """The program's runtime scalars as {(kernel, argument index): value to add}; a value outside its bound is a
    device fault naming the cores, the kernel and the program's first CB (checked before any core runs, as a
    write there would land outside the buffer)."""
    entries = op.attributes.get(ttmetal.SCALAR_ARGS_ATTR)
    if not entries:
        return {}
    added = {}
    for kernel, index, name, bound in entries:
        value = scalars.get(str(name))
        if value is None:
            raise UserError(f"the program needs the runtime scalar '{name}' (give it to the run)")
        if not 0 <= value < int(bound):
            shell = Program.__new__(Program)
            shell.op, shell.grid = op, op.attr("grid")
            shell.cores = shell.grid.num_cores
            cbs = sorted(c.index for c in op.attr("cbs"))
            fault = Fault(f"runtime scalar '{name}' = {value} is outside [0, {int(bound) - 1}], the range of the "
                          f"{KERNELS[int(kernel)]} kernel's runtime argument #{index}", cb=cbs[0] if cbs else None)
            raise shell._device_fault(fault, SimpleNamespace(name=KERNELS[int(kernel)]))
        added[(int(kernel), int(index))] = value
    return added
