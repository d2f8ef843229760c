"""``cookbook.fit`` against lightly's documented training loop, side by side in one run.

    python benchmarks/vs_lightly.py                          # shapes, 150 steps, seeds 0 1
    python benchmarks/vs_lightly.py --steps 600 --loader-workers 0 1 2
    python benchmarks/vs_lightly.py --dataset folder:../shared/data/cifar10-jpeg.tar.xz

The same model on both sides, with identical model-level options: the testbed's
SimCLR (ResNet-10 width 16, its projector, lightly's NTXentLoss at T = 0.5;
``cookbook.recipes``), SGD with momentum 0.9 and the recipe's learning rate,
warm-up and cosine decay per step (``train.lr_at``), fp32, channels_last where
``train.memory_format`` uses it, and the same torch threads. What differs is the
data pipeline:

- ``cookbook.fit``: the images are uint8 tensors in memory; a batch is an index
  slice, augmented as a batch (``cookbook.augment``, the recipe's views).
- lightly's loop, as its documentation writes it: PIL images, lightly's
  ``SimCLRTransform`` with the same crop, flip, jitter and grey parameters, in a
  torch ``DataLoader`` (batch 256, shuffled, ``drop_last``), with
  ``num_workers`` taken from ``--loader-workers`` (each value is timed; the
  fastest counts).

Each side trains ``--steps`` steps of 256 images per seed; the steps of the
first epoch (39 on ``shapes``) are not timed. Prints images/s, wall time and the test kNN
(k = 20) of each run, then the throughput ratio (fit over lightly's best) as
mean ± sd over the seeds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import cookbook  # noqa: F401  (before torch: OpenMP wait policy)
import torch
from lightly.transforms import SimCLRTransform
from PIL import Image

from cookbook import data, evaluate, recipes
from cookbook.train import WEIGHT_DECAY, fit, lr_at, make_optimizer, memory_format, scaled_lr


class PILDataset(torch.utils.data.Dataset):
    """uint8 images ``(N, 3, H, W)`` as PIL images through a transform (lightly's way)."""

    def __init__(self, images: torch.Tensor, transform):
        self.images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


def lightly_transform(recipe, size: int) -> SimCLRTransform:
    """lightly's SimCLRTransform with the recipe's view parameters; no normalisation
    (the backbone normalises its [0, 1] input itself, on both sides)."""
    spec = recipe.make_views(recipe.build(size), size).specs[0]
    return SimCLRTransform(input_size=size, min_scale=spec.min_scale, hf_prob=spec.hf_prob, cj_prob=spec.cj_prob,
                           cj_strength=spec.cj_strength, cj_bright=spec.cj_bright, cj_contrast=spec.cj_contrast,
                           cj_sat=spec.cj_sat, cj_hue=spec.cj_hue, random_gray_scale=spec.random_gray_scale,
                           gaussian_blur=spec.gaussian_blur, normalize=None)


def train_lightly_loop(recipe, ds, seed: int, steps: int, warmup: int, workers: int) -> dict:
    """lightly's documented loop: DataLoader of PIL views, forward, loss, step."""
    torch.manual_seed(seed)
    method = recipe.build(ds.image_size)
    device = torch.device("cpu")
    layout = memory_format(method, device)
    method.to(memory_format=layout).train()
    peak = scaled_lr(recipe.lr, recipe.batch_size)
    decay = WEIGHT_DECAY[recipe.optimizer] if recipe.weight_decay is None else recipe.weight_decay
    opt = make_optimizer(method, recipe.optimizer, peak, decay)
    loader = torch.utils.data.DataLoader(
        PILDataset(ds.train_x, lightly_transform(recipe, ds.image_size)), batch_size=recipe.batch_size,
        shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))
    step, start = 0, None
    while step < steps:
        for views in loader:
            if step == warmup:
                start = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, int(0.1 * steps), peak)
            loss = method.loss([v.contiguous(memory_format=layout) for v in views])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    seconds = time.perf_counter() - start
    return {"img_s": (steps - warmup) * recipe.batch_size / seconds, "seconds": seconds, "method": method}


def train_fit(recipe, ds, seed: int, steps: int, warmup: int) -> dict:
    """``cookbook.fit`` with the recipe; timed from fit's per-epoch wall times,
    without the first epoch (``warmup`` steps)."""
    torch.manual_seed(seed)
    method = recipe.build(ds.image_size)
    h = fit(method, ds, **{**recipe.fit_options(), "steps": steps}, views=recipe.make_views(method, ds.image_size),
            seed=seed, progress=False, log=False)
    seconds = sum(e["seconds"] for e in h.epochs[1:])
    return {"img_s": (steps - warmup) * recipe.batch_size / seconds, "seconds": seconds, "method": method}


def knn_test(method, ds) -> float:
    method.eval()
    return evaluate.knn_accuracy(evaluate.features(method, ds, "train"), ds.train_y,
                                 evaluate.features(method, ds, "test"), ds.test_y)


def mean_sd(values) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=recipes.TESTBED_DATASET)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    recipe = recipes.recipe("simclr")
    ds = data.load(args.dataset, image_size=recipe.image_size, seed=0)
    warmup = len(ds.train_x) // recipe.batch_size  # one epoch, untimed on both sides
    if args.steps <= warmup:
        p.error(f"--steps {args.steps} must exceed one epoch ({warmup} steps of {recipe.batch_size})")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {ds.name} {len(ds.train_x):,} images at {ds.image_size} px; SimCLR testbed recipe, "
          f"{args.steps} steps of {recipe.batch_size} (the first {warmup} untimed)")
    print(f"{'side':<28}{'seed':>5}{'img/s':>9}{'timed s':>9}{'kNN test':>10}")
    ratios = []
    for seed in args.seeds:
        ours = train_fit(recipe, ds, seed, args.steps, warmup)
        print(f"{'cookbook.fit':<28}{seed:>5}{ours['img_s']:>9.0f}{ours['seconds']:>9.1f}"
              f"{knn_test(ours['method'], ds):>10.3f}", flush=True)
        best = 0.0
        for workers in args.loader_workers:
            theirs = train_lightly_loop(recipe, ds, seed, args.steps, warmup, workers)
            best = max(best, theirs["img_s"])
            print(f"{f'lightly loop, {workers} workers':<28}{seed:>5}{theirs['img_s']:>9.0f}"
                  f"{theirs['seconds']:>9.1f}{knn_test(theirs['method'], ds):>10.3f}", flush=True)
        ratios.append(ours["img_s"] / best)
    print(f"throughput ratio, fit / lightly's best loop: {mean_sd(ratios)} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
