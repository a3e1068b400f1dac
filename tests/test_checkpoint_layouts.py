"""Every checkpoint layout real files come in, built from our own encoders renamed to the upstream names.

The upstream names come from inverting the rename tables of models/layouts.py, so a file loads back
into an encoder that must give the same outputs as the one it was made from.
"""
import logging
import re
from unittest import mock

import pytest
import torch

from test_checkpoint import small_model
from models import layouts
from models.layouts import CheckpointLayoutError, load_checkpoint, load_pretrained_face, load_pretrained_voice
from utils import checkpoint as ckpt

LOGGER = "models.layouts"
SERIALIZATIONS = ("zip", "legacy-gpu")


def inverted(rules):
    """(upstream pattern, replacement) of a rename table read backwards: our names -> upstream names."""
    inverse = []
    for pattern, replacement in rules:
        groups = iter(range(1, 10))
        upstream = re.sub(r"\(\\d\+?\)", lambda _: f"\\{next(groups)}", pattern).replace("\\.", ".").rstrip("$")
        ours = re.sub(r"\\\\(\d)", r"(\\d+)", re.escape(replacement)) + ("$" if pattern.endswith("$") else "")
        inverse.append((ours, upstream))
    return inverse


def upstream_names(state, prefix, rules, new_prefix):
    """Keys of `state` under `prefix` renamed by the inverted table, under `new_prefix`."""
    renamed = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for pattern, replacement in inverted(rules):
            new, hits = re.subn("^" + pattern, replacement, rest)
            if hits:
                # face.evoLVe's SE gates are 1x1 convolutions
                renamed[new_prefix + new] = value[..., None, None] if ".res_layer.5." in new else value
                break
        else:
            raise AssertionError(f"no rule renames {key}")
    return renamed


def backbone(model, encoder):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{encoder}.head.")}


def face_evolve_file(model):
    state = upstream_names(backbone(model, "face_encoder"), "face_encoder.", layouts.FACE_BACKBONE, "")
    state["output_layer.3.weight"] = torch.zeros(4, 4)  # the embedding layer the method does not use
    return state


def resnetse34l_keys(model):
    state = upstream_names(backbone(model, "voice_encoder"), "voice_encoder.", layouts.VOICE_BACKBONE, "")
    state["fc.weight"], state["fc.bias"] = torch.zeros(4, 4), torch.zeros(4)
    return state


def speaker_net(model):
    state = {"__S__." + k: v for k, v in resnetse34l_keys(model).items()}
    state["__L__.w"], state["__L__.b"] = torch.ones(1), torch.zeros(1)
    return state


def released_state_dict(model):
    state = model.state_dict()
    released = {"corr_num": torch.zeros(3), "compare_sum": torch.zeros(3),
                "normalize.conv.weight": torch.full((3, 1, 1, 1), 1 / 127.5),
                "normalize.conv.bias": torch.full((3,), -1.0)}
    for network, encoder in (("vNet", "face_encoder"), ("aNet", "voice_encoder")):
        rules = layouts.FACE_BACKBONE if network == "vNet" else layouts.VOICE_BACKBONE
        released.update(upstream_names(backbone(model, encoder), f"{encoder}.", rules, f"{network}.model."))
        released.update(upstream_names(state, f"{encoder}.head.", layouts.HEAD, f"{network}.fc."))
    return released


def data_parallel(state):
    return {"module." + k: v for k, v in state.items()}


def save(obj, path, serialization):
    """`zip`: today's format. `legacy-gpu`: torch 1.x's non-zip format with every storage tagged as saved
    on cuda:0 (torch.save asks torch.serialization.location_tag for the tag), so loading must map to the CPU."""
    if serialization == "zip":
        torch.save(obj, path)
    else:
        with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
            torch.save(obj, path, _use_new_zipfile_serialization=False)
        with open(path, "rb") as f:
            assert b"cuda:0" in f.read()
    return str(path)


@pytest.fixture(scope="module")
def source():
    model = small_model(seed=3, se=True).eval()
    torch.manual_seed(0)
    images, waves = torch.rand(2, 3, 64, 64) * 255, torch.randn(2, 8000) * 3000
    with torch.no_grad():
        return model, images, waves, model.encode_face(images), model.encode_voice(waves)


def assert_same_face(model, source):
    _, images, _, face, _ = source
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_face(images), face, rtol=0, atol=0)


def assert_same_voice(model, source):
    _, _, waves, _, voice = source
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_voice(waves), voice, rtol=0, atol=0)


