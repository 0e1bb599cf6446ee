"""A classifier softmax against the golden rule (issue 5): the failure mode of the light zoo models at small scale.

Two He-scaled Gemms (4096 -> 4096 -> 1000 classes) give logits with a standard deviation of about 5, so each
row's 1000-way softmax is peaky, and an absolute logit error of 0.1 moves its top probabilities by about 10 %.
In a bf16 Dst every Gemm accumulates ~0.7 % relative error (four times the error of storing its result in
bf16): the logits pass the golden rule, some rows' probabilities do not. With `precise-softmax` (the default),
`layout` makes the softmax and the activations it is computed from Float16, whose Dst accumulates with three
more mantissa bits.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from test_cnn_ops import model_of

from ttc.compiler import CompileOptions, compile_model
from ttc.golden import compare, run_onnxruntime
from ttc.ir.printer import print_module

BATCH, WIDTH, CLASSES = 8, 4096, 1000


def classifier_head() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    init = {"w0": rng.standard_normal((WIDTH, WIDTH)) * np.sqrt(2 / WIDTH), "b0": rng.standard_normal(WIDTH) * 0.02,
            "w1": rng.standard_normal((CLASSES, WIDTH)) * np.sqrt(2 / WIDTH), "b1": rng.standard_normal(CLASSES) * 0.02}
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"], transB=1, name="/fc0"),
             helper.make_node("Relu", ["h"], ["r"], name="/relu"),
             helper.make_node("Gemm", ["r", "w1", "b1"], ["logits"], transB=1, name="/fc1"),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="/softmax")]
    return model_of(nodes, {"x": (BATCH, WIDTH)}, init, ["prob", "logits"])


@pytest.fixture(scope="module")
def head() -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, np.ndarray]]:
    model = classifier_head()
    feeds = {"x": (np.maximum(np.random.default_rng(101).standard_normal((BATCH, WIDTH)), 0) * 5).astype(np.float32)}
    return model, feeds, run_onnxruntime(model, feeds)


def run_head(head, precise: bool) -> tuple[dict[str, np.ndarray], str]:
    """Outputs and the printed program of the head compiled with precise-softmax on or off (the
    `softmax_precision` option, `--softmax-precision` on the command line)."""
    model, feeds, _ = head
    options = CompileOptions(softmax_precision="f16" if precise else "bf16")
    assert ("precise-softmax=true" in options.pipeline_spec) is precise
    compiled = compile_model(model, options)
    assert compiled.manifest["options"]["softmax_precision"] == options.softmax_precision
    return compiled.run(feeds), print_module(compiled.module)


def row_errors(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[float]:
    return [compare("prob", outputs["prob"][i], reference["prob"][i]).rel_l2_err for i in range(BATCH)]


def test_a_bf16_dst_fails_the_softmax_of_some_rows(head) -> None:
    outputs, program = run_head(head, precise=False)
    reference = head[2]
    assert "xf16" not in program
    assert compare("logits", outputs["logits"], reference["logits"]).passed
    assert max(row_errors(outputs, reference)) > 0.08


def test_float16_sources_pass_every_row(head) -> None:
    outputs, program = run_head(head, precise=True)
    reference = head[2]
    assert "8x1000xf16" in program and "8x4096xf16" not in program  # the logits, not the hidden layer
    assert compare("logits", outputs["logits"], reference["logits"]).rel_l2_err < 0.009
    errors = row_errors(outputs, reference)
    assert max(errors) < 0.045, errors
    for i in range(BATCH):
        assert compare("prob", outputs["prob"][i], reference["prob"][i]).passed


def test_the_golden_report_names_the_option_when_only_the_bf16_softmax_fails(head, tmp_path) -> None:
    """`ttc run --golden` on the bf16 head: the probabilities fail, the logits pass, and a note names
    --softmax-precision f16."""
    from ttc.cli import main

    model, feeds, _ = head
    onnx.save(model, tmp_path / "head.onnx")
    np.save(tmp_path / "x.npy", feeds["x"])
    code = main(["run", str(tmp_path / "head.onnx"), "--input", f"x={tmp_path / 'x.npy'}", "--golden",
                 "--json", str(tmp_path / "report.json")])
    assert code == 1
    import json

    notes = json.loads((tmp_path / "report.json").read_text())["notes"]
    assert len(notes) == 1 and "output 'prob'" in notes[0] and "logits 'logits' pass" in notes[0]
    assert "--softmax-precision f16" in notes[0]
