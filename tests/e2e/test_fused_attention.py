"""An attention's Q.K^T matmul, its softmax (scale and mask folded in) and the P.V matmul as one program
(`ttir.attention`, passes/attention.py and passes/ops/attention.py): the scores stay in L1, the result has the
unfused programs' bits (their softmax on whole rows, the op order the fused kernel follows) on both emulators,
passes golden with planned = executed counts, and the three programs stay when the fused one does not fit L1."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from onnx import TensorProto, helper, numpy_helper

from ttc.compiler import CompileOptions
from ttc.frontend.importer import import_read_model
from ttc.frontend.loader import read_model
from ttc.ir.dialects import ttir, ttmetal
from ttc.ir.dialects.tt import E150
from ttc.passes import PassManager, fusion_fit, parse_pipeline
from ttc.passes import attention as fusion
from ttc.passes.ops import attention, row_split
from ttc.passes.ops.geometry import cb_bytes

CASES = {  # batch, heads, seq, head dim, mask, scale
    "padding mask [B, 1, 1, S], scaled": (2, 3, 64, 64, "padding", 0.125),
    "causal mask [S, S], scaled": (1, 2, 96, 64, "causal", 0.125),
    "no mask, no scale": (2, 2, 64, 32, None, None),
    "no mask, scaled (the scale alone folded into the softmax)": (2, 2, 64, 32, None, 0.125),
    "zero constant mask, scaled (ViT's form)": (1, 3, 64, 64, "zero", 0.125),
    "ragged: seq 50, head dim 40, padding mask": (1, 2, 50, 40, "padding", 0.3),
    "ragged: seq 100, causal mask": (1, 3, 100, 64, "causal", 0.125),
    "position bias [B, H, S, S] on the product, padding mask (T5's form)": (2, 2, 64, 64, "bias+padding", None),
    "ragged: position bias, no mask": (1, 2, 70, 64, "bias", None),
}


def attention_model(b: int, h: int, s: int, d: int, mask: str | None, scale: float | None) -> onnx.ModelProto:
    nodes, initializers = [], []
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [b, h, s, d]) for name in "qkv"]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2], name="/kt"),
              helper.make_node("MatMul", ["q", "kt"], ["qk"], name="/qk")]
    x = "qk"
    if mask is not None and mask.startswith("bias"):  # a tensor added to the product (fused as its residual)
        inputs.append(helper.make_tensor_value_info("pb", TensorProto.FLOAT, [b, h, s, s]))
        nodes.append(helper.make_node("Add", [x, "pb"], ["biased"], name="/bias"))
        x = "biased"
        mask = mask.partition("+")[2] or None
    if scale is not None:
        initializers.append(numpy_helper.from_array(np.array(scale, np.float32), "c"))
        nodes.append(helper.make_node("Mul", [x, "c"], ["scaled"], name="/scale"))
        x = "scaled"
    if mask is not None:
        if mask == "padding":
            inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [b, 1, 1, s]))
        else:
            data = np.triu(np.full((s, s), -10000.0, np.float32), 1) if mask == "causal" \
                else np.zeros((b, 1, s, s), np.float32)
            initializers.append(numpy_helper.from_array(data, "m"))
        nodes.append(helper.make_node("Add", [x, "m"], ["masked"], name="/mask"))
        x = "masked"
    nodes += [helper.make_node("Softmax", [x], ["p"], axis=-1, name="/softmax"),
              helper.make_node("MatMul", ["p", "v"], ["y"], name="/pv")]
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, h, s, d])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds_for(b: int, h: int, s: int, d: int, mask: str | None, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {name: (rng.standard_normal([b, h, s, d]) * 1.5).astype(np.float32) for name in "qkv"}
    if mask is not None and mask.startswith("bias"):
        feeds["pb"] = rng.standard_normal([b, h, s, s]).astype(np.float32)
        mask = mask.partition("+")[2]
    if mask == "padding":
        feeds["m"] = np.where(rng.random([b, 1, 1, s]) < 0.3, -10000.0, 0.0).astype(np.float32)
    return feeds


def kinds(compiled) -> list[str]:
    return [op.attributes["kind"] for op in compiled.module.function("main").body.ops
            if op.name == ttmetal.ENQUEUE_PROGRAM.name]


UNFUSED = CompileOptions(pipeline=CompileOptions().pipeline_spec.replace("grid{", "grid{attention=false "))


def unfused_whole_rows(model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch):
    """The three programs, the softmax on whole rows (a split row sums its slices apart: other bits)."""
    with monkeypatch.context() as patch:
        patch.setattr(row_split, "split_candidates", lambda op, width: iter(()))
        _, compiled = compile_with_plans(model, UNFUSED)
    assert kinds(compiled)[-3:] == ["matmul", "softmax", "matmul"]
    return compiled


@pytest.mark.parametrize("name", sorted(CASES))
def test_attention_is_one_program_with_the_unfused_bits(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    b, h, s, d, mask, scale = CASES[name]
    model = attention_model(b, h, s, d, mask, scale)
    feeds = feeds_for(b, h, s, d, mask)
    plans, fused = compile_with_plans(model)
    assert kinds(fused) == ["attention"]
    golden_on_both_emulators(model, fused, plans, feeds)
    check_static_equals_executed(fused, fused.profile)
    result = fused.run(feeds, emulator="native")["y"]
    unfused = unfused_whole_rows(model, monkeypatch)
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(unfused.run(feeds, emulator=emulator)["y"], result)


@pytest.mark.parametrize("shape, mask, blocking, held", [
    ((2, 3, 64, 64, "padding", 0.125), "padding", {"batches": 3, "rows": 2, "block_w": 1}, True),  # heads share a row
    ((4, 1, 96, 64, "padding", 0.125), "padding", {"batches": 2, "rows": 1, "block_w": 1}, False),  # a row per image
    ((1, 2, 96, 64, "causal", 0.125), "causal", {"batches": 2, "rows": 3, "block_w": 3}, False),  # a row per tile row
    ((1, 2, 96, 64, "causal", 0.125), "causal", {"batches": 2, "rows": 1, "block_w": 1}, True),  # one shared tile row
    ((1, 2, 288, 64, None, None), None, {"batches": 1, "rows": 3, "block_w": 3}, False),  # P.V in 3 K chunks
    ((2, 2, 96, 64, "bias+padding", None), "bias+padding", {"batches": 2, "rows": 3, "block_w": 1}, True),
])
def test_forced_blockings_have_the_unfused_bits(shape, mask, blocking, held, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several heads and tile rows per core, the mask held or read per row, K^T and V held per head: the same
    bits as the unfused programs, planned = executed."""
    b, h, s, d, mask, scale = shape
    model = attention_model(b, h, s, d, mask, scale)
    feeds = feeds_for(b, h, s, d, mask, seed=11)
    with monkeypatch.context() as patch:
        patch.setattr(attention.ATTENTION, "candidates", lambda op: iter([dict(blocking)]))
        patch.setattr(fusion_fit, "recorded_cycles", lambda ops: float("inf"))  # taken even where modelled slower
        plans, fused = compile_with_plans(model)
    [program] = [op for op in fused.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]
    assert program.attributes["kind"] == "attention"
    masks = [c for c in program.attributes["cbs"] if c.index == attention.CB_MASK]
    assert [c.pages == s // 32 + bool(s % 32) for c in masks] == ([held] if mask else [])
    golden_on_both_emulators(model, fused, plans, feeds)
    check_static_equals_executed(fused, fused.profile)
    result = fused.run(feeds, emulator="native")["y"]
    unfused = unfused_whole_rows(model, monkeypatch)
    np.testing.assert_array_equal(unfused.run(feeds, emulator="reference")["y"], result)


def test_the_fused_program_writes_no_scores_to_dram() -> None:
    """The scores and probabilities never reach DRAM: with the intermediates placed there
    (layout{l1-intermediates=false}), the three programs write the scores, the fused one writes its result only."""
    b, h, s, d = 2, 4, 256, 64
    model = attention_model(b, h, s, d, "padding", 0.125)
    spec = CompileOptions().pipeline_spec.replace("layout{", "layout{l1-intermediates=false ")
    _, fused = compile_with_plans(model, CompileOptions(pipeline=spec))
    _, unfused = compile_with_plans(model, CompileOptions(pipeline=spec.replace("grid{", "grid{attention=false ")))
    assert "attention" in kinds(fused) and "attention" not in kinds(unfused)
    feeds = feeds_for(b, h, s, d, "padding")
    fused.run(feeds)
    unfused.run(feeds)
    written = [sum(p.counts.dram_written for p in c.profile) for c in (fused, unfused)]
    assert written[0] == b * h * s * d * 2  # the result only (bf16)
    assert written[1] >= written[0] + b * h * s * s * 2  # and at least the scores
    assert sum(p.time_us for p in fused.profile) < sum(p.time_us for p in unfused.profile)


def test_an_attention_too_large_for_l1_stays_three_programs() -> None:
    """K^T and V of a 1024-token head of 256 take 1 MiB per core: no fused blocking fits L1, the grid pass keeps
    the matmul, softmax and matmul it placed."""
    model = attention_model(1, 1, 1024, 256, "causal", 0.125)
    proto, path = read_model(model)
    module = import_read_model(proto, path)
    spec = CompileOptions().pipeline_spec.split(",lower-to-kernels")[0]
    PassManager(parse_pipeline(spec)).run(module)
    ops = [op for op in module.function("main").body.ops if "tt.grid" in op.attributes]
    assert [op.name for op in ops] == [ttir.LINEAR.name, ttir.SOFTMAX.name, ttir.LINEAR.name]
    # (the fused op the three would make has no blocking whose CBs fit an empty L1)
    fused = fusion.attention_op(*ops)
    try:
        smallest = min(cb_bytes(attention.attention_cbs(fused, blocking))
                       for blocking in attention.attention_candidates(fused))
    finally:
        fused.drop_operands()
    assert smallest > E150.l1_free


def test_the_three_programs_stay_when_they_cost_less(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused program replaces the three only when the cost model ranks it below their recorded costs."""
    model = attention_model(2, 3, 64, 64, "padding", 0.125)
    monkeypatch.setattr(fusion_fit, "recorded_cycles", lambda ops: 0.0)
    _, compiled = compile_with_plans(model)
    assert kinds(compiled) == ["matmul", "softmax", "matmul"]


def test_the_attention_op_verifies_its_shapes() -> None:
    from ttc.ir.core import Operation, Value
    from ttc.ir.dialect import VerifyError
    from ttc.ir.types import ScalarType, TensorType

    f32 = ScalarType("f32")

    def value(*shape: int) -> Value:
        return Value(TensorType(shape, f32))

    attributes = {"scale": 1.0, "scores_format": "bf16", "probs_format": "bf16"}
    good = Operation(ttir.ATTENTION.name, (value(2, 64, 32), value(2, 32, 96), value(2, 96, 16)),
                     [TensorType((2, 64, 16), f32)], attributes)
    ttir.ATTENTION.verify(good)
    for operands, result, message in [
        ((value(2, 64, 32), value(2, 16, 96), value(2, 96, 16)), (2, 64, 16), "inner dims"),
        ((value(2, 64, 32), value(2, 32, 96), value(2, 96, 16), value(3, 1, 96)), (2, 64, 16), "does not broadcast"),
        ((value(2, 64, 32), value(2, 32, 96), value(2, 96, 16)), (2, 64, 32), "attention result"),
    ]:
        bad = Operation(ttir.ATTENTION.name, operands, [TensorType(result, f32)], attributes)
        with pytest.raises(VerifyError, match=message):
            ttir.ATTENTION.verify(bad)
