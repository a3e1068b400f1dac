"""Evaluation metrics of the voice-face protocol (README, "Protocol"), vectorised.

Score = cosine similarity. Lists are read by data.lists into integer rows of an embedding matrix;
every metric then works on whole arrays: no loop over list lines or queries. Values are fractions
(the table multiplies by 100).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits


# ---------------------------------------------------------------- scores

def normalise(embeddings: np.ndarray) -> np.ndarray:
    """x̂ = x / ‖x‖ per row (float32; a zero row stays zero)."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def line_scores(unit: np.ndarray, lines: np.ndarray, block: int = 8192) -> np.ndarray:
    """Cosine of each line's query (column 0) with each of its candidates: (lines, columns - 1).

    Blocks of lines, one candidate column at a time: the gathered rows stay at (block, D), 4 MB at 128-d, memory
    the allocator reuses (a whole 65k-line list gathered at once faults 33 MB of fresh pages in per column)."""
    scores = np.empty((len(lines), lines.shape[1] - 1), dtype=unit.dtype)
    for start in range(0, len(lines), block):
        rows = lines[start:start + block]
        queries = unit[rows[:, 0]]
        for c in range(1, lines.shape[1]):
            scores[start:start + len(rows), c - 1] = np.einsum("ld,ld->l", queries, unit[rows[:, c]])
    return scores


# ---------------------------------------------------------------- matching

def matching_correct(scores: np.ndarray) -> np.ndarray:
    """1:N matching outcome per line: the first candidate (the positive) scores highest; a tie is correct."""
    return scores[:, 0] >= scores[:, 1:].max(axis=1)


# ---------------------------------------------------------------- verification

def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, descending, from (0, 0) at threshold +inf.

    scikit-learn's roc_curve without dropped points, to the bit (tests/test_metrics.py), without the 0.7 s of
    importing it: test.py evaluates in seconds."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="stable")[::-1]
    ordered = np.asarray(scores)[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last pair of each run of equal scores
    true_positives = np.cumsum(labels[order])[last]
    false_positives = np.cumsum(~labels[order])[last]
    return (np.r_[0, false_positives] / false_positives[-1], np.r_[0, true_positives] / true_positives[-1],
            np.r_[np.inf, ordered[last]])


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of the scores against same-identity labels (ties count ½): the trapezoids under
    `roc_curve`."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both same- and different-identity pairs, got {positives} and {negatives}")
    fpr, tpr, _ = roc_curve(scores, labels)
    return float((np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2).sum())


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER: the false-positive rate where it equals the false-negative rate on the linearly interpolated ROC."""
    fpr, tpr, _ = roc_curve(scores, np.asarray(labels, dtype=np.float64))
    gap = (1.0 - tpr) - fpr  # non-increasing from 1 to -1
    i = int(np.argmax(gap <= 0))
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


# ---------------------------------------------------------------- retrieval

def _searchsorted_rows(sorted_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, how many entries of the ascending row are < each value: a binary search of all rows at once,
    one step per bit of the row length (numpy has no row-wise searchsorted; torch's would cost its import)."""
    count, width = sorted_rows.shape
    flat, before_row = sorted_rows.ravel(), (np.arange(count) * width - 1)[:, None]
    below = np.zeros(values.shape, dtype=np.int64)
    step = 1 << (width.bit_length() - 1)
    while step:  # invariant: the first `below` entries are < value; try `step` more
        probe = below + step
        entry = np.take(flat, before_row + probe, mode="clip")  # past the row's end: discarded by `probe <= width`
        below = np.where((probe <= width) & (entry < values), probe, below)
        step >>= 1
    return below


