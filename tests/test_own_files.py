"""Own files as a user has them: phone and browser audio, silence, real photos (rotated, two faces, a cat, a
cup), hostile inputs (bombs, FIFOs, devices, huge or odd WAVs, odd --pairs files), the API from another folder."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import tracemalloc

import av
import cv2
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from data.face_crop import detect_face
from data.lmdb_store import BadInput
from data.user_files import LARGE_AUDIO_BYTES, face_of, voice_of
from helpers import ROOT, SYNTHETIC, tiny_opts
from evaluation.matcher import VoiceFaceMatcher
from utils.run_folder import config_to_dict

SKIMAGE_DATA = os.path.join(os.path.dirname(importlib.util.find_spec("skimage").origin), "data")


def skimage_photo(name: str) -> np.ndarray:
    return cv2.imread(os.path.join(SKIMAGE_DATA, name), cv2.IMREAD_COLOR)


def save_rgb(image_bgr: np.ndarray, path, **kwargs) -> str:
    Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1])).save(str(path), **kwargs)
    return str(path)


def encode_with_av(path, samples: np.ndarray, rate: int, codec: str, video: bool = False) -> str:
    """int16 mono samples written by PyAV with `codec` (the container by the suffix), with a video track if asked."""
    with av.open(str(path), "w") as out:
        if video:
            picture = out.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream(codec, rate=rate)
        sound.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        converter = av.AudioResampler(format=sound.codec_context.codec.audio_formats[0].name, layout="mono", rate=rate)
        if video:
            for i in range(int(len(samples) / rate * 10)):
                image = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8 % 255, np.uint8), format="rgb24")
                out.mux(picture.encode(image))
            out.mux(picture.encode(None))
        for converted in converter.resample(frame):
            out.mux(sound.encode(converted))
        out.mux(sound.encode(None))
    return str(path)


@pytest.fixture(scope="module")
def own(tiny_cfg, tiny_root, tmp_path_factory):
    """A checkpoint that stores its (synthetic) training config, a corpus clip, and the files of the tests."""
    from models import build_model
    from utils.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("own_files")
    torch.manual_seed(0)
    checkpoint = str(folder / "checkpoint.pth.tar")
    save_checkpoint({"format": "aasm", "model": build_model(tiny_cfg.models).state_dict(),
                     "config": config_to_dict(tiny_cfg)}, checkpoint)
    voices = sorted(os.path.join(dirpath, f) for dirpath, _, files in os.walk(os.path.join(tiny_root, "wav"))
                    for f in files)
    faces = sorted(os.path.join(dirpath, f) for dirpath, _, files in
                   os.walk(os.path.join(tiny_root, "VGG_ALL_FRONTAL")) for f in files)
    speech = soundfile.read(voices[0], dtype="int16")[0]
    opts = tiny_opts(tiny_root) + [f"testing.checkpoint={checkpoint}", "device=cpu"]
    return {"root": tiny_root, "folder": folder, "checkpoint": checkpoint, "cfg": tiny_cfg, "voices": voices,
            "faces": faces,
            "speech": speech, "opts": opts, "matcher": VoiceFaceMatcher.load(tiny_cfg, checkpoint, device="cpu")}


def run_test_py(own, *args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--cfg", SYNTHETIC, "--opts", *own["opts"],
                           *args], capture_output=True, text=True, cwd=cwd, timeout=300)


# ---------------------------------------------------------------- faces

def test_detector_finds_the_astronaut_and_no_face_in_the_cat_the_cup_or_the_cameraman():
    found = {name: detect_face(skimage_photo(name)) for name in ("astronaut.png", "camera.png", "coffee.png",
                                                                  "chelsea.png")}
    astronaut = found["astronaut.png"].faces
    assert len(astronaut) == 1 and astronaut[0].score > 1 and abs(astronaut[0].x + astronaut[0].side / 2 - 222) < 20
    # The cameraman's face is turned (dlib scores it -0.11, under the threshold); no face in the cat or the cup,
    # in any of the four turns.
    assert [found[n].faces for n in ("camera.png", "coffee.png", "chelsea.png")] == [[], [], []]


def test_two_faces_the_most_confident_is_taken_and_named():
    head = skimage_photo("astronaut.png")[:300, 100:400]
    canvas = np.full((300, 540, 3), 127, np.uint8)
    canvas[:, :300], canvas[:240, 300:] = head, cv2.resize(head, (240, 240), interpolation=cv2.INTER_AREA)
    found = detect_face(canvas)
    assert len(found.faces) == 2 and found.faces[0].score >= found.faces[1].score
    assert re.fullmatch(r"2 faces: took the most confident \(\d\.\d\d at \(-?\d+, -?\d+\), \d+ px\); "
                        r"the others scored -?\d\.\d\d at \(\d+, \d+\)", found.note)


def test_faces_from_the_command_line(own, tmp_path):
    """Through test.py --detect-face: which photo gives which face or refusal, the notes, the synthetic warning."""
    astronaut = skimage_photo("astronaut.png")
    exif = Image.Exif()
    exif[0x0112] = 3  # "rotate 180° to show": the decoder turns it upright, no rotation search needed
    photos = {"upright": save_rgb(astronaut, tmp_path / "astronaut.png"),
              "turned": save_rgb(np.rot90(astronaut, 1), tmp_path / "turned.png"),
              "exif": save_rgb(np.rot90(astronaut, 2), tmp_path / "exif.jpg", quality=92, exif=exif.tobytes()),
              "cup": os.path.join(SKIMAGE_DATA, "coffee.png"), "cat": os.path.join(SKIMAGE_DATA, "chelsea.png"),
              "tiny": save_rgb(np.zeros((1, 1, 3), np.uint8), tmp_path / "tiny.png"),
              "not UTF-8": save_rgb(astronaut, os.fsdecode(bytes(tmp_path) + b"/\xff.png"))}
    out, plot = tmp_path / "faces.json", tmp_path / "new" / "folder" / "faces.png"
    process = run_test_py(own, "--voice", own["voices"][0], "--faces", *photos.values(), "--detect-face",
                          "--output", str(out), "--plot", str(plot))
    assert process.returncode == 0 and "Traceback" not in process.stderr, process.stderr
    result = json.loads(out.read_text())
    reasons = {entry["path"]: entry["reason"] for entry in result["skipped"]}
    assert reasons == {photos["cup"]: "no face found", photos["cat"]: "no face found",
                       photos["tiny"]: "1×1 pixels is too small to show a face (at least 24 px a side)"}
    notes = {entry["path"]: entry["note"] for entry in result["notes"]}
    assert notes[photos["turned"]] == "no face upright: turned 270° counter-clockwise"
    assert photos["exif"] not in notes and photos["upright"] not in notes
    assert {c["path"] for c in result["candidates"]} == {photos["upright"], photos["turned"], photos["exif"],
                                                         photos["not UTF-8"]}
    assert plot.read_bytes()[:4] == b"\x89PNG"  # into a folder that did not exist
    # A checkpoint of the synthetic corpus on real photos: said once, before the scores, and in the JSON.
    assert "has seen no real person" in result["warning"] and "authors' checkpoint" in result["warning"]
    warning_at = process.stdout.index("warning: this checkpoint was trained on the embedded synthetic corpus")
    assert process.stdout.count("warning:") == 1 and warning_at < process.stdout.index("<- match")
    print(process.stdout)
    process = run_test_py(own, "--voice", own["voices"][0], "--faces", photos["upright"], "--output",
                          photos["upright"])
    assert process.returncode == 1 and process.stderr.strip() == \
        f"test.py: --output {photos['upright']}: is an input of this run ({photos['upright']}) and would be " \
        "overwritten; name another file"


def test_corpus_files_get_no_warning(own):
    matcher = own["matcher"]
    assert matcher.synthetic_root == own["cfg"].dataset.synthetic.root
    assert matcher.training_note(own["voices"][:2] + own["faces"][:2]) == ""
    assert "seen no real person" in matcher.training_note([own["voices"][0], os.path.join(SKIMAGE_DATA, "camera.png")])


def test_hostile_photos_are_refused_by_name(own, tmp_path):
    cfg = own["cfg"]
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 Mpx in a few kB: over Pillow's 89 Mpx limit
    with pytest.raises(BadInput, match=re.escape(f"{bomb}: 12000×12000 pixels is over Pillow's limit")):
        face_of(str(bomb), cfg)
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)  # over twice the limit: Pillow will not open it
    with pytest.raises(BadInput, match=re.escape(str(huge)) + r": Image size \(400000000 pixels\) exceeds limit"):
        face_of(str(huge), cfg)
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match=r"pipe\.jpg: not a regular file \(a FIFO\)"):
        face_of(str(fifo), cfg)


# ---------------------------------------------------------------- voices

def test_phone_and_browser_audio_is_decoded(own, tmp_path):
    cfg, speech = own["cfg"], own["speech"]
    at_48k = np.repeat(speech, 3)  # Opus runs at 48 kHz
    files = {"m4a": encode_with_av(tmp_path / "a.m4a", speech, 16000, "aac"),
             "webm": encode_with_av(tmp_path / "a.webm", at_48k, 48000, "libopus"),
             "mp4 video": encode_with_av(tmp_path / "v.mp4", speech, 16000, "aac", video=True)}
    for kind, path in files.items():
        clip, note = voice_of(path, cfg)
        assert abs(len(clip) - len(speech)) < 0.15 * 16000, kind  # codec delay and padding
        assert np.abs(clip).max() > 0.3 * np.abs(speech).max(), kind
        assert note == f"{len(clip) / 16000:.2f} s long: repeated to the 10 s the model hears", kind
    silent_video = tmp_path / "silent.mp4"
    with av.open(str(silent_video), "w") as out:
        picture = out.add_stream("mpeg4", rate=10)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        out.mux(picture.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        out.mux(picture.encode(None))
    with pytest.raises(BadInput, match="silent.mp4: holds no audio track"):
        voice_of(str(silent_video), cfg)
    (tmp_path / "text.m4a").write_text("not audio")
    with pytest.raises(BadInput, match=r"text\.m4a: unreadable audio: .*\(nor can PyAV decode it: "):
        voice_of(str(tmp_path / "text.m4a"), cfg)


def test_a_two_hour_wav_is_read_only_as_far_as_the_clip(own, tmp_path):
    """48 kHz, 2 hours (691 MB, a sparse file): the first 10 s of it, in bounded memory."""
    cfg, speech = own["cfg"], own["speech"]
    path = tmp_path / "long.wav"
    with soundfile.SoundFile(str(path), "w", 48000, 1, "PCM_16") as sound:
        sound.write(np.repeat(np.tile(speech, 12)[:16000 * 12], 3))
    frames = 2 * 3600 * 48000
    assert path.read_bytes()[36:40] == b"data"  # the plain 44-byte header
    with open(path, "r+b") as f:  # declare 2 hours; the rest of the file is a hole of zeros
        f.seek(4), f.write((36 + 2 * frames).to_bytes(4, "little"))
        f.seek(40), f.write((2 * frames).to_bytes(4, "little"))
        f.truncate(44 + 2 * frames)
    assert os.path.getsize(path) > LARGE_AUDIO_BYTES
    tracemalloc.start()
    clip, note = voice_of(str(path), cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(clip) == 160000 and note == "" and peak < 40e6, peak
    assert np.corrcoef(clip[16000:32000], np.tile(speech, 12)[16000:32000])[0, 1] > 0.95  # 48 kHz by repetition


def test_odd_audio_from_the_command_line(own, tmp_path):
    """One test.py run: the usable ones scored with their notes, every other named with its reason."""
    speech = own["speech"]
    loud = (speech / np.abs(speech).max()).astype(np.float32)
    files = {}

    def wav(name, data, rate=16000, subtype="PCM_16"):
        files[name] = str(tmp_path / name)
        soundfile.write(files[name], data, rate, subtype=subtype)

    wav("silence.wav", np.zeros(3 * 16000, np.int16))
    wav("hiss.wav", np.random.default_rng(0).normal(0, 30, 3 * 16000).astype(np.int16))  # -60 dB: near-silence
    wav("one_sample.wav", np.array([1000], np.int16))
    wav("empty.wav", np.zeros(0, np.int16))
    wav("nan.wav", np.where(np.arange(len(loud)) == 100, np.nan, loud).astype(np.float32), subtype="FLOAT")
    import librosa
    wav("384k.wav", librosa.resample(loud, orig_sr=16000, target_sr=384000), rate=384000, subtype="FLOAT")
    wav("eight.wav", np.stack([speech] + [np.zeros_like(speech)] * 7, 1))
    wav("short.wav", speech[4000:4000 + int(0.6 * 16000)])  # within the clip's speech
    fifo = str(tmp_path / "fifo.wav")
    os.mkfifo(fifo)
    out = tmp_path / "voices.json"
    process = run_test_py(own, "--face", own["faces"][0], "--voices", *files.values(), fifo, "/dev/zero",
                          "--output", str(out))
    assert process.returncode == 0 and "Traceback" not in process.stderr, process.stderr
    result = json.loads(out.read_text())
    reasons = {entry["path"]: entry["reason"] for entry in result["skipped"]}
    assert reasons == {
        files["silence.wav"]: "no speech found (silero-vad hears none)",
        files["hiss.wav"]: "no speech found (silero-vad hears none)",
        files["one_sample.wav"]: "too short: 1 samples (0.000 s), at least 0.25 s are needed to hold speech",
        files["empty.wav"]: "zero-length clip",
        files["nan.wav"]: "1 samples are NaN or infinite",
        fifo: "not a regular file (a FIFO)",
        "/dev/zero": "not a regular file (a device or socket)"}
    for name in reasons:
        assert f"skipped {name}: {reasons[name]}" in process.stdout
    scored = {c["path"] for c in result["candidates"]}
    assert scored == {files["384k.wav"], files["eight.wav"], files["short.wav"]}
    notes = {entry["path"]: entry["note"] for entry in result["notes"]}
    assert notes[files["short.wav"]] == "0.60 s long: repeated to the 10 s the model hears"
    assert "has seen no real person" in result["warning"]  # files from outside the corpus it was trained on
    print(process.stdout)


# ---------------------------------------------------------------- --pairs as untrusted input

def test_pairs_files_as_untrusted_input(own, tmp_path):
    """Blank lines, CRLF, a BOM, `..`, absolute paths and symbolic links leaving --root; then a non-UTF-8 name."""
    corpus = own["root"]
    voice, face, other = (os.path.relpath(p, corpus) for p in (own["voices"][0], own["faces"][0], own["faces"][1]))
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = save_rgb(skimage_photo("astronaut.png"), outside / "secret.png")
    os.symlink(secret, os.path.join(corpus, "link.png"))
    lines = [f"{voice} {face} {other}", "", f"{voice} ../{os.path.basename(corpus)}/{face} {secret}",
             "   ", f"{voice} link.png {face}"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    out = tmp_path / "scores.csv"
    process = run_test_py(own, "--pairs", str(pairs), "--root", corpus, "--output", str(out))
    assert process.returncode == 0 and "Traceback" not in process.stderr, process.stderr
    assert f"skipped {secret}: outside --root {corpus} (line 3)" in process.stdout
    assert f"skipped {os.path.join(corpus, 'link.png')}: outside --root {corpus} (line 5)" in process.stdout
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", voice, face), ("1", voice, other),
                                                  ("3", voice, f"../{os.path.basename(corpus)}/{face}"),
                                                  ("5", voice, face)]
    assert rows[0][3] == rows[2][3] == rows[3][3]  # one file, one score, under either name
    pairs.write_bytes(f"{voice} {face}\n".encode() + b"\xff\xfe.wav " + face.encode() + b"\n")
    process = run_test_py(own, "--pairs", str(pairs), "--root", corpus, "--output", str(out))
    assert process.returncode == 1 and process.stderr.strip() == \
        f"test.py: {pairs}, line 2: not UTF-8 text (byte 1 of the line)"


@pytest.mark.slow
def test_a_million_pairs_lines_in_bounded_memory(own, tmp_path, capsys):
    from evaluation.own_files import read_pairs

    pairs = tmp_path / "million.txt"
    names = [f"wav/id{i % 500:05d}/x.wav VGG/f{i % 700}.jpg VGG/f{(i + 1) % 700}.jpg\n" for i in range(1000)]
    with open(pairs, "w") as f:
        for _ in range(1000):
            f.writelines(names)
    tracemalloc.start()
    read = read_pairs(str(pairs))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(read.numbers) == 1_000_000 and len(read.names) == 500 + 700 and read.codes.shape == (3_000_000,)
    assert peak < 200e6, peak  # the text alone is 45 MB; as Python strings per token it would be over 200 MB
    assert f"{pairs}: 1000000 lines read" in capsys.readouterr().out


# ---------------------------------------------------------------- the API

def test_api_takes_arrays_and_pil_images(own):
    matcher, speech = own["matcher"], own["speech"]
    from_file = matcher.embed_voices([own["voices"][0]])
    from_arrays = matcher.embed_voices([(speech, 16000), (speech.astype(np.float32) / 32768, 16000)])
    np.testing.assert_allclose(from_arrays, from_file.expand(2, -1), atol=1e-6)
    photo = cv2.imread(own["faces"][0], cv2.IMREAD_COLOR)
    faces = matcher.embed_faces([own["faces"][0], np.ascontiguousarray(photo[..., ::-1]),
                                 Image.open(own["faces"][0])])
    np.testing.assert_allclose(faces[1:], faces[:1].expand(2, -1), atol=1e-6)
    with pytest.raises(TypeError, match=r"<array 0>: a voice is a file path or a \(waveform, sample rate\) pair"):
        matcher.embed_voices([speech])


def test_readme_api_example_runs_from_a_folder_outside_the_repository(own, tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Try it on your own files", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'REPO = "/path/to/this/clone"' in example
    example = example.replace('REPO = "/path/to/this/clone"', f"REPO = {ROOT!r}")
    os.makedirs(tmp_path / "experiments" / "synthetic")
    os.link(own["checkpoint"], tmp_path / "experiments" / "synthetic" / "checkpoint_best.pth.tar")
    os.link(own["voices"][0], tmp_path / "clip.wav")
    os.link(own["faces"][0], tmp_path / "a.jpg")
    save_rgb(cv2.imread(own["faces"][1]), tmp_path / "b.png")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=300)
    assert process.returncode == 0, process.stderr
    assert re.fullmatch(r"best match: (a\.jpg|b\.png) \(scores \[\S+, \S+\]\)\n", process.stdout)
    assert not os.path.commonpath([str(tmp_path), ROOT]) == ROOT
