"""Row lookups fused into the elementwise op that alone reads them (`ttir.lookup_eltwise`: passes/lookup_fusion.py,
passes/ops/lookup_eltwise.py): a max pool's one lookup per kernel position and their maximum as one program, and a
padded lookup (ids of -1 read as zero rows) under an activation. The fused programs give the unfused programs' bits
on both emulators with planned = executed = static counts, with whole rows and with column segments of them, and
the grid pass fuses only where the cost model prefers it and L1 holds it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import check_planned_equals_executed, check_static_equals_executed, compile_with_plans
from onnx import TensorProto, helper, numpy_helper

from ttc.compiler import CompiledModel, CompileOptions
from ttc.ir.core import Operation, Value
from ttc.ir.dialect import VerifyError
from ttc.ir.dialects import ttir, ttmetal
from ttc.ir.dialects.tt import LayoutAttr
from ttc.ir.types import ScalarType, TensorType
from ttc.passes import fusion_fit
from ttc.passes.ops import lookup_eltwise
from ttc.passes.ops.geometry import CB_IN0, cb


def pool_model(c: int, h: int, pad: bool) -> onnx.ModelProto:
    """conv 3x3 + relu, then a 3x3 stride-2 max pool (ResNet's stem), or a Pad by 1 and a Sigmoid."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((c, 8, 3, 3)) / np.sqrt(72)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4, name="/conv"),
             helper.make_node("Relu", ["c"], ["r"], name="/relu")]
    if pad:
        pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
        nodes += [helper.make_node("Pad", ["r", "pads"], ["p"], name="/pad"),
                  helper.make_node("Sigmoid", ["p"], ["y"], name="/sigmoid")]
        out, initializers = h + 2, [pads]
    else:
        nodes.append(helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4,
                                      name="/pool"))
        out, initializers = (h - 1) // 2 + 1, []
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, out, out])],
                              [numpy_helper.from_array(weight, "w"), *initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def kinds(compiled: CompiledModel) -> list[str]:
    return [op.attributes["kind"] for op in compiled.module.function("main").body.ops
            if op.name == ttmetal.ENQUEUE_PROGRAM.name]


UNFUSED = CompileOptions(pipeline=CompileOptions().pipeline_spec.replace("grid{", "grid{lookups=false "))
CASES = {  # channels, height, padded lookup (else a max pool), narrow blocks (a segment of each row per read)
    "max pool, 64 channels": (64, 32, False, False),
    "max pool, 96 channels, one tile column per block": (96, 16, False, True),
    "padded lookup under a sigmoid": (32, 14, True, False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_lookups_have_the_unfused_bits(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    c, h, pad, narrow = CASES[name]
    model = pool_model(c, h, pad)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 8, h, h)).astype(np.float32)}
    with monkeypatch.context() as patch:
        patch.setattr(fusion_fit, "recorded_cycles", lambda ops: float("inf"))  # fused wherever L1 holds it
        if narrow:
            candidates = lookup_eltwise.LookupEltwiseOp.candidates
            patch.setattr(lookup_eltwise.LookupEltwiseOp, "candidates",
                          lambda self, op: (b for b in candidates(self, op) if b["block_w"] == 1))
        plans, fused = compile_with_plans(model)
    unfused_plans, unfused = compile_with_plans(model, UNFUSED)
    assert "lookup_eltwise" in kinds(fused) and "lookup_eltwise" not in kinds(unfused)
    assert kinds(fused).count("embedding") < kinds(unfused).count("embedding")
    assert len(plans) < len(unfused_plans)
    expected = unfused.run(feeds, emulator="native")["y"]
    for emulator in ("reference", "native"):
        np.testing.assert_array_equal(fused.run(feeds, emulator=emulator)["y"], expected)
        check_planned_equals_executed(plans, fused.profile)
    check_static_equals_executed(fused, fused.profile)


def test_the_grid_pass_fuses_a_max_pool_where_cheaper() -> None:
    """A max pool's nine lookups and their maximum: modelled cheaper as one program (nine launches fewer), taken."""
    plans, fused = compile_with_plans(pool_model(64, 32, False))
    unfused_plans, unfused = compile_with_plans(pool_model(64, 32, False), UNFUSED)
    assert "lookup_eltwise" in kinds(fused) and "eltwise" not in kinds(fused)
    assert kinds(fused).count("embedding") == kinds(unfused).count("embedding") - 9  # (the NCHW edge's stays)
    assert sum(p.recorded_cycles for p in plans) < sum(p.recorded_cycles for p in unfused_plans)


def test_no_fusion_without_room_in_l1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused candidates whose CBs take the whole of L1 are never chosen, even when modelled cheapest."""
    original = lookup_eltwise.LookupEltwiseOp.circular_buffers

    def crowded(self, op, blocking):
        return [*original(self, op, blocking), cb(CB_IN0 + 15, ScalarType("bf16"), 1, page=2_000_000)]

    with monkeypatch.context() as patch:
        patch.setattr(fusion_fit, "recorded_cycles", lambda ops: float("inf"))
        patch.setattr(lookup_eltwise.LookupEltwiseOp, "circular_buffers", crowded)
        _, compiled = compile_with_plans(pool_model(64, 32, False))
    assert "lookup_eltwise" not in kinds(compiled)


def test_the_fused_op_verifies_its_shapes() -> None:
    from ttc.ir.core import Block, Region

    def t(shape: tuple[int, ...], dtype: str, *layout: str) -> TensorType:
        return TensorType(shape, ScalarType(dtype), LayoutAttr(*layout))

    def fused(ids_rows: int) -> Operation:
        table = Value(t((100, 64), "bf16", "row_major", "l1", "interleaved"))
        ids = Value(t((ids_rows, 32), "i32", "row_major", "dram", "interleaved"))
        block = Block([TensorType((64, 64), ScalarType("f32"))])
        block.append(Operation(ttir.YIELD.name, [block.args[0]], []))
        return Operation(ttir.LOOKUP_ELTWISE.name, [table, ids], [t((64, 64), "bf16", "tile", "l1", "interleaved")],
                         {"lookups": (0,)}, regions=[Region([block])])

    ttir.LOOKUP_ELTWISE.verify(fused(2))
    with pytest.raises(VerifyError, match="indices"):
        ttir.LOOKUP_ELTWISE.verify(fused(3))
