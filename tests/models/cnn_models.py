"""Prepare the CNN test models: five light ONNX zoo models given random weights, and MobileNetV3-Small and
ResNet-50 exported from torch with random weights.

Usage: python tests/models/cnn_models.py [NAME ...] [--cache DIR] [--force]
       NAME in light_resnet50, light_squeezenet, light_vgg19, light_bvlc_alexnet, light_shufflenet,
               mobilenet_v3, resnet50_b1, resnet50_b8 (default: all)

The light models ship with the onnx package (onnx/backend/test/data/light, opset 9, IR 3, batch 1, 3x224x224
input). They make almost every weight with a ConstantOfShape node filling one value (0.02), so their outputs
do not depend on the input; `prepare_light_model` swaps in seeded random weights and exposes the logits (the
input of the final Softmax) as a second output, because the probabilities of a 1000-way softmax hide most
errors.

The torch models (tests/models/cnn_torch.py; needs the `models` extra: torch 2.13.0 CPU and onnxscript) are
exported with torch.onnx.export(..., dynamo=True) at opset 18, weights inside the file, one output: the
logits. The exporter's optimizer folds every BatchNorm into the Conv before it, so these files have no
BatchNormalization (the light ResNet-50 and ShuffleNet keep theirs). resnet50_b1 and resnet50_b8 have the
same weights.

All weights follow one recipe: He-normal Conv and Gemm weights, small biases, batch-norm statistics near
identity with noise, and the batch norm closing each ResNet/ShuffleNet residual branch damped to 0.2, which
keeps the logits moderate (a std of 4 to 16 in onnxruntime on a standard normal image, for every model).

Models are written to the cache folder (default $TTC_MODEL_CACHE or ~/.cache/ttc/models), never into git;
a model already there is reused. Every model is deterministic: the same seed gives the same file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from export_hf import cache_dir
from onnx import numpy_helper

if TYPE_CHECKING:
    import torch

SEED = 0
TORCH_OPSET = 18
IMAGE = (3, 224, 224)
LIGHT_MODELS = ("light_resnet50", "light_squeezenet", "light_vgg19", "light_bvlc_alexnet", "light_shufflenet")
TORCH_MODELS = ("mobilenet_v3", "resnet50_b1", "resnet50_b8")
NAMES = LIGHT_MODELS + TORCH_MODELS

# The weight-taking inputs of each op, by input index, and what the tensor there is.
PARAMETER_ROLES = {
    "Conv": {1: "weight", 2: "bias"},
    "Gemm": {1: "weight", 2: "bias"},
    "BatchNormalization": {1: "bn_scale", 2: "bn_bias", 3: "bn_mean", 4: "bn_var"},
}
# The scale of a batch norm that closes a residual branch: in eval mode nothing renormalises, and at ~1
# every residual Sum doubles the variance (ResNet-50's logits reach ~2000). Damping the branch, the usual
# trick (torchvision's zero_init_residual, Fixup) short of zeroing it, keeps the activations O(1).
RESIDUAL_BRANCH_SCALE = 0.2


def light_source(name: str) -> Path:
    """The original model file inside the installed onnx package."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"


def random_parameter(role: str, shape: tuple[int, ...], rng: np.random.Generator,
                     fan_in: int = 1) -> np.ndarray:
    """One float32 parameter: He-normal weights (std sqrt(2 / fan_in), which keeps the activation scale
    through ReLU layers), small biases, batch-norm statistics near identity with a little noise."""
    normal = rng.standard_normal(shape, dtype=np.float32)  # float32 throughout: VGG-19 has 143M weights
    if role == "weight":
        return normal * np.float32(math.sqrt(2.0 / fan_in))
    if role == "bias":
        return normal * np.float32(0.02)
    if role == "bn_scale":
        return 1 + normal * np.float32(0.1)
    if role in ("bn_bias", "bn_mean"):
        return normal * np.float32(0.1)
    if role == "bn_var":
        return np.float32(0.8) + np.float32(0.4) * rng.random(shape, dtype=np.float32)
    raise ValueError(f"unknown parameter role '{role}'")


