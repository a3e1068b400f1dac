"""`python test.py --inspect FILE`: the layout, iteration and IE state of released-layout files and of ours."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from config import load_config
from helpers import DATA, ROOT, SYNTHETIC, load_test_script
from losses import ArchetypeAgnosticLoss
from utils.checkpoint import save_checkpoint
from utils.run_folder import config_to_dict
from utils.errors import UserError

with open(os.path.join(DATA, "released_state_dict_manifest.json")) as f:
    MANIFEST = json.load(f)
IDENTITIES = 924  # the release's training identities: the length of eqm.* in the manifest


def released_state(weights, correct=None, comparisons=None):
    """Every key of the released manifest; the IE state as given, the networks' tensors shrunk to one number
    (inspection reads only the layout's names and the IE state)."""
    state = {key: torch.zeros(1) for key, _, _ in MANIFEST}
    state["eqm.weight"] = torch.as_tensor(weights, dtype=torch.float32)
    state["eqm.corr_num"] = torch.zeros(IDENTITIES) if correct is None else correct
    state["eqm.compare_sum"] = torch.zeros(IDENTITIES) if comparisons is None else comparisons
    return state


def densities(seed=0):
    """Raw IE weights as the release computes them: the normal density of ρ centred 1σ below its mean."""
    rho = np.random.default_rng(seed).uniform(0.6, 0.95, IDENTITIES)
    sigma = rho.std(ddof=1)
    return np.exp(-0.5 * ((rho - (rho.mean() - sigma)) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def as_float32(values):
    return torch.as_tensor(values, dtype=torch.float32).double().numpy()


def expected_line(w):
    w = as_float32(w)
    return (f"IE weights: {w.size} identities, min {w.min():.6g}, median {np.quantile(w, 0.5):.6g}, mean "
            f"{w.mean():.6g}, max {w.max():.6g}, {100 * (w > 1).mean():.1f}% above 1")


def inspect(path, capsys, *flags):
    load_test_script().main(["--inspect", str(path), *flags])
    return capsys.readouterr().out


RAW = densities()
CONVENTIONS = {  # weights -> the verdict's start
    "raw": (RAW, "not normalised (mean"),
    "mean": (RAW * IDENTITIES / RAW.sum(), "mean 1: normalised as the predecessor does"),
    "sum": (RAW / RAW.sum(), "sum 1"),
    "ones": (np.ones(IDENTITIES), "all exactly 1: never refreshed, or IE off"),
}


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_released_checkpoint_statistics_and_verdict(tmp_path, capsys, convention):
    weights, verdict = CONVENTIONS[convention]
    correct, comparisons = torch.zeros(IDENTITIES), torch.zeros(IDENTITIES)
    correct[[3, 10, 500]], comparisons[[3, 10, 500]] = torch.tensor([10.0, 15, 19]), 19.0
    path = tmp_path / "checkpoint_best.pth.tar"
    torch.save({"start_it": 20663, "stage": 2, "state_dict": released_state(weights, correct, comparisons),
                "optimizer": {}}, path)
    lines = inspect(path, capsys).splitlines()
    assert lines[1] == "layout: the release's checkpoint"
    assert lines[2] == "iteration: 20663 (start_it, the release's counter (from 0))"
    assert lines[3] == "IE counters since the last refresh: R = 44, N = 57, over 3 of 924 identities"
    assert lines[4] == expected_line(weights)
    assert lines[5].startswith("verdict: " + verdict)
    assert len(lines) == 6  # no training switches: the release's file records no config


def test_raw_densities_are_the_releases_scale():
    """The case is what the docs describe: mean about 0.22/σ(ρ), most identities above 1."""
    assert RAW.mean() > 2 and (RAW > 1).mean() > 0.6


def test_bare_state_dict_with_the_releases_nan_weights(tmp_path, capsys):
    weights = np.full(IDENTITIES, np.nan)
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in released_state(weights).items()}, path)
    lines = inspect(path, capsys).splitlines()
    assert lines[1] == "layout: the release's bare state_dict, 'module.' prefix stripped"
    assert lines[2] == "iteration: unknown (not recorded in a bare state_dict)"
    assert lines[3] == "IE counters since the last refresh: R = 0, N = 0, over 0 of 924 identities"
    assert lines[4] == "IE weights: 924 identities, none finite"
    assert lines[5] == ("verdict: 924 of 924 weights are not finite: the release's first refresh divides its "
                        "never-filled counters, 0/0")


def own_checkpoint(path, normalization="mean"):
    """Our format after a real IE refresh: counts of two batches, weights refreshed by the loss itself."""
    cfg = load_config(SYNTHETIC, [f"training.ie_normalization={normalization}", "training.bcr_gradient=none",
                                  "training.ie_start_iter=2", "training.ie_refresh_iter=2"])
    loss = ArchetypeAgnosticLoss(8, ie_start_iter=2, ie_refresh_iter=2, ie_normalization=normalization)
    loss.accumulate(torch.arange(8), torch.tensor([7.0, 6, 6, 5, 4, 4, 2, 1]), 7)
    loss.refresh()
    loss.accumulate(torch.tensor([0, 1]), torch.tensor([3.0, 5.0]), 7)
    save_checkpoint({"format": "aasm", "iteration": 2, "model": {}, "equilibrium": loss.state_dict(),
                     "config": config_to_dict(cfg)}, str(path))
    return loss.identity_weights.numpy()


def test_own_checkpoint_shows_its_switches(tmp_path, capsys):
    path = tmp_path / "checkpoint_2.pth.tar"
    weights = own_checkpoint(path)
    lines = inspect(path, capsys).splitlines()
    assert lines[1:4] == ["layout: this project's checkpoint",
                          "iteration: 2 (iterations finished (this project counts from 1))",
                          "IE counters since the last refresh: R = 8, N = 14, over 2 of 8 identities"]
    assert lines[4] == expected_line(weights)
    assert lines[5].startswith("verdict: mean 1")
    switches = lines[6]
    for shown in ("training.ie_normalization=mean", "training.bcr_gradient=none", "training.ie_enabled=true",
                  "training.bcr_row_average=coupled", "training.ie_application=row", "training.bcr_weight=10.0",
                  "training.bcr_regauge_margin=0.15", "training.ie_shift=1.0"):
        assert shown in switches.split(), shown


def test_command_prints_and_writes_json(tmp_path):
    path = tmp_path / "checkpoint_2.pth.tar"
    own_checkpoint(path, normalization="none")
    output = tmp_path / "state.json"
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--inspect", str(path), "--json",
                              "--output", str(output)], capture_output=True, text=True, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    printed, written = json.loads(process.stdout), json.loads(output.read_text())
    assert printed == written
    assert written["convention"] == "none" and written["iteration"] == 2 and written["identities"] == 8
    assert written["counted_identities"] == 2 and written["switches"]["ie_normalization"] == "none"


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint file not found: {path}"),
    ([1, 2], "{path}: not a checkpoint (expected a dict, got list)"),
    ({"format": "aasm", "iteration": 3, "model": {}}, "{path}: this project's checkpoint holds no IE state"),
    ({"vNet.model.x": torch.zeros(1)}, "{path}: the release's bare state_dict holds no IE state (no 'eqm.' keys)"),
    ({"encoder.w": torch.zeros(1)}, "{path}: none of the accepted checkpoint layouts"),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "file.pth"
    if content is not None:
        torch.save(content, path)
    with pytest.raises((UserError, FileNotFoundError)) as error:
        load_test_script().main(["--inspect", str(path)])
    assert str(error.value).startswith(message.format(path=path)) and "\n" not in str(error.value)


def test_command_error_is_one_line(tmp_path):
    path = tmp_path / "empty.pth.tar"
    path.write_bytes(b"")
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--inspect", str(path)],
                             capture_output=True, text=True)
    assert process.returncode == 1
    assert process.stderr == f"test.py: {path}: empty file (0 bytes), not a checkpoint\n"


def test_output_never_overwrites_the_checkpoint(tmp_path):
    path = tmp_path / "checkpoint_2.pth.tar"
    own_checkpoint(path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="is the checkpoint being inspected"):
        load_test_script().main(["--inspect", str(path), "--output", str(path)])
    assert path.read_bytes() == before


def test_inspect_stands_alone_and_cfg_is_needed_otherwise(capsys):
    script = load_test_script()
    with pytest.raises(SystemExit):
        script.main(["--inspect", "x.pth", "--cfg", SYNTHETIC])
    assert "--inspect reads one checkpoint; it does not go with --cfg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main([])
    assert "required: --cfg (or --inspect CHECKPOINT)" in capsys.readouterr().err
