"""Mutation tests: the emulator runs the program it is given, not the model behind it.

Each test compiles a real model, damages the kernel program in one way a compiler bug could, and checks
that the result is a device fault (exit code 3 from the CLI) or a failed golden check, never a pass, on both
emulators (the native core and the Python reference).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest

import ttc
from ttc import zoo
from ttc.artifact import write_artifact
from ttc.cli import main
from ttc.compiler import CompiledModel
from ttc.golden import compare, run_onnxruntime
from ttc.ir.core import Module, Operation
from ttc.ir.diagnostics import EXIT_DEVICE_FAULT, EXIT_GOLDEN_FAILED, DeviceFault
from ttc.ir.parser import parse_module
from ttc.runtime.executor import using_emulator

Mutation = Callable[[Module], None]


@pytest.fixture(autouse=True, params=["native", "reference"])
def emulator(request: pytest.FixtureRequest) -> Iterator[str]:
    with using_emulator(request.param):
        yield request.param


@pytest.fixture(scope="module")
def mlp() -> tuple[onnx.ModelProto, CompiledModel]:
    model = zoo.mlp(batch=32)
    return model, ttc.compile(model)


@pytest.fixture(scope="module")
def encoder() -> tuple[onnx.ModelProto, CompiledModel]:
    model = zoo.encoder_block()
    return model, ttc.compile(model)


def programs(module: Module) -> list[Operation]:
    return [op for op in module.walk() if op.name == "ttmetal.enqueue_program"]


def mutated(compiled: CompiledModel, mutate: Mutation) -> CompiledModel:
    """A fresh copy of the compiled program (through its text), changed by `mutate`."""
    module = parse_module(str(compiled.module))
    mutate(module)
    return CompiledModel(module, compiled.device_weights, compiled.manifest)


def outcome(model: onnx.ModelProto, compiled: CompiledModel) -> str:
    """'fault', 'golden-failed' or 'passed'."""
    feeds = zoo.random_inputs(model, seed=0)
    try:
        outputs = compiled.run(feeds)
    except DeviceFault:
        return "fault"
    reference = run_onnxruntime(model, feeds)
    return "passed" if all(compare(n, outputs[n], reference[n]).passed for n in reference) else "golden-failed"


def delete_pop(index: int) -> Mutation:
    def mutate(module: Module) -> None:
        pops = [op for op in module.walk() if op.name == "ttkernel.cb_pop_front"]
        pops[index].erase()
    return mutate


def count_pops(compiled: CompiledModel) -> int:
    return sum(op.name == "ttkernel.cb_pop_front" for op in compiled.module.walk())


def test_the_unmutated_programs_pass(mlp, encoder) -> None:
    for model, compiled in (mlp, encoder):
        assert outcome(model, compiled) == "passed"


def test_deleting_any_cb_pop_front_never_passes(mlp) -> None:
    model, compiled = mlp
    pops = count_pops(compiled)
    assert pops >= 8
    for index in range(pops):
        assert outcome(model, mutated(compiled, delete_pop(index))) != "passed", f"pop #{index} deleted"


def test_deleting_a_cb_pop_front_in_the_encoder_never_passes(encoder) -> None:
    model, compiled = encoder
    for index in random.Random(0).sample(range(count_pops(compiled)), 6):
        assert outcome(model, mutated(compiled, delete_pop(index))) != "passed", f"pop #{index} deleted"


def shift_core_range(program_index: int, kernels: tuple[int, ...]) -> Mutation:
    """Core 1 gets core 2's runtime arguments in the given kernels: its tile range moves by one core."""
    def mutate(module: Module) -> None:
        program = [p for p in programs(module) if len(p.attr("runtime_args")[0]) > 2][program_index]
        args = [list(per_kernel) for per_kernel in program.attributes["runtime_args"]]
        for kernel in kernels:
            assert args[kernel][1] != args[kernel][2]
            args[kernel][1] = args[kernel][2]
        program.attributes["runtime_args"] = tuple(tuple(per_kernel) for per_kernel in args)
    return mutate


