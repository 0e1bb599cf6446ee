"""ttc: an ONNX compiler for the Tenstorrent Grayskull, with an emulated device.

    import ttc
    session = ttc.InferenceSession("model.onnx")                 # onnxruntime's API
    [logits] = session.run(None, {"input": x})

    model = ttc.compile("model.onnx", input_shapes={"input_ids": (1, 128)}, arch="e150")
    outputs = model.run({"input_ids": ids})     # dict name -> np.ndarray
    model.save("model.ttc")
    again = ttc.load("model.ttc")
    result = ttc.generate("gpt2.onnx", [464, 2068, 7586], max_new_tokens=32)   # a causal LM's new token ids

User errors (a bad model, a bad feed, an unsupported op) raise `ttc.UserError`; a fault the emulated device
catches raises `ttc.DeviceFault`; both are `ttc.TtcError`s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import onnx

    from ttc.compiler import CompiledModel
    from ttc.ir.diagnostics import DeviceFault, TtcError, UserError
    from ttc.session import InferenceSession


def compile(model_or_path: str | Path | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
            arch: str = "e150", dtype: str | None = None, math_fidelity: str | None = None,
            softmax_precision: str = "bf16", f16_where_proven: bool = False,
            perf_preset: str | None = None) -> CompiledModel:
    """Compile an ONNX model (path or ModelProto) for the emulated Grayskull. Inputs with dynamic dimensions
    need their shapes in `input_shapes` ({"input_ids": (1, 128)}). bf16 everywhere by default (`dtype` "bf16",
    `math_fidelity` "hifi4"); `f16_where_proven` holds in Float16 the values whose range the compiler proves
    (docs/passes.md, layout); `perf_preset="published"` takes Tenstorrent's published formats and fidelities
    (docs/numerics.md) and sets `dtype` and `math_fidelity` itself."""
    from ttc.compiler import CompileOptions, compile_for_api, preset_options

    options = CompileOptions(arch=arch, **preset_options(perf_preset, dtype, math_fidelity),
                             softmax_precision=softmax_precision, f16_where_proven=f16_where_proven,
                             input_shapes=dict(input_shapes or {}))
    return compile_for_api(model_or_path, options)


def load(path: str | Path) -> CompiledModel:
    """Load a `.ttc` artifact written by `CompiledModel.save` or `ttc compile`."""
    from ttc.artifact import read_artifact

    return read_artifact(path)


# Imported on first use, so that `import ttc` stays cheap (the compiler pulls in onnx, lark and numpy).
_LAZY = {
    "InferenceSession": "ttc.session",
    "CompiledModel": "ttc.compiler",
    "TtcError": "ttc.ir.diagnostics",
    "UserError": "ttc.ir.diagnostics",
    "DeviceFault": "ttc.ir.diagnostics",
    "generate": "ttc.generation",
}

__all__ = ["CompiledModel", "DeviceFault", "InferenceSession", "TtcError", "UserError", "__version__", "compile",
           "generate", "load"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ttc' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Only the API: not the submodules that importing it loads, nor this file's own imports."""
    return sorted(__all__)
