"""Compare trained runs over seeds: per method the mean ± std of every test list, and per method the paired
difference against a baseline run on the same test lines, with a 95% bootstrap interval over identities.

A RUN is a run folder (with its `config.yaml`) or a folder of `seed<k>` run folders. The lines of one
identity are correlated (same voices and faces), so the bootstrap resamples identities, not lines: a
replicate draws the test identities with replacement and weighs each line by its query identity's
multiplicity. Methods that share seeds are paired seed by seed; otherwise each method's seeds are averaged.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from config import load_config
from data.lists import ListError, ListSpec, evaluation_lists, list_path
from evaluation import metrics
from evaluation.features import Features
from evaluation.protocol import OUTPUT_SUFFIXES, Result, evaluate, format_table, write_outputs
from utils.checkpoint import latest_checkpoint
from utils.errors import UserError
from utils.files import atomic_write

SEED_FOLDER = re.compile(r"seed(\d+)$")
SPLIT_KEYS = ("split_ranges", "split_file")  # the dataset keys that decide which identities each split holds
REPLICATE_CELLS = 1 << 22  # replicates × lines per chunk of the bootstrap (bounds its memory)


class CompareError(UserError):
    """A RUN given to --compare is not a run folder, or runs cannot be paired."""


@dataclass
class ListOutcomes:
    """One list's per-line outcomes of every seed of a method: what the statistics are computed from."""

    spec: ListSpec
    identities: np.ndarray  # (lines,) identity of each line's query
    outcomes: np.ndarray  # (seeds, lines): matching correct / retrieval AP / verification score
    labels: np.ndarray | None  # (lines,) verification only: same identity


@dataclass
class Method:
    run: str
    seeds: list[int]
    lists: dict[str, ListOutcomes]
    values: dict[str, np.ndarray]  # list name -> (seeds,) metric of each seed, fraction


def seed_runs(run: str) -> dict[int, str]:
    """{seed: run folder} of a RUN: the folder itself (its config's seed), or its `seed<k>` subfolders."""
    if os.path.isfile(os.path.join(run, "config.yaml")):
        return {load_config(os.path.join(run, "config.yaml")).seed: run}
    found = {}
    if os.path.isdir(run):
        for name in sorted(os.listdir(run)):
            match = SEED_FOLDER.fullmatch(name)
            if match and os.path.isfile(os.path.join(run, name, "config.yaml")):
                found[int(match.group(1))] = os.path.join(run, name)
    if not found:
        raise CompareError(f"--compare {run}: neither a run folder (with config.yaml) nor a folder of seed<k> runs")
    return found


def run_config(folder: str, cfg):
    """A run's own config (model, data, checkpoint) evaluated on the lists and testing settings of `cfg`."""
    run_cfg = load_config(os.path.join(folder, "config.yaml"))
    split = cfg.testing.split
    run_cfg.dataset.list_dir = cfg.dataset.list_dir
    run_cfg.testing.update(split=split, bootstrap=cfg.testing.bootstrap, ci_seed=cfg.testing.ci_seed,
                           checkpoint=os.path.join(folder, "checkpoint_best.pth.tar"),
                           extracted_features_path=os.path.join(folder, f"features_{split}.npz"),
                           result_path=os.path.join(folder, f"results_{split}.txt"))
    return run_cfg


def warn_if_unfinished(folder: str, run_cfg) -> None:
    """Say so when a run's newest checkpoint is short of max_iter: its best checkpoint may still change."""
    newest = latest_checkpoint(folder)
    reached = int(re.search(r"checkpoint_(\d+)", os.path.basename(newest)).group(1)) if newest else 0
    if reached < run_cfg.training.max_iter:
        print(f"warning: {folder} has checkpoints up to iteration {reached} of {run_cfg.training.max_iter} "
              "(still training, or stopped early)")


