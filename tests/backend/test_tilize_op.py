"""The tilize device op (passes/ops/tilize.py), the worked example of docs/adding-a-device-op.md: a row-major
device tensor becomes a tile-layout one on the device. It compiles to one program, runs on both emulators with
the golden result (the rows' bf16 values, exactly), and its planned counts are the executed ones."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from backend_helpers import device_weights, programs

from ttc.golden import compare
from ttc.ir import parse_module
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects.tt import E150
from ttc.passes import PassManager, parse_pipeline
from ttc.passes.cost_model import plan_counts
from ttc.passes.ops.registry import device_op, op_kind
from ttc.passes.ops.tilize import TILIZE, tilize_cbs
from ttc.runtime.executor import Executor

RNG = np.random.default_rng(14)


def text(shape: tuple[int, ...], rows: str = "bf16", tiles: str = "bf16") -> str:
    dims = "".join(f"{d}x" for d in shape)
    host = f"tensor<{dims}f32>"
    row_major = f"tensor<{dims}{rows}, #tt.layout<row_major, dram, interleaved>>"
    tile = f"tensor<{dims}{tiles}, #tt.layout<tile, dram, interleaved>>"
    return (f"module attributes {{tt.device = {E150}}} {{\n"
            f'  func.func @main(%x: {host} {{ttir.name = "x"}}) -> ({host} {{ttir.name = "y"}}) {{\n'
            f'    %0 = "ttir.to_layout"(%x) : ({host}) -> {row_major} loc("write")\n'
            f'    %1 = "ttir.to_layout"(%0) : ({row_major}) -> {tile} loc("tilize")\n'
            f'    %2 = "ttir.to_layout"(%1) : ({tile}) -> {host} loc("read")\n'
            f'    func.return %2 : {host} loc("return")\n  }}\n}}\n')


def compile_with_plan(source: str):
    module = parse_module(source)
    PassManager(parse_pipeline("grid")).run(module)
    op = next(op for op in module.function("main").body.ops if op_kind(op) == "tilize")
    counts = plan_counts(op, "tilize", E150, op.attributes["tt.grid"], dict(op.attributes["tt.blocking"]),
                         op.attributes["tt.math_fidelity"])
    cbs = tilize_cbs(op, dict(op.attributes["tt.blocking"]))
    PassManager(parse_pipeline("lower-to-kernels,allocate")).run(module)
    return module, counts, cbs


def test_the_registry_picks_tilize_for_rows_to_tiles_only() -> None:
    module = parse_module(text((64, 96)))
    write, tilize, read, _ = module.function("main").body.ops
    assert device_op(tilize) is TILIZE
    assert op_kind(write) is None and op_kind(read) is None  # host transfers are no programs


@pytest.mark.parametrize("shape", [(64, 96), (2, 32, 80), (3, 96, 40)])
@pytest.mark.parametrize("emulator", ["reference", "native"])
def test_tilize_compiles_runs_and_passes_golden(shape: tuple[int, ...], emulator: str) -> None:
    module, planned, cbs = compile_with_plan(text(shape))
    (program,) = programs(module)
    assert program.attributes["kind"] == "tilize"
    assert [(c.index, c.page_size) for c in program.attributes["cbs"]] == [(c.index, c.page_size) for c in cbs]
    assert cbs[0].page_size == shape[-1] * 2  # a bf16 row per page
    x = RNG.standard_normal(shape).astype(np.float32)
    executor = Executor(module, device_weights(module), emulator=emulator)
    y = executor.run({"x": x})["y"]
    expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert compare("y", y, expected).passed
    np.testing.assert_array_equal(y, expected)  # a copy: the bf16 rows exactly
    (profile,) = executor.profile
    assert profile.kind == "tilize"
    assert profile.counts == planned  # planned = executed


def test_f32_rows_round_to_bf16_tiles() -> None:
    module, _, _ = compile_with_plan(text((32, 64), rows="f32", tiles="bf16"))
    x = RNG.standard_normal((32, 64)).astype(np.float32)
    y = Executor(module, device_weights(module)).run({"x": x})["y"]
    np.testing.assert_array_equal(y, x.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_rows_that_are_not_whole_tile_rows_are_refused() -> None:
    module = parse_module(text((40, 64)))
    with pytest.raises(UserError, match=r'node "tilize": tilizing .* multiple of 32 \(it has 40\)'):
        PassManager(parse_pipeline("grid")).run(module)


@pytest.mark.parametrize(("shape", "rows"), [((64, 27885), "bf16"), ((32, 100003), "bf16"), ((32, 20011), "f32")])
def test_rows_too_wide_for_l1_tilize_in_column_blocks(shape: tuple[int, ...], rows: str) -> None:
    """32 rows of 27,885 bf16 elements (55,770-byte pages, 1.7 MB a tile row) do not fit a core's L1: the grid
    pass falls back to the column-blocked plan (the reader fetches the rows one block of tiles at a time, the
    last block short and zero-padded). Golden (the bf16 rows exactly) on both emulators, bit-identical, planned
    = executed = static counts."""
    from ttc.profile import static_profile

    module, planned, cbs = compile_with_plan(text(shape, rows=rows))
    (program,) = programs(module)
    assert program.attributes["kind"] == "tilize"
    segment_reads = [op for op in program.walk() if op.name == "ttkernel.noc_read_pages" and len(op.operands) == 4]
    assert segment_reads, "the column-blocked reader ran"
    assert cbs[0].page_size < shape[-1] * (2 if rows == "bf16" else 4)  # a CB page holds one column block
    x = RNG.standard_normal(shape).astype(np.float32)
    outputs = []
    for emulator in ("reference", "native"):
        executor = Executor(module, device_weights(module), emulator=emulator)
        outputs.append(executor.run({"x": x})["y"])
        (profile,) = executor.profile
        assert profile.counts == planned
    np.testing.assert_array_equal(outputs[0], x.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(outputs[1].view(np.uint32), outputs[0].view(np.uint32))
    (static,) = static_profile(module, device_weights(module))
    assert static.counts == planned


def test_rows_that_fit_keep_the_whole_row_plan() -> None:
    """The fallback is for rows no whole-row blocking fits: 4,000 elements still tilize a whole row per push."""
    module, _, cbs = compile_with_plan(text((32, 4000)))
    assert cbs[0].page_size == 8000
    (program,) = programs(module)
    assert not any(len(op.operands) > 2 for op in program.walk() if op.name == "ttkernel.noc_read_pages")


def test_the_fallback_is_tried_only_after_every_whole_row_blocking() -> None:
    """`grid.choose`: with room for a whole-row blocking it wins even when the fallback is allowed; with a budget
    below every whole-row footprint only the allowed fallback fits (and without it the op is refused)."""
    from ttc.passes.grid import choose, min_cb_bytes, needs_fallback

    op = next(op for op in parse_module(text((64, 4000))).function("main").body.ops if op_kind(op) == "tilize")
    whole = min_cb_bytes(op, E150)
    assert not needs_fallback(op, E150)
    assert "segment" not in choose(op, E150, E150.l1_free, "hifi4", fallback=True).blocking
    small = choose(op, E150, whole - 1, "hifi4", fallback=True)
    assert "segment" in small.blocking and small.footprint < whole
    with pytest.raises(UserError, match="does not fit in L1"):
        choose(op, E150, whole - 1, "hifi4")
    wide = next(op for op in parse_module(text((32, 27885))).function("main").body.ops if op_kind(op) == "tilize")
    assert needs_fallback(wide, E150) and min_cb_bytes(wide, E150) < E150.l1_free
