"""Voice-face matching on your own files with a trained model (ours or the authors' checkpoint).

    from utils.inference import VoiceFaceMatcher

    matcher = VoiceFaceMatcher.load("config/synthetic.yaml", "experiments/synthetic/checkpoint_best.pth.tar")
    voice = matcher.embed_voices(["clip.wav"])          # 1 x 128
    faces = matcher.embed_faces(["a.jpg", "b.png"])     # 2 x 128
    scores = matcher.match(voice[0], faces)             # the cosine of the voice with each face

Files are read as `data.prepare` stores the corpus and transformed as test.py evaluates it
(data/user_files.py), so a file of the corpus scores exactly as in the test lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from easydict import EasyDict

from data.datasets import clip_samples, eval_face, eval_voice
from data.lmdb_store import encode_or_reason
from data.user_files import read_face, read_voice
from utils.errors import UserError

MODALITIES = ("voice", "face")


class UnusableFile(UserError, ValueError):
    """A file cannot be embedded; the message names it and says why."""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class VoiceFaceMatcher:
    """The two encoders of a checkpoint, in evaluation mode, with the evaluation's input pipeline."""

    def __init__(self, model: torch.nn.Module, cfg: EasyDict, device: torch.device, detect_faces: bool = False):
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.detect_faces = detect_faces

    @classmethod
    def load(cls, cfg: str | EasyDict, checkpoint: str, opts: Sequence[str] = (), device: str | None = None,
             detect_faces: bool = False, model_from_config: bool = False) -> VoiceFaceMatcher:
        """Encoders built from a config (a YAML path with `opts` overrides, or a loaded config), weights from
        `checkpoint` (ours or the released layout); `detect_faces` crops the largest face of each photo first.

        The encoders have the model settings the checkpoint records (models.*, dataset.sample_rate / image_size),
        except those `opts` set and, with `model_from_config`, all of them (utils/model_settings.py).

        >>> matcher = VoiceFaceMatcher.load("config/synthetic.yaml", "experiments/synthetic/checkpoint_best.pth.tar")
        """
        from utils.config import load_config
        from utils.distributed import device_of
        from utils.model_settings import build_from_checkpoint, explicit_settings

        if isinstance(cfg, str):
            cfg = load_config(cfg, list(opts))
        model, cfg = build_from_checkpoint(cfg, checkpoint, explicit_settings(opts, model_from_config))
        return cls(model, cfg, device_of(device or cfg.device), detect_faces)

    def read(self, paths: Iterable[str], modality: str, skipped: list[Skipped] | None = None
             ) -> Iterator[tuple[str, np.ndarray]]:
        """(path, array as the store would hold it) of each file, in order: int16 clips or BGR images.

        A file that cannot be used raises UnusableFile, or is appended to `skipped` and left out when
        a list is given.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        reader = (partial(read_voice, cfg=self.cfg) if modality == "voice"
                  else partial(read_face, cfg=self.cfg, detect=self.detect_faces))
        for path in paths:
            _, array, reason = encode_or_reason(lambda p: (reader(p), ""), (path, path))
            if array is not None:
                yield path, array
            elif skipped is None:
                raise UnusableFile(f"{path}: {reason}")
            else:
                skipped.append(Skipped(path, reason))

    def embed_arrays(self, items: Iterable[tuple[str, np.ndarray]], modality: str) -> tuple[list[str], torch.Tensor]:
        """(paths, N x D embeddings) of the (path, array) pairs `read` yields, batched as test.py batches."""
        from utils.evaluation import embed_batches

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

    def embed_voices(self, paths: Sequence[str], skipped: list[Skipped] | None = None) -> torch.Tensor:
        """N x D embeddings of audio files (any format libsndfile reads, any rate, mono or not, any length).

        >>> matcher.embed_voices(["clip.wav", "other.flac"]).shape
        torch.Size([2, 128])
        """
        return self.embed_arrays(self.read(paths, "voice", skipped), "voice")[1]

    def embed_faces(self, paths: Sequence[str], skipped: list[Skipped] | None = None) -> torch.Tensor:
        """N x D embeddings of photos (any size, EXIF orientation, grayscale, RGBA, CMYK, PNG...).

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
