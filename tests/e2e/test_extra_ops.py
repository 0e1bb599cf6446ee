"""Golden tests of the composed converters (`frontend/converters_*.py`), the segment movements and the
explicit host ops, beyond the ONNX node tests: odd shapes, broadcasting, other axes. Every case compiles,
runs on the emulated device and is compared with onnxruntime (`check`: floats by PCC and relative L2,
integers and booleans exactly) with the stated number of host ops.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from test_transformer_ops import BOOL, I64, Graph, check

import ttc
from ttc.golden import compare, run_onnxruntime
from ttc.ir.diagnostics import UserError


@pytest.mark.parametrize("op, attrs", [
    ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Celu", {"alpha": 1.3}), ("Softplus", {}), ("Softsign", {}),
    ("Mish", {}), ("ThresholdedRelu", {"alpha": 0.4}), ("Sign", {}), ("Shrink", {"lambd": 0.5, "bias": 0.2}),
    ("Sinh", {}), ("Cosh", {}), ("Sin", {}), ("Cos", {}), ("Atan", {}), ("Asinh", {}),
])
def test_unary_compositions_on_odd_shapes(op: str, attrs: dict) -> None:
    g = Graph()
    x = g.input("x", (3, 37, 41))
    g.output(g.node(op, [x], **attrs))
    check(g)


@pytest.mark.parametrize("op", ["Floor", "Ceil", "Round"])
def test_rounding_of_values_bf16_holds(op: str) -> None:
    g = Graph()  # eighths and a half-way case or two: exact in bf16, so rounding sees what the host sees
    values = np.random.default_rng(5).integers(-160, 160, (3, 37, 41)) / 8.0
    x = g.input("x", (3, 37, 41), values=values)
    g.output(g.node(op, [x]))
    check(g)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_log_softmax_and_hardmax_along_each_axis(axis: int) -> None:
    g = Graph()  # values exact in bf16, so ties (the first maximum wins) are the host's ties
    values = np.random.default_rng(6).integers(0, 32, (5, 33, 7)) / 4.0
    x = g.input("x", (5, 33, 7), values=values)
    g.output(g.node("LogSoftmax", [x], axis=axis))
    g.output(g.node("Hardmax", [x], axis=axis))
    check(g)


@pytest.mark.parametrize("op", ["ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceMin"])
@pytest.mark.parametrize("axes, keepdims", [([1], 1), ([0, 2], 0)])
def test_composed_reductions(op: str, axes: list[int], keepdims: int) -> None:
    g = Graph()
    x = g.input("x", (4, 35, 6))
    g.output(g.node(op, [x, g.const(axes, np.int64)], keepdims=keepdims))
    check(g)


def test_layer_norm_statistics_and_rms_norm() -> None:
    g = Graph()
    x = g.input("x", (2, 5, 40))
    scale = g.const(np.linspace(0.5, 1.5, 40))
    y, mean, inv_std = g.node("LayerNormalization", [x, scale, g.const(np.full(40, 0.1))], outputs=3, axis=-1)
    for name in (y, mean, inv_std):
        g.output(name)
    g.output(g.node("RMSNormalization", [x, scale], axis=-1))
    check(g, opset=23)


def test_cumsum_reverse_exclusive_along_a_middle_axis() -> None:
    g = Graph()
    x = g.input("x", (3, 40, 5))
    g.output(g.node("CumSum", [x, g.const(1, np.int64)], reverse=1, exclusive=1))
    check(g)


@pytest.mark.parametrize("shape, heads, kv_heads, causal", [((2, 5, 24), 3, 3, 0), ((1, 7, 32), 4, 2, 1)])
def test_attention_on_three_dimensional_inputs(shape, heads: int, kv_heads: int, causal: int) -> None:
    g = Graph()
    q = g.input("q", shape)
    kv_shape = (shape[0], shape[1] + 2, shape[2] // heads * kv_heads)
    k, v = g.input("k", kv_shape), g.input("v", kv_shape)
    g.output(g.node("Attention", [q, k, v], q_num_heads=heads, kv_num_heads=kv_heads, is_causal=causal))
    check(g, opset=23)


def test_head_split_and_merge_move_segments_of_rows() -> None:
    g = Graph()
    x = g.input("x", (2, 9, 24))
    heads = g.node("Transpose", [g.node("Reshape", [x, g.const([2, 9, 3, 8], np.int64)])], perm=[0, 2, 1, 3])
    g.output(heads)
    merged = g.node("Reshape", [g.node("Transpose", [heads], perm=[0, 2, 1, 3]), g.const([2, 9, 24], np.int64)])
    g.output(g.node("Add", [merged, x]))
    g.output(g.node("Transpose", [x], perm=[0, 2, 1]))
    check(g)


def test_losses_with_ignored_labels() -> None:
    g = Graph()
    scores = g.input("scores", (6, 5, 3))
    labels = np.array([[0, 4, 3], [2, 1, 1], [3, 3, 1], [1, 0, 2], [4, 4, 4], [2, 1, 0]])
    target = g.input("target", (6, 3), I64, labels)
    g.output(g.node("SoftmaxCrossEntropyLoss", [scores, target], reduction="mean", ignore_index=1))
    g.output(g.node("NegativeLogLikelihoodLoss", [scores, target, g.const(np.linspace(0.5, 2, 5))],
                    reduction="none"))
    check(g)


def test_gather_of_computed_rows_by_token_ids() -> None:
    g = Graph()
    x = g.input("x", (7, 3, 40))
    ids = g.input("ids", (2, 5), I64, np.array([[0, 6, -1, 3, 3], [2, 1, 0, 5, 4]]))
    g.output(g.node("Gather", [g.node("Relu", [x]), ids], axis=0))
    g.output(g.node("Gather", [x, ids], axis=2))
    check(g)


def test_integer_ops_run_on_the_host_and_feed_the_device() -> None:
    g = Graph()
    a = g.input("a", (3, 40), I64, np.random.default_rng(1).integers(-10**9, 10**9, (3, 40)))
    b = g.input("b", (3, 40), I64, np.random.default_rng(2).integers(1, 1000, (3, 40)))
    x = g.input("x", (3, 40))
    remainder = g.node("Mod", [a, b])
    g.output(remainder, I64)
    g.output(g.node("Less", [a, b]), BOOL)
    g.output(g.node("Mul", [x, g.node("Cast", [remainder], to=1)]))  # host integers, converted on the device
    g.output(g.node("ArgMax", [x], axis=1, keepdims=0), I64)
    compiled = check(g, host_ops=3)
    ops = sorted(op.attr("op_type") for op in compiled.module.walk() if op.name == "ttmetal.host_compute")
    assert ops == ["ArgMax", "Less", "Mod"]


def test_small_integers_stay_on_the_device() -> None:
    g = Graph()
    mask = g.input("mask", (4, 33), BOOL)
    ones = g.node("Cast", [mask], to=7)  # int64 in [0, 1]
    g.output(g.node("Add", [ones, ones]), I64)
    g.output(g.node("Equal", [g.input("ids", (4, 33), I64, np.arange(132).reshape(4, 33) * 997), g.const(0, np.int64)]),
             BOOL)
    check(g)


def test_tile_trilu_and_products() -> None:
    g = Graph()
    x = g.input("x", (3, 5, 7))
    g.output(g.node("Tile", [x, g.const([1, 2, 3], np.int64)]))
    g.output(g.node("Trilu", [x, g.const(1, np.int64)], upper=1))
    g.output(g.node("ReduceProd", [x, g.const([1, 2], np.int64)], keepdims=0))
    check(g)


@pytest.mark.parametrize("equation, shapes", [
    ("bij,bjk->bik", [(2, 3, 5), (2, 5, 4)]), ("ij->ji", [(3, 40)]), ("bhqd,bhkd->bhqk", [(1, 2, 5, 8), (1, 2, 6, 8)]),
    ("i,j->ij", [(5,), (7,)]), ("ij,ij->i", [(4, 9), (4, 9)]),
    ("...ii->...i", [(2, 3, 6, 6)]), ("ii", [(37, 37)]), ("...ij,...jk", [(2, 4, 5), (2, 5, 3)]),
    ("bii,bij->bj", [(3, 4, 4), (3, 4, 6)]),
])
def test_einsum_forms(equation: str, shapes: list) -> None:
    g = Graph()
    names = [g.input(f"x{i}", shape) for i, shape in enumerate(shapes)]
    g.output(g.node("Einsum", names, equation=equation))
    check(g)


def test_one_hot_of_labels_with_negative_and_large_indices() -> None:
    g = Graph()
    ids = g.input("ids", (3, 4), I64, np.array([[0, 3, -1, 9], [5, -4, 2, 1000], [7, 7, 0, -300]]))
    g.output(g.node("OneHot", [ids, g.const(8, np.int64), g.const([-1.0, 2.0])], axis=1))
    check(g)


def test_rotary_embedding_by_position_ids() -> None:
    g = Graph()
    x = g.input("x", (2, 3, 6, 8))
    positions = g.input("pos", (2, 6), I64, np.array([[0, 1, 2, 3, 4, 5], [9, 3, 0, 1, 7, 2]]))
    angles = np.arange(10)[:, None] * np.linspace(0.1, 1.0, 4)[None, :]
    cos, sin = g.const(np.cos(angles)), g.const(np.sin(angles))
    g.output(g.node("RotaryEmbedding", [x, cos, sin, positions]))
    g.output(g.node("RotaryEmbedding", [x, cos, sin, positions], interleaved=1))
    check(g, opset=23)


def test_attention_with_key_lengths_and_a_window() -> None:
    g = Graph()
    q, k, v = g.input("q", (2, 2, 3, 8)), g.input("k", (2, 2, 7, 8)), g.input("v", (2, 2, 7, 8))
    lengths = g.input("lengths", (2,), I64, np.array([5, 7]))
    g.output(g.node("Attention", [q, k, v, "", "", "", lengths], is_causal=1))
    check(g, opset=24)


@pytest.mark.parametrize("shape, axis", [((3, 5, 6, 4, 7), 1), ((4, 40, 3), 1), ((3, 7, 45), 2)])
def test_gather_elements_of_one_index_per_line_selects_in_place(shape: tuple[int, ...], axis: int) -> None:
    """A class label per position (the expanded NLL loss): compared and summed along the axis where it is,
    negative labels counting from the end."""
    g = Graph()
    x = g.input("x", shape)
    index_shape = tuple(1 if k == axis else n for k, n in enumerate(shape))
    labels = np.random.default_rng(15).integers(-shape[axis], shape[axis], index_shape)
    g.output(g.node("GatherElements", [x, g.input("labels", index_shape, I64, labels)], axis=axis))
    check(g)


def test_gather_elements_by_computed_indices_and_vector_matmuls() -> None:
    g = Graph()
    x = g.input("x", (4, 6, 5))
    ids = g.input("ids", (4, 3, 5), I64, np.random.default_rng(4).integers(-6, 6, (4, 3, 5)))
    g.output(g.node("GatherElements", [x, ids], axis=1))
    row, matrix = g.input("row", (6,)), g.input("m", (3, 6, 5))
    g.output(g.node("MatMul", [row, matrix]))
    g.output(g.node("MatMul", [matrix, g.input("col", (5,))]))
    check(g)


def test_instance_normalization() -> None:
    g = Graph()
    x = g.input("x", (2, 4, 5, 7))
    scale, bias = g.const(np.linspace(0.5, 2.0, 4)), g.const(np.linspace(-1.0, 1.0, 4))
    g.output(g.node("InstanceNormalization", [x, scale, bias], epsilon=1e-5))
    check(g)


def test_cumprod_dequantize_and_eye_like() -> None:
    g = Graph()
    x = g.input("x", (3, 6, 5), values=np.random.default_rng(8).uniform(0.5, 1.5, (3, 6, 5)))
    g.output(g.node("CumProd", [x, g.const(1, np.int64)], exclusive=1))
    q = g.input("q", (3, 6), 3, np.random.default_rng(9).integers(-128, 128, (3, 6)))  # int8: exact in bf16
    g.output(g.node("DequantizeLinear", [q, g.const([0.5, 0.25, 2.0]), g.const(np.array([1, -3, 0], np.int8), np.int8)],
                    axis=0))
    g.output(g.node("EyeLike", [g.input("shape", (4, 6))], k=1))
    check(g, opset=26)


def mod_graph(fmod: int) -> Graph:
    g = Graph()
    x = g.input("x", (3, 37), values=np.tile([0.0, -3.0, 3.0, -1.0, 1.0, 2.5, -7.25], 16)[:111].reshape(3, 37))
    y = g.input("y", (3, 37), values=np.tile([np.inf, np.inf, -np.inf, -np.inf, 2.0, -1.5], 19)[:111].reshape(3, 37))
    g.output(g.node("Mod", [x, y], fmod=fmod))
    return g


def test_fmod_by_infinities() -> None:
    """fmod(x, +-inf) = x, without an inf * 0 on the device."""
    check(mod_graph(1))


def test_float_mod_by_infinities_follows_the_onnx_reference() -> None:
    """x mod +-inf (fmod 0) is x, or the infinity when the signs differ. onnxruntime runs float Mod with
    fmod 0 only from opset 28, so onnx's reference judges."""
    from onnx.reference import ReferenceEvaluator

    g = mod_graph(0)
    model = g.model()
    feeds = {i.name: g.feeds[i.name] for i in model.graph.input}
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    actual = compiled.run(feeds)[model.graph.output[0].name]
    assert np.isinf(expected).any()
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    np.testing.assert_allclose(actual, expected, rtol=2e-2, atol=2e-2)


