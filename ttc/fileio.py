"""Atomic file output: write beside the target, then rename, so no reader ever sees half a file."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ttc.ir.core import Module
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
