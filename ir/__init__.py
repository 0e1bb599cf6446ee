"""The IR core: types, attributes, operations, dialects, the text format and the verifier.

`ttc.ir` imports none of the other stages; everything else builds on it.
"""

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

__all__ = [
    "Block", "BlockArgument", "Builder", "DenseAttr", "DeviceFault", "DialectType", "Dims", "FileLineColLoc",
    "Function", "FunctionType", "FusedLoc", "IRError", "Ident", "Location", "Module", "NameLoc", "OpDef",
    "OpResult", "Operation", "Region", "ScalarType", "TensorType", "Trait", "TtcError", "Type", "TypeAttr",
    "UnknownLoc", "UserError", "Value", "VerifyError", "WeightAttr", "fuse_locations", "lookup_op",
    "op_text", "parse_file", "parse_module", "print_module", "verify",
]
