"""Parse the IR text format (grammar.lark) back into a `Module`.

The LALR parser runs the transformer below while it parses (no parse tree is built), which keeps a
GPT-2-sized module well under a second. Errors name file:line:col and quote the line with a caret.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import lark
from lark import Token, Transformer

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
    lookup_dialect_attribute,
)
from ttc.ir.core import MODULE_OP, RETURN_OP, Block, Module, Operation, Region, Value
from ttc.ir.diagnostics import IRError, SourceSpan, render_diagnostic
from ttc.ir.types import DialectType, FunctionType, ScalarType, TensorType, Type

_GRAMMAR = Path(__file__).with_name("grammar.lark")

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def unquote(token: str, at: Token | None = None) -> str:
    """A quoted string's text: \\", \\\\, \\n, \\t and two-digit hex escapes (\\0A); any other escape is a parse
    error at the token."""
    body = token[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _ESCAPES and nxt:
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        digits = body[i + 1:i + 3]
        if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            bad = body[i:i + 3] if len(digits) == 2 else body[i:i + 2]
            raise _fail(f"bad escape {bad!r} in a string (use \\\\, \\\", \\n, \\t or two hex digits)",
                        at if at is not None else token if isinstance(token, Token) else None)
        out.append(chr(int(digits, 16)))
        i += 3
    return "".join(out)


class _ParseFailure(Exception):
    def __init__(self, message: str, token: Token | None) -> None:
        super().__init__(message)
        self.message = message
        self.token = token


class _Keyword:
    """`key = value` inside a dialect attribute's parameters."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: Any) -> None:
        self.key = key
        self.value = value


class _OpSpec:
    """What a generic op line says, before its result names are bound."""

    __slots__ = ("attributes", "loc", "name", "name_token", "operand_tokens", "regions", "type")

    def __init__(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)


def _fail(message: str, token: Token | None = None) -> _ParseFailure:
    return _ParseFailure(message, token)


