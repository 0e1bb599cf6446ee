"""Run plans (runtime/executor.py `Stretch`, runtime/native/program.cpp `RunPlan`): a stretch of buffer and program
ops recorded on one run is replayed in one native call on later runs that start from the same device state. A
replayed run must leave what the same run op by op leaves (outputs, profiles, DRAM and L1 bytes and poison marks,
allocation tables, dirty watches), must not be taken when the device state differs, and a program that runs
otherwise than recorded (a fault, other counts) must give the op-by-op run's diagnostic."""

from __future__ import annotations

import signal
import threading
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_native_program import feeds_of, gather, model_of

import ttc
from ttc import zoo
from ttc.ir.diagnostics import DeviceFault
from ttc.runtime import native_program
from ttc.runtime.device import Memory
from ttc.runtime.executor import Stretch

F32 = TensorProto.FLOAT


def conv_relu_pool() -> onnx.ModelProto:
    """Two convs (row lookups, matmuls, intermediates freed and their addresses reused), a pool and an add."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="/conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="/relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="/conv2"),
             helper.make_node("MaxPool", ["c2"], ["p"], name="/pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Add", ["p", "p"], ["y"], name="/add")]
    init = {"w1": (rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32),
            "b1": (rng.standard_normal(16) * 0.1).astype(np.float32),
            "w2": (rng.standard_normal((24, 16, 1, 1)) / 4).astype(np.float32),
            "b2": (rng.standard_normal(24) * 0.1).astype(np.float32)}
    return model_of(nodes, {"x": ((1, 3, 12, 10), F32)}, init, ["y"])


MODELS = {"mlp": zoo.mlp, "conv_relu_pool": conv_relu_pool, "gather": gather}


def replaying(compiled: ttc.CompiledModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first run's outputs, after two more runs: recorded on the second, replayed from the third."""
    want = compiled.run(feeds, emulator="native", threads=1)
    for _ in range(2):
        compiled.run(feeds, emulator="native", threads=1)
    return want


def _step() -> None:
    """A progress callback: a run given one goes op by op (the reference for the replayed runs)."""


def _memory_state(memory: Memory) -> tuple[Any, ...]:
    return (memory._data.tobytes(), memory._marks.tobytes(), memory._marked, memory.signature, memory.version,
            sorted(memory.allocations), list(memory._starts), sorted(memory._buffers), sorted(memory.dirty))


class Replays:
    """Counts the stretches a block of runs replays (and the programs run_program runs one by one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.replays = self.programs = 0
        replay, run_program = Stretch._replay, native_program.native.run_program

        def counted_replay(stretch: Stretch, *args: Any) -> None:
            self.replays += 1
            replay(stretch, *args)

        def counted_run(*args: Any, **kwargs: Any) -> Any:
            self.programs += 1
            return run_program(*args, **kwargs)

        monkeypatch.setattr(Stretch, "_replay", counted_replay)
        monkeypatch.setattr(native_program.native, "run_program", counted_run)


@pytest.mark.parametrize(("name", "threads"), [(name, 1) for name in MODELS] + [("conv_relu_pool", 2)])
def test_replayed_runs_leave_what_op_by_op_runs_leave(name: str, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the third run on, the stretches replay (no program runs one by one); every run's outputs, profiles,
    device bytes, poison marks, allocation tables and dirty sets equal those of a twin run op by op."""
    model = MODELS[name]()
    replayed, op_by_op = ttc.compile(model), ttc.compile(model)
    counts = Replays(monkeypatch)
    for seed in range(5):
        feeds = feeds_of(model, seed)
        programs, replays = counts.programs, counts.replays
        got = replayed.run(feeds, emulator="native", threads=threads)
        if seed >= 2:
            assert counts.replays > replays and counts.programs == programs, "the stretches replay"
        want = op_by_op.executor("native", 1).run(feeds, on_program=_step)
        assert got.keys() == want.keys()
        for key in got:
            assert np.asarray(got[key]).tobytes() == np.asarray(want[key]).astype(got[key].dtype).tobytes(), key
        assert replayed.profile == op_by_op.profile
        a, b = replayed.executor().device, op_by_op.executor().device
        for memory in ("dram", "l1"):
            assert _memory_state(a.memory(memory)) == _memory_state(b.memory(memory)), (seed, memory)
        assert not replayed.executor()._live and not op_by_op.executor()._live


