"""RMS norm spelt out as Mistral, Qwen2 and T5 export it (`w * (x * 1/sqrt(mean(x^2, -1) + eps))`) becomes
`ttir.layer_norm {rms = true}` in decompose and runs on the row-op kernels: whole rows, split rows over a group
of cores (one exchange: the sums of squares), and row chunks (two passes) when neither fits; each passes the
golden check against onnxruntime and is bit for bit alike on both emulators."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttc.compiler import CompiledModel, CompileOptions, compile_model, default_pipeline
from ttc.frontend import import_model
from ttc.golden import compare, run_onnxruntime
from ttc.ir.dialects import ttir, ttmetal
from ttc.ir.printer import print_module
from ttc.passes import PassManager
from ttc.passes.ops import row_split
from ttc.runtime.executor import using_emulator

F32 = TensorProto.FLOAT


def rms_model(shape: tuple[int, ...], square: str = "Pow", weight_first: bool = True, eps: float = 1e-6,
              seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    n = shape[-1]
    inits = {"w": 1 + 0.1 * rng.standard_normal(n), "two": np.array(2.0), "eps": np.array(eps), "axes": np.array([-1])}
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"], name="/pow") if square == "Pow"
             else helper.make_node("Mul", ["x", "x"], ["sq"], name="/square"),
             helper.make_node("ReduceMean", ["sq", "axes"], ["mean"], name="/mean", keepdims=1),
             helper.make_node("Add", ["mean", "eps"], ["var"], name="/add"),
             helper.make_node("Sqrt", ["var"], ["std"], name="/sqrt"),
             helper.make_node("Reciprocal", ["std"], ["inv"], name="/rsqrt"),
             helper.make_node("Mul", ["x", "inv"], ["normed"], name="/mul"),
             helper.make_node("Mul", ["w", "normed"] if weight_first else ["normed", "w"], ["y"], name="/scale")]
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", F32, list(shape))],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(v.astype(np.int64 if k == "axes" else np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def compiled(model: onnx.ModelProto, grid: str = "") -> CompiledModel:
    pipeline = default_pipeline()
    if grid:
        pipeline = pipeline.replace("grid{", f"grid{{{grid},")
    return compile_model(model, CompileOptions(pipeline=pipeline))


def run_both(model: onnx.ModelProto, program: CompiledModel, seed: int = 1) -> None:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = {"x": (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)}
    results = []
    for emulator in ("native", "reference"):
        with using_emulator(emulator):
            results.append(program.run(feeds)["y"])
    assert np.array_equal(results[0].view(np.uint32), results[1].view(np.uint32))
    result = compare("y", results[0], run_onnxruntime(model, feeds)["y"])
    assert result.passed, result


def programs(program: CompiledModel) -> list:
    return [op for op in program.module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name]


@pytest.mark.parametrize(("square", "weight_first"), [("Pow", True), ("Mul", False)])
def test_spelt_out_rms_norm_becomes_one_layer_norm(square: str, weight_first: bool) -> None:
    module = import_model(rms_model((2, 5, 96), square, weight_first))
    PassManager("decompose", stream=io.StringIO()).run(module)
    text = print_module(module)
    norms = [line for line in text.splitlines() if f'"{ttir.LAYER_NORM.name}"' in line]
    assert len(norms) == 1 and "rms = true" in norms[0] and "epsilon = 9.99999997" in norms[0], text
    assert 'loc(fused["/' + ("pow" if square == "Pow" else "square") + '", "/mean", "/add"' in norms[0]
    for name in ("reduce_mean", "rsqrt", "sqrt", "mul", "pow"):
        assert f'"ttir.{name}"' not in text, text


def test_a_square_used_elsewhere_keeps_the_spelt_out_form() -> None:
    model = rms_model((2, 5, 96))
    model.graph.output.append(helper.make_tensor_value_info("sq", F32, [2, 5, 96]))
    module = import_model(model)
    PassManager("decompose", stream=io.StringIO()).run(module)
    assert f'"{ttir.LAYER_NORM.name}"' not in print_module(module)


@pytest.mark.parametrize("shape", [(1, 128, 768), (3, 50, 100)])
def test_rms_norm_runs_as_one_program(shape: tuple[int, ...]) -> None:
    model = rms_model(shape)
    program = compiled(model)
    assert [p.attributes["kind"] for p in programs(program)] == ["layer_norm"]
    run_both(model, program)


def test_rms_norm_rows_split_over_cores_with_one_exchange() -> None:
    """Four tile rows of 2048 columns: the split-row plan (a few rows, long); one exchange's scratch."""
    model = rms_model((1, 128, 2048))
    program = compiled(model)
    (norm,) = programs(program)
    semaphore_waits = [op for op in norm.walk() if op.name == "ttkernel.semaphore_wait"
                       and op.attributes["semaphore"] == row_split.SEMAPHORE]  # (not the weight's multicast)
    assert norm.attributes["grid"].num_cores > 4 and len(semaphore_waits) == 1
    run_both(model, program)


def test_rms_norm_rows_too_long_for_one_core_run_in_two_passes() -> None:
    """On one core a row of 16384 columns does not fit L1: the chunked plan reads it twice (no mean pass)."""
    model = rms_model((32, 16384))
    program = compiled(model, "max-cores=1")
    (norm,) = programs(program)
    reads = [op for op in norm.walk() if op.name == "ttkernel.noc_read_tiles"]
    assert norm.attributes["grid"].num_cores == 1 and len(reads) == 3, len(reads)  # x twice, the weight once
    run_both(model, program)


def test_onnx_rms_normalization_op_runs_as_one_program() -> None:
    """ONNX's RMSNormalization (opset 23): the importer's composition (a sum times 1/N) is recognised too."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph([helper.make_node("RMSNormalization", ["x", "w"], ["y"], name="/rms", axis=-1)], "rms",
                              [helper.make_tensor_value_info("x", F32, [3, 40, 160])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array((1 + 0.1 * rng.standard_normal(160)).astype(np.float32), "w")])
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10), strict_mode=True)
    program = compiled(model)
    assert [p.attributes["kind"] for p in programs(program)] == ["layer_norm"]
    run_both(model, program)
