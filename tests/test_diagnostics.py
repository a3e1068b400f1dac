"""losses/diagnostics.py against the loss itself and plain per-element formulas; train.py's diagnostics hook."""
import copy

import pytest
import torch
import torch.nn.functional as F

from losses import create_loss
from losses.diagnostics import TrainingDiagnostics, loss_diagnostics, screening, weight_summary
from utils.config import DEFAULTS
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
    out = loss_diagnostics(*embeddings, weights, cfg)

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


def test_screening_fractions_by_element():
    cfg = cfg_training()
    embeddings = batch(size=6)
    out = screening(torch.stack(embeddings), cfg)
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
    assert [float(summary[k]) for k in ("ie_weights/min", "ie_weights/median", "ie_weights/max")] == [0.5, 2.0, 4.0]


class Recorder:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))


def test_training_diagnostics_capture_the_forward_and_summarise_both_phases():
    cfg = cfg_training(bcr_start_iter=10)
    encoder = torch.nn.Linear(5, 5)

    class Four(torch.nn.Module):
        def forward(self, a, b, c, d):
            return encoder(a), encoder(b), encoder(c), encoder(d)

    module, writer = Four(), Recorder()
    diagnostics = TrainingDiagnostics(cfg, writer)
    for iteration in (5, 10, 15):
        diagnostics.record(iteration, module(*batch(seed=iteration)), torch.ones(7))
    diagnostics.record_weights(15, torch.tensor([0.2, 1.0, 3.0]))
    names = {name for name, _, _ in writer.scalars}
    assert {"diagnostics/bcr_share/loss", "diagnostics/loose_pairs/cross", "diagnostics/ie_weights/max"} <= names
    summary = diagnostics.summary()
    assert "iterations < 10 (1 batches)" in summary and "iterations >= 10 (2 batches)" in summary and "ie_weights/max 3" in summary
