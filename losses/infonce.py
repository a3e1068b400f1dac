"""The field's common baseline: symmetric InfoNCE (CLIP-style) on cosine similarities over a temperature."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.pairs import correct_rankings


def infonce_terms(embeddings: torch.Tensor, pairs: list[tuple[int, int]], temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row InfoNCE of each pair (P×B) and the first pair's correct-ranking counts k (B, integer).

    `embeddings` is K×B×D, row i of every batch from identity i. For the pair (X, Y), S = Ŷ X̂ᵀ / temp;
    row i's term is ½(CE(S_i·, i) + CE(S_·i, i)): anchors Y against candidates X and the reverse.
    k_i counts the candidates j ≠ i with S_ij < S_ii (anchors Y), as the method's counts do.
    """
    units = F.normalize(embeddings, dim=-1)
    x_index, y_index = [x for x, _ in pairs], [y for _, y in pairs]
    cosines = units[y_index] @ units[x_index].mT  # P×B×B
    logits = cosines / temp
    positives = logits.diagonal(dim1=-2, dim2=-1)
    terms = 0.5 * (torch.logsumexp(logits, dim=-1) + torch.logsumexp(logits, dim=-2)) - positives
    return terms, correct_rankings(cosines[0].detach())
