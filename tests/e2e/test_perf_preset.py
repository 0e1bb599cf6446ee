"""`--perf-preset published` (issue 21 item 4): bfp8_b matmul weights and the activations only matmuls read (but
inside a post-norm residual block only the operands whose bits HiFi2 drops anyway, the a operands), HiFi2
matmuls, HiFi4 softmax and norm statistics, bf16 everywhere else and in every program's intermediates; the
emulators agree bit for bit and the golden rule holds. The published model configurations run in
tests/models/test_families.py (slow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from test_cnn_ops import model_of

import ttc
from ttc.cli import main
from ttc.compiler import PERF_PRESETS, CompileOptions, compile_model
from ttc.golden import compare, run_onnxruntime
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttmetal
from ttc.ir.dialects.tt import E150
from ttc.passes.ops import row_split
from ttc.passes.ops.geometry import CB_OUT
from ttc.profile import format_profile, program_fidelity, settings_line, static_profile
from ttc.runtime.accounting import cb_formats

ROWS, WIDTH = 64, 256


def block() -> onnx.ModelProto:
    """x -> Gemm + Relu -> Gemm -> LayerNormalization -> Gemm -> Softmax (and the norm's result as an output)."""
    rng = np.random.default_rng(3)
    scale = np.sqrt(2 / WIDTH)
    init = {f"w{i}": rng.standard_normal((WIDTH, WIDTH)) * scale for i in range(3)}
    init |= {"b0": rng.standard_normal(WIDTH) * 0.1, "gamma": 1 + 0.1 * rng.standard_normal(WIDTH),
             "beta": 0.1 * rng.standard_normal(WIDTH)}
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], name="/fc0"),
             helper.make_node("Relu", ["h"], ["r"], name="/relu"),
             helper.make_node("Gemm", ["r", "w1"], ["y"], name="/fc1"),
             helper.make_node("LayerNormalization", ["y", "gamma", "beta"], ["n"], axis=-1, name="/ln"),
             helper.make_node("Gemm", ["n", "w2"], ["logits"], name="/fc2"),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="/softmax")]
    return model_of(nodes, {"x": (ROWS, WIDTH)}, init, ["prob", "n"])


@pytest.fixture(scope="module")
def compiled():
    return ttc.compile(block(), perf_preset="published")


def programs(model) -> list:
    return [op for op in model.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]


def test_the_preset_sets_formats_and_fidelities(compiled) -> None:
    options = compiled.manifest["options"]
    assert (options["perf_preset"], options["dtype"], options["math_fidelity"]) == ("published", "bfp8_b", "hifi2")
    assert "layout{dtype=bfp8_b activations=bfp8_b matmul-fidelity=hifi2}" in options["pipeline"]
    assert "grid{math-fidelity=hifi2 reduce-fidelity=hifi4}" in options["pipeline"]
    fidelities: dict[str, set[str]] = {}
    for p in static_profile(compiled.module, compiled.device_weights):
        fidelities.setdefault(p.kind, set()).add(program_fidelity(p))
    assert fidelities["matmul"] == {"hifi2"}
    assert fidelities["layer_norm"] == fidelities["softmax"] == {"hifi4"}


def test_only_values_read_by_matmuls_and_weights_are_bfp8_b(compiled) -> None:
    """fc0's relu result feeds only fc1: bfp8_b; fc1's result feeds the norm, the norm's is an output, fc2's
    feeds the softmax: bf16. A program writing bfp8_b keeps its partial sums and temporaries in bf16. No
    post-norm residual block: the weights are bfp8_b."""
    outputs = {}
    for op in programs(compiled):
        formats = cb_formats(op)
        outputs[str(op.loc)] = formats[CB_OUT]
        if formats[CB_OUT] == "bfp8_b":
            assert all(fmt == "bf16" for index, fmt in formats.items() if index > CB_OUT), formats
    assert sorted(outputs.values()) == ["bf16"] * (len(outputs) - 1) + ["bfp8_b"], outputs
    weights = [t for name, t in compiled.device_weights.items() if name.startswith("w")]
    assert weights and all(t.shape[1] == 1088 for t in weights)  # bfp8_b tiles


def test_the_emulators_agree_and_the_golden_rule_holds(compiled) -> None:
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((ROWS, WIDTH)).astype(np.float32)}
    native = compiled.run(feeds)
    counted = [p.counts for p in compiled.profile]
    assert counted == [p.counts for p in static_profile(compiled.module, compiled.device_weights)]
    reference = compiled.run(feeds, emulator="reference")
    for name in native:
        np.testing.assert_array_equal(native[name], reference[name])
    expected = run_onnxruntime(block(), feeds)
    for name in ("prob", "n"):
        assert compare(name, native[name], expected[name]).passed, name
    default = ttc.compile(block()).run(feeds)
    assert not np.array_equal(default["n"], native["n"])  # the preset changed the numerics


