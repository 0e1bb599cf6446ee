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
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun


class GatherElements(OpRun):
    """onnx's GatherElements goes through np.choose, which takes at most 64 choices, and its fallback
    mis-shapes the result when the gathered axis is longer (BERT's token-type ids gather 128 of
    512); np.take_along_axis is the op's definition."""

    op_domain = ""

    def _run(self, data, indices, axis=None):  # type: ignore[override]
        axis = 0 if axis is None else axis
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


OVERRIDES: Sequence[type[OpRun]] = (GatherElements,)


def evaluate_node(node: onnx.NodeProto, feeds: Mapping[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """The node's outputs on `feeds` (input name -> array); raises whatever the evaluator raises."""
    evaluator = ReferenceEvaluator(node, opsets={"": opset}, new_ops=list(OVERRIDES))
    return [np.asarray(result) for result in evaluator.run(None, dict(feeds))]
