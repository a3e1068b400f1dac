"""AaSM (Archetype-agnostic Subspace Merging): an in-batch, sample-to-sample softmax with no class centres."""
from __future__ import annotations

import math
from typing import Sequence

import torch

# The constant c in log(c + Σ_{j≠i} exp(·)): the release's 1 + exp(0) + 3.4 and 2 + exp(0) + 3.
CROSS_MODAL_OFFSET = 5.4
INTRA_MODAL_OFFSET = 6.0


def aasm_term(cosines: torch.Tensor, anchor_norms: torch.Tensor, temp: float,
              offset: float | Sequence[float]) -> torch.Tensor:
    """ℓ_i = log(c + Σ_{j≠i} exp((s_ij − s_ii)/τ)), s_ij = ⟨p_i, q̂_j⟩ = ‖p_i‖·S_ij; S …×B×B, ‖p_i‖ …×B×1 → …×B.

    `offset` is c, or one c per pair when dimension −3 of `cosines` stacks pairs.
    """
    scale = anchor_norms / temp
    # Summing over every j adds exp(0) = 1 for j = i (as the release's c does): take it out of c
    # instead of masking the diagonal; the row's own score s_ii/τ comes out of the log-sum-exp.
    every = torch.logsumexp(cosines * scale, dim=-1) - cosines.diagonal(dim1=-2, dim2=-1) * scale.squeeze(-1)
    offsets = [offset] if isinstance(offset, (int, float)) else list(offset)
    log_rest = torch.full_like(every, math.log(offsets[-1] - 1))
    for pair, value in enumerate(offsets[:-1]):  # a fill per differing pair: no host-to-device copy
        if value != offsets[-1]:
            log_rest[..., pair, :] = math.log(value - 1)
    return torch.logaddexp(every, log_rest)
