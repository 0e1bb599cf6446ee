"""Device states and runtime scalars (runtime/executor.py): a `create_buffer {state}` keeps its bytes across runs
(zeros at first, never poisoned, resident whatever the allocation mode), the host reaches it through
write_state / read_state only, and a program's `scalar_args` take each run's scalar values without the native
core re-encoding the program; the Python interpreter and the native core agree on every byte."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ttc.ir import parse_module
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttmetal
from ttc.ir.dialects.tt import E150
from ttc.passes import PassManager, parse_pipeline
from ttc.runtime import native_program
from ttc.runtime.executor import Executor

ENTRY, CACHE = (1, 2, 1, 32), (1, 2, 32, 32)


def module_text() -> str:
    def t(shape: tuple[int, ...], layout: str | None) -> str:
        dims = "".join(f"{d}x" for d in shape)
        return f"tensor<{dims}f32>" if layout is None else \
            f"tensor<{dims}bf16, #tt.layout<{layout}, dram, interleaved>>"

    entry, rows, cache, tiles = t(ENTRY, None), t(ENTRY, "row_major"), t(CACHE, "row_major"), t(CACHE, "tile")
    return (f"module attributes {{tt.device = {E150}}} {{\n"
            f'  func.func @main(%x: {entry} {{ttir.name = "x"}}) -> ({t(CACHE, None)} {{ttir.name = "y"}}) {{\n'
            f'    %0 = "ttir.to_layout"(%x) : ({entry}) -> {rows} loc("write")\n'
            f'    %1 = "ttir.kv_write"(%0) {{axis = 2, position = "pos", state = "cache"}} : ({rows}) -> {cache} loc("cat")\n'
            f'    %2 = "ttir.to_layout"(%1) : ({cache}) -> {tiles} loc("tilize")\n'
            f'    %3 = "ttir.to_layout"(%2) : ({tiles}) -> {t(CACHE, None)} loc("read")\n'
            f'    func.return %3 : {t(CACHE, None)} loc("return")\n  }}\n}}\n')


def compiled(pipeline: str = "grid,lower-to-kernels,allocate"):
    module = parse_module(module_text())
    PassManager(parse_pipeline(pipeline)).run(module)
    return module


def executor(emulator: str, pipeline: str = "grid,lower-to-kernels,allocate") -> Executor:
    return Executor(compiled(pipeline), {}, emulator=emulator)


def bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def entries(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(ENTRY).astype(np.float32) for _ in range(count)]


def test_scalars_are_substituted_without_reencoding() -> None:
    ex = executor("native")
    kv = next(op for op in ex.main.body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name
              and op.attr("kind") == "kv_write")
    seen = []
    for position, x in enumerate(entries(1, 4)):
        ex.run({"x": x}, scalars={"pos": position})
        encoding = native_program.encode(ex._plans[kv], kv, ex.device)
        seen.append(encoding)
        assert encoding.scalars == {(2, 1): position}  # the writer's argument #1 now holds the position
    assert all(e is seen[0] for e in seen)  # one encoding for every position
    assert kv.attr("runtime_args")[2] == ((0, 0),)  # the IR keeps its value; the run adds the scalar


def test_native_and_reference_agree_byte_for_byte() -> None:
    results = {}
    for emulator in ("reference", "native"):
        ex = executor(emulator)
        outputs = [ex.run({"x": x}, scalars={"pos": p})["y"] for p, x in zip((3, 0, 31, 7), entries(2, 4),
                                                                               strict=True)]
        results[emulator] = outputs, ex.read_state("cache"), ex.device.dram.data.copy()
    (ref_out, ref_state, ref_dram), (nat_out, nat_state, nat_dram) = results["reference"], results["native"]
    for a, b in zip(ref_out, nat_out, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ref_state, nat_state)
    np.testing.assert_array_equal(ref_dram, nat_dram)


@pytest.mark.parametrize("emulator", ["reference", "native"])
def test_states_start_as_zeros_persist_and_take_host_writes(emulator) -> None:
    ex = executor(emulator)
    assert ex.states == ["cache"]
    np.testing.assert_array_equal(ex.read_state("cache"), 0)  # before any run
    seed = bf16(np.arange(np.prod(CACHE), dtype=np.float32).reshape(CACHE) / 64)
    ex.write_state("cache", seed)
    np.testing.assert_array_equal(ex.read_state("cache"), seed)
    x = entries(3, 1)[0]
    y = ex.run({"x": x}, scalars={"pos": 5})["y"]
    expected = seed.copy()
    expected[:, :, 5:6] = bf16(x)
    np.testing.assert_array_equal(y, expected)  # the entry at slot 5; every other slot kept the host's write
    np.testing.assert_array_equal(ex.read_state("cache"), y)
    with pytest.raises(UserError, match="no device state 'nope'"):
        ex.read_state("nope")
    with pytest.raises(UserError, match=r"has shape \[1, 2, 32, 32\]"):
        ex.write_state("cache", np.zeros((1, 2, 16, 32), np.float32))


@pytest.mark.parametrize("resident_weights", ["true", "false"])
def test_a_state_is_resident_in_both_allocation_modes(resident_weights) -> None:
    module = compiled(f"grid,lower-to-kernels,allocate{{resident-weights={resident_weights}}}")
    ops = module.function("main").body.ops
    (state,) = [op for op in ops if op.name == ttmetal.CREATE_BUFFER.name and ttmetal.STATE_ATTR in op.attributes]
    assert not any(op.name == ttmetal.DEALLOCATE.name and op.operands[0] is state.result for op in ops)
    assert state.attributes["address"] == 0  # placed first, at the bottom of DRAM


def test_transfers_count_the_bytes_a_run_moves() -> None:
    ex = executor("native")
    ex.run({"x": entries(4, 1)[0]}, scalars={"pos": 0})
    # in: the entry, one bf16 row of 32 per head; out: the whole cache, read back as bf16 tiles
    assert ex.transfers == {"to_device": 2 * 32 * 2, "to_host": 2 * 32 * 32 * 2}


@pytest.mark.parametrize("emulator", ["reference", "native"])
def test_two_modules_share_a_device_and_its_states(emulator) -> None:
    first = executor(emulator)
    base = 1 << 20
    second = Executor(compiled(), {}, emulator=emulator, device=first.device, dram_base=base)
    x1, x2 = entries(5, 2)
    first.run({"x": x1}, scalars={"pos": 0})
    y = second.run({"x": x2}, scalars={"pos": 1})["y"]  # its own buffers 1 MiB up, the cache the same
    expected = np.zeros(CACHE, np.float32)
    expected[:, :, 0:1], expected[:, :, 1:2] = bf16(x1), bf16(x2)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(first.read_state("cache"), expected)
    state = first.device.states["cache"]
    assert state.address == 0 and second._state("cache")[1] is state
    with pytest.raises(UserError, match="not a multiple of the DRAM alignment"):
        Executor(compiled(), {}, device=first.device, dram_base=3)


def test_a_state_of_another_shape_on_a_shared_device_is_refused() -> None:
    first = executor("native")
    first.run({"x": entries(6, 1)[0]}, scalars={"pos": 0})
    other = parse_module(module_text().replace("1x2x32x32x", "1x2x64x32x"))
    PassManager(parse_pipeline("grid,lower-to-kernels,allocate")).run(other)
    second = Executor(other, {}, device=first.device, dram_base=1 << 20)
    with pytest.raises(UserError, match="device state 'cache' is 64 pages of 64 bytes at 0x0 on the shared device"):
        second.run({"x": entries(6, 1)[0]}, scalars={"pos": 0})