@pytest.mark.parametrize("kernels", [(0, 1, 2), (2,), (0,)], ids=["all-kernels", "writer", "reader"])
def test_shifting_one_cores_tile_range_never_passes(mlp, encoder, kernels) -> None:
    for model, compiled in (mlp, encoder):
        assert outcome(model, mutated(compiled, shift_core_range(0, kernels))) != "passed"


def swap_reader_cbs(module: Module) -> None:
    """The reader of the first matmul fills in1's CB with in0's tiles and in0's with in1's."""
    program = next(p for p in programs(module) if p.attr("kind") == "matmul")
    for op in program.regions[0].block.ops:
        if "cb" in op.attributes and op.attributes["cb"] in (0, 1):
            op.attributes["cb"] = 1 - op.attributes["cb"]


def swap_compute_operands(module: Module) -> None:
    """The compute kernel of the first matmul multiplies in1 by in0."""
    program = next(p for p in programs(module) if p.attr("kind") == "matmul")
    for op in program.walk():
        if op.name == "ttkernel.matmul_tiles":
            op.attributes["cb_a"], op.attributes["cb_b"] = op.attributes["cb_b"], op.attributes["cb_a"]


@pytest.mark.parametrize("mutate", [swap_reader_cbs, swap_compute_operands])
def test_swapping_two_cb_indices_never_passes(mlp, encoder, mutate) -> None:
    for model, compiled in (mlp, encoder):
        assert outcome(model, mutated(compiled, mutate)) != "passed"


def test_cli_reports_a_mutated_artifact_as_a_device_fault_or_a_golden_failure(
        mlp, tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: str) -> None:
    model, _compiled = mlp
    source = tmp_path / "mlp.onnx"
    zoo.save(model, source)
    good = ttc.compile(str(source))
    codes = []
    for name, mutate in [("pop", delete_pop(0)), ("shift", shift_core_range(0, (0, 1, 2))),
                         ("swap", swap_reader_cbs)]:
        path = tmp_path / f"{name}.ttc"
        write_artifact(path, mutated(good, mutate))
        codes.append(main(["run", str(path), "--golden", "--emulator", emulator]))
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if codes[-1] == EXIT_DEVICE_FAULT:
            assert "device fault" in err and "core (" in err
    assert set(codes) <= {EXIT_DEVICE_FAULT, EXIT_GOLDEN_FAILED}
    assert EXIT_DEVICE_FAULT in codes


# ----------------------------------------------------------------------------------------------
# Multicast matmuls (passes/ops/matmul_mcast.py): the handshake's semaphores and the multicast rectangle


def mcast_program(module: Module) -> Operation:
    return next(p for p in programs(module) if any(op.name == "ttkernel.noc_mcast_cb" for op in p.walk()))


def delete_first(name: str) -> Mutation:
    """The first multicast program's reader loses its first `name` op."""
    def mutate(module: Module) -> None:
        next(op for op in mcast_program(module).walk() if op.name == f"ttkernel.{name}").erase()
    return mutate


def receivers_do_not_wait(module: Module) -> None:
    """The in0 receivers lose their wait for the valid semaphore (the reader's second semaphore_wait)."""
    [_, valid_wait, *_] = [op for op in mcast_program(module).walk() if op.name == "ttkernel.semaphore_wait"]
    valid_wait.erase()


def rectangle_past_the_grid(module: Module) -> None:
    """Core (0,0) multicasts its in0 blocks to a row one core wider than the grid (in the first multicast program
    whose in0 rectangle spans the grid's rows: a 2-D plan by rows)."""
    from ttc.passes.ops.matmul_mcast import MCAST_ARGS

    program = next(p for p in programs(module) if any(op.name == "ttkernel.noc_mcast_cb" for op in p.walk())
                   and len(p.attributes["runtime_args"][0][0]) > MCAST_ARGS + 4
                   and p.attributes["runtime_args"][0][0][MCAST_ARGS + 4] == p.attributes["grid"].x - 1)
    args = [[list(core) for core in per_kernel] for per_kernel in program.attributes["runtime_args"]]
    args[0][0][MCAST_ARGS + 4] += 1  # the last column of its row's rectangle
    program.attributes["runtime_args"] = tuple(tuple(tuple(core) for core in per_kernel) for per_kernel in args)


