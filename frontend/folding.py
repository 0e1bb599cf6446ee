"""Compile-time evaluation of ONNX nodes on constant inputs, with onnx's reference evaluator.

The importer folds every node whose inputs are all constants through `evaluate_node`; converters use
it to turn a node with constant indices into the element map it applies (run on the data's flat
positions). onnx's own reference implementations are used as they are, except where one is wrong
for the inputs real exports produce (listed in `OVERRIDES`, each with its reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops import op_loop


class GatherElements(OpRun):
    """onnx's GatherElements goes through np.choose, which takes at most 64 choices, and its fallback
    mis-shapes the result when the gathered axis is longer (BERT's token-type ids gather 128 of
    512); np.take_along_axis is the op's definition."""

    op_domain = ""

    def _run(self, data, indices, axis=None):  # type: ignore[override]
        axis = 0 if axis is None else axis
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


class Loop(op_loop.Loop):
    """onnx's Loop joins the scan outputs with np.vstack, which gives [n, 1] for scalars (an expanded
    Range's elements) and merges the first two dims of matrices; the spec stacks them along a new first
    axis (np.stack)."""

    op_domain = ""

    def _run(self, M, cond, *args, context=None, body=None, attributes=None, bindings=None):  # type: ignore[override]
        names = self.body.input_names
        inputs = dict.fromkeys(names)
        inputs.update(zip(names[2:], args, strict=False))  # the loop-carried initial values
        inputs.update(context or {})
        scans: list[list[np.ndarray]] = [[] for _ in range(self.K)]
        carried = [inputs[name] for name in names[2:]]
        it = 0
        while cond and (M is None or it < M):
            inputs[names[0]] = np.array(it, dtype=None if M is None else M.dtype)
            inputs[names[1]] = cond
            outputs = self._run_body(inputs, attributes=attributes, bindings=bindings)
            cond = outputs[0]
            carried = list(outputs[1:1 + self.N])
            inputs.update(zip(names[2:], carried, strict=True))
            for k in range(self.K):
                scans[k].append(outputs[1 + self.N + k])
            it += 1
        return self._check_and_fix_outputs((*carried, *(np.stack(scan) for scan in scans)))


OVERRIDES: Sequence[type[OpRun]] = (GatherElements, Loop)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs of the node's attributes (a Loop's body, an If's branches), nested ones not included."""
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def outer_scope_inputs(node: onnx.NodeProto) -> list[str]:
    """The names the node's subgraphs (at any depth) read from the enclosing graph, in first-use order."""
    names: dict[str, None] = {}

    def visit(graph: onnx.GraphProto, defined: set[str]) -> None:
        defined = defined | {v.name for v in graph.input} | {t.name for t in graph.initializer}
        for inner in graph.node:
            names.update((name, None) for name in inner.input if name and name not in defined)
            for sub in subgraphs(inner):
                visit(sub, defined)
            defined |= set(inner.output)
        names.update((v.name, None) for v in graph.output if v.name not in defined)

    for graph in subgraphs(node):
        visit(graph, set())
    return list(names)


def evaluate_node(node: onnx.NodeProto, feeds: Mapping[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """The node's outputs on `feeds` (input name -> array, with the values its subgraphs read from the
    enclosing graph); raises whatever the evaluator raises."""
    if subgraphs(node):  # a graph around the node, so the subgraphs' outer-scope names are defined
        inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
                  for name, array in feeds.items()]
        outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
        graph = helper.make_graph([node], "fold", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        evaluator = ReferenceEvaluator(model, new_ops=list(OVERRIDES))
        results = dict(zip([name for name in node.output if name], evaluator.run(None, dict(feeds)), strict=True))
        return [np.asarray(results[name]) if name else np.zeros(0) for name in node.output]
    evaluator = ReferenceEvaluator(node, opsets={"": opset}, new_ops=list(OVERRIDES))
    return [np.asarray(result) for result in evaluator.run(None, dict(feeds))]
