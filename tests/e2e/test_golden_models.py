"""End to end: ONNX -> compile -> emulated Grayskull -> outputs that pass the golden rule against
onnxruntime (PCC >= 0.99 and relative L2 error <= 0.05 on every output)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import ttc
from ttc import zoo
from ttc.golden import compare, run_onnxruntime

MODELS = {
    "mlp_b1": lambda: zoo.mlp(batch=1),
    "mlp_b32": lambda: zoo.mlp(batch=32),
    "encoder_block": lambda: zoo.encoder_block(),
    "odd_shapes": zoo.odd_shapes,
    "elementwise_broadcast": zoo.elementwise_broadcast,
    "encoder_seq100": lambda: zoo.encoder_block(seq=96, hidden=128, heads=4, ffn=256),
}


def golden(model: onnx.ModelProto, compiled: ttc.compiler.CompiledModel, seed: int = 0) -> list:
    feeds = zoo.random_inputs(model, seed=seed)
    outputs = compiled.run(feeds)
    reference = run_onnxruntime(model, feeds)
    return [compare(name, outputs[name], reference[name]) for name in reference]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_passes_the_golden_rule(name: str) -> None:
    model = MODELS[name]()
    results = golden(model, ttc.compile(model))
    for result in results:
        assert result.passed, (name, result)


def test_large_matmuls_use_many_cores_and_fit_the_grid() -> None:
    compiled = ttc.compile(zoo.encoder_block())
    grids = [op.attributes["grid"] for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]
    assert max(g.num_cores for g in grids) > 1
    assert all(g.x <= 12 and g.y <= 9 for g in grids)
    compiled75 = ttc.compile(zoo.encoder_block(), arch="e75")
    grids75 = [op.attributes["grid"] for op in compiled75.module.walk() if op.name == "ttmetal.enqueue_program"]
    assert all(g.x <= 11 and g.y <= 8 for g in grids75)


def test_e150_and_e75_give_identical_bits() -> None:
    model = zoo.mlp(batch=32)
    feeds = zoo.random_inputs(model)
    a = ttc.compile(model, arch="e150").run(feeds)
    b = ttc.compile(model, arch="e75").run(feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_lofi_and_hifi4_differ_and_hifi4_is_closer() -> None:
    model = zoo.mlp(batch=8)
    feeds = zoo.random_inputs(model)
    reference = run_onnxruntime(model, feeds)["logits"]
    hifi4 = ttc.compile(model, math_fidelity="hifi4").run(feeds)["logits"]
    lofi = ttc.compile(model, math_fidelity="lofi").run(feeds)["logits"]
    assert not np.array_equal(hifi4, lofi)
    assert np.linalg.norm(hifi4 - reference) < np.linalg.norm(lofi - reference)


def test_bfp8_weights_still_pass() -> None:
    model = zoo.mlp(batch=4)
    for result in golden(model, ttc.compile(model, dtype="bfp8_b")):
        assert result.passed, result


def test_save_load_round_trip_and_determinism(tmp_path) -> None:
    model = zoo.mlp(batch=2)
    path = tmp_path / "m.onnx"
    zoo.save(model, path)
    first, second = tmp_path / "a.ttc", tmp_path / "b.ttc"
    ttc.compile(str(path)).save(first)
    ttc.compile(str(path)).save(second)
    assert first.read_bytes() == second.read_bytes()
    loaded = ttc.load(first)
    feeds = zoo.random_inputs(model)
    np.testing.assert_array_equal(loaded.run(feeds)["logits"], ttc.compile(str(path)).run(feeds)["logits"])
    assert loaded.manifest["source_model"]["path"] == str(path.resolve())
