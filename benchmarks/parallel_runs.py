"""One run at a time against two at once, on the CPU: what ``experiment.run_recipes`` buys.

    python benchmarks/parallel_runs.py                  # SimCLR's testbed recipe, 60 steps
    python benchmarks/parallel_runs.py --method vicreg --steps 100

Prints, side by side in one run, for the testbed recipe (ResNet-10 width 16,
``shapes`` at 16 px, batch 256):
- one run alone with every core (torch's default threads): seconds per step;
- two runs at once through ``run_recipes(workers=2)``, each process with
  ``cpu_count // 2`` threads: seconds per step of each;
- the throughput ratio, steps per second of the pair over the lone run's.

Times are training wall times (``run.seconds``), evaluation excluded; the
first run also pays the process's start-up, as a chapter's first run does.
"""

from __future__ import annotations

import argparse
import os
import time

import cookbook  # noqa: F401  (before torch: sets the OpenMP wait policy on CPU)
import torch

from cookbook import data, experiment, recipes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="simclr")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--train-size", type=int, default=10_000)
    args = p.parse_args(argv)
    ds = data.load("shapes", subset=args.train_size, test_subset=2_000, image_size=16, seed=0)
    recipe = recipes.recipe(args.method).with_(steps=args.steps)
    print(f"{args.method}: ResNet-10 width {recipe.width}, batch {recipe.batch_size}, {args.steps} steps; "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)")

    alone = experiment.run_recipe(recipe, ds, seed=0, log=False)
    per_step_alone = alone.seconds / args.steps
    print(f"one run alone            {per_step_alone:.3f} s/step")

    start = time.perf_counter()
    pair = experiment.run_recipes([dict(recipe=recipe, seed=s) for s in (0, 1)], ds, workers=2, log=False)
    wall = time.perf_counter() - start
    per_step = [r.seconds / args.steps for r in pair]
    print(f"two at once (each)       {per_step[0]:.3f} and {per_step[1]:.3f} s/step "
          f"({wall:.0f} s wall for both, with start-up and evaluation)")
    ratio = sum(1 / s for s in per_step) / (1 / per_step_alone)
    print(f"throughput, two / one    {ratio:.2f}x")


if __name__ == "__main__":
    main()
