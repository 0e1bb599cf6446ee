"""An attention's scale and additive mask folded into the softmax (`fuse.FuseSoftmaxMask`: softmax(x * c + mask)
-> softmax(x, mask) {scale = c}, the kernel computing x * c + mask as it reads the row): the fused program gives the same bits as the unfused
add + softmax programs on both emulators, passes the golden rule, its planned counts equal the executed ones,
and the pair is faster in the model (one launch, read and write fewer)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from onnx import TensorProto, helper, numpy_helper

from ttc.ir.dialects import ttmetal
from ttc.passes import fuse

CASES = {  # scores, mask, scale (None: no Mul)
    "attention mask [B, 1, 1, S] (row broadcast)": ([2, 3, 64, 96], [2, 1, 1, 96], None),
    "full mask [B, 1, S, S], scaled by 1/8": ([2, 3, 64, 64], [2, 1, 64, 64], 0.125),
    "padded rows and columns, mask [S], scaled by 0.3": ([3, 40, 50], [50], 0.3),
    "mask first: m + x * c": ([2, 2, 32, 64], [2, 1, 1, 64], -0.7),
}


def masked_softmax_model(shape: list[int], mask_shape: list[int], scale: float | None) -> onnx.ModelProto:
    nodes, initializers, scores = [], [], "x"
    if scale is not None:
        nodes.append(helper.make_node("Mul", ["c", "x"] if scale < 0 else ["x", "c"], ["q"], name="/scale"))
        initializers.append(numpy_helper.from_array(np.array(scale, np.float32), "c"))
        scores = "q"
    nodes += [helper.make_node("Add", ["m", scores] if scale is not None and scale < 0 else [scores, "m"], ["s"],
                               name="/add"),
              helper.make_node("Softmax", ["s"], ["y"], axis=-1, name="/softmax")]
    graph = helper.make_graph(nodes, "masked_softmax",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                               helper.make_tensor_value_info("m", TensorProto.FLOAT, mask_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def kinds(compiled) -> list[str]:
    return [op.attributes["kind"] for op in compiled.module.function("main").body.ops
            if op.name == ttmetal.ENQUEUE_PROGRAM.name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_masked_softmax_is_one_program_with_the_unfused_bits(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, mask_shape, scale = CASES[name]
    model = masked_softmax_model(shape, mask_shape, scale)
    rng = np.random.default_rng(7)
    mask = np.where(rng.random(mask_shape) < 0.3, -10000.0, 0.0) + 0.5 * rng.standard_normal(mask_shape)
    feeds = {"x": (rng.standard_normal(shape) * 3).astype(np.float32), "m": mask.astype(np.float32)}
    plans, compiled = compile_with_plans(model)
    assert kinds(compiled).count("softmax") == 1 and "eltwise" not in kinds(compiled)
    golden_on_both_emulators(model, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)
    fused = compiled.run(feeds, emulator="native")["y"]
    [profile] = [p for p in compiled.profile if p.kind == "softmax"]
    fused_us = profile.time_us

    monkeypatch.setattr(fuse.FuseSoftmaxMask, "match_and_rewrite", lambda self, op, rewriter: False)
    plans, unfused = compile_with_plans(model)
    assert "eltwise" in kinds(unfused)
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(unfused.run(feeds, emulator=emulator)["y"], fused)
    unfused_us = sum(p.time_us for p in unfused.profile)
    assert fused_us < unfused_us  # one program fewer (its launch, its reads and writes)


@pytest.mark.parametrize("shape, mask_shape, batches, held", [
    ([2, 3, 64, 96], [2, 1, 1, 96], 3, True),  # a core's 3 heads share their image's mask row
    ([2, 3, 64, 96], [2, 1, 1, 96], 1, True),
    ([4, 1, 64, 96], [4, 1, 1, 96], 2, False),  # a core's 2 images have a mask row each
    ([2, 3, 64, 96], [2, 1, 64, 96], 3, False),  # a full mask: each of a core's 2 tile rows has its own
    ([2, 3, 64, 96], [2, 1, 64, 96], (3, 1), True),  # one tile row per core: the 3 heads share it
])
def test_a_row_mask_shared_by_a_cores_rows_is_read_once(shape: list[int], mask_shape: list[int], batches,
                                                        held: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mask whose one tile row serves all of a core's tile rows ([B, 1, 1, S], or a full one on cores of one
    tile row of several heads) is read once per core and held; otherwise it is read per tile row. Same bits as
    the unfused programs either way."""
    from ttc.passes.ops import row_ops

    model = masked_softmax_model(shape, mask_shape, 0.125)
    rng = np.random.default_rng(11)
    feeds = {"x": (rng.standard_normal(shape) * 3).astype(np.float32),
             "m": np.where(rng.random(mask_shape) < 0.3, -10000.0, 0.0).astype(np.float32)}
    batches, rows = batches if isinstance(batches, tuple) else (batches, 2)
    blocking = {"batches": batches, "rows": rows, "cols": 3, "block_w": 3}
    with monkeypatch.context() as patch:
        patch.setattr(row_ops.SOFTMAX, "candidates", lambda op: iter([dict(blocking)]))
        plans, compiled = compile_with_plans(model)
    [program] = [op for op in compiled.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]
    [mask_cb] = [cb for cb in program.attributes["cbs"] if cb.index == row_ops.CB_MASK]
    assert (mask_cb.pages == 3) == held
    golden_on_both_emulators(model, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)
    [profile] = compiled.profile
    cores = program.attributes["grid"].num_cores
    tile_rows = int(np.prod(shape[:-2])) * 2  # 64 rows: 2 tile rows per matrix
    mask_reads = profile.counts.dram_read - tile_rows * 3 * 2048  # less the scores' tiles
    assert mask_reads == (cores if held else tile_rows) * 3 * 2048
    fused = compiled.run(feeds, emulator="native")["y"]
    monkeypatch.setattr(fuse.FuseSoftmaxMask, "match_and_rewrite", lambda self, op, rewriter: False)
    _, unfused = compile_with_plans(model)
    np.testing.assert_array_equal(unfused.run(feeds, emulator="reference")["y"], fused)


