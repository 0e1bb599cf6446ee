"""Which pass needs which before it, and how the IR shows that the needed one has run.

A pass run on IR that lacks its prerequisite would fail on a symptom ("constant ... is not a device
weight") or quietly do nothing (allocate on ttir); the pass manager asks `missing_prerequisite` first and
names the pass that should have run. The IR, not the pipeline, is the judge, because `ttc opt` may start from
a dump taken halfway down the pipeline; a prerequisite that ran earlier in the same pipeline always counts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from ttc.ir.core import Function, Module
from ttc.ir.dialects import ttir, ttmetal

TO_LAYOUT = ttir.TO_LAYOUT.name
HOST_COMPUTE = ttmetal.HOST_COMPUTE.name


def _has_ttir(func: Function) -> bool:
    return any(op.name.startswith("ttir.") for op in func.body.ops)


def _lowered(func: Function) -> bool:
    return any(op.name.startswith("ttmetal.") and op.name != HOST_COMPUTE for op in func.body.ops)


def tilized(module: Module) -> bool:
    """Every function that computes with ttir ops has its host<->device edges (tilize's to_layout ops)."""
    return all(not _has_ttir(f) or _lowered(f) or any(op.name == TO_LAYOUT for op in f.body.ops)
               for f in module.functions)


def lowered(module: Module) -> bool:
    """No function computes with ttir ops any more: each is a ttmetal host schedule."""
    return not any(_has_ttir(f) for f in module.functions)


# pass -> (the pass it needs before it, what the IR looks like once that one has run, what is missing otherwise)
PREREQUISITES: dict[str, tuple[str, Callable[[Module], bool], str]] = {
    "layout": ("tilize", tilized, "its tensors are not on the device yet (no #tt.layout, no to_layout edges)"),
    "grid": ("tilize", tilized, "its tensors are not on the device yet (no #tt.layout, no to_layout edges)"),
    "lower-to-kernels": ("tilize", tilized,
                         "its tensors are not on the device yet (no #tt.layout, no to_layout edges)"),
    "allocate": ("lower-to-kernels", lowered, "it holds ttir ops, not a host schedule of kernel programs"),
}


def missing_prerequisite(name: str, done: Collection[str], module: Module) -> str | None:
    """Why pass `name` cannot run on `module` after the passes `done` (None when it can)."""
    entry = PREREQUISITES.get(name)
    if entry is None:
        return None
    needed, shown, symptom = entry
    if needed in done or shown(module):
        return None
    return (f"pass '{name}' needs '{needed}' to have run first: {symptom}; "
            f"put {needed} before {name} in the pipeline")
