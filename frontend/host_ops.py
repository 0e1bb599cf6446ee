"""ONNX nodes the host computes: integer data the device cannot carry exactly, and index results.

The device computes in bf16, exact for integers within +-256 only (`passes/device_types.py`). So the
importer sends a node to the host, as one explicit `ttmetal.host_compute` op, when

- it computes integers (a non-boolean integer result) from integer data that is not a compile-time
  constant nor provably small (within +-256, e.g. booleans cast to integers: those the device computes
  exactly) but a graph input or another host op's result, e.g. Add/Mod/BitShift of int32 tensors, or
  produces integers the device has no converter for (QuantizeLinear), or converts floats to integers
  (Cast truncates, which the device cannot do);
- it compares such integers (Equal, Less, ...), except with a constant of integers within +-255,
  which the device does exactly whatever the size (bf16 rounding is monotonic and keeps those exact);
- it selects or moves integer data produced by the host (host data stays on the host);
- it dequantizes integers wider than 8 bits (DequantizeLinear of int16/int32 data of unknown range);
- it scatters (Scatter, ScatterElements, ScatterND, TensorScatter, MaxUnpool): the write positions are data,
  while the device moves data only by compile-time index tables and has no indexed-write kernel;
- it reinterprets bits (BitCast): the device holds bf16-rounded values, not the tensor's bits;
- it returns indices (ArgMax, ArgMin, TopK, NonZero, Unique, MaxPool's Indices output): the device has no
  index kernels;
- it computes the scale or zero point of a QuantizeLinear (a host op) from constants and the data being
  quantized, as DynamicQuantizeLinear's function body does (`quantization_parameter_nodes`): the integers
  are x / scale rounded half to even, so they depend on every bit of the float32 scale, which a device
  result (bf16) cannot give, and the host reads x for the quantization anyway.

Float computations that merely take an integer input (class labels, positions, lengths) are not host
ops: they need a device form or stay unsupported. Everything else, including casts of integers to float
or bool, data movement of integer graph inputs
and table lookups by token ids, stays on the device. The op holds a one-node ONNX model (constant inputs
as initializers) that the runtime's executor evaluates between its read_buffer and write_buffer edges;
`ttc.compiler.count_host_ops` counts it, so every host-assisted result is reported as such.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ttc.frontend.converters import find_converter
from ttc.ir import TensorType
from ttc.ir.builder import Builder
from ttc.ir.core import OpResult
from ttc.ir.dialects import ttir, ttmetal

if TYPE_CHECKING:
    from ttc.frontend.importer import GraphImporter, NodeContext
    from ttc.ir import Value

HOST_COMPUTE = ttmetal.HOST_COMPUTE.name
INDEX_OPS = frozenset({"ArgMax", "ArgMin", "TopK", "NonZero", "Unique"})
# Writes at positions given by data (duplicates combined in order): the device moves data only by
# compile-time index tables and has no indexed-write kernel.
SCATTER_OPS = frozenset({"Scatter", "ScatterElements", "ScatterND", "TensorScatter", "MaxUnpool"})
# Reinterpret bits: the device's values are bf16-rounded, so their bits are not the tensor's.
BIT_OPS = frozenset({"BitCast"})
NOT_ON_HOST = frozenset({"ImageDecoder"})  # not a tensor computation
COMPARE_OPS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"})
# Ops the device runs on integer graph inputs exactly (conversions, copies, lookups by index).
DEVICE_INTEGER_OPS = frozenset({"Cast", "CastLike", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity",
                                "Shape", "Size", "Transpose", "Slice", "Concat", "Expand", "Split"})


def _is_integer(value: Value) -> bool:
    t = value.type
    return isinstance(t, TensorType) and t.element_type.is_integer and t.element_type.name != "i1"


def is_host_value(value: Value) -> bool:
    return isinstance(value, OpResult) and value.op.name == HOST_COMPUTE


def runs_on_host(importer: GraphImporter, node: onnx.NodeProto) -> bool:
    """Whether `node` becomes a host op (the rule of the module doc)."""
    if node.domain not in ("", "ai.onnx") or node.op_type in NOT_ON_HOST or _has_subgraph(node):
        return False
    if any(name in importer.quantization_parameters for name in node.output):
        return True
    if node.op_type in INDEX_OPS | SCATTER_OPS | BIT_OPS or (node.op_type == "MaxPool" and len(node.output) > 1
                                                   and node.output[1] in importer.used):
        return True  # MaxPool's second output is the indices of the maxima
    inputs = [importer.values[name] for name in node.input if name and name in importer.values]
    data = [v for v in inputs if not importer.is_constant_value(v)]
    integers = [v for v in data if _is_integer(v) and not is_small(importer, v)]
    host_integers = [v for v in integers if is_host_value(v)]
    outputs = [importer.output_element_type(name) for name in node.output if name]
    integer_result = any(t is not None and t.is_integer and t.name != "i1" for t in outputs)
    if node.op_type in ("Cast", "CastLike"):  # float -> integer truncates: the device cannot
        floats = any(isinstance(v.type, TensorType) and v.type.element_type.is_float for v in data)
        return integer_result and (bool(host_integers) or floats)
    if node.op_type == "Gather":
        return inputs[0] in integers
    if node.op_type == "DequantizeLinear" and inputs[0] in integers:
        return inputs[0].type.element_type.numpy_dtype().itemsize > 1  # 8-bit data is exact in bf16
    if host_integers:
        return True  # host integers stay on the host
    if integer_result and (integers or find_converter(node.op_type, importer.opset) is None):
        return node.op_type not in DEVICE_INTEGER_OPS or not integers
    if node.op_type in COMPARE_OPS and integers:
        return not any(importer.is_constant_value(v) and _small_constant(importer.constant_array(v)) for v in inputs)
    return False


def quantization_parameter_nodes(graph: onnx.GraphProto) -> set[str]:
    """The outputs of the nodes that compute a QuantizeLinear's scale and zero point from constants and the
    data it quantizes alone (dynamic quantization): they run on the host with it (module doc). A scale that
    depends on any other computed value or graph input is left to the usual rules."""
    producers = {name: node for node in graph.node for name in node.output if name}
    constants = {t.name for t in graph.initializer} | {
        name for node in graph.node if node.op_type == "Constant" for name in node.output}
    found: set[str] = set()
    for quantize in graph.node:
        if quantize.op_type != "QuantizeLinear" or quantize.domain not in ("", "ai.onnx"):
            continue
        data, cone = quantize.input[0], set()
        pending = [name for name in quantize.input[1:3] if name]
        while pending:
            name = pending.pop()
            if name in constants or name == data or name in cone:
                continue
            node = producers.get(name)
            if node is None or node.domain not in ("", "ai.onnx") or _has_subgraph(node):
                break  # a graph input or an op the host cannot take: not the dynamic-quantization form
            cone.update(output for output in node.output if output)
            pending.extend(name for name in node.input if name)
        else:
            found |= cone
    return found


EXACT_INT = 256  # bf16 holds every integer in [-256, 256]
PASS_THROUGH = frozenset({ttir.RESHAPE.name, ttir.TRANSPOSE.name, ttir.SLICE.name, ttir.BROADCAST_OP.name, ttir.CONCAT.name,
                          ttir.GATHER.name, ttir.TYPECAST.name, ttir.MAXIMUM.name, ttir.MINIMUM.name, ttir.REDUCE_MAX.name})


def value_range(importer: GraphImporter, value: Value) -> tuple[float, float] | None:
    """The interval an integer or boolean value built so far can take (None: unknown), as
    `device_types.IntegerRanges` computes it later on the whole function."""
    t = value.type
    if not isinstance(t, TensorType):
        return None
    if t.element_type.name == "i1":
        return (0, 1)
    if importer.is_constant_value(value):
        array = np.asarray(importer.constant_array(value))
        return (float(array.min()), float(array.max())) if array.size and array.dtype.kind in "iub" else None
    if not isinstance(value, OpResult) or t.element_type.is_float:
        return None
    op = value.op
    if op.name in PASS_THROUGH:
        data = op.operands if op.name in (ttir.CONCAT.name, ttir.MAXIMUM.name, ttir.MINIMUM.name) else op.operands[:1]
        ranges = [value_range(importer, v) for v in data]
        if any(r is None for r in ranges):
            return None
        return min(r[0] for r in ranges), max(r[1] for r in ranges)  # type: ignore[index]
    if op.name in (ttir.ADD.name, ttir.SUB.name, ttir.MUL.name):
        a, b = (value_range(importer, v) for v in op.operands)
        if a is None or b is None:
            return None
        if op.name == ttir.ADD.name:
            return a[0] + b[0], a[1] + b[1]
        if op.name == ttir.SUB.name:
            return a[0] - b[1], a[1] - b[0]
        corners = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
        return min(corners), max(corners)
    return None


def is_small(importer: GraphImporter, value: Value) -> bool:
    """An integer the device carries exactly: its known range lies within +-256."""
    bounds = value_range(importer, value)
    return bounds is not None and bounds[0] >= -EXACT_INT and bounds[1] <= EXACT_INT


def _small_constant(array: np.ndarray) -> bool:
    """Integers within +-255: a comparison with them is exact on the device for integers of any size."""
    array = np.asarray(array)
    return array.dtype.kind in "iu" and (not array.size or int(np.abs(array).max()) <= 255)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def convert_on_host(ctx: NodeContext) -> list[Value]:
    """The node as a `ttmetal.host_compute` op holding a one-node model."""
    importer, node = ctx.importer, ctx.node
    graph_inputs, initializers, operands = [], [], []
    for name in dict.fromkeys(n for n in node.input if n):
        value = importer.value(name, ctx.where)
        if importer.is_constant_value(value):
            initializers.append(numpy_helper.from_array(np.asarray(importer.constant_array(value)), name))
            continue
        t = value.type
        assert isinstance(t, TensorType)
        onnx_type = helper.np_dtype_to_tensor_dtype(t.element_type.numpy_dtype())
        graph_inputs.append(helper.make_tensor_value_info(name, onnx_type, list(t.shape)))
        operands.append(value)
    result_types, graph_outputs = [], []
    local: dict[str, tuple[int, ...]] | None = None
    for name in node.output:
        if not name:
            continue
        element = importer.output_element_type(name)
        shape = importer.inferred_shape(name)
        if shape is None:  # the graph's inference lacked folded values: infer the node alone, inputs now known
            local = _node_shapes(node, graph_inputs, initializers, importer.opset) if local is None else local
            shape = local.get(name)
        if shape is None and name not in importer.node_inputs:
            shape = importer.inferred_dims(name)  # data-dependent dims (`?`) of a value only the graph returns
        if element is None or shape is None:
            raise ctx.error(f"output '{name}' has no static type after shape inference; a host op needs one (only "
                            "a graph output that no node uses may have a data-dependent shape)")
        result_types.append(TensorType(shape, element))
        onnx_type = helper.np_dtype_to_tensor_dtype(element.numpy_dtype())
        graph_outputs.append(helper.make_tensor_value_info(name, onnx_type, [d if d is not None else f"{name}_{i}"
                                                                               for i, d in enumerate(shape)]))
    graph = helper.make_graph([node], "host", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", importer.opset)])
    model.ir_version = min(model.ir_version, 10)
    encoded = base64.b64encode(model.SerializeToString()).decode()
    op = Builder.at_end(importer.block).create(HOST_COMPUTE, operands, result_types,
                                               {"op_type": node.op_type, "model": encoded}, ctx.loc)
    results = iter(op.results)
    return [next(results) if name else None for name in node.output]  # type: ignore[misc]


def _node_shapes(node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto],
                 opset: int) -> dict[str, tuple[int, ...]]:
    """The static output shapes onnx infers for the node alone, given its inputs' types and constants."""
    graph = helper.make_graph([node], "host", inputs, [], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception:
        return {}
    shapes = {}
    for value in inferred.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def may_run_on_host(model: onnx.ModelProto, node: onnx.NodeProto, constants: set[str]) -> bool:
    """For the supported-op check, before conversion: whether `node` may need no converter because it runs
    on the host (an index op, or integers computed or compared; `runs_on_host` decides)."""
    if node.domain not in ("", "ai.onnx") or node.op_type in NOT_ON_HOST or _has_subgraph(node):
        return False
    if node.op_type in INDEX_OPS | SCATTER_OPS | BIT_OPS:
        return True
    types = {v.name: v.type for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}

    def is_integer(name: str) -> bool:
        elem = types[name].tensor_type.elem_type if name in types else 0
        return bool(elem) and elem != onnx.TensorProto.BOOL and helper.tensor_dtype_to_np_dtype(elem).kind in "iu"

    integer_inputs = any(is_integer(n) for n in node.input if n and n not in constants)
    integer_result = any(is_integer(n) for n in node.output if n)
    return integer_result or (integer_inputs and node.op_type in COMPARE_OPS)
