"""ONNX node-test conformance: the official node tests (`onnx.backend.test`) run through ttc's backend.

One case compiles a one-node model (or its function-body expansion) for the emulated Grayskull, runs
it on the stored inputs and compares with the stored expected outputs, the way onnx's
`BackendTest` does, except for the judging rule, which is ttc's and the same for every case:

    float outputs:            |out - expected| <= 2e-2 + 2e-2 * |expected|  (rtol = atol = 2e-2, the
                              bf16 level; NaN matches NaN), never loosened per case;
    integer/boolean outputs:  exactly equal;
    every output:             the expected shape and dtype.

A case that does not pass gets a one-line reason, `category: detail`, from its error: a ttc
UserError (the first line of its message, classified), an output mismatch, a device fault, or an
internal error (any other exception, a bug). Results are saved in a results file (one line per
case, sorted) from which the expected-failures list and `docs/supported-ops.md` are generated.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import traceback
import unittest
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.test import BackendTest
from onnx.backend.test.case.test_case import TestCase as OnnxTestCase
from onnx.backend.test.loader import load_model_tests

from ttc.ir.diagnostics import DeviceFault, InternalCompilerError, UserError
from ttc.onnx_backend import TtcBackend, TtcBackendRep

TOLERANCE = 2e-2  # rtol = atol for float outputs: the bf16 level
DEVICE = "CPU"  # the device name the ONNX runner uses for ttc (see ttc.onnx_backend)
CATEGORY_TEST = "OnnxBackendNodeModelTest"
# A float mismatch within this many tolerances of every expected value is a precision limit of bf16
# ("numerics"); beyond it (or NaN/inf where a finite value is expected) the result is wrong.
NUMERICS_FACTOR = 10.0
REASON_MAX_CHARS = 200

# Reason categories, in the order the docs list them. The last four are bugs in ttc.
UNSUPPORTED_OP = "unsupported op"
UNSUPPORTED_ATTRIBUTE = "unsupported attribute"
UNSUPPORTED_DTYPE = "dtype not on device"
NUMERICS = "numerics"
COMPILE_ERROR = "compile error"
WRONG_RESULT = "wrong result"
WRONG_OUTPUT = "wrong output"
DEVICE_FAULT = "device fault"
INTERNAL_ERROR = "internal error"
CATEGORIES = (UNSUPPORTED_OP, UNSUPPORTED_ATTRIBUTE, UNSUPPORTED_DTYPE, NUMERICS, COMPILE_ERROR, WRONG_RESULT,
              WRONG_OUTPUT, DEVICE_FAULT, INTERNAL_ERROR)
BUG_CATEGORIES = (WRONG_RESULT, WRONG_OUTPUT, DEVICE_FAULT, INTERNAL_ERROR)


def onnx_minor(version: str = onnx.__version__) -> str:
    """`1.23.2` -> `1.23`: the node tests change with every onnx minor release."""
    return ".".join(version.split(".")[:2])


# ----------------------------------------------------------------------------------------------
# Judging outputs


class OutputMismatch(AssertionError):
    """An output that does not match its expected value; `category` is a reason category."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


def assert_outputs_match(expected: Sequence[Any], actual: Sequence[Any]) -> None:
    """ttc's judging rule (module doc) on every output; raises OutputMismatch."""
    if len(actual) != len(expected):
        raise OutputMismatch(WRONG_OUTPUT, f"{len(actual)} outputs, expected {len(expected)}")
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if isinstance(want, (list, tuple)):
            if not isinstance(got, (list, tuple)):
                raise OutputMismatch(WRONG_OUTPUT, f"output {index} is a {type(got).__name__}, expected a sequence")
            assert_outputs_match(want, got)
            continue
        assert_output_matches(index, np.asarray(want), np.asarray(got))


