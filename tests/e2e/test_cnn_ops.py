"""Golden tests of the ops convolutional networks use, one small ONNX graph each (onnx.helper): compiled, run on
the emulated Grayskull (bf16, HiFi4) with no host ops, and compared with onnxruntime by `ttc.golden.compare`
(PCC >= 0.99, relative L2 <= 0.05). Spatial sizes and channel counts are odd on purpose (not multiples of 32).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttc
from ttc.frontend import import_model
from ttc.golden import compare, run_onnxruntime
from ttc.ir.diagnostics import UserError
from ttc.ir.printer import print_module
from ttc.passes import PassManager

F32 = TensorProto.FLOAT


def model_of(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, ...]], initializers: dict[str, np.ndarray],
             outputs: list[str], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info(k, F32, list(v)) for k, v in inputs.items()],
                              [helper.make_tensor_value_info(o, F32, None) for o in outputs],
                              [numpy_helper.from_array(v if v.dtype.kind == "i" else v.astype(np.float32), k)
                               for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def check(model: onnx.ModelProto, seed: int = 0) -> ttc.compiler.CompiledModel:
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}}
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    outputs = compiled.run(feeds)
    for name, expected in run_onnxruntime(model, feeds).items():
        result = compare(name, outputs[name], expected)
        assert result.passed, result
    return compiled


def conv_model(x_shape: tuple[int, ...], w_shape: tuple[int, ...], bias: bool = True, computed: bool = False,
               **attrs) -> onnx.ModelProto:
    """A Conv of the graph input x (of Relu(x) when `computed`: an input the device computes)."""
    rng = np.random.default_rng(1)
    init = {"w": rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))}
    inputs = ["r" if computed else "x", "w"]
    if bias:
        init["b"] = rng.standard_normal(w_shape[0]) * 0.1
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], name="/conv", **attrs)
    relu = [helper.make_node("Relu", ["x"], ["r"], name="/relu")] if computed else []
    return model_of([*relu, node], {"x": x_shape}, init, ["y"])


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 3, 10, 10), (8, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 32, 9, 9), (16, 32, 1, 1), {}),
    ((1, 24, 9, 7), (20, 24, 1, 1), {"strides": [2, 2]}),
    ((1, 32, 9, 9), (16, 32, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 5, 13, 11), (7, 5, 3, 3), {"pads": [0, 1, 2, 0]}),  # asymmetric
    ((1, 4, 11, 11), (6, 4, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ((1, 4, 11, 9), (6, 4, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 4, 10, 9), (6, 4, 4, 4), {"auto_pad": "SAME_LOWER"}),
    ((1, 4, 10, 9), (6, 4, 3, 2), {"auto_pad": "VALID"}),
    ((2, 8, 7, 11), (8, 1, 3, 3), {"pads": [1, 0, 1, 2], "group": 8}),  # depthwise, batch 2
    ((1, 64, 9, 7), (64, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 64}),  # depthwise by channel tiles
    ((2, 72, 13, 11), (72, 1, 3, 3), {"pads": [1, 0, 1, 2], "strides": [2, 2], "group": 72}),  # 72 = 2.25 tiles
    ((1, 40, 10, 10), (40, 1, 5, 5), {"pads": [2, 2, 2, 2], "group": 40}),
    ((1, 8, 12, 12), (6, 4, 5, 5), {"strides": [2, 2], "pads": [2, 2, 2, 2], "group": 2}),
    ((1, 12, 7, 7), (8, 3, 1, 1), {"group": 4}),
    ((1, 3, 23, 23), (6, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    ((1, 3, 27, 27), (4, 3, 11, 11), {"strides": [4, 4]}),
])
def test_conv(x_shape, w_shape, attrs) -> None:
    check(conv_model(x_shape, w_shape, **attrs))


def test_depthwise_conv_is_a_matmul_batched_over_channel_tiles() -> None:
    """A depthwise conv of 72 channels: one grouped im2col lookup [3, M, 9 * 32] and one matmul by the
    positions' diagonal blocks [3, 288, 32], not a block-diagonal [9 * 96, 72] weight."""
    module = import_model(conv_model((1, 72, 13, 11), (72, 1, 3, 3), pads=[1, 1, 1, 1], group=72))
    PassManager("decompose,canonicalize,channels-last,tilize", stream=io.StringIO()).run(module)
    text = print_module(module)
    assert '{grouped = true, im2col = true, pad_negative = true}' in text
    assert "-> tensor<3x143x288xf32" in text
    matmuls = [line for line in text.splitlines() if '"ttir.matmul"' in line]
    assert any("tensor<3x288x32xf32" in line and "-> tensor<3x143x32xf32" in line for line in matmuls)
    assert "864x72" not in text


