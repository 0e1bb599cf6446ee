"""The smallest ONNX repros of the errors the model families stop at today (issue 15's worklist; see
FAILURES.md beside this file). Each is built with onnx.helper, seeded weights, no torch.

Usage: python tests/models/repro/build_repros.py [NAME ...] [--out DIR] [--check]
       --out DIR   write NAME.onnx files there (default: tests/models/repro/onnx, not in git)
       --check     compile each with ttc and print the outcome beside the recorded error

Each REPROS entry records which family it came from, the error ttc reports today (a regex, matched by
tests/models/repro/test_repros.py, where each is a strict xfail), the exit code `ttc compile` gives, and the
issue-15 item that removes it. Shapes are the families' own where a smaller shape no longer reproduces the
error (an L1 overflow needs its size; a tile-granularity failure needs dims that are not multiples of 32).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
FLOAT = TensorProto.FLOAT


def _graph(name: str, nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], outputs: dict[str, list[int]],
           initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(k, FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ttc-repro")
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(shape: tuple[int, ...], seed: int = 0, fan_in: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fan = fan_in or int(np.prod(shape[1:])) or 1
    return (rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32)


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, np.int64)


# --------------------------------------------------------------------------------------------- builders


def patch_conv() -> onnx.ModelProto:
    """ViT/DeiT patch embedding: a 16x16 convolution with stride 16 (the smallest image, 2x2 patches)."""
    return _graph("patch_conv", [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[16, 16],
                                                  strides=[16, 16])],
                  {"x": [1, 3, 32, 32]}, {"y": [1, 32, 2, 2]}, {"w": _weights((32, 3, 16, 16)), "b": _weights((32,))})


def patch_flatten() -> onnx.ModelProto:
    """ViT's patch tokens: [1, 768, 14, 14] -> Reshape [1, 768, 196] -> Transpose [1, 196, 768] (with 32
    channels, or after a Conv, the same movement compiles)."""
    return _graph("patch_flatten", [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1]),
    ], {"x": [1, 768, 14, 14]}, {"y": [1, 196, 768]}, {"shape": _ints([1, 768, 196])})


def swin_window_pad() -> onnx.ModelProto:
    """Swin's window padding: tokens [1, 3136, 96] -> Reshape [1, 56, 56, 96] -> Pad (zero pads: 56 is a
    multiple of the 7x7 window, the exporter keeps the Pad) -> Reshape into 8x8 windows."""
    return _graph("swin_window_pad", [
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Pad", ["r", "pads"], ["p"], mode="constant"),
        helper.make_node("Reshape", ["p", "windows"], ["y"]),
    ], {"x": [1, 3136, 96]}, {"y": [1, 8, 7, 8, 7, 96]},
        {"shape": _ints([1, 56, 56, 96]), "pads": _ints([0] * 8), "windows": _ints([1, 8, 7, 8, 7, 96])})


def pooled_flatten() -> onnx.ModelProto:
    """A classifier after a global pool: [1, C, 1, 1] -> Reshape [1, C] -> Gemm (EfficientNet, Swin, ConvNeXt)."""
    return _graph("pooled_flatten", [
        helper.make_node("GlobalAveragePool", ["x"], ["pool"]),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["y"], transB=1),
    ], {"x": [1, 192, 7, 7]}, {"y": [1, 10]}, {"shape": _ints([1, 192]), "w": _weights((10, 192)),
                                              "b": _weights((10,), 1)})


def channels_last_permute() -> onnx.ModelProto:
    """ConvNeXt's block ends channels-last ([1, H, W, C], a Linear) and permutes back to NCHW for the
    residual add (the Transpose alone compiles)."""
    return _graph("channels_last_permute", [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Add", ["t", "residual"], ["y"]),
    ], {"x": [1, 56, 56, 96], "residual": [1, 96, 56, 56]}, {"y": [1, 96, 56, 56]}, {"w": _weights((96, 96))})


def avgpool_large_kernel() -> onnx.ModelProto:
    """HF EfficientNet's pooler: AvgPool2d(kernel=hidden_dim=1280, ceil_mode=True) over a 7x7 map (one
    window, clipped to the input)."""
    return _graph("avgpool_large_kernel", [
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[1280, 1280], strides=[1280, 1280],
                         ceil_mode=1),
    ], {"x": [1, 64, 7, 7]}, {"y": [1, 64, 1, 1]}, {})


def concat_conv1x1() -> onnx.ModelProto:
    """YOLO's CSP block: three branches Concat along channels, then a 1x1 Conv, at the first stage's 160x160
    (at 40x40 it compiles)."""
    return _graph("concat_conv1x1", [
        helper.make_node("Concat", ["a", "b", "c"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w"], ["y"], kernel_shape=[1, 1]),
    ], {"a": [1, 16, 160, 160], "b": [1, 16, 160, 160], "c": [1, 16, 160, 160]}, {"y": [1, 32, 160, 160]},
        {"w": _weights((32, 48, 1, 1))})


def nearest_upsample_concat() -> onnx.ModelProto:
    """YOLO's neck: nearest Resize x2 of [1, 256, 20, 20], Concat with a lateral, 1x1 Conv."""
    return _graph("nearest_upsample_concat", [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest", nearest_mode="floor"),
        helper.make_node("Concat", ["up", "lateral"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w"], ["y"], kernel_shape=[1, 1]),
    ], {"x": [1, 256, 20, 20], "lateral": [1, 128, 40, 40]}, {"y": [1, 32, 40, 40]},
        {"scales": np.asarray([1, 1, 2, 2], np.float32), "w": _weights((32, 384, 1, 1))})


def conv_transpose_large() -> onnx.ModelProto:
    """DBNet's head: a 2x2 stride-2 ConvTranspose to one channel at 320x320 -> 640x640."""
    return _graph("conv_transpose_large", [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ], {"x": [1, 16, 320, 320]}, {"y": [1, 1, 640, 640]}, {"w": _weights((16, 1, 2, 2), fan_in=16),
                                                           "b": _weights((1,), 1)})


def lstm_40_steps() -> onnx.ModelProto:
    """CRNN's recogniser: a bidirectional LSTM over 40 time steps."""
    hidden, features, steps = 8, 16, 40
    return _graph("lstm_40_steps", [
        helper.make_node("LSTM", ["x", "w", "r", "b"], ["y"], hidden_size=hidden, direction="bidirectional"),
    ], {"x": [steps, 1, features]}, {"y": [steps, 2, 1, hidden]},
        {"w": _weights((2, 4 * hidden, features), fan_in=features), "r": _weights((2, 4 * hidden, hidden), 1),
         "b": _weights((2, 8 * hidden), 2)})


def softmax_6625() -> onnx.ModelProto:
    """CRNN's per-step softmax over 6625 classes (one step is enough)."""
    return _graph("softmax_6625", [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                  {"x": [1, 1, 6625]}, {"y": [1, 1, 6625]}, {})


def mean_keepdims0_layernorm() -> onnx.ModelProto:
    """ConvNeXt's pooler after a conv: ReduceMean over H, W without keepdims, LayerNorm over the channels,
    Gemm. The channels-last pass keeps the pooled tensor 4-D and emits a layer_norm the verifier rejects."""
    return _graph("mean_keepdims0_layernorm", [
        helper.make_node("Conv", ["x", "w0"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("ReduceMean", ["c", "axes"], ["m"], keepdims=0),
        helper.make_node("LayerNormalization", ["m", "g", "b"], ["n"], axis=-1),
        helper.make_node("Gemm", ["n", "w", "bias"], ["y"], transB=1),
    ], {"x": [1, 64, 7, 7]}, {"y": [1, 10]},
        {"w0": _weights((768, 64, 1, 1)), "axes": _ints([2, 3]), "g": 1 + 0.1 * _weights((768,), fan_in=1),
         "b": 0.1 * _weights((768,), 1, 1), "w": _weights((10, 768)), "bias": _weights((10,), 2)})


def resnet_stem_batch20() -> onnx.ModelProto:
    """ResNet-50's stem at Tenstorrent's batch 20: 7x7 stride-2 Conv, ReLU, 3x3 stride-2 MaxPool."""
    return _graph("resnet_stem_batch20", [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ], {"x": [20, 3, 224, 224]}, {"y": [20, 64, 56, 56]}, {"w": _weights((64, 3, 7, 7)), "b": _weights((64,), 1)})


def resnet_maxpool_batch20() -> onnx.ModelProto:
    """ResNet-50's stem max pool alone at batch 20 (behind the stem conv's error)."""
    return _graph("resnet_maxpool_batch20", [
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ], {"x": [20, 64, 112, 112]}, {"y": [20, 64, 56, 56]}, {})


@dataclass(frozen=True)
class Repro:
    build: Callable[[], onnx.ModelProto]
    families: str
    error: str  # regex of ttc's message today
    exit_code: int  # what `ttc compile` returns today
    item: str  # issue-15 item


REPROS: dict[str, Repro] = {
}


# Repros the compiler has since fixed: kept as regression tests (they compile, run and pass golden).
FIXED: dict[str, Callable[[], onnx.ModelProto]] = {
    "mean_keepdims0_layernorm": mean_keepdims0_layernorm,  # issue 15 item 5: channels-last keepdims=0 pool
    "softmax_6625": softmax_6625,  # issue 15 item 2: a row longer than L1 holds runs as a row-chunked softmax
    # issue 15 item 3: movements off tiles, rows and segments run as element gathers (passes/movement.py)
    "patch_flatten": patch_flatten,
    "swin_window_pad": swin_window_pad,
    "pooled_flatten": pooled_flatten,
    "channels_last_permute": channels_last_permute,
    "concat_conv1x1": concat_conv1x1,
    "nearest_upsample_concat": nearest_upsample_concat,
    "lstm_40_steps": lstm_40_steps,  # a fused sum stops at 16 inputs (passes/fuse.py)
    "patch_conv": patch_conv,  # issue 15 item 1: a 16x16 window in two im2col passes (a K split)
    "resnet_stem_batch20": resnet_stem_batch20,  # issue 15 items 1-3 together: the stem conv and its max pool fit
    "avgpool_large_kernel": avgpool_large_kernel,  # issue 15 item 1: a window over the whole input is a mean
    # issue 15 item 1: a lookup's index pages stay 32 ids long however many ids it reads (windows.LargeIndexPage)
    "conv_transpose_large": conv_transpose_large,
    "resnet_maxpool_batch20": resnet_maxpool_batch20,
}
SLOW_FIXED = frozenset({"concat_conv1x1", "nearest_upsample_concat", "lstm_40_steps", "resnet_stem_batch20",
                        "resnet_maxpool_batch20"})  # each compiles in 30-90 s here


def compile_outcome(model: onnx.ModelProto) -> tuple[int, str]:
    """(exit code `ttc compile` would give, message): 0 and '' when it compiles."""
    import ttc
    from ttc.ir.diagnostics import EXIT_INTERNAL_ERROR, TtcError

    try:
        ttc.compile(model)
    except TtcError as error:
        return error.exit_code, str(error)
    except Exception as error:  # an internal compiler error
        return EXIT_INTERNAL_ERROR, f"{type(error).__name__}: {error}"
    return 0, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(REPROS)} (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "onnx"))
    parser.add_argument("--check", action="store_true", help="compile each and compare with the recorded error")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in REPROS]
    if unknown:
        parser.error(f"unknown repro(s) {', '.join(unknown)}; expected any of {', '.join(REPROS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in args.names or REPROS:
        repro = REPROS[name]
        model = repro.build()
        onnx.save(model, out / f"{name}.onnx")
        line = f"{name:26} {out / (name + '.onnx')}"
        if args.check:
            code, message = compile_outcome(model)
            same = code == repro.exit_code and re.search(repro.error, message, re.S) is not None
            status |= not same
            line += f"\n    {'as recorded' if same else 'CHANGED'}: exit {code}: {message[:300]}"
        print(line, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
