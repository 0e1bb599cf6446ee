"""The IR's object model: SSA values with use lists, operations, blocks and regions, and the module.

Operations are generic (name, operands, results, attributes, regions, location); what an op *means*
is declared once in its dialect file (see `ttc.ir.dialect.OpDef`). All mutation helpers keep use
lists consistent, so `replace_all_uses_with` and `erase` are always safe to call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ttc.ir.attributes import Location, UnknownLoc
from ttc.ir.types import FunctionType, Type

if TYPE_CHECKING:
    from ttc.ir.attributes import FileLineColLoc
    from ttc.ir.dialect import OpDef


class Value:
    """An SSA value. `uses` lists (operation, operand index) pairs in no particular order."""

    __slots__ = ("type", "uses")

    def __init__(self, type: Type) -> None:
        self.type = type
        self.uses: list[tuple[Operation, int]] = []

    @property
    def users(self) -> list[Operation]:
        seen: dict[int, Operation] = {}
        for op, _ in self.uses:
            seen.setdefault(id(op), op)
        return list(seen.values())

    @property
    def has_uses(self) -> bool:
        return bool(self.uses)

    def replace_all_uses_with(self, new: Value) -> None:
        if new is self:
            return
        for op, index in list(self.uses):
            op.set_operand(index, new)

    @property
    def owner(self) -> Operation | Block:
        raise NotImplementedError


class OpResult(Value):
    __slots__ = ("index", "op")

    def __init__(self, type: Type, op: Operation, index: int) -> None:
        super().__init__(type)
        self.op = op
        self.index = index

    @property
    def owner(self) -> Operation:
        return self.op

    def __repr__(self) -> str:
        return f"<OpResult #{self.index} of {self.op.name}: {self.type}>"


class BlockArgument(Value):
    __slots__ = ("block", "index")

    def __init__(self, type: Type, block: Block, index: int) -> None:
        super().__init__(type)
        self.block = block
        self.index = index

    @property
    def owner(self) -> Block:
        return self.block

    def __repr__(self) -> str:
        return f"<BlockArgument #{self.index}: {self.type}>"


class Operation:
    """A generic operation `"dialect.name"(operands) ({regions}) {attributes} : (types) -> types loc(...)`."""

    __slots__ = ("_operands", "attributes", "loc", "name", "parent", "regions", "results", "span")

    def __init__(
        self,
        name: str,
        operands: Sequence[Value] = (),
        result_types: Sequence[Type] = (),
        attributes: dict[str, Any] | None = None,
        regions: Sequence[Region] = (),
        loc: Location | None = None,
    ) -> None:
        self.name = name
        self._operands: list[Value] = []
        self.results = [OpResult(t, self, i) for i, t in enumerate(result_types)]
        self.attributes: dict[str, Any] = dict(attributes or {})
        self.regions: list[Region] = []
        self.loc: Location = loc if loc is not None else UnknownLoc()
        self.parent: Block | None = None
        self.span: FileLineColLoc | None = None  # where the op was parsed from, for diagnostics
        for value in operands:
            self._append_operand(value)
        for region in regions:
            self.add_region(region)

    # -- operands -------------------------------------------------------------------------------

    @property
    def operands(self) -> tuple[Value, ...]:
        return tuple(self._operands)

    def _append_operand(self, value: Value) -> None:
        value.uses.append((self, len(self._operands)))
        self._operands.append(value)

    def set_operand(self, index: int, value: Value) -> None:
        old = self._operands[index]
        old.uses.remove((self, index))
        self._operands[index] = value
        value.uses.append((self, index))

    def set_operands(self, values: Sequence[Value]) -> None:
        self.drop_operands()
        for value in values:
            self._append_operand(value)

    def drop_operands(self) -> None:
        for index, value in enumerate(self._operands):
            value.uses.remove((self, index))
        self._operands = []

    # -- results and attributes -----------------------------------------------------------------

    @property
    def result(self) -> OpResult:
        if len(self.results) != 1:
            raise ValueError(f"'{self.name}' has {len(self.results)} results, not one")
        return self.results[0]

    @property
    def result_types(self) -> tuple[Type, ...]:
        return tuple(r.type for r in self.results)

    @property
    def opdef(self) -> OpDef | None:
        from ttc.ir.dialect import lookup_op

        return lookup_op(self.name)

    def attr(self, name: str) -> Any:
        """An attribute's value, or its declared default when absent."""
        if name in self.attributes:
            return self.attributes[name]
        opdef = self.opdef
        if opdef is not None:
            decl = opdef.attribute(name)
            if decl is not None and not decl.required:
                return decl.default
        raise KeyError(f"'{self.name}' has no attribute '{name}'")

    def operand(self, name: str) -> Value | None:
        """The operand declared under `name` in the op's definition (None for an absent optional)."""
        opdef = self.opdef
        if opdef is None:
            raise KeyError(f"'{self.name}' is not a registered op")
        return opdef.operand_value(self, name)

    # -- regions and structure ------------------------------------------------------------------

    def add_region(self, region: Region) -> Region:
        region.parent = self
        self.regions.append(region)
        return region

    @property
    def parent_op(self) -> Operation | None:
        return self.parent.parent.parent if self.parent and self.parent.parent else None

    def walk(self) -> Iterator[Operation]:
        """This op and every op nested in it, in pre-order."""
        yield self
        for region in self.regions:
            for block in region.blocks:
                for op in list(block.ops):
                    yield from op.walk()

    def erase(self) -> None:
        """Remove the op from its block; its results must be unused."""
        for result in self.results:
            if result.uses:
                raise ValueError(f"cannot erase '{self.name}': result #{result.index} still has uses")
        for region in self.regions:
            region.drop_all()
        self.drop_operands()
        if self.parent is not None:
            self.parent.remove(self)

    def is_before_in_block(self, other: Operation) -> bool:
        assert self.parent is other.parent and self.parent is not None
        return self.parent.index_of(self) < self.parent.index_of(other)

    def __repr__(self) -> str:
        return f"<Operation {self.name} at {self.loc}>"


