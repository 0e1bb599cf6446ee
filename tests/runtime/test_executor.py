"""The executor end to end on hand-written host schedules: buffers, constants, programs, read-back,
deallocation, constants resident across runs, input checking and host result types."""

import numpy as np
import pytest
from runtime_helpers import Tensor, eltwise_program

from ttc.ir import parse_module, verify
from ttc.ir.diagnostics import DeviceFault, UserError
from ttc.ir.dialects.tt import E75, E150
from ttc.runtime import numerics as N
from ttc.runtime.executor import Executor
from ttc.runtime.layout import tensor_to_pages

RNG = np.random.default_rng(3)
DEV = "tensor<64x96xbf16, #tt.layout<tile, dram, interleaved>>"
HOST = "tensor<64x96xf32>"


def program(op: str, node: str, operands: str, grid: tuple[int, int] = (3, 2)) -> str:
    """One enqueue_program line (kernels from the eltwise helper) on three 64x96 bf16 buffers."""
    spec = eltwise_program(grid, op=op, node=node)
    text = spec.text([Tensor("_", (64, 96))] * 3, prefix=node)
    return text.replace("%buf__, %buf__, %buf__", operands)


SCHEDULE = f"""
module {{
  func.func @main(%x: {HOST} {{ttir.name = "x"}}) -> ({HOST} {{ttir.name = "y"}}) {{
    %w = "ttmetal.create_buffer"() {{address = 0}} : () -> {DEV} loc("w")
    "ttmetal.write_constant"(%w) {{value = #tt.weight<"w">}} : ({DEV}) -> () loc("w")
    %a = "ttmetal.create_buffer"() {{address = 2048}} : () -> {DEV} loc("x")
    "ttmetal.write_buffer"(%x, %a) : ({HOST}, {DEV}) -> () loc("x")
    %t = "ttmetal.create_buffer"() {{address = 4096}} : () -> {DEV} loc("add_1")
    {program("add", "add_1", "%a, %w, %t")}
    "ttmetal.deallocate"(%a) : ({DEV}) -> () loc("x")
    %y = "ttmetal.create_buffer"() {{address = 2048}} : () -> {DEV} loc("mul_1")
    {program("mul", "mul_1", "%t, %t, %y")}
    %r = "ttmetal.read_buffer"(%y) : ({DEV}) -> {HOST} loc("y")
    "ttmetal.deallocate"(%t) : ({DEV}) -> () loc("add_1")
    "ttmetal.deallocate"(%y) : ({DEV}) -> () loc("mul_1")
    "ttmetal.deallocate"(%w) : ({DEV}) -> () loc("w")
    func.return %r : {HOST} loc("y")
  }}
}}
"""


def test_schedule_end_to_end_and_constants_resident_across_runs() -> None:
    module = parse_module(SCHEDULE)
    verify(module)
    x, w = RNG.standard_normal((2, 64, 96)).astype(np.float32)
    weights = {"w": tensor_to_pages(w, "bf16")}
    executor = Executor(module, weights)  # no tt.device attribute: e150
    assert executor.desc == E150
    y = executor.run({"x": x})["y"]
    t = N.eltwise_binary(N.bf16_round(x), N.bf16_round(w), "add")
    want = N.eltwise_binary(t, t, "mul")
    np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
    assert [(p.kind, p.nodes, p.cores) for p in executor.profile] == [("eltwise", ("add_1",), 6),
                                                                      ("eltwise", ("mul_1",), 6)]
    # The weight stays in DRAM: a second run does not write it again (garbage pages here would show).
    executor.device_weights["w"] = np.full_like(weights["w"], 0x7F)
    x2 = RNG.standard_normal((64, 96)).astype(np.float32)
    y2 = executor.run({"x": x2})["y"]
    t2 = N.eltwise_binary(N.bf16_round(x2), N.bf16_round(w), "add")
    np.testing.assert_array_equal(y2.view(np.uint32), N.eltwise_binary(t2, t2, "mul").view(np.uint32))
    assert len(executor.profile) == 2


