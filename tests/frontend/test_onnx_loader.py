"""Loading: files, external data, the checker, input shapes, opset conversion, shape inference.

The error messages are part of the contract: each negative test checks what the message names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from frontend_helpers import evaluate, info, make_model, random_feeds, run_onnxruntime
from onnx import TensorProto, helper, numpy_helper

from ttc import zoo
from ttc.frontend import import_model, load_model, parse_input_shape
from ttc.frontend.loader import default_opset
from ttc.ir import UserError


def relu_model(shape: list[int | str | None]) -> onnx.ModelProto:
    node = helper.make_node("Relu", ["input_ids"], ["y"], name="/relu/Relu")
    return make_model([node], [info("input_ids", shape)], [info("y", shape)])


def save_external(model: onnx.ModelProto, folder: Path, location: str = "w.bin") -> Path:
    path = folder / "model.onnx"
    model = onnx.ModelProto.FromString(model.SerializeToString())  # save_model moves the data out
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


def with_location(model: onnx.ModelProto, tensor: str, location: str) -> onnx.ModelProto:
    """`model` with `tensor` pointing at the external file `location`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for init in model.graph.initializer:
        if init.name == tensor:
            onnx.external_data_helper.set_external_data(init, location=location)
            init.data_location = TensorProto.EXTERNAL
            init.ClearField("raw_data")
            init.ClearField("float_data")
    return model


# ----------------------------------------------------------------------------------------------
# Files


def test_load_by_path_and_proto_agree(tmp_path: Path) -> None:
    model = zoo.mlp(sizes=(8, 4))
    path = tmp_path / "mlp.onnx"
    zoo.save(model, path)
    from_path, from_proto = load_model(path), load_model(model)
    assert from_path.graph == from_proto.graph
    assert default_opset(from_path) == 17


def test_proto_is_not_changed(tmp_path: Path) -> None:
    model = relu_model(["batch", 4])
    before = model.SerializeToString()
    load_model(model, input_shapes={"input_ids": (2, 4)})
    assert model.SerializeToString() == before


