"""Import a loaded ONNX model into a `ttir` module: one `func.func @main`, weights beside the IR.

The graph walk: graph inputs become function arguments, initializers and Constant nodes become
`ttir.constant` ops (placed at the top of the function, in graph order, only when used), every other
node goes through its converter (`converters.py`), graph outputs are returned. Unsupported ops are
all reported in one error before anything is converted.

Constant subgraphs are folded here, at compile time: a node whose inputs are all constants
(initializers, Constant nodes, Shape of a static shape, earlier folded results) is evaluated with
onnx's reference evaluator and becomes a constant itself, so shape arithmetic (Shape, Gather,
Range, ConstantOfShape, Concat of dims), constant masks (GPT-2's causal And/Where chain) and
constant lookups (BERT's position and token-type embeddings) never reach the device. Such a node
needs no converter. Folded results follow the importer's constant rule: small ones are inline
`dense<...>`, large ones named weights.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper

from ttc.frontend import (
    converters_attention,  # noqa: F401  (registers its converters)
    converters_control,  # noqa: F401  (registers its converters)
    converters_conv,  # noqa: F401  (registers its converters)
    converters_elementwise,  # noqa: F401  (registers its converters)
    converters_grid_sample,  # noqa: F401  (registers its converters)
    converters_indexing,  # noqa: F401  (registers its converters)
    converters_normalization,  # noqa: F401  (registers its converters)
    converters_pad_resize,  # noqa: F401  (registers its converters)
    converters_recurrent,  # noqa: F401  (registers its converters)
    converters_reduction,  # noqa: F401  (registers its converters)
    converters_spectral,  # noqa: F401  (registers its converters)
)
from ttc.frontend.converters import find_converter, supported_op_types
from ttc.frontend.folding import evaluate_node, outer_scope_inputs, subgraphs
from ttc.frontend.host_ops import convert_on_host, may_run_on_host, quantization_parameter_nodes, runs_on_host
from ttc.frontend.loader import (
    DEFAULT_DOMAINS,
    TARGET_OPSET,
    InputShapes,
    ModelSource,
    default_opset,
    graph_inputs,
    mapped_array,
    prepare_model,
    read_model,
)
from ttc.ir import (
    Builder,
    DenseAttr,
    Function,
    FunctionType,
    Location,
    Module,
    NameLoc,
    Operation,
    ScalarType,
    TensorType,
    UserError,
    Value,
    WeightAttr,
)
from ttc.ir.core import RETURN_OP
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, DeviceAttr, device_for

# Constants up to this size are inline dense<...> (shapes, scalars); bigger ones, and every float
# initializer of more than one element (a learned parameter), are weights beside the IR.
INLINE_MAX_ELEMENTS = 16
NAME_ATTR = "ttir.name"  # the ONNX name of a function argument or result

ELEMENT_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.BFLOAT16: "bf16",
    onnx.TensorProto.DOUBLE: "f64", onnx.TensorProto.INT64: "i64", onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.INT16: "i16", onnx.TensorProto.INT8: "i8", onnx.TensorProto.UINT8: "ui8",
    onnx.TensorProto.UINT16: "ui16", onnx.TensorProto.UINT32: "ui32", onnx.TensorProto.UINT64: "ui64",
    onnx.TensorProto.BOOL: "i1",
}


def import_model(source: ModelSource, input_shapes: InputShapes | None = None, arch: str = "e150") -> Module:
    """Load, check, convert and shape-infer an ONNX model (path or ModelProto) and import it."""
    model, path = read_model(source)
    return import_read_model(model, path, input_shapes, arch)


def import_read_model(model: onnx.ModelProto, path: str | None, input_shapes: InputShapes | None = None,
                      arch: str = "e150") -> Module:
    """`import_model` of a model `read_model` returned (changed in place: not to be reused)."""
    device = _device(arch)
    model = expand_functions(model)
    check_supported(model)
    model = prepare_model(model, path, input_shapes, mapped=True)
    return GraphImporter(model, device).run()


def _device(arch: str) -> DeviceAttr:
    try:
        return device_for(arch)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def node_name(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or `OpType_index` for an unnamed node."""
    return node.name or f"{node.op_type}_{index}"


