"""The ONNX backend API of ttc (`ttc.onnx_backend`): prepare/run, run_model, run_node, devices.

Results are checked against numpy at the suite's judging rule (rtol = atol = 2e-2 for floats).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.base import Backend, BackendRep

import ttc.onnx_backend as backend
from ttc.ir.diagnostics import UserError
from ttc.onnx_backend import TtcBackend, TtcBackendRep, shape_parameter_inputs

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 32)).astype(np.float32)
Y = RNG.standard_normal((4, 32)).astype(np.float32)


def make_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
               initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(value, name) for name, value in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def tensor(name: str, shape: list[int | str], elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def two_output_model() -> onnx.ModelProto:
    """relu(x + y) and x * w (w an initializer), declared with the product first."""
    nodes = [helper.make_node("Add", ["x", "y"], ["sum"]), helper.make_node("Relu", ["sum"], ["relu"]),
             helper.make_node("Mul", ["x", "w"], ["product"])]
    return make_model(nodes, [tensor("x", [4, 32]), tensor("y", [4, 32])],
                      [tensor("product", [4, 32]), tensor("relu", [4, 32])], {"w": Y * 0.5})


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=2e-2, atol=2e-2)


def test_backend_implements_the_onnx_backend_api() -> None:
    assert issubclass(TtcBackend, Backend) and issubclass(TtcBackendRep, BackendRep)
    for name in ("prepare", "run_model", "run_node", "supports_device"):
        assert getattr(backend, name) == getattr(TtcBackend, name), name


def test_prepare_compiles_and_run_returns_outputs_in_graph_order() -> None:
    rep = backend.prepare(two_output_model())
    assert rep.last_compiled is not None  # static input shapes: compiled by prepare
    assert rep.last_compiled.manifest["host_ops"] == 0
    product, relu = rep.run([X, Y])
    assert product.dtype == np.float32 and relu.dtype == np.float32
    assert_close(product, X * Y * 0.5)
    assert_close(relu, np.maximum(X + Y, 0))


def test_run_outputs_are_also_named_and_inputs_may_be_a_dict() -> None:
    outputs = backend.prepare(two_output_model()).run({"y": Y, "x": X})
    assert_close(outputs["relu"], np.maximum(X + Y, 0))
    assert outputs._fields == ("product", "relu")


def test_run_model_is_prepare_then_run() -> None:
    _, relu = backend.run_model(two_output_model(), [X, Y])
    assert_close(relu, np.maximum(X + Y, 0))


def test_rep_runs_many_times() -> None:
    rep = backend.prepare(two_output_model())
    first = rep.run([X, Y])
    second = rep.run([Y, X])
    assert_close(second.relu, first.relu)
    assert_close(second.product, Y * Y * 0.5)


def test_wrong_number_of_inputs_is_a_user_error() -> None:
    rep = backend.prepare(two_output_model())
    with pytest.raises(UserError, match=r"the model takes 2 input\(s\) \('x', 'y'\), 1 given"):
        rep.run([X])
    with pytest.raises(UserError, match=r"missing input\(s\) 'y'"):
        rep.run({"x": X})


def test_dynamic_input_dims_compile_with_the_fed_shapes() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["N", 32])], [tensor("y", ["N", 32])])
    rep = backend.prepare(model)
    assert rep.last_compiled is None  # nothing to compile before an input fixes N
    for rows in (4, 64):
        x = RNG.standard_normal((rows, 32)).astype(np.float32)
        (y,) = rep.run([x])
        assert y.shape == (rows, 32)
        assert_close(y, np.maximum(x, 0))
        assert rep.last_compiled is not None and rep.last_compiled.manifest["inputs"][0]["shape"] == [rows, 32]


def test_float16_outputs_come_back_as_float16() -> None:
    model = make_model([helper.make_node("Add", ["h", "h"], ["twice"])], [tensor("h", [4, 32], TensorProto.FLOAT16)],
                       [tensor("twice", [4, 32], TensorProto.FLOAT16)])
    h = X.astype(np.float16)
    (twice,) = backend.prepare(model).run([h])
    assert twice.dtype == np.float16
    assert_close(twice.astype(np.float32), 2 * h.astype(np.float32))


class FakeCompiled:
    """Stands in for a CompiledModel whose outputs are integer and boolean (none of ttc's device ops
    produces those yet): CompiledModel.run gives them in their dtype, the rep must keep it."""

    manifest = {"outputs": [{"name": "ids", "dtype": "int64"}, {"name": "mask", "dtype": "bool"}]}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"ids": np.array([2**40 + 1], dtype=np.int64), "mask": np.array([True, False])}


def test_integer_and_boolean_outputs_keep_their_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["ids"]), helper.make_node("Relu", ["x"], ["mask"])],
                       [tensor("x", [4, 32])], [tensor("ids", [4, 32]), tensor("mask", [4, 32])])
    rep = backend.prepare(model)
    monkeypatch.setattr(rep, "compiled_for", lambda shapes, parameters=None: FakeCompiled())
    ids, mask = rep.run([X])
    assert ids.dtype == np.int64 and ids[0] == 2**40 + 1
    assert mask.dtype == np.bool_


def test_run_node_builds_a_one_node_model() -> None:
    (z,) = backend.run_node(helper.make_node("Add", ["a", "b"], ["z"]), [X, Y])
    assert z.dtype == np.float32
    assert_close(z, X + Y)


def test_run_node_takes_outputs_info_and_an_opset() -> None:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    (y,) = backend.run_node(node, [X], outputs_info=[(np.float32, (4, 32))], opset_version=13)
    expected = np.exp(X - X.max(axis=1, keepdims=True))
    assert_close(y, expected / expected.sum(axis=1, keepdims=True))


def test_run_node_checks_the_input_count() -> None:
    with pytest.raises(UserError, match=r"node 'Add' has 2 input\(s\), 1 given"):
        backend.run_node(helper.make_node("Add", ["a", "b"], ["z"]), [X])


def test_supports_device_accepts_cpu_only() -> None:
    """The emulated Grayskull runs on the host: the ONNX device name for it is "CPU" (or "CPU:0")."""
    assert backend.supports_device("CPU")
    assert backend.supports_device("CPU:0")
    for device in ("CUDA", "CUDA:0", "CPU:1", "cpu", "GRAYSKULL"):
        assert not backend.supports_device(device), device


def test_prepare_on_another_device_is_a_user_error() -> None:
    with pytest.raises(UserError, match="device 'CUDA' is not supported: ttc runs on the emulated Grayskull"):
        backend.prepare(two_output_model(), "CUDA")


def test_compile_options_pass_through_prepare() -> None:
    rep = backend.prepare(two_output_model(), "CPU", arch="e75", dtype="bfp8_b", math_fidelity="lofi")
    assert rep.last_compiled is not None
    options = rep.last_compiled.manifest["options"]
    assert (options["arch"], options["dtype"], options["math_fidelity"]) == ("e75", "bfp8_b", "lofi")
    with pytest.raises(TypeError, match="unexpected keyword arguments: rtol"):
        backend.prepare(two_output_model(), "CPU", rtol=1e-3)


def test_an_unsupported_op_is_a_user_error_at_prepare() -> None:
    model = make_model([helper.make_node("Det", ["x"], ["y"])], [tensor("x", [3, 3])], [tensor("y", [])])
    with pytest.raises(UserError, match=r"unsupported ONNX ops \(1 node\): Det \(node: Det_0\)"):
        backend.prepare(model)


def test_a_sequence_input_is_a_user_error_at_prepare() -> None:
    sequence = helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, [2])
    model = make_model([helper.make_node("SequenceLength", ["xs"], ["n"])], [sequence],
                       [tensor("n", [], TensorProto.INT64)])
    with pytest.raises(UserError, match=r"graph input: value 'xs' is not a tensor \(ttc imports tensors only\)"):
        backend.prepare(model)


def test_integer_inputs_that_only_feed_shape_parameters_are_specialised() -> None:
    """Unsqueeze's axes fed as a graph input (as many node tests do) compiles once per axes value."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32, 64])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c", "d"])
    graph = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], "g", [x, axes], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rep = backend.prepare(model)
    assert rep.parameter_inputs == ["axes"]
    value = np.random.default_rng(0).standard_normal((2, 32, 64)).astype(np.float32)
    first = rep.run([value, np.array([0])])[0]
    again = rep.run([value, np.array([0])])[0]
    other = rep.run([value, np.array([1])])[0]
    assert first.shape == (1, 2, 32, 64) and other.shape == (2, 1, 32, 64)
    assert np.allclose(first[0], value, atol=2e-2) and np.array_equal(first, again)
    assert len(rep._compiled) == 2


