"""fuse: an attention's scale and additive mask into the softmax (`FuseSoftmaxMask`), and the cases it leaves
alone (the sum used elsewhere, a mask broadcast along columns, another body, rows too long)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttc.frontend import import_model
from ttc.passes import PassManager


def model(shape: list[int], mask_shape: list[int], body: str = "scale", extra_use: bool = False) -> onnx.ModelProto:
    c = numpy_helper.from_array(np.array(0.125, np.float32), "c")
    nodes = {"scale": [helper.make_node("Mul", ["x", "c"], ["q"]), helper.make_node("Add", ["q", "m"], ["s"])],
             "plain": [helper.make_node("Add", ["m", "x"], ["s"])],
             "sub": [helper.make_node("Sub", ["x", "m"], ["s"])]}[body]
    nodes.append(helper.make_node("Softmax", ["s"], ["y"], axis=-1))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if extra_use:
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                                           helper.make_tensor_value_info("m", TensorProto.FLOAT, mask_shape)],
                              outputs, [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def fused_softmax(proto: onnx.ModelProto):
    module = import_model(proto)
    PassManager("decompose,canonicalize,tilize,fuse,canonicalize", stream=io.StringIO()).run(module)
    ops = list(module.function("main").body.ops)
    [softmax] = [op for op in ops if op.name == "ttir.softmax"]
    return softmax, [op.name for op in ops]


@pytest.mark.parametrize("body, mask_shape, scale", [("scale", [2, 1, 64, 64], 0.125), ("plain", [2, 1, 1, 64], 1.0),
                                                     ("scale", [64], 0.125)])
def test_scale_and_mask_join_the_softmax(body: str, mask_shape: list[int], scale: float) -> None:
    softmax, names = fused_softmax(model([2, 4, 64, 64], mask_shape, body))
    assert len(softmax.operands) == 2 and softmax.attr("scale") == scale
    assert tuple(softmax.operands[1].type.shape) == tuple(mask_shape)
    assert "ttir.eltwise" not in names


@pytest.mark.parametrize("shape, mask_shape, body, extra_use", [
    ([2, 4, 64, 64], [2, 1, 64, 64], "scale", True),  # the sum is also a graph output
    ([2, 4, 64, 64], [2, 4, 64, 1], "scale", False),  # a mask broadcast along columns
    ([2, 4, 64, 64], [2, 1, 64, 64], "sub", False),  # not a sum
    ([1, 2, 32, 2048], [1, 1, 1, 2048], "plain", False),  # 64 tiles a row: beyond MASKED_SOFTMAX_MAX_TILES
])
def test_other_producers_stay_an_eltwise(shape: list[int], mask_shape: list[int], body: str, extra_use: bool) -> None:
    softmax, names = fused_softmax(model(shape, mask_shape, body, extra_use))
    assert len(softmax.operands) == 1 and "ttir.eltwise" in names