class Block:
    """A list of operations with typed block arguments."""

    __slots__ = ("args", "ops", "parent")

    def __init__(self, arg_types: Iterable[Type] = ()) -> None:
        self.args: list[BlockArgument] = [BlockArgument(t, self, i) for i, t in enumerate(arg_types)]
        self.ops: list[Operation] = []
        self.parent: Region | None = None

    def add_arg(self, type: Type) -> BlockArgument:
        arg = BlockArgument(type, self, len(self.args))
        self.args.append(arg)
        return arg

    def append(self, op: Operation) -> Operation:
        self.insert(len(self.ops), op)
        return op

    def insert(self, index: int, op: Operation) -> None:
        if op.parent is not None:
            raise ValueError(f"'{op.name}' is already in a block")
        op.parent = self
        self.ops.insert(index, op)

    def insert_before(self, anchor: Operation, op: Operation) -> None:
        self.insert(self.index_of(anchor), op)

    def insert_after(self, anchor: Operation, op: Operation) -> None:
        self.insert(self.index_of(anchor) + 1, op)

    def index_of(self, op: Operation) -> int:
        try:
            return self.ops.index(op)  # identity comparison: Operation defines no __eq__
        except ValueError:
            raise ValueError(f"'{op.name}' is not in this block") from None

    def remove(self, op: Operation) -> None:
        del self.ops[self.index_of(op)]
        op.parent = None

    @property
    def terminator(self) -> Operation | None:
        return self.ops[-1] if self.ops else None

    def drop_all(self) -> None:
        """Drop every op's operands (so values defined here can go) and empty the block."""
        for op in self.ops:
            for region in op.regions:
                region.drop_all()
            op.drop_operands()
            op.parent = None
        self.ops = []


class Region:
    __slots__ = ("blocks", "parent")

    def __init__(self, blocks: Iterable[Block] = ()) -> None:
        self.blocks: list[Block] = []
        self.parent: Operation | None = None
        for block in blocks:
            self.add_block(block)

    def add_block(self, block: Block) -> Block:
        block.parent = self
        self.blocks.append(block)
        return block

    @property
    def block(self) -> Block:
        """The region's only block."""
        if len(self.blocks) != 1:
            raise ValueError(f"region has {len(self.blocks)} blocks, not one")
        return self.blocks[0]

    def drop_all(self) -> None:
        for block in self.blocks:
            block.drop_all()