def assert_output_matches(index: int, expected: np.ndarray, actual: np.ndarray) -> None:
    where = f"output {index}"
    if actual.shape != expected.shape:
        raise OutputMismatch(WRONG_OUTPUT, f"{where} has shape {list(actual.shape)}, expected {list(expected.shape)}")
    if actual.dtype != expected.dtype:
        raise OutputMismatch(WRONG_OUTPUT, f"{where} has dtype {actual.dtype}, expected {expected.dtype}")
    if not _is_float(expected.dtype):
        wrong = int(np.count_nonzero(actual != expected))
        if wrong:
            raise OutputMismatch(WRONG_RESULT, f"{where} ({expected.dtype}) differs in {wrong} of {expected.size} "
                                               "values (integers must match exactly)")
        return
    want, got = expected.astype(np.float64), actual.astype(np.float64)
    bad = ~np.isclose(got, want, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True)
    if not bad.any():
        return
    with np.errstate(invalid="ignore"):
        excess = np.abs(got[bad] - want[bad]) / (TOLERANCE + TOLERANCE * np.abs(want[bad]))
    worst = float(np.max(np.nan_to_num(excess, nan=np.inf)))
    summary = (f"{where}: {int(bad.sum())} of {expected.size} values outside rtol=atol={TOLERANCE:g}, "
               f"max error {_significant(worst)}x the tolerance")
    if math.isfinite(worst) and worst <= NUMERICS_FACTOR:
        raise OutputMismatch(NUMERICS, summary)
    raise OutputMismatch(WRONG_RESULT, summary)


def matches_bf16_input_reference(model: onnx.ModelProto, inputs: Sequence[np.ndarray],
                                 actual: Sequence[np.ndarray]) -> bool:
    """Whether `actual` passes the judging rule against onnx's reference evaluator run on the float
    inputs rounded to bf16, as the device reads them (float16 too: 11 significant bits to bf16's 8): a
    float mismatch explained by that is a precision limit of the inputs (numerics), not a wrong kernel."""
    from onnx.reference import ReferenceEvaluator

    names = [value.name for value in model.graph.input][: len(inputs)]
    wider = (np.float16, np.float32, np.float64)
    rounded = [x.astype(ml_dtypes.bfloat16).astype(x.dtype) if x.dtype in wider else x for x in inputs]
    try:
        reference = ReferenceEvaluator(model).run(None, dict(zip(names, rounded, strict=True)))
        assert_outputs_match(reference, actual)
    except Exception:
        return False
    return True


def _is_float(dtype: np.dtype) -> bool:
    """numpy floats and ml_dtypes' (bfloat16, float8_*, float4_*), which numpy sees as kind 'V'."""
    return dtype.kind == "f" or dtype.name.startswith(("bfloat16", "float8", "float4"))


def _significant(value: float) -> str:
    return "inf" if not math.isfinite(value) else f"{value:.2g}"


# ----------------------------------------------------------------------------------------------
# Classifying failures


_UNSUPPORTED_OPS = re.compile(r"unsupported ONNX ops \(\d+ nodes?\): (?P<ops>.*)")
_OP_WITH_NODES = re.compile(r"(?P<op>[\w.]+) \(nodes?: [^)]*\)")
_ELEMENT_TYPE = re.compile(r"element type (?P<type>[A-Z0-9_]+), which ttc does not support")
_ATTRIBUTE = re.compile(r"\battribute\b|\bperm\b|\ballowzero\b|given by '", re.IGNORECASE)
_NOT_A_TENSOR = re.compile(r"is not a tensor")
_NOT_ON_DEVICE = re.compile(r"tensors cannot run on the device")
_INTEGER_RANGE = re.compile(r"integer tensor \S+ of unknown range")
_INVALID_IR = re.compile(r"(ttc: internal compiler error: )?pass '[\w-]+' produced invalid IR")


def classify(exc: BaseException) -> tuple[str, str]:
    """(category, detail) of a failed case's exception; the detail is one line."""
    if isinstance(exc, OutputMismatch):
        return exc.category, exc.detail
    if isinstance(exc, DeviceFault):
        return DEVICE_FAULT, _first_line(exc.message)
    if isinstance(exc, InternalCompilerError):
        return INTERNAL_ERROR, _first_line(exc.message)
    if isinstance(exc, UserError):
        return classify_user_error(exc.message)
    message = _first_line(str(exc)).removeprefix("internal error: ")
    return INTERNAL_ERROR, f"{type(exc).__name__}: {message}"


def classify_user_error(message: str) -> tuple[str, str]:
    line = _first_line(message)
    if _INVALID_IR.match(line):  # a pass broke the IR: a ttc bug, however it is reported
        return INTERNAL_ERROR, line
    unsupported = _UNSUPPORTED_OPS.match(line)
    if unsupported:
        ops = [m["op"] for m in _OP_WITH_NODES.finditer(unsupported["ops"])]
        return UNSUPPORTED_OP, ", ".join(sorted(set(ops))) or unsupported["ops"]
    element_type = _ELEMENT_TYPE.search(line)
    if element_type:
        return UNSUPPORTED_DTYPE, element_type["type"]
    if _NOT_ON_DEVICE.search(line) or _INTEGER_RANGE.search(line):
        return UNSUPPORTED_DTYPE, line
    if _NOT_A_TENSOR.search(line):
        return UNSUPPORTED_DTYPE, line
    if _ATTRIBUTE.search(line):
        return UNSUPPORTED_ATTRIBUTE, line
    return COMPILE_ERROR, line


