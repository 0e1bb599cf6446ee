"""Golden tests of the ops transformer exports use, one small ONNX graph each (onnx.helper): compiled, run on
the emulated Grayskull (bf16, HiFi4) with no host ops, and compared with onnxruntime by `ttc.golden.compare`
(floats: PCC >= 0.99 and relative L2 <= 0.05; integers and booleans: exactly). Shapes are odd on purpose
(rows and columns that are not multiples of 32, broadcasting in every direction), masks use float32's
lowest as exporters do, and integer/boolean results must match bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttc
from ttc.golden import compare, run_onnxruntime

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
F32_LOWEST = float(np.finfo(np.float32).min)
NP_TYPES = {F32: np.float32, I64: np.int64, BOOL: np.bool_, TensorProto.INT8: np.int8, TensorProto.INT16: np.int16,
            TensorProto.INT32: np.int32}


@dataclass
class Graph:
    """A one-graph ONNX model being built: inputs with their feed generators, nodes, initializers."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    outputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    count: int = 0

    def input(self, name: str, shape: tuple[int, ...], elem: int = F32, values: np.ndarray | None = None) -> str:
        rng = np.random.default_rng(len(self.inputs) + 1)
        if values is None:
            values = rng.standard_normal(shape) if elem == F32 else rng.integers(0, 2, shape)
        assert np.shape(values) == tuple(shape), (name, np.shape(values), shape)
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        self.feeds[name] = np.asarray(values).astype(NP_TYPES[elem])
        return name

    def const(self, values, dtype=np.float32) -> str:
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        self.count += 1
        names = [f"{op_type.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"/{op_type}_{self.count}", **attrs))
        return names[0] if outputs == 1 else names

    def output(self, name: str, elem: int = F32) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, None))

    def model(self, opset: int = 18) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "ops", self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def check(graph: Graph, opset: int = 18, host_ops: int = 0) -> ttc.compiler.CompiledModel:
    """Compile, run and compare every output with onnxruntime; the schedule must have `host_ops` host ops."""
    model = graph.model(opset)
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == host_ops
    outputs = compiled.run(graph.feeds)
    reference = run_onnxruntime(model, graph.feeds)
    for name, expected in reference.items():
        result = compare(name, outputs[name], expected)
        assert result.passed, result
    return compiled


# ----------------------------------------------------------------------------------------------
# Embedding lookups: exact rows, read by int32 ids on the device


@pytest.mark.parametrize(("vocab", "width", "ids_shape"), [(50, 70, (2, 37)), (1000, 128, (1, 128)),
                                                            (33, 40, (5,))])
def test_gather_of_a_table_is_an_exact_device_lookup(vocab: int, width: int, ids_shape: tuple[int, ...]) -> None:
    g = Graph()
    table = np.random.default_rng(0).standard_normal((vocab, width)).astype(np.float32)
    ids = g.input("ids", ids_shape, I64, np.random.default_rng(1).integers(0, vocab, ids_shape))
    g.output(g.node("Gather", [g.const(table), ids], axis=0))
    compiled = check(g)
    kinds = [op.attributes["kind"] for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]
    assert kinds == ["embedding"]
    out = compiled.run(g.feeds)[g.outputs[0].name]
    expected = table[g.feeds["ids"]].astype(ttc.ir.types.bf16.numpy_dtype()).astype(np.float32)
    np.testing.assert_array_equal(out, expected)  # rows copied as stored (bf16), never recomputed


def test_negative_ids_count_from_the_end_of_the_table() -> None:
    g = Graph()
    ids = g.input("ids", (1, 40), I64, (np.arange(40) % 14 - 7)[None])
    g.output(g.node("Gather", [g.const(np.random.default_rng(2).standard_normal((7, 64))), ids], axis=0))
    check(g)


def test_token_ids_cross_to_the_device_as_int32_row_major() -> None:
    g = Graph()
    ids = g.input("ids", (1, 40), I64, (np.arange(40) % 7)[None])
    g.output(g.node("Gather", [g.const(np.ones((7, 32))), ids], axis=0))
    compiled = ttc.compile(g.model())
    writes = [op for op in compiled.module.walk() if op.name == "ttmetal.write_buffer"]
    assert [str(op.operands[1].type) for op in writes] == \
        ["tensor<1x40xi32, #tt.layout<row_major, dram, interleaved>>"]


