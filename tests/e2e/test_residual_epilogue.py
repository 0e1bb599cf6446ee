"""A residual add (and a ReLU after it) fused into the producing matmul's epilogue (`ttir.linear {residual}`):
one program fewer per residual, and bit for bit the linear + eltwise pair it replaces (`fuse{residual=false}`)
on both emulators, with the unicast and the multicast matmul plans, a ragged N split and a ResNet block's
convolution; the modelled time of the fused programs is not larger."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import check_model
from onnx import TensorProto, helper, numpy_helper

from ttc import zoo
from ttc.compiler import CompiledModel, CompileOptions, compile_model, default_pipeline
from ttc.golden import compare, run_onnxruntime
from ttc.ir.dialects import ttir, ttkernel, ttmetal
from ttc.passes.ops.geometry import CB_RESIDUAL
from ttc.runtime.executor import using_emulator

F32 = TensorProto.FLOAT


def compiled(model: onnx.ModelProto, residual: bool, grid: str = "", preset: str = "") -> CompiledModel:
    pipeline = default_pipeline(perf_preset=preset)
    if not residual:
        pipeline = pipeline.replace("fuse,", "fuse{residual=false},")
    if grid:
        pipeline = pipeline.replace("grid{", f"grid{{{grid},")
    return compile_model(model, CompileOptions(pipeline=pipeline))


def programs(model: CompiledModel) -> list:
    return [op for op in model.module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name]


def residual_programs(model: CompiledModel) -> list:
    return [p for p in programs(model) if any(c.index == CB_RESIDUAL for c in p.attributes["cbs"])
            and p.attributes["kind"] in ("matmul", "im2col_matmul", "matmul_rows")]  # (a product: its lookup or
    # untilize fused in, passes.md grid's last steps)


def is_multicast(program) -> bool:
    return any(o.name == ttkernel.NOC_MCAST_CB.name for o in program.walk())


def check_fused_equals_unfused(model: onnx.ModelProto, residuals: int, grid: str = "", seed: int = 1,
                               preset: str = ""):
    """Both emulators give the unfused program's bits; the fused model has `residuals` programs fewer."""
    feeds = zoo.random_inputs(model, seed=seed)
    fused, unfused = compiled(model, True, grid, preset), compiled(model, False, grid, preset)
    assert len(residual_programs(fused)) == residuals and not residual_programs(unfused)
    assert len(programs(unfused)) - len(programs(fused)) == residuals
    results = {}
    for label, program in (("fused", fused), ("unfused", unfused)):
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                results[label, emulator] = program.run(feeds)
    want = results["unfused", "reference"]
    reference = run_onnxruntime(model, feeds)
    for key, outputs in results.items():
        for name, value in outputs.items():
            assert np.array_equal(np.asarray(value).view(np.uint32), np.asarray(want[name]).view(np.uint32)), key
            assert compare(name, value, reference[name]).passed, key
    with using_emulator("native"):
        fused.run(feeds)
        unfused.run(feeds)
    time = [sum(p.time_us for p in m.profile) for m in (fused, unfused)]
    assert time[0] < time[1]
    return fused


@pytest.mark.parametrize("multicast", [True, False])
def test_encoder_residuals_fuse_bit_for_bit(multicast: bool) -> None:
    """The attention output and the second FFN linear take their residual adds (the latter with K chunks)."""
    fused = check_fused_equals_unfused(zoo.encoder_block(), 2, f"multicast={str(multicast).lower()}")
    assert all(is_multicast(p) == multicast for p in residual_programs(fused))


def graph(nodes, inputs: dict[str, tuple[int, ...]], inits: dict[str, np.ndarray], output: str) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info(k, F32, list(v)) for k, v in inputs.items()],
                          [helper.make_tensor_value_info(output, F32, None)],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_ragged_n_split_reads_the_residual_up_to_the_edge() -> None:
    """N = 109 tiles less 15 columns: the last core's residual reads stop at the edge, as its writes do;
    the residual is the left operand of the add."""
    rng = np.random.default_rng(3)
    n = 109 * 32 - 15
    model = graph([helper.make_node("MatMul", ["x", "w"], ["p"], name="/mm"),
                   helper.make_node("Add", ["r", "p"], ["s"], name="/res"),
                   helper.make_node("Relu", ["s"], ["y"], name="/relu")],
                  {"x": (32, 64), "r": (32, n)}, {"w": rng.standard_normal((64, n)) / 8}, "y")
    fused = check_fused_equals_unfused(model, 1)
    (program,) = residual_programs(fused)
    assert program.attributes["grid"].num_cores > 2
    reads = [op for op in program.walk() if op.name == ttkernel.NOC_READ_TILES.name and op.attr("cb") == CB_RESIDUAL]
    assert reads and all(len(op.operands) == 3 for op in reads)  # with the valid columns