def test_malformed_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"this is not an onnx model")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: not an ONNX model \(the bytes are not"):
        import_model(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: not an ONNX model \(it holds no graph\)$"):
        import_model(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.onnx"
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: no such file$"):
        import_model(str(path))


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory, not an ONNX model file"):
        import_model(tmp_path)


def test_checker_message_is_quoted(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["undefined"], ["y"], name="/relu/Relu")
    model = make_model([node], [info("x", [2])], [info("y", [2])])
    path = tmp_path / "m.onnx"
    zoo.save(model, path)
    with pytest.raises(UserError, match=r"the ONNX checker rejected the model: .*undefined"):
        import_model(path)
    with pytest.raises(UserError, match=r"^model: the ONNX checker rejected the model"):
        import_model(model)


def test_shape_inference_error_is_quoted() -> None:
    node = helper.make_node("Add", ["a", "b"], ["y"], name="/add/Add")
    model = make_model([node], [info("a", [2, 3]), info("b", [4, 5])], [info("y", [2, 3])])
    with pytest.raises(UserError, match=r"^ONNX shape inference failed: .*Add"):
        load_model(model)


# ----------------------------------------------------------------------------------------------
# External data


def test_external_data_happy_path(tmp_path: Path) -> None:
    model = zoo.mlp(sizes=(20, 8, 3))
    path = save_external(model, tmp_path)
    assert (tmp_path / "w.bin").is_file()
    loaded = load_model(path)
    assert all(t.data_location == TensorProto.DEFAULT and t.raw_data for t in loaded.graph.initializer)
    module = import_model(path)
    expected = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert sorted(module.weights) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    for name, data in module.weights.items():
        np.testing.assert_array_equal(data, expected[name])
    feeds = random_feeds(model)
    np.testing.assert_allclose(evaluate(module, feeds)["logits"], run_onnxruntime(model, feeds)["logits"],
                               rtol=1e-5, atol=1e-6)


def test_external_shape_tensor_is_read_by_shape_inference(tmp_path: Path) -> None:
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="/r/Reshape")]
    model = make_model(nodes, [info("x", [2, 3, 4])], [info("y", [None, None])],
                       {"shape": np.array([0, -1], np.int64)})
    module = import_model(save_external(model, tmp_path))
    assert main_result_shape(module) == (2, 12)


def main_result_shape(module) -> tuple[int, ...]:
    return module.function("main").type.results[0].shape


def test_missing_external_data_file(tmp_path: Path) -> None:
    path = save_external(zoo.mlp(sizes=(20, 8, 3)), tmp_path)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(UserError, match=r"external data file 'w.bin' of tensor 'fc1.weight' not found"):
        import_model(path)


def test_external_data_outside_the_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(bytes(4096))
    model = with_location(zoo.mlp(sizes=(20, 8, 3)), "fc1.weight", "../secret.bin")
    path = folder / "model.onnx"
    zoo.save(model, path)
    with pytest.raises(UserError, match=r"tensor 'fc1.weight' has external data location '\.\./secret\.bin', "
                                        r"which resolves to .*secret\.bin, outside the model's folder"):
        import_model(path)


@pytest.mark.parametrize("kind", ["absolute", "symlink"])
def test_external_data_escaping_by_absolute_path_or_symlink(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(4096))
    location = str(secret)
    if kind == "symlink":
        os.symlink(secret, folder / "link.bin")
        location = "link.bin"
    path = folder / "model.onnx"
    zoo.save(with_location(zoo.mlp(sizes=(20, 8, 3)), "fc1.weight", location), path)
    with pytest.raises(UserError, match="outside the model's folder"):
        import_model(path)


def test_proto_with_external_references_needs_its_path() -> None:
    model = with_location(zoo.mlp(sizes=(20, 8, 3)), "fc1.weight", "w.bin")
    with pytest.raises(UserError, match=r"tensor 'fc1.weight' keeps its data in the external file 'w.bin'"):
        import_model(model)


# ----------------------------------------------------------------------------------------------
# Input shapes


def test_dynamic_dimension_needs_a_shape() -> None:
    message = ("input 'input_ids' has a dynamic dimension 1 ('sequence'); "
               "give its shape with --input-shape input_ids=1x1")
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        import_model(relu_model([1, "sequence"]))


def test_every_dynamic_dimension_is_named() -> None:
    message = ("input 'input_ids' has dynamic dimensions 0 ('batch'), 2 (unnamed); "
               "give its shape with --input-shape input_ids=1x8x1")
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        import_model(relu_model(["batch", 8, None]))


@pytest.mark.parametrize("shape", [(2, 128), np.array([2, 128])])
def test_input_shape_makes_the_model_static(shape: object) -> None:
    module = import_model(relu_model(["batch", "sequence"]), input_shapes={"input_ids": shape})
    func = module.function("main")
    assert [str(t) for t in func.type.inputs] == ["tensor<2x128xf32>"]
    assert [str(t) for t in func.type.results] == ["tensor<2x128xf32>"]


@pytest.mark.parametrize(("shapes", "message"), [
    ({"ids": (1, 4)}, r"--input-shape names no graph input: ids \(the inputs are: input_ids\)"),
    ({"input_ids": (1, 4, 2)}, r"--input-shape input_ids=1x4x2: input 'input_ids' has rank 2 \(1xsequence\), not 3"),
    ({"input_ids": (2, 4)}, r"--input-shape input_ids=2x4: dimension 0 of input 'input_ids' is fixed to 1 "
                            r"by the model \(1xsequence\)"),
    ({"input_ids": (1, 0)}, r"--input-shape input_ids=1x0: dimensions must be positive integers"),
])
def test_bad_input_shapes(shapes: dict, message: str) -> None:
    with pytest.raises(UserError, match=f"^{message}$"):
        import_model(relu_model([1, "sequence"]), input_shapes=shapes)


@pytest.mark.parametrize(("text", "expected"), [
    ("input_ids=1x128", ("input_ids", (1, 128))),
    ("x=7", ("x", (7,))),
    ("a=b=2x3", ("a=b", (2, 3))),
    ("input:0=1x3x224x224", ("input:0", (1, 3, 224, 224))),
])
def test_parse_input_shape(text: str, expected: tuple) -> None:
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", "x=", "=1x2", "x=1x", "x=ax2", "x=1,2", "x=-1x2", "x= 1"])
def test_parse_input_shape_rejects_bad_syntax(text: str) -> None:
    with pytest.raises(UserError, match=rf"^bad --input-shape '{re.escape(text)}': expected NAME=DIMS"):
        parse_input_shape(text)


def test_parse_input_shape_rejects_zero() -> None:
    with pytest.raises(UserError, match="dimensions must be positive"):
        parse_input_shape("x=0x2")


# ----------------------------------------------------------------------------------------------
# Opset conversion


def mlp_opset11() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="/fc1/Gemm", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="/relu/Relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="/fc2/Gemm", alpha=0.5, beta=2.0),
    ]
    weights = {"w1": rng.standard_normal((16, 12)), "b1": rng.standard_normal(16),
               "w2": rng.standard_normal((16, 5)), "b2": rng.standard_normal(5)}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    return make_model(nodes, [info("x", [3, 12])], [info("y", [3, 5])], weights, opset=11)


