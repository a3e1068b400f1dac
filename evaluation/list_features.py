"""The embeddings of everything a split's lists name, for one checkpoint: read the lists, check the stores,
embed with the checkpoint's model and cache the features, or reuse a cache the same model made."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch

from config import require
from data.layout import resolve_keys, resolve_rows
from data.lists import DIRECTIONS, ListError, ListSpec, check_keys, list_path
from data.lmdb_store import AUDIO_STORE, FACE_STORE, LmdbStore
from data.provenance import file_digest, store_summary
from data.splits import key_labels, read_split, split_path
from evaluation.extraction import embed
from evaluation.features import Features, FeaturesError, check_embeddings, read_features, save_features_file
from models.settings import build_from_checkpoint
from utils.run_folder import config_to_dict, run_dir
from utils.distributed import device_of
from utils.errors import UserError


class MissingCheckpoint(UserError, FileNotFoundError):
    """The checkpoint to evaluate does not exist."""


def checkpoint_of(cfg) -> str:
    """testing.checkpoint, by default the run's checkpoint_best.pth.tar; it must exist."""
    path = cfg.testing.checkpoint or os.path.join(run_dir(cfg), "checkpoint_best.pth.tar")
    if not os.path.isfile(path):
        raise MissingCheckpoint(f"checkpoint not found: {path}; set the config key testing.checkpoint "
                                f"(or --opts testing.checkpoint=PATH) to the checkpoint to evaluate")
    return path


def provenance(cfg, checkpoint: str, explicit: Sequence[str] = ()) -> dict:
    """What embeddings depend on: the checkpoint's content (sha256), the config of model and inputs, and which
    model settings are taken from the config rather than the checkpoint (`explicit`, models/settings.py).

    The path is recorded for the messages only: the same bytes elsewhere make the same embeddings.
    """
    return json.loads(json.dumps({  # as a features file reads it back (tuples are lists)
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": file_digest(checkpoint)[1],  # content, not size and time
        "stores": {name: store_summary(os.path.join(cfg.dataset.lmdb_dir, name)) for name in (AUDIO_STORE, FACE_STORE)},
        "config": {"split": cfg.testing.split, "models": config_to_dict(cfg.models),
                   "dataset": {k: cfg.dataset[k] for k in ("lmdb_dir", "image_size", "store_image_size",
                                                           "sample_rate", "clip_seconds")}},
        "model_settings_from_config": sorted(explicit),
    }))


def reusable_cache(path: str, source: dict, keys: set[str]) -> Features | None:
    """The cached features if they were made by `source` and cover `keys`; otherwise None, saying why."""
    if not os.path.isfile(path):
        return None
    try:
        features = read_features(path)
    except FeaturesError as e:  # never trusted, never unpickled: replaced by the features extracted now
        print(f"not reusing {e}; extracting again")
        return None
    old = features.source
    changed = sorted(k for k in source if k != "checkpoint" and old and old.get(k) != source[k])
    if not old:
        reason = "it does not record the checkpoint that produced it (evaluate it as is with --features)"
    elif changed:
        reason = (f"it was extracted by {old.get('checkpoint')} (sha256 {str(old.get('checkpoint_sha256'))[:12]}); "
                  f"now {source['checkpoint']} (sha256 {source['checkpoint_sha256'][:12]}); "
                  f"differs in: {', '.join(changed)}")
    elif not keys <= features.name2row.keys():
        reason = f"it lacks {len(keys - features.name2row.keys())} of the files the lists name"
    else:
        print(f"reusing the features in {path} (extracted by {old['checkpoint']}, the same content)")
        return features
    print(f"not reusing {path}: {reason}; extracting again")
    return None


def read_lists(list_dir: str, lists: list[ListSpec]) -> dict[str, np.ndarray | list[np.ndarray]]:
    """The keys of every list by name, read and shape-checked as the evaluation reads them."""
    return {t.name: t.read_keys(list_path(list_dir, t.name)) for t in lists}


