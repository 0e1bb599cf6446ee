"""Golden tests of the CNN models of tests/models/cnn_models.py on the emulated Grayskull: compiled in bf16 with
no host ops, run on a standard normal image and compared with onnxruntime on every output (the probabilities
and the exposed logits) by `ttc.golden.compare` (PCC >= 0.99, relative L2 <= 0.05).

Each takes from seconds to minutes (compile, emulate, and the first time building the model into the model
cache), so all are marked slow: run them with `pytest -m slow tests/models/test_cnn_golden.py` (`.ci/run` does,
after the default suite). The torch exports need the `models` extra. The classifiers' probabilities pass
because `layout{precise-softmax}` (on by default) gives a host-read softmax and the activations it is
computed from Float16 (docs/architecture.md, section 8); their logits pass either way.
"""

from __future__ import annotations

import importlib.util

import cnn_models
import numpy as np
import onnx
import pytest

import ttc
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
    model = onnx.load(cnn_models.model_path(name))
    compiled = ttc.compile(model)
    assert compiled.manifest["host_ops"] == 0
    feeds = image_feeds(model)
    outputs = compiled.run(feeds)
    for output, expected in run_onnxruntime(model, feeds).items():
        result = compare(output, outputs[output], expected)
        assert result.passed, result
