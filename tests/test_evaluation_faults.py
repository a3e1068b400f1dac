"""test.py under hostile input and faults: malicious features files, a full disk, outputs naming inputs,
two evaluations at once, SIGTERM while embedding, --compare of runs that cannot be compared, bad embeddings."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers import DATA, ROOT, load_test_script, save_config, tiny_config
from evaluation.features import FeaturesError, load_features_file, read_features, save_features_file
from utils.errors import UserError
from utils.files import WriteError

script = load_test_script()
CASE = os.path.join(DATA, "metric_case")
REFERENCE = os.path.join(CASE, "embeddings.pt")
CONFIG = os.path.join(ROOT, "config", "synthetic.yaml")
SMALL_MODEL = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
               "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]", "dataset.image_size=32",
               "device=cpu", "testing.bootstrap=20"]


class MakesAFolder:
    """Unpickling it would call os.mkdir: what a malicious features file does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def features_argv(tmp_path, features=REFERENCE, *opts):
    return ["--cfg", CONFIG, "--features", str(features), "--opts", f"dataset.list_dir={CASE}",
            f"output_dir={tmp_path}", "testing.bootstrap=20", *opts]


def model_run(tiny_cfg, tmp_path, *opts):
    """A run folder `run` with a small freshly initialised checkpoint_best, and the argv of test.py on it."""
    from models import build_model
    from utils.checkpoint import save_checkpoint

    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *SMALL_MODEL, f"output_dir={tmp_path}",
                      "exp_name=run", *opts)
    os.makedirs(tmp_path / "run", exist_ok=True)
    save_config(cfg, str(tmp_path / "run" / "config.yaml"))
    torch.manual_seed(0)
    save_checkpoint({"format": "aasm", "iteration": 0, "model": build_model(cfg.models).state_dict(),
                     "equilibrium": None, "optimizer": {}, "best_val": 0.0, "rng": {}, "config": {}},
                    str(tmp_path / "run" / "checkpoint_best.pth.tar"))
    save_config(cfg, str(tmp_path / "cfg.yaml"))
    return cfg, ["--cfg", str(tmp_path / "cfg.yaml")]


def one_line(process: subprocess.CompletedProcess) -> str:
    assert process.returncode == 1, process.stderr[-2000:]
    assert "Traceback" not in process.stderr, process.stderr[-2000:]
    return process.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- malicious and bad features files

def test_a_malicious_features_file_is_refused_in_one_line(tmp_path):
    evil = tmp_path / "features.pt"
    torch.save({"name2feat": MakesAFolder(str(tmp_path / "made")), "name2id": {}, "name2gender": {}}, evil)
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), *features_argv(tmp_path, evil)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = one_line(process)
    assert f"{evil}: refused: the file holds code (a pickled reference to posix.mkdir)" in line
    assert "weights_only" not in process.stderr and not (tmp_path / "made").exists()


def test_truncated_features_file_is_one_line(tmp_path):
    (tmp_path / "cut.pt").write_bytes(open(REFERENCE, "rb").read()[:1000])
    with pytest.raises(FeaturesError, match=rf"^{tmp_path}/cut.pt: truncated or corrupt, not a features file"):
        script.main(features_argv(tmp_path, tmp_path / "cut.pt"))


def test_a_planted_or_torn_cache_is_never_trusted(tiny_cfg, tmp_path, capsys):
    cache = tmp_path / "run" / "features_test.pt"  # the released format: a config naming a .pt cache
    _, argv = model_run(tiny_cfg, tmp_path, f"testing.extracted_features_path={cache}")
    torch.save({"name2feat": MakesAFolder(str(tmp_path / "made")), "name2id": {}, "name2gender": {}}, cache)
    results = script.main(argv)
    out = capsys.readouterr().out
    assert f"not reusing {cache}: refused: the file holds code" in out and "extracting again" in out
    assert not (tmp_path / "made").exists() and len(load_features_file(str(cache))["name2feat"]) > 0
    cache.write_bytes(cache.read_bytes()[:-100])  # torn
    again = script.main(argv)
    assert f"not reusing {cache}: truncated or corrupt" in capsys.readouterr().out
    assert [r.value for r in again] == [r.value for r in results]


