"""The paper configuration's cost on paper: parameters, FLOPs and activation memory of one training iteration,
and the time of the 27,000-iteration schedule they imply on an H100 and an A100.

    python bench/paper_cost.py [--utilisation 0.3] [--loader-items 2005]

config/cfg.yaml's encoders (IR-152, ResNetSE34L) at batch 20: both faces of each identity at
dataset.image_size, both voice crops at the mean of training.crop_seconds (the crop length is drawn per
batch; the voice encoder's cost is linear in it). Nothing is computed for real: the encoders run forward
and backward on fake tensors (torch._subclasses.FakeTensorMode, shapes only) under
torch.utils.flop_counter.FlopCounterMode, and the activation memory is the sum of the distinct storages
autograd saves for the backward pass (torch.autograd.graph.saved_tensors_hooks), in float32 and under
bf16 autocast. The loss's FLOPs are counted on real embeddings (B × D, negligible). The expected time is
FLOPs × iterations / (peak × utilisation) with the peaks below (dense, no sparsity); the loader must
deliver batch × iterations/s items per second.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import load_config  # noqa: E402
from losses import create_loss  # noqa: E402
from models import build_model  # noqa: E402

PAPER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "cfg.yaml")
# Dense peak TFLOPS (vendor data sheets, SXM parts): TF32 tensor cores serve float32 convolutions (cuDNN's
# default in PyTorch), bf16 the mixed-precision runs.
PEAK_TFLOPS = {"H100 SXM": {"tf32": 494.7, "bf16": 989.4}, "A100 SXM": {"tf32": 156.0, "bf16": 312.0}}
LOADER_ITEMS_PER_S = 2005  # bench/data_loading.py on 2 cores (README's Benchmarks, the demo's sizes)


def encoder_pass(model: torch.nn.Module, modality: str, shape: tuple, bf16: bool) -> tuple[float, float]:
    """(FLOPs, saved-activation bytes) of forward + backward of one encoder on inputs of `shape`, on fake tensors."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage._cdata] = storage.nbytes()  # one storage saved by several ops counts once
        return tensor

    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter:
        inputs = torch.empty(shape)
        encode = model.encode_face if modality == "face" else model.encode_voice
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            embeddings = encode(inputs)
        embeddings.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops(), sum(saved.values())


def loss_flops(cfg, batch: int) -> float:
    """FLOPs of the loss forward + backward on real B × D embeddings (all terms on: an iteration after regauge)."""
    embeddings = [torch.randn(batch, cfg.models.embedding_dim, requires_grad=True) for _ in range(4)]
    with FlopCounterMode(display=False) as counter:
        loss = create_loss(cfg.training, 1).terms_of(*embeddings, torch.ones(batch), cfg.training.bcr_start_iter + 1).loss
        loss.backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utilisation", type=float, default=0.3,
                        help="fraction of the peak a batch-20 convolutional training step sustains (assumed)")
    parser.add_argument("--loader-items", type=float, default=LOADER_ITEMS_PER_S,
                        help="items/s the loader delivers (bench/data_loading.py)")
    args = parser.parse_args()
    cfg = load_config(PAPER)
    t, batch, size = cfg.training, cfg.training.batch_size, cfg.dataset.image_size
    crop = int(sum(t.crop_seconds) / 2 * cfg.dataset.sample_rate)
    model = build_model(cfg.models, cfg.dataset.sample_rate).train()
    shapes = {"face": (2 * batch, 3, size, size), "voice": (2 * batch, crop)}
    print(f"config/cfg.yaml, batch {batch}: {2 * batch} faces {size}x{size}, {2 * batch} voice crops of {crop} "
          f"samples ({crop / cfg.dataset.sample_rate:.2f} s, the mean crop), {t.max_iter} iterations\n")
    print("| encoder | parameters |\n|---|---|")
    for name in ("face_encoder", "voice_encoder"):
        print(f"| {name} | {sum(p.numel() for p in getattr(model, name).parameters()) / 1e6:.2f} M |")

    cost = {(m, bf16): encoder_pass(model, m, shape, bf16) for m, shape in shapes.items() for bf16 in (False, True)}
    loss = loss_flops(cfg, batch)
    flops = sum(cost[m, False][0] for m in shapes) + loss
    print("\n| one training iteration | FLOPs fwd + bwd | saved activations float32 | bf16 autocast |\n|---|---|---|---|")
    for m in shapes:
        print(f"| {m} encoder | {cost[m, False][0] / 1e12:.3f} T | {cost[m, False][1] / 2**30:.2f} GiB | "
              f"{cost[m, True][1] / 2**30:.2f} GiB |")
    print(f"| loss (AaSM + BCR + IE) | {loss / 1e6:.2f} M | | |")
    print(f"| total | {flops / 1e12:.3f} T | {sum(cost[m, False][1] for m in shapes) / 2**30:.2f} GiB | "
          f"{sum(cost[m, True][1] for m in shapes) / 2**30:.2f} GiB |")

    print(f"\n| GPU | precision | peak TFLOPS | at {args.utilisation:.0%} | it/s | {t.max_iter} iterations | "
          f"loader items/s needed (vs {args.loader_items:.0f} on 2 cores) |\n|---|---|---|---|---|---|---|")
    for gpu, peaks in PEAK_TFLOPS.items():
        for precision, peak in peaks.items():
            rate = peak * 1e12 * args.utilisation / flops
            hours = t.max_iter / rate / 3600
            needed = rate * batch
            print(f"| {gpu} | {precision} | {peak:.0f} | {peak * args.utilisation:.0f} | {rate:.1f} | {hours:.2f} h | "
                  f"{needed:.0f} ({needed / args.loader_items:.1f}x) |")


if __name__ == "__main__":
    main()
