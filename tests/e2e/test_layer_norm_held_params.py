"""Layer norm's gamma and beta are the same for every row: a core of several tile rows reads them once and keeps
them in L1 (`row_ops.holds_params`: a whole-row blocking with `hold`, or a split one with R > 1 rows), instead of
once per row. Each case forces one blocking, runs it on both emulators (bit-identical, golden against
onnxruntime, planned = executed = static counts) and checks the parameters' DRAM reads are once per core."""

from __future__ import annotations

import numpy as np
import pytest
from cost_model_checks import check_static_equals_executed, compile_with_plans, golden_on_both_emulators
from test_long_rows import layer_norm_model

from ttc.ir.dialects import ttir, ttmetal
from ttc.passes.ops import row_ops, row_split
from ttc.passes.ops.geometry import TILE

TILE_BYTES = 2048  # a bf16 tile of gamma / beta

CASES = {
    # shape, beta, forced blocking
    "whole rows, 3 tile rows per core": ([3, 96, 192], True, {"batches": 1, "rows": 3, "block_w": 2, "hold": 1}),
    "whole rows, padded, no beta, 2 images per core": ([4, 40, 200], False,
                                                         {"batches": 2, "rows": 2, "block_w": 1, "hold": 1}),
    "split rows, 4 tile rows per core": ([1, 128, 256], True,
                                         {"batches": 1, "rows": 4, "block_w": 2, "split": 2, "groups_x": 1}),
    "split rows, padded, no beta": ([2, 100, 700], False,
                                    {"batches": 2, "rows": 2, "block_w": 1, "split": 11, "groups_x": 1}),
}


def ln_program(compiled):
    [program] = [op for op in compiled.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name
                 and op.attributes["kind"] == "layer_norm"]
    return program


def forced(monkeypatch: pytest.MonkeyPatch, blocking: dict[str, int]) -> None:
    monkeypatch.setattr(row_ops.LAYER_NORM, "candidates", lambda op: iter([dict(blocking)]))


def feeds_of(shape: list[int]) -> dict[str, np.ndarray]:
    return {"x": (np.random.default_rng(3).standard_normal(shape) * 2 + 0.5).astype(np.float32)}


def held_layer_norm(monkeypatch: pytest.MonkeyPatch, shape: list[int], beta: bool, blocking: dict[str, int]):
    """The layer norm compiled with `blocking` forced, its gamma CB holding the core's whole slice, run on both
    emulators (golden, planned = executed = static counts): (compiled model, its program, the program's profile,
    tiles of the slice)."""
    forced(monkeypatch, blocking)
    model = layer_norm_model(shape, beta=beta)
    plans, compiled = compile_with_plans(model)
    program = ln_program(compiled)
    slice_tiles = blocking["cols"] // blocking.get("split", 1)
    [gamma_cb] = [cb for cb in program.attributes["cbs"] if cb.index == row_ops.CB_GAMMA]
    assert gamma_cb.pages == slice_tiles  # the core's whole slice of gamma, held
    golden_on_both_emulators(model, compiled, plans, feeds_of(shape))
    check_static_equals_executed(compiled, compiled.profile)
    [profile] = [p for p in compiled.profile if p.kind == "layer_norm"]
    return compiled, program, profile, slice_tiles


@pytest.mark.parametrize("name", sorted(CASES))
def test_gamma_and_beta_are_read_once_per_core(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, beta, plain = CASES[name]
    ct = -(-shape[-1] // TILE)
    blocking = {"cols": ct, **plain}
    _, program, profile, slice_tiles = held_layer_norm(monkeypatch, shape, beta, blocking)
    cores = program.attributes["grid"].num_cores
    params = 2 if beta else 1
    data = profile.counts.dram_read - params * cores * slice_tiles * TILE_BYTES  # what the input's reads leave
    rows_per_core = blocking["batches"] * blocking["rows"]
    assert rows_per_core > 1
    # the input's tiles are read once each: whatever the reads leave beyond them is the parameters', once per core
    assert data == int(np.prod(shape[:-2])) * -(-shape[-2] // TILE) * ct * TILE_BYTES or data == 0, data


def test_hold_is_a_choice_of_the_whole_row_plan_and_automatic_in_the_split_one() -> None:
    class Op:  # the fields holds_params reads
        def __init__(self, operands: int, name: str = ttir.LAYER_NORM.name) -> None:
            self.operands = [None] * operands
            self.name = name

    two = {"batches": 1, "rows": 2, "cols": 4, "block_w": 2}
    assert not row_ops.holds_params(Op(3), two)
    assert row_ops.holds_params(Op(3), {**two, "hold": 1})
    assert not row_ops.holds_params(Op(3), {**two, "rows": 1, "hold": 1})
    assert not row_ops.holds_params(Op(1), {**two, "hold": 1})  # no parameters: nothing to hold
    assert not row_ops.holds_params(Op(2, ttir.SOFTMAX.name), {**two, "hold": 1})  # a softmax's mask is not one
    assert not row_ops.holds_params(Op(3), {**two, "hold": 1, "chunk": 2})
    assert row_ops.holds_params(Op(2), {**two, row_split.SPLIT: 2, row_split.GROUPS_X: 1})
    assert not row_ops.holds_params(Op(2), {**two, "rows": 1, row_split.SPLIT: 2, row_split.GROUPS_X: 1})


RMS_CASES = {
    "whole rows, 3 tile rows per core": ([3, 96, 192], {"batches": 1, "rows": 3, "block_w": 2, "hold": 1}),
    "split rows, 4 tile rows per core": ([1, 128, 256], {"batches": 1, "rows": 4, "block_w": 2, "split": 2,
                                                         "groups_x": 1}),
}


@pytest.mark.parametrize("name", sorted(RMS_CASES))
def test_an_rms_norms_weight_is_held_too(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An RMS norm (`layer_norm {rms = true}`: no mean, gamma only) on the held plans: the same bits on both
    emulators, golden, planned = executed = static counts, its weight read once per core."""
    from test_rms_norm import rms_model

    shape, forced = RMS_CASES[name]
    ct = -(-shape[-1] // TILE)
    blocking = {"cols": ct, **forced}
    monkeypatch.setattr(row_ops.LAYER_NORM, "candidates", lambda op: iter([dict(blocking)]))
    model = rms_model(tuple(shape))
    plans, compiled = compile_with_plans(model)
    program = ln_program(compiled)
    slice_tiles = ct // blocking.get("split", 1)
    [gamma_cb] = [cb for cb in program.attributes["cbs"] if cb.index == row_ops.CB_GAMMA]
    assert gamma_cb.pages == slice_tiles
    feeds = {"x": (np.random.default_rng(4).standard_normal(shape) * 3).astype(np.float32)}
    golden_on_both_emulators(model, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)
    [profile] = [p for p in compiled.profile if p.kind == "layer_norm"]
    cores = program.attributes["grid"].num_cores
    data = profile.counts.dram_read - cores * slice_tiles * TILE_BYTES
    assert data == int(np.prod(shape[:-2])) * -(-shape[-2] // TILE) * ct * TILE_BYTES or data == 0, data
