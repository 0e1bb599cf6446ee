"""footprint: tile geometry, the gather map of data movement chains, the eltwise body plan and the CB
plans that every stage shares."""

from __future__ import annotations

import numpy as np
import pytest
from backend_helpers import Graph, compile_graph, dev

from ttc.ir.dialects.tt import E150
from ttc.passes.ops.eltwise_body import Phase, eltwise_plan
from ttc.passes.ops.gather_map import Gather, gather_map
from ttc.passes.ops.geometry import CB_OUT, batch_offsets, cb_bytes, l1_share, tensor, tile_shape
from ttc.passes.ops.registry import circular_buffers, device_op, l1_footprint, op_kind


def test_tile_shapes() -> None:
    assert tile_shape(()) == tile_shape((1,)) == tile_shape((1, 1))
    shape = tile_shape((2, 3, 40, 70))
    assert (shape.batches, shape.rt, shape.ct, shape.tiles) == (6, 2, 3, 36)
    assert tile_shape((45,)).rows == 1


def test_batch_offsets_follow_numpy_broadcasting() -> None:
    # [2, 1, 40, 64] against [2, 3, 40, 64]: each matrix 2 x 2 tiles, repeated along the broadcast dim
    assert batch_offsets((2, 1, 40, 64), (2, 3, 40, 64)).tolist() == [0, 0, 0, 4, 4, 4]
    assert batch_offsets((40, 64), (5, 40, 64)).tolist() == [0] * 5


def split_heads(seq: int, hidden: int, heads: int, perm: tuple[int, ...]):
    dim = hidden // heads
    return gather_map((1, seq, hidden), (("reshape", (1, seq, heads, dim)), ("transpose", perm)))


def test_split_heads_is_a_tile_gather() -> None:
    q = split_heads(128, 256, 4, (0, 2, 1, 3))  # [1, 4, 128, 64]: tile (h, s, d) <- (s, 2h + d)
    assert isinstance(q, Gather) and not q.transposed
    assert q.source[:8].tolist() == [0, 1, 8, 9, 16, 17, 24, 25]
    k = split_heads(96, 128, 4, (0, 2, 3, 1))  # [1, 4, 32, 96]: tile (h, 0, s) <- (s, h) transposed
    assert isinstance(k, Gather) and k.transposed and k.source.tolist()[:3] == [0, 4, 8]


def test_regrouping_batch_dims_is_an_identity_gather() -> None:
    result = gather_map((2, 3, 40, 70), (("reshape", (6, 40, 70)),))
    assert isinstance(result, Gather) and result.source.tolist() == list(range(36))


def test_swapping_the_last_dims_through_a_reshape_is_a_transposed_gather() -> None:
    # [64, 48] -> [2, 32, 48] -> [2, 48, 32]: output tile (b, r) is input tile (b, r) transposed
    result = gather_map((64, 48), (("reshape", (2, 32, 48)), ("transpose", (0, 2, 1))))
    assert isinstance(result, Gather) and result.transposed and result.source.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("in_shape", "steps", "reason"), [
    ((40, 64), (("reshape", (64, 40)),), "several input tiles"),
    ((1, 96, 128), (("reshape", (1, 96, 4, 32)),), "several input tiles"),
    ((2, 40, 8), (("transpose", (1, 0, 2)),), "several input tiles"),
    ((2, 40, 8), (("transpose", (2, 1, 0)),), "several input tiles"),
])
def test_non_tile_granular_movements_say_why(in_shape, steps, reason) -> None:
    result = gather_map(in_shape, steps)
    assert isinstance(result, str) and reason in result


def test_padding_must_match_between_tiles() -> None:
    # [40, 64] -> [40, 2, 32] -> [2, 40, 32]: tile (h, 1) holds rows 32..39 of input tile (1, h): same padding
    assert isinstance(gather_map((40, 64), (("reshape", (40, 2, 32)), ("transpose", (1, 0, 2)))), Gather)
    # [2, 40, 32] -> [80, 32]: row tiles straddle the batch boundary
    assert isinstance(gather_map((2, 40, 32), (("reshape", (80, 32)),)), str)


def eltwise_op(body_lines: list[str], shapes: list[tuple[int, ...]], out: tuple[int, ...]):
    g = Graph()
    inputs = [g.input(f"x{i}", s) for i, s in enumerate(shapes)]
    g.output(g.op("ttir.eltwise", inputs, out, loc="ew", body=body_lines), "y")
    module = compile_graph(g, pipeline="layout")
    return next(op for op in module.function().body.ops if op.name == "ttir.eltwise")


def test_eltwise_plan_keeps_single_use_chains_in_dst() -> None:
    d = dev((40, 70))
    body = ['%c = "ttir.constant"() {value = dense<2.0> : tensor<f32>} : () -> tensor<f32> loc("c")',
            f'%0 = "ttir.exp"(%b0) : ({d}) -> {d} loc("exp")',
            f'%1 = "ttir.mul"(%0, %c) : ({d}, tensor<f32>) -> {d} loc("scale")',
            f'%2 = "ttir.add"(%1, %b1) : ({d}, {dev((70,))}) -> {d} loc("bias")',
            f'%3 = "ttir.relu"(%2) : ({d}) -> {d} loc("relu")',
            f'"ttir.yield"(%3) : ({d}) -> () loc("relu")']
    plan = eltwise_plan(eltwise_op(body, [(40, 70), (70,)], (40, 70)))
    assert plan.phases == (
        Phase("copy", 0, True, 17, True, sfpu=(("exp", 0.0), ("mul_scalar", 2.0))),
        Phase("add", 17, True, CB_OUT, True, 1, True, "row", (("relu", 0.0),)))
    assert (plan.mask_rows, plan.mask_cols) == (True, True)  # exp(0) = 1 in the padding, the bias fills rows


