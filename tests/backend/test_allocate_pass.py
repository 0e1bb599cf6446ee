"""allocate: DRAM bottom-up in lockstep, L1 top-down, reuse by liveness, CBs from l1_reserved, peaks,
and the capacity errors."""

from __future__ import annotations

import dataclasses
import io
import itertools

import numpy as np
import pytest
from backend_helpers import Graph, compile_graph, dev, programs, run

from ttc.ir import UserError
from ttc.ir.dialects.tt import E150
from ttc.passes import PassManager
from ttc.passes.allocate import DRAM_PEAK, L1_PEAK
from ttc.passes.ops.geometry import align, bank_share, cb_bytes, in_l1, l1_share, tensor

EXP = ['%0 = "ttir.exp"(%b0) : ({d}) -> {d} loc("e")', '"ttir.yield"(%0) : ({d}) -> () loc("e")']


def chain(shape: tuple[int, ...], length: int, loc: str = "e") -> Graph:
    g = Graph()
    value = g.input("x", shape)
    body = [line.format(d=dev(shape)) for line in EXP]
    for i in range(length):
        value = g.op("ttir.eltwise", [value], shape, loc=f"{loc}{i}", body=body)
    g.output(value, "y")
    return g


def buffers(module) -> list:
    return [op for op in module.function().body.ops if op.name == "ttmetal.create_buffer"]


def test_addresses_liveness_and_peaks() -> None:
    module = compile_graph(chain((256, 256), 3), pipeline="layout{l1-intermediates=false},grid,lower-to-kernels,"
                                                          "allocate")
    created = buffers(module)
    sizes = [bank_share(tensor(op.result), E150.dram_channels) for op in created]
    assert sizes == [16384] * 4  # 64 tiles over 8 banks, 2048 bytes each
    # x at 0, e0 above it; x is freed after e0, so e1 reuses 0; e1 -> e2 reuses e0's range.
    assert [op.attributes["address"] for op in created] == [0, 16384, 0, 16384]
    assert module.attributes[DRAM_PEAK] == 2 * 16384 * 8
    for program in programs(module):
        cbs = program.attributes["cbs"]
        assert cbs[0].address == E150.l1_reserved
        for before, after in itertools.pairwise(cbs):
            assert after.address == before.address + align(before.size)
    assert module.attributes[L1_PEAK] == max(cb_bytes(p.attributes["cbs"]) for p in programs(module))
    assert f"{DRAM_PEAK} = 262144" in str(module)


def test_l1_buffers_are_placed_top_down() -> None:
    module = compile_graph(chain((256, 256), 3))
    l1 = [op for op in buffers(module) if in_l1(op.result.type)]
    assert len(l1) == 2
    share = bank_share(tensor(l1[0].result), E150.compute_cores)
    assert [op.attributes["address"] for op in l1] == [E150.l1_size - share, E150.l1_size - 2 * share]
    biggest = max(cb_bytes(p.attributes["cbs"]) for p in programs(module))
    assert module.attributes[L1_PEAK] == biggest + 2 * share
    x = np.random.default_rng(0).uniform(-1.0, 0.5, (256, 256)).astype(np.float32)
    np.testing.assert_allclose(run(module, {"x": x})["y"], np.exp(np.exp(np.exp(x))), rtol=0.05)


def allocate_on(module, device) -> None:
    module.attributes["tt.device"] = device
    PassManager("allocate", stream=io.StringIO()).run(module)


def test_dram_exhaustion_names_bytes_and_node() -> None:
    module = compile_graph(chain((512, 512), 2), pipeline="layout{l1-intermediates=false},grid,lower-to-kernels")
    small = dataclasses.replace(E150, dram_channel_size=96 * 1024)
    with pytest.raises(UserError, match=r'node "e0": DRAM is full: buffer tensor<512x512xbf16, #tt.layout<tile, dram, '
                                        r"interleaved>> needs 65536 bytes per bank, the largest free range is "
                                        r"32768 bytes \(65536 bytes per bank in use\); try layout\{dtype=bfp8_b\}"):
        allocate_on(module, small)