# Ops whose output depends on more than their inputs: never folded.
NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                  "Multinomial", "Bernoulli", "Dropout"})
# Ops whose output depends only on the (static) shape of their input: constants once shapes are known.
SHAPE_OPS = frozenset({"Shape", "Size"})


def is_foldable(node: onnx.NodeProto, constants: set[str]) -> bool:
    """Whether the node's outputs are compile-time constants: a default-domain, deterministic node whose
    inputs, and the values its subgraphs read from the graph (a Loop's body, an If's branches), are all
    constants (or a Shape/Size, as every shape is static)."""
    if node.domain not in DEFAULT_DOMAINS or node.op_type in NONDETERMINISTIC_OPS:
        return False
    if node.op_type in SHAPE_OPS:
        return True
    if subgraphs(node) and not all(is_deterministic(inner) for g in subgraphs(node) for inner in g.node):
        return False
    inputs = [name for name in node.input if name]
    outer = outer_scope_inputs(node)  # what a Loop's body or an If's branches read from the graph
    return bool(inputs) and all(name in constants for name in inputs + outer)


def is_deterministic(node: onnx.NodeProto) -> bool:
    """A default-domain node without random ops, its subgraphs included."""
    return node.domain in DEFAULT_DOMAINS and node.op_type not in NONDETERMINISTIC_OPS and all(
        is_deterministic(inner) for g in subgraphs(node) for inner in g.node)


EXPAND_DOMAIN = "ttc.expand"  # the local functions expand_functions makes of schema function bodies


