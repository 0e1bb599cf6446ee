"""Compile-time evaluation of ONNX nodes on constant inputs, with onnx's reference evaluator.

The importer folds every node whose inputs are all constants through `evaluate_node`; converters use
it to turn a node with constant indices into the element map it applies (run on the data's flat
positions). onnx's own reference implementations are used as they are, except where one is wrong
for the inputs real exports produce (`frontend/reference_overrides.py`, each with its reason). onnx's
evaluator is imported on the first fold, not with the importer: most models never fold a node.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper


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
    from onnx.reference import ReferenceEvaluator

    from ttc.frontend.reference_overrides import OVERRIDES

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
