"""A model too big for the card fails at compile time, before any weight is read, with the bytes needed
versus available and what to try; the compile report states DRAM and peak L1 use of one that fits."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper

import ttc
from ttc import zoo
from ttc.cli import main
from ttc.fit import check_model_fits, tensor_device_bytes
from ttc.ir.diagnostics import UserError

VOCAB, HIDDEN, LAYERS, SEQ = 50257, 8192, 8, 128


def gpt2_shaped(folder: Path) -> Path:
    """Token embedding, LAYERS MLP blocks of width HIDDEN (4x expansion) and the tied LM head: 9.4 GiB of
    bf16 weights. Their float32 data (about 19 GB) lives in a sparse file: nothing of it is ever written."""
    data = folder / "weights.bin"
    offset = 0
    initializers = []

    def weight(name: str, dims: list[int]) -> str:
        nonlocal offset
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
        length = math.prod(dims) * 4
        for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        tensor.data_location = TensorProto.EXTERNAL
        offset += length
        initializers.append(tensor)
        return name

    nodes = [helper.make_node("Gather", [weight("wte", [VOCAB, HIDDEN]), "input_ids"], ["h0"], name="embed")]
    h = "h0"
    for i in range(LAYERS):
        nodes += [helper.make_node("MatMul", [h, weight(f"fc{i}", [HIDDEN, 4 * HIDDEN])], [f"u{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"u{i}"], [f"r{i}"], name=f"act{i}"),
                  helper.make_node("MatMul", [f"r{i}", weight(f"proj{i}", [4 * HIDDEN, HIDDEN])], [f"h{i + 1}"],
                                   name=f"proj{i}")]
    nodes.append(helper.make_node("MatMul", [h if not LAYERS else f"h{LAYERS}", weight("head", [HIDDEN, VOCAB])],
                                  ["logits"], name="lm_head"))
    graph = helper.make_graph(
        nodes, "gpt2_shaped", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, SEQ, VOCAB])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with open(data, "wb") as handle:
        handle.truncate(offset)  # sparse: no block is allocated
    path = folder / "gpt2_shaped.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def big_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = gpt2_shaped(tmp_path)
    assert (tmp_path / "weights.bin").stat().st_blocks == 0  # really sparse

    def refuse(*args, **kwargs):
        raise AssertionError("a weight was read before the fit check")

    monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", refuse)
    monkeypatch.setattr(onnx, "load_external_data_for_model", refuse)
    return path


def test_too_big_fails_before_reading_weights(big_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compile", str(big_model)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "does not fit the e150" in err and "of device DRAM in bf16" in err and "the card has 8.00 GiB" in err
    assert "9." in err.split("need ")[1][:3]  # ~9.4 GiB needed
    assert "--dtype bfp8_b" in err and "would fit" in err and "shorter sequence" in err
    assert not big_model.with_suffix(".ttc").exists()


def test_e75_is_smaller_and_bfp8_b_weights_are_the_way_out(big_model: Path) -> None:
    with pytest.raises(UserError, match="does not fit the e75"):
        ttc.compile(str(big_model), arch="e75")
    needed = check_model_fits(onnx.load(str(big_model), load_external_data=False), "e150", "bfp8_b")
    assert 4 * 2**30 < needed < 8 * 2**30


def test_device_bytes_are_tile_padded_in_the_data_format() -> None:
    w = helper.make_tensor("w", TensorProto.FLOAT, [100, 40], vals=[0.0] * 4000)
    assert tensor_device_bytes(w, "bf16") == 4 * 2 * 2048
    assert tensor_device_bytes(w, "bfp8_b") == 4 * 2 * 1088
    bias = helper.make_tensor("b", TensorProto.FLOAT, [40], vals=[0.0] * 40)
    assert tensor_device_bytes(bias, "bfp8_b") == 2 * 2048  # vectors stay bf16


def test_compile_report_states_dram_and_peak_l1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "enc.onnx"
    zoo.save(zoo.encoder_block(), path)
    assert main(["compile", str(path)]) == 0
    err = capsys.readouterr().err
    assert "DRAM" in err and "MiB" in err and "peak L1" in err and "KiB per core" in err
    compiled = ttc.load(path.with_suffix(".ttc"))
    memory = compiled.manifest["memory"]
    assert 0 < memory["l1_peak_bytes"] <= 1 << 20 and memory["dram_bytes"] > 256 * 1024


@pytest.mark.parametrize(("op", "shape"), [("ReduceSum", [167772160, 1]), ("Softmax", [20000, 262144])])
def test_activations_past_dram_are_refused_before_planning(op: str, shape: list[int]) -> None:
    """Inputs and outputs that cannot be on the card (here 10 GiB each way, tile-padded bf16) are refused
    right after the import (found by the cliff sweep: the ReduceSum's movement to its rank-1 result built a
    40 GiB element map on the host, a MemoryError, before `allocate` could say DRAM was full)."""
    axes = [helper.make_tensor("axes", TensorProto.INT64, [1], [-1])] if op == "ReduceSum" else []
    node = helper.make_node(op, ["x", "axes"][:1 + len(axes)], ["y"], **({"keepdims": 0} if axes else {"axis": -1}))
    graph = helper.make_graph([node], "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], axes)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    with pytest.raises(UserError, match=r"does not fit the e150: its inputs and outputs .* need at least") as info:
        ttc.compile(model)
    assert "Checked before planning" in str(info.value)


def test_a_matmul_no_blocking_fits_runs_in_column_pieces_and_passes_golden() -> None:
    """On one core the [1024, 512] Gemm of a 1024-long K has no blocking that fits L1 (its 512-tile block's
    running total alone is 1 MB): the weight and bias go in column pieces, one product each, joined by a
    concat; the result passes the golden rule against onnxruntime."""
    import numpy as np
    from onnx import numpy_helper

    from ttc.compiler import CompileOptions, compile_model, default_pipeline
    from ttc.golden import compare, run_onnxruntime

    rng = np.random.default_rng(4)
    w = (rng.standard_normal((1024, 512)) / 32).astype(np.float32)
    b = rng.standard_normal(512).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/gemm")], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 512])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    pipeline = default_pipeline().replace("grid{", "grid{max-cores=1 ")
    compiled = compile_model(model, CompileOptions(pipeline=pipeline))
    feeds = {"x": rng.standard_normal((1024, 1024)).astype(np.float32)}
    result = compare("y", compiled.run(feeds)["y"], run_onnxruntime(model, feeds)["y"])
    assert result.passed, result
    assert compiled.manifest["host_ops"] == 0
    assert compiled.manifest["programs"] == 5, compiled.manifest["programs"]  # 4 pieces and their concat


def test_a_fused_residual_goes_back_to_an_eltwise_after_the_column_pieces() -> None:
    """The same Gemm plus a residual add and a Relu, which fuse puts in its epilogue: the pieces cannot share the
    residual, so it is split back off into an eltwise program after their concat: the unfused program's bits."""
    import numpy as np
    from onnx import numpy_helper

    from ttc.compiler import CompileOptions, compile_model, default_pipeline

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((1024, 512)) / 32).astype(np.float32)
    b = rng.standard_normal(512).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="/gemm"),
             helper.make_node("Add", ["g", "r"], ["s"], name="/residual"),
             helper.make_node("Relu", ["s"], ["y"], name="/relu")]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 1024]),
                                              helper.make_tensor_value_info("r", TensorProto.FLOAT, [1024, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 512])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    pipeline = default_pipeline().replace("grid{", "grid{max-cores=1 ")
    fused = compile_model(model, CompileOptions(pipeline=pipeline))
    unfused = compile_model(model, CompileOptions(pipeline=pipeline.replace("fuse,", "fuse{residual=false},")))
    assert fused.manifest["programs"] == unfused.manifest["programs"] == 6  # 4 pieces, their concat, the add
    feeds = {"x": rng.standard_normal((1024, 1024)).astype(np.float32),
             "r": rng.standard_normal((1024, 512)).astype(np.float32)}
    np.testing.assert_array_equal(fused.run(feeds)["y"], unfused.run(feeds)["y"])
