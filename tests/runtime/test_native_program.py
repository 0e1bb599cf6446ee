"""The native program executor (runtime/native_program.py, runtime/native/program.cpp) against the interpreter
(runtime/interpreter.py, the definition): every program of compiled models and hand-written kernels runs on
both, from the same device state, with 1 and 2 threads; DRAM and L1 bytes, dirty marks of watched constants,
profiles and fault texts must be identical."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from runtime_helpers import ProgramSpec, Tensor, addrgen, cb, eltwise_program, kfor, kop, run

import ttc
from ttc import zoo
from ttc.ir.core import Operation, Value
from ttc.ir.diagnostics import DeviceFault
from ttc.runtime import executor, native_program
from ttc.runtime.device import Device
from ttc.runtime.executor import using_emulator
from ttc.runtime.handlers import HANDLERS
from ttc.runtime.interpreter import Program, ProgramPlan
from ttc.runtime.native_program import KERNEL_OPS, encode, run_native

F32 = TensorProto.FLOAT

# ----------------------------------------------------------------------------------------------
# Both emulators, program by program


@dataclass
class State:
    """What a program may change: DRAM, the L1 ranges of live buffers and of the program's CBs (the rest of
    L1 is never addressed: copying all 108 MiB per program would make these tests slow), dirty marks and
    allocation tables."""

    dram: np.ndarray
    l1: list[tuple[int, int, np.ndarray]]
    dirty: tuple[set[str], set[str]]
    allocations: tuple[dict, dict]


def l1_ranges(device: Device, op: Operation) -> list[tuple[int, int]]:
    """The merged L1 ranges of live buffers and of the program's CBs."""
    spans = sorted([(a.address, a.end) for a in device.l1.allocations.values()]
                   + [(c.address, c.address + c.size) for c in op.attr("cbs") if c.address is not None])
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        hi = min(hi, device.l1.data.shape[1])
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        elif lo < hi:
            merged.append((lo, hi))
    return merged


def snapshot(device: Device, ranges: list[tuple[int, int]]) -> State:
    return State(device.dram.data.copy(), [(lo, hi, device.l1.data[:, lo:hi].copy()) for lo, hi in ranges],
                 (set(device.dram.dirty), set(device.l1.dirty)),
                 (dict(device.dram.allocations), dict(device.l1.allocations)))


def restore(device: Device, state: State) -> None:
    device.dram.data[...] = state.dram
    for lo, hi, data in state.l1:
        device.l1.data[:, lo:hi] = data
    device.dram.dirty, device.l1.dirty = set(state.dirty[0]), set(state.dirty[1])


def assert_same_state(got: State, want: State, what: str) -> None:
    pairs = [("DRAM", 0, got.dram, want.dram)] + [("L1", lo, a, b) for (lo, _, a), (_, _, b) in
                                                  zip(got.l1, want.l1, strict=True)]
    for name, lo, a, b in pairs:
        if not np.array_equal(a, b):
            bank, offset = (int(i[0]) for i in np.nonzero(a != b))
            raise AssertionError(f"{what}: {name} differs first at bank {bank}, byte {lo + offset:#x}")
    assert got.dirty == want.dirty, f"{what}: dirty marks {got.dirty} != {want.dirty}"
    assert got.allocations == want.allocations, f"{what}: allocation tables differ"


@dataclass
class DualEnqueue:
    """The executor's enqueue_program on both emulators: the interpreter, then natively from the same state
    with each thread count; the device goes on from the interpreter's state."""

    threads: tuple[int, ...] = (1, 2)
    before: Callable[[Device], None] | None = None  # called before each program (e.g. to watch ranges)
    programs: int = 0
    faults: list[str] = field(default_factory=list)
    kernel_ops: set[str] = field(default_factory=set)
    races: list[tuple] = field(default_factory=list)
    compare: bool = True  # False: only collect races (a racing program's bytes depend on the order of cores)

    def __call__(self, ex: Any, op: Operation, values: dict[Value, Any]) -> None:
        addresses = [ex.buffer(values, value).alloc.address for value in op.operands]
        plan = ex._plans.get(op)
        if plan is None:
            plan = ex._plans[op] = ProgramPlan(op)
        device = ex.device
        if self.before is not None:
            self.before(device)
        self.programs += 1
        self.kernel_ops.update(o.name for o in op.walk() if o.name.startswith("ttkernel."))
        ranges = l1_ranges(device, op)
        start = snapshot(device, ranges)
        want_fault = None
        try:
            profile = Program(device, op, addresses, ex.step_budget, plan).run()
        except DeviceFault as fault:
            want_fault = str(fault)
        want = snapshot(device, ranges)
        for threads in self.threads:
            restore(device, start)
            if threads > 1:  # no history: the run uses every thread, however short (lockstep phases too)
                native_program.encode(plan, op, device).program.last_run_us = 0
            try:
                got = run_native(device, op, addresses, ex.step_budget, plan, threads, races=self.races)
            except DeviceFault as fault:
                assert want_fault is not None, f"native faulted, the interpreter did not:\n{fault}"
                assert str(fault) == want_fault, f"fault texts differ:\n{fault}\n!=\n{want_fault}"
                continue
            assert want_fault is None, f"the interpreter faulted, native did not:\n{want_fault}"
            if not self.compare:
                continue
            assert got == profile, f"profiles differ:\n{got}\n!=\n{profile}"
            assert_same_state(snapshot(device, ranges), want, f"program {op.loc.names()}, {threads} thread(s)")
        restore(device, want)
        if want_fault is not None:
            self.faults.append(want_fault)
            raise DeviceFault(want_fault)
        ex.profile.append(profile)


