"""The pass registry, the pipeline syntax and the pass manager (verify, print, time)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pytest

from ttc.ir import IRError, Module, UserError, parse_module
from ttc.ir.diagnostics import InternalCompilerError
from ttc.ir.types import TensorType, f32
from ttc.passes import Pass, PassManager, parse_pipeline, pipeline_text, register_pass, registered_passes
from ttc.passes.canonicalize import Canonicalize
from ttc.passes.decompose import Decompose
from ttc.passes.manager import timing_report

SOURCE = """
module {
  func.func @main(%arg0: tensor<2x3xf32>) -> tensor<2x3xf32> {
    %0 = "ttir.constant"() {value = dense<0.0> : tensor<2x3xf32>} : () -> tensor<2x3xf32> loc("zero")
    %1 = "ttir.add"(%arg0, %0) : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32> loc("add")
    func.return %1 : tensor<2x3xf32> loc("ret")
  }
}
"""

CANONICAL = """module {
  func.func @main(%arg0: tensor<2x3xf32>) -> tensor<2x3xf32> {
    func.return %arg0 : tensor<2x3xf32> loc("ret")
  }
}
"""


def module() -> Module:
    return parse_module(SOURCE, "test.mlir")


@pytest.fixture
def options_pass(scratch_registry: None) -> type[Pass]:
    @register_pass
    @dataclass
    class Options(Pass):
        """A pass with one option of each type."""

        name = "test-options"
        flag: bool = False
        count: int = 1
        scale: float = 1.0
        label: str = "x"

        def run(self, module: Module) -> None:
            pass

    return Options


@pytest.fixture
def breaking_pass(scratch_registry: None) -> type[Pass]:
    @register_pass
    @dataclass
    class BreakTypes(Pass):
        """Change the function's argument type without fixing its users (invalid IR)."""

        name = "test-break-types"

        def run(self, module: Module) -> None:
            module.function("main").args[0].type = TensorType((5,), f32)

    return BreakTypes


# ----------------------------------------------------------------------------------------------
# Registry


def test_registered_passes_include_the_builtin_ones() -> None:
    passes = registered_passes()
    assert passes["canonicalize"] is Canonicalize
    assert passes["decompose"] is Decompose
    assert Canonicalize.summary().startswith("Erase dead code")
    assert list(Decompose.options()) == ["keep-gemm"]


def test_register_pass_rejects_bad_declarations(scratch_registry: None) -> None:
    with pytest.raises(TypeError, match="kebab-case"):
        register_pass(dataclass(type("Bad", (Pass,), {"name": "Bad_Name"})))
    with pytest.raises(TypeError, match="must be a @dataclass"):
        register_pass(type("Plain", (Pass,), {"name": "plain"}))
    with pytest.raises(TypeError, match="is taken by Canonicalize"):
        register_pass(dataclass(type("Other", (Pass,), {"name": "canonicalize"})))

    @dataclass
    class ListOption(Pass):
        name = "list-option"
        sizes: list = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="must be bool, int, float or str"):
        register_pass(ListOption)

    @dataclass
    class NoDefault(Pass):
        name = "no-default"
        size: int

    with pytest.raises(TypeError, match="needs a default"):
        register_pass(NoDefault)


# ----------------------------------------------------------------------------------------------
# Pipeline text


def test_parse_pipeline_names_and_options() -> None:
    passes = parse_pipeline("canonicalize,decompose{keep-gemm=true}")
    assert passes == [Canonicalize(), Decompose(keep_gemm=True)]
    assert parse_pipeline(" canonicalize{fold-weights=false} , decompose ") == [
        Canonicalize(fold_weights=False), Decompose()]
    assert parse_pipeline("") == []
    assert parse_pipeline("   ") == []


def test_parse_pipeline_converts_each_option_type(options_pass: type[Pass]) -> None:
    (p,) = parse_pipeline('test-options{flag=true count=3 scale=0.25 label="a b"}')
    assert p == options_pass(flag=True, count=3, scale=0.25, label="a b")
    (p,) = parse_pipeline("test-options{count=-2, scale=1e-3,label=y}")  # commas separate options too
    assert p == options_pass(count=-2, scale=1e-3, label="y")
    (p,) = parse_pipeline("test-options{flag}")  # a bare bool option means true
    assert p == options_pass(flag=True)
    (p,) = parse_pipeline("test-options{}")
    assert p == options_pass()


