"""The verifier: structural rules (registered ops, SSA dominance, terminators), each op's declared
constraints (operand/result counts and types, attributes, regions) and its `verify` hook.

Errors name the op's place: file:line:col with the quoted line and a caret when the op was parsed,
else its location (the ONNX node) and the printed op.
"""

from __future__ import annotations

import numpy as np

from ttc.ir.attributes import WeightAttr
from ttc.ir.core import FUNC_OP, RETURN_OP, Block, Module, Operation
from ttc.ir.diagnostics import IRError, SourceSpan, render_diagnostic
from ttc.ir.dialect import OpDef, Trait, VerifyError
from ttc.ir.types import TensorType

MAX_REPORTED = 10


class Verifier:
    def __init__(self, module: Module) -> None:
        self.module = module
        self.errors: list[str] = []
        self.visible: set[int] = set()

    def error(self, op: Operation, message: str) -> None:
        self.errors.append(describe(op, message, self.module))

    # -- structure --------------------------------------------------------------------------------

    def run(self) -> None:
        self.op(self.module.op)
        self.symbols()
        self.device()

    def symbols(self) -> None:
        seen: set[str] = set()
        for op in self.module.body.ops if self.module.op.regions and self.module.op.regions[0].blocks else ():
            name = op.attributes.get("sym_name")
            if name is None:
                continue
            if name in seen:
                self.error(op, f"redefinition of symbol @{name}")
            seen.add(name)

    def device(self) -> None:
        """The `#tt.device` descriptor: every field of its type, in range, the arch known and the grids and
        memories within that arch's (the passes and the emulator divide by and loop over these)."""
        from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, DeviceAttr

        device = self.module.attributes.get(DEVICE_ATTR_NAME)
        if device is None:
            return
        if not isinstance(device, DeviceAttr):
            self.errors.append(render_diagnostic(f"module attribute '{DEVICE_ATTR_NAME}' must be a #tt.device, not "
                                                 f"{type(device).__name__}", where="module"))
            return
        for problem in device_problems(device):
            self.errors.append(render_diagnostic(f"#tt.device {problem}", where="module"))

    def tensor_sizes(self, op: Operation) -> None:
        """No value of rank above MAX_RANK or larger than the card's DRAM at the densest format (so no pass
        loops over an absurd shape): a clear error before any pass runs."""
        for value in (*op.results, *(a for r in op.regions for b in r.blocks for a in b.args)):
            t = value.type
            if not isinstance(t, TensorType):
                continue
            if t.rank > MAX_RANK:
                self.error(op, f"'{op.name}' has a value of type {_short(t)}: rank {t.rank}, at most {MAX_RANK}")
                return
            least = _least_device_bytes(t)
            if least > self.dram_bytes:
                self.error(op, f"'{op.name}' has a value of type {_short(t)}, which needs at least {least} bytes of "
                               f"device DRAM (tile-padded, at the densest format), more than the card's "
                               f"{self.dram_bytes}")
                return

    @property
    def dram_bytes(self) -> int:
        from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150

        device = self.module.attributes.get(DEVICE_ATTR_NAME)
        try:
            size = int(device.dram_size)  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            size = 0
        return size if 0 < size <= E150.dram_size else E150.dram_size

    def op(self, op: Operation) -> None:
        opdef = op.opdef
        if opdef is None:
            self.error(op, f"unregistered operation '{op.name}'")
            return
        for index, value in enumerate(op.operands):
            if id(value) not in self.visible:
                self.error(op, f"operand #{index} is not defined before this use (or is out of scope)")
                return
        self.tensor_sizes(op)
        ok = self.declared(op, opdef)
        if ok and opdef.verify is not None:
            try:
                opdef.verify(op)
            except VerifyError as exc:
                self.error(op, f"'{op.name}' {exc}")
        if ok and self.module.weights:
            self.weight(op)
        self.regions(op, opdef)
        for result in op.results:
            self.visible.add(id(result))

    def regions(self, op: Operation, opdef: OpDef) -> None:
        outer = self.visible
        if opdef.has(Trait.ISOLATED):
            self.visible = set()
        for region in op.regions:
            for block in region.blocks:
                self.block(block)
        if opdef.has(Trait.ISOLATED):
            self.visible = outer

    def block(self, block: Block) -> None:
        added = [id(a) for a in block.args]
        self.visible.update(added)
        for i, op in enumerate(block.ops):
            opdef = op.opdef
            if opdef is not None and opdef.has(Trait.TERMINATOR) and i != len(block.ops) - 1:
                self.error(op, f"'{op.name}' must be the last op of its block")
            self.op(op)
            added.extend(id(r) for r in op.results)
        parent = block.parent.parent if block.parent else None
        if parent is not None and parent.name == FUNC_OP:
            last = block.terminator
            if last is None or last.name != RETURN_OP:
                self.error(parent, "function body must end with func.return")
        self.visible.difference_update(added)

    # -- declarations -----------------------------------------------------------------------------

    def declared(self, op: Operation, opdef: OpDef) -> bool:
        """Check counts, types, attributes and regions against the declaration; False if any fail."""
        before = len(self.errors)
        groups = opdef.operand_groups(len(op.operands))
        if groups is None:
            self.error(op, f"'{op.name}' takes {_expected_count(opdef)} operands, got {len(op.operands)}")
        else:
            for decl, start, length in groups:
                for value in op.operands[start:start + length]:
                    if not decl.constraint(value.type):
                        self.error(op, f"'{op.name}' operand '{decl.name}' must be "
                                       f"{decl.constraint.description}, got {value.type}")
        self.result_types(op, opdef)
        for decl in opdef.attributes:
            if decl.name not in op.attributes:
                if decl.required:
                    self.error(op, f"'{op.name}' requires attribute '{decl.name}' ({decl.constraint.description})")
                continue
            value = op.attributes[decl.name]
            if not decl.constraint.check(value):
                self.error(op, f"'{op.name}' attribute '{decl.name}' must be {decl.constraint.description}")
        known = {d.name for d in opdef.attributes}
        for name in op.attributes:
            if name not in known and "." not in name:
                self.error(op, f"'{op.name}' has no attribute '{name}' (discardable attributes need a "
                               "dialect prefix, like 'ttir.name')")
        if len(op.regions) != opdef.regions:
            self.error(op, f"'{op.name}' takes {opdef.regions} regions, got {len(op.regions)}")
        return len(self.errors) == before

    def result_types(self, op: Operation, opdef: OpDef) -> None:
        variadic = any(r.variadic for r in opdef.results)
        if (not variadic and len(op.results) != len(opdef.results)) or \
                (variadic and len(op.results) < len(opdef.results) - 1):
            self.error(op, f"'{op.name}' has {len(op.results)} results, expected {len(opdef.results)}")
            return
        for i, result in enumerate(op.results):
            decl = opdef.results[min(i, len(opdef.results) - 1)]
            if not decl.constraint(result.type):
                self.error(op, f"'{op.name}' result '{decl.name}' must be {decl.constraint.description}, "
                               f"got {result.type}")

    def weight(self, op: Operation) -> None:
        value = op.attributes.get("value")
        if not isinstance(value, WeightAttr):
            return
        data = self.module.weights.get(value.name)
        if data is None:
            self.error(op, f"weight '{value.name}' is not in the module's weights")
            return
        result = op.results[0].type if op.results else None
        if isinstance(result, TensorType) and tuple(np.shape(data)) != result.shape:
            self.error(op, f"weight '{value.name}' has shape {list(np.shape(data))} but the op yields "
                           f"{result}")


