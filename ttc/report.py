"""`ttc report`: one self-contained HTML page about a compiled model, and Model Explorer node data.

The page is a single file with its data inline (a JSON script element) and inline SVG drawn by inline
JavaScript: no network, no server, nothing fetched. It shows, for every device program (the profile's
program index, which `ttc profile`, the trace, the CSV and the IR's `// program N:` headers share):

- a table: ONNX node, kind, cores, bound, modelled time and share (with `--golden`, the per-op PCC and
  relative L2 error of `ttc run --golden --per-op`, the first failing node highlighted);
- the compute grid of the card with the selected program's cores coloured by their compute utilisation
  (the share of the program's modelled time its math engines are busy, compute cycles / cycles, scaled per
  core by the pages it writes relative to the busiest core) and idle cores grey;
- L1 per core (live L1 buffers + the program's circular buffers, as `allocate` counts them) and the DRAM
  in use (live buffers, resident weights included) over program order, the peaks marked;
- the slowest programs, the time by kind and by bound, the compile options and the versions.

Clicking a table row (or a slow program, or a point of the memory plot) selects that program everywhere.
The modelled figures are the cost model's (`ttc profile --static` counts: docs/cost-model.md).
"""

from __future__ import annotations

import html
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ttc.ir.dialects.tt import DeviceAttr
from ttc.profile import ProgramProfile, memory_timeline, node_label, program_cores, program_ops, summarize