@pytest.mark.parametrize("preset", ["", "published"])
def test_resnet_block_conv_add_relu_is_one_program(preset: str) -> None:
    """conv -> relu (the skip) -> conv -> bn -> relu -> conv -> bn -> add(skip) -> relu: the last convolution's
    im2col matmul adds the skip and applies the ReLU in its epilogue (odd sizes: padding rows and columns). With
    the published preset its result, read only by the next lookup and matmul, is bfp8_b: the value before the
    add is still packed in bf16, as the unfused linear wrote it."""
    rng = np.random.default_rng(4)
    c = 40

    def bn(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}s": 1 + 0.1 * rng.standard_normal(c), f"{prefix}b": 0.1 * rng.standard_normal(c),
                f"{prefix}m": 0.1 * rng.standard_normal(c), f"{prefix}v": 1 + 0.1 * rng.random(c)}

    inits = {"w0": rng.standard_normal((c, 3, 3, 3)) * 0.3, "w1": rng.standard_normal((c, c, 3, 3)) * 0.08, "w2": rng.standard_normal((c, c, 3, 3)) * 0.08,
             **bn("a"), **bn("b")}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="/c0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["x0"], name="/stem"),
             helper.make_node("Conv", ["x0", "w1"], ["c1"], name="/c1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "as", "ab", "am", "av"], ["n1"], name="/bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="/r1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/c2", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "bs", "bb", "bm", "bv"], ["n2"], name="/bn2"),
             helper.make_node("Add", ["n2", "x0"], ["s"], name="/add"),
             helper.make_node("Relu", ["s"], ["y"], name="/r2")]
    nodes.append(helper.make_node("Conv", ["y0", "w3"], ["y"], name="/c3"))  # a reader of the sum: a matmul
    nodes[-2].output[0] = "y0"
    inits["w3"] = rng.standard_normal((c, c, 1, 1)) * 0.1
    # (no K split: split, the fused product keeps its lookup apart, the unfused one takes it in, and the program
    # counts no longer differ by the residual alone)
    fused = check_fused_equals_unfused(graph(nodes, {"x": (1, 3, 11, 11)}, inits, "y"), 1, "ksplit=false",
                                       preset=preset)
    linears = [op for op in fused.module.walk() if op.name == ttir.LINEAR.name]
    assert not linears  # (lowered: the program's kernels hold the epilogue)
    (program,) = residual_programs(fused)
    assert "/add" in program.loc.names() and "/r2" in program.loc.names()
    fns = [op.attr("fn") for op in program.walk() if op.name == ttkernel.SFPU_TILES.name]
    assert fns == ["relu"]
    formats = {c.index: str(c) for c in program.attributes["cbs"]}
    assert ("bfp8_b" in formats[16]) == (preset == "published") and "bf16" in formats[25], formats


def test_sharded_residual_counts_as_planned() -> None:
    """[512 x 384] @ [384 x 512] -> relu (the residual), then its product by [512 x 512] plus itself, relu, and a
    last product: the residual comes block-sharded; the plan's counts are the executed ones on both emulators."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="/relu1"),
             helper.make_node("MatMul", ["r", "w2"], ["p"], name="/fc2"),
             helper.make_node("Add", ["p", "r"], ["s"], name="/residual"),
             helper.make_node("Relu", ["s"], ["t"], name="/relu2"),
             helper.make_node("MatMul", ["t", "w3"], ["y"], name="/fc3")]
    inits = {"w1": rng.standard_normal((384, 512)) / np.sqrt(384), "w2": rng.standard_normal((512, 512)) / 32,
             "w3": rng.standard_normal((512, 96)) / 16}
    model = graph(nodes, {"x": (512, 384)}, inits, "y")
    assert check_model(model, emulators=("native", "reference")) == 3
    fused = check_fused_equals_unfused(model, 1)
    (program,) = residual_programs(fused)
    assert "sharded" in str(program.operands[2].type)  # a, b, the residual (here r's shards), the result
