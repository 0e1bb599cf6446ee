"""`Builder`: create ops at an insertion point (the importer and the rewriter both use it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ttc.ir.attributes import Location
from ttc.ir.core import Block, Operation, Region, Value
from ttc.ir.types import Type


class Builder:
    """Inserts new ops into `block` before `anchor` (or at the end when anchor is None)."""

    def __init__(self, block: Block, anchor: Operation | None = None) -> None:
        self.block = block
        self.anchor = anchor

    @staticmethod
    def at_end(block: Block) -> Builder:
        return Builder(block)

    @staticmethod
    def before(op: Operation) -> Builder:
        assert op.parent is not None, f"'{op.name}' is not in a block"
        return Builder(op.parent, op)

    def insert(self, op: Operation) -> Operation:
        if self.anchor is None:
            self.block.append(op)
        else:
            self.block.insert_before(self.anchor, op)
        return op

    def create(self, name: str, operands: Sequence[Value] = (), result_types: Sequence[Type] = (),
               attributes: dict[str, Any] | None = None, loc: Location | None = None,
               regions: Sequence[Region] = ()) -> Operation:
        return self.insert(Operation(name, operands, result_types, attributes, regions, loc))