def _first_line(text: str) -> str:
    """The first line of a message; a first line that only introduces the next (ends with ':') takes
    the next one along ("pass 'tilize' produced invalid IR: loc(...): error: ...")."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if not lines:
        return ""
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def one_line_reason(category: str, detail: str) -> str:
    reason = f"{category}: {detail}" if detail else category
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_MAX_CHARS else reason[:REASON_MAX_CHARS - 3] + "..."


def reason_category(reason: str) -> str:
    return next((c for c in CATEGORIES if reason.startswith(c)), reason.split(":")[0])


# ----------------------------------------------------------------------------------------------
# Running cases


class _RecordingBackend(TtcBackend):
    """TtcBackend that keeps the rep it prepared last (to count the compiled model's host ops)."""

    last_rep: TtcBackendRep | None = None

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = DEVICE, **kwargs: Any) -> TtcBackendRep:
        cls.last_rep = None
        cls.last_rep = super().prepare(model, device, **kwargs)
        return cls.last_rep


class NodeBackendTest(BackendTest):
    """onnx's BackendTest with ttc's judging rule instead of each case's own rtol/atol."""

    @classmethod
    def assert_similar_outputs(cls, ref_outputs: Sequence[Any], outputs: Sequence[Any], rtol: float,
                               atol: float, model_dir: str | None = None) -> None:
        assert_outputs_match(ref_outputs, outputs)


@dataclass(frozen=True)
class NodeSuite:
    """The node tests of the installed onnx, for ttc: case names (`test_abs_cpu`) and their models."""

    runner: NodeBackendTest
    case_class: type[unittest.TestCase]
    tests: Mapping[str, OnnxTestCase]  # by case name

    @property
    def cases(self) -> list[str]:
        return sorted(self.tests)