def test_global_pool_then_softmax_over_the_channels() -> None:
    """SqueezeNet's head: conv, relu, global average pool, softmax of the [N, C, 1, 1] result (opset 11: over
    the flattened C), the pooled logits an output too: the pooled [1, 1, C] pixels go back to NCHW as rows of C."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/conv"),
             helper.make_node("Relu", ["c"], ["r"], name="/relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool"),
             helper.make_node("Softmax", ["p"], ["y"], name="/softmax")]
    model = model_of(nodes, {"x": (1, 16, 13, 13)}, {"w": rng.standard_normal((1000, 16, 1, 1)) * 0.3,
                                                     "b": rng.standard_normal(1000) * 0.1}, ["y", "p"], opset=11)
    check(model)


def test_conv_without_bias() -> None:
    check(conv_model((1, 6, 9, 9), (5, 6, 3, 3), bias=False, pads=[1, 1, 1, 1]))


def bn_inits(c: int, prefix: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {f"{prefix}s": 1 + 0.1 * rng.standard_normal(c), f"{prefix}b": 0.1 * rng.standard_normal(c),
            f"{prefix}m": 0.1 * rng.standard_normal(c), f"{prefix}v": 1 + 0.1 * rng.random(c)}


def test_conv_batchnorm_relu_is_one_device_op() -> None:
    """Conv + BatchNormalization + Relu: the batch norm folds into the weights, bias and relu into the matmul."""
    rng = np.random.default_rng(3)
    init = {"w": rng.standard_normal((16, 32, 3, 3)) * 0.1, **bn_inits(16, "bn")}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bns", "bnb", "bnm", "bnv"], ["n"], name="/bn"),
             helper.make_node("Relu", ["n"], ["y"], name="/relu")]
    model = model_of(nodes, {"x": (1, 32, 9, 9)}, init, ["y"])
    check(model)
    module = import_model(model)
    PassManager("decompose,canonicalize,channels-last,tilize,fuse,canonicalize", stream=io.StringIO()).run(module)
    text = print_module(module)
    linears = [line for line in text.splitlines() if '"ttir.linear"' in line]
    assert len(linears) == 1 and 'activation = "relu"' in linears[0]
    assert "/bn" in linears[0] and "/conv" in linears[0]
    assert '"ttir.eltwise"' not in text


@pytest.mark.parametrize(("x_shape", "attrs"), [
    ((1, 5, 11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 5, 13, 13), {"kernel_shape": [3, 3], "strides": [2, 2]}),
    ((1, 6, 10, 10), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((1, 4, 12, 12), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 0, 1, 1]}),
    ((1, 4, 10, 10), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 3, 13, 11), {"kernel_shape": [5, 4], "strides": [2, 1], "pads": [2, 1, 2, 2]}),  # separable: 20 positions
    ((2, 3, 37), {"kernel_shape": [3], "strides": [2], "pads": [1, 0]}),  # 1-D
    ((1, 3, 5, 9, 7), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2], "pads": [0, 1, 1, 1, 0, 0]}),  # 3-D
    ((1, 2, 6, 7, 5), {"kernel_shape": [3, 3, 3], "dilations": [2, 1, 2], "ceil_mode": 1, "strides": [2, 2, 1]}),
])
def test_max_pool(x_shape, attrs) -> None:
    check(model_of([helper.make_node("MaxPool", ["x"], ["y"], name="/pool", **attrs)], {"x": x_shape}, {}, ["y"]))


@pytest.mark.parametrize(("x_shape", "attrs"), [
    ((1, 5, 11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 5, 11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ((1, 4, 10, 10), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 3, 7, 7), {"kernel_shape": [7, 7]}),
    ((1, 3, 11, 11), {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [1, 2, 1, 2]}),
    ((2, 3, 37), {"kernel_shape": [4], "strides": [3], "pads": [1, 2], "count_include_pad": 1}),  # 1-D
    ((1, 3, 5, 9, 7), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2], "pads": [0, 1, 1, 1, 0, 0]}),  # 3-D
    ((1, 2, 7, 6, 9), {"kernel_shape": [3, 2, 3], "strides": [2, 1, 2], "pads": [1, 0, 1, 1, 1, 1],
                       "count_include_pad": 1}),
])
def test_average_pool(x_shape, attrs) -> None:
    check(model_of([helper.make_node("AveragePool", ["x"], ["y"], name="/pool", **attrs)], {"x": x_shape}, {},
                   ["y"], opset=19))


@pytest.mark.parametrize(("x_shape", "attrs"), [
    ((1, 5, 11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "p": 2}),
    ((1, 3, 10, 9), {"kernel_shape": [2, 3], "dilations": [2, 1], "p": 3}),
    ((2, 3, 37), {"kernel_shape": [4], "strides": [3], "p": 1}),  # 1-D
    ((1, 2, 5, 7, 6), {"kernel_shape": [2, 2, 3], "auto_pad": "SAME_UPPER", "p": 4}),  # 3-D
])
def test_lp_pool(x_shape, attrs) -> None:
    check(model_of([helper.make_node("LpPool", ["x"], ["y"], name="/pool", **attrs)], {"x": x_shape}, {}, ["y"],
                   opset=18))


def test_resnet_block_global_pool_flatten_gemm() -> None:
    """conv-bn-relu, residual add, global average pool, flatten, gemm: one layout change at the input."""
    rng = np.random.default_rng(4)
    init = {"w1": rng.standard_normal((12, 12, 3, 3)) * 0.15, "w2": rng.standard_normal((12, 12, 1, 1)) * 0.3,
            **bn_inits(12, "a"), "fc": rng.standard_normal((10, 12)) * 0.3, "fb": rng.standard_normal(10) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="/c1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "as", "ab", "am", "av"], ["n1"], name="/bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="/r1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/c2"),
             helper.make_node("Sum", ["c2", "r1"], ["s"], name="/sum"),
             helper.make_node("Clip", ["s", "lo", "hi"], ["r2"], name="/relu6"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="/gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="/flatten"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="/fc", transB=1)]
    init.update({"lo": np.array(0.0), "hi": np.array(6.0)})
    check(model_of(nodes, {"x": (1, 12, 9, 9)}, init, ["y"]))


def test_concat_channels_and_activations() -> None:
    rng = np.random.default_rng(5)
    init = {"w1": rng.standard_normal((5, 6, 1, 1)) * 0.4, "w2": rng.standard_normal((7, 6, 3, 3)) * 0.2}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="/a"),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="/b", pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["a", "b"], ["c"], name="/cat", axis=1),
             helper.make_node("HardSwish", ["c"], ["d"], name="/hs"),
             helper.make_node("HardSigmoid", ["d"], ["e"], name="/hsig"),
             helper.make_node("LeakyRelu", ["c"], ["f"], name="/leaky", alpha=0.1),
             helper.make_node("Sigmoid", ["f"], ["g"], name="/sig"),
             helper.make_node("Mul", ["f", "g"], ["silu"], name="/silu"),
             helper.make_node("Add", ["silu", "e"], ["y"], name="/add")]
    check(model_of(nodes, {"x": (1, 6, 9, 9)}, init, ["y"]))


def test_hardswish_after_a_convolution_is_its_epilogue() -> None:
    """HardSwish is one SFPU function: the convolutions' layout changes sink through it (as through every
    elementwise op of one operand) and the convolution's matmul applies it in its epilogue, so it makes no program
    of its own; over inputs spanning its three pieces (0 below -3, the parabola, x above 3)."""
    from ttc.ir.dialects import ttmetal

    rng = np.random.default_rng(8)
    init = {"w1": rng.standard_normal((12, 5, 1, 1)) * 1.5, "b1": rng.standard_normal(12),
            "w2": rng.standard_normal((7, 12, 3, 3)) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="/pw"),
             helper.make_node("HardSwish", ["a"], ["b"], name="/hs1"),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="/conv", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["y"], name="/hs2")]
    compiled = check(model_of(nodes, {"x": (1, 5, 9, 11)}, init, ["y"]))
    kinds = [op.attributes["kind"] for op in compiled.module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name]
    assert "eltwise" not in kinds, kinds
    linears = [op for op in compiled.module.walk() if op.attributes.get("activation") == "hardswish"]
    assert not linears  # lowered: the activation is an SFPU op of the matmul programs' compute kernels
    assert sum(op.name == "ttkernel.sfpu_tiles" and op.attributes.get("fn") == "hardswish"
               for op in compiled.module.walk()) >= 2


def test_depthwise_mul_broadcast_and_channel_shuffle() -> None:
    """MobileNet's (1,C,H,W) x (1,C,1,1) scale and ShuffleNet's channel shuffle in channels-last form."""
    rng = np.random.default_rng(6)
    init = {"w": rng.standard_normal((8, 1, 3, 3)) * 0.3, "s": rng.standard_normal((1, 8, 1, 1)),
            "shape5": np.array([1, 2, 4, 7, 7], np.int64), "shape4": np.array([1, 8, 7, 7], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["d"], name="/dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["d", "s"], ["m"], name="/scale"),
             helper.make_node("Relu", ["m"], ["r"], name="/relu"),
             helper.make_node("Reshape", ["r", "shape5"], ["r5"], name="/split"),
             helper.make_node("Transpose", ["r5"], ["t5"], name="/shuffle", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "shape4"], ["y"], name="/merge")]
    check(model_of(nodes, {"x": (1, 8, 7, 7)}, init, ["y"]))


def test_lrn() -> None:
    node = helper.make_node("LRN", ["x"], ["y"], name="/lrn", size=5, alpha=1e-4 * 50, beta=0.75, bias=1.0)
    check(model_of([node], {"x": (1, 10, 6, 7)}, {}, ["y"]))


def test_unsupported_op_names_the_node() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="/conv4d")
    model = model_of([node], {"x": (1, 2, 3, 4, 4, 4)}, {"w": np.ones((2, 2, 1, 1, 1, 1))}, ["y"])
    with pytest.raises(UserError, match="/conv4d"):
        ttc.compile(model)


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 3, 5, 9, 7), (4, 3, 3, 3, 2), {"pads": [1, 0, 1, 1, 2, 0], "strides": [2, 1, 2]}),
    ((2, 4, 4, 6, 5), (6, 2, 2, 3, 3), {"group": 2, "strides": [1, 2, 1], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 7, 5, 6), (3, 2, 3, 1, 2), {"dilations": [2, 1, 1], "pads": [2, 0, 1, 1, 0, 0]}),
])
def test_conv_3d_by_depth_planes(x_shape, w_shape, attrs) -> None:
    check(conv_model(x_shape, w_shape, **attrs))


def test_conv_transpose_3d() -> None:
    rng = np.random.default_rng(14)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="/convT", strides=[2, 1, 2],
                            pads=[0, 1, 1, 1, 0, 0])
    check(model_of([node], {"x": (1, 3, 3, 5, 4)}, {"w": rng.standard_normal((3, 2, 2, 3, 3)) * 0.3,
                                                     "b": rng.standard_normal(2)}, ["y"]))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode: str) -> None:
    init = {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}
    node = helper.make_node("Pad", ["x", "p"], ["y"], name="/pad", mode=mode)
    check(model_of([node], {"x": (1, 3, 5, 6)}, init, ["y"]))


@pytest.mark.parametrize(("x_shape", "mode", "pads", "axes"), [
    ((2, 37, 45), "constant", [0, 3, 1, 1, 2, 30], None),  # every axis, by row lookups (no NCHW)
    ((3, 5, 40), "reflect", [2, 3], [-1]),  # the last axis only: swapped with the second last
    ((1, 3, 6, 7), "edge", [1, 2, 0, 3], [1, 3]),  # the channel axis of an NCHW tensor
    ((4, 33), "wrap", [1, -2, 2, 5], None),  # a negative pad crops
    ((50,), "constant", [3, 9], None),  # rank 1
])
def test_pad_by_row_lookups(x_shape, mode, pads, axes) -> None:
    init = {"p": np.array(pads, np.int64), "v": np.array(1.5, np.float32)}
    names = ["x", "p", "v" if mode == "constant" else ""]
    if axes is not None:
        init["a"] = np.array(axes, np.int64)
        names.append("a")
    node = helper.make_node("Pad", names, ["y"], name="/pad", mode=mode)
    check(model_of([node], {"x": x_shape}, init, ["y"], opset=19))


@pytest.mark.parametrize(("x_shape", "shape", "axes"), [
    ((2, 3, 9, 8), [6, 11], [2, 3]),  # crop H by an odd 3 (1 before, 2 after), pad W by an odd 3: a pixel lookup
    ((37, 5, 3), [34, 9], [0, 1]),  # channels last: crop the rows, pad the channels
    ((4, 40), [3, 41], None),  # every axis
])
def test_center_crop_pad(x_shape, shape, axes) -> None:
    node = helper.make_node("CenterCropPad", ["x", "s"], ["y"], name="/crop", **({} if axes is None else {"axes": axes}))
    check(model_of([node], {"x": x_shape}, {"s": np.array(shape, np.int64)}, ["y"], opset=18))


def test_pad_keeps_infinities_and_takes_a_computed_value() -> None:
    """A lookup moves values without arithmetic: -inf in the data survives (an attention mask), and the pad
    value may be computed."""
    nodes = [helper.make_node("ReduceMax", ["v"], ["value"], name="/value", keepdims=0),
             helper.make_node("Where", ["keep", "x", "ninf"], ["masked"], name="/mask"),
             helper.make_node("Pad", ["masked", "p", "value"], ["y"], name="/pad")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [2, 3, 5]),
                                           helper.make_tensor_value_info("v", F32, [4]),
                                           helper.make_tensor_value_info("keep", TensorProto.BOOL, [2, 3, 5])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(np.array([0, 1, 0, 0, 2, 3], np.int64), "p"),
                               numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)],
                                                                ir_version=8))
    rng = np.random.default_rng(5)
    feeds = {"x": rng.standard_normal((2, 3, 5)).astype(np.float32), "v": rng.standard_normal(4).astype(np.float32),
             "keep": rng.random((2, 3, 5)) > 0.3}
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    y, expected = compiled.run(feeds)["y"], run_onnxruntime(model, feeds)["y"]
    assert np.isneginf(expected).any()
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(expected))
    np.testing.assert_allclose(y, expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("mode", "transform", "scales"), [
    ("nearest", "asymmetric", [1, 1, 2, 2]),
    ("nearest", "half_pixel", [1, 1, 1.5, 2.5]),
    ("linear", "half_pixel", [1, 1, 2, 2]),
    ("linear", "align_corners", [1, 1, 1.6, 2.0]),  # whole output lengths (test_resize_fractional_length...)
    ("linear", "pytorch_half_pixel", [1, 1, 0.5, 0.6]),
])
def test_resize(mode: str, transform: str, scales: list[float]) -> None:
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="/resize", mode=mode,
                            coordinate_transformation_mode=transform)
    check(model_of([node], {"x": (1, 3, 5, 7)}, {"s": np.array(scales, np.float32)}, ["y"]))


@pytest.mark.parametrize(("x_shape", "attrs", "inputs"), [
    ((1, 3, 37, 45), {"mode": "cubic"}, {"s": [1, 1, 1.5, 0.7]}),
    ((1, 2, 9, 13), {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, {"s": [1, 1, 0.6, 1.8]}),
    ((1, 2, 9, 10), {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}, {"s": [1, 1, 2.0, 0.8]}),
    ((1, 3, 40, 35), {"mode": "linear", "antialias": 1}, {"s": [1, 1, 0.4, 0.6]}),
    ((1, 3, 40, 35), {"mode": "cubic", "antialias": 1}, {"z": [1, 3, 13, 9]}),
    ((1, 2, 9, 13), {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
     {"s": [1, 1, 1.3, 0.7]}),
    ((2, 3, 11, 7), {"mode": "nearest", "axes": [3, 2]}, {"z": [13, 5]}),
    ((1, 2, 9, 13), {"mode": "nearest", "keep_aspect_ratio_policy": "not_larger"}, {"z": [1, 2, 5, 20]}),
    ((2, 5, 6, 33), {"mode": "nearest"}, {"s": [1, 0.6, 1, 1.5]}),  # the channel axis resized too
    ((3, 50), {"mode": "cubic"}, {"s": [1, 0.8]}),  # rank 2
])
def test_resize_by_interpolation_matrices(x_shape, attrs, inputs) -> None:
    """Resizes beyond the pixel lookups: one product by a constant interpolation matrix per resized axis."""
    init = {k: np.array(v, np.float32 if k == "s" else np.int64) for k, v in inputs.items()}
    names = ["x", "", "s" if "s" in inputs else "", "z" if "z" in inputs else ""]
    node = helper.make_node("Resize", names[:4 if "z" in inputs else 3], ["y"], name="/resize", **attrs)
    check(model_of([node], {"x": x_shape}, init, ["y"], opset=19))


def test_resize_fractional_length_follows_the_onnx_reference() -> None:
    """align_corners with scales giving a fractional output length (5 * 1.7 = 8.5 -> 8 pixels): onnx's reference
    (and the node tests) divide by 8.5 - 1, onnxruntime by 8 - 1; ttc follows the reference."""
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="/resize", mode="linear",
                            coordinate_transformation_mode="align_corners")
    model = model_of([node], {"x": (1, 3, 5, 7)}, {"s": np.array([1, 1, 1.7, 0.7], np.float32)}, ["y"])
    x = np.random.default_rng(3).standard_normal((1, 3, 5, 7)).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    np.testing.assert_allclose(compiled.run({"x": x})["y"], expected, rtol=2e-2, atol=2e-2)


def test_resize_tf_crop_and_resize_extrapolates() -> None:
    init = {"roi": np.array([0, 0, 0.2, 0.1, 1, 1, 1.3, 0.9], np.float32), "z": np.array([1, 2, 7, 10], np.int64)}
    node = helper.make_node("Resize", ["x", "roi", "", "z"], ["y"], name="/resize", mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=2.5)
    check(model_of([node], {"x": (1, 2, 9, 13)}, init, ["y"], opset=19))


def test_clip_with_computed_bounds() -> None:
    nodes = [helper.make_node("ReduceMin", ["lo"], ["low"], name="/low", keepdims=0),
             helper.make_node("ReduceMax", ["hi"], ["high"], name="/high", keepdims=0),
             helper.make_node("Clip", ["x", "low", "high"], ["y"], name="/clip")]
    check(model_of(nodes, {"x": (3, 37), "lo": (5,), "hi": (4,)}, {}, ["y"]))


def test_upsample_opset_9() -> None:
    node = helper.make_node("Upsample", ["x", "s"], ["y"], name="/up", mode="nearest")
    check(model_of([node], {"x": (1, 3, 4, 5)}, {"s": np.array([1, 1, 2, 2], np.float32)}, ["y"], opset=9))


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 4, 5, 5), (4, 6, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((1, 4, 4, 4), (4, 2, 2, 2), {"strides": [2, 2], "group": 2}),
    ((1, 3, 5, 5), (3, 5, 3, 3), {"dilations": [2, 2], "pads": [0, 1, 2, 0]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
])
def test_conv_transpose(x_shape, w_shape, attrs) -> None:
    rng = np.random.default_rng(8)
    init = {"w": rng.standard_normal(w_shape) * 0.3, "b": rng.standard_normal(w_shape[1] * attrs.get("group", 1))}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="/convT", **attrs)
    check(model_of([node], {"x": x_shape}, init, ["y"]))


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 3, 9, 11), (5, 3, 3, 3), {"pads": [1, 0, 1, 2], "strides": [2, 1]}),
    ((2, 4, 7, 7), (6, 2, 3, 2), {"group": 2, "dilations": [2, 1]}),
    ((1, 3, 37), (4, 3, 5), {"pads": [2, 1], "strides": [2]}),  # 1-D
])
def test_conv_with_a_computed_weight(x_shape, w_shape, attrs) -> None:
    """The weight is a graph input: per kernel position, the sticks it reads times its weight slice, on the device."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="/conv", **attrs)]
    check(model_of(nodes, {"x": x_shape, "w": w_shape, "b": (w_shape[0],)}, {}, ["y"]))


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 2, 5, 4), (2, 3, 3, 3), {"strides": [3, 2], "output_shape": [16, 9]}),
    ((2, 4, 3, 3), (4, 1, 2, 3), {"group": 2, "strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ((1, 3, 19), (3, 2, 4), {"strides": [2], "output_padding": [1]}),  # 1-D
])
def test_conv_transpose_with_a_computed_weight(x_shape, w_shape, attrs) -> None:
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="/convT", **attrs)]
    check(model_of(nodes, {"x": x_shape, "w": w_shape}, {}, ["y"]))