def weight_fan_in(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    """The inputs summed into one output of a Conv (C_in / group x kernel) or Gemm (K) weight."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return shape[1] if trans_b else shape[0]
    return math.prod(shape[1:])


def parameter_shape(name: str, producers: dict[str, onnx.NodeProto],
                    initializers: dict[str, np.ndarray]) -> tuple[int, ...] | None:
    """The shape of a parameter made by ConstantOfShape (from its shape initializer) or stored as a float
    initializer; None for anything else (a computed value)."""
    producer = producers.get(name)
    if producer is not None and producer.op_type == "ConstantOfShape":
        return tuple(int(d) for d in initializers[producer.input[0]])
    if producer is None and name in initializers and initializers[name].dtype.kind == "f":
        return initializers[name].shape
    return None


def residual_branch_norms(graph: onnx.GraphProto) -> set[str]:
    """Outputs of the batch norms closing a residual branch: the first operand of a Sum or Add (the
    Caffe2 models put the branch first and the shortcut second)."""
    producers = {output: node for node in graph.node for output in node.output}
    closing = set()
    for node in graph.node:
        if node.op_type not in ("Sum", "Add") or not node.input:
            continue
        first = producers.get(node.input[0])
        if first is not None and first.op_type == "BatchNormalization":
            closing.add(first.output[0])
    return closing


def draw_parameters(graph: onnx.GraphProto, seed: int = SEED) -> dict[str, np.ndarray]:
    """Seeded random values for every Conv, Gemm and BatchNormalization parameter that is made by
    ConstantOfShape or stored as a float initializer, by tensor name, drawn in node order.

    The light models store a few parameters (some trained biases and batch-norm statistics, which do not
    fit random convolutions; ShuffleNet's first running variance is 5e-14) as initializers; those are
    redrawn too, so one recipe sets every scale.
    """
    rng = np.random.default_rng(seed)
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    damped = residual_branch_norms(graph)
    weights: dict[str, np.ndarray] = {}
    for node in graph.node:
        for index, role in PARAMETER_ROLES.get(node.op_type, {}).items():
            name = node.input[index] if index < len(node.input) else ""
            if not name or name in weights:
                continue
            shape = parameter_shape(name, producers, initializers)
            if shape is None:
                continue
            fan = weight_fan_in(node, shape) if role == "weight" else 1
            weights[name] = random_parameter(role, shape, rng, fan)
            if role == "bn_scale" and node.output[0] in damped:
                weights[name] *= np.float32(RESIDUAL_BRANCH_SCALE)
    return weights


def install_initializers(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Make each of `weights` an initializer of its name, in place: the ConstantOfShape nodes that made
    them go, and so does every initializer nothing reads any more (their shapes, and an unused blob of the
    Caffe2 export). IR 3 lists every initializer among the graph inputs too, so the inputs follow."""
    graph = model.graph
    made = [n for n in graph.node if n.op_type == "ConstantOfShape" and n.output[0] in weights]
    for node in made:
        graph.node.remove(node)
    stored = {tensor.name: tensor for tensor in graph.initializer}
    for name, array in weights.items():
        tensor = stored[name] if name in stored else graph.initializer.add()
        tensor.CopyFrom(numpy_helper.from_array(array, name))

    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unread = {t.name for t in graph.initializer if t.name not in read}
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in unread:
            del graph.initializer[index]
    for index in reversed(range(len(graph.input))):
        if graph.input[index].name in unread:
            del graph.input[index]
    if model.ir_version < 4:
        listed = {i.name for i in graph.input}
        graph.input.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, array.shape)
                           for name, array in weights.items() if name not in listed)


def expose_logits(model: onnx.ModelProto) -> str:
    """Add the input of the Softmax that makes the first graph output as a second graph output (typed by
    shape inference); returns its name."""
    graph = model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax" and n.output[0] == graph.output[0].name)
    logits = softmax.input[0]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info
    graph.output.append(next(info for info in inferred if info.name == logits))
    return logits


def prepare_light_model(name: str, seed: int = SEED) -> onnx.ModelProto:
    """The light zoo model `name` with seeded random weights and its logits as a second output."""
    model = onnx.load(light_source(name))
    expose_logits(model)  # before the weights: shape inference copies the model
    install_initializers(model, draw_parameters(model.graph, seed))
    onnx.checker.check_model(model)
    return model


def torch_network(name: str, seed: int = SEED) -> tuple[torch.nn.Module, torch.Tensor]:
    """MobileNetV3-Small (width 0.5) or ResNet-50 with seeded random weights in eval mode, and a seeded
    example image batch (1, or 8 for resnet50_b8) to export it with."""
    import cnn_torch
    import torch

    batch = 8 if name == "resnet50_b8" else 1
    network = cnn_torch.MobileNetV3(width=0.5) if name == "mobilenet_v3" else cnn_torch.ResNet50()
    cnn_torch.initialise(network, seed, residual_branch_scale=RESIDUAL_BRANCH_SCALE)
    image = torch.randn((batch, *IMAGE), generator=torch.Generator().manual_seed(seed))
    return network, image


def torch_model(name: str, seed: int = SEED) -> onnx.ModelProto:
    """Export `torch_network(name)` at its example batch, opset 18, one output named logits."""
    import torch

    network, image = torch_network(name, seed)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`isinstance.treespec, LeafSpec.` is deprecated", FutureWarning)
        program = torch.onnx.export(network, (image,), dynamo=True, opset_version=TORCH_OPSET,
                                    input_names=["input"], output_names=["logits"], external_data=False,
                                    optimize=True, verbose=False)
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return model


BUILDERS: dict[str, Callable[[str], onnx.ModelProto]] = {
    **dict.fromkeys(LIGHT_MODELS, prepare_light_model),
    **dict.fromkeys(TORCH_MODELS, torch_model),
}


def save_atomically(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary file beside `path` (one per process), then rename: a reader or a concurrent
    builder never sees a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        onnx.save(model, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def model_path(name: str, cache: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """The prepared model `name` in the cache, built first if missing (or if `force`)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown CNN model '{name}'; expected one of {', '.join(NAMES)}")
    path = cache_dir(cache) / name / f"{name}.onnx"
    if force or not path.exists():
        save_atomically(BUILDERS[name](name), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(NAMES)} (default: all)")
    parser.add_argument("--cache", help="output folder (default $TTC_MODEL_CACHE or ~/.cache/ttc/models)")
    parser.add_argument("--force", action="store_true", help="build again even if the model exists")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BUILDERS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected any of {', '.join(NAMES)}")
    for name in args.names or NAMES:
        print(model_path(name, args.cache, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
