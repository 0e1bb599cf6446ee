"""A convolution's im2col lookup fused into its product's reader (`ttir.im2col_linear`: passes/im2col_fusion.py,
passes/ops/im2col_matmul.py) and a product's untilize fused into its pack and writer (a row-major `ttir.linear`:
passes/untilize_fusion.py, passes/ops/matmul_rows.py): the fused programs give the unfused programs' bits on both
emulators with planned = executed = static counts, the grid pass fuses only where the cost model prefers it and
L1 holds it, and an index outside the sticks is a device fault of the fused reader."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import check_planned_equals_executed, check_static_equals_executed, compile_with_plans
from onnx import TensorProto, helper, numpy_helper

from ttc import zoo
from ttc.compiler import CompiledModel, CompileOptions, pack_device_weights
from ttc.ir.core import Operation, Value
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialect import VerifyError
from ttc.ir.dialects import ttir, ttmetal
from ttc.ir.types import ScalarType, TensorType
from ttc.passes import fusion_fit, untilize_fusion
from ttc.passes.ops import im2col_matmul, matmul_rows
from ttc.passes.ops.geometry import CB_IN0, cb

CASES = {  # batch, channels, height, width, middle channels, kernel, stride, padding
    "3x3, stride 1, padding 1": (1, 64, 28, 28, 64, 3, 1, 1),
    "3x3, stride 2, padding 1, batch 2": (2, 32, 15, 15, 48, 3, 2, 1),
    "7x7, stride 2, padding 3": (1, 16, 20, 20, 32, 7, 2, 3),
    "3x3, no padding, batch 3, 96 channels": (3, 96, 9, 9, 40, 3, 1, 0),
}


def chain_model(n: int, c: int, h: int, w: int, mid: int, k: int, stride: int, pad: int) -> onnx.ModelProto:
    """1x1 conv + relu, k x k conv + relu, 1x1 conv: a bottleneck's three convolutions."""
    rng = np.random.default_rng(0)
    nodes, initializers = [], []

    def conv(x: str, y: str, ic: int, oc: int, size: int, s: int, p: int, relu: bool) -> None:
        weight = (rng.standard_normal((oc, ic, size, size)) / np.sqrt(ic * size * size)).astype(np.float32)
        initializers.extend([numpy_helper.from_array(weight, f"{y}.w"),
                             numpy_helper.from_array((rng.standard_normal(oc) * 0.1).astype(np.float32), f"{y}.b")])
        out = f"{y}.conv" if relu else y
        nodes.append(helper.make_node("Conv", [x, f"{y}.w", f"{y}.b"], [out], kernel_shape=[size, size],
                                      strides=[s, s], pads=[p] * 4, name=f"/{y}"))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [y], name=f"/{y}.relu"))

    conv("x", "a", c, mid, 1, 1, 0, True)
    conv("a", "b", mid, mid, k, stride, pad, True)
    conv("b", "y", mid, c, 1, 1, 0, False)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    graph = helper.make_graph(nodes, "bottleneck", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c, oh, ow])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}


def kinds(compiled: CompiledModel) -> list[str]:
    return [op.attributes["kind"] for op in compiled.module.function("main").body.ops
            if op.name == ttmetal.ENQUEUE_PROGRAM.name]


UNFUSED = CompileOptions(pipeline=CompileOptions().pipeline_spec.replace("grid{", "grid{im2col=false untilize=false "))


