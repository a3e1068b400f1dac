"""Figures: a test run (ROC curves, score histograms of the verification lists), a comparison of runs,
and a match of own files."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from evaluation.metrics import roc_auc, roc_curve
from utils.files import atomic_write

MAX_CURVE_POINTS = 2000  # a ROC of 65k pairs drawn with every point is slow and looks the same


def _save(figure, path: str, **options) -> str:
    """The figure as PNG at `path`, written atomically: a failed write (full disk) is a WriteError naming it."""
    try:
        with atomic_write(path, "wb") as f:
            figure.savefig(f, format="png", **options)
    finally:
        plt.close(figure)
    return path


def roc_curves(verification: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> str:
    """One ROC curve per list {name: (scores, same-identity labels)}, saved as PNG at `path`."""
    figure, axes = plt.subplots(figsize=(5, 5))
    for name, (scores, labels) in verification.items():
        fpr, tpr, _ = roc_curve(scores, labels.astype(np.float64))
        keep = np.unique(np.linspace(0, len(fpr) - 1, MAX_CURVE_POINTS).astype(np.int64))
        axes.plot(fpr[keep], tpr[keep], label=f"{name} (AUC {100 * roc_auc(scores, labels):.2f}%)")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
             title="Verification ROC")
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path, dpi=120, bbox_inches="tight")


def score_histograms(verification: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> str:
    """Cosine scores of same-identity (positive) and different-identity (negative) pairs, one panel per list."""
    figure, panels = plt.subplots(1, len(verification), figsize=(4 * len(verification), 3.2), squeeze=False)
    for axes, (name, (scores, labels)) in zip(panels[0], verification.items()):
        bins = np.histogram_bin_edges(scores, 60)
        for same, kind in ((labels, "positive"), (~labels, "negative")):  # one polygon each, not a patch per bin
            axes.hist(scores[same], bins=bins, alpha=0.6, density=True, histtype="stepfilled",
                      label=f"{kind} ({same.sum()})")
        axes.set(title=name, xlabel="cosine score")
        axes.legend(fontsize="small")
    panels[0][0].set_ylabel("density")
    figure.tight_layout()
    return _save(figure, path, dpi=100)


BEST = "#1a9850"  # the frame of the best match


def _show_input(axes, modality: str, array: np.ndarray, sample_rate: int) -> None:
    """A face (BGR image) as it is, a voice (int16 clip) as its spectrogram up to 8 kHz."""
    if modality == "face":
        axes.imshow(array[..., ::-1])
        axes.set(xticks=[], yticks=[])
        return
    axes.specgram(array.astype(np.float32) / 32768, NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma")
    axes.set(xlabel="s", yticks=[0, sample_rate // 4, sample_rate // 2],
             yticklabels=["0", f"{sample_rate // 4000}k", f"{sample_rate // 2000}k Hz"])
    axes.tick_params(labelsize="x-small")


def _short(path: str, limit: int = 28) -> str:
    """The file name and its folder's, cut at the front to `limit` characters."""
    name = "/".join(os.path.normpath(path).split(os.sep)[-2:])
    return name if len(name) <= limit else "…" + name[1 - limit:]


def match_figure(query: tuple[str, np.ndarray], modality: str, candidates: list[tuple[str, np.ndarray, float]],
                 path: str, sample_rate: int, per_row: int = 5) -> str:
    """The query (path, array) beside its candidates [(path, array, score)], best first, the best framed; PNG."""
    other = "voice" if modality == "face" else "face"
    columns = min(len(candidates), per_row)
    rows = -(-len(candidates) // columns)
    figure, panels = plt.subplots(rows, columns + 1, figsize=(2.6 * (columns + 1), 2.9 * rows), squeeze=False)
    _show_input(panels[0][0], modality, query[1], sample_rate)
    panels[0][0].set_title(f"query ({modality})\n{_short(query[0])}", fontsize="small", fontweight="bold")
    for axes in panels[1:, 0]:
        axes.axis("off")
    for cell in range(len(candidates), rows * columns):  # the last row's empty places
        panels[cell // columns][cell % columns + 1].axis("off")
    for rank, (name, array, score) in enumerate(candidates, start=1):
        axes = panels[(rank - 1) // columns][(rank - 1) % columns + 1]
        _show_input(axes, other, array, sample_rate)
        best = rank == 1
        axes.set_title(f"{'best match' if best else f'rank {rank}'}: {score:.3f}\n{_short(name)}", fontsize="small",
                       color=BEST if best else "black", fontweight="bold" if best else "normal")
        for spine in axes.spines.values():
            spine.set(visible=True, color=BEST if best else "0.7", linewidth=5 if best else 1)
    figure.suptitle(f"which {other} goes with this {modality}? cosine scores", fontsize="medium")
    figure.tight_layout()
    return _save(figure, path, dpi=100)


def comparison_figure(comparison: dict, names: list[str], path: str) -> str:
    """Per list, in %: each method's value of every seed (dots) and their mean (bar); below, each method's
    paired difference against the baseline with its 95% interval. Saved as PNG at `path`."""
    methods, differences = comparison["methods"], comparison["differences"]
    width = max(6.0, 1.1 * len(names) * max(1, len(methods)) ** 0.5)
    figure, panels = plt.subplots(2 if differences else 1, 1, figsize=(width, 7 if differences else 4),
                                  sharex=True, squeeze=False)
    values_axes = panels[0, 0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    step = 0.8 / len(methods)
    offsets = {m["run"]: np.arange(len(names)) - 0.4 + step * (k + 0.5) for k, m in enumerate(methods)}
    color_of = {m["run"]: colors[k % len(colors)] for k, m in enumerate(methods)}
    for method in methods:
        x, color = offsets[method["run"]], color_of[method["run"]]
        values_axes.bar(x, [100 * method["lists"][n]["mean"] for n in names], width=step * 0.9, alpha=0.35,
                        color=color, label=method["run"])
        for position, name in zip(x, names):
            values = 100 * np.asarray(method["lists"][name]["values"])
            values_axes.plot(np.full(len(values), position), values, "o", markersize=3, color=color)
    low = min(100 * min(m["lists"][n]["values"]) for m in methods for n in names)
    values_axes.set(ylabel="value (%)", ylim=(max(0.0, low - 5), 100),
                    title="Per-seed values (dots) and their mean (bars)")
    values_axes.legend(fontsize="small")
    axes = values_axes
    if differences:
        axes = panels[1, 0]
        axes.axhline(0.0, color="black", linewidth=0.8)
        for d in differences:
            entries = [d["lists"][n] for n in names]
            centre = np.array([100 * e["difference"] for e in entries])
            low_high = np.array([[100 * e["ci95"][0], 100 * e["ci95"][1]] for e in entries])
            axes.errorbar(offsets[d["run"]], centre, yerr=[centre - low_high[:, 0], low_high[:, 1] - centre],
                          fmt="o", markersize=4, capsize=3, color=color_of[d["run"]],
                          label=f"{d['run']} − {d['baseline']}")
        axes.set(ylabel="difference (points)", title="Paired difference against the baseline, 95% interval")
        axes.legend(fontsize="small")
    axes.set_xticks(np.arange(len(names)))
    axes.set_xticklabels(names, rotation=35, ha="right", fontsize="small")
    figure.tight_layout()
    return _save(figure, path, dpi=120, bbox_inches="tight")
