"""test.py, evaluation.protocol, evaluation.features: features files, table routing and format, outputs, feature cache, errors."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from config import load_config
from helpers import DATA, ROOT, load_test_script
from data.lists import ListError, evaluation_lists
from evaluation import list_features
from evaluation.features import FeaturesError, as_arrays, save_features_file

CASE = os.path.join(DATA, "metric_case")
REFERENCE = os.path.join(CASE, "embeddings.pt")
CONFIG = os.path.join(ROOT, "config", "synthetic.yaml")

script = load_test_script()

# Table cell -> the list whose value it must show (the paper's layout, spelled out independently).
CELLS = {
    ("voice→face", "1:2 matching U"): "match_v2f_2_test",
    ("voice→face", "1:2 matching G"): "match_g_v2f_2_test",
    ("voice→face", "verification U (AUC)"): "verify_v2f_test",
    ("voice→face", "verification G (AUC)"): "verify_g_v2f_test",
    ("voice→face", "retrieval mAP"): "reterival_v2f_test",
    ("face→voice", "1:2 matching U"): "match_f2v_2_test",
    ("face→voice", "1:2 matching G"): "match_g_f2v_2_test",
    ("face→voice", "verification U (AUC)"): "verify_f2v_test",
    ("face→voice", "verification G (AUC)"): "verify_g_f2v_test",
    ("face→voice", "retrieval mAP"): "reterival_f2v_test",
}


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(CASE, "expected.json")) as f:
        return json.load(f)


def run(tmp_path, *opts, features=REFERENCE, list_dir=CASE):
    argv = ["--cfg", CONFIG, "--opts", f"dataset.list_dir={list_dir}", f"output_dir={tmp_path}",
            "testing.bootstrap=200", *opts]
    return script.main(argv + (["--features", features] if features else []))


def parse_table(text):
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    header, body = rows[0], rows[2:]  # columns: label, direction, values
    return {(row[1], column): cell for row in body for column, cell in zip(header[2:], row[2:])}


def test_features_file_gives_the_released_values_table_and_outputs(tmp_path, capsys, expected):
    results = run(tmp_path)
    out = capsys.readouterr().out
    assert {r.spec.name: r.value for r in results} == pytest.approx(expected, abs=1e-7)

    table = parse_table(out)
    assert set(table) == set(CELLS)
    for cell, name in CELLS.items():  # U/G and v2f/f2v routing, in %, with a 95% interval
        value, low, high = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", table[cell]).groups())
        assert value == pytest.approx(100 * expected[name], abs=0.006), cell
        assert low < value < high

    run_dir = tmp_path / "synthetic"
    lines = (run_dir / "results_test.txt").read_text().splitlines()
    assert len(lines) == 10
    for line in lines:
        name, value = line.split(" ")
        assert float(value) == pytest.approx(100 * expected[name], abs=1e-4)
    summary = json.loads((run_dir / "results_test.json").read_text())
    for name, value in expected.items():
        entry = summary["lists"][name]
        assert entry["value"] == pytest.approx(value, abs=1e-7)
        assert entry["ci95"][0] < value < entry["ci95"][1]
        assert ("eer" in entry) == name.startswith("verify")
    assert summary["features"]["features_file"] == os.path.abspath(REFERENCE)
    assert summary["confidence"]["bootstrap"] == 200
    for png in ("results_test_roc.png", "results_test_scores.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_intervals_are_seeded(tmp_path):
    first = {r.spec.name: r.interval for r in run(tmp_path / "a")}
    again = {r.spec.name: r.interval for r in run(tmp_path / "b")}
    other = {r.spec.name: r.interval for r in run(tmp_path / "c", "testing.ci_seed=1")}
    assert first == again
    assert first["verify_v2f_test"] != other["verify_v2f_test"]
    assert first["match_v2f_2_test"] == other["match_v2f_2_test"]  # Wilson: no randomness


def test_evaluated_lists_are_the_generated_lists():
    from data.lists import list_names

    for match_n in ([2], [2, 4]):
        assert sorted(t.name for t in evaluation_lists("val", match_n)) == sorted(list_names("val", match_n))


def test_one_to_n_lists_are_evaluated_when_present(tmp_path):
    list_dir = tmp_path / "lists"
    shutil.copytree(CASE, list_dir)
    data = torch.load(REFERENCE, weights_only=True)
    feat, ids = data["name2feat"], data["name2id"]
    faces = [k for k in feat if k.endswith(".jpg")]
    lines, correct = [], 0
    for voice in (k for k in feat if k.endswith(".wav")):  # 1:4 lines, positive first
        same = [f for f in faces if ids[f] == ids[voice]]
        others = [f for f in faces if ids[f] != ids[voice]][ids[voice]::7][:3]
        line = [voice, same[len(lines) % len(same)]] + others
        cosines = [torch.cosine_similarity(feat[voice], feat[f], dim=0).item() for f in line[1:]]
        correct += cosines[0] >= max(cosines[1:])
        lines.append(" ".join(line))
    (list_dir / "match_v2f_4_test.txt").write_text("\n".join(lines) + "\n")

    results = {r.spec.name: r for r in run(tmp_path, "dataset.match_n=[2,4]", list_dir=list_dir)}
    assert len(results) == 11 and "match_f2v_4_test" not in results  # only the lists that exist
    assert results["match_v2f_4_test"].spec.candidates == 4
    assert results["match_v2f_4_test"].value == pytest.approx(correct / len(lines), abs=1e-12)
    assert "match_v2f_4_test" in (tmp_path / "synthetic" / "results_test.txt").read_text()


def test_list_naming_a_file_without_embedding(tmp_path):
    data = torch.load(REFERENCE, weights_only=True)
    line = open(os.path.join(CASE, "match_v2f_2_test.txt")).read().splitlines()[6]
    dropped = line.split()[1]
    for table in data.values():
        del table[dropped]
    features = str(tmp_path / "features.pt")
    torch.save(data, features)
    with pytest.raises(ListError, match=rf"match_v2f_2_test\.txt, line \d+: no embedding for '{dropped}'"):
        run(tmp_path, features=features)


def test_empty_and_malformed_lists(tmp_path):
    list_dir = tmp_path / "lists"
    shutil.copytree(CASE, list_dir)
    (list_dir / "verify_g_f2v_test.txt").write_text("")
    with pytest.raises(ListError, match=r"verify_g_f2v_test\.txt: the list is empty"):
        run(tmp_path, list_dir=list_dir)
    lines = (list_dir / "verify_v2f_test.txt").read_text().splitlines()
    lines[4] += " extra/path.jpg"
    (list_dir / "verify_v2f_test.txt").write_text("\n".join(lines))
    with pytest.raises(ListError, match=r"verify_v2f_test\.txt, line 5: malformed, expected 2 .* found 3"):
        run(tmp_path, list_dir=list_dir)
    (list_dir / "verify_v2f_test.txt").unlink()
    with pytest.raises(ListError, match=r"list file not found: .*verify_v2f_test\.txt .*dataset\.list_dir"):
        run(tmp_path, list_dir=list_dir)


def test_features_file_errors(tmp_path):
    with pytest.raises(FeaturesError, match="features file not found"):
        run(tmp_path, features=str(tmp_path / "none.pt"))
    torch.save({"name2feat": {}}, tmp_path / "bad.pt")
    with pytest.raises(FeaturesError, match=r"bad\.pt: not a features file: it lacks \['name2gender', 'name2i"):
        run(tmp_path, features=str(tmp_path / "bad.pt"))


def test_compact_features_are_scored_without_importing_torch(tmp_path, expected):
    data = torch.load(REFERENCE, weights_only=True)
    keys = list(data["name2feat"])
    compact = tmp_path / "features.npz"
    save_features_file(str(compact), keys, torch.stack([data["name2feat"][k] for k in keys]),
                       [data["name2id"][k] for k in keys], [data["name2gender"][k] for k in keys], {})
    # test.py as the command line runs it, then a look at what it imported.
    probe = ("import os, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0])); "
             "runpy.run_path(sys.argv[0], run_name='__main__'); "
             "print('torch imported:', 'torch' in sys.modules)")
    process = subprocess.run([sys.executable, "-c", probe, os.path.join(ROOT, "test.py"), "--cfg", CONFIG,
                              "--features", str(compact), "--opts", f"dataset.list_dir={CASE}",
                              f"output_dir={tmp_path}", "testing.bootstrap=20"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert process.stdout.rstrip().endswith("torch imported: False")
    with open(tmp_path / "synthetic" / "results_test.txt") as f:
        values = dict(line.split() for line in f)
    assert {name: round(float(v), 4) for name, v in values.items()} == {
        name: round(100 * v, 4) for name, v in expected.items()}


def test_features_and_compare_together_is_a_usage_error(tmp_path):
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", CONFIG, "--features",
                              "f.npz", "--compare", "a", "b"], capture_output=True, text=True, cwd=tmp_path)
    assert process.returncode == 2
    assert "--features evaluates one features file; --compare evaluates runs' checkpoints" in process.stderr


def test_missing_checkpoint_names_the_config_key(tmp_path):
    with pytest.raises(list_features.MissingCheckpoint, match=r"checkpoint_best\.pth\.tar.*testing\.checkpoint"):
        run(tmp_path, features=None)
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", CONFIG, "--opts",
                              f"testing.checkpoint={tmp_path / 'nowhere.pth.tar'}"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert process.returncode == 1
    assert "nowhere.pth.tar" in process.stderr and "testing.checkpoint" in process.stderr
    assert "Traceback" not in process.stderr


# ---------------------------------------------------------------- feature cache

@pytest.fixture
def cache_setup(tmp_path):
    checkpoint = tmp_path / "checkpoint_best.pth.tar"
    checkpoint.write_bytes(b"weights")
    cfg = load_config(CONFIG, [f"output_dir={tmp_path}", f"dataset.list_dir={CASE}",
                               f"testing.checkpoint={checkpoint}"])
    data = torch.load(REFERENCE, weights_only=True)
    keys = list(data["name2feat"])
    embeddings = torch.stack([data["name2feat"][k] for k in keys])
    path = str(tmp_path / "features_test.pt")
    source = list_features.provenance(cfg, str(checkpoint))
    save_features_file(path, keys, embeddings, [data["name2id"][k] for k in keys],
                              [data["name2gender"][k] for k in keys], source)
    return cfg, checkpoint, path, source, set(keys), embeddings


def test_cache_round_trip_in_the_released_format(cache_setup):
    cfg, _, path, source, keys, embeddings = cache_setup
    data = torch.load(path, weights_only=True)
    assert {"name2feat", "name2id", "name2gender"} <= set(data) and data["source"] == source
    assert data["name2gender"]["id10000/vid0/00001.wav"] == "f" and set(data["name2feat"]) == keys
    features = list_features.reusable_cache(path, source, keys)
    np.testing.assert_array_equal(features.embeddings, embeddings.numpy())
    assert source["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert source["config"]["models"]["embedding_dim"] == 128


def test_cache_made_by_another_checkpoint_or_config_is_not_reused(cache_setup, capsys):
    cfg, checkpoint, path, source, keys, _ = cache_setup
    assert list_features.reusable_cache(path, source, keys) is not None
    assert "reusing" in capsys.readouterr().out

    stat = os.stat(checkpoint)
    checkpoint.write_bytes(b"WEIGHTS")  # retrained: other bytes of the same size ...
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same time
    assert list_features.reusable_cache(path, list_features.provenance(cfg, str(checkpoint)), keys) is None
    message = capsys.readouterr().out
    assert f"extracted by {checkpoint}" in message and "checkpoint_sha256" in message and "extracting again" in message
    checkpoint.write_bytes(b"weights")

    changed = load_config(CONFIG, [f"output_dir={checkpoint.parent}", "models.embedding_dim=64"])
    assert list_features.reusable_cache(path, list_features.provenance(changed, str(checkpoint)), keys) is None
    assert "config" in capsys.readouterr().out

    assert list_features.reusable_cache(path, source, keys | {"id99999/x/00001.wav"}) is None
    assert "lacks 1 of the files" in capsys.readouterr().out

    torch.save(torch.load(REFERENCE, weights_only=True), path)  # a features file with no record of its maker
    assert list_features.reusable_cache(path, source, keys) is None
    assert "does not record the checkpoint" in capsys.readouterr().out


def test_model_path_reuses_the_cache_only_for_its_checkpoint(cache_setup, monkeypatch):
    cfg, checkpoint, path, source, keys, embeddings = cache_setup
    cfg.testing.extracted_features_path = path
    lists = evaluation_lists("test")
    extracted = []

    def fake_extract(cfg, checkpoint, files, source, path):
        extracted.append((checkpoint, sorted(files["voice"]), sorted(files["face"])))
        return as_arrays(torch.load(REFERENCE, weights_only=True), REFERENCE)

    monkeypatch.setattr(list_features, "extract_features", fake_extract)
    monkeypatch.setattr(list_features, "check_stores", lambda cfg, lists, keys: None)  # these lists have no stores
    features = list_features.model_features(cfg, lists, str(checkpoint))
    assert not extracted
    np.testing.assert_array_equal(features.embeddings, embeddings.numpy())

    os.utime(checkpoint, (0, 0))  # same bytes, another time: the same model
    copy = checkpoint.parent / "copy.pth.tar"
    shutil.copy(checkpoint, copy)  # or elsewhere
    list_features.model_features(cfg, lists, str(copy))
    assert not extracted
    checkpoint.write_bytes(b"weightz")  # other bytes, same size
    list_features.model_features(cfg, lists, str(checkpoint))
    assert len(extracted) == 1
    _, voices, faces = extracted[0]  # every file the lists name, routed by modality
    assert voices == sorted(k for k in keys if k.endswith(".wav"))
    assert faces == sorted(k for k in keys if k.endswith(".jpg"))


# ---------------------------------------------------------------- with a model (slow)

@pytest.mark.slow
def test_model_end_to_end_on_the_synthetic_corpus(tmp_path, capsys):
    prepare = pytest.importorskip("data.prepare")
    pytest.importorskip("data.datasets")
    from models import build_model
    from utils.checkpoint import save_checkpoint

    cfg = load_config(CONFIG)
    prepare.prepare(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.models)
    checkpoint = tmp_path / "checkpoint_best.pth.tar"
    save_checkpoint({"format": "aasm", "iteration": 0, "model": model.state_dict(), "equilibrium": None,
                     "optimizer": {}, "best_val": 0.0, "rng": {}, "config": {}}, str(checkpoint))
    opts = ["--opts", f"output_dir={tmp_path}", f"testing.checkpoint={checkpoint}", "testing.bootstrap=50",
            "device=cpu", "dataset.num_workers=0"]
    results = script.main(["--cfg", CONFIG] + opts)
    assert len(results) >= 10 and all(0 <= r.value <= 1 for r in results)
    assert "saved to" in capsys.readouterr().out
    again = script.main(["--cfg", CONFIG] + opts)
    assert "reusing the features" in capsys.readouterr().out
    assert [r.value for r in again] == [r.value for r in results]


def test_results_are_written_with_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        run(tmp_path)
    finally:
        os.umask(previous)
    for name in ("results_test.txt", "results_test.json", "results_test_roc.png"):
        assert os.stat(tmp_path / "synthetic" / name).st_mode & 0o777 == 0o640, name
