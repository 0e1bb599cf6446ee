"""Print IR as MLIR generic syntax (with the custom forms of `module`, `func.func` and `func.return`).

The text is the interface: `parse(print(m))` rebuilds the module and printing it again gives the
same text. Value names are renumbered per function: `%argN` for block arguments, `%N` for results
(`%N:2` / `%N#1` for multi-result ops). Attribute dictionaries print sorted by name, like MLIR's.

For people reading it (MLIR's printing conventions):
- the module's device descriptor prints once, as the attribute alias `#device = #tt.device<...>` above the
  module, and `tt.device = #device` where it is used;
- every `ttmetal.enqueue_program` is headed by `// program N: <ONNX node> (kind, grid)`, N being the
  program's index in the profile (`ttc profile`, `ttc report`, the trace); its attributes (grid, CBs,
  runtime arguments per kernel) print before its regions, one per line, and its three kernel regions are
  labelled `^reader`, `^compute` and `^writer`;
- `locations=False` leaves out every `loc(...)` (the terminal default, as MLIR without
  `--mlir-print-debuginfo`); files and artifacts keep them. The parser reads both forms.
"""

from __future__ import annotations

from typing import Any

from ttc.ir.attributes import attribute_text, dict_text
from ttc.ir.attributes import key_text as attr_key_text
from ttc.ir.core import FUNC_OP, MODULE_OP, RETURN_OP, Block, Function, Module, Operation, Value
from ttc.ir.dialects import ttmetal
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


KERNEL_LABELS = ("reader", "compute", "writer")  # enqueue_program's regions, in order
PROGRAM_OP = ttmetal.ENQUEUE_PROGRAM.name
DEVICE_ALIAS = "device"


def program_label(loc: Any, width: int = 60) -> str:
    """A program's name: its last ONNX node, with the number of other nodes fused into it."""
    names = loc.names()
    if not names:
        return "?"
    label = names[-1] + (f" (+{len(names) - 1})" if len(names) > 1 else "")
    label = "".join(c if c.isprintable() else "?" for c in label)  # the name sits in a one-line comment
    return label if len(label) <= width else "..." + label[-(width - 3):]


