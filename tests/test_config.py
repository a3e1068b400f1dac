import logging

import pytest
import yaml

from config import ConfigError, load_config
from utils.run_folder import config_to_dict
from utils.errors import CheckpointError
from helpers import SYNTHETIC, save_config


def write(tmp_path, tree):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_released_config_has_the_papers_hyper_parameters():
    cfg = load_config("config/cfg.yaml")
    t = cfg.training
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay) == (20, 0.01, 0.9, 0.0001)
    assert (t.lr_steps, t.max_iter, t.ie_start_iter, t.ie_refresh_iter) == ([6888, 9888], 27000, 6440, 920)
    assert (t.bcr_start_iter, t.temperature, t.bcr_anchor_margin, t.bcr_margin, t.bcr_hinge) == (6888, 0.5, 0.15, 0.2, True)
    assert cfg.models.face.units == [3, 8, 36, 3] and cfg.models.voice.layers == [3, 4, 6, 3]


def test_partial_file_is_filled_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, {"training": {"lr": 0.5}}))
    assert cfg.training.lr == 0.5 and cfg.training.batch_size == 20 and cfg.dataset.image_size == 112


def test_misspelt_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'training.weight_decy'.*did you mean 'training.weight_decay'"):
        load_config(write(tmp_path, {"training": {"weight_decy": 0.1}}))
    with pytest.raises(ConfigError, match=r"did you mean 'dataset.list_dir'"):
        load_config("config/cfg.yaml", ["dataset.lists_dir=/x"])


def test_opts_override_with_type_checking():
    cfg = load_config("config/cfg.yaml", ["training.lr=0.02", "training.lr_steps=[10, 20]", "training.bcr_hinge=false",
                                          "testing.checkpoint=/tmp/x.pth.tar", "training.weight_decay=0"])
    assert cfg.training.lr == 0.02 and cfg.training.lr_steps == [10, 20] and cfg.training.bcr_hinge is False
    assert cfg.testing.checkpoint == "/tmp/x.pth.tar"
    assert isinstance(cfg.training.weight_decay, float)
    with pytest.raises(ConfigError, match="training.batch_size.*expects int"):
        load_config("config/cfg.yaml", ["training.batch_size=abc"])
    with pytest.raises(ConfigError, match="training.amp.*one of"):
        load_config("config/cfg.yaml", ["training.amp=fp8"])
    # YAML reads a bare `off` as false: the choice it names is meant
    assert load_config("config/synthetic.yaml", ["training.amp=off"]).training.amp == "off"
    with pytest.raises(ConfigError, match="training.amp.*expects str, got bool True"):
        load_config("config/cfg.yaml", ["training.amp=on"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("config/cfg.yaml", ["training.lr"])


def test_section_given_a_scalar_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'training' is a section"):
        load_config(write(tmp_path, {"training": 3}))


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config("config/synthetic.yaml", ["training.lr=0.05"])
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg


@pytest.mark.parametrize("opt, value", [("training.lr=1e-3", 0.001), ("training.lr=1E-3", 0.001),
                                        ("training.lr=5e0", 5.0), ("training.max_iter=1e4", 10000),
                                        ("training.lr_steps=[1e3, 2e3]", [1000, 2000]),
                                        ("training.crop_seconds=[1, 2]", [1.0, 2.0])])
def test_numbers_in_any_notation_are_numbers(opt, value):
    key, _ = opt.split("=")
    section, name = key.split(".")
    got = load_config("config/cfg.yaml", [opt])[section][name]
    assert got == value and type(got) is type(value)
    assert all(type(v) is type(value[0]) for v in got) if isinstance(value, list) else True


def test_numbers_written_as_text_in_a_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("training:\n  lr: 1e-3\n  lr_steps: [1e3, 2e3]\n")  # YAML 1.1 reads both as strings
    t = load_config(str(path)).training
    assert t.lr == 0.001 and t.lr_steps == [1000, 2000]


@pytest.mark.parametrize("opt, message", [
    ("training.batch_size=1", r"'training.batch_size' must be at least 2 \(the loss needs .*negatives\), got 1"),
    ("training.batch_size=0", r"'training.batch_size' must be at least 2"),
    ("training.max_iter=0", r"'training.max_iter' must be at least 1, got 0"),
    ("training.lr=-0.01", r"'training.lr' must be above 0, got -0.01"),
    ("training.lr=0", r"'training.lr' must be above 0"),
    ("training.lr=nan", r"'training.lr' must be above 0, got nan"),
    ("training.lr_steps=[9888, 6888]", r"'training.lr_steps' must be increasing"),
    ("training.crop_seconds=[5.0, 2.5]", r"'training.crop_seconds' must be \[shortest, longest\]"),
    ("training.crop_seconds=[2.5]", r"'training.crop_seconds' must be \[shortest, longest\]"),
    ("training.save_iter=0", r"'training.save_iter' must be at least 1"),
    ("training.weight_decay=-1e-4", r"'training.weight_decay' must be at least 0"),
    ("dataset.num_workers=-1", r"'dataset.num_workers' must be at least 0"),
    ("dataset.match_n=[2, 1]", r"'dataset.match_n' must be at least 2"),
    ("testing.bootstrap=0", r"'testing.bootstrap' must be at least 1"),
    ("seed=-1", r"'seed' must be at least 0"),
    ("training.max_iter=2.5", r"'training.max_iter' expects int, got float 2.5"),
    ("training.lr_steps=[100, x]", r"'training.lr_steps\[1\]' expects int, got str 'x'"),
])
def test_invalid_values_are_config_errors_naming_the_key(opt, message):
    with pytest.raises(ConfigError, match="^--opts: config key " + message):
        load_config("config/cfg.yaml", [opt])


def test_invalid_value_in_a_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.yaml: config key 'training.batch_size' must be at least 2"):
        load_config(write(tmp_path, {"training": {"batch_size": 1}}))


def test_a_former_key_name_loads_with_a_warning_naming_the_new_key(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("training:\n  regauge_iter: 12\n  H: false\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(str(old), ["training.weighted_enabled=false"])
    assert (cfg.training.bcr_start_iter, cfg.training.bcr_hinge, cfg.training.ie_enabled) == (12, False, False)
    assert "'training.regauge_iter' is now 'training.bcr_start_iter'" in caplog.text
    assert "--opts: config key 'training.weighted_enabled' is now 'training.ie_enabled'" in caplog.text
    assert "regauge_iter" not in cfg.training
    both = tmp_path / "both.yaml"
    both.write_text("training:\n  temp: 0.4\n  temperature: 0.4\n")
    with pytest.raises(ConfigError, match="'training.temp' and 'training.temperature' are the same key"):
        load_config(str(both))


def test_a_checkpoints_config_with_former_key_names_resumes(tmp_path):
    from config.resume import check_resume_config

    cfg = load_config(SYNTHETIC)
    saved = config_to_dict(cfg)
    saved["training"] = {("regauge_iter" if k == "bcr_start_iter" else k): v for k, v in saved["training"].items()}
    assert check_resume_config(saved, cfg, set(), "old.pth.tar") == []
    saved["training"]["regauge_iter"] += 1
    with pytest.raises(CheckpointError, match="training.bcr_start_iter"):
        check_resume_config(saved, cfg, set(), "old.pth.tar")