def force_fusion(patch: pytest.MonkeyPatch) -> None:
    """Every pair that fits L1 is fused, whatever the cost model says."""
    for module in (fusion_fit, untilize_fusion):
        patch.setattr(module, "recorded_cycles", lambda ops: float("inf"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_programs_have_the_unfused_bits(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = chain_model(*CASES[name])
    feeds = feeds_for(model)
    with monkeypatch.context() as patch:
        force_fusion(patch)
        plans, fused = compile_with_plans(model)
    assert "im2col_matmul" in kinds(fused) and "embedding" in kinds(fused)  # (the NCHW edges stay lookups)
    if name != "3x3, stride 1, padding 1":  # (there the first product's result is height-sharded: kept as tiles)
        assert "matmul_rows" in kinds(fused)
    unfused_plans, unfused = compile_with_plans(model, UNFUSED)
    assert "im2col_matmul" not in kinds(unfused) and "matmul_rows" not in kinds(unfused)
    expected = unfused.run(feeds, emulator="native")["y"]
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(fused.run(feeds, emulator=emulator)["y"], expected)
        check_planned_equals_executed(plans, fused.profile)
    check_static_equals_executed(fused, fused.profile)
    assert len(plans) < len(unfused_plans)


def window_chain_model(n: int, c: int, h: int, w: int, k: int, pad: int, pool: bool) -> onnx.ModelProto:
    """A k x k conv + relu whose result only a window op reads: another k x k conv, or a 3x3 stride-2 max pool."""
    rng = np.random.default_rng(2)
    w1 = (rng.standard_normal((c, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    w2 = (rng.standard_normal((c, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    initializers = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                    numpy_helper.from_array((rng.standard_normal(c) * 0.1).astype(np.float32), "b1")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[k, k], pads=[pad] * 4, name="/c1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="/r1")]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r1"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4,
                                      name="/pool"))
    else:
        nodes.append(helper.make_node("Conv", ["r1", "w2"], ["y"], kernel_shape=[k, k], pads=[pad] * 4, name="/c2"))
    size = (h + 2 * pad - k) + 1
    out = (size + 2 - 3) // 2 + 1 if pool else size + 2 * pad - k + 1
    graph = helper.make_graph(nodes, "window_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, c, out, out])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("pool", [False, True], ids=["conv", "max pool"])
def test_a_fused_lookups_product_writes_the_next_windows_sticks(pool: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A convolution whose lookup is fused (`ttir.im2col_linear`) and whose result only the next window op's lookups
    read (ResNet-50's stem before its max pool): the untilize fuses into it too (the fused product packs and writes
    rows, matmul_rows.py's writer), with the unfused programs' bits on both emulators and planned = executed =
    static counts."""
    model = window_chain_model(1, 32, 12, 12, 3, 1, pool)
    feeds = feeds_for(model)
    with monkeypatch.context() as patch:
        force_fusion(patch)
        plans, fused = compile_with_plans(model)
    assert "im2col_matmul" in kinds(fused) and "matmul_rows" not in kinds(fused)  # (no plain product took them)
    _, unfused = compile_with_plans(model, UNFUSED)
    assert kinds(fused).count("untilize") < kinds(unfused).count("untilize")
    expected = unfused.run(feeds, emulator="native")["y"]
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(fused.run(feeds, emulator=emulator)["y"], expected)
        check_planned_equals_executed(plans, fused.profile)
    check_static_equals_executed(fused, fused.profile)


def test_bfp8_activations_keep_their_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the published preset the im2col matrix (read only by its product) is block-float: the fused reader's
    tilize packs it into CB 0 in that format, as the lookup wrote it."""
    model = chain_model(1, 64, 28, 28, 64, 3, 2, 1)
    feeds = feeds_for(model)
    options = CompileOptions(perf_preset="published")
    with monkeypatch.context() as patch:
        force_fusion(patch)
        plans, fused = compile_with_plans(model, options)
    assert "im2col_matmul" in kinds(fused)
    unfused = CompileOptions(perf_preset="published",
                             pipeline=options.pipeline_spec.replace("grid{", "grid{im2col=false untilize=false "))
    _, reference = compile_with_plans(model, unfused)
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(fused.run(feeds, emulator=emulator)["y"],
                                      reference.run(feeds, emulator=emulator)["y"])
        check_planned_equals_executed(plans, fused.profile)


def test_a_fused_lookup_is_never_offered_the_k_split() -> None:
    """ResNet-50's stage-4 3x3 convolution at batch 1 (49 x 4608 @ 4608 x 512): its product alone is offered K
    splits (few output blocks), the fused lookup's product is not (its reader gathers rows, the split's reads
    tiles: matmul_ksplit.py)."""
    from ttc.ir.dialects.tt import LayoutAttr
    from ttc.passes.ops.matmul import matmul_candidates
    from ttc.passes.ops.matmul_ksplit import is_ksplit

    def t(shape: tuple[int, ...], dtype: str, *layout: str) -> TensorType:
        return TensorType(shape, ScalarType(dtype), LayoutAttr(*layout))

    operands = [t((64, 512), "bf16", "row_major", "l1", "interleaved"),
                t((9, 2, 32), "i32", "row_major", "dram", "interleaved"),
                t((4608, 512), "bfp8_b", "tile", "dram", "interleaved")]
    op = Operation(ttir.IM2COL_LINEAR.name, [Value(o) for o in operands],
                   [t((49, 512), "bf16", "tile", "l1", "interleaved")], {"a_format": "bf16"})
    with im2col_matmul.as_linear(op) as proxy:
        assert any(is_ksplit(b) for b in matmul_candidates(proxy))
    assert im2col_matmul.fused_candidates(op)
    assert not any(is_ksplit(b) for b in im2col_matmul.fused_candidates(op))


def test_the_grid_pass_fuses_only_where_cheaper() -> None:
    """A bottleneck of 32 -> 256 -> 32 channels at 14 x 14: the fused lookup would tilize each core's rows of a
    2304-wide K once per N block (modelled slower than the lookup and the multicast product): left unfused. A
    stride-2 one of 48 channels: both fusions modelled cheaper, and taken."""
    plans, wide = compile_with_plans(chain_model(1, 32, 14, 14, 256, 3, 1, 1))
    assert "im2col_matmul" not in kinds(wide)
    plans, narrow = compile_with_plans(chain_model(2, 32, 15, 15, 48, 3, 2, 1))
    assert "im2col_matmul" in kinds(narrow) and "matmul_rows" in kinds(narrow)
    unfused_plans, _ = compile_with_plans(chain_model(2, 32, 15, 15, 48, 3, 2, 1), UNFUSED)
    assert sum(p.recorded_cycles for p in plans) < sum(p.recorded_cycles for p in unfused_plans)


def test_no_fusion_without_room_in_l1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused candidates whose CBs take the whole of L1 are never chosen, even when modelled cheapest."""
    model = chain_model(2, 32, 15, 15, 48, 3, 2, 1)

    def crowded(original):
        def cbs(self, op, blocking):
            return [*original(self, op, blocking), cb(CB_IN0 + 7, ScalarType("bf16"), 1, page=2_000_000)]
        return cbs

    with monkeypatch.context() as patch:
        force_fusion(patch)
        for kind in (im2col_matmul.Im2colMatmulOp, matmul_rows.MatmulRowsOp):
            patch.setattr(kind, "circular_buffers", crowded(kind.circular_buffers))
        _, compiled = compile_with_plans(model)
    assert "im2col_matmul" not in kinds(compiled) and "matmul_rows" not in kinds(compiled)


@pytest.mark.parametrize("emulator", ["reference", "native"])
def test_an_index_outside_the_sticks_is_a_fault_of_the_fused_reader(emulator: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = chain_model(1, 32, 8, 8, 32, 3, 1, 1)
    with monkeypatch.context() as patch:
        force_fusion(patch)
        _, compiled = compile_with_plans(model)
    ops = compiled.module.function("main").body.ops
    fused = next(op for op in ops if op.name == ttmetal.ENQUEUE_PROGRAM.name and op.attributes["kind"] == "im2col_matmul")
    index = fused.operands[1].owner  # the index table's buffer, written by its write_constant
    name = next(op.attributes["value"].name for op in ops
                if op.name == ttmetal.WRITE_CONSTANT.name and op.operands[0] is index.result)
    table = compiled.module.weights[name].copy()
    table[4, 1, 7] = 1 << 20  # far past the 64 sticks
    compiled.module.weights[name] = table
    broken = CompiledModel(compiled.module, pack_device_weights(compiled.module), compiled.manifest)
    with pytest.raises(DeviceFault, match=r"(?s)out-of-bounds.*reader kernel.*/b"):
        broken.run(feeds_for(model), emulator=emulator)


def test_the_fused_op_verifies_its_shapes() -> None:
    f32, i32 = ScalarType("f32"), ScalarType("i32")

    def op(table, ids, b, result) -> Operation:
        operands = [Value(TensorType(s, t)) for s, t in ((table, f32), (ids, i32), (b, f32))]
        return Operation(ttir.IM2COL_LINEAR.name, operands, [TensorType(result, f32)], {"a_format": "bf16"})

    ttir.IM2COL_LINEAR.verify(op((64, 32), (9, 2, 32), (288, 16), (49, 16)))
    with pytest.raises(VerifyError, match="positions"):
        ttir.IM2COL_LINEAR.verify(op((64, 32), (9, 2, 32), (256, 16), (49, 16)))
    with pytest.raises(VerifyError, match="tile rows"):
        ttir.IM2COL_LINEAR.verify(op((64, 32), (9, 2, 32), (288, 16), (80, 16)))



def two_bottlenecks() -> onnx.ModelProto:
    """The same bottleneck twice in a row (the second reads the first's result)."""
    bottleneck = chain_model(2, 48, 15, 15, 48, 3, 1, 1)
    model = onnx.ModelProto()
    model.CopyFrom(bottleneck)
    for node in list(bottleneck.graph.node):
        copy = model.graph.node.add()
        copy.CopyFrom(node)
        copy.name = node.name + ".2"
        copy.input[:] = [name if name.endswith((".w", ".b")) else ("y" if name == "x" else name + ".2")
                         for name in node.input]
        copy.output[:] = [name + ".2" for name in node.output]
    model.graph.output[0].name = "y.2"
    return model


def test_the_fusions_cost_each_signature_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Two identical bottlenecks in a row, fused wherever L1 holds it: the second bottleneck's fused candidates
    are costed from the memo, and the artifact is the bytes of a compile costing every candidate afresh. Index
    tables share costs when they read the same rows of each tile row, all the counts look at."""
    model = two_bottlenecks()
    estimate = fusion_fit.estimate
    calls: list[str] = []

    def counting(op, *args, **kwargs):
        calls.append(op.name)
        return estimate(op, *args, **kwargs)

    def compile_to(path, afresh: bool) -> bytes:
        with monkeypatch.context() as patch:
            patch.setattr(fusion_fit, "estimate", counting)
            force_fusion(patch)
            if afresh:
                for module in (fusion_fit, untilize_fusion):
                    patch.setattr(module, "ranking", lambda *a, original=fusion_fit.ranking, **k:
                                  original(*a[:5], {}, *a[6:], **k))
            compiled = compile_with_plans(model)[1]
        assert "im2col_matmul" in kinds(compiled)
        compiled.save(path)
        return path.read_bytes()

    memoized = compile_to(tmp_path / "memo.ttc", afresh=False)
    memo_calls = len(calls)
    calls.clear()
    assert compile_to(tmp_path / "afresh.ttc", afresh=True) == memoized
    assert len(calls) > memo_calls > 0

    # chunks of a batch read other rows of the sticks (other entries) but the same rows of each tile row
    tables = {"a": np.array([[[0, 1, -1], [2, 3, 4]]]), "b": np.array([[[7, 8, -1], [9, 5, 6]]]),
              "c": np.array([[[0, -1, -1], [2, 3, 4]]])}
    monkeypatch.setattr(im2col_matmul, "constant_of", lambda value, weights: weights.get(value))

    def key(name: str):
        read = im2col_matmul.rows_read(name, tables)
        return None if read is None else fusion_fit.digest(read)

    assert key("a") == key("b") != key("c")
    assert key("d") is None


def test_the_cheapest_fitting_candidate_is_the_first_of_the_full_ranking(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Ranking.cheapest` (costing only the candidates that fit) picks, for every budget, the candidate the grid
    pass's full ranking (`grid.ranked`, every candidate costed and sorted) puts first among those that fit."""
    from ttc.passes import grid
    from ttc.passes.ops.registry import l1_footprint

    seen: list[str] = []
    fits_l1 = fusion_fit.fits_l1

    def comparing(ops, fused, device, max_cores, candidates, cycles, *kept):
        seen.append(fused.name)
        full = grid.ranked(fused, device, candidates.fidelity, max_cores, candidates.weights)
        footprints = sorted({l1_footprint(fused, device, blocking) for _, blocking, _ in full})
        for budget in (footprints[0] - 1, *footprints[:: max(1, len(footprints) // 7)], footprints[-1]):
            first = next(((g, b, c) for g, b, c in full if l1_footprint(fused, device, b) <= budget), None)
            chosen = candidates.cheapest(fused, budget)
            assert (chosen is None) == (first is None)
            if first is not None:
                assert (chosen[0], chosen[1], chosen[2].cycles) == (first[0], first[1], first[2].cycles)
        return fits_l1(ops, fused, device, max_cores, candidates, cycles, *kept)

    with monkeypatch.context() as patch:
        for module in (fusion_fit, untilize_fusion):  # (fusion_fit.try_fuse: the attention's and the lookup's)
            patch.setattr(module, "fits_l1", comparing)
        force_fusion(patch)
        compile_with_plans(chain_model(2, 32, 15, 15, 48, 3, 2, 1))
        compile_with_plans(zoo.encoder_block())  # (the attention step's candidates too)
    assert set(seen) == {ttir.IM2COL_LINEAR.name, ttir.LINEAR.name, ttir.ATTENTION.name}
