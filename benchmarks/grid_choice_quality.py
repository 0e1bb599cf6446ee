"""How good the grid pass's choices are: each against an exhaustive search of a larger candidate space.

Usage: python benchmarks/grid_choice_quality.py [--ops N] [--arch e150|e75] [MODEL.onnx ...]

For about 50 representative device ops (distinct shapes, every kind, taken from the cached reference models:
BERT-base, GPT-2, ResNet-50 at batch 1 and MobileNetV3, or from the models given), the pass's choice (its
grid, blocking and result layout, as `grid` recorded it) is costed by the cost model (ttc.ir.target of the
planned counts) and compared with the cheapest candidate of an exhaustive search over

- every blocking the kernels support: for a matmul every batch group, every per_core_m, every per_core_n
  (each divisor, and a ragged split over every core count), every out subblock of at most 8 tiles and every
  in0_block_w dividing the accumulation chunk, with their multicast and K-split variants (the pass tries the preferred subblock, the preferred one of at
  most 4 tiles and 1 x 1, and ragged splits over more than 12 cores only when no divisor spreads N); for the other kinds the pass already enumerates every blocking;
- every grid inside the compute grid that holds the work units (the pass takes the smallest rectangle; the
  kernels also run on larger ones whose extra cores, fewer than a row, repeat the last unit);
- every result layout the kernels support: interleaved, and for a matmul whose result only device programs
  read, height and block sharding wherever the blocking cuts the result into shards (the pass applies its
  tall / wide rules first);

under the same L1 budget the pass had (allocate's heap replayed up to the op). Prints both modelled times,
the ratio, the candidates searched and the run times of the pass's choice and of the search. The pass's
choice should be within 5 % of the search's best (tests/passes/test_grid_quality.py checks it).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from ttc.compiler import CompileOptions
from ttc.frontend.importer import import_read_model
from ttc.frontend.loader import read_model
from ttc.ir.core import Module, Operation
from ttc.ir.dialects.tt import DeviceAttr, GridAttr, LayoutAttr
from ttc.ir.types import TensorType
from ttc.passes import PassManager, parse_pipeline
from ttc.passes import grid as grid_pass
from ttc.passes.cost_model import estimate
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.geometry import HALF_DST, SHARDED_LAYOUTS, batch_groups, layout, module_device, tensor
from ttc.passes.ops.matmul import accumulation_tiles, matmul_shape
from ttc.passes.ops.matmul_ksplit import ksplit_variants
from ttc.passes.ops.matmul_mcast import mcast_variants
from ttc.passes.ops.registry import device_op, l1_footprint, op_kind

TOLERANCE = 0.05


@dataclass(frozen=True)
class Row:
    model: str
    kind: str
    node: str
    shape: str
    chosen: float  # modelled cycles of the pass's choice
    best: float  # of the exhaustive search's cheapest fitting candidate
    best_what: str
    searched: int
    pass_s: float
    search_s: float

    @property
    def ratio(self) -> float:
        return self.chosen / self.best


# ----------------------------------------------------------------------------------------------
# The larger candidate space


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def all_n_splits(nt: int, cores: int) -> list[int]:
    return sorted(set(divisors(nt)) | {-(-nt // c) for c in range(2, min(nt, cores) + 1)})


def matmul_blockings(op: Operation, device: DeviceAttr) -> Iterator[dict[str, int]]:
    shape = matmul_shape(op)
    for batches in batch_groups([shape.a_offsets, shape.b_offsets], shape.batches):
        for pcm in divisors(shape.mt):
            for pcn in all_n_splits(shape.nt, device.compute_cores):
                for h in divisors(pcm):
                    for w in divisors(pcn):
                        if h * w > HALF_DST:
                            continue
                        for width in divisors(accumulation_tiles(shape.kt)):
                            blocking = {"batches": batches, "per_core_m": pcm, "per_core_n": pcn,
                                        "in0_block_w": width, "out_subblock_h": h, "out_subblock_w": w}
                            yield blocking
                            yield from mcast_variants(op, shape, blocking)  # every subblock, not only one
                            yield from ksplit_variants(op, shape, blocking)


def blockings(op: Operation, device: DeviceAttr) -> Iterator[dict[str, int]]:
    return matmul_blockings(op, device) if op_kind(op) == "matmul" else grid_pass.candidates(op)


def grids(units: int, device: DeviceAttr) -> Iterator[GridAttr]:
    """Every grid holding `units` work units whose extra cores (repeating the last unit) are fewer than a row."""
    gx, gy = device.compute_grid
    for x in range(1, gx + 1):
        for y in range(1, gy + 1):
            if units <= x * y < units + x:
                yield GridAttr(x, y)


def candidates(op: Operation, device: DeviceAttr) -> Iterator[tuple[GridAttr, dict[str, int], LayoutAttr | None]]:
    shardable = op_kind(op) == "matmul" and layout(tensor(op.result)).tensor_layout == "tile" \
        and grid_pass.is_intermediate(op.result) \
        and not any(is_view(grid_pass.chain_end(user)) for user, _ in op.result.uses)
    for blocking in blockings(op, device):
        units = math.prod(grid_pass.core_units(op, blocking))
        own = device_op(op).grid_shape(op, blocking)  # a multicast plan's grid is its rows and columns
        if own is not None and (own[0] > device.compute_grid[0] or own[1] > device.compute_grid[1]):
            continue
        for grid in [GridAttr(*own)] if own is not None else grids(units, device):
            yield grid, blocking, None
            followed = grid_pass.followed_layout(op) if op_kind(op) == "eltwise" else None
            if followed is not None and grid.num_cores == units:  # an eltwise's result in its operand's shards
                yield grid, blocking, followed
            if shardable:
                for memory_layout in SHARDED_LAYOUTS:
                    placed = grid_pass.shard_placement(op, memory_layout, grid, blocking, device)
                    if placed is not None and placed[0] == grid:
                        yield grid, blocking, placed[1]


# ----------------------------------------------------------------------------------------------
# One model


def gridded(model: str | Path | onnx.ModelProto, options: CompileOptions) -> tuple[Module, dict[int, TensorType]]:
    """The module after the grid pass, and every device op's result type as the layout pass left it."""
    proto, path = read_model(model)
    module = import_read_model(proto, path, input_shapes=dict(options.input_shapes), arch=options.arch)
    spec = options.pipeline_spec
    spec = spec[: spec.index(",lower-to-kernels")]
    before: dict[int, TensorType] = {}

    def after(index: int, done: object, module: Module) -> None:
        if getattr(done, "name", "") == "layout":
            for op in module.function("main").body.ops:
                if op_kind(op) is not None:
                    before[id(op)] = tensor(op.result)

    PassManager(parse_pipeline(spec), after_pass=after).run(module)
    return module, before


