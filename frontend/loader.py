"""Load an ONNX model for import: read it (external data confined to the model's folder), check it,
fix its dynamic input dimensions, convert old opsets and infer static shapes.

Every failure is a UserError naming the file, tensor, input or node at fault; onnx's own message is
quoted. Large models work: the file is read by path, the checker runs on the path, and big external
tensors are loaded only after the steps that serialize the model (checker, converter, inference). Big
inline initializers are likewise set aside during conversion and inference (`detach_large_tensors`):
both serialize the whole model, which for VGG-19's 143M inline weights took eight seconds.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import external_data_helper

from ttc.ir import UserError

MIN_OPSET = 13  # the oldest default-domain opset the converters are written for
TARGET_OPSET = 17  # what models below MIN_OPSET are converted to
DEFAULT_DOMAINS = ("", "ai.onnx")
# External tensors up to this many elements are loaded before shape inference, which reads the
# values of shape-like constants (Reshape targets); bigger ones (weights) are loaded last.
SHAPE_TENSOR_MAX_ELEMENTS = 1024

ModelSource = str | os.PathLike[str] | onnx.ModelProto
InputShapes = Mapping[str, Sequence[int]]


def load_model(source: ModelSource, input_shapes: InputShapes | None = None) -> onnx.ModelProto:
    """The model checked, with static input shapes, at an opset >= MIN_OPSET, shape-inferred and
    with its external data loaded. A ModelProto given by the caller is copied, never changed."""
    model, path = read_model(source)
    return prepare_model(model, path, input_shapes)


# ----------------------------------------------------------------------------------------------
# Reading


def read_model(source: ModelSource) -> tuple[onnx.ModelProto, str | None]:
    """Parse the model (without external data, whose locations are checked) and return it with its
    path (None for a ModelProto)."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        for tensor in external_tensors(model):
            raise UserError(f"tensor '{tensor.name}' keeps its data in the external file "
                            f"'{_location(tensor)}'; give the model by its path so the file can be found")
        normalize_dynamic_dims(model)
        check_structure(model, None)
        return model, None
    path = os.fspath(source)
    model = _parse_file(path)
    normalize_dynamic_dims(model)
    check_structure(model, path)
    check_external_locations(model, path)
    return model, path


def normalize_dynamic_dims(model: onnx.ModelProto) -> None:
    """Exporters spell a dynamic dimension as a dim_param name, no value at all, or a dim_value of -1 (not
    valid ONNX, but common). The last becomes an unnamed dynamic dim, so `--input-shape` fixes it like the
    others instead of the model "fixing" it to -1. A dim_value of 0 is ambiguous (a zero-size tensor, or
    some exporters' "dynamic"): it stays 0 unless `--input-shape` gives it a size (`_set_input_shape`)."""
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()


