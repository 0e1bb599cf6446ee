"""Build of ttc's native execution core (`ttc.runtime._native`, C++17 with pybind11).

Everything else about the package is declared in pyproject.toml. The extension is compiled by
`pip install -e .` (and by any wheel build); there is no compiler or JIT at run time. The flags keep
the emulator bit-exact: `-ffp-contract=off` forbids fused multiply-adds (they skip a rounding), and
`-ffast-math` (which reorders sums and drops NaN/inf rules) is never used. A compile error fails the
install: there is no slow fallback.

An in-place (editable) build also byte-compiles the package's Python sources, as pip does for a
regular install: without it, a machine that sets PYTHONDONTWRITEBYTECODE compiles every module from
source on every start (about a quarter of a second of `ttc run`'s start-up). Python checks each cached
file against its source, so an edited module is compiled afresh, never run stale.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

NATIVE = Path("runtime") / "native"

# -march=native: the extension is built on the machine that runs it (an editable install); set
# TTC_NATIVE_MARCH (e.g. "x86-64-v2") to build for another machine.
MARCH = os.environ.get("TTC_NATIVE_MARCH", "native")

extension = Pybind11Extension(
    "ttc.runtime._native",
    sorted(str(path) for path in NATIVE.glob("*.cpp")),
    include_dirs=[str(NATIVE)],
    cxx_std=17,
    extra_compile_args=["-O3", f"-march={MARCH}", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
                        "-Wall", "-Wextra", "-Wno-unused-parameter"],
    extra_link_args=["-pthread"],
)

# The folders of the package's Python sources (pyproject.toml's package-dir).
SOURCES = ["ttc", "ir", "frontend", "passes", "backend", "runtime"]


class BuildExt(build_ext):
    def run(self) -> None:
        super().run()
        if self.inplace:  # an editable install runs its sources from here: cache their bytecode too
            for folder in SOURCES:
                if not compileall.compile_dir(folder, quiet=1):
                    raise SystemExit(f"byte-compiling {folder}/ failed")


setup(ext_modules=[extension], cmdclass={"build_ext": BuildExt})
