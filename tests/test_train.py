import pytest
import torch

from config import load_config
from losses import create_loss
from train import learning_rate, plateaued
from utils.run import FiniteWatch, NonFiniteLoss


@pytest.fixture(scope="module")
def released():
    return load_config("config/cfg.yaml")


def test_learning_rate_drops_tenfold_at_each_step(released):
    t = released.training
    assert learning_rate(1, t) == pytest.approx(0.01)
    assert learning_rate(6887, t) == pytest.approx(0.01)
    assert learning_rate(6888, t) == pytest.approx(0.001)
    assert learning_rate(9887, t) == pytest.approx(0.001)
    assert learning_rate(9888, t) == pytest.approx(0.0001)
    assert learning_rate(27000, t) == pytest.approx(0.0001)


def test_equilibrium_refreshes_every_interval_after_warm_up(released):
    t = released.training
    refreshes = [it for it in range(1, 12000) if create_loss(t, 1).refresh_due(it)]
    assert refreshes[0] == 6440  # warm-up 6440 is itself a multiple of 920 (7 × 920)
    assert all(b - a == 920 for a, b in zip(refreshes, refreshes[1:]))


def test_plateau_rule():
    assert not plateaued([0.5, 0.6, 0.6, 0.55, 0.5], 0)
    assert plateaued([0.7, 0.6, 0.6, 0.55, 0.5], 5)
    assert not plateaued([0.5, 0.6, 0.6, 0.55, 0.5], 5)
    assert not plateaued([0.7, 0.6], 5)


def test_non_finite_loss_names_iteration_and_term():
    check_finite({"loss": torch.tensor(1.0), "aasm_cross": torch.tensor(0.5)}, 3)
    with pytest.raises(NonFiniteLoss, match=r"iteration 12: term\(s\) loss, bcr_face"):
        check_finite({"loss": torch.tensor(float("nan")), "aasm_cross": torch.tensor(0.5),
                      "bcr_face": torch.tensor(float("inf"))}, 12)


def test_finite_watch_reports_the_first_bad_iteration_only_when_checked():
    from utils.run import FiniteWatch

    watch = FiniteWatch()
    ok = {"loss": torch.tensor(1.0), "bcr_face": torch.tensor(0.5)}
    watch.update(ok, 1)
    watch.check()
    watch.update({"loss": torch.tensor(float("nan")), "bcr_face": torch.tensor(0.5)}, 2)  # no error yet
    watch.update({"loss": torch.tensor(float("nan")), "bcr_face": torch.tensor(float("inf"))}, 3)
    with pytest.raises(NonFiniteLoss, match=r"iteration 2: term\(s\) loss;"):
        watch.check()


def check_finite(terms: dict, iteration: int) -> None:
    watch = FiniteWatch()
    watch.update(terms, iteration)
    watch.check()