def test_eltwise_plan_swaps_and_negates_a_broadcast_minuend() -> None:
    d = dev((40, 70))
    body = [f'%0 = "ttir.sub"(%b1, %b0) : ({dev((40, 1))}, {d}) -> {d} loc("sub")',
            f'"ttir.yield"(%0) : ({d}) -> () loc("sub")']
    plan = eltwise_plan(eltwise_op(body, [(40, 70), (40, 1)], (40, 70)))
    assert plan.inputs == (True, False)
    assert plan.phases == (Phase("sub", 0, True, CB_OUT, True, 1, False, "col", (("neg", 0.0),)),)


def test_eltwise_plan_runs_pow_of_tensors_as_a_binary_sfpu_phase() -> None:
    """Both operands of a binary SFPU op are copied into Dst whole: a column exponent is expanded first
    (zero tile + the column broadcast), and the result's padding is re-masked (0 ** 0 = 1)."""
    d = dev((40, 70))
    body = [f'%0 = "ttir.pow"(%b0, %b1) : ({d}, {dev((40, 1))}) -> {d} loc("pow")',
            f'%1 = "ttir.exp"(%0) : ({d}) -> {d} loc("exp")',
            f'"ttir.yield"(%1) : ({d}) -> () loc("exp")']
    plan = eltwise_plan(eltwise_op(body, [(40, 70), (40, 1)], (40, 70)))
    zero, expanded = 17, 18
    assert plan.zero_cb == zero and plan.interms == ((expanded, True),)
    assert plan.phases == (Phase("add", zero, False, expanded, True, 1, False, "col"),
                           Phase("pow", 0, True, CB_OUT, True, expanded, True, sfpu=(("exp", 0.0),)))
    assert (plan.mask_rows, plan.mask_cols) == (True, True)


def test_eltwise_plan_selects_tensor_branches_of_a_where() -> None:
    """where(c, x, y) = where_nez(c, x) + where_eqz(c, y): no arithmetic on a branch. The select of x keeps
    zero padding (c's padding is 0), the select of y does too (y's padding is 0), so nothing is re-masked."""
    d = dev((40, 70))
    body = [f'%0 = "ttir.where"(%b0, %b1, %b2) : ({d}, {d}, {d}) -> {d} loc("where")',
            f'"ttir.yield"(%0) : ({d}) -> () loc("where")']
    plan = eltwise_plan(eltwise_op(body, [(40, 70)] * 3, (40, 70)))
    assert plan.phases == (Phase("where_nez", 0, True, 17, True, 1, True),
                           Phase("where_eqz", 0, True, 18, True, 2, True),
                           Phase("add", 17, True, CB_OUT, True, 18, True))
    assert (plan.mask_rows, plan.mask_cols) == (False, False)


def test_eltwise_plan_expands_a_broadcast_condition_once_for_both_selects() -> None:
    d = dev((40, 70))
    body = [f'%0 = "ttir.where"(%b0, %b1, %b2) : ({dev((40, 1))}, {d}, {d}) -> {d} loc("where")',
            f'"ttir.yield"(%0) : ({d}) -> () loc("where")']
    plan = eltwise_plan(eltwise_op(body, [(40, 1), (40, 70), (40, 70)], (40, 70)))
    zero, condition = 17, 18
    assert plan.phases == (Phase("add", zero, False, condition, True, 0, False, "col"),
                           Phase("where_nez", condition, True, 19, True, 1, True),
                           Phase("where_eqz", condition, True, 20, True, 2, True),
                           Phase("add", 19, True, CB_OUT, True, 20, True))


def test_footprint_is_cbs_plus_l1_shares() -> None:
    g = Graph()
    h = g.op("ttir.linear", [g.input("x", (64, 96)), g.weight("w", np.zeros((96, 128)))], (64, 128),
             'activation = "none", transpose_b = false', loc="fc")
    g.output(g.op("ttir.softmax", [h], (64, 128), "axis = -1", loc="sm"), "y")
    module = compile_graph(g, pipeline="layout,grid")
    softmax = next(op for op in module.function().body.ops if op_kind(op) == "softmax")
    blocking = softmax.attributes["tt.blocking"]
    share = l1_share(tensor(softmax.operands[0]), E150)
    assert share == 2048  # 8 tiles over 108 cores: one page per core, aligned
    cbs = circular_buffers(softmax, blocking)
    # two tile rows of four tiles: each row split over cores (row_split.py), which adds the partial statistics'
    # CBs (24, 25) and the L1 scratch they are exchanged through
    assert blocking["split"] > 1
    assert [cb.index for cb in cbs] == [0, 16, 17, 18, 19, 21, 24, 25]
    [scratch] = device_op(softmax).scratch(softmax, blocking)
    assert l1_share(scratch, E150) == 2048  # 2 exchanges x 2 rows x S partial tiles: at most one page per core
    assert l1_footprint(softmax, E150, blocking) == cb_bytes(cbs) + share + 2048
    whole = {"batches": 1, "rows": 1, "cols": 4, "block_w": 4}
    assert [cb.index for cb in circular_buffers(softmax, whole)] == [0, 16, 17, 18, 19, 21]
    assert l1_footprint(softmax, E150, whole) == cb_bytes(circular_buffers(softmax, whole)) + share
