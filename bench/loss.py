"""Per-iteration loss, forward + backward: the fused `ArchetypeAgnosticLoss.terms_of` against a per-row loop and against
the plain autograd definition (`training.loss_impl: reference`).

The loop computes the same math the way the release does: masked B×B matrices built by broadcasting,
then a Python double loop over the rows and entries of T for the BCR row means, whose results are
rebuilt from Python numbers (so, as in the release, no gradient flows through BCR), and the
zero-avoiding means by boolean indexing. It is compared with `terms_of` under bcr_gradient none, the same
computation; `terms_of` with BCR gradients (the default, which the loop cannot give) is timed as
well, and so is the plain reference (losses/reference.py, BCR gradient included), which must give the
same loss, input gradients and counts as the fused version. Both must give the same loss, input
gradients and IE counts as the loop. One CPU thread; the loop's best of 3 (B > 64) or 10 runs against
the vectorised losses' best of `rounds` × `repeats` runs.

    python bench/loss.py [--sizes 20 64 256] [--repeats 20] [--rounds 10]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from easydict import EasyDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import load_config  # noqa: E402
from losses import InstanceEquilibrium, create_loss  # noqa: E402
from losses.reference import CROSS_MODAL_OFFSET, INTRA_MODAL_OFFSET  # noqa: E402


def loop_direction(anchors, candidates, offset, cfg):
    """(ℓ, b, k) of one direction: matrices by broadcasting, BCR row means by a double loop."""
    size = anchors.shape[0]
    off_diagonal = 1.0 - torch.eye(size)
    anchors_unit, candidates_unit = F.normalize(anchors, dim=1), F.normalize(candidates, dim=1)
    scores = (anchors.unsqueeze(1) * candidates_unit.unsqueeze(0)).sum(-1)
    own_scores = ((1.0 - off_diagonal) * scores).sum(-1, keepdim=True)
    # Σ over every j holds exp(0) = 1 for j = i; c − 1 makes up the rest.
    aasm = torch.log(offset - 1 + torch.exp(off_diagonal * (scores - own_scores) / cfg.temperature).sum(-1))

    cosines = (anchors_unit.unsqueeze(1) * candidates_unit.unsqueeze(0)).sum(-1)
    candidate_cosines = (candidates_unit.unsqueeze(1) * candidates_unit.unsqueeze(0)).sum(-1)
    positives = ((1.0 - off_diagonal) * cosines).sum(-1, keepdim=True)
    if cfg.bcr_hinge:
        raw = off_diagonal * (cosines - positives + cfg.bcr_margin)
    else:
        scale_positive = torch.clamp_min(1 + cfg.bcr_margin - positives.detach(), 0)
        scale_negative = torch.clamp_min(cosines.detach() + cfg.bcr_margin, 0)
        raw = off_diagonal * (scale_negative * (cosines - cfg.bcr_margin) - scale_positive * (positives - (1 - cfg.bcr_margin)))
    loose = (raw > 0).float()
    regauged = (torch.clamp_min(raw, 0) + torch.clamp_min(loose * (candidate_cosines + cfg.bcr_regauge_margin - positives), 0)
                + torch.clamp_min(loose * (cosines - candidate_cosines + cfg.bcr_regauge_margin), 0))
    row_means = []
    for i in range(size):
        total, count = 0.0, 0
        for j in range(size):
            if regauged[i][j] != 0:
                total = total + regauged[i][j]
                count += 1
        row_means.append((total / count).item() if count else 0.0)
    bcr = torch.tensor(row_means) * (positives.squeeze(1) > cfg.bcr_anchor_margin)
    correct = torch.count_nonzero(off_diagonal * (cosines - positives) < 0, dim=1)
    return aasm, bcr, correct


def zero_avoiding_mean(values):
    kept = values[values != 0]
    return kept.mean() if kept.numel() else torch.tensor(0.0)


def loop_total(face, face_aux, voice, voice_aux, labels, weights, iteration, cfg):
    """The per-iteration loss with the release's loops; returns (loss, cross-pair correct counts)."""
    pair_aasm, regauge, counts = [], torch.tensor(0.0), None
    for x, y, offset in [(face, voice, CROSS_MODAL_OFFSET), (face, face_aux, INTRA_MODAL_OFFSET),
                         (voice, voice_aux, INTRA_MODAL_OFFSET)]:
        aasm1, bcr1, correct1 = loop_direction(y, x, offset, cfg)
        aasm2, bcr2, _ = loop_direction(x, y, offset, cfg)
        counts = counts if counts is not None else correct1
        pair_aasm.append(0.5 * (aasm1 + aasm2))
        nonzero = (bcr1 != 0).float() + (bcr2 != 0).float()
        bcr = bcr1 + bcr2
        bcr[bcr != 0] /= nonzero[bcr != 0]
        if cfg.ie_enabled:
            regauge = regauge + zero_avoiding_mean(bcr * torch.index_select(weights, 0, labels))
        else:
            regauge = regauge + bcr.mean()
    loss = pair_aasm[0].mean() + (pair_aasm[1] + pair_aasm[2]).mean()
    if iteration >= cfg.bcr_start_iter:
        loss = loss + cfg.bcr_weight * regauge
    return loss, counts


