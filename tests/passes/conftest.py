"""Fixtures for pass tests: run a pipeline on IR text, read back @main's body, CHECK-style matching."""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest

from ttc.ir import Module, parse_module, print_module
from ttc.passes import PassManager, manager


class IRHarness:
    """Helpers used as `ir.module(...)`, `ir.run(...)`, `ir.body(...)` and `ir.check(...)` in tests."""

    def module(self, args: str, result: str, *ops: str) -> str:
        """The text of a one-function module `@main(args) -> result`; `ops` include its func.return."""
        body = "\n    ".join(ops)
        return f"module {{\n  func.func @main({args}) -> {result} {{\n    {body}\n  }}\n}}\n"

    def run(self, pipeline: str, text: str, weights: dict[str, np.ndarray] | None = None) -> Module:
        """Parse `text`, run `pipeline` on it with verification, return the module."""
        module = parse_module(textwrap.dedent(text), "test.mlir", weights)
        PassManager(pipeline, stream=io.StringIO()).run(module)
        return module

    def body(self, module: Module) -> str:
        """The printed ops of @main, one per line, without indentation."""
        lines = print_module(module).splitlines()
        start = next(i for i, line in enumerate(lines) if "func.func @main" in line)
        end = next(i for i in range(start, len(lines)) if lines[i].strip() == "}")
        return "\n".join(line.strip() for line in lines[start + 1:end])

    def run_body(self, pipeline: str, text: str, weights: dict[str, np.ndarray] | None = None) -> str:
        return self.body(self.run(pipeline, text, weights))

    def check(self, output: str, *checks: str) -> None:
        """FileCheck's CHECK: each check is a substring of a line after the previous check's line."""
        lines = output.splitlines()
        at = 0
        for check in checks:
            found = next((i for i in range(at, len(lines)) if check in lines[i]), None)
            assert found is not None, f"CHECK not found after line {at + 1}: {check!r}\n--- output:\n{output}"
            at = found + 1


@pytest.fixture
def ir() -> IRHarness:
    return IRHarness()


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register passes without leaking them into other tests."""
    monkeypatch.setattr(manager, "_REGISTRY", dict(manager._REGISTRY))
