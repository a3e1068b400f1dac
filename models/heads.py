"""Projection head shared by both encoders: Linear (no bias) → ReLU → Linear (no bias)."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class ProjectionHead(nn.Sequential):
    """Backbone features → the D-dimensional joint embedding (not L2-normalised).

    Under autocast the last layer still runs in float32, so the embeddings reach the loss in float32.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__(OrderedDict(
            hidden=nn.Linear(in_features, hidden, bias=False),
            relu=nn.ReLU(),
            output=nn.Linear(hidden, out_features, bias=False),
        ))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.hidden(features))
        with torch.autocast(hidden.device.type, enabled=False):
            return self.output(hidden.to(self.output.weight.dtype))  # the layer's own precision: float32 or float64