def test_pipeline_text_round_trips(options_pass: type[Pass]) -> None:
    passes = [Canonicalize(), options_pass(flag=True, label="two words"), Decompose(keep_gemm=True)]
    text = pipeline_text(passes)
    assert text == 'canonicalize,test-options{flag=true label="two words"},decompose{keep-gemm=true}'
    assert parse_pipeline(text) == passes


@pytest.mark.parametrize(("spec", "message"), [
    ("canonicalise", "unknown pass 'canonicalise'; did you mean 'canonicalize'?"),
    ("frobnicate", "unknown pass 'frobnicate'; known passes: allocate, canonicalize, channels-last, decompose"),
    ("decompose{keep-gem=true}",
     "pass 'decompose' has no option 'keep-gem'; did you mean 'keep-gemm'? (options: keep-gemm)"),
    ("decompose{x=1}", "pass 'decompose' has no option 'x' (options: keep-gemm)"),
    ("decompose{keep-gemm=yes}", "option 'keep-gemm' of pass 'decompose' expects true or false, got 'yes'"),
    ("decompose{keep-gemm=true keep-gemm=false}", "option 'keep-gemm' of pass 'decompose' is given twice"),
    ("decompose{keep-gemm=true", "'{' of pass 'decompose' is never closed"),
    ("decompose{keep-gemm=}", "expected an option value, found '}'"),
    ("canonicalize,", "expected a pass name, found the end"),
    ("canonicalize,,decompose", "expected a pass name, found ','"),
    ("canonicalize decompose", "expected ',' or the end after pass 'canonicalize', found 'd'"),
    ('decompose{keep-gemm="true}', "unterminated string"),
])
def test_parse_pipeline_errors(spec: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        parse_pipeline(spec)
    assert message in str(info.value)
    assert f"\n  {spec}\n" in str(info.value)  # the pipeline is quoted with a caret under the problem


def test_parse_pipeline_error_points_at_the_problem() -> None:
    with pytest.raises(UserError) as info:
        parse_pipeline("canonicalize,decompose{keep-gemm=maybe}")
    assert str(info.value) == (
        "bad pass pipeline at column 34: option 'keep-gemm' of pass 'decompose' expects true or false, "
        "got 'maybe'\n"
        "  canonicalize,decompose{keep-gemm=maybe}\n"
        "  " + " " * 33 + "^")


@pytest.mark.parametrize(("spec", "message"), [
    ("test-options{count=many}", "option 'count' of pass 'test-options' expects an integer, got 'many'"),
    ("test-options{count=1.5}", "expects an integer, got '1.5'"),
    ("test-options{scale=big}", "option 'scale' of pass 'test-options' expects a number, got 'big'"),
    ("test-options{count}", "option 'count' of pass 'test-options' needs a value (`=...`) of type int"),
])
def test_parse_pipeline_bad_values(options_pass: type[Pass], spec: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        parse_pipeline(spec)


def test_pass_without_options_says_so(scratch_registry: None) -> None:
    @register_pass
    @dataclass
    class Bare(Pass):
        """No options."""

        name = "test-bare"

    with pytest.raises(UserError, match="pass 'test-bare' takes no options, got 'x'"):
        parse_pipeline("test-bare{x=1}")


# ----------------------------------------------------------------------------------------------
# The pass manager


def test_pass_manager_runs_passes_in_order() -> None:
    m = module()
    PassManager("canonicalize,decompose", stream=io.StringIO()).run(m)
    assert str(m) == CANONICAL


def test_print_ir_after_all_prints_a_header_and_the_ir_after_every_pass() -> None:
    stream = io.StringIO()
    PassManager("canonicalize,decompose", print_ir_after_all=True, stream=stream).run(module())
    assert stream.getvalue() == (
        "// -----// IR Dump After Canonicalize (canonicalize) //----- //\n" + CANONICAL + "\n"
        "// -----// IR Dump After Decompose (decompose) //----- //\n" + CANONICAL + "\n")


def test_print_ir_after_prints_only_the_named_passes() -> None:
    stream = io.StringIO()
    PassManager([Canonicalize(), Decompose()], print_ir_after=["decompose"], stream=stream).run(module())
    assert stream.getvalue() == "// -----// IR Dump After Decompose (decompose) //----- //\n" + CANONICAL + "\n"


def test_print_ir_after_an_unknown_pass_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown pass 'decompse'; did you mean 'decompose'"):
        PassManager("canonicalize", print_ir_after=["decompse"])


def test_nothing_is_printed_unless_asked() -> None:
    stream = io.StringIO()
    PassManager("canonicalize,decompose", stream=stream).run(module())
    assert stream.getvalue() == ""


def test_timing_prints_a_table_of_passes_verifier_and_total() -> None:
    stream = io.StringIO()
    PassManager("canonicalize,decompose", timing=True, stream=stream).run(module())
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"===-+===", lines[0]) and lines[2] == lines[0]
    assert lines[1].strip() == "... Execution time report ..."
    assert re.fullmatch(r"  Total Execution Time: \d+\.\d{4} seconds", lines[3])
    assert lines[4:6] == ["", "  ----Wall Time----  ----Name----"]
    names = [re.fullmatch(r" +\d+\.\d{4} \( *\d+\.\d%\)  (\w+)", line).group(1) for line in lines[6:]]
    assert names == ["Canonicalize", "Decompose", "Verifier", "Total"]
    assert lines[-1].split("(")[1].startswith("100.0%)")


def test_timing_report_layout() -> None:
    rule = "===" + "-" * 73 + "==="
    assert timing_report([("Canonicalize", 0.25), ("Verifier", 0.5)], 1.0) == "\n".join([
        rule,
        "                         ... Execution time report ...",
        rule,
        "  Total Execution Time: 1.0000 seconds",
        "",
        "  ----Wall Time----  ----Name----",
        "    0.2500 ( 25.0%)  Canonicalize",
        "    0.5000 ( 50.0%)  Verifier",
        "    1.0000 (100.0%)  Total",
        ""])


def test_timing_without_verification_has_no_verifier_row() -> None:
    stream = io.StringIO()
    PassManager("canonicalize", verify=False, timing=True, stream=stream).run(module())
    assert [line.split()[-1] for line in stream.getvalue().splitlines()[6:]] == ["Canonicalize", "Total"]


def test_invalid_input_is_reported_before_any_pass_runs() -> None:
    m = parse_module(SOURCE.replace("dense<0.0> : tensor<2x3xf32>", "dense<0.0> : tensor<3xf32>"), "test.mlir")
    stream = io.StringIO()
    with pytest.raises(IRError, match=r"^test.mlir:4:5: error: 'ttir.constant' dense value of type"):
        PassManager("canonicalize", print_ir_after_all=True, stream=stream).run(m)
    assert stream.getvalue() == ""


def test_verifier_names_the_pass_that_broke_the_ir(breaking_pass: type[Pass]) -> None:
    stream = io.StringIO()
    manager = PassManager("canonicalize,test-break-types,decompose", print_ir_after_all=True, stream=stream)
    with pytest.raises(InternalCompilerError) as info:
        manager.run(module())
    assert info.value.exit_code == 4
    assert str(info.value).startswith("ttc: internal compiler error: pass 'test-break-types' produced invalid IR "
                                      "(a bug in ttc, not in the model;")
    assert "entry block arguments (tensor<5xf32>) do not match the signature" in str(info.value)
    assert "// -----// IR Dump After BreakTypes (test-break-types) Failed //----- //" in stream.getvalue()
    assert "(decompose)" not in stream.getvalue()


def test_no_verify_lets_broken_ir_through(breaking_pass: type[Pass]) -> None:
    m = module()
    PassManager("test-break-types", verify=False, stream=io.StringIO()).run(m)
    assert m.function("main").args[0].type == TensorType((5,), f32)


def test_a_crashing_pass_is_named_in_the_traceback(scratch_registry: None) -> None:
    @register_pass
    @dataclass
    class Crash(Pass):
        """Fail with an internal error."""

        name = "test-crash"

        def run(self, module: Module) -> None:
            raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError) as info:
        PassManager("test-crash", stream=io.StringIO()).run(module())
    assert "while running pass 'test-crash'" in info.value.__notes__


def test_cli_reports_a_pass_breaking_the_ir_as_an_internal_error(breaking_pass: type[Pass], tmp_path, capsys) -> None:
    """A pass emitting IR the verifier rejects is ttc's bug: exit 4, the pass and the failing op named, and not
    worded as the user's error."""
    from ttc.cli import main

    path = tmp_path / "in.mlir"
    path.write_text(SOURCE)
    assert main(["opt", str(path), "--pipeline", "test-break-types"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("ttc: internal compiler error: pass 'test-break-types' produced invalid IR (a bug in ttc")
    assert "do not match the signature" in err and "Traceback" not in err
