import os

import pytest
import torch
import torchaudio
from easydict import EasyDict

from config import load_config
from helpers import ROOT
from models import build_model
from models.face import FaceEncoder

SYNTHETIC = load_config(os.path.join(ROOT, "config", "synthetic.yaml"))
RELEASED = load_config(os.path.join(ROOT, "config", "cfg.yaml"))


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(SYNTHETIC.models).eval()


@pytest.mark.parametrize("size", [112, 96, 144])
def test_face_encoder_takes_any_input_size(small_model, size):
    with torch.no_grad():
        out = small_model.encode_face(torch.rand(2, 3, size, size) * 255)
    assert out.shape == (2, SYNTHETIC.models.embedding_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("samples", [16000, 40000])
def test_voice_encoder_takes_any_length(small_model, samples):
    with torch.no_grad():
        out = small_model.encode_voice(torch.randn(3, samples) * 3000)
    assert out.shape == (3, SYNTHETIC.models.embedding_dim) and torch.isfinite(out).all()


def test_face_input_is_normalised_like_the_release(small_model):
    images = torch.tensor([0.0, 127.5, 255.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(small_model.face_encoder.normalization(images), torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1))


def test_voice_front_end_is_fixed_log_mel(small_model):
    front_end = small_model.voice_encoder.front_end
    features = front_end(torch.randn(2, 16000) * 3000)
    assert features.shape == (2, SYNTHETIC.models.voice.n_mels, 101)
    assert not features.requires_grad and not any(p.requires_grad for p in front_end.parameters())
    # Instance norm over time: every mel bin has zero mean.
    torch.testing.assert_close(features.mean(-1), torch.zeros(2, SYNTHETIC.models.voice.n_mels), atol=1e-4, rtol=0)


def test_voice_front_end_is_torchaudios_log_mel_power_spectrogram(small_model):
    """The power taken as re² + im² (models/voice.py) is torchaudio's |X|² to rounding."""
    front_end = small_model.voice_encoder.front_end
    waves = torch.randn(3, 24000, generator=torch.Generator().manual_seed(0)) * 3000
    plain = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160,
                                                 window_fn=torch.hamming_window, n_mels=SYNTHETIC.models.voice.n_mels)
    expected = torch.nn.functional.instance_norm((plain(waves) + 1e-6).log())
    torch.testing.assert_close(front_end(waves), expected, rtol=1e-5, atol=3e-5)  # log of float32 powers


def test_training_gradients_reach_both_encoders():
    torch.manual_seed(0)
    model = build_model(SYNTHETIC.models).train()
    loss = model.encode_face(torch.rand(2, 3, 112, 112) * 255).square().sum() \
        + model.encode_voice(torch.randn(2, 16000) * 3000).square().sum()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_parameter_names_are_descriptive(small_model):
    keys = list(small_model.state_dict())
    assert "face_encoder.stem.conv.weight" in keys
    assert "face_encoder.body.0.residual.conv1.weight" in keys
    assert "face_encoder.head.hidden.weight" in keys
    assert "voice_encoder.front_end.mel.mel_scale.fb" in keys
    assert "voice_encoder.body.stage2.0.shortcut.conv.weight" in keys
    assert "voice_encoder.pooling.context" in keys
    assert "voice_encoder.head.output.weight" in keys
    assert not [k for k in keys if k.split(".")[0] not in ("face_encoder", "voice_encoder")]


def test_unused_backbone_outputs_are_not_built(small_model):
    # Neither face.evoLVe's output layer nor the voice backbone's Linear(C, 512).
    linears = [(n, m) for n, m in small_model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert all(".se." in n or n.endswith(("head.hidden", "head.output", "pooling.projection")) for n, _ in linears)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in small_model.modules())


@pytest.mark.parametrize("units,count", [([3, 4, 14, 3], 24), ([3, 13, 30, 3], 49), ([3, 8, 36, 3], 50)])
def test_ir_family_depths(units, count):
    encoder = FaceEncoder(units, [8, 8, 8, 8], se=False, head_hidden=8, embedding_dim=4)
    assert len(encoder.body) == count
    strides = [unit.residual.conv2.stride[0] for unit in encoder.body]
    assert strides.count(2) == 4 and strides[0] == 2


def test_se_variant_adds_channel_gates():
    cfg = EasyDict(SYNTHETIC.models)
    cfg.face = EasyDict(cfg.face, se=True)
    model = build_model(cfg).eval()
    assert "face_encoder.body.0.residual.se.reduce.weight" in model.state_dict()
    with torch.no_grad():
        assert model.encode_face(torch.rand(1, 3, 112, 112) * 255).shape == (1, 128)


def test_released_network_sizes():
    model = build_model(RELEASED.models)
    face_body = model.face_encoder.body
    assert len(face_body) == 50 and face_body[-1].residual.conv2.out_channels == 512
    assert model.face_encoder.head.hidden.in_features == 512 and model.face_encoder.head.hidden.out_features == 256
    assert [len(stage) for stage in model.voice_encoder.body] == [3, 4, 6, 3]
    assert model.voice_encoder.head.output.out_features == 128
