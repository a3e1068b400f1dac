"""test.py --compare (evaluation/compare.py): seeds, paired identity-bootstrap differences, the JSON, the entry point."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import ROOT, save_config
from evaluation import metrics
from evaluation.compare import CompareError, ListOutcomes, paired_difference, seed_runs, statistic
from evaluation.protocol import ListSpec


def outcomes_of(task, identities, values, labels=None):
    return ListOutcomes(ListSpec(task, "v2f", False, "test"), np.asarray(identities), np.asarray(values, float),
                        None if labels is None else np.asarray(labels, bool))


def test_weighted_statistics_equal_the_metric_of_the_repeated_lines():
    rng = np.random.default_rng(0)
    lines, groups = 300, 12
    identities = rng.integers(0, groups, lines)
    scores = np.round(rng.normal(size=(2, lines)), 1)  # rounded: ties inside and across identities
    labels = rng.random(lines) < 0.4
    correct = rng.random((2, lines)) < 0.7
    counts = metrics.resample_counts(groups, 20, rng)
    weights = counts[:, identities]
    aucs = statistic(outcomes_of("verification", identities, scores, labels), weights)
    means = statistic(outcomes_of("matching", identities, correct), weights)
    for r in range(20):
        repeat = weights[r]
        for s in range(2):
            expected = roc_auc_score(np.repeat(labels, repeat), np.repeat(scores[s], repeat))
            assert aucs[s, r] == pytest.approx(expected, abs=1e-12)
            assert means[s, r] == pytest.approx(np.repeat(correct[s], repeat).mean(), abs=1e-12)


def test_paired_difference_pairs_seeds_and_resamples_identities():
    rng = np.random.default_rng(1)
    identities = np.repeat(np.arange(30), 20)
    base = rng.random((3, identities.size)) < 0.6
    better = base | (rng.random((3, identities.size)) < 0.5)  # every line at least as good, most seeds better
    baseline = outcomes_of("matching", identities, base)
    method = outcomes_of("matching", identities, better)
    result = paired_difference(method, baseline, [0, 1, 2], [0, 1, 2], 400, np.random.default_rng(0))
    assert result["difference"] == pytest.approx(better.mean() - base.mean())
    low, high = result["ci95"]
    assert 0 < low < result["difference"] < high and result["p_value"] < 0.01
    # Seeds pair by number: the method's seed 2 against the baseline's seed 2 only.
    single = paired_difference(outcomes_of("matching", identities, better[[2, 0]]), baseline, [2, 7], [0, 1, 2], 50,
                               np.random.default_rng(0))
    assert single["difference"] == pytest.approx(better[2].mean() - base[2].mean())
    same = paired_difference(baseline, baseline, [0, 1, 2], [0, 1, 2], 50, np.random.default_rng(0))
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["p_value"] == 1


def test_identity_bootstrap_is_wider_than_a_line_bootstrap_for_correlated_lines():
    """Lines of one identity share its outcome: resampling identities must see the 10 identities, not 1000 lines."""
    rng = np.random.default_rng(2)
    identities = np.repeat(np.arange(10), 100)
    method = outcomes_of("matching", identities, np.repeat(rng.random((1, 10)) < 0.5, 100, axis=1))
    baseline = outcomes_of("matching", identities, np.zeros((1, 1000)))
    low, high = paired_difference(method, baseline, [0], [0], 500, np.random.default_rng(0))["ci95"]
    line_low, line_high = metrics.percentile_interval(
        metrics.bootstrap_mean(method.outcomes[0], 500, np.random.default_rng(0)))
    assert high - low > 3 * (line_high - line_low)


def test_seed_runs(tmp_path, tiny_cfg):
    for seed in (2, 0):
        folder = tmp_path / "method" / f"seed{seed}"
        folder.mkdir(parents=True)
        save_config({**tiny_cfg, "seed": seed}, str(folder / "config.yaml"))
    assert seed_runs(str(tmp_path / "method")) == {0: str(tmp_path / "method" / "seed0"),
                                                   2: str(tmp_path / "method" / "seed2")}
    assert seed_runs(str(tmp_path / "method" / "seed2")) == {2: str(tmp_path / "method" / "seed2")}
    with pytest.raises(CompareError, match="seed<k>"):
        seed_runs(str(tmp_path))


def make_run(folder, cfg, seed):
    """A run folder with its config.yaml and a checkpoint_best of a freshly initialised model."""
    from models import build_model
    from utils.checkpoint import save_checkpoint

    os.makedirs(folder, exist_ok=True)
    save_config({**cfg, "seed": seed}, os.path.join(folder, "config.yaml"))
    torch.manual_seed(seed)
    save_checkpoint({"format": "aasm", "iteration": 0, "model": build_model(cfg["models"]).state_dict(),
                     "equilibrium": None, "optimizer": {}, "best_val": 0.0, "rng": {}, "config": {}},
                    os.path.join(folder, "checkpoint_best.pth.tar"))


@pytest.mark.slow  # two methods × two seeds embedded twice in subprocesses: about a minute on 2 cores
def test_compare_entry_point(tmp_path, tiny_cfg):
    cfg = {**tiny_cfg, "device": "cpu"}
    for seed in (0, 1):
        make_run(tmp_path / "a" / f"seed{seed}", cfg, seed)
        make_run(tmp_path / "b" / f"seed{seed}", cfg, 10 + seed)
    config = tmp_path / "cfg.yaml"
    save_config(cfg, str(config))
    output = tmp_path / "out" / "cmp.json"
    command = [sys.executable, os.path.join(ROOT, "test.py"), "--cfg", str(config), "--opts", "testing.bootstrap=100",
               "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(output)]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    result = json.loads(output.read_text())
    assert set(result) == {"methods", "differences"} and os.path.isfile(tmp_path / "out" / "cmp.png")
    first, second = result["methods"]
    assert first["run"] == str(tmp_path / "a") and first["seeds"] == [0, 1]
    for seed in (0, 1):  # each run evaluated with its own checkpoint: the values of its results file
        with open(tmp_path / "b" / f"seed{seed}" / "results_test.json") as f:
            own = json.load(f)["lists"]
        assert len(own) == len(second["lists"]) >= 10
        for name, entry in second["lists"].items():
            assert set(entry) == {"mean", "std", "values"}
            assert entry["values"][seed] == pytest.approx(own[name]["value"])
    name = "match_v2f_2_test"
    values = second["lists"][name]["values"]
    assert second["lists"][name]["mean"] == pytest.approx(np.mean(values))
    assert second["lists"][name]["std"] == pytest.approx(np.std(values, ddof=1))
    [difference] = result["differences"]
    assert difference["run"] == str(tmp_path / "b") and difference["baseline"] == str(tmp_path / "a")
    entry = difference["lists"][name]
    assert set(entry) == {"difference", "ci95", "p_value"}
    assert entry["difference"] == pytest.approx(np.mean(values) - np.mean(first["lists"][name]["values"]))
    assert entry["ci95"][0] <= entry["difference"] <= entry["ci95"][1] and 0 < entry["p_value"] <= 1
    assert "Δ" in process.stdout and name in process.stdout
    assert "checkpoints up to iteration 0 of" in process.stdout  # no periodic checkpoint: flagged as unfinished
    # Again: the features are reused, not extracted.
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reusing the features" in again.stdout and "saved to" not in again.stdout
    assert json.loads(output.read_text()) == result


def test_compare_names_a_folder_that_is_no_run(tmp_path, tiny_cfg):
    config = tmp_path / "cfg.yaml"
    save_config(tiny_cfg, str(config))
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", str(config), "--compare",
                              str(tmp_path / "nothing")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode != 0 and "nothing" in process.stderr and "Traceback" not in process.stderr
