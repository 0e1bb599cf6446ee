"""`ttc.InferenceSession`: onnxruntime's session API over ttc's compiler and emulated Grayskull.

    import numpy as np, ttc
    session = ttc.InferenceSession("model.onnx")              # as onnxruntime.InferenceSession(...)
    [logits] = session.run(None, {"input": np.zeros((1, 784), np.float32)})
    session.get_inputs()[0].name, session.get_inputs()[0].shape, session.get_inputs()[0].type

A script written for onnxruntime runs unchanged: `run(output_names, feeds)` returns a list of arrays,
`get_inputs()` / `get_outputs()` describe the model as onnxruntime does (dynamic dimensions by their names,
types spelt `tensor(float)`), and feeds are checked as onnxruntime checks them (unknown or missing input,
rank, static dimensions, element type: an error, never a silent cast). onnxruntime's `sess_options`,
`providers`, `provider_options` and `run_options` are accepted; where they mean nothing for ttc a one-line
warning says they are ignored (`sess_options.intra_op_num_threads` sets the native emulator's host threads).

ttc compiles ahead of time for static shapes. A model with dynamic dimensions is compiled once per distinct
signature of input shapes, on the first run with those shapes; the compiled models are kept in a bounded LRU
cache (`cache_size`, default 8), so alternating between a few shapes compiles each only once. A `.ttc`
artifact can be opened too (its shapes are fixed).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx

from ttc.compiler import CompiledModel, CompileOptions, compile_for_api
from ttc.feeds import Dim, InvalidArgument, TensorSpec, check_feeds, manifest_specs, onnx_specs
from ttc.ir.diagnostics import UserError

DEFAULT_CACHE_SIZE = 8  # compiled shape signatures a session keeps (least recently used goes first)
PROVIDER = "TtcGrayskullEmulator"  # what get_providers() names: ttc's emulated device
_UNSET_MODEL_VERSION = 2**63 - 1  # onnxruntime's model version when the model sets none


class IgnoredArgumentWarning(UserWarning):
    """An onnxruntime argument that means nothing for ttc, accepted and ignored."""


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: name, shape (ints; dynamic dims by name, or None)
    and type (`tensor(float)`)."""

    name: str
    type: str
    shape: list[Dim]

    def __repr__(self) -> str:
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


@dataclass(frozen=True)
class ModelMetadata:
    """onnxruntime's `ModelMetadata`: what the model file says about itself."""

    producer_name: str = ""
    graph_name: str = ""
    domain: str = ""
    description: str = ""
    graph_description: str = ""
    version: int = _UNSET_MODEL_VERSION
    custom_metadata_map: dict[str, str] = field(default_factory=dict)