@functools.cache
def node_suite() -> NodeSuite:
    """Built once per process (onnx generates the node tests' data on load, a few seconds; the
    generators' numpy warnings about overflow and division by zero are intended and silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        runner = NodeBackendTest(_RecordingBackend, __name__)
        node_tests = load_model_tests(kind="node")
    case_class = runner.test_cases[CATEGORY_TEST]
    by_name = {test.name: test for test in node_tests}
    tests = {f"{name}_{DEVICE.lower()}": test for name, test in by_name.items()
             if hasattr(case_class, f"{name}_{DEVICE.lower()}")}
    return NodeSuite(runner, case_class, tests)


@dataclass(frozen=True)
class CaseResult:
    """What one node-test case did. `host_ops` and `programs` are None when the case did not compile."""

    case: str
    op: str  # the ONNX op under test (`domain.Op` outside the default domain)
    expanded: bool  # the op's function-body expansion (a graph of other ops) rather than the op
    passed: bool
    host_ops: int | None
    reason: str  # `category: detail`, "" when passed
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    programs: int | None = None  # device programs the compiled model enqueues
    seconds: float = 0.0  # not saved (not deterministic)
    traceback: str = ""  # of an internal error; not saved

    @property
    def category(self) -> str:
        return reason_category(self.reason) if self.reason else ""

    @property
    def placement(self) -> str | None:
        """Where the compiled model computes: 'host' when it needs host ops, 'folded' when it enqueues no
        device program at all (the compiler computed the outputs, or they are views of the inputs), else
        'device'. None when the case did not compile."""
        if self.host_ops is None:
            return None
        if self.host_ops:
            return "host"
        return "folded" if self.programs == 0 else "device"

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "expanded": self.expanded, "status": "pass" if self.passed else "fail",
                "host_ops": self.host_ops, "programs": self.programs, "reason": self.reason,
                "inputs": list(self.input_types), "outputs": list(self.output_types)}

    @classmethod
    def from_json(cls, case: str, data: Mapping[str, Any]) -> CaseResult:
        return cls(case, data["op"], data["expanded"], data["status"] == "pass", data["host_ops"], data["reason"],
                   tuple(data["inputs"]), tuple(data["outputs"]), programs=data.get("programs"))


def run_case(case: str) -> CaseResult:
    """Run one node-test case (`test_abs_cpu`) through onnx's runner with ttc's backend."""
    suite = node_suite()
    test = suite.tests[case]
    op, expanded = case_op(test.name, suite.tests)
    inputs, outputs = _value_types(test.model.graph.input), _value_types(test.model.graph.output)
    method = getattr(suite.case_class(case), case)
    start = time.perf_counter()
    _RecordingBackend.last_rep = None
    try:
        method()
    except Exception as exc:
        rep = _RecordingBackend.last_rep
        category, detail = classify(exc)
        if category in (WRONG_RESULT, NUMERICS) and rep is not None and _explained_by_bf16_inputs(test, rep):
            category, detail = NUMERICS, f"{detail} (within tolerance of the result for bf16-rounded inputs)"
        trace = traceback.format_exc() if category == INTERNAL_ERROR else ""
        return CaseResult(case, op, expanded, False, _host_ops(rep), one_line_reason(category, detail),
                          inputs, outputs, _programs(rep), time.perf_counter() - start, trace)
    rep = _RecordingBackend.last_rep
    return CaseResult(case, op, expanded, True, _host_ops(rep), "", inputs, outputs, _programs(rep),
                      time.perf_counter() - start)


def _explained_by_bf16_inputs(test: OnnxTestCase, rep: TtcBackendRep) -> bool:
    for inputs, _ in test.data_sets or []:
        arrays = [numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x) for x in inputs]
        try:
            actual = list(rep.run(arrays))
        except Exception:
            return False
        if not matches_bf16_input_reference(test.model, arrays, actual):
            return False
    return True


def _host_ops(rep: TtcBackendRep | None) -> int | None:
    if rep is None or rep.last_compiled is None:
        return None
    return int(rep.last_compiled.manifest["host_ops"])


def _programs(rep: TtcBackendRep | None) -> int | None:
    if rep is None or rep.last_compiled is None:
        return None
    return int(rep.last_compiled.manifest["programs"])


_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


def case_op(test_name: str, tests: Mapping[str, OnnxTestCase]) -> tuple[str, bool]:
    """The op a node test is about: its one node's op type, or for an `_expanded` test (the op's
    function body) that of the test it expands."""
    base = _EXPANDED.sub("", test_name)
    expanded = base != test_name
    test = tests.get(f"{base}_{DEVICE.lower()}") or tests[f"{test_name}_{DEVICE.lower()}"]
    node = test.model.graph.node[0]
    return (node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"), expanded


def _value_types(values: Iterable[onnx.ValueInfoProto]) -> tuple[str, ...]:
    return tuple(_type_name(value.type) for value in values)


def _type_name(type_proto: onnx.TypeProto) -> str:
    """numpy's name of a tensor's element type (`float32`, `int64`, `bool`); `sequence(...)` etc."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        elem_type = type_proto.tensor_type.elem_type
        if elem_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
            return onnx.TensorProto.DataType.Name(elem_type).lower()
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    if kind in ("sequence_type", "optional_type"):
        return f"{kind.removesuffix('_type')}({_type_name(getattr(type_proto, kind).elem_type)})"
    return kind or "undefined"


# ----------------------------------------------------------------------------------------------
# The results file and the expected-failures list


def write_results(path: Path, results: Iterable[CaseResult]) -> None:
    """JSON with one case per line, sorted by case name, so a rerun diffs line by line."""
    header = {"onnx": onnx_minor(), "rtol": TOLERANCE, "atol": TOLERANCE, "device": DEVICE}
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()] + ['  "cases": {']
    rows = sorted(results, key=lambda r: r.case)
    for i, result in enumerate(rows):
        comma = "," if i < len(rows) - 1 else ""
        lines.append(f"    {json.dumps(result.case)}: {json.dumps(result.to_json(), sort_keys=True)}{comma}")
    lines += ["  }", "}"]
    path.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class SavedResults:
    onnx: str
    cases: Mapping[str, CaseResult]


def read_results(path: Path) -> SavedResults:
    data = json.loads(path.read_text())
    return SavedResults(data["onnx"], {case: CaseResult.from_json(case, entry)
                                       for case, entry in data["cases"].items()})


