"""Atomic file output: write beside the target, then rename, so no reader ever sees half a file."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ttc.ir.core import FUNC_OP, Module
from ttc.ir.diagnostics import UserError


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file next to `path`; on success it replaces `path`, on failure it vanishes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_output(path, "w") as handle:
        handle.write(text)


def weights_path(ir_path: str | Path) -> Path:
    """`model.mlir` keeps its weights in `model.weights.npz` beside it."""
    path = Path(ir_path)
    stem = path.name[: -len(".mlir")] if path.name.endswith(".mlir") else path.name
    return path.with_name(f"{stem}.weights.npz")


def write_weights(path: str | Path, weights: dict[str, np.ndarray]) -> None:
    with atomic_output(path) as handle:
        np.savez(handle, **{name: np.asarray(data) for name, data in sorted(weights.items())})


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read weights from {path}: {exc}") from None


def write_module(path: str | Path, module: Module) -> None:
    """Write the IR text and, when it has weights, NAME.weights.npz beside it."""
    if module.weights:
        write_weights(weights_path(path), module.weights)
    write_text(path, str(module))


ARTIFACT = "a .ttc artifact (a compiled model)"
IR_TEXT = "IR text (.mlir)"
NPY = "a numpy .npy array"
NPZ = "a numpy .npz archive"


def file_kind(path: str | Path) -> str | None:
    """What a file is, judged by its first bytes, when it is one of ttc's other file types (a .ttc artifact,
    IR text, a .npy array, a .npz archive); None for anything else (an ONNX model among them)."""
    import zipfile

    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if head.startswith(b"\x93NUMPY"):
        return NPY
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if "manifest.json" in names:
            return ARTIFACT
        return NPZ if names and all(name.endswith(".npy") for name in names) else None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = (line.strip() for line in text.splitlines())
    first = next((line for line in lines if line and not line.startswith("//")), "")
    return IR_TEXT if first.startswith(("module", '"builtin.module"', FUNC_OP, "#")) else None


def not_onnx_message(path: str | Path, kind: str) -> str:
    """The error for a file of another type given where an ONNX model is expected."""
    hints = {ARTIFACT: "run it with `ttc run`, inspect it with `ttc inspect`, or load it with ttc.load()",
             IR_TEXT: "`ttc opt` reads IR text; `ttc compile` and `ttc run` take the ONNX model it came from",
             NPY: "model inputs are given with --input NAME=FILE.npy",
             NPZ: "model inputs are given with --input FILE.npz"}
    return f"{path}: this is {kind}, not an ONNX model; {hints[kind]}"


def check_onnx_path(path: str | Path) -> None:
    """A UserError when `path` holds one of ttc's other file types instead of an ONNX model."""
    kind = file_kind(path)
    if kind is not None:
        raise UserError(not_onnx_message(path, kind))
