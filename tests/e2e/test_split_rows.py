"""Split rows (passes/ops/row_split.py): a softmax or layer norm over few, long rows runs each row on several
cores, one column slice each, the slices' partial statistics exchanged through an L1 scratch buffer with a
semaphore handshake. The grid pass takes it where the cost model ranks it first.

Each case compiles a model whose rows are few (BERT's and GPT-2's 128 x 768 layer norm among them), checks the
split plan was chosen (more cores than whole-row units), runs it on both emulators (bit-identical to each
other), passes the golden rule against onnxruntime, and checks the planned counts equal the executed ones;
the split program is faster (modelled) than the best whole-row plan. Then a broken handshake is a device fault
or a failed golden check, never a pass.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cost_model_checks import (
    audit_roofline,
    check_model,
    check_static_equals_executed,
    compile_with_plans,
    golden_on_both_emulators,
)
from test_long_rows import layer_norm_model, softmax_model

from ttc.compiler import CompiledModel
from ttc.golden import compare, run_onnxruntime
from ttc.ir.core import Module, Operation
from ttc.ir.diagnostics import DeviceFault
from ttc.ir.dialects import ttmetal
from ttc.ir.parser import parse_module
from ttc.passes.ops import row_split
from ttc.passes.ops.geometry import TILE, module_device
from ttc.runtime.executor import using_emulator

CASES = {
    "layer_norm 128x768": ("ln", [1, 128, 768]),
    "layer_norm 100x700 padded, no beta": ("ln_nobeta", [1, 100, 700]),
    "softmax 128x768": ("sm", [1, 128, 768]),
    "softmax 2x40x500 padded": ("sm", [2, 40, 500]),
    "softmax 64x2000": ("sm", [1, 64, 2000]),
    "softmax 1x6625 (one row, too long for one core's L1)": ("sm", [1, 1, 6625]),
}


def model_of(kind: str, shape: list[int]) -> onnx.ModelProto:
    if kind == "sm":
        return softmax_model(shape)
    return layer_norm_model(shape, beta=kind == "ln")


def row_program(compiled: CompiledModel) -> Operation:
    [program] = [op for op in compiled.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name]
    return program


def feeds_of(shape: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": (np.random.default_rng(seed).standard_normal(shape) * 3 + 1).astype(np.float32)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_few_long_rows_are_split_over_cores(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, shape = CASES[name]
    model = model_of(kind, shape)
    plans, compiled = compile_with_plans(model)
    program = row_program(compiled)
    whole_row_units = int(np.prod(shape[:-2])) * -(-shape[-2] // TILE)
    assert program.attributes["grid"].num_cores > whole_row_units
    assert any(cb.index == row_split.CB_PARTS for cb in program.attributes["cbs"])
    feeds = feeds_of(shape)
    golden_on_both_emulators(model, compiled, plans, feeds)
    check_static_equals_executed(compiled, compiled.profile)
    for plan, p in zip(plans, compiled.profile, strict=True):
        audit_roofline(module_device(compiled.module), plan, p)
    split_time = sum(p.time_us for p in compiled.profile)

    # without split candidates the grid pass picks a whole-row plan, slower in the model
    monkeypatch.setattr(row_split, "split_candidates", lambda op, max_w: iter(()))
    _, whole = compile_with_plans(model)
    assert not any(cb.index == row_split.CB_PARTS for cb in row_program(whole).attributes["cbs"])
    whole.run(feeds, emulator="native")
    assert split_time < sum(p.time_us for p in whole.profile)


def test_a_split_layer_norm_of_a_block_sharded_product() -> None:
    """[256 x 384] @ [384 x 512] -> LayerNormalization: the product may be block-sharded in L1, so the split
    layer norm's slices read their pages from the shards (its counts tell local pages from remote ones)."""
    rng = np.random.default_rng(2)
    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc"),
             onnx.helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], axis=-1, name="/ln")]
    init = {"w": rng.standard_normal((384, 512)) / 20, "g": 1 + 0.1 * rng.standard_normal(512),
            "b": 0.1 * rng.standard_normal(512)}
    graph = onnx.helper.make_graph(
        nodes, "m", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [256, 384])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [256, 512])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in init.items()])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    assert check_model(model, emulators=("native", "reference")) == 2
    _, compiled = compile_with_plans(model)
    [ln] = [op for op in compiled.module.function("main").body.ops if op.name == ttmetal.ENQUEUE_PROGRAM.name
            and op.attributes["kind"] == "layer_norm"]
    assert any(cb.index == row_split.CB_PARTS for cb in ln.attributes["cbs"])
    feeds = {"x": np.random.default_rng(0).standard_normal((256, 384)).astype(np.float32)}
    for emulator in ("reference", "native"):
        assert compare("y", compiled.run(feeds, emulator=emulator)["y"], run_onnxruntime(model, feeds)["y"]).passed


