"""The fused attention reading its query and value in place of their head splits' gathers and writing its head
merge's result itself (passes/attention.py, `tile_view`, `result_view`; `query_view` / `value_view` / `result_view`
of ttir.attention): where a head split only picks strided tile rows of the projection's result, the attention's
reader reads those rows itself, and where the head merge only puts the attention's tile rows at strided tile rows,
its writer writes them there; the gather programs go. The same bits as with the gathers (`grid{head-views=false}`)
on both emulators, golden, planned = executed = static counts, and three programs fewer per attention (with the
projections joined by the sibling step, their slices are part of the view)."""

from __future__ import annotations

import numpy as np
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators

from ttc import zoo
from ttc.compiler import CompileOptions, default_pipeline
from ttc.ir.dialects import ttir, ttmetal
from ttc.runtime.executor import using_emulator


def options(views: bool, siblings: bool = True) -> CompileOptions:
    grid = ("" if views else "head-views=false ") + ("" if siblings else "siblings=false ")
    return CompileOptions(pipeline=default_pipeline(dtype="bfp8_b").replace("grid{", "grid{" + grid))


def kinds(compiled) -> list[str]:
    return [op.attributes["kind"] for op in compiled.module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name]


@pytest.mark.parametrize(("batch", "seq", "siblings"), [(1, 64, True), (2, 50, True), (1, 64, False)])
def test_attention_reads_heads_in_place(batch: int, seq: int, siblings: bool) -> None:
    """Encoder layers (batch 2: the batches' heads are not one affine step apart; seq 50: padding rows) with and
    without the sibling step (Q and V slices of the joined projection, or their own linears' results)."""
    model = zoo.encoder_block(seq=seq, hidden=128, heads=2, ffn=256, layers=2, batch=batch)
    feeds = zoo.random_inputs(model, seed=3)
    plans, viewed = compile_with_plans(model, options(True, siblings))
    _, gathered = compile_with_plans(model, options(False, siblings))
    assert kinds(gathered).count("data_movement") - kinds(viewed).count("data_movement") == 6
    attentions = [op for op in viewed.module.walk()
                  if op.name == ttmetal.ENQUEUE_PROGRAM.name and op.attributes["kind"] == "attention"]
    # Q and V come from the projections' [batch, seq, N] results, not from [batch, heads, seq, d] gathers, and the
    # result is the merged [batch, seq, hidden] the output projection reads
    assert len(attentions) == 2 and all(op.operands[i].type.rank == 3 for op in attentions for i in (0, 2, -1))
    golden_on_both_emulators(model, viewed, plans, feeds, name="output")
    check_static_equals_executed(viewed, viewed.profile)
    with using_emulator("native"):
        want = gathered.run(feeds)["output"]
    got = viewed.run(feeds, emulator="reference")["output"]
    assert np.array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
    time = [sum(p.time_us for p in m.profile) for m in (viewed, gathered)]
    assert time[0] < time[1]


def test_the_views_verify_their_shapes() -> None:
    """With views the operands are the buffers read and written in place; the logical shapes come from the key and
    `result_shape` (which must be what a value read as it is gives), and every view holds a row stride and one first
    tile per batch."""
    from ttc.ir.core import Operation, Value
    from ttc.ir.dialect import VerifyError
    from ttc.ir.types import ScalarType, TensorType

    f32 = ScalarType("f32")
    q, kt, v = Value(TensorType((64, 64), f32)), Value(TensorType((2, 32, 96), f32)), Value(TensorType((96, 64), f32))
    views = {"query_view": (2, 0, 1), "value_view": (2, 0, 1), "result_view": (2, 0, 1)}  # two heads of 32 columns

    def attention(**changed) -> Operation:
        attributes = {"scale": 1.0, "scores_format": "bf16", "probs_format": "bf16", **views,
                      "result_shape": (2, 64, 32), **changed}
        return Operation(ttir.ATTENTION.name, (q, kt, v), [TensorType((64, 64), f32)], attributes)

    ttir.ATTENTION.verify(attention())
    plain_v = Operation(ttir.ATTENTION.name, (q, kt, Value(TensorType((2, 96, 32), f32))), [TensorType((64, 64), f32)],
                        {"scale": 1.0, "scores_format": "bf16", "probs_format": "bf16", "query_view": (2, 0, 1),
                         "result_view": (2, 0, 1), "result_shape": (2, 64, 16)})
    with pytest.raises(VerifyError, match="result_shape"):  # the value's 32 columns make a [2, 64, 32] result
        ttir.ATTENTION.verify(plain_v)
    with pytest.raises(VerifyError, match="first tile of each of 2 batches"):
        ttir.ATTENTION.verify(attention(query_view=(2, 0)))
