"""Faults around a training run: signals, failed writes, a busy run folder, bad checkpoints, changed configs."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from config import ConfigError
from helpers import ROOT, tiny_config, save_config
from utils import distributed
from utils.files import WriteError, atomic_write, remove_stale_temporaries
from utils.run_folder import LOCK_NAME
from utils.train_state import resumable_checkpoint

OPTS = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
        "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]", "dataset.image_size=32",
        "training.crop_seconds=[0.5,1.0]", "training.save_iter=2", "training.keep_last=0",
        "training.val_start=100", "training.val_iter=100", "training.max_iter=4", "training.log_iter=1"]


def write_config(tiny_cfg, tmp_path, name="run", *extra):
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *OPTS, f"output_dir={tmp_path}",
                      f"exp_name={name}", *extra)
    path = str(tmp_path / f"{name}.yaml")
    save_config(cfg, path)
    return path, tmp_path / name


def train(cfg_path, *extra, **env):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--cfg", cfg_path, *extra],
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env), capture_output=True, text=True,
                          timeout=300)


def one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last
    return last


# ---------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------
def test_atomic_write_honours_the_umask_and_keeps_the_old_file_on_a_full_disk(tmp_path):
    path = tmp_path / "checkpoint_2.pth.tar"
    with atomic_write(str(path), "wb") as f:
        f.write(b"good")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    with pytest.raises(WriteError, match=f"{path}: No space left on device"):
        with atomic_write(str(path), "wb") as f:
            f.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert path.read_bytes() == b"good" and os.listdir(tmp_path) == [path.name]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / ".tmp_checkpoint_4.pth.tar.1234abcd").write_bytes(b"half a checkpoint")
    (tmp_path / "checkpoint_2.pth.tar").write_bytes(b"kept")
    remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == ["checkpoint_2.pth.tar"]


def test_a_failed_save_stops_training_naming_the_path_and_the_disk(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path)
    # torch.save fails like a full disk from the second checkpoint on (iteration 2).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import errno, os, torch\n"
        "original, calls = torch.save, []\n"
        "def failing(obj, f, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) > 1:\n"
        "        f.write(b'partial')\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return original(obj, f, *a, **k)\n"
        "torch.save = failing\n")
    result = train(path, PYTHONPATH=str(hook))
    one_line_error(result, str(run / "checkpoint_2.pth.tar"), "No space left on device")
    assert sorted(os.listdir(run)).count("checkpoint_1.pth.tar") == 1
    assert not [name for name in os.listdir(run) if name.startswith(".tmp_")]
    assert torch.load(run / "checkpoint_1.pth.tar", weights_only=True)["iteration"] == 1


# ---------------------------------------------------------------------------
# Signals, locks, resuming
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("signum, workers", [pytest.param(signal.SIGINT, 0, marks=pytest.mark.slow),
                                             (signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_a_signal_saves_the_last_iteration_and_says_how_to_resume(tiny_cfg, tmp_path, signum, workers):
    # With loader workers the signal goes to the whole process group, as Ctrl-C in a terminal sends it.
    path, run = write_config(tiny_cfg, tmp_path, "run", "training.max_iter=100000", "training.save_iter=100000",
                             f"dataset.num_workers={workers}")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--cfg", path],
                               env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    first = run / "checkpoint_1.pth.tar"
    while not first.exists() and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)
    if workers:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    saved = [p for p in os.listdir(run) if p.startswith("checkpoint_") and p != "checkpoint_1.pth.tar"]
    assert len(saved) == 1
    iteration = torch.load(run / saved[0], weights_only=True)["iteration"]
    assert saved[0] == f"checkpoint_{iteration}.pth.tar" and iteration > 1
    last = stderr.strip().splitlines()[-1]
    assert f"stopped after iteration {iteration}" in last and "--resume auto" in last
    assert not (run / LOCK_NAME).exists()


def test_a_second_run_on_the_same_folder_refuses_and_a_stale_lock_is_taken_over(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path, "run", "training.max_iter=1")
    run.mkdir()
    lock = run / LOCK_NAME
    lock.write_text(f"{os.getpid()} {os.uname().nodename}\n")  # this test process: alive
    one_line_error(train(path), "in use by another training run", f"pid {os.getpid()}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no running process now
    lock.write_text(f"{dead.pid} {os.uname().nodename}\n")
    result = train(path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"taking over the lock {lock} of pid {dead.pid}" in result.stderr
    assert not lock.exists()


def test_run_folder_and_prepare_share_one_kernel_lock(tmp_path, caplog):
    from data.prepare import prepare_lock
    from utils.run_folder import RunFolderBusy, acquire_lock, release_lock

    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom utils.run_folder import acquire_lock\n"
                               f"acquire_lock({str(tmp_path)!r})\nprint('held', flush=True)\ntime.sleep(300)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lock = tmp_path / LOCK_NAME
    try:
        assert holder.stdout.readline().strip() == "held"
        lock.write_text("")  # its record lost: the kernel's lock still says who holds the folder
        with pytest.raises(RunFolderBusy, match=f"pid unknown on this host, lock {lock}"):
            acquire_lock(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    lock.write_text(f"{holder.pid} {os.uname().nodename}\n")  # SIGKILLed: the kernel dropped its lock
    assert acquire_lock(str(tmp_path)) == str(lock)
    assert f"taking over the lock {lock} of pid {holder.pid}" in caplog.text
    assert lock.read_text() == f"{os.getpid()} {os.uname().nodename}\n"
    release_lock(str(lock))
    assert not lock.exists()
    with prepare_lock(str(tmp_path)) as path:  # data.prepare's lock: the same mechanism, its own message
        other = subprocess.run([sys.executable, "-c", "from data.prepare import prepare_lock\n"
                                f"with prepare_lock({str(tmp_path)!r}): pass"], cwd=ROOT, capture_output=True,
                               text=True)
        assert f"PrepareBusy: another data.prepare (pid {os.getpid()}) is preparing this data: lock {path}" \
            in other.stderr
    assert not os.path.exists(path)


@pytest.mark.slow
def test_resume_auto_skips_bad_checkpoints_and_corrupt_files_are_one_line_errors(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path)
    assert train(path).returncode == 0  # checkpoints 1, 2, 4
    good = torch.load(run / "checkpoint_4.pth.tar", weights_only=True)
    poisoned = dict(good, model={k: v.clone() for k, v in good["model"].items()})
    name = next(k for k, v in poisoned["model"].items() if "running_var" in k)
    poisoned["model"][name][0] = float("inf")
    torch.save(poisoned, run / "checkpoint_6.pth.tar")
    (run / "checkpoint_8.pth.tar").write_bytes(b"")
    (run / "checkpoint_10.pth.tar").write_bytes(os.urandom(4096))
    (run / "checkpoint_12.pth.tar").write_bytes((run / "checkpoint_4.pth.tar").read_bytes()[:5000])
    assert resumable_checkpoint(str(run)) == str(run / "checkpoint_4.pth.tar")

    result = train(path, "--resume", "auto", "--opts", "training.max_iter=6")
    assert result.returncode == 0, result.stderr[-2000:]
    for skipped, why in ((12, "unreadable"), (10, "unreadable"), (8, "empty file"), (6, f"non-finite values in model.{name}")):
        assert f"skipping {run / f'checkpoint_{skipped}.pth.tar'}: {why}" in result.stderr
    assert "resumed from " + str(run / "checkpoint_4.pth.tar") in result.stderr
    # The rejected files are moved aside (never counted as the newest again), each move named in the log.
    for skipped in (6, 8, 10, 12):
        assert f"moved {run / f'checkpoint_{skipped}.pth.tar'} aside as {run / f'checkpoint_{skipped}.pth.tar'}" \
               ".rejected" in result.stderr
        assert (run / f"checkpoint_{skipped}.pth.tar.rejected").is_file()
    assert torch.load(run / "checkpoint_6.pth.tar", weights_only=True)["iteration"] == 6  # the resumed run's own

    rejected = run / "checkpoint_10.pth.tar.rejected"
    one_line_error(train(path, "--resume", str(rejected)), str(rejected))
    from utils.train_state import resolve_resume
    from utils.errors import CheckpointError

    for bad in ("checkpoint_8.pth.tar.rejected", "checkpoint_12.pth.tar.rejected"):  # empty, truncated: in-process
        with pytest.raises(CheckpointError, match=f"^{run / bad}: cannot be resumed"):
            resolve_resume(str(run / bad), str(run))
    one_line_error(train(path, "--opts", f"models.face.pretrained={rejected}"), str(rejected),
                   "models.face.pretrained")


@pytest.mark.slow
def test_resume_with_another_model_batch_or_schedule_needs_explicit_opts(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path)
    assert train(path).returncode == 0
    changed, _ = write_config(tiny_cfg, tmp_path, "run", "training.lr=0.5", "training.batch_size=2")
    config_before = (run / "config.yaml").read_text()
    last = one_line_error(train(changed, "--resume", "auto"), "training.batch_size", "training.lr", "--opts")
    assert "checkpoint 4, config 2" in last
    assert (run / "config.yaml").read_text() == config_before  # not overwritten by the refused run
    result = train(changed, "--resume", "auto", "--opts", "training.lr=0.5", "training.batch_size=2",
                   "training.max_iter=6")
    assert result.returncode == 0, result.stderr[-2000:]
    kept = [name for name in os.listdir(run) if name.startswith("config.") and name != "config.yaml"]
    assert len(kept) == 1 and (run / kept[0]).read_text() == config_before


# ---------------------------------------------------------------------------
# Multi-process setup, checked by the calls it makes
# ---------------------------------------------------------------------------
def test_each_rank_takes_its_gpu_before_joining_the_group(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda **kw: calls.append(("init", kw["backend"], kw["device_id"], kw["timeout"])))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    ctx = distributed.setup("auto", 7)
    gpu = torch.device("cuda:1")
    assert calls[0] == ("set_device", gpu) and calls[1][:3] == ("init", "nccl", gpu)
    assert calls[1][3].total_seconds() == 7 * 60 and ctx.local_rank == 1
    with pytest.raises(ConfigError, match="'device' is 'cuda:0'"):
        distributed.setup("cuda:0", 7)


def test_torchrun_refuses_to_prepare_data(tmp_path, monkeypatch):
    from data.prepare import prepare_if_needed

    cfg = tiny_config(str(tmp_path / "nothing"))
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, ctx: obj)  # rank 0's answer, alone

    with pytest.raises(Exception, match=r"python -m data.prepare"):
        prepare_if_needed(cfg, distributed.Context(rank=0, world_size=2))


def test_paper_sized_encoders_without_pretrained_weights_are_warned_about(caplog):
    from models import build_model
    from models.layouts import load_backbones
    from config import load_config

    released = load_config(os.path.join(ROOT, "config", "cfg.yaml"))
    model = torch.nn.Module()
    with caplog.at_level("WARNING"):
        load_backbones(model, released.models)
    assert "models.face.pretrained and models.voice.pretrained null" in caplog.text
    caplog.clear()
    synthetic = load_config(os.path.join(ROOT, "config", "synthetic.yaml"))
    with caplog.at_level("WARNING"):
        load_backbones(build_model(synthetic.models), synthetic.models)
    assert "pretrained" not in caplog.text


def test_only_this_ranks_gpu_random_state_is_saved_and_restored(monkeypatch):
    from utils.train_state import rng_state, set_rng_state

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or torch.zeros(3))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device)))
    gpu = torch.device("cuda:3")
    state = rng_state(gpu)
    set_rng_state(state, gpu)
    assert calls == [("get", gpu), ("set", gpu)] and isinstance(state["cuda"], torch.Tensor)
