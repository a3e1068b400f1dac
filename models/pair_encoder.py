"""Both images and both clips of a training batch through the encoders in one forward (what DDP wraps)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def cudnn_benchmark_off() -> Iterator[None]:
    """Every batch draws a new crop length, so autotuning would re-run for each of hundreds of shapes."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


class PairEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        m = self.model
        face, face_aux = m.encode_face(face), m.encode_face(face_aux)
        with cudnn_benchmark_off():
            return face, face_aux, m.encode_voice(voice), m.encode_voice(voice_aux)
