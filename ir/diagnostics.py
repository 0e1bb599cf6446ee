"""Errors with a place: every user-facing failure in ttc is a `TtcError` with an exit code.

Exit codes (shared by every command):
    0 success, 1 golden check failed, 2 user error (bad model, unsupported op, bad IR, usage,
    does not fit the device), 3 device fault found by the emulator, 4 internal error.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_GOLDEN_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DEVICE_FAULT = 3
EXIT_INTERNAL_ERROR = 4


class TtcError(Exception):
    """Base of every error ttc reports to a user without a traceback."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(TtcError):
    """Bad input: a malformed model, an unsupported op, bad IR, a bad option."""


class GoldenMismatch(TtcError):
    exit_code = EXIT_GOLDEN_FAILED


class InternalCompilerError(TtcError):
    """A bug of ttc itself found by its own checks (a pass emitting IR the verifier rejects): exit 4, never
    reported as the user's fault."""

    exit_code = EXIT_INTERNAL_ERROR


class DeviceFault(TtcError):
    """The emulated device caught a faulty program (bad address, CB misuse, deadlock...)."""

    exit_code = EXIT_DEVICE_FAULT


@dataclass(frozen=True)
class SourceSpan:
    """A position in a text file (1-based line and column) with the text of that line."""

    file: str
    line: int
    column: int
    line_text: str

    def render(self) -> str:
        caret = " " * (self.column - 1) + "^"
        return f"{self.line_text}\n{caret}"


def render_diagnostic(message: str, *, span: SourceSpan | None = None, where: str | None = None,
                      excerpt: str | None = None, severity: str = "error") -> str:
    """Format a diagnostic the way compilers do: `file:line:col: error: msg` + quoted line + caret.

    Without a source span (an op built by the importer or a pass), `where` names the op's location
    (usually the ONNX node) and `excerpt` quotes the printed op.
    """
    if span is not None:
        return f"{span.file}:{span.line}:{span.column}: {severity}: {message}\n{span.render()}"
    head = f"{where}: {severity}: {message}" if where else f"{severity}: {message}"
    return f"{head}\n  {excerpt}" if excerpt else head


class IRError(UserError):
    """Invalid IR text or an IR that fails verification; the message already names the place."""