def test_constant_overwritten_after_its_buffer_is_freed_is_written_again() -> None:
    text = f"""
module {{
  func.func @main(%x: {HOST} {{ttir.name = "x"}}) -> ({HOST} {{ttir.name = "w"}}) {{
    %w = "ttmetal.create_buffer"() {{address = 0}} : () -> {DEV} loc("w")
    "ttmetal.write_constant"(%w) {{value = #tt.weight<"w">}} : ({DEV}) -> () loc("w")
    %r = "ttmetal.read_buffer"(%w) : ({DEV}) -> {HOST} loc("w")
    "ttmetal.deallocate"(%w) : ({DEV}) -> () loc("w")
    %s = "ttmetal.create_buffer"() {{address = 0}} : () -> {DEV} loc("x")
    "ttmetal.write_buffer"(%x, %s) : ({HOST}, {DEV}) -> () loc("x")
    "ttmetal.deallocate"(%s) : ({DEV}) -> () loc("x")
    func.return %r : {HOST} loc("w")
  }}
}}
"""
    w = RNG.standard_normal((64, 96)).astype(np.float32)
    executor = Executor(parse_module(text), {"w": tensor_to_pages(w, "bf16")})
    for _ in range(2):
        got = executor.run({"x": np.ones((64, 96), np.float32)})["w"]
        np.testing.assert_array_equal(got, N.bf16_round(w))


def host_round_trip(device_type: str, host_in: str, host_out: str, array: np.ndarray, address: int = 64) -> np.ndarray:
    text = f"""
module {{
  func.func @main(%x: {host_in} {{ttir.name = "x"}}) -> ({host_out} {{ttir.name = "y"}}) {{
    %b = "ttmetal.create_buffer"() {{address = {address}}} : () -> {device_type} loc("x")
    "ttmetal.write_buffer"(%x, %b) : ({host_in}, {device_type}) -> () loc("x")
    %r = "ttmetal.read_buffer"(%b) : ({device_type}) -> {host_out} loc("y")
    "ttmetal.deallocate"(%b) : ({device_type}) -> () loc("x")
    func.return %r : {host_out} loc("y")
  }}
}}
"""
    return Executor(parse_module(text), {}).run({"x": array})["y"]


def test_host_result_types() -> None:
    ints = RNG.integers(-(10**6), 10**6, size=(3, 40, 5))
    got = host_round_trip("tensor<3x40x5xi32, #tt.layout<tile, dram, interleaved>>", "tensor<3x40x5xi64>",
                          "tensor<3x40x5xi64>", ints)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ints)
    table = RNG.integers(0, 100, size=(4, 7))
    got = host_round_trip("tensor<4x7xi32, #tt.layout<row_major, dram, interleaved>>", "tensor<4x7xi64>",
                          "tensor<4x7xi32>", table)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, table)
    mask = np.array([[0.0, 1.0, 0.0]], np.float32)
    got = host_round_trip("tensor<1x3xbf16, #tt.layout<tile, l1, interleaved>>", "tensor<1x3xf32>",
                          "tensor<1x3xi1>", mask, address=0x80000)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, mask != 0)


def test_inputs_are_checked() -> None:
    executor = Executor(parse_module(SCHEDULE), {"w": tensor_to_pages(np.zeros((64, 96)), "bf16")})
    with pytest.raises(UserError, match=r"missing input\(s\) 'x' \(the model takes 'x'\)"):
        executor.run({"z": np.zeros((64, 96))})
    with pytest.raises(UserError, match=r"input 'x' has shape \[64, 95\], the model expects \[64, 96\]"):
        executor.run({"x": np.zeros((64, 95))})


def test_weights_are_checked() -> None:
    with pytest.raises(UserError, match="weight 'w' is not among the device weights"):
        Executor(parse_module(SCHEDULE), {}).run({"x": np.zeros((64, 96))})
    bad = {"w": np.zeros((6, 1088), np.uint8)}
    with pytest.raises(UserError, match=r"weight 'w' is uint8 \[6, 1088\], but its buffer .* needs uint8 pages \[6, 2048\]"):
        Executor(parse_module(SCHEDULE), bad).run({"x": np.zeros((64, 96))})


