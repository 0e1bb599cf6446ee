"""Tests for ttc.zoo: every model is valid, runs in onnxruntime, and sticks to the allowed ops."""

from collections.abc import Callable
from math import erf, sqrt
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ttc import golden, zoo

ALLOWED = {
    "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Exp", "Erf", "Sqrt",
    "Pow", "Softmax", "LayerNormalization", "Transpose", "Reshape", "Identity", "Constant",
}  # fmt: skip

# (builder, expected input shapes, expected output shapes)
MODELS: list[tuple[Callable[[], onnx.ModelProto], dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]] = [
    (zoo.mlp, {"input": (1, 784)}, {"logits": (1, 10)}),
    (lambda: zoo.mlp(batch=4, sizes=(784, 128, 64, 10)), {"input": (4, 784)}, {"logits": (4, 10)}),
    (zoo.encoder_block, {"hidden_states": (1, 128, 256)}, {"output": (1, 128, 256)}),
    (
        lambda: zoo.encoder_block(seq=32, hidden=64, heads=2, ffn=128, batch=2),
        {"hidden_states": (2, 32, 64)},
        {"output": (2, 32, 64)},
    ),
    (zoo.odd_shapes, {"input": (3, 50)}, {"output": (3, 17)}),
    (zoo.elementwise_broadcast, {"a": (2, 3, 45), "b": (45,), "c": (3, 1)}, {"output": (2, 3, 45)}),
]
IDS = ["mlp", "mlp_deep", "encoder_block", "encoder_small", "odd_shapes", "elementwise_broadcast"]


@pytest.fixture(params=MODELS, ids=IDS)
def case(request: pytest.FixtureRequest):
    build, inputs, outputs = request.param
    return build(), inputs, outputs


def test_allowed_ops_match_spec() -> None:
    assert zoo.ALLOWED_OPS == ALLOWED


def test_full_checker_and_opset(case) -> None:
    model, _, _ = case
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_only_allowed_ops_and_unique_readable_names(case) -> None:
    model, _, _ = case
    nodes = model.graph.node
    assert {n.op_type for n in nodes} <= ALLOWED
    names = [n.name for n in nodes]
    assert all(names), "every node needs a name"
    assert len(set(names)) == len(names), "node names must be unique"
    assert all(
        name.startswith("/") and name.endswith(n.op_type) for name, n in zip(names, nodes, strict=True)
    )
    assert all(init.name and init.data_type == onnx.TensorProto.FLOAT for init in model.graph.initializer)


def test_io_shapes_and_float32(case) -> None:
    model, inputs, outputs = case

    def shapes(vis) -> dict[str, tuple[int, ...]]:
        return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in vis}

    assert shapes(model.graph.input) == inputs
    assert shapes(model.graph.output) == outputs
    for v in [*model.graph.input, *model.graph.output]:
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_runs_in_onnxruntime_with_finite_outputs(case) -> None:
    model, inputs, outputs = case
    feeds = zoo.random_inputs(model, seed=1)
    assert {k: v.shape for k, v in feeds.items()} == inputs
    out = golden.run_onnxruntime(model, feeds)
    assert {k: v.shape for k, v in out.items()} == outputs
    for v in out.values():
        assert v.dtype == np.float32
        assert np.isfinite(v).all()
        assert np.abs(v).max() < 100  # activations stay O(1)
        assert v.std() > 1e-3  # and are not degenerate


@pytest.mark.parametrize(
    "build",
    [zoo.mlp, zoo.encoder_block, zoo.odd_shapes, zoo.elementwise_broadcast],
    ids=["mlp", "encoder_block", "odd_shapes", "elementwise_broadcast"],
)
def test_deterministic_by_seed(build) -> None:
    assert build(seed=3).SerializeToString() == build(seed=3).SerializeToString()
    assert build(seed=3).SerializeToString() != build(seed=4).SerializeToString()


