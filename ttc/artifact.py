"""The `.ttc` artifact: a zip holding the final IR text, the weights already in device format and a
manifest. Written atomically and deterministically (same input and options -> the same bytes); read
without pickle, and only when it is exactly what the compiler wrote.

    manifest.json   inputs, outputs, shapes, dtypes, arch, options, ttc version, source model path + sha256
                    + size, and `entries`: the sha256 and byte size of every other member
    program.mlir    the allocated ttmetal/ttkernel program
    weights/NNNN.npy  one packed weight each (device pages), stored uncompressed; the manifest maps names

Format version 2 (this one) records the integrity table; `read_artifact` refuses, with exit 2 naming the
member, anything that is not what the compiler wrote: an unknown format version, duplicate or unknown
members, a member larger than its recorded size or than the bound (`TTC_MAX_ENTRY_BYTES`, default 8 GiB),
a hash that differs, a manifest that breaks its schema or disagrees with program.mlir's signature, and a
host op whose embedded model points at external data. The hashes catch accidental and casual edits; an
attacker who recomputes them is out of scope (docs/hardening.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ttc.fileio import atomic_output
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttmetal

if TYPE_CHECKING:
    from ttc.compiler import CompiledModel
    from ttc.ir.core import Module

FORMAT = "ttc-artifact"
FORMAT_VERSION = 2
DEFAULT_MAX_ENTRY_BYTES = 8 << 30
MAX_MANIFEST_BYTES = 16 << 20
MAX_RANK = 32
MAX_ELEMENTS = 1 << 40  # beyond any card's DRAM; a manifest shape larger is refused before any allocation
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps keep the zip byte-identical across runs
_WEIGHT_MEMBER = re.compile(r"weights/\d{4,}\.npy")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# numpy dtypes a manifest may name for an input or output (never object, strings or structured types)
TENSOR_DTYPES = frozenset({"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32",
                           "uint16", "uint8", "bool"})


# The zip methods `_member` writes; a member using any other is refused before it is read.
WRITTEN_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


def _member(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info


def _npy_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """An array's .npy bytes as (header, data view): written and hashed without a copy of the data."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue(), memoryview(array.reshape(-1)).cast("B")


def _record(*parts: bytes | memoryview) -> dict[str, Any]:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return {"sha256": digest.hexdigest(), "size": sum(len(part) for part in parts)}


def write_artifact(path: str | Path, compiled: CompiledModel) -> None:
    """The zip: manifest.json (with every other member's sha256 and size), program.mlir, the weights. Each
    weight is hashed, then streamed into the zip, from the packed array itself (no copy of its bytes)."""
    names = sorted(compiled.device_weights)
    members = {name: f"weights/{i:04d}.npy" for i, name in enumerate(names)}
    program = str(compiled.module).encode()
    parts = {members[name]: _npy_parts(compiled.device_weights[name]) for name in names}
    entries = {"program.mlir": _record(program)} | {member: _record(*p) for member, p in parts.items()}
    manifest = dict(compiled.manifest, format=FORMAT, format_version=FORMAT_VERSION, weights=members,
                    entries=entries)
    with atomic_output(path) as handle, zipfile.ZipFile(handle, "w") as archive:
        archive.writestr(_member("manifest.json", True), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        archive.writestr(_member("program.mlir", True), program)
        for member, (header, data) in parts.items():
            info = _member(member, False)
            info.file_size = len(header) + len(data)
            with archive.open(info, "w", force_zip64=info.file_size > zipfile.ZIP64_LIMIT) as out:
                out.write(header)
                for start in range(0, len(data), 64 << 20):
                    out.write(data[start:start + (64 << 20)])


def max_entry_bytes() -> int:
    """The bound on any member's decompressed size: TTC_MAX_ENTRY_BYTES (bytes, or with a K/M/G suffix),
    default 8 GiB."""
    text = os.environ.get("TTC_MAX_ENTRY_BYTES", "").strip()
    if not text:
        return DEFAULT_MAX_ENTRY_BYTES
    match = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", text, re.IGNORECASE)
    if not match:
        raise UserError(f"TTC_MAX_ENTRY_BYTES={text!r} is not a size (bytes, or a number with K, M or G)")
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2].upper()]


# ---------------------------------------------------------------------------------------------- manifest schema