@contextmanager
def enqueue_hook(hook: DualEnqueue) -> Iterator[DualEnqueue]:
    """Within the block, the executor's enqueue_program is `hook`."""
    previous = executor.HOST_OPS["ttmetal.enqueue_program"]
    executor.HOST_OPS["ttmetal.enqueue_program"] = hook
    try:
        yield hook
    finally:
        executor.HOST_OPS["ttmetal.enqueue_program"] = previous


def dual_programs(threads: tuple[int, ...] = (1, 2),
                  before: Callable[[Device], None] | None = None):
    return enqueue_hook(DualEnqueue(threads, before))


# ----------------------------------------------------------------------------------------------
# Compiled models


def model_of(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[tuple[int, ...], int]],
             initializers: dict[str, np.ndarray], outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(k, t, list(s)) for k, (s, t) in inputs.items()],
                              [helper.make_tensor_value_info(o, F32, None) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def conv_pool() -> onnx.ModelProto:
    """A padded 3x3 conv (row lookups with padding, tilize / untilize) and a strided max pool."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/conv", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["y"], name="/pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[2, 2])]
    init = {"w": (rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32),
            "b": (rng.standard_normal(8) * 0.1).astype(np.float32)}
    return model_of(nodes, {"x": ((1, 3, 10, 9), F32)}, init, ["y"])


def gather() -> onnx.ModelProto:
    """An embedding lookup with negative ids (ONNX Gather's from-the-end indices)."""
    table = np.random.default_rng(2).standard_normal((50, 70)).astype(np.float32)
    return model_of([helper.make_node("Gather", ["t", "ids"], ["y"], name="/gather", axis=0)],
                    {"ids": ((3, 13), TensorProto.INT64)}, {"t": table}, ["y"])


def unary_mix() -> onnx.ModelProto:
    """pow / rpow by scalars (per-parameter SFPU tables), a binary SFPU power, a transpose, a max reduction and
    a select."""
    nodes = [helper.make_node("Pow", ["x", "e"], ["p"], name="/pow"),
             helper.make_node("Pow", ["two", "x"], ["q"], name="/rpow"),
             helper.make_node("Abs", ["x"], ["a"], name="/abs"),
             helper.make_node("Pow", ["a", "x"], ["r"], name="/pow2"),
             helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0], name="/transpose"),
             helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], name="/max"),
             helper.make_node("Greater", ["x", "zero"], ["g"], name="/greater"),
             helper.make_node("Where", ["g", "x", "t"], ["w"], name="/where")]
    init = {"e": np.array(1.7, np.float32), "two": np.array(2.3, np.float32), "zero": np.array(0.0, np.float32)}
    return model_of(nodes, {"x": ((40, 40), F32)}, init, ["p", "q", "r", "m", "w"])


def concat() -> onnx.ModelProto:
    """A concatenation, transposed: one gather reading from two buffers (noc_read_tiles_indexed, sources 2)."""
    nodes = [helper.make_node("Concat", ["x", "y"], ["c"], axis=1, name="/concat"),
             helper.make_node("Transpose", ["c"], ["t"], perm=[1, 0], name="/transpose")]
    return model_of(nodes, {"x": ((64, 64), F32), "y": ((64, 96), F32)}, {}, ["t"])


def matmul_chain() -> onnx.ModelProto:
    """Big enough to run block-sharded in L1 (tests/e2e/test_sharding_golden.py)."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="/relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="/fc2")]
    init = {"w1": (rng.standard_normal((384, 512)) / 20).astype(np.float32),
            "w2": (rng.standard_normal((512, 96)) / 16).astype(np.float32)}
    return model_of(nodes, {"x": ((512, 384), F32)}, init, ["y"])


def conv_chain() -> onnx.ModelProto:
    """3x3 conv + relu -> 1x1 conv -> 1x1 conv at 56 x 56 pixels: runs height-sharded in L1 (the first 1x1's result,
    read as tiles by the second; tests/e2e/test_sharding_golden.py)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="/relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="/conv2"),
             helper.make_node("Conv", ["c2", "w3"], ["y"], name="/conv3")]
    init = {"w1": (rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32),
            "b1": (rng.standard_normal(32) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((64, 32, 1, 1)) / 6).astype(np.float32),
            "b2": (rng.standard_normal(64) * 0.1).astype(np.float32),
            "w3": (rng.standard_normal((32, 64, 1, 1)) / 8).astype(np.float32)}
    return model_of(nodes, {"x": ((1, 16, 56, 56), F32)}, init, ["y"])


