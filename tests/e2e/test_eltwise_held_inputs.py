"""An eltwise input whose tiles are the same for every block of a core (a bias row added to a tall matrix, on
cores with one column block each) is read once per core and kept at the front of its CB
(`eltwise.held_inputs`), not once per block: the program is bit-identical on both emulators, passes the golden
rule, its planned counts equal the executed ones, and it reads the row's tiles once per core."""

from __future__ import annotations

import io

import numpy as np
import onnx
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from onnx import TensorProto, helper, numpy_helper

from ttc.ir.dialects import ttmetal
from ttc.passes.ops.eltwise import held_inputs
from ttc.passes.ops.geometry import TILE

ROWS, COLS = 4096, 64


def bias_relu_model() -> onnx.ModelProto:
    bias = numpy_helper.from_array(np.linspace(-1, 1, COLS).astype(np.float32), "b")
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="/abs"), helper.make_node("Add", ["a", "b"], ["s"], name="/add"),
             helper.make_node("Relu", ["s"], ["y"], name="/relu")]
    graph = helper.make_graph(nodes, "bias_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, COLS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_a_bias_row_is_read_once_per_core() -> None:
    model = bias_relu_model()
    plans, compiled = compile_with_plans(model)
    feeds = {"x": np.random.default_rng(1).standard_normal((ROWS, COLS)).astype(np.float32)}
    golden_on_both_emulators(model, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)
    programs = [op for op in compiled.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name
                and op.attributes["kind"] == "eltwise"]
    [program] = [op for op in programs if len(op.operands) == 3]  # the add of the bias row (x, b, result)
    [profile] = [p for p in compiled.profile if p.kind == "eltwise"]
    cores = program.attributes["grid"].num_cores
    tile_rows = ROWS // TILE
    assert tile_rows // cores > 1  # each core walks several blocks, so a per-block read would repeat
    bias_tiles = COLS // TILE
    data_bytes = ROWS * COLS * 2
    # x read once, the result written once, the bias row's tiles once per core (not once per tile row)
    assert profile.counts.dram_read + profile.counts.dram_written <= 2 * data_bytes + cores * bias_tiles * 2048 + 1


def test_held_inputs_follow_the_block_walk() -> None:
    """The rule itself: a row is held only on cores with one column block; a full operand never."""
    from ttc.frontend import import_model
    from ttc.passes import PassManager

    module = import_model(bias_relu_model())
    PassManager("decompose,canonicalize,tilize,fuse,canonicalize,layout", stream=io.StringIO()).run(module)
    [op] = [op for op in module.function("main").body.ops if op.name == "ttir.eltwise" and len(op.operands) == 2]
    one_block = {"batches": 1, "rows": 4, "cols": 2, "block_w": 2}
    two_blocks = {"batches": 1, "rows": 4, "cols": 2, "block_w": 1}
    held = held_inputs(op, one_block)
    assert sorted(held) == [False, True]
    assert not any(held_inputs(op, two_blocks))
    assert not any(held_inputs(op, {"batches": 1, "rows": 1, "cols": 2, "block_w": 2}))