def copy_heads(target, model):
    """Pretrained files hold backbones only: give the target the source's heads to compare outputs."""
    heads = {k: v for k, v in model.state_dict().items() if ".head." in k}
    target.load_state_dict(heads, strict=False)


VOICE_FILES = {  # layout named in the log -> file contents from a state_dict (with `module.` or not)
    "voxceleb_trainer SpeakerNet": lambda s: s,
    "'model_state_dict'": lambda s: {"model_state_dict": s, "optimizer_state_dict": {"state": {}, "param_groups": []},
                                     "scheduler_state_dict": {"step_size": 5, "last_epoch": 3}, "epoch": 3},
    "'model'": lambda s: {"model": s},
    "plain ResNetSE34L keys": lambda s: s,
}


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("layout", sorted(VOICE_FILES))
def test_voice_backbone_layouts(tmp_path, source, layout, prefix, serialization, caplog):
    model = source[0]
    state = resnetse34l_keys(model) if layout.startswith("plain") else speaker_net(model)
    path = save(VOICE_FILES[layout](data_parallel(state) if prefix else state), tmp_path / "voice.model",
                serialization)
    target = small_model(seed=9, se=True)
    copy_heads(target, model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_pretrained_voice(target, path)
    assert_same_voice(target, source)
    lines = [r.getMessage() for r in caplog.records if "layout:" in r.getMessage()]
    assert len(lines) == 1 and layout in lines[0]
    assert ("'module.' prefix stripped" in lines[0]) == prefix


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
@pytest.mark.parametrize("prefix", [False, True])
def test_face_backbone_layouts(tmp_path, source, prefix, serialization, caplog):
    model = source[0]
    state = face_evolve_file(model)
    path = save(data_parallel(state) if prefix else state, tmp_path / "backbone_ir.pth", serialization)
    target = small_model(seed=9, se=True)
    copy_heads(target, model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_pretrained_face(target, path)
    assert_same_face(target, source)
    assert ("'module.' prefix stripped" in caplog.text) == prefix and "face.evoLVe backbone" in caplog.text


RELEASED_FILES = {
    "the release's checkpoint": lambda s: {"start_it": 10, "stage": 1, "state_dict": s, "optimizer": {}},
    "the release's bare state_dict": lambda s: s,
}


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("layout", sorted(RELEASED_FILES))
def test_released_checkpoint_layouts(tmp_path, source, layout, prefix, serialization, caplog):
    state = released_state_dict(source[0])
    path = save(RELEASED_FILES[layout](data_parallel(state) if prefix else state), tmp_path / "best.pth.tar",
                serialization)
    target = small_model(seed=9, se=True)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_checkpoint(target, path)
    assert_same_face(target, source)
    assert_same_voice(target, source)
    line = next(r.getMessage() for r in caplog.records if "layout:" in r.getMessage())
    assert line.endswith(layout + (", 'module.' prefix stripped" if prefix else ""))


@pytest.mark.parametrize("serialization", SERIALIZATIONS)
def test_own_checkpoint_with_data_parallel_prefix(tmp_path, source, serialization, caplog):
    model = source[0]
    path = save({"format": "aasm", "iteration": 1, "model": data_parallel(model.state_dict())},
                tmp_path / "checkpoint_1.pth.tar", serialization)
    target = small_model(seed=9, se=True)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        load_checkpoint(target, path)
    assert_same_face(target, source)
    assert_same_voice(target, source)
    assert "this project's checkpoint, 'module.' prefix stripped" in caplog.text


def test_legacy_gpu_file_needs_the_cpu_mapping(tmp_path):
    """The fixture really is a GPU file: without map_location it cannot load on this CPU-only machine."""
    path = save({"a": torch.ones(2)}, tmp_path / "legacy.pth", "legacy-gpu")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)
    assert torch.equal(ckpt.read_checkpoint(path)["a"], torch.ones(2))


def test_nothing_maps_names_file_layouts_and_first_keys(tmp_path, source):
    foreign = {f"encoder.block{i}.weight": torch.zeros(1) for i in range(40)}
    path = save(foreign, tmp_path / "foreign.pth", "zip")
    model = small_model()
    for load, layout in ((load_checkpoint, "start_it"), (load_pretrained_face, "face.evoLVe"),
                         (load_pretrained_voice, "__S__")):
        with pytest.raises(CheckpointLayoutError) as error:
            load(model, path)
        message = str(error.value)
        assert message.startswith(path) and layout in message and "'module.' prefix" in message
        assert "encoder.block0.weight" in message and "encoder.block39.weight" not in message
        assert "(40 in all)" in message and "\n" not in message
