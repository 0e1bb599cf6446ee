"""`DeviceOp`: what the compiler needs to know about one kind of device program, in one place.

A device-op kind (matmul, eltwise, softmax, ...) is one module of this package defining a `DeviceOp`
subclass and registering an instance (`registry.register`). The grid pass enumerates its `candidates`
and ranks them by the cost of its `counts`; the layout, grid and allocate passes size L1 with its
`circular_buffers`; lower-to-kernels calls its `lower`. Because the four come from one object they cannot
disagree: the CB plan the grid pass measured is the one the kernels are built with, and the counts walk
the kernels' own loops (tests/e2e/test_cost_model.py checks them against both emulators).

A blocking is a dict of ints whose keys the kind chooses (e.g. matmul: batches, per_core_m, per_core_n,
in0_block_w, out_subblock_h, out_subblock_w); `units(op, blocking)` says how many work units, outermost
first, the op splits into under it: one core per unit. Cores take the units in row-major order (core = y * grid.x
+ x); a blocking with `BY_COLUMN` set takes them column by column instead (`unit_index`: the grid's x runs over the
next-to-last unit axis and its y over the last, as the transposed multicast matmul's grid of M by N blocks).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from ttc.ir.core import Module, Operation, Value
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.ir.target import Counts
from ttc.ir.types import TensorType

if TYPE_CHECKING:
    from ttc.passes.ops.program import Program

# The attributes the grid pass records on a device op (and lowering reads back).
GRID = "tt.grid"
BLOCKING = "tt.blocking"
COST = "tt.cost"
FIDELITY = "tt.math_fidelity"
SHARDING = "tt.sharding"
BY_COLUMN = "by_column"  # a blocking key: cores take the work units column by column (`unit_index`)


def unit_index(cores: np.ndarray, grid: tuple[int, int], by_column: bool) -> np.ndarray:
    """The row-major unit number of each core (core = y * grid.x + x): the core number itself, or with `by_column`
    x * grid.y + y (its grid must then hold the units exactly)."""
    if not by_column:
        return cores
    return (cores % grid[0]) * grid[1] + cores // grid[0]


class DeviceOp(abc.ABC):
    """One kind of device program. Subclasses set `kind` (the program kind the artifact records) and
    `op_names` (the ttir ops it runs; `matches` narrows them when one op name has several kinds)."""

    kind: str = ""
    op_names: frozenset[str] = frozenset()

    def matches(self, op: Operation) -> bool:
        """Whether this kind runs `op` (an op named in `op_names`)."""
        return True

    def operands(self, op: Operation) -> list[Value]:
        """The device values the program reads (a gather reads the input(s) of its whole chain)."""
        return list(op.operands)

    @abc.abstractmethod
    def candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        """Every blocking the kernels support, in the order the grid pass breaks cost ties by."""

    def fallback_candidates(self, op: Operation) -> Iterator[dict[str, int]]:
        """Blockings of a slower plan the grid pass tries only when no blocking of `candidates` fits L1, even
        with the op's L1 intermediates spilled to DRAM (an untilize of rows too wide for L1, in column
        blocks). None by default."""
        return iter(())

    @abc.abstractmethod
    def units(self, op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
        """How the op's work splits over cores under `blocking`, outermost first."""

    def grid_shape(self, op: Operation, blocking: dict[str, int]) -> tuple[int, int] | None:
        """The (x, y) grid `blocking` needs (a multicast plan's rows and columns), or None: any rectangle
        holding its units (`grid.grid_for`)."""
        return None

    @abc.abstractmethod
    def circular_buffers(self, op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
        """The CB configs (no addresses) of the program under `blocking`."""

    def scratch(self, op: Operation, blocking: dict[str, int]) -> list[TensorType]:
        """L1 buffers the program needs for itself under `blocking` (created before it, freed after it: e.g. a
        split row op's exchange of partial statistics); their L1 share counts in the op's footprint."""
        return []

    @abc.abstractmethod
    def counts(self, op: Operation, device: DeviceAttr, blocking: dict[str, int], fidelity: str,
               grid: tuple[int, int], result_layout: LayoutAttr | None = None,
               weights: Mapping[str, np.ndarray] | None = None) -> Counts:
        """What the program does on `grid` under `blocking`, counted exactly (the result in `result_layout`
        if given; `weights` for constant tables whose entries decide what is read)."""

    @abc.abstractmethod
    def lower(self, op: Operation, module: Module) -> Program:
        """The program: reader, compute and writer kernels, CBs, runtime arguments, extra buffers."""
