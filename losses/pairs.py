"""Per-row terms of one pair of embedding batches: AaSM, BCR and correct-ranking counts, in both directions."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from losses.aasm import CROSS_MODAL_OFFSET, INTRA_MODAL_OFFSET, aasm_term
from losses.bcr import bcr_term

Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def correct_rankings(cosines: torch.Tensor) -> torch.Tensor:
    """k_i = #{j ≠ i : S_ij < π_i} (…×B, integer); the diagonal never counts (S_ii = π_i)."""
    return (cosines < cosines.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)).sum(-1)


def offsets(cross: bool | Sequence[bool]) -> float | list[float]:
    """AaSM's c: cross-modal or intra-modal, for one pair or for each pair of a stack."""
    if isinstance(cross, bool):
        return CROSS_MODAL_OFFSET if cross else INTRA_MODAL_OFFSET
    return [offsets(flag) for flag in cross]


def pair_terms(anchors: torch.Tensor, candidates: torch.Tensor, *, cross: bool, temp: float, m_u: float,
               m_l: float, hinge: bool) -> Terms:
    """(ℓ_i, b_i, k_i) for anchors P and candidates Q (…×B×D; row i of both = identity i), each (…×B).

    ℓ and b are float, k (the correct-ranking count, out of B − 1) is an integer tensor.
    """
    anchors_unit, candidates_unit = F.normalize(anchors, dim=-1), F.normalize(candidates, dim=-1)
    cosines = anchors_unit @ candidates_unit.mT
    aasm = aasm_term(cosines, anchors.norm(dim=-1, keepdim=True), temp, offsets(cross))
    bcr = bcr_term(cosines, candidates_unit @ candidates_unit.mT, m_u=m_u, m_l=m_l, hinge=hinge)
    return aasm, bcr, correct_rankings(cosines)


def bidirectional_terms(x: torch.Tensor, y: torch.Tensor, *, cross: bool | Sequence[bool], temp: float,
                        m_u: float, m_l: float, hinge: bool) -> Terms:
    """Per-row terms of the pair (X, Y) (…×B×D): direction 1 has anchors Y, candidates X; direction 2 the reverse.

    AaSM ½(ℓ¹+ℓ²); BCR (b¹+b²) over how many of them are non-zero (0 if none); counts of direction 1.
    Several pairs stacked along dimension −3 take one `cross` flag each.
    """
    embeddings = torch.stack([y, x])  # anchors of directions 1 and 2
    norms = embeddings.norm(dim=-1, keepdim=True)
    units = embeddings / norms.clamp_min(1e-12)  # F.normalize, sharing the norms with AaSM
    forward = units[0] @ units[1].mT  # cos(y_i, x_j): direction 1; direction 2's is its transpose
    cosines = torch.stack([forward, forward.mT])
    candidates = units.flip(0)
    aasm = aasm_term(cosines, norms, temp, offsets(cross))
    bcr = bcr_term(cosines, candidates @ candidates.mT, m_u=m_u, m_l=m_l, hinge=hinge)
    nonzero = (bcr != 0).sum(0).clamp(min=1)
    return aasm.mean(0), bcr.sum(0) / nonzero, correct_rankings(forward)
