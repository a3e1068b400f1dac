"""AaSM (Archetype-agnostic Subspace Merging): an in-batch, sample-to-sample softmax with no class centres."""
from __future__ import annotations

import math

import torch

# The constant c in log(c + Σ_{j≠i} exp(·)): the release's 1 + exp(0) + 3.4 and 2 + exp(0) + 3.
CROSS_MODAL_OFFSET = 5.4
INTRA_MODAL_OFFSET = 6.0


def aasm_term(scores: torch.Tensor, temp: float, offset: float) -> torch.Tensor:
    """ℓ_i = log(c + Σ_{j≠i} exp((s_ij − s_ii)/τ)) from scores s (…×B×B) → (…×B)."""
    size = scores.shape[-1]
    logits = (scores - scores.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)) / temp
    logits = logits.masked_fill(torch.eye(size, dtype=torch.bool, device=scores.device), float("-inf"))
    # log c joins the sum as one more logit: stable however large the unnormalised scores get.
    log_offset = torch.full((*scores.shape[:-1], 1), math.log(offset), dtype=scores.dtype, device=scores.device)
    return torch.logsumexp(torch.cat([log_offset, logits], dim=-1), dim=-1)
