"""A seeded generator of hostile inputs for ttc: malformed ONNX models, mutated IR text, tampered .ttc
artifacts and oversized inputs. Every case is a folder holding its input files and the `ttc` command line to
run there; `rule` says how its outcome is judged (see `judge`).

Kinds and what they hold:
- onnx: byte flips, truncation, hostile external data (negative, non-numeric and huge offsets, lengths that
  disagree with the dims, NUL bytes and `../` in locations, absolute paths, symlinks out of the folder),
  huge, negative and zero dims, rank-64 inputs, cycles, duplicate names, bad opsets (999, 0, none), an
  op version onnxruntime lacks, non-UTF-8 names, bad attributes (stride 0, negative pads, axes out of
  range), no outputs, unknown ops; run with `ttc run` (some with --golden) or `ttc compile`.
- ir: the imported and the compiled IR of small models with a line deleted, duplicated or swapped, a number
  replaced (0, -1, 2^34, 2^63), bad string escapes, 5,000-deep arrays and dicts, #tt.device fields of the
  wrong type, zero or out of range, an unknown arch, a duplicate @main, conv/pool stride 0, a wrong-rank
  input_shape, random bytes (non-UTF-8 too); run with `ttc opt` through the default pipeline.
- artifact: a compiled model with a weight byte flipped, program.mlir edited (runtime args, page sizes, op
  names), manifest fields removed, retyped or out of range (shapes of 2^40, dtype "object", format versions),
  duplicate or unknown members, a zip bomb, an .npy header declaring 2^40 rows, a host op's model with
  external data; run with `ttc run` (and --golden against a manifest path naming another file).
- oversized: sparse-file external weights of 20+ GiB, a MatMul of batch 2^34, IR of such dims, a 2 GiB
  weight under a 1 GiB --max-host-memory.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KINDS = ("onnx", "ir", "artifact", "oversized")


@dataclass
class Case:
    kind: str
    name: str
    folder: Path
    argv: list[str]
    # "no-crash"; "artifact": exit 0 only with outputs identical to the baseline; "crafted": an artifact whose
    # manifest hashes were recomputed after the edit (out of the threat model: a valid program is just another
    # program, like hand-written IR; judged as no-crash, its outputs compared only for the table)
    rule: str = "no-crash"
    baseline: Path | None = None  # the untampered outputs (.npz) for rules "artifact" and "crafted"
    env: dict[str, str] = field(default_factory=dict)
    allowed: list[str] = field(default_factory=list)  # files it may open besides its folder (a genuine source)


# ---------------------------------------------------------------------------------------------- base models


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def base_models(seed: int = 0, only: tuple[str, ...] | None = None) -> dict[str, onnx.ModelProto]:
    """Small models covering the main op families (each compiles and runs in well under a second); `only`
    keeps the named ones."""
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    models = {
        "mlp": _model([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
                       helper.make_node("Relu", ["h"], ["r"], name="relu"),
                       helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)],
                      [_vi("x", [1, 64])], [_vi("y", [1, 10])],
                      [w("w1", 32, 64), w("b1", 32), w("w2", 10, 32), w("b2", 10)]),
        "conv": _model([helper.make_node("Conv", ["x", "k"], ["c"], name="conv", pads=[1, 1, 1, 1],
                                         strides=[1, 1]),
                        helper.make_node("Relu", ["c"], ["r"], name="relu"),
                        helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2],
                                         strides=[2, 2])],
                       [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 4, 4])], [w("k", 4, 3, 3, 3)]),
        "attn": _model([helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
                        helper.make_node("Transpose", ["q"], ["qt"], name="t", perm=[0, 2, 1]),
                        helper.make_node("MatMul", ["q", "qt"], ["s"], name="scores"),
                        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
                        helper.make_node("MatMul", ["p", "q"], ["y"], name="ctx")],
                       [_vi("x", [2, 16, 32])], [_vi("y", [2, 16, 32])], [w("wq", 32, 32)]),
        "norm": _model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="ln", axis=-1),
                        helper.make_node("Add", ["n", "x"], ["a"], name="add"),
                        helper.make_node("ReduceMean", ["a"], ["y"], name="mean", axes=[-1], keepdims=1)],
                       [_vi("x", [1, 8, 64])], [_vi("y", [1, 8, 1])], [w("g", 64), w("b", 64)], opset=17),
        "embed": _model([helper.make_node("Gather", ["table", "ids"], ["e"], name="lookup", axis=0),
                         helper.make_node("Sigmoid", ["e"], ["y"], name="sig")],
                        [_vi("ids", [1, 8], TensorProto.INT64)], [_vi("y", [1, 8, 32])], [w("table", 50, 32)]),
    }
    models = {k: v for k, v in models.items() if only is None or k in only}
    for model in models.values():
        onnx.checker.check_model(model)
    return models


# ---------------------------------------------------------------------------------------------- helpers


def _folder(root: Path, kind: str, index: int) -> Path:
    folder = root / kind / f"{index:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_or_compile(rng: random.Random, model: str = "model.onnx", golden_ok: bool = True) -> list[str]:
    choice = rng.random()
    if choice < 0.5:
        return ["run", model, "--quiet", "--seed", "1"] + (["--golden"] if golden_ok and rng.random() < 0.3 else [])
    if choice < 0.8:
        return ["compile", model, "-o", "out.ttc", "--quiet"]
    return ["import", model, "-o", "out.mlir"]


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def _external(model: onnx.ModelProto, folder: Path, name: str, rng: random.Random) -> onnx.TensorProto:
    """Move initializer `name` to external data in folder/weights.bin; returns the tensor."""
    tensor = next(t for t in model.graph.initializer if t.name == name)
    data = numpy_helper.to_array(tensor).tobytes()
    pad = rng.choice([0, 0, 64, 4096])
    (folder / "weights.bin").write_bytes(b"\0" * pad + data)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", str(pad)), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _set_external(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = key, value


# ---------------------------------------------------------------------------------------------- ONNX mutations


def _onnx_mutations() -> list[Callable[[random.Random, onnx.ModelProto, Path], tuple[bytes | None, str]]]:
    def byte_flips(rng, model, folder):
        data = bytearray(model.SerializeToString())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "byte-flips"

    def truncation(rng, model, folder):
        data = model.SerializeToString()
        return data[: rng.randrange(1, len(data))], "truncated"

    def external(rng, model, folder):
        name = max(model.graph.initializer, key=lambda t: np.prod(t.dims)).name
        tensor = _external(model, folder, name, rng)
        how = rng.choice(["offset-neg", "offset-abc", "offset-huge", "length-short", "length-long", "nul",
                          "dotdot", "absolute", "symlink", "missing", "ok", "length-abc", "no-length",
                          "empty-location", "dup-key"])
        if how == "offset-neg":
            _set_external(tensor, "offset", "-64")
        elif how == "offset-abc":
            _set_external(tensor, "offset", "abc")
        elif how == "offset-huge":
            _set_external(tensor, "offset", str(1 << 62))
        elif how == "length-short":
            _set_external(tensor, "length", "12")
        elif how == "length-long":
            _set_external(tensor, "length", str(1 << 40))
        elif how == "length-abc":
            _set_external(tensor, "length", "1e3")
        elif how == "no-length":
            del tensor.external_data[2]
        elif how == "nul":
            _set_external(tensor, "location", "weights.bin\0.txt")
        elif how == "dotdot":
            _set_external(tensor, "location", "../../../../etc/passwd")
        elif how == "absolute":
            _set_external(tensor, "location", "/etc/passwd")
        elif how == "symlink":
            (folder / "link.bin").symlink_to("/etc/hostname")
            _set_external(tensor, "location", "link.bin")
        elif how == "missing":
            _set_external(tensor, "location", "nothere.bin")
        elif how == "empty-location":
            _set_external(tensor, "location", "")
        elif how == "dup-key":
            entry = tensor.external_data.add()
            entry.key, entry.value = "offset", "8"
        return model.SerializeToString(), f"external-{how}"

    def dims(rng, model, folder):
        value = rng.choice(model.graph.input)
        shape = value.type.tensor_type.shape
        how = rng.choice(["huge", "negative", "zero", "rank64", "2^31", "symbolic"])
        if how == "rank64":
            del shape.dim[:]
            for _ in range(64):
                shape.dim.add().dim_value = 1
        elif how == "symbolic":
            shape.dim[0].dim_param = "batch"
        else:
            d = rng.randrange(len(shape.dim))
            shape.dim[d].dim_value = {"huge": 1 << 34, "negative": -3, "zero": 0, "2^31": 1 << 31}[how]
        return model.SerializeToString(), f"dims-{how}"

    def cycle(rng, model, folder):
        nodes = model.graph.node
        if len(nodes) >= 2:
            nodes[0].input[0] = nodes[-1].output[0]
        return model.SerializeToString(), "cycle"

    def duplicate(rng, model, folder):
        how = rng.choice(["node-output", "initializer", "input-init"])
        if how == "node-output" and len(model.graph.node) >= 2:
            model.graph.node[1].output[0] = model.graph.node[0].output[0]
        elif how == "initializer" and model.graph.initializer:
            model.graph.initializer.append(copy.deepcopy(model.graph.initializer[0]))
        else:
            init = model.graph.initializer[0]
            model.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, [3]))
        return model.SerializeToString(), f"duplicate-{how}"

    def opset(rng, model, folder):
        how = rng.choice(["999", "0", "1", "none", "domain", "ir-99"])
        del model.opset_import[:]
        if how == "none":
            pass
        elif how == "domain":
            model.opset_import.append(helper.make_opsetid("", 17))
            model.opset_import.append(helper.make_opsetid("com.evil", 1))
            model.graph.node[0].domain = "com.evil"
        elif how == "ir-99":
            model.opset_import.append(helper.make_opsetid("", 17))
            model.ir_version = 99
        else:
            model.opset_import.append(helper.make_opsetid("", int(how)))
        return model.SerializeToString(), f"opset-{how}"

    def names(rng, model, folder):
        data = model.SerializeToString()
        target = rng.choice([n.name for n in model.graph.node] + [model.graph.output[0].name])
        junk = bytes(rng.choice([0xFF, 0xFE, 0xC0, 0x80, 0xED]) for _ in range(3))
        return data.replace(target.encode(), target.encode()[:1] + junk + target.encode()[2:]), "non-utf8-name"

    def attributes(rng, model, folder):
        node = rng.choice(list(model.graph.node))
        how = rng.choice(["zero", "negative", "huge", "drop", "wrongtype"])
        if node.attribute:
            attr = rng.choice(list(node.attribute))
            if how == "drop":
                node.attribute.remove(attr)
            elif how == "wrongtype":
                node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute(attr.name, "text"))
            elif attr.type == onnx.AttributeProto.INTS and attr.ints:
                attr.ints[rng.randrange(len(attr.ints))] = {"zero": 0, "negative": -5, "huge": 1 << 40}[how]
            elif attr.type == onnx.AttributeProto.INT:
                attr.i = {"zero": 0, "negative": -5, "huge": 1 << 40}[how]
            elif attr.type == onnx.AttributeProto.FLOAT:
                attr.f = {"zero": 0.0, "negative": -1e30, "huge": float("inf")}[how]
        else:
            node.attribute.append(helper.make_attribute("axis", 99))
        return model.SerializeToString(), f"attribute-{how}"

    def structure(rng, model, folder):
        how = rng.choice(["no-outputs", "op-type", "drop-input", "extra-input", "drop-node", "op-version"])
        if how == "no-outputs":
            del model.graph.output[:]
        elif how == "op-type":
            rng.choice(list(model.graph.node)).op_type = rng.choice(["Frobnicate", "Relu", "Add", "If", ""])
        elif how == "drop-input":
            node = rng.choice(list(model.graph.node))
            if node.input:
                del node.input[-1]
        elif how == "extra-input":
            rng.choice(list(model.graph.node)).input.append("nowhere")
        elif how == "drop-node":
            del model.graph.node[rng.randrange(len(model.graph.node))]
        else:  # an op version onnxruntime does not implement (Gelu exists from opset 20)
            del model.opset_import[:]
            model.opset_import.append(helper.make_opsetid("", 24))
            model.graph.node[-1].op_type = "Gelu"
            del model.graph.node[-1].attribute[:]
        return model.SerializeToString(), f"structure-{how}"

    def initializer_data(rng, model, folder):
        tensor = rng.choice(list(model.graph.initializer))
        how = rng.choice(["short", "long", "dims", "dtype"])
        raw = numpy_helper.to_array(tensor).tobytes()
        tensor.ClearField("float_data")
        tensor.raw_data = raw[: len(raw) // 2] if how == "short" else raw + raw if how == "long" else raw
        if how == "dims":
            tensor.dims[0] = tensor.dims[0] * 1000
        elif how == "dtype":
            tensor.data_type = rng.choice([TensorProto.STRING, 99, TensorProto.INT64, TensorProto.UNDEFINED])
        return model.SerializeToString(), f"init-{how}"

    return [byte_flips, truncation, external, external, dims, cycle, duplicate, opset, names, attributes,
            structure, initializer_data]


def onnx_cases(root: Path, count: int, seed: int, only=None) -> Iterator[Case]:
    rng = random.Random(seed)
    models = base_models(seed, only)
    mutations = _onnx_mutations()
    for i in range(count):
        folder = _folder(root, "onnx", i)
        base = rng.choice(sorted(models))
        model = copy.deepcopy(models[base])
        mutate = mutations[i % len(mutations)] if i < len(mutations) else rng.choice(mutations)
        data, what = mutate(rng, model, folder)
        (folder / "model.onnx").write_bytes(data)
        yield Case("onnx", f"{base}/{what}", folder, _run_or_compile(rng))


# ---------------------------------------------------------------------------------------------- IR mutations


def _ir_texts(root: Path, models: dict[str, onnx.ModelProto]) -> dict[str, tuple[str, dict]]:
    """Each base model's imported IR and the IR after the whole pipeline (with its weights)."""
    from ttc.compiler import CompileOptions, compile_model
    from ttc.frontend import import_model

    texts = {}
    for name, model in sorted(models.items()):
        module = import_model(model)
        texts[f"{name}.ttir"] = (str(module), dict(module.weights))
        compiled = compile_model(model, CompileOptions())
        texts[f"{name}.ttmetal"] = (str(compiled.module), dict(compiled.module.weights))
    return texts


