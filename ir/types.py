"""IR types: scalar element types, ranked tensors with an optional layout encoding, dialect types
and function types. Types are immutable and compare by value; `str(t)` is the textual form."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np

if TYPE_CHECKING:
    from ttc.ir.attributes import Attribute


class Type:
    """Base of all IR types."""


@dataclass(frozen=True)
class ScalarType(Type):
    """An element type or a plain scalar type (`index` for loop counters and addresses)."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in SCALAR_TYPE_NAMES:
            raise ValueError(f"unknown scalar type '{self.name}'")

    def __str__(self) -> str:
        return self.name

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_TYPE_NAMES

    @property
    def is_integer(self) -> bool:
        return self.name in INTEGER_TYPE_NAMES

    @property
    def is_block_float(self) -> bool:
        return self.name in ("bfp8_b", "bfp4_b")

    def numpy_dtype(self) -> np.dtype:
        """The host dtype holding values of this type (block-float values are held as float32)."""
        return np.dtype(_NUMPY_DTYPES[self.name])


_NUMPY_DTYPES: dict[str, object] = {
    "f64": np.float64, "f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16,
    "bfp8_b": np.float32, "bfp4_b": np.float32,
    "i64": np.int64, "i32": np.int32, "i16": np.int16, "i8": np.int8,
    "ui8": np.uint8, "ui16": np.uint16, "ui32": np.uint32, "ui64": np.uint64,
    "i1": np.bool_, "index": np.int64,
}
FLOAT_TYPE_NAMES = frozenset({"f64", "f32", "f16", "bf16", "bfp8_b", "bfp4_b"})
INTEGER_TYPE_NAMES = frozenset({"i64", "i32", "i16", "i8", "ui8", "ui16", "ui32", "ui64", "i1", "index"})
SCALAR_TYPE_NAMES = FLOAT_TYPE_NAMES | INTEGER_TYPE_NAMES

f32 = ScalarType("f32")
bf16 = ScalarType("bf16")
f16 = ScalarType("f16")
i64 = ScalarType("i64")
i32 = ScalarType("i32")
i1 = ScalarType("i1")
bfp8_b = ScalarType("bfp8_b")
bfp4_b = ScalarType("bfp4_b")
index = ScalarType("index")


def scalar_type_for_dtype(dtype: np.dtype) -> ScalarType:
    """The element type of a numpy dtype (raises ValueError for dtypes the IR has no type for)."""
    dtype = np.dtype(dtype)
    for name, np_type in _NUMPY_DTYPES.items():
        if name in ("bfp8_b", "bfp4_b", "index"):
            continue
        if np.dtype(np_type) == dtype:
            return ScalarType(name)
    raise ValueError(f"no IR element type for numpy dtype {dtype}")


@dataclass(frozen=True)
class TensorType(Type):
    """`tensor<4x128xbf16, #tt.layout<...>>`: logical shape, element type, optional encoding.

    The shape is always the logical one; padding and placement live in the encoding. A dim is None
    (`?` in text) only where its size depends on data: a host tensor that a host op computes and
    the function returns (Unique's results), never one with a layout.
    """

    shape: tuple[int | None, ...]
    element_type: ScalarType
    encoding: Attribute | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        if any(d is not None and d < 0 for d in self.shape):
            raise ValueError(f"tensor dimensions must be non-negative, got {self.shape}")
        if self.encoding is not None and not self.is_static:
            raise ValueError(f"a tensor with a layout has a static shape, got {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return None not in self.shape

    @property
    def num_elements(self) -> int:
        if not self.is_static:
            raise ValueError(f"{self} has a dynamic shape")
        return prod(self.shape)  # type: ignore[arg-type]

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(tuple(shape), self.element_type, self.encoding)

    def with_element_type(self, element_type: ScalarType) -> TensorType:
        return TensorType(self.shape, element_type, self.encoding)

    def with_encoding(self, encoding: Attribute | None) -> TensorType:
        return TensorType(self.shape, self.element_type, encoding)

    def __str__(self) -> str:
        dims = "".join(f"{'?' if d is None else d}x" for d in self.shape)
        enc = f", {_attr_text(self.encoding)}" if self.encoding is not None else ""
        return f"tensor<{dims}{self.element_type}{enc}>"


@dataclass(frozen=True)
class DialectType(Type):
    """A type owned by a dialect, e.g. `!ttkernel.cb<2, 2048, bf16>`: name plus parameters."""

    dialect: str
    name: str
    params: tuple[object, ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return f"!{self.dialect}.{self.name}"
        return f"!{self.dialect}.{self.name}<{', '.join(_attr_text(p) for p in self.params)}>"


@dataclass(frozen=True)
class FunctionType(Type):
    inputs: tuple[Type, ...]
    results: tuple[Type, ...]

    def __str__(self) -> str:
        ins = ", ".join(str(t) for t in self.inputs)
        if len(self.results) == 1 and not isinstance(self.results[0], FunctionType):
            return f"({ins}) -> {self.results[0]}"
        return f"({ins}) -> ({', '.join(str(t) for t in self.results)})"


def _attr_text(value: object) -> str:
    from ttc.ir.attributes import attribute_text

    return attribute_text(value)