def test_mlp_structure() -> None:
    model = zoo.mlp(sizes=(784, 256, 10))
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu", "Gemm"]
    assert [n.name for n in model.graph.node] == ["/fc1/Gemm", "/relu1/Relu", "/fc2/Gemm"]
    gemm = model.graph.node[0]
    assert {a.name: a.i for a in gemm.attribute} == {"transB": 1}
    init = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    assert init == {"fc1.weight": (256, 784), "fc1.bias": (256,), "fc2.weight": (10, 256), "fc2.bias": (10,)}


def test_encoder_block_structure() -> None:
    model = zoo.encoder_block()
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LayerNormalization") == 2 and ops.count("Softmax") == 1 and ops.count("Erf") == 1
    assert ops.count("MatMul") == 8  # q, k, v, scores, context, out_proj, fc1, fc2
    by_name = {n.name: n for n in model.graph.node}
    assert "/layer0/attn/q_proj/MatMul" in by_name
    perms = {n.name: list(n.attribute[0].ints) for n in model.graph.node if n.op_type == "Transpose"}
    assert perms["/layer0/attn/k_heads/Transpose"] == [0, 2, 3, 1]
    assert perms["/layer0/attn/q_heads/Transpose"] == [0, 2, 1, 3]
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            attrs = {a.name: a for a in n.attribute}
            assert attrs["axis"].i == -1 and attrs["epsilon"].f == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        zoo.encoder_block(hidden=100, heads=3)


def test_encoder_block_matches_numpy_reference() -> None:
    """The graph computes the block it claims to (checks wiring, not just shapes)."""
    seq, hidden, heads, ffn = 16, 32, 4, 64
    model = zoo.encoder_block(seq=seq, hidden=hidden, heads=heads, ffn=ffn)
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    x = zoo.random_inputs(model)["hidden_states"].astype(np.float64)

    def lin(t, p):
        return t @ w[f"layer0.{p}.weight"] + w[f"layer0.{p}.bias"]

    def ln(t, p):
        mu, var = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - mu) / np.sqrt(var + 1e-5) * w[f"layer0.{p}.weight"] + w[f"layer0.{p}.bias"]

    def split(t):
        return t.reshape(1, seq, heads, -1).transpose(0, 2, 1, 3)

    q, k, v = (split(lin(x, f"attn.{n}_proj")) for n in "qkv")
    s = q @ k.transpose(0, 1, 3, 2) / sqrt(hidden // heads)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(1, seq, hidden)
    h = ln(x + lin(ctx, "attn.out_proj"), "attn_norm")
    y = lin(h, "mlp.fc1")
    y = y * 0.5 * (1 + np.vectorize(erf)(y / sqrt(2)))
    ref = ln(h + lin(y, "mlp.fc2"), "mlp_norm")

    out = golden.run_onnxruntime(model, {"hidden_states": x.astype(np.float32)})["output"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_elementwise_broadcast_matches_numpy() -> None:
    model = zoo.elementwise_broadcast()
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    feeds = zoo.random_inputs(model)
    a, b, c = (feeds[n].astype(np.float64) for n in "abc")
    t = np.sqrt(np.maximum((a + b - c) * 0.5 / w["divisor"], 0)) ** w["exponent"]
    ref = c + np.exp(-0.5 * t)
    out = golden.run_onnxruntime(model, feeds)["output"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_save_is_atomic_and_roundtrips(tmp_path) -> None:
    model = zoo.odd_shapes()
    path = tmp_path / "sub" / "odd.onnx"
    zoo.save(model, path)
    zoo.save(model, path)  # overwrite in place
    assert onnx.load(path).SerializeToString() == model.SerializeToString()
    assert [p.name for p in path.parent.iterdir()] == ["odd.onnx"]  # no temp files left behind


def test_example_model_exists() -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "mlp.onnx"
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 784]
    assert path.stat().st_size < 1_000_000
