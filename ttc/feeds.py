"""Model inputs and the checks every feed passes, for `ttc.InferenceSession.run` and `ttc run --input` alike.

The checks are onnxruntime's: an unknown input name, a missing input, a wrong rank, a wrong static dimension
and a wrong element type are errors, and a feed is never cast silently (a float64 array for a float32 input
is refused, as onnxruntime refuses it). Type names are spelt as onnxruntime spells them: `tensor(float)`.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttc.ir.diagnostics import UserError

# onnx.TensorProto.DataType -> onnxruntime's name of the element type
_ONNX_TYPE_NAMES = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                    8: "string", 9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64",
                    14: "complex64", 15: "complex128", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
                    19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4"}
_NUMPY_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "float16", "bool": "bool",
                     "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8",
                     "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "complex64": "complex64",
                     "complex128": "complex128", "bfloat16": "bfloat16"}

Dim = int | str | None  # a static size, a named dynamic dimension, an unnamed dynamic dimension


class InvalidArgument(UserError, ValueError):
    """A feed that does not match the model's inputs (onnxruntime raises INVALID_ARGUMENT or ValueError)."""


def numpy_type_name(dtype: np.dtype) -> str:
    """onnxruntime's spelling of a numpy dtype as a tensor type: float32 -> `tensor(float)`."""
    name = _TYPE_NAME_CACHE.get(dtype)
    if name is None:
        if dtype.kind in "OUS":
            name = "tensor(string)"
        else:
            name = f"tensor({_NUMPY_TYPE_NAMES.get(dtype.name, dtype.name)})"
        if len(_TYPE_NAME_CACHE) < 256:
            _TYPE_NAME_CACHE[dtype] = name
    return name


_TYPE_NAME_CACHE: dict[np.dtype, str] = {}  # numpy_type_name's answers (dtype.name is slow to build)


def onnx_type_name(type_proto: Any) -> str:
    """onnxruntime's spelling of an ONNX TypeProto: `tensor(float)`, `seq(tensor(int64))`, ..."""
    which = type_proto.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({_ONNX_TYPE_NAMES.get(type_proto.tensor_type.elem_type, 'undefined')})"
    if which == "sequence_type":
        return f"seq({onnx_type_name(type_proto.sequence_type.elem_type)})"
    if which == "optional_type":
        return f"optional({onnx_type_name(type_proto.optional_type.elem_type)})"
    if which == "map_type":
        key = _ONNX_TYPE_NAMES.get(type_proto.map_type.key_type, "undefined")
        return f"map({key},{onnx_type_name(type_proto.map_type.value_type)})"
    return "undefined"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, shape (dynamic dims by name, or None) and type."""

    name: str
    shape: tuple[Dim, ...] | None  # None: the rank is unknown
    type: str  # onnxruntime's spelling, e.g. "tensor(float)"
    dtype: np.dtype | None  # None: no numpy dtype for the type

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


def onnx_specs(values: Sequence[Any]) -> list[TensorSpec]:
    """Specs of ONNX ValueInfoProtos (graph inputs or outputs)."""
    from onnx import helper

    specs = []
    for value in values:
        tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
        shape: tuple[Dim, ...] | None = None
        dtype = None
        if tensor is not None:
            if tensor.HasField("shape"):
                shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                              for d in tensor.shape.dim)
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
            except (KeyError, TypeError, ValueError):
                dtype = None
        specs.append(TensorSpec(value.name, shape, onnx_type_name(value.type), dtype))
    return specs


def manifest_specs(entries: Sequence[Mapping[str, Any]]) -> list[TensorSpec]:
    """Specs of a compiled model's manifest entries (static shapes, numpy dtype names)."""
    return [TensorSpec(e["name"], tuple(e["shape"]), numpy_type_name(np.dtype(e["dtype"])), np.dtype(e["dtype"]))
            for e in entries]


def shape_text(shape: Sequence[Dim]) -> str:
    """`[1, 'batch', 784]`: static sizes as numbers, dynamic ones by name (`?` when unnamed)."""
    return "[" + ", ".join(repr(d) if isinstance(d, str) else ("?" if d is None else str(d)) for d in shape) + "]"


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "none"


def check_feeds(specs: Sequence[TensorSpec], feeds: Any, *, label: Callable[[str], str] | None = None,
                allow_missing: bool = False) -> dict[str, np.ndarray]:
    """The feeds as arrays in input order, after onnxruntime's checks; an InvalidArgument naming the input
    otherwise. Python lists and scalars are converted to the input's type (as onnxruntime does); numpy
    arrays and scalars must already have it. `label(name)` names a feed in messages (default `input 'x'`);
    with `allow_missing`, inputs not fed are left out instead of being an error."""
    label = label or (lambda name: f"input '{name}'")
    if not isinstance(feeds, Mapping):
        raise InvalidArgument(f"the feeds must be a dict from input name to array, not {type(feeds).__name__}")
    known = {spec.name: spec for spec in specs}
    for name in feeds:
        if name not in known:
            raise InvalidArgument(f"{label(name)}: the model has no input of that name "
                                  f"(its inputs: {_quoted(list(known))})")
    missing = [name for name in known if name not in feeds]
    if missing and not allow_missing:
        raise InvalidArgument(f"required input(s) {_quoted(missing)} missing from the feeds "
                              f"(given: {_quoted(list(feeds))})")
    arrays: dict[str, np.ndarray] = {}
    for name, spec in known.items():
        if name in feeds:
            arrays[name] = check_feed(spec, feeds[name], label(name))
    return arrays


