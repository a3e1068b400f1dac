import json
import logging
import math
import os

import numpy as np
import pytest
import torch
from easydict import EasyDict

from config import load_config
from helpers import DATA, ROOT
from losses import ArchetypeAgnosticLoss
from models import build_model
from models.layouts import load_checkpoint, load_pretrained_face, load_pretrained_voice
from utils.checkpoint import CheckpointError, latest_checkpoint, prune_checkpoints, save_checkpoint
from utils.errors import UserError
from utils.train_state import rng_state, set_rng_state

RELEASED = load_config(os.path.join(ROOT, "config", "cfg.yaml"))
SYNTHETIC = load_config(os.path.join(ROOT, "config", "synthetic.yaml"))
LOGGER = "models.layouts"


def seeded_released_state_dict() -> dict:
    """The released layout filled by the seeded rule under which encoder_case.pt's embeddings were computed."""
    with open(os.path.join(DATA, "released_state_dict_manifest.json")) as f:
        manifest = json.load(f)
    fixed = torch.load(os.path.join(DATA, "encoder_case.pt"), weights_only=True)["fixed_buffers"]
    g = torch.Generator().manual_seed(7)
    state = {}
    for key, shape, dtype in manifest:
        if key in fixed:
            state[key] = fixed[key].clone()
        elif key.endswith(("corr_num", "compare_sum")):
            state[key] = torch.zeros(shape)
        elif key == "eqm.weight":
            state[key] = torch.ones(shape)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
        elif key.endswith("running_mean"):
            state[key] = torch.randn(shape, generator=g) * 0.02
        elif key.endswith("running_var"):
            state[key] = torch.empty(shape).uniform_(2, 4, generator=g)
        elif len(shape) == 1 and key.endswith("weight"):
            state[key] = torch.empty(shape).uniform_(0.8, 1.2, generator=g)
        elif len(shape) == 1:
            state[key] = torch.randn(shape, generator=g) * 0.02
        else:
            state[key] = torch.randn(shape, generator=g) * math.sqrt(shape[0] / math.prod(shape))
    return state


@pytest.fixture(scope="module")
def released_state():
    return seeded_released_state_dict()


@pytest.fixture(scope="module")
def released_model():
    return build_model(RELEASED.models).eval()


def write_released(path, state_dict):
    torch.save({"start_it": 0, "stage": 0, "state_dict": state_dict, "optimizer": {}}, path)
    return str(path)


def test_released_checkpoint_reproduces_the_released_encoders(tmp_path, released_state, released_model, caplog):
    path = write_released(tmp_path / "released.pth.tar", released_state)
    equilibrium = ArchetypeAgnosticLoss(924)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        checkpoint = load_checkpoint(released_model, path, equilibrium)
    assert checkpoint["start_it"] == 0
    case = torch.load(os.path.join(DATA, "encoder_case.pt"), weights_only=True)
    with torch.no_grad():
        face = released_model.encode_face(case["images_bgr_0_255"])
        voice = released_model.encode_voice(case["waves_int16_scale"])
    for ours, expected in [(face, case["face_embedding"]), (voice, case["voice_embedding"])]:
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # The unused parts are named in the log, nothing else is.
    for key in ("corr_num", "compare_sum", "vNet.model.output_layer.3.weight", "aNet.model.fc.weight",
                "aNet.model.fc.bias"):
        assert key in caplog.text
    assert "vNet.model.body" not in caplog.text and "eqm." not in caplog.text


def test_released_unexpected_key_is_an_error(tmp_path, released_state, released_model):
    state = dict(released_state, **{"aNet.model.extra.weight": torch.zeros(3)})
    path = write_released(tmp_path / "released.pth.tar", state)
    with pytest.raises(KeyError, match=r"released\.pth\.tar.*aNet\.model\.extra\.weight"):
        load_checkpoint(released_model, path)


def test_released_missing_key_is_an_error(tmp_path, released_state, released_model):
    state = {k: v for k, v in released_state.items() if k != "vNet.model.body.7.res_layer.3.weight"}
    path = write_released(tmp_path / "released.pth.tar", state)
    with pytest.raises(KeyError, match=r"missing.*face_encoder\.body\.7\.residual\.conv2\.weight"):
        load_checkpoint(released_model, path)


