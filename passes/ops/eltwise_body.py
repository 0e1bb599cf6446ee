"""The plan of a fused elementwise body (`ttir.eltwise`): which value lives in which CB and the phases
computing one block (an entry op filling Dst, SFPU ops in place, a pack), and which functions keep zero
padding zero. The eltwise op (eltwise.py) sizes its CBs and counts its tiles from this plan, and its
compute kernel runs the phases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ttc.ir.attributes import DenseAttr
from ttc.ir.core import Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.passes.ops.geometry import (
    CB_FIRST_INTERM,
    CB_OUT,
    TILE,
    node_names,
    tensor,
    tile_shape,
)

UNARY_SFPU = {ttir.RELU.name: "relu", ttir.SIGMOID.name: "sigmoid", ttir.TANH.name: "tanh", ttir.EXP.name: "exp",
              ttir.ERF.name: "erf", ttir.SQRT.name: "sqrt", ttir.RSQRT.name: "rsqrt", ttir.NEG.name: "neg",
              ttir.RECIPROCAL.name: "recip", ttir.GELU.name: "gelu", ttir.LOG.name: "log", ttir.ABS.name: "abs",
              ttir.ISNAN.name: "isnan", ttir.ISINF.name: "isinf", ttir.SOFTPLUS.name: "softplus", ttir.MISH.name: "mish",
              ttir.HARDSWISH.name: "hardswish",
              **{f"ttir.{fn}": fn for fn in ("floor", "ceil", "trunc", "round", "sin", "cos", "tan", "asin", "acos",
                                             "atan", "asinh", "acosh", "atanh")}}


FPU_BINARY = {ttir.ADD.name: "add", ttir.SUB.name: "sub", ttir.MUL.name: "mul"}


SFPU_BINARY = frozenset({"pow", "where_nez", "where_eqz"})


COMPARE_SFPU = {ttir.EQ.name: "eqz", ttir.NE.name: "nez", ttir.LT.name: "ltz", ttir.LE.name: "lez", ttir.GT.name: "gtz",
                ttir.GE.name: "gez"}


SCALAR_COMPARES = {"eq_scalar": np.equal, "ne_scalar": np.not_equal, "lt_scalar": np.less,
                   "le_scalar": np.less_equal, "gt_scalar": np.greater, "ge_scalar": np.greater_equal}


SWAPPED = {"eq": "eq", "ne": "ne", "lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}  # c op x == x SWAPPED[op] c


ZERO_PRESERVING = frozenset({"relu", "tanh", "erf", "sqrt", "neg", "gelu", "gelu_tanh", "mul_scalar", "square",
                             "abs", "isnan", "nez", "ltz", "gtz", "where_nez", "isinf", "floor", "ceil", "trunc",
                             "round", "sin", "tan", "asin", "atan", "asinh", "atanh", "mish", "hardswish"})


def keeps_zero(fn: str, param: float) -> bool:
    """f(0) == 0, so an SFPU op leaves zero padding zero."""
    if fn in ZERO_PRESERVING:
        return True
    if fn in SCALAR_COMPARES:
        return not SCALAR_COMPARES[fn](0.0, param)
    return (fn == "pow_scalar" and param > 0) or (fn == "max_scalar" and param <= 0) or \
        (fn in ("add_scalar", "sub_from_scalar", "where_eqz") and param == 0)


def binary_keeps_zero(fn: str, a_zero: bool, b_zero: bool) -> bool:
    """Whether a binary SFPU op leaves padding zero, given whether its operands' padding is zero."""
    if fn == "where_nez":
        return a_zero or b_zero  # 0 unless a is non-zero, and then b
    if fn == "where_eqz":
        return b_zero  # b or 0
    return False  # pow: 0 ** 0 = 1