def test_max_pool_indices_run_on_the_host() -> None:
    """MaxPool's Indices output is an index result: the node is a host op (the values come from it too)."""
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], name="/pool", kernel_shape=[3, 3], strides=[2, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, [1, 2, 7, 7])],
                              [helper.make_tensor_value_info("y", F32, None),
                               helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                                ir_version=8))
    x = np.random.default_rng(4).standard_normal((1, 2, 7, 7)).astype(np.float32)
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 1
    outputs, expected = compiled.run({"x": x}), run_onnxruntime(model, {"x": x})
    np.testing.assert_array_equal(outputs["i"], expected["i"])
    np.testing.assert_allclose(outputs["y"], expected["y"], rtol=2e-2, atol=2e-2)


def test_max_unpool_scatters_on_the_host() -> None:
    """MaxUnpool writes at positions that are data (MaxPool's indices): a scatter, a host op like the pool's
    indices; the activation after it runs on the device."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], name="/pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxUnpool", ["y", "i"], ["u"], name="/unpool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["u"], ["z"], name="/relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [1, 3, 8, 6])],
                              [helper.make_tensor_value_info("z", F32, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                                ir_version=8))
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 6)).astype(np.float32)
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 2
    np.testing.assert_allclose(compiled.run({"x": x})["z"], run_onnxruntime(model, {"x": x})["z"], rtol=2e-2,
                               atol=2e-2)


def test_dropout_opset_9_is_the_identity() -> None:
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/conv"),
             helper.make_node("Dropout", ["c"], ["y", "mask"], name="/drop", ratio=0.5)]
    check(model_of(nodes, {"x": (1, 4, 5, 5)}, {"w": rng.standard_normal((3, 4, 1, 1))}, ["y"], opset=9))


def test_large_convolution_goes_by_chunks_of_output_rows() -> None:
    """130 x 130 output pixels: more than one im2col lookup holds (16384 ids), so the rows go in two chunks."""
    compiled = check(conv_model((1, 8, 130, 130), (8, 8, 3, 3), pads=[1, 1, 1, 1]))
    assert compiled.manifest["host_ops"] == 0


def tilized_text(model: onnx.ModelProto) -> str:
    module = import_model(model)
    PassManager("decompose,canonicalize,channels-last,tilize", stream=io.StringIO()).run(module)
    return print_module(module)


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs", "splits"), [
    ((1, 3, 32, 32), (32, 3, 16, 16), {"strides": [16, 16]}, 2),  # ViT's patch embedding: 256 positions
    ((1, 3, 64, 32), (24, 3, 32, 32), {"strides": [32, 32]}, 8),  # a 32x32 patch: 1024 positions
    ((1, 4, 20, 19), (5, 4, 12, 12), {"pads": [2, 3, 1, 2]}, 2),  # overlapping, padded: 144 positions
    ((1, 40, 17, 17), (40, 1, 13, 13), {"pads": [6, 6, 6, 6], "group": 40}, 2),  # depthwise 13x13: 169
])
def test_conv_beyond_one_im2col_pass_is_split_along_k(x_shape, w_shape, attrs, splits) -> None:
    """A window of more than MAX_POSITIONS kernel positions goes in ceil(KK / 128) im2col lookups, each times
    its rows of the stacked weight, the partial products summed (a K split); it passes golden. (The input is
    computed: a patch convolution of a graph input is the host's space-to-depth and one matmul instead,
    tests/e2e/test_conv_windows.py.)"""
    model = conv_model(x_shape, w_shape, computed=True, **attrs)
    check(model)
    text = tilized_text(model)
    lookups = [line for line in text.splitlines() if "im2col = true" in line]
    assert len(lookups) == splits, text
    assert "more than" not in text


@pytest.mark.parametrize(("kind", "x_shape", "attrs"), [
    ("AveragePool", (1, 64, 7, 7), {"kernel_shape": [1280, 1280], "strides": [1280, 1280], "ceil_mode": 1}),
    ("AveragePool", (2, 5, 9, 11), {"kernel_shape": [9, 11], "count_include_pad": 1}),
    ("AveragePool", (1, 3, 6, 5), {"kernel_shape": [40, 7], "strides": [40, 7], "ceil_mode": 1}),
    ("MaxPool", (1, 5, 9, 9), {"kernel_shape": [9, 9]}),
    ("MaxPool", (2, 3, 7, 6), {"kernel_shape": [300, 300], "strides": [300, 300], "ceil_mode": 1}),
])
def test_pool_over_the_whole_input_is_a_row_reduction(kind, x_shape, attrs) -> None:
    """A pool whose one window holds the whole input (EfficientNet's AvgPool2d(1280, ceil_mode) on 7x7, a
    kernel of any size) is a mean (maximum) over each image's pixels: no window lookup."""
    model = model_of([helper.make_node(kind, ["x"], ["y"], name="/pool", **attrs)], {"x": x_shape}, {}, ["y"],
                     opset=19)
    check(model)
    text = tilized_text(model)
    reductions = ("ttir.reduce_max",) if kind == "MaxPool" else ("ttir.reduce_mean", "ttir.reduce_sum")
    assert any(name in text for name in reductions)
    assert "pad_negative" not in text  # no window lookup (the graph-edge layout changes are row lookups)


