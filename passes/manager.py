"""Passes, their registry, the textual pipeline syntax and the pass manager.

A pass is a dataclass with a kebab-case `name`, options as typed fields and one `run(module)`:

    @register_pass
    @dataclass
    class Decompose(Pass):
        \"\"\"Split ops the device has no kernel for into ones it has.\"\"\"
        name = "decompose"
        keep_gemm: bool = False      # `decompose{keep-gemm=true}` in a pipeline

        def run(self, module: Module) -> None: ...

A pipeline is text in MLIR's syntax: `canonicalize,decompose{keep-gemm=true}`, options separated by
spaces (or commas) inside the braces. The pass manager verifies the input and the IR after every pass,
prints the IR after the passes asked for, and times them; passes never print anything themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TextIO

from ttc.ir.core import Module
from ttc.ir.diagnostics import InternalCompilerError, IRError, UserError
from ttc.ir.printer import print_module
from ttc.ir.verifier import verify as verify_module
from ttc.passes.prerequisites import missing_prerequisite

OPTION_TYPES = (bool, int, float, str)
_KEBAB = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


class Pass:
    """Base of every pass. Subclasses are dataclasses whose fields are the pass's options."""

    name: ClassVar[str] = ""

    def run(self, module: Module) -> None:
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass's docstring."""
        return (cls.__doc__ or "").strip().split("\n", 1)[0]

    @classmethod
    def options(cls) -> dict[str, dataclasses.Field]:
        """The pass's options by their kebab-case names."""
        return {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def pipeline_text(self) -> str:
        """This pass as pipeline text, with the options that differ from their defaults."""
        changed = [f"{key}={_option_text(getattr(self, f.name))}" for key, f in self.options().items()
                   if getattr(self, f.name) != f.default]
        return f"{self.name}{{{' '.join(changed)}}}" if changed else self.name


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator (above `@dataclass`): make the pass available to pipelines by its name."""
    if not _KEBAB.fullmatch(cls.name):
        raise TypeError(f"pass {cls.__name__} needs a kebab-case `name`, got {cls.name!r}")
    if "__dataclass_fields__" not in cls.__dict__:
        raise TypeError(f"pass {cls.__name__} must be a @dataclass (put @register_pass above @dataclass)")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"pass name '{cls.name}' is taken by {_REGISTRY[cls.name].__name__}")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        field.type = hints[field.name]
        if field.type not in OPTION_TYPES:
            raise TypeError(f"option {field.name} of pass {cls.name} must be bool, int, float or str")
        if field.default is dataclasses.MISSING:
            raise TypeError(f"option {field.name} of pass {cls.name} needs a default")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name, sorted by name."""
    return dict(sorted(_REGISTRY.items()))


def lookup_pass(name: str) -> type[Pass]:
    """The pass registered as `name`; a UserError suggesting a close name otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known passes: {', '.join(sorted(_REGISTRY))}"
    raise UserError(f"unknown pass '{name}'; {hint}")


# ----------------------------------------------------------------------------------------------
# Pipeline text


class _PipelineScanner:
    """A cursor over pipeline text; errors quote the text with a caret under the position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> UserError:
        pos = self.pos if pos is None else pos
        return UserError(f"bad pass pipeline at column {pos + 1}: {message}\n  {self.text}\n  {' ' * pos}^")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def word(self, what: str) -> tuple[str, int]:
        """A run of characters up to whitespace, `,`, `=`, `{` or `}`; returns it and its start."""
        self.skip_space()
        start = self.pos
        while self.peek() and not self.peek().isspace() and self.peek() not in ",={}\"":
            self.pos += 1
        if self.pos == start:
            found = f"'{self.peek()}'" if self.peek() else "the end"
            raise self.error(f"expected {what}, found {found}")
        return self.text[start:self.pos], start

    def value(self) -> str:
        self.skip_space()
        if self.peek() != '"':
            return self.word("an option value")[0]
        end = self.text.find('"', self.pos + 1)
        if end < 0:
            raise self.error("unterminated string")
        value = self.text[self.pos + 1:end]
        self.pos = end + 1
        return value


def parse_pipeline(spec: str) -> list[Pass]:
    """Passes from MLIR-style pipeline text: `a,b{opt=1 flag=true},c{name="x y"}`."""
    scanner = _PipelineScanner(spec)
    passes: list[Pass] = []
    scanner.skip_space()
    if not scanner.peek():
        return passes
    while True:
        name, start = scanner.word("a pass name")
        try:
            pass_cls = lookup_pass(name)
        except UserError as exc:
            raise scanner.error(exc.message, start) from None
        scanner.skip_space()
        options = _parse_options(scanner, pass_cls) if scanner.peek() == "{" else {}
        passes.append(pass_cls(**options))
        scanner.skip_space()
        if not scanner.peek():
            return passes
        if scanner.peek() != ",":
            raise scanner.error(f"expected ',' or the end after pass '{name}', found '{scanner.peek()}'")
        scanner.pos += 1


def _parse_options(scanner: _PipelineScanner, pass_cls: type[Pass]) -> dict[str, Any]:
    """`{key=value key2=value2}` (spaces or commas between) into converted keyword arguments."""
    open_pos = scanner.pos
    scanner.pos += 1
    fields = pass_cls.options()
    values: dict[str, Any] = {}
    while True:
        scanner.skip_space()
        if scanner.peek() == "}":
            scanner.pos += 1
            return values
        if not scanner.peek():
            raise scanner.error(f"'{{' of pass '{pass_cls.name}' is never closed", open_pos)
        key, start = scanner.word("an option name")
        field = fields.get(key)
        if field is None:
            raise scanner.error(_unknown_option(pass_cls, key), start)
        if field.name in values:
            raise scanner.error(f"option '{key}' of pass '{pass_cls.name}' is given twice", start)
        scanner.skip_space()
        if scanner.peek() == "=":
            scanner.pos += 1
            value_start = scanner.pos
            text = scanner.value()
        else:
            value_start, text = start, None
        try:
            values[field.name] = convert_option(text, field.type)  # type: ignore[arg-type]
        except ValueError as exc:
            raise scanner.error(f"option '{key}' of pass '{pass_cls.name}' {exc}", value_start) from None
        scanner.skip_space()
        if scanner.peek() == ",":
            scanner.pos += 1


def _unknown_option(pass_cls: type[Pass], key: str) -> str:
    names = list(pass_cls.options())
    if not names:
        return f"pass '{pass_cls.name}' takes no options, got '{key}'"
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"pass '{pass_cls.name}' has no option '{key}'{hint} (options: {', '.join(names)})"


def convert_option(text: str | None, kind: type) -> bool | int | float | str:
    """An option value from its text; a bare option (`{flag}`) means true for a bool option."""
    if kind is bool:
        if text is None or text == "true":
            return True
        if text == "false":
            return False
        raise ValueError(f"expects true or false, got '{text}'")
    if text is None:
        raise ValueError(f"needs a value (`=...`) of type {kind.__name__}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expects an integer, got '{text}'") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expects a number, got '{text}'") from None
    return text


def _option_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (not value or re.search(r"[\s,={}\"]", value)):
        return f'"{value}"'
    return str(value)


def pipeline_text(passes: Iterable[Pass]) -> str:
    """The pipeline text that `parse_pipeline` turns back into `passes`."""
    return ",".join(p.pipeline_text() for p in passes)


# ----------------------------------------------------------------------------------------------
# The pass manager


class PassManager:
    """Runs passes in order, verifying, printing and timing between them.

    `stream` (default: sys.stderr at run time) receives the IR dumps and the timing report.
    """

    def __init__(self, passes: Sequence[Pass] | str, verify: bool = True, print_ir_after_all: bool = False,
                 print_ir_after: Iterable[str] = (), timing: bool = False, stream: TextIO | None = None,
                 after_pass: Callable[[int, Pass, Module], None] | None = None,
                 print_locations: bool = True) -> None:
        self.passes = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
        self.after_pass = after_pass  # called with (1-based index, pass, module) after each verified pass
        self.verify = verify
        self.print_ir_after_all = print_ir_after_all
        self.print_ir_after = frozenset(print_ir_after)
        for name in self.print_ir_after:
            lookup_pass(name)  # a UserError for a misspelt name
        self.timing = timing
        self.stream = stream
        self.print_locations = print_locations  # loc(...) in the IR dumps written to `stream`

    def run(self, module: Module) -> None:
        stream = self.stream or sys.stderr
        rows: list[tuple[str, float]] = []
        verifier_seconds = 0.0
        start = time.perf_counter()
        if self.verify:
            verify_module(module)
            verifier_seconds += time.perf_counter() - start
        done: list[str] = []
        for p in self.passes:
            problem = missing_prerequisite(p.name, done, module)
            if problem is not None:
                raise UserError(problem)
            done.append(p.name)
            pass_start = time.perf_counter()
            try:
                p.run(module)
            except Exception as exc:
                if not isinstance(exc, UserError):
                    exc.add_note(f"while running pass '{p.name}'")
                raise
            rows.append((type(p).__name__, time.perf_counter() - pass_start))
            if self.verify:
                verify_start = time.perf_counter()
                self._verify_after(p, module, stream)
                verifier_seconds += time.perf_counter() - verify_start
            if self.print_ir_after_all or p.name in self.print_ir_after:
                stream.write(f"{_dump_header(p)}\n{print_module(module, self.print_locations)}\n")
            if self.after_pass is not None:
                self.after_pass(len(rows), p, module)
        if self.timing:
            if self.verify:
                rows.append(("Verifier", verifier_seconds))
            stream.write(timing_report(rows, time.perf_counter() - start))

    def _verify_after(self, p: Pass, module: Module, stream: TextIO) -> None:
        try:
            verify_module(module)
        except IRError as exc:
            if self.print_ir_after_all or p.name in self.print_ir_after:
                stream.write(f"{_dump_header(p, failed=True)}\n{print_module(module, self.print_locations)}\n")
            raise InternalCompilerError(
                f"ttc: internal compiler error: pass '{p.name}' produced invalid IR (a bug in ttc, not in the "
                f"model; please report it with the command line and the model):\n{exc.message}") from None


def _dump_header(p: Pass, failed: bool = False) -> str:
    status = " Failed" if failed else ""
    return f"// -----// IR Dump After {type(p).__name__} ({p.name}){status} //----- //"


def timing_report(rows: Sequence[tuple[str, float]], total: float) -> str:
    """An MLIR `-mlir-timing`-style table: wall time and share of the total per row."""
    rule = "===" + "-" * 73 + "==="
    lines = [rule, "... Execution time report ...".center(len(rule)).rstrip(), rule,
             f"  Total Execution Time: {total:.4f} seconds", "", "  ----Wall Time----  ----Name----"]
    for label, seconds in (*rows, ("Total", total)):
        share = 100.0 * seconds / total if total > 0 else 0.0
        lines.append(f"  {seconds:>8.4f} ({share:5.1f}%)  {label}")
    return "\n".join(lines) + "\n"
