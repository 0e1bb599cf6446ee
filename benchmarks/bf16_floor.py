"""The accuracy floor that bf16 itself imposes on a model: how far from onnxruntime's float32 outputs the
best bf16 evaluations get, beside ttc's (the golden rule's relative L2 error; passing needs <= 0.05).

Usage: python benchmarks/bf16_floor.py [NAME ...] [--ttc] [--no-torch] [--cache DIR] [--seed N]
       NAME: a family of tests/models/export_families.py (e.g. t5-small-encoder), or a path to an .onnx file
       (the torch column needs a family)

Per model and float output, each against onnxruntime float32 on the golden's seeded inputs
(tests/models/families_check.py):
- `onnx-bf16`: the ONNX model with every float weight, constant, input and node result rounded to bf16
  (round to nearest even), each node evaluated in float32 by onnxruntime (graph optimisations off, so no
  node is fused across a rounding). This is a device that rounds once per ONNX node with exact float32
  arithmetic inside it: a matmul accumulates in float32, a softmax or a division rounds only its result.
- `torch-bf16`: the same model in PyTorch with weights and activations in bfloat16 (`module.to(bfloat16)`),
  as a GPU or CPU runs bf16 inference: float32 accumulation in matmuls, float32 inside softmax and norms, one
  rounding per torch op (fewer ops than the ONNX graph: a T5 RMS norm is one rounding here, six there). The
  torch module is rebuilt from its seeded spec; the float32 module must match onnxruntime (checked, printed).
- `ttc` (with --ttc): ttc's default compile (bf16 everywhere, 16-bit Dst) on the emulator.
A model whose `onnx-bf16` or `torch-bf16` error exceeds 0.05 cannot pass the golden rule by rounding to bf16
at op boundaries alone, however exactly the device computed inside its ops.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
import export_families
import families_check

from ttc.golden import compare


def round_bf16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bf16 (ties to even), as float32; NaN and inf kept."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000))
    out = rounded.view(np.float32)
    return np.where(np.isnan(values), values, out).astype(np.float32)


def bf16_boundaries(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` (weights loaded) whose float tensors are all rounded to bf16: initializers and
    Constant values in place, graph inputs and every node's float results by a Cast to bfloat16 and back."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(round_bf16(numpy_helper.to_array(init)), init.name))
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(round_bf16(numpy_helper.to_array(attr.t)), attr.t.name))
                elif attr.name in ("value_float", "value_floats"):
                    raise ValueError("Constant value_float(s) is not rounded; extend bf16_boundaries")
    try:
        known = onnx.shape_inference.infer_shapes(model).graph
    except onnx.shape_inference.InferenceError:  # the exporter's own value_info then (it types every result)
        known = graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*known.value_info, *known.input, *known.output)}
    initializers = {i.name for i in graph.initializer}

    def casts(source: str, target: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Cast", [source], [f"{target}__bf16"], to=TensorProto.BFLOAT16),
                helper.make_node("Cast", [f"{target}__bf16"], [target], to=TensorProto.FLOAT)]

    nodes: list[onnx.NodeProto] = []
    renamed: dict[str, str] = {}
    for value in graph.input:
        if value.name not in initializers and value.type.tensor_type.elem_type == TensorProto.FLOAT:
            renamed[value.name] = f"{value.name}__rounded"
            nodes += casts(value.name, renamed[value.name])
    for node in graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
        rounded = []
        for i, name in enumerate(node.output):
            if name and name not in types:
                raise ValueError(f"no type known for {name!r} (node {node.name!r})")
            if name and types[name] == TensorProto.FLOAT:
                node.output[i] = f"{name}__raw"
                rounded += casts(node.output[i], name)
        nodes += [node, *rounded]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def run_rounded(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def run_torch(name: str, feeds: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
    import torch

    module, _, input_names, output_names = export_families.build(name, export_families.FAMILIES[name])
    module = module.eval().to(dtype)
    args = []
    for input_name in input_names:
        value = torch.from_numpy(feeds[input_name])
        args.append(value.to(dtype) if value.is_floating_point() else value)
    with torch.no_grad():
        out = module(*args)
    out = out if isinstance(out, tuple | list) else (out,)
    return {n: o.float().numpy() for n, o in zip(output_names, out, strict=True)}


def run_ttc(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import ttc

    return ttc.compile(str(path)).run(feeds)


def floor(name: str, cache: str | None, seed: int, with_torch: bool, with_ttc: bool) -> list[dict]:
    path = Path(name) if name.endswith(".onnx") else export_families.export(name, cache)
    feeds, reference = families_check.reference(path, seed)
    columns = {"onnx-bf16": run_rounded(bf16_boundaries(onnx.load(str(path))), feeds)}
    if with_torch and name in export_families.FAMILIES:
        import torch

        check = run_torch(name, feeds, torch.float32)
        sanity = max(compare(k, check[k], v).rel_l2_err for k, v in reference.items())
        if sanity > 1e-4:
            raise RuntimeError(f"{name}: the rebuilt torch module is not the exported one (rel L2 {sanity:.2g})")
        columns["torch-bf16"] = run_torch(name, feeds, torch.bfloat16)
    if with_ttc:
        columns["ttc"] = run_ttc(path, feeds)
    rows = []
    for output, expected in reference.items():
        if expected.dtype.kind != "f":
            continue
        row = {"model": path.stem, "output": output}
        for column, outputs in columns.items():
            row[column] = compare(output, outputs[output], expected).rel_l2_err
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("--ttc", action="store_true", help="also ttc's default compile on the emulator")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch bf16 column")
    parser.add_argument("--cache", help="model cache (default: $TTC_MODEL_CACHE or ~/.cache/ttc/models)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    columns = ["onnx-bf16"] + ([] if args.no_torch else ["torch-bf16"]) + (["ttc"] if args.ttc else [])
    print(f"{'model':28} {'output':20} " + " ".join(f"{c:>10}" for c in columns) + "   (rel L2 vs onnxruntime f32)")
    for name in args.names:
        for row in floor(name, args.cache, args.seed, not args.no_torch, args.ttc):
            cells = " ".join(f"{row[c]:10.4f}" if c in row else f"{'-':>10}" for c in columns)
            print(f"{row['model']:28} {row['output']:20} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