class Printer:
    def __init__(self, locations: bool = True) -> None:
        self.lines: list[str] = []
        self.namer = Namer()
        self.locations = locations
        self.aliases: dict[int, str] = {}  # id(attribute value) -> alias name
        self.programs = 0  # enqueue_programs printed in the current function
        self.program_lines: list[tuple[int, int]] = []  # (first, last + 1) line of each program

    def loc_text(self, op: Operation) -> str:
        return f" {op.loc}" if self.locations else ""

    # -- module and functions -------------------------------------------------------------------

    def module(self, op: Operation) -> None:
        from ttc.ir.dialects.tt import DeviceAttr

        attrs = sorted_attrs(op.attributes)
        for value in attrs.values():
            if isinstance(value, DeviceAttr) and not self.aliases:
                self.aliases[id(value)] = DEVICE_ALIAS
                self.lines.append(f"#{DEVICE_ALIAS} = {attribute_text(value)}")
        if attrs:
            entries = ", ".join(f"{attr_key_text(k)} = " +
                                (f"#{self.aliases[id(v)]}" if id(v) in self.aliases else attribute_text(v))
                                for k, v in attrs.items())
            self.lines.append(f"module attributes {{{entries}}} {{")
        else:
            self.lines.append("module {")
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
        self.programs = 0
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
        if op.name == PROGRAM_OP and len(op.regions) == len(KERNEL_LABELS):
            self.program(op, depth)
            return
        head, tail = self.generic_parts(op)
        if not op.regions:
            self.lines.append(f"{pad}{head}{tail}")
            return
        self.lines.append(f"{pad}{head}(" + "{")
        self.regions(op, depth)
        self.lines.append(f"{pad}}}){tail}")

    def regions(self, op: Operation, depth: int, labels: tuple[str, ...] = ()) -> None:
        pad = INDENT * depth
        for i, region in enumerate(op.regions):
            if i:
                self.lines.append(f"{pad}}}, {{")
            for j, block in enumerate(region.blocks):
                self.namer.name_block_args(block)
                if labels and j == 0 and not block.args and len(region.blocks) == 1:
                    self.lines.append(f"{pad}^{labels[i]}:")
                elif block.args or j > 0 or len(region.blocks) > 1:
                    args = ", ".join(f"{self.namer[a]}: {a.type}" for a in block.args)
                    self.lines.append(f"{pad}^bb{j}({args}):" if block.args else f"{pad}^bb{j}:")
                for child in block.ops:
                    self.op(child, depth + 1)

    def program(self, op: Operation, depth: int) -> None:
        """An enqueue_program: its index and name, its attributes one per line before the labelled kernels."""
        pad = INDENT * depth
        first = len(self.lines)
        grid = op.attributes.get("grid")
        kind = op.attributes.get("kind", "")
        about = ", ".join(str(x) for x in (kind, f"grid {grid.x}x{grid.y}" if hasattr(grid, "x") else "") if x)
        self.lines.append(f"{pad}// program {self.programs}: {program_label(op.loc)}" + (f" ({about})" if about else ""))
        self.programs += 1
        operands = ", ".join(self.namer[v] for v in op.operands)
        self.lines.append(f'{pad}"{op.name}"({operands}) {{')
        inner = pad + INDENT * 2
        attrs = sorted_attrs(op.attributes)
        for n, (key, value) in enumerate(attrs.items()):
            comma = "," if n + 1 < len(attrs) else ""
            if key == "runtime_args" and isinstance(value, tuple) and len(value) == len(KERNEL_LABELS):
                self.lines.append(f"{inner}{attr_key_text(key)} = [")
                for k, args in enumerate(value):
                    sep = "," if k + 1 < len(value) else ""
                    self.lines.append(f"{inner}{INDENT}{attribute_text(args)}{sep}  // {KERNEL_LABELS[k]}, per core")
                self.lines.append(f"{inner}]{comma}")
            else:
                self.lines.append(f"{inner}{attr_key_text(key)} = {attribute_text(value)}{comma}")
        self.lines.append(f"{pad}{INDENT}}} ({{")
        self.regions(op, depth, KERNEL_LABELS)
        ftype = f"({type_list_text([v.type for v in op.operands])}) -> {results_type_text(op.result_types)}"
        self.lines.append(f"{pad}}}) : {ftype}{self.loc_text(op)}")
        self.program_lines.append((first, len(self.lines)))

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
        return head + sep, f"{attrs} : {ftype}{self.loc_text(op)}"

    def return_text(self, op: Operation) -> str:
        if not op.operands:
            return f"{RETURN_OP}{self.loc_text(op)}"
        values = ", ".join(self.namer[v] for v in op.operands)
        return f"{RETURN_OP} {values} : {type_list_text([v.type for v in op.operands])}{self.loc_text(op)}"


def symbol_text(name: str) -> str:
    if name and all(c.isalnum() or c in "_$.-" for c in name) and not name[0].isdigit():
        return name
    return attribute_text(name)


def print_module(module: Module | Operation, locations: bool = True) -> str:
    """The module's text, ending with a newline; `locations=False` leaves out every `loc(...)`."""
    op = module.op if isinstance(module, Module) else module
    printer = Printer(locations)
    printer.module(op)
    return "\n".join(printer.lines) + "\n"


def program_count(module: Module) -> int:
    """The enqueue_programs of @main (the profile's programs)."""
    return sum(1 for op in module.function("main").body.ops if op.name == PROGRAM_OP)


def print_program(module: Module, index: int, locations: bool = True) -> str:
    """Program `index` of @main as it prints inside the module (its header, attributes and kernels; value
    names as in the whole module's text), dedented, ending with a newline."""
    printer = Printer(locations)
    printer.module(module.op)
    main_programs = printer.program_lines  # @main is the only function with programs
    first, end = main_programs[index]
    lines = printer.lines[first:end]
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


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
