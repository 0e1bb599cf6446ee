"""The native core's build contract: compiled by the package's build with exact floating point, and a module
older than its sources refused at import with a message that says how to rebuild."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ttc.runtime import native_core

ROOT = Path(__file__).resolve().parents[2]


def test_the_extension_is_built_without_contraction_or_fast_math() -> None:
    setup = (ROOT / "setup.py").read_text()
    assert '"-ffp-contract=off"' in setup
    assert "-ffast-math" not in setup.replace('"-fno-fast-math"', "").replace("`-ffast-math`", "")


def test_the_built_module_is_the_one_imported() -> None:
    module = native_core.native
    assert Path(module.__file__).parent == ROOT / "runtime"
    assert native_core.stale_sources(module.__file__) == []


def _touch(path: Path, mtime: float) -> Path:
    path.write_text("// source\n")
    os.utime(path, (mtime, mtime))
    return path


def test_sources_newer_than_the_module_are_stale(tmp_path: Path) -> None:
    sources = tmp_path / "native"
    sources.mkdir()
    module = _touch(tmp_path / "_native.so", 1_000)
    _touch(sources / "old.cpp", 900)
    newer = _touch(sources / "program.cpp", 1_100)
    header = _touch(sources / "numerics.h", 1_200)
    _touch(sources / "DESIGN.md", 1_300)  # not a source
    assert native_core.stale_sources(module, sources) == [header, newer]
    assert native_core.stale_sources(module, tmp_path / "missing") == []


def test_a_stale_module_is_refused_with_the_rebuild_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = tmp_path / "native"
    sources.mkdir()
    _touch(sources / "program.cpp", Path(native_core.native.__file__).stat().st_mtime + 60)
    monkeypatch.setattr(native_core, "_SOURCES", sources)
    with pytest.raises(native_core.NativeCoreError, match=r"older than its sources \(program.cpp changed.*pip install -e \."):
        native_core.load()
