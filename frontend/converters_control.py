"""Control flow: If, Scan and Loop.

An If whose condition is a compile-time constant is its taken branch: the branch's nodes are converted
in place (inlined), their reads of the enclosing graph resolving to the values already there, and the
other branch is never looked at. With a condition computed at run time, a static program can still
compute both branches and keep one: when they give every output the same shape and element type, the
If is `where(cond, then, else)` per output, the same NaN-free select Where lowers to (a branch's
infinities and NaNs do not leak into the other's result). Branches of different shapes need the
condition at compile time. (An If whose condition and outer reads are all constants folds as a whole
before any converter runs.)

A Scan is unrolled at import, as RNN/GRU/LSTM are: its trip count is the static length of the scan axis,
and its body is inlined once per step (`GraphImporter.inline_graph`), with the state variables threaded
from one step to the next and each scan input's slice for that step (along its `scan_input_axes` entry,
walked backwards for `scan_input_directions` 1) bound to the body's inputs. The steps' scan outputs are
stacked along their `scan_output_axes` entries (in reverse step order for direction 1).

A Loop is unrolled the same way when its trip count and condition are known at compile time (constants,
or graph inputs the ONNX backend specialises as it does shape parameters): each step binds the iteration
number and the condition as constants, so the body's index arithmetic folds, and the condition the step
returns must fold too. Its scan outputs are stacked along a new first axis. A trip count or a condition
computed from data at run time is a UserError: a static program cannot stop early.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _axis, _tensor, converter, emit_slice
from ttc.frontend.converters_emitter import Emitter, _concat_copies

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value


@converter("If", since=1)
def if_(ctx: NodeContext) -> list[Value]:
    branches = {"then": ctx.attr("then_branch"), "else": ctx.attr("else_branch")}
    condition = ctx.input_constant(0)
    if condition is not None:
        if np.size(condition) != 1:
            raise ctx.error(f"the condition has {np.size(condition)} elements; If takes one")
        taken = "then" if bool(np.asarray(condition).reshape(-1)[0]) else "else"
        return ctx.importer.inline_graph(branches[taken], f"{ctx.name}/{taken}")
    cond = ctx.input(0)
    if _tensor(cond).num_elements != 1:
        raise ctx.error(f"the condition has shape {_tensor(cond).shape}; If takes one element")
    then_values = ctx.importer.inline_graph(branches["then"], f"{ctx.name}/then")
    else_values = ctx.importer.inline_graph(branches["else"], f"{ctx.name}/else")
    e = Emitter(ctx)
    cond = e.reshape(cond, ())
    results = []
    for name, then_value, else_value in zip(ctx.node.output, then_values, else_values, strict=True):
        then_type, else_type = _tensor(then_value), _tensor(else_value)
        if then_type.shape != else_type.shape or then_type.element_type != else_type.element_type:
            raise ctx.error(f"the branches give output '{name}' different shapes or element types "
                            f"({then_type} and {else_type}); with a condition computed at run time ttc "
                            "computes both and selects, which needs them equal")
        results.append(e.where(cond, then_value, else_value))
    return results


@converter("Scan", since=9)
def scan(ctx: NodeContext) -> list[Value | None]:
    body = ctx.attr("body")
    scan_count = ctx.attr("num_scan_inputs")
    state_count = len(ctx.node.input) - scan_count
    output_count = len(body.output) - state_count
    if scan_count < 1 or output_count < 0 or len(body.input) != len(ctx.node.input):
        raise ctx.error(f"{len(ctx.node.input)} inputs with num_scan_inputs {scan_count} do not match the "
                        f"body's {len(body.input)} inputs and {len(body.output)} outputs")
    states = [ctx.input(i) for i in range(state_count)]
    inputs = [ctx.input(state_count + j) for j in range(scan_count)]
    input_axes = _scan_axes(ctx, "scan_input_axes", scan_count, [_tensor(x).rank for x in inputs])
    input_directions = list(ctx.attr("scan_input_directions") or [0] * scan_count)
    lengths = {_tensor(x).shape[axis] for x, axis in zip(inputs, input_axes, strict=True)}
    if len(lengths) != 1:
        raise ctx.error(f"the scan inputs have different lengths {sorted(lengths)} along their scan axes")
    steps = lengths.pop()
    e = Emitter(ctx)
    outputs: list[list[Value]] = [[] for _ in range(output_count)]
    for step in range(steps):
        slices = [_step_slice(e, x, axis, steps - 1 - step if direction else step)
                  for x, axis, direction in zip(inputs, input_axes, input_directions, strict=True)]
        results = ctx.importer.inline_graph(body, f"{ctx.name}/step{step}", [*states, *slices])
        states = results[:state_count]
        for k in range(output_count):
            outputs[k].append(results[state_count + k])
    if steps == 0:  # the scan outputs are empty (constants the importer makes); the states pass through
        return [*states, *[None] * output_count]
    output_axes = _scan_axes(ctx, "scan_output_axes", output_count, [_tensor(p[0]).rank + 1 for p in outputs])
    output_directions = list(ctx.attr("scan_output_directions") or [0] * output_count)
    stacked = []
    for pieces, axis, direction in zip(outputs, output_axes, output_directions, strict=True):
        pieces = [e.reshape(p, _inserted(_tensor(p).shape, axis)) for p in (pieces[::-1] if direction else pieces)]
        stacked.append(_concat_copies(ctx, pieces, axis))
    return [*states, *stacked]


def _scan_axes(ctx: NodeContext, name: str, count: int, ranks: list[int]) -> list[int]:
    """A scan axes attribute (default 0 for each), normalised into the ranks."""
    axes = list(ctx.attr(name) or [0] * count)
    if len(axes) != count:
        raise ctx.error(f"{name} has {len(axes)} entries for {count} values")
    return [_axis(ctx, axis, rank) for axis, rank in zip(axes, ranks, strict=True)]


def _step_slice(e: Emitter, x: Value, axis: int, index: int) -> Value:
    """x's element `index` along `axis`, that axis removed."""
    shape = _tensor(x).shape
    begins, ends = [0] * len(shape), list(shape)
    begins[axis], ends[axis] = index, index + 1
    part = emit_slice(e.ctx, x, begins, ends, [1] * len(shape))
    return e.reshape(part, shape[:axis] + shape[axis + 1:])


