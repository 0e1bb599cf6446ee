"""The IR core: types, attributes, operations, dialects, the text format and the verifier.

`ttc.ir` imports none of the other stages; everything else builds on it. The names below load their module on
first use, so that importing one light module (`ttc.ir.diagnostics` for the CLI's error classes) does not
build the parser and the dialects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "ttc.ir.attributes": ("DenseAttr", "Dims", "FileLineColLoc", "FusedLoc", "Ident", "Location", "NameLoc",
                          "TypeAttr", "UnknownLoc", "WeightAttr", "fuse_locations"),
    "ttc.ir.builder": ("Builder",),
    "ttc.ir.core": ("Block", "BlockArgument", "Function", "Module", "Operation", "OpResult", "Region", "Value"),
    "ttc.ir.diagnostics": ("DeviceFault", "IRError", "TtcError", "UserError"),
    "ttc.ir.dialect": ("OpDef", "Trait", "VerifyError", "lookup_op"),
    "ttc.ir.parser": ("parse_file", "parse_module"),
    "ttc.ir.printer": ("op_text", "print_module"),
    "ttc.ir.types": ("DialectType", "FunctionType", "ScalarType", "TensorType", "Type"),
    "ttc.ir.verifier": ("verify",),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

if TYPE_CHECKING:
    from ttc.ir.attributes import (
        DenseAttr,
        Dims,
        FileLineColLoc,
        FusedLoc,
        Ident,
        Location,
        NameLoc,
        TypeAttr,
        UnknownLoc,
        WeightAttr,
        fuse_locations,
    )
    from ttc.ir.builder import Builder
    from ttc.ir.core import Block, BlockArgument, Function, Module, Operation, OpResult, Region, Value
    from ttc.ir.diagnostics import DeviceFault, IRError, TtcError, UserError
    from ttc.ir.dialect import OpDef, Trait, VerifyError, lookup_op
    from ttc.ir.parser import parse_file, parse_module
    from ttc.ir.printer import op_text, print_module
    from ttc.ir.types import DialectType, FunctionType, ScalarType, TensorType, Type
    from ttc.ir.verifier import verify


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'ttc.ir' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = [
    "Block", "BlockArgument", "Builder", "DenseAttr", "DeviceFault", "DialectType", "Dims", "FileLineColLoc",
    "Function", "FunctionType", "FusedLoc", "IRError", "Ident", "Location", "Module", "NameLoc", "OpDef",
    "OpResult", "Operation", "Region", "ScalarType", "TensorType", "Trait", "TtcError", "Type", "TypeAttr",
    "UnknownLoc", "UserError", "Value", "VerifyError", "WeightAttr", "fuse_locations", "lookup_op",
    "op_text", "parse_file", "parse_module", "print_module", "verify",
]
