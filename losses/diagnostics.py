"""What BCR and IE do to training: screened anchors, loose pairs, active BCR rows, the effective BCR weight,
BCR's share of loss and gradient, IE weights.

`loss_diagnostics` recomputes one batch's loss terms with the loss module's own settings on detached copies of
its embeddings, so it never touches the training step's graph; `TrainingDiagnostics` logs them (tensorboard,
a line at every IE refresh, and a summary for train.log). BCR is measured as the config weighs it (λ, IE
weights or not, its gradient reading), whether or not it is applied at that iteration, so a run without BCR
still shows what it would have added.
"""
from __future__ import annotations

import logging

import torch

from losses.archetype_agnostic import PAIR_INDICES, PAIRS, ArchetypeAgnosticLoss, InstanceEquilibrium
from losses.fused import loose_mask, positive_cosines, raw_scores
from losses.reference import loss_parts

ENCODERS = {"face": (0, 1), "voice": (2, 3)}  # rows of the (face, face′, voice, voice′) stack
# What the line at every IE refresh shows, with its short name there.
AT_REFRESH = {"bcr_effective_weight": "effective BCR weight λ·mean(w)", "bcr_share/gradient_face": "BCR share of ∂face",
              "bcr_share/gradient_voice": "∂voice", **{f"bcr_active_rows/{name}": f"active BCR rows {name}"
                                                         for name in PAIRS}}
log = logging.getLogger("train")


def screening(embeddings: torch.Tensor, loss: ArchetypeAgnosticLoss) -> dict[str, torch.Tensor]:
    """Per pair, over both directions: the fraction of anchors with π_i > m_u and of pairs j ≠ i that are loose."""
    units = torch.nn.functional.normalize(embeddings, dim=-1)
    x_index, y_index = [x for x, _ in PAIR_INDICES], [y for _, y in PAIR_INDICES]
    cosines = units[y_index] @ units[x_index].mT
    both = torch.cat([cosines, cosines.mT])  # direction 1 (anchors Y), then direction 2 (anchors X)
    positives = positive_cosines(both)
    loose = loose_mask(raw_scores(both, positives, loss.bcr_margin, loss.bcr_hinge)[0])
    size = cosines.shape[-1]
    screened = (positives.squeeze(-1) > loss.bcr_anchor_margin).float().view(2, len(PAIRS), size).mean(dim=(0, 2))
    loose_fraction = loose.sum(dim=(-2, -1)).view(2, len(PAIRS)).mean(0) / (size * (size - 1))
    out = {f"anchors_above_m_u/{name}": screened[k] for k, name in enumerate(PAIRS)}
    out.update({f"loose_pairs/{name}": loose_fraction[k] for k, name in enumerate(PAIRS)})
    return out


def loss_diagnostics(face: torch.Tensor, face_aux: torch.Tensor, voice: torch.Tensor, voice_aux: torch.Tensor,
                     identity_weights: torch.Tensor, loss: ArchetypeAgnosticLoss) -> dict[str, torch.Tensor]:
    """Screening fractions; per pair the fraction of rows whose BCR score b_i is not 0 (active); the effective
    BCR weight λ·mean_i w_{y_i} over the batch's rows (λ without IE); BCR's share λR/(A + λR) of the loss (A
    the AaSM sum, R the re-gauged BCR sum); per encoder the norms of ∂A and ∂(λR) with respect to its
    embeddings (what reaches the encoder), BCR's share ‖∂λR‖/(‖∂A‖ + ‖∂λR‖) of them and the cosine between
    the two gradients. 0-d tensors."""
    with torch.enable_grad(), torch.autocast(device_type=face.device.type, enabled=False):
        embeddings = torch.stack([x.detach().float() for x in (face, face_aux, voice, voice_aux)]).requires_grad_()
        aasm, bcr, _ = loss.row_terms(embeddings)
        weights = loss.row_weights(identity_weights.float(), embeddings.dtype)
        aasm_sum, regauge = loss_parts(aasm, bcr, weights, **loss.readings())
        weighted = loss.bcr_weight * regauge
        grad_aasm, = torch.autograd.grad(aasm_sum, embeddings, retain_graph=True)
        grad_bcr = torch.autograd.grad(weighted, embeddings, allow_unused=True)[0] if weighted.requires_grad else None
    if grad_bcr is None:  # no loose pair in the batch, or BCR kept out of the gradient
        grad_bcr = torch.zeros_like(grad_aasm)
    out = screening(embeddings.detach(), loss)
    active = (bcr.detach() != 0).float().mean(dim=-1)
    out.update({f"bcr_active_rows/{name}": active[k] for k, name in enumerate(PAIRS)})
    out["bcr_effective_weight"] = loss.bcr_weight * (weights.mean() if weights is not None else torch.ones(()))
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
    """Min, median, mean and max of the identity weights."""
    return {"ie_weights/min": weights.min(), "ie_weights/median": weights.median(), "ie_weights/mean": weights.mean(),
            "ie_weights/max": weights.max()}


