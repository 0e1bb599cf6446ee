"""`ttc profile`: the modelled device time of a model, program by program.

Every program is described by its counts (tile ops per kind, DRAM bytes, NoC bytes per core, cores) and the
target's cost model turns them into cycles (`ttc.ir.target.cost`, docs/cost-model.md): the largest of
compute, DRAM and NoC time, plus the program's launch. Programs run one after another, so the modelled
latency of an inference is their sum. The report names each program by the ONNX nodes it implements (its
last one, with the count of the others fused into it), and sums the time by program kind and by bound.

The counts come from running the model on an emulator (`ttc profile`), or from the compiled program alone
(`ttc profile --static`, `static_profile`): its kernels' loops walked with every core's runtime arguments,
counting what each op would count when it runs, without data. Both give the same counts, so the same table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ttc.ir import target
from ttc.ir.core import Block, Module, Operation, Value
from ttc.ir.dialects import ttkernel, ttmetal
from ttc.ir.dialects.tt import DeviceAttr
from ttc.ir.types import TensorType
from ttc.passes.ops.geometry import core_bank, is_sharded, shard_geometry
from ttc.runtime.accounting import ProgramProfile, cb_formats, profile_of, tile_count
from ttc.runtime.dataflow import tile_block

# ----------------------------------------------------------------------------------------------
# Counting a compiled program without running it

_NOC_OPS = frozenset({ttkernel.NOC_READ_TILES.name, ttkernel.NOC_READ_PAGES.name, ttkernel.NOC_READ_TILES_INDEXED.name,
                      ttkernel.NOC_READ_ROWS_INDEXED.name, ttkernel.NOC_WRITE_TILES.name, ttkernel.NOC_WRITE_ROWS.name})


@dataclass(frozen=True)
class _Gen:
    """An address generator over buffer operand #operand."""

    operand: int
    page_size: int
    dram: bool
    sharded: bool