@dataclass(frozen=True)
class Phase:
    """One Dst round of an eltwise block: an entry op filling Dst (copy from a CB, an FPU binary op of
    two CBs with B broadcast per `bcast`, or a binary SFPU op of the two operands copied into Dst), SFPU
    ops in place, then a pack into `out_cb`.

    `a_full` / `b_full` / `full`: the operand / result has block_w tiles per block (else 1 tile: a
    value broadcast along the columns, read with column stride 0).
    """

    op: str  # "copy", "add", "sub", "mul", or a binary SFPU function (SFPU_BINARY)
    a_cb: int
    a_full: bool
    out_cb: int
    full: bool
    b_cb: int = -1
    b_full: bool = True
    bcast: str = "none"
    sfpu: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class EltwisePlan:
    """Which CB holds which value of an eltwise body, and the phases computing one block."""

    inputs: tuple[bool, ...]  # per input (CB i): full (block_w tiles) or one tile per block
    input_bcast: tuple[tuple[bool, bool], ...]  # per input: (broadcast along rows, along columns)
    phases: tuple[Phase, ...]
    interms: tuple[tuple[int, bool], ...]  # (cb, full)
    zero_cb: int | None  # a CB holding one zero tile (for expanding a broadcast operand)
    mask_rows: bool
    mask_cols: bool


@dataclass
class _Value:
    row_b: bool  # broadcast along rows (one row) relative to the result
    col_b: bool
    zero_rows: bool  # padding rows are zero
    zero_cols: bool
    cb: int | None = None
    uses: int = 0

    @property
    def full(self) -> bool:
        return not self.col_b