@pytest.mark.parametrize("mutate, message", [
    (delete_first("semaphore_inc"), r"deadlock: no kernel on any core can make progress\n  reader kernel on core "
                                    r"\(0,0\): ttkernel.semaphore_wait waits for semaphore 0 to reach \d+ \(it holds 0\)"),
    (delete_first("noc_mcast_cb"), r"deadlock: .*\n  reader kernel on core \(1,0\): ttkernel.semaphore_wait waits for "
                                   r"semaphore 1 to reach 1 \(it holds 0\)"),
    (rectangle_past_the_grid, r"multicast rectangle \(0,0\)-\(\d+,0\) is outside the program's \d+x\d+ grid\n  at core "
                              r"\(0,0\), reader kernel, CB 0, op ttkernel.noc_mcast_cb"),
    (receivers_do_not_wait, r"cb_push_back of CB 0 before waiting for the multicast into it to land \(missing "
                            r"semaphore_wait for the multicast's valid semaphore\)\n  at core \(1,0\) and \d+ more "
                            r"cores?, reader kernel, CB 0, op ttkernel.cb_push_back"),
], ids=["missing-increment", "missing-multicast", "rectangle-outside", "missing-valid-wait"])
def test_a_broken_multicast_handshake_is_a_device_fault(mlp, encoder, mutate, message) -> None:
    for model, compiled in (mlp, encoder):
        broken = mutated(compiled, mutate)
        with pytest.raises(DeviceFault, match=message):
            broken.run(zoo.random_inputs(model, seed=0))


# ----------------------------------------------------------------------------------------------
# Column-blocked untilize and row lookup (rows too wide for L1): row segments past the CB page or the buffer page


@pytest.fixture(scope="module")
def wide_rows() -> tuple[onnx.ModelProto, CompiledModel]:
    """A Relu, then a swap of the leading dims of [3, 2, 27885]: an untilize and a row lookup of 27,885-element
    rows, both in column blocks (tests/e2e/test_wide_rows.py)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0, 2])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 2, 27885))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    return model, ttc.compile(model)


def double_segments(kind: str, name: str) -> Mutation:
    """The `kind` program's kernel with the segmented `name` op steps its segments twice as far and long (the
    constant it scales the segment index by, doubled): its first segment overruns a CB page."""
    def mutate(module: Module) -> None:
        program = next(p for p in programs(module) if p.attr("kind") == kind)
        op = next(op for op in program.walk() if op.name == f"ttkernel.{name}" and len(op.operands) == 5)
        offset = op.operands[3].owner  # muli(segment, bytes)
        constant = offset.operands[1].owner
        constant.attributes["value"] = constant.attributes["value"] * 2
    return mutate


@pytest.mark.parametrize(("kind", "name"), [("untilize", "noc_write_rows"), ("embedding", "noc_read_rows_indexed")])
def test_a_row_segment_longer_than_a_cb_page_is_a_device_fault(wide_rows, kind: str, name: str) -> None:
    model, compiled = wide_rows
    assert outcome(model, compiled) == "passed"
    broken = mutated(compiled, double_segments(kind, name))
    cb = 16 if kind == "untilize" else 0
    with pytest.raises(DeviceFault, match=rf"a row segment of (\d+) bytes does not fit CB {cb}'s \d+-byte pages\n  "
                                          rf"at core \(0,0\).*, op ttkernel.{name}"):
        broken.run(zoo.random_inputs(model, seed=0))