def test_an_integer_input_that_decides_no_shape_is_not_specialised() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    nodes = [helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x, s], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert shape_parameter_inputs(model, list(model.graph.input)) == ["s"]


def test_an_input_deciding_a_shape_through_arithmetic_is_specialised_though_it_feeds_data() -> None:
    """An expanded Range: the length is computed from the bounds, which are also its data; without their values
    there is no static shape to compile for."""
    start = helper.make_tensor_value_info("start", TensorProto.FLOAT, [])
    limit = helper.make_tensor_value_info("limit", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    nodes = [helper.make_node("Sub", ["limit", "start"], ["n"]), helper.make_node("Cast", ["n"], ["m"], to=7),
             helper.make_node("Unsqueeze", ["m", "zero"], ["m1"]),
             helper.make_node("ConstantOfShape", ["m1"], ["ones"], value=helper.make_tensor("v", 1, [1], [1.0])),
             helper.make_node("CumSum", ["ones", "zero"], ["steps"]), helper.make_node("Add", ["steps", "start"], ["y"])]
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    graph = helper.make_graph(nodes, "g", [start, limit], [y], [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert shape_parameter_inputs(model, list(model.graph.input)) == ["start", "limit"]
    rep = backend.prepare(model)
    out = rep.run([np.float32(2), np.float32(5)])[0]
    np.testing.assert_allclose(out, [3, 4, 5], atol=2e-2)
