"""Golden tests of the CNN models of tests/models/cnn_models.py on the emulated Grayskull: compiled in bf16 with
no host ops, run on a standard normal image and compared with onnxruntime on every output (the probabilities
and the exposed logits) by `ttc.golden.compare` (PCC >= 0.99, relative L2 <= 0.05).

Each takes from seconds to minutes (compile, emulate, and the first time building the model into the model
cache), so all are marked slow: run them with `pytest -m slow tests/models/test_cnn_golden.py` (`.ci/run` does,
after the default suite). The torch exports need the `models` extra.

bf16 is the default end to end. Where a classifier's bf16 probabilities miss the golden rule while its logits
pass (large logits of a 1000-class head: their absolute bf16 errors become relative errors after the
exponential), the golden report must say so and name `--softmax-precision f16` (`ttc.evaluate.softmax_hints`),
and that option must reduce the relative L2 error (it raises only the softmax and its logits op to Float16, so the logits'
own bf16 error from the layers before stays: light_vgg19's rel L2 goes 0.11 -> 0.09, not below 0.05). Every
other output must pass in bf16.
"""

from __future__ import annotations

import importlib.util

import cnn_models
import numpy as np
import onnx
import pytest

import ttc
from ttc.evaluate import softmax_hints
from ttc.golden import compare, run_onnxruntime

HAVE_TORCH = all(importlib.util.find_spec(name) for name in ("torch", "onnxscript"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs the `models` extra (torch, onnxscript) to export")

CASES = [
    pytest.param(name, marks=[pytest.mark.slow, *([needs_torch] if name in cnn_models.TORCH_MODELS else [])])
    for name in cnn_models.NAMES
]


def image_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(7)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input if i.name not in initializers}


@pytest.mark.parametrize("name", CASES)
def test_cnn_model_matches_onnxruntime(name: str) -> None:
    path = cnn_models.model_path(name)
    model = onnx.load(path)
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    feeds = image_feeds(model)
    outputs = compiled.run(feeds)
    expected = run_onnxruntime(model, feeds)
    results = [compare(output, outputs[output], value) for output, value in expected.items()]
    failed = [r for r in results if not r.passed]
    if not failed:
        return
    hints = softmax_hints(compiled, path, feeds, results, 0.99, 0.05)  # compare()'s defaults
    for result in failed:
        assert any(f"output '{result.name}'" in hint and "--softmax-precision f16" in hint for hint in hints), \
            (result, hints)
    precise = ttc.compile(model, softmax_precision="f16")
    precise_outputs = precise.run(feeds)
    for result in failed:
        again = compare(result.name, precise_outputs[result.name], expected[result.name])
        assert again.rel_l2_err < result.rel_l2_err, (result, again)
