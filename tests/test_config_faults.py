"""Hostile and mistaken configs given to train.py and test.py: one line naming the file, line or key, before any
work; the same cases in-process (fast) and, for some, as the command a user runs (subprocess)."""
import os
import subprocess
import sys

import pytest
import torch
import yaml

from config import loader as config
from config import ConfigError, load_config
import train
from helpers import ROOT, SYNTHETIC

# 9 levels of 9 aliases: 9**9 (387 million) strings once expanded, 750 bytes on disk.
BOMB = "dataset:\n  split_ranges:\n    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"    l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]\n" for level in range(1, 9)
) + "    val: [*l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8]\n"


def write(folder, name: str, text: str | bytes) -> str:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def cases(tmp_path) -> dict[str, tuple[list[str], list[str]]]:
    """{case: (train.py arguments, fragments of the one error line)}."""
    plain = write(tmp_path, "plain.yaml", "exp_name: plain\n")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    return {
        "alias bomb": (["--cfg", write(tmp_path, "bomb.yaml", BOMB)], ["bomb.yaml, line 4", "aliases (*l0)"]),
        "key twice": (["--cfg", write(tmp_path, "twice.yaml", "training:\n  lr: 0.1\n  momentum: 0.5\n  lr: 0.2\n")],
                      ["twice.yaml, line 4", "key 'lr' written twice", "first on line 2"]),
        "binary file": (["--cfg", write(tmp_path, "binary.yaml", bytes(range(128, 256)) * 3)],
                        ["binary.yaml: not a text (UTF-8) file"]),
        "folder": (["--cfg", str(folder)], ["folder.yaml: is a folder"]),
        "only exp_name": (["--cfg", plain], ["config key 'dataset.list_dir' is not set"]),
        "absolute base": (["--cfg", write(tmp_path, "abs.yaml", "base: /etc/passwd\n")],
                          ["abs.yaml: 'base' must name a .yaml file", "abs.yaml -> /etc/passwd"]),
        "base not yaml": (["--cfg", write(tmp_path, "up.yaml", "base: " + "../" * 30 + "etc/hostname\n")],
                          ["up.yaml: 'base' must name a .yaml file", "up.yaml -> /etc/hostname"]),
        "python tag": (["--cfg", SYNTHETIC, "--opts", f"output_dir=!!python/object/apply:os.mkdir [{tmp_path}/made]"],
                       ["--opts 'output_dir=!!python/object/apply:os.mkdir", "no !!python or other tags"]),
        "not yaml": (["--cfg", SYNTHETIC, "--opts", "training.lr_steps=[1,"], ["--opts 'training.lr_steps=[1,'",
                                                                            "not valid YAML: line 1, column 4"]),
        "wrong type": (["--cfg", SYNTHETIC, "--opts", "training.max_iter=many"],
                       ["--opts: config key 'training.max_iter' expects int, got str 'many'"]),
        "split range of numbers": (["--cfg", SYNTHETIC, "--opts", "dataset.split_ranges.val=[1,2]"],
                                   ["'dataset.split_ranges.val[0]' expects str, got int 1"]),
        "split range of one id": (["--cfg", SYNTHETIC, "--opts", "dataset.split_ranges.val=[id00001]"],
                                  ["'dataset.split_ranges.val' must be [first_id, last_id]"]),
        "huge seed": (["--cfg", SYNTHETIC, "--opts", "seed=1e20"], ["'seed' must be at least 0 and at most 4294967295"]),
        "tiny clip": (["--cfg", SYNTHETIC, "--opts", "dataset.clip_seconds=1e-9"],
                      ["'dataset.clip_seconds' is 1e-09 s, 0 samples", "needs at least 512"]),
        "clip shorter than the crops": (["--cfg", SYNTHETIC, "--opts", "dataset.clip_seconds=1.5"],
                                        ["'training.crop_seconds' [1.0, 2.0] reaches beyond dataset.clip_seconds"]),
        "infinite lr": (["--cfg", SYNTHETIC, "--opts", "training.lr=.inf"], ["'training.lr' expects finite numbers"]),
        "infinite in a list": (["--cfg", write(tmp_path, "inf.yaml", "training:\n  crop_seconds: [1.0, .inf]\n")],
                               ["inf.yaml: config key 'training.crop_seconds' expects finite numbers"]),
        "nan timeout": (["--cfg", SYNTHETIC, "--opts", "training.timeout_minutes=.nan"],
                        ["'training.timeout_minutes' must be above 0, got nan"]),
        "unknown device": (["--cfg", SYNTHETIC, "--opts", "device=gpu"], ["'device' must be auto, cpu, cuda or cuda:N"]),
        "absent gpu": (["--cfg", SYNTHETIC, "--opts", "device=cuda:7"],
                       ["config key 'device' is 'cuda:7', but this machine has"]),
    }


