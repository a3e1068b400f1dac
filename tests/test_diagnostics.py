"""losses/diagnostics.py against the loss itself and plain per-element formulas; train.py's diagnostics hook."""
import copy

import pytest
import torch
import torch.nn.functional as F

from config import DEFAULTS
from losses import create_loss
from losses.diagnostics import TrainingDiagnostics, loss_diagnostics, screening, weight_summary
from easydict import EasyDict


def cfg_training(**changes):
    return EasyDict({**copy.deepcopy(DEFAULTS["training"]), **changes})


def batch(size=7, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(size, dim, generator=generator)  # correlated rows: some anchors pass m_u
    return [shared + 0.8 * torch.randn(size, dim, generator=generator) for _ in range(4)]


@pytest.mark.parametrize("weighted", [True, False])
def test_loss_and_gradient_shares_match_the_total_loss(weighted):
    cfg = cfg_training(ie_enabled=weighted)
    embeddings = batch()
    weights = torch.rand(7, generator=torch.Generator().manual_seed(1)) * 3
    out = loss_diagnostics(*embeddings, weights, create_loss(cfg, 1))

    def loss_and_grads(**changes):
        leaves = [e.clone().requires_grad_() for e in embeddings]
        loss = create_loss(EasyDict({**cfg, **changes}), 1).terms_of(*leaves, weights, cfg.bcr_start_iter).loss
        return loss.detach(), torch.autograd.grad(loss, leaves)

    full, full_grads = loss_and_grads()
    aasm, aasm_grads = loss_and_grads(bcr_enabled=False)
    assert float(out["bcr_share/loss"]) == pytest.approx(float((full - aasm) / full), rel=1e-5)
    for name, rows in (("face", (0, 1)), ("voice", (2, 3))):
        a = torch.cat([aasm_grads[k].flatten() for k in rows])
        b = torch.cat([(full_grads[k] - aasm_grads[k]).flatten() for k in rows])
        assert float(out[f"gradient_norm/aasm_{name}"]) == pytest.approx(float(a.norm()), rel=1e-4)
        assert float(out[f"gradient_norm/bcr_{name}"]) == pytest.approx(float(b.norm()), rel=1e-4, abs=1e-7)
        assert float(out[f"bcr_share/gradient_{name}"]) == pytest.approx(float(b.norm() / (a.norm() + b.norm())),
                                                                         rel=1e-4, abs=1e-7)
        assert float(out[f"bcr_aasm_cosine/{name}"]) == pytest.approx(float(F.cosine_similarity(a, b, dim=0)),
                                                                       abs=1e-4)
    assert 0 < float(out["bcr_share/gradient_voice"]) < 1
    effective = cfg.bcr_weight * (float(weights.mean()) if weighted else 1.0)
    assert float(out["bcr_effective_weight"]) == pytest.approx(effective, rel=1e-6)


@pytest.mark.parametrize("changes", [{}, {"ie_application": "batch"}, {"bcr_gradient": "none"},
                                     {"bcr_regauge_margin": 0.4, "ie_normalization": "mean"}])
def test_active_rows_and_shares_follow_the_loss_readings(changes):
    cfg = cfg_training(**changes)
    embeddings = batch(size=9, seed=4)
    weights = torch.rand(9, generator=torch.Generator().manual_seed(2)) * 3
    loss = create_loss(cfg, 1)
    out = loss_diagnostics(*embeddings, weights, loss)
    _, bcr, _ = loss.row_terms(torch.stack(embeddings))
    for k, name in enumerate(("cross", "face", "voice")):
        assert float(out[f"bcr_active_rows/{name}"]) == pytest.approx(sum(float(b) != 0 for b in bcr[k]) / 9)
    assert 0 < float(out["bcr_active_rows/cross"]) < 1
    leaves = [e.clone().requires_grad_() for e in embeddings]
    full = loss.terms_of(*leaves, weights, cfg.bcr_start_iter)
    aasm = loss.terms_of(*leaves, weights, cfg.bcr_start_iter - 1)
    assert float(out["bcr_share/loss"]) == pytest.approx(float(((full.loss - aasm.loss) / full.loss).detach()), rel=1e-5)
    if cfg.bcr_gradient == "none":  # the release: BCR is in the loss, not in the gradient
        assert float(out["bcr_share/gradient_face"]) == 0 and float(out["bcr_share/loss"]) > 0


def test_screening_fractions_by_element():
    cfg = cfg_training()
    embeddings = batch(size=6)
    out = screening(torch.stack(embeddings), create_loss(cfg, 1))
    for name, (x, y) in (("cross", (0, 2)), ("face", (0, 1)), ("voice", (2, 3))):
        above, loose, anchors, pairs = 0, 0, 0, 0
        for anchors_of, candidates_of in ((embeddings[y], embeddings[x]), (embeddings[x], embeddings[y])):
            for i in range(6):
                positive = float(F.cosine_similarity(anchors_of[i], candidates_of[i], dim=0))
                above += positive > cfg.bcr_anchor_margin
                anchors += 1
                for j in range(6):
                    if j != i:
                        loose += float(F.cosine_similarity(anchors_of[i], candidates_of[j], dim=0)) - positive + cfg.bcr_margin > 0
                        pairs += 1
        assert float(out[f"anchors_above_m_u/{name}"]) == pytest.approx(above / anchors)
        assert float(out[f"loose_pairs/{name}"]) == pytest.approx(loose / pairs)


def test_weight_summary():
    summary = weight_summary(torch.tensor([3.0, 0.5, 2.0, 1.0, 4.0]))
    assert [float(summary[k]) for k in ("ie_weights/min", "ie_weights/median", "ie_weights/mean", "ie_weights/max")] \
        == pytest.approx([0.5, 2.0, 2.1, 4.0])


class Recorder:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))

    def add_histogram(self, name, values, step):
        self.scalars.append((name, None, step))


