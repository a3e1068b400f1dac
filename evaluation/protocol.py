"""The paper's evaluation: the test lists, their metrics with 95% intervals, and the results table."""
from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from data.lists import TABLE_COLUMNS, ListError, ListSpec, list_path, read_list, read_retrieval_list
from data.provenance import file_digest
from evaluation import metrics
from evaluation.features import Features
from utils.files import atomic_write

DIRECTION_NAMES = {"v2f": "voice→face", "f2v": "face→voice"}
# The header of each column of TABLE_COLUMNS.
HEADERS = {("matching", False): "1:2 matching U", ("matching", True): "1:2 matching G",
           ("verification", False): "verification U (AUC)", ("verification", True): "verification G (AUC)",
           ("retrieval", False): "retrieval mAP"}


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
    # Per line (query for retrieval), for paired comparisons: the identity of its query, and its
    # outcome (matching: correct or not; retrieval: AP; verification: see scores and labels).
    identities: np.ndarray | None = None
    outcomes: np.ndarray | None = None


def evaluate_list(spec: ListSpec, path: str, features: Features, bootstrap: int, seed: int) -> Result:
    """The metric of one list, with its 95% interval (Wilson for matching, bootstrap otherwise)."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    if spec.task == "retrieval":
        queries, gallery = read_retrieval_list(path, features.name2row)
        precisions = metrics.average_precisions(features.embeddings[queries], features.embeddings[gallery],
                                                features.ids[queries], features.ids[gallery])
        scored = np.isfinite(precisions)  # queries with no relevant gallery item have no AP
        precisions = precisions[scored]
        if not precisions.size:
            raise ListError(f"{path}: no query has a gallery item of its identity")
        interval = metrics.percentile_interval(metrics.bootstrap_mean(precisions, bootstrap, rng))
        return Result(spec, float(precisions.mean()), interval, len(precisions),
                      identities=features.ids[queries[scored]], outcomes=precisions)
    matching = spec.task == "matching"
    rows = read_list(path, features.name2row, spec.columns, spec.columns)
    scores = metrics.line_scores(features.unit, rows)
    identities = features.ids[rows[:, 0]]
    if matching:
        outcomes = metrics.matching_correct(scores)
        correct = int(outcomes.sum())
        low, high = metrics.wilson_interval(correct, len(rows))
        return Result(spec, correct / len(rows), (float(low), float(high)), len(rows), identities=identities,
                      outcomes=outcomes)
    scores = scores[:, 0]
    labels = features.ids[rows[:, 0]] == features.ids[rows[:, 1]]
    try:
        auc = metrics.roc_auc(scores, labels)
    except ValueError as e:
        raise ListError(f"{path}: {e}") from None
    interval = metrics.percentile_interval(metrics.bootstrap_auc(scores, labels, bootstrap, rng))
    return Result(spec, auc, interval, len(rows), metrics.equal_error_rate(scores, labels), scores, labels,
                  identities)


# What a test run writes beside testing.result_path (its stem): the values, and the verification lists' figures.
OUTPUT_SUFFIXES = (".txt", ".json")
FIGURE_SUFFIXES = ("_roc.png", "_scores.png")


def figure_paths(results: list[Result], stem: str) -> list[str]:
    """Where `draw_figures` puts the figures of these results: none without a verification list."""
    return [stem + suffix for suffix in FIGURE_SUFFIXES] if any(r.scores is not None for r in results) else []


def draw_figures(results: list[Result], stem: str) -> list[str]:
    """ROC curves and score histograms of the verification lists among `results`; returns their paths."""
    paths = figure_paths(results, stem)
    if not paths:
        return []
    from evaluation import plots  # matplotlib: only where figures are drawn

    verification = {r.spec.name: (r.scores, r.labels) for r in results if r.scores is not None}
    return [plots.roc_curves(verification, paths[0]), plots.score_histograms(verification, paths[1])]


def evaluate(features: Features, list_dir: str, lists: list[ListSpec], bootstrap: int, seed: int,
             figures: str | None = None) -> list[Result]:
    """Every list in `lists`, returned in order; two at a time (numpy releases the GIL, and each list has its own
    random stream, so the values do not depend on the order they finish in). The short lists go first, the
    verification lists first of all: with `figures` (a path stem) their figures are drawn (`draw_figures`) on a
    thread of their own while the retrievals, most of the work, still run."""
    # The BLAS limit is process-wide: held here for the pools' whole life, the two retrievals' own limits
    # (metrics.average_precisions) nest inside it and cannot restore each other's setting while one still runs.
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(2) as lanes, ThreadPoolExecutor(1) as drawing, \
            tqdm(total=len(lists), desc="evaluating lists", unit="list", leave=False) as bar:
        def one(spec: ListSpec) -> Result:
            result = evaluate_list(spec, list_path(list_dir, spec.name), features, bootstrap, seed)
            bar.update(1)
            return result

        order = sorted(range(len(lists)), key=lambda i: ("verification", "matching", "retrieval").index(lists[i].task))
        futures = {i: lanes.submit(one, lists[i]) for i in order}
        if figures is not None:
            verified = [futures[i] for i, spec in enumerate(lists) if spec.task == "verification"]
            drawn = drawing.submit(lambda: draw_figures([future.result() for future in verified], figures))
        results = [futures[i].result() for i in range(len(lists))]
        if figures is not None:
            drawn.result()  # its error (a full disk) is raised here
        return results


def _cell(result: Result | None) -> str:
    if result is None:
        return "–"
    low, high = result.interval
    return f"{100 * result.value:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


TABLE_HEADER = ("| results (%), [95% interval] | direction | " + " | ".join(HEADERS[column] for column in TABLE_COLUMNS) + " |\n"
                + "|---" * (len(TABLE_COLUMNS) + 2) + "|")


def format_table(results: list[Result], label: str) -> str:
    """The README's results table (README, "Results"): one row per direction, labelled `label`, so the two rows
    paste into the README as they are; values in % with [95% interval]."""
    by_key = {(r.spec.task, r.spec.direction, r.spec.gender): r
              for r in results if r.spec.candidates == 2}
    lines = [TABLE_HEADER]
    for direction, row_name in DIRECTION_NAMES.items():
        cells = [_cell(by_key.get((task, direction, gender))) for task, gender in TABLE_COLUMNS]
        lines.append(f"| {label} | {row_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(results: list[Result], table: str, result_path: str, source: dict, cfg) -> list[str]:
    """`list value` lines (%) at result_path and everything in a JSON beside it; returns the two paths."""
    with atomic_write(result_path) as f:
        f.writelines(f"{r.spec.name} {100 * r.value:.4f}\n" for r in results)
    stem = os.path.splitext(result_path)[0]
    summary = {
        "split": cfg.testing.split,
        "features": source,
        "confidence": {"level": 0.95, "matching": "Wilson", "verification and retrieval": "percentile bootstrap",
                       "bootstrap": cfg.testing.bootstrap, "ci_seed": cfg.testing.ci_seed},
        "lists": {r.spec.name: {"task": r.spec.task, "direction": r.spec.direction, "gender": r.spec.gender,
                                "candidates": r.spec.candidates, "value": r.value, "ci95": list(r.interval),
                                "count": r.count, **({"eer": r.eer} if r.eer is not None else {}),
                                **dict(zip(("lines", "sha256"), file_digest(list_path(cfg.dataset.list_dir,
                                                                                      r.spec.name))))}
                  for r in results},
        "table": table,
    }
    with atomic_write(stem + OUTPUT_SUFFIXES[1]) as f:
        json.dump(summary, f, indent=1)
    return [result_path, stem + OUTPUT_SUFFIXES[1]]
