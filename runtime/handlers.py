"""The registry of the Python emulator's ttkernel op handlers, shared by the modules that define them.

A handler runs one op of one kernel on every core of the program at once: `handler(p, k, op, attrs)`
(program, kernel, op, attributes with their defaults filled in). It returns None when the op is done,
or a `Blocked` when it cannot proceed yet (the scheduler retries it after the other kernels ran).

`dataflow.py` (CBs, NoC) and `compute.py` (Dst, math, pack) register their handlers with `@handler`, and
`interpreter.py` its kernel-value ops; importing `ttc.runtime.interpreter` imports them all, so the registry is
complete from then on (one handler per ttkernel op but `ttkernel.for`, which the scheduler runs itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ttc.ir.core import Operation

if TYPE_CHECKING:  # types only: the scheduler imports the handler modules, not the other way round
    from ttc.runtime.interpreter import Kernel, Program


@dataclass(frozen=True)
class Blocked:
    """Why a kernel cannot proceed: it waits in `op` for `want` pages of CB `cb`, or (what "semaphore") for
    semaphore `cb` to reach `want` on core `core` (in grid order), which holds `holds`."""

    op: Operation
    cb: int
    want: int
    what: str  # "free", "filled" or "semaphore"
    core: int = -1
    holds: int = 0


Handler = Callable[["Program", "Kernel", Operation, dict[str, Any]], Blocked | None]
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `ttkernel.<name>`."""
    def register(fn: Handler) -> Handler:
        HANDLERS[f"ttkernel.{name}"] = fn
        return fn

    return register