def feeds_of(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if inp.type.tensor_type.elem_type == TensorProto.INT64:
            feeds[inp.name] = rng.integers(-50, 50, shape)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": zoo.mlp,
    "odd_shapes": zoo.odd_shapes,
    "elementwise_broadcast": zoo.elementwise_broadcast,
    "encoder": lambda: zoo.encoder_block(seq=32, hidden=64, heads=2, ffn=128),
    "conv_pool": conv_pool,
    "gather": gather,
    "concat": concat,
    "unary_mix": unary_mix,
    "block_sharded": matmul_chain,
    "height_sharded": conv_chain,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_program_of_a_model_matches_the_interpreter(name: str) -> None:
    model = MODELS[name]()
    compiled = ttc.compile(model)
    feeds = feeds_of(model)
    with dual_programs() as dual:
        outputs = compiled.run(feeds)
    assert dual.programs > 0 and not dual.faults
    assert not dual.races, f"cores read or write bytes another core writes: {dual.races[:3]}"
    layouts = {o.attributes.get("memory_layout") for o in compiled.module.walk() if o.name == "ttkernel.addrgen"}
    assert name != "block_sharded" or "block_sharded" in layouts
    assert name != "height_sharded" or "height_sharded" in layouts
    assert name != "concat" or any(o.attributes.get("sources", 1) > 1 for o in compiled.module.walk()
                                   if o.name == "ttkernel.noc_read_tiles_indexed")
    with using_emulator("native", threads=2):  # and a whole run natively gives the same outputs
        again = compiled.run(feeds)
    for key, value in outputs.items():
        np.testing.assert_array_equal(np.asarray(again[key]).view(np.uint8), np.asarray(value).view(np.uint8))


def test_programs_handed_to_the_pool_back_to_back_give_the_same_bytes() -> None:
    """The pool's threads spin between programs and take each new one without sleeping: every program of a model
    run 12 times in a row on 2 and 3 threads (each run forced onto the pool, however short the program) leaves
    the bytes of the first run."""

    class Repeat(DualEnqueue):
        def __call__(self, ex: Any, op: Operation, values: dict[Value, Any]) -> None:
            addresses = [ex.buffer(values, value).alloc.address for value in op.operands]
            plan = ex._plans.get(op) or ex._plans.setdefault(op, ProgramPlan(op))
            device, ranges = ex.device, l1_ranges(ex.device, op)
            start = snapshot(device, ranges)
            profile = run_native(device, op, addresses, ex.step_budget, plan, 2)
            want = snapshot(device, ranges)
            encoding = native_program.encode(plan, op, device)
            for run_index in range(12):
                restore(device, start)
                encoding.program.last_run_us = 0  # no history: the run uses every thread
                got = run_native(device, op, addresses, ex.step_budget, plan, 2 + run_index % 2)
                assert got == profile
                assert_same_state(snapshot(device, ranges), want, f"run {run_index}")
            ex.profile.append(profile)

    compiled = ttc.compile(conv_pool())
    with enqueue_hook(Repeat()):
        compiled.run({"x": np.random.default_rng(4).standard_normal((1, 3, 10, 9)).astype(np.float32)})


def test_a_program_takes_one_thread_or_several_by_its_recorded_times() -> None:
    """A program that may run on several threads takes several unless its recorded run on one was faster by a
    quarter, tries the other way on its second run and then at `next_probe` (the spacing doubling up to 64 runs
    while the choice holds, back to 16 when it flips), and takes one after a run that mostly waited
    (`serial_runs`); the bytes are the same whichever it takes."""
    seen: list[int] = []

    class Choose(DualEnqueue):
        def __call__(self, ex: Any, op: Operation, values: dict[Value, Any]) -> None:
            addresses = [ex.buffer(values, value).alloc.address for value in op.operands]
            plan = ex._plans.get(op) or ex._plans.setdefault(op, ProgramPlan(op))
            device, ranges = ex.device, l1_ranges(ex.device, op)
            encoding = native_program.encode(plan, op, device)
            program = encoding.program
            start = snapshot(device, ranges)
            if program.cores < 2:
                ex.profile.append(run_native(device, op, addresses, ex.step_budget, plan, 2))
                return

            def run(**state: float) -> int:
                restore(device, start)
                state = {"serial_runs": 0, **state}  # (a short run may wait for the other thread most of its time)
                for key, value in state.items():
                    setattr(program, key, value)
                program.last_run_us = 0  # no history of a short run (those take one thread)
                got = run_native(device, op, addresses, ex.step_budget, plan, 2)
                assert got == profile
                assert_same_state(snapshot(device, ranges), want, f"{state}")
                return program.last_workers

            profile = run_native(device, op, addresses, ex.step_budget, plan, 1)
            want = snapshot(device, ranges)
            fresh = dict(serial_us=0, parallel_us=0, runs=0, serial_runs=0, next_probe=2, probe_every=16, chosen=0)
            assert run(**fresh) == 2 and program.runs == 1  # nothing recorded: several
            assert program.parallel_us == 0  # (the first run, cold, is not recorded)
            assert run(runs=1) == 1 and program.serial_us > 0  # the second run tries one thread
            assert program.next_probe == 18 and program.probe_every == 32
            assert run(serial_us=100.0, parallel_us=124.0, runs=2, chosen=2) == 2  # one thread not a quarter faster
            assert run(serial_us=100.0, parallel_us=126.0, runs=2, chosen=1) == 1  # faster by more than a quarter
            # the probe at next_probe tries the other way; the next is twice as far, then at most 64 runs away
            assert run(serial_us=100.0, parallel_us=126.0, runs=17, next_probe=18, probe_every=32, chosen=1) == 2
            assert program.next_probe == 18 + 32 and program.probe_every == 64
            assert run(serial_us=100.0, parallel_us=126.0, runs=49, next_probe=50, probe_every=64) == 2
            assert program.next_probe == 50 + 64 and program.probe_every == 64
            # the choice flips (several now faster): probes every 16 runs again
            assert run(serial_us=100.0, parallel_us=110.0, runs=60, next_probe=114, probe_every=64, chosen=1) == 2
            assert program.next_probe == 61 + 16 and program.probe_every == 16 and program.chosen == 2
            assert run(serial_us=0, parallel_us=0, runs=5, serial_runs=3, next_probe=2) == 1 and program.serial_runs == 2
            seen.append(program.cores)
            ex.profile.append(profile)

    compiled = ttc.compile(conv_pool())
    with enqueue_hook(Choose()):
        compiled.run({"x": np.random.default_rng(5).standard_normal((1, 3, 10, 9)).astype(np.float32)})
    assert seen, "no program ran on several cores"


def test_the_models_use_every_kernel_op() -> None:
    """The models above, which the test before runs on both emulators, hold every ttkernel op between them.
    Read from the compiled kernels, not gathered from the runs: under pytest-xdist the model tests are spread
    over workers, so no one worker sees every run."""
    used: set[str] = set()
    for make in MODELS.values():
        used.update(o.name for o in ttc.compile(make()).module.walk() if o.name.startswith("ttkernel."))
    assert used >= KERNEL_OPS, sorted(KERNEL_OPS - used)


@pytest.mark.parametrize(("mutation", "message"), [
    ("layout", r"an interleaved address generator over a block_sharded buffer at 0x[0-9a-f]+\n  at core \(0,0\) and "),
    ("stride", r"out-of-bounds L1 read: page \d+ of sharded buffer tensor<512x512xbf16.* which has 256 pages in "
               r"\d+ shards\n  at core \(\d+,\d+\) and \d+ more cores, reader kernel, CB 0"),
])
def test_sharded_reads_fault_alike(mutation: str, message: str) -> None:
    """The block-sharded product's consumer mutated: its address generator loses its layout, or its reads
    stride past the shards (compiled without multicast, whose plan for it reads one tile row at a time, so a
    row stride would change nothing)."""
    from ttc.compiler import CompiledModel, CompileOptions, compile_model, default_pipeline
    from ttc.ir.parser import parse_module

    unicast = default_pipeline().replace("grid{", "grid{multicast=false,")
    compiled = compile_model(matmul_chain(), CompileOptions(pipeline=unicast))
    module = parse_module(str(compiled.module))
    fc2 = next(op for op in module.walk() if op.name == "ttmetal.enqueue_program" and op.loc.names() == ("/fc2",))
    reader = list(fc2.regions[0].blocks[0].ops)
    if mutation == "layout":
        gen = next(op for op in reader if op.attributes.get("memory_layout") == "block_sharded")
        del gen.attributes["memory_layout"]
    else:
        read = next(op for op in fc2.walk() if op.name == "ttkernel.noc_read_tiles" and op.attr("cb") == 0)
        read.attributes["row_stride"] = 40
    with dual_programs() as dual, pytest.raises(DeviceFault, match=message):
        CompiledModel(module, compiled.device_weights, compiled.manifest).run({"x": np.ones((512, 384), np.float32)})
    assert len(dual.faults) == 1


# ----------------------------------------------------------------------------------------------
# The op table


def test_every_interpreter_handler_has_a_native_encoding() -> None:
    """A new ttkernel op needs a native opcode (runtime/native_program.py _ENCODERS and program.cpp)."""
    assert set(HANDLERS) == set(KERNEL_OPS)


def test_no_python_handler_runs_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a Python handler ran")

    for name in HANDLERS:
        monkeypatch.setitem(HANDLERS, name, refuse)
    model = zoo.odd_shapes()
    compiled = ttc.compile(model)
    with using_emulator("native"):
        outputs = compiled.run(zoo.random_inputs(model))
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_a_plan_is_encoded_once() -> None:
    a, b = (np.ones((64, 96), np.float32) for _ in range(2))
    program = eltwise_program((3, 2))
    ta, tb, tc = (Tensor(n, a.shape) for n in "abc")
    seen = []
    original = native_program._encode

    def counting(*args: Any) -> Any:
        seen.append(args)
        return original(*args)

    native_program._encode = counting
    try:
        with using_emulator("native"):
            from runtime_helpers import build

            ex = executor.Executor(build([ta, tb], [tc], [program]), {})
            for _ in range(3):
                ex.run({"a": a, "b": b})
    finally:
        native_program._encode = original
    assert len(seen) == 1
    [op] = [op for op in ex.main.body.ops if op.name == "ttmetal.enqueue_program"]
    assert encode(ex._plans[op], op, ex.device) is encode(ex._plans[op], op, ex.device)


# ----------------------------------------------------------------------------------------------
# Hand-written programs: faults on several cores, threads, watched ranges


def run_dual(inputs: dict[str, tuple[Tensor, np.ndarray]], outputs: list[Tensor], *programs: ProgramSpec,
             threads: tuple[int, ...] = (1, 2, 3), before: Callable[[Device], None] | None = None) -> str | None:
    """Run on both emulators; returns the fault text (None: no fault)."""
    with dual_programs(threads, before) as dual:
        try:
            run(inputs, outputs, *programs)
        except DeviceFault as fault:
            assert dual.faults == [str(fault)]
            return str(fault)
    return None


def eltwise_inputs(shape: tuple[int, int], fmt: str = "bf16", seed: int = 0) -> dict[str, tuple[Tensor, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {n: (Tensor(n, shape, fmt), rng.standard_normal(shape).astype(np.float32)) for n in "ab"}


def test_the_earliest_fault_wins_over_lower_cores() -> None:
    """Core 0 reads past the buffer in its second tile, core 4 in its first: the interpreter meets core 4's
    fault first (it runs all cores op by op), so that is the one reported."""
    program = eltwise_program((3, 2), per_core=2, starts=[11, 2, 4, 6, 13, 10])
    text = run_dual(eltwise_inputs((64, 192)), [Tensor("c", (64, 192))], program)
    assert text is not None and "page 13 of 2048 bytes" in text and "at core (1,1), reader kernel" in text


def test_cores_faulting_at_the_same_op_are_counted() -> None:
    program = eltwise_program((3, 2), per_core=1, starts=[0, 9, 2, 7, 4, 8])
    text = run_dual(eltwise_inputs((64, 96)), [Tensor("c", (64, 96))], program)
    assert text is not None and "page 9 of 2048" in text and "at core (1,0) and 2 more cores" in text


def test_a_ragged_write_fault_names_every_core() -> None:
    """noc_write_tiles with valid_cols locates the written pages of all cores as one row: the interpreter's
    fault names every core, with the first offender's page."""
    x = np.random.default_rng(3).standard_normal((32, 96)).astype(np.float32)
    reader = [kop("get_arg", out="t", index=0), kop("get_arg", out="v", index=1), *addrgen("a", 0),
              kop("cb_reserve_back", cb=0, pages=2), kop("noc_read_tiles", "a", "t", "v", cb=0, rows=1, cols=2),
              kop("noc_read_barrier"), kop("cb_push_back", cb=0, pages=2)]
    writer = [kop("get_arg", out="t", index=0), kop("get_arg", out="v", index=1), *addrgen("c", 1),
              kop("cb_wait_front", cb=0, pages=2), kop("noc_write_tiles", "c", "t", "v", cb=0, rows=1, cols=2),
              kop("noc_write_barrier"), kop("cb_pop_front", cb=0, pages=2)]
    program = ProgramSpec(reader, [], writer, [cb(0, 2)], (3, 1), [[[0, 2], [2, 1], [1, 2]], [[], [], []],
                                                                  [[0, 2], [2, 1], [5, 2]]])
    text = run_dual({"a": (Tensor("a", x.shape), x)}, [Tensor("c", x.shape)], program)
    assert text is not None and "page 5" in text and "at core (0,0) and 2 more cores, writer kernel" in text


def test_writes_mark_watched_ranges_between_the_cores_writes_dirty() -> None:
    """The interpreter marks dirty every watched range between the lowest and highest offset one write op
    writes on all cores: core 0 writes tile 0 (bank 0, base), core 1 tile 16 (bank 0, base + 4096); a range
    at base + 2048, which no core writes, is marked too."""
    program = eltwise_program((2, 1), per_core=1, starts=[0, 1], write_starts=[0, 16])
    inputs = eltwise_inputs((64, 96))

    def watch(device: Device) -> None:
        base = 2 * inputs["a"][0].bytes_per_bank()  # c follows a and b in DRAM
        device.dram.watch("between", base + 2048, base + 4096)
        device.dram.watch("beyond", base + 6144, base + 8192)
        device.dram.watch("elsewhere", 0, 64)

    text = run_dual(inputs, [Tensor("c", (96, 192))], program, before=watch)
    assert text is None


def test_a_row_lookup_position_fault_comes_before_a_later_check_of_other_cores() -> None:
    """noc_read_rows_indexed checks the index positions of each core before the index CB's window: a core
    whose positions are outside the page is reported even when the others fault later in the op."""
    table, ids = np.random.default_rng(5).standard_normal((10, 64)).astype(np.float32), np.full((1, 40), 3)
    ids[0, 5] = 12  # core 0 reads a row past the table (a later check), core 1 a position past the ids
    reader = [kop("get_arg", out="first", index=0), kop("get_arg", out="valid", index=1),
              kop("constant", out="zero", value=0), *addrgen("t", 0, page=128),
              *addrgen("ids", 1, fmt="i32", page=160), kop("cb_reserve_back", cb=8, pages=1),
              kop("noc_read_pages", "ids", "zero", cb=8, count=1), kop("noc_read_barrier"),
              kop("cb_push_back", cb=8, pages=1), kop("cb_wait_front", cb=8, pages=1),
              kop("cb_reserve_back", cb=0, pages=32),
              kop("noc_read_rows_indexed", "t", "first", "valid", cb=0, index_cb=8, count=32),
              kop("noc_read_barrier"), kop("cb_push_back", cb=0, pages=32), kop("cb_pop_front", cb=8, pages=1),
              kop("cb_wait_front", cb=0, pages=32), kop("cb_pop_front", cb=0, pages=32)]
    program = ProgramSpec(reader, [], [], [cb(0, 32, page=128), cb(8, 1, "i32", page=160)], (2, 1),
                          [[[0, 32], [32, 32]], [[], []], [[], []]], buffers=["t", "ids"])
    tt = Tensor("t", table.shape, "bf16", "row_major")
    ti = Tensor("ids", ids.shape, "i32", "row_major", host="i64")
    text = run_dual({"t": (tt, table), "ids": (ti, ids)}, [Tensor("c", (32, 32))], program)
    assert text is not None and "index position 40 is outside the 40 int32 values" in text
    assert "at core (1,0), reader kernel, CB 8" in text


@pytest.mark.parametrize("sharded", [False, True])
def test_a_per_core_addrgen_base_over_sharded_buffers_runs_on_the_interpreter(sharded: bool,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter picks the sharded path by core 0's base for all cores; with a base that differs between
    cores over a memory holding sharded buffers, the program runs on the interpreter (the same result)."""
    from ttc.runtime.device import ShardSpec

    address = 1 << 19
    program = eltwise_program((2, 1), per_core=1)
    program.reader = [kop("get_arg", out="abase", index=1) if "%a_base = " in line else line
                      for line in program.reader]
    program.reader = [line.replace('memory = "dram"', 'memory = "l1"') if "%a = " in line else line
                      for line in program.reader]
    program.runtime_args = [[[0, address], [1, address + 32]], *program.runtime_args[1:]]
    program.reader = [line.replace("(%a_base)", "(%abase)") for line in program.reader]
    inputs = eltwise_inputs((32, 64))
    inputs["a"] = (Tensor("a", (32, 64), memory="l1", address=address), inputs["a"][1])

    def add_sharded(device: Device) -> None:
        if sharded and not device.l1._sharded:
            device.l1.allocate_sharded(address + (1 << 16), 2048, 4, ShardSpec(2, 1, 1, (0, 1, 2, 3)), "buffer s")

    calls = []
    original = native_program.native.run_program

    def counting(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(native_program.native, "run_program", counting)
    text = run_dual(inputs, [Tensor("c", (32, 64))], program, threads=(1,), before=add_sharded)
    assert text is not None and "out-of-bounds L1 read" in text  # core 1's base is inside a, not its start
    assert bool(calls) != sharded


def test_cores_reading_what_another_core_writes_are_reported() -> None:
    """c = a + b written in place into a, each core to its neighbour's tile: core 1 reads the tile core 0
    writes, so the result would depend on the order of the cores; the race check names them."""
    program = eltwise_program((2, 1), per_core=1, starts=[0, 1], write_starts=[1, 0])
    program.buffers = ["a", "b", "a"]
    inputs = eltwise_inputs((32, 64))
    with dual_programs((1,)) as dual:
        dual.compare = False  # the interpreter reads both tiles before it writes either; core 0 runs first here
        run(inputs, [Tensor("c", (32, 32))], program)
    assert {(race[3], race[5]) for race in dual.races} <= {(0, 1), (1, 0)} and dual.races
    assert all(race[4] != race[6] for race in dual.races)  # a read and a write


FORMATS = ["bf16", "f16", "f32", "bfp8_b", "bfp4_b"]
SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -3e-39, 65504.0, 7e4, 3.4e38, 1.0, -2.5],
                    dtype=np.float32)


@settings(max_examples=25, deadline=None)
@given(grid=st.sampled_from([(1, 1), (2, 1), (3, 2)]), per_core=st.integers(1, 3), op=st.sampled_from(["add", "sub", "mul"]),
       fmt=st.sampled_from(FORMATS), pages=st.integers(1, 3), bad=st.booleans(), seed=st.integers(0, 2**16))
def test_random_eltwise_programs_match(grid: tuple[int, int], per_core: int, op: str, fmt: str, pages: int, bad: bool,
                                       seed: int) -> None:
    """Random grids, formats, CB depths and data with special values (NaN, inf, -0, subnormals, f16 overflow);
    with `bad`, one random core starts past the buffer."""
    rng = np.random.default_rng(seed)
    cores = grid[0] * grid[1]
    tiles = cores * per_core
    shape = (32, 32 * tiles)
    starts = [c * per_core for c in range(cores)]
    if bad:
        starts[int(rng.integers(cores))] = int(rng.integers(tiles - per_core + 1, tiles + 3))
    program = eltwise_program(grid, per_core=per_core, op=op, starts=starts, write_starts=range(0, tiles, per_core),
                              pages=pages, fmt=fmt)
    inputs = {}
    for name in "ab":
        x = rng.standard_normal(shape).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 4))
        holes = rng.random(shape) < 0.05
        x[holes] = rng.choice(SPECIALS, int(holes.sum()))
        inputs[name] = (Tensor(name, shape, fmt), x)
    text = run_dual(inputs, [Tensor("c", shape, fmt)], program, threads=(1, 2))
    if bad:
        assert text is not None
    else:  # an f16 result past 65504 (7e4 and 3.4e38 are among the values) is a Float16 overflow
        assert text is None or (fmt == "f16" and "Float16 overflow" in text)


@settings(max_examples=10, deadline=None)
@given(fn=st.sampled_from(["exp", "recip", "pow_scalar", "rpow_scalar", "max_scalar", "where_eqz", "gelu", "floor"]),
       param=st.sampled_from([0.0, -1.5, 2.0, 0.5, float("inf")]), fmt=st.sampled_from(["bf16", "f16"]),
       seed=st.integers(0, 2**16))
def test_random_sfpu_programs_match(fn: str, param: float, fmt: str, seed: int) -> None:
    """SFPU functions by table, by per-parameter table (pow) and by scalar, in both Dst formats (an f16 result
    makes Dst f16)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 64)).astype(np.float32) * 4
    x[rng.random(x.shape) < 0.1] = rng.choice(SPECIALS, 1)[0]
    reader = [kop("get_arg", out="t", index=0), *addrgen("a", 0, fmt), kop("cb_reserve_back", cb=0, pages=1),
              kop("noc_read_tiles", "a", "t", cb=0, rows=1, cols=1), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=1)]
    compute = [kop("cb_wait_front", cb=0, pages=1), kop("tile_regs_acquire"), kop("copy_tiles", cb=0, rows=1, cols=1),
               kop("sfpu_tiles", fn=fn, count=1, param=param), kop("fill_tiles", dst=1, count=1, value=1.5),
               kop("sfpu_binary_tiles", fn="pow", dst=2, dst_b=1, count=1), kop("tile_regs_commit"),
               kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=1), kop("pack_tiles", count=1, cb=16),
               kop("cb_push_back", cb=16, pages=1), kop("tile_regs_release"), kop("cb_pop_front", cb=0, pages=1)]
    writer = [kop("get_arg", out="t", index=0), *addrgen("c", 1, fmt), kop("cb_wait_front", cb=16, pages=1),
              kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=1), kop("noc_write_barrier"),
              kop("cb_pop_front", cb=16, pages=1)]
    program = ProgramSpec(reader, compute, writer, [cb(0, 2, fmt), cb(16, 2, fmt)], (2, 1),
                          [[[0], [1]], [[], []], [[0], [1]]])
    text = run_dual({"a": (Tensor("a", x.shape, fmt), x)}, [Tensor("c", x.shape, fmt)], program, threads=(1, 2))
    assert text is None or (fmt == "f16" and "Float16 overflow" in text)  # (exp of 16, say)


