import math
import os

import pytest
import torch
from easydict import EasyDict
from torch.utils._python_dispatch import TorchDispatchMode
from scipy.stats import norm

from config import load_config
import losses.archetype_agnostic as archetype_agnostic
from helpers import DATA, ROOT
from losses import InstanceEquilibrium, create_loss, fused
from losses import reference
from losses.fused import bidirectional_terms, pair_terms, pairwise_terms
from losses.reference import nonzero_mean

CASES = torch.load(os.path.join(DATA, "loss_cases.pt"), weights_only=True)
# Reference key 'term[A->C]': anchors A, candidates C.
DIRECTIONS = {
    "voice->face": ("voice", "face", True),
    "face->voice": ("face", "voice", True),
    "face_aux->face": ("face_aux", "face", False),
    "face->face_aux": ("face", "face_aux", False),
    "voice_aux->voice": ("voice_aux", "voice", False),
    "voice->voice_aux": ("voice", "voice_aux", False),
}
RELEASED_TRAINING = load_config(os.path.join(ROOT, "config", "cfg.yaml")).training


# The release's re-gauging margin g, a literal in its code (the default of training.bcr_regauge_margin).
RELEASE_REGAUGE_MARGIN = 0.15


def options(case):
    return dict(temp=case["temp"], m_u=case["m_u"], m_l=case["m_l"], hinge=case["hinge"],
                regauge_margin=RELEASE_REGAUGE_MARGIN)


def training_cfg(case, **changes):
    cfg = EasyDict(RELEASED_TRAINING)
    cfg.update(temperature=case["temp"], bcr_anchor_margin=case["m_u"], bcr_margin=case["m_l"], bcr_hinge=case["hinge"])
    cfg.update(changes)
    return cfg


def assert_relative(actual, expected, rtol=1e-5):
    torch.testing.assert_close(actual.to(expected.dtype) if expected.is_floating_point() else actual,
                               expected.to(actual.dtype), rtol=rtol, atol=1e-7)


def reference_pair_terms(anchors, candidates, *, cross, temp, **bcr_options):
    """`pair_terms` of one direction from the plain definition."""
    offset = reference.CROSS_MODAL_OFFSET if cross else reference.INTRA_MODAL_OFFSET
    return (reference.aasm(anchors, candidates, offset, temp),
            reference.bcr(anchors, candidates, **bcr_options),
            reference.correct_rankings(anchors, candidates))


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("terms_of", [pair_terms, reference_pair_terms], ids=["fused", "reference"])
def test_pair_terms_match_the_release(index, direction, terms_of):
    case = CASES[index]
    anchors, candidates, cross = DIRECTIONS[direction]
    aasm, bcr, correct = terms_of(case[anchors], case[candidates], cross=cross, **options(case))
    assert aasm.shape == bcr.shape == correct.shape == (case[anchors].shape[0],)
    assert_relative(aasm, case[f"aasm[{direction}]"])
    assert_relative(bcr, case[f"bcr[{direction}]"])
    assert torch.equal(correct.long(), case[f"correct[{direction}]"].long())


def test_reference_cases_exercise_bcr():
    # Guards the parity test against trivially-zero references.
    for case in CASES:
        assert all((case[f"bcr[{d}]"] != 0).any() for d in DIRECTIONS)
    assert {case["hinge"] for case in CASES} == {True, False}


def reference_bidirectional_terms(x, y, *, cross, **opts):
    """`bidirectional_terms` of one pair from the plain definition."""
    return tuple(term[0] for term in reference.combined_terms(torch.stack([x, y]), [(0, 1)], cross=[cross], **opts))


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("terms_of", [bidirectional_terms, reference_bidirectional_terms], ids=["fused", "reference"])
def test_bidirectional_terms_combine_both_directions(index, terms_of):
    case = CASES[index]
    for x, y, cross, forward, backward in [
        ("face", "voice", True, "voice->face", "face->voice"),
        ("face", "face_aux", False, "face_aux->face", "face->face_aux"),
        ("voice", "voice_aux", False, "voice_aux->voice", "voice->voice_aux"),
    ]:
        aasm, bcr, correct = terms_of(case[x], case[y], cross=cross, **options(case))
        assert_relative(aasm, 0.5 * (case[f"aasm[{forward}]"] + case[f"aasm[{backward}]"]))
        b1, b2 = case[f"bcr[{forward}]"], case[f"bcr[{backward}]"]
        count = (b1 != 0).float() + (b2 != 0).float()
        expected = torch.tensor([(p + q) / n if n else 0.0 for p, q, n in zip(b1.tolist(), b2.tolist(), count.tolist())])
        assert_relative(bcr, expected)
        assert torch.equal(correct.long(), case[f"correct[{forward}]"].long())


