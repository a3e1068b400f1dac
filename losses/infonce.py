"""The field's common baseline: symmetric InfoNCE (CLIP-style) on cosine similarities over a temperature."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.archetype_agnostic import PAIR_INDICES, PAIRS, PAPER, InstanceEquilibrium, LossTerms
from losses.fused import correct_rankings


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


class InfoNCELoss(InstanceEquilibrium):
    """Σ_pairs mean symmetric InfoNCE over the pairs AaSM uses; terms infonce_<pair> and rank_accuracy.

    Called like `ArchetypeAgnosticLoss`; IE keeps counting the ranks (its weights serve no term here), so
    checkpoints and logs have the same shape for both objectives.
    """

    def __init__(self, num_identities: int, *, temperature: float = PAPER["infonce_temperature"],
                 ie_start_iter: int = PAPER["ie_start_iter"], ie_refresh_iter: int = PAPER["ie_refresh_iter"]):
        super().__init__(num_identities, ie_start_iter=ie_start_iter, ie_refresh_iter=ie_refresh_iter)
        self.temperature = temperature

    def bcr_in_total(self, iteration: int) -> bool:
        return False

    def terms_of(self, face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
                 identity_weights: torch.Tensor, iteration: int) -> LossTerms:
        with torch.autocast(device_type=face.device.type, enabled=False):
            stacked = torch.stack([x.float() for x in (face, face_aux, voice, voice_aux)])
            per_row, correct = infonce_terms(stacked, list(PAIR_INDICES), self.temperature)
            means = per_row.mean(dim=-1)
        terms = {f"infonce_{name}": value for name, value in zip(PAIRS, means.detach())}
        terms["rank_accuracy"] = correct.float().mean() / (face.shape[0] - 1)
        return LossTerms(means.sum(), terms, correct)
