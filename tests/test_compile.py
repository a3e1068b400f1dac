"""training.compile: the face encoder's training forward through torch.compile, the same values as eagerly,
checkpoint keys unchanged, a one-line fallback where compiling fails, and train.py with it on."""
import logging
import torch

from helpers import tiny_config
from models import build_model
from models.pair_encoder import PairEncoder
import models.pair_encoder as pair_encoder
from train import train

SMALL = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
         "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]"]


def forward_backward(cfg, compile_face: bool):
    torch.manual_seed(0)
    model = build_model(cfg.models).train()
    encoders = PairEncoder(model, compile_face)
    generator = torch.Generator().manual_seed(1)
    faces = torch.rand(2, 4, 3, 32, 32, generator=generator) * 255
    voices = torch.randn(2, 4, 8000, generator=generator)
    embeddings = encoders(faces[0], faces[1], voices[0], voices[1])
    sum(e.square().sum() for e in embeddings).backward()
    return model, embeddings


def test_compiled_face_forward_equals_eager(tiny_root):
    cfg = tiny_config(tiny_root, *SMALL)
    eager, expected = forward_backward(cfg, False)
    compiled, got = forward_backward(cfg, True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # the module is not replaced
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(compiled.state_dict(), eager.state_dict(), rtol=1e-4, atol=1e-5)  # BN statistics


def test_a_failed_compile_falls_back_to_eager_in_one_line(tiny_root, monkeypatch, caplog):
    def no_compiler(function):
        def compiled(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return compiled

    cfg = tiny_config(tiny_root, *SMALL)
    _, expected = forward_backward(cfg, False)
    monkeypatch.setattr(pair_encoder.torch, "compile", no_compiler)
    with caplog.at_level(logging.WARNING, logger="models.pair_encoder"):
        _, got = forward_backward(cfg, True)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["training.compile: torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ "
                        "compiler found); the face encoder runs eagerly"]


def test_an_error_of_the_model_itself_still_raises(tiny_root):
    cfg = tiny_config(tiny_root, *SMALL)
    encoders = PairEncoder(build_model(cfg.models).train(), compile_face=True)
    try:
        encoders.encode_face(torch.rand(4, 5, 32, 32))  # 5 channels: the first convolution refuses them
    except RuntimeError as e:
        assert "channels" in str(e)
    else:
        raise AssertionError("a wrong input went through")


def test_train_py_with_compile_on(tiny_root, tiny_cfg, tmp_path):
    cfg = tiny_config(tiny_root, *SMALL, "dataset.image_size=32",
                      "training.compile=true", "training.max_iter=3", "training.val_start=3", "training.val_iter=3",
                      "training.save_iter=3", f"output_dir={tmp_path}", "device=cpu")
    summary = train(cfg)
    assert summary["iteration"] == 3
    saved = torch.load(tmp_path / "synthetic" / "checkpoint_3.pth.tar", weights_only=False)
    assert list(saved["model"]) == list(build_model(cfg.models).state_dict())  # the keys an eager run saves
