"""IR attributes and locations.

Builtin attribute values are plain immutable Python values, which keeps passes short:
    bool -> `true`, int -> `42`, float -> `0.5` / `1e-05` / `inf`, str -> `"text"`,
    tuple -> `[1, 2]`, dict -> `{axis = 1, name = "x"}`.
Richer attributes are classes here: `DenseAttr` (`dense<0.0> : tensor<4xf32>`, small constants only),
`WeightAttr` (`#tt.weight<"fc1.weight">`, data beside the IR), `TypeAttr`, and dialect attributes
(`#tt.layout<...>`, `#tt.grid<8x8>`, `#tt.device<...>`) declared with `@dialect_attribute`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ttc.ir.types import ScalarType, TensorType, Type

# ----------------------------------------------------------------------------------------------
# Locations


class Location:
    """Where an op came from: an ONNX node name, a text position, or several fused together."""

    def inner_text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"loc({self.inner_text()})"

    def names(self) -> tuple[str, ...]:
        """The ONNX node names this location covers (in order), for error messages and profiles."""
        return ()


@dataclass(frozen=True)
class UnknownLoc(Location):
    def inner_text(self) -> str:
        return "unknown"


@dataclass(frozen=True)
class NameLoc(Location):
    name: str

    def inner_text(self) -> str:
        return quote(self.name)

    def names(self) -> tuple[str, ...]:
        return (self.name,)


@dataclass(frozen=True)
class FileLineColLoc(Location):
    file: str
    line: int
    column: int

    def inner_text(self) -> str:
        return f"{quote(self.file)}:{self.line}:{self.column}"


@dataclass(frozen=True)
class FusedLoc(Location):
    locations: tuple[Location, ...]

    def inner_text(self) -> str:
        return f"fused[{', '.join(loc.inner_text() for loc in self.locations)}]"

    def names(self) -> tuple[str, ...]:
        return tuple(name for loc in self.locations for name in loc.names())


def fuse_locations(*locs: Location) -> Location:
    """One location for an op made from several: flattens nested fusions and drops duplicates."""
    flat: list[Location] = []
    for loc in locs:
        for item in loc.locations if isinstance(loc, FusedLoc) else (loc,):
            if item not in flat and not isinstance(item, UnknownLoc):
                flat.append(item)
    if not flat:
        return UnknownLoc()
    return flat[0] if len(flat) == 1 else FusedLoc(tuple(flat))


# ----------------------------------------------------------------------------------------------
# Attributes with their own syntax


class Ident(str):
    """A bare identifier inside a dialect attribute's parameters, e.g. `tile` in `#tt.layout<tile, ...>`."""

    __slots__ = ()


class Dims(tuple):
    """A `8x8`-style list of dimensions inside dialect attribute parameters."""

    __slots__ = ()

    def __str__(self) -> str:
        return "x".join(str(d) for d in self)


@dataclass(frozen=True)
class TypeAttr:
    type: Type

    def __str__(self) -> str:
        return str(self.type)


class DenseAttr:
    """An inline constant `dense<...> : tensor<...>` for scalars, shapes and other tiny tensors.

    Holds either one splat value or the full array; large data belongs in weights (`WeightAttr`).
    """

    __slots__ = ("_text", "type", "values")

    def __init__(self, type: TensorType, values: Any) -> None:
        array = np.asarray(values, dtype=type.element_type.numpy_dtype())
        if array.size == 0 and type.num_elements == 0:
            array = array.reshape(type.shape)  # printed `dense<[]>`: the type holds the shape
        if array.ndim != 0 and array.shape != type.shape:
            raise ValueError(f"dense values of shape {array.shape} do not match {type}")
        if array.ndim != 0 and array.size > 0 and np.all(array == array.flat[0]) and _same_bits(array):
            array = np.asarray(array.flat[0])
        array.flags.writeable = False
        self.type = type
        self.values = array
        self._text: str | None = None

    @property
    def is_splat(self) -> bool:
        return self.values.ndim == 0

    def to_array(self) -> np.ndarray:
        """The full constant as a numpy array of the type's shape."""
        return np.broadcast_to(self.values, self.type.shape).copy()

    def __str__(self) -> str:
        if self._text is None:
            self._text = f"dense<{_dense_values_text(self.values)}> : {self.type}"
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DenseAttr) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __repr__(self) -> str:
        return f"DenseAttr({self})"


def _same_bits(array: np.ndarray) -> bool:
    """Splat only when every element has the same bits (so -0.0 and 0.0 stay distinct)."""
    if array.dtype.kind != "f":
        return True
    raw = array.view(np.uint8).reshape(array.size, -1)
    return bool(np.all(raw == raw[0]))


