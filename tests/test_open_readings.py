"""The switches for the readings the release leaves open (docs/method.md#open-readings), each against a case
computed by hand, and the release preset against the values computed with the released code."""
import math
import os

import pytest
import torch
from easydict import EasyDict
from scipy.stats import norm

from config import DEFAULTS, load_config
from helpers import DATA, ROOT
from losses import InstanceEquilibrium, create_loss, fused, reference

CASES = torch.load(os.path.join(DATA, "loss_cases.pt"), weights_only=True)
# (pair, its two released directions 'anchors->candidates'): direction 1 has anchors Y of the pair (X, Y).
PAIRS = {"cross": ("voice->face", "face->voice"), "face": ("face_aux->face", "face->face_aux"),
         "voice": ("voice_aux->voice", "voice->voice_aux")}
START = DEFAULTS["training"]["bcr_start_iter"]


def training(case, **changes) -> EasyDict:
    cfg = EasyDict(DEFAULTS["training"])
    cfg.update(temperature=case["temp"], bcr_anchor_margin=case["m_u"], bcr_margin=case["m_l"],
               bcr_hinge=case["hinge"], loss_impl="reference")
    cfg.update(changes)
    return cfg


def inputs(case, requires_grad=False):
    return [case[k].clone().double().requires_grad_(requires_grad) for k in ("face", "face_aux", "voice", "voice_aux")]


def released_rows(case):
    """Per pair, the AaSM and BCR rows the released code gives: ½(ℓ¹ + ℓ²) and (b¹ + b²)/#non-zero."""
    rows = {}
    for pair, (first, second) in PAIRS.items():
        aasm = 0.5 * (case[f"aasm[{first}]"].double() + case[f"aasm[{second}]"].double())
        b1, b2 = case[f"bcr[{first}]"].tolist(), case[f"bcr[{second}]"].tolist()
        bcr = [(p + q) / ((p != 0) + (q != 0)) if (p != 0) + (q != 0) else 0.0 for p, q in zip(b1, b2)]
        rows[pair] = (aasm, bcr)
    return rows


def by_hand(values, nonzero):
    """The mean of a flat list of numbers, over its non-zero entries or over all of them."""
    kept = [v for v in values if v != 0] if nonzero else list(values)
    return sum(kept) / len(kept) if kept else 0.0


def loss_of(case, weights, iteration=START, requires_grad=False, **changes):
    embeddings = inputs(case, requires_grad)
    loss, terms, _ = create_loss(training(case, **changes), 1).terms_of(*embeddings, weights.double(), iteration)
    return loss, terms, embeddings


