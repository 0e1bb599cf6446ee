"""Shared helpers of the frontend tests: tiny ONNX graphs, onnxruntime, and a test-only ttir oracle.

The oracle evaluates an imported module op by op with the ttir OpDefs' `fold` hooks (numpy), so the
importer's output can be compared with onnxruntime. It is a test oracle, not a product feature:
ops without a fold hook (gemm, layer_norm) get a few lines of numpy here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ttc.ir import DenseAttr, Module, Operation, WeightAttr, parse_module, print_module, verify

Shape = Sequence[int | str | None] | None


def info(name: str, shape: Shape, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A one-graph model at `opset` (IR version 8, which every onnxruntime reads)."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def main_ops(module: Module) -> list[Operation]:
    """The ops of @main without the return."""
    return module.function("main").body.ops[:-1]


def op_names(module: Module) -> list[str]:
    return [op.name for op in main_ops(module)]


def roundtrip(module: Module) -> str:
    """Verify, print, parse, verify and print again; the two texts must be equal. Returns the text."""
    verify(module)
    text = print_module(module)
    parsed = parse_module(text, weights=module.weights)
    verify(parsed)
    assert print_module(parsed) == text
    return text


# ----------------------------------------------------------------------------------------------
# The oracle


def _constant(op: Operation, module: Module) -> np.ndarray:
    value = op.attributes["value"]
    if isinstance(value, DenseAttr):
        return value.to_array()
    assert isinstance(value, WeightAttr)
    return module.weights[value.name]


def _gemm(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    a, b = arrays[0], arrays[1]
    a = a.T if op.attr("transpose_a") else a
    b = b.T if op.attr("transpose_b") else b
    y = op.attr("alpha") * (a.astype(np.float64) @ b.astype(np.float64))
    if len(arrays) == 3:
        y = y + op.attr("beta") * arrays[2]
    return y.astype(a.dtype)


def _layer_norm(arrays: Sequence[np.ndarray], op: Operation) -> np.ndarray:
    x = arrays[0].astype(np.float64)
    axes = tuple(range(op.attr("axis") % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + op.attr("epsilon")) * arrays[1]
    if len(arrays) == 3:
        y = y + arrays[2]
    return y.astype(arrays[0].dtype)


NO_FOLD = {"ttir.gemm": _gemm, "ttir.layer_norm": _layer_norm}


def evaluate(module: Module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run @main on `feeds` (keyed by ONNX input name); results keyed by ONNX output name."""
    func = module.function("main")
    env = {arg: feeds[func.arg_attrs(i)["ttir.name"]] for i, arg in enumerate(func.args)}
    for op in func.body.ops:
        if op.name == "func.return":
            return {func.res_attrs(i)["ttir.name"]: env[v] for i, v in enumerate(op.operands)}
        arrays = [env[v] for v in op.operands]
        if op.name == "ttir.constant":
            env[op.result] = _constant(op, module)
        elif op.name in NO_FOLD:
            env[op.result] = NO_FOLD[op.name](arrays, op)
        else:
            assert op.opdef is not None and op.opdef.fold is not None, f"no fold hook for {op.name}"
            env[op.result] = op.opdef.fold(arrays, op)
        assert env[op.result].shape == op.result.type.shape, op
    raise AssertionError("@main has no func.return")


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs for a model with static input shapes."""
    rng = np.random.default_rng(seed)
    weights = {t.name for t in model.graph.initializer}
    return {
        v.name: rng.standard_normal([d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
        for v in model.graph.input if v.name not in weights
    }
