"""One script, written for onnxruntime's InferenceSession, run against onnxruntime's session and ttc's: the
same metadata, the same outputs (to bf16 accuracy), and the same failures for the same bad feeds, each
naming the same facts (the input, the types, the sizes)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import ttc
from ttc.golden import compare
from ttc.session import IgnoredArgumentWarning


def dynamic_model(path: Path) -> Path:
    """y = relu(x @ w + s) with a dynamic batch: x [batch, 8] float, s [1, 4] float -> y [batch, 4]."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 4], rng.standard_normal((8, 4)).astype(np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
             helper.make_node("Add", ["xw", "s"], ["z"], name="add"),
             helper.make_node("Relu", ["z"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
                       helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=[w], doc_string="a graph")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="the tests",
                              producer_version="1.0", doc_string="a model", domain="test.domain", model_version=3)
    helper.set_model_props(model, {"author": "ttc tests"})
    onnx.save(model, str(path))
    return path


@dataclass
class Step:
    name: str
    outcome: str  # "ok" or "error"
    value: Any  # the outputs, or the exception


def script(make_session: Callable[[str], Any], model: str) -> list[Step]:
    """What a user of onnxruntime writes; every call's result or exception is recorded."""
    steps: list[Step] = []

    def attempt(name: str, call: Callable[[], Any]) -> None:
        try:
            steps.append(Step(name, "ok", call()))
        except Exception as exc:
            steps.append(Step(name, "error", exc))

    session = make_session(model)
    steps.append(Step("inputs", "ok", [(i.name, list(i.shape), i.type) for i in session.get_inputs()]))
    steps.append(Step("outputs", "ok", [(o.name, list(o.shape), o.type) for o in session.get_outputs()]))
    meta = session.get_modelmeta()
    steps.append(Step("meta", "ok", (meta.producer_name, meta.graph_name, meta.domain, meta.description,
                                     meta.graph_description, meta.version, dict(meta.custom_metadata_map))))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    s = rng.standard_normal((1, 4)).astype(np.float32)
    attempt("all outputs", lambda: session.run(None, {"x": x, "s": s}))
    attempt("named outputs", lambda: session.run(["y", "y"], {"x": x, "s": s}))
    attempt("empty list of names", lambda: session.run([], {"x": x, "s": s}))
    attempt("another batch", lambda: session.run(None, {"x": np.ones((3, 8), np.float32), "s": s}))
    attempt("python lists", lambda: session.run(None, {"x": x.tolist(), "s": s.tolist()}))
    attempt("unknown input", lambda: session.run(None, {"x": x, "s": s, "bogus": s}))
    attempt("missing input", lambda: session.run(None, {"x": x}))
    attempt("float64 feed", lambda: session.run(None, {"x": x.astype(np.float64), "s": s}))
    attempt("int64 feed", lambda: session.run(None, {"x": x, "s": s.astype(np.int64)}))
    attempt("wrong rank", lambda: session.run(None, {"x": x[None], "s": s}))
    attempt("wrong static dimension", lambda: session.run(None, {"x": x, "s": np.zeros((1, 5), np.float32)}))
    attempt("unknown output", lambda: session.run(["nope"], {"x": x, "s": s}))
    return steps


# For each failing step, what both sessions' messages must say (case-insensitive regular expressions).
FACTS = {
    "unknown input": [r"\bbogus\b", r"input"],
    "missing input": [r"\brequired\b", r"\bmissing\b", r"'s'"],
    "float64 feed": [r"tensor\(double\)", r"tensor\(float\)"],
    "int64 feed": [r"tensor\(int64\)", r"tensor\(float\)"],
    "wrong rank": [r"\brank\b", r"\bx\b", r"\b3\b", r"\b2\b"],
    "wrong static dimension": [r"dimension", r"\bs\b", r"\b5\b", r"\b4\b"],
    "unknown output": [r"output", r"\bnope\b"],
}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Step], list[Step], list[warnings.WarningMessage]]:
    model = str(dynamic_model(tmp_path_factory.mktemp("model") / "dyn.onnx"))
    providers = ["CPUExecutionProvider"]  # a drop-in script names onnxruntime's provider; ttc notes it ignores it
    reference = script(lambda path: ort.InferenceSession(path, providers=providers), model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = script(lambda path: ttc.InferenceSession(path, providers=providers), model)
    return reference, ours, caught


def test_the_same_steps_succeed_and_fail(both) -> None:
    reference, ours, _ = both
    assert [(s.name, s.outcome) for s in ours] == [(s.name, s.outcome) for s in reference]
    assert {s.name for s in reference if s.outcome == "error"} == set(FACTS)


def test_metadata_is_spelt_as_onnxruntime_spells_it(both) -> None:
    reference, ours, _ = both
    for name in ("inputs", "outputs", "meta"):
        mine, theirs = (next(s.value for s in steps if s.name == name) for steps in (ours, reference))
        assert mine == theirs, name
    assert next(s.value for s in ours if s.name == "inputs") == [("x", ["batch", 8], "tensor(float)"),
                                                                 ("s", [1, 4], "tensor(float)")]


def test_outputs_agree(both) -> None:
    reference, ours, _ = both
    for mine, theirs in zip(ours, reference, strict=True):
        if mine.outcome != "ok" or not isinstance(theirs.value, list) or mine.name in ("inputs", "outputs"):
            continue
        assert isinstance(mine.value, list) and len(mine.value) == len(theirs.value), mine.name
        for a, b in zip(mine.value, theirs.value, strict=True):
            assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype, mine.name
            assert compare(mine.name, a, b).passed, mine.name


def test_failures_name_the_same_facts(both) -> None:
    reference, ours, _ = both
    for mine, theirs in zip(ours, reference, strict=True):
        if theirs.outcome != "error":
            continue
        for pattern in FACTS[mine.name]:
            for exc in (mine.value, theirs.value):
                assert re.search(pattern, str(exc), re.IGNORECASE), (mine.name, pattern, str(exc))
        # ttc's errors are UserErrors, and ValueErrors wherever onnxruntime raises a ValueError
        assert isinstance(mine.value, ttc.UserError), mine.name
        if isinstance(theirs.value, ValueError):
            assert isinstance(mine.value, ValueError), mine.name
        if mine.name.endswith(" feed"):
            assert "never cast" in str(mine.value), mine.name


def test_onnxruntime_arguments_are_noted_once(both) -> None:
    _, _, caught = both
    notes = [w for w in caught if issubclass(w.category, IgnoredArgumentWarning)]
    assert len(notes) == 1 and "providers=['CPUExecutionProvider'] ignored" in str(notes[0].message)
    assert "\n" not in str(notes[0].message)
