"""Figures of a test run: ROC curves and score histograms of the verification lists."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from utils.metrics import roc_auc, roc_curve

MAX_CURVE_POINTS = 2000  # a ROC of 65k pairs drawn with every point is slow and looks the same


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
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def score_histograms(verification: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> str:
    """Cosine scores of same-identity (positive) and different-identity (negative) pairs, one panel per list."""
    figure, panels = plt.subplots(1, len(verification), figsize=(4 * len(verification), 3.2), squeeze=False)
    for axes, (name, (scores, labels)) in zip(panels[0], verification.items()):
        bins = np.histogram_bin_edges(scores, 60)
        axes.hist(scores[labels], bins=bins, alpha=0.6, density=True, label=f"positive ({labels.sum()})")
        axes.hist(scores[~labels], bins=bins, alpha=0.6, density=True, label=f"negative ({(~labels).sum()})")
        axes.set(title=name, xlabel="cosine score")
        axes.legend(fontsize="small")
    panels[0][0].set_ylabel("density")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
