"""Draws the method's overview (docs/figures/overview.png) in the code's terms: the two encoders, the three
pairs, AaSM, BCR from `bcr_start_iter` with weight λ, and the IE weights refreshed every `ie_refresh_iter`.

    python docs/figures/overview.py [--output PATH]

The picture is deterministic: the same matplotlib gives the same bytes (no timestamp, no version in the PNG).
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "overview.png")

ENCODER = "#dbe9f6"
PAIR = "#fdf2d0"
LOSS = "#e3f1dd"
SCHEDULE = "#f6dede"

# name: (centre x, centre y, width, height, colour, text)
BOXES = {
    "faces": (1.3, 5.2, 2.2, 0.9, "white", "two face images\nof each of B identities"),
    "voices": (1.3, 1.8, 2.2, 0.9, "white", "two voice clips\nof each of B identities"),
    "face_encoder": (4.1, 5.2, 2.2, 0.9, ENCODER, "face encoder\nIR + head  →  F, F′ (B×128)"),
    "voice_encoder": (4.1, 1.8, 2.2, 0.9, ENCODER, "voice encoder\nResNetSE34L + head  →  V, V′"),
    "pair_face": (7.0, 5.1, 2.0, 0.7, PAIR, "face pair (F, F′)"),
    "pair_cross": (7.0, 3.5, 2.0, 0.7, PAIR, "cross pair (F, V)\nvoice anchors"),
    "pair_voice": (7.0, 1.9, 2.0, 0.7, PAIR, "voice pair (V, V′)"),
    "aasm": (10.2, 5.2, 2.6, 1.0, LOSS, "AaSM of each pair\n(τ = temperature)\nevery iteration"),
    "bcr": (10.2, 3.1, 2.6, 1.1, LOSS, "BCR: re-gauged scores b\n(bcr_margin, bcr_anchor_margin,\nbcr_hinge)\nfrom bcr_start_iter"),
    "ie": (10.2, 0.9, 2.6, 1.1, SCHEDULE, "IE: weight w_y per identity\nfrom the cross pair's rankings k,\nrefreshed every ie_refresh_iter\n(from ie_start_iter)"),
    "total": (13.9, 3.1, 2.6, 1.7, LOSS,
              "loss L =\nAaSM(cross)\n+ AaSM(face) + AaSM(voice)\n+ [t ≥ bcr_start_iter]\n· λ · Σ pairs Z(b ⊙ w_y)\n(λ = bcr_weight)"),
}
# The three pairs, drawn as one dashed room: AaSM and BCR take each of them.
PAIRS = (7.0, 3.5, 2.5, 4.6, "none", "")

# (from, to, label)
ARROWS = [
    ("faces", "face_encoder", ""),
    ("voices", "voice_encoder", ""),
    ("face_encoder", "pair_face", ""),
    ("face_encoder", "pair_cross", ""),
    ("voice_encoder", "pair_cross", ""),
    ("voice_encoder", "pair_voice", ""),
    ("pairs", "aasm", "each pair"),
    ("pairs", "bcr", "each pair"),
    ("pair_cross", "ie", "rankings k"),
    ("ie", "bcr", "w_y"),
    ("aasm", "total", ""),
    ("bcr", "total", ""),
]


def edge_point(box: tuple, toward: tuple) -> tuple[float, float]:
    """Where the line from the box's centre toward a point leaves the box."""
    x, y, width, height = box[:4]
    dx, dy = toward[0] - x, toward[1] - y
    scale = min(width / 2 / abs(dx) if dx else float("inf"), height / 2 / abs(dy) if dy else float("inf"))
    return x + dx * scale, y + dy * scale


def draw(output: str) -> None:
    figure, axes = plt.subplots(figsize=(15.5, 6.6), dpi=100)
    axes.set_xlim(0, 15.4)
    axes.set_ylim(0, 6.6)
    axes.axis("off")
    for x, y, width, height, colour, text in BOXES.values():
        axes.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                      facecolor=colour, edgecolor="#404040", linewidth=1.2))
        axes.text(x, y, text, ha="center", va="center", fontsize=9.5)
    x, y, width, height = PAIRS[:4]
    axes.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                  facecolor="none", edgecolor="#808080", linewidth=1.0, linestyle="--"))
    axes.text(x, y + height / 2 - 0.2, "the three pairs", ha="center", fontsize=9, color="#505050")
    rooms = dict(BOXES, pairs=PAIRS)
    for start, end, label in ARROWS:
        a, b = rooms[start], rooms[end]
        tail, head = edge_point(a, b[:2]), edge_point(b, a[:2])
        axes.add_patch(FancyArrowPatch(tail, head, arrowstyle="-|>", mutation_scale=14, color="#404040",
                                       linewidth=1.1, shrinkA=3, shrinkB=3))
        if label:
            axes.text((tail[0] + head[0]) / 2, (tail[1] + head[1]) / 2 + 0.12, label, ha="center", fontsize=8.5,
                      style="italic", color="#303030")
    axes.set_title("AaSM + BCR + IE: losses.archetype_agnostic.ArchetypeAgnosticLoss, called once per iteration",
                   fontsize=11)
    figure.tight_layout()
    figure.savefig(output, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="PNG to write (default: %(default)s)")
    draw(parser.parse_args().output)


if __name__ == "__main__":
    main()