def test_average_pool_beyond_one_im2col_pass_is_split_along_k() -> None:
    """A 12x12 average pool (144 positions, overlapping windows, padding counted out) in two lookups."""
    model = model_of([helper.make_node("AveragePool", ["x"], ["y"], name="/pool", kernel_shape=[12, 12],
                                       strides=[4, 4], pads=[2, 2, 2, 2])], {"x": (1, 6, 21, 20)}, {}, ["y"],
                     opset=19)
    check(model)
    assert sum("im2col = true" in line for line in tilized_text(model).splitlines()) == 2



@pytest.mark.parametrize("model", [
    conv_model((1, 3, 32, 32), (8, 3, 16, 16), strides=[16, 16]),  # K split: two lookups, summed products
    model_of([helper.make_node("AveragePool", ["x"], ["y"], name="/pool", kernel_shape=[1280, 1280],
                               strides=[1280, 1280], ceil_mode=1)], {"x": (1, 40, 7, 7)}, {}, ["y"], opset=19),
], ids=["k_split_conv", "whole_input_pool"])
def test_new_window_paths_run_bit_exact_on_both_emulators(model: onnx.ModelProto) -> None:
    """The native core and the Python reference emulator agree bit for bit on the K split and the whole-input
    pool."""
    compiled = ttc.compile(model)
    feeds = {"x": np.random.default_rng(3).standard_normal(
        [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)}
    native = compiled.run(feeds, emulator="native")["y"]
    reference = compiled.run(feeds, emulator="reference")["y"]
    np.testing.assert_array_equal(native.view(np.uint32), reference.view(np.uint32))


@pytest.mark.parametrize(("x_shape", "attrs", "lookups"), [
    ((1, 5, 40, 40), {"kernel_shape": [20, 20], "strides": [10, 10]}, 2 * (4 + 5)),  # 20 = 4 + 4 * (5 - 1)
    ((1, 3, 37, 29), {"kernel_shape": [17, 16], "strides": [3, 2], "pads": [8, 5, 7, 9]}, None),
    ((1, 3, 30, 23), {"kernel_shape": [19, 4], "strides": [4, 3], "pads": [9, 1, 9, 1], "ceil_mode": 1}, None),
    ((2, 4, 300), {"kernel_shape": [251], "strides": [7], "pads": [120, 130]}, None),  # three levels
    ((2, 4, 300), {"kernel_shape": [12], "strides": [7], "pads": [6, 6]}, 3 + 4),  # 12 = 3 + 3 * (4 - 1)
    ((1, 2, 45, 50), {"kernel_shape": [31, 1], "pads": [15, 0, 15, 0]}, None),
    ((2, 3, 90), {"kernel_shape": [12], "dilations": [3], "strides": [2], "pads": [11, 10]}, 3 + 4),  # dilated
    ((1, 3, 41, 19), {"kernel_shape": [11, 3], "dilations": [2, 2], "pads": [10, 1, 9, 2]}, None),
])
def test_max_pool_of_many_positions_goes_by_levels(x_shape, attrs, lookups) -> None:
    """A max pool of more positions than one fused maximum takes (9) is separable along H and W, and a 1-D
    one of k positions is a stride-1 pool of a positions then one of b positions dilated by g
    ((b - 1) * g + a = k), padding never winning."""
    model = model_of([helper.make_node("MaxPool", ["x"], ["y"], name="/pool", **attrs)], {"x": x_shape}, {}, ["y"],
                     opset=19)
    check(model, seed=1)
    if lookups is not None:
        text = tilized_text(model)
        assert sum("pad_negative = true" in line and "ttir.embedding" in line for line in text.splitlines()) == lookups


def test_max_pool_and_convolution_beyond_four_row_chunks() -> None:
    """67600 output pixels: five chunks of rows (16384 each) for the max pool and the conv, joined by a tree of
    concats of at most four inputs (a concat's circular buffers grow with its inputs: ResNet-50's stem at
    batch 20 did not fit with sixteen)."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="/pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "w"], ["c"], name="/conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="/relu")]
    model = model_of(nodes, {"x": (1, 4, 260, 260)}, {"w": rng.standard_normal((4, 4, 3, 3)) * 0.2}, ["y"])
    check(model)
    concats = [line for line in tilized_text(model).splitlines() if '"ttir.concat"' in line]
    assert len(concats) == 4, concats  # per op: one of four chunks, then one of that and the fifth
