"""Config inheritance (`base:`), the ablation configs, the InfoNCE objective, AaSM alone, train.py --seeds."""
import glob
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from config import ConfigError, load_config
from helpers import ROOT, save_config
from losses import create_loss

ABLATION = os.path.join(ROOT, "config", "ablation")
ARMS = {"aasm": dict(bcr_enabled=False, ie_enabled=False, objective="aasm"), "aasm_bcr": dict(ie_enabled=False, bcr_enabled=True),
        "aasm_bcr_ie": dict(ie_enabled=True, bcr_enabled=True, bcr_gradient="full", objective="aasm"),
        "release": dict(bcr_gradient="none", ie_application="batch", bcr_enabled=True),
        "ie_mean": dict(ie_normalization="mean", ie_application="row"), "ie_broadcast": dict(ie_application="batch"),
        "infonce": dict(objective="infonce"),
        "bcr_nonzero": dict(ie_enabled=False, bcr_enabled=True, bcr_row_average="nonzero"),
        "bcr_matched_weight": dict(ie_enabled=False, bcr_row_average="nonzero", bcr_weight=27.0)}
# Arms on a corpus of their own (synthetic only): the synthetic corpus with off-archetype identities.
OFF_ARCHETYPE_ARMS = {"off_archetype_aasm": ARMS["aasm"], "off_archetype_aasm_bcr_ie": ARMS["aasm_bcr_ie"]}
# Beyond its arm's flags, a config on VoxCeleb1 may restore the release's schedule.
VOX1_EXTRA = {"release": dict(plateau_patience=5)}


def write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_base_chain_overrides_in_order_and_resolves_relative_to_the_file(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    write(tmp_path / "root.yaml", {"exp_name": "root", "training": {"lr": 0.5, "max_iter": 7}})
    write(tmp_path / "a" / "middle.yaml", {"base": "../root.yaml", "training": {"lr": 0.25}, "seed": 3})
    leaf = write(tmp_path / "a" / "b" / "leaf.yaml", {"base": "../middle.yaml", "exp_name": "leaf"})
    cfg = load_config(leaf, ["seed=4"])
    assert (cfg.exp_name, cfg.training.lr, cfg.training.max_iter, cfg.seed) == ("leaf", 0.25, 7, 4)
    assert "base" not in cfg  # a resolved config stands alone
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg


def test_base_errors_name_the_files(tmp_path):
    one = write(tmp_path / "one.yaml", {"base": "two.yaml"})
    write(tmp_path / "two.yaml", {"base": "one.yaml"})
    with pytest.raises(ConfigError, match=r"two.yaml: 'base' makes a cycle: .*one.yaml -> .*two.yaml -> .*one.yaml"):
        load_config(one)
    with pytest.raises(ConfigError, match=r"self.yaml: 'base' makes a cycle"):
        load_config(write(tmp_path / "self.yaml", {"base": "./self.yaml"}))
    with pytest.raises(ConfigError, match=r"missing.yaml: base config not found: .*nowhere.yaml"):
        load_config(write(tmp_path / "missing.yaml", {"base": "nowhere.yaml"}))
    with pytest.raises(ConfigError, match=r"number.yaml: config key 'base' expects a path"):
        load_config(write(tmp_path / "number.yaml", {"base": 3}))
    write(tmp_path / "bad_base.yaml", {"training": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match=r"bad_base.yaml: unknown config key 'training.lrr'"):
        load_config(write(tmp_path / "child.yaml", {"base": "bad_base.yaml"}))
    with pytest.raises(ConfigError, match="unknown config key 'base'"):
        load_config(write(tmp_path / "plain.yaml", {}), ["base=x.yaml"])


def test_ablation_configs_are_exactly_the_arms_on_both_bases():
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ABLATION, "*.yaml")))
    assert names == sorted([f"{corpus}_{arm}.yaml" for corpus in ("synthetic", "vox1") for arm in ARMS] +
                           [f"synthetic_{arm}.yaml" for arm in OFF_ARCHETYPE_ARMS])
    for corpus, base in (("synthetic", "synthetic.yaml"), ("vox1", "cfg.yaml")):
        reference = load_config(os.path.join(ROOT, "config", base))
        for arm, flags in ARMS.items():
            flags = {**flags, **(VOX1_EXTRA.get(arm, {}) if corpus == "vox1" else {})}
            cfg = load_config(os.path.join(ABLATION, f"{corpus}_{arm}.yaml"))
            assert cfg.exp_name == f"{corpus}_{arm}"
            assert {k: cfg.training[k] for k in flags} == flags
            changed = {k for k in cfg.training if cfg.training[k] != reference.training[k]}
            assert changed <= set(flags)  # nothing else departs from the base config
            assert cfg.models == reference.models and cfg.dataset == reference.dataset
    assert load_config(os.path.join(ABLATION, "synthetic_aasm_bcr_ie.yaml")).training == \
        load_config(os.path.join(ROOT, "config", "synthetic.yaml")).training  # the default method


