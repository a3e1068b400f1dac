"""`python -m data.prepare --cfg CFG --check`: what the raw data holds, what a run would miss; writes nothing.

Per split: identities (usable / none), clips, images, the files the build would skip and why, the
sample rates and channel counts of the clips, the lists present and whether every file they name is
in the data. With the VoxCeleb1 ID ranges of config/cfg.yaml it compares the counts with the paper's
split. Files are checked from their headers (the build decodes them fully, so it may skip a few more).
"""
from __future__ import annotations

import os
from collections import Counter
from multiprocessing import Pool

import numpy as np
import soundfile
from easydict import EasyDict
from PIL import Image

from data.datasets import store_params
from data.layout import FACE, VOICE, as_store_keys, resolve_keys
from data.lists import EVAL_SPLITS, ListError, evaluation_lists, list_path
from data.lmdb_store import settings_mismatch, verify_store
from data.scan import IdentityScanner
from data.splits import (SPLITS, UNUSABLE, Identity, assign_splits, read_meta, read_split_file, split_of_ranges,
                         split_path)
VOXCELEB1_RANGES = {"val": ["id10001", "id10116"], "test": ["id10117", "id10309"], "train": ["id10310", "id11251"]}
PAPER_IDENTITIES = {"train": 924, "val": 112, "test": 189}
PAPER_FILES = {"test": (21850, 20076)}  # (clips, images)
PAPER_QUERIES = {"match_v2f_2_val": 14182}
LINES_PER_QUERY = 3


def probe_audio(path: str) -> tuple[int, int, str]:
    """(sample rate, channels, why the build would skip it or '') from the file's header."""
    try:
        info = soundfile.info(path)
    except Exception as e:  # libsndfile says why
        return 0, 0, f"unreadable audio: {str(e).splitlines()[0]}"
    return info.samplerate, info.channels, "zero-length clip" if info.frames == 0 else ""


def probe_image(path: str) -> str:
    """Why the build would skip an image, or ''."""
    try:
        if os.path.getsize(path) == 0:
            return "empty image file"
        with Image.open(path) as image:
            image.verify()
    except Exception as e:
        return f"unreadable image: {e}"
    return ""


def _split_identities(cfg: EasyDict, splits: tuple[str, ...], scanner: IdentityScanner, problems: list[str]
                      ) -> dict[str, list[Identity]]:
    """Every identity of each split with its Set (`none` when it lacks data): the CSV when it exists,
    else what data.prepare would write."""
    d = cfg.dataset
    found = {s: read_meta(split_path(d.list_dir, s)) for s in splits if os.path.exists(split_path(d.list_dir, s))}
    if len(found) < len(splits):
        if not d.meta_file or not os.path.isfile(d.meta_file):
            problems.append(f"config key dataset.meta_file: '{d.meta_file}' not found (needed to write the split CSVs)")
            return {s: found.get(s, []) for s in splits}
        meta = read_meta(d.meta_file)
        split_of = read_split_file(d.split_file) if d.split_file else split_of_ranges(meta, d.split_ranges)
        split_of = {v: s for v, s in split_of.items() if s in splits and s not in found}
        computed = assign_splits(meta, split_of, lambda i: bool(scanner.faces(i)) and bool(scanner.voices(i)))
        found.update({s: computed[s] for s in splits if s not in found})
    return found


def _probe_all(paths: list[str], probe, workers: int) -> list:
    if workers > 1 and len(paths) > 256:
        with Pool(workers) as pool:
            return pool.map(probe, paths, chunksize=64)
    return list(map(probe, paths))


def _report_split(cfg: EasyDict, split: str, identities: list[Identity], scanner: IdentityScanner, workers: int,
                  problems: list[str], counts: dict) -> np.ndarray:
    """Print one split's report; returns the keys of its usable files in the stores' form."""
    usable = [i for i in identities if i.set != UNUSABLE]
    print(f"\n[{split}] {len(usable)} usable identities, {len(identities) - len(usable)} marked none")
    files, forms, folders_missing = {VOICE: [], FACE: []}, Counter(), []
    keys = []
    for identity in usable:
        for modality in (VOICE, FACE):
            folder, disk_keys = scanner.found(identity, modality)
            if not disk_keys:
                folders_missing.append(f"{modality} folder of {identity.vox_id} / {identity.vgg_id} "
                                       f"{'missing' if folder is None else 'holds no usable file'}")
                continue
            if modality == VOICE:
                forms["by VoxCeleb1 ID" if folder == identity.vox_id else "by VGGFace name"] += 1
            files[modality] += [os.path.join(scanner.roots[modality], k) for k in disk_keys]
            keys += as_store_keys(disk_keys, folder, identity, modality)
    audio = _probe_all(files[VOICE], probe_audio, workers)
    images = _probe_all(files[FACE], probe_image, workers)
    skipped = [(p, r) for p, (_, _, r) in zip(files[VOICE], audio) if r] + \
              [(p, r) for p, r in zip(files[FACE], images) if r]
    counts[split] = (len(usable), len(files[VOICE]), len(files[FACE]))
    print(f"  clips: {len(files[VOICE])}, images: {len(files[FACE])}; audio folders: "
          + (", ".join(f"{n} {form}" for form, n in sorted(forms.items())) or "none"))
    rates = Counter(rate for rate, _, reason in audio if not reason)
    channels = Counter(c for _, c, reason in audio if not reason)
    print("  sample rates: " + (", ".join(f"{r} Hz: {n}" for r, n in sorted(rates.items())) or "none")
          + (f" (resampled to {cfg.dataset.sample_rate} Hz when packed)" if set(rates) - {cfg.dataset.sample_rate}
             else ""))
    print("  channels: " + (", ".join(f"{c}: {n}" for c, n in sorted(channels.items())) or "none")
          + (" (the first channel is used)" if set(channels) - {1} else ""))
    for problem in folders_missing[:5]:
        print(f"  MISSING {problem}")
    if folders_missing:
        problems.append(f"{split}: {len(folders_missing)} folders of usable identities missing or empty")
    print(f"  files the build would skip: {len(skipped)}"
          + "".join(f"\n    {p}: {r}" for p, r in skipped[:10]) + (f"\n    ... ({len(skipped)} in all)"
                                                                     if len(skipped) > 10 else ""))
    if usable and not (files[VOICE] and files[FACE]):
        problems.append(f"{split}: no usable clip or image")
    elif not usable:
        problems.append(f"{split}: no usable identity")
    return np.array(keys, dtype=str)