def test_a_pickle_planted_as_the_compact_cache_is_never_unpickled(tiny_cfg, tmp_path, capsys):
    _, argv = model_run(tiny_cfg, tmp_path)
    cache = tmp_path / "run" / "features_test.npz"  # the default cache
    torch.save({"name2feat": MakesAFolder(str(tmp_path / "made")), "name2id": {}, "name2gender": {}}, cache)
    script.main(argv)
    out = capsys.readouterr().out
    assert f"not reusing {cache}: " in out and "extracting again" in out
    assert not (tmp_path / "made").exists() and read_features(str(cache)).embeddings.shape[0] > 0


def reference_with(tmp_path, change) -> str:
    data = torch.load(REFERENCE, weights_only=True)
    change(data["name2feat"])
    path = tmp_path / "changed.pt"
    torch.save(data, path)
    return str(path)


def test_a_non_finite_embedding_is_named(tmp_path):
    key = "id10000/vid0/00001.wav"
    path = reference_with(tmp_path, lambda feats: feats[key].__setitem__(3, float("nan")))
    with pytest.raises(FeaturesError, match=rf"^{path}: the embedding of '{key}' is not finite \(NaN or inf; 1 of "):
        script.main(features_argv(tmp_path, path))


def test_all_zero_embeddings_are_warned_about(tmp_path, capsys):
    path = reference_with(tmp_path, lambda feats: [v.zero_() for v in feats.values()])
    script.main(features_argv(tmp_path, path))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert f"{path}: all" in warnings[0] and "the same vector (all zero): every score ties" in warnings[0]


