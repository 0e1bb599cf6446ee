"""`builtin.module`, `func.func` and `func.return`: the containers every level of the IR shares."""

from __future__ import annotations

from ttc.ir.core import FUNC_OP, MODULE_OP, RETURN_OP, Function, Operation
from ttc.ir.dialect import (
    AnyType,
    ArrayAttr,
    Attr,
    Dialect,
    DictAttr,
    OpDef,
    Operand,
    StrAttr,
    Trait,
    TypeAttrC,
    VerifyError,
)
from ttc.ir.types import FunctionType


def verify_module(op: Operation) -> None:
    for child in op.regions[0].block.ops:
        if child.name != FUNC_OP:
            raise VerifyError(f"a module holds only {FUNC_OP} ops, found '{child.name}'")


def verify_func(op: Operation) -> None:
    func = Function(op)
    ftype = op.attributes["function_type"].type
    if not isinstance(ftype, FunctionType):
        raise VerifyError("function_type must be a function type")
    arg_types = tuple(a.type for a in func.body.args)
    if arg_types != ftype.inputs:
        raise VerifyError(f"entry block arguments ({', '.join(map(str, arg_types))}) do not match "
                          f"the signature ({', '.join(map(str, ftype.inputs))})")
    for key, count in (("arg_attrs", len(ftype.inputs)), ("res_attrs", len(ftype.results))):
        attrs = op.attributes.get(key)
        if attrs is not None and (len(attrs) != count or not all(isinstance(a, dict) for a in attrs)):
            raise VerifyError(f"{key} must hold one dictionary per {'argument' if key == 'arg_attrs' else 'result'}")


def verify_return(op: Operation) -> None:
    parent = op.parent_op
    if parent is None or parent.name != FUNC_OP:
        raise VerifyError("func.return must be inside func.func")
    expected = parent.attributes["function_type"].type.results
    actual = tuple(v.type for v in op.operands)
    if actual != expected:
        raise VerifyError(f"returns ({', '.join(map(str, actual))}) but the function is declared to return "
                          f"({', '.join(map(str, expected))})")


MODULE = OpDef(MODULE_OP, "The top-level container", results=(), regions=1,
               traits=frozenset({Trait.ISOLATED}), verify=verify_module)
FUNC = OpDef(
    FUNC_OP, "A function: a signature and a body region", results=(), regions=1,
    attributes=(Attr("sym_name", StrAttr), Attr("function_type", TypeAttrC),
                Attr("arg_attrs", ArrayAttr, None), Attr("res_attrs", ArrayAttr, None)),
    traits=frozenset({Trait.ISOLATED}), verify=verify_func,
)
RETURN = OpDef(RETURN_OP, "Return values from a function", operands=(Operand("values", AnyType, variadic=True),),
               results=(), traits=frozenset({Trait.TERMINATOR}), verify=verify_return)

BUILTIN = Dialect("builtin", "The module container.", ops=[MODULE]).register()
FUNC_DIALECT = Dialect("func", "Functions.", ops=[FUNC, RETURN]).register()
__all__ = ["BUILTIN", "FUNC_DIALECT", "DictAttr"]