def test_a_replay_needs_the_recorded_device_state() -> None:
    """A buffer registered on the device between runs (another signature) turns the replay down: the run goes op
    by op and meets the overlap as a run without recordings does, with the same text; freed again, the next run
    gives the first run's bits."""
    model = conv_relu_pool()
    compiled, fresh = ttc.compile(model), ttc.compile(model)
    feeds = feeds_of(model, 1)
    want = replaying(compiled, feeds)
    fresh.run(feeds, emulator="native", threads=1)
    texts = []
    for c in (compiled, fresh):
        l1 = c.executor().device.l1
        spec = next(spec for spec in c.executor()._buffer_specs.values() if spec.memory is l1 and spec.poisoned)
        intruder = l1.allocate(spec.address, 32, 1, "intruder")
        with pytest.raises(DeviceFault) as fault:
            c.run(feeds, emulator="native")
        texts.append(str(fault.value))
        l1.free(intruder.address)
    assert "overlaps" in texts[0] and texts[0] == texts[1]
    got = compiled.run(feeds, emulator="native")
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_a_fault_inside_a_replay_is_the_op_by_op_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token id past the table faults the lookup program inside a replayed stretch: the DeviceFault text is the
    op-by-op run's, nothing stays live, and the next run (valid ids) gives the first run's bits."""
    model = gather()
    replayed, op_by_op = ttc.compile(model), ttc.compile(model)
    feeds = feeds_of(model, 0)
    want = replaying(replayed, feeds)
    bad = {"ids": feeds["ids"].copy()}
    bad["ids"][1, 3] = 4000
    counts = Replays(monkeypatch)
    texts = []
    for c, kwargs in ((replayed, {}), (op_by_op, {"on_program": _step})):
        with pytest.raises(DeviceFault) as fault:
            c.executor("native", 1).run(bad, **kwargs)
        texts.append(str(fault.value))
        assert not c.executor()._live
    assert counts.replays == 1
    assert "out-of-bounds DRAM read" in texts[0] and texts[0] == texts[1]
    got = replayed.run(feeds, emulator="native")
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_a_budget_fault_inside_a_replay_is_the_op_by_op_fault() -> None:
    """A step budget too small for a later program of a replayed stretch: the replay ends at it with the op-by-op
    text (the earlier programs' profiles kept), and with the budget back the runs replay again with the first run's
    bits."""
    model = conv_relu_pool()
    replayed, op_by_op = ttc.compile(model), ttc.compile(model)
    feeds = feeds_of(model, 2)
    want = replaying(replayed, feeds)
    reference = op_by_op.executor("native", 1)
    reference.run(feeds)
    budget = reference.step_budget
    for small in (2 ** k for k in range(3, 20)):  # the smallest budget the first program keeps within
        reference.step_budget = small
        try:
            reference.run(feeds, on_program=_step)
        except DeviceFault as fault:
            if reference.profile:
                want_text, want_profile = str(fault), list(reference.profile)
                break
    else:
        pytest.fail("no budget faults a later program")
    assert "runaway program" in want_text
    executor = replayed.executor("native", 1)
    executor.step_budget = small
    with pytest.raises(DeviceFault) as fault:
        executor.run(feeds)
    executor.step_budget = budget
    assert str(fault.value) == want_text and replayed.profile == want_profile
    assert not executor._live
    for _ in range(3):
        got = replayed.run(feeds, emulator="native")
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_weights_overwritten_between_replayed_runs_are_written_again() -> None:
    """A weight overwritten in DRAM (its watch dirty) after the stretches replay: the run does not replay (another
    dirty set), writes the weight again and gives the first run's bits; the replays resume after it."""
    model = conv_relu_pool()
    compiled = ttc.compile(model)
    feeds = feeds_of(model, 3)
    want = replaying(compiled, feeds)
    dram = compiled.executor().device.dram
    for start, end in dram._watch.values():
        dram.data[:, start:end] = 0x3C
        dram.touch(start, end)
    compiled.executor().device.l1.data[...] = 0x41
    for _ in range(2):
        got = compiled.run(feeds, emulator="native")
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert not dram.dirty


def relu_topk_add() -> onnx.ModelProto:
    """A device op, a host op (TopK) and device ops after it: two stretches with host transfers between them."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/relu"),
             helper.make_node("TopK", ["r", "k"], ["v", "i"], name="/topk", axis=1),
             helper.make_node("Add", ["v", "c"], ["s"], name="/add"),
             helper.make_node("Mul", ["s", "s"], ["y"], name="/mul")]
    init = {"k": np.array([5], np.int64), "c": np.float32(np.random.default_rng(6).standard_normal((4, 5)))}
    return model_of(nodes, {"x": ((4, 40), F32)}, init, ["y"])


def test_stretches_around_a_host_op_replay_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """A schedule with a host op between device programs has two stretches; both replay, with op-by-op bits."""
    model = relu_topk_add()
    replayed, op_by_op = ttc.compile(model), ttc.compile(model)
    counts = Replays(monkeypatch)
    for seed in range(4):
        feeds = feeds_of(model, seed)
        got = replayed.run(feeds, emulator="native", threads=1)
        want = op_by_op.executor("native", 1).run(feeds, on_program=_step)
        assert np.asarray(got["y"]).tobytes() == np.asarray(want["y"]).astype(np.float32).tobytes()
    stretches = [unit for unit in replayed.executor()._units if isinstance(unit, Stretch)]
    assert len(stretches) >= 2 and counts.replays == 2 * len(stretches)


def test_models_sharing_a_device_replay_alternately(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two models on one device (the second's DRAM above the first's), run in turns: each replays its stretches
    (the other's runs leave no buffer live) and gives the bits it gives alone."""
    first_model, second_model = conv_relu_pool(), zoo.mlp()
    first, second = ttc.compile(first_model), ttc.compile(second_model)
    alone = {name: ttc.compile(model) for name, model in (("first", first_model), ("second", second_model))}
    first.executor("native", 1)
    second.executor("native", 1, share_with=first)
    counts = Replays(monkeypatch)
    for seed in range(4):
        for name, compiled, model in (("first", first, first_model), ("second", second, second_model)):
            feeds = feeds_of(model, seed)
            got = compiled.run(feeds, emulator="native", threads=1)
            want = alone[name].run(feeds, emulator="native", threads=1)
            assert all(np.asarray(got[k]).tobytes() == np.asarray(want[k]).tobytes() for k in want), (seed, name)
    counts.replays = 0
    for compiled, model in ((first, first_model), (second, second_model)):
        compiled.run(feeds_of(model, 9), emulator="native")
    stretches = [u for c in (first, second) for u in c.executor()._units if isinstance(u, Stretch)]
    assert counts.replays == len(stretches)


def test_an_interrupt_during_replays_leaves_a_consistent_device() -> None:
    """Ctrl-C while runs replay (RunPlan.run checks for signals between programs): the KeyboardInterrupt reaches the
    caller, no buffer stays registered, and the next run gives the first run's bits."""
    model = conv_relu_pool()
    compiled = ttc.compile(model)
    feeds = feeds_of(model, 4)
    want = compiled.run(feeds, emulator="native", threads=1)
    timer = threading.Timer(0.05, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(100000):
                compiled.run(feeds)
    finally:
        timer.cancel()
    executor = compiled.executor()
    assert not executor._live and not executor.device.dram.allocations and not executor.device.l1.allocations
    got = compiled.run(feeds)
    assert all(np.asarray(got[k]).tobytes() == np.asarray(want[k]).tobytes() for k in want)
