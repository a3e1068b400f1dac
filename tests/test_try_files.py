"""Own files: test.py --voice/--face/--pairs and evaluation.matcher, against test.py's embeddings of the same files."""
import copy
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys

import cv2
import librosa
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from data.datasets import clip_samples, eval_voice
from data.face_crop import MARGIN, crop_face, detect_face
from data.lmdb_store import BadInput
from data.user_files import read_face, read_voice
from helpers import ROOT, SYNTHETIC, tiny_opts, load_test_script
from evaluation.matcher import Skipped, UnusableFile, VoiceFaceMatcher

script = load_test_script()

SKIMAGE_DATA = os.path.join(os.path.dirname(importlib.util.find_spec("skimage").origin), "data")


def cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.double(), b.double()
    return (torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T).numpy()


@pytest.fixture(scope="module")
def model_run(tiny_cfg, tiny_root, tmp_path_factory):
    """A seeded random model's checkpoint and test.py's embeddings of the tiny corpus' test split."""
    from models import build_model
    from utils.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("try_files")
    torch.manual_seed(0)
    checkpoint = str(folder / "checkpoint.pth.tar")
    save_checkpoint({"format": "aasm", "model": build_model(tiny_cfg.models).state_dict()}, checkpoint)
    features = str(folder / "features.pt")
    opts = tiny_opts(tiny_root) + [f"testing.checkpoint={checkpoint}", "device=cpu"]
    script.main(["--cfg", SYNTHETIC, "--opts", *opts, f"output_dir={folder}", f"testing.extracted_features_path={features}",
                 "testing.bootstrap=20"])
    name2feat = torch.load(features, weights_only=True)["name2feat"]
    d = tiny_cfg.dataset
    voices = sorted(k for k in name2feat if k.endswith(".wav"))
    faces = sorted(k for k in name2feat if k.endswith(".jpg"))
    return {"checkpoint": checkpoint, "opts": opts, "cfg": tiny_cfg, "root": tiny_root, "features": name2feat,
            "voices": voices, "faces": faces, "voice_files": [os.path.join(d.audio_data_dir, k) for k in voices],
            "face_files": [os.path.join(d.image_data_dir, k) for k in faces],
            "matcher": VoiceFaceMatcher.load(tiny_cfg, checkpoint, device="cpu")}


def feature_cosines(run, voices, faces) -> np.ndarray:
    feats = run["features"]
    return cosines(torch.stack([feats[k] for k in voices]), torch.stack([feats[k] for k in faces]))


def run_test_py(run, *args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", SYNTHETIC, "--opts", *run["opts"],
                           *args], capture_output=True, text=True, cwd=cwd, timeout=300)


# ---------------------------------------------------------------- exactness

def test_api_scores_equal_the_cosines_of_test_py_embeddings(model_run):
    run, matcher = model_run, model_run["matcher"]
    voices, faces = matcher.embed_voices(run["voice_files"]), matcher.embed_faces(run["face_files"])
    assert voices.shape == (len(run["voices"]), 128) and faces.shape == (len(run["faces"]), 128)
    expected = feature_cosines(run, run["voices"], run["faces"])
    np.testing.assert_allclose(matcher.match(voices, faces).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(matcher.match(faces[3], voices).numpy(), expected[:, 3], rtol=0, atol=1e-6)


def test_voice_against_faces_from_the_command_line(model_run, tmp_path):
    run = model_run
    voice, faces = run["voice_files"][0], run["face_files"][:4]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    out, png = tmp_path / "out" / "match.json", tmp_path / "match.png"
    process = run_test_py(run, f"output_dir={tmp_path / 'runs'}", "--voice", voice, "--faces", faces[0], str(bad),
                          *faces[1:], "--output", str(out), "--plot", str(png))
    assert process.returncode == 0, process.stderr
    result = json.loads(out.read_text())
    assert set(result) == {"query", "candidates", "match", "skipped", "notes", "warning"} and result["query"] == voice
    assert result["warning"] is None  # a checkpoint that records no training data: nothing to warn about
    assert [n["path"] for n in result["notes"]] == [voice] and "repeated to the 10 s" in result["notes"][0]["note"]
    assert result["skipped"] == [{"path": str(bad), "reason": "unreadable image: not an image format Pillow knows"}]
    assert f"skipped {bad}: unreadable image" in process.stdout and "Traceback" not in process.stderr
    expected = dict(zip(run["faces"], feature_cosines(run, run["voices"][:1], run["faces"][:4])[0]))
    candidates = result["candidates"]
    assert [c["rank"] for c in candidates] == [1, 2, 3, 4]
    assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
    for c in candidates:
        assert c["score"] == pytest.approx(expected[os.path.relpath(c["path"], run["cfg"].dataset.image_data_dir)],
                                           abs=1e-6)
    assert result["match"] == candidates[0]["path"]
    assert re.search(rf"^\s+1\s+-?\d\.\d{{4}}\s+{re.escape(result['match'])}\s+<- match$", process.stdout, re.M)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "runs").exists()  # nothing in the run folder, no features cache