def test_reshaped_and_cast_token_ids_still_index_the_table() -> None:
    g = Graph()
    ids = g.input("ids", (2, 64), I64, np.random.default_rng(3).integers(0, 300, (2, 64)))
    flat = g.node("Reshape", [ids, g.const([-1, 128], np.int64)])
    ids32 = g.node("Cast", [flat], to=TensorProto.INT32)
    g.output(g.node("Gather", [g.const(np.random.default_rng(4).standard_normal((300, 96))), ids32], axis=0))
    check(g)


# ----------------------------------------------------------------------------------------------
# Booleans and comparisons: exact 0/1 on the device


@pytest.mark.parametrize("op_type", ["And", "Or", "Xor"])
def test_logical_binary_ops_are_exact(op_type: str) -> None:
    g = Graph()
    a, b = g.input("a", (3, 40, 1), BOOL), g.input("b", (1, 33), BOOL)
    g.output(g.node(op_type, [a, b]), BOOL)
    check(g)


def test_not_is_exact() -> None:
    g = Graph()
    g.output(g.node("Not", [g.input("a", (50, 70), BOOL)]), BOOL)
    check(g)


@pytest.mark.parametrize("op_type", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_comparisons_are_exact_with_ties_and_broadcasting(op_type: str) -> None:
    g = Graph()
    rng = np.random.default_rng(5)
    a = g.input("a", (2, 35, 40), F32, rng.integers(-3, 4, (2, 35, 40)))  # many ties
    b = g.input("b", (35, 1), F32, rng.integers(-3, 4, (35, 1)))
    g.output(g.node(op_type, [a, b]), BOOL)
    g.output(g.node(op_type, [a, g.const(np.float32(1.0))]), BOOL)
    check(g)


def test_isnan_is_exact() -> None:
    g = Graph()
    values = np.random.default_rng(6).standard_normal((40, 50))
    values[::3, ::7] = np.nan
    g.output(g.node("IsNaN", [g.input("x", (40, 50), F32, values)]), BOOL)
    check(g)


def test_casts_between_bool_int_and_float() -> None:
    g = Graph()
    mask = g.input("mask", (2, 45), I64, np.random.default_rng(7).choice([0, 1, 5, 100000], (2, 45)))
    x = g.input("x", (2, 45), F32, np.random.default_rng(8).choice([0.0, -0.5, 2.0, np.nan], (2, 45)))
    flags = g.node("Cast", [mask], to=BOOL)  # non-zero, however large, is true
    g.output(flags, BOOL)
    g.output(g.node("Cast", [flags], to=F32))
    g.output(g.node("Cast", [g.node("Cast", [x], to=BOOL)], to=I64), I64)  # NaN is true
    check(g)


def test_where_selects_exactly_and_never_makes_nan() -> None:
    g = Graph()
    cond = g.input("cond", (1, 1, 40, 40), BOOL)
    x = g.input("x", (2, 3, 40, 40))
    y = g.input("y", (40, 1))
    g.output(g.node("Where", [cond, x, y]))
    g.output(g.node("Where", [cond, g.const(np.float32(0.0)), g.const(np.float32(F32_LOWEST))]))
    compiled = check(g)
    outputs = compiled.run(g.feeds)
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_integer_arithmetic_of_unknown_range_runs_on_the_host() -> None:
    g = Graph()
    a = g.input("a", (4, 8), I64, np.random.default_rng(3).integers(-10**12, 10**12, (4, 8)))
    g.output(g.node("Add", [a, a]), I64)
    compiled = check(g, host_ops=1)
    assert [op.attr("op_type") for op in compiled.module.walk() if op.name == "ttmetal.host_compute"] == ["Add"]


def test_small_integer_arithmetic_from_booleans_runs_exactly() -> None:
    g = Graph()
    a, b = g.input("a", (33, 50), BOOL), g.input("b", (33, 50), BOOL)
    total = g.node("Add", [g.node("Cast", [a], to=I64), g.node("Cast", [b], to=I64)])  # in [0, 2]
    g.output(g.node("Mul", [total, g.const(np.int64(3), np.int64)]), I64)
    check(g)


# ----------------------------------------------------------------------------------------------
# Attention masks


def attention(g: Graph, seq: int, heads: int, dim: int, mask: str) -> str:
    """scores = q @ k^T / sqrt(dim) + mask, softmax over keys, @ v, from [1, seq, heads * dim] projections."""
    x = g.input("x", (1, seq, heads * dim))
    rng = np.random.default_rng(9)
    proj = [g.node("MatMul", [x, g.const(rng.standard_normal((heads * dim, heads * dim)) * 0.1)]) for _ in range(3)]
    split = [g.node("Reshape", [p, g.const([1, seq, heads, dim], np.int64)]) for p in proj]
    q = g.node("Transpose", [split[0]], perm=[0, 2, 1, 3])
    k = g.node("Transpose", [split[1]], perm=[0, 2, 3, 1])
    v = g.node("Transpose", [split[2]], perm=[0, 2, 1, 3])
    scores = g.node("Mul", [g.node("MatMul", [q, k]), g.const(np.float32(dim ** -0.5))])
    probs = g.node("Softmax", [g.node("Add", [scores, mask])], axis=-1)
    context = g.node("Transpose", [g.node("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    return g.node("Reshape", [context, g.const([1, seq, heads * dim], np.int64)])


@pytest.mark.parametrize("seq", [64, 50])
def test_bert_padding_mask_from_an_int64_attention_mask(seq: int) -> None:
    """BERT's export: mask int64 -> Cast(bool) -> GatherND (constant indices: a reshape) -> And -> Where(0, lowest)."""
    g = Graph()
    ones = np.ones((seq,), np.int64)
    ones[seq // 3:] = 0  # padding keys
    mask = g.input("attention_mask", (1, seq), I64, ones[None])
    flags = g.node("Cast", [mask], to=BOOL)
    indices = np.stack([np.zeros(seq, np.int64), np.arange(seq)], -1).reshape(1, 1, 1, seq, 2)
    keys = g.node("GatherND", [flags, g.const(indices, np.int64)])
    both = g.node("And", [g.const(np.ones((1, 1, seq, 1), bool), np.bool_), keys])
    additive = g.node("Where", [both, g.const(np.float32(0.0)), g.const(np.float32(F32_LOWEST))])
    g.output(attention(g, seq, heads=2, dim=32, mask=additive))
    check(g)


def test_gpt2_causal_mask_is_folded_at_compile_time() -> None:
    """GPT-2's export: the causal mask is an And/Where chain of constants, folded to one weight."""
    g = Graph()
    seq = 64
    causal = np.tril(np.ones((1, 1, seq, seq), bool))
    both = g.node("And", [g.const(np.array(True), np.bool_), g.const(causal, np.bool_)])
    additive = g.node("Where", [both, g.const(np.float32(0.0)), g.const(np.float32(F32_LOWEST))])
    g.output(attention(g, seq, heads=2, dim=32, mask=additive))
    compiled = check(g)
    assert not any(op.name in ("ttir.where", "ttir.logical_and") for op in compiled.module.walk())


# ----------------------------------------------------------------------------------------------
# Elementwise ops and activations


@pytest.mark.parametrize("op_type", ["Neg", "Reciprocal", "Abs"])
def test_unary_ops(op_type: str) -> None:
    g = Graph()
    values = np.random.default_rng(10).standard_normal((3, 45, 70)) + (3.0 if op_type == "Reciprocal" else 0.0)
    g.output(g.node(op_type, [g.input("x", (3, 45, 70), F32, values)]))
    check(g)


def gelu_tanh(g: Graph, x: str) -> str:
    """GPT-2's tanh GELU as its export spells it: Pow/Mul/Add/Tanh."""
    cube = g.node("Mul", [g.node("Pow", [x, g.const(np.float32(3.0))]), g.const(np.float32(0.044715))])
    inner = g.node("Mul", [g.node("Add", [x, cube]), g.const(np.float32(np.sqrt(2 / np.pi)))])
    return g.node("Mul", [g.node("Mul", [x, g.const(np.float32(0.5))]),
                          g.node("Add", [g.node("Tanh", [inner]), g.const(np.float32(1.0))])])


def test_tanh_gelu_pattern_is_fused_into_the_matmul() -> None:
    g = Graph()
    x = g.input("x", (50, 96))
    hidden = g.node("Add", [g.node("MatMul", [x, g.const(np.random.default_rng(11).standard_normal((96, 128)) * 0.1)]),
                            g.const(np.random.default_rng(12).standard_normal(128) * 0.1)])
    g.output(gelu_tanh(g, hidden))
    compiled = check(g)
    programs = [op for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]
    assert [p.attributes["kind"] for p in programs] == ["matmul"]
    assert any(op.name == "ttkernel.sfpu_tiles" and op.attributes["fn"] == "gelu_tanh" for op in programs[0].walk())


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op(approximate: str) -> None:
    g = Graph()
    g.output(g.node("Gelu", [g.input("x", (40, 70))], approximate=approximate))
    check(g, opset=20)


def test_expand_broadcasts_rows_columns_and_batches() -> None:
    g = Graph()
    g.output(g.node("Expand", [g.input("row", (1, 70)), g.const([3, 40, 70], np.int64)]))
    g.output(g.node("Expand", [g.input("col", (40, 1)), g.const([2, 40, 50], np.int64)]))
    check(g)


# ----------------------------------------------------------------------------------------------
# Data movement


def test_split_of_a_fused_qkv_projection() -> None:
    """GPT-2's c_attn output [1, seq, 3 * hidden] split in three along the last axis (tile-aligned)."""
    g = Graph()
    parts = g.node("Split", [g.input("x", (1, 50, 192))], outputs=3, axis=2, num_outputs=3)
    for name in parts:
        heads = g.node("Reshape", [name, g.const([1, 50, 2, 32], np.int64)])
        g.output(g.node("Transpose", [heads], perm=[0, 2, 1, 3]))
    check(g)


def test_slice_concat_squeeze_unsqueeze() -> None:
    g = Graph()
    x = g.input("x", (2, 64, 96))
    part = g.node("Slice", [x, g.const([32, 32], np.int64), g.const([64, 96], np.int64), g.const([1, 2], np.int64)])
    joined = g.node("Concat", [part, g.input("y", (2, 32, 64))], axis=2)
    g.output(g.node("Squeeze", [g.node("Unsqueeze", [joined, g.const([0], np.int64)]), g.const([0], np.int64)]))
    g.output(g.node("Concat", [x, x], axis=0))
    check(g)


def test_batched_matmul_over_heads_with_transposes() -> None:
    g = Graph()
    g.output(attention(g, 96, heads=3, dim=64, mask=g.const(np.zeros((1, 1, 96, 96), np.float32))))
    check(g)


# ----------------------------------------------------------------------------------------------
# Compile-time folding


def test_shape_arithmetic_is_folded_at_compile_time() -> None:
    """Shape -> Gather -> Concat -> Reshape, Range and ConstantOfShape: constants before any device op."""
    g = Graph()
    x = g.input("x", (2, 40, 64))
    shape = g.node("Shape", [x])
    batch = g.node("Gather", [shape, g.const(np.int64(0), np.int64)], axis=0)
    seq = g.node("Gather", [shape, g.const(np.int64(1), np.int64)], axis=0)
    target = g.node("Concat", [g.node("Unsqueeze", [batch, g.const([0], np.int64)]),
                               g.node("Unsqueeze", [seq, g.const([0], np.int64)]),
                               g.const([-1], np.int64)], axis=0)
    heads = g.node("Reshape", [x, target])
    positions = g.node("Range", [g.const(np.int64(0), np.int64), seq, g.const(np.int64(1), np.int64)])
    table = g.node("Gather", [g.const(np.random.default_rng(13).standard_normal((40, 64))), positions], axis=0)
    zeros = g.node("ConstantOfShape", [g.node("Shape", [table])],
                   value=numpy_helper.from_array(np.array([0.5], np.float32)))
    g.output(g.node("Add", [heads, g.node("Add", [table, zeros])]))
    compiled = check(g)
    kinds = [op.attributes["kind"] for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]
    assert "embedding" not in kinds  # the position lookup was folded into a weight


def test_folded_results_are_weights_when_large_and_inline_when_small() -> None:
    from ttc.frontend import import_model
    from ttc.ir.attributes import DenseAttr, WeightAttr

    g = Graph()
    x = g.input("x", (1, 64, 64))
    big = g.node("Transpose", [g.const(np.random.default_rng(14).standard_normal((64, 64)))], perm=[1, 0])
    small = g.node("Add", [g.const([1.0, 2.0]), g.const([3.0, 4.0])])
    g.output(g.node("MatMul", [x, big]))
    g.output(g.node("Mul", [g.node("Slice", [x, g.const([0], np.int64), g.const([2], np.int64),
                                              g.const([2], np.int64)]), small]))
    module = import_model(g.model())
    values = {op.loc.names()[0]: op.attributes["value"] for op in module.walk() if op.name == "ttir.constant"}
    assert isinstance(values["/Transpose_1"], WeightAttr) and module.weights["transpose_1_0"].shape == (64, 64)
    assert isinstance(values["/Add_2"], DenseAttr)
    check(g)


# ----------------------------------------------------------------------------------------------
# Reductions


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize(("shape", "axes", "keepdims"), [((3, 45, 70), [-1], 1), ((3, 45, 70), [1], 0),
                                                         ((2, 40, 50), [1, 2], 1), ((4, 33, 64), [0], 0),
                                                         ((2, 50, 800), [-1], 1)])
def test_reductions(op_type: str, shape: tuple[int, ...], axes: list[int], keepdims: int) -> None:
    g = Graph()
    values = np.random.default_rng(15).standard_normal(shape) - (2.0 if op_type == "ReduceMax" else 0.0)
    x = g.input("x", shape, F32, values)  # a max of negative values: padding must not win
    g.output(g.node(op_type, [x, g.const(axes, np.int64)], keepdims=keepdims))
    check(g)


def test_long_sums_are_summed_in_groups() -> None:
    """A sum of 3072 values: groups of tiles in separate Dst slots, so no chain of bf16 roundings runs the
    whole line; closer to the exact sum than one long chain."""
    g = Graph()
    values = np.random.default_rng(16).standard_normal((32, 3072)) * 0.1 + 0.05
    g.output(g.node("ReduceSum", [g.input("x", (32, 3072), F32, values), g.const([-1], np.int64)]))
    compiled = check(g)
    out = compiled.run(g.feeds)[g.outputs[0].name]
    exact = g.feeds["x"].astype(np.float64).sum(axis=-1, keepdims=True)
    assert np.abs(out - exact).max() / np.abs(exact).max() < 1e-2


# ----------------------------------------------------------------------------------------------
# Matmul accuracy and ragged splits


def matmul_graph(m: int, k: int, n: int, seed: int = 17) -> Graph:
    g = Graph()
    rng = np.random.default_rng(seed)
    x = g.input("x", (m, k), F32, rng.standard_normal((m, k)))
    g.output(g.node("MatMul", [x, g.const(rng.standard_normal((k, n)) * k ** -0.5)]))
    return g


def compile_with(model: onnx.ModelProto, pipeline_options: str = "") -> ttc.compiler.CompiledModel:
    from ttc.compiler import CompileOptions, compile_model, default_pipeline

    pipeline = default_pipeline().replace("grid{math-fidelity=hifi4}", f"grid{{math-fidelity=hifi4{pipeline_options}}}")
    return compile_model(model, CompileOptions(pipeline=pipeline))


def test_long_k_is_accumulated_in_chunks_independent_of_the_grid() -> None:
    """K = 3072 (GPT-2's MLP down-projection): chunked bf16 accumulation is closer to the exact product than
    one chain would be, and any grid gives the same bits (the chunks depend on K only)."""
    g = matmul_graph(64, 3072, 96)
    model = g.model()
    many = compile_with(model).run(g.feeds)[g.outputs[0].name]
    few = compile_with(model, " max-cores=2").run(g.feeds)[g.outputs[0].name]
    np.testing.assert_array_equal(many, few)
    x, w = g.feeds["x"].astype(np.float64), numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    exact = x @ w
    assert np.linalg.norm(many - exact) / np.linalg.norm(exact) < 8e-3  # one bf16 chain over K: ~1.6e-2


def test_prime_output_width_splits_raggedly_over_many_cores() -> None:
    """N = 109 tiles (a prime above the 108 cores, like GPT-2's 1571-tile vocabulary): ceil(109 / cores)
    columns per core, the last core taking the remainder, instead of one core doing them all."""
    g = matmul_graph(32, 64, 109 * 32 - 15)
    compiled = check(g)
    (program,) = [op for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]
    assert program.attributes["grid"].num_cores > 2
    assert any(len(op.operands) == 3 for op in program.walk() if op.name == "ttkernel.noc_write_tiles")


# ----------------------------------------------------------------------------------------------
# Data movement off tile boundaries


def kinds(compiled: ttc.compiler.CompiledModel) -> list[str]:
    return [op.attributes["kind"] for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]


@pytest.mark.parametrize("axis", [-1, -2])
def test_unaligned_concat_is_exact(axis: int) -> None:
    """Concatenating 45 + 30 columns (or rows) is not tile-granular: selection matmuls place each input."""
    g = Graph()
    a = g.input("a", (3, 45, 50))
    b = g.input("b", (3, 30, 50) if axis == -2 else (3, 45, 30))
    g.output(g.node("Concat", [a, b], axis=axis))
    compiled = check(g)
    out = compiled.run(g.feeds)[g.outputs[0].name]
    bf16 = ttc.ir.types.bf16.numpy_dtype()
    expected = np.concatenate([g.feeds["a"], g.feeds["b"]], axis=axis).astype(bf16).astype(np.float32)
    np.testing.assert_array_equal(out, expected)  # moved, never rounded
    assert "matmul" in kinds(compiled)


def test_unaligned_and_strided_slices_are_exact() -> None:
    g = Graph()
    x = g.input("x", (2, 70, 90))
    g.output(g.node("Slice", [x, g.const([1, 5, 3], np.int64), g.const([2, 60, 80], np.int64),
                              g.const([0, 1, 2], np.int64), g.const([1, 2, 3], np.int64)]))
    g.output(g.node("Slice", [x, g.const([-1], np.int64), g.const([-1000], np.int64), g.const([2], np.int64),
                              g.const([-1], np.int64)]))  # reversed columns
    compiled = check(g)
    bf16 = ttc.ir.types.bf16.numpy_dtype()
    x_bf16 = g.feeds["x"].astype(bf16).astype(np.float32)
    outputs = compiled.run(g.feeds)
    np.testing.assert_array_equal(outputs[g.outputs[0].name], x_bf16[1:2, 5:60:2, 3:80:3])
    np.testing.assert_array_equal(outputs[g.outputs[1].name], x_bf16[:, :, ::-1])


def test_reshape_regrouping_rows_goes_through_rows() -> None:
    """[2, 40, 96] -> [80, 96] mixes rows of two matrices in one tile: untilize, then a row lookup. A graph
    input is written row-major by the host instead, so only the lookup runs on the device."""
    g = Graph()
    x = g.input("x", (2, 40, 96))
    g.output(g.node("Reshape", [g.node("Relu", [x]), g.const([80, 96], np.int64)]))
    g.output(g.node("Reshape", [x, g.const([80, 96], np.int64)]))
    compiled = check(g)
    assert kinds(compiled) == ["eltwise", "untilize", "embedding", "embedding"]


def test_gather_with_constant_indices_is_a_data_movement() -> None:
    g = Graph()
    x = g.input("x", (4, 64, 64))
    g.output(g.node("Gather", [x, g.const([3, 0, 1, 2], np.int64)], axis=0))  # runs [3] and [0, 1, 2]
    g.output(g.node("Gather", [x, g.const(np.int64(-1), np.int64)], axis=0))  # a scalar index
    compiled = check(g)
    assert set(kinds(compiled)) <= {"data_movement"}
