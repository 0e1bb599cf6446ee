"""The planned counts of a device op: what its program will do under a grid and blocking, counted exactly.

The grid pass ranks candidates by `estimate`: the target's cost (`ttc.ir.target.cost`, the one cost model)
of the `Counts` the op's kind plans (`DeviceOp.counts` in passes/ops/<kind>.py, built with
passes/ops/counting.py). A plan counts what the kind's kernels will execute, op for op, in the units the
emulators count (runtime/accounting.py): tile ops per key and per core, NoC bytes per core (the pages of all
cores // cores for a transfer whose pages differ by core), DRAM bytes read and written, sharded pages a core
moves within its own L1. tests/e2e/test_cost_model.py checks, program by program over every test model, that
the plan equals what both emulators count, so a plan cannot claim less work than its program does.
"""

from __future__ import annotations

from ttc.ir import target
from ttc.ir.core import Operation
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.target import Cost, Counts
from ttc.passes.ops.counting import Weights, _grid
from ttc.passes.ops.matmul import matmul_units
from ttc.passes.ops.registry import device_kind

FIDELITY_PHASES = target.FIDELITY_PHASES
__all__ = ["FIDELITY_PHASES", "Weights", "estimate", "matmul_units", "plan_counts"]


def plan_counts(op: Operation, kind: str, device: DeviceAttr, grid: tuple[int, int] | object,
                blocking: dict[str, int], fidelity: str, result_layout: LayoutAttr | None = None,
                weights: Weights | None = None) -> Counts:
    """The counts of `op`'s program on `grid` with `blocking` (a matmul's result in `result_layout` if given;
    `weights` for constant index tables whose entries decide what is read)."""
    return device_kind(kind).counts(op, device, blocking, fidelity, _grid(grid), result_layout, weights)


def estimate(op: Operation, kind: str, device: DeviceAttr, grid: tuple[int, int] | object, blocking: dict[str, int],
             fidelity: str, result_layout: LayoutAttr | None = None, weights: Weights | None = None) -> Cost:
    """The target's cost of the planned counts."""
    return target.cost(device, plan_counts(op, kind, device, grid, blocking, fidelity, result_layout, weights))