def average_precisions(queries: np.ndarray, gallery: np.ndarray, query_ids: np.ndarray,
                       gallery_ids: np.ndarray, chunk_bytes: int = 1 << 24) -> np.ndarray:
    """AP per query = (1/R) Σ over its R relevant items of precision at that item's score.

    Precision at score s = #relevant ≥ s / #gallery ≥ s, so tied items share the
    precision of the tie (scikit-learn's average_precision_score). Only the ranks
    of the relevant items are needed: each block of queries sorts its rows of the
    similarity matrix once and looks the relevant scores up in them. Blocks bound
    the memory and run on a thread per CPU core (the sorts release the GIL); at
    16 MB a block stays below the size glibc hands back to the system, so blocks
    reuse memory instead of faulting fresh pages in (0.7 s of system time per
    full-size list at 64 MB). A query with no relevant gallery item gets NaN.
    """
    gallery_order = np.argsort(gallery_ids, kind="stable")
    unit_gallery = normalise(gallery)[gallery_order]
    identities, starts, counts = np.unique(gallery_ids[gallery_order], return_index=True, return_counts=True)
    slot = np.clip(np.searchsorted(identities, query_ids), 0, len(identities) - 1)
    relevant = np.where(identities[slot] == query_ids, counts[slot], 0)
    # The relevant items of a query are one contiguous block of the identity-sorted gallery.
    first_relevant = starts[slot]
    width = int(counts.max())
    unit_queries = normalise(queries)

    def precision_sums(block: slice) -> np.ndarray:
        scores = unit_queries[block] @ unit_gallery.T
        columns = np.minimum(first_relevant[block, None] + np.arange(width), len(unit_gallery) - 1)
        padded = np.arange(width) >= relevant[block, None]
        # Each row's relevant scores ascending, after its padding (-inf).
        relevant_scores = np.sort(np.where(padded, -np.inf, np.take_along_axis(scores, columns, axis=1)), axis=1)
        valid = np.arange(width) >= width - relevant[block, None]
        scores.sort(axis=1)
        at_least_all = len(unit_gallery) - _searchsorted_rows(scores, relevant_scores)
        # In an ascending row the relevant items >= the k-th are those from the first of its run of equal scores on.
        run_starts = np.ones(relevant_scores.shape, dtype=bool)
        run_starts[:, 1:] = relevant_scores[:, 1:] != relevant_scores[:, :-1]
        at_least_relevant = width - np.maximum.accumulate(np.where(run_starts, np.arange(width), 0), axis=1)
        return np.where(valid, at_least_relevant / np.maximum(at_least_all, 1), 0.0).sum(axis=1)

    step = max(1, chunk_bytes // (4 * len(unit_gallery)))
    blocks = [slice(b, b + step) for b in range(0, len(unit_queries), step)]
    # A thread per core already: BLAS threads inside each would only wait for one another (1.27x measured).
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool, threadpool_limits(1, user_api="blas"):
        sums = np.concatenate(list(pool.map(precision_sums, blocks)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant > 0, sums / relevant, np.nan)


# ---------------------------------------------------------------- confidence intervals

def _z(level: float) -> float:
    return NormalDist().inv_cdf((1.0 + level) / 2.0)


def wilson_interval(successes: np.ndarray | int, trials: np.ndarray | int,
                    level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (vectorised over arrays of counts)."""
    n = np.asarray(trials, dtype=np.float64)
    p = np.asarray(successes, dtype=np.float64) / n
    z2 = _z(level) ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = np.sqrt(z2 * p * (1 - p) / n + z2 * z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def resample_counts(size: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, size) int32 multiplicities of bootstrap draws of `size` items with replacement."""
    dtype = np.int32 if replicates * size < 2**31 else np.int64  # 32-bit draws: a third less time per draw
    offsets = (np.arange(replicates, dtype=dtype) * size)[:, None]
    draws = rng.integers(0, size, size=(replicates, size), dtype=dtype) + offsets
    return np.bincount(draws.ravel(), minlength=replicates * size).astype(np.int32).reshape(replicates, size)


def replicate_chunks(replicates: int, size: int, chunk: int) -> list[int]:
    """Replicates per chunk so that a chunk holds about `chunk` (replicate, item) cells."""
    step = max(1, chunk // size)
    return [min(step, replicates - b) for b in range(0, replicates, step)]


def bootstrap_mean(values: np.ndarray, replicates: int, rng: np.random.Generator,
                   chunk: int = 1 << 17) -> np.ndarray:
    """Means of `replicates` bootstrap resamples of `values`."""
    values = np.asarray(values, dtype=np.float64)
    return np.concatenate([resample_counts(len(values), n, rng) @ values / len(values)
                           for n in replicate_chunks(replicates, len(values), chunk)])


class ScoreRuns(NamedTuple):
    """(score, label) pairs sorted by score, with the runs of equal scores: what weighted AUCs need."""

    order: np.ndarray  # sorted position -> pair
    positive: np.ndarray  # label of each sorted pair
    first: np.ndarray  # first and last sorted position of each pair's run of equal scores
    last: np.ndarray
    tied: np.ndarray  # sorted positions inside a run of two or more


def score_runs(scores: np.ndarray, labels: np.ndarray) -> ScoreRuns:
    order = np.argsort(scores, kind="stable")
    ordered = np.asarray(scores)[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # of each run of equal scores
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    first, last = starts[group], np.r_[starts[1:], len(ordered)][group] - 1
    return ScoreRuns(order, np.asarray(labels, dtype=bool)[order], first, last, np.flatnonzero(last > first))


def weighted_aucs(runs: ScoreRuns, weights: np.ndarray) -> np.ndarray:
    """AUC of each row of integer multiplicities `weights` (replicates × pairs, in sorted order).

    Its Mann-Whitney statistic is one cumulative sum (integer arithmetic, exact); NaN where a row
    weighs only one class.
    """
    first, last, tied = runs.first, runs.last, runs.tied
    positives = weights * runs.positive
    negatives = weights - positives
    negatives_to = np.cumsum(negatives, axis=1, dtype=np.int32)  # inclusive counts up to each pair
    # 2·U = Σ over positives of 2·#(negatives below) + #(negatives tied), first as if nothing were tied ...
    twice_u = (positives * (2 * negatives_to - negatives)).sum(axis=1, dtype=np.int64)
    if tied.size:  # ... then recount the few pairs inside runs of equal scores against the whole run
        below_run = negatives_to[:, first[tied]] - negatives[:, first[tied]]
        below_self = negatives_to[:, tied] - negatives[:, tied]
        recount = below_run + negatives_to[:, last[tied]] - 2 * below_self - negatives[:, tied]
        twice_u += (positives[:, tied] * recount).sum(axis=1, dtype=np.int64)
    pairs = positives.sum(axis=1, dtype=np.int64) * negatives.sum(axis=1, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return twice_u / (2.0 * pairs)


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, replicates: int, rng: np.random.Generator,
                  chunk: int = 1 << 17) -> np.ndarray:
    """AUCs of `replicates` bootstrap resamples of the (score, label) pairs.

    A resample is a vector of multiplicities over the pairs sorted by score (`weighted_aucs`).
    Small chunks of replicates keep the counting in cache.
    """
    runs = score_runs(scores, labels)
    return np.concatenate([weighted_aucs(runs, resample_counts(len(runs.order), n, rng))
                           for n in replicate_chunks(replicates, len(runs.order), chunk)])


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (NaN replicates, e.g. a resample with one class only, are dropped)."""
    finite = replicates[np.isfinite(replicates)]
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
