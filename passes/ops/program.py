"""What lowering one device op produces: a `Program` (kernels, CBs, runtime arguments, extra buffers),
and the helpers every kernel generator shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ttc.ir.core import Operation, Region, Value
from ttc.ir.dialects.tt import GridAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.types import TensorType
from ttc.passes.ops.interface import BLOCKING, BY_COLUMN, FIDELITY, GRID, unit_index
from ttc.passes.ops.registry import circular_buffers, core_units

KINDS = ("reader", "compute", "writer")


@dataclass(frozen=True)
class ConstantBuffer:
    """A buffer the program needs besides its operands (an index table): a new weight."""

    name: str
    type: TensorType
    data: np.ndarray


@dataclass
class Program:
    """One `ttmetal.enqueue_program`: buffers are the op's inputs, then constants, then scratch buffers (L1 the
    program uses for itself, `DeviceOp.scratch`), then its output."""

    kind: str
    grid: GridAttr
    cbs: list[CBConfigAttr]
    kernels: tuple[Region, Region, Region]
    runtime_args: tuple[tuple[tuple[int, ...], ...], ...]  # [kernel][core][i]
    inputs: list[Value]
    constants: list[ConstantBuffer] = field(default_factory=list)
    # runtime scalars: (kernel, argument index, scalar name, exclusive upper bound); each run adds the scalar's
    # value to that argument of every core (runtime/executor.py)
    scalar_args: tuple[tuple[int, int, str, int], ...] = ()
    scratch: list[TensorType] = field(default_factory=list)


@dataclass(frozen=True)
class Schedule:
    """An op's grid, blocking and fidelity as the grid pass recorded them."""

    grid: GridAttr
    blocking: dict[str, int]
    fidelity: str
    units: tuple[int, ...]

    @property
    def cores(self) -> int:
        return self.grid.num_cores

    def unit(self, core: int) -> tuple[int, ...]:
        """The work unit (coordinates over `units`, row-major) of core #core. A grid with more cores than
        units (`grid.grid_for`: a unit count that forms no rectangle) gives its extra cores the last unit:
        they repeat its work and write the same bytes to the same pages, so every core runs the same
        kernels with the same trip counts (lockstep) and no unit is lost. A `BY_COLUMN` blocking takes the units
        column by column (`interface.unit_index`)."""
        index = int(unit_index(np.asarray(core), (self.grid.x, self.grid.y), bool(self.blocking.get(BY_COLUMN))))
        return tuple(int(i) for i in np.unravel_index(min(index, math.prod(self.units) - 1), self.units))

    def args(self, fn: Callable[[tuple[int, ...]], Sequence[int]]) -> tuple[tuple[int, ...], ...]:
        """Per-core runtime arguments, cores in row-major order (core = y * grid.x + x)."""
        return tuple(tuple(int(a) for a in fn(self.unit(core))) for core in range(self.cores))


def schedule_of(op: Operation) -> Schedule:
    blocking = dict(op.attributes[BLOCKING])
    grid = op.attributes[GRID]
    units = core_units(op, blocking)
    assert int(np.prod(units)) <= grid.num_cores < int(np.prod(units)) + grid.x, \
        f"{op.name}: blocking does not match {grid}"
    return Schedule(grid, blocking, op.attributes.get(FIDELITY, "hifi4"), units)


def cbs_of(op: Operation, schedule: Schedule) -> list[CBConfigAttr]:
    """The op's CB plan: the same function the grid and allocate passes measure."""
    return circular_buffers(op, schedule.blocking)


def no_args(schedule: Schedule) -> tuple[tuple[int, ...], ...]:
    return tuple(() for _ in range(schedule.cores))