def test_opset_11_model_is_converted() -> None:
    model = mlp_opset11()
    assert default_opset(load_model(model)) == 17
    module = import_model(model)
    assert [op.name for op in module.function("main").body.ops][-4:] == \
        ["ttir.gemm", "ttir.relu", "ttir.gemm", "func.return"]
    feeds = random_feeds(model)
    np.testing.assert_allclose(evaluate(module, feeds)["y"], run_onnxruntime(model, feeds)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_opset_11_softmax_keeps_its_2d_semantics(axis: int) -> None:
    """Softmax < 13 normalises over the flattened dims [axis, rank): the converted model must too."""
    node = helper.make_node("Softmax", ["x"], ["y"], name="/sm/Softmax", axis=axis)
    model = make_model([node], [info("x", [2, 3, 4])], [info("y", [2, 3, 4])], opset=11)
    feeds = random_feeds(model)
    module = import_model(model)
    np.testing.assert_allclose(evaluate(module, feeds)["y"], run_onnxruntime(model, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_conversion_failure_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
        raise RuntimeError("no adapter for Foo")

    monkeypatch.setattr(onnx.version_converter, "convert_version", fail)
    with pytest.raises(UserError, match=r"^cannot convert the model from opset 11 to opset 17 .*: no adapter for Foo$"):
        load_model(mlp_opset11())


def big_mlp_opset11() -> onnx.ModelProto:
    """mlp_opset11 with a first weight above SHAPE_TENSOR_MAX_ELEMENTS, stored as float_data (not raw bytes)."""
    model = mlp_opset11()
    rng = np.random.default_rng(2)
    big = rng.standard_normal((100, 12)).astype(np.float32)
    tensor = next(t for t in model.graph.initializer if t.name == "w1")
    tensor.CopyFrom(helper.make_tensor("w1", TensorProto.FLOAT, big.shape, big.reshape(-1).tolist()))
    bias = next(t for t in model.graph.initializer if t.name == "b1")
    bias.CopyFrom(numpy_helper.from_array(rng.standard_normal(100).astype(np.float32), "b1"))
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(rng.standard_normal((100, 5)).astype(np.float32), "w2"))
    return model


def test_big_inline_weights_are_set_aside_during_conversion_and_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter and shape inference see the big initializers without their data (marked as external at
    DETACHED); the loaded model has every tensor back, bit for bit, in its original storage."""
    seen: list[list[str]] = []
    convert = onnx.version_converter.convert_version

    def spy(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
        seen.append([t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL])
        return convert(model, version)

    monkeypatch.setattr(onnx.version_converter, "convert_version", spy)
    model = big_mlp_opset11()
    loaded = load_model(model)
    assert seen == [["w1"]]  # 1200 elements; w2 (500), b1 and b2 are at most SHAPE_TENSOR_MAX_ELEMENTS
    assert default_opset(loaded) == 17
    original = {t.name: t for t in model.graph.initializer}
    for tensor in loaded.graph.initializer:
        assert tensor.data_location == TensorProto.DEFAULT and not tensor.external_data
        assert tensor == original[tensor.name]
    feeds = random_feeds(model)
    module = import_model(model)
    np.testing.assert_allclose(evaluate(module, feeds)["y"], run_onnxruntime(model, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_defaulted_attributes_are_written_out_before_shape_inference() -> None:
    """onnx's STFT inference takes an absent onesided as 0 where the schema's default is 1: with the defaults
    written out, the inferred spectrum has the 9 bins of a one-sided 16-point transform."""
    from ttc.frontend.loader import prepare_model

    node = helper.make_node("STFT", ["s", "step", "", "len"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 64, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7, None, 2])],
                              [numpy_helper.from_array(np.array(8, np.int64), "step"),
                               numpy_helper.from_array(np.array(16, np.int64), "len")])
    model = prepare_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), None)
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 7, 9, 2]
    assert {a.name: a.i for a in model.graph.node[0].attribute}["onesided"] == 1