class _StaticCounter:
    """Counts one enqueue_program as the emulators do (runtime/accounting.py), from its kernels alone."""

    def __init__(self, op: Operation, desc: DeviceAttr, constants: Mapping[int, np.ndarray]) -> None:
        from ttc.runtime.interpreter import ProgramPlan

        self.op, self.desc = op, desc
        self.grid = op.attr("grid")
        self.cores = self.grid.num_cores
        self.args = op.attr("runtime_args")
        self.plan = ProgramPlan(op)
        self.formats = cb_formats(op)
        self.builder = target.CountsBuilder(self.cores)
        self.written = np.zeros(self.cores, dtype=np.int64)  # pages each core writes out (the report's load)
        self.banks = core_bank(np.arange(self.cores), (self.grid.x, self.grid.y), desc.compute_grid[0])
        self.constants = constants  # operand index -> [pages, page_size] bytes of a constant buffer
        self.owners: dict[int, Any] = {}
        for index, value in enumerate(op.operands):
            t = value.type
            if isinstance(t, TensorType) and is_sharded(t):
                self.owners[index] = shard_geometry(t)
        self.index_pages: dict[int, tuple[int, np.ndarray]] = {}  # CB -> (operand, page per core) last read
        self.index_cbs = {step.attrs["index_cb"] for steps in self.plan.blocks.values() for step in steps
                          if step.op.name in (ttkernel.NOC_READ_TILES_INDEXED.name, ttkernel.NOC_READ_ROWS_INDEXED.name)}

    def count(self) -> target.Counts:
        for kernel, region in enumerate(self.op.regions):
            self.kernel = kernel
            self.block(region.blocks[0], {}, 1)
        return self.builder.counts()

    # -- values ---------------------------------------------------------------------------------

    def arg(self, index: int) -> np.ndarray:
        return np.array([core_args[index] for core_args in self.args[self.kernel]], dtype=np.int64)

    def block(self, block: Block, env: dict[Value, Any], scale: int) -> None:
        for step in self.plan.blocks[block]:
            op, a = step.op, step.attrs
            if step.body is not None:
                body = step.body
                if self._invariant(body):  # counts do not depend on the induction variable: once, scaled
                    env[body.args[0]] = step.trips.start
                    self.block(body, env, scale * len(step.trips))
                else:
                    for iv in step.trips:
                        env[body.args[0]] = iv
                        self.block(body, env, scale)
                continue
            name = op.name
            if name == ttkernel.GET_ARG.name:
                env[op.results[0]] = self.arg(a["index"])
            elif name == ttkernel.CONSTANT.name:
                env[op.results[0]] = a["value"]
            elif name == ttkernel.BUFFER_ADDRESS.name:
                env[op.results[0]] = a["operand"]
            elif name in (ttkernel.ADDI.name, ttkernel.MULI.name, ttkernel.MINI.name):
                lhs, rhs = env[op.operands[0]], env[op.operands[1]]
                fn = {ttkernel.ADDI.name: np.add, ttkernel.MULI.name: np.multiply, ttkernel.MINI.name: np.minimum}[name]
                env[op.results[0]] = fn(lhs, rhs)
            elif name == ttkernel.ADDRGEN_OP.name:
                env[op.results[0]] = _Gen(int(env[op.operands[0]]), a["page_size"], a["memory"] == "dram",
                                          a["memory_layout"] != "interleaved")
            elif name in _NOC_OPS:
                self.noc(op, a, env, scale)
            elif name == ttkernel.NOC_MCAST_CB.name:
                self.mcast(op, a, env, scale)
            else:
                count = tile_count(name, a, self.formats.__getitem__)
                if count is not None:
                    self.builder.tile(count[0], count[1] * scale)

    def _invariant(self, body: Block) -> bool:
        """No transfer in the loop (nested loops included) whose count depends on index values."""
        for step in self.plan.blocks[body]:
            if step.body is not None:
                if not self._invariant(step.body):
                    return False
            elif step.op.name == ttkernel.NOC_MCAST_CB.name:
                return False  # per-core senders and rectangles: walked
            elif step.op.name in _NOC_OPS:
                if step.op.name in (ttkernel.NOC_READ_TILES.name, ttkernel.NOC_WRITE_TILES.name, ttkernel.NOC_READ_PAGES.name):
                    # (operands past the second: a per-core mask, or a read's row segment counted in bytes)
                    if len(step.op.operands) > 2 or self.owners or \
                            (step.op.name == ttkernel.NOC_READ_PAGES.name and step.attrs["cb"] in self.index_cbs):
                        return False  # per-core masks, local pages of a shard, an index page: walked
                else:
                    return False
        return True

    # -- transfers ------------------------------------------------------------------------------

    def _local(self, gen: _Gen, pages: np.ndarray, wanted: np.ndarray | None = None) -> None:
        geometry = self.owners.get(gen.operand)
        if not gen.sharded or geometry is None:
            return
        pages = np.broadcast_to(pages, (self.cores, pages.shape[-1]) if pages.ndim == 2 else pages.shape)
        shard = geometry.owner(pages // geometry.cols, pages % geometry.cols)
        own = core_bank(shard, geometry.grid, self.desc.compute_grid[0]) == self.banks[:, None]
        if wanted is not None:
            own &= wanted
        self.builder.local_total += int(own.sum()) * gen.page_size

    def _static(self, gen: _Gen, pages: int, write: bool, scale: int) -> None:
        self.builder.transfer(pages * gen.page_size * scale, gen.dram, write)

    def _masked(self, gen: _Gen, moved: int, write: bool) -> None:
        self.builder.transfer(moved // self.cores * gen.page_size, gen.dram, write, moved * gen.page_size)

    def _segment_sizes(self, op: Operation, env: dict[Value, Any], first: int) -> np.ndarray:
        """Per core the bytes of a row segment (the op's operand `first` + 1)."""
        return np.broadcast_to(np.asarray(env[op.operands[first + 1]], dtype=np.int64).reshape(-1), (self.cores,))

    def _bytes(self, gen: _Gen, total: int, write: bool) -> None:
        self.builder.transfer(total // self.cores, gen.dram, write, total)

    def noc(self, op: Operation, a: Mapping[str, Any], env: dict[Value, Any], scale: int) -> None:
        name = op.name
        gen: _Gen = env[op.operands[0]]
        write = name in (ttkernel.NOC_WRITE_TILES.name, ttkernel.NOC_WRITE_ROWS.name)
        if name in (ttkernel.NOC_READ_TILES.name, ttkernel.NOC_WRITE_TILES.name):
            start = np.asarray(env[op.operands[1]], dtype=np.int64).reshape(-1, 1)
            tiles = tile_block(0, a["rows"], a["cols"], a["row_stride"], a["col_stride"]).values
            pages = start + tiles[None, :]
            if len(op.operands) < 3:
                if write:
                    self.written += len(tiles) * scale
                self._static(gen, len(tiles), write, scale)
                self._local(gen, pages)
                return
            valid = np.asarray(env[op.operands[2]], dtype=np.int64).reshape(-1, 1, 1)
            columns = np.arange(a["cols"])[None, None, :]
            wanted = np.broadcast_to(columns < valid, (self.cores, a["rows"], a["cols"])).reshape(self.cores, -1)
            self._masked(gen, int(wanted.sum()), write)
            if write:
                self.written += wanted.sum(axis=1)
            if not write:
                self._local(gen, pages, wanted)
            return
        if name == ttkernel.NOC_READ_PAGES.name:
            start = np.asarray(env[op.operands[1]], dtype=np.int64).reshape(-1, 1)
            pages = start + np.arange(a["count"])[None, :]
            if len(op.operands) > 2:  # a row segment of each page
                self._bytes(gen, a["count"] * int(self._segment_sizes(op, env, 2).sum()), False)
                self.index_pages.pop(a["cb"], None)
                return
            self._static(gen, a["count"], False, scale)
            self._local(gen, pages)
            self.index_pages[a["cb"]] = (gen.operand, np.broadcast_to(pages[:, 0], (self.cores,)))
            return
        if name == ttkernel.NOC_READ_TILES_INDEXED.name:
            values = self._index_values(a["index_cb"])
            entries = values[:, a["index_offset"]: a["index_offset"] + a["count"]]
            entries = np.where(entries < 0, -1 - entries, entries)
            if a["sources"] == 1:
                self._static(gen, a["count"], False, scale)
                self._local(gen, entries)
            else:
                self._masked(gen, int((entries % a["sources"] == a["source"]).sum()), False)
            return
        if name == ttkernel.NOC_READ_ROWS_INDEXED.name:
            offset = np.asarray(env[op.operands[1]], dtype=np.int64).reshape(-1, 1)
            valid = np.asarray(env[op.operands[2]], dtype=np.int64).reshape(-1, 1)
            relative = np.arange(a["count"])[None, :]
            wanted = np.broadcast_to(relative < valid, (self.cores, a["count"]))
            if a["pad_negative"]:
                values = self._index_values(a["index_cb"])
                positions = np.broadcast_to(offset + relative, (self.cores, a["count"]))
                inside = wanted & (positions < values.shape[1])
                ids = np.take_along_axis(values, np.where(inside, positions, 0), axis=1)
                wanted = wanted & (ids >= 0)
            if len(op.operands) > 3:  # a row segment of each row read
                self._bytes(gen, int((wanted.sum(axis=1) * self._segment_sizes(op, env, 3)).sum()), False)
            else:
                self._masked(gen, int(wanted.sum()), False)
            return
        valid = np.broadcast_to(np.asarray(env[op.operands[2]], dtype=np.int64).reshape(-1), (self.cores,))
        if len(op.operands) > 3:  # noc_write_rows of a row segment per row
            self._bytes(gen, int((valid * self._segment_sizes(op, env, 3)).sum()), True)
        else:
            self._masked(gen, int(valid.sum()), True)  # noc_write_rows
        self.written += valid

    def mcast(self, op: Operation, a: Mapping[str, Any], env: dict[Value, Any], scale: int) -> None:
        """noc_mcast_cb as runtime/multicast.py counts it: per sender with receivers, its pages leave once and
        enter each receiver; its bytes on its links; the widest fan-out."""
        page = next(c.page_size for c in self.op.attr("cbs") if c.index == a["cb"])
        per_core = [np.broadcast_to(np.asarray(env[v], dtype=np.int64).reshape(-1), (self.cores,))
                    for v in op.operands[:4]]
        enabled = np.broadcast_to(np.asarray(env[op.operands[4]]).reshape(-1) != 0, (self.cores,)) \
            if len(op.operands) > 4 else np.ones(self.cores, dtype=bool)
        x0, y0, x1, y1 = per_core
        sent = np.zeros(self.cores, dtype=np.int64)
        moved, fanout = 0, 0
        for core in np.flatnonzero(enabled):
            cells = int((x1[core] - x0[core] + 1) * (y1[core] - y0[core] + 1))
            inside = x0[core] <= core % self.grid.x <= x1[core] and y0[core] <= core // self.grid.x <= y1[core]
            receivers = cells - int(inside)
            if receivers:
                moved += a["pages"] * (1 + receivers)
                sent[core] = a["pages"] * page * scale
                fanout = max(fanout, receivers)
        self.builder.transfer(moved // self.cores * page * scale, False, False)
        self.builder.multicast(sent, fanout)

    def _index_values(self, cb: int) -> np.ndarray:
        """int32 values [cores, entries] of the index page each core last read into `cb`."""
        operand, pages = self.index_pages[cb]
        table = self.constants[operand]
        return table[pages].view("<i4").astype(np.int64)


def _constant_pages(main: Block, device_weights: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
    """id(buffer value) -> its packed pages [pages, page_size] for every buffer a write_constant fills."""
    from ttc.passes.ops.geometry import page_size

    pages = {}
    for op in main.ops:
        if op.name == ttmetal.WRITE_CONSTANT.name:
            buffer = op.operands[0]
            data = np.asarray(device_weights[op.attributes["value"].name])
            pages[id(buffer)] = data.reshape(-1, page_size(buffer.type))
    return pages


def static_profile(module: Module, device_weights: Mapping[str, np.ndarray]) -> list[ProgramProfile]:
    """Every program's profile from the compiled module alone (its kernels counted, nothing run): the same
    counts, hence the same profile, as running it on either emulator."""
    return [profile for profile, _ in static_profile_with_loads(module, device_weights)]


def static_profile_with_loads(module: Module, device_weights: Mapping[str, np.ndarray]
                              ) -> list[tuple[ProgramProfile, np.ndarray]]:
    """`static_profile`, each program with the pages each of its cores writes out (its share of the
    program's output: the same on every core but at a ragged edge)."""
    from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150

    desc = module.attributes.get(DEVICE_ATTR_NAME) or E150
    main = module.function("main").body
    constants = _constant_pages(main, device_weights)
    profiles = []
    for op in main.ops:
        if op.name != ttmetal.ENQUEUE_PROGRAM.name:
            continue
        by_operand = {i: constants[id(v)] for i, v in enumerate(op.operands) if id(v) in constants}
        counter = _StaticCounter(op, desc, by_operand)
        profiles.append((profile_of(desc, op, counter.count()), counter.written))
    return profiles


# ----------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class ProfileSummary:
    """What the programs of one inference add up to."""

    programs: int
    time_us: float
    by_kind: dict[str, tuple[int, float]]  # kind -> (programs, µs)
    by_bound: dict[str, tuple[int, float]]  # compute / dram / noc -> (programs, µs)
    mean_cores: float  # time-weighted cores per program
    compute_cores: int
    dram_bytes: int

    @property
    def inferences_per_s(self) -> float:
        return 1e6 / self.time_us if self.time_us else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"programs": self.programs, "time_us": self.time_us, "inferences_per_s": self.inferences_per_s,
                "mean_cores": self.mean_cores, "compute_cores": self.compute_cores, "dram_bytes": self.dram_bytes,
                "by_kind": {k: {"programs": n, "time_us": t} for k, (n, t) in self.by_kind.items()},
                "by_bound": {k: {"programs": n, "time_us": t} for k, (n, t) in self.by_bound.items()}}


def summarize(profile: Sequence[ProgramProfile], device: DeviceAttr) -> ProfileSummary:
    total = sum(p.time_us for p in profile)
    by_kind: dict[str, tuple[int, float]] = {}
    by_bound: dict[str, tuple[int, float]] = {}
    for p in profile:
        for table, key in ((by_kind, p.kind), (by_bound, p.bound)):
            count, time = table.get(key, (0, 0.0))
            table[key] = (count + 1, time + p.time_us)
    mean_cores = sum(p.cores * p.time_us for p in profile) / total if total else 0.0
    order = lambda table: dict(sorted(table.items(), key=lambda item: -item[1][1]))  # noqa: E731
    return ProfileSummary(len(profile), total, order(by_kind), order(by_bound), mean_cores, device.compute_cores,
                          sum(p.dram_bytes for p in profile))


def node_label(p: ProgramProfile, width: int = 48) -> str:
    """The program's last ONNX node, with the number of other nodes fused into it."""
    if not p.nodes:
        return "?"
    label = p.nodes[-1] + (f" (+{len(p.nodes) - 1})" if len(p.nodes) > 1 else "")
    return label if len(label) <= width else "..." + label[-(width - 3):]


def program_json(index: int, p: ProgramProfile, op: Operation | None = None) -> dict[str, Any]:
    settings = {"fidelity": program_fidelity(p)} | ({"formats": program_formats(op)} if op is not None else {})
    return {"program": index, "kind": p.kind, "nodes": list(p.nodes), "cores": p.cores, "bound": p.bound, **settings,
            "time_us": p.time_us, "cycles": p.cycles, "compute_cycles": p.compute_cycles,
            "dram_cycles": p.dram_cycles, "noc_cycles": p.noc_cycles, "launch_cycles": p.launch_cycles,
            "dram_bytes": p.dram_bytes, "noc_bytes_per_core": p.noc_bytes, "local_bytes_per_core": p.local_bytes,
            "counts": p.counts.to_json()}


PRODUCT_KINDS = frozenset({"matmul", "matmul_rows", "im2col_matmul"})  # the programs of products (a fused
# convolution lookup or untilize in one: passes.md, grid's last steps)


def program_fidelity(p: ProgramProfile) -> str:
    """The math fidelities of the program's matrix-unit work (matmuls and sums), from its counts; "-" if none."""
    found = []
    for key, _ in p.counts.tiles:
        kind, _, rest = key.partition(".")
        if kind in ("matmul", "reduce_sum"):
            found.append(rest.split(".")[0])
    return ",".join(sorted(set(found), key=list(target.FIDELITY_PHASES).index)) or "-"


def program_formats(op: Operation) -> str:
    """The data formats of a program's buffers: the inputs' (distinct, in operand order), '>', the result's
    (the last operand), e.g. "bfp8_b,bf16>bf16"."""
    names = [t.element_type.name for t in (value.type for value in op.operands) if isinstance(t, TensorType)]
    if not names:
        return "-"
    return ",".join(dict.fromkeys(names[:-1])) + ">" + names[-1]


def settings_line(module: Module, profile: Sequence[ProgramProfile]) -> str:
    """What formats and fidelities the compiled model uses: the weights' formats (tensors and device bytes),
    the programs' result formats, and the fidelities of matmuls and of the other matrix-unit programs."""
    main = module.function("main").body
    weights: dict[str, list[int]] = {}
    for op in main.ops:
        if op.name == ttmetal.WRITE_CONSTANT.name:
            t = op.operands[0].type
            if isinstance(t, TensorType):
                entry = weights.setdefault(t.element_type.name, [0, 0])
                entry[0] += 1
                entry[1] += _buffer_bytes(t)
    results: dict[str, int] = {}
    for op in program_ops(module):
        name = program_formats(op).rpartition(">")[2]
        results[name] = results.get(name, 0) + 1
    fidelity: dict[str, dict[str, int]] = {"matmul": {}, "other": {}}
    for p in profile:
        f = program_fidelity(p)
        if f != "-":
            table = fidelity["matmul" if p.kind in PRODUCT_KINDS else "other"]
            table[f] = table.get(f, 0) + 1
    join = lambda table: ", ".join(f"{k} {v}" for k, v in sorted(table.items(), key=lambda kv: -kv[1])) or "none"  # noqa: E731
    weight_text = ", ".join(f"{name} {n} ({size / 2**20:.1f} MiB)" for name, (n, size) in sorted(weights.items())) \
        or "none"
    return (f"formats: weights {weight_text}; program results {join(results)}; fidelity: matmuls "
            f"{join(fidelity['matmul'])}, other programs {join(fidelity['other'])}")


def _buffer_bytes(t: TensorType) -> int:
    from ttc.passes.ops.geometry import page_size, tile_shape

    if t.encoding is not None and getattr(t.encoding, "tensor_layout", "tile") == "row_major":
        rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
        return rows * page_size(t)
    return tile_shape(t.shape).tiles * page_size(t)


def format_profile(profile: Sequence[ProgramProfile], device: DeviceAttr, top: int | None = None,
                   module: Module | None = None) -> str:
    """The per-program table (program order, or the `top` slowest), then the sums by kind and by bound; with the
    compiled `module`, each program's buffer formats and a line of the formats and fidelities used."""
    summary = summarize(profile, device)
    ops = program_ops(module) if module is not None else []
    if module is not None and len(ops) != len(profile):
        raise ValueError(f"{len(profile)} profiled programs but the module has {len(ops)}")
    rows = list(enumerate(profile))
    if top is not None:
        rows = sorted(rows, key=lambda row: -row[1].time_us)[:top]
    formats = f" {'formats':22}" if ops else ""
    header = (f"{'#':>4} {'kind':12} {'cores':>5} {'bound':7} {'time_us':>9} {'share':>6} {'compute_cyc':>11} "
              f"{'dram_KiB':>9} {'noc_KiB/core':>12} {'fidelity':11}{formats}  onnx node")
    lines = [header, "-" * len(header)]
    for index, p in rows:
        share = 100 * p.time_us / summary.time_us if summary.time_us else 0.0
        fmt = f" {program_formats(ops[index]):22}" if ops else ""
        lines.append(f"{index:4d} {p.kind:12} {p.cores:5d} {p.bound:7} {p.time_us:9.2f} {share:5.1f}% "
                     f"{p.compute_cycles:11.0f} {p.dram_bytes / 1024:9.1f} {p.noc_bytes / 1024:12.1f} "
                     f"{program_fidelity(p):11}{fmt}  {node_label(p)}")
    if top is not None and top < len(profile):
        lines.append(f"(the {top} slowest of {len(profile)} programs)")
    lines.append("")
    if module is not None:
        lines.append(settings_line(module, profile))
    lines.append(f"modelled device time {summary.time_us / 1000:.3f} ms per inference "
                 f"({summary.inferences_per_s:.1f}/s) over {summary.programs} programs; "
                 f"{summary.mean_cores:.1f} of {summary.compute_cores} cores on average (time-weighted); "
                 f"DRAM traffic {summary.dram_bytes / 2**20:.1f} MiB")
    for title, table in (("by kind", summary.by_kind), ("by bound", summary.by_bound)):
        parts = [f"{key} {time / 1000:.3f} ms ({100 * time / summary.time_us:.0f}%, {count})"
                 for key, (count, time) in table.items()] if summary.time_us else []
        lines.append(f"{title}: " + ", ".join(parts))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Programs, their cores and the memory in use while each runs (the report and the trace)


def program_ops(module: Module) -> list[Operation]:
    """@main's enqueue_program ops in schedule order: program N of the profile is the Nth."""
    return [op for op in module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]


def program_cores(op: Operation, device: DeviceAttr) -> list[int]:
    """The device cores (row-major over the compute grid) program `op` runs on: its grid placed at (0, 0)."""
    grid = op.attr("grid")
    return [int(c) for c in core_bank(np.arange(grid.num_cores), (grid.x, grid.y), device.compute_grid[0])]


def _grid_text(op: Operation) -> str:
    grid = op.attr("grid")
    return f"{grid.x}x{grid.y}"


@dataclass(frozen=True)
class MemoryPoint:
    """What is allocated while one program runs."""

    l1_buffers: int  # bytes per core of the live L1 buffers
    cb_bytes: int  # bytes per core of the program's circular buffers
    dram_bytes: int  # bytes of the live DRAM buffers, all channels

    @property
    def l1_bytes(self) -> int:
        return self.l1_buffers + self.cb_bytes


def memory_timeline(module: Module, device: DeviceAttr) -> list[MemoryPoint]:
    """Per program, the L1 per core (live L1 buffers + its CBs, as `allocate` counts them: the largest is
    `tt.l1_peak_bytes`) and the DRAM bytes of the live buffers, replaying @main's creates and deallocates.
    Resident weights (`tt.resident_weights`) are allocated before anything else and live throughout."""
    from ttc.passes.allocate import RESIDENT_WEIGHTS, is_dram_weight
    from ttc.passes.ops.geometry import bank_share, cb_bytes, layout

    main = module.function("main").body
    resident = bool(module.attributes.get(RESIDENT_WEIGHTS, False))
    l1 = dram = 0
    sizes: dict[int, tuple[str, int]] = {}

    def create(op: Operation) -> None:
        nonlocal l1, dram
        t = op.results[0].type
        assert isinstance(t, TensorType)
        space = str(layout(t).memory_space)
        if space == "l1":
            size = bank_share(t, device.compute_cores)
            l1 += size
        elif space == "dram":
            size = bank_share(t, device.dram_channels) * device.dram_channels
            dram += size
        else:
            return
        sizes[id(op.results[0])] = (space, size)

    weights = [op for op in main.ops if resident and op.name == ttmetal.CREATE_BUFFER.name and is_dram_weight(op)]
    for op in weights:
        create(op)
    placed = {id(op) for op in weights}
    points = []
    for op in main.ops:
        if op.name == ttmetal.CREATE_BUFFER.name and id(op) not in placed:
            create(op)
        elif op.name == ttmetal.DEALLOCATE.name:
            space, size = sizes.pop(id(op.operands[0]), ("", 0))
            if space == "l1":
                l1 -= size
            elif space == "dram":
                dram -= size
        elif op.name == ttmetal.ENQUEUE_PROGRAM.name:
            points.append(MemoryPoint(l1, cb_bytes(op.attr("cbs")), dram))
    return points


# ----------------------------------------------------------------------------------------------
# Chrome / Perfetto trace events and CSV

TRACE_PID = 1  # the device


def trace_events(module: Module, profile: Sequence[ProgramProfile], device: DeviceAttr) -> dict[str, Any]:
    """The programs as Chrome trace events (the JSON object format Perfetto and chrome://tracing load): one
    track (thread) per device core, a complete event ("X") per program on every core it runs on, one after
    another as the cost model has them, with the program's counts as args; a "programs" track holds each
    program once. Timestamps and durations are in microseconds of modelled device time."""
    ops = program_ops(module)
    if len(ops) != len(profile):
        raise ValueError(f"{len(profile)} profiled programs but the module has {len(ops)}")
    columns = device.compute_grid[0]
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": TRACE_PID, "tid": 0,
         "args": {"name": f"{device.arch} (modelled)"}},
        {"name": "thread_name", "ph": "M", "pid": TRACE_PID, "tid": 0, "args": {"name": "programs"}},
        {"name": "thread_sort_index", "ph": "M", "pid": TRACE_PID, "tid": 0, "args": {"sort_index": 0}},
    ]
    for core in range(device.compute_cores):
        x, y = core % columns, core // columns
        events.append({"name": "thread_name", "ph": "M", "pid": TRACE_PID, "tid": core + 1,
                       "args": {"name": f"core ({x},{y})"}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": TRACE_PID, "tid": core + 1,
                       "args": {"sort_index": core + 1}})
    start = 0.0
    for index, (op, p) in enumerate(zip(ops, profile, strict=True)):
        args = {"program": index, "kind": p.kind, "nodes": list(p.nodes), "cores": p.cores, "grid": _grid_text(op),
                "bound": p.bound, "cycles": p.cycles, "compute_cycles": p.compute_cycles, "dram_cycles": p.dram_cycles,
                "noc_cycles": p.noc_cycles, "launch_cycles": p.launch_cycles, "dram_bytes": p.dram_bytes,
                "noc_bytes_per_core": p.noc_bytes, "local_bytes_per_core": p.local_bytes,
                "tiles": dict(p.counts.tiles)}
        name = f"#{index} {node_label(p, 60)}"
        events.append({"name": name, "cat": p.kind, "ph": "X", "ts": start, "dur": p.time_us, "pid": TRACE_PID,
                       "tid": 0, "args": args})
        for core in program_cores(op, device):
            events.append({"name": name, "cat": p.kind, "ph": "X", "ts": start, "dur": p.time_us,
                           "pid": TRACE_PID, "tid": core + 1, "args": {"program": index}})
        start += p.time_us
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"device": device.arch, "programs": len(profile), "time_us": start}}