class IRBuilderTransformer(Transformer):
    """Builds IR while the LALR parser reduces rules. Value names live in one table per function."""

    def __init__(self, filename: str) -> None:
        super().__init__(visit_tokens=False)
        self.filename = filename
        self.values: dict[str, Value] = {}
        self.value_tokens: dict[str, Token] = {}
        self.aliases: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------------

    def span(self, token: Token) -> FileLineColLoc:
        return FileLineColLoc(self.filename, token.line or 0, token.column or 0)

    def define(self, token: Token, value: Value) -> None:
        name = str(token)
        if name in self.values:
            raise _fail(f"redefinition of value {name}", token)
        self.values[name] = value
        self.value_tokens[name] = token

    def lookup(self, token: Token, expected: Type) -> Value:
        value = self.values.get(str(token))
        if value is None:
            raise _fail(f"use of undefined value {token}", token)
        if value.type != expected:
            raise _fail(f"{token} has type {value.type} but is used as {expected}", token)
        return value

    # -- module and functions ---------------------------------------------------------------------

    def start(self, children: list[Any]) -> Operation:
        return children[-1]

    def alias_def(self, children: list[Any]) -> None:
        token, value = children
        if str(token) in self.aliases:
            raise _fail(f"attribute alias {token} is defined twice", token)
        self.aliases[str(token)] = value

    def alias_ref(self, children: list[Token]) -> Any:
        token = children[0]
        if str(token) not in self.aliases:
            raise _fail(f"undefined attribute alias {token} (define it above the module: {token} = ...)", token)
        return self.aliases[str(token)]

    def module(self, children: list[Any]) -> Operation:
        attrs = children[0] if children and isinstance(children[0], dict) else {}
        funcs = [c for c in children if isinstance(c, Operation)]
        body = Block()
        for func in funcs:
            body.append(func)
        return Operation(MODULE_OP, attributes=attrs, regions=[Region([body])])

    def module_attrs(self, children: list[Any]) -> dict[str, Any]:
        return children[0]

    func_attrs = module_attrs

    def func_header(self, children: list[Any]) -> tuple:
        _, symbol, *rest = children
        self.values = {}
        self.value_tokens = {}
        args = [c for c in rest if isinstance(c, tuple) and c and c[0] == "arg"]
        results = next((c for c in rest if isinstance(c, list)), [])
        extra = next((c for c in rest if isinstance(c, dict)), {})
        block = Block()
        for _, token, arg_type, _attrs in args:
            self.define(token, block.add_arg(arg_type))
        name = unquote(symbol[1:], symbol) if symbol[1:2] == '"' else str(symbol[1:])
        return name, block, args, results, extra, symbol

    def func_arg(self, children: list[Any]) -> tuple:
        token, arg_type, *attrs = children
        return ("arg", token, arg_type, attrs[0] if attrs and attrs[0] is not None else {})

    def func_results(self, children: list[Any]) -> list[tuple[Type, dict]]:
        if len(children) == 1 and isinstance(children[0], Type):
            return [(children[0], {})]
        return [c for c in children if c is not None]

    def func_result(self, children: list[Any]) -> tuple[Type, dict]:
        return children[0], (children[1] if len(children) > 1 and children[1] is not None else {})

    def func(self, children: list[Any]) -> Operation:
        (name, block, args, results, extra, symbol), *ops = children
        from ttc.ir.core import Function

        func = Function.create(name, [a[2] for a in args], [r[0] for r in results],
                               arg_attrs=[a[3] for a in args], res_attrs=[r[1] for r in results])
        func.op.attributes.update(extra)
        func.op.regions[0].blocks[0].args = []
        region = func.op.regions[0]
        region.blocks = []
        region.add_block(block)
        for op in ops:
            block.append(op)
        func.op.span = self.span(symbol)
        return func.op

    # -- operations -------------------------------------------------------------------------------

    def op(self, children: list[Any]) -> Operation:
        if len(children) == 1:
            item = children[0]
            return item if isinstance(item, Operation) else self.build(item, None, 0)
        (token, count), spec = children
        return self.build(spec, token, count)

    def op_result_defs(self, children: list[Any]) -> tuple[Token, int]:
        return children[0], int(children[1]) if len(children) > 1 and children[1] is not None else 1

    def build(self, spec: _OpSpec, result_token: Token | None, count: int) -> Operation:
        ftype: FunctionType = spec.type
        if len(spec.operand_tokens) != len(ftype.inputs):
            raise _fail(f"'{spec.name}' has {len(spec.operand_tokens)} operands but its type lists "
                        f"{len(ftype.inputs)}", spec.name_token)
        if result_token is None and ftype.results:
            raise _fail(f"'{spec.name}' has {len(ftype.results)} results that are not named", spec.name_token)
        if result_token is not None and count != len(ftype.results):
            raise _fail(f"{count} result names but '{spec.name}' returns {len(ftype.results)} values",
                        result_token)
        operands = [self.lookup(t, ty) for t, ty in zip(spec.operand_tokens, ftype.inputs, strict=True)]
        op = Operation(spec.name, operands, ftype.results, spec.attributes, spec.regions, spec.loc)
        first = result_token if result_token is not None else spec.name_token
        op.span = self.span(first)
        if result_token is not None:
            if "#" in result_token:
                raise _fail("a result definition cannot carry a #index", result_token)
            if len(op.results) == 1:
                self.define(result_token, op.results[0])
            else:
                for r in op.results:
                    self.define(Token("VALUE_ID", f"{result_token}#{r.index}", line=result_token.line,
                                      column=result_token.column), r)
        return op

    def generic_op(self, children: list[Any]) -> _OpSpec:
        name_token = children[0]
        operand_tokens: list[Token] = []
        regions: list[Region] = []
        attributes: dict[str, Any] = {}
        ftype: FunctionType | None = None
        loc: Location = UnknownLoc()
        for item in children[1:]:
            if isinstance(item, Token):
                operand_tokens.append(item)
            elif isinstance(item, list):
                regions = item
            elif isinstance(item, dict):
                attributes = item
            elif isinstance(item, FunctionType):
                ftype = item
            elif isinstance(item, Location):
                loc = item
        return _OpSpec(name=unquote(name_token), name_token=name_token, operand_tokens=operand_tokens,
                       regions=regions, attributes=attributes, type=ftype, loc=loc)

    def return_op(self, children: list[Any]) -> Operation:
        token, *rest = children
        loc = rest[-1] if rest and isinstance(rest[-1], Location) else UnknownLoc()
        tokens = [c for c in rest if isinstance(c, Token)]
        types = [c for c in rest if isinstance(c, Type)]
        if len(tokens) != len(types):
            raise _fail(f"func.return lists {len(tokens)} values but {len(types)} types", token)
        operands = [self.lookup(t, ty) for t, ty in zip(tokens, types, strict=True)]
        op = Operation(RETURN_OP, operands, loc=loc)
        op.span = self.span(token)
        return op

    def value_use(self, children: list[Token]) -> Token:
        return children[0]

    def regions(self, children: list[Region]) -> list[Region]:
        return children

    def region(self, children: list[Block]) -> Region:
        entry, *labeled = children
        if labeled and not entry.ops:  # the entry block carried a label: `{ ^bb0(...): ... }`
            return Region(labeled)
        return Region(children)

    def entry_block(self, children: list[Operation]) -> Block:
        block = Block()
        for op in children:
            block.append(op)
        return block

    def block(self, children: list[Any]) -> Block:
        block, *ops = children
        for op in ops:
            block.append(op)
        return block

    def block_label(self, children: list[Any]) -> Block:
        block = Block()
        for item in children[1:]:
            if item is None:
                continue
            token, arg_type = item
            self.define(token, block.add_arg(arg_type))
        return block

    def block_arg(self, children: list[Any]) -> tuple[Token, Type]:
        return children[0], children[1]

    # -- types -------------------------------------------------------------------------------------

    def tensor_type(self, children: list[Any]) -> TensorType:
        start, element, *encoding = children
        dims = start[len("tensor<"):].split("x")[:-1]
        shape = tuple(None if d == "?" else int(d) for d in dims)
        try:
            return _tensor_type(shape, str(element), encoding[0] if encoding else None)
        except ValueError as exc:
            raise _fail(str(exc), start) from None

    def scalar_type(self, children: list[Token]) -> ScalarType:
        return ScalarType(str(children[0]))

    def dialect_type(self, children: list[Any]) -> DialectType:
        name = children[0][1:]
        dialect, mnemonic = name.split(".", 1)
        params = tuple(p for p in children[1:] if p is not None)
        if any(isinstance(p, _Keyword) for p in params):
            raise _fail("dialect types take positional parameters only", children[0])
        return DialectType(dialect, mnemonic, params)

    def function_type(self, children: list[Any]) -> FunctionType:
        *inputs, results = children
        inputs = [t for t in inputs if t is not None]
        result_list = results if isinstance(results, list) else [results]
        return FunctionType(tuple(inputs), tuple(result_list))

    def type_list(self, children: list[Any]) -> list[Type]:
        return [t for t in children if t is not None]

    # -- attributes --------------------------------------------------------------------------------

    def attr_dict(self, children: list[Any]) -> dict[str, Any]:
        entries = [c for c in children if c is not None]
        result: dict[str, Any] = {}
        for key_token, key, value in entries:
            if key in result:
                raise _fail(f"duplicate attribute '{key}'", key_token)
            result[key] = value
        return result

    def attr_entry(self, children: list[Any]) -> tuple[Token, str, Any]:
        key_token, value = children
        key = unquote(key_token) if key_token.type == "STRING" else str(key_token)
        return key_token, key, value

    def int_attr(self, children: list[Token]) -> int:
        return int(children[0])

    def float_attr(self, children: list[Token]) -> float:
        return float(children[0])

    def string_attr(self, children: list[Token]) -> str:
        return unquote(children[0])

    def true_attr(self, _: list[Token]) -> bool:
        return True

    def false_attr(self, _: list[Token]) -> bool:
        return False

    def ident_attr(self, children: list[Token]) -> Ident:
        return Ident(children[0])

    def scalar_type_attr(self, children: list[Token]) -> TypeAttr:
        return TypeAttr(ScalarType(str(children[0])))

    def dims_attr(self, children: list[Token]) -> Dims:
        return Dims(int(d) for d in children[0].split("x"))

    def array_attr(self, children: list[Any]) -> tuple:
        return tuple(c for c in children if c is not None) if children != [None] else ()

    def dict_attr(self, children: list[dict]) -> dict:
        return children[0]

    def type_attr(self, children: list[Type]) -> TypeAttr:
        return TypeAttr(children[0])

    def loc_attr(self, children: list[Location]) -> Location:
        return children[0]

    def dense_attr(self, children: list[Any]) -> DenseAttr:
        token, values, dense_type = children
        try:
            return DenseAttr(dense_type, values)
        except (ValueError, OverflowError) as exc:
            raise _fail(f"invalid dense value for {dense_type}: {exc}", token) from None

    def dense_scalar(self, children: list[Token]) -> Any:
        token = children[0]
        if token.type == "TRUE":
            return True
        if token.type == "FALSE":
            return False
        return float(token) if token.type == "FLOAT" else int(token)

    def dense_list(self, children: list[Any]) -> list:
        return [c for c in children if c is not None] if children != [None] else []

    def dialect_attr(self, children: list[Any]) -> Any:
        token = children[0]
        name = token[1:]
        cls = lookup_dialect_attribute(name)
        if cls is None:
            raise _fail(f"unknown attribute #{name}", token)
        args = [p for p in children[1:] if p is not None and not isinstance(p, _Keyword)]
        kwargs = {p.key: p.value for p in children[1:] if isinstance(p, _Keyword)}
        try:
            return cls.from_params(args, kwargs)
        except (TypeError, ValueError) as exc:
            raise _fail(f"invalid #{name}: {exc}", token) from None

    def keyword_param(self, children: list[Any]) -> _Keyword:
        return _Keyword(str(children[0]), children[1])

    # -- locations ---------------------------------------------------------------------------------

    def location(self, children: list[Location]) -> Location:
        return children[0]

    def name_loc(self, children: list[Token]) -> NameLoc:
        return NameLoc(unquote(children[0]))

    def file_loc(self, children: list[Token]) -> FileLineColLoc:
        return FileLineColLoc(unquote(children[0]), int(children[1]), int(children[2]))

    def unknown_loc(self, _: list[Token]) -> UnknownLoc:
        return UnknownLoc()

    def fused_loc(self, children: list[Location]) -> FusedLoc:
        return FusedLoc(tuple(children))


