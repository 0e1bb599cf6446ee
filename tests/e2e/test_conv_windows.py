"""Convolution windows past the plain im2col plan (issue 15 item 1): ConvTranspose of any kernel (stride =
kernel as one matmul and a depth-to-space movement), patch convolutions of a graph input (the host's
space-to-depth and one matmul), and window lookups too long for one index page (pages of 32 ids). Each runs
on the device with no host ops and passes the golden rule against onnxruntime, and each asserts which plan
ran (the ops the device forms hold)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttc
from ttc.compiler import CompileOptions, compile_for_api
from ttc.frontend import import_model
from ttc.golden import compare, run_onnxruntime
from ttc.ir.printer import print_module
from ttc.passes import PassManager
from ttc.passes.windows import MAX_PAGE_IDS

F32 = TensorProto.FLOAT


def window_model(op_type: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...] | None = None, bias: bool = True,
                 computed: bool = False, **attrs) -> onnx.ModelProto:
    """One window op on the graph input x (on Relu(x) when `computed`), seeded weights."""
    rng = np.random.default_rng(3)
    inits, inputs = [], ["r" if computed else "x"]
    if w_shape is not None:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32), "w"))
        inputs.append("w")
        if bias:
            channels = w_shape[0] if op_type == "Conv" else w_shape[1] * attrs.get("group", 1)
            inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(channels)).astype(np.float32), "b"))
            inputs.append("b")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/relu")] if computed else []
    nodes.append(helper.make_node(op_type, inputs, ["y"], name="/window", **attrs))
    graph = helper.make_graph(nodes, "windows", [helper.make_tensor_value_info("x", F32, list(x_shape))],
                              [helper.make_tensor_value_info("y", F32, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def check(model: onnx.ModelProto, pipeline: str | None = None) -> ttc.compiler.CompiledModel:
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = {"x": np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)}
    compiled = ttc.compile(model) if pipeline is None else compile_for_api(model, CompileOptions(pipeline=pipeline))
    assert compiled.manifest["host_ops"] == 0
    got = compiled.run(feeds)
    for name, expected in run_onnxruntime(model, feeds).items():
        result = compare(name, got[name], expected)
        assert result.passed, result
    return compiled


def tilized(model: onnx.ModelProto) -> str:
    """The device forms (after tilize) as text."""
    module = import_model(model)
    PassManager("decompose,canonicalize,channels-last,tilize", stream=io.StringIO()).run(module)
    return print_module(module)


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(word in line for word in words)]


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 16, 20, 20), (16, 1, 2, 2), {"kernel_shape": [2, 2], "strides": [2, 2]}),  # DBNet's head, smaller
    ((1, 8, 10, 12), (8, 4, 4, 4), {"kernel_shape": [4, 4], "strides": [4, 4]}),
    ((1, 8, 10, 10), (8, 3, 2, 2), {"kernel_shape": [2, 2], "strides": [2, 2], "group": 2}),
    ((2, 8, 9, 7), (8, 5, 2, 2), {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 0, 0, 1]}),  # cropped
])
def test_conv_transpose_with_stride_equal_to_kernel_is_one_matmul(x_shape, w_shape, attrs) -> None:
    """Each input pixel writes its own KH x KW block: one matmul by the weight as [C, KH*KW*OC] and a
    depth-to-space movement; no zero-stuffed lookup, no window lookup (no im2col)."""
    model = window_model("ConvTranspose", x_shape, w_shape, **attrs)
    check(model)
    text = tilized(model)
    assert not lines_with(text, "im2col = true"), text
    assert not lines_with(text, "ttir.conv2d") and not lines_with(text, "pad_negative"), text
    kk_oc = attrs["kernel_shape"][0] * attrs["kernel_shape"][1] * w_shape[1] * attrs.get("group", 1)
    assert lines_with(text, "ttir.matmul", f"x{kk_oc}x") or lines_with(text, "ttir.matmul", f"x{kk_oc}xf32"), text


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 8, 10, 10), (8, 4, 3, 3), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                    "output_padding": [1, 1]}),
    ((1, 6, 7, 9), (6, 4, 3, 3), {"kernel_shape": [3, 3], "strides": [2, 2], "group": 2}),
    ((1, 4, 5, 6), (4, 3, 5, 3), {"kernel_shape": [5, 3], "strides": [1, 2], "dilations": [2, 1]}),
])
def test_conv_transpose_with_overlapping_windows_is_a_stuffed_convolution(x_shape, w_shape, attrs) -> None:
    """Windows that overlap (stride < kernel, output padding, dilation): the zero-stuffed input's convolution,
    a padded lookup then the window lookup."""
    model = window_model("ConvTranspose", x_shape, w_shape, **attrs)
    check(model)
    text = tilized(model)
    assert lines_with(text, "im2col = true") or lines_with(text, "pad_negative"), text


@pytest.mark.parametrize(("x_shape", "w_shape", "kernel"), [
    ((1, 3, 64, 48), (16, 3, 16, 16), 16),  # ViT's patch embedding, 4x3 patches
    ((1, 3, 64, 96), (8, 3, 32, 32), 32),  # 32x32 patches
    ((2, 5, 12, 8), (7, 5, 4, 4), 4),  # ConvNeXt's 4x4 stem, batch 2
])
def test_patch_convolution_of_a_graph_input_is_one_matmul(x_shape, w_shape, kernel) -> None:
    """stride = kernel, no padding, no dilation, one group, on a graph input: the host writes the input as
    the patch matrix [N*OH*OW, C*KH*KW] (to_layout {split, perm}) and one matmul by the flattened weight
    follows (K = C*KH*KW: no channel padding, no K split, no window lookup)."""
    model = window_model("Conv", x_shape, w_shape, kernel_shape=[kernel, kernel], strides=[kernel, kernel])
    check(model)
    text = tilized(model)
    assert not lines_with(text, "im2col = true"), text
    n, c, h, w = x_shape
    patches = n * (h // kernel) * (w // kernel)
    depth = c * kernel * kernel
    edge = lines_with(text, "ttir.to_layout", "split = ")
    assert edge and f"tensor<{patches}x{depth}x" in edge[0], text
    products = lines_with(text, "ttir.matmul")
    assert len(products) == 1 and f"tensor<{depth}x{w_shape[0]}x" in products[0], text


@pytest.mark.parametrize(("x_shape", "computed"), [((1, 3, 32, 32), True), ((1, 3, 40, 36), False)])
def test_patch_window_off_the_host_path_takes_the_window_lookup(x_shape, computed) -> None:
    """The same patch window on a computed input: the device's im2col lookup (its own space-to-depth), split along
    K beyond 128 positions. On a graph input it does not tile exactly (rows past the last whole patch), the host
    writes the im2col matrix instead (to_layout {window}: 24 tiles, where the NHWC image takes 80)."""
    model = window_model("Conv", x_shape, (8, 3, 16, 16), computed=computed, kernel_shape=[16, 16],
                         strides=[16, 16])
    check(model)
    text = tilized(model)
    assert len(lines_with(text, "im2col = true")) == (2 if computed else 0), text
    assert len(lines_with(text, "window = ")) == (0 if computed else 1), text
    assert not lines_with(text, "split = "), text


def page_lengths(text: str) -> list[int]:
    """The index page length (last dim of the ids) of every lookup in the text."""
    lengths = []
    for line in lines_with(text, "ttir.embedding"):
        ids_type = line.split(" : (")[1].split(", tensor<")[1].split(",")[0]  # e.g. 7840x32xi32
        lengths.append(int(ids_type.split("x")[-2]))
    return lengths


@pytest.mark.parametrize(("op_type", "x_shape", "w_shape", "attrs"), [
    # the zero-stuffed input of an overlapping ConvTranspose: 81 x 81 = 6561 ids, not a multiple of 32
    ("ConvTranspose", (1, 4, 40, 40), (4, 2, 3, 3), {"kernel_shape": [3, 3], "strides": [2, 2]}),
    # a max pool over 100 x 100 pixels of 8 channels: its input's row lookup reads 10000 ids
    ("MaxPool", (1, 8, 100, 100), None, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
])
def test_long_lookups_go_in_index_pages_of_32(op_type, x_shape, w_shape, attrs) -> None:
    """A lookup by more than MAX_PAGE_IDS constant ids in one index page (whose reader would hold the page in
    L1: DBNet's 640 x 640 ConvTranspose, ResNet-50's max pool at batch 20) reads them in pages of 32 ids."""
    model = window_model(op_type, x_shape, w_shape, **attrs)
    check(model)
    lengths = page_lengths(tilized(model))
    assert lengths and max(lengths) <= MAX_PAGE_IDS, lengths


def test_patch_matmul_agrees_with_the_window_lookup() -> None:
    """The two plans of one patch convolution on the same (non-negative) image: the host's space-to-depth and
    one matmul (graph input) against the K-split im2col lookup (the input through Abs, computed on the device).
    Both sum the same bf16 products in a different order: they agree to the bf16 level, and the patch plan is
    no further from onnxruntime."""
    x = np.abs(np.random.default_rng(7).standard_normal((1, 3, 32, 48))).astype(np.float32)
    attrs = {"kernel_shape": [16, 16], "strides": [16, 16]}
    direct = window_model("Conv", (1, 3, 32, 48), (8, 3, 16, 16), **attrs)
    looked_up = window_model("Conv", (1, 3, 32, 48), (8, 3, 16, 16), **attrs)
    abs_node = helper.make_node("Abs", ["x"], ["r"], name="/abs")
    looked_up.graph.node.insert(0, abs_node)
    looked_up.graph.node[1].input[0] = "r"
    assert not lines_with(tilized(direct), "im2col = true")
    assert len(lines_with(tilized(looked_up), "im2col = true")) == 2
    expected = run_onnxruntime(direct, {"x": x})["y"]
    by_patches = ttc.compile(direct).run({"x": x})["y"]
    by_lookup = ttc.compile(looked_up).run({"x": x})["y"]
    agreement = compare("y", by_patches, by_lookup)
    assert agreement.passed and agreement.pcc > 0.9999, agreement
    patch_error = compare("y", by_patches, expected)
    lookup_error = compare("y", by_lookup, expected)
    assert patch_error.passed and lookup_error.passed
    assert patch_error.rel_l2_err <= lookup_error.rel_l2_err * 1.5, (patch_error, lookup_error)


def test_im2col_matrix_too_large_for_l1_goes_by_equal_row_chunks_held_in_l1() -> None:
    """ResNet's 7x7 stem at 224x224 (OC cut to 32) on a computed input (a graph input's is folded on the host,
    below): its im2col matrix [12544, 49 * 32] would take more than
    `MAX_L1_SHARE` of each core's free L1, so it goes by two equal chunks of tile rows, each small enough for L1,
    instead of one lookup written to DRAM and read back; every chunk's lookup result lives in L1, the products
    are joined along the rows, and the result still passes the golden rule."""
    from ttc.ir.dialects.tt import E150
    from ttc.passes.windows import chunk_rows

    assert chunk_rows(12544, 49 * 32, E150) == 6272  # 392 tile rows in two chunks of 196
    assert chunk_rows(3136, 9 * 64, E150) == 3136  # ResNet's first 3x3: one lookup, as before
    assert chunk_rows(40000, 32, E150) == 16384  # chunks of MAX_IM2COL_IDS fit L1: as before, the rest last
    # 842 tile rows need 3 chunks for L1, but 281 (3) and 211 (4) are prime and 169 = 13 x 13 (5) or a last
    # chunk of 137 (6) would run on few cores: 8 chunks of 106 tile rows (53 cores x 2), the last of 100
    assert chunk_rows(842 * 32, 49 * 32, E150) == 106 * 32
    model = window_model("Conv", (1, 3, 224, 224), (32, 3, 7, 7), computed=True, kernel_shape=[7, 7],
                         strides=[2, 2], pads=[3, 3, 3, 3])
    # (the lookups unfused, so that their results exist: fused into the products' readers they are never written)
    compiled = check(model, CompileOptions().pipeline_spec.replace("grid{", "grid{im2col=false "))
    text = tilized(model)
    lookups = lines_with(text, "im2col = true")
    assert len(lookups) == 2 and all("tensor<6272x1568x" in line for line in lookups), text
    main = print_module(compiled.module)
    buffers = lines_with(main, "ttmetal.create_buffer", "6272x1568")
    assert len(buffers) == 2 and all("l1" in line for line in buffers), buffers


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((2, 3, 32, 32), (16, 3, 7, 7), {"kernel_shape": [7, 7], "strides": [2, 2], "pads": [3, 3, 3, 3]}),  # stem
    ((1, 3, 24, 30), (8, 3, 5, 3), {"kernel_shape": [5, 3], "strides": [2, 3], "pads": [2, 0, 1, 1]}),
])
def test_strided_convolution_of_a_graph_input_is_folded_on_the_host(x_shape, w_shape, attrs) -> None:
    """A strided convolution of a few-channel graph input (ResNet's 7x7 stride-2 stem) whose im2col matrix would
    take more tiles than the folded input: the host writes the input's space-to-depth regrouping (to_layout
    {split, perm}, sh * sw * C channels) and a stride-1 convolution of ceil-many positions reads it, so the im2col
    lookup reads each pixel's stick for fewer positions."""
    model = window_model("Conv", x_shape, w_shape, **attrs)
    check(model)
    text = tilized(model)
    n, c, h, w = x_shape
    sh, sw = attrs["strides"]
    edge = lines_with(text, "ttir.to_layout", "split = ")
    assert edge and f"tensor<{n * (h // sh) * (w // sw)}x{sh * sw * c}x" in edge[0], text
    assert lines_with(text, "im2col = true"), text


