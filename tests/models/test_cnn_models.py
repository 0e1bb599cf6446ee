"""The CNN test models of tests/models/cnn_models.py: the light zoo models, once prepared, are valid, take
every weight from a random initializer, expose their logits and depend on their input; the torch exports
load and run in onnxruntime, match torch, and have the expected shapes.

Every model is built into a temporary cache, so these tests also cover building from scratch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cnn_models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

HAVE_TORCH = all(importlib.util.find_spec(name) for name in ("torch", "onnxscript"))
needs_torch = pytest.mark.skipif(not HAVE_TORCH,
                                 reason="needs the `models` extra (torch, onnxscript) to export")
# The image input of each light model (every other graph input is an initializer, as IR 3 wants).
IMAGE_INPUT = {"light_resnet50": "gpu_0/data_0", "light_shufflenet": "gpu_0/data_0"}
# VGG-19 has 143M weights (575 MB): drawing, saving and checking them takes ~15 s.
LIGHT_CASES = [pytest.param(name, marks=pytest.mark.slow) if name == "light_vgg19" else name
               for name in cnn_models.LIGHT_MODELS]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cnn_models")


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def images(shape: tuple[int, ...], count: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", LIGHT_CASES)
def test_light_model_is_valid_and_every_weight_is_a_random_initializer(name: str, cache: Path) -> None:
    source = onnx.load(cnn_models.light_source(name))
    path = cnn_models.model_path(name, cache)
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(path)
    assert model.opset_import == source.opset_import and model.ir_version == source.ir_version
    assert "ConstantOfShape" not in {n.op_type for n in model.graph.node}
    initializers = {t.name: t for t in model.graph.initializer}
    assert {i.name for i in model.graph.input} - set(initializers) == {IMAGE_INPUT.get(name, "data_0")}
    for node in model.graph.node:
        for index in cnn_models.PARAMETER_ROLES.get(node.op_type, {}):
            if index < len(node.input) and node.input[index]:
                weight = numpy_helper.to_array(initializers[node.input[index]])
                assert weight.dtype == np.float32 and np.ptp(weight) > 0, (node.name, node.input[index])


@pytest.mark.parametrize("name", LIGHT_CASES)
def test_light_model_exposes_logits_that_depend_on_the_input(name: str, cache: Path) -> None:
    model = session(cnn_models.model_path(name, cache))
    (image,) = model.get_inputs()
    assert image.shape == [1, 3, 224, 224]
    runs = [model.run(None, {image.name: x}) for x in images(tuple(image.shape))]
    probabilities, logits = zip(*runs, strict=True)
    assert [o.shape[:2] for o in model.get_outputs()] == [[1, 1000], [1, 1000]]
    for p, z in zip(probabilities, logits, strict=True):
        assert np.isfinite(z).all() and z.std() > 1.0 and np.abs(z).max() < 100.0
        np.testing.assert_allclose(p.reshape(1, -1), softmax(z.reshape(1, -1)), rtol=1e-4, atol=1e-6)
    difference = logits[0] - logits[1]
    assert difference.std() > 0.005 * logits[0].std(), "the logits barely depend on the input"


def test_light_model_is_deterministic_and_cached(cache: Path, tmp_path: Path) -> None:
    first = cnn_models.prepare_light_model("light_squeezenet")
    assert first.SerializeToString() == cnn_models.prepare_light_model("light_squeezenet").SerializeToString()
    path = cnn_models.model_path("light_squeezenet", tmp_path)
    assert path == tmp_path / "light_squeezenet" / "light_squeezenet.onnx"
    assert path.read_bytes() == first.SerializeToString()
    path.write_bytes(b"stale")
    assert cnn_models.model_path("light_squeezenet", tmp_path).read_bytes() == b"stale"  # reused as it is
    rebuilt = cnn_models.model_path("light_squeezenet", tmp_path, force=True)
    assert rebuilt.read_bytes() == first.SerializeToString()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind


def test_a_different_seed_gives_different_weights() -> None:
    graph = onnx.load(cnn_models.light_source("light_squeezenet")).graph
    zero, one = cnn_models.draw_parameters(graph, 0), cnn_models.draw_parameters(graph, 1)
    assert zero.keys() == one.keys()
    assert not np.array_equal(zero["conv1_w_0"], one["conv1_w_0"])


def test_unknown_model_names_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown CNN model 'resnet18'; expected one of light_resnet50, "):
        cnn_models.model_path("resnet18")
    with pytest.raises(SystemExit) as exit_info:
        cnn_models.main(["light_vgg19", "resnet18"])
    assert exit_info.value.code == 2
    assert "unknown model(s) resnet18" in capsys.readouterr().err


def run_torch_export(name: str, cache: Path) -> tuple[ort.InferenceSession, list[np.ndarray]]:
    """The exported model in onnxruntime and its logits on the export's example images, checked
    against torch itself."""
    import torch

    path = cnn_models.model_path(name, cache)
    model = session(path)
    network, image = cnn_models.torch_network(name)
    with torch.no_grad():
        expected = network(image).numpy()
    outputs = model.run(None, {"input": image.numpy()})
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    return model, outputs


@needs_torch
def test_mobilenet_v3_export(cache: Path) -> None:
    model, (logits,) = run_torch_export("mobilenet_v3", cache)
    assert [(i.name, i.shape) for i in model.get_inputs()] == [("input", [1, 3, 224, 224])]
    assert [(o.name, o.shape) for o in model.get_outputs()] == [("logits", [1, 1000])]
    ops = {n.op_type for n in onnx.load(cnn_models.model_path("mobilenet_v3", cache)).graph.node}
    assert {"Conv", "HardSwish", "HardSigmoid", "ReduceMean", "Mul", "Add", "Gemm"} <= ops
    other = model.run(None, {"input": images((1, 3, 224, 224), 1)[0]})[0]
    assert np.isfinite(logits).all() and not np.allclose(logits, other, rtol=0.01)


@needs_torch
def test_resnet50_batch_1_export(cache: Path) -> None:
    model, (logits,) = run_torch_export("resnet50_b1", cache)
    assert [(i.name, i.shape) for i in model.get_inputs()] == [("input", [1, 3, 224, 224])]
    assert [(o.name, o.shape) for o in model.get_outputs()] == [("logits", [1, 1000])]
    assert np.isfinite(logits).all() and np.abs(logits).max() < 100.0


@needs_torch
def test_resnet50_batch_8_export_has_the_batch_1_weights(cache: Path) -> None:
    model, (logits,) = run_torch_export("resnet50_b8", cache)
    assert [(o.name, o.shape) for o in model.get_outputs()] == [("logits", [8, 1000])]
    batch_1 = session(cnn_models.model_path("resnet50_b1", cache))
    _, image = cnn_models.torch_network("resnet50_b8")
    single = batch_1.run(None, {"input": image[3:4].numpy()})[0]
    np.testing.assert_allclose(logits[3:4], single, rtol=1e-3, atol=1e-3 * np.abs(single).max())