def case_weights(size, seed=3):
    return torch.rand(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 + 0.1


@pytest.mark.parametrize("index", range(len(CASES)))
def test_release_preset_gives_the_released_loss(index):
    # config/presets/release.yaml: the total is the released AaSM plus 10 × the mean of the non-zero entries of
    # the B×B broadcast b_i·w_j, and BCR reaches no gradient.
    case = CASES[index]
    preset = load_config(os.path.join(ROOT, "config", "ablation", "vox1_release.yaml")).training
    keys = ("bcr_gradient", "ie_normalization", "ie_application", "bcr_row_average", "bcr_regauge_margin", "ie_shift")
    changes = {key: preset[key] for key in keys}
    assert changes == dict(bcr_gradient="none", ie_normalization="none", ie_application="batch",
                           bcr_row_average="coupled", bcr_regauge_margin=0.15, ie_shift=1.0)
    weights = case_weights(case["face"].shape[0])
    rows = released_rows(case)
    aasm = sum(a.mean().item() for a, _ in rows.values())
    broadcast = sum(by_hand([b * w for b in bcr for w in weights.tolist()], nonzero=True) for _, bcr in rows.values())
    loss, terms, embeddings = loss_of(case, weights, requires_grad=True, **changes)
    assert loss.item() == pytest.approx(aasm + 10 * broadcast, rel=1e-5)
    assert terms["regauge"].item() == pytest.approx(broadcast, rel=1e-5)
    # one scalar per batch: mean of the non-zero b times the batch mean of w (no weight is 0 here)
    scalar = sum(by_hand(bcr, nonzero=True) for _, bcr in rows.values()) * weights.mean().item()
    assert broadcast == pytest.approx(scalar, rel=1e-9)
    loss.backward()
    aasm_alone, _, plain = loss_of(case, weights, iteration=0, requires_grad=True)
    aasm_alone.backward()
    for ours, theirs in zip(embeddings, plain):
        torch.testing.assert_close(ours.grad, theirs.grad)


@pytest.mark.parametrize("ie_enabled", [True, False])
@pytest.mark.parametrize("average", ["coupled", "nonzero", "all"])
@pytest.mark.parametrize("application", ["row", "batch"])
def test_row_average_and_application_by_hand(ie_enabled, average, application):
    case = next(c for c in CASES if c["face"].shape[0] == 20 and c["hinge"])
    weights = case_weights(20)
    rows = released_rows(case)
    w = weights.tolist() if ie_enabled else [1.0] * 20
    nonzero = average == "nonzero" or (average == "coupled" and ie_enabled)
    expected = 0.0
    for _, bcr in rows.values():
        assert 0 < sum(b == 0 for b in bcr) < 20  # zeros and non-zeros: the averages differ
        if not ie_enabled or application == "row":
            products = [b * wi for b, wi in zip(bcr, w)] if ie_enabled else bcr
        else:
            products = [b * wj for b in bcr for wj in w]
        expected += by_hand(products, nonzero)
    _, terms, _ = loss_of(case, weights, ie_enabled=ie_enabled, bcr_row_average=average, ie_application=application)
    assert terms["regauge"].item() == pytest.approx(expected, rel=1e-5)


def test_the_three_averages_differ():
    case = next(c for c in CASES if c["face"].shape[0] == 20 and c["hinge"])
    weights = case_weights(20)
    values = {(ie, average): loss_of(case, weights, ie_enabled=ie, bcr_row_average=average)[1]["regauge"].item()
              for ie in (True, False) for average in ("coupled", "nonzero", "all")}
    assert values[True, "coupled"] == values[True, "nonzero"] != values[True, "all"]
    assert values[False, "coupled"] == values[False, "all"] != values[False, "nonzero"]


def hand_bcr_row(anchors, candidates, i, m_u, m_l, g):
    """b_i of one direction, hinge variant, written out entry by entry."""
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    positive = cos(anchors[i], candidates[i])
    entries = []
    for j in range(len(candidates)):
        if j == i:
            continue
        s, c = cos(anchors[i], candidates[j]), cos(candidates[i], candidates[j])
        t = s - positive + m_l
        if t > 0:
            entries.append(t + max(0.0, c + g - positive) + max(0.0, s - c + g))
    return (sum(entries) / len(entries) if entries else 0.0) if positive > m_u else 0.0


@pytest.mark.parametrize("loss_impl", ["reference", "fused"])
@pytest.mark.parametrize("margin", [0.15, 0.4, None])
def test_regauge_margin_by_hand(margin, loss_impl):
    generator = torch.Generator().manual_seed(0)
    anchors, candidates = torch.randn(2, 6, 4, generator=generator, dtype=torch.float64)
    anchors = anchors + 1.5 * candidates  # positives above m_u
    m_u, m_l = 0.1, 0.3
    g = m_u if margin is None else margin
    terms_of = reference.combined_terms if loss_impl == "reference" else fused.combined_terms
    _, bcr, _ = terms_of(torch.stack([candidates, anchors]), [(0, 1)], cross=[True], temp=0.5, m_u=m_u, m_l=m_l,
                         hinge=True, regauge_margin=g)
    for i in range(6):
        b1, b2 = hand_bcr_row(anchors, candidates, i, m_u, m_l, g), hand_bcr_row(candidates, anchors, i, m_u, m_l, g)
        count = (b1 != 0) + (b2 != 0)
        assert bcr[0, i].item() == pytest.approx((b1 + b2) / count if count else 0.0, rel=1e-9, abs=1e-12)
    assert (bcr != 0).any()


def test_regauge_margin_null_ties_it_to_the_anchor_margin():
    case = CASES[0]
    weights = case_weights(case["face"].shape[0])
    tied = loss_of(case, weights, bcr_regauge_margin=None, bcr_anchor_margin=0.3)[1]["regauge"]
    explicit = loss_of(case, weights, bcr_regauge_margin=0.3, bcr_anchor_margin=0.3)[1]["regauge"]
    default = loss_of(case, weights, bcr_anchor_margin=0.3)[1]["regauge"]
    assert tied == explicit != default


@pytest.mark.parametrize("loss_impl", ["reference", "fused"])
def test_gradient_without_the_candidate_path(loss_impl):
    # no_candidate_cosines: the gradient of BCR through S and π only, C = cos(q_i, q_j) held constant; written
    # here as autograd of the plain BCR on candidates whose Gram matrix is computed from a detached copy.
    case = next(c for c in CASES if c["face"].shape[0] == 20 and c["hinge"])
    weights = case_weights(20)
    grads = {}
    for reading in ("full", "no_candidate_cosines", "none"):
        loss, _, embeddings = loss_of(case, weights, requires_grad=True, bcr_gradient=reading, loss_impl=loss_impl)
        loss.backward()
        grads[reading] = [e.grad for e in embeddings]
    face, face_aux, voice, voice_aux = inputs(case, requires_grad=True)
    m = dict(m_u=case["m_u"], m_l=case["m_l"])
    total = 0
    for x, y, offset in ((face, voice, 5.4), (face, face_aux, 6.0), (voice, voice_aux, 6.0)):
        aasm = 0.5 * (reference.aasm(y, x, offset, case["temp"]) + reference.aasm(x, y, offset, case["temp"]))
        b1, b2 = (held_candidate_bcr(p, q, **m) for p, q in ((y, x), (x, y)))
        bcr = (b1 + b2) / ((b1 != 0).double() + (b2 != 0).double()).clamp(min=1)
        total = total + aasm.mean() + 10 * reference.nonzero_mean(bcr * weights)
    total.backward()
    for ours, expected in zip(grads["no_candidate_cosines"], (face.grad, face_aux.grad, voice.grad, voice_aux.grad)):
        torch.testing.assert_close(ours, expected)
    for full, partial, none in zip(grads["full"], grads["no_candidate_cosines"], grads["none"]):
        assert not torch.allclose(full, partial) and not torch.allclose(partial, none)


def held_candidate_bcr(anchors, candidates, *, m_u, m_l):
    """Plain BCR, hinge variant, with C from detached candidates."""
    a, q = torch.nn.functional.normalize(anchors, dim=-1), torch.nn.functional.normalize(candidates, dim=-1)
    s = a @ q.T
    c = (q @ q.T).detach()
    positive = s.diagonal().unsqueeze(-1)
    raw = s - positive + m_l
    loose = (raw > 0) & ~torch.eye(len(s), dtype=torch.bool)
    regauged = torch.where(loose, raw + torch.relu(c + 0.15 - positive) + torch.relu(s - c + 0.15), 0)
    return reference.nonzero_mean(regauged) * (positive.squeeze(-1) > m_u)


def hand_refresh(correct, comparisons, shift):
    ratios = [r / n for r, n in zip(correct, comparisons)]
    mean = sum(ratios) / len(ratios)
    std = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (len(ratios) - 1))
    return [norm.pdf(r, loc=mean - shift * std, scale=std) for r in ratios]


