"""Small reference ONNX models (opset 17, float32) for the example, the tests and the benchmarks.

Built with onnx.helper from a fixed set of op types (``ALLOWED_OPS``); weights come from a seeded
numpy Generator, so a (function, arguments, seed) triple always gives the same model. Node names
follow the PyTorch exporter's style ("/fc1/Gemm") so that diagnostics can point at them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import uuid
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that introduced opset 17; keeps the models loadable by older runtimes

ALLOWED_OPS = frozenset(
    {
        "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Exp", "Erf", "Sqrt",
        "Pow", "Softmax", "LayerNormalization", "Transpose", "Reshape", "Identity", "Constant",
    }
)  # fmt: skip


class _Builder:
    """Collects nodes and initializers; every node gets a unique name and a readable output name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def op(
        self, op_type: str, inputs: Sequence[str], name: str, output: str | None = None, **attrs: object
    ) -> str:
        """Add node ``name`` (e.g. "/fc1/Gemm"); returns its output tensor name."""
        assert op_type in ALLOWED_OPS, op_type
        assert name not in self._names, f"duplicate node name {name}"
        self._names.add(name)
        out = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def const(self, name: str, value: np.ndarray | float) -> str:
        """A Constant node (structural constants: scales, shapes); float scalars become float32."""
        arr = np.asarray(value, dtype=np.float32) if isinstance(value, float) else np.asarray(value)
        return self.op("Constant", [], name, value=numpy_helper.from_array(arr, f"{name}_value"))

    def init(self, name: str, value: np.ndarray) -> str:
        """A graph initializer (a weight) named ``name``, e.g. "fc1.weight"."""
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def normal(self, shape: Sequence[int], scale: float) -> np.ndarray:
        return (self.rng.standard_normal(tuple(shape)) * scale).astype(np.float32)

    def uniform(self, shape: Sequence[int], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, tuple(shape)).astype(np.float32)

    def model(
        self,
        name: str,
        inputs: Sequence[tuple[str, Sequence[int]]],
        outputs: Sequence[tuple[str, Sequence[int]]],
    ) -> onnx.ModelProto:
        """Wrap the graph in an opset-17 model with float32 inputs and outputs of the given shapes."""

        def vi(n: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape))

        graph = helper.make_graph(
            self.nodes,
            name,
            [vi(n, s) for n, s in inputs],
            [vi(n, s) for n, s in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="ttc.zoo",
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def mlp(batch: int = 1, sizes: Sequence[int] = (784, 256, 10), seed: int = 0) -> onnx.ModelProto:
    """An MLP: Gemm(transB=1) + Relu per hidden layer, a final Gemm giving "logits" [batch, sizes[-1]].

    Weights use PyTorch's default init, uniform(+-1/sqrt(fan_in)), so activations stay O(1).
    """
    if len(sizes) < 2:
        raise ValueError("sizes needs at least an input and an output size")
    b = _Builder(seed)
    x = "input"
    n_layers = len(sizes) - 1
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
        bound = 1.0 / math.sqrt(fan_in)
        w = b.init(f"fc{i}.weight", b.uniform((fan_out, fan_in), -bound, bound))
        bias = b.init(f"fc{i}.bias", b.uniform((fan_out,), -bound, bound))
        last = i == n_layers
        x = b.op("Gemm", [x, w, bias], f"/fc{i}/Gemm", output="logits" if last else None, transB=1)
        if not last:
            x = b.op("Relu", [x], f"/relu{i}/Relu")
    return b.model("mlp", [("input", (batch, sizes[0]))], [("logits", (batch, sizes[-1]))])


def encoder_block(
    seq: int = 128, hidden: int = 256, heads: int = 4, ffn: int = 1024, seed: int = 0, batch: int = 1,
    layers: int = 1,
) -> onnx.ModelProto:
    """Post-norm transformer encoder blocks (BERT style), "hidden_states" -> "output", both [batch, seq, hidden].

    Each layer: self-attention (Q/K/V MatMul + bias, split heads, scaled scores, Softmax, merge heads,
    output projection), residual + LayerNormalization, then an erf-GELU MLP, residual +
    LayerNormalization. Weights are normal / sqrt(fan_in) and biases small, so activations and
    attention scores stay O(1). `layers=12, hidden=768, heads=12, ffn=3072` is BERT-base sized.
    """
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    b = _Builder(seed)
    x = "hidden_states"
    for index in range(layers):
        last = index == layers - 1
        x = _encoder_layer(b, x, f"layer{index}", seq, hidden, heads, ffn, batch, "output" if last else None)
    shape = (batch, seq, hidden)
    return b.model("encoder_block", [("hidden_states", shape)], [("output", shape)])


def _encoder_layer(b: _Builder, x: str, name: str, seq: int, hidden: int, heads: int, ffn: int, batch: int,
                   output: str | None) -> str:
    head_dim = hidden // heads
    p = f"/{name}"

    def linear(inp: str, scope: str, param: str, fan_in: int, fan_out: int) -> str:
        w = b.init(f"{name}.{param}.weight", b.normal((fan_in, fan_out), 1.0 / math.sqrt(fan_in)))
        bias = b.init(f"{name}.{param}.bias", b.normal((fan_out,), 0.02))
        y = b.op("MatMul", [inp, w], f"{p}/{scope}/MatMul")
        return b.op("Add", [y, bias], f"{p}/{scope}/Add")

    def layer_norm(inp: str, scope: str, param: str, output: str | None = None) -> str:
        scale = b.init(f"{name}.{param}.weight", 1.0 + b.normal((hidden,), 0.1))
        bias = b.init(f"{name}.{param}.bias", b.normal((hidden,), 0.1))
        return b.op(
            "LayerNormalization", [inp, scale, bias], f"{p}/{scope}/LayerNormalization",
            output=output, axis=-1, epsilon=1e-5,
        )  # fmt: skip

    # Self-attention.
    split_shape = b.const(f"{p}/attn/split_shape/Constant", np.array([batch, seq, heads, head_dim], np.int64))
    q = linear(x, "attn/q_proj", "attn.q_proj", hidden, hidden)
    k = linear(x, "attn/k_proj", "attn.k_proj", hidden, hidden)
    v = linear(x, "attn/v_proj", "attn.v_proj", hidden, hidden)
    q = b.op("Reshape", [q, split_shape], f"{p}/attn/q_split/Reshape")
    k = b.op("Reshape", [k, split_shape], f"{p}/attn/k_split/Reshape")
    v = b.op("Reshape", [v, split_shape], f"{p}/attn/v_split/Reshape")
    q = b.op("Transpose", [q], f"{p}/attn/q_heads/Transpose", perm=[0, 2, 1, 3])  # [b, h, s, d]
    k = b.op("Transpose", [k], f"{p}/attn/k_heads/Transpose", perm=[0, 2, 3, 1])  # [b, h, d, s]
    v = b.op("Transpose", [v], f"{p}/attn/v_heads/Transpose", perm=[0, 2, 1, 3])  # [b, h, s, d]
    scores = b.op("MatMul", [q, k], f"{p}/attn/scores/MatMul")
    scale = b.const(f"{p}/attn/scale/Constant", 1.0 / math.sqrt(head_dim))
    scores = b.op("Mul", [scores, scale], f"{p}/attn/scale/Mul")
    probs = b.op("Softmax", [scores], f"{p}/attn/Softmax", axis=-1)
    ctx = b.op("MatMul", [probs, v], f"{p}/attn/context/MatMul")  # [b, h, s, d]
    ctx = b.op("Transpose", [ctx], f"{p}/attn/merge/Transpose", perm=[0, 2, 1, 3])  # [b, s, h, d]
    merge_shape = b.const(f"{p}/attn/merge_shape/Constant", np.array([batch, seq, hidden], np.int64))
    ctx = b.op("Reshape", [ctx, merge_shape], f"{p}/attn/merge/Reshape")
    attn = linear(ctx, "attn/out_proj", "attn.out_proj", hidden, hidden)
    h = b.op("Add", [x, attn], f"{p}/attn/residual/Add")
    h = layer_norm(h, "attn_norm", "attn_norm")

    # MLP with erf-GELU: y * 0.5 * (1 + erf(y / sqrt(2))).
    y = linear(h, "mlp/fc1", "mlp.fc1", hidden, ffn)
    t = b.op("Div", [y, b.const(f"{p}/mlp/gelu/sqrt2/Constant", math.sqrt(2.0))], f"{p}/mlp/gelu/Div")
    t = b.op("Erf", [t], f"{p}/mlp/gelu/Erf")
    t = b.op("Add", [t, b.const(f"{p}/mlp/gelu/one/Constant", 1.0)], f"{p}/mlp/gelu/Add")
    t = b.op("Mul", [y, t], f"{p}/mlp/gelu/Mul")
    t = b.op("Mul", [t, b.const(f"{p}/mlp/gelu/half/Constant", 0.5)], f"{p}/mlp/gelu/half/Mul")
    y = linear(t, "mlp/fc2", "mlp.fc2", ffn, hidden)
    h = b.op("Add", [h, y], f"{p}/mlp/residual/Add")
    return layer_norm(h, "mlp_norm", "mlp_norm", output=output)


def odd_shapes(seed: int = 0) -> onnx.ModelProto:
    """Shapes that are not multiples of the 32x32 tile: "input" [3, 50] -> "output" [3, 17].

    MatMul [50, 70] + bias -> Sigmoid -> Mul by a [1, 70] weight -> Sub a [70] offset
    -> Softmax(axis=-1) -> Gemm to 17 -> Tanh.
    """
    b = _Builder(seed)
    w1 = b.init("fc1.weight", b.normal((50, 70), 1.0 / math.sqrt(50)))
    b1 = b.init("fc1.bias", b.normal((70,), 0.1))
    gain = b.init("gate.weight", b.uniform((1, 70), 0.5, 2.0))
    offset = b.init("gate.offset", b.normal((70,), 0.5))
    w2 = b.init("fc2.weight", b.normal((70, 17), 4.0))  # softmax outputs are ~1/70: scale up
    b2 = b.init("fc2.bias", b.normal((17,), 0.1))
    x = b.op("MatMul", ["input", w1], "/fc1/MatMul")
    x = b.op("Add", [x, b1], "/fc1/Add")
    x = b.op("Sigmoid", [x], "/gate/Sigmoid")
    x = b.op("Mul", [x, gain], "/gate/Mul")
    x = b.op("Sub", [x, offset], "/gate/Sub")
    x = b.op("Softmax", [x], "/softmax/Softmax", axis=-1)
    x = b.op("Gemm", [x, w2, b2], "/fc2/Gemm")
    b.op("Tanh", [x], "/fc2/Tanh", output="output")
    return b.model("odd_shapes", [("input", (3, 50))], [("output", (3, 17))])


def elementwise_broadcast(seed: int = 0) -> onnx.ModelProto:
    """Numpy-style broadcasting of binary ops: inputs "a" [2, 3, 45], "b" [45], "c" [3, 1] -> "output" [2, 3, 45].

    Add a+b, Sub c, Mul by a scalar, Div by a [2, 1, 45] weight (kept in [1, 2]), Relu, Sqrt (of a
    non-negative value), Pow by a [45] exponent (base >= 0), Exp of a negative multiple (bounded),
    then Add c again and Identity to the output.
    """
    b = _Builder(seed)
    divisor = b.init("divisor", b.uniform((2, 1, 45), 1.0, 2.0))
    exponent = b.init("exponent", b.uniform((45,), 0.5, 2.0))
    x = b.op("Add", ["a", "b"], "/add_b/Add")  # [2,3,45] + [45]
    x = b.op("Sub", [x, "c"], "/sub_c/Sub")  # [2,3,45] - [3,1]
    x = b.op("Mul", [x, b.const("/half/Constant", 0.5)], "/half/Mul")  # * scalar
    x = b.op("Div", [x, divisor], "/divide/Div")  # / [2,1,45]
    x = b.op("Relu", [x], "/relu/Relu")
    x = b.op("Sqrt", [x], "/sqrt/Sqrt")
    x = b.op("Pow", [x, exponent], "/pow/Pow")  # ** [45]
    x = b.op("Mul", [b.const("/neg_half/Constant", -0.5), x], "/neg_half/Mul")  # scalar * [2,3,45]
    x = b.op("Exp", [x], "/exp/Exp")
    x = b.op("Add", ["c", x], "/add_c/Add")  # [3,1] + [2,3,45]
    b.op("Identity", [x], "/output/Identity", output="output")
    return b.model(
        "elementwise_broadcast",
        [("a", (2, 3, 45)), ("b", (45,)), ("c", (3, 1))],
        [("output", (2, 3, 45))],
    )


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 feeds for every graph input of a zoo model (static shapes)."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` atomically: a temp file in the same folder, then os.replace.

    Readers never see a half-written file; the file gets the usual umask-based permissions.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
