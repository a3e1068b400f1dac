"""Real-world data layouts, entry points run as users run them: `data.prepare --check`, `--splits test`,
then test.py on that store with lists in either key form; provenance of lists, stores and results."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from data.check import _compare_with_paper
from data.layout import swap_names
from data.lmdb_store import LmdbStore
from data.splits import read_meta, read_split
from helpers import ROOT, TINY_RANGES, tiny_config
from models import build_model
from test_test_script import script

CONFIG = os.path.join(ROOT, "config", "synthetic.yaml")
# Test-split identities renamed to VGGFace names with dots, hyphens, apostrophes and trailing dots.
NAMES = {"id00007": "A.J._Buckley", "id00008": "Harry_Connick_Jr.", "id00009": "Hye-kyo_Song",
         "id00010": "Shaquille_O'Neal", "id00011": "Jean-Marc_Barr"}
BY_NAME = ("id00007", "id00009")  # audio folders named by the VGGFace name (the first VoxCeleb1 release)
FACELESS = ("id00012", "Samuel_L._Jackson")  # like the real `none` identities: no face folder


def opts(root):
    return [f"dataset.audio_data_dir={root}/wav", f"dataset.image_data_dir={root}/VGG_ALL_FRONTAL",
            f"dataset.meta_file={root}/vox1_meta.csv", f"dataset.list_dir={root}/lists",
            f"dataset.lmdb_dir={root}/lmdb", f"dataset.synthetic.root={root}", "dataset.num_workers=0",
            "dataset.image_size=112",
            "dataset.store_image_size=112", *[o.replace(" ", "") for o in TINY_RANGES]]


def prepare_command(root, *args):
    process = subprocess.run([sys.executable, "-m", "data.prepare", "--cfg", CONFIG, *args, "--opts", *opts(root)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    return process


def files_under(root):
    return sorted(os.path.join(here, f) for here, _, files in os.walk(root) for f in files)


@pytest.fixture(scope="module")
def real_root(tmp_path_factory, tiny_root):
    """The tiny corpus in the forms real downloads have: names with dots etc., audio folders of two
    identities by name (one a level deeper), a faceless identity, a meta file with a BOM and trailing
    spaces, and the authors' test split CSV with CRLF line endings."""
    root = str(tmp_path_factory.mktemp("real_layout"))
    for folder in ("wav", "VGG_ALL_FRONTAL"):
        shutil.copytree(os.path.join(tiny_root, folder), os.path.join(root, folder))
    meta = read_meta(os.path.join(tiny_root, "vox1_meta.csv"))
    names = dict(NAMES, **{FACELESS[0]: FACELESS[1]})
    rows = []
    for identity in meta:
        name = names.get(identity.vox_id, identity.vgg_id)
        faces = os.path.join(root, "VGG_ALL_FRONTAL", identity.vgg_id)
        if identity.vox_id == FACELESS[0]:
            shutil.rmtree(faces)
        elif os.path.isdir(faces):
            os.rename(faces, os.path.join(root, "VGG_ALL_FRONTAL", name))
        if identity.vox_id in BY_NAME:
            deeper = "2017" if identity.vox_id == BY_NAME[0] else ""
            os.makedirs(os.path.join(root, "wav", name), exist_ok=True)
            os.rename(os.path.join(root, "wav", identity.vox_id), os.path.join(root, "wav", name, deeper))
        rows.append([identity.vox_id, name, identity.gender, identity.nationality, identity.set])
    with open(os.path.join(root, "vox1_meta.csv"), "w", encoding="utf-8-sig") as f:
        f.write("VoxCeleb1 ID \tVGGFace1 ID \tGender \tNationality \tSet \n")
        f.writelines("\t".join(cell + " " for cell in row) + "\n" for row in rows)
    os.makedirs(os.path.join(root, "lists"))
    test_rows = [r for r in rows if r[0] in NAMES]
    with open(os.path.join(root, "lists", "vox1_test.csv"), "w", newline="") as f:
        f.write("VoxCeleb1_ID,VGGFace1_ID,Gender,Nationality,Set\r\n")
        f.writelines(",".join(row) + "\r\n" for row in test_rows)
    return root


