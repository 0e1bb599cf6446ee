"""The IR as people read it: the device descriptor once as #device, programs numbered as the profile numbers
them and named by their ONNX node, labelled kernels with their grid and runtime arguments beside the op,
and locations only when asked for (terminal) but always in files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ttc.cli import main
from ttc.compiler import compile_model
from ttc.ir import parse_module, print_module
from ttc.ir.diagnostics import IRError
from ttc.ir.printer import print_program
from ttc.ir.verifier import verify
from ttc.profile import node_label, static_profile

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mlp.onnx"


@pytest.fixture(scope="module")
def compiled():
    from ttc.zoo import encoder_block

    return compile_model(encoder_block(seq=64, hidden=64, heads=2, ffn=128))


def test_lowered_text_reads_and_round_trips(compiled) -> None:
    module = compiled.module
    text = print_module(module)
    assert text.startswith("#device = #tt.device<") and text.count("#tt.device<") == 1
    assert "module attributes {tt.device = #device," in text
    profile = static_profile(module, compiled.device_weights)
    headers = re.findall(r"(?m)^ *// program (\d+): (.*) \((\w+), grid (\d+)x(\d+)\)$", text)
    assert [int(h[0]) for h in headers] == list(range(len(profile)))
    for (_, name, kind, gx, gy), p in zip(headers, profile, strict=True):
        assert name == node_label(p, 60) and kind == p.kind and int(gx) * int(gy) == p.cores
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.lstrip().startswith('"ttmetal.enqueue_program"'):
            assert lines[index - 1].lstrip().startswith("// program ")
            block = lines[index:index + 12]
            assert any(item.strip().startswith("grid = #tt.grid<") for item in block)
            assert any("// reader, per core" in item for item in block)
            assert any(item.strip() == "^reader:" for item in lines[index:])
    assert text.count("^reader:") == text.count("^compute:") == text.count("^writer:") == len(profile)
    again = parse_module(text, "lowered.mlir", module.weights)
    verify(again)
    assert print_module(again) == text
    # without locations: smaller, still parses and verifies, the program headers keep their names
    bare = print_module(module, locations=False)
    assert " loc(" not in bare and len(bare) < 0.8 * len(text)
    assert re.findall(r"// program .*", bare) == re.findall(r"// program .*", text)
    verify(parse_module(bare, "bare.mlir", module.weights))


def test_print_program_is_the_programs_text(compiled) -> None:
    text = print_module(compiled.module)
    one = print_program(compiled.module, 3)
    assert one.startswith("// program 3: ") and one.count('"ttmetal.enqueue_program"') == 1
    first = one.splitlines()[1]
    assert any(line.strip() == first for line in text.splitlines())
    assert one.splitlines()[-1].startswith("}) : (") and one.splitlines()[-1].endswith(")")


def test_alias_errors() -> None:
    with pytest.raises(IRError, match="undefined attribute alias #dev"):
        parse_module("module attributes {tt.device = #dev} {\n}\n")
    with pytest.raises(IRError, match="defined twice"):
        parse_module("#a = 1\n#a = 2\nmodule attributes {x = #a} {\n}\n")
    module = parse_module("#a = [1, 2]\nmodule attributes {x = #a, y = #a} {\n}\n")
    assert module.attributes["x"] == module.attributes["y"] == (1, 2)


def test_opt_print_program_and_locations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "dump"
    assert main(["compile", str(EXAMPLE), "-o", str(tmp_path / "m.ttc"), "--dump-ir", str(dump), "-q"]) == 0
    lowered = dump / "10-allocate.mlir"
    assert ' loc("/fc1/Gemm")' in lowered.read_text() or 'loc(fused["' in lowered.read_text()  # files keep them
    capsys.readouterr()
    assert main(["opt", str(lowered), "--print-program", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("// program 1: /fc2/Gemm (matmul, grid ") and "loc(" not in out
    assert main(["opt", str(lowered), "--print-program", "1", "--print-locations"]) == 0
    assert 'loc("/fc2/Gemm")' in capsys.readouterr().out
    assert main(["opt", str(lowered), "--print-program", "2"]) == 2
    assert "has 2 programs, numbered 0 to 1" in capsys.readouterr().err
    imported = tmp_path / "i.mlir"
    assert main(["import", str(EXAMPLE), "-o", str(imported)]) == 0
    assert main(["opt", str(imported), "--print-program", "0"]) == 2
    assert "no device programs yet" in capsys.readouterr().err
    # --print-ir-after on the terminal: no locations unless asked
    assert main(["opt", str(imported), "--pipeline", "decompose", "--print-ir-after", "decompose", "-q"]) == 0
    err = capsys.readouterr().err
    assert "IR Dump After" in err and "loc(" not in err
    assert main(["opt", str(imported), "--pipeline", "decompose", "--print-ir-after", "decompose", "-q",
                 "--print-locations"]) == 0
    assert 'loc("/fc1/Gemm")' in capsys.readouterr().err
