"""Voice encoder: log-mel front end, ResNetSE34L body (voxceleb_trainer), attentive pooling, head.

The released backbone also holds a Linear(128, 512) after the pooling that the method never
uses; it is not built here.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torchaudio
from torch import nn

from models.face import SqueezeExcitation
from models.heads import ProjectionHead

class LogMelFrontEnd(nn.Module):
    """Waveform N×T (int16 scale) → N×mels×frames: log(mel power + 1e-6), normalised per mel bin over time."""

    def __init__(self, n_mels: int, sample_rate: int):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=512, win_length=400, hop_length=160,
            window_fn=torch.hamming_window, n_mels=n_mels, power=None)  # complex STFT: the power is taken below
        self.instance_norm = nn.InstanceNorm1d(n_mels)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        # Fixed features: no gradient, and float32 even under autocast (log of tiny powers).
        with torch.autocast(device_type=waves.device.type, enabled=False):
            waves = waves.to(torch.promote_types(waves.dtype, torch.float32))  # float64 stays float64
            spectrum = torch.view_as_real(self.mel.spectrogram(waves))
            # |X| squared as re² + im²: 1.7-2.1x the front end against torchaudio's |X| then square (complex abs
            # is slow on the CPU; bench/cpu_training.py --front-end); the same power to rounding
            power = spectrum[..., 0].square() + spectrum[..., 1].square()
            return self.instance_norm((self.mel.mel_scale(power) + 1e-6).log())


class SEBasicBlock(nn.Module):
    """conv3×3(stride) → ReLU → BN → conv3×3 → BN → SE(8) → + shortcut → ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int | tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcitation(channels, reduction=8, bias=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                bn=nn.BatchNorm2d(channels),
            ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU before BN in the first conv: voxceleb_trainer's order.
        out = self.bn1(torch.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return torch.relu(out + self.shortcut(x))


class AttentivePooling(nn.Module):
    """Self-attentive pooling over time: h_t = tanh(W x_t + b), α = softmax_t(h_t·u), Σ_t α_t x_t."""

    def __init__(self, channels: int):
        super().__init__()
        self.projection = nn.Linear(channels, channels)
        self.context = nn.Parameter(torch.empty(channels, 1))
        nn.init.xavier_normal_(self.context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N×frames×C → N×C."""
        scores = torch.tanh(self.projection(x)) @ self.context
        return (x * torch.softmax(scores, dim=1)).sum(dim=1)


class VoiceEncoder(nn.Module):
    """Waveforms N×T (at `sample_rate`, the data's `dataset.sample_rate`; int16 scale) → embeddings N×D."""

    def __init__(self, layers: Sequence[int], filters: Sequence[int], n_mels: int, head_hidden: int,
                 embedding_dim: int, sample_rate: int):
        super().__init__()
        if len(layers) != 4 or len(filters) != 4:
            raise ValueError(f"models.voice.layers {list(layers)} and models.voice.filters {list(filters)} "
                             "must list four stages")
        self.front_end = LogMelFrontEnd(n_mels, sample_rate)
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(1, filters[0], 7, (2, 1), 3, bias=False),
            bn=nn.BatchNorm2d(filters[0]),
            relu=nn.ReLU(),
        ))
        stages, in_channels = OrderedDict(), filters[0]
        for index, (count, channels, stride) in enumerate(zip(layers, filters, [1, (2, 2), (2, 2), 1])):
            blocks = []
            for block in range(count):
                blocks.append(SEBasicBlock(in_channels, channels, stride if block == 0 else 1))
                in_channels = channels
            stages[f"stage{index + 1}"] = nn.Sequential(*blocks)
        self.body = nn.Sequential(stages)
        self.pooling = AttentivePooling(in_channels)
        self.head = ProjectionHead(in_channels, head_hidden, embedding_dim)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        features = self.body(self.stem(self.front_end(waves).unsqueeze(1)))  # N×C×mels'×frames
        return self.head(self.pooling(features.mean(dim=2).transpose(1, 2)))
