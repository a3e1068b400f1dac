"""train.py under the real launcher: two gloo processes on the CPU, through validations and checkpoints, resumed."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, tiny_config, save_config
from train import cpu_computes_bf16
from utils.train_state import resumable_checkpoint

OPTS = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
        "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]", "dataset.image_size=32",
        "training.crop_seconds=[0.5,1.0]", "training.save_iter=4", "training.keep_last=0",
        "training.val_start=2", "training.val_iter=2", "training.bcr_start_iter=5", "training.ie_start_iter=4",
        "training.ie_refresh_iter=4", "training.lr_steps=[7]", "training.lr=0.05", "training.max_iter=8",
        "training.deterministic=true", "training.log_iter=4", "training.timeout_minutes=2"]
LATER = 10  # the resumed run's max_iter


def environment():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def torchrun(cfg_path, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "train.py"), "--cfg", cfg_path, *extra]
    return subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=600)


def single(cfg_path, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--cfg", cfg_path, *extra],
                          env=environment(), capture_output=True, text=True, timeout=600)


def write_config(tiny_cfg, tmp_path, name, *extra):
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *OPTS, f"output_dir={tmp_path}",
                      f"exp_name={name}", *extra)
    path = str(tmp_path / f"{name}.yaml")
    save_config(cfg, path)
    return path, tmp_path / name


def load(path):
    return torch.load(path, weights_only=True)


def assert_same_weights(a, b):
    """tests/test_distributed.py's tolerance: 1e-5 of each tensor's scale plus 1e-6 of the largest one."""
    scales = {name: float(v.abs().max()) if v.is_floating_point() else 0.0 for name, v in b["model"].items()}
    largest = max(scales.values())
    for name, value in b["model"].items():
        torch.testing.assert_close(a["model"][name], value, rtol=1e-5, atol=1e-5 * scales[name] + 1e-6 * largest,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for name, value in b["equilibrium"].items():
        torch.testing.assert_close(a["equilibrium"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def train_and_resume(tiny_cfg, tmp_path):
    """Two processes to iteration 8 (validations at 2, 4, 6, 8), then resumed under torchrun to LATER."""
    path, run = write_config(tiny_cfg, tmp_path, "ddp")
    first = torchrun(path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert {f"checkpoint_{i}.pth.tar" for i in (1, 4, 8)} | {"checkpoint_best.pth.tar"} <= set(os.listdir(run))
    history = load(run / "checkpoint_8.pth.tar")["val_history"]
    assert len(history) == 4
    best = load(run / "checkpoint_best.pth.tar")
    assert best["best_val"] == max(history) and best["iteration"] == 2 * (history.index(max(history)) + 1)
    resumed = torchrun(path, "--resume", "auto", "--opts", f"training.max_iter={LATER}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (run / "train.log").read_text()
    final = load(run / f"checkpoint_{LATER}.pth.tar")
    assert final["val_history"][:4] == history and len(final["val_history"]) == 5
    assert len(set(final["val_history"])) > 1  # the best checkpoint was replaced at some validations only
    return run


def test_two_processes_train_validate_save_and_resume(tiny_cfg, tmp_path):
    run = train_and_resume(tiny_cfg, tmp_path)
    # The first iteration equals one process on the same global batch. Later ones drift apart: the loss
    # has hinges and ranking counts, where rounding differences (summation order, even the thread
    # count of a single process) become real ones within a few iterations.
    reference_path, reference_run = write_config(tiny_cfg, tmp_path, "one", "training.max_iter=1")
    one = single(reference_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_weights(load(run / "checkpoint_1.pth.tar"), load(reference_run / "checkpoint_1.pth.tar"))


@pytest.mark.skipif(not cpu_computes_bf16(), reason="this CPU has no native bf16")
def test_two_processes_under_bf16_autocast(tiny_cfg, tmp_path):
    """The CPU demo's training.amp: bf16 under torchrun: the batch norm over both processes gets bf16 activations."""
    path, run = write_config(tiny_cfg, tmp_path, "bf16", "training.amp=bf16", "training.max_iter=2")
    result = torchrun(path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load(run / "checkpoint_2.pth.tar")
    assert len(saved["val_history"]) == 1 and all(v.dtype != torch.bfloat16 for v in saved["model"].values())


@pytest.mark.slow
def test_resumed_two_process_run_equals_an_uninterrupted_one(tiny_cfg, tmp_path):
    run = train_and_resume(tiny_cfg, tmp_path)
    straight_path, straight_run = write_config(tiny_cfg, tmp_path, "straight", f"training.max_iter={LATER}")
    straight = torchrun(straight_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed, reference = load(run / f"checkpoint_{LATER}.pth.tar"), load(straight_run / f"checkpoint_{LATER}.pth.tar")
    assert resumed["val_history"] == reference["val_history"]
    assert_same_weights(resumed, reference)


@pytest.mark.slow
def test_when_one_process_fails_the_other_stops_naming_it(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path, "failing")
    hook = tmp_path / "hook"
    hook.mkdir()
    # Rank 1's third optimizer step raises; rank 0 is then waiting in a collective.
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        "    step, calls = torch.optim.SGD.step, []\n"
        "    def failing(self, *a, **k):\n"
        "        calls.append(1)\n"
        "        if len(calls) == 3:\n"
        "            raise RuntimeError('injected failure')\n"
        "        return step(self, *a, **k)\n"
        "    torch.optim.SGD.step = failing\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "train.py"), "--cfg", path]
    result = subprocess.run(command, env=dict(environment(), PYTHONPATH=str(hook)), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "rank 0 stopping: rank 1 failed: RuntimeError: injected failure" in result.stderr, \
        "\n".join(line for line in result.stderr.splitlines() if "rank1" not in line)[-3000:]
    assert not (run / "train.lock").exists()
    last = resumable_checkpoint(str(run))  # the last checkpoint loads, and the run continues from it
    iteration = load(last)["iteration"]
    resumed = torchrun(path, "--resume", "auto", "--opts", f"training.max_iter={iteration + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {last}" in (run / "train.log").read_text()
    assert load(run / f"checkpoint_{iteration + 1}.pth.tar")["iteration"] == iteration + 1