def test_meta_and_split_csv_forms_are_read(real_root):
    meta = {i.vox_id: i for i in read_meta(os.path.join(real_root, "vox1_meta.csv"))}
    assert meta["id00008"].vgg_id == "Harry_Connick_Jr." and meta["id00001"].vox_id == "id00001"
    assert meta["id00010"].set == "dev"  # no trailing space, no BOM in the first column
    test = read_split(os.path.join(real_root, "lists"), "test")
    assert [i.vgg_id for i in test] == list(NAMES.values()) and test[-1].set == "dev"


def test_check_reports_without_writing(real_root):
    before = files_under(real_root)
    process = prepare_command(real_root, "--check")
    assert process.returncode == 0, process.stdout + process.stderr
    out = process.stdout
    assert files_under(real_root) == before
    assert "[test] 5 usable identities, 0 marked none" in out
    assert "[train] 4 usable identities, 1 marked none" in out  # the faceless identity
    test = out.split("[test]")[1]
    assert "audio folders: 2 by VGGFace name, 3 by VoxCeleb1 ID" in test
    assert "sample rates: 16000 Hz" in test and "channels: 1:" in test
    assert "list match_v2f_2_test: absent" in test and "nothing a run needs is missing" in test


def test_check_finds_bad_files_and_missing_list_files(real_root, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(real_root, root)
    clip = sorted(f for f in files_under(os.path.join(root, "wav", "id00008")) if f.endswith(".wav"))
    soundfile.write(clip[0], np.zeros((0, 1), np.int16), 16000)  # zero-length
    soundfile.write(clip[1], np.zeros((800, 2), np.int16), 8000)  # stereo, 8 kHz
    face = files_under(os.path.join(root, "VGG_ALL_FRONTAL", "Hye-kyo_Song"))[0]
    with open(os.path.join(root, "lists", "match_v2f_2_test.txt"), "w") as f:
        f.write(f"id00007/nowhere/00001.wav Hye-kyo_Song/{os.path.basename(face)} A.J._Buckley/x.jpg\n" * 3)
    process = prepare_command(root, "--check", "--splits", "test")
    out = process.stdout
    assert process.returncode == 1, out + process.stderr
    assert f"{clip[0]}: zero-length clip" in out
    assert "8000 Hz: 1" in out and "2: 1" in out
    assert "list match_v2f_2_test: 3 lines, 2 files it names are not in the data" in out
    assert "[train]" not in out
    assert "match_v2f_2_test.txt: 2 files it names are not in the data" in out.split("missing what a run needs")[1]


def test_compare_with_the_paper(capsys):
    _compare_with_paper({"train": (924, 1, 1), "val": (110, 1, 1), "test": (189, 21850, 20070)},
                        {"match_v2f_2_val": 14182})
    out = capsys.readouterr().out
    assert "train identities: 924 (as in the paper)" in out
    assert "val identities: 110, the paper has 112 (-2)" in out
    assert "test clips: 21850 (as in the paper)" in out and "test images: 20070, the paper has 20076 (-6)" in out
    assert "match_v2f_2_val queries: 14182 (as in the paper)" in out


@pytest.fixture(scope="module")
def test_only(real_root, tmp_path_factory):
    """`data.prepare --splits test` on the real layout, then a checkpoint to evaluate."""
    process = prepare_command(real_root, "--splits", "test")
    assert process.returncode == 0, process.stdout + process.stderr
    checkpoint = str(tmp_path_factory.mktemp("model") / "model.pth.tar")
    cfg = tiny_config(real_root)
    torch.manual_seed(0)
    torch.save({"format": "aasm", "model": build_model(cfg.models).state_dict()}, checkpoint)
    return real_root, checkpoint


def test_prepare_test_split_only(test_only):
    root, _ = test_only
    lists = os.path.join(root, "lists")
    assert not any(os.path.exists(os.path.join(lists, f"vox1_{s}.csv")) for s in ("train", "val"))
    assert not [n for n in os.listdir(lists) if n.endswith("_val.txt")]
    voices, faces = LmdbStore(os.path.join(root, "lmdb", "audio.lmdb")), LmdbStore(os.path.join(root, "lmdb",
                                                                                                 "face.lmdb"))
    # Clips keyed by VoxCeleb1 ID, faces by VGGFace name, whatever the folders are called on disk.
    assert {k.split("/")[0] for k in voices.keys()} == set(NAMES)
    assert {k.split("/")[0] for k in faces.keys()} == set(NAMES.values())
    assert any(k.startswith("id00007/2017/") for k in voices.keys())
    check = subprocess.run(["sha256sum", "-c", "lists.sha256"], cwd=lists, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 11  # 10 lists and the split CSV


def run_test_script(root, checkpoint, out, *extra):
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", CONFIG, "--opts", *opts(root),
                              *extra, f"testing.checkpoint={checkpoint}", f"testing.result_path={out}/results.txt",
                              f"testing.extracted_features_path={out}/features.pt", "testing.bootstrap=20"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def evaluated(test_only, tmp_path_factory):
    """test.py, run as users run it, on the test-only store."""
    root, checkpoint = test_only
    out = str(tmp_path_factory.mktemp("results"))
    return out, run_test_script(root, checkpoint, out)


def test_test_script_on_a_test_only_store_records_lists_and_stores(test_only, evaluated):
    root, _ = test_only
    out, results = evaluated
    lists = os.path.join(root, "lists")
    assert len(results["lists"]) == 10
    for name, entry in results["lists"].items():
        with open(os.path.join(lists, name + ".txt"), "rb") as f:
            text = f.read()
        assert entry["lines"] == text.count(b"\n")
        assert entry["sha256"] == subprocess.run(["sha256sum", os.path.join(lists, name + ".txt")],
                                                 capture_output=True, text=True).stdout.split()[0]
    stores = results["features"]["stores"]
    assert stores["audio.lmdb"]["path"] == os.path.join(root, "lmdb", "audio.lmdb")
    assert stores["audio.lmdb"]["stored"] == len(LmdbStore(stores["audio.lmdb"]["path"]))
    saved = torch.load(os.path.join(out, "features.pt"), weights_only=True)
    assert saved["source"]["stores"] == stores


def test_lists_in_the_other_key_form_give_the_same_results(test_only, evaluated, tmp_path):
    """Clips named by VGGFace name (the 2023 evaluation code) and faces by VoxCeleb1 ID resolve through
    the meta file to the same files."""
    root, checkpoint = test_only
    ours = evaluated[1]
    lists = os.path.join(root, "lists")
    identities = read_split(lists, "test")
    other = str(tmp_path / "other_lists")
    shutil.copytree(lists, other)
    for name in ours["lists"]:
        with open(os.path.join(lists, name + ".txt")) as f:
            lines = f.read().splitlines()
        swapped = [" ".join(swap_names(line.split(), identities)) for line in lines]
        assert swapped != lines
        with open(os.path.join(other, name + ".txt"), "w") as f:
            f.write("\n".join(swapped) + "\n")
    out = tmp_path / "b"
    script.main(["--cfg", CONFIG, "--opts", *opts(root), f"dataset.list_dir={other}", f"testing.checkpoint={checkpoint}",
                 f"testing.result_path={out}/results.txt", f"testing.extracted_features_path={out}/features.pt",
                 "testing.bootstrap=20"])  # in process: the entry point itself runs in `evaluated`
    with open(out / "results.json") as f:
        theirs = json.load(f)
    for name, entry in ours["lists"].items():
        assert theirs["lists"][name]["value"] == entry["value"], name
        assert theirs["lists"][name]["sha256"] != entry["sha256"]
