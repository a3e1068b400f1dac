"""Both images and both clips of a training batch through the encoders in one forward (what DDP wraps)."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


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
    """With `compile_face` (training.compile), the face encoder's training forward runs through torch.compile:
    its input size is fixed, so it compiles once (the voice crops vary in length; that encoder stays eager).
    The module itself is not replaced, so checkpoints keep their keys. Where compiling fails (no C++ compiler
    on a CPU machine, say), the first call says so in one line and the encoder runs eagerly."""

    def __init__(self, model: nn.Module, compile_face: bool = False):
        super().__init__()
        self.model = model
        self._compiled_face: Callable | None = torch.compile(model.encode_face) if compile_face else None
        self._face_checked = not compile_face

    def encode_face(self, images: torch.Tensor) -> torch.Tensor:
        if self._compiled_face is None:
            return self.model.encode_face(images)
        if self._face_checked:
            return self._compiled_face(images)
        try:  # the first call compiles; a failure there leaves the module untouched
            embeddings = self._compiled_face(images)
        except Exception as e:
            embeddings = self.model.encode_face(images)  # an error of the model itself raises here
            self._compiled_face = None
            log.warning("training.compile: torch.compile failed (%s: %s); the face encoder runs eagerly",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        self._face_checked = True
        return embeddings

    def forward(self, face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        m = self.model
        face, face_aux = self.encode_face(face), self.encode_face(face_aux)
        with cudnn_benchmark_off():
            return face, face_aux, m.encode_voice(voice), m.encode_voice(voice_aux)