class CacheInfo(NamedTuple):
    """Like functools' cache_info: hits and misses (compiles) of the shape cache, its bound and size."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def _node_arg(spec: TensorSpec) -> NodeArg:
    return NodeArg(spec.name, spec.type, list(spec.shape) if spec.shape is not None else [])


class InferenceSession:
    """A drop-in for `onnxruntime.InferenceSession` that compiles the model for the emulated Grayskull.

    `path_or_bytes`: an ONNX model file (its external data beside it), the serialized model, an
    `onnx.ModelProto`, or a `.ttc` artifact. The keyword options are `ttc.compile`'s (`arch`, `dtype`,
    `math_fidelity`, `softmax_precision`), then `emulator` ("native" or "reference") and `threads` for the
    runs, and `cache_size`, the number of compiled input-shape signatures kept (default 8).
    """

    def __init__(self, path_or_bytes: str | os.PathLike[str] | bytes | onnx.ModelProto,
                 sess_options: Any = None, providers: Sequence[Any] | None = None,
                 provider_options: Sequence[Any] | None = None, *, arch: str = "e150", dtype: str = "bf16",
                 math_fidelity: str = "hifi4", softmax_precision: str = "bf16", emulator: str | None = None,
                 threads: int | None = None, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if not isinstance(cache_size, int) or cache_size < 1:
            raise UserError(f"cache_size= must be a positive number of compiled shapes, not {cache_size!r}")
        if emulator is not None and emulator not in ("native", "reference"):
            raise UserError(f"emulator= must be 'native' or 'reference', not {emulator!r}")
        self._options = CompileOptions(arch=arch, dtype=dtype, math_fidelity=math_fidelity,
                                       softmax_precision=softmax_precision)
        self._sess_options = sess_options
        self._emulator = emulator
        self._threads = threads if threads is not None else _threads_from(sess_options)
        self._note_ignored(sess_options, providers, provider_options)
        self._cache: OrderedDict[tuple[tuple[int, ...], ...], CompiledModel] = OrderedDict()
        self._cache_size = cache_size
        self._hits = self._misses = 0
        self._lock = threading.Lock()
        self._last: CompiledModel | None = None
        self._source: str | Path | onnx.ModelProto
        self._name = "an in-memory model"
        proto = self._open(path_or_bytes)
        if proto is not None:
            self._inputs = onnx_specs(_graph_inputs(proto))
            self._outputs = onnx_specs(proto.graph.output)
            self._meta = _metadata(proto)
            if all(spec.is_static for spec in self._inputs):  # one signature: compile now, as onnxruntime does
                self._compiled_for({})

    def _open(self, source: Any) -> onnx.ModelProto | None:
        """The model's proto (None for an artifact, which is loaded here)."""
        from ttc.fileio import ARTIFACT, check_onnx_path, file_kind
        from ttc.frontend.loader import read_model

        if isinstance(source, bytes | bytearray | memoryview):
            try:
                proto = onnx.load_from_string(bytes(source))
            except Exception as exc:  # protobuf's DecodeError and the like
                raise UserError(f"the bytes given are not a serialized ONNX model ({exc})") from None
            if not proto.HasField("graph"):
                raise UserError("the bytes given are not a serialized ONNX model (they hold no graph)")
            self._source = proto
            return proto
        if isinstance(source, onnx.ModelProto):
            self._source = source
            return source
        if not isinstance(source, str | os.PathLike):
            raise TypeError(f"InferenceSession takes a model path, bytes or an onnx.ModelProto, not "
                            f"{type(source).__name__}")
        path = Path(source)
        self._name = path.name
        if path.is_file() and file_kind(path) == ARTIFACT:
            from ttc.artifact import read_artifact

            compiled = read_artifact(path)
            self._inputs = manifest_specs(compiled.manifest["inputs"])
            self._outputs = manifest_specs(compiled.manifest["outputs"])
            producer = (compiled.manifest.get("source_model") or {}).get("producer", "")
            self._meta = ModelMetadata(producer_name=producer)
            self._source = path
            self._cache[self._signature(self._inputs, {})] = compiled
            return None
        if path.is_file():
            check_onnx_path(path)
        proto, _ = read_model(path)  # a clear error for a missing or malformed file
        self._source = path
        return proto

    @staticmethod
    def _note_ignored(sess_options: Any, providers: Any, provider_options: Any) -> None:
        if sess_options is not None:
            warnings.warn("ttc.InferenceSession: sess_options mean nothing to ttc's compiler and are ignored "
                          "(only intra_op_num_threads is used: the native emulator's host threads)",
                          IgnoredArgumentWarning, stacklevel=3)
        if providers:
            warnings.warn(f"ttc.InferenceSession: providers={list(providers)!r} ignored: ttc runs every model on "
                          "its emulated Grayskull", IgnoredArgumentWarning, stacklevel=3)
        if provider_options:
            warnings.warn("ttc.InferenceSession: provider_options ignored: ttc has no execution providers",
                          IgnoredArgumentWarning, stacklevel=3)

    # -- onnxruntime's API ----------------------------------------------------------------------------

    def get_inputs(self) -> list[NodeArg]:
        return [_node_arg(spec) for spec in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [_node_arg(spec) for spec in self._outputs]

    def get_modelmeta(self) -> ModelMetadata:
        return self._meta

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {PROVIDER: {}}

    def get_session_options(self) -> Any:
        return self._sess_options

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        """The named outputs (all when `output_names` is None or empty) for `input_feed` (name -> array)."""
        if run_options is not None:
            warnings.warn("ttc.InferenceSession.run: run_options ignored", IgnoredArgumentWarning, stacklevel=2)
        feeds = check_feeds(self._inputs, input_feed)
        known = {spec.name: spec for spec in self._outputs}
        names = list(output_names) if output_names else list(known)
        for name in names:
            if name not in known:
                raise InvalidArgument(f"output '{name}': the model has no output of that name "
                                      f"(its outputs: {', '.join(repr(n) for n in known)})")
        with self._lock:
            compiled = self._compiled_for(feeds)
            outputs = compiled.run(feeds, emulator=self._emulator, threads=self._threads)
            self._last = compiled
        return [_as_declared(outputs[name], known[name]) for name in names]

    # -- ttc's additions ---------------------------------------------------------------------------------

    def cache_info(self) -> CacheInfo:
        """Hits and misses of the compiled-shape cache (a miss is a compile), its bound and its size."""
        return CacheInfo(self._hits, self._misses, self._cache_size, len(self._cache))

    @property
    def last_compiled(self) -> CompiledModel | None:
        """The compiled model of the last run (its `.profile` has the modelled device time per program)."""
        return self._last

    def __repr__(self) -> str:
        inputs = ", ".join(f"{spec.name}: {list(spec.shape or [])} {spec.type}" for spec in self._inputs)
        return (f"<ttc.InferenceSession {self._name} for {self._options.arch} ({self._options.dtype}, "
                f"{self._options.math_fidelity}): inputs ({inputs}); {len(self._cache)} of at most "
                f"{self._cache_size} compiled shape(s) cached>")

    # -- compiling per shape ------------------------------------------------------------------------------

    @staticmethod
    def _signature(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], ...]:
        """The shapes of the inputs with dynamic dimensions, in input order (empty for a static model)."""
        return tuple(tuple(feeds[spec.name].shape) for spec in specs if not spec.is_static)

    def _compiled_for(self, feeds: Mapping[str, np.ndarray]) -> CompiledModel:
        """The model compiled for the shapes of `feeds` (only the inputs with dynamic dimensions matter)."""
        key = self._signature(self._inputs, feeds)
        compiled = self._cache.get(key)
        if compiled is not None:
            self._hits += 1
            self._cache.move_to_end(key)
            return compiled
        shapes = {spec.name: tuple(feeds[spec.name].shape) for spec in self._inputs if not spec.is_static}
        options = CompileOptions(arch=self._options.arch, dtype=self._options.dtype,
                                 math_fidelity=self._options.math_fidelity,
                                 softmax_precision=self._options.softmax_precision, input_shapes=shapes)
        compiled = compile_for_api(self._source, options)  # type: ignore[arg-type]
        self._misses += 1
        self._cache[key] = compiled
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return compiled


def _threads_from(sess_options: Any) -> int | None:
    threads = getattr(sess_options, "intra_op_num_threads", 0)
    return threads if isinstance(threads, int) and threads > 0 else None


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    from ttc.frontend.loader import graph_inputs

    return graph_inputs(proto)


def _metadata(proto: onnx.ModelProto) -> ModelMetadata:
    return ModelMetadata(producer_name=proto.producer_name, graph_name=proto.graph.name, domain=proto.domain,
                         description=proto.doc_string, graph_description=proto.graph.doc_string,
                         version=proto.model_version if proto.HasField("model_version") else _UNSET_MODEL_VERSION,
                         custom_metadata_map={p.key: p.value for p in proto.metadata_props})


def _as_declared(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """An output in the element type the model declares (the emulator returns floats as float32)."""
    if spec.dtype is not None and value.dtype != spec.dtype and spec.dtype.kind == value.dtype.kind == "f":
        return value.astype(spec.dtype)
    return value
