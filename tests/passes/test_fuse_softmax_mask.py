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
             "sub": [helper.make_node("Sub", ["x", "m"], ["s"])],
             "scale_only": [helper.make_node("Mul", ["c", "x"], ["s"])]}[body]
    nodes.append(helper.make_node("Softmax", ["s"], ["y"], axis=-1))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if extra_use:
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, shape))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    if body != "scale_only":
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, mask_shape))
    graph = helper.make_graph(nodes, "g", inputs, outputs, [c])
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


def test_a_lone_scale_joins_the_softmax() -> None:
    softmax, names = fused_softmax(model([2, 4, 64, 64], [], "scale_only"))
    assert len(softmax.operands) == 1 and softmax.attr("scale") == 0.125
    assert "ttir.eltwise" not in names


@pytest.mark.parametrize("emulator", ["reference", "native"])
def test_a_lone_scale_in_the_softmax_gives_the_unfused_bits(emulator: str) -> None:
    """softmax(x * c) fused (the softmax kernel's scale phase) against the same graph whose product is also an
    output (so it stays an eltwise program writing it): the same bits."""
    import ttc

    x = np.random.default_rng(7).standard_normal((2, 4, 40, 70)).astype(np.float32) * 6
    fused = ttc.compile(model([2, 4, 40, 70], [], "scale_only"))
    unfused = ttc.compile(model([2, 4, 40, 70], [], "scale_only", extra_use=True))
    def kinds(compiled) -> list[str]:
        return [op.attributes["kind"] for op in compiled.module.function("main").body.ops
                if op.name == "ttmetal.enqueue_program"]

    assert kinds(fused) == ["softmax"] and kinds(unfused) == ["eltwise", "softmax"]
    got = fused.run({"x": x}, emulator=emulator)["y"]
    want = unfused.run({"x": x}, emulator=emulator)["y"]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