def _report_lists(cfg: EasyDict, split: str, identities: list[Identity], keys: np.ndarray, problems: list[str],
                  queries: dict) -> None:
    d = cfg.dataset
    for spec in evaluation_lists(split, d.match_n):
        name, path = spec.name, list_path(d.list_dir, spec.name)
        if not os.path.exists(path):
            print(f"  list {name}: absent (data.prepare writes it)")
            continue
        try:
            rows = spec.read_keys(path)  # as test.py reads it
        except ListError as e:
            print(f"  list {name}: unreadable: {e}")
            problems.append(str(e))
            continue
        tokens = rows.ravel() if isinstance(rows, np.ndarray) else np.concatenate(rows)
        missing = np.unique(tokens[~np.isin(resolve_keys(tokens, keys, identities), keys)])
        lines = len(rows)
        if name.startswith(("match", "verify")):
            queries[name] = lines // LINES_PER_QUERY
        state = "every file it names is in the data" if not len(missing) else \
            f"{len(missing)} files it names are not in the data (first: {missing[0]})"
        print(f"  list {name}: {lines} lines, {state}")
        if len(missing):
            problems.append(f"{path}: {len(missing)} files it names are not in the data")


def _compare_with_paper(counts: dict, queries: dict) -> None:
    print("\ncompared with the paper's split (VoxCeleb1 ID ranges):")
    for split, (identities, clips, images) in counts.items():
        expected = [("identities", identities, PAPER_IDENTITIES[split])]
        if split in PAPER_FILES:
            expected += [("clips", clips, PAPER_FILES[split][0]), ("images", images, PAPER_FILES[split][1])]
        for what, have, paper in expected:
            print(f"  {split} {what}: {have}" + (" (as in the paper)" if have == paper
                                                 else f", the paper has {paper} ({have - paper:+d})"))
    for name, paper in PAPER_QUERIES.items():
        if name in queries:
            have = queries[name]
            print(f"  {name} queries: {have}" + (" (as in the paper)" if have == paper
                                                 else f", the paper's list has {paper} ({have - paper:+d})"))


def _report_stores(cfg: EasyDict, problems: list[str]) -> None:
    """Each built store: settings as the config's, and every value as when it was built (reads it all)."""
    print()
    for name, params in store_params(cfg).items():
        path = os.path.join(cfg.dataset.lmdb_dir, name)
        if not os.path.exists(os.path.join(path, "data.mdb")):
            print(f"store {name}: absent (data.prepare builds it)")
            continue
        damage = verify_store(path)
        problem = f"LMDB store {path} is damaged ({damage}); run data.prepare to rebuild it" if damage else None
        mismatch = settings_mismatch(path, params)
        problem = problem or (str(mismatch) if mismatch else None)
        print(f"store {name}: " + (problem or "intact, built with the config's settings"))
        if problem:
            problems.append(problem)


def check(cfg: EasyDict, splits: tuple[str, ...] = SPLITS) -> bool:
    """Print the report of `splits`; True when nothing a run needs is missing."""
    d = cfg.dataset
    problems: list[str] = []
    for key in ("audio_data_dir", "image_data_dir"):
        if not d[key] or not os.path.isdir(d[key]):
            problems.append(f"config key dataset.{key}: '{d[key]}' not found")
    if problems:
        print("\n".join(f"MISSING {p}" for p in problems))
        return False
    scanner = IdentityScanner(cfg)
    identities = _split_identities(cfg, splits, scanner, problems)
    workers = min(len(os.sched_getaffinity(0)), 8)
    counts, queries = {}, {}
    for split in splits:
        keys = _report_split(cfg, split, identities[split], scanner, workers, problems, counts)
        if split in EVAL_SPLITS:
            usable = [i for i in identities[split] if i.set != UNUSABLE]
            _report_lists(cfg, split, usable, keys, problems, queries)
    _report_stores(cfg, problems)
    if not d.split_file and {k: list(v) for k, v in d.split_ranges.items()} == VOXCELEB1_RANGES:
        _compare_with_paper(counts, queries)
    print("\n" + ("nothing a run needs is missing" if not problems else
                  "missing what a run needs:\n" + "\n".join(f"  {p}" for p in problems)))
    return not problems
