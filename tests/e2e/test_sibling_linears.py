"""Sibling linears (grid's last steps, passes/sibling_fusion.py): linears reading the same first operand with
constant weights, whose results feed gather programs (an attention's Q, K and V projections and their head splits),
become one linear with the weights side by side, each old result a tile-aligned column slice folded into its gather.
Bit for bit the separate linears (`grid{siblings=false}`) on both emulators, fewer programs and a smaller modelled
time; linears that would gain nothing, cost a program or differ in a format stay apart."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttc import zoo
from ttc.compiler import CompiledModel, CompileOptions, compile_model, default_pipeline
from ttc.golden import compare, run_onnxruntime
from ttc.ir.dialects import ttmetal
from ttc.runtime.executor import using_emulator

F32 = TensorProto.FLOAT


def compiled(model: onnx.ModelProto, siblings: bool, preset: str = "", dtype: str = "bf16") -> CompiledModel:
    pipeline = default_pipeline(dtype=dtype, perf_preset=preset)
    if not siblings:
        pipeline = pipeline.replace("grid{", "grid{siblings=false ")
    return compile_model(model, CompileOptions(pipeline=pipeline))


def kinds(model: CompiledModel) -> list[str]:
    return [op.attributes["kind"] for op in model.module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name]


def check_same_bits(model: onnx.ModelProto, linears_gone: int, preset: str = "", dtype: str = "bf16") -> None:
    """Both emulators give the separate linears' bits, golden against onnxruntime; `linears_gone` matmul programs
    fewer and nothing else added, and a smaller modelled time."""
    feeds = zoo.random_inputs(model, seed=2)
    fused, apart = compiled(model, True, preset, dtype), compiled(model, False, preset, dtype)
    fused_kinds, apart_kinds = kinds(fused), kinds(apart)
    assert apart_kinds.count("matmul") - fused_kinds.count("matmul") == linears_gone
    assert len(apart_kinds) - len(fused_kinds) == linears_gone
    results = {}
    for label, program in (("fused", fused), ("apart", apart)):
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                results[label, emulator] = program.run(feeds)
    want = results["apart", "reference"]
    reference = run_onnxruntime(model, feeds)
    for key, outputs in results.items():
        for name, value in outputs.items():
            assert np.array_equal(np.asarray(value).view(np.uint32), np.asarray(want[name]).view(np.uint32)), key
            assert compare(name, value, reference[name]).passed, key
    time = [sum(p.time_us for p in m.profile) for m in (fused, apart)]
    assert time[0] < time[1]


@pytest.mark.parametrize(("preset", "dtype", "gone"), [("", "bf16", 4), ("", "bfp8_b", 4), ("published", "bf16", 3)])
def test_encoder_qkv_projections_are_one_linear(preset: str, dtype: str, gone: int) -> None:
    """Two encoder layers: each layer's Q, K and V projections (K's head split with tile transposes) run as one
    product; with bfp8_b weights the side-by-side weight packs into the same blocks. Under the published preset
    the second layer (a post-norm branch) stores Q, an a operand of the attention, in bfp8_b and its b operands K
    and V in bf16: one product has one result format, so only K and V join there."""
    check_same_bits(zoo.encoder_block(seq=64, hidden=128, heads=2, ffn=256, layers=2), gone, preset, dtype)


def graph(nodes, inputs: dict[str, tuple[int, ...]], inits: dict[str, np.ndarray], outputs: list[str]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "siblings", [helper.make_tensor_value_info(k, F32, list(v)) for k, v in inputs.items()],
                          [helper.make_tensor_value_info(o, F32, None) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def heads(x: str, name: str, n: int, perm: list[int]) -> list:
    """x [64, n] -> [64, n / 32, 32] -> transposed by `perm`: a gather program of its own."""
    shape = helper.make_tensor(f"{name}_shape", TensorProto.INT64, [3], [64, n // 32, 32])
    return [helper.make_node("Constant", [], [f"{name}_s"], value=shape, name=f"/{name}/shape"),
            helper.make_node("Reshape", [x, f"{name}_s"], [f"{name}_r"], name=f"/{name}/reshape"),
            helper.make_node("Transpose", [f"{name}_r"], [name], perm=perm, name=f"/{name}/transpose")]


def linears_after_grid(model: onnx.ModelProto, siblings: bool = True) -> list:
    module = compiled(model, siblings).module
    return [op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name and op.attributes["kind"] == "matmul"]


def test_which_linears_join() -> None:
    """Of five linears reading x: two with biases and widths of 96 and 64 columns whose results feed head splits
    join (a grouped-query attention's K and V); one whose result an eltwise reads, one without a bias and one
    with a width of 40 columns (its slice would not be tile-aligned) stay apart. Run, the fused model gives the
    separate linears' bits."""
    rng = np.random.default_rng(5)
    inits = {f"w{i}": rng.standard_normal((64, n)) / 8 for i, n in enumerate((96, 64, 64, 64, 40))}
    inits |= {"b0": rng.standard_normal(96) / 8, "b1": rng.standard_normal(64) / 8, "b2": rng.standard_normal(64) / 8}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"], name="/k/mm"),
             helper.make_node("Add", ["m0", "b0"], ["k"], name="/k/bias"),
             helper.make_node("MatMul", ["x", "w1"], ["m1"], name="/v/mm"),
             helper.make_node("Add", ["m1", "b1"], ["v"], name="/v/bias"),
             *heads("k", "kh", 96, [1, 2, 0]), *heads("v", "vh", 64, [1, 0, 2]),
             helper.make_node("MatMul", ["x", "w2"], ["m2"], name="/e/mm"),
             helper.make_node("Add", ["m2", "b2"], ["e"], name="/e/bias"),
             helper.make_node("Relu", ["e"], ["er"], name="/e/relu"),
             helper.make_node("Sigmoid", ["er"], ["es"], name="/e/sigmoid"),
             helper.make_node("MatMul", ["x", "w3"], ["m3"], name="/nb/mm"), *heads("m3", "nbh", 64, [1, 0, 2]),
             helper.make_node("MatMul", ["x", "w4"], ["m4"], name="/odd/mm"),
             helper.make_node("Transpose", ["m4"], ["odd"], perm=[1, 0], name="/odd/transpose")]
    model = graph(nodes, {"x": (64, 64)}, inits, ["kh", "vh", "es", "nbh", "odd"])
    widths = sorted(op.operands[1].type.shape[-1] for op in linears_after_grid(model))
    assert widths == [40, 64, 64, 160]
    assert len(linears_after_grid(model, False)) == 5
    check_same_bits(model, 1)
