"""Your own recordings and photos, read exactly as `data.prepare` stores the corpus.

A voice goes through the audio store's encoder (channel 0, resampled to `dataset.sample_rate`,
the first `dataset.clip_seconds`), a photo through the face store's (upright by its EXIF
orientation, 3 channels, the optional `dataset.store_image_size` resize and JPEG), so a file of
the corpus gives the very array the store holds; the evaluation transform then makes it the
encoders' input. Anything that cannot be used raises BadInput with the reason.
"""
from __future__ import annotations

import os

import numpy as np
from easydict import EasyDict
from PIL import Image

from data.datasets import clip_samples
from data.face_crop import crop_face, detect_face
from data.lmdb_store import BadInput, decode_audio, image_of_bytes, load_image_file, resized_jpeg

# File names the --pairs lists may use: what libsndfile reads, what Pillow knows as an image.
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                  ".snd", ".caf", ".w64", ".rf64")
IMAGE_SUFFIXES = tuple(Image.registered_extensions())


def modality_of(path: str) -> str | None:
    """'voice' or 'face' by the file name's suffix; None for neither."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in AUDIO_SUFFIXES:
        return "voice"
    return "face" if suffix in IMAGE_SUFFIXES else None


def read_voice(path: str, cfg: EasyDict) -> np.ndarray:
    """int16 clip (at most clip_seconds at the config's rate) as the audio store holds it."""
    return decode_audio(path, cfg.dataset.sample_rate, clip_samples(cfg))[0]


def read_face(path: str, cfg: EasyDict, detect: bool = False) -> np.ndarray:
    """BGR uint8 image as the face store holds it; with `detect`, of the face cropped from the photo."""
    _, image = load_image_file(path)
    if detect:
        box = detect_face(image)
        if box is None:
            raise BadInput(path, "no face found")
        image = crop_face(image, box)
    size = cfg.dataset.store_image_size
    return image if size is None else image_of_bytes(resized_jpeg(image, size))
