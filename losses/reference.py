"""The method's loss written plainly with autograd: the definition the fused `losses.fused` reproduces.

The term functions read …×B×D embedding batches (row i of each batch from identity i, any leading
dimensions), one function per term in the paper's symbols; the README's "Method" section gives the
whole iteration. `training.loss_impl: reference` trains with these functions; `fused` computes the same
values and gradients with one hand-written backward pass (losses/fused.py); `auto`, the default, takes
the fused form where it is at least twice as fast. The tests hold the two together on every reference case.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

# The constant c of AaSM: the release's 1 + exp(0) + 3.4 across modalities and 2 + exp(0) + 3 within one.
CROSS_MODAL_OFFSET = 5.4
INTRA_MODAL_OFFSET = 6.0
Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def off_diagonal(cosines: torch.Tensor) -> torch.Tensor:
    """[j ≠ i] as a boolean B×B mask."""
    size = cosines.shape[-1]
    return ~torch.eye(size, dtype=torch.bool, device=cosines.device)


def diagonal_column(matrix: torch.Tensor) -> torch.Tensor:
    """M_ii as a …×B×1 column, to compare or subtract row by row."""
    return matrix.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)


def nonzero_mean(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Z(v): mean of the non-zero entries along `dim`, 0 where there are none."""
    return values.sum(dim) / (values != 0).sum(dim).clamp(min=1)


def aasm(anchors: torch.Tensor, candidates: torch.Tensor, offset: float | torch.Tensor, temp: float) -> torch.Tensor:
    """AaSM, per anchor: ℓ_i = log(c + Σ_{j≠i} exp((s_ij − s_ii)/τ)), s_ij = ⟨p_i, q̂_j⟩ → …×B.

    The anchor p_i is not normalised, the candidate is (q̂_j = q_j/‖q_j‖); c = 5.4 across modalities,
    6 within one (a number, or a …×1 tensor of one c per batch). Written as a log-sum-exp so that long
    anchors cannot overflow the exponential.
    """
    scores = anchors @ F.normalize(candidates, dim=-1).mT
    exponents = ((scores - diagonal_column(scores)) / temp).masked_fill(~off_diagonal(scores), -math.inf)
    others = torch.logsumexp(exponents, dim=-1)
    return torch.logaddexp(others, torch.log(torch.as_tensor(offset, dtype=others.dtype, device=others.device)))


def bcr(anchors: torch.Tensor, candidates: torch.Tensor, *, m_u: float, m_l: float, hinge: bool,
        regauge_margin: float, candidate_gradient: bool = True) -> torch.Tensor:
    """BCR, per anchor: b_i = [π_i > m_u] · Z(T_i·) → …×B.

    S_ij = cos(p_i, q_j), π_i = S_ii, C_ij = cos(q_i, q_j). The raw score t_ij (j ≠ i) is the hinge
    S_ij − π_i + m_l, or the circle variant a⁻_ij(S_ij − m_l) − a⁺_i(π_i − (1 − m_l)) with the constant
    (no-gradient) scales a⁺_i = [1 + m_l − π_i]₊, a⁻_ij = [S_ij + m_l]₊. Loose pairs σ_ij = [t_ij > 0]
    are re-gauged by the candidates' own cosines, with g = `regauge_margin` (the release's 0.15):
    T_ij = [t_ij]₊ + σ_ij([C_ij + g − π_i]₊ + [S_ij − C_ij + g]₊), and Z averages the non-zero T_ij.
    `candidate_gradient` false holds C constant (no gradient through the candidate–candidate cosines).
    """
    anchors_unit, candidates_unit = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    cosines = anchors_unit @ candidates_unit.mT
    candidate_cosines = candidates_unit @ candidates_unit.mT
    if not candidate_gradient:
        candidate_cosines = candidate_cosines.detach()
    positives = diagonal_column(cosines)
    if hinge:
        raw = cosines - positives + m_l
    else:
        scale_positive = torch.relu(1 + m_l - positives).detach()
        scale_negative = torch.relu(cosines + m_l).detach()
        raw = scale_negative * (cosines - m_l) - scale_positive * (positives - (1 - m_l))
    loose = (raw > 0) & off_diagonal(cosines)
    regauged = torch.where(loose, raw + torch.relu(candidate_cosines + regauge_margin - positives)
                           + torch.relu(cosines - candidate_cosines + regauge_margin), 0)
    return nonzero_mean(regauged) * (positives.squeeze(-1) > m_u)