def files_by_modality(lists: list[ListSpec], keys: dict[str, np.ndarray | list[np.ndarray]]) -> dict[str, list[str]]:
    """Every file the lists name, by modality (the query column/line is the direction's first modality)."""
    files: dict[str, set[str]] = {"voice": set(), "face": set()}
    for t in lists:
        query, candidate = DIRECTIONS[t.direction]
        rows = keys[t.name]
        queries, candidates = (rows[0], rows[1]) if t.task == "retrieval" else (rows[:, 0], rows[:, 1:].ravel())
        files[query].update(queries.tolist())
        files[candidate].update(candidates.tolist())
    return {m: sorted(f) for m, f in files.items()}


def check_stores(cfg, lists: list[ListSpec], keys: dict[str, np.ndarray | list[np.ndarray]]) -> None:
    """Every file the lists name is in the stores, in either name form (before any embedding): else name the
    list, line and key."""
    identities = read_split(cfg.dataset.list_dir, cfg.testing.split)
    stores = [LmdbStore(os.path.join(cfg.dataset.lmdb_dir, name)) for name in (AUDIO_STORE, FACE_STORE)]
    known = np.concatenate([np.asarray(s.keys(), dtype=str) for s in stores])
    for t in lists:
        check_keys(list_path(cfg.dataset.list_dir, t.name), resolve_rows(keys[t.name], known, identities), *stores)


def identities_of(cfg, keys: list[str]) -> tuple[list[int], list[str]]:
    """Identity (index in the split) and gender of every file, from its first path part."""
    identities = read_split(cfg.dataset.list_dir, cfg.testing.split)
    try:
        labels = key_labels(keys, identities).tolist()
    except KeyError as e:
        raise ListError(f"{e.args[0]}: {split_path(cfg.dataset.list_dir, cfg.testing.split)}") from None
    return labels, [identities[i].gender for i in labels]


def store_keys(cfg, files: dict[str, list[str]]) -> dict[str, list[str]]:
    """The store key of every list key, by modality (data/layout.py: either name form resolves)."""
    identities = read_split(cfg.dataset.list_dir, cfg.testing.split)
    stores = {"voice": AUDIO_STORE, "face": FACE_STORE}
    return {m: resolve_keys(keys, LmdbStore(os.path.join(cfg.dataset.lmdb_dir, stores[m])).keys(),
                            identities).tolist() for m, keys in files.items()}


def extract_features(cfg, checkpoint: str, files: dict[str, list[str]], source: dict, path: str) -> Features:
    """Embed `files` (by modality) with the checkpoint's model; cache them at `path`.

    The model has the checkpoint's settings but those `source` says come from the config, and the sample rate
    (the stores hold the audio at the config's)."""
    keys = files["voice"] + files["face"]
    ids, genders = identities_of(cfg, keys)
    device = device_of(cfg.device)
    explicit = [*source["model_settings_from_config"], "dataset.sample_rate"]
    model, cfg, _ = build_from_checkpoint(cfg, checkpoint, explicit)
    model.to(device).eval()
    stored = store_keys(cfg, files)  # the lists' keys, or their other name form where the store has that
    embeddings = torch.cat([embed(model, cfg, stored[m], m, device) for m in ("voice", "face")])
    check_embeddings(keys, embeddings.numpy(), f"the model of {checkpoint}")
    save_features_file(path, keys, embeddings, ids, genders, source)
    print(f"features of {len(keys)} files saved to {path}")
    return Features(dict(zip(keys, range(len(keys)))), embeddings.numpy(), np.array(ids, np.int64), source)


def model_features(cfg, lists: list[ListSpec], checkpoint: str, explicit: Sequence[str] = ()) -> Features:
    """The embeddings of the checkpoint's model: the cache when it is the same model's, else extracted.

    The model is built with the checkpoint's settings, except the `explicit` keys (models/settings.py).
    """
    require(cfg, "dataset.lmdb_dir")
    path = cfg.testing.extracted_features_path or os.path.join(run_dir(cfg), f"features_{cfg.testing.split}.npz")
    source = provenance(cfg, checkpoint, explicit)
    keys = read_lists(cfg.dataset.list_dir, lists)
    files = files_by_modality(lists, keys)
    cached = reusable_cache(path, source, set(files["voice"]) | set(files["face"]))
    if cached is not None:
        return cached
    check_stores(cfg, lists, keys)
    return extract_features(cfg, checkpoint, files, source, path)
