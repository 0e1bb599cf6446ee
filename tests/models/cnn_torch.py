"""The torch CNNs behind tests/models/cnn_models.py: MobileNetV3-Small and ResNet-50, written out here
(torchvision is not a dependency) and initialised from a seed.

Kept apart from cnn_models.py so that the light zoo models need only onnx and numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never losing more than 10% (as MobileNet)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias, "same" padding for odd kernels) + BatchNorm + optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool, 1x1 conv down, ReLU, 1x1 conv up, HardSigmoid, scale."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


@dataclass(frozen=True)
class BlockSpec:
    """One MobileNetV3 inverted residual block, in the paper's (unscaled) channel counts."""

    kernel: int
    expanded: int
    out: int
    squeeze_excite: bool
    hard_swish: bool
    stride: int


# MobileNetV3-Small (Howard et al. 2019, table 2): 11 blocks, four stride-2 stages after the stem.
MOBILENET_V3_SMALL = (
    BlockSpec(3, 16, 16, True, False, 2),
    BlockSpec(3, 72, 24, False, False, 2),
    BlockSpec(3, 88, 24, False, False, 1),
    BlockSpec(5, 96, 40, True, True, 2),
    BlockSpec(5, 240, 40, True, True, 1),
    BlockSpec(5, 240, 40, True, True, 1),
    BlockSpec(5, 120, 48, True, True, 1),
    BlockSpec(5, 144, 48, True, True, 1),
    BlockSpec(5, 288, 96, True, True, 2),
    BlockSpec(5, 576, 96, True, True, 1),
    BlockSpec(5, 576, 96, True, True, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when it would not widen), depthwise kxk, optional squeeze-excite, 1x1 project;
    a residual add when the shape is kept."""

    def __init__(self, c_in: int, spec: BlockSpec, width: float) -> None:
        super().__init__()
        expanded, c_out = make_divisible(spec.expanded * width), make_divisible(spec.out * width)
        activation = nn.Hardswish if spec.hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_bn(c_in, expanded, 1, activation=activation))
        layers.append(conv_bn(expanded, expanded, spec.kernel, spec.stride, groups=expanded,
                              activation=activation))
        if spec.squeeze_excite:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded / 4)))
        layers.append(conv_bn(expanded, c_out, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.residual = spec.stride == 1 and c_in == c_out
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3-Small at a width multiplier: stem, 11 inverted residual blocks, 1x1 conv, pooled head."""

    def __init__(self, width: float = 0.5, classes: int = 1000,
                 blocks: tuple[BlockSpec, ...] = MOBILENET_V3_SMALL) -> None:
        super().__init__()
        stem = make_divisible(16 * width)
        layers: list[nn.Module] = [conv_bn(3, stem, 3, stride=2, activation=nn.Hardswish)]
        channels = stem
        for spec in blocks:
            block = InvertedResidual(channels, spec, width)
            layers.append(block)
            channels = block.out_channels
        last = make_divisible(576 * width)
        layers.append(conv_bn(channels, last, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand x4, projected shortcut
    when the shape changes, ReLU after the add."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.branch = nn.Sequential(
            conv_bn(c_in, width, 1),
            conv_bn(width, width, 3, stride),
            conv_bn(width, c_out, 1, activation=None),
        )
        self.shortcut = (conv_bn(c_in, c_out, 1, stride, activation=None)
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU()

    def closing_norm(self) -> nn.BatchNorm2d:
        """The batch norm ending the branch that the residual add sums."""
        return self.branch[-1][1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet-50: 7x7/2 stem, 3x3/2 max pool, bottleneck stages [3, 4, 6, 3], global average pool, fc 1000."""

    def __init__(self, classes: int = 1000, stages: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1),
        ]
        channels = 64
        for index, count in enumerate(stages):
            width = 64 * 2**index
            for block in range(count):
                layers.append(Bottleneck(channels, width, stride=2 if block == 0 and index > 0 else 1))
                channels = width * Bottleneck.expansion
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def initialise(model: nn.Module, seed: int, residual_branch_scale: float = 1.0) -> nn.Module:
    """Seeded random weights in eval mode: He-normal convs and linears (std sqrt(2 / fan_in)), small biases,
    and batch-norm statistics near identity but perturbed (mean ~ 0, var ~ 1, scale ~ 1, bias ~ 0), so
    a BatchNormalization that is dropped or mis-folded shows in the outputs. The scale of the batch norm
    closing each ResNet bottleneck branch is multiplied by `residual_branch_scale` (see cnn_models.py);
    MobileNet's few adds, with no ReLU after them, keep O(1) activations undamped."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return std * torch.randn(shape, generator=generator)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(normal(module.weight.shape, math.sqrt(2.0 / fan_in)))
                if module.bias is not None:
                    module.bias.copy_(normal(module.bias.shape, 0.02))
            elif isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(1.0 + normal(shape, 0.1))
                module.bias.copy_(normal(shape, 0.1))
                module.running_mean.copy_(normal(shape, 0.1))
                module.running_var.copy_(0.8 + 0.4 * torch.rand(shape, generator=generator))
        for module in model.modules():
            if isinstance(module, Bottleneck):
                module.closing_norm().weight.mul_(residual_branch_scale)
    return model.eval()