_NUMBER = re.compile(r"(?<![\w#%@^.])\d+(?![\w.])")


def _ir_mutations() -> list[Callable[[random.Random, str], tuple[str | bytes, str]]]:
    def delete_line(rng, text):
        lines = text.splitlines()
        del lines[rng.randrange(len(lines))]
        return "\n".join(lines), "delete-line"

    def duplicate_line(rng, text):
        lines = text.splitlines()
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        return "\n".join(lines), "duplicate-line"

    def swap_lines(rng, text):
        lines = text.splitlines()
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines), "swap-lines"

    def number(rng, text):
        matches = list(_NUMBER.finditer(text))
        m = rng.choice(matches)
        value = rng.choice(["0", "-1", str(1 << 34), str(1 << 63), "1", "7", str(int(m.group()) + 1)])
        return text[: m.start()] + value + text[m.end():], f"number-{value}"

    def escape(rng, text):
        bad = rng.choice(['\\zz', '\\', '\\x', '\\0', '\\u12', '\\"\\'])
        i = text.find('loc("')
        return text[: i + 5] + bad + text[i + 5:], "bad-escape"

    def nesting(rng, text):
        depth = rng.choice([300, 5000])
        kind = rng.choice(["array", "dict"])
        deep = ("[" * depth + "1" + "]" * depth) if kind == "array" else ("{a = " * depth + "1" + "}" * depth)
        i = text.find('loc("')
        j = text.rfind("}", 0, i)  # the attribute dict of the first op with a location, or the module's
        if j < 0:
            return text.replace("module {", f"module attributes {{deep = {deep}}} {{", 1), f"nesting-{kind}-{depth}"
        return text[:j] + f", tt.deep = {deep}" + text[j:], f"nesting-{kind}-{depth}"

    def device(rng, text):
        field_, value = rng.choice([("num_cbs", "0"), ("dst_tiles", "0"), ("num_cbs", '"x"'), ("arch", "e999"),
                                    ("compute_grid", "100000x100000"), ("clock_mhz", "0"), ("l1_size", "0"),
                                    ("dram_channels", "0"), ("dst_tiles", "1.5"), ("matmul_efficiency", "0.0"),
                                    ("l1_reserved", str(1 << 40)), ("noc_max_packet", "0"),
                                    ("dram_channel_size", "-1"), ("arch", '"e150x"'), ("worker_grid", "0x0")])
        pattern = re.compile(rf"(\b{field_} = )([^,>]+|\"[^\"]*\")")
        if not pattern.search(text):
            return text, f"device-{field_}-absent"
        return pattern.sub(lambda m: m.group(1) + value, text, count=1), f"device-{field_}={value}"

    def drop_device_field(rng, text):
        field_ = rng.choice(["num_cbs", "dst_tiles", "arch", "compute_grid", "clock_mhz"])
        return re.sub(rf"\b{field_} = [^,>]+, ", "", text, count=1), f"device-missing-{field_}"

    def duplicate_main(rng, text):
        start = text.find("func.func @main")
        end = text.rfind("}")
        return text[:end] + text[start:end] + text[end:], "duplicate-main"

    def window(rng, text):
        for attr, value in (("strides", "[0, 1]"), ("dilations", "[1, 0]"), ("input_shape", "[1, 64]"),
                            ("pads", "[-1, 0, 0, 0]"), ("kernel", "[0, 2]")):
            if f"{attr} = [" in text and rng.random() < 0.6:
                return re.sub(rf"{attr} = \[[^\]]*\]", f"{attr} = {value}", text, count=1), f"window-{attr}"
        return text.replace("tensor<", "tensor<0x", 1), "zero-dim"

    def random_bytes(rng, text):
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "random-bytes"

    def huge_dim(rng, text):
        m = re.search(r"tensor<(\d+)x", text)
        if not m:
            return text, "huge-dim-absent"
        return text[: m.start(1)] + str(1 << 34) + text[m.end(1):], "huge-dim"

    return [delete_line, duplicate_line, swap_lines, number, number, escape, nesting, device, device,
            drop_device_field, duplicate_main, window, random_bytes, huge_dim]


