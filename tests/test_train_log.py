"""train.log a person can follow: one line per log_iter with the loss and its terms, throughput and time left,
and a line where BCR switches on."""
import os
import re

import pytest

from easydict import EasyDict

from helpers import tiny_config
from train import train
from utils.run import duration, loss_terms_line, progress_line

ITERATION_LINE = re.compile(
    r"iteration (\d+)/(\d+): lr ([0-9.e-]+), loss ([0-9.]+) = AaSM cross ([0-9.]+) \+ face ([0-9.]+) \+ voice ([0-9.]+)"
    r"(?: \+ λ 10 × BCR ([0-9.]+)| \(BCR ([0-9.]+), added from iteration (\d+)\)), rank accuracy ([0-9.]+); "
    r"([0-9.]+) it/s, elapsed (\d+):(\d\d):(\d\d), remaining (\d+):(\d\d):(\d\d)$")
NUMBER = r"([0-9.e+-]+)"
REFRESH_LINE = re.compile(rf"iteration (\d+): IE weights refreshed: min {NUMBER}, median {NUMBER}, mean {NUMBER}, "
                          rf"max {NUMBER}; effective BCR weight λ·mean\(w\) {NUMBER}, BCR share of ∂face {NUMBER}, "
                          rf"∂voice {NUMBER}, active BCR rows cross {NUMBER}, active BCR rows face {NUMBER}, "
                          rf"active BCR rows voice {NUMBER}")
SWITCH_LINE = re.compile(r"iteration (\d+): BCR switches on .*total loss includes λ·BCR = 10 × BCR")
# A dozen iterations of small encoders on the tiny corpus: every logged event in a few seconds.
MICRO_RUN = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
             "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]", "dataset.image_size=32",
             "training.crop_seconds=[0.5,1.0]", "training.max_iter=12", "training.lr_steps=[8]",
             "training.bcr_start_iter=8", "training.ie_start_iter=4", "training.ie_refresh_iter=4", "training.log_iter=4",
             "training.val_start=12", "training.val_iter=12", "training.save_iter=12", "device=cpu"]

TERMS = {"aasm_cross": 3.0, "aasm_face": 2.0, "aasm_voice": 1.0, "regauge": 0.5}


def training(**changes) -> EasyDict:
    return EasyDict({"objective": "aasm", "bcr_enabled": True, "bcr_start_iter": 100, "bcr_weight": 10.0, **changes})


def test_the_loss_line_names_what_the_total_sums():
    assert loss_terms_line(6.0, TERMS, 99, training()) == \
        "loss 6.0000 = AaSM cross 3.0000 + face 2.0000 + voice 1.0000 (BCR 0.5000, added from iteration 100)"
    assert loss_terms_line(11.0, TERMS, 100, training()).endswith("voice 1.0000 + λ 10 × BCR 0.5000")
    assert "not added: training.bcr_enabled false" in loss_terms_line(6.0, TERMS, 200, training(bcr_enabled=False))
    infonce = {"infonce_cross": 1.0, "infonce_face": 2.0, "infonce_voice": 3.0}
    assert loss_terms_line(6.0, infonce, 200, training(objective="infonce")) == \
        "loss 6.0000 = InfoNCE cross 1.0000 + face 2.0000 + voice 3.0000"


def test_progress_is_throughput_elapsed_and_remaining():
    assert duration(3725.4) == "1:02:05"
    assert progress_line(iteration=110, first=11, last=300, elapsed=50.0) == \
        "2.00 it/s, elapsed 0:00:50, remaining 0:01:35"


def seconds(h: str, m: str, s: str) -> int:
    return 3600 * int(h) + 60 * int(m) + int(s)


def check_train_log(run_dir: str, max_iter: int, log_iter: int, bcr_start_iter: int, refreshes: list[int]) -> None:
    """train.log of a run whose lr drops tenfold from 0.01 at bcr_start_iter, where BCR starts."""
    with open(os.path.join(run_dir, "train.log"), encoding="utf-8") as f:
        messages = [line.rstrip("\n").split(" INFO ", 1)[-1] for line in f]
    logged = [(i, ITERATION_LINE.fullmatch(m)) for i, m in enumerate(messages) if ITERATION_LINE.fullmatch(m)]
    rows = [match.groups() for _, match in logged]
    assert [int(r[0]) for r in rows] == [1] + list(range(log_iter, max_iter + 1, log_iter))
    assert all(int(r[1]) == max_iter for r in rows)
    for r in rows:
        iteration, lr, total, cross, face, voice, added, before, start = int(r[0]), float(r[2]), *map(float, r[3:7]), *r[7:10]
        assert lr == (0.01 if iteration < bcr_start_iter else 0.001)
        assert (added is not None) == (iteration >= bcr_start_iter) and (before is None) == (iteration >= bcr_start_iter)
        assert start is None or int(start) == bcr_start_iter
        assert abs(cross + face + voice + (10 * float(added) if added else 0) - total) < 1e-3  # the terms it sums
        assert 0 <= float(r[10]) <= 1 and float(r[11]) > 0
    elapsed = [seconds(*r[12:15]) for r in rows]
    remaining = [seconds(*r[15:18]) for r in rows]
    assert elapsed == sorted(elapsed) and remaining[-1] == 0

    switches = [(i, SWITCH_LINE.match(m)) for i, m in enumerate(messages) if SWITCH_LINE.match(m)]
    assert [int(match.group(1)) for _, match in switches] == [bcr_start_iter]
    first_with_bcr = next(i for i, match in logged if int(match.group(1)) >= bcr_start_iter)
    assert switches[0][0] < first_with_bcr  # said before the first total that includes it

    found = [REFRESH_LINE.fullmatch(m) for m in messages if REFRESH_LINE.fullmatch(m)]
    assert [int(m.group(1)) for m in found] == refreshes
    for m in found:
        low, median, mean, high, effective, *shares_and_rows = map(float, m.groups()[1:])
        assert low <= median <= high and low <= mean <= high and effective > 0
        assert all(0 <= value <= 1 for value in shares_and_rows)


def test_a_micro_runs_train_log_has_a_line_per_log_iter_and_the_bcr_switch(tiny_cfg, tmp_path):
    root = os.path.dirname(tiny_cfg.dataset.meta_file)
    train(tiny_config(root, *MICRO_RUN, f"output_dir={tmp_path}", "exp_name=micro"))
    check_train_log(str(tmp_path / "micro"), max_iter=12, log_iter=4, bcr_start_iter=8, refreshes=[4, 8, 12])


@pytest.mark.slow
def test_a_short_runs_train_log_has_a_line_per_log_iter_and_the_bcr_switch(short_run):
    """The short run (400 iterations, log_iter 20, BCR and the lr drop at 300, IE refreshes every 50 from 200)."""
    check_train_log(short_run["run_dir"], max_iter=400, log_iter=20, bcr_start_iter=300,
                    refreshes=[200, 250, 300, 350, 400])
