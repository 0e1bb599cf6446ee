"""The cost model's checks on a whole model, shared by tests/e2e/test_cost_model.py and the model tests:

- planned = executed: the counts the grid pass planned for every program (`cost_model.plan_counts` of its
  grid, blocking and fidelity) equal the counts each emulator reports running it, program by program, and the
  cycles the pass recorded (`tt.cost`) are the profile's;
- static = executed: `ttc profile --static`'s counts of the compiled kernels equal the executed ones;
- the roofline audit: no program's modelled time is below the least time its work can take on the device
  (its FLOPs at the derived peak of the whole compute grid at its fidelity, its DRAM bytes at the achievable
  bandwidth, its NoC bytes per core at the link rate), with the FLOPs and the result's bytes taken from the
  op's shapes rather than from the counts, so counts that under-report work fail too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ttc import evaluate
from ttc.compiler import (
    CompiledModel,
    CompileOptions,
    _check_lowered,
    _source_info,
    build_manifest,
    pack_device_weights,
)
from ttc.frontend.importer import import_read_model
from ttc.frontend.loader import read_model
from ttc.golden import compare, run_onnxruntime
from ttc.ir import target
from ttc.ir.core import Operation
from ttc.ir.dialects.tt import DeviceAttr
from ttc.passes import PassManager, parse_pipeline
from ttc.passes.cost_model import plan_counts
from ttc.passes.ops.gather import is_folded, is_view
from ttc.passes.ops.geometry import layout, module_device, num_pages, page_size, tensor
from ttc.passes.ops.matmul import matmul_shape
from ttc.passes.ops.registry import op_kind
from ttc.profile import static_profile
from ttc.runtime.accounting import ProgramProfile


@dataclass(frozen=True)
class Planned:
    """What the grid pass decided for one program, and the counts it plans."""

    kind: str
    fidelity: str
    counts: target.Counts
    recorded_cycles: int  # tt.cost
    flops: float  # a matmul's, from its shapes
    result_dram_bytes: int  # the result's bytes when it lives in DRAM (else 0)


def compile_with_plans(model: str | Path | onnx.ModelProto,
                       options: CompileOptions | None = None) -> tuple[list[Planned], CompiledModel]:
    """`ttc.compile`, keeping the plan of every program as the grid pass left it."""
    options = options or CompileOptions()
    proto, path = read_model(model)
    module = import_read_model(proto, path, input_shapes=dict(options.input_shapes), arch=options.arch)
    plans: list[Planned] = []

    def after(index: int, done: object, module: object) -> None:
        if getattr(done, "name", "") != "grid":
            return
        device = module_device(module)  # type: ignore[arg-type]
        for op in module.function("main").body.ops:  # type: ignore[attr-defined]
            if op_kind(op) is None or is_folded(op) or is_view(op):
                continue
            kind = op_kind(op) or ""
            counts = plan_counts(op, kind, device, op.attributes["tt.grid"], dict(op.attributes["tt.blocking"]),
                                 op.attributes["tt.math_fidelity"], weights=module.weights)  # type: ignore[attr-defined]
            result = tensor(op.result)
            in_dram = layout(result).memory_space == "dram"
            plans.append(Planned(kind, op.attributes["tt.math_fidelity"], counts, int(op.attributes["tt.cost"]["cycles"]),
                                 matmul_flops(op) if kind == "matmul" else 0.0,
                                 num_pages(result) * page_size(result) if in_dram else 0))

    PassManager(parse_pipeline(options.pipeline_spec), after_pass=after).run(module)
    _check_lowered(module)
    source = _source_info(model) if not isinstance(model, onnx.ModelProto) else {"path": None}
    return plans, CompiledModel(module, pack_device_weights(module), build_manifest(module, options, source))


def run_profile(compiled: CompiledModel, model: str | Path | onnx.ModelProto, emulator: str) -> list[ProgramProfile]:
    proto = onnx.load(str(model), load_external_data=False) if not isinstance(model, onnx.ModelProto) else model
    feeds = evaluate.make_inputs(compiled, {}, 0, proto)
    compiled.run(feeds, emulator=emulator)
    return compiled.profile


def check_planned_equals_executed(plans: list[Planned], profile: list[ProgramProfile]) -> None:
    assert len(plans) == len(profile)
    for index, (plan, executed) in enumerate(zip(plans, profile, strict=True)):
        where = f"program {index} ({executed.kind}, {executed.nodes[-1] if executed.nodes else '?'})"
        assert plan.kind == executed.kind, where
        assert plan.counts == executed.counts, f"{where}: planned {plan.counts}, executed {executed.counts}"
        assert plan.recorded_cycles == round(executed.cycles), where


def check_static_equals_executed(compiled: CompiledModel, profile: list[ProgramProfile]) -> None:
    static = static_profile(compiled.module, compiled.device_weights)
    assert [p.counts for p in static] == [p.counts for p in profile]
    assert static == profile


def matmul_flops(op: Operation) -> float:
    """The product's FLOPs in whole tiles (padding included, as the matrix unit computes it)."""
    shape = matmul_shape(op)
    return shape.batches * shape.mt * shape.nt * shape.kt * target.TILE_FLOPS


def audit_roofline(desc: DeviceAttr, plan: Planned, p: ProgramProfile) -> None:
    """The modelled time is at least the program's roofline, with the work taken from the op's shapes."""
    where = f"{p.kind} {p.nodes[-1] if p.nodes else '?'}"
    floors = [target.roofline_cycles(desc, p.counts)]
    if plan.kind == "matmul":
        assert p.counts.matmul_tiles * p.cores * target.TILE_FLOPS >= plan.flops, where
        floors.append(plan.flops / target.peak_matrix_flops_per_cycle(desc, plan.fidelity))
    assert p.counts.dram_written >= plan.result_dram_bytes, where  # every page of a DRAM result written
    floors.append(plan.result_dram_bytes / desc.achievable_dram_bytes_per_cycle)
    assert p.cycles >= max(floors) * (1 - 1e-9), f"{where}: {p.cycles} cycles below its roofline {max(floors)}"


def check_model(model: str | Path | onnx.ModelProto, emulators: tuple[str, ...] = ("native",),
                options: CompileOptions | None = None) -> int:
    """Every check on one model; returns its program count."""
    plans, compiled = compile_with_plans(model, options)
    desc = module_device(compiled.module)
    profile: list[ProgramProfile] = []
    for emulator in emulators:
        profile = run_profile(compiled, model, emulator)
        check_planned_equals_executed(plans, profile)
    check_static_equals_executed(compiled, profile)
    for plan, p in zip(plans, profile, strict=True):
        audit_roofline(desc, plan, p)
    return len(plans)


def golden_on_both_emulators(model: onnx.ModelProto, compiled, plans, feeds: dict, name: str = "y") -> None:
    """Runs `compiled` on the reference and the native emulator: each passes the golden rule against
    onnxruntime with planned = executed counts, and the two give the same bits."""
    expected = run_onnxruntime(model, feeds)[name]
    outputs = {}
    for emulator in ("reference", "native"):
        outputs[emulator] = compiled.run(feeds, emulator=emulator)[name]
        check_planned_equals_executed(plans, compiled.profile)
        result = compare(name, outputs[emulator], expected)
        assert result.passed, (emulator, result)
    np.testing.assert_array_equal(outputs["reference"], outputs["native"])
