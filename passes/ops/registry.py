"""Op name -> `DeviceOp`, and what every pass asks of a device op through it.

Every module of this package is imported on the first lookup, and an op module registers its kinds when
imported: adding a device op is adding its module (docs/adding-a-device-op.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from ttc.ir.core import Operation, Value
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import CBConfigAttr
from ttc.passes.ops.geometry import cb_bytes, l1_share, tensor
from ttc.passes.ops.interface import DeviceOp

_BY_NAME: dict[str, tuple[DeviceOp, ...]] = {}
_ONLY: dict[str, DeviceOp] = {}  # op names run by one kind that takes every op of the name (the common case)
_BY_KIND: dict[str, DeviceOp] = {}
_loaded = False


def register(device_op: DeviceOp) -> DeviceOp:
    """Add a device-op kind (at import of its module); a kind registered twice is an error."""
    if not device_op.kind or not device_op.op_names:
        raise ValueError(f"{type(device_op).__name__} names no kind or no ops")
    if device_op.kind in _BY_KIND:
        raise ValueError(f"device-op kind '{device_op.kind}' is registered twice")
    _BY_KIND[device_op.kind] = device_op
    for name in sorted(device_op.op_names):
        _BY_NAME[name] = (*_BY_NAME.get(name, ()), device_op)
        kinds = _BY_NAME[name]
        if len(kinds) == 1 and type(device_op).matches is DeviceOp.matches:
            _ONLY[name] = device_op
        else:
            _ONLY.pop(name, None)
    return device_op


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module(__name__.rpartition(".")[0])
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def device_op(op: Operation) -> DeviceOp | None:
    """The kind that runs `op` as a device program, None when it is none (a host op, a transfer...)."""
    if not _loaded:
        _load()
    only = _ONLY.get(op.name)
    if only is not None:
        return only
    for candidate in _BY_NAME.get(op.name, ()):
        if candidate.matches(op):
            return candidate
    return None


def device_kind(kind: str) -> DeviceOp:
    _load()
    return _BY_KIND[kind]


def device_ops() -> dict[str, DeviceOp]:
    """Every registered kind, by kind."""
    _load()
    return dict(_BY_KIND)


def op_kind(op: Operation) -> str | None:
    """The program kind of `op` ("matmul", "eltwise", ...), None when it is not a device program."""
    found = device_op(op)
    return found.kind if found is not None else None


def program_operands(op: Operation) -> list[Value]:
    """The device values a program reads: a gather reads the input(s) of its whole chain."""
    found = device_op(op)
    return found.operands(op) if found is not None else list(op.operands)


def core_units(op: Operation, blocking: dict[str, int]) -> tuple[int, ...]:
    """How the op's work splits over cores, outermost first; cores take the units in row-major order."""
    found = device_op(op)
    if found is None:
        raise ValueError(f"'{op.name}' is not a device program")
    return found.units(op, blocking)


def circular_buffers(op: Operation, blocking: dict[str, int]) -> list[CBConfigAttr]:
    """The CB configs (no addresses) of `op`'s program under `blocking`."""
    found = device_op(op)
    if found is None:
        raise ValueError(f"'{op.name}' is not a device program")
    return found.circular_buffers(op, blocking)


def op_l1_tensor_bytes(op: Operation, device: DeviceAttr, result_layout: LayoutAttr | None = None) -> int:
    """Per-core share of the L1-resident tensors the op's program reads or writes (with `result_layout`, the
    result as if it had that layout)."""
    values = {id(v): tensor(v) for v in (*program_operands(op), *op.results)}
    if result_layout is not None:
        values[id(op.result)] = tensor(op.result).with_encoding(result_layout)
    return sum(l1_share(t, device) for t in values.values())


def l1_footprint(op: Operation, device: DeviceAttr, blocking: dict[str, int],
                 result_layout: LayoutAttr | None = None) -> int:
    """Per-core L1 bytes of `op` under `blocking`: its circular buffers plus its L1 tensors' shares (a sharded
    tensor's share is its shard), plus the shares of its scratch buffers (`DeviceOp.scratch`)."""
    found = device_op(op)
    scratch = sum(l1_share(t, device) for t in found.scratch(op, blocking)) if found is not None else 0
    return cb_bytes(circular_buffers(op, blocking)) + op_l1_tensor_bytes(op, device, result_layout) + scratch


__all__: Sequence[str] = ("DeviceOp", "circular_buffers", "core_units", "device_kind", "device_op", "device_ops",
                          "l1_footprint", "op_kind", "op_l1_tensor_bytes", "program_operands", "register")