def signature(op: Operation) -> tuple:
    return (op_kind(op), tuple(str(v.type) for v in op.operands), str(op.result.type),
            op.attributes.get("activation"), str(op.regions[0].blocks[0].ops[0].name) if op.regions else "")


def quality(model: str | Path | onnx.ModelProto, options: CompileOptions, select: int | None = None,
            seen: set | None = None, label: str = "") -> list[Row]:
    """Rows for up to `select` distinct device ops of the model (round-robin over kinds), skipping signatures
    in `seen` (which it extends)."""
    module, before = gridded(model, options)
    device = module_device(module)
    ops = list(module.function("main").body.ops)
    seen = set() if seen is None else seen
    by_kind: dict[str, list[Operation]] = {}
    for op in ops:
        if op_kind(op) is None or is_folded(op) or is_view(op) or signature(op) in seen or id(op) not in before \
                or layout(tensor(op.result)).tensor_layout != layout(before[id(op)]).tensor_layout:
            # (an op the grid pass itself made or rewrote, a fused attention or lookup, a product writing rows, is
            # ranked against its unfused programs there)
            continue
        seen.add(signature(op))
        by_kind.setdefault(op_kind(op) or "", []).append(op)
    picked: list[Operation] = []
    while any(by_kind.values()) and (select is None or len(picked) < select):
        for kind in sorted(by_kind):
            if by_kind[kind] and (select is None or len(picked) < select):
                picked.append(by_kind[kind].pop(len(by_kind[kind]) // 2))
    chosen_ids = {id(op) for op in picked}
    live = grid_pass.LiveL1.of(ops, device, 0)
    rows = []
    for index, op in enumerate(ops):
        if id(op) in chosen_ids:
            rows.append(search(op, device, live, before[id(op)], module, label))
        live.ran(index, op)
    return rows


def search(op: Operation, device: DeviceAttr, live: grid_pass.LiveL1, original: TensorType, module: Module,
           label: str) -> Row:
    kind = op_kind(op) or ""
    fidelity = op.attributes["tt.math_fidelity"]
    final = op.result.type
    chosen_layout = layout(tensor(op.result)) if tensor(op.result) != original else None
    op.result.type = original  # as the pass saw it
    try:
        start = time.perf_counter()
        if kind == "matmul":
            choice = grid_pass.choose_matmul(op, device, live, fidelity, weights=module.weights)
        else:
            choice = grid_pass.choose(op, device, live.budget(op), fidelity, weights=module.weights)
            if kind == "eltwise":  # as the pass: it may take its sharded operand's layout
                choice = grid_pass.follow_sharding(op, choice, device, live, fidelity, 0, module.weights)
        pass_s = time.perf_counter() - start
        assert choice.grid == op.attributes["tt.grid"] and choice.blocking == dict(op.attributes["tt.blocking"])
        assert (choice.result_layout if choice.result_layout != original.encoding else None) == chosen_layout
        chosen = estimate(op, kind, device, choice.grid, choice.blocking, fidelity, chosen_layout, module.weights)
        start = time.perf_counter()
        best, best_what, searched = math.inf, "", 0
        budgets: dict[str, int] = {}
        for grid, blocking, result_layout in candidates(op, device):
            searched += 1
            key = str(result_layout)
            if key not in budgets:
                budgets[key] = live.budget(op, result_layout)
            footprint = l1_footprint(op, device, blocking, result_layout)
            if result_layout is None:
                if footprint > budgets[key]:
                    continue
            elif grid_pass.shard_misfit(op, result_layout, footprint, budgets[key], live, device) is not None:
                continue
            cost = estimate(op, kind, device, grid, blocking, fidelity, result_layout, module.weights)
            if cost.cycles < best:
                where = str(result_layout.memory_layout) if result_layout is not None else "interleaved"
                best, best_what = cost.cycles, f"{grid.x}x{grid.y} {where} {dict(blocking)}"
        search_s = time.perf_counter() - start
    finally:
        op.result.type = final
    shape = " x ".join(str(list(tensor(v).shape)) for v in op.operands[:2])
    node = op.loc.names()[-1] if op.loc.names() else "?"
    return Row(label, kind, node, shape, chosen.cycles, best, best_what, searched, pass_s, search_s)


def cached_models() -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
    from export_hf import cache_dir

    return [cache_dir() / name / f"{name}.onnx" for name in ("bert", "gpt2", "resnet50_b1", "mobilenet_v3")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="ONNX models (default: the cached reference models)")
    parser.add_argument("--ops", type=int, default=50, help="representative ops in all (default 50)")
    parser.add_argument("--arch", default="e150", choices=("e150", "e75"))
    args = parser.parse_args()
    paths = [Path(m) for m in args.models] or [p for p in cached_models() if p.is_file()]
    options = CompileOptions(arch=args.arch)
    seen: set = set()
    rows: list[Row] = []
    for i, path in enumerate(paths):
        share = -(-(args.ops - len(rows)) // (len(paths) - i))
        rows += quality(path, options, share, seen, path.stem)
    header = (f"{'model':13} {'kind':13} {'node':34} {'pass cyc':>9} {'best cyc':>9} {'ratio':>6} {'searched':>8} "
              f"{'pass_s':>7} {'search_s':>8}  best candidate")
    print(header)
    print("-" * len(header))
    for r in rows:
        node = r.node if len(r.node) <= 34 else "..." + r.node[-31:]
        print(f"{r.model:13} {r.kind:13} {node:34} {r.chosen:9.0f} {r.best:9.0f} {r.ratio:6.3f} {r.searched:8d} "
              f"{r.pass_s:7.3f} {r.search_s:8.3f}  {r.best_what}")
    worst = max(rows, key=lambda r: r.ratio)
    print()
    print(f"{len(rows)} ops: the pass's choice is within {100 * (worst.ratio - 1):.1f}% of the search's best "
          f"(worst: {worst.kind} {worst.node}); pass {sum(r.pass_s for r in rows):.2f} s, search "
          f"{sum(r.search_s for r in rows):.2f} s over {sum(r.searched for r in rows)} candidates")
    return 0 if worst.ratio <= 1 + TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
