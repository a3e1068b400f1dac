"""Two gloo processes on the CPU train exactly like one process on the concatenated batch."""
import os
import socket

import torch
import torch.multiprocessing as mp

from config import load_config
from losses import create_loss
from models import build_model
from models.pair_encoder import PairEncoder
from train import embed
from utils.distributed import gather_batch, wrap_module
from utils import distributed

WORLD = 2
ITERATION = 12  # past bcr_start_iter and a refresh iteration: BCR, IE weights and counters all take part
OPTS = ["models.face.units=[1,1,1,1]", "models.face.widths=[8,8,16,16]", "models.face.head_hidden=16",
        "models.voice.layers=[1,1,1,1]", "models.voice.filters=[8,8,16,16]",
        "training.bcr_start_iter=10", "training.ie_start_iter=4", "training.ie_refresh_iter=4"]


def make_batch(batch_size=8, identities=20):
    g = torch.Generator().manual_seed(5)
    faces = torch.rand(batch_size, 2, 3, 32, 32, generator=g) * 255
    voice = torch.randn(batch_size, 12000, generator=g) * 3000
    voice_aux = torch.randn(batch_size, 9000, generator=g) * 3000
    labels = torch.randperm(identities, generator=g)[:batch_size]
    return faces, voice, voice_aux, labels


def run(batch, cfg, ctx, training=True):
    torch.manual_seed(0)
    # In training mode, batch norm normalises over the global batch (GlobalBatchNorm on the CPU).
    model = build_model(cfg.models).train(training)
    encoders = wrap_module(PairEncoder(model), ctx, torch.device("cpu"))
    equilibrium = create_loss(cfg.training, 20)
    # counts from earlier iterations, so the refresh at ITERATION has something to weigh
    equilibrium.accumulate(torch.arange(20), torch.arange(20) % 7, 7)
    loss, terms, _ = equilibrium(*gather_batch(*embed(encoders, batch, cfg, torch.device("cpu")), ctx), ITERATION)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return {"loss": loss.detach(), "terms": terms, "grads": grads, "equilibrium": equilibrium.state_dict(),
            "buffers": {name: b.clone() for name, b in model.named_buffers()}}


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu", 5)
    share = slice(rank * 4, rank * 4 + 4)
    result = run(tuple(x[share] for x in make_batch()), load_config("config/synthetic.yaml", OPTS), ctx)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.cleanup(ctx)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    single = run(make_batch(), load_config("config/synthetic.yaml", OPTS), distributed.Context())
    for rank in range(WORLD):
        ddp = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(ddp["loss"], single["loss"], rtol=1e-5, atol=1e-6)
        assert single["terms"]["regauge"] > 0  # the BCR part is active
        largest = max(float(grad.abs().max()) for grad in single["grads"].values())
        for name, grad in single["grads"].items():
            # to 1e-5 of the tensor's scale, plus 1e-6 of the largest gradient for those that are zero up to
            # rounding (a bias before batch norm): summation order differs between one and two processes
            atol = 1e-5 * float(grad.abs().max()) + 1e-6 * largest
            torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-5, atol=atol,
                                       msg=lambda m, name=name: f"{name}: {m}")
        for name, buffer in single["equilibrium"].items():
            torch.testing.assert_close(ddp["equilibrium"][name], buffer, msg=name)
        for name, buffer in single["buffers"].items():  # batch norm's running statistics
            torch.testing.assert_close(ddp["buffers"][name], buffer, rtol=1e-5, atol=1e-6, msg=name)