def test_bf16_stays_the_default() -> None:
    options = CompileOptions()
    assert (options.dtype, options.math_fidelity, options.perf_preset) == ("bf16", "hifi4", "")
    assert "activations" not in options.pipeline_spec and "perf_preset" not in options.to_json()
    assert set(PERF_PRESETS) == {"published"}


def test_a_preset_with_its_own_settings_or_an_unknown_one_is_a_user_error(tmp_path, capsys) -> None:
    with pytest.raises(UserError, match=r"perf_preset published sets the data formats .* drop dtype"):
        ttc.compile(block(), perf_preset="published", dtype="bf16")
    with pytest.raises(UserError, match="unknown perf preset 'fast'"):
        ttc.compile(block(), perf_preset="fast")
    path = tmp_path / "block.onnx"
    onnx.save(block(), path)
    assert main(["compile", str(path), "--perf-preset", "published", "--math-fidelity", "lofi", "-q"]) == 2
    assert "drop --math-fidelity" in capsys.readouterr().err
    assert main(["compile", str(path), "--perf-preset", "published", "-o", str(tmp_path / "b.ttc"), "-q"]) == 0
    assert ttc.load(tmp_path / "b.ttc").manifest["options"]["perf_preset"] == "published"


def test_the_profile_states_the_formats_and_fidelities(compiled) -> None:
    profile = static_profile(compiled.module, compiled.device_weights)
    text = format_profile(profile, E150, module=compiled.module)
    header, _, *rows = text.splitlines()
    assert "fidelity" in header and "formats" in header
    matmuls = [row for row in rows if row.split()[:2][1:] == ["matmul"]]
    assert len(matmuls) == 3 and all(" hifi2 " in row for row in matmuls)
    assert any(" bf16,bfp8_b>bfp8_b " in row for row in matmuls)  # fc0 writes the activation only fc1 reads
    assert any(" bfp8_b>bf16 " in row for row in matmuls)  # fc1 reads it and its bfp8_b weight
    settings = next(row for row in rows if row.startswith("formats: "))
    assert "weights bf16 " in settings and "bfp8_b 3 (" in settings
    assert "matmuls hifi2 3" in settings and "other programs hifi4 2" in settings
    default = ttc.compile(block())
    plain = settings_line(default.module, static_profile(default.module, default.device_weights))
    assert "bfp8_b" not in plain and "matmuls hifi4 3" in plain


def test_a_layer_norm_read_only_by_a_matmul_keeps_the_golden_rule() -> None:
    """A layer norm whose result only a matmul reads writes bfp8_b under the preset; its few long rows are split
    over cores as in bf16, the partials, statistics and exchange scratch in bf16 (`work_format`: with them in
    bfp8_b the split norm came out with PCC 0.08), only the result in bfp8_b; it passes golden on both emulators."""
    rng = np.random.default_rng(3)
    rows, width = 32, 768
    init = {f"w{i}": rng.standard_normal((width, width)) / np.sqrt(width) for i in range(2)}
    init |= {"gamma": 1 + 0.1 * rng.standard_normal(width), "beta": 0.1 * rng.standard_normal(width)}
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["y"], name="/fc1"),
             helper.make_node("LayerNormalization", ["y", "gamma", "beta"], ["n"], axis=-1, name="/ln"),
             helper.make_node("Gemm", ["n", "w1"], ["logits"], name="/fc2"),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="/softmax")]
    model = model_of(nodes, {"x": (rows, width)}, init, ["prob"])
    feeds = {"x": rng.standard_normal((rows, width)).astype(np.float32)}
    expected = run_onnxruntime(model, feeds)["prob"]

    default = ttc.compile(model)
    preset = ttc.compile(model, perf_preset="published")
    [norm] = [op for op in preset.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name
              and op.attributes["kind"] == "layer_norm"]
    formats = cb_formats(norm)
    assert norm.attributes["grid"].num_cores > 1 and formats[row_split.CB_PARTS] == "bf16"  # split, bf16 partials
    assert formats[CB_OUT] == "bfp8_b"
    native, reference = preset.run(feeds), preset.run(feeds, emulator="reference")
    np.testing.assert_array_equal(native["prob"], reference["prob"])
    assert compare("prob", native["prob"], expected).passed
    assert compare("prob", default.run(feeds)["prob"], expected).passed