@pytest.mark.parametrize("scale", [0.125, None])
def test_an_all_zero_constant_mask_is_dropped(scale: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """ViT's attention mask is a folded constant of zeros: x * c + 0 fuses as softmax(x) {scale = c} (no mask
    read at all), x + 0 as a plain softmax; the bits are the unfused programs'."""
    shape, mask_shape = [2, 3, 64, 64], [2, 1, 64, 64]
    proto = masked_softmax_model(shape, mask_shape, scale)
    graph = proto.graph
    graph.initializer.append(numpy_helper.from_array(np.zeros(mask_shape, np.float32), "m"))
    del graph.input[1]
    feeds = {"x": (np.random.default_rng(5).standard_normal(shape) * 3).astype(np.float32)}
    plans, compiled = compile_with_plans(proto)
    [program] = [op for op in compiled.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]
    assert program.attributes["kind"] == "softmax" and len(program.operands) == 2  # x and the result only
    golden_on_both_emulators(proto, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)
    fused = compiled.run(feeds, emulator="native")["y"]
    monkeypatch.setattr(fuse.FuseSoftmaxMask, "match_and_rewrite", lambda self, op, rewriter: False)
    _, unfused = compile_with_plans(proto)
    assert "eltwise" in kinds(unfused)
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(unfused.run(feeds, emulator=emulator)["y"], fused)


@pytest.mark.parametrize("mask_shape, scale, forced", [
    ([2, 1, 1, 256], 0.125, {"batches": 1, "rows": 2, "split": 2, "groups_x": 1}),
    ([2, 1, 64, 256], None, {"batches": 3, "rows": 1, "split": 4, "groups_x": 2}),
    ([256], -0.5, {"batches": 2, "rows": 2, "split": 8, "groups_x": 1}),
])
def test_a_split_masked_softmax_has_the_unfused_bits(mask_shape: list[int], scale: float | None, forced: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The split-row plan computes x * scale + mask for its slices as the whole-row kernel does: with the
    softmax forced to the same split blocking, fused and unfused give the same bits on both emulators."""
    from ttc.passes.ops import row_ops

    shape = [2, 3, 64, 256]  # rows of 8 tiles
    width = 8 // forced["split"]
    blocking = {"cols": 8, "block_w": min(width, 8), **forced}
    monkeypatch.setattr(row_ops.SOFTMAX, "candidates", lambda op: iter([dict(blocking)]))
    model = masked_softmax_model(shape, mask_shape, scale)
    rng = np.random.default_rng(13)
    feeds = {"x": (rng.standard_normal(shape) * 3).astype(np.float32),
             "m": (np.where(rng.random(mask_shape) < 0.3, -10000.0, 0.0)
                   + rng.standard_normal(mask_shape)).astype(np.float32)}
    plans, compiled = compile_with_plans(model)
    [program] = [op for op in compiled.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]
    assert program.attributes["kind"] == "softmax" and len(program.operands) == 4  # x, mask, scratch, result
    golden_on_both_emulators(model, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)
    fused = compiled.run(feeds, emulator="native")["y"]
    monkeypatch.setattr(fuse.FuseSoftmaxMask, "match_and_rewrite", lambda self, op, rewriter: False)
    _, unfused = compile_with_plans(model)
    assert "eltwise" in kinds(unfused)
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(unfused.run(feeds, emulator=emulator)["y"], fused)