def test_mixed_precision_forward_keeps_the_loss_in_float32():
    """training.amp: the encoders run under autocast (bf16 here, on the CPU), the loss math in float32."""
    cfg = load_config("config/synthetic.yaml", OPTS)
    batch = make_batch()
    ctx, cpu = distributed.Context(), torch.device("cpu")
    losses = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        encoders = wrap_module(PairEncoder(build_model(cfg.models).eval()), ctx, cpu)
        equilibrium = create_loss(cfg.training, 20)
        losses[dtype], terms, _ = equilibrium(*gather_batch(*embed(encoders, batch, cfg, cpu, torch.bfloat16
                                                                   if dtype else None), ctx), ITERATION)
        assert losses[dtype].dtype == torch.float32 and all(t.dtype != torch.bfloat16 for t in terms.values())
        losses[dtype].backward()
        assert all(torch.isfinite(p.grad).all() for p in encoders.parameters() if p.grad is not None)
    torch.testing.assert_close(losses[torch.bfloat16], losses[None], rtol=0.05, atol=0.05)


def test_global_batch_norm_under_bf16_autocast_is_batch_norms():
    """A CPU run under training.amp: bf16 hands the batch norm bf16 activations: the statistics are kept in float32,
    as batch_norm keeps them (bf16 statistics, or a bf16 mean lerped into the float32 running mean, failed)."""
    torch.manual_seed(0)
    conv, ours, torchs = torch.nn.Conv2d(3, 8, 3), distributed.GlobalBatchNorm(8), torch.nn.BatchNorm2d(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        activations = conv(torch.randn(4, 3, 16, 16))
        got, expected = ours(activations), torchs(activations)
    assert activations.dtype == got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(ours.running_mean, torchs.running_mean)
    torch.testing.assert_close(ours.running_var, torchs.running_var)


FIRST, STEPS = 7, 6  # iterations 7-12: IE refreshes at 8 and 12, BCR from 10


def train_steps(cfg, ctx, share=slice(None)):
    """STEPS optimizer steps in float64 on this process' rows of each global batch; the final state."""
    torch.manual_seed(0)
    model = build_model(cfg.models).double().train()
    encoders = wrap_module(PairEncoder(model), ctx, torch.device("cpu"))
    equilibrium = create_loss(cfg.training, 20)
    equilibrium.accumulate(torch.arange(20), torch.arange(20) % 7, 7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        faces, voice, voice_aux, labels = (x[share] for x in make_batch())
        embeddings = encoders(faces[:, 0].double(), faces[:, 1].double(), voice.double(), voice_aux.double())
        embeddings = tuple(distributed.gather_with_grad(e, ctx) for e in embeddings)
        loss, _, _ = equilibrium(*embeddings, distributed.gather(labels, ctx), FIRST + step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "equilibrium": equilibrium.state_dict()}


def steps_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu", 5)
    state = train_steps(load_config("config/synthetic.yaml", OPTS), ctx, slice(rank * 4, rank * 4 + 4))
    torch.save(state, os.path.join(out_dir, f"steps{rank}.pt"))
    distributed.cleanup(ctx)


def test_two_processes_train_to_the_same_weights_as_one_process_in_float64(tmp_path):
    # In float32 two processes and one drift apart over steps (summation order, amplified by the loss's hinges and
    # ranking counts); in float64 rounding stays far below every threshold, so the states must agree.
    mp.spawn(steps_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    cfg = load_config("config/synthetic.yaml", OPTS)
    single = train_steps(cfg, distributed.Context())
    torch.manual_seed(0)
    initial = build_model(cfg.models).double().state_dict()
    moved = [name for name, value in single["model"].items() if value.is_floating_point()
             and (value - initial[name]).abs().max() > 1e-4 * max(float(value.abs().max()), 1e-12)]
    assert len(moved) > len(initial) // 2  # the steps trained: most tensors changed well beyond the tolerance
    for rank in range(WORLD):
        ddp = torch.load(tmp_path / f"steps{rank}.pt", weights_only=True)
        for name, value in single["model"].items():
            torch.testing.assert_close(ddp["model"][name], value, rtol=1e-9, atol=1e-12, msg=name)
        for name, value in single["equilibrium"].items():
            torch.testing.assert_close(ddp["equilibrium"][name], value, msg=name)
