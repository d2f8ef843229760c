"""kNN against training steps and seconds, for methods that need longer than the testbed's budget.

    python benchmarks/learning_curve.py --methods byol simsiam --steps 2400 --every 4
    python benchmarks/learning_curve.py --json runs/curve.json --png book/_static/curve.png

Each method trains once with its testbed recipe (``cookbook.recipes``) for
``--steps`` steps (the cosine schedule is set for that length) and is scored
every ``--every`` epochs by kNN on a validation split carved from train
(k = 20; test labels are never used). The raw-pixel kNN on the same split is
the line to cross. Prints one row per evaluation.
"""

from __future__ import annotations

import argparse
import json

import cookbook  # noqa: F401  (before torch: OpenMP wait policy)
import torch

from cookbook import data, evaluate, recipes
from cookbook.train import fit


NAMES = {"byol": "BYOL", "simsiam": "SimSiam", "dino": "DINO", "simclr": "SimCLR", "vicreg": "VICReg", "mae": "MAE"}


def curve(name: str, ds, steps: int, every: int, seed: int) -> dict:
    r = recipes.recipe(name)
    torch.manual_seed(seed)
    method = r.build(ds.image_size)
    h = fit(method, ds, **{**r.fit_options(), "steps": steps}, views=r.make_views(method, ds.image_size),
            seed=seed, eval_every=every, progress=False, log=False)
    per_epoch = len(ds.train_x) // r.batch_size
    points, seconds, done = [], 0.0, 0
    for e in h.epochs:
        seconds += e["seconds"]
        done = min(done + per_epoch, steps)
        if "knn_val" in e:
            points.append({"steps": done, "seconds": seconds, "knn_val": e["knn_val"]})
    return {"method": name, "seed": seed, "points": points}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["byol", "simsiam"])
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--every", type=int, default=4, help="evaluate every k epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None, help="draw the curves here")
    args = p.parse_args(argv)
    ds = data.load(recipes.TESTBED_DATASET, image_size=recipes.recipe("simclr").image_size, seed=0)
    fit_idx, val_idx = evaluate.validation_split(ds.train_y, 0.1, args.seed)
    pixels = evaluate.pixels(ds, "train")
    raw = evaluate.knn_accuracy(pixels[fit_idx], ds.train_y[fit_idx], pixels[val_idx], ds.train_y[val_idx])
    print(f"raw pixels, kNN on the validation split: {raw:.3f}", flush=True)
    curves = []
    for name in args.methods:
        curves.append(curve(name, ds, args.steps, args.every, args.seed))
        for pt in curves[-1]["points"]:
            print(f"{name:8s} step {pt['steps']:5d}  {pt['seconds']:6.0f} s  kNN (val) {pt['knn_val']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"raw_pixels_knn_val": raw, "curves": curves}, f, indent=1)
    if args.png:
        draw(curves, raw).savefig(args.png)


def draw(curves: list[dict], raw: float):
    """kNN (%) against steps, one line per method, with raw pixels and raw pixels + 15 points."""
    from cookbook import plots

    with plots.style():
        fig, ax = plots.figure()
        for c in curves:
            ax.plot([p["steps"] for p in c["points"]], [100 * p["knn_val"] for p in c["points"]],
                    marker="o", label=NAMES.get(c["method"], c["method"]), color=plots.color(c["method"]))
        plots.reference_lines(ax, raw_pixels=100 * raw)
        ax.axhline(100 * raw + 15, color="0.5", linestyle=":", linewidth=1.2, label="raw pixels + 15 points")
        ax.set_xlabel("training steps (batch 256)")
        ax.set_ylabel("kNN accuracy, validation (%)")
        plots.legend_outside(ax)  # inside, it would cross the reference lines or the curves
    return fig

if __name__ == "__main__":
    main()
