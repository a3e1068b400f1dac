"""Evaluate a trained model on the test lists: the paper's results table.

    python test.py --cfg CFG [--features FILE] [--opts key=value ...]
    python test.py --cfg CFG --compare RUN [RUN ...] [--output cmp.json]

Without --features: embed every file the split's lists name with the checkpoint
`testing.checkpoint` (ours or the released `checkpoint_best.pth.tar`), caching
the embeddings at `testing.extracted_features_path` (compact `.npz` by default;
a path ending in `.pt` writes the released format), then evaluate. With
--features: evaluate a features file in either format, no model needed.

    python test.py --cfg CFG --voice clip.wav --faces a.jpg b.jpg [--output out.json] [--plot out.png]
    python test.py --cfg CFG --face x.jpg --voices v1.wav v2.flac [--output out.json] [--plot out.png]
    python test.py --cfg CFG --pairs FILE [--root DIR] --output out.csv

With --voice, --face or --pairs: score your own files with that checkpoint instead (evaluation/own_files.py).

Writes `testing.result_path` (one `list value` line per list, in %), a JSON
beside it with every value, its 95% interval and the provenance of the
embeddings, and PNG plots (ROC curves, score histograms).

With --compare: evaluate each RUN (a run folder or a folder of seed<k> runs) on
the lists of CFG where not done yet and compare them against the first RUN
(evaluation/compare.py).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from evaluation import own_files as try_files
from utils.config import OPTS_HELP

EXAMPLES = """examples:
  python test.py --cfg config/synthetic.yaml                  # the demo run's checkpoint_best
  python test.py --cfg config/authors_checkpoint.yaml         # the authors' released checkpoint
  python test.py --cfg config/cfg.yaml --opts testing.checkpoint=/path/to/checkpoint_best.pth.tar
  python test.py --cfg config/cfg.yaml --features features_test.pt
  python test.py --cfg config/synthetic.yaml --voice clip.wav --faces a.jpg b.jpg --plot match.png
  python test.py --cfg config/synthetic.yaml --compare experiments/synthetic_aasm experiments/synthetic --output cmp.json

writes, in <output_dir>/<exp_name>/: features_<split>.npz (the embeddings cache), results_<split>.txt,
results_<split>.json (values, 95% intervals, list checksums, provenance), results_<split>_roc.png and
results_<split>_scores.png; it prints the results table in the README's format. --voice, --face and
--pairs write only what --output and --plot name."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config, e.g. config/cfg.yaml or config/synthetic.yaml")
    parser.add_argument("--features", help="evaluate this features file (released .pt or compact .npz) instead of a model")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help=OPTS_HELP)
    parser.add_argument("--compare", nargs="+", metavar="RUN",
                        help="compare runs (run folders, or folders of seed<k> runs), the first the baseline")
    parser.add_argument("--output", metavar="FILE",
                        help="--compare: JSON (a plot beside it); --voice/--face: JSON; --pairs: CSV")
    parser.add_argument("--model-from-config", action="store_true",
                        help="build the encoders from the config's models.* (and dataset.sample_rate / image_size), "
                             "not from the settings the checkpoint records")
    try_files.add_arguments(parser)
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer before the imports below (seconds of torch)

# The evaluation's imports, after the command line is known to be valid (flake8: E402 by design).
import json
import os

import numpy as np
import torch

from data.lists import DIRECTIONS, ListError, ListSpec, check_keys, evaluation_lists, list_path
from data.lmdb_store import AUDIO_STORE, FACE_STORE
from data.provenance import changed_lists, file_digest, store_summary
from evaluation.features import Features, FeaturesError, check_embeddings, read_features, save_features_file
from evaluation.protocol import Result, evaluate, format_table, write_outputs
from models.settings import build_from_checkpoint, explicit_settings
from utils.config import config_to_dict, load_config, require, run_dir
from utils.distributed import check_device, device_of
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
    from data.layout import resolve_rows
    from data.lmdb_store import LmdbStore
    from data.splits import read_split

    identities = read_split(cfg.dataset.list_dir, cfg.testing.split)
    stores = [LmdbStore(os.path.join(cfg.dataset.lmdb_dir, name)) for name in (AUDIO_STORE, FACE_STORE)]
    known = np.concatenate([np.asarray(s.keys(), dtype=str) for s in stores])
    for t in lists:
        check_keys(list_path(cfg.dataset.list_dir, t.name), resolve_rows(keys[t.name], known, identities), *stores)


def identities_of(cfg, keys: list[str]) -> tuple[list[int], list[str]]:
    """Identity (index in the split) and gender of every file, from its first path part."""
    from data.splits import key_labels, read_split, split_path

    identities = read_split(cfg.dataset.list_dir, cfg.testing.split)
    try:
        labels = key_labels(keys, identities).tolist()
    except KeyError as e:
        raise ListError(f"{e.args[0]}: {split_path(cfg.dataset.list_dir, cfg.testing.split)}") from None
    return labels, [identities[i].gender for i in labels]


