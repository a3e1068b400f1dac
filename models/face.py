"""Face encoder: input normalisation, the IR ("improved residual") body of face.evoLVe, projection head.

IR-50 / IR-100 / IR-152 are units [3, 4, 14, 3] / [3, 13, 30, 3] / [3, 8, 36, 3] with widths
[64, 128, 256, 512]; `se: true` gives the IR-SE variants. The backbone's own output layer
(BN, Dropout, Linear 512·7·7 → 512, BN1d) is not built: the method pools the body globally.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from models.heads import ProjectionHead


class InputNormalization(nn.Module):
    """BGR 0–255 → (x − 127.5)/127.5, written as x·(1/127.5) − 1 like the release's fixed 1×1 conv."""

    scale = 1.0 / 127.5
    shift = -1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale + self.shift


class SqueezeExcitation(nn.Module):
    """Channel gate x·sigmoid(W₂ relu(W₁ avgpool(x))); face.evoLVe's has no biases, voxceleb_trainer's has."""

    def __init__(self, channels: int, reduction: int, bias: bool):
        super().__init__()
        self.reduce = nn.Linear(channels, channels // reduction, bias=bias)
        self.expand = nn.Linear(channels // reduction, channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class IRUnit(nn.Module):
    """BN → conv3×3 → PReLU → conv3×3(stride) → BN [→ SE], plus a (strided) shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool):
        super().__init__()
        if in_channels == depth:
            # A 1×1 max-pool with a stride is plain subsampling: the identity at stride 1.
            self.shortcut = nn.MaxPool2d(1, stride)
        else:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                bn=nn.BatchNorm2d(depth),
            ))
        layers = OrderedDict(
            bn_in=nn.BatchNorm2d(in_channels),
            conv1=nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            prelu=nn.PReLU(depth),
            conv2=nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            bn_out=nn.BatchNorm2d(depth),
        )
        if se:
            layers["se"] = SqueezeExcitation(depth, reduction=16, bias=False)
        self.residual = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class FaceEncoder(nn.Module):
    """Images N×3×H×W (BGR, 0–255) → embeddings N×D; every stage halves H and W."""

    def __init__(self, units: Sequence[int], widths: Sequence[int], se: bool, head_hidden: int,
                 embedding_dim: int):
        super().__init__()
        if len(units) != len(widths):
            raise ValueError(f"models.face.units {list(units)} and models.face.widths {list(widths)} "
                             "must have the same length")
        self.normalization = InputNormalization()
        stem_width = widths[0]  # 64 in the IR family: the first stage keeps the stem's width
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, stem_width, 3, 1, 1, bias=False),
            bn=nn.BatchNorm2d(stem_width),
            prelu=nn.PReLU(stem_width),
        ))
        body, in_channels = [], stem_width
        for count, depth in zip(units, widths):
            for index in range(count):
                body.append(IRUnit(in_channels, depth, stride=2 if index == 0 else 1, se=se))
                in_channels = depth
        self.body = nn.Sequential(*body)
        self.head = ProjectionHead(in_channels, head_hidden, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.body(self.stem(self.normalization(images)))
        return self.head(features.mean(dim=(2, 3)))
