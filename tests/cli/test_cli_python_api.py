"""The Python API's friction list: errors that name `input_shapes=` (not a CLI flag), `ttc.UserError` and the
other errors exported, reprs that say what a compiled model and a session are, `dir(ttc)` listing only the
API, `import ttc` staying light, and `CompiledModel.run` checking its feeds as the session does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ttc
from ttc import session as session_module
from ttc import zoo


@pytest.fixture
def dynamic(tmp_path: Path) -> Path:
    """y = sigmoid(x) with a dynamic batch; x [batch, 32] float."""
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"], name="sig")], "batch",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])])
    path = tmp_path / "batch.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_python_api_names_input_shapes_not_a_flag(dynamic: Path) -> None:
    with pytest.raises(ttc.UserError) as info:
        ttc.compile(dynamic)
    message = str(info.value)
    assert "input_shapes={'x': (1, 32)}" in message and "--input-shape" not in message
    with pytest.raises(ttc.UserError) as info:
        ttc.compile(dynamic, input_shapes={"nope": (1, 32)})
    assert "input_shapes= names no graph input: nope" in str(info.value) and "--" not in str(info.value)
    with pytest.raises(ttc.UserError) as info:
        ttc.compile(dynamic, input_shapes={"x": (1, 2, 3)})
    assert "input_shapes={'x': (1, 2, 3)}: input 'x' has rank 2" in str(info.value)
    assert ttc.compile(dynamic, input_shapes={"x": (4, 32)}).manifest["inputs"][0]["shape"] == [4, 32]


def test_reprs_say_what_the_object_is(tmp_path: Path, dynamic: Path) -> None:
    path = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10), batch=2), path)
    compiled = ttc.compile(path)
    text = repr(compiled)
    assert text.startswith("<ttc.CompiledModel for e150 (bf16, hifi4): (input: 2x64 float32) -> (logits: 2x10 float32)")
    assert f"{compiled.manifest['programs']} programs" in text and "from mlp.onnx>" in text
    assert repr(ttc.load(_saved(compiled, tmp_path))) == text
    session = ttc.InferenceSession(dynamic, cache_size=3)
    assert repr(session) == ("<ttc.InferenceSession batch.onnx for e150 (bf16, hifi4): inputs (x: ['batch', 32] "
                             "tensor(float)); 0 of at most 3 compiled shape(s) cached>")


def _saved(compiled: ttc.CompiledModel, folder: Path) -> Path:
    path = folder / "saved.ttc"
    compiled.save(path)
    return path


def test_dir_lists_only_the_api_and_every_name_resolves() -> None:
    import ttc.cli  # loading submodules must not add them to dir(ttc)
    import ttc.compiler

    assert dir(ttc) == sorted(ttc.__all__)
    assert set(ttc.__all__) == {"CompiledModel", "DeviceFault", "InferenceSession", "TtcError", "UserError",
                                "__version__", "compile", "generate", "load"}
    from ttc.ir.diagnostics import DeviceFault, TtcError, UserError

    assert (ttc.UserError, ttc.DeviceFault, ttc.TtcError) == (UserError, DeviceFault, TtcError)
    assert ttc.InferenceSession is session_module.InferenceSession and callable(ttc.compile)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        ttc.nothing  # noqa: B018


def test_import_ttc_stays_light() -> None:
    """`import ttc` loads neither onnx nor the compiler: the API is imported on first use."""
    code = "import sys, ttc; print(sorted(m for m in ('onnx', 'ttc.compiler', 'ttc.session') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_compiled_model_run_checks_feeds_as_the_session_does(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10), batch=2), path)
    compiled = ttc.compile(path)
    x = np.zeros((2, 64), np.float32)
    assert compiled.run({"input": x})["logits"].shape == (2, 10)
    with pytest.raises(ttc.UserError, match=r"data type tensor\(double\) does not match the model's tensor\(float\)"):
        compiled.run({"input": x.astype(np.float64)})
    with pytest.raises(ttc.UserError, match="'extra': the model has no input of that name"):
        compiled.run({"input": x, "extra": x})
    with pytest.raises(ttc.UserError, match=r"required input\(s\) 'input' missing"):
        compiled.run({})