def store_keys(cfg, files: dict[str, list[str]]) -> dict[str, list[str]]:
    """The store key of every list key, by modality (data/layout.py: either name form resolves)."""
    from data.layout import resolve_keys
    from data.lmdb_store import LmdbStore
    from data.splits import read_split

    identities = read_split(cfg.dataset.list_dir, cfg.testing.split)
    stores = {"voice": AUDIO_STORE, "face": FACE_STORE}
    return {m: resolve_keys(keys, LmdbStore(os.path.join(cfg.dataset.lmdb_dir, stores[m])).keys(),
                            identities).tolist() for m, keys in files.items()}


def extract_features(cfg, checkpoint: str, files: dict[str, list[str]], source: dict, path: str) -> Features:
    """Embed `files` (by modality) with the checkpoint's model; cache them at `path`.

    The model has the checkpoint's settings but those `source` says come from the config, and the sample rate
    (the stores hold the audio at the config's)."""
    from evaluation.extraction import embed

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


def result_path_of(cfg) -> str:
    return cfg.testing.result_path or os.path.join(run_dir(cfg), f"results_{cfg.testing.split}.txt")


def check_outputs(args: argparse.Namespace, cfg) -> None:
    """Before any work: no output is one of the inputs (it would be overwritten), and each output's folder exists
    or can be made."""
    named = [args.cfg, args.features, args.voice, args.face, args.pairs, *(args.faces or []), *(args.voices or []),
             cfg.testing.checkpoint]
    lists = [list_path(cfg.dataset.list_dir, t.name)
             for t in evaluation_lists(cfg.testing.split, cfg.dataset.match_n, cfg.dataset.list_dir)]
    inputs = {os.path.realpath(p): p for p in named + lists if p}
    stem = os.path.splitext(result_path_of(cfg))[0]
    results = [("testing.result_path", stem + suffix) for suffix in (".txt", ".json", "_roc.png", "_scores.png")]
    outputs = [("--output", args.output), ("--plot", args.plot), *([] if args.compare else results)]
    for option, path in outputs:
        if not path:
            continue
        if os.path.realpath(path) in inputs:
            raise UserError(f"{option} {path}: is an input of this run ({inputs[os.path.realpath(path)]}) "
                            "and would be overwritten; name another file")
        folder = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UserError(f"{option} {path}: cannot be written: {folder} is not a writable folder")


def main(argv: list[str] | None = None) -> list[Result] | dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = load_config(args.cfg, args.opts)
    explicit = explicit_settings(args.opts, args.model_from_config)  # model settings to take from the config
    if not args.features:
        check_device(cfg.device)
    check_outputs(args, cfg)
    if args.compare:
        from evaluation.compare import compare

        return compare(cfg, args.compare, args.output,
                       lambda c, lists: model_features(c, lists, checkpoint_of(c), explicit), args.cfg)
    if try_files.requested(args, parser):
        try_files.run(args, cfg, checkpoint_of(cfg))
        return []
    require(cfg, "dataset.list_dir")
    split = cfg.testing.split
    checkpoint = None if args.features else checkpoint_of(cfg)
    lists = evaluation_lists(split, cfg.dataset.match_n, cfg.dataset.list_dir)
    paths = [list_path(cfg.dataset.list_dir, t.name) for t in lists]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ListError(f"list file not found: {missing[0]} ({len(missing)} of the {len(lists)} test lists "
                                f"missing); generate them with `python -m data.prepare --cfg {args.cfg}` or unzip "
                                "the authors' gen_list.zip into the folder of config key dataset.list_dir")
    for path in changed_lists(cfg.dataset.list_dir, paths):
        print(f"warning: {path} differs from the checksum data.prepare recorded in "
              f"{os.path.join(cfg.dataset.list_dir, 'lists.sha256')} (edited since?); run data.prepare to check it "
              "against the stores and record it", file=sys.stderr)
    if args.features:
        features = read_features(args.features)
        features.source = {"features_file": os.path.abspath(args.features), **features.source}
    else:
        features = model_features(cfg, lists, checkpoint, explicit)
    results = evaluate(features, cfg.dataset.list_dir, lists, cfg.testing.bootstrap, cfg.testing.ci_seed)
    table = format_table(results, f"{cfg.exp_name}, {split} split")
    print(table)
    result_path = result_path_of(cfg)
    written = write_outputs(results, table, result_path, features.source, cfg)
    print("written: " + ", ".join(written))
    return results


if __name__ == "__main__":
    try:
        main()
    except (UserError, FileNotFoundError) as error:
        sys.exit(f"test.py: {error}")