def expand_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each top-level node of an op ttc has no converter for, whose ONNX schema defines it as a
    function of other ops (AffineGrid, CausalConvWithState, ...), by that function's body, with its
    attributes bound (onnx's inliner); a context-dependent body is built for the node's input types. The
    body's nodes are named `<node>/<OpType>_<i>`. check_supported then judges the ops of the body, so a
    model is compiled as the ops the standard defines it by. Returns `model` itself when nothing expands."""
    opset = default_opset(model)
    if opset is None:
        return model
    supported = set(supported_op_types())
    constants = {t.name for t in model.graph.initializer}
    targets: dict[int, onnx.defs.OpSchema] = {}
    for index, node in enumerate(model.graph.node):
        if node.domain not in DEFAULT_DOMAINS:
            continue
        if node.op_type == "Constant" or is_foldable(node, constants):
            constants.update(node.output)
            continue
        if node.op_type in supported or may_run_on_host(model, node, constants):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
        except onnx.defs.SchemaError:
            continue  # not an ONNX op: check_supported names it
        if schema.has_function or schema.has_context_dependent_function:
            targets[index] = schema
    if not targets:
        return model
    types = _value_types(model) if any(not s.has_function for s in targets.values()) else {}
    inlined = _inline(model, targets, types)
    if inlined is None:  # some body does not bind (a context the inliner rejects): keep the ones that do
        good = {i: s for i, s in targets.items() if _inline(model, {i: s}, types) is not None}
        inlined = _inline(model, good, types) if good else None
    return model if inlined is None else inlined


def _inline(model: onnx.ModelProto, targets: dict[int, onnx.defs.OpSchema],
            types: dict[str, onnx.TypeProto]) -> onnx.ModelProto | None:
    """`model` with the nodes at `targets` replaced by their schemas' function bodies; None when a body
    cannot be built or bound."""
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    bodies: dict[int, int] = {}  # node index -> the body's node count
    for index, schema in targets.items():
        node = expanded.graph.node[index]
        function = onnx.FunctionProto()
        if schema.has_function:
            function.CopyFrom(schema.function_body)
        else:
            inputs = [types[name].SerializeToString() if name in types else onnx.TypeProto().SerializeToString()
                      for name in node.input]
            try:
                function.ParseFromString(schema.get_context_dependent_function(node.SerializeToString(), inputs))
            except Exception:  # the body needs types shape inference could not give
                return None
        function.domain, function.name = EXPAND_DOMAIN, f"{node.op_type}_{index}"
        node.domain, node.op_type = EXPAND_DOMAIN, function.name
        expanded.functions.append(function)
        bodies[index] = len(function.node)
    expanded.opset_import.append(helper.make_opsetid(EXPAND_DOMAIN, 1))
    try:
        inlined = onnx.inliner.inline_local_functions(expanded)
    except Exception:  # onnx's inliner rejects the binding (e.g. more actual inputs than the body has)
        return None
    _name_body_nodes(model, inlined, bodies)
    return inlined


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The types onnx's (lenient) shape inference gives the graph's values, for context-dependent bodies."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    graph = inferred.graph
    types = {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}
    for tensor in graph.initializer:
        types.setdefault(tensor.name, helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims)))
    return types


def _name_body_nodes(original: onnx.ModelProto, inlined: onnx.ModelProto, bodies: dict[int, int]) -> None:
    """Name the inlined body nodes after the node they came from (the inliner keeps the graph's order and
    puts each body where its node was); nothing is renamed when the counts do not line up."""
    nodes = inlined.graph.node
    if len(nodes) != len(original.graph.node) + sum(count - 1 for count in bodies.values()):
        return
    position = 0
    for index, node in enumerate(original.graph.node):
        count = bodies.get(index)
        if count is None:
            position += 1
            continue
        parent = node_name(node, index)
        for j in range(count):
            inner = nodes[position + j]
            inner.name = f"{parent}/{inner.name or f'{inner.op_type}_{j}'}"
        position += count


def check_supported(model: onnx.ModelProto) -> None:
    """A UserError for the first graph input, output or initializer of an element type ttc does not
    support (the more basic limit: no op can carry it), else one listing every unsupported op type with
    the names of its nodes (nodes folded at compile time need no converter)."""
    graph = model.graph
    for where, values in (("graph input", graph.input), ("graph output", graph.output)):
        for value in values:
            if value.type.HasField("tensor_type"):
                element_type(value.type.tensor_type.elem_type, where, value.name)
    for tensor in graph.initializer:
        element_type(tensor.data_type, f"initializer '{tensor.name}'", tensor.name)
    unsupported: dict[str, list[str]] = {}
    constants = {t.name for t in model.graph.initializer}
    collect_unsupported(model, model.graph, constants, set(supported_op_types()), unsupported)
    if not unsupported:
        return
    count = sum(len(names) for names in unsupported.values())
    parts = [f"{op} ({'node' if len(names) == 1 else 'nodes'}: {', '.join(names)})"
             for op, names in unsupported.items()]
    raise UserError(f"unsupported ONNX ops ({count} {'node' if count == 1 else 'nodes'}): {', '.join(parts)}")


# Ops whose converters inline their subgraphs (an If's branches, a Scan's or Loop's body once per step):
# check_supported judges the subgraphs' nodes (a Loop's iteration number and condition as constants).
INLINED_SUBGRAPH_OPS = frozenset({"If", "Scan", "Loop"})
NON_TENSOR_KINDS = {"sequence_type": "a sequence", "optional_type": "an optional", "map_type": "a map",
                    "sparse_tensor_type": "a sparse tensor"}


def collect_unsupported(model: onnx.ModelProto, graph: onnx.GraphProto, constants: set[str], supported: set[str],
                        unsupported: dict[str, list[str]], prefix: str = "") -> None:
    """Add the unsupported nodes of `graph` to `unsupported` (op -> node names), the subgraphs of the
    INLINED_SUBGRAPH_OPS included; `constants` (the values known at compile time) grows as nodes fold."""
    for index, node in enumerate(graph.node):
        name = prefix + node_name(node, index)
        default_domain = node.domain in DEFAULT_DOMAINS
        if (default_domain and node.op_type == "Constant") or is_foldable(node, constants):
            constants.update(node.output)
            continue
        if default_domain and node.op_type in supported:
            for branch in subgraphs(node) if node.op_type in INLINED_SUBGRAPH_OPS else []:
                graph_kind = "branch" if node.op_type == "If" else "body"
                for role, values in (("input", branch.input), ("output", branch.output)):
                    for value in values:
                        kind = value.type.WhichOneof("value")
                        if kind not in (None, "tensor_type"):
                            raise UserError(f"node '{name}' ({node.op_type}): {role} '{value.name}' of {graph_kind} "
                                            f"'{branch.name}' is not a tensor but {NON_TENSOR_KINDS.get(kind, kind)} "
                                            "(ttc imports tensors only)")
                inner = constants | {t.name for t in branch.initializer}
                if node.op_type == "Loop":
                    inner |= {v.name for v in branch.input[:2]}  # bound to constants at each step
                collect_unsupported(model, branch, inner, supported, unsupported, f"{name}/{branch.name}/")
            continue
        if may_run_on_host(model, node, constants):
            continue
        op = node.op_type if default_domain else f"{node.domain}.{node.op_type}"
        unsupported.setdefault(op, []).append(name)


def element_type(onnx_type: int, where: str, value: str) -> ScalarType:
    name = ELEMENT_TYPES.get(onnx_type)
    if name is None:
        known = onnx_type in onnx.TensorProto.DataType.values()
        type_name = onnx.TensorProto.DataType.Name(onnx_type) if known else str(onnx_type)
        raise UserError(f"{where}: value '{value}' has element type {type_name}, which ttc does not support")
    return ScalarType(name)


@functools.cache
def attribute_default(op_type: str, opset: int, name: str) -> Any:
    """The default of an attribute from onnx's op schema; None when it has none (or no such attribute)."""
    attr = onnx.defs.get_schema(op_type, opset).attributes.get(name)
    if attr is None or attr.default_value.type == onnx.AttributeProto.UNDEFINED:
        return None
    return attribute_value(attr.default_value)


def attribute_value(attr: onnx.AttributeProto) -> Any:
    """An attribute as a Python value: lists become tuples, floats the shortest decimal of their
    float32 (so epsilon=1e-5 reads back as 1e-05, not 9.999999747378752e-06)."""
    value = helper.get_attribute_value(attr)
    if attr.type == onnx.AttributeProto.STRING:
        return value.decode()
    if attr.type == onnx.AttributeProto.STRINGS:
        return tuple(v.decode() for v in value)
    if attr.type == onnx.AttributeProto.FLOAT:
        return float(str(np.float32(value)))
    if attr.type == onnx.AttributeProto.FLOATS:
        return tuple(float(str(np.float32(v))) for v in value)
    return tuple(value) if isinstance(value, list) else value


@dataclass
class PendingConstant:
    """A `ttir.constant` not yet in the function: placed (and its weight stored) only if used."""

    op: Operation
    weight_name: str
    tensor: onnx.TensorProto | None = None  # an initializer, read only when needed
    data: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self.data is None:
            assert self.tensor is not None
            mapped = mapped_array(self.tensor)  # a large external weight: mapped from its file, not read
            self.data = mapped if mapped is not None else numpy_helper.to_array(self.tensor)
        return self.data


POOLS_WITH_CEIL_MODE = ("MaxPool", "AveragePool", "LpPool")


def ceil_mode_window_dropped(node: onnx.NodeProto, computed: tuple[int, ...], inferred: tuple[int, ...]) -> bool:
    """A pool with ceil_mode whose last window would start in the end padding: onnx's shape inference counts
    that window, onnxruntime and the operator's text ("sliding windows that would start in the right padded
    region are ignored") do not, and neither does ttc (`window_output_size`). Then the shapes differ by one
    along some spatial dims."""
    ceil = any(a.name == "ceil_mode" and a.i for a in node.attribute)
    return (node.op_type in POOLS_WITH_CEIL_MODE and ceil and len(computed) == len(inferred)
            and computed[:2] == inferred[:2]
            and all(c in (i, i - 1) for c, i in zip(computed[2:], inferred[2:], strict=True)))


class GraphImporter:
    """Walks one shape-inferred ONNX graph and builds the `ttir` module."""

    def __init__(self, model: onnx.ModelProto, device: DeviceAttr) -> None:
        self.graph = model.graph
        self.opset = default_opset(model) or TARGET_OPSET
        self.types = {v.name: v.type for v in (*self.graph.input, *self.graph.value_info, *self.graph.output)}
        self.used = {name for node in self.graph.node for name in node.input if name}
        self.node_inputs = {name for node in self.graph.node for name in [*node.input, *outer_scope_inputs(node)]
                            if name}
        self.used.update(output.name for output in self.graph.output)
        self.quantization_parameters = quantization_parameter_nodes(self.graph)
        self.module = Module()
        self.module.attributes[DEVICE_ATTR_NAME] = device
        inputs = graph_inputs(model)
        self.arg_types = [self.input_type(v.name) for v in inputs]
        self.func = Function.create("main", self.arg_types, [], arg_attrs=[{NAME_ATTR: v.name} for v in inputs])
        self.module.body.append(self.func.op)
        self.block = self.func.body
        self.values: dict[str, Value] = {v.name: arg for v, arg in zip(inputs, self.func.args, strict=True)}
        self.constants: list[PendingConstant] = []  # in graph order
        self.constant_of: dict[Value, PendingConstant] = {}

    def run(self) -> Module:
        for tensor in self.graph.initializer:
            where = f"initializer '{tensor.name}'"
            ttype = TensorType(tuple(tensor.dims), element_type(tensor.data_type, where, tensor.name))
            self.values[tensor.name] = self.add_constant(ttype, tensor.name, NameLoc(tensor.name), tensor=tensor)
        for index, node in enumerate(self.graph.node):
            self.convert(node, index)
        results = [self.value(output.name, "graph output") for output in self.graph.output]
        Builder.at_end(self.block).create(RETURN_OP, results)
        self.func.set_type(FunctionType(tuple(self.arg_types), tuple(v.type for v in results)))
        self.func.op.attributes["res_attrs"] = tuple({NAME_ATTR: output.name} for output in self.graph.output)
        self.place_constants()
        return self.module

    def convert(self, node: onnx.NodeProto, index: int, name: str | None = None) -> None:
        ctx = NodeContext(self, node, name or node_name(node, index))
        constants = {name for name in [*node.input, *outer_scope_inputs(node)] if name and self.is_constant(name)}
        empty = self.empty_outputs(node)
        if empty and all(name in empty for name in node.output if name):
            outputs = [self.empty_constant(ctx, name) if name else None for name in node.output]
        elif node.op_type not in SHAPE_OPS and is_foldable(node, constants):
            outputs = self.fold(ctx)
        elif node.op_type not in SHAPE_OPS and is_foldable(node, constants | self.empty_inputs(node)) \
                and not any(0 in (self.inferred_shape(name) or (0,)) for name in node.output if name):
            outputs = self.fold(ctx)  # a reduction over an empty dim: its result does not depend on data
        elif runs_on_host(self, node):
            outputs = convert_on_host(ctx)
        else:
            convert = find_converter(node.op_type, self.opset)
            if convert is None:
                raise ctx.error(f"no converter for {node.op_type} at opset {self.opset}")
            outputs = convert(ctx)
            outputs = [outputs] if isinstance(outputs, Value) else list(outputs)
        for name, value in zip(node.output, outputs, strict=False):
            if not name:
                continue
            if name in empty and (value is None or not self.is_constant_value(value)):
                value = self.empty_constant(ctx, name)  # whatever the converter built for it is dead
            inferred = self.inferred_shape(name)
            if inferred is not None and isinstance(value.type, TensorType) and value.type.shape != inferred \
                    and ceil_mode_window_dropped(node, value.type.shape, inferred):
                self.forget_inferred_shapes_from(name)
            elif inferred is not None and isinstance(value.type, TensorType) and value.type.shape != inferred:
                raise RuntimeError(f"internal error: {ctx.where} gave '{name}' the shape {value.type.shape}, "
                                   f"shape inference says {inferred}")
            self.values[name] = value

    def inline_graph(self, graph: onnx.GraphProto, prefix: str,
                     bindings: Sequence[Value] = ()) -> list[Value]:
        """Convert a subgraph's nodes (an If's branch, one step of a Scan's or Loop's body) into the function,
        each located at `prefix/` and its name: its inputs are `bindings` (in order), its initializers become
        constants, its reads of the enclosing graph resolve to the values already there (ONNX names are
        unique across a graph and its subgraphs). Returns its outputs. A body inlined once per step binds
        the same names again each time; its outputs are read before the next step rebinds them."""
        if len(bindings) != len(graph.input):
            raise RuntimeError(f"internal error: {prefix} has {len(graph.input)} inputs, {len(bindings)} bound")
        self.values.update(zip((v.name for v in graph.input), bindings, strict=True))
        self.types.update({v.name: v.type for v in (*graph.value_info, *graph.output) if v.type.HasField("tensor_type")})
        self.used.update(name for node in graph.node for name in node.input if name)
        self.used.update(output.name for output in graph.output)
        self.node_inputs.update(name for node in graph.node for name in [*node.input, *outer_scope_inputs(node)]
                                if name)
        for tensor in graph.initializer:
            where = f"initializer '{tensor.name}'"
            ttype = TensorType(tuple(tensor.dims), element_type(tensor.data_type, where, tensor.name))
            self.values[tensor.name] = self.add_constant(ttype, tensor.name, NameLoc(f"{prefix}/{tensor.name}"),
                                                         tensor=tensor)
        for index, node in enumerate(graph.node):
            self.convert(node, index, f"{prefix}/{node_name(node, index)}")
        return [self.value(output.name, f"{prefix}: output") for output in graph.output]

    def empty_outputs(self, node: onnx.NodeProto) -> set[str]:
        """The node's outputs that shape inference gives no elements, with a known element type."""
        return {name for name in node.output if name and 0 in (self.inferred_shape(name) or (1,))
                and self.output_element_type(name) is not None}

    def empty_constant(self, ctx: NodeContext, name: str) -> Value:
        """An output without elements: its shape and element type are its whole value, a constant."""
        element = self.output_element_type(name)
        shape = self.inferred_shape(name)
        assert element is not None and shape is not None
        return ctx.constant(np.zeros(shape, element.numpy_dtype()), name)

    def empty_inputs(self, node: onnx.NodeProto) -> set[str]:
        """The node's inputs that are empty tensors: they hold no data, so they are known at compile time."""
        return {name for name in node.input if name and name in self.values
                and isinstance(self.values[name].type, TensorType) and 0 in self.values[name].type.shape}

    def is_constant(self, name: str) -> bool:
        value = self.values.get(name)
        return value is not None and value in self.constant_of

    def is_constant_value(self, value: Value) -> bool:
        return value in self.constant_of

    def constant_array(self, value: Value) -> np.ndarray:
        return self.constant_of[value].array()

    def output_element_type(self, name: str) -> ScalarType | None:
        """The element type shape inference gave `name`, None when unknown or not a supported type."""
        type_proto = self.types.get(name)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            return None
        name_of = ELEMENT_TYPES.get(type_proto.tensor_type.elem_type)
        return ScalarType(name_of) if name_of else None

    def fold(self, ctx: NodeContext) -> list[Value]:
        """Evaluate a node on constant inputs with onnx's reference evaluator (compile-time folding)."""
        node = ctx.node
        feeds = {name: self.constant_of[self.values[name]].array() if self.is_constant(name)
                 else np.zeros(self.values[name].type.shape, self.values[name].type.element_type.numpy_dtype())
                 for name in [*node.input, *outer_scope_inputs(node)] if name}
        try:
            results = evaluate_node(node, feeds, self.opset)
        except Exception as exc:
            raise ctx.error(f"cannot fold this constant node at compile time: {exc}") from None
        outputs = []
        for name, array in zip(node.output, results, strict=False):
            outputs.append(ctx.constant(np.asarray(array, order="C"), name or node.output[0]))
        return outputs

    # -- values and types -----------------------------------------------------------------------

    def value(self, name: str, where: str) -> Value:
        value = self.values.get(name)
        if value is None:
            raise UserError(f"{where}: value '{name}' is not defined by any earlier node, input or initializer")
        return value

    def input_type(self, name: str) -> TensorType:
        """A graph input's static tensor type (the loader has fixed every input's shape)."""
        where = "graph input"
        type_proto = self.types[name]
        if not type_proto.HasField("tensor_type"):
            raise UserError(f"{where}: value '{name}' is not a tensor (ttc imports tensors only)")
        shape = self.inferred_shape(name)
        if shape is None:
            raise UserError(f"{where}: value '{name}' has no static shape")
        return TensorType(shape, element_type(type_proto.tensor_type.elem_type, where, name))

    def inferred_dims(self, name: str) -> tuple[int | None, ...] | None:
        """The shape inference gave `name` with None for each dim it left unknown; None when the rank is unknown."""
        type_proto = self.types.get(name)
        if type_proto is None or not type_proto.tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in type_proto.tensor_type.shape.dim)

    def forget_inferred_shapes_from(self, name: str) -> None:
        """Drop the shapes shape inference gave `name` and every value computed from it (their element types
        stay): the converters' own shapes hold there instead."""
        tainted = {name}
        for node in self.graph.node:
            if any(i in tainted for i in [*node.input, *outer_scope_inputs(node)] if i):
                tainted.update(o for o in node.output if o)
        for value in tainted:
            if value in self.types and self.types[value].HasField("tensor_type"):
                shapeless = onnx.TypeProto()
                shapeless.CopyFrom(self.types[value])
                shapeless.tensor_type.ClearField("shape")
                self.types[value] = shapeless

    def inferred_shape(self, name: str) -> tuple[int, ...] | None:
        """The static shape shape inference gave `name`, None when unknown or not static."""
        type_proto = self.types.get(name)
        if type_proto is None or not type_proto.tensor_type.HasField("shape"):
            return None
        dims = type_proto.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            return None
        return tuple(d.dim_value for d in dims)

    # -- constants ------------------------------------------------------------------------------

    def add_constant(self, ttype: TensorType, weight_name: str, loc: Location,
                     tensor: onnx.TensorProto | None = None, data: np.ndarray | None = None) -> Value:
        """A constant value; its op joins the function in `place_constants` if something uses it."""
        op = Operation(ttir.CONSTANT.name, result_types=[ttype], loc=loc)
        pending = PendingConstant(op, weight_name, tensor, data)
        self.constants.append(pending)
        self.constant_of[op.result] = pending
        return op.result

    def place_constants(self) -> None:
        """Put the used constants at the top of the function in graph order; weights get stored."""
        used = [c for c in self.constants if c.op.result.has_uses]
        for position, pending in enumerate(used):
            pending.op.attributes["value"] = self.constant_attr(pending)
            self.block.insert(position, pending.op)

    def constant_attr(self, pending: PendingConstant) -> DenseAttr | WeightAttr:
        ttype = pending.op.result.type
        assert isinstance(ttype, TensorType)
        array = pending.array()
        is_float_initializer = pending.tensor is not None and array.dtype.kind == "f" and array.size > 1
        if array.size <= INLINE_MAX_ELEMENTS and not is_float_initializer:
            return DenseAttr(ttype, array)
        return WeightAttr(self.module.add_weight(pending.weight_name, np.ascontiguousarray(array)))


