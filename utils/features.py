"""Embeddings files in the released format (name2feat, name2id, name2gender) and their array form."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import torch

from utils import metrics

from utils.errors import UserError


class FeaturesError(UserError, ValueError):
    """A features file is missing or not in the released format."""


@dataclass
class Features:
    """Embeddings as arrays: row `name2row[key]` of `embeddings`, identity `ids[row]`."""

    name2row: dict[str, int]
    embeddings: np.ndarray  # (K, D) float32
    ids: np.ndarray  # (K,) int64
    source: dict = field(default_factory=dict)  # what produced them

    @functools.cached_property
    def unit(self) -> np.ndarray:
        return metrics.normalise(self.embeddings)


def load_features_file(path: str) -> dict:
    """A features file in the released format (plus our optional 'source' record)."""
    if not os.path.isfile(path):
        raise FeaturesError(f"features file not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"name2feat", "name2id", "name2gender"} - set(data if isinstance(data, dict) else ())
    if missing:
        raise FeaturesError(f"{path}: not a features file: it lacks {sorted(missing)} "
                            "(expected {'name2feat', 'name2id', 'name2gender'})")
    return data


def as_arrays(data: dict, path: str) -> Features:
    """Released-format dicts -> one embedding matrix, its row index and identities."""
    keys = list(data["name2feat"])
    if not keys:
        raise FeaturesError(f"{path}: the features file holds no embeddings")
    ids = np.fromiter(map(data["name2id"].get, keys, repeat(-1)), np.int64, len(keys))
    if (ids < 0).any():
        raise FeaturesError(f"{path}: '{keys[int(np.argmax(ids < 0))]}' has an embedding but no identity in name2id")
    embeddings = torch.stack(list(map(torch.as_tensor, data["name2feat"].values()))).float().reshape(len(keys), -1)
    embeddings = embeddings.numpy()
    return Features(dict(zip(keys, range(len(keys)))), embeddings, ids, data.get("source", {}))


def save_features_file(path: str, keys: list[str], embeddings: torch.Tensor, ids: list[int],
                       genders: list[str], source: dict) -> None:
    """Released format; the rows stay views of one tensor, so the file loads fast."""
    from utils.checkpoint import save_checkpoint  # atomic write

    save_checkpoint({"name2feat": dict(zip(keys, embeddings.unbind(0))), "name2id": dict(zip(keys, ids)),
                     "name2gender": dict(zip(keys, genders)), "source": source}, path)
