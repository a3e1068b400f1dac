"""Identity splits: the meta file, the split rule (ID ranges or a split file) and the split CSVs.

The rule (README, "Protocol"): an identity belongs to the split whose VoxCeleb1 ID range holds its
ID; one without data (no face images, or no voice clips) is kept in the CSV with Set `none`.
Nothing here is VoxCeleb-specific beyond the default ranges in the config.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from config import ConfigError
from utils.errors import UserError
from utils.files import atomic_write

SPLITS = ("train", "val", "test")
SPLIT_HEADER = ("VoxCeleb1_ID", "VGGFace1_ID", "Gender", "Nationality", "Set")
UNUSABLE = "none"


class SplitError(UserError, ValueError):
    """A meta file, split CSV or split file that cannot be used: names the file, line and identity."""


@dataclass(frozen=True)
class Identity:
    vox_id: str
    vgg_id: str
    gender: str
    nationality: str
    set: str


def natural_key(identifier: str) -> tuple[str, int]:
    """'id10042' -> ('id', 10042): ID ranges compare by number, whatever the padding."""
    match = re.fullmatch(r"(.*?)(\d+)", identifier)
    return (match.group(1), int(match.group(2))) if match else (identifier, -1)


def _rows(path: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a tab- or comma-separated file (the separator is read off the header)."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # the BOM some editors write
        header_line = f.readline()
        delimiter = "\t" if "\t" in header_line else ","
        f.seek(0)
        rows = [[cell.strip() for cell in row] for row in csv.reader(f, delimiter=delimiter) if row]
    if not rows:
        raise SplitError(f"{path}: empty file")
    return rows[0], rows[1:]


def read_meta(path: str) -> list[Identity]:
    """Identities of a VoxCeleb1-style meta file (`VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set`).

    An identity on two rows is an error: its files would belong to both, and a split to it twice.
    """
    header, rows = _rows(path)
    if len(header) < 5:
        raise SplitError(f"{path}: expected the columns {', '.join(SPLIT_HEADER)}, got {header}")
    identities, line_of, name_line = [], {}, {}
    for line, row in enumerate(rows, start=2):
        if len(row) < 5:
            raise SplitError(f"{path}, line {line}: expected 5 columns, got {row}")
        for column, name in zip(SPLIT_HEADER[:2], row[:2]):
            why = _not_a_folder_name(name)
            if why:
                raise SplitError(f"{path}, line {line}: {column} '{name}' {why}; an identity is named by one "
                                 f"folder inside the data folders")
        if row[0] in line_of:
            raise SplitError(f"{path}: identity {row[0]} is on two rows, lines {line_of[row[0]]} and {line}; "
                             "keep one")
        if row[1] in name_line:
            raise SplitError(f"{path}: the VGGFace name {row[1]} is on two rows, lines {name_line[row[1]]} and "
                             f"{line} (identities {rows[name_line[row[1]] - 2][0]} and {row[0]}); keep one")
        line_of[row[0]], name_line[row[1]] = line, line
        identities.append(Identity(*row[:5]))
    return identities


def _not_a_folder_name(name: str) -> str | None:
    """Why `name` cannot be the name of one folder (it would lead outside the data folders), or None."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name or os.sep in name:
        return "holds a path separator"
    if name in (".", ".."):
        return "names no folder of its own"
    return None


