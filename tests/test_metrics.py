"""Evaluation metrics: parity with the released evaluator, ties, 1:N, intervals, list errors."""
import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from helpers import DATA
from data.lists import ListError, list_files, read_list, read_retrieval_keys, read_retrieval_list
from evaluation import metrics

CASE = os.path.join(DATA, "metric_case")


@pytest.fixture(scope="module")
def case():
    data = torch.load(os.path.join(CASE, "embeddings.pt"), weights_only=True)
    keys = list(data["name2feat"])
    embeddings = torch.stack([data["name2feat"][k] for k in keys]).numpy()
    ids = np.array([data["name2id"][k] for k in keys])
    return {k: i for i, k in enumerate(keys)}, embeddings, ids


def test_reference_values_reproduced(case):
    name2row, embeddings, ids = case
    with open(os.path.join(CASE, "expected.json")) as f:
        expected = json.load(f)
    unit = metrics.normalise(embeddings)
    for name, value in expected.items():
        path = os.path.join(CASE, name + ".txt")
        if name.startswith("match"):
            got = metrics.matching_correct(metrics.line_scores(unit, read_list(path, name2row))).mean()
        elif name.startswith("verify"):
            rows = read_list(path, name2row)
            got = metrics.roc_auc(metrics.line_scores(unit, rows)[:, 0], ids[rows[:, 0]] == ids[rows[:, 1]])
        else:
            queries, gallery = read_retrieval_list(path, name2row)
            got = metrics.average_precisions(embeddings[queries], embeddings[gallery], ids[queries],
                                             ids[gallery]).mean()
        assert abs(got - value) < 1e-7, name
    assert len(expected) == 10


def test_matching_any_n_and_ties():
    # Query along x; candidates at known angles. Line 2 ties its positive with a negative: correct.
    unit = np.array([[1, 0], [1, 1], [0, 1], [-1, 0], [1, -1], [2, 0]], np.float32)
    lines = np.array([
        [0, 1, 2, 3, 2],  # positive cos .71 beats 0, -1, 0
        [0, 1, 4, 2, 3],  # positive ties the negative at cos .71 (same angle)
        [0, 2, 1, 3, 3],  # a negative beats the positive
        [0, 5, 1, 4, 0],  # negative 0 is the query itself (cos 1) = positive 5 (cos 1): tie
    ])
    scores = metrics.line_scores(metrics.normalise(unit), lines)
    assert scores.shape == (4, 4)
    assert metrics.matching_correct(scores).tolist() == [True, True, False, True]
    assert metrics.matching_correct(scores[:, :2]).tolist() == [True, True, False, True]


def test_auc_and_eer_with_ties_match_definitions():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 7, 500).astype(np.float32) / 4  # many ties
    labels = rng.random(500) < 0.3 + 0.1 * scores
    positives, negatives = scores[labels], scores[~labels]
    pairwise = (positives[:, None] > negatives).mean() + 0.5 * (positives[:, None] == negatives).mean()
    assert metrics.roc_auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)

    # EER where the interpolated ROC meets fnr = fpr.
    assert metrics.equal_error_rate(np.array([0.9, 0.8, 0.3, 0.2]), np.array([1, 1, 0, 0])) == 0.0
    assert metrics.equal_error_rate(np.array([0.9, 0.8, 0.3, 0.2]), np.array([0, 0, 1, 1])) == 1.0
    eer = metrics.equal_error_rate(scores, labels)
    fpr, tpr, _ = metrics.roc_curve(scores, labels.astype(float))
    i = np.argmax((1 - tpr) <= fpr)
    assert min(fpr[i - 1], 1 - tpr[i]) <= eer <= max(fpr[i], 1 - tpr[i - 1])
    with pytest.raises(ValueError, match="both"):
        metrics.roc_auc(scores, np.ones(500, bool))


