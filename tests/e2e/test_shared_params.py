"""Layer norm's gamma and beta multicast (`row_ops.PARAM_MCAST`): instead of every core reading them from DRAM, one
core reads them and multicasts them to the cores sharing them (the whole grid of a whole-row plan, each grid column
of a split plan, whose cores hold the same slice), with tt-metal's ready / valid semaphore handshake. Each case
forces one blocking, runs it on both emulators (bit-identical, golden against onnxruntime, planned = executed =
static counts), checks the parameters' DRAM reads are once per sender and that the bits are those of the same
blocking reading its own parameters. A broken handshake is a device fault; the grid pass takes the plan where the
cost model ranks it first (a layer norm of one tile row per core, ViT's)."""

from __future__ import annotations

import numpy as np
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from test_layer_norm_held_params import TILE_BYTES, feeds_of, forced, held_layer_norm, ln_program
from test_long_rows import layer_norm_model

from ttc.compiler import CompiledModel
from ttc.ir.core import Module
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects import ttmetal
from ttc.ir.parser import parse_module
from ttc.passes.ops import row_ops, row_split
from ttc.passes.ops.geometry import TILE
from ttc.runtime.executor import using_emulator

MCAST = {row_ops.PARAM_MCAST: 1}

CASES = {
    # shape, beta, forced blocking (without the multicast), senders
    "whole rows, one tile row per core": ([4, 64, 256], True, {"batches": 1, "rows": 1, "block_w": 2}, 1),
    "whole rows, padded, no beta, 2 tile rows per core": ([3, 40, 200], False,
                                                          {"batches": 1, "rows": 2, "block_w": 1, "hold": 1}, 1),
    "whole rows, 13 units on a padded 12x2 grid": ([13, 32, 96], True, {"batches": 1, "rows": 1, "block_w": 3}, 1),
    "split rows, one group per grid row": ([1, 128, 256], True,
                                           {"batches": 1, "rows": 1, "block_w": 2, "split": 2, "groups_x": 1}, 2),
    "split rows, padded, no beta, two groups per grid row": (
        [2, 100, 700], False, {"batches": 1, "rows": 2, "block_w": 1, "split": 2, "groups_x": 2}, 4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gamma_and_beta_are_read_once_and_multicast(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, beta, plain, senders = CASES[name]
    ct = -(-shape[-1] // TILE)
    blocking = {"cols": ct, **plain, **MCAST}
    compiled, program, profile, slice_tiles = held_layer_norm(monkeypatch, shape, beta, blocking)
    model, feeds = layer_norm_model(shape, beta=beta), feeds_of(shape)
    params = 2 if beta else 1
    cores = program.attributes["grid"].num_cores  # each reads its rows' slices of the input (the extra cores of
    data = cores * blocking["batches"] * blocking["rows"] * slice_tiles * TILE_BYTES  # a padded grid repeat some)
    assert profile.counts.dram_read in (data + params * senders * slice_tiles * TILE_BYTES,
                                        params * senders * slice_tiles * TILE_BYTES)
    assert profile.counts.mcast_fanout == program.attributes["grid"].num_cores // senders - 1
    multicast = compiled.run(feeds)["y"]

    # the same blocking, every core reading its own parameters: the same bits
    forced(monkeypatch, {"cols": ct, **plain})
    _, own = compile_with_plans(model)
    assert ln_program(own).attributes["grid"] == program.attributes["grid"]
    np.testing.assert_array_equal(own.run(feeds)["y"], multicast)


def test_an_rms_norms_weight_is_multicast_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_rms_norm import rms_model

    shape = (2, 96, 192)
    forced(monkeypatch, {"batches": 1, "rows": 1, "cols": 6, "block_w": 2, **MCAST})
    model = rms_model(shape)
    plans, compiled = compile_with_plans(model)
    golden_on_both_emulators(model, compiled, plans, {"x": (np.random.default_rng(4).standard_normal(shape) * 3)
                                                      .astype(np.float32)})
    check_static_equals_executed(compiled, compiled.profile)
    [profile] = [p for p in compiled.profile if p.kind == "layer_norm"]
    assert profile.counts.dram_read in (6 * TILE_BYTES, 6 * TILE_BYTES + 2 * 3 * 6 * TILE_BYTES)


def test_the_multicast_is_offered_only_where_cores_share() -> None:
    class Op:  # the fields holds_params reads
        def __init__(self, operands: int, name: str) -> None:
            self.operands = [None] * operands
            self.name = name

    from ttc.ir.dialects import ttir

    one = {"batches": 1, "rows": 1, "cols": 4, "block_w": 2}
    assert not row_ops.holds_params(Op(3, ttir.LAYER_NORM.name), one)
    assert row_ops.holds_params(Op(3, ttir.LAYER_NORM.name), {**one, "hold": 1, **MCAST})
    assert not row_ops.holds_params(Op(3, ttir.LAYER_NORM.name), {**one, "chunk": 2, **MCAST})
    assert not row_ops.holds_params(Op(1, ttir.LAYER_NORM.name), {**one, **MCAST})


# ----------------------------------------------------------------------------------------------
# The grid pass's choice


def test_a_layer_norm_of_one_tile_row_per_core_takes_the_multicast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight images of 64 x 768 (ViT's layer norms: few tile rows per image, 24 tiles wide): the grid pass picks a
    multicast plan, modelled faster than the best plan without it, and it runs golden on both emulators."""
    shape = [8, 64, 768]
    model = layer_norm_model(shape)
    plans, compiled = compile_with_plans(model)
    assert ln_program(compiled).attributes["grid"].num_cores > 1
    [plan] = [p for p in plans if p.kind == "layer_norm"]
    assert plan.counts.mcast_fanout > 1
    golden_on_both_emulators(model, compiled, plans, feeds_of(shape))
    with_multicast = sum(p.time_us for p in compiled.profile)

    original = row_ops.row_candidates
    monkeypatch.setattr(row_ops, "row_candidates", lambda op, max_w, chunked=False: (
        b for b in original(op, max_w, chunked) if row_ops.PARAM_MCAST not in b))
    original_split = row_split.split_candidates
    monkeypatch.setattr(row_split, "split_candidates", lambda op, max_w: (
        b for b in original_split(op, max_w) if row_ops.PARAM_MCAST not in b))
    _, without = compile_with_plans(model)
    without.run(feeds_of(shape))
    assert with_multicast < sum(p.time_us for p in without.profile)


# ----------------------------------------------------------------------------------------------
# A broken handshake


def first(module: Module, name: str, semaphore: int):
    program = ln_program_of(module)
    return next(op for op in program.walk() if op.name == f"ttkernel.{name}"
                and op.attributes["semaphore"] == semaphore)


def ln_program_of(module: Module):
    return next(op for op in module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name
                and op.attributes["kind"] == "layer_norm")


PLANS = {  # shape, forced blocking with the multicast
    "whole-row": ([4, 64, 256], {"batches": 1, "rows": 1, "cols": 8, "block_w": 2, **MCAST}),
    "split": ([1, 128, 256], {"batches": 1, "rows": 1, "cols": 8, "block_w": 2, "split": 2, "groups_x": 1, **MCAST}),
}


@pytest.fixture(scope="module", params=sorted(PLANS))
def multicast_layer_norm(request) -> tuple[list[int], CompiledModel]:
    shape, blocking = PLANS[request.param]
    with pytest.MonkeyPatch.context() as monkeypatch:
        forced(monkeypatch, blocking)
        _, compiled = compile_with_plans(layer_norm_model(shape))
    return shape, compiled


@pytest.mark.parametrize("emulator", ["native", "reference"])
@pytest.mark.parametrize("op_name, semaphore, message", [
    ("semaphore_inc", row_ops.PARAM_READY,
     r"deadlock: no kernel on any core can make progress\n  reader kernel on core \(\d+,0\): ttkernel.semaphore_wait "
     r"waits for semaphore 1 to reach \d+ \(it holds 0\)"),
    ("semaphore_wait", row_ops.PARAM_VALID, r"cb_push_back of CB 1 before waiting for the multicast into it to land"),
], ids=["missing-ready", "missing-valid-wait"])
def test_a_broken_handshake_is_a_device_fault(multicast_layer_norm, emulator, op_name, semaphore, message) -> None:
    shape, compiled = multicast_layer_norm
    module = parse_module(str(compiled.module))
    first(module, op_name, semaphore).erase()
    broken = CompiledModel(module, compiled.device_weights, compiled.manifest)
    with using_emulator(emulator), pytest.raises(DeviceFault, match=message):
        broken.run(feeds_of(shape))


@pytest.mark.parametrize("emulator", ["native", "reference"])
def test_a_column_multicast_past_the_grid_is_a_device_fault(emulator) -> None:
    """The split plan's last grid column names the column past it as its own (reader argument 6): its receivers'
    ready increments, then its sender's multicast rectangle, fall outside the grid."""
    shape, blocking = PLANS["split"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        forced(monkeypatch, blocking)
        _, compiled = compile_with_plans(layer_norm_model(shape))
    module = parse_module(str(compiled.module))
    program = ln_program_of(module)
    grid = program.attributes["grid"]
    args = [[list(core) for core in per_kernel] for per_kernel in program.attributes["runtime_args"]]
    for y in range(grid.y):
        args[0][y * grid.x + grid.x - 1][6] += 1
    program.attributes["runtime_args"] = tuple(tuple(tuple(core) for core in per_kernel) for per_kernel in args)
    broken = CompiledModel(module, compiled.device_weights, compiled.manifest)
    with using_emulator(emulator), pytest.raises(DeviceFault, match=r"outside the program's 2x4 grid"):
        broken.run(feeds_of(shape))
