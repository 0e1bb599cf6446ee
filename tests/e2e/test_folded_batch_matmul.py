"""A linear layer on [batch, M, K] activations (BERT's [12, 384, 1024] by shared weights) folds its batches into
M (`matmul.foldable`): one [batch * M, K] @ [K, N] product, so a core may take more rows than one batch has and
the weights are read once per block of rows rather than once per batch. The tile pages are the same, so every
folded plan (unicast, column-outer, 2-D multicast, with bias and fused residual) is bit-identical to the one-core
plan, on both emulators, with planned = static = executed counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from onnx import TensorProto, helper, numpy_helper

from ttc.compiler import CompileOptions, compile_model, default_pipeline
from ttc.passes.ops import matmul
from ttc.passes.ops.matmul import _matmul_geometry

BATCH, M, K, N = 3, 64, 96, 64  # M: 2 tiles per batch, 6 folded


def batched_linear(rows: int, residual: bool, n: int = N) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((K, n)) / np.sqrt(K)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="/abs"), helper.make_node("MatMul", ["a", "w"], ["p"], name="/mm"),
             helper.make_node("Add", ["p", "b"], ["y"], name="/bias")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, rows, K])]
    last = "y"
    if residual:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [BATCH, rows, n]))
        nodes += [helper.make_node("Add", ["y", "r"], ["z"], name="/residual")]
        last = "z"
    graph = helper.make_graph(nodes, "batched", inputs, [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_fold_only_shared_weights_without_padding_rows() -> None:
    folded = _matmul_geometry((3, 64, 96), (96, 64), (3, 64, 64))
    assert (folded.mt, folded.batches, folded.rows) == (6, 1, 192)
    assert _matmul_geometry((3, 60, 96), (96, 64), (3, 60, 64)).batches == 3  # padding rows between batches
    assert _matmul_geometry((3, 64, 96), (3, 96, 64), (3, 64, 64)).batches == 3  # one in1 per batch
    assert _matmul_geometry((1, 64, 96), (3, 96, 64), (3, 64, 64)).batches == 3  # in0 broadcast


@pytest.mark.parametrize(("residual", "plan", "n"), [(False, "unicast", N), (True, "unicast", N),
                                                     (True, "n_outer", N), (False, "mcast", N), (True, "mcast", N),
                                                     (False, "mcast", 3 * 32 - 7), (False, "unicast", 3 * 32)])
def test_folded_plan_spanning_batches_is_bit_identical(residual: bool, plan: str, n: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every core's block spans rows of two batches (per_core_m 3 tiles, 2 tiles per batch); with N 3 tiles the
    2 tile columns per core split N raggedly (the last core's columns past the edge are not read or written)."""
    model = batched_linear(M, residual, n)
    name = "z" if residual else "y"
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((BATCH, M, K)).astype(np.float32)}
    if residual:
        feeds["r"] = rng.standard_normal((BATCH, M, n)).astype(np.float32)
    original = matmul.matmul_candidates

    def restricted(op):
        pcn = 1 if n == N else 2
        return (b for b in original(op) if b["per_core_m"] == 3 and b["per_core_n"] == pcn
                and bool(b.get("mcast")) == (plan == "mcast") and bool(b.get("n_outer")) == (plan == "n_outer"))
    with monkeypatch.context() as patch:
        patch.setattr(matmul, "matmul_candidates", restricted)
        plans, compiled = compile_with_plans(model)
    [program] = [op for op in compiled.module.walk()
                 if op.name == "ttmetal.enqueue_program" and op.attributes["kind"] == "matmul"]
    assert program.attributes["grid"].num_cores == 2 * 2  # 2 blocks of 3 rows x 2 N columns
    assert any(op.name == "ttkernel.noc_mcast_cb" for op in program.walk()) == (plan == "mcast")
    golden_on_both_emulators(model, compiled, plans, feeds, name)
    check_static_equals_executed(compiled, compiled.profile)
    exact = compile_model(model, CompileOptions(pipeline=default_pipeline().replace("grid{", "grid{max-cores=1,")))
    np.testing.assert_array_equal(compiled.run(feeds)[name], exact.run(feeds)[name])
