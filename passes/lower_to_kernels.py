"""`lower-to-kernels`: turn @main's device ops into kernel programs and a `ttmetal` host schedule.

Each device op's program comes from its kind (`DeviceOp.lower`, passes/ops/<kind>.py); this pass places the
buffers and builds the host schedule around the programs.

    to_layout host -> device    create_buffer + write_buffer
    weight constant             create_buffer + write_constant (same weight name), before its first use
    device op                   create_buffer (result) + enqueue_program(inputs..., tables..., result)
                                with reader / compute / writer kernels, CB configs (the kind's plan),
                                per-core runtime args, kind and the op's location
    to_layout device -> host    read_buffer
    (every buffer)              deallocate after its last use

Movement ops folded into a following one (`ops.gather.is_folded`) produce no buffer: the chain's last op
gathers from the chain's input(s). A view (`ops.gather.is_view`: a chain whose tiles stay in place, e.g.
a reshape dropping a leading unit dim) produces neither buffer nor program: its value is its source's
buffer. Addresses are left to `allocate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ttc.ir.attributes import WeightAttr, fuse_locations
from ttc.ir.core import RETURN_OP, Function, Module, Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir, ttmetal
from ttc.ir.dialects.tt import LayoutAttr
from ttc.ir.types import TensorType
from ttc.passes.manager import Pass, register_pass
from ttc.passes.ops.gather import is_folded, is_view, movement_chain
from ttc.passes.ops.geometry import node_names
from ttc.passes.ops.interface import GRID
from ttc.passes.ops.registry import device_op, op_kind, program_operands


def is_device(value: Value) -> bool:
    return isinstance(value.type, TensorType) and isinstance(value.type.encoding, LayoutAttr)


class ScheduleBuilder:
    """The new body of one function: host ops in order, with the ttir value -> buffer map."""

    def __init__(self, module: Module, func: Function) -> None:
        self.module = module
        self.func = func
        self.ops: list[Operation] = []
        self.values: dict[int, Value] = {}  # ttir value -> buffer (device) or host value
        self.weights: dict[int, Operation] = {}  # ttir constant result -> its op, placed at first use

    def emit(self, name: str, operands: Sequence[Value], result_types: Sequence[Any], op: Operation,
             attributes: dict[str, Any] | None = None, regions: Sequence[Any] = (), loc: Any = None) -> Operation:
        new = Operation(name, operands, result_types, attributes, regions, loc if loc is not None else op.loc)
        self.ops.append(new)
        return new

    def value(self, value: Value) -> Value:
        """The new value standing for `value`, placing a weight buffer on its first use."""
        if id(value) in self.weights:
            constant = self.weights.pop(id(value))
            buffer = self.emit(ttmetal.CREATE_BUFFER.name, [], [value.type], constant).result
            self.emit(ttmetal.WRITE_CONSTANT.name, [buffer], [], constant, {"value": constant.attributes["value"]})
            self.values[id(value)] = buffer
        if id(value) in self.values:
            return self.values[id(value)]
        if value.owner is self.func.body:
            return value  # a host argument
        raise UserError(f"'{value}' is used on the device but was never placed there")

    # -- ops ----------------------------------------------------------------------------------------

    def lower(self, op: Operation) -> None:
        if op.name == ttir.TO_LAYOUT.name and op_kind(op) is None:
            self.to_layout(op)
        elif op.name == ttir.CONSTANT.name:
            self.constant(op)
        elif op.name == RETURN_OP:
            self.emit(RETURN_OP, [self.value(v) for v in op.operands], [], op, dict(op.attributes))
        elif op.name == ttmetal.HOST_COMPUTE.name:  # already a host op: operands remapped, results recorded
            host = self.emit(op.name, [self.value(v) for v in op.operands], [r.type for r in op.results], op,
                             dict(op.attributes))
            for old, new in zip(op.results, host.results, strict=True):
                self.values[id(old)] = new
        elif is_folded(op):
            return
        elif is_view(op):
            self.values[id(op.result)] = self.value(program_operands(op)[0])  # the same pages
        elif op_kind(op) is not None:
            self.program(op)
        else:
            raise UserError(f"node {node_names(op)}: '{op.name}' has no device kernel (lower-to-kernels runs "
                            "after tilize, fuse, layout and grid)")

    def to_layout(self, op: Operation) -> None:
        source = op.operands[0]
        if not is_device(source) and is_device(op.result):
            buffer = self.emit(ttmetal.CREATE_BUFFER.name, [], [op.result.type], op).result
            edge = {name: tuple(op.attributes[name]) for name in ("perm", "split", "window")
                    if op.attributes.get(name) is not None}
            self.emit(ttmetal.WRITE_BUFFER.name, [self.value(source), buffer], [], op, edge)
            self.values[id(op.result)] = buffer
        elif is_device(source) and not is_device(op.result):
            read = self.emit(ttmetal.READ_BUFFER.name, [self.value(source)], [op.result.type], op)
            self.values[id(op.result)] = read.result
        else:
            raise UserError(f"node {node_names(op)}: to_layout from {source.type} to {op.result.type} is not a "
                            "host <-> device transfer")

    def constant(self, op: Operation) -> None:
        if not op.result.uses:
            return
        if isinstance(op.attributes.get("value"), WeightAttr) and is_device(op.result):
            self.weights[id(op.result)] = op
            return
        if not is_device(op.result) and isinstance(op.result.type, TensorType) and not op.result.type.num_elements:
            self.values[id(op.result)] = self.emit(ttmetal.EMPTY_TENSOR.name, [], [op.result.type], op).result
            return
        raise UserError(f"node {node_names(op)}: constant {op.result.type} is used outside a fused body but "
                        "is not a device weight")

    def program(self, op: Operation) -> None:
        if GRID not in op.attributes:
            raise UserError(f"node {node_names(op)}: '{op.name}' has no tt.grid (run the grid pass first)")
        kind = device_op(op)
        assert kind is not None
        program = kind.lower(op, self.module)
        inputs = [self.value(v) for v in program_operands(op)]
        constants = []
        for table in program.constants:
            buffer = self.emit(ttmetal.CREATE_BUFFER.name, [], [table.type], op).result
            self.emit(ttmetal.WRITE_CONSTANT.name, [buffer], [], op, {"value": WeightAttr(table.name)})
            constants.append(buffer)
        state = op.attributes.get(ttmetal.STATE_ATTR)
        output = self.emit(ttmetal.CREATE_BUFFER.name, [], [op.result.type], op,
                           {} if state is None else {ttmetal.STATE_ATTR: state}).result
        # scratch buffers after the result (freed after the program, their only use): an L1 scratch then takes
        # the room below the result, as the grid pass counted it, and leaves no hole above it once freed
        # (the L1 timeline the grid pass replays has the result, not the scratch)
        for scratch in program.scratch:
            constants.append(self.emit(ttmetal.CREATE_BUFFER.name, [], [scratch], op).result)
        self.values[id(op.result)] = output
        attributes = {"grid": program.grid, "cbs": tuple(program.cbs), "runtime_args": program.runtime_args,
                      "kind": program.kind}
        if program.scalar_args:
            attributes[ttmetal.SCALAR_ARGS_ATTR] = tuple(tuple(entry) for entry in program.scalar_args)
        loc = fuse_locations(*(o.loc for o in movement_chain(op))) if op_kind(op) == "data_movement" else op.loc
        self.emit(ttmetal.ENQUEUE_PROGRAM.name, [*inputs, *constants, output], [], op, attributes,
                  list(program.kernels), loc=loc)

    # -- deallocation ---------------------------------------------------------------------------------

    def with_deallocations(self) -> list[Operation]:
        """The ops with a deallocate after each buffer's last use."""
        last_use: dict[int, int] = {}
        buffers: dict[int, Operation] = {}
        for index, op in enumerate(self.ops):
            if op.name == ttmetal.CREATE_BUFFER.name:
                buffers[id(op.result)] = op
                last_use[id(op.result)] = index
            for value in op.operands:
                if id(value) in buffers:
                    last_use[id(value)] = index
        frees: dict[int, list[Operation]] = {}
        for key, creator in buffers.items():
            frees.setdefault(last_use[key], []).append(creator)
        result: list[Operation] = []
        for index, op in enumerate(self.ops):
            if op.name == RETURN_OP:
                result += self._deallocate(frees.pop(index, []))
            result.append(op)
            result += self._deallocate(frees.get(index, []))
        return result

    @staticmethod
    def _deallocate(creators: list[Operation]) -> list[Operation]:
        return [Operation(ttmetal.DEALLOCATE.name, [c.result], [], {}, loc=c.loc) for c in creators]


def lower_function(module: Module, func: Function) -> None:
    builder = ScheduleBuilder(module, func)
    for op in list(func.body.ops):
        builder.lower(op)
    ops = builder.with_deallocations()
    func.body.drop_all()
    for op in ops:
        func.body.append(op)


@register_pass
@dataclass
class LowerToKernels(Pass):
    """Lower device ops to reader/compute/writer kernel programs and a ttmetal host schedule."""

    name = "lower-to-kernels"

    def run(self, module: Module) -> None:
        for func in module.functions:
            if any(op.name.startswith("ttmetal.") and op.name != ttmetal.HOST_COMPUTE.name for op in func.body.ops):
                continue  # lowered already
            lower_function(module, func)
