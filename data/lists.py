"""Evaluation lists (README, "Protocol"): names, seeded generation, the keys the format can carry, and
checking against a store.

A list is `<list_dir>/<name>.txt`, space-separated keys (paths relative to the audio / image
folders). Matching and verification lists repeat every query file of the split on 3 lines;
retrieval lists are two lines, all queries then the whole gallery. Generation is vectorised
over lines and seeded per list name, so a list is the same whichever others already exist.
This is the one reader of list files: `read_key_table` and `read_retrieval_keys` give their keys
(data.prepare checks lists with them), `read_list` and `read_retrieval_list` integer rows of an
embedding matrix.
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from itertools import repeat
from typing import Iterable, Mapping, Sequence

import numpy as np

from data.lmdb_store import MissingKeyError
from data.splits import Identity, IdentityFiles
from utils.errors import UserError
from utils.files import atomic_write

EVAL_SPLITS = ("val", "test")  # the splits with evaluation lists
LINES_PER_QUERY = 3
DIRECTIONS = {"v2f": ("voice", "face"), "f2v": ("face", "voice")}  # the query's and the candidates' modality


class ListError(UserError, ValueError):
    """A test list is missing, empty, malformed, or names a file without an embedding."""


# ---------------------------------------------------------------- list files

def _read_lines(path: str) -> tuple[str, list[str]]:
    """The text and lines of a list, trailing blank lines dropped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ListError(f"list file not found: {path}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ListError(f"{path}, line {line}: not UTF-8 text (byte "
                        f"{data[e.start]:#04x}); lists are UTF-8") from None
    lines = text.rstrip().splitlines()
    if not lines:
        raise ListError(f"{path}: the list is empty")
    return text, lines


def _no_blank_lines(path: str, counts: np.ndarray) -> None:
    """A blank line before the end of a list (paths per line `counts`) is an error naming it."""
    blank = np.flatnonzero(counts == 0)
    if blank.size:
        raise ListError(f"{path}, line {blank[0] + 1}: blank line inside the list ({blank.size} in all)")


def _rows_of(tokens: list[str], name2row: Mapping[str, int], path: str, line_of) -> np.ndarray:
    """Embedding row of every path; a path without an embedding names its list line."""
    rows = np.fromiter(map(name2row.get, tokens, repeat(-1)), np.int64, len(tokens))
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        first = int(missing[0])
        raise ListError(f"{path}, line {line_of(first)}: no embedding for '{tokens[first]}' "
                        f"({missing.size} of the list's {len(tokens)} paths have none)")
    return rows


def _table(path: str, min_columns: int, max_columns: int | None) -> tuple[list[str], int, int]:
    """Paths of a matching/verification list, with its (lines, columns); every line has the same length."""
    text, lines = _read_lines(path)
    counts = np.fromiter(map(len, map(str.split, lines)), np.int64, len(lines))
    _no_blank_lines(path, counts)
    columns = int(np.clip(counts[0], min_columns, max_columns))
    bad = np.flatnonzero(counts != columns)
    if bad.size:
        line = int(bad[0])
        raise ListError(f"{path}, line {line + 1}: malformed, expected {columns} space-separated paths, "
                        f"found {counts[line]}")
    return text.split(), len(lines), columns


def read_key_table(path: str, min_columns: int = 2, max_columns: int | None = None) -> np.ndarray:
    """Keys of a matching or verification list: (lines, columns) strings, column 0 the queries."""
    tokens, lines, columns = _table(path, min_columns, max_columns)
    return np.array(tokens, dtype=str).reshape(lines, columns)


def read_list(path: str, name2row: Mapping[str, int], min_columns: int = 2,
              max_columns: int | None = None) -> np.ndarray:
    """Matching or verification list -> (lines, columns) embedding rows; column 0 is the query."""
    tokens, lines, columns = _table(path, min_columns, max_columns)
    return _rows_of(tokens, name2row, path, lambda i: i // columns + 1).reshape(lines, columns)


def _retrieval_lines(path: str) -> tuple[list[str], list[str]]:
    _, lines = _read_lines(path)
    _no_blank_lines(path, np.array([len(line.split()) for line in lines]))  # two lines: no loop worth avoiding
    if len(lines) != 2:
        raise ListError(f"{path}: malformed, a retrieval list has 2 lines (queries, gallery), found {len(lines)}")
    return lines[0].split(), lines[1].split()


def read_retrieval_keys(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Keys of a retrieval list: (queries of line 1, gallery of line 2)."""
    queries, gallery = _retrieval_lines(path)
    return np.array(queries, dtype=str), np.array(gallery, dtype=str)


def read_retrieval_list(path: str, name2row: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval list (line 1 queries, line 2 gallery) -> (query rows, gallery rows)."""
    queries, gallery = _retrieval_lines(path)
    return (_rows_of(queries, name2row, path, lambda i: 1),
            _rows_of(gallery, name2row, path, lambda i: 2))


def list_files(path: str, retrieval: bool = False) -> tuple[set[str], set[str]]:
    """(query files, candidate files) a list names: column 0 / line 1 are the queries."""
    if retrieval:
        queries, gallery = _retrieval_lines(path)
        return set(queries), set(gallery)
    tokens, _, columns = _table(path, 2, None)
    return set(tokens[::columns]), set().union(*(tokens[c::columns] for c in range(1, columns)))


# ---------------------------------------------------------------- which lists exist, and writing them

@dataclass(frozen=True)
class ListSpec:
    """One list: its task, direction, gender constraint and split name the file."""

    task: str  # matching | verification | retrieval
    direction: str  # v2f | f2v
    gender: bool  # negatives of the same gender (the G lists)
    split: str
    candidates: int = 2  # N of a 1:N matching list

    @property
    def name(self) -> str:
        g = "g_" if self.gender else ""
        if self.task == "matching":
            return f"match_{g}{self.direction}_{self.candidates}_{self.split}"
        if self.task == "verification":
            return f"verify_{g}{self.direction}_{self.split}"
        return f"reterival_{self.direction}_{self.split}"  # sic: the released spelling

    @property
    def columns(self) -> int | None:
        """Paths per line: the query and its candidates (None for retrieval: two lines)."""
        return {"matching": self.candidates + 1, "verification": 2}.get(self.task)

    def read_keys(self, path: str) -> np.ndarray | list[np.ndarray]:
        """The list's keys as evaluation reads them: a (lines, columns) table, or [queries, gallery]."""
        if self.task == "retrieval":
            return list(read_retrieval_keys(path))
        return read_key_table(path, self.columns, self.columns)


def list_specs(split: str, match_n: Iterable[int] = (2,)) -> list[ListSpec]:
    """Every list of a split: 1:N matching (each N of match_n), verification, retrieval, U before G."""
    specs = [ListSpec("matching", d, g, split, n) for n in match_n for g in (False, True) for d in DIRECTIONS]
    specs += [ListSpec("verification", d, g, split) for g in (False, True) for d in DIRECTIONS]
    return specs + [ListSpec("retrieval", d, False, split) for d in DIRECTIONS]


# The results table's columns in the paper's order: (task, gender-constrained).
TABLE_COLUMNS = (("matching", False), ("matching", True), ("verification", False), ("verification", True),
                 ("retrieval", False))


def evaluation_lists(split: str, match_n: Iterable[int] = (2,), list_dir: str | None = None) -> list[ListSpec]:
    """The ten lists of the table (direction by direction, in TABLE_COLUMNS' order), plus the 1:N matching
    lists (N ≠ 2 of match_n) present in list_dir (all of them without a list_dir)."""
    table = [ListSpec(task, direction, gender, split) for direction in DIRECTIONS for task, gender in TABLE_COLUMNS]
    return table + [spec for spec in list_specs(split, match_n) if spec.task == "matching" and spec.candidates != 2
                    and (list_dir is None or os.path.isfile(list_path(list_dir, spec.name)))]


def list_names(split: str, match_n: Iterable[int] = (2,)) -> list[str]:
    """Every list name of a split (list_specs' order)."""
    return [spec.name for spec in list_specs(split, match_n)]


def list_path(list_dir: str, name: str) -> str:
    return os.path.join(list_dir, name + ".txt")


def unlistable_reason(key: str) -> str | None:
    """Why a list line cannot carry `key` (paths are separated by whitespace, files are UTF-8), or None."""
    space = re.search(r"\s", key)
    if space:
        what = {" ": "a space", "\t": "a tab", "\n": "a line break"}.get(space.group(), f"whitespace {space.group()!r}")
        return f"the file name holds {what}, which the space-separated lists cannot carry"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8, which the lists cannot carry"
    return None


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------
def _draw_others(rng: np.random.Generator, owners: np.ndarray, pool_of: np.ndarray, eligible: np.ndarray,
                 k: int, name: str) -> np.ndarray:
    """(rows, k) distinct identities per row, none the row's owner, each from the owner's pool.

    `pool_of[i]` groups identities (all 0: any identity; gender code: same gender);
    only `eligible` identities (those with candidate files) are drawn.
    """
    members = np.flatnonzero(eligible)
    members = members[np.argsort(pool_of[members], kind="stable")]
    groups, starts, sizes = np.unique(pool_of[members], return_index=True, return_counts=True)
    group = np.searchsorted(groups, pool_of[owners])
    found = (group < len(groups)) & (groups[np.minimum(group, len(groups) - 1)] == pool_of[owners])
    size = np.where(found, sizes[np.minimum(group, len(groups) - 1)], 0)
    start = np.where(found, starts[np.minimum(group, len(groups) - 1)], 0)
    available = size - eligible[owners]
    if len(owners) and available.min() < k:
        raise ListError(f"list {name}: an identity has only {available.min()} other identities to draw "
                        f"{k} negatives from")
    drawn = np.empty((len(owners), k), np.int64)
    for c in range(k):
        redo = np.arange(len(owners))
        while len(redo):  # rejection: redraw the rows whose pick is the owner or an earlier pick
            picks = members[start[redo] + (rng.random(len(redo)) * size[redo]).astype(np.int64)]
            drawn[redo, c] = picks
            clash = (picks == owners[redo]) | (drawn[redo, :c] == picks[:, None]).any(1)
            redo = redo[clash]
    return drawn


def _join(columns: list[np.ndarray]) -> str:
    line = columns[0]
    for column in columns[1:]:
        line = np.strings.add(np.strings.add(line, " "), column)
    return "\n".join(line.tolist()) + "\n"


def make_list(spec: ListSpec, identities: list[Identity], voice_keys: Sequence[str], face_keys: Sequence[str],
              seed: int) -> str:
    """The text of the list `spec` names over these identities and files."""
    name = spec.name
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    files = {"voice": IdentityFiles(voice_keys, identities), "face": IdentityFiles(face_keys, identities)}
    queries, gallery = (files[modality] for modality in DIRECTIONS[spec.direction])
    if spec.task == "retrieval":
        return " ".join(queries.keys.tolist()) + "\n" + " ".join(gallery.keys.tolist()) + "\n"
    keep = gallery.counts[queries.owners] > 0  # a query needs a positive
    query_keys = np.repeat(queries.keys[keep], LINES_PER_QUERY)
    owners = np.repeat(queries.owners[keep], LINES_PER_QUERY)
    genders = np.unique([i.gender for i in identities], return_inverse=True)[1]
    pool_of = genders if spec.gender else np.zeros(len(identities), np.int64)
    eligible = gallery.counts > 0
    if spec.task == "matching":
        n = spec.candidates
        negatives = _draw_others(rng, owners, pool_of, eligible, n - 1, name)
        columns = [query_keys, gallery.draw(rng, owners)] + [gallery.draw(rng, negatives[:, c]) for c in range(n - 1)]
    else:
        same = rng.random(len(owners)) < 0.5
        others = _draw_others(rng, owners, pool_of, eligible, 1, name)[:, 0]
        columns = [query_keys, gallery.draw(rng, np.where(same, owners, others))]
    return _join(columns)


def write_lists(list_dir: str, split: str, identities: list[Identity], voice_keys: Sequence[str],
                face_keys: Sequence[str], seed: int, match_n: Iterable[int] = (2,)) -> list[str]:
    """Write every missing list of a split (existing ones, e.g. the authors', are kept); returns the written names."""
    os.makedirs(list_dir, exist_ok=True)
    written = []
    for spec in list_specs(split, match_n):
        path = list_path(list_dir, spec.name)
        if os.path.exists(path):
            continue
        text = make_list(spec, identities, voice_keys, face_keys, seed)
        with atomic_write(path) as f:
            f.write(text)
        written.append(spec.name)
    return written


# ---------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------
def check_keys(list_path: str, rows: np.ndarray | list[np.ndarray], *stores) -> None:
    """Raise MissingKeyError naming the list, line and key of the first key no store holds.

    A store is an LmdbStore or any collection of keys; a key may be in any of them.
    """
    if isinstance(rows, np.ndarray):
        tokens, line_of = rows.ravel(), np.repeat(np.arange(1, len(rows) + 1), rows.shape[1])
    else:
        tokens = np.concatenate(rows) if len(rows) else np.array([], str)
        line_of = np.repeat(np.arange(1, len(rows) + 1), [len(r) for r in rows])
    known = np.concatenate([np.asarray(s.keys() if hasattr(s, "keys") else list(s), dtype=str) for s in stores])
    missing = np.flatnonzero(~np.isin(tokens, known))
    if len(missing):
        where = " / ".join(getattr(s, "path", "the given keys") for s in stores)
        first = missing[0]
        raise MissingKeyError(f"{list_path}, line {line_of[first]}: key '{tokens[first]}' is not in {where} "
                              f"({len(missing)} missing keys in this list)")