@pytest.mark.parametrize("decimals, dtype", [(0, np.float32), (1, np.float64), (2, np.float32), (6, np.float64)])
def test_roc_curve_and_auc_are_scikit_learns(decimals, dtype):
    """metrics.roc_curve is scikit-learn's roc_curve (drop_intermediate=False) to the bit, ties included; the AUC
    its roc_auc_score to rounding (scikit-learn drops collinear points before summing the trapezoids)."""
    rng = np.random.default_rng(decimals)
    scores = np.round(rng.standard_normal(3000), decimals).astype(dtype)
    labels = rng.random(3000) < 0.2 + 0.1 * (scores > 0)
    for got, expected in zip(metrics.roc_curve(scores, labels), roc_curve(labels, scores, drop_intermediate=False)):
        np.testing.assert_array_equal(got, expected)
    assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_average_precision_matches_sklearn_with_ties_across_blocks():
    rng = np.random.default_rng(1)
    # Vectors with four entries ±1: every norm is 2, every cosine a multiple of 1/4, computed exactly.
    def vectors(n):
        v = np.zeros((n, 8), np.float32)
        for row, columns in enumerate(rng.random((n, 8)).argsort(1)[:, :4]):
            v[row, columns] = rng.choice([-1, 1], 4)
        return v
    queries, gallery = vectors(37), vectors(53)
    query_ids, gallery_ids = rng.integers(0, 6, 37), rng.integers(0, 5, 53)  # identity 5 has no gallery item
    got = metrics.average_precisions(queries, gallery, query_ids, gallery_ids, chunk_bytes=4 * 53 * 5)
    scores = metrics.normalise(queries) @ metrics.normalise(gallery).T
    for q in range(37):
        relevant = gallery_ids == query_ids[q]
        if relevant.any():
            assert got[q] == pytest.approx(average_precision_score(relevant, scores[q]), abs=1e-12)
        else:
            assert np.isnan(got[q])
    assert np.isnan(got).any() and not np.isnan(got).all()


def test_average_precision_without_ties_is_the_rank_formula():
    rng = np.random.default_rng(2)
    queries, gallery = rng.standard_normal((20, 16)), rng.standard_normal((200, 16))
    query_ids, gallery_ids = rng.integers(0, 4, 20), rng.integers(0, 4, 200)
    scores = metrics.normalise(queries) @ metrics.normalise(gallery).T
    expected = []
    for q in range(20):  # AP = (1/R) Σ_k precision@k over the ranks k of the relevant items
        relevant = (gallery_ids == query_ids[q])[np.argsort(-scores[q])]
        ranks = np.flatnonzero(relevant) + 1
        expected.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    got = metrics.average_precisions(queries, gallery, query_ids, gallery_ids, chunk_bytes=4 * 200 * 3)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_bootstrap_replicates_are_statistics_of_resamples():
    rng = np.random.default_rng(3)
    scores = np.round(rng.standard_normal(300), 1)  # ties
    labels = rng.random(300) < 0.5 + 0.3 * (scores > 0)
    replicates = metrics.bootstrap_auc(scores, labels, 25, np.random.default_rng(9))
    counts = metrics.resample_counts(300, 25, np.random.default_rng(9))  # the same draws
    order = np.argsort(scores, kind="stable")
    for b in range(25):
        resampled = np.repeat(order, counts[b])
        assert replicates[b] == pytest.approx(metrics.roc_auc(scores[resampled], labels[resampled]), abs=1e-12)

    values = rng.random(300)
    means = metrics.bootstrap_mean(values, 25, np.random.default_rng(9))
    np.testing.assert_allclose(means, [np.repeat(values, c).mean() for c in counts], atol=1e-12)
    # Chunked and unchunked resampling draw the same numbers.
    np.testing.assert_array_equal(metrics.bootstrap_auc(scores, labels, 25, np.random.default_rng(9), chunk=600),
                                  replicates)


def test_wilson_interval_coverage():
    rng = np.random.default_rng(4)
    for p, n in ((0.85, 400), (0.5, 60), (0.97, 200)):
        successes = rng.binomial(n, p, 4000)
        low, high = metrics.wilson_interval(successes, n)
        assert np.all(low <= successes / n) and np.all(successes / n <= high)
        assert 0.93 <= np.mean((low <= p) & (p <= high)) <= 0.975