@functools.lru_cache(maxsize=4096)
def _tensor_type(shape: tuple[int | None, ...], element: str, encoding: Any) -> TensorType:
    return TensorType(shape, ScalarType(element), encoding)


class _Parser:
    """The LALR parser with the IR-building transformer inlined; built once, reused per parse."""

    def __init__(self) -> None:
        self.transformer = IRBuilderTransformer("<input>")
        self.lark = lark.Lark(_GRAMMAR.read_text(), parser="lalr", lexer="contextual",
                              maybe_placeholders=True, transformer=self.transformer)

    def parse(self, text: str, filename: str) -> Operation:
        self.transformer.__init__(filename)  # fresh per-parse state
        return self.lark.parse(text)


@functools.lru_cache(maxsize=1)
def _parser() -> _Parser:
    return _Parser()


def parse_module(text: str, filename: str = "<input>", weights: dict | None = None) -> Module:
    """Parse IR text into a Module (not yet verified). Raises IRError naming file:line:col."""
    lines = text.splitlines()
    _check_nesting(text, lines, filename)
    try:
        op = _parser().parse(text, filename)
    except _ParseFailure as exc:
        raise IRError(_message(exc.message, exc.token, lines, filename)) from None
    except lark.exceptions.UnexpectedInput as exc:
        raise IRError(_syntax_message(exc, lines, filename)) from None
    module = Module(op, weights)
    module.source_lines = lines
    return module