def test_face_against_voices_in_process(model_run, tmp_path, capsys):
    run = model_run
    face, voices = run["face_files"][1], run["voice_files"][:3]
    script.main(["--cfg", SYNTHETIC, "--opts", *run["opts"], f"output_dir={tmp_path}", "--face", face, "--voices",
                 *voices, "--output", str(tmp_path / "f2v.json")])
    result = json.loads((tmp_path / "f2v.json").read_text())
    expected = feature_cosines(run, run["voices"][:3], run["faces"][1:2])[:, 0]
    scores = {c["path"]: c["score"] for c in result["candidates"]}
    np.testing.assert_allclose([scores[v] for v in voices], expected, rtol=0, atol=1e-6)
    assert result["match"] == voices[int(np.argmax(expected))] and result["skipped"] == []
    assert f"match: {result['match']}" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["f2v.json"]


def test_pairs_file_scores_every_line(model_run, tmp_path):
    run = model_run
    root = run["root"]
    with open(os.path.join(root, "lists", "match_v2f_2_test.txt")) as f:
        v2f = [line.split() for line in f.read().splitlines()[:12]]
    lines = [f"wav/{v} VGG_ALL_FRONTAL/{a} VGG_ALL_FRONTAL/{b}" for v, a, b in v2f]
    face = run["faces"][0]  # a face against three voices, one of them unusable, and an absolute path
    lines += ["", f"VGG_ALL_FRONTAL/{face} wav/{run['voices'][1]} wav/missing.wav {run['voice_files'][2]}"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.csv"
    process = run_test_py(run, f"output_dir={tmp_path / 'runs'}", "--pairs", str(pairs), "--root", root,
                          "--output", str(out))
    assert process.returncode == 0, process.stderr
    assert f"skipped {os.path.join(root, 'wav/missing.wav')}: cannot read" in process.stdout
    with open(out) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "query", "candidate", "score", "rank"]
    rows = rows[1:]
    assert len(rows) == 2 * 12 + 2
    expected = [feature_cosines(run, [v], [a, b])[0] for v, a, b in v2f]
    for number, (v, a, b) in enumerate(v2f, start=1):
        mine = rows[2 * number - 2:2 * number]
        assert [r[:3] for r in mine] == [[str(number), f"wav/{v}", f"VGG_ALL_FRONTAL/{a}"],
                                         [str(number), f"wav/{v}", f"VGG_ALL_FRONTAL/{b}"]]
        np.testing.assert_allclose([float(r[3]) for r in mine], expected[number - 1], rtol=0, atol=1e-6)
        assert [int(r[4]) for r in mine] == ([1, 2] if expected[number - 1][0] >= expected[number - 1][1] else [2, 1])
    last = rows[-2:]
    assert [r[0] for r in last] == ["14", "14"] and last[1][2] == run["voice_files"][2]
    face_scores = feature_cosines(run, run["voices"][1:3], [face])[:, 0]
    np.testing.assert_allclose([float(r[3]) for r in last], face_scores, rtol=0, atol=1e-6)
    assert sorted(int(r[4]) for r in last) == [1, 2]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- real-world inputs

@pytest.fixture(scope="module")
def clip(model_run):
    """A test-split clip (int16, 16 kHz, shorter than 10 s) and its file."""
    path = model_run["voice_files"][0]
    return soundfile.read(path, dtype="int16")[0], path


