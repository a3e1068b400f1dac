"""The method's loss as one module: AaSM on three pairs, plus BCR re-gauged and weighted by Instance Equilibrium.

`ArchetypeAgnosticLoss` takes every hyper-parameter by name (defaults: the paper's, DEFAULTS of the config),
owns IE's counters and weights as buffers (so `state_dict()` carries them into checkpoints) and IE's
refresh schedule. Call it once per iteration on the global batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from config import DEFAULTS
from losses import fused, reference

PAIRS = ("cross", "face", "voice")
# (X, Y) of each pair as indices into the stack (face, face′, voice, voice′); direction 1 has anchors Y.
PAIR_INDICES = ((0, 2), (0, 1), (2, 3))
CROSS = (True, False, False)
# `loss_impl`: how the per-row terms are computed. Both give the same values and gradients.
ROW_TERMS = {"fused": fused.combined_terms, "reference": reference.combined_terms}
# `auto` takes the fused terms from this batch size on, where they run at least twice as fast as the
# reference (forward + backward, one CPU thread, bench/loss.py); below it, the plain definition.
FUSED_FROM_BATCH = 64
PAPER = DEFAULTS["training"]


def row_terms(loss_impl: str, batch_size: int) -> Callable[..., reference.Terms]:
    """The per-row terms function that `loss_impl` names, `auto` resolved by the batch size."""
    if loss_impl == "auto":
        loss_impl = "fused" if batch_size >= FUSED_FROM_BATCH else "reference"
    return ROW_TERMS[loss_impl]


class LossTerms(NamedTuple):
    loss: torch.Tensor  # 0-d, float32, what the optimizer steps on
    terms: dict[str, torch.Tensor]  # detached 0-d terms for logging
    correct: torch.Tensor  # k_i of the cross pair (voice anchors): what Instance Equilibrium counts


class IterationLoss(NamedTuple):
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    refreshed: bool  # the IE weights were refreshed before this iteration's loss


class InstanceEquilibrium(nn.Module):
    """IE: counters R_k (correct), N_k (comparisons) and weights w_k of every training identity k, as buffers,
    refreshed at iteration t when t ≥ ie_start_iter and t mod ie_refresh_iter = 0: the normal density of
    ρ_k = R_k/N_k centred ie_shift·σ below the mean, normalised as ie_normalization says."""

    def __init__(self, num_identities: int, *, ie_start_iter: int = PAPER["ie_start_iter"],
                 ie_refresh_iter: int = PAPER["ie_refresh_iter"], ie_shift: float = PAPER["ie_shift"],
                 ie_normalization: str = PAPER["ie_normalization"]):
        super().__init__()
        self.ie_start_iter, self.ie_refresh_iter = ie_start_iter, ie_refresh_iter
        self.ie_shift, self.ie_normalization = ie_shift, ie_normalization
        self.register_buffer("correct_counts", torch.zeros(num_identities))
        self.register_buffer("comparison_counts", torch.zeros(num_identities))
        self.register_buffer("identity_weights", torch.ones(num_identities))

    def refresh_due(self, iteration: int) -> bool:
        return iteration >= self.ie_start_iter and iteration % self.ie_refresh_iter == 0

    @torch.no_grad()
    def accumulate(self, labels: torch.Tensor, correct: torch.Tensor, comparisons: int) -> None:
        """R_{y_i} += k_i and N_{y_i} += comparisons (B − 1 per row)."""
        correct = correct.detach().to(self.correct_counts.dtype)
        self.correct_counts.index_add_(0, labels, correct)
        self.comparison_counts.index_add_(0, labels, torch.full_like(correct, comparisons))

    @torch.no_grad()
    def refresh(self) -> None:
        """Weights from the counts since the last refresh (`losses.reference.equilibrium_weights`); counters restart."""
        weights = reference.equilibrium_weights(self.correct_counts, self.comparison_counts, self.identity_weights,
                                                self.ie_shift)
        self.identity_weights.copy_(reference.normalized_weights(weights, self.ie_normalization))
        self.correct_counts.zero_()
        self.comparison_counts.zero_()

    def weights_of(self, labels: torch.Tensor) -> torch.Tensor:
        """w_{y_i} for each row's training label (B,)."""
        return self.identity_weights[labels]

    def terms_of(self, face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
                 identity_weights: torch.Tensor, iteration: int) -> LossTerms:
        raise NotImplementedError

    def forward(self, face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
                labels: torch.Tensor, iteration: int) -> IterationLoss:
        """The iteration's loss on the (global) batch, with IE's bookkeeping around it: the weights are
        refreshed first when due (so the new weights already serve this iteration), then the loss is
        computed, then the cross pair's ranking counts are added."""
        refreshed = self.refresh_due(iteration)
        if refreshed:
            self.refresh()
        loss, terms, correct = self.terms_of(face, face_aux, voice, voice_aux, self.weights_of(labels), iteration)
        self.accumulate(labels, correct, labels.shape[0] - 1)
        return IterationLoss(loss, terms, refreshed)


