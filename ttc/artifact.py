"""The `.ttc` artifact: a zip holding the final IR text, the weights already in device format and a
manifest. Written atomically and deterministically (same input and options -> the same bytes); read
without pickle.

    manifest.json   inputs, outputs, shapes, dtypes, arch, options, ttc version, source model path + sha256
    program.mlir    the allocated ttmetal/ttkernel program
    weights/NNNN.npy  one packed weight each (uint8 pages), stored uncompressed; the manifest maps names
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ttc.fileio import atomic_output
from ttc.ir.diagnostics import UserError

if TYPE_CHECKING:
    from ttc.compiler import CompiledModel

_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps keep the zip byte-identical across runs


def _member(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_artifact(path: str | Path, compiled: CompiledModel) -> None:
    names = sorted(compiled.device_weights)
    members = {name: f"weights/{i:04d}.npy" for i, name in enumerate(names)}
    manifest = dict(compiled.manifest, weights=members)
    with atomic_output(path) as handle, zipfile.ZipFile(handle, "w") as archive:
        archive.writestr(_member("manifest.json", True), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        archive.writestr(_member("program.mlir", True), str(compiled.module))
        for name in names:
            archive.writestr(_member(members[name], False), _npy_bytes(compiled.device_weights[name]))


def read_artifact(path: str | Path) -> CompiledModel:
    from ttc.compiler import CompiledModel
    from ttc.ir.parser import parse_module
    from ttc.ir.verifier import verify

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            if manifest.get("format") != "ttc-artifact":
                raise UserError(f"{path}: not a ttc artifact (manifest format {manifest.get('format')!r})")
            module = parse_module(archive.read("program.mlir").decode(), f"{path}:program.mlir")
            weights = {}
            for name, member in manifest.get("weights", {}).items():
                with archive.open(member) as handle:
                    weights[name] = np.lib.format.read_array(io.BytesIO(handle.read()), allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a valid .ttc artifact ({exc})") from None
    verify(module)
    manifest.pop("weights", None)
    return CompiledModel(module, weights, manifest)
