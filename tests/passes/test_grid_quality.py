"""The grid pass's choices against an exhaustive search (benchmarks/grid_choice_quality.py): every grid inside
the compute grid, every blocking the kernels support and every sharding, under the same L1 budget. On the
distinct device ops of a transformer block, a CNN and the sharded chains, the pass's choice is within 5 % of
the search's best modelled time."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

from ttc import zoo
from ttc.compiler import CompileOptions
from ttc.ir.dialects.tt import E150, GridAttr
from ttc.passes.grid import candidates, grid_for

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grid_choice_quality.py"
spec = importlib.util.spec_from_file_location("grid_choice_quality", SCRIPT)
assert spec is not None and spec.loader is not None
quality = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = quality
spec.loader.exec_module(quality)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from test_cost_model import cnn, conv_chain, matmul_chain  # noqa: E402


def matmul_op():
    """The first product of the matmul chain after the layout pass."""
    module, _ = quality.gridded(matmul_chain(), CompileOptions())
    return next(op for op in module.function("main").body.ops if op.name in ("ttir.linear", "ttir.matmul"))


MODELS = {"encoder_block": zoo.encoder_block, "cnn": cnn, "conv_chain": conv_chain, "matmul_chain": matmul_chain}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_pass_is_within_5_percent_of_the_exhaustive_search(name: str) -> None:
    rows = quality.quality(MODELS[name](), CompileOptions(), select=12, label=name)
    assert rows
    for row in rows:
        assert row.best <= row.chosen * (1 + 1e-9), row  # the search's space holds the pass's choice
        assert row.ratio <= 1 + quality.TOLERANCE, row
        assert row.searched >= 1


def test_the_search_space_is_larger_than_the_pass() -> None:
    """More grids than the smallest rectangle (padded ones whose extra cores repeat the last unit), and every
    subblock rather than the preferred one and 1 x 1."""
    grids = list(quality.grids(13, E150))
    assert grid_for(13, E150) == GridAttr(7, 2) and {GridAttr(7, 2), GridAttr(2, 7), GridAttr(5, 3),
                                                      GridAttr(4, 4)} <= set(grids)
    assert all(13 <= g.num_cores < 13 + g.x and g.x <= 12 and g.y <= 9 for g in grids)
    assert quality.all_n_splits(12, 108) == [1, 2, 3, 4, 6, 12] and quality.all_n_splits(11, 108) == [1, 2, 3, 4, 6, 11]
    assert len(list(quality.matmul_blockings(matmul_op(), E150))) > len(list(candidates(matmul_op())))


def test_equal_modelled_times_go_to_fewer_dram_bytes() -> None:
    """Candidates of equal modelled cycles (a compute-bound product whose blockings re-read its weight more or
    less often) rank by DRAM time, then NoC time (`grid.tie_break`): in the conv chain's products such ties
    occur, and within every run of equal cycles the DRAM time never decreases."""
    from ttc.passes.grid import ranked_matmul
    from ttc.passes.ops.geometry import module_device

    module, _ = quality.gridded(conv_chain(), CompileOptions())
    device = module_device(module)
    differing = 0
    for op in module.function("main").body.ops:
        if op.name not in ("ttir.linear", "ttir.matmul"):
            continue
        costs = [candidate[3] for candidate in ranked_matmul(op, device, "hifi4", ())]
        for first, second in itertools.pairwise(costs):
            if first.cycles == second.cycles:
                assert first.dram <= second.dram, (first, second)
                differing += first.dram < second.dram
    assert differing >= 1


def gridded_products(name: str):
    """(device, op) for every product of model `name` after the grid pass."""
    from ttc.passes.ops.geometry import module_device

    module, _ = quality.gridded(MODELS[name](), CompileOptions())
    device = module_device(module)
    return [(device, op) for op in module.function("main").body.ops if op.name in ("ttir.linear", "ttir.matmul")]


@pytest.mark.parametrize("name", ["conv_chain", "encoder_block"])
def test_the_lazy_ranking_orders_as_the_full_sort_and_its_floor_bounds_every_cost(name: str) -> None:
    """`grid.MatmulRanking` yields a matmul's candidates in the order of a full sort of all their costs by
    `tie_break` (full ties in enumeration order), sharded variants included; `matmul_floor` is at most every
    candidate's modelled cycles; and a caller stopping at the first candidate costs fewer than all of them."""
    from ttc.passes import grid
    from ttc.passes.cost_model import estimate

    pruned = 0
    for device, op in gridded_products(name):
        options = ("height_sharded", "block_sharded")
        ranking = grid.MatmulRanking(op, device, "hifi4", options, 0, None)
        full = [(g, b, layout, estimate(op, "matmul", device, g, b, "hifi4", layout))
                for g, b, layout in ranking.entries]
        for g, _, _, cost in full:
            assert grid.matmul_floor(op, device, "hifi4", g) <= cost.cycles
        expected = [c for _, c in sorted(enumerate(full), key=lambda ic: (grid.tie_break(ic[1][3]), ic[0]))]
        first = next(iter(ranking))
        costed = sum(1 for entry in ranking.heap if entry[4] is not None) + len(ranking.ordered)
        pruned += costed < len(full)
        assert first == expected[0]
        assert list(ranking) == expected
    assert pruned >= 1


@pytest.mark.parametrize("name", ["conv_chain", "encoder_block"])
def test_a_fused_product_ranking_stops_at_its_floors_and_picks_the_cheapest(name: str) -> None:
    """`fusion_fit.Ranking.cheapest` of a product costs its fitting candidates in the order of their
    `matmul_floor`s and stops at the first floor above the best cost so far: at every budget it picks what the
    minimum over all fitting candidates (by `tie_break`, then enumeration order) picks, and at the largest budget
    it costs fewer than all of them."""
    from ttc.passes import grid
    from ttc.passes.cost_model import estimate
    from ttc.passes.fusion_fit import Ranking
    from ttc.passes.ops.registry import op_kind

    pruned = 0
    for device, op in gridded_products(name):
        ranking = Ranking(op, device, 0, "hifi4", None, True)
        costs = [estimate(op, op_kind(op), device, g, b, "hifi4") for g, b in ranking.placed]
        footprints = [ranking.footprint(op, i) for i in range(len(ranking.placed))]
        for budget in [*sorted(set(footprints))[::-7], max(footprints)]:
            fitting = [i for i in range(len(costs)) if footprints[i] <= budget]
            best = min(fitting, key=lambda i: (grid.tie_break(costs[i]), i))
            fresh = Ranking(op, device, 0, "hifi4", None, True)
            assert fresh.cheapest(op, budget) == (*ranking.placed[best], costs[best])
            pruned += len(fresh.costs) < len(fitting)
    assert pruned >= 1
