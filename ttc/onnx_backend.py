"""ttc as an ONNX backend (`onnx.backend.base.Backend`): the API the ONNX backend tests drive.

    import ttc.onnx_backend as backend
    rep = backend.prepare(model)             # compiles for the emulated Grayskull (ttc.compile)
    outputs = rep.run([x, y])                # runs on the emulator; outputs in graph order
    outputs = backend.run_node(node, [x])    # one node as a one-node model

`prepare` compiles at once when every graph input has a static shape; an input with a dynamic
dimension is fixed by the shape of the array fed to `run`, which compiles on first use (once per
distinct set of input shapes). Outputs come back in the dtype the model declares: the device computes
floats in bf16 (or Bfp8_b), and they are returned as float32 for float32 outputs (float16, bfloat16
and float64 outputs are cast to their own dtype); integer and boolean outputs keep their dtype.

Shape parameters: ttc compiles static programs, so a numeric (or boolean) graph input whose value decides
a shape is specialised: one that feeds a shape parameter (a Reshape's shape, Slice's starts/ends/axes/steps,
the axes of Squeeze/Unsqueeze and the reductions, Split's split, Expand's and Tile's shapes, Pad's pads,
Range's bounds, a Loop's trip count, Dropout's ratio and training_mode, which decide its compile-time
mask, ...), directly or through the nodes that compute it (a window length through the arithmetic of an
expanded HannWindow). `run` compiles the model with that input's fed value as a constant, once per
distinct value, exactly as if the model had carried it as an initializer; where the input also feeds
data (a Range's start is its first element), that data is then a constant too, which it is for the
compiled program anyway. Inputs that decide no shape are never specialised.

Devices: the ONNX backend API names devices "CPU" and "CUDA" (with an optional ":index"). ttc runs
on the emulated Grayskull, which executes on the host, so it answers to "CPU" (and "CPU:0") only;
`supports_device("CUDA")` is False and `prepare(model, "CUDA")` is a UserError.

Compile options (`arch`, `dtype`, `math_fidelity`) pass through `prepare(model, device, **options)`.
Errors are ttc's own: a model ttc cannot compile raises `UserError`, a faulty device program
`DeviceFault`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

import ttc
from ttc.compiler import CompiledModel
from ttc.frontend.folding import outer_scope_inputs
from ttc.ir.diagnostics import UserError

SUPPORTED_DEVICES = ("CPU", "CPU:0")
COMPILE_OPTIONS = ("arch", "dtype", "math_fidelity")

InputShapes = tuple[tuple[int, ...], ...]
CompileKey = tuple[InputShapes, tuple[bytes, ...]]

# (op type -> input positions) that are shape parameters: values ttc needs at compile time (a shape, the
# length of a range, a mode deciding what a node computes).
SHAPE_PARAMETERS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}), "Squeeze": frozenset({1}), "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}), "Pad": frozenset({1, 3}), "ConstantOfShape": frozenset({0}),
    "ReduceMean": frozenset({1}), "ReduceSum": frozenset({1}), "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}), "ReduceProd": frozenset({1}), "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}), "ReduceLogSum": frozenset({1}), "ReduceLogSumExp": frozenset({1}),
    "ReduceSumSquare": frozenset({1}), "TopK": frozenset({1}), "OneHot": frozenset({1}),
    "CumSum": frozenset({1}), "CumProd": frozenset({1}), "Resize": frozenset({1, 2, 3}), "Upsample": frozenset({1}),
    "Range": frozenset({0, 1, 2}), "Trilu": frozenset({1}), "HannWindow": frozenset({0}),
    "HammingWindow": frozenset({0}), "BlackmanWindow": frozenset({0}), "MelWeightMatrix": frozenset({0, 1, 2, 3, 4}),
    "Dropout": frozenset({1, 2}),  # the ratio and training_mode: ttc draws a training mask at compile time
    "AffineGrid": frozenset({1}),  # the output grid's size
    "Col2Im": frozenset({1, 2}),  # image_shape and block_shape
    "DFT": frozenset({1, 2}),  # dft_length and axis
    "STFT": frozenset({1, 3}),  # frame_step and frame_length
    "CenterCropPad": frozenset({1}), "Compress": frozenset({1}), "Loop": frozenset({0, 1}),
    "MaxUnpool": frozenset({2}),  # the trip count and condition: how long the scan outputs are
}


def shape_parameter_inputs(model: onnx.ModelProto, candidates: Sequence[onnx.ValueInfoProto]) -> list[str]:
    """The numeric graph inputs whose values decide a shape: they reach a shape-parameter position, directly
    or through the nodes computing it (Shape and Size read only their input's static shape)."""
    deciding = {node.input[i] for node in model.graph.node
                for i in SHAPE_PARAMETERS.get(node.op_type, frozenset()) if i < len(node.input) and node.input[i]}
    for node in reversed(model.graph.node):  # graph order is topological: consumers come after producers
        if node.op_type not in ("Shape", "Size") and deciding.intersection(node.output):
            deciding.update(name for name in [*node.input, *outer_scope_inputs(node)] if name)
    outputs = {v.name for v in model.graph.output}
    return [v.name for v in candidates if v.name in deciding and v.name not in outputs
            and _is_number(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))]


