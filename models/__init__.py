"""The two encoders of the voice-face association model, built from `cfg.models`."""
from __future__ import annotations

import torch
from easydict import EasyDict
from torch import nn

from config import DEFAULTS
from models.face import FaceEncoder
from models.voice import VoiceEncoder


class VoiceFaceModel(nn.Module):
    """Face and voice encoders into one D-dimensional space."""

    def __init__(self, face_encoder: FaceEncoder, voice_encoder: VoiceEncoder):
        super().__init__()
        self.face_encoder = face_encoder
        self.voice_encoder = voice_encoder

    def encode_face(self, images: torch.Tensor) -> torch.Tensor:
        """Images N×3×H×W float (BGR, 0–255) → N×D."""
        return self.face_encoder(images)

    def encode_voice(self, waves: torch.Tensor) -> torch.Tensor:
        """Waveforms N×T float (at the data's sample rate, int16 scale) → N×D."""
        return self.voice_encoder(waves)


def build_model(cfg_models: EasyDict, sample_rate: int = DEFAULTS["dataset"]["sample_rate"]) -> VoiceFaceModel:
    """The model described by `cfg.models` for clips at `sample_rate` (`cfg.dataset.sample_rate`), randomly
    initialised; reads no files."""
    face, voice = cfg_models.face, cfg_models.voice
    return VoiceFaceModel(
        FaceEncoder(face.units, face.widths, face.se, face.head_hidden, cfg_models.embedding_dim),
        VoiceEncoder(voice.layers, voice.filters, voice.n_mels, voice.head_hidden, cfg_models.embedding_dim,
                     sample_rate),
    )