MAX_RANK = 32
DENSEST_TILE_BYTES = 576  # a bfp4_b tile; row-major data is at least a byte per element


def _least_device_bytes(t: TensorType) -> int:
    """The fewest DRAM bytes a tensor can occupy on the device: tiles (the last two dims padded to 32) of the
    densest block format, or a byte per element when it is row-major."""
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in t.shape]
    if getattr(t.encoding, "tensor_layout", "tile") == "row_major":
        count = 1
        for d in dims:
            count *= d
        return count
    rows, cols = [1, 1, *dims][-2:]
    tiles = -(-rows // 32) * -(-cols // 32)
    for d in dims[:-2]:
        tiles *= d
    return tiles * DENSEST_TILE_BYTES


def _short(t: TensorType) -> str:
    text = str(t)
    return text if len(text) <= 120 else text[:117] + "..."


# Fields of #tt.device that are the card's hardware: at least 1 and at most the arch's own value (tests shrink
# memories; nothing may grow beyond the silicon), or exactly the arch's value.
_AT_MOST_ARCH = ("clock_mhz", "l1_size", "dram_channels", "dram_channel_size")
_EXACTLY_ARCH = ("l1_alignment", "dram_alignment", "dst_tiles", "num_cbs", "noc_max_packet", "noc_bytes_per_cycle")
_POSITIVE_INTS = ("noc_hop_cycles", "noc_write_startup_cycles", "matmul_cycles_per_phase", "unpack_bytes_per_cycle",
                  "launch_cycles", "launch_cycles_per_core")
_FRACTIONS = ("matmul_efficiency", "dram_efficiency")
_RATES = ("dram_gbps", "dram_core_gbps")


def device_problems(device: object) -> list[str]:
    """What is wrong with a #tt.device descriptor (empty when nothing is)."""
    import math

    from ttc.ir.dialects.tt import DEVICES

    arch = getattr(device, "arch", None)
    if not isinstance(arch, str) or arch not in DEVICES:
        return [f"arch {arch!r} is not a known arch ({', '.join(DEVICES)})"]
    known = DEVICES[arch]
    problems = []

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("worker_grid", "compute_grid"):
        grid, limit = getattr(device, name), getattr(known, name)
        if len(grid) != 2 or not all(is_int(g) and 1 <= g <= lim for g, lim in zip(grid, limit, strict=False)):
            problems.append(f"{name} {grid} must be two integers from 1x1 to the {arch}'s {limit}")
    cg, wg = device.compute_grid, device.worker_grid  # type: ignore[attr-defined]
    if not problems and (cg[0] > wg[0] or cg[1] > wg[1]):
        problems.append(f"compute_grid {cg} must lie within worker_grid {wg}")
    for name in _AT_MOST_ARCH:
        value = getattr(device, name)
        if not is_int(value) or not 1 <= value <= getattr(known, name):
            problems.append(f"{name} = {value!r} must be an integer from 1 to the {arch}'s {getattr(known, name)}")
    for name in _EXACTLY_ARCH:
        value = getattr(device, name)
        if not is_int(value) or value != getattr(known, name):
            problems.append(f"{name} = {value!r} must be the {arch}'s {getattr(known, name)}")
    reserved = device.l1_reserved  # type: ignore[attr-defined]
    if not is_int(reserved) or not 0 <= reserved < (device.l1_size if is_int(device.l1_size) else 0):  # type: ignore[attr-defined]
        problems.append(f"l1_reserved = {reserved!r} must be an integer below l1_size")
    for name in _POSITIVE_INTS:
        value = getattr(device, name)
        if not is_int(value) or not 1 <= value <= 1 << 32:
            problems.append(f"{name} = {value!r} must be an integer from 1 to 2^32")
    for name in _FRACTIONS:
        value = getattr(device, name)
        if not isinstance(value, float) or not math.isfinite(value) or not 0 < value <= 1:
            problems.append(f"{name} = {value!r} must be a fraction in (0, 1]")
    for name in _RATES:
        value = getattr(device, name)
        if not isinstance(value, float) or not math.isfinite(value) or not 0 < value <= 1e6:
            problems.append(f"{name} = {value!r} must be a positive rate (GB/s)")
    cycles = device.tile_op_cycles  # type: ignore[attr-defined]
    if not isinstance(cycles, dict) or set(cycles) != set(known.tile_op_cycles) or \
            not all(is_int(v) and 1 <= v <= 1 << 32 for v in cycles.values()):
        problems.append(f"tile_op_cycles must give each of {', '.join(sorted(known.tile_op_cycles))} a positive "
                        f"integer")
    keys = device.sfpu_cost_keys  # type: ignore[attr-defined]
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) and v in known.tile_op_cycles
                                             for k, v in keys.items()) or "default" not in keys:
        problems.append("sfpu_cost_keys must map SFPU functions (and 'default') to tile_op_cycles entries")
    return problems


