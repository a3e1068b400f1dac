"""An interrupted run (SIGKILL after a checkpoint) resumed with --resume auto ends where an uninterrupted run does."""
import os
import signal
import subprocess
import sys
import time

import torch

from helpers import ROOT, save_config

MAX_ITER = 24
OPTS = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
        "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]", "dataset.image_size=32",
        "training.crop_seconds=[0.5,1.0]", "training.save_iter=4", "training.keep_last=0",
        "training.val_start=6", "training.val_iter=6", "training.bcr_start_iter=5", "training.ie_start_iter=4",
        "training.ie_refresh_iter=4", "training.lr_steps=[10,20]", f"training.max_iter={MAX_ITER}",
        "training.deterministic=true", "training.log_iter=4"]


def command(cfg_path, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--cfg", cfg_path, *extra]


def environment():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def final_state(run_dir):
    return torch.load(os.path.join(run_dir, f"checkpoint_{MAX_ITER}.pth.tar"), weights_only=True)


def write_config(tiny_cfg, tmp_path, name):
    from helpers import tiny_config

    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *OPTS, f"output_dir={tmp_path}",
                      f"exp_name={name}")
    path = str(tmp_path / f"{name}.yaml")
    save_config(cfg, path)
    return path, os.path.join(str(tmp_path), name)


def test_killed_then_resumed_run_matches_an_uninterrupted_one(tiny_cfg, tmp_path):
    path, straight_dir = write_config(tiny_cfg, tmp_path, "straight")
    subprocess.run(command(path), check=True, env=environment(), capture_output=True)

    path, killed_dir = write_config(tiny_cfg, tmp_path, "killed")
    process = subprocess.Popen(command(path), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(killed_dir, "checkpoint_8.pth.tar")
    while not os.path.exists(first) and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed_dir, f"checkpoint_{MAX_ITER}.pth.tar"))

    subprocess.run(command(path, "--resume", "auto"), check=True, env=environment(), capture_output=True)
    straight, resumed = final_state(straight_dir), final_state(killed_dir)
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-6, atol=1e-7, msg=name)
    for name, value in straight["equilibrium"].items():
        torch.testing.assert_close(resumed["equilibrium"][name], value, msg=name)
    assert resumed["val_history"] == straight["val_history"] and len(straight["val_history"]) == 4
    assert "resumed from" in open(os.path.join(killed_dir, "train.log")).read()