def _parse_file(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not an ONNX model file")
    try:
        model = onnx.load(path, load_external_data=False)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except Exception as exc:  # protobuf's DecodeError and the like
        raise UserError(f"{path}: not an ONNX model (the bytes are not an ONNX protobuf: {exc})") from None
    if not model.HasField("graph"):
        raise UserError(f"{path}: not an ONNX model (it holds no graph)")
    return model


MAX_RANK = 32  # the rank any tensor may have (onnxruntime's kernels and the device's views go no further)
MAX_ELEMENTS = 1 << 36  # elements of one tensor: beyond it no Grayskull's 8 GiB DRAM holds it at any format


def check_structure(model: onnx.ModelProto, path: str | None) -> None:
    """What the later steps rely on, checked before any of them runs: every name valid UTF-8, every tensor
    and value of rank <= MAX_RANK with dims >= 0 and at most MAX_ELEMENTS elements, inline data as long as its
    dims say, and external data entries well formed (location, offset and length) and inside their file."""
    where = path or "model"
    _check_strings(model, where, "model")
    for graph in _graphs(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                dims = value.type.tensor_type.shape.dim
                if len(dims) > MAX_RANK:
                    raise UserError(f"{where}: value '{value.name}' has rank {len(dims)}; ttc supports rank "
                                    f"{MAX_RANK} at most")
                known = [d.dim_value for d in dims if d.HasField("dim_value")]
                if any(d < 0 for d in known):
                    raise UserError(f"{where}: value '{value.name}' has a negative dimension {known}")
                if math.prod(known) > MAX_ELEMENTS:
                    raise UserError(f"{where}: value '{value.name}' of shape {known} has {math.prod(known)} "
                                    f"elements, more than any Grayskull's DRAM holds")
    folder = os.path.dirname(os.path.abspath(path)) if path is not None else None
    for tensor in _graph_tensors(model.graph):
        _check_tensor(tensor, where, folder)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for subgraph in attr.graphs:
                yield from _graphs(subgraph)


def _check_strings(message: object, where: str, field_path: str, depth: int = 0) -> None:
    """Protobuf hands back a string field that is not valid UTF-8 as bytes; such a name is refused here."""
    from google.protobuf.descriptor import FieldDescriptor

    if depth > 64:
        raise UserError(f"{where}: the model nests graphs more than 64 deep")
    for field, value in message.ListFields():  # type: ignore[attr-defined]
        if field.type == FieldDescriptor.TYPE_STRING:
            for item in (value if _repeated(field) else [value]):
                if isinstance(item, bytes):
                    raise UserError(f"{where}: {field_path}.{field.name} is not valid UTF-8 text ({item[:40]!r})")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if _repeated(field) else [value]
            for i, item in enumerate(items):
                if field.message_type.name == "TensorProto" and not _has_string_bytes(item):
                    continue
                label = getattr(item, "name", "") if isinstance(getattr(item, "name", ""), str) else ""
                _check_strings(item, where, f"{field_path}.{field.name}[{label or i}]", depth + 1)


def _has_string_bytes(tensor: onnx.TensorProto) -> bool:
    """Whether a tensor's own string fields (name, doc, external data keys) hold bytes: checked without walking
    its data fields."""
    fields = [tensor.name, tensor.doc_string, *(e.key for e in tensor.external_data),
              *(e.value for e in tensor.external_data)]
    return any(isinstance(f, bytes) for f in fields)


def _repeated(field: object) -> bool:
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED  # type: ignore[attr-defined]


_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def _data_bytes(tensor: onnx.TensorProto, where: str) -> int | None:
    """The bytes a tensor's data occupies as raw data (None for strings, which have no fixed size)."""
    count = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{where}: tensor '{tensor.name}' has an unknown data type {tensor.data_type}") from None


def _check_tensor(tensor: onnx.TensorProto, where: str, folder: str | None) -> None:
    dims = list(tensor.dims)
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise UserError(f"{where}: tensor '{tensor.name}' has dims {dims[:40]} (rank at most {MAX_RANK}, dims >= 0)")
    if math.prod(dims) > MAX_ELEMENTS:
        raise UserError(f"{where}: tensor '{tensor.name}' of shape {dims} has {math.prod(dims)} elements, more than "
                        f"any Grayskull's DRAM holds")
    expected = _data_bytes(tensor, where)
    if not external_data_helper.uses_external_data(tensor):
        if tensor.HasField("raw_data") and expected is not None and len(tensor.raw_data) != expected:
            raise UserError(f"{where}: tensor '{tensor.name}' of shape {dims} holds {len(tensor.raw_data)} bytes of "
                            f"data, not the {expected} its dims and type need")
        return
    entries = {}
    for entry in tensor.external_data:
        if entry.key in entries:
            raise UserError(f"{where}: tensor '{tensor.name}' gives external-data key '{entry.key}' twice")
        entries[entry.key] = entry.value
    location = entries.get("location", "")
    if not location or "\x00" in location:
        raise UserError(f"{where}: tensor '{tensor.name}' has a bad external data location {location!r} "
                        f"(empty or holding a NUL byte)")
    numbers_ = {}
    for key in ("offset", "length"):
        text = entries.get(key)
        if text is None:
            continue
        if not text.isascii() or not text.isdigit():
            raise UserError(f"{where}: tensor '{tensor.name}' has external-data {key} {text!r}; it must be a "
                            f"non-negative integer")
        numbers_[key] = int(text)
    if expected is None:
        raise UserError(f"{where}: tensor '{tensor.name}' keeps strings in external data, which ttc does not read")
    if "length" in numbers_ and numbers_["length"] != expected:
        raise UserError(f"{where}: tensor '{tensor.name}' of shape {dims} needs {expected} bytes but its external "
                        f"data length is {numbers_['length']}")
    if folder is None:
        return
    target = os.path.realpath(os.path.join(folder, location))
    root = os.path.realpath(folder)
    if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
        return  # check_external_locations reports it, naming the folder
    size = os.path.getsize(target)
    offset = numbers_.get("offset", 0)
    if offset + expected > size:
        raise UserError(f"{where}: tensor '{tensor.name}' of shape {dims} needs {expected} bytes from offset "
                        f"{offset} of '{location}', but that file has {size} bytes")


def _set_entry(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = key, value


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model (initializers, attributes, subgraphs) whose data is in a file."""
    return (t for t in _graph_tensors(model.graph) if external_data_helper.uses_external_data(t))


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for subgraph in attr.graphs:
                yield from _graph_tensors(subgraph)


def _location(tensor: onnx.TensorProto) -> str:
    return external_data_helper.ExternalDataInfo(tensor).location


def check_external_locations(model: onnx.ModelProto, path: str) -> None:
    """Every external data file must exist and resolve (symlinks followed) inside the model's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    root = os.path.realpath(folder)
    for tensor in external_tensors(model):
        location = _location(tensor)
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([root, target]) != root:
            raise UserError(f"{path}: tensor '{tensor.name}' has external data location '{location}', "
                            f"which resolves to {target}, outside the model's folder {root}")
        if not os.path.isfile(target):
            raise UserError(f"{path}: external data file '{location}' of tensor '{tensor.name}' "
                            f"not found (looked for {target})")


# Element types whose external bytes are a little-endian numpy array as they stand (mapped, not read)
_MAPPABLE = {onnx.TensorProto.FLOAT: "<f4", onnx.TensorProto.DOUBLE: "<f8", onnx.TensorProto.FLOAT16: "<f2",
             onnx.TensorProto.INT8: "i1", onnx.TensorProto.UINT8: "u1", onnx.TensorProto.INT16: "<i2",
             onnx.TensorProto.UINT16: "<u2", onnx.TensorProto.INT32: "<i4", onnx.TensorProto.UINT32: "<u4",
             onnx.TensorProto.INT64: "<i8", onnx.TensorProto.UINT64: "<u8", onnx.TensorProto.BOOL: "?"}
MAPPED = "ttc.mapped"  # the external-data key marking an initializer left in its (checked) file, to be mapped


def mapped_array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """The initializer as a copy-on-write memory map of its external file, when `load_external_data` left it
    there (None otherwise): its pages are read when used and cost no anonymous memory until written."""
    entries = {e.key: e.value for e in tensor.external_data}
    if entries.get(MAPPED) != "1":
        return None
    shape = tuple(tensor.dims)
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, np.dtype(_MAPPABLE[tensor.data_type]))
    data = np.memmap(entries["location"], dtype=np.dtype(_MAPPABLE[tensor.data_type]), mode="c",
                     offset=int(entries.get("offset", "0")), shape=(count,))
    return data.reshape(shape)


def load_external_data(model: onnx.ModelProto, path: str, max_elements: int | None = None,
                       mapped: bool = False) -> None:
    """Load external tensors (those with at most `max_elements` elements, if given) into the model. With
    `mapped`, large main-graph initializers of plain numeric types stay in their files instead, marked for
    `mapped_array` (their location made absolute; check_structure and check_external_locations have checked
    it, its offset and its length)."""
    folder = os.path.dirname(os.path.abspath(path))
    mappable = {t.name for t in model.graph.initializer if t.data_type in _MAPPABLE} if mapped else set()
    for tensor in list(external_tensors(model)):
        if max_elements is not None and math.prod(tensor.dims) > max_elements:
            continue
        if tensor.name in mappable and math.prod(tensor.dims) > SHAPE_TENSOR_MAX_ELEMENTS:
            location = os.path.realpath(os.path.join(folder, _location(tensor)))
            _set_entry(tensor, "location", location)
            _set_entry(tensor, MAPPED, "1")
            continue
        try:
            external_data_helper.load_external_data_for_tensor(tensor, folder)
        except Exception as exc:
            raise UserError(f"{path}: cannot load the external data of tensor '{tensor.name}' "
                            f"from '{_location(tensor)}': {exc}") from None
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


# ----------------------------------------------------------------------------------------------
# Checking, input shapes, opset conversion, shape inference


def prepare_model(model: onnx.ModelProto, path: str | None,
                  input_shapes: InputShapes | None = None, mapped: bool = False) -> onnx.ModelProto:
    """Check, fix input shapes, convert and infer; `model` is changed in place and must not be reused. With
    `mapped`, large external initializers stay in their files for `mapped_array` (the importer's way: the
    weights are not read twice into memory)."""
    check_model(model, path)
    apply_input_shapes(model, input_shapes or {})
    detached = detach_large_tensors(model)
    model = convert_opset(model)
    if path is not None:
        load_external_data(model, path, SHAPE_TENSOR_MAX_ELEMENTS)
    model = with_explicit_defaults(model, INFERENCE_DEFAULT_OPS) or model
    model = infer_shapes(model)
    reattach_tensors(model, detached)
    if path is not None:
        load_external_data(model, path, mapped=mapped)
    return model


# The external-data location of an initializer whose inline data `detach_large_tensors` set aside.
DETACHED = "<ttc: detached inline data>"


def detach_large_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Set aside the inline initializers above SHAPE_TENSOR_MAX_ELEMENTS elements: in their place (same order)
    each leaves a placeholder with its name, type and dims, marked as external data at DETACHED, which the
    converter and shape inference carry through untouched, as they do real external tensors. Returns the
    set-aside tensors by name (taken out of the model, not copied)."""
    tensors = list(model.graph.initializer)
    model.graph.ClearField("initializer")  # the tensors above keep their data
    detached: dict[str, onnx.TensorProto] = {}
    for tensor in tensors:
        if external_data_helper.uses_external_data(tensor) or math.prod(tensor.dims) <= SHAPE_TENSOR_MAX_ELEMENTS:
            model.graph.initializer.add().CopyFrom(tensor)
            continue
        detached[tensor.name] = tensor
        placeholder = model.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                                  data_location=onnx.TensorProto.EXTERNAL)
        entry = placeholder.external_data.add()
        entry.key, entry.value = "location", DETACHED
    return detached


def reattach_tensors(model: onnx.ModelProto, detached: Mapping[str, onnx.TensorProto]) -> None:
    """Put the data `detach_large_tensors` set aside back into the initializers of the same name."""
    for tensor in model.graph.initializer:
        if external_data_helper.uses_external_data(tensor) and _location(tensor) == DETACHED:
            tensor.CopyFrom(detached[tensor.name])


def check_model(model: onnx.ModelProto, path: str | None) -> None:
    """onnx's checker; by path when there is one, so the model is never serialized in memory."""
    try:
        onnx.checker.check_model(path if path is not None else model)
    except Exception as exc:
        raise UserError(f"{path or 'model'}: the ONNX checker rejected the model: {exc}") from None


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain (ai.onnx) opset version, None when it imports none."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    return max(versions) if versions else None


def convert_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Models below MIN_OPSET are converted to TARGET_OPSET; the others are left as they are."""
    opset = default_opset(model)
    if opset is None or opset >= MIN_OPSET:
        return model
    batched_scans = opset8_scans(model) if opset == 8 else set()
    io_types = {v.name: v.type for v in (*model.graph.input, *model.graph.output)}
    old_resizes = _old_resize_modes(model) if opset < 11 else {}
    try:
        converted = onnx.version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:
        raise UserError(f"cannot convert the model from opset {opset} to opset {TARGET_OPSET} "
                        f"(ttc imports opset {MIN_OPSET} and newer): {exc}") from None
    if batched_scans:
        unbatch_scans(converted, batched_scans, io_types)
    for node in converted.graph.node:
        if node.op_type == "Resize" and node.output and node.output[0] in old_resizes:
            _pin_resize_modes(node, old_resizes[node.output[0]])
    return converted


def _old_resize_modes(model: onnx.ModelProto) -> dict[str, str]:
    """Upsample (opset 7-9) and Resize-10 nodes by output, with the nearest rounding they mean: their
    coordinates are asymmetric (x_in = x_out / scale), and onnxruntime rounds a nearest neighbour down when
    upsampling and up when downsampling."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        values = [a.t for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and values:
            constants[node.output[0]] = values[0]
    modes = {}
    for node in model.graph.node:
        if node.op_type not in ("Upsample", "Resize") or not node.output:
            continue
        scales: list[float] = []
        for attr in node.attribute:
            if attr.name == "scales":
                scales = list(attr.floats)
        if not scales and len(node.input) > 1 and node.input[1] in constants:
            scales = [float(v) for v in onnx.numpy_helper.to_array(constants[node.input[1]]).ravel()]
        modes[node.output[0]] = "ceil" if scales and all(v <= 1 for v in scales) else "floor"
    return modes


def _pin_resize_modes(node: onnx.NodeProto, nearest: str) -> None:
    """Give a converted old resize the attributes of its old meaning, which onnx's version converter leaves to
    Resize-11's defaults (half_pixel, round_prefer_floor): a different result."""
    present = {a.name for a in node.attribute}
    if "coordinate_transformation_mode" not in present:
        node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
    if "nearest_mode" not in present:
        node.attribute.append(onnx.helper.make_attribute("nearest_mode", nearest))


def opset8_scans(model: onnx.ModelProto) -> set[str]:
    """The first outputs of the graph's opset-8 Scan nodes, which have a batch dim that Scan 9 dropped: onnx's
    converter removes it from the values' recorded shapes only, `unbatch_scans` from the data. Batch 1 and no
    sequence_lens are supported (what Scan 8 models do in practice); anything else is a UserError."""
    scans = [(index, node) for index, node in enumerate(model.graph.node)
             if node.op_type == "Scan" and node.domain in DEFAULT_DOMAINS]
    if not scans:
        return set()
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    types.update({t.name: onnx.helper.make_tensor_type_proto(t.data_type, t.dims) for t in model.graph.initializer})
    for index, node in scans:
        name = node.name or f"Scan_{index}"
        if node.input and node.input[0]:
            raise UserError(f"node '{name}' (Scan): opset-8 sequence_lens is not supported (ttc scans every "
                            "batch entry's whole sequence)")
        for value in node.input[1:]:
            dims = types[value].tensor_type.shape.dim if value in types else []
            if not dims or dims[0].dim_value != 1:
                batch = dims[0].dim_value or dims[0].dim_param if dims else "unknown"
                raise UserError(f"node '{name}' (Scan): opset-8 batch size {batch} of input '{value}' is not "
                                "supported (ttc converts the batch-1 form to Scan 9)")
    return {node.output[0] for _, node in scans}


def unbatch_scans(model: onnx.ModelProto, scans: set[str], io_types: Mapping[str, onnx.TypeProto]) -> None:
    """After conversion: squeeze the batch dim of 1 off the inputs of the Scan nodes whose first outputs are
    `scans` and put it back on their outputs, and restore the graph inputs' and outputs' types, from which
    the converter stripped it too (and drop the recorded shapes it stripped, for shape inference to redo)."""
    graph = model.graph
    nodes = list(graph.node)
    graph.ClearField("node")
    stripped: set[str] = set()  # the values whose recorded shapes the converter stripped
    for node in nodes:
        if node.op_type != "Scan" or not node.output or node.output[0] not in scans:
            graph.node.append(node)
            continue
        stripped.update(name for name in (*node.input, *node.output) if name)
        axis = f"{node.output[0]}/batch_axis"
        graph.initializer.append(onnx.helper.make_tensor(axis, onnx.TensorProto.INT64, [1], [0]))
        inputs, outputs = list(node.input), list(node.output)
        for i, name in enumerate(inputs):
            inputs[i] = f"{name}/unbatched"
            graph.node.append(onnx.helper.make_node("Squeeze", [name, axis], [inputs[i]]))
        node.ClearField("input")
        node.input.extend(inputs)
        node.ClearField("output")
        node.output.extend(f"{name}/unbatched" if name else "" for name in outputs)
        graph.node.append(node)
        graph.node.extend(onnx.helper.make_node("Unsqueeze", [f"{name}/unbatched", axis], [name])
                          for name in outputs if name)
    for value in (*graph.input, *graph.output):
        if value.name in io_types:
            value.type.CopyFrom(io_types[value.name])
    kept = [v for v in graph.value_info if v.name not in stripped]
    graph.ClearField("value_info")
    graph.value_info.extend(kept)


# Ops whose shape inference in onnx assumes another value than the schema's default for an absent
# attribute: STFT's onesided is taken as 0 (the default is 1), so its spectrum would get every bin.
INFERENCE_DEFAULT_OPS = frozenset({"STFT"})


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's strict shape inference, propagating constant shape values (Reshape targets).

    `prepare_model` first writes out the defaulted attributes of INFERENCE_DEFAULT_OPS. When inference
    fails, it is tried once more with every defaulted attribute written out (`with_explicit_defaults`):
    some function bodies read an attribute by reference and break when the node leaves it at its default
    (MeanVarianceNormalization's axes at opset 13). Writing a default out does not change what a node
    computes, but other checks read some attributes' mere presence (CastLike's saturate, RNN's list of
    activations), so it is not done to every model; the first error is the one reported."""
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)

    try:
        return infer(model)
    except Exception as exc:
        explicit = with_explicit_defaults(model)
        if explicit is not None:
            try:
                return infer(explicit)
            except Exception:
                pass
        raise UserError(f"ONNX shape inference failed: {exc}") from None


def with_explicit_defaults(model: onnx.ModelProto, ops: frozenset[str] | None = None) -> onnx.ModelProto | None:
    """A copy of `model` whose default-domain nodes (of `ops` only, if given) carry every attribute their
    schema gives a default, or None when no such node leaves one out."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    added = False
    for node in copy.graph.node:
        if node.domain not in ("", "ai.onnx") or (ops is not None and node.op_type not in ops):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
        except Exception:  # an unknown op: the supported-op check names it
            continue
        present = {a.name for a in node.attribute}
        for name, attr in schema.attributes.items():
            if name not in present and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
                default = onnx.AttributeProto()
                default.CopyFrom(attr.default_value)
                default.name = name
                node.attribute.append(default)
                added = True
    return copy if added else None


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs the caller feeds (inputs that are also initializers are weights)."""
    weights = {t.name for t in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in weights]


def apply_input_shapes(model: onnx.ModelProto, input_shapes: InputShapes) -> None:
    """Fix the shapes of the graph inputs; every input must end up with static dimensions."""
    inputs = {value.name: value for value in graph_inputs(model)}
    unknown = [name for name in input_shapes if name not in inputs]
    if unknown:
        raise UserError(f"--input-shape names no graph input: {', '.join(unknown)} "
                        f"(the inputs are: {', '.join(inputs) or 'none'})")
    missing = []
    sized_zero = False
    for name, value in inputs.items():
        if name in input_shapes:
            sized_zero |= 0 in (_dims(value) or [])
            _set_input_shape(value, tuple(input_shapes[name]))
        elif not _is_static(value):
            missing.append(_missing_shape_message(value))
    if missing:
        raise UserError("\n".join(missing))
    if sized_zero:  # a 0 meant "dynamic": the 0s downstream of it are the exporter's too, left to inference
        for value in (*model.graph.output, *model.graph.value_info):
            for dim in value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else ():
                if dim.HasField("dim_value") and dim.dim_value == 0:
                    dim.Clear()


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Static dims as ints, named ones as their dim_param, unknown ones as None (None: unknown rank)."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param or None for dim in tensor_type.shape.dim]


def _is_static(value: onnx.ValueInfoProto) -> bool:
    """True when the input's rank and every dimension are known (non-tensors pass: the importer
    rejects them with a better message)."""
    if not value.type.HasField("tensor_type"):
        return True
    dims = _dims(value)
    return dims is not None and all(isinstance(d, int) for d in dims)


def _missing_shape_message(value: onnx.ValueInfoProto) -> str:
    dims = _dims(value)
    if dims is None:
        return f"input '{value.name}' has an unknown rank; give its shape with --input-shape {value.name}=DIMS"
    dynamic = [f"{i} ('{d}')" if d else f"{i} (unnamed)" for i, d in enumerate(dims) if not isinstance(d, int)]
    what = f"a dynamic dimension {dynamic[0]}" if len(dynamic) == 1 else f"dynamic dimensions {', '.join(dynamic)}"
    suggestion = "x".join(str(d) if isinstance(d, int) else "1" for d in dims)
    return f"input '{value.name}' has {what}; give its shape with --input-shape {value.name}={suggestion}"


def _set_input_shape(value: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    given = f"--input-shape {value.name}={shape_text(shape)}"
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape):
        raise UserError(f"{given}: dimensions must be positive integers")
    shape = tuple(int(d) for d in shape)
    if not value.type.HasField("tensor_type"):
        raise UserError(f"{given}: input '{value.name}' is not a tensor")
    dims = _dims(value)
    if dims is None:  # unknown rank: any shape will do
        dims = [None] * len(shape)
    if len(dims) != len(shape):
        raise UserError(f"{given}: input '{value.name}' has rank {len(dims)} "
                        f"({shape_text(dims)}), not {len(shape)}")
    for index, (declared, wanted) in enumerate(zip(dims, shape, strict=True)):
        if isinstance(declared, int) and declared not in (wanted, 0):  # 0: see normalize_dynamic_dims
            raise UserError(f"{given}: dimension {index} of input '{value.name}' is fixed to {declared} "
                            f"by the model ({shape_text(dims)})")
    onnx_shape = value.type.tensor_type.shape
    onnx_shape.Clear()
    for d in shape:
        onnx_shape.dim.add().dim_value = d


def shape_text(dims: Sequence[int | str | None]) -> str:
    """`1x128`, with named dims by name and unknown ones as `?`."""
    return "x".join("?" if d is None else str(d) for d in dims)


_INPUT_SHAPE = re.compile(r"(?P<name>.+)=(?P<dims>\d+(?:x\d+)*)")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`"input_ids=1x128"` -> `("input_ids", (1, 128))`, for the `--input-shape` flag."""
    match = _INPUT_SHAPE.fullmatch(text)
    if match is None:
        raise UserError(f"bad --input-shape '{text}': expected NAME=DIMS, e.g. input_ids=1x128")
    shape = tuple(int(d) for d in match["dims"].split("x"))
    if 0 in shape:
        raise UserError(f"bad --input-shape '{text}': dimensions must be positive")
    return match["name"], shape
