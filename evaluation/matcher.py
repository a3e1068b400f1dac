"""Voice-face matching on your own files with a trained model (ours or the authors' checkpoint).

    from evaluation.matcher import VoiceFaceMatcher   # or, from any folder: torch.hub.load(REPO, "voice_face_matcher",
                                                    #   source="local", checkpoint=PATH)  (hubconf.py)

    matcher = VoiceFaceMatcher.load("config/synthetic.yaml", "experiments/synthetic/checkpoint_best.pth.tar")
    voice = matcher.embed_voices(["clip.wav"])          # 1 x 128
    faces = matcher.embed_faces(["a.jpg", "b.png"])     # 2 x 128
    scores = matcher.match(voice[0], faces)             # the cosine of the voice with each face

Files are read as `data.prepare` stores the corpus and transformed as test.py evaluates it
(data/user_files.py), so a file of the corpus scores exactly as in the test lists. Besides paths, voices
may be (waveform, sample rate) pairs and faces RGB arrays (H x W x 3) or PIL images.

A config path that does not exist relative to the current folder is taken relative to the repository
root, where the shipped configs live; the relative paths inside a config are the repository root's too
(they are only needed to find `testing.checkpoint` and the corpus a checkpoint was trained on).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from easydict import EasyDict
from PIL import Image

from config import load_config
from data.datasets import clip_samples, eval_face, eval_voice
from data.lmdb_store import encode_or_reason
from data.user_files import face_of, face_of_image, image_array_of, voice_of, voice_of_array
from evaluation.extraction import embed_batches
from models.settings import build_from_checkpoint, explicit_settings
from utils.distributed import device_of
from utils.errors import UserError

MODALITIES = ("voice", "face")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_ROOT = "data_cache/synthetic"  # config/synthetic.yaml's dataset.synthetic.root
# A file path, a voice as (waveform, sample rate), a face as an RGB array or a PIL image.
Input = Union[str, os.PathLike, tuple, np.ndarray, Image.Image]


class UnusableFile(UserError, ValueError):
    """A file cannot be embedded; the message names it and says why."""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class Note:
    """Something about a usable file the scores depend on (repeated to length, which face was taken...)."""
    path: str
    note: str


class VoiceFaceMatcher:
    """The two encoders of a checkpoint, in evaluation mode, with the evaluation's input pipeline."""

    def __init__(self, model: torch.nn.Module, cfg: EasyDict, device: torch.device, detect_faces: bool = False,
                 synthetic_root: str | None = None):
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.detect_faces = detect_faces
        self.synthetic_root = synthetic_root  # the embedded corpus the weights were trained on, if they were

    @classmethod
    def load(cls, cfg: str | EasyDict, checkpoint: str, opts: Sequence[str] = (), device: str | None = None,
             detect_faces: bool = False, model_from_config: bool = False) -> VoiceFaceMatcher:
        """Encoders built from a config (a YAML path with `opts` overrides, or a loaded config), weights from
        `checkpoint` (ours or the released layout); `detect_faces` crops the largest face of each photo first.

        The encoders have the model settings the checkpoint records (models.*, dataset.sample_rate / image_size),
        except those `opts` set and, with `model_from_config`, all of them (models/settings.py).

        >>> matcher = VoiceFaceMatcher.load("config/synthetic.yaml", "experiments/synthetic/checkpoint_best.pth.tar")
        """
        if isinstance(cfg, (str, os.PathLike)):
            cfg = load_config(repository_path(cfg), list(opts))
        model, cfg, saved = build_from_checkpoint(cfg, checkpoint, explicit_settings(opts, model_from_config))
        return cls(model, cfg, device_of(device or cfg.device), detect_faces,
                   synthetic_training_corpus(saved, checkpoint))

    def read(self, inputs: Iterable[Input], modality: str, skipped: list[Skipped] | None = None,
             notes: list[Note] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array as the store would hold it) of each input, in order: int16 clips or BGR images.

        An input is a path, or a voice's (waveform, sample rate) / a face's RGB array or PIL image, named
        `<array k>` (k its position). An unusable one raises UnusableFile, or is appended to `skipped` and
        left out when a list is given; what the user should know about a usable one goes to `notes`.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        for position, given in enumerate(inputs):
            name, reader = self._reader(given, position, modality)
            _, array, reason = encode_or_reason(lambda _: reader(), (name, name))
            if array is not None:
                if notes is not None and reason:  # encode_or_reason's third value is the note of a usable file
                    notes.append(Note(name, reason))
                yield name, array
            elif skipped is None:
                raise UnusableFile(f"{name}: {reason}")
            else:
                skipped.append(Skipped(name, reason))

    def _reader(self, given: Input, position: int, modality: str):
        """(name, a function giving (array, note)) of one input of `read`."""
        if isinstance(given, (str, os.PathLike)):
            path = os.fspath(given)
            if modality == "voice":
                return path, lambda: voice_of(path, self.cfg)
            return path, lambda: face_of(path, self.cfg, self.detect_faces)
        name = f"<array {position}>"
        if modality == "voice":
            if not (isinstance(given, tuple) and len(given) == 2):
                raise TypeError(f"{name}: a voice is a file path or a (waveform, sample rate) pair, "
                                f"got {type(given).__name__}")
            return name, lambda: voice_of_array(name, given[0], given[1], self.cfg)
        return name, lambda: face_of_image(name, image_array_of(given), self.cfg, self.detect_faces)

    def training_note(self, inputs: Iterable[str]) -> str:
        """What a user must know before reading scores of files that are not of the synthetic corpus the weights
        were trained on ('' for weights trained on real people, or inputs all from that corpus)."""
        if self.synthetic_root is None:
            return ""
        roots = {os.path.realpath(os.path.join(base, self.synthetic_root)) for base in (os.getcwd(), REPOSITORY)}
        outside = [name for name in inputs
                   if not any(os.path.realpath(name).startswith(root + os.sep) for root in roots)]
        if not outside:
            return ""
        return ("this checkpoint was trained on the embedded synthetic corpus only: it has seen no real person, "
                f"and its scores of {len(outside)} file(s) from outside that corpus say nothing about real people "
                "(for a model of real ones, use the authors' checkpoint (config/authors_checkpoint.yaml) or train "
                "on VoxCeleb1 with config/cfg.yaml)")

    def embed_arrays(self, items: Iterable[tuple[str, np.ndarray]], modality: str) -> tuple[list[str], torch.Tensor]:
        """(paths, N x D embeddings) of the (path, array) pairs `read` yields, batched as test.py batches."""
        if modality == "voice":
            transform = partial(eval_voice, samples=clip_samples(self.cfg))
        else:
            transform = partial(eval_face, size=self.cfg.dataset.image_size)
        items = iter(items)

        def batches() -> Iterator[tuple[list[str], torch.Tensor]]:
            while chunk := list(islice(items, self.cfg.testing.batch_size)):
                yield [path for path, _ in chunk], torch.stack([transform(array) for _, array in chunk])

        paths, embeddings = embed_batches(self.model, batches(), modality, self.device, progress=False)
        return paths, embeddings if paths else torch.empty(0, self.cfg.models.embedding_dim)

    def embed_voices(self, paths: Sequence[Input], skipped: list[Skipped] | None = None) -> torch.Tensor:
        """N x D embeddings of audio or video files (what libsndfile or PyAV reads, any rate, mono or not, any
        length) or (waveform, sample rate) pairs.

        >>> matcher.embed_voices(["clip.wav", "other.flac"]).shape
        torch.Size([2, 128])
        """
        return self.embed_arrays(self.read(paths, "voice", skipped), "voice")[1]

    def embed_faces(self, paths: Sequence[Input], skipped: list[Skipped] | None = None) -> torch.Tensor:
        """N x D embeddings of photos (any size, EXIF orientation, grayscale, RGBA, CMYK, PNG...), RGB arrays
        (H x W x 3) or PIL images.

        >>> matcher.embed_faces(["a.jpg", "b.png"]).shape
        torch.Size([2, 128])
        """
        return self.embed_arrays(self.read(paths, "face", skipped), "face")[1]

    @staticmethod
    def match(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Cosine scores of a query (D, or Q x D) with candidates (M x D): M (or Q x M); higher = better match.

        >>> matcher.match(voice[0], faces).argmax()  # the face that goes best with the voice
        """
        return cosine_scores(query, candidates)


def cosine_scores(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """cos(query, candidate) for every candidate row: D x (M x D) -> M, Q x D x (M x D) -> Q x M."""
    unit = torch.nn.functional.normalize
    return unit(query.float(), dim=-1) @ unit(candidates.float(), dim=-1).T


def ranks_within(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each score among those of its group; ties keep the given order.

    `groups` labels each score with its group (a list line) and must be non-decreasing.
    """
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    starts = np.searchsorted(groups, groups)  # first position of each entry's group
    ranks = np.empty(len(scores), np.int64)
    ranks[order] = np.arange(len(scores)) - starts[order] + 1
    return ranks


def repository_path(path: str | os.PathLike) -> str:
    """`path` as given where it exists (or is absolute), else relative to the repository root."""
    path = os.fspath(path)
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(REPOSITORY, path)


def synthetic_training_corpus(checkpoint: dict, path: str) -> str | None:
    """The root of the embedded synthetic corpus the checkpoint's weights were trained on; None when they were not
    or nothing says so. The checkpoint's `training_data` record decides where it has one; else the `dataset`
    section of the config the checkpoint stores, else of the run folder's config.yaml beside it."""
    import yaml

    config = checkpoint.get("config")
    if not isinstance(config, dict):
        try:
            with open(os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")) as f:
                config = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            config = None
    synthetic = ((config or {}).get("dataset") or {}).get("synthetic") if isinstance(config, dict) else None
    root = synthetic.get("root") if isinstance(synthetic, dict) else None
    recorded = checkpoint.get("training_data")
    if recorded is None:
        return root
    corpus = str(recorded.get("corpus", "")) if isinstance(recorded, dict) else str(recorded)
    return (root or SYNTHETIC_ROOT) if "synthetic" in corpus else None