def test_stacked_pairs_match_separate_calls():
    # total_loss's single batched call: one `cross` flag per stacked pair.
    case = CASES[0]
    x = torch.stack([case["face"], case["face"], case["voice"]])
    y = torch.stack([case["voice"], case["face_aux"], case["voice_aux"]])
    stacked = bidirectional_terms(x, y, cross=(True, False, False), **options(case))
    for pair, separate in enumerate(per_pair_terms(case)):
        for together, alone in zip(stacked, separate):
            torch.testing.assert_close(together[pair], alone)


def test_nonzero_mean_skips_zeros():
    values = torch.tensor([[0.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
    assert torch.equal(nonzero_mean(values), torch.tensor([3.0, 0.0]))


def case_inputs(case, requires_grad=False):
    return [case[k].clone().requires_grad_(requires_grad) for k in ("face", "face_aux", "voice", "voice_aux")]


def per_pair_terms(case):
    face, face_aux, voice, voice_aux = case_inputs(case)
    return [bidirectional_terms(x, y, cross=c, **options(case))
            for x, y, c in [(face, voice, True), (face, face_aux, False), (voice, voice_aux, False)]]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_total_loss_follows_the_regauge_schedule(index):
    case = CASES[index]
    cfg = training_cfg(case)
    size = case["face"].shape[0]
    labels = torch.arange(size)
    pairs = per_pair_terms(case)
    aasm = pairs[0][0].mean() + (pairs[1][0] + pairs[2][0]).mean()
    weights = torch.linspace(0.5, 1.5, size)
    regauge = sum(nonzero_mean(bcr * weights) for _, bcr, _ in pairs)

    equilibrium = InstanceEquilibrium(size)
    equilibrium.identity_weights.copy_(weights)
    before, terms, _ = create_loss(cfg, 1).terms_of(*case_inputs(case), equilibrium.weights_of(labels), cfg.bcr_start_iter - 1)
    assert_relative(before, aasm)
    after, terms, _ = create_loss(cfg, 1).terms_of(*case_inputs(case), equilibrium.weights_of(labels), cfg.bcr_start_iter)
    assert_relative(after, aasm + 10.0 * regauge)
    assert_relative(terms["regauge"], regauge)
    assert terms["regauge"] > 0

    unweighted = training_cfg(case, ie_enabled=False)
    plain, terms, _ = create_loss(unweighted, 1).terms_of(*case_inputs(case), equilibrium.weights_of(labels), cfg.bcr_start_iter)
    assert_relative(plain, aasm + 10.0 * sum(bcr.mean() for _, bcr, _ in pairs))


def test_total_loss_uses_each_rows_own_weight():
    case = CASES[0]
    cfg = training_cfg(case)
    labels = torch.arange(20).flip(0) + 5
    equilibrium = InstanceEquilibrium(30)
    equilibrium.identity_weights.copy_(torch.rand(30, generator=torch.Generator().manual_seed(1)) + 0.5)
    _, terms, _ = create_loss(cfg, 1).terms_of(*case_inputs(case), equilibrium.weights_of(labels), cfg.bcr_start_iter)
    weights = equilibrium.identity_weights[labels]
    expected = sum(nonzero_mean(bcr * weights) for _, bcr, _ in per_pair_terms(case))
    assert_relative(terms["regauge"], expected)


def gradients(case, **changes):
    inputs = case_inputs(case, requires_grad=True)
    cfg = training_cfg(case, **changes)
    iteration = changes.get("iteration", cfg.bcr_start_iter)
    loss, _, _ = create_loss(cfg, 1).terms_of(*inputs, torch.ones(case["face"].shape[0]), iteration)
    loss.backward()
    return [x.grad for x in inputs]


@pytest.mark.parametrize("hinge", [True, False])
def test_gradients_are_finite_and_reach_every_input_through_bcr(hinge):
    case = next(c for c in CASES if c["hinge"] == hinge and c["face"].shape[0] == 20)
    with_bcr = gradients(case)
    detached = gradients(case, bcr_gradient="none")
    aasm_only = gradients(case, iteration=0)
    for g, d, a in zip(with_bcr, detached, aasm_only):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        torch.testing.assert_close(d, a)  # bcr_gradient none: the release, BCR adds no gradient
    assert any(not torch.allclose(g, a) for g, a in zip(with_bcr, aasm_only))


def loss_and_gradients(case, loss_impl, iteration, **changes):
    inputs = case_inputs(case, requires_grad=True)
    weights = torch.linspace(0.5, 1.5, case["face"].shape[0])
    loss, terms, correct = create_loss(training_cfg(case, loss_impl=loss_impl, **changes), 1).terms_of(*inputs, weights, iteration)
    loss.backward()
    return loss, terms, correct, [x.grad for x in inputs]


@pytest.mark.parametrize("index", range(len(CASES)))
@pytest.mark.parametrize("changes", [{}, {"ie_enabled": False}, {"bcr_gradient": "none"}, {"iteration": 0},
                                     {"bcr_gradient": "no_candidate_cosines"}, {"bcr_regauge_margin": 0.3},
                                     {"ie_application": "batch", "bcr_row_average": "all"}],
                         ids=["weighted", "unweighted", "detached", "before-regauge", "no-candidate-path",
                              "regauge-margin", "broadcast"])
def test_fused_loss_matches_the_reference(index, changes):
    case = CASES[index]
    changes = dict(changes)
    iteration = changes.pop("iteration", RELEASED_TRAINING.bcr_start_iter)
    fused = loss_and_gradients(case, "fused", iteration, **changes)
    plain = loss_and_gradients(case, "reference", iteration, **changes)
    assert_relative(fused[0], plain[0])
    assert fused[1].keys() == plain[1].keys()
    for name in plain[1]:
        assert_relative(fused[1][name], plain[1][name])
    assert torch.equal(fused[2], plain[2])
    for ours, definition in zip(fused[3], plain[3]):
        assert definition.abs().sum() > 0
        torch.testing.assert_close(ours, definition, rtol=1e-4, atol=1e-6)


def test_auto_takes_the_fused_terms_from_the_measured_batch_size(monkeypatch):
    calls = []

    def recorded(name, terms_of):
        def call(*args, **kwargs):
            calls.append(name)
            return terms_of(*args, **kwargs)
        return call

    for name, terms_of in archetype_agnostic.ROW_TERMS.items():
        monkeypatch.setitem(archetype_agnostic.ROW_TERMS, name, recorded(name, terms_of))
    threshold = archetype_agnostic.FUSED_FROM_BATCH
    for size in (threshold - 1, threshold):
        inputs = random_embeddings(size).float().unbind(0)
        create_loss(training_cfg(CASES[0], loss_impl="auto"), 1).terms_of(*inputs, torch.ones(size), 0)
    assert calls == ["reference", "fused"]


def random_embeddings(size, dim=16, seed=0):
    """Four float64 batches around shared identity centres, so that BCR has loose pairs to work on."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(size, dim, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, size, dim, generator=generator, dtype=torch.float64)
    return (centres + 0.8 * noise).requires_grad_()


PAIRS = ((0, 2), (0, 1), (2, 3))


@pytest.mark.parametrize("hinge", [True, False])
@pytest.mark.parametrize("size", [7, 70])  # one batched call for both directions, and one call each
def test_written_out_gradient_matches_autograd_of_the_formulas(hinge, size):
    embeddings = random_embeddings(size)
    opts = dict(temp=0.5, m_u=0.1, m_l=0.3 if hinge else 0.25, hinge=hinge, regauge_margin=RELEASE_REGAUGE_MARGIN)
    cross = (True, False, False)
    aasm, bcr, _ = pairwise_terms(embeddings, PAIRS, cross=cross, **opts)
    ours = torch.cat([aasm, bcr])
    expected = []
    for (x, y), c in zip(PAIRS, cross):
        offset = 5.4 if c else 6.0
        directions = [(embeddings[y], embeddings[x]), (embeddings[x], embeddings[y])]
        aasm_terms = [reference.aasm(p, q, offset, opts["temp"]) for p, q in directions]
        bcr_terms = [reference.bcr(p, q, m_u=opts["m_u"], m_l=opts["m_l"], hinge=hinge,
                                   regauge_margin=RELEASE_REGAUGE_MARGIN) for p, q in directions]
        expected.append(torch.stack(aasm_terms + bcr_terms))
    expected = torch.stack(expected, dim=1)
    assert (expected[2:] != 0).float().mean() > 0.3  # BCR is at work on most rows
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad, = torch.autograd.grad((ours * weights).sum(), embeddings)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), embeddings)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-9, atol=1e-12)


def test_written_out_gradient_passes_gradcheck():
    # Finite differences, independent of any hand-written formula (hinge: no constant scales).
    embeddings = random_embeddings(6, dim=5, seed=2)

    def outputs(e):
        aasm, bcr, _ = pairwise_terms(e, PAIRS, cross=(True, False, False), temp=0.5, m_u=0.1, m_l=0.3, hinge=True,
                                      regauge_margin=RELEASE_REGAUGE_MARGIN)
        return aasm, bcr

    assert torch.autograd.gradcheck(outputs, (embeddings,), eps=1e-6, atol=1e-7)


def test_both_direction_layouts_agree(monkeypatch):
    embeddings = random_embeddings(70)
    opts = dict(cross=(True, False, False), temp=0.5, m_u=0.1, m_l=0.3, hinge=True, regauge_margin=RELEASE_REGAUGE_MARGIN)
    results = []
    for threshold in (0, 1000):  # views of S and Sᵀ, then one batched call on [S; Sᵀ]
        monkeypatch.setattr(fused, "BATCH_DIRECTIONS_UP_TO", threshold)
        aasm, bcr, correct = pairwise_terms(embeddings, PAIRS, **opts)
        terms = torch.cat([aasm, bcr])
        results.append((terms, torch.autograd.grad(terms.sum(), embeddings)[0], correct))
    for views, batched in zip(*results):
        torch.testing.assert_close(views, batched)


# Operations that make the host wait for a CUDA device: reading a value back, or sizing an output by its data.
SYNCHRONISING_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select",
                     "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave",
                     "_assert_async"}


class SynchronisationRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCHRONISING_OPS:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("loss_impl", ["fused", "reference"])
@pytest.mark.parametrize("bcr_gradient", ["full", "none"])
def test_total_loss_has_no_synchronising_operations(bcr_gradient, loss_impl):
    # The CPU stand-in for the CUDA check below: no operation in the loss, its gradient or an IE
    # refresh reads a value back to the host or sizes a tensor by its contents.
    case = CASES[0]
    cfg = training_cfg(case, ie_start_iter=1, ie_refresh_iter=1, bcr_gradient=bcr_gradient, loss_impl=loss_impl)
    inputs = case_inputs(case, requires_grad=True)
    with SynchronisationRecorder() as recorder:
        loss, terms, _ = create_loss(cfg, 20)(*inputs, torch.arange(20), cfg.bcr_start_iter)
        loss.backward()
    assert recorder.calls == []
    with SynchronisationRecorder() as recorder:
        loss.item()  # the recorder does see a read-back
    assert recorder.calls


def test_total_loss_is_float32_for_half_precision_inputs():
    case = CASES[0]
    inputs = [x.to(torch.bfloat16) for x in case_inputs(case)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms, _ = create_loss(training_cfg(case), 1).terms_of(*inputs, torch.ones(20, dtype=torch.bfloat16), 7000)
    assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    reference, _, _ = create_loss(training_cfg(case), 1).terms_of(*[x.float() for x in inputs], torch.ones(20), 7000)
    torch.testing.assert_close(loss, reference)


def test_trainer_accumulates_cross_pair_counts():
    case = CASES[0]
    cfg = training_cfg(case)
    labels = torch.arange(20) * 2
    equilibrium = create_loss(cfg, 40)
    for _ in range(2):
        equilibrium(*case_inputs(case), labels, 1)
    expected = torch.zeros(40)
    expected[labels] = 2 * case["correct[voice->face]"].float()
    assert torch.equal(equilibrium.correct_counts, expected)
    assert torch.equal(equilibrium.comparison_counts[labels], torch.full((20,), 38.0))
    assert equilibrium.comparison_counts[1::2].sum() == 0


def test_refresh_schedule():
    cfg = RELEASED_TRAINING  # ie_start_iter 6440, ie_refresh_iter 920
    assert [t for t in range(1, 9000) if create_loss(cfg, 1).refresh_due(t)] == [6440, 7360, 8280]


def test_trainer_refreshes_before_using_the_weights():
    case = CASES[0]
    cfg = training_cfg(case, ie_start_iter=4, ie_refresh_iter=2)
    labels = torch.arange(20)
    equilibrium = create_loss(cfg, 20)
    for iteration in (1, 2, 3):
        assert not equilibrium(*case_inputs(case), labels, iteration)[2]
    assert torch.equal(equilibrium.identity_weights, torch.ones(20))
    ratio = (3 * case["correct[voice->face]"].double()) / (3 * 19)
    std = ratio.std()
    expected = torch.from_numpy(norm.pdf(ratio.numpy(), (ratio.mean() - std).item(), std.item())).float()
    assert equilibrium(*case_inputs(case), labels, 4)[2]
    torch.testing.assert_close(equilibrium.identity_weights, expected)
    # The counters restarted at the refresh and hold iteration 4's counts only.
    assert torch.equal(equilibrium.comparison_counts, torch.full((20,), 19.0))


def test_refresh_on_hand_made_counts_keeps_unseen_identities():
    equilibrium = InstanceEquilibrium(5)
    equilibrium.identity_weights.copy_(torch.tensor([1.0, 1.0, 0.7, 1.0, 1.0]))
    equilibrium.accumulate(torch.tensor([0, 1, 3, 4]), torch.tensor([3.0, 5.0, 8.0, 9.0]), 10)
    equilibrium.accumulate(torch.tensor([0, 4]), torch.tensor([1.0, 2.0]), 10)
    equilibrium.refresh()
    ratio = [4 / 20, 5 / 10, 8 / 10, 11 / 20]
    mean = sum(ratio) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in ratio) / 3)
    expected = norm.pdf(ratio, mean - std, std)
    torch.testing.assert_close(equilibrium.identity_weights[[0, 1, 3, 4]], torch.tensor(expected, dtype=torch.float32))
    assert equilibrium.identity_weights[2] == pytest.approx(0.7)
    assert equilibrium.correct_counts.sum() == 0 and equilibrium.comparison_counts.sum() == 0
    # Nothing seen since: no NaN, every weight kept.
    kept = equilibrium.identity_weights.clone()
    equilibrium.refresh()
    assert torch.equal(equilibrium.identity_weights, kept)


def test_refresh_with_identical_ratios_keeps_weights():
    equilibrium = InstanceEquilibrium(3)
    equilibrium.accumulate(torch.tensor([0, 1, 2]), torch.tensor([5.0, 5.0, 5.0]), 10)
    equilibrium.refresh()  # σ = 0: the pdf is undefined
    assert torch.equal(equilibrium.identity_weights, torch.ones(3))


def test_equilibrium_state_travels_in_state_dict():
    equilibrium = InstanceEquilibrium(4)
    equilibrium.accumulate(torch.tensor([1, 2]), torch.tensor([3.0, 4.0]), 7)
    equilibrium.identity_weights[0] = 0.25
    restored = InstanceEquilibrium(4)
    restored.load_state_dict(equilibrium.state_dict())
    for name in ("correct_counts", "comparison_counts", "identity_weights"):
        assert torch.equal(getattr(restored, name), getattr(equilibrium, name))


def first_loss(seed):
    from models import build_model

    cfg = load_config(os.path.join(ROOT, "config", "synthetic.yaml"))
    torch.manual_seed(seed)
    model = build_model(cfg.models)
    images = torch.rand(4, 3, 112, 112) * 255
    waves = torch.randn(4, 16000) * 3000
    face, face_aux = model.encode_face(images).split(2)
    voice, voice_aux = model.encode_voice(waves).split(2)
    loss, _, _ = create_loss(cfg.training, 1).terms_of(face, face_aux, voice, voice_aux, torch.ones(2), cfg.training.bcr_start_iter)
    return loss


def test_same_seed_gives_the_same_first_loss():
    assert torch.equal(first_loss(0), first_loss(0))
    assert not torch.equal(first_loss(0), first_loss(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss_impl", ["fused", "reference"])
def test_total_loss_never_synchronises_on_cuda(loss_impl):
    case = CASES[0]
    cfg = training_cfg(case, ie_start_iter=1, ie_refresh_iter=1, loss_impl=loss_impl)
    inputs = [x.cuda().requires_grad_() for x in case_inputs(case)]
    equilibrium = create_loss(cfg, 20).cuda()
    labels = torch.arange(20, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, _, _ = equilibrium(*inputs, labels, cfg.bcr_start_iter)  # refresh included
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()
