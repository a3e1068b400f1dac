"""Run folders as a user meets them: several runs and branches in one folder, pruning among damaged files,
failed starts, full and read-only disks, diverged weights, bad seeds, another data folder, a killed torchrun rank."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT, save_config, tiny_config
from test_faults import OPTS, one_line_error, train, write_config
from utils.checkpoint import checkpoint_run, periodic_checkpoints
from utils.files import WriteError
from utils.run_folder import read_run_record
from utils.train_state import DIVERGED_WEIGHT, resumable_checkpoint

TORCHRUN_OPTS = [*OPTS, "training.timeout_minutes=2"]


def names(run):
    return sorted(os.listdir(run))


def iterations(run):
    return [torch.load(p, weights_only=True)["iteration"] for p in periodic_checkpoints(str(run))]


@pytest.fixture
def mounted(tmp_path):
    """Mounts a tmpfs (root only) at a folder; skips the test where mounting is not permitted."""
    points = []

    def mount(name, options):
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", str(point)], check=False)


# ---------------------------------------------------------------------------
# Pruning among damaged files, runs and branches
# ---------------------------------------------------------------------------
def test_pruning_keeps_the_good_checkpoint_and_rejected_files_are_moved_aside(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path, "run", "training.keep_last=2")
    assert train(path).returncode == 0  # checkpoints 2, 4 (1 pruned)
    good = (run / "checkpoint_4.pth.tar").read_bytes()
    (run / "checkpoint_35.pth.tar").write_bytes(good[:3000])  # truncated
    (run / "checkpoint_40.pth.tar").write_bytes(b"")
    (run / "checkpoint_45.pth.tar").write_bytes(os.urandom(2048))
    result = train(path, "--resume", "auto", "--opts", "training.max_iter=6")
    assert result.returncode == 0, result.stderr[-2000:]
    for bad in (35, 40, 45):
        assert f"aside as {run / f'checkpoint_{bad}.pth.tar'}.rejected" in result.stderr
    # The resumed run's 6 is kept with 4, never deleted in favour of the bad files.
    assert [os.path.basename(p) for p in periodic_checkpoints(str(run))] == ["checkpoint_4.pth.tar",
                                                                              "checkpoint_6.pth.tar"]
    again = train(path, "--resume", "auto", "--opts", "training.max_iter=8")
    assert again.returncode == 0 and f"resumed from {run / 'checkpoint_6.pth.tar'}" in again.stderr
    assert iterations(run) == [6, 8]


def test_pruning_and_resume_candidates_follow_the_run_ids(tmp_path):
    from utils.checkpoint import prune_checkpoints
    from utils.run_folder import write_run_record
    from utils.train_state import resume_candidates

    for iteration, run_id in ((2, "a"), (4, "a"), (5, "b"), (6, "a"), (8, "a")):
        torch.save({"run": run_id, "iteration": iteration}, tmp_path / f"checkpoint_{iteration}.pth.tar")
    (tmp_path / "checkpoint_9.pth.tar").write_bytes(b"junk")
    write_run_record(str(tmp_path), "b", {"run": "a", "iteration": 4, "path": str(tmp_path / "checkpoint_4.pth.tar")})
    # Run b's own and unknown files newest first, then the checkpoint b branched from, then run a's.
    assert [os.path.basename(p).split("_")[1].split(".")[0] for p in resume_candidates(str(tmp_path))] == \
        ["9", "5", "4", "8", "6", "2"]
    # Run a keeps its newest usable one (6: 8 is not usable, so it neither counts nor goes); b's and junk stay.
    prune_checkpoints(str(tmp_path), 1, "a", usable=lambda path: not path.endswith("_8.pth.tar"))
    assert names(tmp_path) == ["checkpoint_5.pth.tar", "checkpoint_6.pth.tar", "checkpoint_8.pth.tar",
                               "checkpoint_9.pth.tar", "run.json"]


@pytest.mark.slow
def test_runs_and_branches_keep_their_checkpoints_apart(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path, "run", "training.max_iter=8")
    assert train(path).returncode == 0  # checkpoints 1, 2, 4, 6, 8 of one run
    first = read_run_record(str(run))["run"]
    assert {checkpoint_run(p) for p in periodic_checkpoints(str(run))} == {first}
    config = (run / "config.yaml").read_text()

    # A fresh run in that folder is refused, naming the checkpoints; nothing is written.
    before = names(run)
    last = one_line_error(train(path), "checkpoint_8.pth.tar", "--resume auto", "exp_name")
    assert "checkpoint_1.pth.tar" in last and names(run) == before

    # A start that fails loading (another face width) rewrites no config and keeps no config copy.
    one_line_error(train(path, "--resume", "auto", "--opts", "models.face.widths=[8,8,16,32]"), "cannot be resumed")
    assert names(run) == before and (run / "config.yaml").read_text() == config

    # A branch from checkpoint_2 with another lr, interrupted: Ctrl-C saves its own iteration.
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--cfg", path, "--resume",
                                str(run / "checkpoint_2.pth.tar"), "--opts", "training.lr=0.005",
                                "training.max_iter=100000", "training.save_iter=100000", "training.keep_last=1"],
                               env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    log = run / "train.log"
    while "resumed from" not in log.read_text() and process.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    record = read_run_record(str(run))
    branch = record["run"]
    assert branch != first and record["parent"]["iteration"] == 2
    interrupted = int(stderr.strip().splitlines()[-1].split("stopped after iteration ")[1].split(",")[0])
    saved = run / f"checkpoint_{interrupted}.pth.tar"
    assert checkpoint_run(str(saved)) == branch
    if interrupted in (4, 6, 8):  # the first run's file of that name is kept apart, not overwritten
        assert checkpoint_run(str(run / f"checkpoint_{interrupted}.{first}.pth.tar")) == first
    # The printed command continues the branch, not the first run's newer checkpoint_8.
    assert "--resume auto" in stderr.strip().splitlines()[-1]
    resumed = train(path, "--resume", "auto", "--opts", "training.lr=0.005", f"training.max_iter={interrupted + 1}",
                    "training.keep_last=1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {saved}" in resumed.stderr
    # Pruning (keep_last=1) removed the branch's older file only; the first run's 8 is untouched.
    assert checkpoint_run(str(run / f"checkpoint_{interrupted + 1}.pth.tar")) == branch
    assert not saved.exists() and checkpoint_run(str(run / "checkpoint_8.pth.tar")) == first
    assert read_run_record(str(run))["run"] == branch


def test_resuming_onto_another_data_folder_or_split_is_refused_unless_asked(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path, "run", "training.max_iter=2")
    assert train(path).returncode == 0
    moved, _ = write_config(tiny_cfg, tmp_path, "run", "training.max_iter=2", f"dataset.lmdb_dir={tmp_path}/elsewhere")
    one_line_error(train(moved, "--resume", "auto"), "dataset.lmdb_dir", str(tmp_path / "elsewhere"), "--opts")
    resplit, _ = write_config(tiny_cfg, tmp_path, "run", "training.max_iter=2",
                              "dataset.split_ranges.val=[id00001, id00005]")
    one_line_error(train(resplit, "--resume", "auto"), "dataset.split_ranges", "--opts")


# ---------------------------------------------------------------------------
# Disks
# ---------------------------------------------------------------------------
def test_enospc_chained_in_torch_save_is_one_line_naming_the_path(tmp_path, monkeypatch):
    from utils import checkpoint

    def full_disk(obj, f):
        try:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from e

    path = tmp_path / "checkpoint_2.pth.tar"
    path.write_bytes(b"earlier")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(WriteError, match=f"^could not write {path}: No space left on device$"):
        checkpoint.save_checkpoint({"iteration": 2}, str(path))
    assert path.read_bytes() == b"earlier" and os.listdir(tmp_path) == [path.name]


def test_a_real_full_disk_during_a_checkpoint_save(tiny_cfg, tmp_path, mounted):
    size = os.path.getsize(_one_checkpoint(tiny_cfg, tmp_path))
    disk = mounted("disk", f"size={int(size * 1.6) // 4096 * 4096 + 64 * 1024}")  # room for one, not two
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *OPTS, f"output_dir={disk}", "exp_name=full")
    path = str(tmp_path / "full.yaml")
    save_config(cfg, path)
    result = train(path)
    one_line_error(result, str(disk / "full" / "checkpoint_"), "No space left on device")
    assert torch.load(disk / "full" / "checkpoint_1.pth.tar", weights_only=True)["iteration"] == 1
    log = (disk / "full" / "train.log").read_text()  # what ran and why it stopped
    assert "iterations 1 to 4" in log and "No space left on device" in log.strip().splitlines()[-1]
    assert not [n for n in os.listdir(disk / "full") if n.startswith(".tmp_")]


def _one_checkpoint(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path, "sized", "training.max_iter=1")
    assert train(path).returncode == 0
    return run / "checkpoint_1.pth.tar"


def test_a_read_only_run_folder_fails_at_start(tiny_cfg, tmp_path, mounted):
    disk = mounted("readonly", "ro,size=1m")
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *OPTS, f"output_dir={disk}", "exp_name=ro")
    path = str(tmp_path / "ro.yaml")
    save_config(cfg, path)
    started = time.time()
    one_line_error(train(path), f"cannot write in the run folder {disk / 'ro'}", "Read-only file system")
    assert time.time() - started < 60


# ---------------------------------------------------------------------------
# Bad files and values
# ---------------------------------------------------------------------------
class Code:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_malicious_pickle_given_to_resume_is_one_line_without_torchs_hint(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path)
    evil = tmp_path / "evil.pth.tar"
    torch.save({"format": "aasm", "model": Code()}, evil)
    result = train(path, "--resume", str(evil))
    one_line_error(result, str(evil), "refused: the file holds code")
    assert "weights_only" not in result.stderr and "pwned" not in result.stdout


@pytest.mark.parametrize("opt", ["training.lr=.inf", "training.momentum=.inf", "training.temperature=.inf"])
def test_non_finite_training_numbers_are_config_errors(tmp_path, opt):
    cfg = os.path.join(ROOT, "config", "synthetic.yaml")
    key = opt.split("=")[0]
    one_line_error(train(cfg, "--opts", opt, f"output_dir={tmp_path}"), f"'{key}'", "finite")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("seeds, message", [(["3", "3"], "3 given twice"), (["-1"], "-1 is negative")])
def test_repeated_or_negative_seeds_are_refused_before_training(tmp_path, seeds, message):
    cfg = os.path.join(ROOT, "config", "synthetic.yaml")
    one_line_error(train(cfg, "--seeds", *seeds, "--opts", f"output_dir={tmp_path}"), "--seeds", message)
    assert not os.listdir(tmp_path)


def test_diverged_weights_are_never_saved_nor_resumed(tiny_cfg, tmp_path):
    path, run = write_config(tiny_cfg, tmp_path)
    hook = tmp_path / "hook"
    hook.mkdir()
    # The second SGD step leaves one weight at 4e29: finite, but a run that diverged.
    (hook / "sitecustomize.py").write_text(
        "import torch\n"
        "step, calls = torch.optim.SGD.step, []\n"
        "def exploding(self, *a, **k):\n"
        "    calls.append(1)\n"
        "    result = step(self, *a, **k)\n"
        "    if len(calls) == 2:\n"
        "        self.param_groups[0]['params'][0].data.view(-1)[0] = 4e29\n"
        "    return result\n"
        "torch.optim.SGD.step = exploding\n")
    result = train(path, PYTHONPATH=str(hook))
    one_line_error(result, "after iteration 2", "diverged", "4e+29")
    assert names(run).count("checkpoint_1.pth.tar") == 1 and "checkpoint_best.pth.tar" not in names(run)
    # A diverged file planted as the newest is skipped by --resume auto in favour of the healthy one.
    good = torch.load(run / "checkpoint_1.pth.tar", weights_only=True)
    first = next(iter(good["model"]))
    good["model"][first] = good["model"][first].clone().fill_(4e29)
    good["iteration"] = 2
    torch.save(good, run / "checkpoint_2.pth.tar")
    assert resumable_checkpoint(str(run)) == str(run / "checkpoint_1.pth.tar")
    assert DIVERGED_WEIGHT < 4e29


# ---------------------------------------------------------------------------
# Several processes
# ---------------------------------------------------------------------------
def torchrun(cfg_path, *extra, **env):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "train.py"), "--cfg", cfg_path, *extra]
    return subprocess.Popen(command, env=dict(os.environ, OMP_NUM_THREADS="1", **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_a_rank_then_resume(tiny_cfg, tmp_path, rank: int, when, *extra: str) -> str:
    """Start torchrun, SIGKILL `rank` as soon as when(run folder) holds; the other rank must stop within
    training.timeout_minutes naming it, the last checkpoint load and --resume auto continue. The stderr."""
    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *TORCHRUN_OPTS, f"output_dir={tmp_path}",
                      "exp_name=ddp", "training.max_iter=100000", "training.keep_last=2", *extra)
    path = str(tmp_path / "ddp.yaml")
    save_config(cfg, path)
    run = tmp_path / "ddp"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK'):\n"
        f"    open(os.path.join({str(hook)!r}, 'rank' + os.environ['RANK']), 'w').write(str(os.getpid()))\n")
    process = torchrun(path, PYTHONPATH=str(hook))
    while not when(run) and process.poll() is None:
        time.sleep(0.01)
    os.kill(int((hook / f"rank{rank}").read_text()), signal.SIGKILL)
    killed = time.time()
    _, stderr = process.communicate(timeout=300)
    assert time.time() - killed < 2 * 60  # training.timeout_minutes
    assert process.returncode != 0
    other = 1 - rank
    stopping = [line for line in stderr.splitlines() if f"rank {other} stopping" in line]
    assert stopping and f"rank {rank} (pid" in stopping[-1] and "ended without a message" in stopping[-1], \
        stderr[-3000:]
    assert "Connection reset" not in stderr, stderr[-3000:]
    last = resumable_checkpoint(str(run))
    iteration = torch.load(last, weights_only=True)["iteration"]
    assert iteration >= 4
    resumed = torchrun(path, "--resume", "auto", "--opts", f"training.max_iter={iteration + 1}")
    _, resumed_stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_stderr[-3000:]
    assert f"resumed from {last}" in (run / "train.log").read_text()
    assert torch.load(run / f"checkpoint_{iteration + 1}.pth.tar", weights_only=True)["iteration"] == iteration + 1
    return stderr


def test_a_killed_torchrun_rank_is_named_and_the_run_resumes(tiny_cfg, tmp_path):
    kill_a_rank_then_resume(tiny_cfg, tmp_path, 1, lambda run: (run / "checkpoint_4.pth.tar").exists())


def validating(run) -> bool:
    """Rank 0 logged iteration 6, which validates next (training.val_start), and not yet its result."""
    log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
    return "iteration 6/" in log and "iteration 6: validation" not in log


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_killed_during_validation_is_named_and_the_run_resumes(tiny_cfg, tmp_path, rank):
    # Validation runs on rank 0 only: rank 1 waits for its result meanwhile.
    stderr = kill_a_rank_then_resume(tiny_cfg, tmp_path, rank, validating, "training.val_start=6",
                                     "training.val_iter=100")
    assert "iteration 6: validation" not in stderr  # killed before the validation ended
