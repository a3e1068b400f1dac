"""The training loss of one iteration: AaSM on three pairs, plus the re-gauged BCR weighted by IE."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from easydict import EasyDict

from losses import pairs, reference
from losses.infonce import infonce_terms

PAIRS = ("cross", "face", "voice")
# (X, Y) of each pair as indices into the stack (face, face′, voice, voice′); direction 1 has anchors Y.
PAIR_INDICES = ((0, 2), (0, 1), (2, 3))
CROSS = (True, False, False)
# `training.loss_impl`: how the per-row terms are computed. Both give the same values and gradients.
ROW_TERMS = {"fused": pairs.combined_terms, "reference": reference.combined_terms}
# `auto` takes the fused terms from this batch size on, where they run at least twice as fast as the
# reference (forward + backward, one CPU thread, bench/loss.py); below it, the plain definition.
FUSED_FROM_BATCH = 64


def row_terms(loss_impl: str, batch_size: int) -> Callable[..., reference.Terms]:
    """The per-row terms function that `training.loss_impl` names, `auto` resolved by the batch size."""
    if loss_impl == "auto":
        loss_impl = "fused" if batch_size >= FUSED_FROM_BATCH else "reference"
    return ROW_TERMS[loss_impl]


class IterationLoss(NamedTuple):
    loss: torch.Tensor  # 0-d, float32, what the optimizer steps on
    terms: dict[str, torch.Tensor]  # detached 0-d terms for logging
    correct: torch.Tensor  # k_i of the cross pair (voice anchors): what Instance Equilibrium counts


def total_loss(face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
               identity_weights: torch.Tensor, iteration: int, cfg_training: EasyDict) -> IterationLoss:
    """L = mean ℓ(cross) + mean(ℓ(face) + ℓ(voice)) + [t ≥ regauge_iter]·λ·Σ_pairs Z(b ⊙ w_y).

    Embeddings are B×D, row i of all four from one training identity, whose IE weight w_{y_i} is
    `identity_weights[i]` (any float dtype; the math runs in float32, float64 for float64 input, autocast off). Pure: the
    caller refreshes and accumulates the equilibrium. Terms: aasm_<pair>, bcr_<pair> (row means, pair
    in PAIRS), regauge (the BCR sum before ×regauge_weight, also before regauge_iter) and
    rank_accuracy (the cross pair's k_i/(B − 1), averaged). `bcr_enabled: false` leaves AaSM alone;
    `objective: infonce` replaces the whole loss by `infonce_loss`.
    """
    cfg = cfg_training
    if cfg.objective == "infonce":
        return infonce_loss(face, face_aux, voice, voice_aux, cfg.infonce_temp)
    with torch.autocast(device_type=face.device.type, enabled=False):
        # float32 at least (half precision in, float32 math), float64 kept: the tests check exactness in it
        embeddings = torch.stack([face, face_aux, voice, voice_aux])
        embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
        terms_of = row_terms(cfg.loss_impl, embeddings.shape[1])
        aasm, bcr, correct = terms_of(embeddings, PAIR_INDICES, cross=CROSS, temp=cfg.temp, m_u=cfg.m_u, m_l=cfg.m_l,
                                      hinge=cfg.H)
        loss, regauge = reference.iteration_loss(aasm, bcr, identity_weights.to(embeddings.dtype), iteration, cfg)

    aasm_means, bcr_means = aasm.detach().mean(dim=-1), bcr.detach().mean(dim=-1)
    terms = {f"aasm_{name}": aasm_means[k] for k, name in enumerate(PAIRS)}
    terms.update({f"bcr_{name}": bcr_means[k] for k, name in enumerate(PAIRS)})
    terms["regauge"] = regauge.detach()
    terms["rank_accuracy"] = correct[0].float().mean() / (face.shape[0] - 1)
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
