"""Evaluate a trained model on the test lists: the paper's results table.

    python test.py --cfg CFG [--features FILE] [--opts key=value ...]

Without --features: embed every file the split's lists name with the checkpoint
`testing.checkpoint` (ours or the released `checkpoint_best.pth.tar`), caching
the embeddings in the released features format at
`testing.extracted_features_path`, then evaluate. With --features: evaluate a
features file in that format, no model needed.

Writes `testing.result_path` (one `list value` line per list, in %), a JSON
beside it with every value, its 95% interval and the provenance of the
embeddings, and PNG plots (ROC curves, score histograms).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import zlib
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import torch
from tqdm import tqdm

from data.lists import list_path
from utils import metrics
from utils.config import ConfigError, config_to_dict, load_config, run_dir
from utils.distributed import device_of

DIRECTIONS = (("v2f", "voice→face"), ("f2v", "face→voice"))
# (task, gender-constrained, column header) in the paper's order.
COLUMNS = (
    ("matching", False, "1:2 matching U"),
    ("matching", True, "1:2 matching G"),
    ("verification", False, "verification U (AUC)"),
    ("verification", True, "verification G (AUC)"),
    ("retrieval", False, "retrieval mAP"),
)
MODALITIES = {"v2f": ("voice", "face"), "f2v": ("face", "voice")}  # (query, candidates)


class MissingCheckpoint(FileNotFoundError):
    """The checkpoint to evaluate does not exist."""


class FeaturesError(ValueError):
    """A features file is missing or not in the released format."""


@dataclass(frozen=True)
class ListSpec:
    """One list file and where its value goes in the table."""

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
        return f"reterival_{self.direction}_{self.split}"  # the released spelling


def evaluation_lists(split: str, match_n: list[int] = (2,), list_dir: str | None = None) -> list[ListSpec]:
    """The ten lists of the table, plus the 1:N matching lists (N ≠ 2) present in list_dir."""
    table = [ListSpec(task, direction, gender, split) for direction, _ in DIRECTIONS for task, gender, _ in COLUMNS]
    extra = [ListSpec("matching", direction, gender, split, n) for n in match_n if n != 2
             for direction, _ in DIRECTIONS for gender in (False, True)]
    return table + [t for t in extra if list_dir is None or os.path.isfile(list_path(list_dir, t.name))]


# ---------------------------------------------------------------- features

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


# ---------------------------------------------------------------- evaluation

@dataclass
class Result:
    """The value of one list (a fraction), its 95% interval, and what the plots need."""

    spec: ListSpec
    value: float  # fraction
    interval: tuple[float, float]  # 95%
    count: int  # lines, or queries for retrieval
    eer: float | None = None
    scores: np.ndarray | None = None  # verification only, for the plots
    labels: np.ndarray | None = None


def evaluate_list(spec: ListSpec, path: str, features: Features, bootstrap: int, seed: int) -> Result:
    """The metric of one list, with its 95% interval (Wilson for matching, bootstrap otherwise)."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    if spec.task == "retrieval":
        queries, gallery = metrics.read_retrieval_list(path, features.name2row)
        precisions = metrics.average_precisions(features.embeddings[queries], features.embeddings[gallery],
                                                features.ids[queries], features.ids[gallery])
        precisions = precisions[np.isfinite(precisions)]  # queries with no relevant gallery item have no AP
        if not precisions.size:
            raise metrics.ListError(f"{path}: no query has a gallery item of its identity")
        interval = metrics.percentile_interval(metrics.bootstrap_mean(precisions, bootstrap, rng))
        return Result(spec, float(precisions.mean()), interval, len(precisions))
    matching = spec.task == "matching"
    rows = metrics.read_list(path, features.name2row, min_columns=3 if matching else 2,
                             max_columns=None if matching else 2)
    scores = metrics.line_scores(features.unit, rows)
    if matching:
        correct = int(metrics.matching_correct(scores).sum())
        low, high = metrics.wilson_interval(correct, len(rows))
        return Result(spec, correct / len(rows), (float(low), float(high)), len(rows))
    scores = scores[:, 0]
    labels = features.ids[rows[:, 0]] == features.ids[rows[:, 1]]
    try:
        auc = metrics.roc_auc(scores, labels)
    except ValueError as e:
        raise metrics.ListError(f"{path}: {e}") from None
    interval = metrics.percentile_interval(metrics.bootstrap_auc(scores, labels, bootstrap, rng))
    return Result(spec, auc, interval, len(rows), metrics.equal_error_rate(scores, labels), scores, labels)