def test_cbs_overlapping_live_l1_buffers_are_an_error() -> None:
    module = compile_graph(chain((256, 256), 2), pipeline="layout,grid,lower-to-kernels")
    share = bank_share(tensor(next(op for op in buffers(module) if in_l1(op.result.type)).result), E150.compute_cores)
    tight = dataclasses.replace(E150, l1_size=E150.l1_reserved + share + 4096)
    with pytest.raises(UserError, match=r'node "e0": the eltwise program\'s circular buffers need \d+ bytes of L1 '
                                        r"per core from 0x2a580, but only 4096 bytes are free below the L1 buffers "
                                        rf"live during it \({share} bytes per core\)"):
        allocate_on(module, tight)


def weight_writes(compiled, feeds, monkeypatch) -> int:
    """How many weights one more run of `compiled` writes to the device."""
    from ttc.runtime.executor import DeviceBuffer, Executor

    executor = compiled._executor or Executor(compiled.module, compiled.device_weights)
    compiled._executor = executor
    weights = {id(op.results[0]) for op in compiled.module.walk() if op.name == "ttmetal.create_buffer"
               and any(u.name == "ttmetal.write_constant" for u in op.results[0].users)}
    assert weights
    written = []
    original = DeviceBuffer.write

    def counting(self, pages):
        written.append(self)
        original(self, pages)

    with monkeypatch.context() as patch:
        patch.setattr(DeviceBuffer, "write", counting)
        patch.setattr(executor, "_direct", None)  # inputs through DeviceBuffer.write too (not the native packer)
        executor.run(feeds)
    inputs = sum(op.name == "ttmetal.write_buffer" for op in compiled.module.function("main").body.ops)
    return len(written) - inputs


def test_weights_stay_resident_so_a_second_run_writes_none(monkeypatch) -> None:
    """A deployed model keeps its weights on the device: weight buffers are never deallocated, so the
    activations never take their DRAM and the second run finds every weight in place."""
    import ttc
    from ttc import zoo
    from ttc.passes.allocate import RESIDENT_WEIGHTS, is_dram_weight

    model = zoo.mlp(batch=32, sizes=(784, 512, 256, 10))
    feeds = zoo.random_inputs(model)
    compiled = ttc.compile(model)
    main = compiled.module.function("main")
    assert compiled.module.attributes[RESIDENT_WEIGHTS] is True and compiled.manifest["memory"]["resident_weights"]
    freed = [op.operands[0].owner for op in main.body.ops if op.name == "ttmetal.deallocate"]
    assert freed and not any(is_dram_weight(op) for op in freed)
    weight_writes(compiled, feeds, monkeypatch)  # the first run writes them
    assert weight_writes(compiled, feeds, monkeypatch) == 0

    from ttc.compiler import CompileOptions, compile_model

    pipeline = compiled.manifest["options"]["pipeline"].replace("allocate", "allocate{resident-weights=false}")
    liveness = compile_model(model, CompileOptions(pipeline=pipeline))
    assert liveness.module.attributes[RESIDENT_WEIGHTS] is False
    assert liveness.module.attributes[DRAM_PEAK] < compiled.module.attributes[DRAM_PEAK]
    weight_writes(liveness, feeds, monkeypatch)
    assert weight_writes(liveness, feeds, monkeypatch) > 0  # activations took freed weight ranges
    (name,) = compiled.output_names
    np.testing.assert_array_equal(liveness.run(feeds)[name], compiled.run(feeds)[name])