NAMES = ["alias bomb", "key twice", "binary file", "folder", "only exp_name", "absolute base", "base not yaml",
         "python tag", "not yaml", "wrong type", "split range of numbers", "split range of one id", "huge seed",
         "tiny clip", "clip shorter than the crops", "infinite lr", "infinite in a list", "nan timeout",
         "unknown device", "absent gpu"]
SUBPROCESS = {("alias bomb", "train.py"), ("python tag", "test.py")}  # the rest in the slow run


def test_every_case_is_listed(tmp_path):
    assert sorted(cases(tmp_path)) == sorted(NAMES)


def check_line(stderr: str, fragments: list[str]) -> None:
    assert "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


@pytest.mark.parametrize("name", NAMES)
def test_train_refuses_in_one_line(name, tmp_path, capsys):
    if name == "absent gpu" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    argv, fragments = cases(tmp_path)[name]
    with pytest.raises(SystemExit) as stop:
        train.main(argv + ([] if "--opts" in argv else ["--opts"]) + [f"output_dir={tmp_path}/runs"])
    assert stop.value.code == 1
    check_line(capsys.readouterr().err, fragments)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "made").exists()  # nothing done


@pytest.mark.parametrize("name, script", [pytest.param(n, s, marks=[] if (n, s) in SUBPROCESS else pytest.mark.slow)
                                          for n in NAMES for s in ("train.py", "test.py")])
def test_the_commands_refuse_in_one_line(name, script, tmp_path):
    if name == "absent gpu" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if script == "test.py" and name == "clip shorter than the crops":
        pytest.skip("the crops are training's")
    argv, fragments = cases(tmp_path)[name]
    process = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 1
    check_line(process.stderr, fragments)
    assert not (tmp_path / "made").exists()


def test_the_bomb_is_small_and_refused_before_it_expands(tmp_path):
    assert len(BOMB) <= 750
    with pytest.raises(ConfigError, match="aliases"):
        load_config(write(tmp_path, "bomb.yaml", BOMB))


def test_opts_apply_in_order_and_an_empty_section_drops_nothing():
    cfg = load_config(SYNTHETIC, ["training.lr=0.5", "training={}", "training.max_iter=7", "training={momentum: 0.1}"])
    assert (cfg.training.lr, cfg.training.max_iter, cfg.training.momentum) == (0.5, 7, 0.1)
    assert load_config(SYNTHETIC, ["training.lr=0.5", "training.lr=0.25"]).training.lr == 0.25
    with pytest.raises(ConfigError, match="'training' is a section"):
        load_config(SYNTHETIC, ["training=3"])


def test_an_empty_or_missing_section_keeps_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "empty.yaml", "training:\n  # lr: 0.5\nmodels:\n  face:\n"))
    assert cfg.training.lr == 0.01 and cfg.models.face.units == [3, 8, 36, 3] and cfg.testing.bootstrap == 1000
    with pytest.raises(ConfigError, match=r"list.yaml: the top level must be a mapping"):
        load_config(write(tmp_path, "list.yaml", "- training\n"))


def test_project_configs_keep_their_bases_in_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CONFIG_FOLDER", str(tmp_path / "config"))
    (tmp_path / "config").mkdir()
    write(tmp_path, "outside.yaml", "seed: 1\n")
    write(tmp_path / "config", "inside.yaml", "seed: 2\n")
    escaping = write(tmp_path / "config", "escaping.yaml", "base: ../outside.yaml\n")
    with pytest.raises(ConfigError, match=r"escaping.yaml: 'base' points outside .*config: .*escaping.yaml -> "):
        load_config(escaping)
    assert load_config(write(tmp_path / "config", "ok.yaml", "base: inside.yaml\n")).seed == 2
    assert load_config(write(tmp_path, "user.yaml", "base: config/inside.yaml\n")).seed == 2  # a user's own file


def test_a_long_base_chain_is_refused_naming_it(tmp_path):
    for k in range(40):
        write(tmp_path, f"c{k}.yaml", f"base: c{k + 1}.yaml\n")
    write(tmp_path, "c40.yaml", "seed: 1\n")
    with pytest.raises(ConfigError, match=r"more than 32 configs in the 'base' chain: .*c0.yaml -> .*c1.yaml"):
        load_config(str(tmp_path / "c0.yaml"))


def test_project_configs_use_no_aliases_and_still_load():
    for folder, _, names in os.walk(os.path.join(ROOT, "config")):
        for name in (n for n in names if n.endswith(".yaml")):  # config/ also holds the loader's Python
            load_config(os.path.join(folder, name))
            with open(os.path.join(folder, name)) as f:
                assert not [e for e in yaml.parse(f) if isinstance(e, yaml.AliasEvent)]