def attention(post_norm: bool) -> onnx.ModelProto:
    """One attention head in a residual block: h = norm(x); y = h + out(softmax(q k^T / 8) v) with q, k, v
    projections of h, then (post-norm, as BERT) norm(y), else y itself (the stream runs on)."""
    rng = np.random.default_rng(5)
    seq, width = 64, 64
    init = {name: rng.standard_normal((width, width)) / np.sqrt(width) for name in ("wq", "wk", "wv", "wo")}
    init |= {"scale": np.array(0.125), "gamma": 1 + 0.1 * rng.standard_normal(width),
             "beta": 0.1 * rng.standard_normal(width)}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1, name="/ln0"),
             helper.make_node("MatMul", ["h", "wq"], ["q"], name="/q"),
             helper.make_node("MatMul", ["h", "wk"], ["k"], name="/k"),
             helper.make_node("MatMul", ["h", "wv"], ["v"], name="/v"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0], name="/kt"),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="/scores"),
             helper.make_node("Mul", ["s", "scale"], ["scaled"], name="/scale"),
             helper.make_node("Softmax", ["scaled"], ["p"], axis=-1, name="/softmax"),
             helper.make_node("MatMul", ["p", "v"], ["ctx"], name="/context"),
             helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="/out"),
             helper.make_node("Add", ["h", "o"], ["y"], name="/residual")]
    if post_norm:
        nodes.append(helper.make_node("LayerNormalization", ["y", "gamma", "beta"], ["z"], axis=-1, name="/ln1"))
    return model_of(nodes, {"x": (seq, width)}, init, ["z" if post_norm else "y"])


@pytest.mark.parametrize("post_norm, fidelity, operand_b", [(True, "hifi2", "bf16"), (True, "lofi", "bfp8_b"),
                                                            (False, "hifi2", "bfp8_b")])
def test_block_floats_in_a_post_norm_block_go_where_the_fidelity_drops_the_bits(post_norm: bool, fidelity: str,
                                                                                operand_b: str) -> None:
    """layout's matmul-fidelity: in a post-norm block HiFi2 reads 6 mantissa bits of operand a (in0), what bfp8_b
    holds, and all 7 of operand b (in1), so q, the softmax's probabilities and the context (operands a) become
    bfp8_b while the weights, k^T and v (operands b) stay bf16; at LoFi (4 bits of operand b) both are bfp8_b;
    in a pre-norm block (the sum runs on unnormalised) the operands b are bfp8_b at HiFi2 too. The golden
    rule holds."""
    pipeline = (f"decompose,canonicalize,channels-last,tilize,fuse,canonicalize,"
                f"layout{{dtype=bfp8_b activations=bfp8_b matmul-fidelity={fidelity}}},"
                f"grid{{math-fidelity={fidelity} reduce-fidelity=hifi4}},lower-to-kernels,allocate")
    model = attention(post_norm)
    compiled = compile_model(model, CompileOptions(pipeline=pipeline))
    formats = {str(op.loc): cb_formats(op) for op in programs(compiled)}
    for name in ("/scores", "/context", "/out"):
        read = next(f for loc, f in formats.items() if f'"{name}"' in loc)
        assert (read[0], read[1]) == ("bfp8_b", operand_b), (name, formats)
    if fidelity == "hifi2":
        feeds = {"x": np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)}
        name = "z" if post_norm else "y"
        assert compare(name, compiled.run(feeds)[name], run_onnxruntime(model, feeds)[name]).passed


@pytest.mark.parametrize("fidelity", ["lofi", "hifi2", "hifi3", "hifi4"])
def test_the_fidelity_table_is_what_the_matrix_unit_reads(fidelity: str) -> None:
    """layout.FIDELITY_MANTISSA_BITS against the emulator's definition of the multiplier (runtime.numerics):
    at LoFi and HiFi2 a fidelity's products are the products of the operands cut to the table's mantissa
    bits; where the table says all 7, changing an operand's last mantissa bit changes the products."""
    from ttc.passes.layout import FIDELITY_MANTISSA_BITS
    from ttc.runtime.numerics import MathFidelity, _fidelity_terms, bf16_round

    def cut(x: np.ndarray, bits: int) -> np.ndarray:
        mask = np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
        return (x.astype(np.float32).view(np.uint32) & mask).view(np.float32)

    def products(in0: np.ndarray, in1: np.ndarray) -> np.ndarray:
        return sum(left * right for left, right in _fidelity_terms(in0, in1, MathFidelity.parse(fidelity)))

    rng = np.random.default_rng(7)
    in0, in1 = (bf16_round(rng.standard_normal(4096).astype(np.float32)) for _ in range(2))
    bits0, bits1 = FIDELITY_MANTISSA_BITS[fidelity]
    if fidelity in ("lofi", "hifi2"):
        np.testing.assert_array_equal(products(in0, in1), cut(in0, bits0).astype(np.float64) * cut(in1, bits1))
    last_bit = np.float32(2.0 ** -7)  # bf16's last mantissa bit of a value in [1, 2)
    one = np.ones(1, np.float32)
    for bits, (a, b) in ((bits0, (one + last_bit, one)), (bits1, (one, one + last_bit))):
        assert (products(a, b)[0] != products(one, one)[0]) == (bits == 7), (fidelity, bits)