AUDIO_KINDS = {  # name: (file name, subtype, rate, how the clip is written)
    "wav 24-bit": ("a.wav", "PCM_24", 16000, "int"),
    "wav 32-bit": ("a.wav", "PCM_32", 16000, "int"),
    "wav float": ("a.wav", "FLOAT", 16000, "float"),
    "flac": ("a.flac", "PCM_16", 16000, "int"),
    "stereo": ("a.wav", "PCM_16", 16000, "stereo"),
    "wav 8-bit": ("a.wav", "PCM_U8", 16000, "int"),
    "ogg": ("a.ogg", "VORBIS", 16000, "float"),
    "44.1 kHz": ("a.wav", "PCM_16", 44100, "int"),
    "8 kHz flac": ("a.flac", "PCM_16", 8000, "int"),
}


@pytest.mark.parametrize("kind", AUDIO_KINDS)
def test_audio_of_any_format_rate_width_and_channels(kind, clip, model_run, tmp_path):
    samples, _ = clip
    name, subtype, rate, how = AUDIO_KINDS[kind]
    data = samples if rate == 16000 else librosa.resample(samples / 32768, orig_sr=16000, target_sr=rate)
    if how == "stereo":
        data = np.stack([samples, np.random.default_rng(0).integers(-9000, 9000, len(samples), np.int16)], 1)
    elif how == "float" or rate != 16000:
        data = np.asarray(data / 32768 if rate == 16000 else data, np.float32)
    path = str(tmp_path / name)
    soundfile.write(path, data, rate, subtype=subtype)
    read = read_voice(path, model_run["cfg"])
    assert read.dtype == np.int16
    if kind in ("wav 24-bit", "wav 32-bit", "wav float", "flac", "stereo"):  # lossless: the very samples
        np.testing.assert_array_equal(read, samples)
    elif kind == "wav 8-bit":
        assert np.abs(read.astype(int) - samples).max() <= 256
    else:  # lossy or resampled back to 16 kHz: the same signal
        assert abs(len(read) - len(samples)) <= 16000 * 0.01
        n = min(len(read), len(samples))
        assert np.corrcoef(read[:n], samples[:n])[0, 1] > (0.9 if kind == "ogg" else 0.97)


def test_mp3_is_read_and_scored(clip, model_run, tmp_path):
    samples, _ = clip
    path = str(tmp_path / "a.mp3")
    soundfile.write(path, samples.astype(np.float32) / 32768, 16000, format="MP3")
    read = read_voice(path, model_run["cfg"])
    assert abs(len(read) - len(samples)) < 0.1 * 16000 and np.abs(read).max() > 1000
    assert torch.isfinite(model_run["matcher"].embed_voices([path])).all()


def test_short_clips_are_tiled_and_long_ones_cut_to_ten_seconds(clip, model_run, tmp_path):
    samples, path = clip
    cfg, matcher = model_run["cfg"], model_run["matcher"]
    total = clip_samples(cfg)
    tiled = eval_voice(read_voice(path, cfg), total).numpy()
    assert len(samples) < total and len(tiled) == total
    np.testing.assert_array_equal(tiled, np.resize(samples, total))
    # 10 s of the tiled clip then 5 s of noise: the noise is never heard, so it scores as the short clip.
    long = np.concatenate([tiled, np.random.default_rng(1).integers(-20000, 20000, 5 * 16000, np.int16)])
    soundfile.write(str(tmp_path / "long.wav"), long, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(read_voice(str(tmp_path / "long.wav"), cfg), tiled)
    embeddings = matcher.embed_voices([path, str(tmp_path / "long.wav")])
    assert cosines(embeddings[:1], embeddings[1:])[0, 0] == pytest.approx(1, abs=1e-6)


@pytest.fixture(scope="module")
def photo(model_run):
    """A test-split photo (taller than wide) decoded as BGR, and the config keeping photos at their size."""
    cfg = copy.deepcopy(model_run["cfg"])
    cfg.dataset.store_image_size = None
    image = cv2.imread(model_run["face_files"][0], cv2.IMREAD_COLOR)
    assert image.shape[0] > image.shape[1]
    return image, cfg


def _save(image_bgr: np.ndarray, path, mode: str = "RGB", **kwargs) -> str:
    Image.fromarray(image_bgr[..., ::-1].copy()).convert(mode).save(str(path), **kwargs)
    return str(path)


def test_photos_of_any_format_and_orientation(photo, tmp_path):
    image, cfg = photo
    png = read_face(_save(image, tmp_path / "a.png"), cfg)
    np.testing.assert_array_equal(png, image)  # lossless
    np.testing.assert_array_equal(read_face(_save(image, tmp_path / "a.rgba.png", "RGBA"), cfg), image)
    gray = read_face(_save(image, tmp_path / "g.png", "L"), cfg)
    assert gray.shape == image.shape and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    np.testing.assert_allclose(gray[..., 0], cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), atol=1)
    cmyk = read_face(_save(image, tmp_path / "c.jpg", "CMYK", quality=95), cfg)
    assert cmyk.shape == image.shape and np.abs(cmyk.astype(int) - image).mean() < 4
    # Stored turned on its side with EXIF orientation 6 ("rotate 90° clockwise to show"): read upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = np.ascontiguousarray(np.rot90(image, 1))
    upright = read_face(_save(sideways, tmp_path / "exif.jpg", quality=95, exif=exif.tobytes()), cfg)
    assert upright.shape == image.shape and np.abs(upright.astype(int) - image).mean() < 4
    big = cv2.resize(image, (2400, 3000), interpolation=cv2.INTER_CUBIC)
    assert read_face(_save(big, tmp_path / "big.jpg", quality=90), cfg).shape == (3000, 2400, 3)