class NodeContext:
    """What a converter sees of one ONNX node: inputs as IR values, inferred output shapes,
    attributes with their schema defaults, and ops created at the node's location."""

    def __init__(self, importer: GraphImporter, node: onnx.NodeProto, name: str) -> None:
        self.importer = importer
        self.node = node
        self.name = name
        self.loc = NameLoc(name)
        self.where = f"node '{name}' ({node.op_type})"

    def error(self, message: str) -> UserError:
        return UserError(f"{self.where}: {message}")

    def attr(self, name: str) -> Any:
        """The node's attribute, else the schema default at the model's opset (None if neither)."""
        for attr in self.node.attribute:
            if attr.name == name:
                return attribute_value(attr)
        return attribute_default(self.node.op_type, self.importer.opset, name)

    def has_input(self, index: int) -> bool:
        return index < len(self.node.input) and self.node.input[index] != ""

    def input(self, index: int) -> Value:
        if not self.has_input(index):
            raise self.error(f"input {index} is missing")
        return self.importer.value(self.node.input[index], self.where)

    def input_constant(self, index: int) -> np.ndarray | None:
        """The value of a constant input (initializer, Constant, Shape), None if it is computed."""
        pending = self.importer.constant_of.get(self.input(index))
        return None if pending is None else pending.array()

    def inferred_shape(self, index: int) -> tuple[int, ...] | None:
        """The static shape inference gave output `index`, or None."""
        return self.importer.inferred_shape(self.node.output[index])

    def output_used(self, index: int) -> bool:
        return index < len(self.node.output) and self.node.output[index] in self.importer.used

    def create(self, op_name: str, operands: Sequence[Value], result_type: Any,
               attributes: dict[str, Any] | None = None) -> Value:
        """A new op at the end of the function, located at this node."""
        op = Builder.at_end(self.importer.block).create(op_name, operands, [result_type], attributes, self.loc)
        return op.result

    def constant(self, array: np.ndarray, name: str | None = None) -> Value:
        """A constant output `name` (the first output by default; a weight of that name when large)."""
        name = name or self.node.output[0]
        onnx_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        ttype = TensorType(array.shape, element_type(onnx_type, self.where, name))
        return self.importer.add_constant(ttype, name, self.loc, data=array)

