"""The cache write device op (passes/ops/kv_write.py): an entry written into a device state (a buffer kept
across runs) at a runtime position. It compiles to one program whose writer takes the position as a runtime
scalar; it runs on both emulators with the same bytes; the state keeps earlier writes; the planned counts are
the executed ones; an out-of-range position is a device fault naming core, kernel and CB."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from backend_helpers import device_weights, programs

from ttc.ir import parse_module
from ttc.ir.diagnostics import DeviceFault, UserError
from ttc.ir.dialects import ttmetal
from ttc.ir.dialects.tt import E150
from ttc.passes import PassManager, parse_pipeline
from ttc.passes.cost_model import plan_counts
from ttc.passes.grid import grid_for
from ttc.passes.ops.kv_write import KV_WRITE, kv_write_cbs
from ttc.passes.ops.registry import device_op, op_kind
from ttc.runtime.executor import Executor


def text(entry: tuple[int, ...], cache: tuple[int, ...], axis: int) -> str:
    def t(shape: tuple[int, ...], layout: str | None) -> str:
        dims = "".join(f"{d}x" for d in shape)
        return f"tensor<{dims}f32>" if layout is None else \
            f"tensor<{dims}bf16, #tt.layout<{layout}, dram, interleaved>>"

    return (f"module attributes {{tt.device = {E150}}} {{\n"
            f'  func.func @main(%x: {t(entry, None)} {{ttir.name = "x"}}) -> ({t(cache, None)} {{ttir.name = "y"}}) {{\n'
            f'    %0 = "ttir.to_layout"(%x) : ({t(entry, None)}) -> {t(entry, "row_major")} loc("write")\n'
            f'    %1 = "ttir.kv_write"(%0) {{axis = {axis}, position = "pos", state = "cache"}} : '
            f'({t(entry, "row_major")}) -> {t(cache, "row_major")} loc("cat")\n'
            f'    %2 = "ttir.to_layout"(%1) : ({t(cache, "row_major")}) -> {t(cache, None)} loc("read")\n'
            f'    func.return %2 : {t(cache, None)} loc("return")\n  }}\n}}\n')


def compile_with_plan(source: str, per_core: int | None = None):
    """Compile; with `per_core`, the write split into that many outer indices per core (the grid pass picks one
    core for writes this small)."""
    module = parse_module(source)
    PassManager(parse_pipeline("grid")).run(module)
    op = next(op for op in module.function("main").body.ops if op_kind(op) == "kv_write")
    assert device_op(op) is KV_WRITE
    if per_core is not None:
        units = KV_WRITE.units(op, {"outer": per_core})[0]
        op.attributes["tt.blocking"] = {"outer": per_core}
        op.attributes["tt.grid"] = grid_for(units, E150)
    blocking = dict(op.attributes["tt.blocking"])
    counts = plan_counts(op, "kv_write", E150, op.attributes["tt.grid"], blocking, op.attributes["tt.math_fidelity"])
    cbs = kv_write_cbs(op, blocking)
    PassManager(parse_pipeline("lower-to-kernels,allocate")).run(module)
    return module, counts, cbs


def bf16(x: np.ndarray) -> np.ndarray:
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


CASES = [((1, 2, 1, 32), (1, 2, 64, 32), 2, None),  # a decode step: one position per (batch, head)
         ((2, 3, 4, 64), (2, 3, 40, 64), 2, None),  # several positions at once (a prefill's entries)
         ((2, 1, 3, 64), (2, 8, 3, 64), 1, None),  # the position axis before a head axis: rows of inner heads
         ((2, 3, 1, 64), (2, 3, 32, 64), 2, 2)]  # 3 cores of 2 (batch, head) rows each


@pytest.mark.parametrize("entry,cache,axis,per_core", CASES, ids=["decode", "prefill", "inner", "cores"])
def test_writes_land_at_the_runtime_position_and_persist(entry, cache, axis, per_core) -> None:
    outputs = {}
    for emulator in ("reference", "native"):
        module, planned, cbs = compile_with_plan(text(entry, cache, axis), per_core)
        if per_core is not None:
            assert programs(module)[0].attributes["grid"].num_cores == 3
        (program,) = programs(module)
        assert program.attributes["kind"] == "kv_write"
        assert [(c.index, c.page_size) for c in program.attributes["cbs"]] == [(c.index, c.page_size) for c in cbs]
        (state,) = [op for op in module.function("main").body.ops
                    if op.name == ttmetal.CREATE_BUFFER.name and ttmetal.STATE_ATTR in op.attributes]
        assert state.attributes[ttmetal.STATE_ATTR] == "cache"
        executor = Executor(module, device_weights(module), emulator=emulator)
        expected = np.zeros(cache, np.float32)  # a state starts as zeros
        runs = []
        rng = np.random.default_rng(19)  # the same entries on both emulators
        slots = cache[axis] - entry[axis] + 1
        for position in (0, slots - 1, 1):  # each run's write lands at its position; earlier ones stay
            x = rng.standard_normal(entry).astype(np.float32)
            y = executor.run({"x": x}, scalars={"pos": position})["y"]
            index = [slice(None)] * len(cache)
            index[axis] = slice(position, position + entry[axis])
            expected[tuple(index)] = bf16(x)
            np.testing.assert_array_equal(y, expected)
            (profile,) = [p for p in executor.profile if p.kind == "kv_write"]
            assert profile.counts == planned  # planned = executed
            runs.append(y)
        np.testing.assert_array_equal(executor.read_state("cache"), expected)
        outputs[emulator] = (runs, executor.device.dram.data.copy())
    for a, b in zip(outputs["reference"][0], outputs["native"][0], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(outputs["reference"][1], outputs["native"][1])  # every DRAM byte alike


@pytest.mark.parametrize("emulator", ["reference", "native"])
def test_out_of_range_position_is_a_device_fault(emulator) -> None:
    module, _, _ = compile_with_plan(text((1, 2, 1, 32), (1, 2, 32, 32), 2))
    executor = Executor(module, device_weights(module), emulator=emulator)
    x = np.ones((1, 2, 1, 32), np.float32)
    for bad in (32, -1):
        with pytest.raises(DeviceFault) as info:
            executor.run({"x": x}, scalars={"pos": bad})
        message = str(info.value)
        assert f"runtime scalar 'pos' = {bad} is outside [0, 31]" in message
        assert "core (0,0)" in message and "writer kernel" in message and "CB 0" in message
        assert "kv_write" in message and '"cat"' in message
    np.testing.assert_array_equal(executor.read_state("cache"), 0)  # nothing was written
    with pytest.raises(UserError, match=r"runtime scalar.*'pos'.*missing 'pos'"):
        executor.run({"x": x})
    with pytest.raises(UserError, match="unknown 'where'"):
        executor.run({"x": x}, scalars={"pos": 0, "where": 1})


def test_a_cache_growing_along_its_last_dim_is_refused() -> None:
    with pytest.raises(UserError, match="no whole rows per position"):
        compile_with_plan(text((1, 2, 32, 1), (1, 2, 32, 8), 3))
