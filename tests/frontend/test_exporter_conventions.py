"""Exporters' conventions load and run on the device (issue: no cliffs, item 4): dynamic dims spelt -1 or 0,
old opsets (Upsample 7/9, Resize 10, Slice 1, Pad 2, Split 2, ...) and the idioms of Paddle- and TF-style
graphs (Shape->Gather->Concat->Reshape chains, Cast chains, Where-based masks), built with onnx.helper.
Each runs on the emulated device against onnxruntime on the same model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from frontend_helpers import info, make_model, run_onnxruntime
from onnx import TensorProto, helper

import ttc
from ttc.golden import compare


def _tensor(name: str, values, dtype=np.float32) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _model(nodes, inputs, outputs, opset, inits=()):
    graph = helper.make_graph(nodes, "conventions", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


X4 = info("x", [1, 3, 4, 4])
CASES = {
    "upsample7-nearest": _model([helper.make_node("Upsample", ["x"], ["y"], mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])],
                                [X4], [info("y", [1, 3, 8, 8])], 7),
    "upsample7-linear": _model([helper.make_node("Upsample", ["x"], ["y"], mode="linear", scales=[1.0, 1.0, 1.5, 1.5])],
                               [X4], [info("y", [1, 3, 6, 6])], 7),
    "upsample9-nearest-x3": _model([helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")], [X4],
                                   [info("y", [1, 3, 12, 12])], 9, [_tensor("s", [1, 1, 3, 3])]),
    "upsample9-linear": _model([helper.make_node("Upsample", ["x", "s"], ["y"], mode="linear")], [X4],
                               [info("y", [1, 3, 8, 8])], 9, [_tensor("s", [1, 1, 2, 2])]),
    "resize10-nearest-down": _model([helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest")],
                                    [info("x", [1, 3, 10, 10])], [info("y", [1, 3, 6, 6])], 10,
                                    [_tensor("s", [1, 1, 0.6, 0.6])]),
    "resize10-linear": _model([helper.make_node("Resize", ["x", "s"], ["y"], mode="linear")], [X4],
                              [info("y", [1, 3, 8, 8])], 10, [_tensor("s", [1, 1, 2, 2])]),
    "slice1": _model([helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, 5], axes=[2, 3])],
                     [info("x", [1, 3, 4, 6])], [info("y", [1, 3, 2, 5])], 7),
    "pad2-constant": _model([helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5)],
                            [X4], [info("y", [1, 3, 6, 6])], 7),
    "pad2-reflect": _model([helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")],
                           [X4], [info("y", [1, 3, 6, 6])], 7),
    "split2": _model([helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2]),
                      helper.make_node("Add", ["b", "b"], ["c"]),
                      helper.make_node("Concat", ["a", "c"], ["y"], axis=1)], [X4], [info("y", [1, 3, 4, 4])], 7),
    "batchnorm7": _model([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])], [X4],
                         [info("y", [1, 3, 4, 4])], 7,
                         [_tensor(n, [1.0, 2.0, 3.0]) for n in ("g", "b", "m", "v")]),
    "gemm7": _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1)], [info("x", [2, 8])],
                    [info("y", [2, 4])], 7,
                    [_tensor("w", np.arange(32).reshape(4, 8) / 32), _tensor("c", [1, 2, 3, 4])]),
    "dropout7": _model([helper.make_node("Dropout", ["x"], ["y"], ratio=0.5)], [info("x", [2, 8])],
                       [info("y", [2, 8])], 7),
    "softmax7-axis1": _model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [info("x", [2, 3, 4])],
                             [info("y", [2, 3, 4])], 7),
    "averagepool7-pads": _model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                  pads=[1, 1, 1, 1])], [info("x", [1, 3, 5, 5])],
                                [info("y", [1, 3, 5, 5])], 7),
    # TF/Paddle: the target shape of a Reshape computed from Shape, with Cast chains on the way.
    "shape-gather-concat-reshape": _model(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
         helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
         helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
         helper.make_node("Cast", ["target"], ["target32"], to=TensorProto.INT32),
         helper.make_node("Cast", ["target32"], ["target64"], to=TensorProto.INT64),
         helper.make_node("Reshape", ["x", "target64"], ["y"])],
        [info("x", [2, 3, 4])], [info("y", [2, 12])], 13,
        [_tensor("zero", 0, np.int64), _tensor("axes", [0], np.int64), _tensor("minus1", [-1], np.int64)]),
    # A Where-based attention mask, as TF exports additive masks.
    "where-mask": _model([helper.make_node("Greater", ["x", "zero"], ["keep"]),
                          helper.make_node("Where", ["keep", "x", "big"], ["masked"]),
                          helper.make_node("Softmax", ["masked"], ["y"], axis=-1)],
                         [info("x", [2, 32])], [info("y", [2, 32])], 13,
                         [_tensor("zero", 0.0), _tensor("big", -1e4)]),
    # Cast round trips on float data (TF's float->half->float, Paddle's float->double->float).
    "cast-chain": _model([helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
                          helper.make_node("Cast", ["d"], ["f"], to=TensorProto.FLOAT),
                          helper.make_node("Relu", ["f"], ["y"])], [info("x", [2, 32])], [info("y", [2, 32])], 13),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_convention_runs_on_the_device(name):
    model = CASES[name]
    rng = np.random.default_rng(0)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
    expected = run_onnxruntime(model, feeds)
    compiled = ttc.compile(model)
    assert int(compiled.manifest["host_ops"]) == 0, f"{name} left host ops"
    got = compiled.run(feeds)
    for output, value in expected.items():
        result = compare(output, got[output], value)
        assert result.passed, f"{name}: {result}"


@pytest.mark.parametrize("spelling", [-1, 0, None])
def test_dynamic_dims_spelt_minus_one_zero_or_absent(tmp_path, spelling):
    """An exporter writing -1 (or 0) as the dim_value of a dynamic dimension: --input-shape fixes it; -1 is
    dynamic everywhere (the session API too), 0 stays a zero-size dim unless --input-shape sizes it."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [info("x", [1, 8])], [info("y", [1, 8])])
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        if spelling is not None:
            dim.dim_value = spelling  # not valid ONNX, written by exporters all the same
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    compiled = ttc.compile(str(path), input_shapes={"x": (2, 8)})
    assert compiled.manifest["inputs"][0]["shape"] == [2, 8]
    if spelling == 0:  # also a zero-size tensor: fixed at 0 unless --input-shape sizes it
        return
    session = ttc.InferenceSession(str(path))
    assert session.get_inputs()[0].shape == [None, 8]
    x = (np.arange(24, dtype=np.float32).reshape(3, 8) - 12) / 4  # exact in bf16
    [y] = session.run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    with pytest.raises(ttc.UserError, match=r"dynamic dimension 0 \(unnamed\)"):
        ttc.compile(str(path))
