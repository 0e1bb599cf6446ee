"""`layout`: give every device tensor its data format and memory space.

- Data format (the element type): bf16 everywhere on the device by default. With `dtype=bfp8_b`, the
  weight constants used only as the second operand of matmuls (`ttir.linear` / `ttir.matmul`) are
  stored as bfp8_b; activations, biases and norm parameters stay bf16. Host tensors keep their
  types; the `ttir.to_layout` ops at the edges convert.
- Memory space: DRAM interleaved by default. With `l1-intermediates=true`, an intermediate (a value a
  device program produces and only device programs read: not a weight, an input or a graph output)
  moves to L1 interleaved when, at every op during its lifetime, the per-core shares of the L1
  tensors then live plus that op's smallest circular-buffer footprint (`footprint`, over all grids)
  fit the L1 budget `l1_size - l1_reserved`. Values are considered in program order, first come
  first served; one whose per-core share exceeds 40 % of the budget (a large convolutional
  activation or im2col matrix) stays in DRAM and is streamed, since the top-down L1 heap would otherwise
  fragment around it. The grid pass later picks blockings within what is left.

The values of a transpose/reshape chain lowered as one gather (`footprint.is_folded`) never exist as
buffers and stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttc.ir.core import Function, Module, Operation, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.footprint import (
    MATMUL_OPS,
    LiveRange,
    bank_share,
    is_folded,
    is_view,
    layout,
    live_ranges,
    module_device,
    op_kind,
    program_operands,
    readers,
    sync_body_placement,
    tensor,
)
from ttc.passes.grid import min_cb_bytes
from ttc.passes.manager import Pass, register_pass

DTYPES = ("bf16", "bfp8_b")
MAX_L1_SHARE = 0.4  # an intermediate taking more of a core's free L1 stays in DRAM


def is_device_float(t: object) -> bool:
    return isinstance(t, TensorType) and isinstance(t.encoding, LayoutAttr) and t.element_type.is_float


def with_format(value: Value, element_type: ScalarType) -> None:
    if is_device_float(value.type):
        assert isinstance(value.type, TensorType)
        value.type = value.type.with_element_type(element_type)


def is_matmul_weight(op: Operation) -> bool:
    """A weight constant every use of which is the b operand of a matmul."""
    if op.name != "ttir.constant" or not op.result.uses:
        return False
    return all(user.name in MATMUL_OPS and index == 1 for user, index in op.result.uses)


def assign_formats(func: Function, dtype: str) -> None:
    """bf16 for every device float; bfp8_b for matmul weights when asked. A fused body keeps its
    element types: it states the math (with its f32 host scalars), the kernel's CBs hold the formats."""
    bf16, weight_format = ScalarType("bf16"), ScalarType(dtype)
    for op in func.body.ops:
        for result in op.results:
            with_format(result, weight_format if is_matmul_weight(op) else bf16)


def is_intermediate(live: LiveRange) -> bool:
    """Produced by a device program and read only by device programs."""
    value = live.value
    producer = value.owner
    if not isinstance(producer, Operation) or op_kind(producer) is None:
        return False
    return all(op_kind(reader) is not None for reader in readers(value))


def place_in_l1(func: Function, device: DeviceAttr) -> None:
    """Move intermediates to L1 in program order while every op they live across still fits."""
    ops = list(func.body.ops)
    cb_floor = {i: min_cb_bytes(op, device) for i, op in enumerate(ops)
                if op_kind(op) and not is_folded(op) and not is_view(op)}
    placed: list[tuple[LiveRange, int]] = []
    for live in live_ranges(ops):
        if not is_intermediate(live):
            continue
        share = bank_share(live.value.type, device.compute_cores)  # type: ignore[arg-type]
        if share > device.l1_free * MAX_L1_SHARE:
            continue  # a large activation streams from DRAM (and cannot fragment L1 for the ops around it)
        trial = [*placed, (live, share)]
        if all(cb_floor[i] + sum(s for r, s in trial if r.start <= i <= r.end) <= device.l1_free
               for i in range(live.start, live.end + 1) if i in cb_floor):
            placed.append((live, share))
    for live, _ in placed:
        assert isinstance(live.value.type, TensorType)
        tensor_layout = layout(live.value.type).tensor_layout  # tiles stay tiles, rows stay rows
        live.value.type = live.value.type.with_encoding(LayoutAttr(tensor_layout, "l1", "interleaved"))
    for op in ops:
        if is_view(op):  # the view shares its source's pages
            source = tensor(program_operands(op)[0])
            op.result.type = tensor(op.result).with_encoding(source.encoding)
        sync_body_placement(op)


@register_pass
@dataclass
class Layout(Pass):
    """Choose data formats (bf16, bfp8_b weights) and memory spaces (DRAM, L1 intermediates)."""

    name = "layout"
    dtype: str = "bf16"
    l1_intermediates: bool = True

    def run(self, module: Module) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"layout: unknown dtype '{self.dtype}' (choose from {', '.join(DTYPES)})")
        device = module_device(module)
        for func in module.functions:
            assign_formats(func, self.dtype)
            if self.l1_intermediates:
                place_in_l1(func, device)
