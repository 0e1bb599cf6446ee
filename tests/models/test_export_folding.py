"""The exports' constant folding (tests/models/export_folding.py): onnx's reference GatherElements mis-shapes
a gather along an axis longer than 64, so onnxscript's folding inside torch.onnx.export logged "Evaluation
failed: cannot reshape array of size 1 into shape (1,384)" on every BERT export at s384 and left a
GatherElements of constants in the graph. With `exact_folding` the export folds it with ttc's override."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

needs_onnxscript = pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None,
                                      reason="needs onnxscript (the `models` extra)")


def gather_elements_model(data: np.ndarray, indices: np.ndarray, axis: int) -> onnx.ModelProto:
    node = helper.make_node("GatherElements", ["data", "indices"], ["y"], axis=axis)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
                              [numpy_helper.from_array(data, "data"), numpy_helper.from_array(indices, "indices")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@needs_onnxscript
@pytest.mark.parametrize("length", [16, 384])
def test_export_folding_folds_a_gather_elements_along_a_long_axis(length: int, caplog) -> None:
    """BERT's token-type ids: a (1, 512) buffer gathered at (1, length) positions along axis 1 folds to
    np.take_along_axis's constant, with nothing logged."""
    import onnx_ir as ir
    import onnxscript.optimizer
    from export_folding import exact_folding

    data = (np.arange(512, dtype=np.int64) % 7).reshape(1, 512)
    indices = np.arange(length, dtype=np.int64)[::-1].reshape(1, length)
    model = ir.serde.deserialize_model(gather_elements_model(data, indices, axis=1))
    with caplog.at_level(logging.WARNING), exact_folding():
        onnxscript.optimizer.fold_constants(model)
    assert [node.op_type for node in model.graph] == []
    assert not [r for r in caplog.records if "Evaluation failed" in r.getMessage()]
    folded = model.graph.outputs[0].const_value.numpy()
    np.testing.assert_array_equal(folded, np.take_along_axis(data, indices, axis=1))


@needs_onnxscript
def test_export_folding_restores_the_evaluator() -> None:
    from export_folding import exact_folding
    from onnxscript.optimizer import _constant_folding as folding

    before = folding.ReferenceEvaluator.get_evaluator
    with exact_folding():
        assert folding.ReferenceEvaluator.get_evaluator is not before
    assert folding.ReferenceEvaluator.get_evaluator is before