def test_unusable_files_are_named_and_the_rest_scored(model_run, clip, tmp_path):
    matcher = model_run["matcher"]
    samples, good = clip
    (tmp_path / "text.wav").write_text("RIFF but not really")
    truncated = tmp_path / "truncated.wav"
    soundfile.write(str(truncated), samples, 16000, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:2000])
    soundfile.write(str(tmp_path / "empty.wav"), np.zeros(0, np.int16), 16000, subtype="PCM_16")
    paths = [good, str(tmp_path / "text.wav"), str(truncated), str(tmp_path / "empty.wav"),
             str(tmp_path / "missing.wav"), model_run["voice_files"][1]]
    skipped = []
    embeddings = matcher.embed_voices(paths, skipped)
    assert embeddings.shape == (2, 128)
    reasons = {entry.path: entry.reason for entry in skipped}
    assert list(reasons) == paths[1:5]
    assert reasons[paths[1]].startswith("unreadable audio")
    assert reasons[paths[2]].startswith("truncated WAV")
    assert reasons[paths[3]] == "zero-length clip"
    assert reasons[paths[4]] == "cannot read: No such file or directory"
    with pytest.raises(UnusableFile, match=re.escape(paths[4]) + ": cannot read"):
        matcher.embed_voices(paths[4:])
    jpeg = open(model_run["face_files"][0], "rb").read()
    (tmp_path / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    skipped = []
    faces = matcher.embed_faces([str(tmp_path / "cut.jpg"), model_run["face_files"][0], str(tmp_path / "empty.jpg")],
                                skipped)
    assert faces.shape == (1, 128)
    assert [e.path for e in skipped] == [str(tmp_path / "cut.jpg"), str(tmp_path / "empty.jpg")]
    assert skipped[0].reason.startswith("unreadable image") and skipped[1].reason == "empty image file"


def test_unusable_query_is_one_line_from_the_command_line(model_run, tmp_path):
    (tmp_path / "q.wav").write_text("noise")
    process = run_test_py(model_run, f"output_dir={tmp_path}", "--voice", str(tmp_path / "q.wav"),
                          "--faces", model_run["face_files"][0])
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1].startswith(f"test.py: {tmp_path / 'q.wav'}: unreadable audio")


