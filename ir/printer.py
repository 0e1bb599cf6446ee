"""Print IR as MLIR generic syntax (with the custom forms of `module`, `func.func` and `func.return`).

The text is the interface: `parse(print(m))` rebuilds the module and printing it again gives the
same text. Value names are renumbered per function: `%argN` for block arguments, `%N` for results
(`%N:2` / `%N#1` for multi-result ops). Attribute dictionaries print sorted by name, like MLIR's.
"""

from __future__ import annotations

from typing import Any

from ttc.ir.attributes import attribute_text, dict_text
from ttc.ir.core import FUNC_OP, MODULE_OP, RETURN_OP, Block, Function, Module, Operation, Value
from ttc.ir.types import FunctionType, Type

INDENT = "  "


class Namer:
    """Assigns printed names to every value of one function (isolated-from-above scope)."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.next_result = 0
        self.next_arg = 0

    def name_block_args(self, block: Block) -> None:
        for arg in block.args:
            self.names[id(arg)] = f"%arg{self.next_arg}"
            self.next_arg += 1

    def name_results(self, op: Operation) -> None:
        if not op.results:
            return
        base = f"%{self.next_result}"
        self.next_result += 1
        if len(op.results) == 1:
            self.names[id(op.results[0])] = base
        else:
            for r in op.results:
                self.names[id(r)] = f"{base}#{r.index}"

    def __getitem__(self, value: Value) -> str:
        name = self.names.get(id(value))
        return name if name is not None else "%<<UNKNOWN>>"


def sorted_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: attrs[k] for k in sorted(attrs)}


def type_list_text(types: tuple[Type, ...] | list[Type]) -> str:
    return ", ".join(str(t) for t in types)


def results_type_text(types: tuple[Type, ...] | list[Type]) -> str:
    if len(types) == 1 and not isinstance(types[0], FunctionType):
        return str(types[0])
    return f"({type_list_text(types)})"


class Printer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namer = Namer()

    # -- module and functions -------------------------------------------------------------------

    def module(self, op: Operation) -> None:
        attrs = f" attributes {dict_text(sorted_attrs(op.attributes))}" if op.attributes else ""
        self.lines.append(f"module{attrs} {{")
        for child in op.regions[0].block.ops:
            if child.name == FUNC_OP:
                self.function(child, 1)
            else:
                self.op(child, 1)
        self.lines.append("}")

    def function(self, op: Operation, depth: int) -> None:
        func = Function(op)
        self.namer = Namer()
        self.namer.name_block_args(func.body)
        ftype = func.type
        args = []
        for i, arg in enumerate(func.args):
            attrs = func.arg_attrs(i)
            suffix = f" {dict_text(sorted_attrs(attrs))}" if attrs else ""
            args.append(f"{self.namer[arg]}: {arg.type}{suffix}")
        results = self.signature_results(func, ftype)
        extra = {k: v for k, v in op.attributes.items()
                 if k not in ("sym_name", "function_type", "arg_attrs", "res_attrs")}
        extra_text = f" attributes {dict_text(sorted_attrs(extra))}" if extra else ""
        pad = INDENT * depth
        self.lines.append(f"{pad}func.func @{symbol_text(func.name)}({', '.join(args)}){results}{extra_text} {{")
        for child in func.body.ops:
            self.op(child, depth + 1)
        self.lines.append(f"{pad}}}")

    @staticmethod
    def signature_results(func: Function, ftype: FunctionType) -> str:
        if not ftype.results:
            return ""
        parts = []
        for i, t in enumerate(ftype.results):
            attrs = func.res_attrs(i)
            parts.append(f"{t} {dict_text(sorted_attrs(attrs))}" if attrs else str(t))
        if len(parts) == 1 and not func.res_attrs(0) and not isinstance(ftype.results[0], FunctionType):
            return f" -> {parts[0]}"
        return f" -> ({', '.join(parts)})"

    # -- operations ----------------------------------------------------------------------------

    def op(self, op: Operation, depth: int) -> None:
        pad = INDENT * depth
        if op.name == RETURN_OP:
            self.lines.append(pad + self.return_text(op))
            return
        if op.name == MODULE_OP:
            raise ValueError("nested modules are not supported")
        head, tail = self.generic_parts(op)
        if not op.regions:
            self.lines.append(f"{pad}{head}{tail}")
            return
        self.lines.append(f"{pad}{head}(" + "{")
        for i, region in enumerate(op.regions):
            if i:
                self.lines.append(f"{pad}}}, {{")
            for j, block in enumerate(region.blocks):
                self.namer.name_block_args(block)
                if block.args or j > 0 or len(region.blocks) > 1:
                    args = ", ".join(f"{self.namer[a]}: {a.type}" for a in block.args)
                    self.lines.append(f"{pad}^bb{j}({args}):" if block.args else f"{pad}^bb{j}:")
                for child in block.ops:
                    self.op(child, depth + 1)
        self.lines.append(f"{pad}}}){tail}")

    def generic_parts(self, op: Operation) -> tuple[str, str]:
        """The text before the regions and after them, with result names assigned."""
        operands = ", ".join(self.namer[v] for v in op.operands)
        self.namer.name_results(op)
        results = ""
        if len(op.results) == 1:
            results = f"{self.namer[op.results[0]]} = "
        elif op.results:
            results = f"{self.namer[op.results[0]].split('#')[0]}:{len(op.results)} = "
        attrs = f" {dict_text(sorted_attrs(op.attributes))}" if op.attributes else ""
        ftype = f"({type_list_text([v.type for v in op.operands])}) -> {results_type_text(op.result_types)}"
        head = f'{results}"{op.name}"({operands})'
        sep = " " if op.regions else ""
        return head + sep, f"{attrs} : {ftype} {op.loc}"

    def return_text(self, op: Operation) -> str:
        if not op.operands:
            return f"func.return {op.loc}"
        values = ", ".join(self.namer[v] for v in op.operands)
        return f"func.return {values} : {type_list_text([v.type for v in op.operands])} {op.loc}"


def symbol_text(name: str) -> str:
    if name and all(c.isalnum() or c in "_$.-" for c in name) and not name[0].isdigit():
        return name
    return attribute_text(name)


def print_module(module: Module | Operation) -> str:
    """The module's text, ending with a newline."""
    op = module.op if isinstance(module, Module) else module
    printer = Printer()
    printer.module(op)
    return "\n".join(printer.lines) + "\n"


def op_text(op: Operation) -> str:
    """One op's line as it prints inside its function (regions elided), for diagnostics."""
    func_op = op
    while func_op.parent_op is not None and func_op.name != FUNC_OP:
        func_op = func_op.parent_op
    printer = Printer()
    if func_op.name == FUNC_OP:
        printer.namer.name_block_args(Function(func_op).body)
        for candidate in func_op.walk():
            if candidate is func_op:
                continue
            if candidate is op:
                break
            for region in candidate.regions:
                for block in region.blocks:
                    printer.namer.name_block_args(block)
            printer.namer.name_results(candidate)
    if op.name == RETURN_OP:
        return printer.return_text(op)
    head, tail = printer.generic_parts(op)
    return f"{head}({{...}}){tail}" if op.regions else f"{head}{tail}"
