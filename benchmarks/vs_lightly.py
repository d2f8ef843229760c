"""``cookbook.fit`` against lightly's documented training loop, side by side in one run.

    python benchmarks/vs_lightly.py                          # shapes, 150 steps, seeds 0 1
    python benchmarks/vs_lightly.py --steps 600 --loader-workers 0 1 2
    python benchmarks/vs_lightly.py --precision bf16         # both sides under CPU bf16 autocast
    python benchmarks/vs_lightly.py --dataset folder:../shared/data/cifar10-jpeg.tar.xz
    python benchmarks/vs_lightly.py --time-to-knn      # each side's own recipe, to a kNN of 0.80

The same model on both sides, with identical model-level options: the testbed's
SimCLR (ResNet-10 width 16, its projector, lightly's NTXentLoss at T = 0.5;
``cookbook.recipes``), SGD with momentum 0.9 and the recipe's learning rate,
warm-up and cosine decay per step (``train.lr_at``), the same precision (fp32, or
bf16 autocast with ``--precision bf16`` on a CPU with bf16 hardware), channels_last where
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

``--time-to-knn``: what a user gets by choosing one recipe or the other, each
side with its own documented recipe, on ``shapes`` (10,000 / 2,000 images),
timed by its training seconds (evaluations not counted), per seed:

- the testbed: ``cookbook.recipes.recipe("simclr")`` through ``fit`` (ResNet-10
  width 16 at 16 px, 600 steps of 256); its full run's seconds are its time
  to the threshold when its final test kNN reaches it (an upper bound);
- lightly's CIFAR-10 benchmark recipe for SimCLR
  (``docs/source/getting_started/benchmarks/cifar10_benchmark.py`` in lightly's
  repository): lightly's CIFAR ResNet-18 (``ResNetGenerator("resnet-18")``)
  and ``SimCLRProjectionHead(512, 512, 128)``, ``NTXentLoss()``, the
  ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`` views
  of PIL images (ImageNet normalisation) in a ``DataLoader`` with
  ``--loader-workers`` workers (the first value), batch 128, SGD at lr 0.06 with
  momentum 0.9 and weight decay 5e-4, cosine annealing over its 200 epochs.
  It trains ``--budget-factor`` times the testbed's seconds, with the test kNN
  taken at 1x and at the end.

Both kNNs are this package's (k = 20, cosine, test split against the train
split), on each side's backbone features at its own image size. If lightly's
side stays below ``--threshold`` at the end, the time ratio is more than
``--budget-factor`` (a lower bound).
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
from cookbook.train import WEIGHT_DECAY, cpu_has_native_bf16, fit, lr_at, make_optimizer, memory_format, scaled_lr


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


def train_lightly_loop(recipe, ds, seed: int, steps: int, warmup: int, workers: int,
                       precision: str = "fp32") -> dict:
    """lightly's documented loop: DataLoader of PIL views, forward, loss, step; the loss
    under CPU autocast in bf16 when ``precision`` is "bf16", as ``fit`` does."""
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
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = method.loss([v.contiguous(memory_format=layout) for v in views])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    seconds = time.perf_counter() - start
    return {"img_s": (steps - warmup) * recipe.batch_size / seconds, "seconds": seconds, "method": method}


def train_fit(recipe, ds, seed: int, steps: int, warmup: int, precision: str = "fp32") -> dict:
    """``cookbook.fit`` with the recipe; timed from fit's per-epoch wall times,
    without the first epoch (``warmup`` steps)."""
    torch.manual_seed(seed)
    method = recipe.build(ds.image_size)
    h = fit(method, ds, **{**recipe.fit_options(), "steps": steps}, views=recipe.make_views(method, ds.image_size),
            seed=seed, precision=precision, progress=False, log=False)
    seconds = sum(e["seconds"] for e in h.epochs[1:])
    return {"img_s": (steps - warmup) * recipe.batch_size / seconds, "seconds": seconds, "method": method}


def lightly_cifar10_recipe():
    """lightly's CIFAR-10 benchmark model for SimCLR, its loss, views and optimizer."""
    from lightly.loss import NTXentLoss
    from lightly.models import ResNetGenerator
    from lightly.models.modules.heads import SimCLRProjectionHead

    resnet = ResNetGenerator("resnet-18")
    backbone = torch.nn.Sequential(*list(resnet.children())[:-1], torch.nn.AdaptiveAvgPool2d(1))
    head = SimCLRProjectionHead(512, 512, 128)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=6e-2 * (128 / 128), momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)  # stepped per epoch, as in Lightning
    transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    return backbone, head, NTXentLoss(), opt, sched, transform