def evaluate_run(folder: str, cfg, lists: list[ListSpec], features_of: Callable) -> list[Result]:
    """Every list on one run's best checkpoint (cached features reused); its results written if it has none."""
    run_cfg = run_config(folder, cfg)
    warn_if_unfinished(folder, run_cfg)
    features: Features = features_of(run_cfg, lists)
    stem = os.path.splitext(run_cfg.testing.result_path)[0]
    unwritten = not os.path.isfile(stem + OUTPUT_SUFFIXES[1])
    results = evaluate(features, cfg.dataset.list_dir, lists, run_cfg.testing.bootstrap, run_cfg.testing.ci_seed,
                       stem if unwritten else None)
    if unwritten:
        table = format_table(results, f"{run_cfg.exp_name}, {run_cfg.testing.split} split")
        write_outputs(results, table, run_cfg.testing.result_path, features.source, run_cfg)
    return results


def check_same_split(runs: dict[str, dict[int, str]], cfg, cfg_path: str) -> None:
    """Every run was trained on the split of `cfg` (the one its lists test): else its test identities may have
    been its training identities, or the split sizes differ; refused naming the run and what differs."""
    expected = {key: cfg.dataset[key] for key in SPLIT_KEYS}
    for folders in runs.values():
        for folder in folders.values():
            own = load_config(os.path.join(folder, "config.yaml")).dataset
            changed = [key for key in SPLIT_KEYS if own[key] != expected[key]]
            if changed:
                key = changed[0]
                raise CompareError(f"--compare {folder}: trained on another split than --cfg {cfg_path}: "
                                   f"dataset.{key} is {own[key]} there, {expected[key]} here")


def collect_method(run: str, runs: dict[int, str], cfg, lists: list[ListSpec], features_of: Callable) -> Method:
    per_seed = [evaluate_run(folder, cfg, lists, features_of) for folder in runs.values()]
    outcomes = {}
    for k, spec in enumerate(lists):
        results = [seed_results[k] for seed_results in per_seed]
        first = results[0]
        per_line = [r.scores if spec.task == "verification" else r.outcomes for r in results]
        outcomes[spec.name] = ListOutcomes(spec, first.identities, np.stack(per_line).astype(np.float64),
                                           first.labels)
    values = {spec.name: np.array([seed_results[k].value for seed_results in per_seed])
              for k, spec in enumerate(lists)}
    return Method(run, list(runs), outcomes, values)


def statistic(outcomes: ListOutcomes, weights: np.ndarray) -> np.ndarray:
    """(seeds, replicates) metric of each seed under each row of line weights (replicates × lines)."""
    if outcomes.labels is None:  # matching accuracy, mAP: weighted means
        return outcomes.outcomes @ weights.T / weights.sum(axis=1)
    aucs = []
    for scores in outcomes.outcomes:  # a handful of seeds
        runs = metrics.score_runs(scores, outcomes.labels)
        aucs.append(metrics.weighted_aucs(runs, weights[:, runs.order]))
    return np.stack(aucs)


def paired_difference(method: ListOutcomes, baseline: ListOutcomes, method_seeds: list[int],
                      baseline_seeds: list[int], replicates: int, rng: np.random.Generator) -> dict:
    """Mean over (paired) seeds of method − baseline: the point value, its 95% identity-bootstrap interval
    and the two-sided bootstrap p-value of no difference."""
    common = [s for s in method_seeds if s in baseline_seeds]
    rows_m = [method_seeds.index(s) for s in common] if common else list(range(len(method_seeds)))
    rows_b = [baseline_seeds.index(s) for s in common] if common else list(range(len(baseline_seeds)))
    identities, line_identity = np.unique(baseline.identities, return_inverse=True)

    def difference(weights: np.ndarray) -> np.ndarray:
        return statistic(method, weights)[rows_m].mean(0) - statistic(baseline, weights)[rows_b].mean(0)

    point = float(difference(np.ones((1, len(line_identity)), dtype=np.int32))[0])
    draws = np.concatenate([difference(metrics.resample_counts(len(identities), n, rng)[:, line_identity])
                            for n in metrics.replicate_chunks(replicates, len(line_identity), REPLICATE_CELLS)])
    draws = draws[np.isfinite(draws)]
    low, high = np.quantile(draws, [0.025, 0.975])
    tail = min((draws <= 0).sum(), (draws >= 0).sum())
    p_value = min(1.0, 2 * (tail + 1) / (len(draws) + 1))
    return {"difference": point, "ci95": [float(low), float(high)], "p_value": float(p_value)}


