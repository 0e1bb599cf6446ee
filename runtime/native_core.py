"""Loads the native execution core (`ttc.runtime._native`, built from runtime/native/ by the package's build).

There is no run-time compiler and no slow fallback: when the module is missing, or older than its sources
in an editable install (a C++ source was edited after `pip install -e .`), importing this module raises a
`NativeCoreError` that says how to rebuild. The sources are only present in a source checkout; an
installed wheel has no stale check to make.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ttc.ir.diagnostics import UserError

_SOURCES = Path(__file__).resolve().parent / "native"
_REBUILD = "rebuild it with `pip install -e .` (or `pip install .`) from the project's folder"


class NativeCoreError(UserError):
    """The native core cannot be used as built."""


def stale_sources(module_file: str | Path, sources: Path | None = None) -> list[Path]:
    """The C++ sources newer than the built module (empty when it is up to date or no sources are here)."""
    sources = _SOURCES if sources is None else sources
    if not sources.is_dir():
        return []
    built = Path(module_file).stat().st_mtime
    return sorted(path for path in sources.iterdir()
                  if path.suffix in (".cpp", ".h") and path.stat().st_mtime > built)


def load() -> ModuleType:
    try:
        from ttc.runtime import _native
    except ImportError as exc:
        raise NativeCoreError(f"ttc's native execution core is not built ({exc}); {_REBUILD}") from None
    stale = stale_sources(_native.__file__)
    if stale:
        names = ", ".join(path.name for path in stale[:3]) + (" ..." if len(stale) > 3 else "")
        raise NativeCoreError(f"ttc's native execution core is older than its sources ({names} changed since "
                              f"it was built); {_REBUILD}")
    return _native


native = load()
