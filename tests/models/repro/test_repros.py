"""The smallest repros of the model families' errors (build_repros.py; FAILURES.md lists them): each compiles
today to the recorded error and exit code, as a strict xfail, so issue 15's fix of one turns it into a
failing XPASS until its entry in build_repros.REPROS and FAILURES.md is retired (or the test kept as a
passing regression test). A changed error (a different message or exit code) fails outright.

Fast: each builds a few-node model with onnx.helper and stops at compile time (no run).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from build_repros import FIXED, REPROS, SLOW_FIXED, compile_outcome


class RecordedFailure(Exception):
    """The repro failed exactly as recorded."""


@pytest.mark.parametrize("name", [
    pytest.param(name, id=name, marks=pytest.mark.xfail(strict=True, raises=RecordedFailure,
                                                         reason=f"{repro.item}: {repro.families}"))
    for name, repro in REPROS.items()
])
def test_repro_fails_as_recorded(name: str) -> None:
    repro = REPROS[name]
    code, message = compile_outcome(repro.build())
    if code == 0:
        return  # fixed: strict xfail reports XPASS, which fails until the entry is retired
    assert re.search(repro.error, message, re.S), (name, message)
    assert code == repro.exit_code, (name, code, message)
    raise RecordedFailure(f"{name}: exit {code}: {message}")


def test_every_repro_is_listed_in_failures_md() -> None:
    text = (Path(__file__).resolve().parent / "FAILURES.md").read_text()
    missing = [name for name in REPROS if f"`{name}`" not in text]
    assert not missing, missing


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_FIXED else [])
                                  for name in sorted(FIXED)])
def test_fixed_repro_compiles_and_passes_golden(name: str) -> None:
    import numpy as np
    import onnxruntime

    import ttc
    from ttc.golden import compare

    model = FIXED[name]()
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}}
    expected = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)
    got = ttc.compile(model).run(feeds)
    for output, value in zip(model.graph.output, expected, strict=True):
        assert compare(output.name, got[output.name], value).passed, name
