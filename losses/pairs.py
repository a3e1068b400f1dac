"""Per-row terms of one pair of embedding batches: AaSM, BCR and correct-ranking counts, in both directions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.aasm import CROSS_MODAL_OFFSET, INTRA_MODAL_OFFSET, aasm_term
from losses.bcr import bcr_term


def pair_terms(anchors: torch.Tensor, candidates: torch.Tensor, *, cross: bool, temp: float, m_u: float,
               m_l: float, hinge: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ℓ_i, b_i, k_i) for anchors P and candidates Q (…×B×D; row i of both = identity i), each (…×B)."""
    candidates_unit = F.normalize(candidates, dim=-1)
    scores = anchors @ candidates_unit.transpose(-1, -2)  # s_ij = ⟨p_i, q̂_j⟩
    cosines = F.normalize(anchors, dim=-1) @ candidates_unit.transpose(-1, -2)  # S_ij
    candidate_cosines = candidates_unit @ candidates_unit.transpose(-1, -2)  # C_ij
    aasm = aasm_term(scores, temp, CROSS_MODAL_OFFSET if cross else INTRA_MODAL_OFFSET)
    bcr = bcr_term(cosines, candidate_cosines, m_u=m_u, m_l=m_l, hinge=hinge)
    # k_i = #{j ≠ i : S_ij < π_i}; the diagonal never counts (S_ii = π_i).
    correct = (cosines < cosines.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)).sum(-1).to(cosines.dtype)
    return aasm, bcr, correct


def combine_directions(first: tuple[torch.Tensor, ...], second: tuple[torch.Tensor, ...]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AaSM ½(ℓ¹+ℓ²); BCR (b¹+b²) over how many of them are non-zero; counts of direction 1."""
    (aasm1, bcr1, correct1), (aasm2, bcr2, _) = first, second
    nonzero = (bcr1 != 0).to(bcr1.dtype) + (bcr2 != 0).to(bcr2.dtype)
    bcr = torch.where(nonzero > 0, (bcr1 + bcr2) / nonzero.clamp(min=1), torch.zeros_like(bcr1))
    return 0.5 * (aasm1 + aasm2), bcr, correct1


def bidirectional_terms(x: torch.Tensor, y: torch.Tensor, *, cross: bool, temp: float, m_u: float, m_l: float,
                        hinge: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row terms of the pair (X, Y) (…×B×D): direction 1 has anchors Y, candidates X; direction 2 the reverse."""
    stacked = pair_terms(torch.stack([y, x]), torch.stack([x, y]), cross=cross, temp=temp, m_u=m_u, m_l=m_l,
                         hinge=hinge)
    return combine_directions(tuple(t[0] for t in stacked), tuple(t[1] for t in stacked))
