"""Full-size GPT-2 small and BERT-base (random weights) end to end: opt-in (`pytest -m slow`), as each
takes tens of seconds; benchmarks/bench_transformers.py prints the same figures with timings."""

from __future__ import annotations

import onnx
import pytest
from test_hf_models import HAVE_EXPORTER, exported, model_cache  # noqa: F401  (fixture)

import ttc
from ttc.evaluate import make_inputs
from ttc.golden import compare, run_onnxruntime

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_EXPORTER, reason="needs the `models` extra (torch, transformers, onnxscript)"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_full_size_model_passes_the_golden_rule_on_the_device(name: str, model_cache) -> None:  # noqa: F811
    path = exported(name, model_cache)
    compiled = ttc.compile(str(path))
    assert compiled.manifest["host_ops"] == 0
    memory = compiled.manifest["memory"]
    assert 0 < memory["l1_peak_bytes"] <= 1 << 20 and 0 < memory["dram_bytes"] <= 8 << 30
    feeds = make_inputs(compiled, {}, seed=0, model=onnx.load(str(path), load_external_data=False))
    outputs = compiled.run(feeds)
    for output, expected in run_onnxruntime(str(path), feeds).items():
        result = compare(output, outputs[output], expected)
        assert result.passed, (name, result)
