"""The small things that make the CLI pleasant: usage errors said once with a "did you mean", the file type
named when a file of the wrong kind is given, `--dump-ir` clearing an earlier dump, `ttc opt --list-passes`,
a pass run without its prerequisite, and shell completion."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ttc import zoo
from ttc.cli import build_parser, main
from ttc.completion import bash_script, zsh_script
from ttc.passes import registered_passes


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10), batch=2), path)
    return path


@pytest.fixture
def artifact(model_path: Path, tmp_path: Path, capsys) -> Path:
    out = tmp_path / "mlp.ttc"
    assert run(["compile", str(model_path), "-o", str(out), "--quiet"], capsys)[0] == 0
    return out


@pytest.fixture
def ir_path(model_path: Path, tmp_path: Path, capsys) -> Path:
    out = tmp_path / "mlp.mlir"
    assert run(["import", str(model_path), "-o", str(out)], capsys)[0] == 0
    return out


# --- usage errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, first_line", [
    (["run", "m.onnx", "--gloden"], "ttc run: error: unrecognized arguments: --gloden; did you mean --golden?"),
    (["compile", "m.onnx", "--math-fidelty", "lofi"],
     "ttc compile: error: unrecognized arguments: --math-fidelty lofi; did you mean --math-fidelity?"),
    (["rnu", "m.onnx"], "ttc: error: argument COMMAND: invalid choice: 'rnu' (choose from 'import', 'opt', "
                        "'compile', 'run', 'profile', 'report', 'generate', 'inspect', 'completion'); did you mean 'run'?"),
    (["run", "m.onnx", "--arch", "e15"], "ttc run: error: argument --arch: invalid choice: 'e15' (choose from "
                                         "'e150', 'e75'); did you mean 'e150'?"),
    (["run", "m.onnx", "--zzzz"], "ttc run: error: unrecognized arguments: --zzzz"),
    (["run", "m.onnx", "--gloden", "--sed", "3"], "ttc run: error: unrecognized arguments: --gloden --sed 3; did you "
                                                  "mean --golden for --gloden, --seed for --sed?"),
    (["run"], "ttc run: error: the following arguments are required: MODEL.ttc|MODEL.onnx"),
])
def test_usage_errors_are_said_once_with_a_suggestion(args: list[str], first_line: str, capsys) -> None:
    code, out, err = run(args, capsys)
    lines = err.splitlines()
    assert code == 2 and out == "" and lines[0] == first_line
    assert lines[1].startswith(f"usage: {first_line.split(':')[0]} ")
    assert "ttc: error: ttc" not in err


# --- the wrong kind of file -----------------------------------------------------------------------------


def test_an_artifact_or_ir_where_an_onnx_model_is_expected_is_named(artifact: Path, ir_path: Path, model_path: Path,
                                                                    capsys) -> None:
    for command in (["compile"], ["import"], ["run"], ["profile"]):
        code, _, err = run([*command, str(ir_path)], capsys)
        assert code == 2 and f"{ir_path}: this is IR text (.mlir), not " in err, command
    for command in (["compile"], ["import"]):
        code, _, err = run([*command, str(artifact)], capsys)
        assert code == 2 and f"{artifact}: this is a .ttc artifact (a compiled model), not an ONNX model" in err
    code, _, err = run(["run", str(artifact), "--golden", "--model", str(artifact)], capsys)
    assert code == 2 and "--golden: " in err and "this is a .ttc artifact (a compiled model), not an ONNX model" in err
    renamed = artifact.with_name("really-an-artifact.onnx")  # judged by the contents, not the name
    shutil.copy(artifact, renamed)
    code, _, err = run(["compile", str(renamed)], capsys)
    assert code == 2 and "this is a .ttc artifact" in err
    np.save(artifact.with_name("x.npy"), np.zeros(3))
    code, _, err = run(["compile", str(artifact.with_name("x.npy"))], capsys)
    assert code == 2 and "this is a numpy .npy array, not an ONNX model" in err


def test_opt_and_inspect_name_the_file_type_they_got(artifact: Path, model_path: Path, capsys) -> None:
    code, _, err = run(["opt", str(model_path)], capsys)
    assert code == 2 and f"{model_path}: this is an ONNX model, not IR text: `ttc import` it first" in err
    code, _, err = run(["opt", str(artifact)], capsys)
    assert code == 2 and "this is a .ttc artifact (a compiled model), not IR text" in err
    code, _, err = run(["inspect", str(model_path)], capsys)
    assert code == 2 and "`ttc inspect` reads .ttc artifacts" in err


# --- --dump-ir ---------------------------------------------------------------------------------------------


def test_dump_ir_removes_an_earlier_runs_numbered_files(model_path: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "dump"
    folder.mkdir()
    stale = ["11-allocate.mlir", "12-lower-to-kernels.mlir", "99-grid.mlir", "weights.npz"]
    kept = ["notes.txt", "my-model.mlir", "1-x.mlir"]  # not ttc's numbered dumps: left alone
    for name in stale + kept:
        (folder / name).write_text("old")
    args = ["compile", str(model_path), "-o", str(tmp_path / "m.ttc"), "--dump-ir", str(folder), "--pipeline",
            "decompose,canonicalize,tilize,fuse,layout,grid,lower-to-kernels,allocate"]
    assert run(args, capsys)[0] == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["00-import.mlir", "01-decompose.mlir", "02-canonicalize.mlir", "03-tilize.mlir",
                            "04-fuse.mlir", "05-layout.mlir", "06-grid.mlir", "07-lower-to-kernels.mlir",
                            "08-allocate.mlir", "weights.npz", *kept])
    assert all((folder / name).read_text() == "old" for name in kept)
    assert (folder / "08-allocate.mlir").read_text() != "old"


# --- ttc opt --------------------------------------------------------------------------------------------------


def test_list_passes_prints_one_line_per_pass(capsys) -> None:
    code, out, err = run(["opt", "--list-passes"], capsys)
    lines = out.splitlines()
    assert code == 0 and err == "" and len(lines) == len(registered_passes())
    for line, (name, cls) in zip(lines, registered_passes().items(), strict=True):
        assert line.startswith(name)
        for option in cls.options():
            assert f"{option}=" in line.split("  ")[0]
    decompose = next(line for line in lines if line.startswith("decompose"))
    assert decompose.startswith("decompose{keep-gemm=false}") and "Split Gemm, Pow and Div" in decompose
    code, _, err = run(["opt"], capsys)
    assert code == 2 and "FILE.mlir (or --list-passes)" in err


@pytest.mark.parametrize("pipeline, message", [
    ("decompose,lower-to-kernels", "pass 'lower-to-kernels' needs 'tilize' to have run first"),
    ("decompose,grid", "pass 'grid' needs 'tilize' to have run first"),
    ("decompose,layout", "pass 'layout' needs 'tilize' to have run first"),
    ("decompose,tilize,fuse,layout,grid,allocate",
     "pass 'allocate' needs 'lower-to-kernels' to have run first: it holds ttir ops"),
])
def test_a_pass_without_its_prerequisite_says_so(ir_path: Path, pipeline: str, message: str, capsys) -> None:
    code, out, err = run(["opt", str(ir_path), "--pipeline", pipeline], capsys)
    assert code == 2 and out == "" and message in err


def test_a_pass_whose_prerequisite_ran_in_an_earlier_command_runs(model_path: Path, tmp_path: Path, capsys) -> None:
    """The IR is the judge: a dump taken after grid goes on with lower-to-kernels,allocate."""
    folder = tmp_path / "dump"
    assert run(["compile", str(model_path), "-o", str(tmp_path / "m.ttc"), "--dump-ir", str(folder)], capsys)[0] == 0
    grid = next(folder.glob("*-grid.mlir"))
    code, out, _ = run(["opt", str(grid), "--pipeline", "lower-to-kernels,allocate"], capsys)
    assert code == 0 and '"ttmetal.enqueue_program"' in out and "tt.l1_peak_bytes" in out


# --- shell completion ---------------------------------------------------------------------------------------


def complete(script: str, words: list[str]) -> list[str]:
    """What bash's completion offers for the command line `words` (the last one being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n_ttc_complete\n" \
              "printf '%s\\n' \"${COMPREPLY[@]}\""
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                            check=True)
    return sorted(line for line in result.stdout.splitlines() if line)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_knows_commands_flags_and_choices(capsys) -> None:
    code, script, _ = run(["completion", "bash"], capsys)
    assert code == 0 and script == bash_script(build_parser())
    assert complete(script, ["ttc", "r"]) == ["report", "run"]
    assert complete(script, ["ttc", "i"]) == ["import", "inspect"]
    assert complete(script, ["ttc", "run", "--gol"]) == ["--golden"]
    assert complete(script, ["ttc", "run", "x.onnx", "--arch", ""]) == ["e150", "e75"]
    assert complete(script, ["ttc", "compile", "--math-fidelity", "h"]) == ["hifi2", "hifi3", "hifi4"]
    assert complete(script, ["ttc", "opt", "--list"]) == ["--list-passes"]
    assert complete(script, ["ttc", "completion", ""]) == ["bash", "zsh"]
    assert complete(script, ["ttc", "run", "--seed", ""]) == []
    assert "--per-op" not in complete(script, ["ttc", "compile", "--"])


def test_bash_completion_completes_file_names(tmp_path: Path, capsys) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "inputs.npz").write_bytes(b"")
    _, script, _ = run(["completion", "bash"], capsys)
    assert complete(script, ["ttc", "run", f"{tmp_path}/mo"]) == [f"{tmp_path}/model.onnx"]
    assert complete(script, ["ttc", "run", "x.ttc", "--input", f"{tmp_path}/in"]) == [f"{tmp_path}/inputs.npz"]


def test_zsh_completion_runs_the_same_function_through_bashcompinit(capsys) -> None:
    code, script, _ = run(["completion", "zsh"], capsys)
    assert code == 0 and script == zsh_script(build_parser())
    assert "bashcompinit && bashcompinit" in script and bash_script(build_parser()) in script
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n", "-c", script]).returncode == 0
    code, _, err = run(["completion", "fish"], capsys)
    assert code == 2 and "invalid choice: 'fish'" in err
