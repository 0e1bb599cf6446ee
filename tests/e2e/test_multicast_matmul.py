"""The multicast matmul plans (passes/ops/matmul_mcast.py) on whole models: the grid pass picks them where the cost
model says they are faster (the 2-D plan in an MLP and in encoders, batched when the sequence is not a whole number
of tiles; the weights multicast to all cores in a convolution chain, one of them reading a height-sharded input),
their results are bit for bit those of the unicast plans (the same K order) on both emulators and pass the golden
check against onnxruntime, the programs' DRAM traffic falls, and the counts planned are those executed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ttc import zoo
from ttc.compiler import CompiledModel, CompileOptions, compile_model, default_pipeline
from ttc.golden import compare, run_onnxruntime
from ttc.ir.dialects import ttkernel, ttmetal
from ttc.runtime.executor import using_emulator


def compiled(model: onnx.ModelProto, multicast: bool) -> CompiledModel:
    pipeline = default_pipeline().replace("grid{", f"grid{{multicast={str(multicast).lower()},")
    return compile_model(model, CompileOptions(pipeline=pipeline))


def multicast_programs(model: CompiledModel) -> list[str]:
    return [op.loc.names()[0] for op in model.module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name
            and any(o.name == ttkernel.NOC_MCAST_CB.name for o in op.walk())]


def conv_chain() -> onnx.ModelProto:
    from test_sharding_golden import conv_chain

    return conv_chain()


MODELS = {"mlp": lambda: zoo.mlp(batch=32), "encoder": lambda: zoo.encoder_block(),
          "encoder-b2-s50": lambda: zoo.encoder_block(seq=50, batch=2), "conv-chain": conv_chain}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_multicast_plan_is_chosen_and_matches_the_unicast_bits(name: str) -> None:
    model = MODELS[name]()
    feeds = zoo.random_inputs(model, seed=1)
    multicast, unicast = compiled(model, True), compiled(model, False)
    assert multicast_programs(multicast) and not multicast_programs(unicast)
    results = {}
    for label, program in (("multicast", multicast), ("unicast", unicast)):
        for emulator in ("native", "reference"):
            with using_emulator(emulator):
                results[label, emulator] = program.run(feeds)
    reference = run_onnxruntime(model, feeds)
    want = results["unicast", "reference"]
    for key, outputs in results.items():
        for output, value in outputs.items():
            assert np.array_equal(np.asarray(value).view(np.uint32), np.asarray(want[output]).view(np.uint32)), key
            assert compare(output, value, reference[output]).passed, key
    # the multicast programs read less DRAM, and the model is not slower (each choice is the cost model's)
    with using_emulator("native"):
        multicast.run(feeds)
        unicast.run(feeds)
    dram = [sum(p.dram_bytes for p in program.profile) for program in (multicast, unicast)]
    time = [sum(p.time_us for p in program.profile) for program in (multicast, unicast)]
    assert dram[0] < dram[1] and time[0] <= time[1] * (1 + 1e-9)


@pytest.mark.parametrize("name", ["encoder-b2-s50", "conv-chain"])
def test_the_multicast_plans_planned_counts_are_executed(name: str) -> None:
    """Batched 2-D multicast (the encoder's [2, 50, ...] projections) and the 1-D weight multicast (the convolutions):
    planned = executed on both emulators, static = executed, and no program below its roofline."""
    from cost_model_checks import check_model, compile_with_plans

    plans, compiled = compile_with_plans(MODELS[name]())
    assert multicast_programs(compiled)
    assert check_model(MODELS[name](), emulators=("native", "reference")) == len(plans)