def _inserted(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return (*shape[:axis], 1, *shape[axis:])


# A Loop without a trip count runs until its (compile-time) condition turns false: at most this many steps.
MAX_UNROLLED_STEPS = 1024


@converter("Loop", since=13)
def loop(ctx: NodeContext) -> list[Value]:
    body = ctx.attr("body")
    carried = [ctx.input(i) for i in range(2, len(ctx.node.input))]
    scan_count = len(body.output) - 1 - len(carried)
    trips = _loop_control(ctx, 0, "trip count")
    condition = _loop_control(ctx, 1, "condition")
    running = True if condition is None else bool(condition)
    outputs: list[list[Value]] = [[] for _ in range(scan_count)]
    step = 0
    while running and (trips is None or step < trips):
        if step == MAX_UNROLLED_STEPS:
            raise ctx.error(f"the loop has not stopped after {step} steps (ttc unrolls at most "
                            f"{MAX_UNROLLED_STEPS} without a trip count)")
        iteration = ctx.constant(np.array(step, np.int64), body.input[0].name)
        keep_going = ctx.constant(np.array(running), body.input[1].name)
        results = ctx.importer.inline_graph(body, f"{ctx.name}/step{step}", [iteration, keep_going, *carried])
        if not ctx.importer.is_constant_value(results[0]):
            raise ctx.error("the body computes its condition from data at run time; ttc unrolls a Loop and needs "
                            "every step's condition at compile time")
        running = bool(ctx.importer.constant_array(results[0]).reshape(-1)[0])
        carried = results[1:1 + len(carried)]
        for k in range(scan_count):
            outputs[k].append(results[1 + len(carried) + k])
        step += 1
    e = Emitter(ctx)
    stacked = []
    for name, pieces in zip(ctx.node.output[len(carried):], outputs, strict=False):
        shapes = {_tensor(p).shape for p in pieces}
        if len(shapes) != 1:
            what = "no steps run" if not pieces else f"the steps give it the shapes {sorted(shapes)}"
            raise ctx.error(f"cannot stack scan output '{name}': {what}")
        stacked.append(_concat_copies(ctx, [e.reshape(p, _inserted(_tensor(p).shape, 0)) for p in pieces], 0))
    return [*carried, *stacked]


def _loop_control(ctx: NodeContext, index: int, what: str) -> int | None:
    """A Loop's trip count or condition as a number, None when absent; a UserError when computed at run time."""
    if not ctx.has_input(index):
        return None
    value = ctx.input_constant(index)
    if value is None:
        raise ctx.error(f"the {what} is computed at run time; ttc unrolls a Loop and needs it at compile time "
                        "(a constant, or a graph input the ONNX backend specialises)")
    return int(np.asarray(value).reshape(-1)[0])