def test_training_diagnostics_capture_the_forward_and_summarise_both_phases():
    cfg = cfg_training(bcr_start_iter=10)
    encoder = torch.nn.Linear(5, 5)

    class Four(torch.nn.Module):
        def forward(self, a, b, c, d):
            return encoder(a), encoder(b), encoder(c), encoder(d)

    module, writer = Four(), Recorder()
    loss = create_loss(cfg, 3)
    diagnostics = TrainingDiagnostics(loss, writer, every_log=True)
    for iteration in (5, 10, 15):
        diagnostics.record(iteration, module(*batch(seed=iteration)), torch.ones(7))
    loss.identity_weights.copy_(torch.tensor([0.2, 1.0, 3.0]))
    weights = torch.tensor([0.2, 1.0, 3.0, 3.0, 1.0, 0.2, 1.0])
    diagnostics.record_refresh(15, module(*batch(seed=15)), weights)
    names = {name for name, _, _ in writer.scalars}
    assert {"diagnostics/bcr_share/loss", "diagnostics/loose_pairs/cross", "diagnostics/ie_weights/max",
            "diagnostics/at_refresh/bcr_effective_weight", "equilibrium/weights"} <= names
    summary = diagnostics.summary()
    assert "iterations < 10 (1 batches)" in summary and "iterations >= 10 (2 batches)" in summary and "ie_weights/max 3" in summary
    assert f"IE refreshes (1 batches): bcr_effective_weight {10 * float(weights.mean()):.4g}" in summary


def test_refresh_line_is_logged_without_the_diagnostics_switch(caplog):
    cfg = cfg_training(bcr_start_iter=10)
    writer = Recorder()
    diagnostics = TrainingDiagnostics(create_loss(cfg, 3), writer, every_log=False)
    diagnostics.record(5, batch(), torch.ones(7))
    assert writer.scalars == []  # per-iteration diagnostics are off
    with caplog.at_level("INFO", logger="train"):
        diagnostics.record_refresh(20, batch(), torch.full((7,), 2.0))
    assert "iteration 20: IE weights refreshed: min 1, median 1, mean 1, max 1; effective BCR weight λ·mean(w) 20" \
        in caplog.text and "active BCR rows cross" in caplog.text
