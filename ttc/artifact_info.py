"""`ttc inspect MODEL.ttc`: what a `.ttc` artifact holds, without running it.

The manifest (inputs, outputs, target, options, pipeline), the versions (the artifact's format, the ttc that
wrote it, the ttc reading it), where it came from (the source model's path, sha256, producer, ONNX IR version
and opsets, and whether that file is still there), its memory (DRAM, peak L1, the packed weights) and every
device program of the host schedule in order: kind, core grid, circular buffers, the ONNX nodes it implements.
As text, or as JSON with `--json`.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from ttc.ir.dialects import ttmetal


def artifact_info(path: str | Path) -> dict[str, Any]:
    """Everything `ttc inspect` reports about the artifact at `path`, as JSON-ready data."""
    from ttc import __version__
    from ttc.artifact import read_artifact
    from ttc.ir.dialects.tt import GridAttr

    path = Path(path)
    compiled = read_artifact(path)  # verified: what inspect shows is what the compiler wrote
    module = compiled.module
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        members = {info.filename: info.file_size for info in archive.infolist()}
    programs = []
    states, scalars = [], set()
    for op in module.function("main").body.ops:
        if op.name == ttmetal.CREATE_BUFFER.name and ttmetal.STATE_ATTR in op.attributes:
            states.append(str(op.attributes[ttmetal.STATE_ATTR]))
        if op.name != ttmetal.ENQUEUE_PROGRAM.name:
            continue
        scalars.update(str(entry[2]) for entry in op.attributes.get(ttmetal.SCALAR_ARGS_ATTR) or ())
        grid = op.attributes.get("grid")
        cbs = op.attributes.get("cbs") or ()
        programs.append({
            "program": len(programs),
            "kind": op.attributes.get("kind") or "",
            "grid": f"{grid.x}x{grid.y}" if isinstance(grid, GridAttr) else "",
            "cores": grid.num_cores if isinstance(grid, GridAttr) else 0,
            "circular_buffers": len(cbs),
            "cb_bytes_per_core": int(sum(cb.page_size * cb.pages for cb in cbs)),
            "nodes": list(op.loc.names()),
        })
    weights = manifest.get("weights", {})
    source = dict(manifest.get("source_model") or {})
    if source.get("path"):
        source["present"] = Path(source["path"]).is_file()
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "versions": {"format": manifest.get("format_version"), "written_by_ttc": manifest.get("ttc_version"),
                     "this_ttc": __version__},
        "arch": manifest.get("arch"),
        "options": manifest.get("options", {}),
        "inputs": manifest.get("inputs", []),
        "outputs": manifest.get("outputs", []),
        "source_model": source,
        "memory": dict(manifest.get("memory", {}), weights=len(weights),
                       weight_bytes=sum(members.get(member, 0) for member in weights.values())),
        "host_ops": manifest.get("host_ops"),
        "programs": programs,
        "device_states": states,  # buffers kept in device DRAM across runs (the kv-cache pass's caches)
        "runtime_scalars": sorted(scalars),  # values each run must give (CompiledModel.run(..., scalars=))
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _table(rows: list[tuple[str, ...]], right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def format_info(info: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    versions, options, source, memory = info["versions"], info["options"], info["source_model"], info["memory"]
    lines = [f"{info['path']}: ttc artifact, format {versions['format']}, written by ttc {versions['written_by_ttc']} "
             f"(this is ttc {versions['this_ttc']}), {_mib(info['file_bytes'])}"]
    if source.get("path"):
        state = "present" if source.get("present") else "missing"
        lines.append(f"source model: {source['path']} ({state})")
    else:
        lines.append("source model: an in-memory model (no path)")
    details = [f"sha256 {source.get('sha256', '?')}"]
    if source.get("producer"):
        details.append(f"producer {source['producer']}")
    if source.get("ir_version"):
        details.append(f"ONNX IR version {source['ir_version']}")
    if source.get("opsets"):
        details.append("opsets " + ", ".join(f"{domain} {version}" for domain, version in source["opsets"].items()))
    lines.append("  " + "; ".join(details))
    shapes = ", ".join(f"{name}={'x'.join(map(str, dims))}" for name, dims in options.get("input_shapes", {}).items())
    lines.append(f"target: {info['arch']}; dtype {options.get('dtype')}, math fidelity {options.get('math_fidelity')}, "
                 f"softmax precision {options.get('softmax_precision')}; input shapes: {shapes or 'as in the model'}")
    lines.append(f"pipeline: {options.get('pipeline')}")
    for title in ("inputs", "outputs"):
        lines.append(f"{title}:")
        lines += _table([(e["name"], "x".join(map(str, e["shape"])) or "scalar", e["dtype"]) for e in info[title]])
    lines.append(f"memory: DRAM {_mib(memory.get('dram_bytes', 0))} "
                 f"({'weights resident' if memory.get('resident_weights') else 'weights written every run'}), "
                 f"peak L1 {memory.get('l1_peak_bytes', 0) / 1024:.1f} KiB per core; {memory['weights']} packed "
                 f"weights, {_mib(memory['weight_bytes'])}")
    if info.get("device_states"):
        lines.append(f"device states (kept in DRAM across runs): {', '.join(info['device_states'])}; runtime "
                     f"scalars: {', '.join(info['runtime_scalars']) or 'none'}")
    programs = info["programs"]
    lines.append(f"programs: {len(programs)} device programs, {info['host_ops']} host ops")
    if programs:
        rows = [("#", "kind", "grid", "cores", "CBs", "CB KiB/core", "onnx nodes")]
        for p in programs:
            nodes = p["nodes"][-1] + (f" (+{len(p['nodes']) - 1})" if len(p["nodes"]) > 1 else "") if p["nodes"] \
                else "?"
            rows.append((str(p["program"]), p["kind"], p["grid"], str(p["cores"]), str(p["circular_buffers"]),
                         f"{p['cb_bytes_per_core'] / 1024:.1f}", nodes))
        lines += _table(rows, right=frozenset({0, 3, 4, 5}))
    return "\n".join(lines)