def ir_cases(root: Path, count: int, seed: int, only=None) -> Iterator[Case]:
    from ttc.fileio import write_weights

    rng = random.Random(seed + 1)
    texts = _ir_texts(root, base_models(seed, only))
    mutations = _ir_mutations()
    for i in range(count):
        folder = _folder(root, "ir", i)
        base = rng.choice(sorted(texts))
        text, weights = texts[base]
        mutate = mutations[i % len(mutations)] if i < len(mutations) else rng.choice(mutations)
        data, what = mutate(rng, text)
        (folder / "in.mlir").write_bytes(data if isinstance(data, bytes) else data.encode())
        if weights:
            write_weights(folder / "in.weights.npz", weights)
        pipeline = [] if base.endswith(".ttmetal") else ["--pipeline", _default_pipeline()]
        yield Case("ir", f"{base}/{what}", folder, ["opt", "in.mlir", *pipeline, "-o", "out.mlir"])


def _default_pipeline() -> str:
    from ttc.compiler import default_pipeline

    return default_pipeline()


# ---------------------------------------------------------------------------------------------- artifacts


def _zip_members(path: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def _write_zip(path: Path, members: list[tuple[zipfile.ZipInfo, bytes]]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        with zipfile.ZipFile(path, "w") as archive:
            for info, data in members:
                archive.writestr(info, data)


def _rehash(members: list[tuple[zipfile.ZipInfo, bytes]]) -> list[tuple[zipfile.ZipInfo, bytes]]:
    """The manifest's entries recomputed for the edited members (out of the threat model, but it reaches the
    checks behind the hashes: the schema, the .npy headers, the signature)."""
    data = dict((info.filename, body) for info, body in members)
    manifest = json.loads(data["manifest.json"])
    for name in manifest.get("entries", {}):
        if name in data:
            manifest["entries"][name] = {"sha256": hashlib.sha256(data[name]).hexdigest(), "size": len(data[name])}
    return [(info, json.dumps(manifest).encode() if info.filename == "manifest.json" else body)
            for info, body in members]


def _artifact_mutations() -> list[Callable]:
    def edit_manifest(rng, members, folder):
        out = []
        for info, body in members:
            if info.filename == "manifest.json":
                manifest = json.loads(body)
                how = rng.choice(["drop", "retype", "out-dtype", "in-dtype-object", "shape-huge", "version-1",
                                  "version-3", "version-str", "arch", "programs", "source-passwd", "weights-path",
                                  "negative", "entries-drop", "not-object"])
                if how == "drop":
                    manifest.pop(rng.choice(sorted(manifest)))
                elif how == "retype":
                    key = rng.choice(sorted(manifest))
                    manifest[key] = rng.choice([None, "x", 3, [], {}])
                elif how == "out-dtype":
                    manifest["outputs"][0]["dtype"] = rng.choice(["float16", "int8", "uint8", "float64"])
                elif how == "in-dtype-object":
                    manifest["inputs"][0]["dtype"] = "object"
                elif how == "shape-huge":
                    manifest[rng.choice(["inputs", "outputs"])][0]["shape"] = [1 << 40, 1 << 20]
                elif how.startswith("version"):
                    manifest["format_version"] = {"version-1": 1, "version-3": 3, "version-str": "2"}[how]
                elif how == "arch":
                    manifest["arch"] = rng.choice(["e75", "e999"])
                elif how == "programs":
                    manifest["programs"] = manifest["programs"] + 1
                elif how == "source-passwd":
                    manifest["source_model"] = {"path": "/etc/passwd", "sha256": "0" * 64, "size": 100}
                elif how == "weights-path":
                    if manifest["weights"]:
                        key = sorted(manifest["weights"])[0]
                        manifest["weights"][key] = "../../etc/passwd"
                elif how == "negative":
                    manifest["memory"]["dram_bytes"] = -1
                elif how == "entries-drop":
                    manifest["entries"].pop("program.mlir", None)
                elif how == "not-object":
                    manifest = [manifest]
                out.append((info, json.dumps(manifest).encode()))
                label = how
            else:
                out.append((info, body))
        return out, f"manifest-{label}"

    def flip_weight(rng, members, folder):
        weights = [i for i, (info, _) in enumerate(members) if info.filename.startswith("weights/")]
        i = rng.choice(weights)
        info, body = members[i]
        body = bytearray(body)
        pos = rng.randrange(128, len(body)) if len(body) > 128 else rng.randrange(len(body))
        body[pos] ^= 1 << rng.randrange(8)
        members[i] = (info, bytes(body))
        return members, "weight-bit-flip"

    def edit_program(rng, members, folder):
        i = next(i for i, (info, _) in enumerate(members) if info.filename == "program.mlir")
        info, body = members[i]
        text = body.decode()
        how = rng.choice(["runtime-args", "page-size", "op-name", "number", "delete-line"])
        if how == "runtime-args" and "runtime_args" in text:
            m = list(re.finditer(r"runtime_args = \[\[\[(\d+)", text))
            if m:
                pick = rng.choice(m)
                text = text[: pick.start(1)] + str(int(pick.group(1)) + 1) + text[pick.end(1):]
        elif how == "page-size":
            text = re.sub(r"(#ttmetal\.cb<\d+, page_size = )(\d+)", lambda mm: mm.group(1) + str(int(mm.group(2)) * 2), text,
                          count=1)
        elif how == "op-name":
            text = text.replace('"ttkernel.add_tiles"', '"ttkernel.mul_tiles"', 1).replace(
                '"ttkernel.matmul_tiles"', '"ttkernel.add_tiles"', 1)
        elif how == "number":
            matches = list(_NUMBER.finditer(text))
            pick = rng.choice(matches)
            text = text[: pick.start()] + str(int(pick.group()) + rng.choice([1, -1, 32])) + text[pick.end():]
        else:
            lines = text.splitlines()
            del lines[rng.randrange(len(lines))]
            text = "\n".join(lines)
        members[i] = (info, text.encode())
        rehash = rng.random() < 0.3
        return (_rehash(members) if rehash else members), f"program-{how}" + ("-rehashed" if rehash else "")

    def duplicate_member(rng, members, folder):
        info, body = rng.choice(members)
        if info.filename.startswith("weights/"):
            body = bytes(len(body))
        members.append((info, body))
        return members, f"duplicate-{info.filename.split('/')[0]}"

    def unknown_member(rng, members, folder):
        members.append((zipfile.ZipInfo(rng.choice(["extra.txt", "../evil.py", "weights/9999.npy", "/abs"])),
                        b"print('hello')"))
        return members, "unknown-member"

    def zip_bomb(rng, members, folder):
        i = next(i for i, (info, _) in enumerate(members) if info.filename == "program.mlir")
        info, body = members[i]
        info = zipfile.ZipInfo("program.mlir")
        info.compress_type = zipfile.ZIP_DEFLATED
        members[i] = (info, body + b" " * (256 << 20))
        return members, "zip-bomb"

    def npy_header(rng, members, folder):
        weights = [i for i, (info, _) in enumerate(members) if info.filename.startswith("weights/")]
        i = rng.choice(weights)
        info, body = members[i]
        body = re.sub(rb"'shape': \([^)]*\)", b"'shape': (1099511627776, 2)", body, count=1)
        members[i] = (info, body)
        return _rehash(members), "npy-2^40-rows-rehashed"

    def truncate(rng, members, folder):
        return None, "truncated-zip"

    def host_op_external(rng, members, folder):
        # a host op whose embedded model points at external data (a file of the current folder)
        model = _model([helper.make_node("Add", ["a", "c"], ["b"], name="add")], [_vi("a", [4])], [_vi("b", [4])],
                       [numpy_helper.from_array(np.ones(4, np.float32), "c")])
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        _set_external(tensor, "location", "secret.bin")
        (folder / "secret.bin").write_bytes(np.full(4, 7, np.float32).tobytes())
        encoded = base64.b64encode(model.SerializeToString()).decode()
        i = next(i for i, (info, _) in enumerate(members) if info.filename == "program.mlir")
        info, body = members[i]
        text = body.decode()
        text = re.sub(r'model = "[^"]*"', f'model = "{encoded}"', text, count=1)
        members[i] = (info, text.encode())
        return _rehash(members), "host-op-external-rehashed"

    return [edit_manifest, edit_manifest, flip_weight, edit_program, edit_program, duplicate_member,
            unknown_member, zip_bomb, npy_header, truncate, host_op_external]


def artifact_cases(root: Path, count: int, seed: int, only=None) -> Iterator[Case]:
    rng = random.Random(seed + 2)
    base_dir = root / "artifact" / "base"
    base_dir.mkdir(parents=True, exist_ok=True)
    models = base_models(seed, only)
    models["hostop"] = _model([helper.make_node("ArgMax", ["x"], ["y"], name="argmax", axis=1, keepdims=0)],
                              [_vi("x", [2, 16])], [_vi("y", [2], TensorProto.INT64)])
    bases = {}
    for name, model in sorted(models.items()):
        _save(model, base_dir / f"{name}.onnx")
        # In child processes: the native core's thread pool must not start in the process that forks the runs.
        for argv in (["compile", str(base_dir / f"{name}.onnx"), "-o", str(base_dir / f"{name}.ttc"), "--quiet"],
                     ["run", str(base_dir / f"{name}.ttc"), "--quiet", "--seed", "1", "-o",
                      str(base_dir / f"{name}.npz")]):
            subprocess.run([sys.executable, "-m", "ttc", *argv], check=True, capture_output=True)
        bases[name] = base_dir / f"{name}.ttc"
    mutations = _artifact_mutations()
    for i in range(count):
        folder = _folder(root, "artifact", i)
        base = rng.choice(sorted(bases))
        mutate = mutations[i % len(mutations)] if i < len(mutations) else rng.choice(mutations)
        if mutate.__name__ == "host_op_external":
            base = "hostop"
        elif mutate.__name__ in ("flip_weight", "npy_header") and base == "hostop":
            base = next(b for b in sorted(bases) if b != "hostop")  # hostop is the only base without weights
        members = _zip_members(bases[base])
        members, what = mutate(rng, members, folder)
        if members is None:
            data = bases[base].read_bytes()
            (folder / "model.ttc").write_bytes(data[: rng.randrange(1, len(data))])
        else:
            _write_zip(folder / "model.ttc", members)
        argv = ["run", "model.ttc", "--quiet", "--seed", "1", "-o", "out.npz"]
        if rng.random() < 0.1:
            argv.append("--golden")
        yield Case("artifact", f"{base}/{what}", folder, argv, rule="crafted" if "rehashed" in what else "artifact",
                   baseline=base_dir / f"{base}.npz", allowed=[str(base_dir / f"{base}.onnx")])


# ---------------------------------------------------------------------------------------------- oversized


def oversized_cases(root: Path, count: int, seed: int, only=None) -> Iterator[Case]:
    rng = random.Random(seed + 3)
    makers = ["sparse-20g", "sparse-2g-limit", "batch-2^34", "ir-2^34", "input-2^31", "sparse-30g-bfp8"]
    for i in range(count):
        folder = _folder(root, "oversized", i)
        what = makers[i % len(makers)]
        if what.startswith("sparse"):
            gib = {"sparse-20g": 20, "sparse-2g-limit": 2, "sparse-30g-bfp8": 30}[what]
            cols = 1 << 14
            rows = (gib << 30) // (cols * 4)
            model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [1, rows])],
                           [_vi("y", [1, cols])], [numpy_helper.from_array(np.zeros((1, 1), np.float32), "w")])
            tensor = model.graph.initializer[0]
            del tensor.dims[:]
            tensor.dims.extend([rows, cols])
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            _set_external(tensor, "location", "w.bin")
            with open(folder / "w.bin", "wb") as handle:
                handle.truncate(rows * cols * 4)
            _save(model, folder / "model.onnx")
            argv = ["compile", "model.onnx", "-o", "out.ttc", "--quiet"]
            if what == "sparse-2g-limit":
                argv += ["--max-host-memory", "1G"]
            if what == "sparse-30g-bfp8":
                argv += ["--dtype", "bfp8_b"]
        elif what == "batch-2^34":
            model = _model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                           [_vi("a", [1 << 34, 1, 32]), _vi("b", [1 << 34, 32, 1])], [_vi("y", [1 << 34, 1, 1])])
            _save(model, folder / "model.onnx")
            argv = rng.choice([["compile", "model.onnx", "-o", "out.ttc", "--quiet"], ["import", "model.onnx"]])
        elif what == "input-2^31":
            model = _model([helper.make_node("Relu", ["a"], ["y"], name="relu")], [_vi("a", [1 << 31, 64])],
                           [_vi("y", [1 << 31, 64])])
            _save(model, folder / "model.onnx")
            argv = ["run", "model.onnx", "--quiet"]
        else:
            n = 1 << 34
            text = (f'module attributes {{}} {{\n  func.func @main(%arg0: tensor<{n}x32x32xf32>, %arg1: '
                    f'tensor<{n}x32x32xf32>) -> tensor<{n}x32x32xf32> {{\n    %0 = "ttir.matmul"(%arg0, %arg1) : '
                    f'(tensor<{n}x32x32xf32>, tensor<{n}x32x32xf32>) -> tensor<{n}x32x32xf32> loc("mm")\n    '
                    f'func.return %0 : tensor<{n}x32x32xf32> loc("r")\n  }}\n}}\n')
            (folder / "in.mlir").write_text(text)
            argv = ["opt", "in.mlir", "--pipeline", _default_pipeline(), "-o", "out.mlir"]
        yield Case("oversized", what, folder, argv)


