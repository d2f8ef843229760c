"""Throughput of the training pipeline, and how close it gets to the model alone.

    python benchmarks/throughput.py                 # CUDA when available, else CPU
    python benchmarks/throughput.py --device cpu --widths 16 8

Prints, on one device:
- ``shapes`` generation, images/s (one CPU core);
- augmentation (SimCLR preset, 2 views), views/s;
- SimCLR training with ``cookbook.train.fit`` (ResNet-18 at each width), source images/s,
  timed over the second epoch so that one-off start-up costs are excluded;
- the model-only ceiling: the same method, precision and memory format, stepping on
  ready-made view tensors (no augmentation, no indexing, no bookkeeping);
- their ratio: the share of the ceiling the pipeline reaches (target on a GPU: >= 70%).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import cookbook  # noqa: F401  (before torch: sets the OpenMP wait policy on CPU)
import torch

from cookbook import augment, data, methods, models
from cookbook.train import fit, make_optimizer, memory_format


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shapes_rate(n=10_000):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data.make_shapes(256, seed=1)
    t = time.perf_counter()
    data.make_shapes(n, seed=0)
    rate = n / (time.perf_counter() - t)
    torch.set_num_threads(threads)
    return rate


def augment_rate(device, batch, repeats):
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    views, gen = augment.simclr(), torch.Generator(device).manual_seed(0)
    views(x, gen)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        views(x, gen)
    sync(device)
    return repeats * batch * len(views) / (time.perf_counter() - t)


def model_only_rate(width, device, batch, steps):
    """Steps of SimCLR on fixed view tensors: the ceiling for the full pipeline."""
    method = methods.SimCLR(models.resnet18(width)).to(device)
    cuda = device.type == "cuda"
    fmt = memory_format(method, device)  # fit's choice: channels_last, except where torch crashes in it
    method.to(memory_format=fmt)
    opt = make_optimizer(method, "sgd", 0.06, 5e-4)
    views = [torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt) for _ in range(2)]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step():
        with autocast:
            loss = method.loss(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def pipeline_rate(width, device, batch, steps):
    ds = data.load("shapes", subset=steps * batch, test_subset=64)
    method = methods.SimCLR(models.resnet18(width))
    h = fit(method, ds, epochs=2, batch_size=batch, device=device, progress=False, log=False)
    return steps * batch / h.epochs[1]["seconds"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 16])
    p.add_argument("--batch-size", type=int, default=None, help="default 512 on CUDA, 128 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 3 on CPU)")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (512 if cuda else 128)
    steps = args.steps or (50 if cuda else 3)
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; batch {batch}; {steps} timed steps")
    print(f"shapes generation (1 CPU core): {shapes_rate():,.0f} images/s")
    print(f"augmentation (SimCLR, 2 views of 32x32): {augment_rate(device, batch, max(steps, 5)):,.0f} views/s")
    print(f"{'backbone':<22}{'fit img/s':>12}{'model-only img/s':>18}{'ratio':>8}")
    for width in args.widths:
        ceiling = model_only_rate(width, device, batch, steps)
        rate = pipeline_rate(width, device, batch, steps)
        print(f"{'ResNet-18 width ' + str(width):<22}{rate:>12,.0f}{ceiling:>18,.0f}{rate / ceiling:>8.0%}")


if __name__ == "__main__":
    main()
