"""Your own recordings and photos, read exactly as `data.prepare` stores the corpus.

A voice goes through the audio store's encoder (channel 0, resampled to `dataset.sample_rate`,
the first `dataset.clip_seconds`), a photo through the face store's (upright by its EXIF
orientation, 3 channels, the optional `dataset.store_image_size` resize and JPEG), so a file of
the corpus gives the very array the store holds; the evaluation transform then makes it the
encoders' input. Anything that cannot be used raises BadInput with the reason.

Beyond the stores: what libsndfile cannot read (M4A/AAC, MP4, WEBM, video files: their first
audio track) is decoded by PyAV, whose wheel ships FFmpeg; a file over LARGE_AUDIO_BYTES is read
only as far as the clip needs; a clip in which silero-vad (its model ships in its wheel) hears no
speech is refused, as are devices, FIFOs, decompression bombs and photos too small to show a face.
"""
from __future__ import annotations

import math
import os
import stat
import warnings
from functools import cache

import numpy as np
import soundfile
from easydict import EasyDict
from PIL import Image, ImageOps

from data.datasets import clip_samples
from data.face_crop import crop_face, detect_face
from data.lmdb_store import BadInput, INTEGER_PCM, decode_audio, image_of_bytes, load_image_file, resized_jpeg, \
    store_clip

# File names the --pairs lists may use: what libsndfile or PyAV reads, what Pillow knows as an image.
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                  ".snd", ".caf", ".w64", ".rf64", ".m4a", ".aac", ".mp4", ".m4v", ".mov", ".webm", ".mkv", ".3gp",
                  ".wma", ".avi")
IMAGE_SUFFIXES = tuple(Image.registered_extensions())
LARGE_AUDIO_BYTES = 64 << 20  # larger files are read only as far as the clip needs (a 2-hour WAV is 690 MB)
MIN_SPEECH_SECONDS = 0.25  # shorter clips cannot hold a word
MIN_PHOTO_SIDE = 24  # px: smaller photos cannot show a face


def modality_of(path: str) -> str | None:
    """'voice' or 'face' by the file name's suffix; None for neither."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in AUDIO_SUFFIXES:
        return "voice"
    return "face" if suffix in IMAGE_SUFFIXES else None


def _check_regular(path: str) -> None:
    """A FIFO would block the reader and a device (/dev/zero) never ends: only regular files are read."""
    mode = os.stat(path).st_mode  # OSError (missing, no permission) is the caller's "cannot read"
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise BadInput(path, f"not a regular file ({kind})")


# ---------------------------------------------------------------- voices

def voice_of(path: str, cfg: EasyDict) -> tuple[np.ndarray, str]:
    """(int16 clip as the audio store holds it, a note for the user or '') of an audio or video file."""
    _check_regular(path)
    rate, samples = cfg.dataset.sample_rate, clip_samples(cfg)
    try:
        if os.path.getsize(path) > LARGE_AUDIO_BYTES:
            clip = _first_samples(path, rate, samples)
        else:
            clip = decode_audio(path, rate, samples)[0]
    except BadInput as e:
        if not e.reason.startswith("unreadable audio"):
            raise
        clip = _decoded_by_av(path, rate, samples, e.reason)
    return clip, speech_note(path, clip, cfg)


def voice_of_array(name: str, waveform: np.ndarray, sample_rate: int, cfg: EasyDict) -> tuple[np.ndarray, str]:
    """voice_of for samples in memory: int16, or floats in [-1, 1]; (samples,) or (samples, channels)."""
    waveform = np.asarray(waveform)
    if waveform.ndim not in (1, 2) or waveform.size == 0:
        raise BadInput(name, f"a waveform is (samples,) or (samples, channels), got shape {waveform.shape}")
    channel = waveform if waveform.ndim == 1 else waveform[:, 0]
    integer = waveform.dtype == np.int16
    clip = store_clip(name, channel if integer else channel.astype(np.float64), integer, int(sample_rate),
                      cfg.dataset.sample_rate, clip_samples(cfg))[0]
    return clip, speech_note(name, clip, cfg)


def _first_samples(path: str, rate: int, samples: int) -> np.ndarray:
    """decode_audio's clip of a large file, reading only the frames it needs (plus 1 s for the resampler)."""
    try:
        with soundfile.SoundFile(path) as sound:
            integer = sound.subtype in INTEGER_PCM
            needed = samples if integer and sound.samplerate == rate else \
                math.ceil(samples * sound.samplerate / rate) + sound.samplerate
            data = sound.read(needed, dtype="int16" if integer else "float64", always_2d=True)
            source_rate = sound.samplerate
    except Exception as e:
        raise BadInput(path, f"unreadable audio: {getattr(e, 'error_string', '') or e}") from None
    if data.shape[0] == 0:
        raise BadInput(path, "zero-length clip")
    return store_clip(path, data[:, 0], integer, source_rate, rate, samples)[0]


