"""Embeddings files and their array form: the released format (name2feat, name2id, name2gender: one tensor per
file through torch's unpickler) and the compact one (`.npz`: a key list and one matrix, read without pickle)."""
from __future__ import annotations

import functools
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from evaluation import metrics
from utils.errors import UserError
from utils.files import atomic_write

if TYPE_CHECKING:
    import torch


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
    """A features file in the released format (plus our optional 'source' record), read as tensors and plain
    data only: a file holding code is refused unread."""
    from utils.checkpoint import safe_load  # torch: only the released format needs it

    if not os.path.isfile(path):
        raise FeaturesError(f"features file not found: {path}")
    data = safe_load(path, FeaturesError, "features file", unreadable="not a features file")
    missing = {"name2feat", "name2id", "name2gender"} - set(data if isinstance(data, dict) else ())
    if missing:
        raise FeaturesError(f"{path}: not a features file: it lacks {sorted(missing)} "
                            "(expected {'name2feat', 'name2id', 'name2gender'})")
    return data


def check_embeddings(keys: list[str], embeddings: np.ndarray, where: str) -> None:
    """A non-finite embedding is an error naming its file; embeddings all alike (all zero, say) make every score
    tie, so the values would mean nothing: a warning."""
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise FeaturesError(f"{where}: the embedding of '{keys[bad[0]]}' is not finite (NaN or inf; "
                            f"{len(bad)} of {len(keys)} files)")
    if len(keys) > 1 and (embeddings == embeddings[0]).all():
        print(f"warning: {where}: all {len(keys)} embeddings are the same vector"
              f"{' (all zero)' if not embeddings[0].any() else ''}: every score ties, the results mean nothing")


def as_arrays(data: dict, path: str) -> Features:
    """Released-format dicts -> one embedding matrix, its row index and identities."""
    keys = list(data["name2feat"])
    if not keys:
        raise FeaturesError(f"{path}: the features file holds no embeddings")
    ids = np.fromiter(map(data["name2id"].get, keys, repeat(-1)), np.int64, len(keys))
    if (ids < 0).any():
        raise FeaturesError(f"{path}: '{keys[int(np.argmax(ids < 0))]}' has an embedding but no identity in name2id")
    import torch

    embeddings = torch.stack(list(map(torch.as_tensor, data["name2feat"].values()))).float().reshape(len(keys), -1)
    embeddings = embeddings.numpy()
    check_embeddings(keys, embeddings, path)
    return Features(dict(zip(keys, range(len(keys)))), embeddings, ids, data.get("source", {}))


COMPACT_SUFFIX = ".npz"
COMPACT_ARRAYS = ("keys", "embeddings", "ids", "genders", "source")


def is_compact(path: str) -> bool:
    """The format follows the file name: `.npz` is the compact one, anything else the released one."""
    return path.endswith(COMPACT_SUFFIX)


def read_compact(path: str) -> Features:
    """A compact features file: arrays only (allow_pickle=False), checked for shape before use."""
    if not os.path.isfile(path):
        raise FeaturesError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(COMPACT_ARRAYS) - set(data.files))
            if missing:
                raise FeaturesError(f"{path}: not a compact features file: it lacks {missing}")
            keys, embeddings, ids = data["keys"], data["embeddings"], data["ids"]
            source = json.loads(str(data["source"]))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FeaturesError(f"{path}: not a readable compact features file ({type(e).__name__}: {e})") from None
    if (keys.ndim != 1 or not keys.size or embeddings.ndim != 2 or embeddings.shape[0] != keys.size
            or ids.shape != keys.shape or keys.dtype.kind != "U" or ids.dtype.kind not in "iu"
            or embeddings.dtype.kind != "f"):
        raise FeaturesError(f"{path}: malformed compact features file: keys {keys.shape} {keys.dtype}, embeddings "
                            f"{embeddings.shape} {embeddings.dtype}, ids {ids.shape} {ids.dtype}")
    names = keys.tolist()
    embeddings = embeddings.astype(np.float32, copy=False)
    check_embeddings(names, embeddings, path)
    return Features(dict(zip(names, range(len(names)))), embeddings, ids.astype(np.int64, copy=False),
                    source if isinstance(source, dict) else {})


def read_features(path: str) -> Features:
    """Either format, by its name (is_compact), as arrays."""
    return read_compact(path) if is_compact(path) else as_arrays(load_features_file(path), path)


def save_features_file(path: str, keys: list[str], embeddings: torch.Tensor, ids: list[int],
                       genders: list[str], source: dict) -> None:
    """Written atomically (utils/files.py): compact for a `.npz` path, else in the released format (its rows views
    of one tensor, so the file loads fast). Serialised in memory first, so that a full disk is a plain write error
    naming the path."""
    import torch

    buffer = io.BytesIO()
    if is_compact(path):
        np.savez(buffer, keys=np.array(keys, dtype=str), embeddings=embeddings.float().numpy(),
                 ids=np.asarray(ids, dtype=np.int64), genders=np.array(genders, dtype=str),
                 source=np.array(json.dumps(source)))
    else:
        torch.save({"name2feat": dict(zip(keys, embeddings.unbind(0))), "name2id": dict(zip(keys, ids)),
                    "name2gender": dict(zip(keys, genders)), "source": source}, buffer)
    with atomic_write(path, "wb") as f:
        f.write(buffer.getbuffer())
