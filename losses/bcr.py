"""BCR (Bilateral Connection Re-gauging), fused: `losses.reference.bcr` on precomputed cosines, with its gradient.

Rows are anchors, as in `losses.aasm`. Masks are float 0/1 matrices that enter by multiplication: on
the CPU, boolean-mask kernels (masked_fill, where) run many times slower on unpredictable masks.
"""
from __future__ import annotations

import torch

from losses.aasm import positive_cosines
from losses.reference import REGAUGE_MARGIN


def raw_scores(cosines: torch.Tensor, positives: torch.Tensor, m_l: float,
               hinge: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """t_ij (…×B×B) from S_ij and π_i (…×B×1), and the circle variant's constant scales a⁻_ij, a⁺_i (else None)."""
    if hinge:
        return cosines - (positives - m_l), None, None
    scale_positive = torch.relu(1 + m_l - positives)
    scale_negative = torch.relu(cosines + m_l)
    return scale_negative * (cosines - m_l) - scale_positive * (positives - (1 - m_l)), scale_negative, scale_positive


def greater(values: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """[v > threshold] as a float 0/1 tensor, in the layout of `values` (one pass; a bool result would
    need a second pass to convert)."""
    return torch.gt(values, threshold, out=torch.empty_like(values))


def loose_mask(raw: torch.Tensor) -> torch.Tensor:
    """σ_ij = [t_ij > 0] for j ≠ i."""
    loose = greater(raw, 0.0)
    loose.diagonal(dim1=-2, dim2=-1).zero_()
    return loose


def bcr_term(cosines: torch.Tensor, candidate_cosines: torch.Tensor, *, m_u: float, m_l: float,
             hinge: bool) -> torch.Tensor:
    """b_i (…×B) from S_ij = cos(p_i, q_j) and C_ij = cos(q_i, q_j) (…×B×B).

    t_ij: hinge S_ij − π_i + m_l, or the circle variant a⁻_ij(S_ij − m_l) − a⁺_i(π_i − (1 − m_l)) with
    constant scales; σ_ij = [t_ij > 0] (j ≠ i); T_ij = σ_ij(t_ij + [C_ij + g − π_i]₊ + [S_ij − C_ij + g]₊);
    b_i = [π_i > m_u] · Σ_j T_ij / Σ_j σ_ij. T_ij > 0 exactly where σ_ij = 1, so this is the mean of
    the non-zero entries of row i of T.
    """
    positives = positive_cosines(cosines)
    raw, _, _ = raw_scores(cosines, positives, m_l, hinge)
    loose = loose_mask(raw)
    work = (candidate_cosines - (positives - REGAUGE_MARGIN)).relu_()
    raw.add_(work).add_(torch.sub(cosines, candidate_cosines, out=work).add_(REGAUGE_MARGIN).relu_())
    return raw.mul_(loose).sum(dim=-1) * (positives.squeeze(-1) > m_u) / loose.sum(dim=-1).clamp(min=1)


def bcr_gradient(grad: torch.Tensor, cosines: torch.Tensor, candidate_cosines: torch.Tensor, *, m_u: float,
                 m_l: float, hinge: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """∂L/∂S and ∂L/∂C (…×B×B) from g = ∂L/∂b, with w_i = g_i·[π_i > m_u]/Σ_j σ_ij:

    ∂S_ij = w_i σ_ij(a⁻_ij + [S_ij − C_ij + g > 0]), ∂C_ij = w_i σ_ij([C_ij + g − π_i > 0] − [S_ij − C_ij + g > 0]),
    ∂π_i = −w_i Σ_j σ_ij(a⁺_i + [C_ij + g − π_i > 0]); a⁺ = a⁻ = 1 for the hinge variant. σ and the
    hinge masks are recomputed rather than kept from the forward pass: that keeps four B×B tensors per
    direction out of memory, and out of the forward pass when BCR is detached.
    """
    positives = positive_cosines(cosines)
    raw, scale_negative, scale_positive = raw_scores(cosines, positives, m_l, hinge)
    loose = loose_mask(raw)
    counts = loose.sum(dim=-1, keepdim=True)
    weights = grad.unsqueeze(-1) * (positives > m_u) / counts.clamp(min=1)
    candidate_active = greater(candidate_cosines, positives - REGAUGE_MARGIN).mul_(loose)
    cross_active = torch.gt(torch.sub(cosines, candidate_cosines, out=raw), -REGAUGE_MARGIN, out=raw).mul_(loose)
    slopes = counts if scale_positive is None else counts * scale_positive
    grad_positives = -weights * (slopes + candidate_active.sum(dim=-1, keepdim=True))
    grad_candidates = candidate_active.sub_(cross_active).mul_(weights)
    if scale_negative is None:
        grad_cosines = cross_active.add_(loose)
    else:
        grad_cosines = cross_active.addcmul_(loose, scale_negative)
    grad_cosines.mul_(weights).diagonal(dim1=-2, dim2=-1).add_(grad_positives.squeeze(-1))
    return grad_cosines, grad_candidates
