"""`ttc.InferenceSession` beyond onnxruntime's behaviour: one compile per input-shape signature kept in a
bounded LRU cache, the sources it opens (path, bytes, ModelProto, .ttc artifact), onnxruntime's options and
the emulators. The rest of the Python API's surface is in tests/cli/test_cli_python_api.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import ttc
from ttc import session as session_module
from ttc import zoo
from ttc.session import DEFAULT_CACHE_SIZE, IgnoredArgumentWarning


def batch_model(path: Path, out_type: int = TensorProto.FLOAT) -> Path:
    """y = sigmoid(x) * 2 with a dynamic batch; x [batch, 32] float."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["h"], name="sig"),
             helper.make_node("Add", ["h", "h"], ["y"], name="twice")]
    graph = helper.make_graph(nodes, "batch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("y", out_type, ["batch", 32])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def dynamic(tmp_path: Path) -> Path:
    return batch_model(tmp_path / "batch.onnx")


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every compile a session starts, by the input shapes it compiles for."""
    calls: list[dict] = []
    real = session_module.compile_for_api

    def counting(model, options):
        calls.append(dict(options.input_shapes))
        return real(model, options)

    monkeypatch.setattr(session_module, "compile_for_api", counting)
    return calls


def feed(batch: int) -> dict[str, np.ndarray]:
    return {"x": np.linspace(-3, 3, batch * 32, dtype=np.float32).reshape(batch, 32)}


def test_the_second_run_of_a_shape_hits_the_cache(dynamic: Path, compiles: list[dict]) -> None:
    session = ttc.InferenceSession(dynamic)
    assert compiles == [] and session.cache_info() == (0, 0, DEFAULT_CACHE_SIZE, 0)  # dynamic: compiled on demand
    [first] = session.run(None, feed(2))
    assert compiles == [{"x": (2, 32)}] and session.cache_info() == (0, 1, 8, 1)
    [second] = session.run(None, feed(2))
    assert compiles == [{"x": (2, 32)}] and session.cache_info() == (1, 1, 8, 1)  # a hit: no second compile
    assert np.array_equal(first.view(np.uint32), second.view(np.uint32))
    [other] = session.run(None, feed(3))
    assert other.shape == (3, 32) and compiles[-1] == {"x": (3, 32)} and session.cache_info() == (1, 2, 8, 2)
    expected = 2 / (1 + np.exp(-feed(3)["x"]))
    assert np.allclose(other, expected, rtol=2e-2, atol=2e-2)


def test_the_cache_is_bounded_and_least_recently_used_goes_first(dynamic: Path, compiles: list[dict]) -> None:
    session = ttc.InferenceSession(dynamic, cache_size=2)
    for batch in (1, 2, 1, 3):  # 1 is used again before 3 arrives, so 2 is the one evicted
        session.run(None, feed(batch))
    assert [c["x"][0] for c in compiles] == [1, 2, 3] and session.cache_info() == (1, 3, 2, 2)
    session.run(None, feed(1))  # still cached
    assert len(compiles) == 3
    session.run(None, feed(2))  # evicted: compiled again
    assert [c["x"][0] for c in compiles] == [1, 2, 3, 2] and session.cache_info().currsize == 2


def test_a_static_model_compiles_once_when_the_session_opens(tmp_path: Path, compiles: list[dict]) -> None:
    path = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10), batch=2), path)
    session = ttc.InferenceSession(path)
    assert compiles == [{}] and session.cache_info() == (0, 1, 8, 1)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"input": x})
    assert len(compiles) == 1 and session.cache_info().hits == 3


def test_sources_path_bytes_proto_and_artifact_agree(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10), batch=2), path)
    x = {"input": np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)}
    artifact = tmp_path / "mlp.ttc"
    ttc.compile(path).save(artifact)
    results = []
    for source in (path, str(path), path.read_bytes(), onnx.load(str(path)), artifact):
        session = ttc.InferenceSession(source)
        assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [("input", [2, 64], "tensor(float)")]
        assert [o.name for o in session.get_outputs()] == ["logits"]
        [logits] = session.run(None, x)
        results.append(logits.view(np.uint32))
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_outputs_come_back_in_the_declared_type(tmp_path: Path) -> None:
    """A float16 output is float16, as onnxruntime returns it, not the emulator's float32."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT16, name="cast")]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 32])])
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = {"x": np.linspace(-2, 2, 128, dtype=np.float32).reshape(4, 32)}
    [ours] = ttc.InferenceSession(path).run(None, x)
    [theirs] = ort.InferenceSession(str(path)).run(None, x)
    assert ours.dtype == theirs.dtype == np.float16 and ours.shape == theirs.shape
    assert np.allclose(ours, theirs, rtol=1e-2, atol=1e-2)


def test_session_options_threads_are_used_and_the_rest_noted(dynamic: Path) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = ttc.InferenceSession(dynamic, options, ["CPUExecutionProvider"], emulator="native")
        session.run(None, feed(1))
    notes = [str(w.message) for w in caught if issubclass(w.category, IgnoredArgumentWarning)]
    assert len(notes) == 2 and "sess_options" in notes[0] and "intra_op_num_threads" in notes[0]
    assert session.last_compiled is not None and session.last_compiled.emulator == ("native", 1)
    assert session.get_session_options() is options and session.get_providers() == ["TtcGrayskullEmulator"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ttc.InferenceSession(dynamic)
    assert caught == []  # nothing to note without onnxruntime's arguments


def test_the_emulators_give_the_same_bits(dynamic: Path) -> None:
    outputs = [ttc.InferenceSession(dynamic, emulator=emulator).run(None, feed(2))[0].view(np.uint32)
               for emulator in ("native", "reference")]
    assert np.array_equal(*outputs)


def test_bad_session_arguments_are_user_errors(dynamic: Path, tmp_path: Path) -> None:
    with pytest.raises(ttc.UserError, match="cache_size= must be a positive"):
        ttc.InferenceSession(dynamic, cache_size=0)
    with pytest.raises(ttc.UserError, match="emulator= must be 'native' or 'reference'"):
        ttc.InferenceSession(dynamic, emulator="fast")
    with pytest.raises(ttc.UserError, match="unknown arch 'e300'"):
        ttc.InferenceSession(dynamic, arch="e300")
    with pytest.raises(ttc.UserError, match="no such file"):
        ttc.InferenceSession(tmp_path / "absent.onnx")
    with pytest.raises(ttc.UserError, match="not a serialized ONNX model"):
        ttc.InferenceSession(b"\xff\xfe not a protobuf")
    mlir = tmp_path / "m.mlir"
    mlir.write_text('module {\n  func.func @main() {\n    func.return loc("r")\n  }\n}\n')
    with pytest.raises(ttc.UserError, match=r"this is IR text \(\.mlir\), not an ONNX model"):
        ttc.InferenceSession(mlir)