def _expected_count(opdef: OpDef) -> str:
    fixed = sum(1 for o in opdef.operands if not o.variadic and not o.optional)
    if any(o.variadic for o in opdef.operands):
        return f"at least {fixed}"
    optional = sum(1 for o in opdef.operands if o.optional)
    return f"{fixed} to {fixed + optional}" if optional else str(fixed)


def describe(op: Operation, message: str, module: Module | None = None) -> str:
    """A diagnostic for `op`: its parsed position with a caret, else its loc and printed text."""
    from ttc.ir.printer import op_text

    span = op.span
    if span is not None and module is not None and module.source_lines is not None:
        lines = module.source_lines
        line_text = lines[span.line - 1] if 0 < span.line <= len(lines) else ""
        return render_diagnostic(message, span=SourceSpan(span.file, span.line, span.column, line_text))
    if span is not None:
        return render_diagnostic(message, where=f"{span.file}:{span.line}:{span.column}")
    try:
        excerpt = op_text(op)
    except Exception:  # a broken op may not print; the location still names it
        excerpt = None
    return render_diagnostic(message, where=str(op.loc), excerpt=excerpt)


def verify(module: Module) -> None:
    """Raise IRError listing the problems found (up to MAX_REPORTED of them)."""
    verifier = Verifier(module)
    verifier.run()
    if verifier.errors:
        shown = verifier.errors[:MAX_REPORTED]
        more = len(verifier.errors) - len(shown)
        tail = f"\n... and {more} more errors" if more > 0 else ""
        raise IRError("\n".join(shown) + tail)