def test_off_archetype_arms_change_only_the_corpus_and_their_arm():
    reference = load_config(os.path.join(ROOT, "config", "synthetic.yaml"))
    roots = set()
    for arm, flags in OFF_ARCHETYPE_ARMS.items():
        cfg = load_config(os.path.join(ABLATION, f"synthetic_{arm}.yaml"))
        assert cfg.exp_name == f"synthetic_{arm}" and cfg.dataset.synthetic.off_archetype_fraction == 0.3
        assert {k: cfg.training[k] for k in flags} == flags
        assert {k for k in cfg.training if cfg.training[k] != reference.training[k]} <= set(flags)
        assert cfg.models == reference.models
        paths = [cfg.dataset[k] for k in ("audio_data_dir", "image_data_dir", "meta_file", "list_dir", "lmdb_dir")]
        root = cfg.dataset.synthetic.root
        assert root != reference.dataset.synthetic.root and all(p.startswith(root + "/") for p in paths)
        roots.add(root)
    assert len(roots) == 1  # both arms train and test on one corpus


def embeddings(size=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 8, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(4)]


def test_infonce_is_symmetric_cross_entropy_over_cosines_on_the_three_pairs():
    cfg = load_config(os.path.join(ABLATION, "synthetic_infonce.yaml")).training
    face, face_aux, voice, voice_aux = rows = embeddings()
    out = create_loss(cfg, 1).terms_of(*rows, torch.full((6,), 7.0), cfg.bcr_start_iter)

    def symmetric(x, y):
        logits = F.normalize(y, dim=-1) @ F.normalize(x, dim=-1).T / cfg.infonce_temperature
        target = torch.arange(6)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    reference = symmetric(face, voice) + symmetric(face, face_aux) + symmetric(voice, voice_aux)
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-6)
    grads = torch.autograd.grad(out.loss, rows)
    expected = torch.autograd.grad(reference, rows)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert out.terms["infonce_cross"].item() == pytest.approx(symmetric(face, voice).item(), rel=1e-6)
    # IE still counts: k_i = voice anchors' faces ranked below their own face.
    cosines = F.normalize(voice, dim=-1) @ F.normalize(face, dim=-1).T
    assert out.correct.tolist() == (cosines < cosines.diagonal()[:, None]).sum(1).tolist()


def test_aasm_alone_is_the_aasm_sum_at_every_iteration():
    full = load_config(os.path.join(ABLATION, "synthetic_aasm_bcr_ie.yaml")).training
    alone = load_config(os.path.join(ABLATION, "synthetic_aasm.yaml")).training
    rows = embeddings()
    weights = torch.full((6,), 3.0)
    before = create_loss(full, 1).terms_of(*rows, weights, full.bcr_start_iter - 1)
    after = create_loss(alone, 1).terms_of(*rows, weights, full.bcr_start_iter)
    aasm_sum = sum(before.terms[f"aasm_{p}"] for p in ("cross", "face", "voice"))
    assert after.loss.item() == pytest.approx(before.loss.item()) == pytest.approx(aasm_sum.item(), rel=1e-6)
    assert create_loss(full, 1).terms_of(*rows, weights, full.bcr_start_iter).loss.item() > after.loss.item()


@pytest.mark.slow  # two tiny trainings and their resumption in subprocesses
def test_seeds_train_one_run_per_seed_and_resume(tiny_cfg, tmp_path):
    from test_resume import OPTS
    from helpers import tiny_config

    cfg = tiny_config(os.path.dirname(tiny_cfg.dataset.meta_file), *OPTS, f"output_dir={tmp_path}",
                      "exp_name=arm", "training.max_iter=4", "training.val_start=4")
    path = str(tmp_path / "arm.yaml")
    save_config(cfg, path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--cfg", path, "--seeds", "3", "5"]
    process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-2000:]
    for seed in (3, 5):
        run = tmp_path / "arm" / f"seed{seed}"
        saved = load_config(str(run / "config.yaml"))
        assert saved.seed == seed and saved.exp_name == f"arm/seed{seed}"
        assert torch.load(run / "checkpoint_4.pth.tar", weights_only=True)["iteration"] == 4
    weights = [torch.load(tmp_path / "arm" / f"seed{s}" / "checkpoint_4.pth.tar", weights_only=True)["model"]
               for s in (3, 5)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the seeds differ
    again = subprocess.run(command + ["--resume", "auto"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and again.stderr.count("resumed from") == 2
