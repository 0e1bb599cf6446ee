"""The node suite's machinery (ttc.conformance): the judging rule, failure reasons, the expectations
and results files, and the supported-ops table."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ttc import conformance as cf
from ttc.frontend.importer import check_supported
from ttc.ir.diagnostics import DeviceFault, UserError

F32 = np.float32


# --- judging -----------------------------------------------------------------------------------


def test_floats_pass_within_rtol_and_atol_of_2e_2() -> None:
    expected = np.array([1.0, -2.0, 0.0, 100.0], dtype=F32)
    bound = 2e-2 + 2e-2 * np.abs(expected)
    cf.assert_outputs_match([expected], [(expected + 0.99 * bound).astype(F32)])
    with pytest.raises(cf.OutputMismatch, match=r"numerics: output 0: 1 of 4 values outside rtol=atol=0.02"):
        cf.assert_outputs_match([expected], [np.array([1.0, -2.0, 0.021, 100.0], dtype=F32)])


def test_nan_matches_nan_but_not_a_number() -> None:
    expected = np.array([np.nan, 1.0], dtype=F32)
    cf.assert_outputs_match([expected], [expected.copy()])
    with pytest.raises(cf.OutputMismatch, match=r"wrong result: output 0: 1 of 2 values .* max error infx"):
        cf.assert_outputs_match([expected], [np.array([np.nan, np.nan], dtype=F32)])


def test_a_float_error_far_beyond_the_tolerance_is_a_wrong_result() -> None:
    expected = np.ones(8, dtype=F32)
    with pytest.raises(cf.OutputMismatch) as info:
        cf.assert_outputs_match([expected], [expected * 2])
    assert info.value.category == cf.WRONG_RESULT and "max error 25x the tolerance" in info.value.detail


def test_integers_and_booleans_must_match_exactly() -> None:
    ids = np.array([100, 200], dtype=np.int64)
    cf.assert_outputs_match([ids, np.array([True])], [ids.copy(), np.array([True])])
    with pytest.raises(cf.OutputMismatch, match=r"wrong result: output 0 \(int64\) differs in 1 of 2 values"):
        cf.assert_outputs_match([ids], [ids + np.array([0, 1])])
    with pytest.raises(cf.OutputMismatch, match=r"output 0 \(bool\) differs"):
        cf.assert_outputs_match([np.array([True])], [np.array([False])])


def test_shape_dtype_and_count_must_match() -> None:
    x = np.zeros((2, 3), dtype=F32)
    with pytest.raises(cf.OutputMismatch, match=r"wrong output: output 0 has shape \[3, 2\], expected \[2, 3\]"):
        cf.assert_outputs_match([x], [x.T])
    with pytest.raises(cf.OutputMismatch, match="wrong output: output 0 has dtype float64, expected float32"):
        cf.assert_outputs_match([x], [x.astype(np.float64)])
    with pytest.raises(cf.OutputMismatch, match="wrong output: 2 outputs, expected 1"):
        cf.assert_outputs_match([x], [x, x])


def test_backend_test_ignores_the_cases_own_tolerance() -> None:
    expected = [np.ones(4, dtype=F32)]
    cf.NodeBackendTest.assert_similar_outputs(expected, [expected[0] + F32(0.03)], rtol=1e-3, atol=1e-7)
    with pytest.raises(cf.OutputMismatch):
        cf.NodeBackendTest.assert_similar_outputs(expected, [expected[0] + F32(0.5)], rtol=1.0, atol=1.0)


def test_the_bf16_input_reference_explains_input_rounding() -> None:
    """softmax of 10000..10003: bf16 rounds the inputs to one value, so the device's uniform answer is
    a precision limit, not a wrong kernel."""
    node = helper.make_node("Softmax", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([10000, 10001, 10002, 10003], dtype=F32)
    assert cf.matches_bf16_input_reference(model, [x], [np.full(4, 0.25, dtype=F32)])
    assert not cf.matches_bf16_input_reference(model, [x], [np.array([0, 0, 0, 1], dtype=F32)])


# --- reasons -----------------------------------------------------------------------------------


def unsupported_error(*op_types: str) -> UserError:
    nodes = [helper.make_node(op, ["x"], [f"y{i}"]) for i, op in enumerate(op_types)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [])
    with pytest.raises(UserError) as info:
        check_supported(helper.make_model(graph))
    return info.value


def test_unsupported_ops_are_named_without_their_nodes() -> None:
    error = unsupported_error("Det", "Det", "Bernoulli")
    assert cf.classify(error) == (cf.UNSUPPORTED_OP, "Bernoulli, Det")


@pytest.mark.parametrize(("message", "expected"), [
    ("initializer 'w': value 'w' has element type STRING, which ttc does not support",
     (cf.UNSUPPORTED_DTYPE, "STRING")),
    ("node 'Add_0': 'ttir.add' computes on tensor<3xi16>; integer and boolean tensors cannot run on the device yet",
     (cf.UNSUPPORTED_DTYPE,
      "node 'Add_0': 'ttir.add' computes on tensor<3xi16>; integer and boolean tensors cannot run on the device yet")),
    ("graph input: value 'x' is not a tensor (ttc imports tensors only)",
     (cf.UNSUPPORTED_DTYPE, "graph input: value 'x' is not a tensor (ttc imports tensors only)")),
    ("node 'C_0' (Constant): a Constant given by 'sparse_value' is not supported",
     (cf.UNSUPPORTED_ATTRIBUTE, "node 'C_0' (Constant): a Constant given by 'sparse_value' is not supported")),
    ("node 'T_0' (Transpose): perm [0, 0] is not a permutation of 2 dimensions",
     (cf.UNSUPPORTED_ATTRIBUTE, "node 'T_0' (Transpose): perm [0, 0] is not a permutation of 2 dimensions")),
    ("ONNX shape inference failed: boom\nmore detail", (cf.COMPILE_ERROR, "ONNX shape inference failed: boom")),
    ("graph input 'x': the integer tensor tensor<3xi16> of unknown range is used by 'Add_0' on the device",
     (cf.UNSUPPORTED_DTYPE,
      "graph input 'x': the integer tensor tensor<3xi16> of unknown range is used by 'Add_0' on the device")),
    ("pass 'tilize' produced invalid IR:\nloc(unknown): error: 'func.return' returns (tensor<3xbf16>)\n  quoted",
     (cf.INTERNAL_ERROR, "pass 'tilize' produced invalid IR: loc(unknown): error: 'func.return' returns (tensor<3xbf16>)")),
])
def test_user_errors_are_classified_by_their_first_line(message: str, expected: tuple[str, str]) -> None:
    assert cf.classify(UserError(message)) == expected


def test_device_faults_and_other_exceptions_are_bugs() -> None:
    assert cf.classify(DeviceFault("core (0, 0): read past the end of L1\ndetails")) == (
        cf.DEVICE_FAULT, "core (0, 0): read past the end of L1")
    assert cf.classify(ValueError("min() arg is an empty sequence")) == (
        cf.INTERNAL_ERROR, "ValueError: min() arg is an empty sequence")
    assert {cf.DEVICE_FAULT, cf.INTERNAL_ERROR, cf.WRONG_RESULT, cf.WRONG_OUTPUT} == set(cf.BUG_CATEGORIES)


def test_reasons_are_one_line_and_bounded() -> None:
    reason = cf.one_line_reason(cf.COMPILE_ERROR, "a  b\tc " + "x" * 300)
    assert "\n" not in reason and len(reason) == cf.REASON_MAX_CHARS and reason.endswith("...")
    assert reason.startswith("compile error: a b c x")
    assert cf.reason_category(reason) == cf.COMPILE_ERROR


# --- cases -------------------------------------------------------------------------------------


def test_case_op_maps_an_expansion_to_its_op() -> None:
    tests = cf.node_suite().tests
    assert cf.case_op("test_softmax_axis_0_expanded", tests) == ("Softmax", True)
    assert cf.case_op("test_layer_normalization_2d_axis0_expanded_ver18", tests) == ("LayerNormalization", True)
    assert cf.case_op("test_relu", tests) == ("Relu", False)
    assert cf.case_op("test_adam", tests) == ("ai.onnx.preview.training.Adam", False)


def test_run_case_passes_a_supported_case_on_the_device() -> None:
    result = cf.run_case("test_relu_cpu")
    assert result.passed and result.reason == "" and result.placement == "device"
    assert (result.op, result.input_types, result.output_types) == ("Relu", ("float32",), ("float32",))


def test_run_case_counts_a_case_without_device_programs_as_folded() -> None:
    """Shape's output is known at compile time: the case passes, but nothing ran on the device, so it must not
    be counted as a device case."""
    result = cf.run_case("test_shape_cpu")
    assert result.passed and result.host_ops == 0 and result.programs == 0 and result.placement == "folded"
    assert cf.CaseResult.from_json(result.case, result.to_json()).placement == "folded"


def test_op_placement_names_the_share_of_folded_and_host_cases() -> None:
    def case(name: str, host_ops: int, programs: int) -> cf.CaseResult:
        return cf.CaseResult(name, "OpF", False, True, host_ops, "", ("float32",), ("float32",), programs)

    summary = cf.OpSummary("OpF", [13], [case("a", 0, 1), case("b", 0, 0), case("c", 1, 1)], [])
    assert summary.placement() == "device; folded in 1 of 3; host in 1 of 3"
    assert cf.OpSummary("OpF", [13], [case("a", 0, 0)], []).placement() == "folded"
    assert cf.OpSummary("OpF", [13], [case("a", 0, 0), case("b", 2, 3)], []).placement() == "host; folded in 1 of 2"


def test_run_case_gives_the_reason_of_a_failing_case() -> None:
    result = cf.run_case("test_identity_sequence_cpu")
    assert not result.passed and result.host_ops is None and result.placement is None
    assert result.reason == "dtype not on device: graph input: value 'x' is not a tensor (ttc imports tensors only)"
    assert result.input_types == ("sequence(float32)",)


def test_run_case_says_when_bf16_inputs_explain_a_small_mismatch() -> None:
    """fmod(-4.3, 2.1) = -0.1, but the device reads -4.3125 and 2.09375, whose fmod is -0.125: the exact
    answer for the inputs it holds, just outside the tolerance."""
    result = cf.run_case("test_mod_mixed_sign_float32_cpu")
    assert result.reason.startswith("numerics: output 0: 2 of 6 values outside rtol=atol=0.02")
    assert result.reason.endswith("(within tolerance of the result for bf16-rounded inputs)")


# --- files -------------------------------------------------------------------------------------


def result(case: str, op: str, passed: bool, host_ops: int | None = 0, reason: str = "",
           expanded: bool = False) -> cf.CaseResult:
    return cf.CaseResult(case, op, expanded, passed, host_ops, reason, ("float32",), ("float32",))


# Op names no converter will ever have, so the table rows below do not change as ttc grows.
RESULTS = [
    result("test_op_a_cpu", "OpA", True),
    result("test_op_a_expanded_cpu", "OpA", True, host_ops=2, expanded=True),
    result("test_op_b_cpu", "OpB", False, None, "unsupported op: OpB"),
    result("test_op_c_int8_cpu", "OpC", False, None, "dtype not on device: node 'C_0': 'ttir.add' computes on "
           "tensor<3xi8>; integer and boolean tensors cannot run on the device yet"),
    result("test_op_c_cpu", "OpC", True),
]


def test_expectations_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "expected_failures.txt"
    cf.write_expectations(path, RESULTS)
    expectations = cf.read_expectations(path)
    assert expectations.onnx == cf.onnx_minor()
    assert expectations.failures == {"test_op_b_cpu": "unsupported op: OpB", "test_op_c_int8_cpu": RESULTS[3].reason}
    assert list(expectations.failures) == sorted(expectations.failures)


def test_expectations_need_the_onnx_version_and_well_formed_lines(tmp_path: Path) -> None:
    path = tmp_path / "expected_failures.txt"
    path.write_text("# comment\ntest_abs_cpu  unsupported op: Abs\n")
    with pytest.raises(ValueError, match=r"no `onnx X\.Y` line"):
        cf.read_expectations(path)
    path.write_text("onnx 1.23\ntest_abs_cpu\n")
    with pytest.raises(ValueError, match=r"expected_failures.txt:2: expected `case  reason`"):
        cf.read_expectations(path)


def test_results_round_trip_and_are_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    cf.write_results(first, RESULTS)
    shuffled = RESULTS.copy()
    random.Random(1).shuffle(shuffled)
    cf.write_results(second, shuffled)
    assert first.read_bytes() == second.read_bytes()
    saved = cf.read_results(first)
    assert saved.onnx == cf.onnx_minor()
    assert saved.cases == {r.case: r for r in RESULTS}


def test_supported_ops_table() -> None:
    text = cf.render_supported_ops(cf.SavedResults("1.23", {r.case: r for r in RESULTS}))
    assert ("**3 of 5 cases pass (60.0%)**: 2 entirely on the device, 0 folded at compile time (no device program), "
            "1 with host ops.") in text
    assert "| OpA | - | 1/1 | 1/1 | device; host in 1 of 2 | float32 | - |" in text
    assert "| OpB | - | 0/1 | - | - | - | unsupported op: OpB |" in text
    assert ("| OpC | - | 1/2 | - | device | float32 | dtype not on device: 'ttir.add' computes on tensor<...>; "
            "integer and boolean tensors cannot run on the devi... |") in text
    assert "rtol = atol = 0.02" in text


def test_supported_ops_table_lists_every_converted_op_with_its_versions() -> None:
    from ttc.frontend.converters import supported_op_types

    text = cf.render_supported_ops(cf.SavedResults("1.23", {}))
    for op in supported_op_types():
        since = ", ".join(str(v) for v in cf.converter_versions(op))
        assert f"| {op} | {since} (" in text, op


def test_converter_versions_come_from_the_converter_table() -> None:
    assert cf.converter_versions("Softmax") == [13]
    assert cf.converter_versions("NoSuchOp") == []
    assert cf.schema_versions("Softmax")[:2] == [1, 11]


def test_onnx_minor() -> None:
    assert cf.onnx_minor("1.23.2") == "1.23"
    assert cf.onnx_minor() == ".".join(onnx.__version__.split(".")[:2])