class TrainingDiagnostics:
    """Logs `loss_diagnostics` of the embeddings it is given: at every IE refresh always (one line in train.log),
    at every logged iteration when `every_log` (training.diagnostics).

    Keeps running means before and from `bcr_start_iter`, of the refreshes, and the last IE weight summary, for
    `summary()`. For an objective without BCR (InfoNCE) only the IE weights are recorded.
    """

    def __init__(self, loss: InstanceEquilibrium, writer, every_log: bool):
        self.loss, self.writer, self.every_log = loss, writer, every_log
        self.measures_bcr = isinstance(loss, ArchetypeAgnosticLoss)
        start = getattr(loss, "bcr_start_iter", 0)
        # Named by iteration, not by whether BCR is applied: AaSM alone (bcr_enabled false) logs both phases too.
        self.phases = (f"iterations < {start}", f"iterations >= {start}", "IE refreshes")
        self.start = start
        self.sums: dict[str, dict[str, float]] = {phase: {} for phase in self.phases}
        self.counts = dict.fromkeys(self.phases, 0)
        self.last_weights: dict[str, float] = {}

    def add(self, phase: str, iteration: int, values: dict[str, float], prefix: str = "diagnostics") -> None:
        self.counts[phase] += 1
        for name, value in values.items():
            if self.writer is not None:
                self.writer.add_scalar(f"{prefix}/{name}", value, iteration)
            self.sums[phase][name] = self.sums[phase].get(name, 0.0) + value

    def measure(self, embeddings: tuple[torch.Tensor, ...], identity_weights: torch.Tensor) -> dict[str, float]:
        return {k: float(v) for k, v in loss_diagnostics(*embeddings, identity_weights, self.loss).items()}

    def record(self, iteration: int, embeddings: tuple[torch.Tensor, ...], identity_weights: torch.Tensor) -> None:
        """Diagnostics of one batch's (face, face′, voice, voice′) embeddings, whose rows have these IE weights."""
        if self.every_log and self.measures_bcr:
            self.add(self.phases[iteration >= self.start], iteration, self.measure(embeddings, identity_weights))

    def record_refresh(self, iteration: int, embeddings: tuple[torch.Tensor, ...], identity_weights: torch.Tensor) -> None:
        """After an IE refresh: one train.log line with the summary of every identity's weight and, on this
        iteration's batch, the effective BCR weight, BCR's share of the gradient and its active rows per pair."""
        weights = self.loss.identity_weights
        self.last_weights = {k: float(v) for k, v in weight_summary(weights).items()}
        shown = ", ".join(f"{name.split('/')[-1]} {value:.4g}" for name, value in self.last_weights.items())
        if self.writer is not None:
            self.writer.add_histogram("equilibrium/weights", weights.cpu().numpy(), iteration)
            for name, value in self.last_weights.items():
                self.writer.add_scalar(f"diagnostics/{name}", value, iteration)
        if self.measures_bcr:
            values = self.measure(embeddings, identity_weights)
            self.add(self.phases[2], iteration, {k: values[k] for k in AT_REFRESH}, prefix="diagnostics/at_refresh")
            shown += "; " + ", ".join(f"{AT_REFRESH[k]} {values[k]:.3g}" for k in AT_REFRESH)
        log.info("iteration %d: IE weights refreshed: %s", iteration, shown)

    def summary(self) -> str:
        lines = ["diagnostics (means over the logged iterations and over the IE refreshes):"]
        for phase, sums in self.sums.items():
            if self.counts[phase]:
                lines.append(f"  {phase} ({self.counts[phase]} batches): " +
                             ", ".join(f"{name} {value / self.counts[phase]:.4g}" for name, value in sums.items()))
        if self.last_weights:
            lines.append("  last IE refresh: " + ", ".join(f"{k} {v:.4g}" for k, v in self.last_weights.items()))
        return "\n".join(lines)