def test_dst_slots_of_an_earlier_acquire_are_nan_where_read() -> None:
    """An acquire makes the slots its half held NaN again. The native core fills a slot only when an op reads it
    (packs, accumulates into, masks, gives it to the SFPU) and skips the fill for a slot an op overwrites whole:
    after a later acquire of the same half, slots read untouched, read by math and overwritten are the
    interpreter's."""
    x = np.random.default_rng(5).standard_normal((32, 64)).astype(np.float32)
    reader = [kop("get_arg", out="t", index=0), *addrgen("a", 0), kop("cb_reserve_back", cb=0, pages=1),
              kop("noc_read_tiles", "a", "t", cb=0, rows=1, cols=1), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=1)]

    def packed(count: int) -> list[str]:
        return [kop("tile_regs_commit"), kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=count),
                kop("pack_tiles", count=count, cb=16), kop("cb_push_back", cb=16, pages=count),
                kop("tile_regs_release")]

    compute = [kop("cb_wait_front", cb=0, pages=1), kop("constant", out="z", value=0),
               kop("tile_regs_acquire"), kop("fill_tiles", count=6, value=1.0), *packed(6),
               kop("tile_regs_acquire"), kop("fill_tiles", count=1, value=2.0), kop("tile_regs_commit"),
               kop("tile_regs_wait"), kop("tile_regs_release"),
               kop("tile_regs_acquire"),  # the first half again: slots 0..5 are NaN
               kop("copy_tiles", cb=0, rows=1, cols=1, dst=1),
               kop("sfpu_tiles", fn="exp", dst=2, count=1),
               kop("matmul_tiles", cb_a=0, cb_b=0, inner=1, rows=1, cols=1, dst=3, a_row_stride=1, b_row_stride=1),
               kop("mask_tiles", "z", "z", rows=1, cols=1, dst=4, valid_rows=16, valid_cols=16, fill=0.5),
               kop("sfpu_binary_tiles", fn="pow", dst=5, dst_b=1, count=1),
               *packed(6), kop("cb_pop_front", cb=0, pages=1)]
    writer = [kop("get_arg", out="t", index=0), *addrgen("c", 1), kop("constant", out="six", value=6),
              kop("addi", "t", "six", out="t2")]
    for start in ("t", "t2"):
        writer += [kop("cb_wait_front", cb=16, pages=6), kop("noc_write_tiles", "c", start, cb=16, rows=1, cols=6),
                   kop("noc_write_barrier"), kop("cb_pop_front", cb=16, pages=6)]
    program = ProgramSpec(reader, compute, writer, [cb(0, 1), cb(16, 6)], (2, 1), [[[0], [1]], [[], []], [[0], [12]]])
    with dual_programs((1, 2)):
        out, _ = run({"a": (Tensor("a", x.shape), x)}, [Tensor("c", (32, 32 * 24))], program)
    c = out["c"].reshape(32, 24, 32).transpose(1, 0, 2)  # tiles
    for core in range(2):
        second = c[core * 12 + 6: core * 12 + 12]
        assert (c[core * 12: core * 12 + 6] == 1.0).all()
        assert np.isnan(second[[0, 2, 3, 5]]).all() and not np.isnan(second[1]).any()
        assert (second[4][16:] == 0.5).all() and np.isnan(second[4][:16, :16]).all()


# ----------------------------------------------------------------------------------------------
# Row segments (the column-blocked untilize / tilize / row lookup of rows too wide for L1)


def segment_untilize(extra: tuple[int, int]) -> ProgramSpec:
    """A [40, 70] tile tensor to 140-byte row pages on 2 cores, each tile column packed alone into 96-byte CB pages
    and written as a row segment (bytes 0, 64, 128; 64, 64 and 12 of them); core c's segments are extra[c] bytes
    longer (0: the right bytes)."""
    reader = [kop("get_arg", out="t", index=0), *addrgen("a", 0),
              kfor("b", 3, [kop("addi", "t", "b", out="tb"), kop("cb_reserve_back", cb=0, pages=1),
                            kop("noc_read_tiles", "a", "tb", cb=0, rows=1, cols=1), kop("noc_read_barrier"),
                            kop("cb_push_back", cb=0, pages=1)])]
    compute = [kfor("b", 3, [kop("cb_reserve_back", cb=16, pages=32), kop("cb_wait_front", cb=0, pages=1),
                             kop("tile_regs_acquire"), kop("copy_tiles", cb=0, rows=1, cols=1),
                             kop("tile_regs_commit"), kop("tile_regs_wait"), kop("pack_rows", cb=16, cols=1),
                             kop("tile_regs_release"), kop("cb_pop_front", cb=0, pages=1),
                             kop("cb_push_back", cb=16, pages=32)])]
    writer = [kop("get_arg", out="page", index=0), kop("get_arg", out="valid", index=1),
              kop("get_arg", out="extra", index=2), kop("constant", out="c64", value=64),
              kop("constant", out="m64", value=-64), kop("constant", out="c140", value=140),
              *addrgen("c", 1, page=140),
              kfor("s", 3, [kop("muli", "s", "c64", out="off"), kop("muli", "s", "m64", out="back"),
                            kop("addi", "c140", "back", out="left"), kop("mini", "c64", "left", out="n"),
                            kop("addi", "n", "extra", out="size"), kop("cb_wait_front", cb=16, pages=32),
                            kop("noc_write_rows", "c", "page", "valid", "off", "size", cb=16, count=32),
                            kop("noc_write_barrier"), kop("cb_pop_front", cb=16, pages=32)])]
    return ProgramSpec(reader, compute, writer, [cb(0, 2), cb(16, 64, page=96)], (2, 1),
                       [[[0], [3]], [[], []], [[0, 32, extra[0]], [32, 8, extra[1]]]], kind="untilize")


@pytest.mark.parametrize(("extra", "message"), [
    ((0, 0), None),
    ((0, 12), r"a row segment of 24 bytes at byte 128 is outside the 140-byte pages of the buffer\n  at core \(1,0\), "
              r"writer kernel, CB 16"),
    ((40, 0), r"a row segment of 104 bytes does not fit CB 16's 96-byte pages\n  at core \(0,0\), writer kernel"),
    ((40, 80), r"a row segment of 144 bytes at byte 0 is outside the 140-byte pages of the buffer\n  at core \(1,0\)"),
])
def test_row_segment_writes_run_and_fault_alike(extra: tuple[int, int], message: str | None) -> None:
    """noc_write_rows with a segment on both emulators: the same bytes and counts, or the same fault (a segment
    past the buffer page is checked on every core before one longer than a CB page)."""
    x = np.random.default_rng(6).standard_normal((40, 70)).astype(np.float32)
    text = run_dual({"a": (Tensor("a", x.shape), x)}, [Tensor("c", x.shape, "bf16", "row_major")],
                    segment_untilize(extra))
    if message is None:
        assert text is None
        out, _ = run({"a": (Tensor("a", x.shape), x)}, [Tensor("c", x.shape, "bf16", "row_major")],
                     segment_untilize(extra))
        np.testing.assert_array_equal(out["c"], x.astype(ml_dtypes.bfloat16).astype(np.float32))
    else:
        assert text is not None and re.search(message, text), text


@pytest.mark.parametrize(("segments", "message"), [
    (((0, 0, 64), (2, 100, 40)), None),
    (((0, 0, 64), (2, 100, 41)), r"a row segment of 41 bytes at byte 100 is outside the 140-byte pages of the "
                                 r"buffer\n  at core \(1,0\), reader kernel, CB 0"),
    (((0, -2, 8), (2, 0, 8)), r"a row segment of 8 bytes at byte -2 is outside .*\n  at core \(0,0\), reader"),
    (((0, 0, 100), (2, 0, 100)), r"a row segment of 100 bytes does not fit CB 0's 96-byte pages\n  at core \(0,0\) "
                                 r"and 1 more core"),
])
def test_row_segment_page_reads_run_and_fault_alike(segments: tuple, message: str | None) -> None:
    """noc_read_pages with a per-core segment (start page, offset, size) into 96-byte CB pages: the segment at the
    start of each page and zeros after it, alike on both emulators, or the same fault."""
    table = np.random.default_rng(7).standard_normal((4, 70)).astype(np.float32)
    reader = [kop("get_arg", out="start", index=0), kop("get_arg", out="off", index=1),
              kop("get_arg", out="size", index=2), *addrgen("t", 0, page=140), kop("cb_reserve_back", cb=0, pages=2),
              kop("noc_read_pages", "t", "start", "off", "size", cb=0, count=2), kop("noc_read_barrier"),
              kop("cb_push_back", cb=0, pages=2), kop("cb_wait_front", cb=0, pages=2), kop("cb_pop_front", cb=0, pages=2)]
    program = ProgramSpec(reader, [], [], [cb(0, 2, page=96)], (2, 1), [[list(s) for s in segments], [[], []], [[], []]],
                          buffers=["t"])
    text = run_dual({"t": (Tensor("t", table.shape, "bf16", "row_major"), table)}, [Tensor("c", (32, 32))], program)
    assert (text is None) if message is None else (text is not None and re.search(message, text)), text