def embeddings(size, dim, generator):
    """Four batches around shared identity centres, so that positives are close (π ≈ 0.5) as in training."""
    centres = torch.randn(size, dim, generator=generator)
    return [(centres + torch.randn(size, dim, generator=generator)).requires_grad_() for _ in range(4)]


def timed(function, repeats):
    """Best wall time of `repeats` calls of function() (forward + backward)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 64, 256])
    parser.add_argument("--repeats", type=int, default=20, help="repeats per round of the vectorised loss")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of repeats (the loop runs 3 or 10 times)")
    parser.add_argument("--cfg", default=os.path.join(os.path.dirname(__file__), "..", "config", "cfg.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = EasyDict(load_config(args.cfg).training, loss_impl="fused")
    # BCR and IE active, and no weight refresh inside the timed calls.
    iteration = cfg.bcr_start_iter + int(create_loss(cfg, 1).refresh_due(cfg.bcr_start_iter))
    print("B     loop (s)   fused, BCR detached (s)   ratio   fused, BCR gradient (s)   ratio"
          "   reference, BCR gradient (s)   reference / fused")
    for size in args.sizes:
        generator = torch.Generator().manual_seed(size)
        inputs = embeddings(size, 128, generator)
        labels = torch.randperm(4 * size, generator=generator)[:size]
        equilibrium = InstanceEquilibrium(4 * size)
        equilibrium.identity_weights.copy_(torch.rand(4 * size, generator=generator) + 0.5)
        detached, reference = EasyDict(cfg, bcr_gradient="none"), EasyDict(cfg, loss_impl="reference")

        def vectorised(settings, target=equilibrium):
            loss, _, correct = create_loss(settings, 1).terms_of(*inputs, target.weights_of(labels), iteration)
            loss.backward()
            return loss, correct

        def loop():
            loss, counts = loop_total(*inputs, labels, equilibrium.identity_weights, iteration, cfg)
            loss.backward()
            return loss, counts

        def result(function, *arguments):
            """(loss, input gradients, counts) of one forward + backward."""
            for x in inputs:
                x.grad = None
            loss, counts = function(*arguments)
            return loss, [x.grad.clone() for x in inputs], counts

        # The loop: same loss, gradients and IE counts as the fused loss with BCR detached.
        for theirs, ours in [(result(loop), result(vectorised, detached)),
                             (result(vectorised, reference), result(vectorised, cfg))]:
            torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
            for mine, other in zip(ours[1], theirs[1]):
                torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-6)
            assert torch.equal(ours[2], theirs[2])
        loop_time = timed(loop, 3 if size > 64 else 10)
        # Interleaved rounds: on a shared or virtual machine, page-fault and cache costs drift over
        # seconds, and the best of many short runs is what the computation itself takes.
        times = {"detached": float("inf"), "fused": float("inf"), "reference": float("inf")}
        for _ in range(args.rounds):
            for name, settings in [("detached", detached), ("fused", cfg), ("reference", reference)]:
                times[name] = min(times[name], timed(lambda: vectorised(settings), args.repeats))
        print(f"{size:<5} {loop_time:9.4f}   {times['detached']:23.5f}   {loop_time / times['detached']:5.0f}x"
              f"   {times['fused']:23.5f}   {loop_time / times['fused']:5.0f}x"
              f"   {times['reference']:27.5f}   {times['reference'] / times['fused']:17.2f}x", flush=True)


if __name__ == "__main__":
    main()
