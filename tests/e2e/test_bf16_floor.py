"""benchmarks/bf16_floor.py: its bf16 rounding and its model rewrite (every float rounded to bf16 at each ONNX
node's boundary, float32 inside) agree with a numpy evaluation that rounds at the same places."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper, numpy_helper

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bf16_floor.py"
spec = importlib.util.spec_from_file_location("bf16_floor", SCRIPT)
assert spec is not None and spec.loader is not None
bf16_floor = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bf16_floor
spec.loader.exec_module(bf16_floor)


def bf16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def test_round_bf16_is_round_to_nearest_even_and_keeps_specials() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 1e3,
                             np.float32([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3.4028235e38, np.inf, -np.inf, 0.0])])
    assert np.array_equal(bf16_floor.round_bf16(values), bf16(values))
    assert np.isnan(bf16_floor.round_bf16(np.float32([np.nan]))).all()


def test_every_node_result_weight_and_input_is_rounded() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Softmax", ["y"], ["p"], axis=-1),
         helper.make_node("Mul", ["p", "y"], ["out"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 8])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.standard_normal((4, 16)) * 3).astype(np.float32)
    rounded = bf16_floor.bf16_boundaries(model)
    assert [o.name for o in rounded.graph.output] == ["out"]
    got = bf16_floor.run_rounded(rounded, {"x": x})["out"]
    y = bf16(bf16(x).astype(np.float64) @ bf16(w).astype(np.float64))
    e = np.exp(y - y.max(-1, keepdims=True))
    p = bf16(e / e.sum(-1, keepdims=True))
    expected = bf16(p * y)
    assert np.allclose(got, expected, rtol=2**-8, atol=0)  # float32 vs float64 inside a node: at most a tie apart
    assert np.mean(got == expected) > 0.95
    exact = (bf16_floor.run_rounded(model, {"x": x})["out"])
    assert not np.array_equal(got, exact)  # the rewrite did round something
