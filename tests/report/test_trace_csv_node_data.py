"""`ttc profile --trace/--csv`, the report's data and `ttc report --node-data` (Model Explorer overlay)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest

from ttc import zoo
from ttc.cli import main

# The trace-event format (Chrome's "Trace Event Format" document): every event has a name, a phase, a
# process and a thread; every phase but metadata a timestamp; complete events a duration.
_REQUIRED = {"name": str, "ph": str, "pid": int, "tid": int}
_NUMBER = (int, float)


def validate_trace(trace: dict) -> list[dict]:
    """Checks the JSON object form of the trace-event format; returns the complete ("X") events."""
    assert isinstance(trace, dict) and isinstance(trace.get("traceEvents"), list)
    assert trace.get("displayTimeUnit", "ms") in ("ms", "ns")
    complete = []
    for event in trace["traceEvents"]:
        for key, kind in _REQUIRED.items():
            assert isinstance(event.get(key), kind), f"{key} missing or not {kind.__name__}: {event}"
        assert event["ph"] in ("X", "M", "B", "E", "i", "C"), event
        if event["ph"] == "M":
            assert event["name"] in ("process_name", "thread_name", "thread_sort_index", "process_sort_index")
            assert isinstance(event.get("args"), dict)
            continue
        assert isinstance(event.get("ts"), _NUMBER) and event["ts"] >= 0, event
        if event["ph"] == "X":
            assert isinstance(event.get("dur"), _NUMBER) and event["dur"] >= 0, event
            complete.append(event)
        if "args" in event:
            assert isinstance(event["args"], dict)
    return complete


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "encoder.onnx"
    zoo.save(zoo.encoder_block(seq=64, hidden=64, heads=2, ffn=128), path)
    return path


def test_trace_and_csv(encoder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace_path, csv_path, json_path = tmp_path / "t.json", tmp_path / "p.csv", tmp_path / "p.json"
    assert main(["profile", str(encoder), "--static", "--trace", str(trace_path), "--csv", str(csv_path),
                 "--json", str(json_path), "-q"]) == 0
    capsys.readouterr()
    profile = json.loads(json_path.read_text())
    programs = profile["programs"]
    events = validate_trace(json.loads(trace_path.read_text()))
    trace = json.loads(trace_path.read_text())
    names = {(e["tid"], e["args"]["name"]) for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert (0, "programs") in names and (1, "core (0,0)") in names and (108, "core (11,8)") in names
    # the programs track: one slice per program, back to back, its counts as args
    track = [e for e in events if e["tid"] == 0]
    assert [e["args"]["program"] for e in track] == list(range(len(programs)))
    start = 0.0
    for event, p in zip(track, programs, strict=True):
        assert event["ts"] == pytest.approx(start) and event["dur"] == pytest.approx(p["time_us"])
        assert event["args"]["cores"] == p["cores"] and event["args"]["dram_bytes"] == p["dram_bytes"]
        assert event["args"]["tiles"] == p["counts"]["tiles"]
        start += p["time_us"]
    # one slice per core a program runs on
    for index, p in enumerate(programs):
        assert sum(1 for e in events if e["tid"] > 0 and e["args"]["program"] == index) == p["cores"]
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["program"]) for r in rows] == list(range(len(programs)))
    for row, p in zip(rows, programs, strict=True):
        assert row["kind"] == p["kind"] and int(row["cores"]) == p["cores"] and row["bound"] == p["bound"]
        gx, gy = (int(n) for n in row["grid"].split("x"))
        assert gx * gy == p["cores"]
        assert float(row["time_us"]) == pytest.approx(p["time_us"], rel=1e-5)
        assert row["nodes"].split(";") == p["nodes"]
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, rel=1e-4)


def test_report_data_memory_and_node_data(encoder: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The report's L1 peak is allocate's; node data is keyed by the graph's name and the node names, and the
    modelled times add up to the profile's total."""
    html, node_data = tmp_path / "r.html", tmp_path / "nd.json"
    assert main(["report", str(encoder), "-o", str(html), "--golden", "--node-data", str(node_data)]) == 0
    err = capsys.readouterr().err
    assert "per-op golden" in err and "L1 peak" in err
    data = json.loads(html.read_text().split('id="report-data">', 1)[1].split("</script>", 1)[0])
    s = data["summary"]
    assert max(p["l1_bytes"] for p in data["programs"]) == s["l1_peak_bytes"]
    assert all(p["l1_bytes"] <= data["device"]["l1_size"] - data["device"]["l1_reserved"] for p in data["programs"])
    assert max(p["dram_bytes"] for p in data["programs"]) <= s["dram_peak_bytes"]
    assert all(p["pcc"] is None or p["pcc"] > 0.99 for p in data["programs"]) and data["first_failure"] is None
    # per core: the pages it writes add up to the program's output; utilisation at most the program's
    from ttc.compiler import compile_model
    from ttc.passes.ops.geometry import num_pages
    from ttc.profile import program_ops

    ops = program_ops(compile_model(encoder).module)
    for op, p in zip(ops, data["programs"], strict=True):
        assert len(p["core_pages"]) == len(p["core_ids"]) == p["cores"]
        assert sum(p["core_pages"]) == num_pages(op.operands[-1].type)
        assert max(p["core_utilisation"]) == pytest.approx(p["utilisation"])
    model = onnx.load(str(encoder))
    names = {n.name for n in model.graph.node}
    overlay = json.loads(node_data.read_text())
    assert list(overlay) == [model.graph.name]
    results = overlay[model.graph.name]["results"]
    assert set(results) <= names and results
    assert sum(r["value"] for r in results.values()) == pytest.approx(s["time_us"], rel=1e-3)
    pcc = json.loads((tmp_path / "nd.pcc.json").read_text())[model.graph.name]["results"]
    assert set(pcc) <= names and all(0.99 < r["value"] <= 1.0 + 1e-6 for r in pcc.values())


def test_report_golden_highlights_the_first_failure(encoder: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """With a threshold no program meets, the first compared program is the first failure."""
    html = tmp_path / "r.html"
    assert main(["report", str(encoder), "-o", str(html), "--golden", "--pcc", "1.01", "-q"]) == 0
    data = json.loads(html.read_text().split('id="report-data">', 1)[1].split("</script>", 1)[0])
    first = next(p["index"] for p in data["programs"] if p["passed"] is not None)
    assert data["first_failure"] == first


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = str(Path(__file__).resolve().parents[2] / "examples" / "mlp.onnx")
    assert main(["report", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "r.html")]) == 2
    assert main(["report", example]) == 2
    assert "-o REPORT.html" in capsys.readouterr().err
    assert main(["report", example, "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