@pytest.mark.parametrize(("size", "message"), [
    (40, None), (300, r"a row segment of 300 bytes at byte 8 is outside the 128-byte pages of the buffer\n  at core "
                      r"\(0,0\) and 1 more core, reader kernel, CB 0")])
def test_row_segment_lookups_run_and_fault_alike(size: int, message: str | None) -> None:
    """noc_read_rows_indexed with a segment (bytes 8.. of each looked-up row), valid rows zero-padded."""
    table, ids = np.random.default_rng(8).standard_normal((10, 64)).astype(np.float32), np.full((1, 40), 3)
    ids[0, 1::3] = -2
    reader = [kop("get_arg", out="first", index=0), kop("get_arg", out="valid", index=1),
              kop("constant", out="zero", value=0), kop("constant", out="off", value=8),
              kop("constant", out="size", value=size), *addrgen("t", 0, page=128),
              *addrgen("ids", 1, fmt="i32", page=160), kop("cb_reserve_back", cb=8, pages=1),
              kop("noc_read_pages", "ids", "zero", cb=8, count=1), kop("noc_read_barrier"),
              kop("cb_push_back", cb=8, pages=1), kop("cb_wait_front", cb=8, pages=1),
              kop("cb_reserve_back", cb=0, pages=32),
              kop("noc_read_rows_indexed", "t", "first", "valid", "off", "size", cb=0, index_cb=8, count=32, wrap=10),
              kop("noc_read_barrier"), kop("cb_push_back", cb=0, pages=32), kop("cb_pop_front", cb=8, pages=1),
              kop("cb_wait_front", cb=0, pages=32), kop("cb_pop_front", cb=0, pages=32)]
    program = ProgramSpec(reader, [], [], [cb(0, 32, page=64), cb(8, 1, "i32", page=160)], (2, 1),
                          [[[0, 32], [32, 8]], [[], []], [[], []]], buffers=["t", "ids"])
    tt = Tensor("t", table.shape, "bf16", "row_major")
    ti = Tensor("ids", ids.shape, "i32", "row_major", host="i64")
    text = run_dual({"t": (tt, table), "ids": (ti, ids)}, [Tensor("c", (32, 32))], program)
    assert (text is None) if message is None else (text is not None and re.search(message, text)), text
