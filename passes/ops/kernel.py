"""`KernelBuilder`: write one `ttkernel` kernel region as straight Python.

    k = KernelBuilder(loc)
    gen = k.addrgen(0, value_type)                    # buffer operand #0
    with k.loop(4) as i:                              # "ttkernel.for" {upper = 4}; i is the index
        k.op("cb_reserve_back", cb=0, pages=1)
        k.op("noc_read_tiles", gen, k.add(k.arg(0), i), cb=0, rows=1, cols=1)

Constants and runtime arguments are created once at the top of the kernel, so loops do not repeat
them. Index arithmetic folds Python ints: `k.add(x, 0)` is x, `k.mul(i, 1)` is i. A loop of one trip
emits no `for` and yields the constant 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ttc.ir.attributes import Location, TypeAttr
from ttc.ir.core import Block, Operation, Region, Value
from ttc.ir.dialects import ttkernel
from ttc.ir.dialects.ttkernel import ADDRGEN
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.ops.geometry import layout, page_size

INDEX = ScalarType("index")
Index = Value | int


class KernelBuilder:
    """Builds the ops of one kernel (reader, compute or writer) of a program."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.entry = Block()
        self.blocks = [self.entry]
        self.header: list[Operation] = []  # constants and runtime arguments, placed first
        self.constants: dict[int, Value] = {}
        self.args: dict[int, Value] = {}

    # -- ops --------------------------------------------------------------------------------------

    def _create(self, name: str, operands: tuple[Value, ...] = (), result: bool = False,
                attributes: dict[str, Any] | None = None) -> Operation:
        types = [ADDRGEN if name == ttkernel.ADDRGEN_OP.name else INDEX] if result else []
        return Operation(name, operands, types, attributes or {}, loc=self.loc)

    def op(self, name: str, *operands: Index, **attributes: Any) -> Operation:
        """Append `ttkernel.<name>` (no results) to the current block."""
        op = self._create(f"ttkernel.{name}", tuple(self.index(v) for v in operands), attributes=attributes)
        self.blocks[-1].append(op)
        return op

    def _value(self, name: str, *operands: Value, **attributes: Any) -> Value:
        op = self._create(f"ttkernel.{name}", operands, result=True, attributes=attributes)
        self.blocks[-1].append(op)
        return op.result

    # -- scalars ----------------------------------------------------------------------------------

    def const(self, value: int) -> Value:
        if value not in self.constants:
            op = self._create(ttkernel.CONSTANT.name, result=True, attributes={"value": int(value)})
            self.header.append(op)
            self.constants[value] = op.result
        return self.constants[value]

    def arg(self, index: int) -> Value:
        """This core's runtime argument #index."""
        if index not in self.args:
            op = self._create(ttkernel.GET_ARG.name, result=True, attributes={"index": index})
            self.header.append(op)
            self.args[index] = op.result
        return self.args[index]

    def index(self, value: Index) -> Value:
        return self.const(value) if isinstance(value, int) else value

    def add(self, lhs: Index, rhs: Index) -> Index:
        if isinstance(rhs, int) and rhs == 0:
            return lhs
        if isinstance(lhs, int) and lhs == 0:
            return rhs
        if isinstance(lhs, int) and isinstance(rhs, int):
            return lhs + rhs
        return self._value("addi", self.index(lhs), self.index(rhs))

    def mul(self, value: Index, factor: int) -> Index:
        if factor == 0:
            return 0
        if factor == 1:
            return value
        if isinstance(value, int):
            return value * factor
        return self._value("muli", value, self.const(factor))

    def minimum(self, lhs: Index, rhs: Index) -> Index:
        if isinstance(lhs, int) and isinstance(rhs, int):
            return min(lhs, rhs)
        return self._value("mini", self.index(lhs), self.index(rhs))

    def affine(self, base: Index, *terms: tuple[Index, int]) -> Index:
        """base + sum of iv * stride."""
        for value, stride in terms:
            base = self.add(base, self.mul(value, stride))
        return base

    def row_segment(self, segment: Index, row_bytes: int, segment_bytes: int) -> tuple[Index, Index]:
        """(byte offset, bytes) of column segment `segment` of a row-major page of `row_bytes`, in segments of
        `segment_bytes` (the last one short when they do not divide the page)."""
        offset = self.mul(segment, segment_bytes)
        if row_bytes % segment_bytes == 0:
            return offset, segment_bytes
        return offset, self.minimum(segment_bytes, self.affine(row_bytes, (segment, -segment_bytes)))

    # -- buffers ----------------------------------------------------------------------------------

    def addrgen(self, operand: int, buffer_type: TensorType) -> Value:
        """An address generator over the program's buffer operand #operand: interleaved, or sharded as the
        buffer's layout says (the runtime maps a page to its shard's core)."""
        base = self._value("buffer_address", operand=operand)
        encoding = layout(buffer_type)
        sharded = {} if encoding.memory_layout == "interleaved" else {"memory_layout": str(encoding.memory_layout)}
        return self._value("addrgen", base, page_size=page_size(buffer_type), memory=str(encoding.memory_space),
                           format=TypeAttr(buffer_type.element_type), **sharded)

    # -- structure --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def loop(self, trips: int) -> Iterator[Index]:
        """`for iv in range(trips)`; one trip emits no loop and yields 0."""
        if trips == 1:
            yield 0
            return
        body = Block([INDEX])
        self.blocks.append(body)
        try:
            yield body.args[0]
        finally:
            self.blocks.pop()
        op = Operation(ttkernel.FOR.name, (), (), {"lower": 0, "upper": trips, "step": 1}, [Region([body])], self.loc)
        self.blocks[-1].append(op)

    def region(self) -> Region:
        """The finished kernel as a region (header first)."""
        for position, op in enumerate(self.header):
            self.entry.insert(position, op)
        self.header = []
        return Region([self.entry])

    # -- compute helpers --------------------------------------------------------------------------

    def pack_block(self, cb: int, count: int, dst: int = 0) -> None:
        """commit, wait, pack Dst slots dst.. into cb (reserve + push), release."""
        self.op("tile_regs_commit")
        self.op("tile_regs_wait")
        self.pack(cb, count, dst)
        self.op("tile_regs_release")

    def pack(self, cb: int, count: int, dst: int = 0) -> None:
        self.op("cb_reserve_back", cb=cb, pages=count)
        self.op("pack_tiles", dst=dst, count=count, cb=cb)
        self.op("cb_push_back", cb=cb, pages=count)
