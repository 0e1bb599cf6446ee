"""Sharded L1 layouts end to end: a conv chain runs height-sharded and a large matmul chain block-sharded on
the emulated Grayskull and match onnxruntime (PCC >= 0.99, rel L2 <= 0.05); each core writes its output shard
into its own L1 and a consumer whose blocking matches reads its shard locally, which the emulator's profile
counts as local bytes instead of NoC traffic. The results are bit-identical to the interleaved compile
(`grid{sharding=false}`), since sharding changes where tiles live, not the arithmetic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from test_cnn_ops import model_of

import ttc
from ttc.compiler import CompiledModel, CompileOptions, compile_model, default_pipeline
from ttc.golden import compare, run_onnxruntime
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.parser import parse_module
from ttc.passes.ops import matmul

INTERLEAVED = default_pipeline().replace("grid{math-fidelity=hifi4}", "grid{math-fidelity=hifi4 sharding=false}")
UNICAST = default_pipeline().replace("grid{math-fidelity=hifi4}", "grid{math-fidelity=hifi4 multicast=false}")


def conv_chain() -> onnx.ModelProto:
    """3x3 conv + relu -> 1x1 conv + relu -> 3x3 conv at 56 x 56 pixels (ResNet's first stage): 98 tile rows
    of 1-2 tile columns."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="/relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="/conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="/relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="/conv3", pads=[1, 1, 1, 1])]
    init = {"w1": rng.standard_normal((32, 16, 3, 3)) / 12, "b1": rng.standard_normal(32) * 0.1,
            "w2": rng.standard_normal((64, 32, 1, 1)) / 6, "b2": rng.standard_normal(64) * 0.1,
            "w3": rng.standard_normal((32, 64, 3, 3)) / 24, "b3": rng.standard_normal(32) * 0.1}
    return model_of(nodes, {"x": (1, 16, 56, 56)}, init, ["y"])


def matmul_chain() -> onnx.ModelProto:
    """[512 x 384] @ [384 x 512] -> relu -> @ [512 x 96]: the first product is 16 x 16 tiles."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="/relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="/fc2")]
    init = {"w1": rng.standard_normal((384, 512)) / np.sqrt(384), "w2": rng.standard_normal((512, 96)) / 16}
    return model_of(nodes, {"x": (512, 384)}, init, ["y"])


def run_golden(model: onnx.ModelProto, pipeline: str | None = None) -> tuple[CompiledModel, dict[str, np.ndarray]]:
    x = model.graph.input[0]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    feeds = {x.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    compiled = compile_model(model, CompileOptions(pipeline=pipeline))
    outputs = compiled.run(feeds)
    for name, expected in run_onnxruntime(model, feeds).items():
        result = compare(name, outputs[name], expected)
        assert result.passed, result
    return compiled, outputs


def sharded_buffers(compiled: CompiledModel, memory_layout: str) -> list[str]:
    return [str(op.result.type) for op in compiled.module.walk()
            if op.name == "ttmetal.create_buffer" and memory_layout in str(op.result.type)]


def test_conv_chain_runs_height_sharded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without multicast: with it, the later convolutions are cheaper on 99 interleaved cores, their weights
    multicast (passes/ops/matmul_mcast.py), and only the first result stays sharded; same bits either way. Exact M
    splits only: the grid-filling overlapping ones (`geometry.GRID_FILLS`, never sharded) are cheaper here."""
    monkeypatch.setattr(matmul, "GRID_FILLS", ())
    unfused = UNICAST.replace("multicast=false", "multicast=false im2col=false untilize=false")  # (fused, the 1x1
    # convolution writes the next lookup's rows instead of its shard: passes.md, grid's last steps)
    compiled, outputs = run_golden(conv_chain(), unfused)
    _, multicast = run_golden(conv_chain())
    np.testing.assert_array_equal(outputs["y"], multicast["y"])
    assert len(sharded_buffers(compiled, "height_sharded")) >= 2
    assert not sharded_buffers(compiled, "block_sharded")
    by_node = {p.nodes: p for p in compiled.profile if p.kind == "matmul"}
    # the 1x1 convolution reads its height-sharded activation and writes its shard in its own L1
    conv2 = by_node[("/conv2", "/relu2")]
    assert conv2.local_bytes > 0
    interleaved, reference = run_golden(conv_chain(), unfused.replace("multicast=false", "multicast=false sharding=false"))
    assert not sharded_buffers(interleaved, "_sharded")
    np.testing.assert_array_equal(outputs["y"], reference["y"])
    plain = {p.nodes: p for p in interleaved.profile if p.kind == "matmul"}[("/conv2", "/relu2")]
    assert plain.local_bytes == 0 and conv2.noc_bytes < plain.noc_bytes