def test_equal_to_a_constant_infinity() -> None:
    """A fully masked row: max(-inf, ..) == -inf is one SFPU comparison with the scalar (the difference
    -inf - -inf would be NaN)."""
    g = Graph()
    values = np.where(np.random.default_rng(7).random((5, 3, 37)) < 0.5, -np.inf, 1.0)
    values[1] = -np.inf
    bias = g.input("bias", (5, 3, 37), values=values)
    row_max = g.node("ReduceMax", [bias, g.const([-1], np.int64)], keepdims=1)
    g.output(g.node("Equal", [row_max, g.const(-np.inf)]), BOOL)
    g.output(g.node("Equal", [bias, g.const(np.inf)]), BOOL)
    check(g)


def test_batch_normalization_with_computed_statistics() -> None:
    g = Graph()
    x = g.input("x", (2, 5, 7, 9))
    scale, bias, mean = g.input("s", (5,)), g.input("b", (5,)), g.input("m", (5,))
    var = g.input("v", (5,), values=np.random.default_rng(8).random(5) + 0.5)
    g.output(g.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-3))
    check(g)


def test_reductions_over_an_empty_dim_are_constants() -> None:
    """An empty input holds no data: a reduction over its empty dim is the reduction's identity, folded at
    compile time (no program), next to a device computation."""
    g = Graph()
    empty, x = g.input("empty", (2, 0, 4)), g.input("x", (2, 1, 4))
    axes = g.const([1], np.int64)
    g.output(g.node("Add", [g.node("ReduceSum", [empty, axes], keepdims=1), x]))
    g.output(g.node("ReduceProd", [empty, axes], keepdims=0))
    g.output(g.node("ReduceSumSquare", [empty, axes], keepdims=1))
    check(g)


