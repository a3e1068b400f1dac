"""BCR (Bilateral Connection Re-gauging): screen loose pairs and add a re-gauged hinge on them."""
from __future__ import annotations

import torch

# The re-gauging margin g: a fixed constant in the release, not a config key.
REGAUGE_MARGIN = 0.15


def nonzero_mean(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Z(v): mean of the non-zero entries along `dim`, 0 where there are none."""
    return values.sum(dim) / (values != 0).sum(dim).clamp(min=1)


def raw_scores(cosines: torch.Tensor, positives: torch.Tensor, m_l: float, hinge: bool) -> torch.Tensor:
    """t_ij (…×B×B) from S_ij and π_i (…×B×1): hinge S_ij − π_i + m_l, or the circle variant."""
    if hinge:
        return cosines - (positives - m_l)
    # Circle variant: the scale factors a⁺, a⁻ are constants (no gradient), as in circle loss.
    scale_positive = torch.relu(1 + m_l - positives).detach()
    scale_negative = torch.relu(cosines + m_l).detach()
    return scale_negative * (cosines - m_l) - scale_positive * (positives - (1 - m_l))


def bcr_term(cosines: torch.Tensor, candidate_cosines: torch.Tensor, *, m_u: float, m_l: float,
             hinge: bool) -> torch.Tensor:
    """b_i (…×B) from S_ij = cos(p_i, q_j) and C_ij = cos(q_i, q_j) (…×B×B)."""
    size = cosines.shape[-1]
    positives = cosines.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # π_i
    raw = raw_scores(cosines, positives, m_l, hinge)
    # σ_ij = [t_ij > 0], with t_ii = 0. T_ij = t_ij + (two hinges ≥ 0) is non-zero exactly where
    # σ_ij = 1, so the mean of a row's non-zero entries is the mean over its loose entries.
    tight = (raw <= 0) | torch.eye(size, dtype=torch.bool, device=cosines.device)
    regauged = (raw + torch.relu(candidate_cosines - (positives - REGAUGE_MARGIN))
                + torch.relu(cosines - candidate_cosines + REGAUGE_MARGIN))
    per_anchor = regauged.masked_fill(tight, 0).sum(-1) / (size - tight.sum(-1)).clamp(min=1)
    # Only anchors whose own pair is already close enough (π_i > m_u) are re-gauged.
    return per_anchor * (positives.squeeze(-1) > m_u)
