"""A seeded sweep of random data-movement chains on odd shapes (issue 15 item 3): Reshape, Transpose, Slice,
Concat, Split, Pad, Resize (nearest), DepthToSpace, SpaceToDepth and Gather, one to three of them after a Relu.
Every chain compiles, runs with no host op and gives exactly onnxruntime's result on the bf16 input (a movement
rounds nothing); the sweep also asserts that the element-granular gather ran in some of the cases and the tile
gather alone in others (the fast path still wins where it applies).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from cliff_sweep_cases import Chain as SweepChain
from onnx import TensorProto, helper

import ttc
from ttc.golden import run_onnxruntime

KINDS = ("Transpose", "Reshape", "Slice", "Pad", "Resize", "DepthToSpace", "SpaceToDepth", "Gather", "Split", "Concat")


class Chain(SweepChain):
    """The cliff sweep's chain (a Relu, then the movement nodes), as a model with the result named y."""

    def model(self) -> onnx.ModelProto:
        nodes = [*self.nodes, helper.make_node("Identity", [self.value], ["y"])]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, self.input_shape)
        graph = helper.make_graph(nodes, "chain", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        return onnx.shape_inference.infer_shapes(model)


def step(chain: Chain, kind: str, rng: np.random.Generator) -> None:
    """Append one movement of `kind` when it applies to the current shape."""
    shape, rank = chain.shape, len(chain.shape)
    if kind == "Transpose":
        perm = [int(p) for p in rng.permutation(rank)]
        chain.add("Transpose", [], [shape[p] for p in perm], perm=perm)
    elif kind == "Reshape":
        total = int(np.prod(shape))
        first = int(rng.choice([d for d in range(1, min(total, 256) + 1) if total % d == 0]))
        new = [first, total // first] if rng.random() < 0.5 else [1, first, total // first]
        chain.add("Reshape", [chain.const(new)], new)
    elif kind in ("Slice", "Split"):
        axis = int(rng.integers(rank))
        if shape[axis] < 2:
            return
        begin = int(rng.integers(shape[axis] - 1))
        end = int(rng.integers(begin + 1, shape[axis] + 1))
        new = list(shape)
        if kind == "Slice":
            new[axis] = end - begin
            chain.add("Slice", [chain.const([begin]), chain.const([end]), chain.const([axis])], new)
        else:
            new[axis] = end
            chain.add("Split", [chain.const([end, shape[axis] - end])], new, outputs=2, axis=axis)
    elif kind == "Pad":
        pads = [int(rng.integers(0, 3)) if rng.random() < 0.4 else 0 for _ in range(2 * rank)]
        chain.add("Pad", [chain.const(pads)], [n + pads[d] + pads[d + rank] for d, n in enumerate(shape)])
    elif kind == "Resize" and rank == 4:
        chain.add("Resize", ["", chain.const([1, 1, 2, 2], np.float32)], [*shape[:2], 2 * shape[2], 2 * shape[3]],
                  mode="nearest")
    elif kind == "DepthToSpace" and rank == 4 and shape[1] % 4 == 0:
        chain.add("DepthToSpace", [], [shape[0], shape[1] // 4, 2 * shape[2], 2 * shape[3]], blocksize=2)
    elif kind == "SpaceToDepth" and rank == 4 and shape[2] % 2 == 0 and shape[3] % 2 == 0:
        chain.add("SpaceToDepth", [], [shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2], blocksize=2)
    elif kind == "Gather":
        axis = int(rng.integers(rank))
        indices = rng.integers(0, shape[axis], size=int(rng.integers(1, 5)))
        new = list(shape)
        new[axis] = len(indices)
        chain.add("Gather", [chain.const(indices)], new, axis=axis)
    elif kind == "Concat":
        axis = int(rng.integers(rank))
        new = list(shape)
        new[axis] *= 2
        chain.add("Concat", [chain.value], new, axis=axis)


def random_chain(seed: int) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    shape = (1, int(rng.choice([3, 4, 5, 8, 12])), int(rng.integers(1, 50)), int(rng.integers(1, 50)))
    chain = Chain(list(shape))
    for _ in range(int(rng.integers(1, 4))):
        step(chain, str(rng.choice(KINDS)), rng)
    return chain.model(), shape


SEEDS = range(100, 140)


def test_random_movement_chains_compile_and_move_exactly() -> None:
    element_cases = tile_only_cases = 0
    for seed in SEEDS:
        model, shape = random_chain(seed)
        compiled = ttc.compile(model)
        assert compiled.manifest["host_ops"] == 0, seed
        x = np.random.default_rng(seed).standard_normal(shape).astype(ml_dtypes.bfloat16).astype(np.float32)
        got = compiled.run({"x": x})["y"]
        expected = run_onnxruntime(model, {"x": x})["y"]
        np.testing.assert_array_equal(got, expected, err_msg=f"seed {seed}")
        kinds = {op.attributes["kind"] for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"}
        element_cases += any(name.endswith(".element_index") for name in compiled.module.weights)
        tile_only_cases += kinds <= {"data_movement", "eltwise"}
    print(f"{len(SEEDS)} chains: {element_cases} element gathers, {tile_only_cases} tile gathers only")
    assert element_cases >= 5 and tile_only_cases >= 5, (element_cases, tile_only_cases)
