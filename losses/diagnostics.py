"""What BCR and IE do to training: screened anchors, loose pairs, BCR's share of loss and gradient, IE weights.

`loss_diagnostics` recomputes one batch's loss terms on detached copies of its embeddings, so it never
touches the training step's graph; `TrainingDiagnostics` logs them (tensorboard, and a summary for
train.log). BCR is measured as the config weighs it (λ, IE weights or not), whether or not it is applied
at that iteration, so a run without BCR still shows what it would have added.
"""
from __future__ import annotations

import torch
from easydict import EasyDict

from losses.archetype_agnostic import CROSS, PAIR_INDICES, PAIRS
from losses.fused import loose_mask, pairwise_terms, positive_cosines, raw_scores
from losses.reference import combine_directions, nonzero_mean

ENCODERS = {"face": (0, 1), "voice": (2, 3)}  # rows of the (face, face′, voice, voice′) stack


def screening(embeddings: torch.Tensor, cfg_training: EasyDict) -> dict[str, torch.Tensor]:
    """Per pair, over both directions: the fraction of anchors with π_i > m_u and of pairs j ≠ i that are loose."""
    units = torch.nn.functional.normalize(embeddings, dim=-1)
    x_index, y_index = [x for x, _ in PAIR_INDICES], [y for _, y in PAIR_INDICES]
    cosines = units[y_index] @ units[x_index].mT
    both = torch.cat([cosines, cosines.mT])  # direction 1 (anchors Y), then direction 2 (anchors X)
    positives = positive_cosines(both)
    loose = loose_mask(raw_scores(both, positives, cfg_training.bcr_margin, cfg_training.bcr_hinge)[0])
    size = cosines.shape[-1]
    screened = (positives.squeeze(-1) > cfg_training.bcr_anchor_margin).float().view(2, len(PAIRS), size).mean(dim=(0, 2))
    loose_fraction = loose.sum(dim=(-2, -1)).view(2, len(PAIRS)).mean(0) / (size * (size - 1))
    out = {f"anchors_above_m_u/{name}": screened[k] for k, name in enumerate(PAIRS)}
    out.update({f"loose_pairs/{name}": loose_fraction[k] for k, name in enumerate(PAIRS)})
    return out


def loss_diagnostics(face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
                     identity_weights: torch.Tensor, cfg_training: EasyDict) -> dict[str, torch.Tensor]:
    """Screening fractions, BCR's share λR/(A + λR) of the loss (A the AaSM sum, R the re-gauged BCR sum),
    and per encoder the norms of ∂A and ∂(λR) with respect to its embeddings (what reaches the encoder),
    BCR's share ‖∂λR‖/(‖∂A‖ + ‖∂λR‖) of them and the cosine between the two gradients. 0-d tensors."""
    cfg = cfg_training
    with torch.enable_grad(), torch.autocast(device_type=face.device.type, enabled=False):
        embeddings = torch.stack([x.detach().float() for x in (face, face_aux, voice, voice_aux)]).requires_grad_()
        aasm, bcr, _ = combine_directions(*pairwise_terms(embeddings, PAIR_INDICES, cross=CROSS, temp=cfg.temperature,
                                                          m_u=cfg.bcr_anchor_margin, m_l=cfg.bcr_margin,
                                                          hinge=cfg.bcr_hinge))
        if cfg.ie_enabled:
            regauge = nonzero_mean(bcr * identity_weights.float()).sum()
        else:
            regauge = bcr.mean(dim=-1).sum()
        aasm_sum, weighted = aasm.mean(dim=-1).sum(), cfg.bcr_weight * regauge
        grad_aasm, = torch.autograd.grad(aasm_sum, embeddings, retain_graph=True)
        grad_bcr, = torch.autograd.grad(weighted, embeddings, allow_unused=True)
    if grad_bcr is None:  # no loose pair in the batch
        grad_bcr = torch.zeros_like(grad_aasm)
    out = screening(embeddings.detach(), cfg)
    out["bcr_share/loss"] = (weighted / (aasm_sum + weighted)).detach()
    for name, rows in ENCODERS.items():
        a, b = grad_aasm[list(rows)].flatten(), grad_bcr[list(rows)].flatten()
        a_norm, b_norm = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
        out[f"gradient_norm/aasm_{name}"] = a_norm
        out[f"gradient_norm/bcr_{name}"] = b_norm
        out[f"bcr_share/gradient_{name}"] = b_norm / (a_norm + b_norm).clamp_min(1e-30)
        out[f"bcr_aasm_cosine/{name}"] = (a @ b) / (a_norm * b_norm).clamp_min(1e-30)
    return out


def weight_summary(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Min, median and max of the identity weights."""
    return {"ie_weights/min": weights.min(), "ie_weights/median": weights.median(), "ie_weights/max": weights.max()}


class TrainingDiagnostics:
    """Logs `loss_diagnostics` of the embeddings it is given.

    Keeps running means before and from `bcr_start_iter`, and the last IE weight summary, for `summary()`.
    """

    def __init__(self, cfg_training: EasyDict, writer):
        self.cfg, self.writer = cfg_training, writer
        # Named by iteration, not by whether BCR is applied: AaSM alone (bcr_enabled false) logs both phases too.
        self.phases = (f"iterations < {cfg_training.bcr_start_iter}", f"iterations >= {cfg_training.bcr_start_iter}")
        self.sums: dict[str, dict[str, float]] = {phase: {} for phase in self.phases}
        self.counts = dict.fromkeys(self.phases, 0)
        self.last_weights: dict[str, float] = {}

    def record(self, iteration: int, embeddings: tuple[torch.Tensor, ...], identity_weights: torch.Tensor) -> None:
        """Diagnostics of one batch's (face, face′, voice, voice′) embeddings, whose rows have these IE weights."""
        values = {k: float(v) for k, v in loss_diagnostics(*embeddings, identity_weights, self.cfg).items()}
        phase = self.phases[iteration >= self.cfg.bcr_start_iter]
        self.counts[phase] += 1
        for name, value in values.items():
            self.writer.add_scalar(f"diagnostics/{name}", value, iteration)
            self.sums[phase][name] = self.sums[phase].get(name, 0.0) + value

    def record_weights(self, iteration: int, weights: torch.Tensor) -> None:
        """After an IE refresh: min / median / max of every identity's weight."""
        self.last_weights = {k: float(v) for k, v in weight_summary(weights).items()}
        for name, value in self.last_weights.items():
            self.writer.add_scalar(f"diagnostics/{name}", value, iteration)

    def summary(self) -> str:
        lines = ["diagnostics (means over the logged iterations):"]
        for phase, sums in self.sums.items():
            if self.counts[phase]:
                lines.append(f"  {phase} ({self.counts[phase]} batches): " +
                             ", ".join(f"{name} {value / self.counts[phase]:.4g}" for name, value in sums.items()))
        if self.last_weights:
            lines.append("  last IE refresh: " + ", ".join(f"{k} {v:.4g}" for k, v in self.last_weights.items()))
        return "\n".join(lines)
