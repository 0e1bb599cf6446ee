"""Decoder-shaped ONNX models whose weights are a sparse external-data file: big on paper, nothing real on disk.

They test what ttc says about a model before it reads any weight (the fit check with the KV cache): the graph
holds, per layer, the attention and MLP projections as MatMuls over external initializers and the cache
pairs (`past_key_values.N.key` -> Concat -> `present.N.key`). They are valid ONNX, never meant to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    vocab: int
    ffn: int


SHAPES = {
    "gpt2-large": DecoderShape(layers=36, hidden=1280, heads=20, kv_heads=20, vocab=50257, ffn=5120),
    "gpt2-medium": DecoderShape(layers=24, hidden=1024, heads=16, kv_heads=16, vocab=50257, ffn=4096),
    "falcon-7b": DecoderShape(layers=32, hidden=4544, heads=71, kv_heads=1, vocab=65024, ffn=18176),
}


def write_decoder(folder: Path, name: str) -> Path:
    """Write `name`.onnx and its sparse weights file into `folder`; returns the model's path."""
    shape = SHAPES[name]
    head_dim = shape.hidden // shape.heads
    folder.mkdir(parents=True, exist_ok=True)
    data_name = f"{name}.weights"
    offset = 0
    initializers = []

    def weight(wname: str, dims: list[int]) -> str:
        nonlocal offset
        tensor = TensorProto(name=wname, data_type=TensorProto.FLOAT, dims=dims)
        tensor.data_location = TensorProto.EXTERNAL
        length = 4
        for d in dims:
            length *= d
        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += length
        initializers.append(tensor)
        return wname

    nodes = [helper.make_node("Gather", [weight("wte", [shape.vocab, shape.hidden]), "input_ids"], ["x0"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
    outputs = []
    kv_width = shape.kv_heads * head_dim
    nodes.append(helper.make_node("Constant", [], ["kv_shape"],
                                  value=helper.make_tensor("kv_shape", TensorProto.INT64, [4],
                                                           [0, -1, shape.kv_heads, head_dim])))
    x = "x0"
    for n in range(shape.layers):
        q = f"q{n}"
        nodes.append(helper.make_node("MatMul", [x, weight(f"h{n}.q", [shape.hidden, shape.hidden])], [q]))
        for kind in ("key", "value"):
            flat, split, heads_first = f"{kind}{n}", f"{kind}{n}.r", f"{kind}{n}.t"
            nodes.append(helper.make_node("MatMul", [x, weight(f"h{n}.{kind}", [shape.hidden, kv_width])], [flat]))
            nodes.append(helper.make_node("Reshape", [flat, "kv_shape"], [split]))
            nodes.append(helper.make_node("Transpose", [split], [heads_first], perm=[0, 2, 1, 3]))
            past, present = f"past_key_values.{n}.{kind}", f"present.{n}.{kind}"
            nodes.append(helper.make_node("Concat", [past, heads_first], [present], axis=2))
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT,
                                                        ["batch", shape.kv_heads, "past", head_dim]))
            outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT,
                                                         ["batch", shape.kv_heads, "total", head_dim]))
        nodes.append(helper.make_node("MatMul", [q, weight(f"h{n}.o", [shape.hidden, shape.hidden])], [f"o{n}"]))
        nodes.append(helper.make_node("MatMul", [f"o{n}", weight(f"h{n}.up", [shape.hidden, shape.ffn])], [f"u{n}"]))
        nodes.append(helper.make_node("MatMul", [f"u{n}", weight(f"h{n}.down", [shape.ffn, shape.hidden])],
                                      [f"x{n + 1}"]))
        x = f"x{n + 1}"
    nodes.append(helper.make_node("MatMul", [x, weight("lm_head", [shape.hidden, shape.vocab])], ["logits"]))
    outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", shape.vocab]))
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    with open(folder / data_name, "wb") as handle:
        handle.truncate(offset)  # sparse: no block is written
    return path