def correct_rankings(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """k_i = #{j ≠ i : S_ij < π_i}, how many other candidates anchor i ranks below its own (…×B, integer)."""
    cosines = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).mT
    return ((cosines < diagonal_column(cosines)) & off_diagonal(cosines)).sum(-1)


def combine_directions(aasm_terms: torch.Tensor, bcr_terms: torch.Tensor, correct: torch.Tensor) -> Terms:
    """Per row of a pair, from its two directions (dimension 0): AaSM ½(ℓ¹ + ℓ²); BCR (b¹ + b²) over how
    many of b¹, b² are non-zero (0 if none); the correct counts k¹ of direction 1, passed through."""
    return (aasm_terms.mean(0), bcr_terms.sum(0) / torch.count_nonzero(bcr_terms.detach(), dim=0).clamp(min=1),
            correct)


def combined_terms(embeddings: torch.Tensor, pairs: Sequence[tuple[int, int]], *, cross: Sequence[bool],
                   temp: float, m_u: float, m_l: float, hinge: bool, regauge_margin: float,
                   candidate_gradient: bool = True) -> Terms:
    """(AaSM, BCR, k) per row of each pair (X, Y) = (embeddings[x], embeddings[y]), each P×B.

    `embeddings` is K×B×D; `cross` holds one flag per pair (c = 5.4 when X and Y are different
    modalities, else 6). Direction 1 has anchors Y and candidates X, direction 2 the reverse; all 2P
    directions go through one batched call. BCR's options as in `bcr`.
    """
    x_batches, y_batches = [x for x, _ in pairs], [y for _, y in pairs]
    anchors = torch.stack([embeddings[k] for k in y_batches + x_batches])
    candidates = torch.stack([embeddings[k] for k in x_batches + y_batches])
    offsets = torch.tensor([CROSS_MODAL_OFFSET if flag else INTRA_MODAL_OFFSET for flag in cross] * 2,
                           dtype=embeddings.dtype, device=embeddings.device).unsqueeze(-1)
    both = (2, len(pairs), embeddings.shape[1])  # direction × pair × row
    return combine_directions(aasm(anchors, candidates, offsets, temp).view(both),
                              bcr(anchors, candidates, m_u=m_u, m_l=m_l, hinge=hinge, regauge_margin=regauge_margin,
                                  candidate_gradient=candidate_gradient).view(both),
                              correct_rankings(anchors[:len(pairs)], candidates[:len(pairs)]))


def weighted_bcr(bcr_terms: torch.Tensor, identity_weights: torch.Tensor | None, *, ie_application: str,
                 bcr_row_average: str) -> torch.Tensor:
    """Σ_pairs of BCR's weighted average, from the per-row BCR scores of the pairs (P×B) and the IE weight of
    each row's identity (B,; None without IE).

    `ie_application` row: row i weighted by w_{y_i}, Z(b ⊙ w_y) (the paper's reading); batch: the release's
    (B,) × (B, 1) broadcast, the B×B products b_i·w_{y_j} averaged, which is one scalar weight per batch.
    `bcr_row_average` nonzero: Z, the mean of the non-zero entries; all: the plain mean over the entries,
    zeros included; coupled: the release, nonzero with IE and all without.
    """
    if identity_weights is None:
        weighted = bcr_terms
    elif ie_application == "row":
        weighted = bcr_terms * identity_weights
    else:
        weighted = (bcr_terms.unsqueeze(-1) * identity_weights).flatten(-2)
    nonzero = bcr_row_average == "nonzero" or (bcr_row_average == "coupled" and identity_weights is not None)
    return (nonzero_mean(weighted) if nonzero else weighted.mean(-1)).sum()