def check_feed(spec: TensorSpec, value: Any, where: str) -> np.ndarray:
    """One feed against its input's spec (see `check_feeds`)."""
    if not isinstance(value, np.ndarray | np.generic):
        try:
            value = np.asarray(value, dtype=spec.dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{where}: cannot be converted to {spec.type}: {exc}") from None
    array = np.asarray(value)
    given = numpy_type_name(array.dtype)
    if given != spec.type:
        hint = f" (e.g. .astype(np.{spec.dtype.name}))" if spec.dtype is not None else ""
        raise InvalidArgument(f"{where}: data type {given} does not match the model's {spec.type}; feeds are "
                              f"never cast: convert it first{hint}")
    if spec.shape is None or array.shape == spec.shape:  # (a static shape given exactly: the common case)
        return array
    if array.ndim != len(spec.shape):
        raise InvalidArgument(f"{where}: rank {array.ndim} (shape {list(array.shape)}) does not match the model's "
                              f"rank {len(spec.shape)} (shape {shape_text(spec.shape)})")
    for axis, (got, expected) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if isinstance(expected, int) and got != expected:
            raise InvalidArgument(f"{where}: shape {list(array.shape)} does not match the model's "
                                  f"{shape_text(spec.shape)} (dimension {axis} is {got}, expected {expected})")
    return array


def load_input_files(specs: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """`--input` values: `NAME=FILE.npy`, `FILE.npz` (every array by its name) or `NAME=FILE.npz` (the array
    called NAME). Returns the arrays and, per name, the file it came from."""
    feeds: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}

    def add(name: str, array: np.ndarray, source: str) -> None:
        if name in feeds:
            raise UserError(f"--input {name}: given twice ({sources[name]} and {source})")
        feeds[name] = array
        sources[name] = source

    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = "", spec
        if not file or (sep and not name):
            raise UserError(f"--input expects NAME=FILE.npy, FILE.npz or NAME=FILE.npz, got '{spec}'")
        loaded = _load_array_file(file, name)
        if isinstance(loaded, dict):
            if name:
                if name not in loaded:
                    raise UserError(f"--input {name}={file}: the archive has no array '{name}' "
                                    f"(it holds {_quoted(sorted(loaded))})")
                add(name, loaded[name], f"{file}[{name}]")
            else:
                for key, array in loaded.items():
                    add(key, array, f"{file}[{key}]")
        elif name:
            add(name, loaded, file)
        else:
            raise UserError(f"--input {file}: a .npy file holds one unnamed array; say which input it is: "
                            f"--input NAME={file}")
    return feeds, sources


def _load_array_file(file: str, name: str) -> np.ndarray | dict[str, np.ndarray]:
    where = f"--input {name + '=' if name else ''}{file}"
    if not Path(file).is_file():
        usage = "" if name else " (--input expects NAME=FILE.npy, FILE.npz or NAME=FILE.npz)"
        raise UserError(f"{where}: cannot read {file}: no such file{usage}")
    try:
        # a .npy is mapped, not read: its header is checked against the file's size before anything is allocated
        loaded = np.load(file, allow_pickle=False, mmap_mode="c")
    except ValueError as exc:
        if "mmap length" in str(exc):
            raise UserError(f"{where}: {file}'s .npy header declares more data than the file holds") from None
        raise UserError(f"{where}: cannot read {file}: not a .npy or .npz file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{where}: cannot read {file}: not a .npy or .npz file ({exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            try:
                _check_npz_headers(loaded.zip)
                return {key: loaded[key] for key in loaded.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
                raise UserError(f"{where}: cannot read {file}: {exc}") from None
    return loaded


def _check_npz_headers(archive: zipfile.ZipFile) -> None:
    """Each member's .npy header must describe no more bytes than the member holds (a header declaring 2^40 rows
    would otherwise be allocated before the read fails), and no member may inflate past the artifact bound."""
    from ttc.artifact import max_entry_bytes

    limit = max_entry_bytes()
    for info in archive.infolist():
        if info.file_size > limit:
            raise ValueError(f"member {info.filename} inflates to {info.file_size} bytes (more than {limit})")
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            needed = math.prod(shape) * dtype.itemsize
            if needed > info.file_size:
                raise ValueError(f"member {info.filename} declares {list(shape)} of {dtype} ({needed} bytes) but "
                                 f"holds {info.file_size} bytes")