def test_released_equilibrium_is_restored_and_nan_weights_reset(tmp_path, released_state, released_model, caplog):
    weights = torch.rand(924) + 0.5
    weights[:10] = float("nan")  # what the release's 0/0 refresh leaves
    state = dict(released_state, **{"eqm.corr_num": torch.arange(924.0), "eqm.weight": weights})
    path = write_released(tmp_path / "released.pth.tar", state)
    equilibrium = ArchetypeAgnosticLoss(924)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_checkpoint(released_model, path, equilibrium)
    assert torch.equal(equilibrium.correct_counts, torch.arange(924.0))
    assert torch.equal(equilibrium.identity_weights[:10], torch.ones(10))
    assert torch.equal(equilibrium.identity_weights[10:], weights[10:])
    assert "non-finite" in caplog.text
    with pytest.raises(ValueError, match="924 training identities"):
        load_checkpoint(released_model, path, ArchetypeAgnosticLoss(200))


def small_model(seed=0, se=False):
    cfg = EasyDict(SYNTHETIC.models)
    cfg.face = EasyDict(cfg.face, se=se)
    torch.manual_seed(seed)
    return build_model(cfg)


def own_checkpoint(model, equilibrium, iteration=5):
    return {"format": "aasm", "iteration": iteration, "model": model.state_dict(),
            "equilibrium": equilibrium.state_dict(), "optimizer": {}, "best_val": 0.5,
            "rng": [rng_state()],
            "config": {"seed": 0}}


def test_own_checkpoint_round_trip(tmp_path):
    model, equilibrium = small_model(0), ArchetypeAgnosticLoss(7)
    equilibrium.accumulate(torch.tensor([1, 3]), torch.tensor([2.0, 5.0]), 6)
    path = str(tmp_path / "checkpoint_5.pth.tar")
    save_checkpoint(own_checkpoint(model, equilibrium), path)
    restored, restored_equilibrium = small_model(1), ArchetypeAgnosticLoss(7)
    checkpoint = load_checkpoint(restored, path, restored_equilibrium)
    assert checkpoint["iteration"] == 5 and checkpoint["best_val"] == 0.5
    expected = np.random.random(3)
    np.random.random(5)
    set_rng_state(checkpoint["rng"][0])  # every random stream survives weights_only loading
    assert np.array_equal(np.random.random(3), expected)
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert torch.equal(restored_equilibrium.comparison_counts, equilibrium.comparison_counts)


def test_own_checkpoint_missing_or_extra_keys_are_errors(tmp_path):
    model = small_model()
    state = own_checkpoint(model, ArchetypeAgnosticLoss(3))
    del state["model"]["voice_encoder.pooling.context"]
    save_checkpoint(state, str(tmp_path / "a.pth.tar"))
    with pytest.raises(KeyError, match=r"a\.pth\.tar.*voice_encoder\.pooling\.context"):
        load_checkpoint(model, str(tmp_path / "a.pth.tar"))
    state = own_checkpoint(model, ArchetypeAgnosticLoss(3))
    state["model"]["face_encoder.extra"] = torch.zeros(1)
    save_checkpoint(state, str(tmp_path / "b.pth.tar"))
    with pytest.raises(KeyError, match="face_encoder.extra"):
        load_checkpoint(model, str(tmp_path / "b.pth.tar"))


def test_unknown_checkpoint_format_is_an_error(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=r"x\.pth.*none of the accepted"):
        load_checkpoint(small_model(), str(tmp_path / "x.pth"))


