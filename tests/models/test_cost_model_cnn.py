"""Planned = executed, static = executed and the roofline audit (tests/cost_model_checks.py) on the reference
CNNs in the model cache ($TTC_MODEL_CACHE or ~/.cache/ttc/models; built by cnn_models.py and export_hf.py),
program by program, on the native core (tests/e2e/test_cost_model.py runs the small models on both emulators).
A model missing from the cache is skipped; the heaviest two are `slow`. BERT and GPT-2:
test_cost_model_hf.py."""

from __future__ import annotations

import pytest
from cost_model_checks import check_model
from export_hf import cache_dir

MODELS = ["resnet50_b1", "mobilenet_v3", "light_resnet50", "light_shufflenet", "light_squeezenet",
          "light_bvlc_alexnet", pytest.param("resnet50_b8", marks=pytest.mark.slow),
          pytest.param("light_vgg19", marks=pytest.mark.slow)]


def check_cached(name: str) -> None:
    path = cache_dir() / name / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not built (tests/models/cnn_models.py, export_hf.py)")
    assert check_model(path) >= 50


@pytest.mark.parametrize("name", MODELS)
def test_planned_equals_executed_and_no_program_beats_its_roofline(name: str) -> None:
    check_cached(name)
