"""What a result came from: checksums of the lists, a summary of the stores, the corpus a model was trained on.

`data.prepare` writes `<list_dir>/lists.sha256` in sha256sum format (`cd list_dir && sha256sum -c
lists.sha256` verifies it); test.py records each list's line count and sha256 in its results JSON,
and the features file records the stores its embeddings were read from.
"""
from __future__ import annotations

import glob
import hashlib
import os

from data.lmdb_store import read_info
from utils.files import atomic_write

CHECKSUM_FILE = "lists.sha256"
CHUNK = 1 << 20
SYNTHETIC_CORPUS = "embedded synthetic corpus"
# Corpora known by their meta file's name; any other is named by the meta file's folder.
CORPUS_OF_META = {"vox1_meta.csv": "VoxCeleb1"}


def file_digest(path: str) -> tuple[int, str]:
    """(number of lines, sha256 hex digest) of a file, read in chunks."""
    digest, lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            lines += chunk.count(b"\n")
    return lines, digest.hexdigest()


def write_list_checksums(list_dir: str) -> str:
    """`lists.sha256` over the split CSVs and lists (`*.csv`, `*.txt`) of list_dir, written atomically."""
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(list_dir, "*.csv")) +
                   glob.glob(os.path.join(list_dir, "*.txt")))
    path = os.path.join(list_dir, CHECKSUM_FILE)
    with atomic_write(path) as f:
        f.writelines(f"{file_digest(os.path.join(list_dir, n))[1]}  {n}\n" for n in names)
    return path


def changed_lists(list_dir: str, paths: list[str]) -> list[str]:
    """The lists among `paths` whose content is not what data.prepare recorded in lists.sha256 (edited by hand
    since, or not there when it ran); none when there is no lists.sha256 (lists from elsewhere)."""
    try:
        with open(os.path.join(list_dir, CHECKSUM_FILE), encoding="utf-8", errors="replace") as f:
            recorded = {name: digest for digest, _, name in (line.rstrip("\n").partition("  ") for line in f)}
    except FileNotFoundError:
        return []
    return [p for p in paths if recorded.get(os.path.basename(p)) != file_digest(p)[1]]


def store_summary(path: str) -> dict:
    """A store's path and what its store.json says it holds (files stored, skipped, fingerprint of the keys)."""
    info = read_info(path)
    return {"path": os.path.abspath(path), **{k: info.get(k) for k in ("stored", "skipped", "fingerprint")}}


def training_data(cfg) -> dict:
    """Where a run's training data came from, as its checkpoints record it: the embedded synthetic corpus (its
    size and seed), or the corpus's name and the sha256 of its meta file (None when the file is not there)."""
    d = cfg.dataset
    if d.synthetic.root:
        return {"corpus": SYNTHETIC_CORPUS, "identities": d.synthetic.identities, "seed": d.synthetic.seed}
    name = os.path.basename(d.meta_file)
    corpus = CORPUS_OF_META.get(name) or os.path.basename(os.path.dirname(os.path.abspath(d.meta_file)))
    digest = file_digest(d.meta_file)[1] if os.path.isfile(d.meta_file) else None
    return {"corpus": corpus, "meta_file": name, "meta_file_sha256": digest}