def generate(root: Path, counts: dict[str, int], seed: int = 0, only: tuple[str, ...] | None = None) -> list[Case]:
    """Every case of the corpus, written under `root` (which is emptied first); `only` names the base models
    to mutate (default: all of them)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    makers = {"onnx": onnx_cases, "ir": ir_cases, "artifact": artifact_cases, "oversized": oversized_cases}
    cases: list[Case] = []
    for kind in KINDS:
        if counts.get(kind):
            cases.extend(makers[kind](root, counts[kind], seed, only))
    return cases


def judge(case: Case, outcome) -> list[str]:
    """The rules a case broke (empty: it passed). exit 4 never; no hang; nothing opened outside; a tampered
    artifact exits 0 only with outputs identical to the untampered run's."""
    problems = []
    if outcome.hang:
        problems.append("hang")
        return problems
    if outcome.exit_code not in (0, 1, 2, 3):
        problems.append(f"exit {outcome.exit_code}")
    if outcome.exit_code == 2 and "Traceback" in outcome.stderr:
        problems.append("traceback on a user error")
    if outcome.outside:
        problems.append("opened outside: " + ", ".join(outcome.outside[:3]))
    if case.rule == "artifact" and outcome.exit_code in (0, 1) and outputs_differ(case):
        problems.append("silent wrong: outputs differ from the untampered run")
    return problems


def outputs_differ(case: Case) -> bool:
    """Whether the run wrote outputs other than the untampered run's (or none at all)."""
    produced = case.folder / "out.npz"
    if case.baseline is None or not produced.exists():
        return True
    with np.load(case.baseline) as a, np.load(produced) as b:
        return not (sorted(a.files) == sorted(b.files) and all(
            a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k], equal_nan=True)
            for k in a.files))


def sample_counts(total: int) -> dict[str, int]:
    """A spread of `total` inputs over the kinds (oversized ones are few: each is a large sparse file)."""
    oversized = max(1, total // 60)
    rest = total - oversized
    return {"onnx": rest * 3 // 10, "ir": rest * 35 // 100, "artifact": rest - rest * 3 // 10 - rest * 35 // 100,
            "oversized": oversized}

