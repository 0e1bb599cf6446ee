"""Rows too wide for L1 in the row-major device ops (issue 15, "no cliffs"): a data movement that keeps rows whole
but is not tile-granular untilizes its input and looks the rows up (passes/movement.py `RowGather`); 32 rows of
27,885 bf16 elements are 1.7 MB, past a core's L1, so both the untilize and the row lookup (which tilizes) fall
back to their column-blocked plans (passes/ops/untilize.py, passes/ops/embedding.py). Each case compiles with no
host op, passes golden bit-exactly (a movement copies values) on both emulators with identical bits, and its
planned counts equal the executed and the static ones; the fallback ran (the programs hold segmented NoC ops).
Rows that fit keep the whole-row plans."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from cost_model_checks import check_planned_equals_executed, check_static_equals_executed, compile_with_plans
from onnx import TensorProto, helper, numpy_helper

from ttc.golden import run_onnxruntime
from ttc.ir.dialects import ttkernel

SEGMENTED = {"untilize": ttkernel.NOC_WRITE_ROWS.name, "embedding": ttkernel.NOC_READ_ROWS_INDEXED.name}


def model_of(shape: tuple[int, ...], nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def transpose(shape: tuple[int, ...]) -> onnx.ModelProto:
    """A Relu (device tiles), then a swap of the two leading dims of [a, b, width]: whole rows, moved in an order
    no tile gather can."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0, 2])]
    return model_of(shape, nodes, [])


def reshape(shape: tuple[int, ...], to: tuple[int, ...]) -> onnx.ModelProto:
    """A Relu (device tiles), then a Reshape that regroups whole rows (not a view of the tiles), a Relu."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    return model_of(shape, nodes, [numpy_helper.from_array(np.array(to, np.int64), "s")])


def segmented_programs(compiled) -> dict[str, int]:
    """Per program kind, the programs whose kernels hold a segmented row op (the column-blocked plan)."""
    found: dict[str, int] = {}
    for program in (op for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"):
        kind = program.attributes["kind"]
        if kind in SEGMENTED and any(op.name == SEGMENTED[kind] and len(op.operands) > 3 for op in program.walk()):
            found[kind] = found.get(kind, 0) + 1
    return found


def run_both(model: onnx.ModelProto, shape: tuple[int, ...]) -> dict[str, int]:
    plans, compiled = compile_with_plans(model)
    assert compiled.manifest["host_ops"] == 0
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = run_onnxruntime(model, {"x": x})["y"]
    outputs = {}
    for emulator in ("reference", "native"):
        outputs[emulator] = compiled.run({"x": x}, emulator=emulator)["y"]
        check_planned_equals_executed(plans, compiled.profile)
    check_static_equals_executed(compiled, compiled.profile)
    np.testing.assert_array_equal(outputs["native"].view(np.uint32), outputs["reference"].view(np.uint32))
    bf16 = expected.astype(ml_dtypes.bfloat16).astype(np.float32)  # the host rounds the input to bf16
    np.testing.assert_array_equal(outputs["native"], bf16)
    return segmented_programs(compiled)


@pytest.mark.parametrize("shape", [(5, 3, 27885), (3, 2, 100003)])
def test_a_row_gather_of_rows_too_wide_for_l1_runs_in_column_blocks(shape: tuple[int, ...]) -> None:
    found = run_both(transpose(shape), shape)
    assert found.get("untilize") == 1 and found.get("embedding") == 1, found


def test_a_reshape_merging_batches_of_27885_wide_rows_runs_in_column_blocks() -> None:
    """Batches of 5 rows merged into one matrix: whole rows, but the 5-row matrices are not whole tile rows."""
    found = run_both(reshape((3, 5, 27885), (15, 27885)), (3, 5, 27885))
    assert found.get("untilize") == 1 and found.get("embedding") == 1, found


def test_rows_that_fit_keep_the_whole_row_plans() -> None:
    assert run_both(transpose((5, 3, 2000)), (5, 3, 2000)) == {}
