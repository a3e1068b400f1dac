import pytest
import yaml

from utils.config import ConfigError, load_config, save_config


def write(tmp_path, tree):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_released_config_has_the_papers_hyper_parameters():
    cfg = load_config("config/cfg.yaml")
    t = cfg.training
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay) == (20, 0.01, 0.9, 0.0001)
    assert (t.lr_steps, t.max_iter, t.warm_up, t.weight_update_iter) == ([6888, 9888], 27000, 6440, 920)
    assert (t.regauge_iter, t.temp, t.m_u, t.m_l, t.H) == (6888, 0.5, 0.15, 0.2, True)
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
    cfg = load_config("config/cfg.yaml", ["training.lr=0.02", "training.lr_steps=[10, 20]", "training.H=false",
                                          "testing.checkpoint=/tmp/x.pth.tar", "training.weight_decay=0"])
    assert cfg.training.lr == 0.02 and cfg.training.lr_steps == [10, 20] and cfg.training.H is False
    assert cfg.testing.checkpoint == "/tmp/x.pth.tar"
    assert isinstance(cfg.training.weight_decay, float)
    with pytest.raises(ConfigError, match="training.batch_size.*expects int"):
        load_config("config/cfg.yaml", ["training.batch_size=abc"])
    with pytest.raises(ConfigError, match="training.amp.*one of"):
        load_config("config/cfg.yaml", ["training.amp=fp8"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config("config/cfg.yaml", ["training.lr"])


def test_section_given_a_scalar_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'training' is a section"):
        load_config(write(tmp_path, {"training": 3}))


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config("config/synthetic.yaml", ["training.lr=0.05"])
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg
