"""`ttc inspect MODEL.ttc [--json]`: the manifest, versions, provenance, memory and every program."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ttc import __version__, zoo
from ttc.artifact import read_artifact
from ttc.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def artifact(tmp_path: Path, capsys) -> tuple[Path, Path]:
    model = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 96, 10), batch=2), model)
    out = tmp_path / "mlp.ttc"
    assert run(["compile", str(model), "-o", str(out), "--math-fidelity", "hifi2", "-q"], capsys)[0] == 0
    return model, out


def test_inspect_json_holds_the_manifest_and_every_program(artifact: tuple[Path, Path], capsys) -> None:
    model, path = artifact
    code, out, err = run(["inspect", str(path), "--json"], capsys)
    assert code == 0 and err == ""
    info = json.loads(out)
    manifest = read_artifact(path).manifest
    assert info["versions"] == {"format": 2, "written_by_ttc": __version__, "this_ttc": __version__}
    assert info["arch"] == "e150" and info["options"] == manifest["options"]
    assert info["options"]["math_fidelity"] == "hifi2"
    assert info["inputs"] == manifest["inputs"] and info["outputs"] == manifest["outputs"]
    source = info["source_model"]
    assert source["path"] == str(model.resolve()) and source["present"] is True and len(source["sha256"]) == 64
    assert source["producer"].startswith("ttc.zoo") and source["opsets"]["ai.onnx"] >= 13 and source["ir_version"] > 0
    assert info["memory"]["dram_bytes"] == manifest["memory"]["dram_bytes"] and info["memory"]["weights"] == 4
    assert 0 < info["memory"]["weight_bytes"] < info["file_bytes"] == path.stat().st_size
    programs = info["programs"]
    assert len(programs) == manifest["programs"] == info["programs"][-1]["program"] + 1
    assert [p["kind"] for p in programs] == ["matmul", "matmul"]
    for p in programs:
        x, y = map(int, p["grid"].split("x"))
        assert p["cores"] == x * y >= 1 and p["circular_buffers"] >= 3 and p["cb_bytes_per_core"] > 0
    assert programs[0]["nodes"] == ["/fc1/Gemm", "/relu1/Relu"] and programs[1]["nodes"][-1] == "/fc2/Gemm"


def test_inspect_text_reads_as_a_summary(artifact: tuple[Path, Path], capsys) -> None:
    model, path = artifact
    code, out, _ = run(["inspect", str(path)], capsys)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith(f"{path}: ttc artifact, format 2, written by ttc {__version__}")
    assert lines[1] == f"source model: {model.resolve()} (present)"
    assert "producer ttc.zoo" in lines[2] and "opsets ai.onnx" in lines[2]
    assert lines[3].startswith("target: e150; dtype bf16, math fidelity hifi2")
    fields = [line.split() for line in lines]
    assert fields.index(["input", "2x64", "float32"]) == fields.index(["inputs:"]) + 1
    assert fields.index(["logits", "2x10", "float32"]) == fields.index(["outputs:"]) + 1
    assert "memory: DRAM" in out and "weights resident" in out and "4 packed weights" in out
    assert "programs: 2 device programs, 0 host ops" in out
    rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert [row[1] for row in rows] == ["matmul", "matmul"] and rows[0][-2:] == ["/relu1/Relu", "(+1)"]
    os.remove(model)
    assert f"source model: {model.resolve()} (missing)" in run(["inspect", str(path)], capsys)[1]


def test_inspect_errors(tmp_path: Path, capsys) -> None:
    code, _, err = run(["inspect", str(tmp_path / "absent.ttc")], capsys)
    assert code == 2 and "no such file" in err
    (tmp_path / "bogus.ttc").write_text("hello")
    code, _, err = run(["inspect", str(tmp_path / "bogus.ttc")], capsys)
    assert code == 2 and "not a .ttc artifact" in err