def test_values_without_elements_are_constants_returned_without_device_work() -> None:
    """A value with no elements is known by its type: it becomes a constant in the importer, a graph
    output of it is made on the host (no buffer, no program, not a host op), and consumers drop it."""
    g = Graph()
    x = g.input("x", (20, 10, 5))
    nothing = g.node("Slice", [x, g.const([1000], np.int64), g.const([1000], np.int64), g.const([1], np.int64)])
    g.output(nothing)  # [20, 0, 5]
    g.output(g.node("Relu", [g.node("Concat", [nothing, x], axis=1)]))
    g.output(g.node("Reshape", [g.input("empty", (0, 3, 4)), g.const([3, 4, 0], np.int64)], allowzero=1))
    g.output(g.node("Shape", [x], start=2, end=1), I64)
    compiled = check(g)
    ops = [op.name for op in compiled.module.function("main").body.ops]
    assert ops.count("ttmetal.empty_tensor") == 3 and ops.count("ttmetal.enqueue_program") == 1


def test_training_dropout_draws_the_reference_mask_at_compile_time() -> None:
    """Training-mode Dropout with a seed: the mask is onnx's reference draw (numpy's RandomState(seed)), a
    constant, and the scaled product runs on the device. onnxruntime draws another mask, so the reference
    evaluator is the oracle here."""
    from onnx.reference import ReferenceEvaluator

    g = Graph()
    x = g.input("x", (3, 37, 41))
    y, mask = g.node("Dropout", [x, g.const(0.75), g.const(True, np.bool_)], outputs=2, seed=7)
    g.output(y)
    g.output(mask, BOOL)
    model = g.model(opset=22)
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    out = compiled.run(g.feeds)
    want_y, want_mask = ReferenceEvaluator(model).run(None, g.feeds)
    np.testing.assert_array_equal(out[mask], want_mask)
    np.testing.assert_allclose(out[y], want_y, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("ratio, training, seed, message", [
    (0.5, True, None, "training-mode Dropout without a seed"),
    (None, True, 1, "training-mode Dropout with a computed ratio"),
    (0.5, None, 1, "training_mode is computed"),
    (1.0, True, 1, r"the ratio 1 is outside \[0, 1\)"),
])
def test_training_dropout_that_ttc_cannot_draw_at_compile_time_is_a_user_error(ratio, training, seed,
                                                                              message: str) -> None:
    g = Graph()
    inputs = [g.input("x", (4, 8)),
              g.const(ratio) if ratio is not None else g.input("r", ()),
              g.const(training, np.bool_) if training is not None else g.input("t", (), elem=BOOL)]
    g.output(g.node("Dropout", inputs, **({} if seed is None else {"seed": seed})))
    with pytest.raises(UserError, match=rf"node '/Dropout_1' \(Dropout\): {message}"):
        ttc.compile(g.model(opset=22))


def test_lp_normalization_of_zero_vectors_and_all_of_booleans() -> None:
    g = Graph()
    values = np.random.default_rng(9).standard_normal((4, 37))
    values[:, 3] = 0.0  # a zero column: normalised along axis 0 it stays zero (0 / 0 is not taken)
    x = g.input("x", (4, 37), values=values)
    g.output(g.node("LpNormalization", [x], axis=0, p=2))
    g.output(g.node("LpNormalization", [x], axis=0, p=1))
    flags = g.input("flags", (3, 33), elem=BOOL)
    g.output(g.node("ReduceMin", [flags, g.const([1], np.int64)], keepdims=0), BOOL)
    check(g, opset=20)


def test_pow_by_an_integer_exponent_and_wide_dequantization() -> None:
    """A float base with small integer exponents stays on the device; int16 data is dequantized on the host."""
    g = Graph()
    base = g.input("base", (3, 35), values=np.random.default_rng(10).uniform(0.5, 1.5, (3, 35)))
    exponent = g.input("exponent", (3, 35), elem=I64, values=np.random.default_rng(11).integers(-3, 4, (3, 35)))
    g.output(g.node("Pow", [base, exponent]))
    wide = g.input("wide", (2, 33), elem=TensorProto.INT16, values=np.random.default_rng(12).integers(-3000, 3000, (2, 33)))
    g.output(g.node("DequantizeLinear", [wide, g.const(0.5), g.const(-1000, np.int16)]))
    check(g, opset=21, host_ops=1)


def run_within_node_test_tolerance(g: Graph, opset: int = 18, rtol: float = 2e-2) -> None:
    """Compile and run on the device, then compare every output with onnxruntime elementwise at the node
    tests' rule (rtol = atol = 2e-2, NaN and infinities in place; stricter than PCC for small values), or
    at a tighter `rtol`."""
    model = g.model(opset)
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    actual = compiled.run(g.feeds)
    for name, expected in run_onnxruntime(model, g.feeds).items():
        np.testing.assert_allclose(actual[name], expected, rtol=rtol, atol=rtol, err_msg=name)


def bf16_values(values: np.ndarray) -> np.ndarray:
    """Inputs the device holds exactly, so that a result differs from the host's only by the device's math."""
    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("shape, exponent_shape", [((3, 37, 41), (3, 37, 41)), ((2, 33, 256), (256,)),
                                                   ((5, 40, 70), (5, 40, 1))])
def test_pow_by_a_tensor_is_one_sfpu_power(shape, exponent_shape) -> None:
    """x ** y of two tensors (broadcast rows, columns; 8 tile columns, whose blocks run in Dst rounds of 4
    tiles), and 2 ** y by a splat base: one rounding of the float32 power, so within a bf16 ulp of the
    host's on bf16 inputs (exp(log(x) * y) with a bf16 rounding per step is off by up to 3 %)."""
    g = Graph()
    rng = np.random.default_rng(16)
    x = g.input("x", shape, values=bf16_values(rng.uniform(0.0, 30.0, shape)))
    y = g.input("y", exponent_shape, values=bf16_values(rng.uniform(-2.5, 2.5, exponent_shape)))
    g.output(g.node("Pow", [x, y]))
    g.output(g.node("Pow", [g.const(2.0), y]))
    run_within_node_test_tolerance(g, rtol=2**-8)


def test_pow_of_a_negative_base_by_integral_exponents() -> None:
    g = Graph()
    x = g.input("x", (3, 37), values=bf16_values(np.random.default_rng(17).uniform(-4.0, 4.0, (3, 37))))
    y = g.input("y", (3, 37), values=np.random.default_rng(18).integers(-3, 5, (3, 37)).astype(np.float32))
    g.output(g.node("Pow", [x, y]))
    run_within_node_test_tolerance(g, rtol=2**-8)


@pytest.mark.parametrize("op", ["Mish", "Softplus"])
def test_mish_and_softplus_over_their_tails(op: str) -> None:
    """Below x = -5.5, 1 + e^x rounds to 1 in bf16: one SFPU function keeps the tail that a chain loses. The
    spelt-out Mish (x * tanh(softplus(x)), its ONNX function body) becomes the same SFPU function."""
    g = Graph()
    x = g.input("x", (4, 2500), values=np.linspace(-10.0, 10.0, 10000).reshape(4, 2500))
    g.output(g.node(op, [x]))
    if op == "Mish":
        g.output(g.node("Mul", [x, g.node("Tanh", [g.node("Softplus", [x])])]))
    compiled = ttc.compile(g.model(18))
    functions = {op.attributes["fn"] for op in compiled.module.walk() if op.name == "ttkernel.sfpu_tiles"}
    assert functions == {op.lower()}
    run_within_node_test_tolerance(g)


def test_where_of_tensor_branches_selects_without_arithmetic() -> None:
    """Infinite and NaN elements in the branch not taken leave no trace (c * x + (1 - c) * y would turn
    0 * inf into NaN); a broadcast condition and a row branch are expanded in the kernel."""
    g = Graph()
    rng = np.random.default_rng(19)
    x_values = np.where(rng.random((3, 37, 41)) < 0.3, -np.inf, rng.standard_normal((3, 37, 41)))
    y_values = np.where(rng.random((37, 41)) < 0.3, np.nan, rng.standard_normal((37, 41)))
    mask = rng.random((37, 1)) < 0.5
    c = g.input("c", (37, 1), elem=BOOL, values=mask)
    x = g.input("x", (3, 37, 41), values=x_values)
    y = g.input("y", (37, 41), values=y_values)
    g.output(g.node("Where", [c, x, y]))
    g.output(g.node("Where", [g.input("d", (1, 41), elem=BOOL), y, x]))
    run_within_node_test_tolerance(g)


def test_fully_masked_attention_rows_become_zero() -> None:
    """The expanded Attention's NaN guard: a row whose mask is all false is -inf everywhere, its softmax NaN,
    and Where(row max == -inf, 0, softmax) must give exact zeros before the product with V."""
    g = Graph()
    q, k, v = g.input("q", (2, 6, 16)), g.input("k", (2, 7, 16)), g.input("v", (2, 7, 16))
    allowed = np.random.default_rng(20).random((2, 6, 7)) < 0.6
    allowed[:, 2] = False
    mask = g.input("mask", (2, 6, 7), elem=BOOL, values=allowed)
    scores = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 2, 1])])
    bias = g.node("Where", [mask, g.const(0.0), g.const(-np.inf)])
    probs = g.node("Softmax", [g.node("Add", [scores, bias])], axis=-1)
    masked_row = g.node("Equal", [g.node("ReduceMax", [bias, g.const([-1], np.int64)], keepdims=1),
                                  g.const(-np.inf)])
    g.output(g.node("MatMul", [g.node("Where", [masked_row, g.const(0.0), probs]), v]))
    run_within_node_test_tolerance(g)