@pytest.mark.parametrize("normalization", ["none", "mean", "sum"])
@pytest.mark.parametrize("shift", [1.0, 0.0, 2.5])
def test_equilibrium_normalization_and_shift_by_hand(normalization, shift):
    correct, comparisons = [12.0, 30.0, 7.0, 19.0, 25.0], [38.0, 38.0, 19.0, 38.0, 57.0]
    equilibrium = InstanceEquilibrium(5, ie_shift=shift, ie_normalization=normalization)
    equilibrium.correct_counts.copy_(torch.tensor(correct))
    equilibrium.comparison_counts.copy_(torch.tensor(comparisons))
    equilibrium.refresh()
    density = hand_refresh(correct, comparisons, shift)
    scale = {"none": 1.0, "mean": len(density) / sum(density), "sum": 1 / sum(density)}[normalization]
    torch.testing.assert_close(equilibrium.identity_weights.double(), torch.tensor(density, dtype=torch.float64) * scale,
                               rtol=1e-5, atol=1e-7)
    if normalization == "mean":
        assert equilibrium.identity_weights.mean().item() == pytest.approx(1.0, rel=1e-6)
    if normalization == "sum":
        assert equilibrium.identity_weights.sum().item() == pytest.approx(1.0, rel=1e-6)


def test_predecessor_preset_normalises_to_mean_one():
    cfg = load_config(os.path.join(ROOT, "config", "ablation", "synthetic_ie_mean.yaml"))
    loss = create_loss(cfg.training, 4)
    assert (loss.ie_normalization, loss.ie_application) == ("mean", "row")
    assert cfg.training.bcr_gradient == "full" and cfg.training.max_iter == 3000  # the demo's schedule kept


def test_bcr_detach_still_loads_as_bcr_gradient(tmp_path, caplog):
    for old, new in (("true", "none"), ("false", "full")):
        path = tmp_path / "old.yaml"
        path.write_text(f"exp_name: old\ntraining:\n  bcr_detach: {old}\n")
        assert load_config(str(path)).training.bcr_gradient == new
        assert load_config(os.path.join(ROOT, "config", "synthetic.yaml"), [f"training.bcr_detach={old}"]
                           ).training.bcr_gradient == new
    assert "'training.bcr_detach' is now 'training.bcr_gradient'" in caplog.text
