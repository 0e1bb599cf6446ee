"""The hand-built torch test models of tests/models/export_families.py: a YOLO-style detector, a DBNet-style
text detector and a CRNN-style text recogniser (torchvision does not import beside the pinned torch build,
so these are written out here, reusing the building blocks of tests/models/cnn_torch.py).

Each is a small, plausible member of its family, not a copy of any released network:
- YOLO-style: a CSP backbone (Conv-BN-SiLU, C2f-like blocks that Split the channels and Concat the
  branch outputs), an SPPF block (three chained max pools), a top-down/bottom-up neck with nearest
  upsampling and Concat, and three sigmoid heads (strides 8, 16, 32; 3 anchors x 85 values) flattened and
  concatenated into [batch, 25200, 85] at 640x640.
- DBNet-style: a MobileNetV3-Small backbone (cnn_torch's inverted residual blocks, squeeze-excite,
  HardSwish), an FPN neck (1x1 laterals, nearest top-down upsampling, 3x3 smoothing, each level upsampled
  to 1/4 scale, two nearest and one bilinear, and concatenated), and the probability head (3x3 conv, two
  2x2 stride-2 ConvTranspose back to full resolution, sigmoid): [batch, 1, 640, 640].
- CRNN-style: a VGG-like conv backbone that pools the 48-pixel height to 1 and the 320-pixel width to 40
  time steps, a bidirectional LSTM over those steps, a linear layer to 6625 classes (a Chinese+Latin
  character set plus blank) and a softmax per time step: [batch, 40, 6625].

`initialise` (cnn_torch) gives the convolutions He-normal weights and the batch norms perturbed statistics;
`init_recurrent` gives the LSTM seeded uniform weights. All of it is seeded: the same seed gives the same
weights.
"""

from __future__ import annotations

import math

import torch
from cnn_torch import MOBILENET_V3_SMALL, InvertedResidual, conv_bn, make_divisible
from torch import nn

# ---------------------------------------------------------------------------------------------- YOLO