def evaluate(features: Features, list_dir: str, lists: list[ListSpec], bootstrap: int, seed: int) -> list[Result]:
    """Every list in `lists`, in order."""
    return [evaluate_list(t, list_path(list_dir, t.name), features, bootstrap, seed)
            for t in tqdm(lists, desc="evaluating lists", unit="list", leave=False)]


# ---------------------------------------------------------------- output

def _cell(result: Result | None) -> str:
    if result is None:
        return "–"
    low, high = result.interval
    return f"{100 * result.value:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def format_table(results: list[Result], split: str) -> str:
    """The README's table: rows voice→face, face→voice; values in % with [95% interval]."""
    by_key = {(r.spec.task, r.spec.direction, r.spec.gender): r
              for r in results if r.spec.candidates == 2}
    lines = [f"| {split} (%), [95% CI] | " + " | ".join(header for _, _, header in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for direction, row_name in DIRECTIONS:
        cells = [_cell(by_key.get((task, direction, gender))) for task, gender, _ in COLUMNS]
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(results: list[Result], table: str, result_path: str, source: dict, cfg) -> list[str]:
    """`list value` lines (%) at result_path, everything in a JSON beside it, and the plots; returns the paths."""
    from utils import plots

    os.makedirs(os.path.dirname(os.path.abspath(result_path)), exist_ok=True)
    with open(result_path, "w") as f:
        f.writelines(f"{r.spec.name} {100 * r.value:.4f}\n" for r in results)
    stem = os.path.splitext(result_path)[0]
    summary = {
        "split": cfg.testing.split,
        "features": source,
        "confidence": {"level": 0.95, "matching": "Wilson", "verification and retrieval": "percentile bootstrap",
                       "bootstrap": cfg.testing.bootstrap, "ci_seed": cfg.testing.ci_seed},
        "lists": {r.spec.name: {"task": r.spec.task, "direction": r.spec.direction, "gender": r.spec.gender,
                                "candidates": r.spec.candidates, "value": r.value, "ci95": list(r.interval),
                                "count": r.count, **({"eer": r.eer} if r.eer is not None else {})}
                  for r in results},
        "table": table,
    }
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    verification = {r.spec.name: (r.scores, r.labels) for r in results if r.scores is not None}
    written = [result_path, stem + ".json"]
    if verification:
        written += [plots.roc_curves(verification, stem + "_roc.png"),
                    plots.score_histograms(verification, stem + "_scores.png")]
    return written


# ---------------------------------------------------------------- embeddings from a model

def checkpoint_of(cfg) -> str:
    """testing.checkpoint, by default the run's checkpoint_best.pth.tar; it must exist."""
    path = cfg.testing.checkpoint or os.path.join(run_dir(cfg), "checkpoint_best.pth.tar")
    if not os.path.isfile(path):
        raise MissingCheckpoint(f"checkpoint not found: {path}; set the config key testing.checkpoint "
                                f"(or --opts testing.checkpoint=PATH) to the checkpoint to evaluate")
    return path


def provenance(cfg, checkpoint: str) -> dict:
    """What embeddings depend on: the checkpoint file (path, size, time) and the config of model and inputs."""
    stat = os.stat(checkpoint)
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_size": stat.st_size,
        "checkpoint_mtime": datetime.datetime.fromtimestamp(stat.st_mtime).isoformat(),
        "config": {"split": cfg.testing.split, "models": config_to_dict(cfg.models),
                   "dataset": {k: cfg.dataset[k] for k in ("lmdb_dir", "image_size", "store_image_size",
                                                           "sample_rate", "clip_seconds")}},
    }


def reusable_cache(path: str, source: dict, keys: set[str]) -> Features | None:
    """The cached features if they were made by `source` and cover `keys`; otherwise None, saying why."""
    if not os.path.isfile(path):
        return None
    data = load_features_file(path)
    old = data.get("source")
    if not old:
        reason = "it does not record the checkpoint that produced it (evaluate it as is with --features)"
    elif old != source:
        changed = sorted(k for k in source if old.get(k) != source[k])
        reason = (f"it was extracted by {old.get('checkpoint')} ({old.get('checkpoint_size')} bytes, "
                  f"{old.get('checkpoint_mtime')}); now {source['checkpoint']} ({source['checkpoint_size']} "
                  f"bytes, {source['checkpoint_mtime']}); differs in: {', '.join(changed)}")
    elif not keys <= data["name2feat"].keys():
        reason = f"it lacks {len(keys - data['name2feat'].keys())} of the files the lists name"
    else:
        print(f"reusing the features in {path} (extracted by {old['checkpoint']}, {old['checkpoint_mtime']})")
        return as_arrays(data, path)
    print(f"not reusing {path}: {reason}; extracting again")
    return None


def files_by_modality(list_dir: str, lists: list[ListSpec]) -> dict[str, list[str]]:
    """Every file the lists name, by modality (the query column/line is the direction's first modality)."""
    files: dict[str, set[str]] = {"voice": set(), "face": set()}
    for t in lists:
        query, candidate = MODALITIES[t.direction]
        queries, candidates = metrics.list_files(list_path(list_dir, t.name), retrieval=t.task == "retrieval")
        files[query].update(queries)
        files[candidate].update(candidates)
    return {m: sorted(f) for m, f in files.items()}


def identities_of(cfg, keys: list[str]) -> tuple[list[int], list[str]]:
    """Identity (index in the split) and gender of every file, from its first path part."""
    from data.splits import key_labels, read_split, split_path

    identities = read_split(cfg.dataset.list_dir, cfg.testing.split)
    try:
        labels = key_labels(keys, identities).tolist()
    except KeyError as e:
        raise metrics.ListError(f"{e.args[0]}: {split_path(cfg.dataset.list_dir, cfg.testing.split)}") from None
    return labels, [identities[i].gender for i in labels]


def extract_features(cfg, checkpoint: str, files: dict[str, list[str]], source: dict, path: str) -> Features:
    """Embed `files` (by modality) with the checkpoint's model; cache them at `path`."""
    from models import build_model
    from utils.checkpoint import load_checkpoint
    from utils.evaluation import embed

    keys = files["voice"] + files["face"]
    ids, genders = identities_of(cfg, keys)
    device = device_of(cfg.device)
    model = build_model(cfg.models)
    load_checkpoint(model, checkpoint)
    model.to(device).eval()
    embeddings = torch.cat([embed(model, cfg, files[m], m, device) for m in ("voice", "face")])
    save_features_file(path, keys, embeddings, ids, genders, source)
    print(f"features of {len(keys)} files saved to {path}")
    return Features(dict(zip(keys, range(len(keys)))), embeddings.numpy(), np.array(ids, np.int64), source)


def model_features(cfg, lists: list[ListSpec], checkpoint: str) -> Features:
    """The embeddings of the checkpoint's model: the cache when it is the same model's, else extracted."""
    path = cfg.testing.extracted_features_path or os.path.join(run_dir(cfg), f"features_{cfg.testing.split}.pt")
    source = provenance(cfg, checkpoint)
    files = files_by_modality(cfg.dataset.list_dir, lists)
    cached = reusable_cache(path, source, set(files["voice"]) | set(files["face"]))
    return cached if cached is not None else extract_features(cfg, checkpoint, files, source, path)


# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", required=True, help="YAML config (config/cfg.yaml, config/synthetic.yaml)")
    parser.add_argument("--features", help="evaluate this features file (released format) instead of a model")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.cfg, args.opts)
    split = cfg.testing.split
    checkpoint = None if args.features else checkpoint_of(cfg)
    lists = evaluation_lists(split, cfg.dataset.match_n, cfg.dataset.list_dir)
    paths = [list_path(cfg.dataset.list_dir, t.name) for t in lists]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise metrics.ListError(f"list file not found: {missing[0]} ({len(missing)} of the {len(lists)} test lists "
                                f"missing); generate them with `python -m data.prepare --cfg {args.cfg}` or unzip "
                                "the authors' gen_list.zip into the folder of config key dataset.list_dir")
    if args.features:
        features = as_arrays(load_features_file(args.features), args.features)
        features.source = {"features_file": os.path.abspath(args.features), **features.source}
    else:
        features = model_features(cfg, lists, checkpoint)
    results = evaluate(features, cfg.dataset.list_dir, lists, cfg.testing.bootstrap, cfg.testing.ci_seed)
    table = format_table(results, split)
    print(table)
    result_path = cfg.testing.result_path or os.path.join(run_dir(cfg), f"results_{split}.txt")
    written = write_outputs(results, table, result_path, features.source, cfg)
    print("written: " + ", ".join(written))
    return results


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, metrics.ListError, FeaturesError, FileNotFoundError) as error:
        sys.exit(f"test.py: {error}")