class HoldsCode:
    """Unpickling it would call a function: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.getcwd, ())


def unreadable_files(folder) -> dict[str, str]:
    """{file: what its error must say} for an empty, a truncated, a random-bytes and a code-holding file."""
    torch.save({"format": "aasm", "model": {"w": torch.zeros(1000)}}, folder / "good.pth.tar")
    good = (folder / "good.pth.tar").read_bytes()
    (folder / "empty.pth.tar").write_bytes(b"")
    (folder / "truncated.pth.tar").write_bytes(good[: len(good) // 2])
    (folder / "cut_at_the_end.pth.tar").write_bytes(good[:-10])
    (folder / "random.pth.tar").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"model": HoldsCode()}, folder / "code.pth.tar")
    corrupt = "truncated or corrupt, not a readable checkpoint"
    return {"empty": r"empty file \(0 bytes\)", "truncated": corrupt, "cut_at_the_end": corrupt, "random": corrupt,
            "code": r"refused: the file holds code \(a pickled reference to posix\.getcwd\)"}


def test_unreadable_checkpoints_are_one_line_naming_the_file(tmp_path):
    for name, reason in unreadable_files(tmp_path).items():
        path = str(tmp_path / f"{name}.pth.tar")
        with pytest.raises(CheckpointError, match=rf"^{path}: {reason}") as error:
            load_checkpoint(small_model(), path)
        message = str(error.value)
        assert isinstance(error.value, UserError) and "\n" not in message
        assert "weights_only" not in message and "False" not in message  # never suggests loading code
        with pytest.raises(CheckpointError, match=rf"^models\.face\.pretrained: {path}: {reason}"):
            load_pretrained_face(small_model(), path)


def test_save_checkpoint_is_atomic(tmp_path):
    path = str(tmp_path / "run" / "checkpoint_best.pth.tar")
    save_checkpoint({"iteration": 1}, path)
    with pytest.raises(Exception):
        save_checkpoint({"iteration": 2, "bad": lambda: None}, path)  # cannot be pickled
    assert torch.load(path, weights_only=True) == {"iteration": 1}
    assert os.listdir(tmp_path / "run") == ["checkpoint_best.pth.tar"]


def test_prune_keeps_the_newest_periodic_checkpoints(tmp_path):
    for name in ["checkpoint_1", "checkpoint_6888", "checkpoint_13776", "checkpoint_20664", "checkpoint_best"]:
        (tmp_path / f"{name}.pth.tar").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoint_20664.pth.tar")
    prune_checkpoints(str(tmp_path), keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_13776.pth.tar", "checkpoint_20664.pth.tar",
                                            "checkpoint_best.pth.tar"]
    assert latest_checkpoint(str(tmp_path / "empty")) is None


class FakeState(dict):
    """A state dict built key by key with seeded random tensors."""

    def __init__(self, seed):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def tensor(self, key, *shape):
        self[key] = torch.randn(shape, generator=self.generator)

    def batch_norm(self, prefix, channels):
        for name in ("weight", "bias", "running_mean"):
            self.tensor(prefix + name, channels)
        self[prefix + "running_var"] = torch.rand(channels, generator=self.generator) + 1
        self[prefix + "num_batches_tracked"] = torch.tensor(7)


def face_evolve_state(units, widths, se):
    """A face.evoLVe IR backbone state dict (input_layer, body, output_layer)."""
    state = FakeState(1)
    state.tensor("input_layer.0.weight", widths[0], 3, 3, 3)
    state.batch_norm("input_layer.1.", widths[0])
    state.tensor("input_layer.2.weight", widths[0])
    index, channels = 0, widths[0]
    for count, depth in zip(units, widths):
        for _ in range(count):
            unit = f"body.{index}."
            if channels != depth:
                state.tensor(unit + "shortcut_layer.0.weight", depth, channels, 1, 1)
                state.batch_norm(unit + "shortcut_layer.1.", depth)
            state.batch_norm(unit + "res_layer.0.", channels)
            state.tensor(unit + "res_layer.1.weight", depth, channels, 3, 3)
            state.tensor(unit + "res_layer.2.weight", depth)
            state.tensor(unit + "res_layer.3.weight", depth, depth, 3, 3)
            state.batch_norm(unit + "res_layer.4.", depth)
            if se:
                state.tensor(unit + "res_layer.5.fc1.weight", depth // 16, depth, 1, 1)
                state.tensor(unit + "res_layer.5.fc2.weight", depth, depth // 16, 1, 1)
            index, channels = index + 1, depth
    state.batch_norm("output_layer.0.", channels)
    state.tensor("output_layer.3.weight", 512, channels * 49)
    state.tensor("output_layer.3.bias", 512)
    state.batch_norm("output_layer.4.", 512)
    return dict(state)


def voxceleb_trainer_state(layers, filters, n_mels):
    """A voxceleb_trainer ResNetSE34L model file (`__S__.` backbone, `__L__.` loss)."""
    state = FakeState(2)
    state.tensor("__S__.conv1.weight", filters[0], 1, 7, 7)
    state.batch_norm("__S__.bn1.", filters[0])
    channels = filters[0]
    for stage, (count, width, stride) in enumerate(zip(layers, filters, [1, 2, 2, 1]), start=1):
        for index in range(count):
            block = f"__S__.layer{stage}.{index}."
            state.tensor(block + "conv1.weight", width, channels, 3, 3)
            state.batch_norm(block + "bn1.", width)
            state.tensor(block + "conv2.weight", width, width, 3, 3)
            state.batch_norm(block + "bn2.", width)
            state.tensor(block + "se.fc.0.weight", width // 8, width)
            state.tensor(block + "se.fc.0.bias", width // 8)
            state.tensor(block + "se.fc.2.weight", width, width // 8)
            state.tensor(block + "se.fc.2.bias", width)
            if index == 0 and (stride != 1 or channels != width):
                state.tensor(block + "downsample.0.weight", width, channels, 1, 1)
                state.batch_norm(block + "downsample.1.", width)
            channels = width
    state["__S__.torchfb.spectrogram.window"] = torch.hamming_window(400)
    state.tensor("__S__.torchfb.mel_scale.fb", 257, n_mels)
    state.tensor("__S__.sap_linear.weight", channels, channels)
    state.tensor("__S__.sap_linear.bias", channels)
    state.tensor("__S__.attention", channels, 1)
    state.tensor("__S__.fc.weight", 512, channels)
    state.tensor("__S__.fc.bias", 512)
    state.tensor("__L__.w", 1)
    state.tensor("__L__.b", 1)
    return dict(state)


def checksums(tensors):
    return sorted(round(t.double().sum().item(), 6) for t in tensors)


@pytest.mark.parametrize("se", [False, True])
def test_pretrained_face_backbone(tmp_path, se, caplog):
    model = small_model(se=se)
    face = SYNTHETIC.models.face
    state = face_evolve_state(face.units, face.widths, se)
    torch.save(state, tmp_path / "backbone_ir.pth")
    head = model.face_encoder.head.hidden.weight.clone()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_pretrained_face(model, str(tmp_path / "backbone_ir.pth"))
    ours = model.state_dict()
    assert torch.equal(ours["face_encoder.stem.conv.weight"], state["input_layer.0.weight"])
    assert torch.equal(ours["face_encoder.body.2.shortcut.bn.running_var"], state["body.2.shortcut_layer.1.running_var"])
    assert torch.equal(ours["face_encoder.body.3.residual.prelu.weight"], state["body.3.res_layer.2.weight"])
    if se:
        assert torch.equal(ours["face_encoder.body.1.residual.se.expand.weight"],
                           state["body.1.res_layer.5.fc2.weight"].flatten(1))
    # Every backbone tensor came from the file; the head kept its own.
    backbone = [v for k, v in ours.items() if k.startswith("face_encoder.") and ".head." not in k]
    assert checksums(backbone) == checksums(v for k, v in state.items() if not k.startswith("output_layer."))
    assert torch.equal(model.face_encoder.head.hidden.weight, head)
    assert "output_layer.3.weight" in caplog.text


def test_pretrained_voice_backbone(tmp_path, caplog):
    model = small_model()
    voice = SYNTHETIC.models.voice
    state = voxceleb_trainer_state(voice.layers, voice.filters, voice.n_mels)
    torch.save(state, tmp_path / "baseline_lite_ap.model")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_pretrained_voice(model, str(tmp_path / "baseline_lite_ap.model"))
    ours = model.state_dict()
    assert torch.equal(ours["voice_encoder.stem.conv.weight"], state["__S__.conv1.weight"])
    assert torch.equal(ours["voice_encoder.body.stage3.0.shortcut.conv.weight"], state["__S__.layer3.0.downsample.0.weight"])
    assert torch.equal(ours["voice_encoder.body.stage2.0.se.reduce.bias"], state["__S__.layer2.0.se.fc.0.bias"])
    assert torch.equal(ours["voice_encoder.pooling.context"], state["__S__.attention"])
    backbone = [v for k, v in ours.items() if k.startswith("voice_encoder.") and ".head." not in k]
    used = [v for k, v in state.items() if k.startswith("__S__.") and not k.startswith("__S__.fc.")]
    assert checksums(backbone) == checksums(used)
    for key in ("__S__.fc.weight", "__L__.w"):
        assert key in caplog.text


def test_pretrained_backbone_errors(tmp_path):
    model = small_model()
    with pytest.raises(FileNotFoundError, match="models.face.pretrained"):
        load_pretrained_face(model, str(tmp_path / "absent.pth"))
    with pytest.raises(FileNotFoundError, match="models.voice.pretrained"):
        load_pretrained_voice(model, str(tmp_path / "absent.model"))
    # A deeper backbone than the config builds: its extra units are an error, not silently dropped.
    face = SYNTHETIC.models.face
    torch.save(face_evolve_state([2, 1, 1, 1], face.widths, False), tmp_path / "deeper.pth")
    with pytest.raises(KeyError, match="face_encoder.body.4"):
        load_pretrained_face(model, str(tmp_path / "deeper.pth"))
    state = voxceleb_trainer_state(SYNTHETIC.models.voice.layers, SYNTHETIC.models.voice.filters, 40)
    state["__S__.instancenorm.weight"] = torch.ones(40)
    torch.save(state, tmp_path / "odd.model")
    with pytest.raises(KeyError, match="__S__.instancenorm.weight"):
        load_pretrained_voice(model, str(tmp_path / "odd.model"))
