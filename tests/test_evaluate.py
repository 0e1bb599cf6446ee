"""Random inputs for `ttc run`: integer inputs that index a table stay inside it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ttc.evaluate import index_bounds


def embedding_model(through_reshape: bool) -> onnx.ModelProto:
    table = numpy_helper.from_array(np.zeros((1000, 8), np.float32), "table")
    small = numpy_helper.from_array(np.zeros((7, 8), np.float32), "small")
    shape = numpy_helper.from_array(np.array([4], np.int64), "shape")
    nodes = []
    ids = "ids"
    if through_reshape:
        nodes.append(helper.make_node("Reshape", ["ids", "shape"], ["flat"]))
        ids = "flat"
    nodes += [helper.make_node("Gather", ["table", ids], ["a"]), helper.make_node("Gather", ["small", "pos"], ["b"]),
              helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4]),
                                           helper.make_tensor_value_info("pos", TensorProto.INT64, [4]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [table, small, shape])
    return helper.make_model(graph)


def test_direct_and_reshaped_indices_are_bounded_by_their_table() -> None:
    assert index_bounds(embedding_model(False)) == {"ids": 1000, "pos": 7}
    assert index_bounds(embedding_model(True)) == {"ids": 1000, "pos": 7}
    assert index_bounds(None) == {}