def test_stride_fold_is_not_taken_where_it_widens_the_im2col_matrix() -> None:
    """64 channels: the phases would not fit the channel padding (4 x 2 tiles x 4 positions > 2 tiles x 9), so
    the 3x3 stride-2 convolution keeps the plain lookup of the input as written."""
    model = window_model("Conv", (1, 64, 16, 16), (8, 64, 3, 3), kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1])
    check(model)
    assert not lines_with(tilized(model), "split = ")


def test_stride_folded_stem_is_bit_identical_on_both_emulators() -> None:
    """The folded stem (7x7 stride 2 on 3 channels, batch 2) on the reference and the native emulator: the same
    bits, the golden rule against onnxruntime, and planned = executed = static counts."""
    from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators

    model = window_model("Conv", (2, 3, 64, 64), (16, 3, 7, 7), kernel_shape=[7, 7], strides=[2, 2],
                         pads=[3, 3, 3, 3])
    assert lines_with(tilized(model), "ttir.to_layout", "split = ")
    plans, compiled = compile_with_plans(model)
    feeds = {"x": np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    golden_on_both_emulators(model, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)


def two_convolutions(channels: int, activation: str, second_use: bool = False) -> onnx.ModelProto:
    """x [1, 3, 12, 10] -> 1x1 Conv to `channels` -> activation -> 3x3 Conv (pad 1) to 16 channels; with
    `second_use`, the activation's result is a graph output too."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32),
                                     name)
             for name, shape in (("w1", (channels, 3, 1, 1)), ("w2", (16, channels, 3, 3)))]
    inits += [numpy_helper.from_array((0.1 * rng.standard_normal(n)).astype(np.float32), name)
              for name, n in (("b1", channels), ("b2", 16))]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/relu0"),
             helper.make_node("Conv", ["r", "w1", "b1"], ["c1"], name="/pointwise", kernel_shape=[1, 1]),
             helper.make_node(activation, ["c1"], ["a"], name="/act"),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="/spatial", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", F32, None)]
    if second_use:
        outputs.append(helper.make_tensor_value_info("a", F32, None))
    graph = helper.make_graph(nodes, "two_convolutions", [helper.make_tensor_value_info("x", F32, [1, 3, 12, 10])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def fused(model: onnx.ModelProto) -> str:
    """The device forms after fuse (and its canonicalize) as text."""
    module = import_model(model)
    PassManager("decompose,canonicalize,channels-last,tilize,fuse,canonicalize", stream=io.StringIO()).run(module)
    return print_module(module)


def test_pointwise_convolution_is_a_matmul_of_its_unwidened_channels() -> None:
    """A 1x1 stride-1 convolution reads each pixel's own stick: one matmul of the [pixels, 3] input by the
    weight's 3 rows, with no selection widening its channels to 32 first (K's tile padding is zero)."""
    model = two_convolutions(24, "Relu")
    check(model)
    text = tilized(model)
    assert lines_with(text, "ttir.matmul", "(tensor<120x3x", "tensor<3x24x"), text
    assert not lines_with(text, "ttir.matmul", "tensor<3x32x"), text


@pytest.mark.parametrize(("activation", "second_use", "widened"), [
    ("Relu", False, True),
    ("HardSwish", False, True),
    ("Sigmoid", False, False),  # sigmoid(0) = 1/2: the widened columns would not be zero
    ("Relu", True, False),  # the activation's result is read as [pixels, 24] elsewhere too
])
def test_channel_widening_joins_the_producing_linear(activation, second_use, widened) -> None:
    """The 3x3 convolution's input [pixels, 24] widens to whole tiles of channels [pixels, 32] for its sticks. When
    a linear by constants with an activation keeping zero makes it, and nothing else reads it, that linear takes
    weight and bias widened with zero columns (the tiles it computes are the same) instead of a selection matmul
    (a program) after it; the results pass the golden rule on both emulators either way."""
    model = two_convolutions(24, activation, second_use)
    text = fused(model)
    selections = [line for line in text.splitlines() if "channel_pad" in line]
    widenings = lines_with(text, "ttir.constant", "widened32")
    if widened:
        assert not selections and len(widenings) == 2, text  # the weight and the bias
        assert lines_with(text, "ttir.linear", "-> tensor<120x32x"), text
    else:
        assert selections and not widenings, text
    compiled = check(model)
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 10)).astype(np.float32)
    native, reference = compiled.run({"x": x}, emulator="native"), compiled.run({"x": x}, emulator="reference")
    for name in native:
        np.testing.assert_array_equal(np.asarray(native[name]).view(np.uint8), np.asarray(reference[name]).view(np.uint8))


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 3, 32, 32), (16, 3, 3, 3), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),  # MobileNet's
    ((1, 2, 16, 16), (8, 2, 4, 4), {"kernel_shape": [4, 4], "strides": [2, 2]}),
    ((2, 3, 20, 18), (8, 3, 3, 3), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "dilations": [2, 1]}),
])
def test_few_channel_convolution_of_a_graph_input_reads_the_hosts_im2col_matrix(x_shape, w_shape, attrs) -> None:
    """A graph input's convolution whose im2col matrix takes no more tiles than the input as the host writes it
    otherwise (MobileNet's 3x3 stride-2 stem on 3 channels: K = 27, one tile): the host writes that matrix
    (`to_layout {window}`) and one matmul of K = KH*KW*C follows, with no lookup, no channel widening and no
    stride fold; the same bits on both emulators, and the golden rule."""
    model = window_model("Conv", x_shape, w_shape, **attrs)
    text = tilized(model)
    _, c, kh, kw = w_shape
    edge = lines_with(text, "ttir.to_layout", "window = ")
    assert len(edge) == 1 and f"x{kh * kw * c}xf32, #tt.layout<tile" in edge[0], text
    assert lines_with(text, "ttir.matmul", f"tensor<{kh * kw * c}x{w_shape[0]}x"), text
    assert not lines_with(text, "im2col = true") and not lines_with(text, "split = "), text
    compiled = check(model)
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    native, reference = compiled.run({"x": x}, emulator="native"), compiled.run({"x": x}, emulator="reference")
    np.testing.assert_array_equal(np.asarray(native["y"]).view(np.uint8), np.asarray(reference["y"]).view(np.uint8))