def test_weights_too_large_to_stay_resident_fall_back_to_liveness() -> None:
    """A DRAM that holds the activations and the weights in use, but not every weight at once: the function
    is allocated by liveness instead (weights freed after their last use), says so, and still runs."""
    from ttc import zoo
    from ttc.compiler import default_pipeline
    from ttc.frontend.importer import import_model
    from ttc.ir.parser import parse_module
    from ttc.passes.allocate import RESIDENT_WEIGHTS

    model = zoo.mlp(batch=32, sizes=(784, 512, 256, 10))
    module = import_model(model)
    PassManager(default_pipeline().removesuffix(",allocate"), stream=io.StringIO()).run(module)
    text = str(module)
    peaks = {}
    for resident in (True, False):
        copy = parse_module(text)
        PassManager(f"allocate{{resident-weights={str(resident).lower()}}}", stream=io.StringIO()).run(copy)
        peaks[resident] = copy.attributes[DRAM_PEAK] // E150.dram_channels
    assert peaks[False] < peaks[True]
    between = dataclasses.replace(E150, dram_channel_size=(peaks[False] + peaks[True]) // 2)
    fallback = parse_module(text)
    allocate_on(fallback, between)
    assert fallback.attributes[RESIDENT_WEIGHTS] is False and fallback.attributes[DRAM_PEAK] // 8 == peaks[False]
    assert any(op.name == "ttmetal.deallocate" and "ttmetal.write_constant" in {u.name for u in op.operands[0].users}
               for op in fallback.function("main").body.ops)


def rooms_after_allocation(module) -> list[tuple[int, int]]:
    """Per program, in order: the bytes from the CB base to the lowest L1 buffer live during it, and the bytes
    of the live L1 buffers, read off the allocated schedule."""
    live, rooms = {}, []
    base = align(E150.l1_reserved)
    for op in module.function().body.ops:
        if op.name == "ttmetal.create_buffer" and in_l1(op.result.type):
            live[id(op.result)] = (op.attributes["address"], l1_share(tensor(op.result), E150))
        elif op.name == "ttmetal.deallocate":
            live.pop(id(op.operands[0]), None)
        elif op.name == "ttmetal.enqueue_program":
            lowest = min((address for address, _ in live.values()), default=E150.l1_size)
            rooms.append((lowest - base, sum(size for _, size in live.values())))
    return rooms


def test_the_replayed_l1_heap_gives_the_room_allocate_finds() -> None:
    """layout and grid judge each program's CBs against `L1Timeline`, a replay of allocate's heap over the
    ttir ops: its room must be what allocate leaves, holes of freed buffers included. Here `a` is freed
    after `b` reads it, and the wider concat does not fit in its hole, so it lands below `b`: the room is
    then less than l1_free minus the live bytes (which is what the passes used to judge by)."""
    from ttc.passes.l1_timeline import L1Timeline
    from ttc.passes.ops.gather import is_folded, is_view
    from ttc.passes.ops.registry import op_kind

    shape, wide = (1024, 1024), (1024, 4096)
    g = Graph()
    a = g.op("ttir.eltwise", [g.input("x", shape)], shape, loc="a", body=[line.format(d=dev(shape)) for line in EXP])
    b = g.op("ttir.eltwise", [a], shape, loc="b", body=[line.format(d=dev(shape)) for line in EXP])
    cat = g.op("ttir.concat", [b, b, b, b], wide, "axis = 1", loc="cat")
    g.output(g.op("ttir.eltwise", [cat], wide, loc="c", body=[line.format(d=dev(wide)) for line in EXP]), "y")
    module = compile_graph(g, pipeline="layout,grid")
    ops = list(module.function().body.ops)
    timeline, replayed = L1Timeline(ops, E150), []
    for index, op in enumerate(ops):
        if op_kind(op) is not None and not is_folded(op) and not is_view(op):
            for result in op.results:
                assert timeline.create(result, l1_share(tensor(result), E150))
            replayed.append(timeline.room())
        timeline.finish(index)
    PassManager("lower-to-kernels,allocate", stream=io.StringIO()).run(module)
    allocated = rooms_after_allocation(module)
    assert replayed == [room for room, _ in allocated]
    assert any(room < E150.l1_free - live for room, live in allocated)  # a hole counts against the room
