"""A checkpoint knows what it is: its model settings and training data, and test.py / the API build from them."""
import glob
import hashlib
import logging
import os
import subprocess
import sys

import pytest
import torch

from data.provenance import SYNTHETIC_CORPUS, training_data
from helpers import ROOT, SYNTHETIC, load_test_script, tiny_config, tiny_opts
from evaluation.matcher import VoiceFaceMatcher
from losses import ArchetypeAgnosticLoss
from models import build_model
from models.settings import explicit_settings, reconciled
from utils.errors import CheckpointError
from train import provenance
from utils.train_state import TrainState

script = load_test_script()
NARROW = "models.face.widths=[8, 16, 32, 64]"


@pytest.fixture(scope="module")
def narrow(tiny_cfg, tiny_root, tmp_path_factory):
    """A checkpoint of a narrower face encoder than the config's, written as train.py writes every checkpoint."""
    cfg = tiny_config(tiny_root, NARROW)
    torch.manual_seed(0)
    model = build_model(cfg.models, cfg.dataset.sample_rate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model, ArchetypeAgnosticLoss(5), optimizer, torch.amp.GradScaler("cuda", enabled=False),
                       provenance=provenance(cfg))
    path = str(tmp_path_factory.mktemp("narrow") / "checkpoint_best.pth.tar")
    state.save(path, rng=[], cfg=cfg)
    d = tiny_cfg.dataset
    voice = sorted(glob.glob(os.path.join(d.audio_data_dir, "*", "*", "*.wav")))[0]
    faces = sorted(glob.glob(os.path.join(d.image_data_dir, "*", "*.jpg")))[:2]
    return {"path": path, "root": tiny_root, "voice": voice, "faces": faces}


def test_every_checkpoint_records_its_model_settings_and_training_data(narrow, tiny_root, tmp_path):
    saved = torch.load(narrow["path"], weights_only=True)
    assert saved["model_settings"]["models"]["face"]["widths"] == [8, 16, 32, 64]
    assert saved["model_settings"]["dataset"] == {"sample_rate": 16000, "image_size": 112}
    assert saved["training_data"] == {"corpus": SYNTHETIC_CORPUS, "identities": 16, "seed": 0}

    meta = tmp_path / "vox1_meta.csv"
    meta.write_text("VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n")
    real = tiny_config(tiny_root, f"dataset.meta_file={meta}", "dataset.synthetic.root=null")
    assert training_data(real) == {"corpus": "VoxCeleb1", "meta_file": "vox1_meta.csv",
                                   "meta_file_sha256": hashlib.sha256(meta.read_bytes()).hexdigest()}


def test_api_builds_the_checkpoints_model_whatever_the_configs_width(narrow, caplog):
    opts = tiny_opts(narrow["root"]) + ["device=cpu"]
    with caplog.at_level(logging.WARNING):
        matcher = VoiceFaceMatcher.load(SYNTHETIC, narrow["path"], opts=opts)
    assert matcher.cfg.models.face.widths == [8, 16, 32, 64]
    assert "models.face.widths (checkpoint [8, 16, 32, 64], config [16, 32, 64, 128])" in caplog.text
    assert matcher.embed_faces(narrow["faces"]).shape == (2, 128)


def test_explicit_config_settings_refuse_other_weights_and_warn_for_inputs(narrow, caplog):
    opts = tiny_opts(narrow["root"]) + ["device=cpu"]
    with pytest.raises(CheckpointError, match=r"models\.face\.widths \(checkpoint \[8, 16, 32, 64\], config "
                                              r"\[16, 32, 64, 128\]\).*--model-from-config"):
        VoiceFaceMatcher.load(SYNTHETIC, narrow["path"], opts=opts, model_from_config=True)
    with pytest.raises(CheckpointError, match=r"models\.face\.widths"):
        VoiceFaceMatcher.load(SYNTHETIC, narrow["path"], opts=opts + ["models.face.widths=[16, 32, 64, 128]"])
    with caplog.at_level(logging.WARNING):
        matcher = VoiceFaceMatcher.load(SYNTHETIC, narrow["path"], opts=opts + ["dataset.image_size=96"])
    assert matcher.cfg.dataset.image_size == 96 and matcher.cfg.models.face.widths == [8, 16, 32, 64]
    assert "using the config's dataset.image_size (checkpoint 112, config 96)" in caplog.text
    assert explicit_settings(["models.face=x", "training.lr=1"]) == [
        "models.face.units", "models.face.widths", "models.face.se", "models.face.head_hidden"]


@pytest.mark.slow
def test_test_py_on_own_files_with_another_width_and_the_explicit_flag(narrow):
    command = [sys.executable, os.path.join(ROOT, "test.py"), "--cfg", SYNTHETIC, "--opts",
               *tiny_opts(narrow["root"]), f"testing.checkpoint={narrow['path']}", "device=cpu",
               "--voice", narrow["voice"], "--faces", *narrow["faces"]]
    process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "building the encoders from the checkpoint's settings" in process.stderr and "match:" in process.stdout

    process = subprocess.run(command + ["--model-from-config"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    (line,) = process.stderr.strip().splitlines()
    assert "models.face.widths (checkpoint [8, 16, 32, 64], config [16, 32, 64, 128])" in line


def test_checkpoints_without_the_record_load_as_before(narrow, tmp_path, tiny_cfg):
    saved = torch.load(narrow["path"], weights_only=True)
    # Ours from before model_settings: the stored config says what the model is.
    older = {k: v for k, v in saved.items() if k not in ("model_settings", "training_data")}
    torch.save(older, tmp_path / "older.pth.tar")
    matcher = VoiceFaceMatcher.load(SYNTHETIC, str(tmp_path / "older.pth.tar"), opts=tiny_opts(narrow["root"]))
    assert matcher.cfg.models.face.widths == [8, 16, 32, 64]
    # No record at all (as the authors' and other projects' layouts): the config's settings, as before.
    torch.save({"format": "aasm", "model": saved["model"], "config": {}}, tmp_path / "bare.pth.tar")
    narrow_cfg = tiny_config(narrow["root"], NARROW)
    matcher = VoiceFaceMatcher.load(narrow_cfg, str(tmp_path / "bare.pth.tar"))
    assert matcher.cfg is narrow_cfg
    assert reconciled(tiny_cfg, None, "x") is tiny_cfg


def test_another_architecture_without_a_record_is_one_line(narrow, tmp_path):
    saved = torch.load(narrow["path"], weights_only=True)
    bare = tmp_path / "bare.pth.tar"
    torch.save({"format": "aasm", "model": saved["model"]}, bare)
    with pytest.raises(CheckpointError, match=r"bare\.pth\.tar.*shape.*records no model settings"):
        VoiceFaceMatcher.load(SYNTHETIC, str(bare), opts=tiny_opts(narrow["root"]))
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", SYNTHETIC, "--opts",
                              *tiny_opts(narrow["root"]), f"testing.checkpoint={bare}", "device=cpu",
                              f"output_dir={tmp_path}", "--voice", narrow["voice"], "--faces", *narrow["faces"]],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1 and "bare.pth.tar" in process.stderr
