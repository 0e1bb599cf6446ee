"""ttc: an ONNX compiler for the Tenstorrent Grayskull, with an emulated device.

    import ttc
    model = ttc.compile("model.onnx", input_shapes={"input_ids": (1, 128)}, arch="e150")
    outputs = model.run({"input_ids": ids})     # dict name -> np.ndarray
    model.save("model.ttc")
    again = ttc.load("model.ttc")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    import onnx

    from ttc.compiler import CompiledModel


def compile(model_or_path: str | Path | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
            arch: str = "e150", dtype: str = "bf16", math_fidelity: str = "hifi4",
            softmax_precision: str = "bf16") -> CompiledModel:
    """Compile an ONNX model (path or ModelProto) for the emulated Grayskull."""
    from ttc.compiler import CompileOptions, compile_model

    options = CompileOptions(arch=arch, dtype=dtype, math_fidelity=math_fidelity,
                             softmax_precision=softmax_precision, input_shapes=dict(input_shapes or {}))
    return compile_model(model_or_path, options)


def load(path: str | Path) -> CompiledModel:
    """Load a `.ttc` artifact written by `CompiledModel.save` or `ttc compile`."""
    from ttc.artifact import read_artifact

    return read_artifact(path)


__all__ = ["__version__", "compile", "load"]