# ---------------------------------------------------------------- a full disk (a real one: tmpfs)

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/disk (root only); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave: int) -> None:
    """Fill the disk up to `leave` bytes (whole pages)."""
    with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_while_writing_results_is_one_line_naming_the_file(tmp_path, small_disk):
    script.main(features_argv(tmp_path / "plenty"))  # the sizes the results need
    sizes = {name: os.path.getsize(tmp_path / "plenty" / "synthetic" / name) for name in
             ("results_test_roc.png", "results_test_scores.png", "results_test.txt")}
    page = os.statvfs(small_disk).f_frsize
    pages = {name: -(-size // page) * page for name, size in sizes.items()}
    run = small_disk / "synthetic"
    run.mkdir()
    # The figures are drawn while the retrievals run, so they are written first; then the values and the JSON.
    for failing, leave in (("results_test_roc.png", 0), ("results_test.json", sum(pages.values()))):
        for name in os.listdir(run):
            os.unlink(run / name)
        fill(small_disk, leave)
        with pytest.raises(WriteError, match=rf"^could not write {run / failing}: No space left on device$"):
            script.main(features_argv(small_disk))
        assert not [name for name in os.listdir(run) if name.startswith(".tmp_")]
        os.unlink(small_disk / "filler")
    # the last pass wrote what comes before the JSON whole
    plenty = tmp_path / "plenty" / "synthetic"
    assert (run / "results_test.txt").read_text() == (plenty / "results_test.txt").read_text()
    assert (run / "results_test_scores.png").stat().st_size == sizes["results_test_scores.png"]


def test_a_full_disk_while_caching_features_is_one_line(small_disk):
    fill(small_disk, 0)
    path = small_disk / "features_test.pt"
    with pytest.raises(WriteError, match=rf"^could not write {path}: No space left on device$"):
        save_features_file(str(path), ["a/b/1.wav"], torch.ones(1, 64 * 1024), [0], ["f"], {})
    assert [name for name in os.listdir(small_disk)] == ["filler"]


# ---------------------------------------------------------------- outputs

def test_an_output_naming_an_input_is_refused_before_any_work(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"my photo")
    (tmp_path / "v.wav").write_bytes(b"RIFF")
    argv = ["--cfg", CONFIG, "--opts", f"output_dir={tmp_path}", f"testing.checkpoint={tmp_path}/none.pth.tar",
            "--voice", str(tmp_path / "v.wav"), "--faces", str(photo), str(tmp_path / "b.jpg")]
    with pytest.raises(UserError, match=rf"^--output {photo}: is an input of this run"):
        script.main(argv + ["--output", str(photo)])
    with pytest.raises(UserError, match=rf"^--plot {photo}: is an input of this run"):
        script.main(argv + ["--plot", str(photo)])
    assert photo.read_bytes() == b"my photo"
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=rf"^--plot {tmp_path}/file/x/match.png: cannot be written: {tmp_path}/file "):
        script.main(argv + ["--plot", str(tmp_path / "file" / "x" / "match.png")])  # not "checkpoint not found"
    lists = tmp_path / "lists"
    shutil.copytree(CASE, lists)
    listed = lists / "match_v2f_2_test.txt"
    before = listed.read_bytes()
    with pytest.raises(UserError, match=rf"^testing.result_path {listed}: is an input of this run"):
        script.main(features_argv(tmp_path, REFERENCE, f"dataset.list_dir={lists}", f"testing.result_path={listed}"))
    with pytest.raises(UserError, match=rf"^--output {listed}: is an input of this run"):
        script.main(["--cfg", CONFIG, "--opts", f"dataset.list_dir={lists}", "--compare", str(tmp_path),
                     "--output", str(listed)])
    assert listed.read_bytes() == before


def test_plots_go_into_a_folder_that_does_not_exist_yet(tmp_path):
    from evaluation import plots

    scores, labels = np.linspace(-1, 1, 50), np.arange(50) % 2 == 0
    path = plots.roc_curves({"verify_v2f_test": (scores, labels)}, str(tmp_path / "new" / "roc.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- concurrency and signals

def test_two_evaluations_at_once_leave_whole_results(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "test.py"), *features_argv(tmp_path)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    run = tmp_path / "synthetic"
    assert sorted(os.listdir(run)) == ["results_test.json", "results_test.txt", "results_test_roc.png",
                                       "results_test_scores.png"]
    summary = json.loads((run / "results_test.json").read_text())
    assert len((run / "results_test.txt").read_text().splitlines()) == len(summary["lists"]) >= 10


SLOW_EMBEDDING = """
import os, time, tqdm
original = tqdm.tqdm.__iter__
def slowly(self):
    for item in original(self):
        if str(self.desc).startswith("embedding"):
            open(os.environ["EMBEDDING_STARTED"], "w").close()
            time.sleep(0.5)
        yield item
tqdm.tqdm.__iter__ = slowly
"""


def test_sigterm_while_embedding_leaves_no_cache_a_later_run_trusts(tiny_cfg, tmp_path, capsys):
    _, argv = model_run(tiny_cfg, tmp_path)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_EMBEDDING)
    started = tmp_path / "started"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "test.py"), *argv], cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(hook), EMBEDDING_STARTED=str(started)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the embedding never started"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == -signal.SIGTERM
    assert not (tmp_path / "run" / "features_test.pt").exists()
    script.main(argv)
    out = capsys.readouterr().out
    assert "reusing" not in out and "saved to" in out


# ---------------------------------------------------------------- --compare

def test_compare_checks_every_run_and_its_split_before_evaluating_any(tiny_cfg, tmp_path):
    _, argv = model_run(tiny_cfg, tmp_path)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=rf"^--compare {tmp_path}/rnu: neither a run folder"):
        script.main(argv + ["--compare", str(run), str(tmp_path / "rnu")])
    other = tmp_path / "other"
    model_run(tiny_cfg, other, "dataset.split_ranges.test=[id00007, id00010]")
    with pytest.raises(UserError, match=rf"^--compare {other}/run: trained on another split than --cfg "
                                        rf"{tmp_path}/cfg.yaml: dataset.split_ranges is .*id00010"):
        script.main(argv + ["--compare", str(run), str(other / "run")])
    assert sorted(os.listdir(run)) == ["checkpoint_best.pth.tar", "config.yaml"]  # nothing evaluated
