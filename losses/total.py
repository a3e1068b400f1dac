"""The training loss of one iteration: AaSM on three pairs, plus the re-gauged BCR weighted by IE."""
from __future__ import annotations

from typing import NamedTuple

import torch
from easydict import EasyDict

from losses.bcr import nonzero_mean
from losses.infonce import infonce_terms
from losses.pairs import combine_directions, pairwise_terms

PAIRS = ("cross", "face", "voice")
# (X, Y) of each pair as indices into the stack (face, face′, voice, voice′); direction 1 has anchors Y.
PAIR_INDICES = ((0, 2), (0, 1), (2, 3))


class IterationLoss(NamedTuple):
    loss: torch.Tensor  # 0-d, float32, what the optimizer steps on
    terms: dict[str, torch.Tensor]  # detached 0-d terms for logging
    correct: torch.Tensor  # k_i of the cross pair (voice anchors): what Instance Equilibrium counts


def total_loss(face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
               identity_weights: torch.Tensor, iteration: int, cfg_training: EasyDict) -> IterationLoss:
    """L = mean ℓ(cross) + mean(ℓ(face) + ℓ(voice)) + [t ≥ regauge_iter]·λ·Σ_pairs Z(b ⊙ w_y).

    Embeddings are B×D, row i of all four from one training identity, whose IE weight w_{y_i} is
    `identity_weights[i]` (any float dtype; the math runs in float32 with autocast off). Pure: the
    caller refreshes and accumulates the equilibrium. Terms: aasm_<pair>, bcr_<pair> (row means, pair
    in PAIRS), regauge (the BCR sum before ×regauge_weight, also before regauge_iter) and
    rank_accuracy (the cross pair's k_i/(B − 1), averaged). `bcr_enabled: false` leaves AaSM alone;
    `objective: infonce` replaces the whole loss by `infonce_loss`.
    """
    cfg = cfg_training
    if cfg.objective == "infonce":
        return infonce_loss(face, face_aux, voice, voice_aux, cfg.infonce_temp)
    with torch.autocast(device_type=face.device.type, enabled=False):
        face, face_aux, voice, voice_aux = (x.float() for x in (face, face_aux, voice, voice_aux))
        size = face.shape[0]
        options = dict(temp=cfg.temp, m_u=cfg.m_u, m_l=cfg.m_l, hinge=cfg.H)
        # The three pairs in one batched call; rows of every term: PAIRS.
        aasm, bcr, correct = combine_directions(*pairwise_terms(
            torch.stack([face, face_aux, voice, voice_aux]), PAIR_INDICES, cross=(True, False, False), **options))
        if cfg.bcr_detach:
            bcr = bcr.detach()  # the release: BCR changes only the logged loss
        if cfg.weighted_enabled:
            regauge = nonzero_mean(bcr * identity_weights.float()).sum()
        else:
            regauge = bcr.mean(dim=-1).sum()  # the release without IE: zeros included

        aasm_means = aasm.mean(dim=-1)  # mean ℓ(cross) + mean(ℓ(face) + ℓ(voice)) = their sum
        loss = aasm_means.sum()
        if cfg.bcr_enabled and iteration >= cfg.regauge_iter:
            loss = loss + cfg.regauge_weight * regauge

    aasm_means, bcr_means = aasm_means.detach(), bcr.detach().mean(dim=-1)
    terms = {f"aasm_{name}": aasm_means[k] for k, name in enumerate(PAIRS)}
    terms.update({f"bcr_{name}": bcr_means[k] for k, name in enumerate(PAIRS)})
    terms["regauge"] = regauge.detach()
    terms["rank_accuracy"] = correct[0].float().mean() / (size - 1)
    return IterationLoss(loss, terms, correct[0])


def infonce_loss(face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
                 temp: float) -> IterationLoss:
    """Σ_pairs mean symmetric InfoNCE over the pairs AaSM uses; terms infonce_<pair> and rank_accuracy."""
    with torch.autocast(device_type=face.device.type, enabled=False):
        stacked = torch.stack([x.float() for x in (face, face_aux, voice, voice_aux)])
        per_row, correct = infonce_terms(stacked, list(PAIR_INDICES), temp)
        means = per_row.mean(dim=-1)
    terms = {f"infonce_{name}": value for name, value in zip(PAIRS, means.detach())}
    terms["rank_accuracy"] = correct.float().mean() / (face.shape[0] - 1)
    return IterationLoss(means.sum(), terms, correct)
