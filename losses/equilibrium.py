"""IE (Instance Equilibrium): per-identity weights from how well each identity's voice ranks its own face."""
from __future__ import annotations

import torch
from easydict import EasyDict
from torch import nn

from losses.reference import equilibrium_weights


def should_refresh(iteration: int, cfg_training: EasyDict) -> bool:
    """Refresh the weights at iteration t when t ≥ warm_up and t mod weight_update_iter = 0."""
    return iteration >= cfg_training.warm_up and iteration % cfg_training.weight_update_iter == 0


class InstanceEquilibrium(nn.Module):
    """Counters R_k (correct), N_k (comparisons) and weights w_k of every training identity k.

    All three are buffers, so they travel with `state_dict()` (checkpoints, resume) and `.to(device)`.
    """

    def __init__(self, num_identities: int):
        super().__init__()
        self.register_buffer("correct_counts", torch.zeros(num_identities))
        self.register_buffer("comparison_counts", torch.zeros(num_identities))
        self.register_buffer("identity_weights", torch.ones(num_identities))

    @torch.no_grad()
    def accumulate(self, labels: torch.Tensor, correct: torch.Tensor, comparisons: int) -> None:
        """R_{y_i} += k_i and N_{y_i} += comparisons (B − 1 per row)."""
        correct = correct.detach().to(self.correct_counts.dtype)
        self.correct_counts.index_add_(0, labels, correct)
        self.comparison_counts.index_add_(0, labels, torch.full_like(correct, comparisons))

    @torch.no_grad()
    def refresh(self) -> None:
        """Weights from the counts since the last refresh (`losses.reference.equilibrium_weights`); counters restart."""
        self.identity_weights.copy_(equilibrium_weights(self.correct_counts, self.comparison_counts,
                                                        self.identity_weights))
        self.correct_counts.zero_()
        self.comparison_counts.zero_()

    def weights_of(self, labels: torch.Tensor) -> torch.Tensor:
        """w_{y_i} for each row's training label (B,)."""
        return self.identity_weights[labels]
