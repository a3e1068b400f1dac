"""train.log a person can follow: one line per log_iter with the loss and its terms, throughput and time left,
and a line where BCR switches on."""
import os
import re

from easydict import EasyDict

from train import duration, loss_terms_line, progress_line

ITERATION_LINE = re.compile(
    r"iteration (\d+)/(\d+): lr ([0-9.e-]+), loss ([0-9.]+) = AaSM cross ([0-9.]+) \+ face ([0-9.]+) \+ voice ([0-9.]+)"
    r"(?: \+ λ 10 × BCR ([0-9.]+)| \(BCR ([0-9.]+), added from iteration 300\)), rank accuracy ([0-9.]+); "
    r"([0-9.]+) it/s, elapsed (\d+):(\d\d):(\d\d), remaining (\d+):(\d\d):(\d\d)$")
REFRESH_LINE = re.compile(r"iteration (\d+): IE weights refreshed: min ([0-9.e+-]+), median ([0-9.e+-]+), "
                          r"max ([0-9.e+-]+)$")
SWITCH_LINE = re.compile(r"iteration (\d+): BCR switches on .*total loss includes λ·BCR = 10 × BCR")

TERMS = {"aasm_cross": 3.0, "aasm_face": 2.0, "aasm_voice": 1.0, "regauge": 0.5}


def training(**changes) -> EasyDict:
    return EasyDict({"objective": "aasm", "bcr_enabled": True, "regauge_iter": 100, "regauge_weight": 10.0, **changes})


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


def test_a_short_runs_train_log_has_a_line_per_log_iter_and_the_bcr_switch(short_run):
    """The short run (400 iterations, log_iter 20, BCR and the lr drop at 300, IE refreshes every 50 from 200)."""
    with open(os.path.join(short_run["run_dir"], "train.log"), encoding="utf-8") as f:
        messages = [line.rstrip("\n").split(" INFO ", 1)[-1] for line in f]
    logged = [(i, ITERATION_LINE.fullmatch(m)) for i, m in enumerate(messages) if ITERATION_LINE.fullmatch(m)]
    rows = [match.groups() for _, match in logged]
    assert [int(r[0]) for r in rows] == [1] + list(range(20, 401, 20))
    assert all(r[1] == "400" for r in rows)
    for r in rows:
        iteration, lr, total, cross, face, voice, added, before = int(r[0]), float(r[2]), *map(float, r[3:7]), *r[7:9]
        assert lr == (0.01 if iteration < 300 else 0.001)
        assert (added is not None) == (iteration >= 300) and (before is None) == (iteration >= 300)
        assert abs(cross + face + voice + (10 * float(added) if added else 0) - total) < 1e-3  # the terms it sums
        assert 0 <= float(r[9]) <= 1 and float(r[10]) > 0
    elapsed = [seconds(*r[11:14]) for r in rows]
    remaining = [seconds(*r[14:17]) for r in rows]
    assert elapsed == sorted(elapsed) and remaining[-1] == 0 and remaining[0] > 0

    switches = [(i, SWITCH_LINE.match(m)) for i, m in enumerate(messages) if SWITCH_LINE.match(m)]
    assert [int(match.group(1)) for _, match in switches] == [300]
    line_300 = next(i for i, match in logged if match.group(1) == "300")
    assert switches[0][0] < line_300  # said before the first total that includes it

    refreshes = [REFRESH_LINE.fullmatch(m) for m in messages if REFRESH_LINE.fullmatch(m)]
    assert [int(m.group(1)) for m in refreshes] == [200, 250, 300, 350, 400]
    assert all(float(m.group(2)) <= float(m.group(3)) <= float(m.group(4)) for m in refreshes)
