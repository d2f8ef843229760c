"""Seconds per training step of ``fit`` with 1 and with 2 processes on the CPU:
the measurement behind the book's "Scaling out" page.

    python benchmarks/distributed_steps.py                          # 1 process
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node=2 \\
        benchmarks/distributed_steps.py                             # 2 processes

Trains a method with its CPU testbed recipe (``cookbook.recipes``: ResNet-10
of width 16, ``shapes`` at 16 x 16, an effective batch of 256) on 1,024 images
for 2 epochs of 4 steps, and prints one JSON line from rank 0: processes,
torch threads per process, the batch and the mean seconds per step of the
second epoch (the first one warms up). With 2 processes each step takes 128
images per process, plus gathering the embeddings and averaging the gradients
over gloo.
"""

from __future__ import annotations

import argparse
import json

import cookbook  # noqa: F401  (before torch: OpenMP wait policy)
import torch

from cookbook import data, distributed, recipes
from cookbook.train import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--batch-size", type=int, default=256, help="effective batch, all processes")
    p.add_argument("--images", type=int, default=1024, help="train images (4 steps an epoch)")
    p.add_argument("--image-size", type=int, default=None, help="pixels (default: the recipe's)")
    args = p.parse_args()

    distributed.setup("cpu")
    recipe = recipes.recipe(args.method)
    if args.image_size:
        recipe = recipe.with_(image_size=args.image_size)
    torch.manual_seed(0)
    ds = data.load("shapes", subset=args.images, test_subset=64, image_size=recipe.image_size, seed=0)
    method = recipe.build()
    options = {**recipe.fit_options(), "steps": None, "batch_size": args.batch_size}
    h = fit(method, ds, epochs=2, views=recipe.make_views(method), device="cpu", progress=False,
            log=False, **options)
    last = h.epochs[-1]
    per_step = last["seconds"] / (args.images // args.batch_size)
    if distributed.is_main():
        world = distributed.world_size()
        print(json.dumps({"method": args.method, "image_size": recipe.image_size, "processes": world,
                          "threads_per_process": torch.get_num_threads(),
                          "batch_size": args.batch_size, "per_process": args.batch_size // world,
                          "seconds_per_step": round(per_step, 3), "loss": round(last["loss"], 4)}))
    distributed.teardown()


if __name__ == "__main__":
    main()
