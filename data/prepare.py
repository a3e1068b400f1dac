"""One command from raw data to everything training and testing read; safe to run again.

    python -m data.prepare --cfg CFG [--splits test] [--check] [--opts key=value ...]

1. the synthetic corpus, when `dataset.synthetic.root` is set and the corpus is not there;
2. the split CSVs `vox1_{train,val,test}.csv` in `dataset.list_dir` (kept if they exist);
3. the LMDB stores `audio.lmdb` and `face.lmdb` in `dataset.lmdb_dir` (resumed / updated);
4. every evaluation list of the validation and test splits (lists that exist are kept), and
   `lists.sha256` (sha256sum format) of every list in `dataset.list_dir`.
`--splits` limits all of it to the splits named (`--splits test` for evaluation alone);
`--check` writes nothing and reports what the data holds (data/check.py).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from functools import partial
from typing import Iterator

import numpy as np
from easydict import EasyDict

from config import OPTS_HELP, load_config, require
from data.check import check
from data.datasets import open_store, store_params
from data.layout import FACE, VOICE, as_store_keys, other_name, resolve_rows, store_name
from data.lists import EVAL_SPLITS, ListError, check_keys, evaluation_lists, list_names, list_path, write_lists
from data.lmdb_store import (AUDIO_STORE, FACE_STORE, NOTES_FILE, SKIPPED_FILE, MissingKeyError, StoreError,
                             build_store, encode_audio, encode_image, read_info, settings_mismatch,
                             store_is_current)
from data.provenance import write_list_checksums
from data.scan import ROOT_KEYS, IdentityScanner
from data.splits import (SPLITS, UNUSABLE, Identity, assign_splits, read_meta, read_split, read_split_file,
                         select_keys, split_of_ranges, split_path, write_split)
from utils import distributed, lock
from utils.errors import UserError
from utils.lock import Holder

LOCK_FILE = "prepare.lock"  # in dataset.lmdb_dir, holding the pid of the data.prepare writing there


def _require(path: str, key: str) -> None:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"config key {key}: '{path}' not found")


def make_splits(cfg: EasyDict, scanner: IdentityScanner, wanted: tuple[str, ...] = SPLITS) -> dict[str, list[Identity]]:
    """Write the split CSVs of `wanted` that are missing; return the usable identities of each of them."""
    d = cfg.dataset
    missing = [s for s in wanted if not os.path.exists(split_path(d.list_dir, s))]
    if missing:
        _require(d.meta_file, "dataset.meta_file")
        meta = read_meta(d.meta_file)
        if d.split_file:
            _require(d.split_file, "dataset.split_file")
            split_of = read_split_file(d.split_file)
        else:
            split_of = split_of_ranges(meta, d.split_ranges)
        split_of = {vox_id: split for vox_id, split in split_of.items() if split in missing}
        _require(d.image_data_dir, "dataset.image_data_dir")
        _require(d.audio_data_dir, "dataset.audio_data_dir")
        scanner.scan_all([i for i in meta if i.vox_id in split_of])
        splits = assign_splits(meta, split_of, lambda i: bool(scanner.faces(i)) and bool(scanner.voices(i)))
        for split in missing:
            write_split(d.list_dir, split, splits[split])
            dropped = sum(i.set == "none" for i in splits[split])
            print(f"split {split}: {len(splits[split]) - dropped} identities ({dropped} without data marked none)"
                  f" -> {split_path(d.list_dir, split)}")
    return {s: read_split(d.list_dir, s) for s in wanted}


def make_stores(cfg: EasyDict, identities: list[Identity], scanner: IdentityScanner,
                left_out: list[Identity] = ()) -> None:
    """Build or update both LMDB stores from every file of `identities` (keys in the stores' form). The files
    and folders of `left_out` (identities marked none) that the scan refused, such as a link leading outside the
    data folder, are listed in skipped.tsv too: marked none, they would otherwise look merely missing."""
    d = cfg.dataset
    os.makedirs(d.lmdb_dir, exist_ok=True)
    params = store_params(cfg)
    workers = min(len(os.sched_getaffinity(0)), 8)
    scanner.scan_all(identities)
    jobs = [
        (AUDIO_STORE, VOICE, partial(encode_audio, sample_rate=d.sample_rate,
                                     max_samples=params[AUDIO_STORE]["max_samples"])),
        (FACE_STORE, FACE, partial(encode_image, size=d.store_image_size)),
    ]
    for name, modality, encode in jobs:
        root = scanner.roots[modality]
        items, skipped = [], []
        for identity in left_out:
            scanner.found(identity, modality)
            skipped += scanner.unlisted[(modality, identity.vox_id)]
        with_identity = {source for source, _ in skipped}
        for identity in identities:
            folder, keys = scanner.found(identity, modality)
            skipped += scanner.unlisted[(modality, identity.vox_id)]
            if keys is None:
                skipped.append((os.path.join(root, store_name(identity, modality)),
                                f"identity folder missing (nor is there {other_name(identity, modality)})"))
            elif not keys:
                skipped.append((os.path.join(root, folder), "identity folder holds no usable file"))
            else:
                items += zip(as_store_keys(keys, folder, identity, modality), (os.path.join(root, k) for k in keys))
        path = os.path.join(d.lmdb_dir, name)
        source = os.path.realpath(root)
        refuse_another_store(path, params[name], source, ROOT_KEYS[modality])
        report = build_store(path, items, encode, params[name], skipped, workers, desc=name, source_dir=source)
        listed = f"listed in {os.path.join(path, SKIPPED_FILE)}"
        left = sum(entry in with_identity for entry, _ in report.skipped)
        note = f", {len(report.skipped) - left} skipped ({listed})" if len(report.skipped) > left else ""
        if report.notes:
            note += (f", {len(report.notes)} stored with a note such as clipped samples "
                     f"(listed in {os.path.join(path, NOTES_FILE)})")
        print(f"{name}: {report.stored} files{note}")
        if left:
            print(f"{name}: {left} left out with their identity, which is marked none ({listed})")


def refuse_another_store(path: str, params: dict, source: str, root_key: str) -> None:
    """A complete store at `path` built with other settings, or from another raw folder that still exists (one
    that is gone is taken for the same data moved), is not overwritten: StoreError naming what differs."""
    info = read_info(path)
    if not info or not os.path.exists(os.path.join(path, "data.mdb")):
        return
    mismatch = settings_mismatch(path, params)
    if mismatch:
        raise mismatch
    if info.get("source", source) != source and os.path.isdir(info["source"]):
        raise StoreError(f"LMDB store {path} was built from {info['source']}, not from {source} (config key "
                         f"{root_key}): set dataset.lmdb_dir to another folder, or delete the store to rebuild it")


def make_lists(cfg: EasyDict, splits: dict[str, list[Identity]]) -> None:
    """Write the missing lists of the evaluation splits among `splits`; check the existing ones against the
    stores (a key in the other name form counts when its store form is there)."""
    d = cfg.dataset
    voices, faces = open_store(cfg, AUDIO_STORE), open_store(cfg, FACE_STORE)
    voice_keys, face_keys = np.array(voices.keys(), dtype=str), np.array(faces.keys(), dtype=str)
    known = np.concatenate([voice_keys, face_keys])
    for split in (s for s in EVAL_SPLITS if s in splits):
        identities = splits[split]
        existing = [t for t in evaluation_lists(split, d.match_n) if os.path.exists(list_path(d.list_dir, t.name))]
        written = write_lists(d.list_dir, split, identities, select_keys(voice_keys, identities),
                              select_keys(face_keys, identities), d.list_seed, d.match_n)
        for spec in existing:  # read as test.py reads them: a list it would reject fails here
            path = list_path(d.list_dir, spec.name)
            try:
                check_keys(path, resolve_rows(spec.read_keys(path), known, identities), voice_keys, face_keys)
            except (ListError, MissingKeyError) as e:
                raise type(e)(f"{e}; correct the list, or delete it to have data.prepare generate it") from None
        print(f"lists {split}: {len(written)} written, {len(existing)} kept (in {d.list_dir})")


def is_prepared(cfg: EasyDict) -> bool:
    """Split CSVs, both stores (built with the configured parameters) and every list exist."""
    d = cfg.dataset
    if not all(os.path.exists(split_path(d.list_dir, s)) for s in SPLITS):
        return False
    if not all(store_is_current(os.path.join(d.lmdb_dir, n), p) for n, p in store_params(cfg).items()):
        return False
    return all(os.path.exists(list_path(d.list_dir, n)) for s in EVAL_SPLITS for n in list_names(s, d.match_n))


class PrepareBusy(UserError):
    """Another data.prepare holds the lock of the data folder."""


@contextlib.contextmanager
def prepare_lock(folder: str) -> Iterator[str]:
    """Hold `<folder>/prepare.lock` (utils/lock.py) while preparing; PrepareBusy naming the lock and pid if another
    process holds it. A killed data.prepare's lock is taken over."""
    path = os.path.join(folder, LOCK_FILE)

    def busy(holder: Holder) -> PrepareBusy:
        return PrepareBusy(f"another data.prepare (pid {holder.pid or 'unknown'}) is preparing this data: lock "
                           f"{path}; wait for it to finish")

    with lock.held(path, busy):
        yield path


def prepare_if_needed(cfg: EasyDict, ctx: distributed.Context) -> None:
    """`prepare` on first use, in one process; under torchrun a clear error instead (preparing takes long, and
    the other processes would time out waiting)."""
    if distributed.on_main(is_prepared, ctx, cfg):
        return
    if ctx.enabled:
        raise UserError("the data is not prepared: run `python -m data.prepare --cfg <config>` once, "
                        "then start torchrun again")
    require(cfg, "dataset.meta_file", "dataset.audio_data_dir", "dataset.image_data_dir")
    print("data not prepared yet: running data.prepare")
    prepare(cfg)


def prepare(cfg: EasyDict, splits: tuple[str, ...] = SPLITS) -> None:
    """Steps 1-4 of the module docstring for `splits` only; each does nothing when its output is there.
    One data.prepare at a time per dataset.lmdb_dir (prepare_lock)."""
    with prepare_lock(cfg.dataset.lmdb_dir):
        _prepare(cfg, splits)


def check_off_archetype(root: str, fraction: float) -> None:
    """A corpus already under `root` must have the configured share of off-archetype identities: another share
    is another corpus, which the config must give its own root."""
    from data.synthetic.corpus import off_archetype_record

    recorded = off_archetype_record(root)["fraction"]
    if recorded != fraction:
        raise UserError(f"dataset.synthetic.off_archetype_fraction: {fraction}, but the corpus in {root} was "
                        f"generated with {recorded}; give dataset.synthetic.root (and the data_cache paths) "
                        "another folder, or delete that corpus")


def _prepare(cfg: EasyDict, splits: tuple[str, ...]) -> None:
    d = cfg.dataset
    start = time.time()
    if d.synthetic.root and not os.path.exists(os.path.join(d.synthetic.root, "vox1_meta.csv")):
        from data.synthetic import generate_corpus  # scipy and OpenCV: imported only to generate the corpus

        print(f"generating the synthetic corpus ({d.synthetic.identities} identities) in {d.synthetic.root}")
        generate_corpus(d.synthetic.root, d.synthetic.identities, d.synthetic.seed,
                        off_archetype_fraction=d.synthetic.off_archetype_fraction)
    elif d.synthetic.root:
        check_off_archetype(d.synthetic.root, d.synthetic.off_archetype_fraction)
    scanner = IdentityScanner(cfg)
    identities = make_splits(cfg, scanner, splits)
    left_out = [i for s in splits for i in read_meta(split_path(d.list_dir, s)) if i.set == UNUSABLE]
    make_stores(cfg, [i for s in splits for i in identities[s]], scanner, left_out)
    make_lists(cfg, identities)
    write_list_checksums(d.list_dir)
    print(f"data ready for {', '.join(splits)} in {time.time() - start:.0f} s")


def _splits_argument(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SPLITS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--splits takes a comma-separated subset of {','.join(SPLITS)}, "
                                         f"got '{text}'")
    return tuple(s for s in SPLITS if s in names)


EXAMPLES = """examples:
  python -m data.prepare --cfg config/synthetic.yaml            # generates the embedded corpus first
  python -m data.prepare --cfg config/cfg.yaml --check          # writes nothing; exit 1 if a run would fail
  python -m data.prepare --cfg config/cfg.yaml --splits test    # only what evaluating needs
  python -m data.prepare --cfg config/cfg.yaml --opts dataset.lmdb_dir=/fast/disk/lmdb

writes, in dataset.list_dir: vox1_{train,val,test}.csv, the val and test lists (<name>.txt; lists
already there are kept and checked) and lists.sha256; in dataset.lmdb_dir: audio.lmdb and face.lmdb,
each with store.json, skipped.tsv (files left out, and why) and notes.tsv. Safe to re-run; an
interrupted build resumes."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Build the split CSVs, LMDB stores and evaluation lists a run reads.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config, e.g. config/cfg.yaml or config/synthetic.yaml")
    parser.add_argument("--splits", type=_splits_argument, default=SPLITS,
                        help="prepare only these splits, e.g. `test` or `val,test` (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: report what the data holds and what a run would miss (exit 1)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help=OPTS_HELP)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.cfg, args.opts)
    if args.check:
        sys.exit(0 if check(cfg, args.splits) else 1)
    prepare(cfg, args.splits)


if __name__ == "__main__":
    try:
        main()
    except (UserError, FileNotFoundError) as error:
        sys.exit(f"data.prepare: {error}")
    except OSError as error:  # a write the steps above do not wrap: name the file
        sys.exit(f"data.prepare: could not write {error.filename or ''}: {error.strerror or error}")