EXPECTATIONS_CASE_COLUMN = 48  # reasons start in this column (longer case names push them right)
EXPECTATIONS_HEADER = """\
# ONNX node tests that ttc does not pass: strict expected failures of tests/onnx_node. A case listed
# here that passes fails the suite, as does a failing case that is not listed. Generated from a run by
# scripts/update_node_expectations.py; do not edit by hand.
# Judging: float outputs rtol = atol = 2e-2 (bf16), integer/boolean outputs exactly.
# Format: `case  category: reason` (the reason is the first line of ttc's error, classified).
"""


def write_expectations(path: Path, results: Iterable[CaseResult]) -> None:
    failing = sorted((r for r in results if not r.passed), key=lambda r: r.case)
    width = min(max((len(r.case) for r in failing), default=0), EXPECTATIONS_CASE_COLUMN)
    lines = [f"onnx {onnx_minor()}"] + [f"{r.case:<{width}}  {r.reason}" for r in failing]
    path.write_text(EXPECTATIONS_HEADER + "\n".join(lines) + "\n")


@dataclass(frozen=True)
class Expectations:
    onnx: str  # the onnx minor the list was recorded with
    failures: Mapping[str, str]  # case -> reason


def read_expectations(path: Path) -> Expectations:
    version = ""
    failures: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("onnx "):
            version = line.split()[1]
            continue
        case, _, reason = line.partition(" ")
        if not case.startswith("test_") or not reason.strip():
            raise ValueError(f"{path}:{number}: expected `case  reason`, got {line!r}")
        failures[case] = reason.strip()
    if not version:
        raise ValueError(f"{path}: no `onnx X.Y` line recording the onnx version")
    return Expectations(version, failures)


# ----------------------------------------------------------------------------------------------
# docs/supported-ops.md


def converter_versions(op_type: str, newest_opset: int | None = None) -> list[int]:
    """The opsets from which each of ttc's converters of `op_type` applies (its `since` versions)."""
    from ttc.frontend.converters import find_converter

    newest = newest_opset or onnx.defs.onnx_opset_version()
    versions, previous = [], None
    for opset in range(1, newest + 1):
        current = find_converter(op_type, opset)
        if current is not None and current is not previous:
            versions.append(opset)
        previous = current
    return versions


def schema_versions(op_type: str) -> list[int]:
    """The versions of the op's ONNX schema (default domain), oldest first."""
    return _schema_versions().get(op_type, [])


@functools.cache
def _schema_versions() -> dict[str, list[int]]:
    versions: dict[str, set[int]] = defaultdict(set)
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx"):
            versions[schema.name].add(schema.since_version)
    return {op: sorted(since) for op, since in versions.items()}


@dataclass
class OpSummary:
    op: str
    converters: list[int]
    direct: list[CaseResult]
    expanded: list[CaseResult]

    def placement(self) -> str:
        passing = [r for r in self.direct + self.expanded if r.passed]
        if not passing:
            return "-"
        where = Counter(r.placement for r in passing)
        main = "device" if where["device"] else max(where, key=lambda p: (where[p], p == "host"))
        if where[main] == len(passing):
            return str(main)
        others = [f"{p} in {where[p]} of {len(passing)}" for p in ("folded", "host") if p != main and where[p]]
        return f"{main}; " + "; ".join(others)

    def formats(self) -> str:
        types = sorted({t for r in self.direct + self.expanded if r.passed for t in r.input_types + r.output_types})
        return ", ".join(types) or "-"

    def limits(self, max_reasons: int = 3) -> str:
        reasons = Counter(_limit(r.reason) for r in self.direct if not r.passed)
        if not reasons:
            reasons = Counter(_limit(r.reason) for r in self.expanded if not r.passed)
        ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        parts = [f"{reason} ({count})" if count > 1 else reason for reason, count in ranked[:max_reasons]]
        if len(ranked) > max_reasons:
            parts.append(f"{len(ranked) - max_reasons} more")
        return "; ".join(parts).replace("|", "\\|") or "-"


_NODE_PREFIX = re.compile(r"""node (?:'[^']*'|"[^"]*")(?: \([\w.]+\))?: """)
_SHAPE_LIST = re.compile(r"\[[\d, ]*\]")
_TENSOR_TYPE = re.compile(r"tensor<[^>]*>")
LIMIT_MAX_CHARS = 110


def _limit(reason: str) -> str:
    """A reason as a known limit of its op: without node names, shapes and measured errors, so that
    alike failures group."""
    category = reason_category(reason)
    if category == NUMERICS:
        return f"{NUMERICS}: bf16 misses rtol=atol={TOLERANCE:g}"
    if category == WRONG_RESULT:
        return category
    text = _NODE_PREFIX.sub("", reason)
    text = _TENSOR_TYPE.sub("tensor<...>", _SHAPE_LIST.sub("[...]", text))
    return text if len(text) <= LIMIT_MAX_CHARS else text[:LIMIT_MAX_CHARS - 3] + "..."