def check_same_lines(method: Method, baseline: Method) -> None:
    for name, outcomes in method.lists.items():
        reference = baseline.lists[name]
        if not np.array_equal(outcomes.identities, reference.identities):
            raise CompareError(f"{method.run} and {baseline.run} were evaluated on different lines of {name}")


def comparison(methods: list[Method], replicates: int, seed: int) -> dict:
    """The JSON of a comparison: every method's per-list values over seeds, and every method against the first."""
    def spread(values: np.ndarray) -> float | None:
        return float(values.std(ddof=1)) if len(values) > 1 else None

    baseline = methods[0]
    out = {"methods": [{"run": m.run, "seeds": m.seeds,
                        "lists": {name: {"mean": float(v.mean()), "std": spread(v), "values": v.tolist()}
                                  for name, v in m.values.items()}} for m in methods],
           "differences": []}
    for method in methods[1:]:
        check_same_lines(method, baseline)
        rng = np.random.default_rng(seed)  # the same identity draws for every method: comparable intervals
        out["differences"].append({
            "run": method.run, "baseline": baseline.run,
            "lists": {name: paired_difference(method.lists[name], baseline.lists[name], method.seeds,
                                              baseline.seeds, replicates, rng) for name in method.lists}})
    return out


def ordered_lists(names: list[str], split: str) -> list[str]:
    """The table's lists in the paper's order (direction, then column), then any others."""
    order = [spec.name for spec in evaluation_lists(split)]
    return [n for n in order if n in names] + [n for n in names if n not in order]


def format_comparison(result: dict, split: str) -> str:
    """Markdown table, lists as columns: mean ± std (%) per method, then Δ [95% CI] p per method vs the baseline."""
    names = ordered_lists(list(result["methods"][0]["lists"]), split)
    lines = ["| run (%) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in result["methods"]:
        cells = []
        for name in names:
            entry = m["lists"][name]
            std = "" if entry["std"] is None else f" ± {100 * entry['std']:.2f}"
            cells.append(f"{100 * entry['mean']:.2f}{std}")
        lines.append(f"| {m['run']} (seeds {', '.join(map(str, m['seeds']))}) | " + " | ".join(cells) + " |")
    for d in result["differences"]:
        cells = [f"{100 * e['difference']:+.2f} [{100 * e['ci95'][0]:+.2f}, {100 * e['ci95'][1]:+.2f}] "
                 f"p={e['p_value']:.3f}" for e in (d["lists"][name] for name in names)]
        lines.append(f"| Δ {d['run']} − {d['baseline']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(cfg, runs: list[str], output: str | None, features_of: Callable, cfg_path: str = "") -> dict:
    """Evaluate (where needed) and compare `runs`, the first the baseline; print the table, write JSON + plot."""
    folders = {run: seed_runs(run) for run in runs}  # every RUN checked before the first is evaluated
    check_same_split(folders, cfg, cfg_path)
    split = cfg.testing.split
    lists = evaluation_lists(split, cfg.dataset.match_n, cfg.dataset.list_dir)
    missing = [list_path(cfg.dataset.list_dir, t.name) for t in lists
               if not os.path.isfile(list_path(cfg.dataset.list_dir, t.name))]
    if missing:
        raise ListError(f"list file not found: {missing[0]}; set dataset.list_dir in --cfg")
    methods = [collect_method(run, folders[run], cfg, lists, features_of) for run in runs]
    result = comparison(methods, cfg.testing.bootstrap, cfg.testing.ci_seed)
    print(format_comparison(result, split))
    if output:
        from evaluation import plots

        with atomic_write(output) as f:
            json.dump(result, f, indent=1)
        figure = plots.comparison_figure(result, ordered_lists(list(result["methods"][0]["lists"]), split),
                                         os.path.splitext(output)[0] + ".png")
        print(f"written: {output}, {figure}")
    return result