def test_device_descriptor_comes_from_the_module_or_the_caller() -> None:
    text = SCHEDULE
    wide = text.replace(program("add", "add_1", "%a, %w, %t"), program("add", "add_1", "%a, %w, %t", grid=(6, 1)))
    weights = {"w": tensor_to_pages(np.zeros((64, 96)), "bf16")}
    x = np.zeros((64, 96), np.float32)
    Executor(parse_module(wide), weights).run({"x": x})
    module = parse_module(wide.replace("module {", f"module attributes {{tt.device = {E75}}} {{", 1))
    assert Executor(module, weights).desc == E75
    tall = text.replace(program("add", "add_1", "%a, %w, %t"), program("add", "add_1", "%a, %w, %t", grid=(1, 9)))
    with pytest.raises(DeviceFault, match="program grid 1x9 exceeds the device compute grid 11x8"):
        Executor(parse_module(tall), weights, desc=E75).run({"x": x})


def run_schedule(text: str) -> dict[str, np.ndarray]:
    weights = {"w": tensor_to_pages(np.zeros((64, 96)), "bf16")}
    return Executor(parse_module(text), weights).run({"x": np.zeros((64, 96))})


def test_unknown_host_op() -> None:
    with pytest.raises(UserError, match=r"cannot execute 'ttmetal\.host_op' in @main"):
        run_schedule(SCHEDULE.replace('"ttmetal.deallocate"(%a)', '"ttmetal.host_op"(%a)'))


def test_use_after_free_and_overlapping_buffers() -> None:
    with pytest.raises(DeviceFault, match=r"not a live device buffer(.|\n)*in host op ttmetal\.read_buffer"):
        run_schedule(SCHEDULE.replace('%r = "ttmetal.read_buffer"(%y)', '%r = "ttmetal.read_buffer"(%a)'))
    kept = SCHEDULE.replace(f'"ttmetal.deallocate"(%a) : ({DEV}) -> () loc("x")', "")
    with pytest.raises(DeviceFault, match=r"at 0x800 .*overlaps buffer(.|\n)*create_buffer, ONNX node\(s\) \"mul_1\""):
        run_schedule(kept)


@pytest.mark.parametrize("emulator", ["native", "reference"])
def test_use_after_free_faults_on_every_run(emulator: str) -> None:
    """The executor keeps each create_buffer's DeviceBuffer across runs; a buffer deallocated in a run is still not
    live for a later op of that run on the second run (the same fault, not a stale buffer), and the executor runs
    a good schedule again after the fault."""
    weights = {"w": tensor_to_pages(np.zeros((64, 96)), "bf16")}
    bad = Executor(parse_module(SCHEDULE.replace('%r = "ttmetal.read_buffer"(%y)', '%r = "ttmetal.read_buffer"(%a)')),
                   weights, emulator=emulator)
    for _ in range(2):
        with pytest.raises(DeviceFault, match=r"not a live device buffer(.|\n)*in host op ttmetal\.read_buffer"):
            bad.run({"x": np.zeros((64, 96))})
        assert not bad._live and not bad.device.dram._buffers


def test_host_op_evaluator_is_built_once_per_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host op's onnx reference evaluator is built on the first run and reused by every later run."""
    import onnx.reference
    from onnx import TensorProto, helper

    import ttc

    built = []
    original = onnx.reference.ReferenceEvaluator

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnx.reference, "ReferenceEvaluator", Counting)
    graph = helper.make_graph(
        [helper.make_node("Mod", ["a", "b"], ["r"])], "mod",
        [helper.make_tensor_value_info("a", TensorProto.INT64, [3, 4]),
         helper.make_tensor_value_info("b", TensorProto.INT64, [3, 4])],
        [helper.make_tensor_value_info("r", TensorProto.INT64, [3, 4])])
    compiled = ttc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = {"a": RNG.integers(-100, 100, (3, 4)), "b": RNG.integers(1, 9, (3, 4))}
    for _ in range(3):
        np.testing.assert_array_equal(compiled.run(feeds)["r"], np.mod(feeds["a"], feeds["b"]))
    assert len(built) == 1