def op_summaries(cases: Mapping[str, CaseResult]) -> list[OpSummary]:
    from ttc.frontend.converters import supported_op_types

    ops: dict[str, OpSummary] = {}
    for op in supported_op_types():
        ops[op] = OpSummary(op, converter_versions(op), [], [])
    for result in sorted(cases.values(), key=lambda r: r.case):
        summary = ops.setdefault(result.op, OpSummary(result.op, converter_versions(result.op), [], []))
        (summary.expanded if result.expanded else summary.direct).append(result)
    return [ops[name] for name in sorted(ops, key=str.lower)]


def _ratio(results: Sequence[CaseResult]) -> str:
    return f"{sum(r.passed for r in results)}/{len(results)}" if results else "-"


def _versions_text(summary: OpSummary) -> str:
    if not summary.converters:
        return "-"
    first = summary.converters[0]
    covered = [v for v in schema_versions(summary.op) if v >= first]
    since = ", ".join(str(v) for v in summary.converters)
    return f"{since} ({', '.join(str(v) for v in covered)})" if covered else since


def render_supported_ops(saved: SavedResults) -> str:
    """The text of docs/supported-ops.md from saved results and ttc's converter table."""
    cases = saved.cases
    summaries = op_summaries(cases)
    passed = [r for r in cases.values() if r.passed]
    where = Counter(r.placement for r in passed)
    total = len(cases)
    categories = Counter(r.category for r in cases.values() if not r.passed)
    lines = [
        "# Supported ONNX ops",
        "",
        "<!-- Generated by scripts/gen_supported_ops.py from tests/onnx_node/results.json and the converter",
        "     table (frontend/converters.py). Do not edit by hand: tests/onnx_node/test_supported_ops_doc.py",
        "     fails when this file is stale. -->",
        "",
        f"The ONNX node tests of onnx {saved.onnx} (`onnx.backend.test`, {total} cases) run through ttc's ONNX",
        "backend (`ttc.onnx_backend`): each case compiles a one-node model for the emulated Grayskull (e150,",
        "bf16, HiFi4), runs it on the stored inputs and compares with the stored expected outputs. Judging:",
        f"float outputs must be within rtol = atol = {TOLERANCE:g} (the bf16 level, the same for every case);",
        "integer and boolean outputs must match exactly. `tests/onnx_node` runs the suite against",
        "`tests/onnx_node/expected_failures.txt` (strict expected failures).",
        "",
        f"**{len(passed)} of {total} cases pass ({_percent(len(passed), total)})**: {where['device']} entirely on "
        f"the device, {where['folded']} folded at compile time (no device program), {where['host']} with host "
        "ops.",
        "",
        "Failures by category: " + (", ".join(f"{c} {categories[c]}" for c in CATEGORIES if categories[c])
                                    or "none") + ".",
        "",
        "Columns: *converters since* are the opsets from which ttc's converters apply, with the ONNX",
        "versions of the op they cover in brackets (models below opset 13 are converted to opset 17 first);",
        "*node tests* counts the op's own cases, *expanded* its function-body expansions (graphs of other",
        "ops); *runs on* says whether passing cases ran entirely on the device, were folded (the compiler",
        "computed the outputs, or they are views of the inputs: no device program runs) or needed host ops; *data",
        "formats* are the ONNX element types of passing cases (floats compute in bf16 on the device); *known",
        "limits* are the most frequent failure reasons, with counts.",
        "",
        "| op | converters since | node tests | expanded | runs on | data formats | known limits |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(f"| {s.op} | {_versions_text(s)} | {_ratio(s.direct)} | {_ratio(s.expanded)} | "
                     f"{s.placement()} | {s.formats()} | {s.limits()} |")
    return "\n".join(lines) + "\n"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def failures_by_op(cases: Iterable[CaseResult]) -> list[tuple[str, int, Counter[str]]]:
    """(op, failing cases, categories) for every op with failures, most failures first."""
    by_op: dict[str, Counter[str]] = defaultdict(Counter)
    for result in cases:
        if not result.passed:
            by_op[result.op][result.category] += 1
    ranked = sorted(by_op.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    return [(op, sum(counts.values()), counts) for op, counts in ranked]