def dynamic_quantization(g: Graph, x: str) -> None:
    """DynamicQuantizeLinear's function body: scale = (max(x, 0) - min(x, 0)) / 255, zero point =
    round(clip(-min / scale, 0, 255)), y = QuantizeLinear(x, scale, zero point)."""
    q_min, q_max = g.const(0.0), g.const(255.0)
    low = g.node("Min", [g.node("ReduceMin", [x], keepdims=0), q_min])
    high = g.node("Max", [g.node("ReduceMax", [x], keepdims=0), q_min])
    scale = g.node("Div", [g.node("Sub", [high, low]), q_max])
    zero_point = g.node("Round", [g.node("Clip", [g.node("Sub", [q_min, g.node("Div", [low, scale])]), q_min, q_max])])
    zero_point = g.node("Cast", [zero_point], to=TensorProto.UINT8)
    g.output(g.node("QuantizeLinear", [x, scale, zero_point]), TensorProto.UINT8)
    g.output(scale)
    g.output(zero_point, TensorProto.UINT8)


def test_dynamic_quantization_parameters_are_computed_on_the_host() -> None:
    """x / scale lands on halves (0.5 / (5 / 255) = 25.5, rounded to even): a bf16 scale from the device moves
    such integers by one, so the scale and zero point are host ops with the QuantizeLinear that uses them."""
    g = Graph()
    x = g.input("x", (6,), values=np.array([0.0, 2.0, -3.0, -2.5, 1.34, 0.5]))
    dynamic_quantization(g, x)
    compiled = check(g, opset=13, host_ops=12)
    assert not [op for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]


