"""Sharded matmul programs: the cost model's NoC bytes, with the tiles in a core's own shard left out, are
what the emulator counts for the generated kernels, and the local bytes are where the shards say."""

from __future__ import annotations

import numpy as np
import pytest
from backend_helpers import Graph, compile_graph, device_weights

from ttc.ir.dialects.tt import E150
from ttc.passes.cost_model import plan_counts
from ttc.passes.ops import matmul
from ttc.runtime.executor import Executor

LINEAR = 'activation = "relu", transpose_b = false'


def chain(m: int, k: int, n: int, n2: int) -> Graph:
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", (m, k))
    y = g.op("ttir.linear", [x, g.weight("w1", rng.standard_normal((k, n)))], (m, n), LINEAR, loc="mm1")
    g.output(g.op("ttir.linear", [y, g.weight("w2", rng.standard_normal((n, n2)))], (m, n2), LINEAR, loc="mm2"), "z")
    return g


@pytest.mark.parametrize(("dims", "memory_layout"), [((6272, 64, 64, 32), "height_sharded"),
                                                     ((1024, 1024, 1024, 256), "block_sharded")])
def test_modelled_noc_bytes_leave_out_the_local_shards_as_the_emulator_does(dims, memory_layout: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # exact M and N splits only: an overlapping M split or a ragged N one (never sharded) models faster here
    monkeypatch.setattr(matmul, "MAX_OVERLAP_BLOCKS", 1)
    monkeypatch.setattr(matmul, "GRID_FILLS", ())
    monkeypatch.setattr(matmul, "GRID_COLUMNS", 1)
    gridded = compile_graph(chain(*dims), pipeline="layout,grid")
    ops = [op for op in gridded.function().body.ops if op.name == "ttir.linear"]
    assert ops[0].attributes["tt.sharding"]["layout"] == memory_layout
    modelled = [plan_counts(op, "matmul", E150, op.attributes["tt.grid"], op.attributes["tt.blocking"],
                            "hifi4").noc_bytes for op in ops]
    module = compile_graph(chain(*dims), pipeline="layout,grid,lower-to-kernels,allocate")
    executor = Executor(module, device_weights(module))
    executor.run({"x": np.zeros(dims[:2], np.float32)})
    assert [p.noc_bytes for p in executor.profile] == modelled
    producer, consumer = executor.profile
    out_tiles = dims[0] * dims[2] // 1024
    assert producer.local_bytes * producer.cores == out_tiles * 2048  # every output tile written locally
    assert consumer.local_bytes > 0  # the consumer's own part of its activation
