"""BCR (Bilateral Connection Re-gauging): screen loose pairs and add a re-gauged hinge on them."""
from __future__ import annotations

import torch

# The re-gauging margin g: a fixed constant in the release, not a config key.
REGAUGE_MARGIN = 0.15


def nonzero_mean(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Z(v): mean of the non-zero entries along `dim`, 0 where there are none."""
    count = (values != 0).sum(dim)
    return torch.where(count > 0, values.sum(dim) / count.clamp(min=1), torch.zeros_like(values.sum(dim)))


def raw_scores(cosines: torch.Tensor, positives: torch.Tensor, m_l: float, hinge: bool) -> torch.Tensor:
    """t_ij (…×B×B) from S_ij and π_i (…×B×1): hinge S_ij − π_i + m_l, or the circle variant."""
    if hinge:
        return cosines - positives + m_l
    # Circle variant: the scale factors a⁺, a⁻ are constants (no gradient), as in circle loss.
    scale_positive = torch.relu(1 + m_l - positives).detach()
    scale_negative = torch.relu(cosines + m_l).detach()
    return scale_negative * (cosines - m_l) - scale_positive * (positives - (1 - m_l))


def bcr_term(cosines: torch.Tensor, candidate_cosines: torch.Tensor, *, m_u: float, m_l: float,
             hinge: bool) -> torch.Tensor:
    """b_i (…×B) from S_ij = cos(p_i, q_j) and C_ij = cos(q_i, q_j) (…×B×B)."""
    size = cosines.shape[-1]
    positives = cosines.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)  # π_i
    off_diagonal = ~torch.eye(size, dtype=torch.bool, device=cosines.device)
    raw = raw_scores(cosines, positives, m_l, hinge)
    loose = (raw > 0) & off_diagonal  # σ_ij, with t_ii = 0
    regauged = (raw + torch.relu(candidate_cosines + REGAUGE_MARGIN - positives)
                + torch.relu(cosines - candidate_cosines + REGAUGE_MARGIN))
    per_anchor = nonzero_mean(torch.where(loose, regauged, torch.zeros_like(regauged)))
    # Only anchors whose own pair is already close enough (π_i > m_u) are re-gauged.
    return torch.where(positives.squeeze(-1) > m_u, per_anchor, torch.zeros_like(per_anchor))