class ArchetypeAgnosticLoss(InstanceEquilibrium):
    """L = mean ℓ(cross) + mean(ℓ(face) + ℓ(voice)) + [t ≥ bcr_start_iter]·λ·Σ_pairs Z(b ⊙ w_y).

    temperature τ of AaSM; bcr_anchor_margin m_u, bcr_margin m_l, bcr_hinge (hinge or circle raw score),
    bcr_regauge_margin g (None: m_u) and bcr_weight λ of BCR; bcr_enabled false leaves AaSM alone;
    bcr_gradient full | none | no_candidate_cosines; ie_enabled false leaves BCR unweighted;
    ie_application and bcr_row_average as `losses.reference.weighted_bcr` reads them; loss_impl reference |
    fused | auto. The readings the release leaves open are documented in docs/method.md.
    """

    def __init__(self, num_identities: int, *, temperature: float = PAPER["temperature"],
                 bcr_anchor_margin: float = PAPER["bcr_anchor_margin"], bcr_margin: float = PAPER["bcr_margin"],
                 bcr_hinge: bool = PAPER["bcr_hinge"], bcr_weight: float = PAPER["bcr_weight"],
                 bcr_start_iter: int = PAPER["bcr_start_iter"], bcr_enabled: bool = PAPER["bcr_enabled"],
                 bcr_gradient: str = PAPER["bcr_gradient"],
                 bcr_regauge_margin: float | None = PAPER["bcr_regauge_margin"],
                 bcr_row_average: str = PAPER["bcr_row_average"], ie_enabled: bool = PAPER["ie_enabled"],
                 ie_start_iter: int = PAPER["ie_start_iter"], ie_refresh_iter: int = PAPER["ie_refresh_iter"],
                 ie_shift: float = PAPER["ie_shift"], ie_normalization: str = PAPER["ie_normalization"],
                 ie_application: str = PAPER["ie_application"], loss_impl: str = PAPER["loss_impl"]):
        super().__init__(num_identities, ie_start_iter=ie_start_iter, ie_refresh_iter=ie_refresh_iter,
                         ie_shift=ie_shift, ie_normalization=ie_normalization)
        self.temperature, self.bcr_anchor_margin, self.bcr_margin = temperature, bcr_anchor_margin, bcr_margin
        self.bcr_hinge, self.bcr_weight, self.bcr_start_iter = bcr_hinge, bcr_weight, bcr_start_iter
        self.bcr_regauge_margin = bcr_anchor_margin if bcr_regauge_margin is None else bcr_regauge_margin
        self.bcr_enabled, self.bcr_gradient, self.bcr_row_average = bcr_enabled, bcr_gradient, bcr_row_average
        self.ie_enabled, self.ie_application, self.loss_impl = ie_enabled, ie_application, loss_impl

    def bcr_in_total(self, iteration: int) -> bool:
        """Whether the iteration's total loss includes λ·BCR."""
        return self.bcr_enabled and iteration >= self.bcr_start_iter

    def readings(self) -> dict[str, str]:
        """The open readings of the release, as `losses.reference.loss_parts` takes them."""
        return dict(bcr_gradient=self.bcr_gradient, ie_application=self.ie_application,
                    bcr_row_average=self.bcr_row_average)

    def row_terms(self, embeddings: torch.Tensor) -> reference.Terms:
        """(AaSM, BCR, k) per row of each pair (3×B) of the (face, face′, voice, voice′) stack (4×B×D)."""
        terms_of = row_terms(self.loss_impl, embeddings.shape[1])
        return terms_of(embeddings, PAIR_INDICES, cross=CROSS, temp=self.temperature, m_u=self.bcr_anchor_margin,
                        m_l=self.bcr_margin, hinge=self.bcr_hinge, regauge_margin=self.bcr_regauge_margin,
                        candidate_gradient=self.bcr_gradient != "no_candidate_cosines")

    def row_weights(self, identity_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The rows' IE weights as BCR takes them: None when IE is off."""
        return identity_weights.to(dtype) if self.ie_enabled else None

    def terms_of(self, face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
                 identity_weights: torch.Tensor, iteration: int) -> LossTerms:
        """The loss of four B×B embedding batches (row i of all four from one identity, whose IE weight is
        `identity_weights[i]`), pure: no IE bookkeeping. The math runs in float32 (float64 for float64 input),
        autocast off. Terms: aasm_<pair>, bcr_<pair> (row means), regauge (the BCR sum before ×λ, also
        before bcr_start_iter) and rank_accuracy (the cross pair's k_i/(B − 1), averaged)."""
        with torch.autocast(device_type=face.device.type, enabled=False):
            # float32 at least (half precision in, float32 math), float64 kept: the tests check exactness in it
            embeddings = torch.stack([face, face_aux, voice, voice_aux])
            embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
            aasm, bcr, correct = self.row_terms(embeddings)
            loss, regauge = reference.iteration_loss(
                aasm, bcr, self.row_weights(identity_weights, embeddings.dtype), iteration, bcr_weight=self.bcr_weight,
                bcr_start_iter=self.bcr_start_iter, bcr_enabled=self.bcr_enabled, **self.readings())
        aasm_means, bcr_means = aasm.detach().mean(dim=-1), bcr.detach().mean(dim=-1)
        terms = {f"aasm_{name}": aasm_means[k] for k, name in enumerate(PAIRS)}
        terms.update({f"bcr_{name}": bcr_means[k] for k, name in enumerate(PAIRS)})
        terms["regauge"] = regauge.detach()
        terms["rank_accuracy"] = correct[0].float().mean() / (face.shape[0] - 1)
        return LossTerms(loss, terms, correct[0])
