"""Padding rows no reader looks at (passes/ops/matmul.py, `padding_rows_free`): a linear whose every reader is a
linear reading it as its first operand, with a bias, leaves its padding rows as the epilogue made them (no mask)
and folds a batch of 197-row matrices into one product, and the model's outputs keep their bits."""

from __future__ import annotations

import numpy as np
import pytest
from backend_helpers import BACKEND, Graph, compile_text, device_weights

import ttc.passes.grid as grid_pass
import ttc.passes.ops.matmul as matmul_op
from ttc.ir.dialects import ttkernel, ttmetal
from ttc.profile import static_profile
from ttc.runtime.executor import Executor, using_emulator

B, M, K, H, N = 3, 45, 64, 96, 64  # 45 rows: two tiles, 19 padding rows per batch


def mlp(second_bias: bool = True, hidden_to_host: bool = False) -> Graph:
    """x [B, M, K] -> linear(+bias, gelu) [B, M, H] -> linear(+bias?) [B, M, N]."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", (B, M, K))
    h = g.op("ttir.linear", [x, g.weight("w1", rng.standard_normal((K, H))), g.weight("b1", rng.standard_normal(H))],
             (B, M, H), 'activation = "gelu", transpose_b = false', loc="fc1")
    second = [h, g.weight("w2", rng.standard_normal((H, N)) / 8)]
    if second_bias:
        second.append(g.weight("b2", rng.standard_normal(N)))
    y = g.op("ttir.linear", second, (B, M, N), 'activation = "none", transpose_b = false', loc="fc2")
    g.output(y, "y")
    if hidden_to_host:
        g.output(h, "h")
    return g


def first_linear(module):
    return next(op for op in module.walk() if op.name == "ttir.linear")


def programs(module):
    return [op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name]


def masks(program) -> int:
    return sum(op.name == ttkernel.MASK_TILES.name for op in program.walk())


@pytest.mark.parametrize("second_bias, hidden_to_host, free", [
    (True, False, True), (False, False, False), (True, True, False)],
    ids=["read-by-a-biased-linear", "reader-keeps-padding", "read-by-the-host"])
def test_which_linears_leave_their_padding_rows_free(second_bias: bool, hidden_to_host: bool, free: bool) -> None:
    g = mlp(second_bias, hidden_to_host)
    module = compile_text(g.text(), dict(g.weights), "layout,grid")
    fc1 = first_linear(module)
    assert matmul_op.padding_rows_free(fc1) == free
    assert matmul_op.matmul_masks(fc1) == (not free, False)
    assert matmul_op.matmul_shape(fc1).batches == (1 if free else B)  # free padding rows fold into M


def run_both(monkeypatch: pytest.MonkeyPatch, g: Graph, inputs: dict, disabled: bool) -> dict:
    if disabled:  # every padding row re-masked, as before
        monkeypatch.setattr(matmul_op, "padding_rows_free", lambda op: False)
        monkeypatch.setattr(grid_pass, "padding_rows_free", lambda op: False)
    matmul_op._matmul_geometry.cache_clear()
    module = compile_text(g.text(), dict(g.weights), BACKEND)
    monkeypatch.undo()
    matmul_op._matmul_geometry.cache_clear()
    out = {"masks": masks(programs(module)[0]), "static": [p.counts for p in static_profile(module,
                                                                                           device_weights(module))]}
    for emulator in ("native", "reference"):
        with using_emulator(emulator):
            executor = Executor(module, device_weights(module))
            out[emulator] = executor.run(inputs)["y"]
            assert [p.counts for p in executor.profile] == out["static"], emulator
    return out


def test_free_padding_rows_keep_the_bits_on_both_emulators(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first linear's padding rows hold bias + gelu garbage, which only the second linear's padding rows see
    and its epilogue masks: the result is bit for bit the fully masked chain's, on both emulators, and the first
    program does one datacopy per output tile less."""
    inputs = {"x": np.random.default_rng(1).standard_normal((B, M, K)).astype(np.float32)}
    g = mlp()
    free = run_both(monkeypatch, g, inputs, disabled=False)
    masked = run_both(monkeypatch, g, inputs, disabled=True)
    assert free["masks"] == 0 and masked["masks"] > 0
    want = np.asarray(masked["reference"])
    assert np.abs(want).max() > 1
    for emulator in ("native", "reference"):
        assert np.array_equal(np.asarray(free[emulator]).view(np.uint32), want.view(np.uint32)), emulator
    fc1_free, fc1_masked = free["static"][0], masked["static"][0]
    assert fc1_free.tile_count("datacopy") < fc1_masked.tile_count("datacopy") or fc1_free.cores != fc1_masked.cores