MAX_NESTING = 200  # brackets deep; ttc's own IR nests a few levels, far below Python's recursion limit
_STRINGS = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*')
_NOT_BRACKET = re.compile(r"[^\[\]{}()]+")
_PAIR = re.compile(r"\(\)|\[\]|\{\}")
_BRACKETS = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|[\[\]{}()]')


def _check_nesting(text: str, lines: list[str], filename: str) -> None:
    """An IRError at the first bracket nested deeper than MAX_NESTING: deep arrays or dicts would otherwise
    exhaust the recursion of whatever walks the parsed attributes."""
    if text.count("[") + text.count("{") + text.count("(") <= MAX_NESTING:
        return
    # Fast path at C speed: keep only the brackets, then peel matched innermost pairs once per level.
    shape = _NOT_BRACKET.sub("", _STRINGS.sub("", text))
    for _ in range(MAX_NESTING):
        shape, peeled = _PAIR.subn("", shape)
        if not peeled:
            return
    if not _PAIR.search(shape):
        return
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in "[{(":
            depth += 1
            if depth > MAX_NESTING:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                raise IRError(render_diagnostic(f"brackets nested more than {MAX_NESTING} deep",
                                                span=_span(lines, filename, line, column)))
        elif token in "]})":
            depth = max(depth - 1, 0)


