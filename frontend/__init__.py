"""The ONNX frontend: load, check, shape-infer and version-convert an ONNX model, and import it into
a `ttir` module (one converter per ONNX op, weights beside the IR).

    module = import_model("model.onnx", input_shapes={"input_ids": (1, 128)})
"""

from ttc.frontend.converters import supported_op_types
from ttc.frontend.importer import import_model
from ttc.frontend.loader import load_model, parse_input_shape

__all__ = ["import_model", "load_model", "parse_input_shape", "supported_op_types"]