def test_large_matmul_runs_block_sharded(tmp_path) -> None:
    compiled, outputs = run_golden(matmul_chain())
    buffers = sharded_buffers(compiled, "block_sharded")
    assert len(buffers) == 1 and "tensor<512x512xbf16" in buffers[0]
    fc1 = next(p for p in compiled.profile if p.nodes == ("/fc1", "/relu"))
    fc2 = next(p for p in compiled.profile if p.nodes == ("/fc2",))
    assert fc1.local_bytes > 0  # every core writes its own block
    assert fc2.local_bytes > 0  # the consumer's own blocks of the activation
    _, reference = run_golden(matmul_chain(), INTERLEAVED)
    np.testing.assert_array_equal(outputs["y"], reference["y"])
    compiled.save(tmp_path / "chain.ttc")  # the sharded layouts survive the artifact's text
    x = np.random.default_rng(0).standard_normal((512, 384)).astype(np.float32)
    np.testing.assert_array_equal(ttc.load(tmp_path / "chain.ttc").run({"x": x})["y"], outputs["y"])


def test_per_op_golden_reads_sharded_buffers_back(tmp_path) -> None:
    """The per-op check reads every program's result, the block-sharded one too, through the shard map."""
    from ttc.per_op import check_per_op, first_failure

    path = tmp_path / "model.onnx"
    onnx.save(matmul_chain(), path)
    compiled, _ = run_golden(matmul_chain())
    feeds = {"x": np.random.default_rng(1).standard_normal((512, 384)).astype(np.float32)}
    checks = check_per_op(compiled, path, feeds)
    assert [c.node for c in checks if c.passed] == ["/relu", "/fc2"] and first_failure(checks) is None


def test_a_program_reading_a_sharded_buffer_as_interleaved_faults() -> None:
    """Mutation: the consumer's address generator loses its `memory_layout`; the emulator must refuse to read
    the shards as interleaved pages rather than read the wrong tiles."""
    compiled, _ = run_golden(matmul_chain())
    module = parse_module(str(compiled.module))
    fc2 = next(op for op in module.walk() if op.name == "ttmetal.enqueue_program" and op.loc.names() == ("/fc2",))
    gen = next(op for op in fc2.regions[0].blocks[0].ops if op.name == "ttkernel.addrgen"
               and op.attributes.get("memory_layout") == "block_sharded")
    del gen.attributes["memory_layout"]
    feeds = {"x": np.ones((512, 384), np.float32)}
    with pytest.raises(DeviceFault, match=r"an interleaved address generator over a block_sharded buffer at 0x[0-9a-f]+"
                                          r"(.|\n)*reader kernel(.|\n)*\"/fc2\""):
        CompiledModel(module, compiled.device_weights, compiled.manifest).run(feeds)


def square_then_softmax() -> onnx.ModelProto:
    """The block-sharded [512 x 512] product squared (an eltwise program of its own) then a softmax by rows."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1"),
             helper.make_node("Mul", ["h", "h"], ["s"], name="/square"),
             helper.make_node("Softmax", ["s"], ["y"], name="/softmax", axis=-1)]
    return model_of(nodes, {"x": (512, 384)}, {"w1": rng.standard_normal((384, 512)) / np.sqrt(384)}, ["y"])


def test_an_eltwise_result_follows_its_operands_shards() -> None:
    """The square reads the product's block shards and writes its result in the same shards (each core its own
    block: no NoC bytes), as the grid pass finds that cheaper for it and no dearer for the softmax reading it;
    the counts planned equal those both emulators execute, and the values are those of the interleaved compile."""
    from cost_model_checks import check_model

    compiled, outputs = run_golden(square_then_softmax())
    buffers = sharded_buffers(compiled, "block_sharded")
    assert len(buffers) == 2 and all("tensor<512x512xbf16" in b for b in buffers), buffers
    square = next(p for p in compiled.profile if p.nodes == ("/square",))
    assert square.noc_bytes == 0 and square.local_bytes > 0
    _, reference = run_golden(square_then_softmax(), INTERLEAVED)
    np.testing.assert_array_equal(outputs["y"], reference["y"])
    assert check_model(square_then_softmax(), emulators=("native", "reference")) == 3