TOP_N = 10


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("ttc", "onnx", "onnxruntime", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    out["python"] = platform.python_version()
    return out


def gather(compiled: Any, profile: Sequence[ProgramProfile], device: DeviceAttr, title: str,
           checks: Sequence[Any] | None = None, top: int = TOP_N,
           loads: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """The report's data (JSON-able): the summary, one record per program, the memory timeline, the options
    and versions; `checks` are the per-op golden checks (ttc.per_op.NodeCheck), one per program; `loads`
    the pages each core of each program writes (`static_profile_with_loads`): a core's utilisation is the
    program's scaled by its share of the busiest core's output (lower at a ragged edge)."""
    from ttc.passes.allocate import DRAM_PEAK, L1_PEAK

    module = compiled.module
    ops = program_ops(module)
    if len(ops) != len(profile):
        raise ValueError(f"{len(profile)} profiled programs but the module has {len(ops)}")
    if checks is not None and len(checks) != len(profile):
        raise ValueError(f"{len(checks)} per-op checks for {len(profile)} programs")
    summary = summarize(profile, device)
    memory = memory_timeline(module, device)
    total = summary.time_us
    programs = []
    for index, (op, p, mem) in enumerate(zip(ops, profile, memory, strict=True)):
        grid = op.attr("grid")
        utilisation = min(1.0, p.compute_cycles / p.cycles) if p.cycles else 0.0
        written = [int(n) for n in loads[index]] if loads is not None else [1] * p.cores
        busiest = max(written, default=0)
        record: dict[str, Any] = {
            "index": index, "node": node_label(p, 80), "nodes": list(p.nodes), "kind": p.kind, "cores": p.cores,
            "grid": [grid.x, grid.y], "core_ids": program_cores(op, device), "bound": p.bound,
            "time_us": p.time_us, "share": p.time_us / total if total else 0.0, "cycles": p.cycles,
            "compute_cycles": p.compute_cycles, "dram_cycles": p.dram_cycles, "noc_cycles": p.noc_cycles,
            "launch_cycles": p.launch_cycles,
            "utilisation": utilisation, "core_pages": written,
            "core_utilisation": [utilisation * n / busiest if busiest else utilisation for n in written],
            "dram_traffic": p.dram_bytes, "noc_bytes_per_core": p.noc_bytes,
            "l1_bytes": mem.l1_bytes, "l1_buffers": mem.l1_buffers, "cb_bytes": mem.cb_bytes,
            "dram_bytes": mem.dram_bytes}
        if checks is not None:
            c = checks[index]
            record.update({"pcc": c.pcc, "rel_l2": c.rel_l2_err, "passed": c.passed, "note": c.note,
                           "compared_node": c.node})
        programs.append(record)
    first_failure = None
    if checks is not None:
        first_failure = next((c.index for c in checks if c.passed is False), None)
    slowest = sorted(range(len(profile)), key=lambda i: -profile[i].time_us)[:top]
    l1_peak = max(range(len(memory)), key=lambda i: memory[i].l1_bytes) if memory else None
    dram_peak = max(range(len(memory)), key=lambda i: memory[i].dram_bytes) if memory else None
    return {
        "title": title,
        "device": {"arch": device.arch, "grid": list(device.compute_grid), "clock_mhz": device.clock_mhz,
                   "l1_size": device.l1_size, "l1_reserved": device.l1_reserved,
                   "dram_bytes": device.dram_channels * device.dram_channel_size},
        "summary": {**summary.to_json(), "l1_peak_bytes": module.attributes.get(L1_PEAK),
                    "dram_peak_bytes": module.attributes.get(DRAM_PEAK),
                    "l1_peak_program": l1_peak, "dram_peak_program": dram_peak,
                    "host_ops": compiled.manifest.get("host_ops", 0)},
        "golden": checks is not None,
        "first_failure": first_failure,
        "compared": sum(1 for c in checks if c.passed is not None) if checks is not None else 0,
        "programs": programs,
        "slowest": slowest,
        "options": compiled.manifest.get("options", {}),
        "source": compiled.manifest.get("source_model", {}),
        "versions": _versions(),
    }


def render_html(data: Mapping[str, Any]) -> str:
    """The page: the data inline as JSON, drawn by the inline script below (no external resource)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (_PAGE.replace("@TITLE@", html.escape(f"ttc report: {data['title']}"))
            .replace("@DATA@", payload))


def summary_lines(data: Mapping[str, Any]) -> list[str]:
    """What the page shows, as text (for the terminal after writing it)."""
    s = data["summary"]
    programs = data["programs"]
    lines = [f"{s['programs']} programs, modelled {s['time_us'] / 1000:.3f} ms per inference on the "
             f"{data['device']['arch']} ({s['mean_cores']:.1f} of {s['compute_cores']} cores on average)"]
    if programs:
        slow = ", ".join(f"#{i} {programs[i]['node']} {programs[i]['time_us']:.1f} µs" for i in data["slowest"][:3])
        lines.append(f"slowest: {slow}")
        busiest = max(programs, key=lambda p: (p["cores"], p["time_us"]))
        lines.append(f"busiest: #{busiest['index']} {busiest['node']} on {busiest['cores']} cores")
        peak = s["l1_peak_program"]
        lines.append(f"L1 peak {programs[peak]['l1_bytes'] / 1024:.1f} KiB per core at #{peak} "
                     f"{programs[peak]['node']}; DRAM in use peaks at "
                     f"{programs[s['dram_peak_program']]['dram_bytes'] / 2**20:.1f} MiB")
    if data["golden"]:
        failed = data["first_failure"]
        pccs = [p["pcc"] for p in programs if p.get("pcc") is not None]
        lowest = f", lowest PCC {min(pccs):.6f}" if pccs else ""
        lines.append(f"per-op golden: {data['compared']} programs compared{lowest}; " +
                     (f"first failing node {programs[failed]['compared_node']} (program {failed})"
                      if failed is not None else "none below the thresholds"))
    return lines


# ----------------------------------------------------------------------------------------------
# Model Explorer node data


def node_data(data: Mapping[str, Any], model_path: str | Path) -> dict[str, dict[str, Any]]:
    """Model Explorer node data files (its ModelNodeData JSON: graph id -> {results: node id -> {value}}) for
    the ONNX graph as the `model-explorer-onnx` adapter shows it (graph id = the graph's name, node id = the
    node's name, `<node_i>` for an unnamed node): "time" holds each node's modelled µs (the time of the
    programs whose last ONNX node it is), "pcc" (with the golden checks) each compared node's PCC."""
    import onnx

    from ttc.frontend.importer import node_name

    model = onnx.load(str(model_path), load_external_data=False)
    graph_id = model.graph.name
    ids = {node_name(node, i): node.name or f"<node_{i}>" for i, node in enumerate(model.graph.node)}
    times: dict[str, float] = {}
    pccs: dict[str, float] = {}
    for p in data["programs"]:
        last = next((n for n in reversed(p["nodes"]) if n in ids), None)
        if last is None:
            continue
        times[ids[last]] = times.get(ids[last], 0.0) + p["time_us"]
        if p.get("pcc") is not None and p.get("compared_node") in ids:
            pccs[ids[p["compared_node"]]] = p["pcc"]
    files = {"time": {graph_id: {
        "name": "modelled time (µs)",
        "results": {node: {"value": round(t, 3)} for node, t in times.items()},
        "gradient": [{"stop": 0, "bgColor": "#e8f5e9"}, {"stop": 0.5, "bgColor": "#ffd54f"},
                     {"stop": 1, "bgColor": "#e53935"}]}}}
    if data["golden"]:
        files["pcc"] = {graph_id: {
            "name": "per-op PCC",
            "results": {node: {"value": round(v, 6)} for node, v in pccs.items()},
            "thresholds": [{"value": 0.99, "bgColor": "#e53935"}, {"value": 0.999, "bgColor": "#ffd54f"},
                           {"value": 1.0, "bgColor": "#a5d6a7"}]}}
    return files


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 24px 40px; color: #222; }
h1 { font-size: 20px; margin: 16px 0 4px; } h2 { font-size: 16px; margin: 20px 0 6px; }
.muted { color: #666; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.row { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; max-width: 600px; }
dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; } th, td { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f5f5f5; position: sticky; top: 0; }
#programs tbody tr { cursor: pointer; } #programs tbody tr:hover { background: #f0f7ff; }
#programs tbody tr.selected { background: #cfe3ff; }
#programs tbody tr.failing td { background: #ffd6d6; } #programs tbody tr.first-failure td { background: #ff9e9e; font-weight: bold; }
.tablewrap { max-height: 480px; overflow: auto; border: 1px solid #ddd; }
.bar { height: 12px; background: #4f81bd; display: inline-block; vertical-align: middle; }
.slow li { cursor: pointer; } .slow li:hover { text-decoration: underline; }
svg text { font: 11px system-ui, sans-serif; }
.core { stroke: #fff; stroke-width: 1; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 0; } dt { color: #666; }
</style>
</head>
<body>
<h1 id="title"></h1>
<div id="headline" class="muted"></div>
<div class="row">
  <div class="card"><h2>Core grid: <span id="selected-label"></span></h2><svg id="grid"></svg><div id="selected-detail" class="muted"></div></div>
  <div class="card"><h2>Memory over program order</h2><svg id="memory"></svg><div class="muted">L1 per core (live L1 buffers + the program's circular buffers) and DRAM in use (live buffers, weights included); click a point to select its program</div></div>
</div>
<div class="row">
  <div class="card"><h2>Slowest programs</h2><ol id="slowest" class="slow"></ol></div>
  <div class="card"><h2>Time by kind</h2><table id="by-kind"></table><h2>Time by bound</h2><table id="by-bound"></table></div>
  <div class="card"><h2>Compile options and versions</h2><dl id="options"></dl></div>
</div>
<h2>Programs <span id="golden-note" class="muted"></span></h2>
<div class="tablewrap"><table id="programs"><thead></thead><tbody></tbody></table></div>
<script type="application/json" id="report-data">@DATA@</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("report-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const P = D.programs;
  const el = (tag, attrs, text) => {
    const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const us = (t) => t >= 1000 ? (t / 1000).toFixed(3) + " ms" : t.toFixed(2) + " µs";
  const kib = (b) => (b / 1024).toFixed(1) + " KiB";
  const mib = (b) => (b / 1048576).toFixed(2) + " MiB";
  const pct = (x) => (100 * x).toFixed(1) + "%";
  const S = D.summary;

  document.getElementById("title").textContent = "ttc report: " + D.title;
  const head = [S.programs + " programs", "modelled " + us(S.time_us) + " per inference on the " + D.device.arch +
    " (" + S.inferences_per_s.toFixed(1) + "/s)", S.mean_cores.toFixed(1) + " of " + S.compute_cores + " cores on average",
    "DRAM traffic " + mib(S.dram_bytes)];
  if (S.l1_peak_bytes !== null && S.l1_peak_bytes !== undefined) head.push("L1 peak " + kib(S.l1_peak_bytes) + " per core");
  if (S.host_ops) head.push(S.host_ops + " host ops");
  document.getElementById("headline").textContent = head.join(" · ");

  // ---- the core grid
  const [GX, GY] = D.device.grid, CELL = 30;
  const grid = document.getElementById("grid");
  grid.setAttribute("width", GX * CELL + 30); grid.setAttribute("height", GY * CELL + 40);
  const cells = [];
  for (let y = 0; y < GY; y++) {
    grid.appendChild(el("svg:text", {x: 2, y: 20 + y * CELL + CELL / 2 + 4}, String(y)));
    for (let x = 0; x < GX; x++) {
      const r = el("svg:rect", {x: 20 + x * CELL, y: 20 + y * CELL, width: CELL, height: CELL, class: "core",
                                 "data-core": y * GX + x, fill: "#ccc"});
      r.appendChild(el("svg:title", {}, "core (" + x + "," + y + ")"));
      grid.appendChild(r); cells.push(r);
    }
  }
  for (let x = 0; x < GX; x++) grid.appendChild(el("svg:text", {x: 20 + x * CELL + CELL / 2 - 4, y: 14}, String(x)));
  const legend = el("svg:text", {x: 20, y: 20 + GY * CELL + 15}, "grey: idle · blue→red: compute utilisation 0→100%");
  grid.appendChild(legend);
  const heat = (u) => {  // light blue (idle math) to red (math busy all the time)
    const a = [120, 170, 230], b = [220, 40, 40];
    return "rgb(" + a.map((c, i) => Math.round(c + (b[i] - c) * u)).join(",") + ")";
  };

  // ---- the memory plot
  const mem = document.getElementById("memory");
  const W = 580, H = 290, L = 60, R = 70, T = 16, B = 60;
  mem.setAttribute("width", W); mem.setAttribute("height", H);
  const n = Math.max(P.length, 1);
  const xs = (i) => L + (n === 1 ? (W - L - R) / 2 : i * (W - L - R) / (n - 1));
  const l1max = Math.max(1, ...P.map((p) => p.l1_bytes)), drmax = Math.max(1, ...P.map((p) => p.dram_bytes));
  const yl = (v) => T + (H - T - B) * (1 - v / l1max), yd = (v) => T + (H - T - B) * (1 - v / drmax);
  mem.appendChild(el("svg:line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"}));
  mem.appendChild(el("svg:text", {x: 2, y: T + 4, fill: "#1f77b4"}, kib(l1max)));
  mem.appendChild(el("svg:text", {x: W - R + 4, y: T + 4, fill: "#d62728"}, mib(drmax)));
  mem.appendChild(el("svg:text", {x: 2, y: H - B}, "0"));
  mem.appendChild(el("svg:text", {x: L, y: H - B + 14}, "program 0"));
  mem.appendChild(el("svg:text", {x: W - R - 60, y: H - B + 14}, "program " + (P.length - 1)));
  const series = (cls, color, ys, key) => {
    if (!P.length) return;
    mem.appendChild(el("svg:polyline", {fill: "none", stroke: color, "stroke-width": 1.5, class: cls + "-line",
      points: P.map((p, i) => xs(i).toFixed(1) + "," + ys(p[key]).toFixed(1)).join(" ")}));
    P.forEach((p, i) => {
      const c = el("svg:circle", {cx: xs(i), cy: ys(p[key]), r: 2.5, fill: color, class: cls + "-point", "data-index": i});
      c.appendChild(el("svg:title", {}, "#" + i + " " + p.node + ": " + (key === "l1_bytes" ? kib(p[key]) + " L1 per core" : mib(p[key]) + " DRAM")));
      c.addEventListener("click", () => select(i));
      mem.appendChild(c);
    });
  };
  series("l1", "#1f77b4", yl, "l1_bytes");
  series("dram", "#d62728", yd, "dram_bytes");
  const peak = (i, ys, key, color, label, row) => {  // the peak circled, named in the legend below the plot
    if (i === null || i === undefined) return;
    mem.appendChild(el("svg:circle", {cx: xs(i), cy: ys(P[i][key]), r: 6, fill: "none", stroke: color, "stroke-width": 2, class: "peak"}));
    mem.appendChild(el("svg:circle", {cx: L + 5, cy: H - B + 26 + 14 * row, r: 5, fill: "none", stroke: color, "stroke-width": 2}));
    mem.appendChild(el("svg:text", {x: L + 16, y: H - B + 30 + 14 * row, fill: color},
      label + " at program " + i + " (" + P[i].node + ")"));
  };
  if (P.length) {
    peak(S.l1_peak_program, yl, "l1_bytes", "#1f77b4", "L1 per core, peak " + kib(P[S.l1_peak_program].l1_bytes), 0);
    peak(S.dram_peak_program, yd, "dram_bytes", "#d62728", "DRAM in use, peak " + mib(P[S.dram_peak_program].dram_bytes), 1);
  }
  const cursor = el("svg:line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#333", "stroke-dasharray": "3,3", id: "memory-cursor"});
  mem.appendChild(cursor);

  // ---- slowest, by kind, by bound, options
  const slow = document.getElementById("slowest");
  D.slowest.forEach((i) => {
    const li = el("li", {"data-index": i}, "#" + i + " " + P[i].node + " (" + P[i].kind + ", " + P[i].cores + " cores, " +
      P[i].bound + ") " + us(P[i].time_us) + ", " + pct(P[i].share));
    li.addEventListener("click", () => select(i));
    slow.appendChild(li);
  });
  const bars = (id, table) => {
    const t = document.getElementById(id);
    for (const [key, v] of Object.entries(table)) {
      const tr = el("tr");
      tr.appendChild(el("td", {}, key));
      tr.appendChild(el("td", {class: "num"}, String(v.programs)));
      tr.appendChild(el("td", {class: "num"}, us(v.time_us)));
      const td = el("td");
      td.appendChild(el("span", {class: "bar", style: "width:" + (S.time_us ? 160 * v.time_us / S.time_us : 0).toFixed(1) + "px"}));
      td.appendChild(document.createTextNode(" " + (S.time_us ? pct(v.time_us / S.time_us) : "")));
      tr.appendChild(td); t.appendChild(tr);
    }
  };
  bars("by-kind", S.by_kind); bars("by-bound", S.by_bound);
  const dl = document.getElementById("options");
  const item = (k, v) => { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, String(v))); };
  for (const [k, v] of Object.entries(D.options)) item(k, typeof v === "object" ? JSON.stringify(v) : v);
  if (D.source && D.source.path) item("source model", D.source.path);
  for (const [k, v] of Object.entries(D.versions)) item(k, v);
  item("card", D.device.arch + ", compute grid " + GX + "x" + GY + ", " + D.device.clock_mhz + " MHz");

  // ---- the table
  const cols = ["#", "ONNX node", "kind", "cores", "grid", "bound", "time", "share", "L1/core", "DRAM in use"];
  if (D.golden) cols.push("PCC", "rel L2", "golden");
  const hr = el("tr"); cols.forEach((c) => hr.appendChild(el("th", {}, c)));
  document.querySelector("#programs thead").appendChild(hr);
  const tbody = document.querySelector("#programs tbody");
  const rows = P.map((p, i) => {
    const tr = el("tr", {"data-index": i, class: "program"});
    const cell = (text, num) => tr.appendChild(el("td", num ? {class: "num"} : {}, text));
    cell(String(i), true); cell(p.node); cell(p.kind); cell(String(p.cores), true); cell(p.grid[0] + "x" + p.grid[1]);
    cell(p.bound); cell(us(p.time_us), true); cell(pct(p.share), true); cell(kib(p.l1_bytes), true); cell(mib(p.dram_bytes), true);
    if (D.golden) {
      cell(p.pcc === null ? "-" : p.pcc.toFixed(6), true); cell(p.rel_l2 === null ? "-" : p.rel_l2.toExponential(2), true);
      cell(p.passed === null ? "n/a" : (p.passed ? "pass" : "FAIL"));
      if (p.passed === false) tr.classList.add("failing");
      if (i === D.first_failure) tr.classList.add("first-failure");
      if (p.note) tr.title = p.note;
    }
    tr.addEventListener("click", () => select(i));
    tbody.appendChild(tr);
    return tr;
  });
  if (D.golden) {
    document.getElementById("golden-note").textContent = D.first_failure === null
      ? "(per-op golden: " + D.compared + " programs compared, none below the thresholds)"
      : "(per-op golden: first failing node " + P[D.first_failure].compared_node + ", program " + D.first_failure + ", highlighted)";
  }

  // ---- selection
  let current = null;
  function select(i) {
    if (i < 0 || i >= P.length) return;
    if (current !== null) rows[current].classList.remove("selected");
    current = i;
    rows[i].classList.add("selected");
    const p = P[i], busy = new Set(p.core_ids);
    const slot = new Map(p.core_ids.map((core, j) => [core, j]));
    cells.forEach((c, k) => {
      const j = slot.get(k), x = k % GX, y = Math.floor(k / GX);
      c.setAttribute("fill", j !== undefined ? heat(p.core_utilisation[j]) : "#ccc");
      c.setAttribute("data-busy", j !== undefined ? "1" : "0");
      c.firstChild.textContent = "core (" + x + "," + y + ")" + (j !== undefined
        ? ": program core " + j + ", " + p.core_pages[j] + " output pages, compute utilisation " + pct(p.core_utilisation[j])
        : ": idle");
    });
    cursor.setAttribute("x1", xs(i)); cursor.setAttribute("x2", xs(i));
    document.getElementById("selected-label").textContent = "program " + i + " — " + p.node;
    document.getElementById("selected-detail").textContent = p.kind + " on " + p.cores + " cores (grid " + p.grid[0] + "x" +
      p.grid[1] + "), " + p.bound + "-bound, " + us(p.time_us) + " (" + pct(p.share) + "); compute " + Math.round(p.compute_cycles) +
      ", DRAM " + Math.round(p.dram_cycles) + ", NoC " + Math.round(p.noc_cycles) + ", launch " + Math.round(p.launch_cycles) +
      " cycles; compute utilisation " + pct(p.utilisation) + "; L1 " + kib(p.l1_bytes) + " per core (CBs " + kib(p.cb_bytes) + ")";
    document.body.setAttribute("data-selected", String(i));
  }
  window.ttcSelect = select;
  if (P.length) select(D.first_failure !== null ? D.first_failure : D.slowest[0]);
})();
</script>
</body>
</html>
"""
