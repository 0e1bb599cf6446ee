"""Planned = executed, static = executed and the roofline audit (tests/cost_model_checks.py) on BERT-base and
GPT-2 from the model cache (export_hf.py), program by program, on the native core."""

from __future__ import annotations

import pytest
from test_cost_model_cnn import check_cached


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_planned_equals_executed_and_no_program_beats_its_roofline(name: str) -> None:
    check_cached(name)
