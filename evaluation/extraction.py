"""Embedding extraction and the validation score, shared by train.py and test.py."""
from __future__ import annotations

from typing import Iterable

import torch
from easydict import EasyDict
from tqdm import tqdm

from data.datasets import as_float, eval_loader
from data.lists import ListSpec, list_files, list_path
from data.splits import key_labels, read_split
from evaluation.features import Features
from evaluation.protocol import evaluate_list

VALIDATION_LIST = ListSpec("matching", "v2f", False, "val")


@torch.no_grad()
def embed_batches(model: torch.nn.Module, batches: Iterable[tuple[list[str], torch.Tensor]], modality: str,
                  device: torch.device, progress: bool = True, description: str = "") -> tuple[list[str], torch.Tensor]:
    """(keys, embeddings (N, D)) of batches (keys, eval-transformed uint8 / int16 inputs), in batch order.

    No batch at all gives an empty (0, 0) tensor.
    """
    encode = model.encode_voice if modality == "voice" else model.encode_face
    out, seen = [], []
    for batch_keys, inputs in tqdm(batches, desc=description or f"embedding {modality} files", unit="batch",
                                   disable=not progress, leave=False):
        out.append(encode(as_float(inputs, device)).float().cpu())
        seen.extend(batch_keys)
    return seen, torch.cat(out) if out else torch.empty(0, 0)


def embed(model: torch.nn.Module, cfg: EasyDict, keys: list[str], modality: str, device: torch.device,
          progress: bool = True) -> torch.Tensor:
    """Embeddings (len(keys), D) through the eval transform, batched across identities."""
    seen, embeddings = embed_batches(model, eval_loader(cfg, keys, modality), modality, device, progress,
                                     f"embedding {len(keys)} {modality} files")
    if seen != keys:
        raise RuntimeError("EvalDataset returned the files in another order than asked")
    return embeddings


def validate(model: torch.nn.Module, cfg: EasyDict, device: torch.device) -> float:
    """1:2 voice-to-face matching accuracy on the validation list (the release's model selection), computed as
    test.py computes it."""
    path = list_path(cfg.dataset.list_dir, VALIDATION_LIST.name)
    voices, faces = (sorted(files) for files in list_files(path))
    was_training = model.training
    model.eval()
    try:
        embeddings = torch.cat([embed(model, cfg, voices, "voice", device), embed(model, cfg, faces, "face", device)])
    finally:
        model.train(was_training)
    keys = voices + faces
    ids = key_labels(keys, read_split(cfg.dataset.list_dir, VALIDATION_LIST.split))
    features = Features(dict(zip(keys, range(len(keys)))), embeddings.numpy(), ids)
    return evaluate_list(VALIDATION_LIST, path, features, bootstrap=0, seed=cfg.seed).value
