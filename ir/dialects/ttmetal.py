"""The `ttmetal` dialect: the host schedule that drives the device.

Device buffers are SSA values of tensor type whose encoding is a `#tt.layout` (the element type is
the data format); host tensors have no encoding. The schedule creates buffers, writes inputs and
constants, enqueues one program per device op, reads outputs back and frees buffers:

    %b = "ttmetal.create_buffer"() {address = 0} : () -> tensor<32x64xbf16, #tt.layout<tile, dram, interleaved>>
    "ttmetal.write_buffer"(%arg0, %b) : (tensor<32x64xf32>, tensor<32x64xbf16, #...>) -> ()
    "ttmetal.enqueue_program"(%b, %c) ({reader}, {compute}, {writer}) {grid = #tt.grid<2x1>, cbs = [...],
        runtime_args = [[[...], [...]], [[...], [...]], [[...], [...]]]} : (...) -> ()
    %r = "ttmetal.read_buffer"(%c) : (tensor<32x64xbf16, #...>) -> tensor<32x64xf32>
    "ttmetal.deallocate"(%b) : (...) -> ()

`write_buffer` pads to tiles, tilizes and converts to the buffer's format on the host (the
host<->device edge), after permuting the host tensor's dims when it has a `perm`; `read_buffer` converts back and crops to the logical shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ttc.ir.attributes import DialectAttribute, TypeAttr, WeightAttr, dialect_attribute, positional
from ttc.ir.core import Operation
from ttc.ir.dialect import (
    ArrayAttr,
    Attr,
    Dialect,
    IntArrayAttr,
    IntAttr,
    OpDef,
    Operand,
    Result,
    StrAttr,
    TypeConstraint,
    VerifyError,
    attr_of,
)
from ttc.ir.dialects.tt import GridAttr, LayoutAttr
from ttc.ir.dialects.ttir import im2col_shape, valid_window_edge
from ttc.ir.types import TensorType


@dialect_attribute("ttmetal", "cb")
@dataclass(frozen=True)
class CBConfigAttr(DialectAttribute):
    """A circular buffer of a program: `#ttmetal.cb<0, page_size = 2048, pages = 4, format = bf16>`;
    `address` (in every core's L1) is set by the allocate pass."""

    index: int = positional()
    page_size: int = 0
    pages: int = 0
    format: TypeAttr | None = None
    address: int | None = None

    @property
    def size(self) -> int:
        return self.page_size * self.pages


def _is_device_tensor(t: object) -> bool:
    return isinstance(t, TensorType) and isinstance(t.encoding, LayoutAttr)


def _is_host_tensor(t: object) -> bool:
    return isinstance(t, TensorType) and t.encoding is None


DeviceTensor = TypeConstraint("a device tensor (with #tt.layout)", _is_device_tensor)
HostTensor = TypeConstraint("a host tensor (no encoding)", _is_host_tensor)


def verify_write(op: Operation) -> None:
    host, device = (v.type for v in op.operands)
    perm = op.attributes.get("perm")
    split = op.attributes.get("split")
    window = op.attributes.get("window")
    if window is not None:  # the im2col matrix of the NCHW host tensor (ttir.im2col_rows)
        if perm is not None or split is not None or len(host.shape) != 4 or not valid_window_edge(window) \
                or im2col_shape(host.shape, window) != tuple(device.shape):
            raise VerifyError(f"the im2col matrix of host tensor {host} by window {list(window)} does not fill "
                              f"buffer {device}")
        return
    if split is not None:  # reshaped to split, permuted, written in the buffer's shape
        if perm is None or sorted(perm) != list(range(len(split))) \
                or not math.prod(split) == math.prod(host.shape) == math.prod(device.shape):
            raise VerifyError(f"host tensor {host} split to {list(split)}, permuted by {list(perm or [])} does not "
                              f"fill buffer {device}")
        return
    shape = host.shape if perm is None else tuple(host.shape[i] for i in perm)
    if perm is not None and sorted(perm) != list(range(len(host.shape))):
        raise VerifyError(f"perm {list(perm)} is not a permutation of the host tensor's {len(host.shape)} dims")
    if shape != device.shape:
        raise VerifyError(f"host tensor {host}{'' if perm is None else f' permuted by {list(perm)}'} and buffer "
                          f"{device} have different shapes")


def verify_read(op: Operation) -> None:
    if op.operands[0].type.shape != op.result.type.shape:
        raise VerifyError("read_buffer must keep the logical shape")


def verify_program(op: Operation) -> None:
    grid: GridAttr = op.attr("grid")
    args = op.attr("runtime_args")
    if len(op.regions) != 3:
        raise VerifyError("a program has three kernels: reader, compute, writer")
    if len(args) != 3 or any(len(per_kernel) != grid.num_cores for per_kernel in args):
        raise VerifyError(f"runtime_args must hold, for each of the 3 kernels, one tuple per core of the "
                          f"{grid.x}x{grid.y} grid")
    seen = set()
    for cb in op.attr("cbs"):
        if not isinstance(cb, CBConfigAttr):
            raise VerifyError("cbs must be #ttmetal.cb<...> attributes")
        if cb.index in seen:
            raise VerifyError(f"circular buffer {cb.index} is configured twice")
        seen.add(cb.index)


STATE_ATTR = "state"  # create_buffer: the buffer is the named device state (persists across runs)
SCALAR_ARGS_ATTR = "scalar_args"  # enqueue_program: [(kernel, arg index, scalar name, exclusive bound), ...]
CREATE_BUFFER = OpDef("ttmetal.create_buffer", "Allocate a device buffer (address set by `allocate`); with `state`, "
                      "the buffer is that named device state: it keeps its contents from one run to the next",
                      results=(Result("buffer", DeviceTensor),),
                      attributes=(Attr("address", IntAttr, None), Attr(STATE_ATTR, StrAttr, None)))
WRITE_BUFFER = OpDef("ttmetal.write_buffer", "Host tensor -> device buffer (permute or the im2col matrix, pad, tilize, "
                     "convert format)",
                     operands=(Operand("host", HostTensor), Operand("buffer", DeviceTensor)), results=(),
                     attributes=(Attr("perm", IntArrayAttr, None), Attr("split", IntArrayAttr, None),
                                 Attr("window", IntArrayAttr, None)),
                     verify=verify_write)
WRITE_CONSTANT = OpDef("ttmetal.write_constant", "Fill a buffer with a weight already in device format",
                       operands=(Operand("buffer", DeviceTensor),), results=(),
                       attributes=(Attr("value", attr_of(WeightAttr)),))
ENQUEUE_PROGRAM = OpDef(
    "ttmetal.enqueue_program", "Run reader/compute/writer kernels on every core of `grid`",
    operands=(Operand("buffers", DeviceTensor, variadic=True),), results=(), regions=3,
    attributes=(Attr("grid", attr_of(GridAttr)), Attr("cbs", ArrayAttr), Attr("runtime_args", ArrayAttr),
                Attr("kind", StrAttr, ""), Attr(SCALAR_ARGS_ATTR, ArrayAttr, None)),
    verify=verify_program,
)
READ_BUFFER = OpDef("ttmetal.read_buffer", "Device buffer -> host tensor (untilize, crop, convert)",
                    operands=(Operand("buffer", DeviceTensor),), results=(Result("host", HostTensor),),
                    verify=verify_read)
DEALLOCATE = OpDef("ttmetal.deallocate", "Free a device buffer", operands=(Operand("buffer", DeviceTensor),),
                   results=())
HOST_COMPUTE = OpDef(
    "ttmetal.host_compute", "An ONNX node computed on the host (integer data the device cannot carry exactly): "
    "`model` is a one-node ONNX model (base64), its constant inputs as initializers, the operands its graph "
    "inputs in order; counted as a host op and reported",
    operands=(Operand("inputs", HostTensor, variadic=True),), results=(Result("outputs", HostTensor, variadic=True),),
    attributes=(Attr("op_type", StrAttr), Attr("model", StrAttr)),
)



def verify_empty(op: Operation) -> None:
    if op.result.type.num_elements:
        raise VerifyError(f"{op.result.type} has elements; only a tensor without elements is known by its type")


EMPTY_TENSOR = OpDef(
    "ttmetal.empty_tensor", "A host tensor without elements (a dim of size 0): its shape and element type are its "
    "whole value, so it needs no buffer, transfer or program",
    results=(Result("host", HostTensor),), verify=verify_empty,
)

TTMETAL = Dialect("ttmetal", "Host-side schedule: buffers and program dispatch.",
                  ops=[CREATE_BUFFER, WRITE_BUFFER, WRITE_CONSTANT, ENQUEUE_PROGRAM, READ_BUFFER, DEALLOCATE,
                       HOST_COMPUTE, EMPTY_TENSOR]
                  ).register()
