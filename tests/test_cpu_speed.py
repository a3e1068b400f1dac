"""The CPU demo's speed settings: training.amp on the CPU (bf16 autocast where the CPU computes bf16 natively,
float32 with one warning line elsewhere, fp16 a CUDA-only mode; train.py end to end with it on), and the oneDNN
kernel caches train.py enlarges."""
import logging
import os

import pytest
import torch

import train as train_module
from helpers import tiny_config
from models import build_model
from train import amp_dtype_of, train
from utils.cpu import CPU_KERNEL_CACHE, keep_cpu_kernels

CPU = torch.device("cpu")
SMALL = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
         "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]", "dataset.image_size=32"]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_the_cpu_only_where_it_is_native(tiny_root, monkeypatch, caplog, native):
    monkeypatch.setattr(train_module, "cpu_computes_bf16", lambda: native)
    cfg = tiny_config(tiny_root, "training.amp=bf16")
    with caplog.at_level(logging.WARNING, logger="train"):
        dtype = amp_dtype_of(cfg.training, CPU)
    assert dtype == (torch.bfloat16 if native else None)
    expected = [] if native else ["training.amp: bf16 needs CUDA or a CPU with native bf16 (AVX512-BF16 or AMX); "
                                  "the encoders train in float32"]
    assert [r.getMessage() for r in caplog.records] == expected


def test_fp16_and_off_on_the_cpu(tiny_root, caplog):
    with caplog.at_level(logging.WARNING, logger="train"):
        assert amp_dtype_of(tiny_config(tiny_root, "training.amp=off").training, CPU) is None
        assert not caplog.records
        assert amp_dtype_of(tiny_config(tiny_root, "training.amp=fp16").training, CPU) is None
    assert [r.getMessage() for r in caplog.records] == ["training.amp: fp16 needs CUDA; the encoders train in float32"]


@pytest.mark.skipif(not train_module.cpu_computes_bf16(), reason="this CPU has no native bf16")
def test_train_py_with_bf16_on_the_cpu(tiny_root, tiny_cfg, tmp_path, monkeypatch):
    seen = []  # (training mode, the dtype each convolution computed in)
    embed = train_module.embed

    def recording_embed(encoders, *args, **kwargs):
        if not seen:
            for module in encoders.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.register_forward_hook(
                        lambda module, inputs, output: seen.append((module.training, output.dtype)))
        return embed(encoders, *args, **kwargs)

    monkeypatch.setattr(train_module, "embed", recording_embed)
    cfg = tiny_config(tiny_root, *SMALL, "training.amp=bf16", "training.max_iter=3", "training.val_start=3",
                      "training.val_iter=3", "training.save_iter=3", f"output_dir={tmp_path}", "device=cpu")
    summary = train(cfg)
    assert summary["iteration"] == 3
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}  # validation embeds in float32
    saved = torch.load(tmp_path / "synthetic" / "checkpoint_3.pth.tar", weights_only=False)
    assert all(v.dtype != torch.bfloat16 for v in saved["model"].values())  # float32 weights, as eagerly
    assert list(saved["model"]) == list(build_model(cfg.models).state_dict())


def test_kernel_caches_are_enlarged_unless_the_environment_sizes_them(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")
    keep_cpu_kernels()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(CPU_KERNEL_CACHE)
    assert os.environ["LRU_CACHE_CAPACITY"] == "64"  # the user's own setting stays