def conv_silu(c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    return conv_bn(c_in, c_out, kernel, stride, activation=nn.SiLU)


class CspBlock(nn.Module):
    """C2f-like: a 1x1 conv, Split into two halves, `depth` bottlenecks (two 3x3 convs, residual) on the
    second half, each appended, Concat of every part, a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, depth: int, shortcut: bool = True) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.stem = conv_silu(c_in, 2 * self.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(conv_silu(self.hidden, self.hidden, 3), conv_silu(self.hidden, self.hidden, 3))
            for _ in range(depth))
        self.shortcut = shortcut
        self.out = conv_silu((2 + depth) * self.hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.stem(x).split(self.hidden, dim=1))
        for block in self.blocks:
            y = block(parts[-1])
            parts.append(parts[-1] + y if self.shortcut else y)
        return self.out(torch.cat(parts, dim=1))


class Sppf(nn.Module):
    """Spatial pyramid pooling (fast): 1x1 conv, three chained 5x5 stride-1 max pools, Concat, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in // 2
        self.reduce = conv_silu(c_in, hidden)
        self.pool = nn.MaxPool2d(5, 1, padding=2)
        self.out = conv_silu(4 * hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.out(torch.cat([x, p1, p2, self.pool(p2)], dim=1))


class YoloStyle(nn.Module):
    """Backbone widths (w, 2w, 4w, 8w, 16w) at strides 2..32, CSP depths `depths`, SPPF, a PAN neck and three
    heads of 3 anchors x (4 box + 1 objectness + `classes`) sigmoid outputs."""

    def __init__(self, width: int = 16, depths: tuple[int, ...] = (1, 2, 2, 1), neck_depth: int = 1,
                 classes: int = 80, anchors: int = 3) -> None:
        super().__init__()
        w = width
        self.outputs = anchors * (5 + classes)
        self.anchors = anchors
        self.stem = conv_silu(3, w, 3, 2)
        self.stage2 = nn.Sequential(conv_silu(w, 2 * w, 3, 2), CspBlock(2 * w, 2 * w, depths[0]))
        self.stage3 = nn.Sequential(conv_silu(2 * w, 4 * w, 3, 2), CspBlock(4 * w, 4 * w, depths[1]))
        self.stage4 = nn.Sequential(conv_silu(4 * w, 8 * w, 3, 2), CspBlock(8 * w, 8 * w, depths[2]))
        self.stage5 = nn.Sequential(conv_silu(8 * w, 16 * w, 3, 2), CspBlock(16 * w, 16 * w, depths[3]),
                                    Sppf(16 * w, 16 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top4 = CspBlock(24 * w, 8 * w, neck_depth, shortcut=False)
        self.top3 = CspBlock(12 * w, 4 * w, neck_depth, shortcut=False)
        self.down3 = conv_silu(4 * w, 4 * w, 3, 2)
        self.bottom4 = CspBlock(12 * w, 8 * w, neck_depth, shortcut=False)
        self.down4 = conv_silu(8 * w, 8 * w, 3, 2)
        self.bottom5 = CspBlock(24 * w, 16 * w, neck_depth, shortcut=False)
        self.heads = nn.ModuleList(nn.Conv2d(c, self.outputs, 1) for c in (4 * w, 8 * w, 16 * w))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        c3 = self.stage3(self.stage2(self.stem(image)))
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        p4 = self.top4(torch.cat([self.up(c5), c4], dim=1))
        p3 = self.top3(torch.cat([self.up(p4), c3], dim=1))
        n4 = self.bottom4(torch.cat([self.down3(p3), p4], dim=1))
        n5 = self.bottom5(torch.cat([self.down4(n4), c5], dim=1))
        boxes = []
        for head, feature in zip(self.heads, (p3, n4, n5), strict=True):
            y = head(feature)
            batch, _, height, width = y.shape
            y = y.reshape(batch, self.anchors, self.outputs // self.anchors, height, width)
            boxes.append(y.permute(0, 1, 3, 4, 2).reshape(batch, -1, self.outputs // self.anchors))
        return torch.cat(boxes, dim=1).sigmoid()


# ---------------------------------------------------------------------------------------------- DBNet


class DbNetStyle(nn.Module):
    """MobileNetV3-Small backbone (width `width`; `blocks` picks which of its 11 blocks, by index, so a
    reduced variant keeps one block per stride), an FPN neck of `neck` channels and DBNet's probability
    head."""

    def __init__(self, width: float = 1.0, blocks: tuple[int, ...] = tuple(range(11)), neck: int = 64) -> None:
        super().__init__()
        stem = make_divisible(16 * width)
        self.stem = conv_bn(3, stem, 3, stride=2, activation=nn.Hardswish)
        channels = stem
        self.stages = nn.ModuleList()
        self.stage_channels: list[int] = []
        current: list[nn.Module] = []
        for spec in (MOBILENET_V3_SMALL[index] for index in blocks):
            if spec.stride == 2 and current:
                self.stages.append(nn.Sequential(*current))
                self.stage_channels.append(channels)
                current = []
            block = InvertedResidual(channels, spec, width)
            current.append(block)
            channels = block.out_channels
        self.stages.append(nn.Sequential(*current))
        self.stage_channels.append(channels)
        # stages at strides 4, 8, 16, 32: the first stride-2 block ends stride 2 -> 4
        self.laterals = nn.ModuleList(nn.Conv2d(c, neck, 1, bias=False) for c in self.stage_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(neck, neck // 4, 3, padding=1, bias=False)
                                    for _ in self.stage_channels)
        quarter = neck // 4 * len(self.stage_channels)
        self.head = nn.Sequential(
            conv_bn(quarter, quarter // 4, 3),
            nn.ConvTranspose2d(quarter // 4, quarter // 4, 2, 2), nn.BatchNorm2d(quarter // 4), nn.ReLU(),
            nn.ConvTranspose2d(quarter // 4, 1, 2, 2),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        laterals = [lateral(f) for lateral, f in zip(self.laterals, features, strict=True)]
        for index in range(len(laterals) - 1, 0, -1):
            laterals[index - 1] = laterals[index - 1] + nn.functional.interpolate(
                laterals[index], size=laterals[index - 1].shape[-2:], mode="nearest")
        size = laterals[0].shape[-2:]
        fused = []
        for level, (smooth, lateral) in enumerate(zip(self.smooth, laterals, strict=True)):
            y = smooth(lateral)
            if level == len(laterals) - 1:
                y = nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)
            elif level:
                y = nn.functional.interpolate(y, size=size, mode="nearest")
            fused.append(y)
        return self.head(torch.cat(fused, dim=1)).sigmoid()


# ---------------------------------------------------------------------------------------------- CRNN


class CrnnStyle(nn.Module):
    """Conv backbone (3x3 conv-BN-ReLU stages; pooling halves the height each stage and the width twice,
    then a max pool over the remaining height), a BiLSTM of `hidden` units each way and a per-step softmax
    over `classes`."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 128, 256, 256), hidden: int = 96,
                 classes: int = 6625) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        # (height, width) stride of each stage's first conv: 48x320 -> 24x160 -> 12x80 -> 6x40 -> 3x40
        strides = [(2, 2), (2, 2), (2, 2), (2, 1), (1, 1), (1, 1)]
        for width, stride in zip(widths, strides, strict=False):
            layers.append(nn.Sequential(
                nn.Conv2d(channels, width, 3, stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()))
            channels = width
        self.backbone = nn.Sequential(*layers)
        self.collapse = nn.AdaptiveMaxPool2d((1, None))
        self.rnn = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.classifier = nn.Linear(2 * hidden, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.collapse(self.backbone(image))  # [batch, channels, 1, steps]
        sequence = features.squeeze(2).permute(0, 2, 1)  # [batch, steps, channels]
        recurrent, _ = self.rnn(sequence)
        return self.classifier(recurrent).softmax(dim=-1)


def init_recurrent(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Seeded uniform LSTM weights and biases in +-scale/sqrt(hidden) (torch's own range, redrawn from a
    generator so the model does not depend on the global seed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LSTM):
                bound = scale / math.sqrt(module.hidden_size)
                for param in module.parameters():
                    param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
    return model