def read_split_file(path: str) -> dict[str, str]:
    """`VoxCeleb1 ID,split` rows (header optional) -> {vox_id: split}."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # the BOM some editors write
        rows = [row for row in csv.reader(f) if row]
    split_of = {}
    for line, row in enumerate(rows, start=1):
        name = row[1].strip() if len(row) > 1 else ""
        if line == 1 and name not in SPLITS:
            continue  # header
        if name not in SPLITS:
            raise SplitError(f"{path}, line {line}: split must be one of {SPLITS}, got {row}")
        split_of[row[0].strip()] = name
    return split_of


def split_of_ranges(identities: Iterable[Identity], ranges: dict) -> dict[str, str]:
    """{vox_id: split} by the inclusive ID ranges of `dataset.split_ranges`."""
    bounds = {}
    for split, bound in ranges.items():
        if split not in SPLITS or len(bound) != 2:
            raise ConfigError(f"config key dataset.split_ranges.{split}: expected [first_id, last_id] of "
                              f"one of {SPLITS}")
        bounds[split] = (natural_key(bound[0]), natural_key(bound[1]))
    ordered = sorted(bounds.items(), key=lambda kv: kv[1][0])
    for (a, (_, a_hi)), (b, (b_lo, _)) in zip(ordered, ordered[1:]):
        if b_lo <= a_hi:
            raise ConfigError(f"config keys dataset.split_ranges.{a} and .{b} overlap")
    split_of = {}
    for identity in identities:
        key = natural_key(identity.vox_id)
        for split, (lo, hi) in bounds.items():
            if lo <= key <= hi:
                split_of[identity.vox_id] = split
    return split_of


def assign_splits(identities: list[Identity], split_of: dict[str, str],
                  has_data: Callable[[Identity], bool]) -> dict[str, list[Identity]]:
    """Identities of each split in ID order, Set `none` where `has_data` is false."""
    splits: dict[str, list[Identity]] = {name: [] for name in SPLITS}
    for identity in sorted(identities, key=lambda i: natural_key(i.vox_id)):
        split = split_of.get(identity.vox_id)
        if split is None:
            continue
        usable_set = identity.set if has_data(identity) else UNUSABLE
        splits[split].append(Identity(identity.vox_id, identity.vgg_id, identity.gender,
                                      identity.nationality, usable_set))
    return splits


def split_path(list_dir: str, split: str) -> str:
    return os.path.join(list_dir, f"vox1_{split}.csv")


def write_split(list_dir: str, split: str, identities: list[Identity]) -> str:
    """vox1_<split>.csv as released (comma-separated, one row per identity), written atomically."""
    path = split_path(list_dir, split)
    os.makedirs(list_dir, exist_ok=True)
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SPLIT_HEADER)
        writer.writerows([i.vox_id, i.vgg_id, i.gender, i.nationality, i.set] for i in identities)
    return path


def read_split(list_dir: str, split: str) -> list[Identity]:
    """Usable identities of a split CSV (Set `none` dropped), sorted by VoxCeleb1 ID.

    The training label of an identity is its index in read_split(list_dir, 'train').
    """
    path = split_path(list_dir, split)
    if not os.path.exists(path):
        raise FileNotFoundError(f"split file {path} not found (config key dataset.list_dir); "
                                f"run `python -m data.prepare --cfg CFG`")
    identities = [i for i in read_meta(path) if i.set != UNUSABLE]
    return sorted(identities, key=lambda i: natural_key(i.vox_id))


def key_labels(keys: Iterable[str], identities: list[Identity]) -> np.ndarray:
    """Index in `identities` of the identity each list key belongs to (int64 array).

    A key's first path part names its identity: vox_id for clips, vgg_id for images.
    """
    keys = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys, dtype=str)
    names = np.array([i.vox_id for i in identities] + [i.vgg_id for i in identities], dtype=str)
    owners = np.tile(np.arange(len(identities)), 2)
    order = np.argsort(names, kind="stable")
    names, owners = names[order], owners[order]
    first = np.strings.partition(keys, "/")[0] if len(keys) else keys
    at = np.minimum(np.searchsorted(names, first), max(len(names) - 1, 0))
    unknown = np.flatnonzero(names[at] != first) if len(names) else np.arange(len(keys))
    if len(unknown):
        raise KeyError(f"key '{keys[unknown[0]]}' belongs to no identity of the split "
                       f"({len(unknown)} such keys)")
    return owners[at].astype(np.int64)


class IdentityFiles:
    """Keys grouped by identity: sorted within each identity, `owners` their identity index, and each identity's
    slice `starts[k]:starts[k] + counts[k]`."""

    def __init__(self, keys: Iterable[str], identities: list[Identity]):
        keys = np.sort(np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys, dtype=str))
        owners = key_labels(keys, identities)
        order = np.argsort(owners, kind="stable")
        self.keys, self.owners = keys[order], owners[order]
        self.counts = np.bincount(self.owners, minlength=len(identities))
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def of_each(self) -> list[np.ndarray]:
        """The keys of each identity, in identity order."""
        return np.split(self.keys, self.starts[1:])

    def draw(self, rng: np.random.Generator, owners: np.ndarray) -> np.ndarray:
        """A uniformly random key of each given identity."""
        pick = self.starts[owners] + (rng.random(len(owners)) * self.counts[owners]).astype(np.int64)
        return self.keys[pick]


def select_keys(keys: Iterable[str], identities: list[Identity]) -> np.ndarray:
    """The keys that belong to one of `identities` (first path part = its vox_id or vgg_id)."""
    keys = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys, dtype=str)
    names = np.array([i.vox_id for i in identities] + [i.vgg_id for i in identities], dtype=str)
    return keys[np.isin(np.strings.partition(keys, "/")[0], names)] if len(keys) else keys
