"""Ops declared as data: `OpDef` says an op's operands, results, attributes, traits and regions, and
holds the hooks that cannot be said declaratively (`verify`, and `fold` for compile-time constant
evaluation). One file per dialect under `ir/dialects/` lists its ops and registers them here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ttc.ir.attributes import DenseAttr, DialectAttribute, Ident, TypeAttr, WeightAttr
from ttc.ir.types import DialectType, ScalarType, TensorType, Type

if TYPE_CHECKING:
    import numpy as np

    from ttc.ir.core import Operation, Value


class Trait(enum.Enum):
    PURE = "pure"  # no side effects: dead when unused, safe to fold or move
    ELEMENTWISE = "elementwise"  # result element i depends only on operand elements i
    BROADCASTABLE = "broadcastable"  # operands broadcast numpy-style to the result shape
    COMMUTATIVE = "commutative"
    TERMINATOR = "terminator"  # must be the last op of its block
    ISOLATED = "isolated"  # regions cannot see values defined outside the op
    CONSTANT_LIKE = "constant-like"


class VerifyError(Exception):
    """Raised by a verify hook; the verifier adds the op's place to the message."""


# ----------------------------------------------------------------------------------------------
# Type constraints


@dataclass(frozen=True)
class TypeConstraint:
    description: str
    check: Callable[[Type], bool]

    def __call__(self, type: Type) -> bool:
        return self.check(type)


def _is_tensor(t: Type) -> bool:
    return isinstance(t, TensorType)


AnyType = TypeConstraint("any type", lambda t: True)
AnyTensor = TypeConstraint("a tensor", _is_tensor)
FloatTensor = TypeConstraint("a float tensor", lambda t: _is_tensor(t) and t.element_type.is_float)
IntTensor = TypeConstraint("an integer tensor",
                           lambda t: _is_tensor(t) and t.element_type.is_integer and t.element_type.name != "i1")
BoolTensor = TypeConstraint("an i1 tensor", lambda t: _is_tensor(t) and t.element_type.name == "i1")
Index = TypeConstraint("index", lambda t: isinstance(t, ScalarType) and t.name == "index")
Scalar = TypeConstraint("a scalar", lambda t: isinstance(t, ScalarType))


def dialect_type(dialect: str, name: str) -> TypeConstraint:
    return TypeConstraint(f"!{dialect}.{name}",
                          lambda t: isinstance(t, DialectType) and (t.dialect, t.name) == (dialect, name))


# ----------------------------------------------------------------------------------------------
# Attribute constraints


@dataclass(frozen=True)
class AttrConstraint:
    description: str
    check: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


IntAttr = AttrConstraint("an integer", _is_int)
FloatAttr = AttrConstraint("a float", lambda v: isinstance(v, float))
BoolAttr = AttrConstraint("a bool", lambda v: isinstance(v, bool))
StrAttr = AttrConstraint("a string", lambda v: isinstance(v, str) and not isinstance(v, Ident))
IntArrayAttr = AttrConstraint("an array of integers", lambda v: isinstance(v, tuple) and all(_is_int(x) for x in v))
ArrayAttr = AttrConstraint("an array", lambda v: isinstance(v, tuple))
DictAttr = AttrConstraint("a dictionary", lambda v: isinstance(v, dict))
TypeAttrC = AttrConstraint("a type", lambda v: isinstance(v, TypeAttr))
ConstantAttr = AttrConstraint("dense<...> or #tt.weight<...>", lambda v: isinstance(v, (DenseAttr, WeightAttr)))


def enum_attr(*choices: str) -> AttrConstraint:
    return AttrConstraint(f"one of {', '.join(repr(c) for c in choices)}", lambda v: v in choices)


def attr_of(cls: type[DialectAttribute]) -> AttrConstraint:
    return AttrConstraint(f"#{cls.dialect}.{cls.mnemonic}<...>", lambda v: isinstance(v, cls))


# ----------------------------------------------------------------------------------------------
# Op definitions


REQUIRED = object()


@dataclass(frozen=True)
class Operand:
    name: str
    constraint: TypeConstraint = AnyTensor
    variadic: bool = False
    optional: bool = False


@dataclass(frozen=True)
class Result:
    name: str
    constraint: TypeConstraint = AnyTensor
    variadic: bool = False


@dataclass(frozen=True)
class Attr:
    name: str
    constraint: AttrConstraint
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


FoldFn = Callable[[Sequence["np.ndarray"], "Operation"], "np.ndarray | None"]


@dataclass(frozen=True)
class OpDef:
    """The declaration of one op. `verify(op)` raises VerifyError; `fold(arrays, op)` evaluates the
    op on constant operands at compile time (never used by the emulated device)."""

    name: str
    summary: str
    operands: tuple[Operand, ...] = ()
    results: tuple[Result, ...] = (Result("result"),)
    attributes: tuple[Attr, ...] = ()
    traits: frozenset[Trait] = frozenset()
    regions: int = 0
    verify: Callable[[Operation], None] | None = None
    fold: FoldFn | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def dialect(self) -> str:
        return self.name.split(".", 1)[0]

    def has(self, trait: Trait) -> bool:
        return trait in self.traits

    def attribute(self, name: str) -> Attr | None:
        for decl in self.attributes:
            if decl.name == name:
                return decl
        return None

    def operand_groups(self, count: int) -> list[tuple[Operand, int, int]] | None:
        """Split `count` operands over the declared ones: (decl, start, length) per declaration.

        An op declares at most one variadic operand, or trailing optional ones filled in order.
        Returns None when the count cannot match.
        """
        fixed = sum(1 for o in self.operands if not o.variadic and not o.optional)
        spare = count - fixed
        has_variadic = any(o.variadic for o in self.operands)
        if spare < 0 or (not has_variadic and spare > sum(1 for o in self.operands if o.optional)):
            return None
        groups: list[tuple[Operand, int, int]] = []
        start = 0
        for decl in self.operands:
            if decl.variadic:
                length = spare
            elif decl.optional:
                length = 1 if spare > 0 else 0
                spare -= length
            else:
                length = 1
            groups.append((decl, start, length))
            start += length
        return groups

    def operand_value(self, op: Operation, name: str) -> Value | None:
        groups = self.operand_groups(len(op.operands)) or []
        for decl, start, length in groups:
            if decl.name == name:
                if decl.variadic:
                    raise KeyError(f"operand '{name}' of '{self.name}' is variadic; use op.operands")
                return op.operands[start] if length else None
        raise KeyError(f"'{self.name}' has no operand '{name}'")


@dataclass
class Dialect:
    name: str
    description: str
    ops: list[OpDef]

    def register(self) -> Dialect:
        for opdef in self.ops:
            if opdef.dialect != self.name:
                raise ValueError(f"op {opdef.name} does not belong to dialect {self.name}")
            _OPS[opdef.name] = opdef
        _DIALECTS[self.name] = self
        return self


_OPS: dict[str, OpDef] = {}
_DIALECTS: dict[str, Dialect] = {}


def lookup_op(name: str) -> OpDef | None:
    if not _OPS:
        import ttc.ir.dialects  # noqa: F401  (registers every dialect)
    return _OPS.get(name)


def registered_dialects() -> dict[str, Dialect]:
    lookup_op("")
    return dict(_DIALECTS)