def parse_file(path: str | Path) -> Module:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise IRError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise IRError(f"{path} is not a text file") from None
    return parse_module(text, str(path))


def _span(lines: list[str], filename: str, line: int, column: int) -> SourceSpan:
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    return SourceSpan(filename, line, column, text)


def _message(message: str, token: Token | None, lines: list[str], filename: str) -> str:
    if token is None or token.line is None:
        return render_diagnostic(message, where=filename)
    return render_diagnostic(message, span=_span(lines, filename, token.line, token.column or 1))


_TOKEN_NAMES = {
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "MORETHAN": "'>'", "LESSTHAN": "'<'",
    "__ANON_0": "'->'", "VALUE_ID": "a %value", "STRING": "a string", "INT": "an integer",
    "FLOAT": "a float", "SCALAR_TYPE": "an element type", "TENSOR_START": "a tensor type",
    "BARE_ID": "an identifier", "DIALECT_ATTR": "an attribute", "DIALECT_TYPE": "a !dialect type",
    "SYMBOL": "a @symbol", "FUNC": "'func.func'", "RETURN": "'func.return'", "BLOCK_ID": "a ^block",
    "LOC": "'loc'", "DIMS": "dimensions like 4x4", "ALIAS_ID": "an #alias",
}


def _syntax_message(exc: lark.exceptions.UnexpectedInput, lines: list[str], filename: str) -> str:
    line = getattr(exc, "line", None)
    column = getattr(exc, "column", None)
    expected = sorted(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or [])
    names = sorted({_TOKEN_NAMES.get(e, e.lower() if e.isupper() else repr(e)) for e in expected})
    at_end = isinstance(exc, lark.exceptions.UnexpectedEOF) or (
        isinstance(exc, lark.exceptions.UnexpectedToken) and exc.token.type == "$END")
    if at_end or line is None or line < 1:
        while lines and not lines[-1].strip():
            lines = lines[:-1]
        line = max(len(lines), 1)
        column = len(lines[-1]) + 1 if lines else 1
        message = "unexpected end of input"
    elif isinstance(exc, lark.exceptions.UnexpectedToken):
        message = f"unexpected '{exc.token}'"
    else:
        message = f"unexpected character {lines[line - 1][column - 1]!r}" if line <= len(lines) else "bad input"
    if names and len(names) <= 8:
        message += f"; expected {', '.join(names)}"
    return render_diagnostic(message, span=_span(lines, filename, line, column or 1))