class _Schema:
    """Checks of one manifest, each failure a UserError naming the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str) -> UserError:
        return UserError(f"{self.where}: manifest.json: {field} {problem}; the artifact is damaged or was edited "
                         f"(recompile it with `ttc compile`)")

    def get(self, data: dict, key: str, kind: type | tuple[type, ...], field: str | None = None) -> Any:
        field = field or key
        if key not in data:
            raise self.fail(field, "is missing")
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(field, f"has the wrong type ({type(value).__name__})")
        return value

    def count(self, data: dict, key: str, field: str | None = None, upper: int = 1 << 62) -> int:
        value = self.get(data, key, int, field)
        if isinstance(value, bool) or not 0 <= value <= upper:
            raise self.fail(field or key, f"is out of range ({value})")
        return value


def _check_tensors(schema: _Schema, manifest: dict, kind: str) -> list[dict[str, Any]]:
    entries = schema.get(manifest, kind, list)
    if len(entries) > 100_000:
        raise schema.fail(kind, f"lists {len(entries)} tensors")
    for i, entry in enumerate(entries):
        field = f"{kind}[{i}]"
        if not isinstance(entry, dict):
            raise schema.fail(field, "is not an object")
        schema.get(entry, "name", str, f"{field}.name")
        shape = schema.get(entry, "shape", list, f"{field}.shape")
        if len(shape) > MAX_RANK:
            raise schema.fail(f"{field}.shape", f"has rank {len(shape)} (at most {MAX_RANK})")
        for d in shape:
            if d is None:
                continue  # a dynamic output dim (a host op's data-dependent result)
            if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                raise schema.fail(f"{field}.shape", f"has a bad dim {d!r}")
        if math.prod(d or 0 for d in shape) > MAX_ELEMENTS:
            raise schema.fail(f"{field}.shape", f"{shape} is larger than any device holds")
        dtype = schema.get(entry, "dtype", str, f"{field}.dtype")
        if dtype not in TENSOR_DTYPES:
            raise schema.fail(f"{field}.dtype", f"{dtype!r} is not a tensor element type")
    return entries


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """The manifest's schema: every field present, of its type and in range. Returns the `entries` table."""
    from ttc.compiler import ARCHES, DTYPES, FIDELITIES, SOFTMAX_PRECISIONS

    schema = _Schema(where)
    if not isinstance(manifest, dict):
        raise schema.fail("(the whole manifest)", "is not a JSON object")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise UserError(f"{where}: not a ttc artifact (manifest format {fmt!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise UserError(f"{where}: artifact format version {version!r} is not the one this ttc reads "
                        f"({FORMAT_VERSION}); recompile the model with this ttc (`ttc compile`)")
    schema.get(manifest, "ttc_version", str)
    arch = schema.get(manifest, "arch", str)
    if arch not in ARCHES:
        raise schema.fail("arch", f"{arch!r} is not a known arch ({', '.join(ARCHES)})")
    options = schema.get(manifest, "options", dict)
    for key, choices in (("arch", ARCHES), ("dtype", DTYPES), ("math_fidelity", FIDELITIES),
                         ("softmax_precision", SOFTMAX_PRECISIONS)):
        value = schema.get(options, key, str, f"options.{key}")
        if value not in choices:
            raise schema.fail(f"options.{key}", f"{value!r} is not one of {', '.join(choices)}")
    if options["arch"] != arch:
        raise schema.fail("options.arch", f"{options['arch']!r} disagrees with arch {arch!r}")
    _check_tensors(schema, manifest, "inputs")
    _check_tensors(schema, manifest, "outputs")
    source = schema.get(manifest, "source_model", dict)
    if source.get("path") is not None:
        schema.get(source, "path", str, "source_model.path")
    digest = source.get("sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise schema.fail("source_model.sha256", "is not a sha256 digest")
    if source.get("size") is not None:
        schema.count(source, "size", "source_model.size")
    schema.count(manifest, "host_ops")
    schema.count(manifest, "programs")
    memory = schema.get(manifest, "memory", dict)
    schema.count(memory, "dram_bytes", "memory.dram_bytes")
    schema.count(memory, "l1_peak_bytes", "memory.l1_peak_bytes")
    schema.get(memory, "resident_weights", bool, "memory.resident_weights")
    weights = schema.get(manifest, "weights", dict)
    entries = schema.get(manifest, "entries", dict)
    for name, member in weights.items():
        if not isinstance(member, str) or not _WEIGHT_MEMBER.fullmatch(member):
            raise schema.fail(f"weights[{name!r}]", f"names {member!r}, not a weights/NNNN.npy member")
    if len(set(weights.values())) != len(weights):
        raise schema.fail("weights", "maps two weights to one member")
    if set(entries) != {"program.mlir", *weights.values()}:
        extra = sorted(set(entries) - {"program.mlir", *weights.values()})
        missing = sorted({"program.mlir", *weights.values()} - set(entries))
        raise schema.fail("entries", f"does not list exactly program.mlir and the weights (extra {extra}, "
                                     f"missing {missing})")
    for member, record in entries.items():
        if not isinstance(record, dict):
            raise schema.fail(f"entries[{member!r}]", "is not an object")
        digest = schema.get(record, "sha256", str, f"entries[{member!r}].sha256")
        if not _SHA256.fullmatch(digest):
            raise schema.fail(f"entries[{member!r}].sha256", "is not a sha256 digest")
        schema.count(record, "size", f"entries[{member!r}].size")
    return entries


# ------------------------------------------------------------------------------------------------- reading


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, where: str) -> bytes:
    """The member's bytes, reading no more than `limit` of them whatever its header claims (a zip bomb stops
    at the bound)."""
    if info.file_size > limit:
        raise UserError(f"{where}: member {info.filename} inflates to {info.file_size} bytes, more than its "
                        f"recorded size or the bound ({limit} bytes)")
    chunks, total = [], 0
    with archive.open(info) as handle:
        while True:
            chunk = handle.read(min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise UserError(f"{where}: member {info.filename} inflates past its recorded size or the bound "
                                f"({limit} bytes)")
            chunks.append(chunk)
    return b"".join(chunks)


def _npy_array(data: bytes, member: str, where: str) -> np.ndarray:
    """A .npy member as an array viewing `data`: the header is checked against the bytes before anything is
    allocated (a header declaring 2^40 rows is refused, not attempted)."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"npy version {version}")
    except (ValueError, SyntaxError, TypeError) as exc:
        raise UserError(f"{where}: member {member} is not a valid .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or len(shape) > MAX_RANK:
        raise UserError(f"{where}: member {member} holds {dtype} of rank {len(shape)}, not device pages")
    count = math.prod(shape)
    offset = stream.tell()
    if count * dtype.itemsize != len(data) - offset:
        raise UserError(f"{where}: member {member} declares shape {list(shape)} of {dtype} "
                        f"({count * dtype.itemsize} bytes) but holds {len(data) - offset} bytes")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def _signature_entries(module: Module, where: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from ttc.compiler import _tensor_entries
    from ttc.ir.types import TensorType

    try:
        main = module.function("main")
    except (KeyError, ValueError, LookupError):
        raise UserError(f"{where}: program.mlir has no @main") from None
    ftype = main.type
    for t in (*ftype.inputs, *ftype.results):
        if not isinstance(t, TensorType):
            raise UserError(f"{where}: program.mlir's @main takes or returns {t}, not a tensor")
    inputs = _tensor_entries(ftype.inputs, [main.arg_attrs(i) for i in range(len(ftype.inputs))])
    outputs = _tensor_entries(ftype.results, [main.res_attrs(i) for i in range(len(ftype.results))])
    return inputs, outputs


def check_host_models(module: Module, where: str) -> None:
    """Host ops embed one-node ONNX models; one that references external data would read a file from
    wherever ttc runs. Refused."""
    for op in module.walk():
        if op.name == ttmetal.HOST_COMPUTE.name:
            host_model_proto(op, where)


def host_model_proto(op: Any, where: str = "program") -> Any:
    """The ONNX model a `ttmetal.host_compute` op embeds, checked: it must parse and hold all its data inline."""
    import base64
    import binascii

    import onnx

    text = op.attributes.get("model")
    try:
        proto = onnx.load_model_from_string(base64.b64decode(text, validate=True))
    except (TypeError, ValueError, binascii.Error) as exc:
        raise UserError(f"{where}: host op at {op.loc} embeds a model that does not parse ({exc})") from None
    except Exception as exc:  # protobuf's DecodeError, which protobuf does not export under one name
        raise UserError(f"{where}: host op at {op.loc} embeds a model that does not parse ({exc})") from None
    tensors = list(proto.graph.initializer) + [attr.t for node in proto.graph.node for attr in node.attribute
                                              if attr.HasField("t")]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise UserError(f"{where}: host op at {op.loc} embeds a model whose tensor '{tensor.name}' references "
                            f"external data; host-op models must hold their data inline")
    return proto


def read_artifact(path: str | Path) -> CompiledModel:
    from ttc.compiler import CompiledModel, count_host_ops
    from ttc.ir.parser import parse_module
    from ttc.ir.verifier import verify

    manifest, program, weights = read_members(path)
    where = str(path)
    module = parse_module(program, f"{path}:program.mlir")
    verify(module)
    inputs, outputs = _signature_entries(module, where)
    for kind, expected in (("inputs", inputs), ("outputs", outputs)):
        if manifest[kind] != expected:
            raise UserError(f"{where}: manifest.json's {kind} {manifest[kind]} disagree with program.mlir's "
                            f"signature {expected}; the artifact was edited (recompile it)")
    programs = sum(1 for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name)
    for field, actual in (("programs", programs), ("host_ops", count_host_ops(module))):
        if manifest[field] != actual:
            raise UserError(f"{where}: manifest.json's {field} {manifest[field]} disagrees with program.mlir "
                            f"({actual}); the artifact was edited (recompile it)")
    from ttc.ir.dialects.tt import DEVICE_ATTR_NAME

    device = module.attributes.get(DEVICE_ATTR_NAME)
    if getattr(device, "arch", None) != manifest["arch"]:
        raise UserError(f"{where}: manifest.json's arch {manifest['arch']!r} disagrees with program.mlir's "
                        f"device {getattr(device, 'arch', None)!r}")
    used = {op.attributes["value"].name for op in module.walk() if op.name == ttmetal.WRITE_CONSTANT.name}
    if used != set(weights):
        raise UserError(f"{where}: the weights {sorted(set(weights) ^ used)[:5]} are not exactly those "
                        f"program.mlir writes")
    check_host_models(module, where)
    manifest = {k: v for k, v in manifest.items() if k not in ("weights", "entries")}
    return CompiledModel(module, weights, manifest)


def read_members(path: str | Path) -> tuple[dict[str, Any], str, dict[str, np.ndarray]]:
    """The verified manifest, program text and weight arrays of the artifact at `path` (UserError, exit 2,
    naming the member, for anything that is not exactly what the compiler wrote)."""
    path = Path(path)
    where = str(path)
    limit = max_entry_bytes()
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise UserError(f"{where}: the zip holds members named twice ({', '.join(duplicates[:5])}); "
                                f"the artifact was tampered with")
            foreign = [info for info in infos if info.compress_type not in WRITTEN_COMPRESSIONS]
            if foreign:
                raise UserError(f"{path}: not a valid .ttc artifact: a member uses a compression ttc never writes "
                                f"(member {foreign[0].filename}, zip method {foreign[0].compress_type})")
            by_name = {info.filename: info for info in infos}
            if "manifest.json" not in by_name:
                raise UserError(f"{where}: not a ttc artifact (no manifest.json)")
            raw = _read_member(archive, by_name["manifest.json"], MAX_MANIFEST_BYTES, where)
            try:
                manifest = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise UserError(f"{where}: manifest.json is not valid JSON ({exc})") from None
            entries = check_manifest(manifest, where)
            unknown = sorted(set(by_name) - set(entries) - {"manifest.json"})
            if unknown:
                raise UserError(f"{where}: unknown members {', '.join(unknown[:5])} (not in the manifest); the "
                                f"artifact was tampered with")
            blobs: dict[str, bytes] = {}
            for member, record in entries.items():
                if member not in by_name:
                    raise UserError(f"{where}: member {member} is missing")
                data = _read_member(archive, by_name[member], min(record["size"], limit), where)
                if len(data) != record["size"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
                    raise UserError(f"{where}: member {member} does not match its sha256 in the manifest; the "
                                    f"artifact is damaged or was edited (recompile it)")
                blobs[member] = data
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a .ttc artifact") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: not a valid .ttc artifact ({exc})") from None
    try:
        program = blobs["program.mlir"].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: program.mlir is not UTF-8 text ({exc})") from None
    weights = {name: _npy_array(blobs[member], member, where) for name, member in manifest["weights"].items()}
    return manifest, program, weights
