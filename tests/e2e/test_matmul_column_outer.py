"""The column-outer walk of a matmul core's subblocks (`matmul.column_outer`, blockings with `n_outer = 1`): per K
step the core reads each in1 column block once and the in0 rows once per subblock column, instead of in1 once per
subblock row. A tall block on few columns (an im2col product whose M tiles are prime: ResNet-50's stage-4
convolutions at batch 20, 31 tile rows) then reads its weight once instead of once per tile row. Each output
tile's accumulation is the same chain in either walk, so the result is bit-identical to the row-outer walk's, on
both emulators, with planned = executed = static counts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from test_overlapping_m_split import linear_model as m_split_linear

from ttc.passes.ops import matmul
from ttc.passes.ops.matmul import column_outer

M, K, N = 31 * 32, 512, 128  # 31 tile rows: a subblock spans one tile row of a 31-row block


def linear_model(bias: bool, residual: bool = False) -> onnx.ModelProto:
    return m_split_linear(M, K, N, bias, residual, seed=5)


def only(monkeypatch: pytest.MonkeyPatch, outer: bool) -> None:
    """Restrict the matmul's candidates to one walk (multicast plans and overlapping M splits left out: each core
    holds a block of 31 rows)."""
    original = matmul.matmul_candidates

    def restricted(op):
        mt = matmul.matmul_shape(op).mt
        return (b for b in original(op) if column_outer(b) == outer and not b.get("mcast") and not mt % b["per_core_m"])
    monkeypatch.setattr(matmul, "matmul_candidates", restricted)


@pytest.mark.parametrize(("bias", "residual"), [(False, False), (True, False), (True, True)])
def test_column_outer_walk_is_bit_identical_and_reads_in1_once(bias: bool, residual: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = linear_model(bias, residual)
    name = "z" if residual else "y" if bias else "p"
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((M, K)).astype(np.float32)}
    if residual:
        feeds["r"] = rng.standard_normal((M, N)).astype(np.float32)
    with monkeypatch.context() as patch:
        only(patch, outer=True)
        plans, compiled = compile_with_plans(model)
    golden_on_both_emulators(model, compiled, plans, feeds, name)
    check_static_equals_executed(compiled, compiled.profile)
    outer_result = compiled.run(feeds)[name]
    [outer_profile] = [p for p in compiled.profile if p.kind == "matmul"]
    if residual:  # the add and its ReLU ran in the matmul's epilogue: no eltwise program is left
        assert [p for p in compiled.profile if "/residual" in p.nodes] == [outer_profile]
    with monkeypatch.context() as patch:
        only(patch, outer=False)
        _, rows_compiled = compile_with_plans(model)
    np.testing.assert_array_equal(outer_result, rows_compiled.run(feeds)[name])
    weight_bytes = K * N * 2
    # the column-outer walk reads the weight once per core that needs its columns, never once per tile row
    assert outer_profile.counts.dram_read < 31 * weight_bytes // 4