def _dense_values_text(values: np.ndarray) -> str:
    if values.ndim == 0:
        return scalar_text(values.item() if values.dtype.kind != "f" else values[()])
    if values.size == 0:
        return "[]"
    return "[" + ", ".join(_dense_values_text(v) for v in values) + "]"


# ----------------------------------------------------------------------------------------------
# Dialect attributes


_DIALECT_ATTRIBUTES: dict[str, type[DialectAttribute]] = {}


class DialectAttribute:
    """Base of `#dialect.mnemonic<params>` attributes, declared as frozen dataclasses.

    Fields marked `positional()` print bare in order; the others print as `key = value` and are
    omitted while equal to their default. Subclasses may override `params`/`from_params`.
    """

    dialect: ClassVar[str]
    mnemonic: ClassVar[str]

    def params(self) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.metadata.get("positional"):
                args.append(value)
            elif field.default is dataclasses.MISSING or value != field.default:
                kwargs[field.name] = value
        return args, kwargs

    @classmethod
    def from_params(cls, args: list[Any], kwargs: dict[str, Any]) -> DialectAttribute:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        positional = [f.name for f in fields if f.metadata.get("positional")]
        if len(args) > len(positional):
            raise ValueError(f"#{cls.dialect}.{cls.mnemonic} takes {len(positional)} positional parameters")
        values = dict(zip(positional, args, strict=False))
        known = {f.name for f in fields}
        for key, value in kwargs.items():
            if key not in known:
                raise ValueError(f"#{cls.dialect}.{cls.mnemonic} has no parameter '{key}'")
            values[key] = value
        return cls(**values)

    def __str__(self) -> str:
        args, kwargs = self.params()
        parts = [attribute_text(a) for a in args]
        parts += [f"{k} = {attribute_text(v)}" for k, v in kwargs.items()]
        return f"#{self.dialect}.{self.mnemonic}<{', '.join(parts)}>"


def positional(**kwargs: Any) -> Any:
    """A dataclass field that prints as a bare positional parameter."""
    return dataclasses.field(metadata={"positional": True}, **kwargs)


def dialect_attribute(dialect: str, mnemonic: str):
    """Register a frozen dataclass as the attribute `#dialect.mnemonic<...>`."""

    def register(cls: type) -> type:
        cls.dialect = dialect
        cls.mnemonic = mnemonic
        _DIALECT_ATTRIBUTES[f"{dialect}.{mnemonic}"] = cls
        return cls

    return register


def lookup_dialect_attribute(full_name: str) -> type[DialectAttribute] | None:
    import ttc.ir.dialects  # noqa: F401  (registers every dialect's attributes)

    return _DIALECT_ATTRIBUTES.get(full_name)


@dialect_attribute("tt", "weight")
@dataclass(frozen=True)
class WeightAttr(DialectAttribute):
    """A named weight `#tt.weight<"fc1.weight">` whose data lives beside the IR (an .npz)."""

    name: str = positional()


# ----------------------------------------------------------------------------------------------
# Printing attribute values


def quote(text: str) -> str:
    """An MLIR-style string literal."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def float_text(value: float | np.floating) -> str:
    """The shortest text that reads back to the same value at the value's own precision."""
    if isinstance(value, (np.float32, np.float16)) and np.isfinite(value):
        return _with_point(str(value))
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return _with_point(repr(value))


def _with_point(text: str) -> str:
    text = text.replace("e+", "e")
    if "." in text or "e" in text or "n" in text:
        return text if not text.endswith(".") else text + "0"
    return text + ".0"


def scalar_text(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return float_text(value)
    raise TypeError(f"not a scalar attribute value: {value!r}")


def attribute_text(value: Any) -> str:
    """The textual form of any attribute value."""
    if isinstance(value, Ident):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return scalar_text(value)
    if isinstance(value, Dims):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(attribute_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return dict_text(value)
    if isinstance(value, (DenseAttr, TypeAttr, DialectAttribute, Location, ScalarType)):
        return str(value)
    if isinstance(value, Type):
        return str(value)
    raise TypeError(f"not an attribute value: {value!r} ({type(value).__name__})")


def dict_text(attrs: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key_text(k)} = {attribute_text(v)}" for k, v in attrs.items()) + "}"


# Words the text format reserves; a key or identifier spelled like one must be quoted.
RESERVED_WORDS = frozenset({
    "true", "false", "dense", "loc", "unknown", "fused", "module", "attributes", "inf", "nan",
    "f64", "f32", "f16", "bf16", "bfp8_b", "bfp4_b", "i64", "i32", "i16", "i8", "ui8", "ui16", "ui32",
    "ui64", "i1", "index",
})


def key_text(key: str) -> str:
    """Attribute names print bare when they are identifiers (dots allowed), else quoted."""
    if key not in RESERVED_WORDS and _BARE_KEY.fullmatch(key):
        return key
    return quote(key)


_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_$.]*")