# ----------------------------------------------------------------------------------------------
# Module and functions


MODULE_OP = "builtin.module"
FUNC_OP = "func.func"
RETURN_OP = "func.return"


class Module:
    """A `builtin.module` plus the weight data its `#tt.weight<"name">` constants refer to.

    The weights are not part of the text; they travel beside it (`NAME.weights.npz`).
    """

    def __init__(self, op: Operation | None = None, weights: dict[str, np.ndarray] | None = None) -> None:
        if op is None:
            op = Operation(MODULE_OP, regions=[Region([Block()])])
        self.op = op
        self.weights: dict[str, np.ndarray] = dict(weights or {})
        self.source_lines: list[str] | None = None  # the text it was parsed from, for diagnostics

    @property
    def body(self) -> Block:
        return self.op.regions[0].block

    @property
    def attributes(self) -> dict[str, Any]:
        return self.op.attributes

    @property
    def functions(self) -> list[Function]:
        return [Function(op) for op in self.body.ops if op.name == FUNC_OP]

    def function(self, name: str = "main") -> Function:
        for func in self.functions:
            if func.name == name:
                return func
        raise KeyError(f"no function @{name} in the module")

    def walk(self) -> Iterator[Operation]:
        return self.op.walk()

    def add_weight(self, name: str, data: np.ndarray) -> str:
        """Store `data` under a fresh name derived from `name`; returns the name used."""
        unique = name
        counter = 1
        while unique in self.weights:
            unique = f"{name}.{counter}"
            counter += 1
        self.weights[unique] = data
        return unique

    def __str__(self) -> str:
        from ttc.ir.printer import print_module

        return print_module(self)


class Function:
    """A view of a `func.func` op: name, signature, body, and per-argument/result attributes."""

    __slots__ = ("op",)

    def __init__(self, op: Operation) -> None:
        self.op = op

    @staticmethod
    def create(name: str, input_types: Sequence[Type], result_types: Sequence[Type],
               arg_attrs: Sequence[dict[str, Any]] | None = None,
               res_attrs: Sequence[dict[str, Any]] | None = None) -> Function:
        from ttc.ir.attributes import TypeAttr

        attributes: dict[str, Any] = {
            "sym_name": name,
            "function_type": TypeAttr(FunctionType(tuple(input_types), tuple(result_types))),
        }
        if arg_attrs and any(arg_attrs):
            attributes["arg_attrs"] = tuple(dict(a) for a in arg_attrs)
        if res_attrs and any(res_attrs):
            attributes["res_attrs"] = tuple(dict(a) for a in res_attrs)
        op = Operation(FUNC_OP, attributes=attributes, regions=[Region([Block(input_types)])])
        return Function(op)

    @property
    def name(self) -> str:
        return self.op.attributes["sym_name"]

    @property
    def type(self) -> FunctionType:
        return self.op.attributes["function_type"].type

    def set_type(self, type: FunctionType) -> None:
        from ttc.ir.attributes import TypeAttr

        self.op.attributes["function_type"] = TypeAttr(type)

    @property
    def body(self) -> Block:
        return self.op.regions[0].blocks[0]

    @property
    def args(self) -> list[BlockArgument]:
        return self.body.args

    def arg_attrs(self, index: int) -> dict[str, Any]:
        attrs = self.op.attributes.get("arg_attrs", ())
        return attrs[index] if index < len(attrs) else {}

    def res_attrs(self, index: int) -> dict[str, Any]:
        attrs = self.op.attributes.get("res_attrs", ())
        return attrs[index] if index < len(attrs) else {}

    @property
    def return_op(self) -> Operation:
        term = self.body.terminator
        if term is None or term.name != RETURN_OP:
            raise ValueError(f"function @{self.name} does not end with {RETURN_OP}")
        return term

    def walk(self) -> Iterator[Operation]:
        return self.op.walk()