def test_bootstrap_interval_coverage():
    rng = np.random.default_rng(5)
    shift = 1.0
    true_auc = 0.7602499389065233  # Φ(shift / √2)
    true_mean = 0.5
    covered_auc, covered_mean = [], []
    for _ in range(150):
        scores = np.r_[rng.standard_normal(150) + shift, rng.standard_normal(150)]
        labels = np.r_[np.ones(150, bool), np.zeros(150, bool)]
        low, high = metrics.percentile_interval(metrics.bootstrap_auc(scores, labels, 300, rng))
        covered_auc.append(low <= true_auc <= high)
        low, high = metrics.percentile_interval(metrics.bootstrap_mean(rng.random(200), 300, rng))
        covered_mean.append(low <= true_mean <= high)
    assert 0.88 <= np.mean(covered_auc) <= 0.99
    assert 0.88 <= np.mean(covered_mean) <= 0.99


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_list_errors_name_list_line_and_file(tmp_path):
    name2row = {"a.wav": 0, "b.jpg": 1, "c.jpg": 2}
    good = write(tmp_path / "good.txt", "a.wav b.jpg c.jpg\na.wav c.jpg b.jpg\n\n")
    assert read_list(good, name2row).tolist() == [[0, 1, 2], [0, 2, 1]]
    assert list_files(good) == ({"a.wav"}, {"b.jpg", "c.jpg"})

    missing = write(tmp_path / "missing.txt", "a.wav b.jpg c.jpg\na.wav d.jpg b.jpg\n")
    with pytest.raises(ListError, match=r"missing\.txt, line 2: no embedding for 'd\.jpg'"):
        read_list(missing, name2row)
    with pytest.raises(ListError, match="empty"):
        read_list(write(tmp_path / "empty.txt", "\n \n"), name2row)
    with pytest.raises(ListError, match=r"ragged\.txt, line 3: malformed, expected 3 .* found 2"):
        read_list(write(tmp_path / "ragged.txt", "a.wav b.jpg c.jpg\n" * 2 + "a.wav b.jpg\n"), name2row)
    with pytest.raises(ListError, match=r"gap\.txt, line 2: blank line inside the list"):
        read_list(write(tmp_path / "gap.txt", "a.wav b.jpg c.jpg\n\na.wav b.jpg c.jpg\n"), name2row)
    with pytest.raises(ListError, match=r"pairs\.txt, line 1: malformed, expected 2 .* found 3"):
        read_list(write(tmp_path / "pairs.txt", "a.wav b.jpg c.jpg\n"), name2row, max_columns=2)
    with pytest.raises(ListError, match="list file not found: .*nowhere.txt"):
        read_list(str(tmp_path / "nowhere.txt"), name2row)


def test_retrieval_list_reading_and_errors(tmp_path):
    name2row = {"a.wav": 0, "b.jpg": 1, "c.jpg": 2}
    queries, gallery = read_retrieval_list(write(tmp_path / "r.txt", "a.wav\nb.jpg c.jpg\n"), name2row)
    assert queries.tolist() == [0] and gallery.tolist() == [1, 2]
    with pytest.raises(ListError, match=r"r2\.txt, line 2: no embedding for 'x\.jpg'"):
        read_retrieval_list(write(tmp_path / "r2.txt", "a.wav\nb.jpg x.jpg\n"), name2row)
    with pytest.raises(ListError, match=r"r3\.txt: malformed, .* 2 lines .* found 3"):
        read_retrieval_list(write(tmp_path / "r3.txt", "a.wav\nb.jpg\nc.jpg\n"), name2row)
    with pytest.raises(ListError, match=r"r4\.txt, line 1: blank line inside the list"):
        read_retrieval_list(write(tmp_path / "r4.txt", "\nb.jpg\n"), name2row)
    with pytest.raises(ListError, match=r"r5\.txt, line 2: blank line inside the list"):
        read_retrieval_keys(write(tmp_path / "r5.txt", "a.wav\n  \nb.jpg\n"))


def test_row_searchsorted_counts_entries_below_each_value():
    rng = np.random.default_rng(5)
    for width in (1, 2, 7, 64, 100):
        rows = np.sort(rng.integers(0, 9, (6, width)).astype(np.float32), axis=1)  # repeats
        values = np.concatenate([rows[:, rng.integers(0, width, 5)], [[-np.inf, np.inf, -1, 4.5, 9]] * 6], axis=1)
        expected = [np.searchsorted(row, v, side="left") for row, v in zip(rows, values)]
        np.testing.assert_array_equal(metrics._searchsorted_rows(rows, values), expected)