CSV_COLUMNS = ("program", "kind", "node", "nodes", "cores", "grid", "bound", "time_us", "share", "cycles",
               "compute_cycles", "dram_cycles", "noc_cycles", "launch_cycles", "dram_bytes", "noc_bytes_per_core",
               "local_bytes_per_core")


def profile_csv(module: Module, profile: Sequence[ProgramProfile]) -> str:
    """One CSV row per program (the columns of CSV_COLUMNS; nodes joined by ';', share of the total time)."""
    import csv
    import io

    ops = program_ops(module)
    if len(ops) != len(profile):
        raise ValueError(f"{len(profile)} profiled programs but the module has {len(ops)}")
    total = sum(p.time_us for p in profile)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for index, (op, p) in enumerate(zip(ops, profile, strict=True)):
        writer.writerow([index, p.kind, p.nodes[-1] if p.nodes else "", ";".join(p.nodes), p.cores, _grid_text(op),
                         p.bound, f"{p.time_us:.6g}", f"{p.time_us / total if total else 0.0:.6g}", f"{p.cycles:.6g}",
                         f"{p.compute_cycles:.6g}", f"{p.dram_cycles:.6g}", f"{p.noc_cycles:.6g}",
                         f"{p.launch_cycles:.6g}", p.dram_bytes, p.noc_bytes, p.local_bytes])
    return out.getvalue()