def test_short_rows_are_not_split() -> None:
    """Rows of fewer than SPLIT_MIN_TILES tiles have no split candidates."""
    model = softmax_model([1, 128, 96])
    _, compiled = compile_with_plans(model)
    assert not any(cb.index == row_split.CB_PARTS for cb in row_program(compiled).attributes["cbs"])


# ----------------------------------------------------------------------------------------------
# A broken exchange


def split_program(module: Module) -> Operation:
    return next(op for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name
                and any(o.name == "ttkernel.semaphore_inc" for o in op.walk()))


def delete_first(name: str):
    """Deletes the first op `name` of the exchange's handshake (not of the parameters' multicast, row_ops)."""
    def mutate(module: Module) -> None:
        next(op for op in split_program(module).walk() if op.name == f"ttkernel.{name}"
             and op.attributes["semaphore"] == row_split.SEMAPHORE).erase()
    return mutate


def peers_past_the_grid(module: Module) -> None:
    """The last core of the first group increments its peers one grid column further right."""
    program = split_program(module)
    args = [[list(core) for core in per_kernel] for per_kernel in program.attributes["runtime_args"]]
    split = program.attributes["grid"].x  # one group per grid row in the 128x768 layer norm below
    args[2][split - 1][2] += 1
    program.attributes["runtime_args"] = tuple(tuple(tuple(core) for core in per_kernel) for per_kernel in args)


@pytest.fixture(scope="module")
def layer_norm() -> tuple[onnx.ModelProto, CompiledModel]:
    model = layer_norm_model([1, 128, 768])
    _, compiled = compile_with_plans(model)
    return model, compiled


@pytest.mark.parametrize("emulator", ["native", "reference"])
@pytest.mark.parametrize("mutate, message", [
    (delete_first("semaphore_inc"), r"deadlock: no kernel on any core can make progress\n  reader kernel on core "
                                    r"\(0,0\): ttkernel.semaphore_wait waits for semaphore 0 to reach \d+ \(it holds \d+\)"),
    (peers_past_the_grid, r"semaphore increment of core \(\d+,0\) outside the program's \d+x\d+ grid"),
], ids=["missing-increment", "peer-outside"])
def test_a_broken_exchange_is_a_device_fault(layer_norm, emulator, mutate, message) -> None:
    _, compiled = layer_norm
    assert row_program(compiled).attributes["grid"].y == 4  # one group per grid row
    module = parse_module(str(compiled.module))
    mutate(module)
    broken = CompiledModel(module, compiled.device_weights, compiled.manifest)
    with using_emulator(emulator), pytest.raises(DeviceFault, match=message):
        broken.run(feeds_of([1, 128, 768]))


@pytest.mark.parametrize("emulator", ["native", "reference"])
def test_reading_the_partials_without_waiting_fails_the_golden_check(layer_norm, emulator) -> None:
    """Without the reader's first semaphore wait the partials are read before any core wrote them (the scratch
    holds poison: NaN), so the result is wrong, not silently right."""
    model, compiled = layer_norm
    module = parse_module(str(compiled.module))
    delete_first("semaphore_wait")(module)
    broken = CompiledModel(module, compiled.device_weights, compiled.manifest)
    feeds = feeds_of([1, 128, 768])
    with using_emulator(emulator):
        try:
            outputs = broken.run(feeds)
        except DeviceFault:
            return
    assert not compare("y", outputs["y"], run_onnxruntime(model, feeds)["y"]).passed
