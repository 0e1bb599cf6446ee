"""The tiny Hugging Face GPT-2 and BERT exports (tests/models/export_hf.py: dynamo exporter, opset 18,
external data, random weights) compile, run entirely on the emulated device (no host ops) and pass the
golden rule against onnxruntime: PCC >= 0.99 and relative L2 error <= 0.05 at bf16 / HiFi4.

The models are exported once into $TTC_MODEL_CACHE, or else pytest's cache folder (.pytest_cache), and
reused (an export takes a few seconds, mostly importing torch). Without torch, transformers and
onnxscript (the `models` extra) the tests skip.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import ttc
from ttc.evaluate import make_inputs
from ttc.golden import compare, run_onnxruntime

HAVE_EXPORTER = all(importlib.util.find_spec(name) for name in ("torch", "transformers", "onnxscript"))
pytestmark = [
    pytest.mark.skipif(not HAVE_EXPORTER, reason="needs the `models` extra (torch, transformers, onnxscript) to "
                                                 "export the Hugging Face models"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.export's own deprecations while exporting
]
TINY = ("gpt2-tiny", "bert-tiny")


@pytest.fixture(scope="session")
def model_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("TTC_MODEL_CACHE")
    if env:
        return Path(env)
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider: export per session
    return Path(cache.mkdir("ttc-models")) if cache is not None else tmp_path_factory.mktemp("ttc-models")


def exported(name: str, cache: Path) -> Path:
    """The model exported into the cache (once: a lock keeps parallel test workers from exporting twice)."""
    import export_hf

    path = export_hf.model_path(name, cache)
    if path.exists():
        return path  # without importing torch
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return export_hf.export(name, cache)


@pytest.fixture(scope="module", params=TINY)
def tiny(request: pytest.FixtureRequest, model_cache: Path) -> tuple[str, Path, ttc.compiler.CompiledModel]:
    path = exported(request.param, model_cache)
    return request.param, path, ttc.compile(str(path))


def test_tiny_model_passes_the_golden_rule(tiny) -> None:
    name, path, compiled = tiny
    model = onnx.load(str(path), load_external_data=False)
    feeds = make_inputs(compiled, {}, seed=0, model=model)
    outputs = compiled.run(feeds)
    reference = run_onnxruntime(str(path), feeds)
    for output, expected in reference.items():
        result = compare(output, outputs[output], expected)
        assert result.passed, (name, result)
        assert result.pcc >= 0.999, (name, result)  # well inside the rule, not at its edge


def test_tiny_model_runs_entirely_on_the_device(tiny) -> None:
    name, _, compiled = tiny
    assert compiled.manifest["host_ops"] == 0, name
    main = compiled.module.function("main")
    assert {op.name for op in main.body.ops} <= {
        "ttmetal.create_buffer", "ttmetal.write_buffer", "ttmetal.write_constant", "ttmetal.enqueue_program",
        "ttmetal.read_buffer", "ttmetal.deallocate", "func.return"}
    kinds = {op.attributes["kind"] for op in main.body.ops if op.name == "ttmetal.enqueue_program"}
    assert "embedding" in kinds  # the token lookup is a device program, not a host take


def test_bert_padding_mask_is_exact_on_the_device(model_cache: Path) -> None:
    """Masked keys get float32's lowest (saturated to bf16's) before the softmax: they must contribute
    nothing, so changing the hidden states of padded positions' keys cannot change the unpadded rows."""
    path = exported("bert-tiny", model_cache)
    compiled = ttc.compile(str(path))
    ids = np.random.default_rng(0).integers(0, 1000, (1, 128)).astype(np.int64)
    mask = np.ones((1, 128), np.int64)
    mask[0, 100:] = 0
    other_ids = ids.copy()
    other_ids[0, 100:] = (ids[0, 100:] + 7) % 1000  # different tokens at masked positions only
    first = compiled.run({"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
    second = compiled.run({"input_ids": other_ids, "attention_mask": mask})["last_hidden_state"]
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first[0, :100], second[0, :100])


def test_per_op_golden_on_a_tiny_model(tiny) -> None:
    """Every device program of the tiny model passes at its last ONNX node (the exporter's node names)."""
    from ttc.per_op import check_per_op, first_failure

    name, path, compiled = tiny
    model = onnx.load(str(path), load_external_data=False)
    checks = check_per_op(compiled, path, make_inputs(compiled, {}, seed=0, model=model))
    compared = [c for c in checks if c.passed is not None]
    assert len(compared) >= len(checks) * 3 // 4, (name, [c.note for c in checks if c.passed is None])
    assert first_failure(checks) is None, (name, first_failure(checks))
