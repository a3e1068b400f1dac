"""One command from raw data to everything training and testing read; safe to run again.

    python -m data.prepare --cfg CFG [--opts key=value ...]

1. the synthetic corpus, when `dataset.synthetic.root` is set and the corpus is not there;
2. the split CSVs `vox1_{train,val,test}.csv` in `dataset.list_dir` (kept if they exist);
3. the LMDB stores `audio.lmdb` and `face.lmdb` in `dataset.lmdb_dir` (resumed / updated);
4. every evaluation list of the validation and test splits (lists that exist are kept).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import numpy as np
from easydict import EasyDict
from tqdm import tqdm

from data.lists import check_keys, list_names, list_path, unlistable_reason, write_lists
from data.lmdb_store import (AUDIO_STORE, FACE_STORE, NOTES_FILE, SKIPPED_FILE, LmdbStore, MissingKeyError,
                             build_store, encode_audio, encode_image, store_is_current)
from data.splits import (SPLITS, Identity, assign_splits, read_meta, read_split, read_split_file,
                         select_keys, split_of_ranges, split_path, write_split)
from utils.errors import UserError
from utils.metrics import ListError
from utils.protocol import evaluation_lists

AUDIO_EXTENSIONS = (".wav",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
EVAL_SPLITS = ("val", "test")


def scan(root: str, folder: str, extensions: tuple[str, ...]) -> list[str] | None:
    """Sorted keys `folder/.../file` of the files under root/folder, or None if the folder is missing."""
    top = os.path.join(root, folder)
    if not os.path.isdir(top):
        return None
    keys = []
    for here, dirs, files in os.walk(top):
        dirs.sort()
        rel = os.path.relpath(here, root).replace(os.sep, "/")
        keys += [f"{rel}/{f}" for f in sorted(files) if f.lower().endswith(extensions)]
    return keys


class _Scanner:
    """Cached scans of identity folders (the split rule and the stores both need them).

    Files whose names the lists cannot carry are left out, with the reason, in `unlisted[folder]`.
    """

    def __init__(self, cfg: EasyDict):
        self.audio_dir, self.image_dir = cfg.dataset.audio_data_dir, cfg.dataset.image_data_dir
        self._cache: dict[str, list[str] | None] = {}
        self.unlisted: dict[str, list[tuple[str, str]]] = {}  # identity folder -> [(file, reason)]

    def _scan(self, root: str, folder: str, extensions: tuple[str, ...]) -> list[str] | None:
        path = os.path.join(root, folder)
        if path not in self._cache:
            keys = scan(root, folder, extensions)
            reasons = [unlistable_reason(k) for k in keys or ()]
            self.unlisted[path] = [(os.path.join(root, k), r) for k, r in zip(keys or (), reasons) if r]
            self._cache[path] = None if keys is None else [k for k, r in zip(keys, reasons) if not r]
        return self._cache[path]

    def voices(self, identity: Identity) -> list[str] | None:
        return self._scan(self.audio_dir, identity.vox_id, AUDIO_EXTENSIONS)

    def faces(self, identity: Identity) -> list[str] | None:
        return self._scan(self.image_dir, identity.vgg_id, IMAGE_EXTENSIONS)

    def scan_all(self, identities: list[Identity]) -> None:
        for identity in tqdm(identities, desc="scanning identity folders", unit="id"):
            self.voices(identity), self.faces(identity)


def _require(path: str, key: str) -> None:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"config key {key}: '{path}' not found")


def _store_params(cfg: EasyDict) -> dict[str, dict]:
    d = cfg.dataset
    return {
        AUDIO_STORE: {"kind": "audio", "sample_rate": d.sample_rate,
                      "max_samples": int(round(d.clip_seconds * d.sample_rate))},
        FACE_STORE: {"kind": "face", "store_image_size": d.store_image_size},
    }


def make_splits(cfg: EasyDict, scanner: _Scanner) -> dict[str, list[Identity]]:
    """Write the split CSVs that are missing; return the usable identities of each split."""
    d = cfg.dataset
    missing = [s for s in SPLITS if not os.path.exists(split_path(d.list_dir, s))]
    if missing:
        _require(d.meta_file, "dataset.meta_file")
        meta = read_meta(d.meta_file)
        if d.split_file:
            _require(d.split_file, "dataset.split_file")
            split_of = read_split_file(d.split_file)
        else:
            split_of = split_of_ranges(meta, d.split_ranges)
        _require(d.image_data_dir, "dataset.image_data_dir")
        _require(d.audio_data_dir, "dataset.audio_data_dir")
        scanner.scan_all([i for i in meta if i.vox_id in split_of])
        splits = assign_splits(meta, split_of, lambda i: bool(scanner.faces(i)) and bool(scanner.voices(i)))
        for split in missing:
            write_split(d.list_dir, split, splits[split])
            dropped = sum(i.set == "none" for i in splits[split])
            print(f"split {split}: {len(splits[split]) - dropped} identities ({dropped} without data marked none)"
                  f" -> {split_path(d.list_dir, split)}")
    return {s: read_split(d.list_dir, s) for s in SPLITS}


def make_stores(cfg: EasyDict, identities: list[Identity], scanner: _Scanner) -> None:
    """Build or update both LMDB stores from every file of the usable identities."""
    d = cfg.dataset
    os.makedirs(d.lmdb_dir, exist_ok=True)
    params = _store_params(cfg)
    workers = min(len(os.sched_getaffinity(0)), 8)
    scanner.scan_all(identities)
    jobs = [
        (AUDIO_STORE, d.audio_data_dir, scanner.voices, lambda i: i.vox_id,
         partial(encode_audio, sample_rate=d.sample_rate, max_samples=params[AUDIO_STORE]["max_samples"])),
        (FACE_STORE, d.image_data_dir, scanner.faces, lambda i: i.vgg_id,
         partial(encode_image, size=d.store_image_size)),
    ]
    for name, root, files_of, folder_of, encode in jobs:
        items, skipped = [], []
        for identity in identities:
            keys = files_of(identity)
            folder = os.path.join(root, folder_of(identity))
            skipped += scanner.unlisted.get(folder, [])
            if keys is None:
                skipped.append((folder, "identity folder missing"))
            elif not keys:
                skipped.append((folder, "identity folder holds no usable file"))
            items += [(k, os.path.join(root, k)) for k in keys or ()]
        path = os.path.join(d.lmdb_dir, name)
        report = build_store(path, items, encode, params[name], skipped, workers, desc=name)
        note = f", {len(report.skipped)} skipped (listed in {os.path.join(path, SKIPPED_FILE)})" if report.skipped else ""
        if report.notes:
            note += (f", {len(report.notes)} stored with a note such as clipped samples "
                     f"(listed in {os.path.join(path, NOTES_FILE)})")
        print(f"{name}: {report.stored} files{note}")


def make_lists(cfg: EasyDict, splits: dict[str, list[Identity]]) -> None:
    """Write the missing lists of the evaluation splits; check the existing ones against the stores."""
    d = cfg.dataset
    voices = LmdbStore(os.path.join(d.lmdb_dir, AUDIO_STORE))
    faces = LmdbStore(os.path.join(d.lmdb_dir, FACE_STORE))
    voice_keys, face_keys = np.array(voices.keys(), dtype=str), np.array(faces.keys(), dtype=str)
    for split in EVAL_SPLITS:
        identities = splits[split]
        existing = [t for t in evaluation_lists(split, d.match_n) if os.path.exists(list_path(d.list_dir, t.name))]
        written = write_lists(d.list_dir, split, identities, select_keys(voice_keys, identities),
                              select_keys(face_keys, identities), d.list_seed, d.match_n)
        for spec in existing:  # read as test.py reads them: a list it would reject fails here
            path = list_path(d.list_dir, spec.name)
            try:
                check_keys(path, spec.read_keys(path), voice_keys, face_keys)
            except (ListError, MissingKeyError) as e:
                raise type(e)(f"{e}; correct the list, or delete it to have data.prepare generate it") from None
        print(f"lists {split}: {len(written)} written, {len(existing)} kept (in {d.list_dir})")


def is_prepared(cfg: EasyDict) -> bool:
    """Split CSVs, both stores (built with the configured parameters) and every list exist."""
    d = cfg.dataset
    if not all(os.path.exists(split_path(d.list_dir, s)) for s in SPLITS):
        return False
    if not all(store_is_current(os.path.join(d.lmdb_dir, n), p) for n, p in _store_params(cfg).items()):
        return False
    return all(os.path.exists(list_path(d.list_dir, n)) for s in EVAL_SPLITS for n in list_names(s, d.match_n))


def prepare(cfg: EasyDict) -> None:
    """Steps 1-4 of the module docstring; each does nothing when its output is already there."""
    d = cfg.dataset
    start = time.time()
    if d.synthetic.root and not os.path.exists(os.path.join(d.synthetic.root, "vox1_meta.csv")):
        from data.synthetic import generate_corpus

        print(f"generating the synthetic corpus ({d.synthetic.identities} identities) in {d.synthetic.root}")
        generate_corpus(d.synthetic.root, d.synthetic.identities, d.synthetic.seed)
    scanner = _Scanner(cfg)
    splits = make_splits(cfg, scanner)
    make_stores(cfg, [i for s in SPLITS for i in splits[s]], scanner)
    make_lists(cfg, splits)
    print(f"data ready in {time.time() - start:.0f} s")


def main() -> None:
    from utils.config import load_config

    parser = argparse.ArgumentParser(description="Build splits, LMDB stores and evaluation lists.")
    parser.add_argument("--cfg", required=True, help="config YAML")
    parser.add_argument("--opts", nargs="*", default=[], help="key=value overrides")
    args = parser.parse_args()
    prepare(load_config(args.cfg, args.opts))


if __name__ == "__main__":
    try:
        main()
    except (UserError, FileNotFoundError) as error:
        sys.exit(f"data.prepare: {error}")