@pytest.mark.parametrize("args, message", [
    (["--voice", "a.wav"], "--voice needs candidate photos"),
    (["--faces", "a.jpg"], "--faces goes with --voice"),
    (["--face", "a.jpg", "--voices", "a.wav", "--pairs", "p.txt"], "not --face and --pairs"),
    (["--pairs", "p.txt"], "--pairs needs --output"),
    (["--pairs", "p.txt", "--output", "o.csv", "--plot", "o.png"], "--plot draws one query"),
    (["--voice", "a.wav", "--faces", "b.jpg", "--root", "d"], "--root goes with --pairs"),
])
def test_inconsistent_flags_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        script.main(["--cfg", SYNTHETIC, *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------- the face crop

def _skimage_photo(name: str) -> np.ndarray:
    return cv2.imread(os.path.join(SKIMAGE_DATA, name), cv2.IMREAD_COLOR)


@pytest.mark.parametrize("name, face_centre", [("astronaut.png", (222, 115)), ("astronaut turned", (222, 115))])
def test_the_face_of_a_photo_is_found_and_framed(name, face_centre):
    image = _skimage_photo("astronaut.png")
    if name == "astronaut turned":  # found by turning the photo back: the box is of the upright photo
        found = detect_face(np.ascontiguousarray(np.rot90(image, 1)))
        assert found.turns == 3 and "turned 270°" in found.note
    else:
        found = detect_face(image)
        assert found.turns == 0 and found.note == ""
    x, y, side = found.faces[0].box
    image = found.image
    assert np.hypot(x + side / 2 - face_centre[0], y + side / 2 - face_centre[1]) < side / 3
    crop = crop_face(image, (x, y, side))
    pad = round(MARGIN * side)
    assert crop.shape == (side + 2 * pad,) * 2 + (3,)
    np.testing.assert_array_equal(crop[pad:pad + side, pad:pad + side], image[y:y + side, x:x + side])
    corner = crop_face(image, (-10, -20, 50))  # off the photo: the training canvas' grey
    assert (corner[:20 + 15] == 127).all() and (corner[:, :10 + 15] == 127).all()


def test_a_photo_without_a_face_is_skipped_by_name(model_run, tmp_path):
    matcher = VoiceFaceMatcher(model_run["matcher"].model, model_run["cfg"], torch.device("cpu"), detect_faces=True)
    coffee, astronaut = os.path.join(SKIMAGE_DATA, "coffee.png"), os.path.join(SKIMAGE_DATA, "astronaut.png")
    skipped = []
    assert matcher.embed_faces([coffee, astronaut], skipped).shape == (1, 128)
    assert skipped == [Skipped(coffee, "no face found")]
    with pytest.raises(BadInput, match="no face found"):
        read_face(coffee, model_run["cfg"], detect=True)


# ---------------------------------------------------------------- a trained model, the README

@pytest.mark.slow
def test_one_of_two_choices_of_a_trained_model_from_the_command_line(short_run, tmp_path):
    """The match lists of a short run as --pairs: right well above chance, and exactly test.py's accuracy."""
    import test as evaluation

    root, opts = short_run["root"], short_run["opts"]
    lines, counts = [], {}
    for name, (query, candidate) in (("match_v2f_2_test", ("wav", "VGG_ALL_FRONTAL")),
                                     ("match_f2v_2_test", ("VGG_ALL_FRONTAL", "wav"))):
        with open(os.path.join(root, "lists", f"{name}.txt")) as f:
            lines += [f"{query}/{q} {candidate}/{a} {candidate}/{b}" for q, a, b in map(str.split, f)]
        counts[name] = len(lines) - sum(counts.values())
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines))
    out = tmp_path / "scores.csv"
    process = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", SYNTHETIC, "--opts", *opts,
                              "--pairs", str(pairs), "--root", root, "--output", str(out)],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert process.returncode == 0, process.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(lines)
    positive_first = np.array([int(r["rank"]) == 1 for r in rows[::2]])  # a line's first candidate is its positive
    results = {r.spec.name: r.value for r in evaluation.main(["--cfg", SYNTHETIC, "--opts", *opts])}
    accuracies = dict(zip(counts, np.split(positive_first, [counts["match_v2f_2_test"]])))
    for name, correct in accuracies.items():
        accuracy, n = correct.mean(), len(correct)
        assert accuracy == pytest.approx(results[name], abs=1.01 / n)  # scores agree to 1e-6: a near-tie may flip
        centre, spread = accuracy + 1.92 / n, 1.96 * np.sqrt(accuracy * (1 - accuracy) / n + 0.96 / n ** 2)
        assert (centre - spread) / (1 + 3.84 / n) > 0.5, f"{name}: {accuracy:.3f} of {n} is not above chance"
        print(f"1-of-2 from the command line, {name}: {accuracy:.4f} of {n} lines")