class _EltwisePlanner:
    """Turns an eltwise body into phases: values used by an FPU op or used twice go through CBs,
    single-use chains of unary and scalar ops stay in Dst."""

    def __init__(self, op: Operation) -> None:
        self.op = op
        out = tile_shape(tensor(op.result).shape)
        self.out = out
        self.values: dict[int, _Value] = {}
        self.phases: list[Phase] = []
        self.interms: list[tuple[int, bool]] = []
        self.zero_cb: int | None = None
        self.expanded: dict[int, _Value] = {}  # by the CB of the broadcast value
        self.open: dict | None = None  # the phase being built; its value is in Dst
        self.open_value: int | None = None

    def kind(self, value: Value) -> tuple[bool, bool]:
        shape = tile_shape(tensor(value).shape)
        return shape.rows == 1 and self.out.rows > 1, shape.cols == 1 and self.out.cols > 1

    def fresh_cb(self) -> int:
        index = CB_FIRST_INTERM + len(self.interms) + (self.zero_cb is not None)
        if index >= 32:
            raise UserError(f"node {node_names(self.op)}: the fused elementwise body needs more than "
                            f"{32 - CB_FIRST_INTERM} intermediate circular buffers")
        return index

    def plan(self) -> EltwisePlan:
        block = self.op.regions[0].block
        if len(block.args) > CB_OUT:
            raise UserError(f"node {node_names(self.op)}: an eltwise op with {len(block.args)} inputs "
                            f"(at most {CB_OUT})")
        for i, arg in enumerate(block.args):
            row_b, col_b = self.kind(arg)
            self.values[id(arg)] = _Value(row_b, col_b, True, True, cb=i)
        instructions = self.instructions(block.ops)
        for _, operands, _, _ in instructions:
            for v in operands:
                self.values[v].uses += 1
        for name, operands, result, param in instructions:
            if name == "yield":
                return self.finish(operands[0])
            if name == "expand":
                self.broadcast(operands[0], result)
            elif len(operands) == 1:
                self.unary(name, param, operands[0], result)
            elif name in SFPU_BINARY:
                self.sfpu_binary(name, operands[0], operands[1], result)
            else:
                self.binary(name, operands[0], operands[1], result)
        raise AssertionError("eltwise body without ttir.yield")

    # -- the body as instructions on value ids ---------------------------------------------------

    def instructions(self, ops: Sequence[Operation]) -> list[tuple[str, tuple[int, ...], int, float]]:
        """(name, operand ids, result id, param): SFPU function names for unary and scalar ops,
        add/sub/mul for FPU binary ops; tensor maximum/minimum are rewritten with relu."""
        scalars: dict[int, float] = {}
        out: list[tuple[str, tuple[int, ...], int, float]] = []
        counter = iter(range(1 << 30))

        def temp(kind_of: int) -> int:
            new = -1 - next(counter)
            self.values[new] = _Value(*self.values_kind(kind_of))
            return new

        for inner in ops:
            ids = tuple(id(v) for v in inner.operands)
            if inner.name == ttir.CONSTANT.name:
                scalars[id(inner.result)] = self.splat(inner)
                continue
            if inner.name == ttir.YIELD.name:
                out.append(("yield", ids, 0, 0.0))
                continue
            result = id(inner.result)
            row_b, col_b = self.kind(inner.result)
            self.values[result] = _Value(row_b, col_b, True, True)
            if inner.name == ttir.GELU.name and inner.attributes.get("approximate") == "tanh":
                out.append(("gelu_tanh", ids, result, 0.0))
            elif inner.name in UNARY_SFPU:
                out.append((UNARY_SFPU[inner.name], ids, result, 0.0))
            elif inner.name == ttir.BROADCAST_OP.name:
                out.append(("expand", ids, result, 0.0))
            elif inner.name == ttir.TYPECAST.name:  # float -> float: every device float is one format
                out.append(("mul_scalar", ids, result, 1.0))
            elif inner.name == ttir.WHERE.name:
                out.extend(self.where_form(ids, scalars, result, temp))
            elif inner.name in COMPARE_SFPU:
                compare = inner.name.removeprefix("ttir.")
                if ids[0] in scalars:
                    out.append((f"{SWAPPED[compare]}_scalar", (ids[1],), result, scalars[ids[0]]))
                elif ids[1] in scalars:
                    out.append((f"{compare}_scalar", (ids[0],), result, scalars[ids[1]]))
                else:
                    difference = temp(result)
                    out += [("sub", ids, difference, 0.0), (COMPARE_SFPU[inner.name], (difference,), result, 0.0)]
            elif len(ids) == 2 and (ids[0] in scalars or ids[1] in scalars):
                out.extend(self.scalar_form(inner, ids, scalars, result, temp))
            elif inner.name in FPU_BINARY:
                out.append((FPU_BINARY[inner.name], ids, result, 0.0))
            elif inner.name == ttir.POW.name:
                out.append(("pow", ids, result, 0.0))
            elif inner.name in (ttir.MAXIMUM.name, ttir.MINIMUM.name):
                a, b = ids
                diff, rect = temp(result), temp(result)
                first = (b, a) if inner.name == ttir.MAXIMUM.name else (a, b)
                out += [("sub", first, diff, 0.0), ("relu", (diff,), rect, 0.0),
                        ("add" if inner.name == ttir.MAXIMUM.name else "sub", (a, rect), result, 0.0)]
            else:
                raise UserError(f"node {node_names(inner)}: '{inner.name}' cannot run in a fused "
                                "elementwise kernel")
        return out

    def values_kind(self, value_id: int) -> tuple[bool, bool, bool, bool]:
        v = self.values[value_id]
        return v.row_b, v.col_b, True, True

    def splat(self, constant: Operation) -> float:
        value = constant.attributes.get("value")
        if not isinstance(value, DenseAttr) or not value.is_splat:
            raise UserError(f"node {node_names(constant)}: only splat scalar constants can sit in a fused body")
        return float(value.values)

    def where_form(self, ids: tuple[int, ...], scalars: dict[int, float], result: int,
                   temp) -> list[tuple[str, tuple[int, ...], int, float]]:
        """where(c, x, y) on 0/1 c: each branch's term selects it where c is non-zero (x) or zero (y), else
        0 (where_nez / where_eqz, of a scalar or of a tensor branch: no arithmetic on the branch, so an
        infinite or NaN element the select does not pick leaves no trace), and the result is their sum
        (one of the two is 0, so the sum is exact; a zero scalar branch adds nothing)."""
        c, x, y = ids
        out, terms = [], []
        for branch, select in ((x, "where_nez"), (y, "where_eqz")):
            if branch in scalars:
                if scalars[branch] != 0:
                    terms.append(temp(c))  # shaped like c
                    out.append((select, (c,), terms[-1], scalars[branch]))
            else:
                terms.append(temp(result))
                out.append((select, (c, branch), terms[-1], 0.0))
        if not terms:
            out.append(("mul_scalar", (c,), result, 0.0))
        elif len(terms) == 1:
            out.append(("add_scalar", (terms[0],), result, 0.0))
        else:
            out.append(("add", (terms[0], terms[1]), result, 0.0))
        return out

    def scalar_form(self, inner: Operation, ids: tuple[int, ...], scalars: dict[int, float], result: int,
                    temp) -> list[tuple[str, tuple[int, ...], int, float]]:
        left_scalar = ids[0] in scalars
        c = scalars[ids[0] if left_scalar else ids[1]]
        x = ids[1] if left_scalar else ids[0]
        name = inner.name
        if name == ttir.ADD.name:
            return [("add_scalar", (x,), result, c)]
        if name == ttir.MUL.name:
            return [("mul_scalar", (x,), result, c)]
        if name == ttir.SUB.name:
            return [("sub_from_scalar", (x,), result, c)] if left_scalar else [("add_scalar", (x,), result, -c)]
        if name == ttir.MAXIMUM.name:
            return [("max_scalar", (x,), result, c)]
        if name == ttir.MINIMUM.name:
            t1, t2 = temp(result), temp(result)
            return [("neg", (x,), t1, 0.0), ("max_scalar", (t1,), t2, -c), ("neg", (t2,), result, 0.0)]
        if name == ttir.POW.name:
            return [("rpow_scalar" if left_scalar else "pow_scalar", (x,), result, c)]
        raise UserError(f"node {node_names(inner)}: '{name}' with a scalar {'base' if left_scalar else 'operand'} "
                        "cannot run in a fused elementwise kernel")

    # -- phases -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Pack the value in Dst into a fresh intermediate CB (it has later uses)."""
        if self.open is None:
            return
        value = self.values[self.open_value]
        index = self.fresh_cb()
        self.interms.append((index, value.full))
        self.phases.append(Phase(out_cb=index, full=value.full, **self.open))
        value.cb = index
        self.open, self.open_value = None, None

    def unary(self, fn: str, param: float, x: int, result: int) -> None:
        source, target = self.values[x], self.values[result]
        if not (self.open_value == x and source.uses == 1):
            self.close()
            self.open = {"op": "copy", "a_cb": source.cb, "a_full": source.full, "sfpu": ()}
        self.open["sfpu"] = (*self.open["sfpu"], (fn, param))
        self.open_value = result
        source.uses -= 1
        zero = keeps_zero(fn, param)
        target.zero_rows, target.zero_cols = source.zero_rows and zero, source.zero_cols and zero

    def broadcast(self, x: int, result: int) -> None:
        """ttir.broadcast: batch dims broadcast in the reader already; within the tiles the value is
        expanded to a full one (zero tile + the value broadcast) when it is a row, a column or a scalar."""
        source, uses = self.values[x], self.values[result].uses
        source.uses -= 1
        if not (source.row_b or source.col_b):  # only batch dims broadcast: the block holds it already
            source.uses += uses
            self.values[result] = source
            return
        self.close()
        expanded = self.expand(source)
        expanded.uses = uses
        self.values[result] = expanded

    def binary(self, fn: str, a_id: int, b_id: int, result: int) -> None:
        self.close()
        a, b, target = self.values[a_id], self.values[b_id], self.values[result]
        a.uses -= 1
        b.uses -= 1
        negate = False
        if not self.covers(a, b):
            if self.covers(b, a):
                a, b = b, a
                negate = fn == "sub"
            else:
                a = self.expand(a)
        bcast = _bcast(b.row_b and not a.row_b, b.col_b and not a.col_b)
        b_rows = b.zero_rows and bcast not in ("row", "scalar")
        b_cols = b.zero_cols and bcast not in ("col", "scalar")
        self.open = {"op": fn, "a_cb": a.cb, "a_full": a.full, "b_cb": b.cb, "b_full": b.full, "bcast": bcast,
                     "sfpu": (("neg", 0.0),) if negate else ()}
        self.open_value = result
        target.zero_rows = a.zero_rows and b_rows
        target.zero_cols = a.zero_cols and b_cols

    def sfpu_binary(self, fn: str, a_id: int, b_id: int, result: int) -> None:
        """Both operands are copied into Dst whole, so they must have the same shape of tiles: when their
        broadcasts differ, the broadcast ones are expanded to full values (and so is the result)."""
        self.close()
        a, b, target = self.values[a_id], self.values[b_id], self.values[result]
        a.uses -= 1
        b.uses -= 1
        if (a.row_b, a.col_b) != (b.row_b, b.col_b):
            a = self.expand(a) if a.row_b or a.col_b else a
            b = self.expand(b) if b.row_b or b.col_b else b
        target.row_b, target.col_b = a.row_b, a.col_b
        self.open = {"op": fn, "a_cb": a.cb, "a_full": a.full, "b_cb": b.cb, "b_full": b.full, "sfpu": ()}
        self.open_value = result
        target.zero_rows = binary_keeps_zero(fn, a.zero_rows, b.zero_rows)
        target.zero_cols = binary_keeps_zero(fn, a.zero_cols, b.zero_cols)

    @staticmethod
    def covers(a: _Value, b: _Value) -> bool:
        """a is broadcast along no dim that b is not: b can be the (broadcast) B operand."""
        return (b.row_b or not a.row_b) and (b.col_b or not a.col_b)

    def expand(self, value: _Value) -> _Value:
        """A full copy of a broadcast value: zero tile + value broadcast, into an intermediate CB (once per
        value: the CB holds it until the end of the block)."""
        assert value.cb is not None
        if value.cb in self.expanded:
            return replace(self.expanded[value.cb])
        if self.zero_cb is None:
            self.zero_cb = self.fresh_cb()
        index = self.fresh_cb()
        bcast = _bcast(value.row_b, value.col_b)
        self.interms.append((index, True))
        self.phases.append(Phase("add", self.zero_cb, False, index, True, value.cb, value.full, bcast))
        self.expanded[value.cb] = _Value(False, False, value.zero_rows and not value.row_b,
                                         value.zero_cols and not value.col_b, cb=index)
        return replace(self.expanded[value.cb])

    def finish(self, value_id: int) -> EltwisePlan:
        value = self.values[value_id]
        if self.open_value != value_id:
            self.close()
            self.open = {"op": "copy", "a_cb": value.cb, "a_full": value.full, "sfpu": ()}
        self.phases.append(Phase(out_cb=CB_OUT, full=True, **self.open))
        inputs = [self.values[id(arg)] for arg in self.op.regions[0].block.args]
        return EltwisePlan(
            inputs=tuple(v.full for v in inputs), input_bcast=tuple((v.row_b, v.col_b) for v in inputs),
            phases=tuple(self.phases), interms=tuple(self.interms), zero_cb=self.zero_cb,
            mask_rows=self.out.rows % TILE != 0 and not value.zero_rows,
            mask_cols=self.out.cols % TILE != 0 and not value.zero_cols)


def _bcast(rows: bool, cols: bool) -> str:
    return "scalar" if rows and cols else "row" if rows else "col" if cols else "none"


def eltwise_plan(op: Operation) -> EltwisePlan:
    """The phases and CBs of a `ttir.eltwise` (independent of the blocking)."""
    return _EltwisePlanner(op).plan()