def _decoded_by_av(path: str, rate: int, samples: int, soundfile_reason: str) -> np.ndarray:
    """Channel 0 of the first audio track, decoded by PyAV (FFmpeg) only as far as the clip needs."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise BadInput(path, "holds no audio track")
            stream = container.streams.audio[0]
            planar = av.AudioResampler(format="fltp")  # float planes, the source's rate and channels
            chunks, have, needed, source_rate = [], 0, None, None
            for frame in container.decode(stream):
                for converted in planar.resample(frame):
                    source_rate = converted.sample_rate
                    needed = needed or math.ceil(samples * source_rate / rate) + source_rate
                    chunks.append(converted.to_ndarray()[0])
                    have += chunks[-1].shape[0]
                if needed and have >= needed:
                    break
    except BadInput:
        raise
    except Exception as e:  # FFmpeg says why; the soundfile reason is the one for the formats the stores read
        raise BadInput(path, f"{soundfile_reason} (nor can PyAV decode it: {e})") from None
    if not have:
        raise BadInput(path, "zero-length clip")
    return store_clip(path, np.concatenate(chunks).astype(np.float64), False, source_rate, rate, samples)[0]


@cache
def _voice_activity_model():
    import torch
    from silero_vad import load_silero_vad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation, not ours to act on
        model = load_silero_vad()
    return model, torch


def speech_note(name: str, clip: np.ndarray, cfg: EasyDict) -> str:
    """Refuse a clip too short or without speech (silero-vad); else say when it is repeated to the model's length."""
    rate, seconds = cfg.dataset.sample_rate, len(clip) / cfg.dataset.sample_rate
    if seconds < MIN_SPEECH_SECONDS:
        raise BadInput(name, f"too short: {len(clip)} samples ({seconds:.3f} s), at least {MIN_SPEECH_SECONDS} s "
                             "are needed to hold speech")
    from silero_vad import get_speech_timestamps

    model, torch = _voice_activity_model()
    at_16k = clip if rate == 16000 else _resampled(clip, rate)  # silero-vad hears 8 or 16 kHz
    if not get_speech_timestamps(torch.from_numpy(at_16k.astype(np.float32) / 32768), model, sampling_rate=16000):
        raise BadInput(name, "no speech found (silero-vad hears none)")
    total = clip_samples(cfg)
    if len(clip) < total:
        return f"{seconds:.2f} s long: repeated to the {total / rate:g} s the model hears"
    return ""


def _resampled(clip: np.ndarray, rate: int) -> np.ndarray:
    import librosa

    return librosa.resample(clip.astype(np.float32), orig_sr=rate, target_sr=16000)


# ---------------------------------------------------------------- faces

def face_of(path: str, cfg: EasyDict, detect: bool = False) -> tuple[np.ndarray, str]:
    """(BGR uint8 image as the face store holds it, a note or ''); with `detect`, of the face cropped from it."""
    _check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in one line
            with Image.open(path) as probe:
                width, height = probe.size
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow will not even open it
        raise BadInput(path, f"{e}; refused") from None
    except Exception:
        width = height = None  # load_image_file names what is wrong with it
    limit = Image.MAX_IMAGE_PIXELS  # None where the user has lifted it
    if width and limit and width * height > limit:
        raise BadInput(path, f"{width}×{height} pixels is over Pillow's limit of {limit} "
                             "(a decompression bomb?); refused")
    return face_of_image(path, load_image_file(path)[1], cfg, detect)


def face_of_image(name: str, image: np.ndarray, cfg: EasyDict, detect: bool = False) -> tuple[np.ndarray, str]:
    """face_of for a decoded upright BGR image."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_PHOTO_SIDE:
        raise BadInput(name, f"{width}×{height} pixels is too small to show a face (at least {MIN_PHOTO_SIDE} px "
                             "a side)")
    note = ""
    if detect:
        found = detect_face(image)
        if not found.faces:
            raise BadInput(name, "no face found")
        image, note = crop_face(found.image, found.faces[0].box), found.note
    size = cfg.dataset.store_image_size
    return (image if size is None else image_of_bytes(resized_jpeg(image, size))), note


def image_array_of(picture) -> np.ndarray:
    """BGR uint8 of a PIL image (EXIF orientation applied) or an RGB(A) / gray uint8 array (H x W [x 1|3|4])."""
    if isinstance(picture, Image.Image):
        picture = np.asarray(ImageOps.exif_transpose(picture).convert("RGB"))
    picture = np.asarray(picture)
    channels = picture.shape[2] if picture.ndim == 3 else 1
    if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise ValueError(f"an image is a uint8 array H x W, H x W x 3 (RGB) or H x W x 4, got {picture.dtype} "
                         f"{picture.shape}")
    if channels == 1:
        picture = np.repeat(picture.reshape(*picture.shape[:2], 1), 3, axis=2)
    return np.ascontiguousarray(picture[..., 2::-1])


def read_voice(path: str, cfg: EasyDict) -> np.ndarray:
    """int16 clip (at most clip_seconds at the config's rate) as the audio store holds it."""
    return voice_of(path, cfg)[0]


def read_face(path: str, cfg: EasyDict, detect: bool = False) -> np.ndarray:
    """BGR uint8 image as the face store holds it; with `detect`, of the face cropped from the photo."""
    return face_of(path, cfg, detect)[0]