def loss_parts(aasm_terms: torch.Tensor, bcr_terms: torch.Tensor, identity_weights: torch.Tensor | None, *,
               bcr_gradient: str = "full", ie_application: str = "row",
               bcr_row_average: str = "coupled") -> tuple[torch.Tensor, torch.Tensor]:
    """(A, R) from the per-row terms of the pairs (cross, face, voice) (3×B): A = mean ℓ(cross) + mean(ℓ(face) +
    ℓ(voice)), the AaSM sum, and R = Σ_pairs Z(b ⊙ w_y), the re-gauged BCR sum as `weighted_bcr` reads it, with
    w_y = `identity_weights` (B,), the IE weight of each row's identity (None without IE). `bcr_gradient` none
    keeps R out of the gradient, as the release does; no_candidate_cosines acts on the per-row terms."""
    if bcr_gradient == "none":
        bcr_terms = bcr_terms.detach()
    return aasm_terms.mean(-1).sum(), weighted_bcr(bcr_terms, identity_weights, ie_application=ie_application,
                                                   bcr_row_average=bcr_row_average)


def iteration_loss(aasm_terms: torch.Tensor, bcr_terms: torch.Tensor, identity_weights: torch.Tensor | None,
                   iteration: int, *, bcr_weight: float, bcr_start_iter: int, bcr_enabled: bool,
                   **readings: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of iteration t and its BCR sum R, from the per-row terms of the pairs (3×B):

    L = A + [t ≥ bcr_start_iter] · λ · R, with A and R of `loss_parts` (`readings`: its keywords),

    λ = bcr_weight (10); `bcr_enabled` false leaves AaSM alone (R is still returned, for logging).
    """
    aasm_sum, regauge = loss_parts(aasm_terms, bcr_terms, identity_weights, **readings)
    if bcr_enabled and iteration >= bcr_start_iter:
        return aasm_sum + bcr_weight * regauge, regauge
    return aasm_sum, regauge


def equilibrium_weights(correct_counts: torch.Tensor, comparison_counts: torch.Tensor,
                        weights: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """IE refresh: w_k = N(ρ_k; μ, σ), ρ_k = R_k/N_k, over the identities seen since the last refresh.

    σ is the unbiased std of the seen ρ and μ = mean(ρ) − shift·σ (the release: shift 1); the density is
    not renormalised here (`normalized_weights`). Unseen
    identities (N_k = 0) keep their weight and stay out of the mean and std; with fewer than two seen
    identities, or σ = 0, the density is undefined and every weight is kept. Masks only, so that it
    never waits for a GPU.
    """
    seen = comparison_counts > 0
    count = seen.sum().to(weights.dtype)
    ratio = correct_counts / comparison_counts.clamp(min=1)
    mean = torch.where(seen, ratio, 0).sum() / count
    std = (torch.where(seen, ratio - mean, 0).square().sum() / (count - 1)).sqrt()
    density = torch.exp(-0.5 * ((ratio - (mean - shift * std)) / std).square()) / (std * math.sqrt(2 * math.pi))
    usable = seen & (count >= 2) & (std > 0) & torch.isfinite(density)
    return torch.where(usable, density, weights)


def normalized_weights(weights: torch.Tensor, normalization: str) -> torch.Tensor:
    """The IE weights of all K identities as `normalization` reads them: none (the release's raw densities),
    mean (w·K/Σw, mean 1: the predecessor's convention) or sum (w/Σw)."""
    if normalization == "none":
        return weights
    total = weights.sum()
    return weights * (weights.numel() / total) if normalization == "mean" else weights / total