def lightly_features(backbone, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Backbone features of uint8 images (N, 3, 32, 32), ImageNet-normalised as lightly's test transform."""
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    mean = torch.tensor(IMAGENET_NORMALIZE["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZE["std"]).view(1, 3, 1, 1)
    backbone.eval()
    with torch.no_grad():
        out = [backbone((images[i:i + batch].float() / 255 - mean) / std).flatten(1)
               for i in range(0, len(images), batch)]
    backbone.train()
    return torch.cat(out)


def lightly_time_to_knn(ds32, seed: int, seconds: float, checkpoints, workers: int) -> dict:
    """lightly's recipe for ``seconds`` of training; test kNN at each checkpoint (seconds)."""
    torch.manual_seed(seed)
    backbone, head, criterion, opt, sched, transform = lightly_cifar10_recipe()
    loader = torch.utils.data.DataLoader(PILDataset(ds32.train_x, transform), batch_size=128, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    trained, steps, knn, pending = 0.0, 0, {}, sorted(checkpoints)
    while pending:
        for x0, x1 in loader:
            start = time.perf_counter()
            loss = criterion(head(backbone(x0).flatten(1)), head(backbone(x1).flatten(1)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            trained += time.perf_counter() - start
            steps += 1
            while pending and trained >= pending[0]:
                train_f, test_f = lightly_features(backbone, ds32.train_x), lightly_features(backbone, ds32.test_x)
                knn[pending.pop(0)] = evaluate.knn_accuracy(train_f, ds32.train_y, test_f, ds32.test_y)
            if not pending:
                break
        sched.step()
    return {"knn": knn, "steps": steps, "seconds": trained, "img_s": steps * 128 / trained}


def time_to_knn(args) -> None:
    recipe = recipes.recipe("simclr")
    ds = data.load("shapes", image_size=recipe.image_size, seed=0)
    ds32 = data.load("shapes", image_size=32, seed=0)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; shapes {len(ds.train_x):,} / {len(ds.test_x):,} images; threshold "
          f"test kNN {args.threshold}; lightly's side trains {args.budget_factor}x the testbed's seconds")
    ratios_bound, reached_all = [], True
    for seed in args.seeds:
        torch.manual_seed(seed)
        method = recipe.build(ds.image_size)
        h = fit(method, ds, **recipe.fit_options(), views=recipe.make_views(method, ds.image_size), seed=seed,
                progress=False, log=False)
        ours_s, ours_knn = h.wall_time_s, knn_test(method, ds)
        print(f"  seed {seed}  testbed recipe: {h.steps} steps of {recipe.batch_size} at {ds.image_size} px, "
              f"{ours_s:.0f} s, {h.images_per_s:.0f} img/s, test kNN {ours_knn:.3f}", flush=True)
        if ours_knn < args.threshold:
            reached_all = False
            print(f"    the testbed recipe stayed below {args.threshold}: no time to the threshold for this seed")
            continue
        budget = args.budget_factor * ours_s
        theirs = lightly_time_to_knn(ds32, seed, budget, [ours_s, budget], args.loader_workers[0])
        at = ", ".join(f"{k / ours_s:.0f}x ({k:.0f} s): {v:.3f}" for k, v in theirs["knn"].items())
        print(f"  seed {seed}  lightly's CIFAR-10 recipe: {theirs['steps']} steps of 128 at 32 px, "
              f"{theirs['seconds']:.0f} s, {theirs['img_s']:.0f} img/s; test kNN at {at}", flush=True)
        reached = [k for k, v in theirs["knn"].items() if v >= args.threshold]
        if reached:
            ratios_bound.append(("<=", min(reached) / ours_s))
        else:
            ratios_bound.append((">", args.budget_factor * 1.0))
    if ratios_bound and reached_all:
        text = "; ".join(f"{op} {r:.1f}" for op, r in ratios_bound)
        print(f"time to a test kNN of {args.threshold}, lightly's recipe / the testbed's: {text} "
              f"(seeds {args.seeds}; '>' means lightly's side had not reached it when it stopped)")


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
    p.add_argument("--loader-workers", type=int, nargs="+", default=None,
                   help="DataLoader workers to time (default 0 1 2; --time-to-knn: the first, default 2)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="both sides' autocast precision (bf16: a CPU with bf16 hardware only)")
    p.add_argument("--time-to-knn", action="store_true", help="each side's own recipe to a fixed test kNN")
    p.add_argument("--threshold", type=float, default=0.80, help="--time-to-knn: the test kNN to reach")
    p.add_argument("--budget-factor", type=float, default=3.0,
                   help="--time-to-knn: lightly's side trains this many times the testbed's seconds")
    args = p.parse_args(argv)
    if args.time_to_knn:
        args.loader_workers = args.loader_workers or [2]
        if not 0 < args.threshold < 1 or args.budget_factor < 1:
            p.error("--threshold must lie in (0, 1) and --budget-factor be at least 1")
        return time_to_knn(args)
    args.loader_workers = args.loader_workers or [0, 1, 2]
    if args.precision == "bf16" and not cpu_has_native_bf16():
        p.error("--precision bf16 needs a CPU with bf16 hardware (AVX512-BF16 or AMX); use fp32")
    recipe = recipes.recipe("simclr")
    ds = data.load(args.dataset, image_size=recipe.image_size, seed=0)
    warmup = len(ds.train_x) // recipe.batch_size  # one epoch, untimed on both sides
    if args.steps <= warmup:
        p.error(f"--steps {args.steps} must exceed one epoch ({warmup} steps of {recipe.batch_size})")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {ds.name} {len(ds.train_x):,} images at {ds.image_size} px; SimCLR testbed recipe, "
          f"{args.steps} steps of {recipe.batch_size} (the first {warmup} untimed), {args.precision} on both sides")
    print(f"{'side':<28}{'seed':>5}{'img/s':>9}{'timed s':>9}{'kNN test':>10}")
    ratios = []
    for seed in args.seeds:
        ours = train_fit(recipe, ds, seed, args.steps, warmup, args.precision)
        print(f"{'cookbook.fit':<28}{seed:>5}{ours['img_s']:>9.0f}{ours['seconds']:>9.1f}"
              f"{knn_test(ours['method'], ds):>10.3f}", flush=True)
        best = 0.0
        for workers in args.loader_workers:
            theirs = train_lightly_loop(recipe, ds, seed, args.steps, warmup, workers, args.precision)
            best = max(best, theirs["img_s"])
            print(f"{f'lightly loop, {workers} workers':<28}{seed:>5}{theirs['img_s']:>9.0f}"
                  f"{theirs['seconds']:>9.1f}{knn_test(theirs['method'], ds):>10.3f}", flush=True)
        ratios.append(ours["img_s"] / best)
    print(f"throughput ratio, fit / lightly's best loop: {mean_sd(ratios)} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