def test_quantization_by_a_computed_scale_of_other_data_keeps_the_scale_on_the_device() -> None:
    """Only the dynamic form moves to the host: a scale computed from another tensor is device math."""
    g = Graph()
    x = g.input("x", (3, 37), values=np.random.default_rng(21).uniform(-4.0, 4.0, (3, 37)))
    scale = g.node("Exp", [g.input("log_scale", (1,), values=np.array([-3.0]))])
    g.output(g.node("QuantizeLinear", [x, scale, g.const(128, np.uint8)]), TensorProto.UINT8)
    compiled = ttc.compile(g.model(13))
    assert compiled.manifest["host_ops"] == 1
    assert [op.attributes["kind"] for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"] == \
        ["eltwise"]


def test_scatters_run_on_the_host_between_device_ops() -> None:
    """Writes at run-time positions are host ops (no indexed-write kernel); their inputs and results stay
    on the device around them."""
    g = Graph()
    data = g.node("Relu", [g.input("data", (5, 37))])
    rows = g.input("rows", (2, 37), elem=I64, values=np.random.default_rng(13).integers(0, 5, (2, 37)))
    scattered = g.node("ScatterElements", [data, rows, g.input("updates", (2, 37))], axis=0, reduction="add")
    g.output(g.node("Sigmoid", [scattered]))
    where = g.input("where", (3, 1), elem=I64, values=np.array([[4], [0], [2]]))
    g.output(g.node("ScatterND", [data, where, g.input("rows_new", (3, 37))]))
    check(g, host_ops=2)


def test_bitcast_runs_on_the_host_on_the_inputs_bits() -> None:
    """BitCast reinterprets bits the device's bf16 values do not keep: a host op on the exact input, whose
    float result feeds the device."""
    g = Graph()
    bits = np.random.default_rng(16).uniform(-3, 3, (4, 33)).astype(np.float32).view(np.int32)
    floats = g.node("BitCast", [g.input("bits", (4, 33), elem=TensorProto.INT32, values=bits)], to=TensorProto.FLOAT)
    g.output(g.node("Relu", [floats]))
    check(g, opset=26, host_ops=1)


@pytest.mark.parametrize("depth", [1, 2])
def test_gather_nd_by_computed_indices(depth: int) -> None:
    """One-hot rows per index component (negative indices too), their outer product times the data's rows."""
    g = Graph()
    data = g.input("data", (6, 5, 37))
    rng = np.random.default_rng(15)
    columns = [rng.integers(-6, 6, (3, 4, 1)), rng.integers(-5, 5, (3, 4, 1))][:depth]
    indices = g.input("indices", (3, 4, depth), elem=I64, values=np.concatenate(columns, axis=-1))
    g.output(g.node("GatherND", [data, indices]))
    check(g)


def test_host_op_shapes_come_from_the_folded_inputs() -> None:
    """onnx's inference leaves a Range of a gathered shape unsized; the importer has folded it, so the host op
    that adds integer data to it is typed by inferring the node alone."""
    g = Graph()
    x = g.input("x", (2, 7))
    zero, one = g.const([0], np.int64), g.const([1], np.int64)
    first, step = g.node("Squeeze", [zero, zero]), g.node("Squeeze", [one, zero])
    length = g.node("Gather", [g.node("Shape", [x]), step])
    positions = g.node("Range", [first, length, step])
    offsets = g.input("offsets", (3, 1), elem=I64, values=np.array([[300], [-2], [5]]))
    g.output(g.node("Add", [g.node("Unsqueeze", [positions, zero]), offsets]), I64)
    check(g, host_ops=1)


def transpose_batched_13_ways() -> onnx.ModelProto:
    """A transpose moving the channels last through the segment path: a product batched 13 ways, one batch
    per core (the batches' offsets do not step affinely in groups)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),  # a transpose of the input itself is the host's
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 3, 2, 1], name="tr"),
             helper.make_node("Relu", ["t"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9, 13])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 13, 9, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_prime_count_of_units_runs_on_a_grid_with_a_repeating_core() -> None:
    """13 units form no rectangle of at most 12 columns: the grid is 7x2 and its 14th core repeats the last
    unit (same bytes to the same pages), so every core runs the same kernels in lockstep."""
    model = transpose_batched_13_ways()
    compiled = ttc.compile(model)
    grids = {str(op.attr("grid")) for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"}
    assert "#tt.grid<7x2>" in grids
    x = np.random.default_rng(17).standard_normal((1, 2, 9, 13)).astype(np.float32)
    assert compare("y", compiled.run({"x": x})["y"], run_onnxruntime(model, {"x": x})["y"]).passed


def test_an_op_no_grid_can_place_is_a_user_error() -> None:
    """With at most 8 cores (grid{max-cores=8}) the 13 batches kept one per core fit no grid: a clear
    compile error naming the node, not a crash in the layout pass."""
    from ttc.compiler import CompileOptions, compile_model, default_pipeline

    pipeline = default_pipeline().replace("grid{", "grid{max-cores=8,")
    with pytest.raises(UserError, match=r'node "tr": no blocking of .* fits 8 cores \(grid\{max-cores=8\}\) on e150: .*not supported yet'):
        compile_model(transpose_batched_13_ways(), CompileOptions(pipeline=pipeline))


@pytest.mark.parametrize("batch_axis, time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence_by_computed_lengths(batch_axis: int, time_axis: int) -> None:
    """The lengths are data (a graph input): compared with constants into a one-hot selection on the device."""
    g = Graph()
    shape = [0, 0, 35]
    shape[time_axis], shape[batch_axis] = 9, 4
    x = g.input("x", tuple(shape))
    lengths = g.input("lengths", (4,), elem=I64, values=np.array([9, 1, 0, 5]))
    g.output(g.node("ReverseSequence", [x, lengths], batch_axis=batch_axis, time_axis=time_axis))
    check(g)


def test_unique_of_data_returns_outputs_of_data_dependent_shape() -> None:
    """Unique's result lengths depend on the data: its host op's results have dynamic dims (`?`), which only
    values the graph returns may have; its input comes from the device."""
    g = Graph()
    x = g.input("x", (4, 7), values=np.random.default_rng(14).integers(-2, 3, (4, 7)))
    outputs = g.node("Unique", [g.node("Relu", [x])], outputs=4, axis=1, sorted=1)
    for name, elem in zip(outputs, [TensorProto.FLOAT, I64, I64, I64], strict=True):
        g.output(name, elem)
    compiled = check(g, host_ops=1)
    assert str(compiled.module.function("main").type.results[0]) == "tensor<4x?xf32>"


def test_a_data_dependent_shape_that_a_node_uses_is_a_user_error() -> None:
    g = Graph()
    unique = g.node("Unique", [g.input("x", (9,))], sorted=1)
    g.output(g.node("Relu", [unique]))
    with pytest.raises(UserError, match=r"node '/Unique_1' \(Unique\): output 'unique_1_0' has no static type .* \(only "
                                         r"a graph output that no node uses may have a data-dependent shape"):
        ttc.compile(g.model())


def test_reductions_over_many_batch_slices_merge_them_into_rows() -> None:
    """Beyond 64 batch slices reduced together with the rows (a loss over N x d1 x ... x dk), the reduced dims
    are merged into the rows instead of adding the slices one by one."""
    g = Graph()
    x = g.input("x", (5, 6, 7, 3, 40))
    g.output(g.node("ReduceSum", [x], keepdims=0))
    g.output(g.node("ReduceMean", [x, g.const([1, 2, 3], np.int64)], keepdims=1))
    g.output(g.node("ReduceMax", [x, g.const([1, 2, 3, 4], np.int64)], keepdims=0))
    check(g)


def test_a_function_body_that_needs_its_default_attributes_written_out() -> None:
    """MeanVarianceNormalization at opset 13 without `axes`: onnx's shape inference of its function body
    fails (a Constant reads the absent attribute), so the loader retries with the defaults written out."""
    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"], name="mvn")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(18).standard_normal((2, 3, 5, 7)).astype(np.float32)
    assert compare("y", ttc.compile(model).run({"x": x})["y"], run_onnxruntime(model, {"x": x})["y"]).passed


def test_tile_transpose_then_a_row_regrouping_reshape() -> None:
    g = Graph()  # AffineGrid's [N, 3, DHW] -> [N, DHW, 3] -> [N, D, H, W, 3]: a tile gather, then a row lookup
    x = g.input("x", (2, 3, 120))
    t = g.node("Transpose", [x], perm=[0, 2, 1])
    g.output(g.node("Reshape", [t, g.const([2, 4, 5, 6, 3], np.int64)]))
    check(g)


def test_an_op_defined_as_a_function_compiles_as_its_body() -> None:
    """AffineGrid has no converter; its ONNX schema defines it as a function of other ops, which the importer
    inlines (attributes bound), so the model compiles as those ops."""
    g = Graph()
    theta = g.input("theta", (2, 2, 3), values=np.random.default_rng(19).uniform(-1, 1, (2, 2, 3)))
    g.output(g.node("AffineGrid", [theta, g.const([2, 3, 5, 7], np.int64)], align_corners=1))
    check(g, opset=20)


def test_the_ops_of_an_inlined_function_are_named_after_its_node() -> None:
    """An op the function body needs and ttc lacks is reported at `<node>/<OpType>_<i>`."""
    node = helper.make_node("Bernoulli", ["x"], ["y"], name="coin")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    with pytest.raises(UserError, match=r"unsupported ONNX ops \(1 node\): RandomUniformLike \(node: coin/RandomUniformLike_0\)"):
        ttc.compile(model)


@pytest.mark.parametrize(("image", "block", "attrs"), [
    ((9, 7), (3, 3), {}),  # overlapping blocks add up
    ((10, 11), (2, 3), {"strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}),
])
def test_col2im_sums_blocks_back_into_the_image(image, block, attrs) -> None:
    """A constant 0/1 scatter matrix per image and channel: overlapping block values add up."""
    pads = attrs.get("pads", [0] * 4)
    counts = [(image[d] + pads[d] + pads[d + 2] - attrs.get("dilations", [1, 1])[d] * (block[d] - 1) - 1)
              // attrs.get("strides", [1, 1])[d] + 1 for d in range(2)]
    g = Graph()
    x = g.input("x", (2, 3 * block[0] * block[1], counts[0] * counts[1]))
    g.output(g.node("Col2Im", [x, g.const(list(image), np.int64), g.const(list(block), np.int64)], **attrs))
    check(g, opset=18)


@pytest.mark.parametrize(("shape", "attrs", "length"), [
    ((2, 12, 3, 1), {"axis": 1}, None),  # real input, full spectrum
    ((3, 2, 10, 2), {"axis": 2, "inverse": 1}, None),  # complex inverse
    ((1, 9, 4, 1), {"axis": 1, "onesided": 1}, 12),  # rfft of a zero-padded line
])
def test_dft_is_a_product_by_a_constant_matrix(shape, attrs, length) -> None:
    g = Graph()
    x = g.input("x", shape, values=np.random.default_rng(20).standard_normal(shape))
    inputs = [x, g.const(np.int64(length), np.int64) if length else ""]
    g.output(g.node("DFT", inputs, **attrs))
    check(g, opset=19)


def test_stft_frames_by_a_constant_gather() -> None:
    g = Graph()
    signal = g.input("signal", (2, 64, 1), values=np.random.default_rng(21).standard_normal((2, 64, 1)))
    # onesided given: onnx's shape inference takes an absent onesided as 0 (the schema's default is 1)
    g.output(g.node("STFT", [signal, g.const(np.int64(8), np.int64), "", g.const(np.int64(16), np.int64)],
                    onesided=1))
    check(g, opset=17)


# ----------------------------------------------------------------------------------------------
# GridSample: a grid computed at run time (a graph input)


def _grid(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Coordinates k/32 in about [-1.25, 1.25] (exact in bf16), no multiple of 1/2 (no rounding ties for nearest
    on the dims used here), some outside [-1, 1] so the padding modes matter."""
    k = np.random.default_rng(seed).integers(-40, 41, shape)
    return np.where(k % 16 == 0, k + 1, k) / 32.0


@pytest.mark.parametrize("align_corners", [0, 1])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_grid_sample_by_a_computed_grid(mode: str, padding_mode: str, align_corners: int) -> None:
    g = Graph()
    x = g.input("x", (2, 3, 5, 6))
    grid = g.input("grid", (2, 4, 7, 2), values=_grid((2, 4, 7, 2), 3))
    g.output(g.node("GridSample", [x, grid], mode=mode, padding_mode=padding_mode, align_corners=align_corners))
    if (mode, padding_mode) != ("cubic", "border"):
        check(g, opset=20)
        return
    # onnxruntime's bicubic border clamps differently from the spec's reference (the node tests' source)
    model = g.model(20)
    output = ttc.compile(model).run(g.feeds)
    expected = ReferenceEvaluator(model).run(None, g.feeds)[0]
    result = compare("y", next(iter(output.values())), expected)
    assert result.passed, result


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_grid_sample_opset_16_mode_names(mode: str) -> None:
    g = Graph()
    x = g.input("x", (1, 4, 6, 3))
    grid = g.input("grid", (1, 5, 5, 2), values=_grid((1, 5, 5, 2), 4))
    g.output(g.node("GridSample", [x, grid], mode=mode, padding_mode="reflection"))
    check(g, opset=16)


def test_grid_sample_rejects_dims_beyond_exact_bf16_positions() -> None:
    g = Graph()
    x = g.input("x", (1, 1, 300, 4))
    grid = g.input("grid", (1, 2, 2, 2), values=_grid((1, 2, 2, 2), 5))
    g.output(g.node("GridSample", [x, grid]))
    with pytest.raises(UserError, match=r"node '/GridSample_1' \(GridSample\): GridSample over a dim of 300 "
                                        r"\(positions above 252 do not compare exactly in bf16\)"):
        ttc.compile(g.model(20))