def _is_number(dtype: np.dtype) -> bool:
    """numpy's numbers and booleans, and ml_dtypes' floats (bfloat16, float8_*), which numpy sees as kind 'V'."""
    return dtype.kind in "iufb" or dtype.name.startswith(("bfloat16", "float8", "float4"))


class TtcBackendRep(BackendRep):
    """A model prepared for the emulated device; `run` may be called any number of times."""

    def __init__(self, model: onnx.ModelProto, options: Mapping[str, Any]) -> None:
        self.model = model
        self.options = dict(options)
        initializers = {tensor.name for tensor in model.graph.initializer}
        self.inputs = [value for value in model.graph.input if value.name not in initializers]
        self.output_names = [value.name for value in model.graph.output]
        for value in self.inputs:
            if not value.type.HasField("tensor_type"):
                raise UserError(f"graph input: value '{value.name}' is not a tensor (ttc imports tensors only)")
        self.dynamic_inputs = {value.name for value in self.inputs if _static_shape(value) is None}
        self.parameter_inputs = shape_parameter_inputs(model, self.inputs)
        self._compiled: dict[CompileKey, CompiledModel] = {}
        self.last_compiled: CompiledModel | None = None
        if not self.dynamic_inputs and not self.parameter_inputs:
            self.last_compiled = self.compiled_for(tuple(_static_shape(v) or () for v in self.inputs))

    @property
    def input_names(self) -> list[str]:
        return [value.name for value in self.inputs]

    def compiled_for(self, shapes: InputShapes, parameters: Mapping[str, np.ndarray] | None = None) -> CompiledModel:
        """The model compiled with these input shapes and shape-parameter values (once per distinct set)."""
        parameters = parameters or {}
        key = (shapes, tuple(parameters[name].tobytes() + str(parameters[name].shape).encode()
                             for name in self.parameter_inputs if name in parameters))
        compiled = self._compiled.get(key)
        if compiled is None:
            model = self.model
            if parameters:
                model = onnx.ModelProto()
                model.CopyFrom(self.model)
                kept = [v for v in model.graph.input if v.name not in parameters]
                del model.graph.input[:]
                model.graph.input.extend(kept)
                model.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(value), name)
                                               for name, value in parameters.items())
            input_shapes = {value.name: shape for value, shape in zip(self.inputs, shapes, strict=True)
                            if value.name in self.dynamic_inputs and value.name not in parameters}
            compiled = ttc.compile(model, input_shapes=input_shapes, **self.options)
            self._compiled[key] = compiled
        return compiled

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run on the emulated device. `inputs`: arrays in graph-input order (initializers are not
        inputs), a dict by name, or one array for a one-input model. Returns a named tuple of the
        outputs in graph order (also indexable by output name)."""
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        feeds = self._feeds(inputs)
        shapes = tuple(feeds[value.name].shape for value in self.inputs)
        parameters = {name: feeds.pop(name) for name in self.parameter_inputs}
        compiled = self.compiled_for(shapes, parameters)
        self.last_compiled = compiled
        results = compiled.run(feeds)
        dtypes = {entry["name"]: np.dtype(entry["dtype"]) for entry in compiled.manifest["outputs"]}
        outputs = [results[name].astype(dtypes[name], copy=False) for name in self.output_names]
        return namedtupledict("Outputs", self.output_names)(*outputs)

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        names = self.input_names
        if isinstance(inputs, Mapping):
            missing = [name for name in names if name not in inputs]
            if missing:
                raise UserError(f"missing input(s) {', '.join(map(repr, missing))} "
                                f"(the model takes {', '.join(map(repr, names)) or 'none'})")
            return {name: np.asarray(inputs[name]) for name in names}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        arrays = list(inputs)
        if len(arrays) != len(names):
            raise UserError(f"the model takes {len(names)} input(s) ({', '.join(map(repr, names)) or 'none'}), "
                            f"{len(arrays)} given")
        return {name: np.asarray(array) for name, array in zip(names, arrays, strict=True)}


class TtcBackend(Backend):
    """ONNX backend API over `ttc.compile` and the emulated Grayskull."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> TtcBackendRep:
        """Compile `model` for the emulated device (compile options as keywords: arch, dtype,
        math_fidelity). Raises UserError when ttc cannot compile it."""
        _check_device(device)
        unknown = sorted(set(kwargs) - set(COMPILE_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(unknown)} "
                            f"(compile options are {', '.join(COMPILE_OPTIONS)})")
        return TtcBackendRep(model, kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node, built into a one-node model whose inputs are the node's (non-empty) inputs
        with the dtypes and shapes of `inputs`. `opset_version` (keyword) sets the model's opset
        (default: the newest onnx knows); `outputs_info` optionally declares (dtype, shape) of each
        output, otherwise shape inference finds them."""
        opset = kwargs.pop("opset_version", None) or onnx.defs.onnx_opset_version()
        input_names = [name for name in node.input if name]
        arrays = ([np.asarray(inputs[name]) for name in input_names] if isinstance(inputs, Mapping)
                  else [np.asarray(array) for array in inputs])
        if len(arrays) != len(input_names):
            raise UserError(f"node '{node.name or node.op_type}' has {len(input_names)} input(s), "
                            f"{len(arrays)} given")
        model = node_model(node, arrays, opset, outputs_info)
        return cls.prepare(model, device, **kwargs).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """True for "CPU" and "CPU:0": the emulated Grayskull runs on the host (see the module doc)."""
        return device in SUPPORTED_DEVICES


def node_model(node: onnx.NodeProto, arrays: Sequence[np.ndarray], opset: int,
               outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None) -> onnx.ModelProto:
    """A model holding `node` alone: its inputs typed after `arrays`, its outputs after
    `outputs_info` (or left to shape inference)."""
    input_names = [name for name in node.input if name]
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
              for name, array in zip(input_names, arrays, strict=True)]
    if outputs_info is not None:
        outputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)
                   for name, (dtype, shape) in zip(node.output, outputs_info, strict=True)]
        graph = helper.make_graph([node], f"{node.op_type}_node", inputs, outputs)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    graph = helper.make_graph([node], f"{node.op_type}_node", inputs, [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = {value.name: value for value in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in filter(None, node.output):
        if name not in inferred:
            raise UserError(f"node '{node.name or node.op_type}': shape inference gives no type for output "
                            f"'{name}'; pass outputs_info")
        model.graph.output.append(inferred[name])
    return model


def _check_device(device: str) -> None:
    if device not in SUPPORTED_DEVICES:
        raise UserError(f"device '{device}' is not supported: ttc runs on the emulated Grayskull, which the "
                        f"ONNX backend API addresses as {' or '.join(map(repr, SUPPORTED_DEVICES))}")


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    """The declared shape of a tensor input when every dimension is a number, else None."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(dim.HasField("dim_value") for dim in dims):
        return None
    return tuple(dim.dim_value for dim in dims)


prepare = TtcBackend.prepare
run_model = TtcBackend.run_model
run_node = TtcBackend.run_node
supports_device = TtcBackend.supports_device
is_compatible = TtcBackend.is_compatible

__all__ = ["TtcBackend", "TtcBackendRep", "is_compatible", "node_model", "prepare", "run_model", "run_node",
           "supports_device"]
