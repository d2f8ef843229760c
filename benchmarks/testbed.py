"""The testbed table: every method's recipe, over seeds, beside the floors and the ceiling.

    python benchmarks/testbed.py                          # shapes, 3 seeds, every representative
    python benchmarks/testbed.py --methods simclr byol --seeds 0 1 2 --json runs/testbed.json
    python benchmarks/testbed.py --dataset folder:../shared/data/cifar10-jpeg.tar.xz --seeds 0

Each method trains with its recipe in :mod:`cookbook.recipes` (the CLI's
defaults) and is scored on the test split with the same kNN as raw pixels
(k = 20, cosine, T = 0.1), a linear probe (hyper-parameters chosen on a
validation split carved from train), RankMe of the embedding and α-ReQ of
the representation. MAE is also fine-tuned end to end with 10 % of the
labels, against the same ViT trained from scratch on those labels for the same
steps. The reference rows: raw pixels, the untrained network, and the
supervised ceiling (same backbone, same steps and batch, cross-entropy on all
labels); with MAE, the untrained ViT and its from-scratch 10 % baseline. Prints a markdown table of mean ± sd over seeds; ``--json`` keeps
every run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import cookbook  # noqa: F401  (before torch: OpenMP wait policy)
import torch

from cookbook import data, evaluate, metrics, recipes
from cookbook.train import fit

REPRESENTATIVES = ("simclr", "byol", "simsiam", "vicreg", "mae")
FINE_TUNE = {"labelled_fraction": 0.1, "steps": 300, "batch_size": 128}
ORDER = ["untrained ResNet-10", *REPRESENTATIVES[:4], "supervised ResNet-10", "untrained ViT", "mae",
         "scratch ViT, 10 % labels"]  # the table's row order


def score(method, ds) -> dict:
    """kNN, linear probe, RankMe and α-ReQ of a (trained or untrained) method."""
    train_f, test_f = evaluate.features(method, ds, "train"), evaluate.features(method, ds, "test")
    emb = evaluate.features(method, ds, "train", which="embedding")
    out = {"knn": evaluate.knn_accuracy(train_f, ds.train_y, test_f, ds.test_y),
           "linear": evaluate.linear_probe(train_f, ds.train_y, test_f, ds.test_y),
           "rankme": metrics.rankme(emb)}
    try:
        out["alpha"] = metrics.alpha_req(train_f).alpha
    except ValueError:
        out["alpha"] = float("nan")
    return out


def run_method(name: str, ds, seed: int, device) -> dict:
    r = recipes.recipe(name)
    torch.manual_seed(seed)
    method = r.build(ds.image_size)
    h = fit(method, ds, **r.fit_options(), views=r.make_views(method, ds.image_size), device=device, seed=seed,
            progress=False, log=False)
    row = {"method": name, "seed": seed, "steps": h.steps, "seconds": h.wall_time_s, **score(method, ds)}
    if name == "mae":
        row["finetune10"] = evaluate.fine_tune(method.backbone, ds, seed=seed, **FINE_TUNE)
    return row


def run_references(ds, seed: int, device, steps: int, vit: bool = True) -> list[dict]:
    """The untrained ResNet and its supervised ceiling; with ``vit``, the untrained
    ViT and the same ViT trained from scratch on 10 % of the labels (MAE's baseline)."""
    r = recipes.recipe("simclr")
    torch.manual_seed(seed)
    untrained = r.build(ds.image_size).to(device)
    rows = [{"method": "untrained ResNet-10", "seed": seed, **score(untrained, ds)}]
    t0 = time.perf_counter()
    ceiling = evaluate.fine_tune(untrained.backbone, ds, labelled_fraction=1.0, steps=steps,
                                 batch_size=r.batch_size, seed=seed)
    rows.append({"method": "supervised ResNet-10", "seed": seed, "steps": steps,
                 "seconds": time.perf_counter() - t0, "test_acc": ceiling})
    if vit:
        torch.manual_seed(seed)
        untrained = recipes.recipe("mae").build(ds.image_size).to(device)
        rows.append({"method": "untrained ViT", "seed": seed, **score(untrained, ds)})
        rows.append({"method": "scratch ViT, 10 % labels", "seed": seed,
                     "finetune10": evaluate.fine_tune(untrained.backbone, ds, seed=seed, **FINE_TUNE)})
    return rows


NAMES = {"simclr": "SimCLR", "byol": "BYOL", "simsiam": "SimSiam", "vicreg": "VICReg", "mae": "MAE"}
FAMILIES = {"simclr": "contrastive", "byol": "distillation", "simsiam": "distillation", "vicreg": "CCA",
            "mae": "MIM"}


def mean_sd(values, scale: float = 1.0, digits: int = 1) -> str:
    """"m ± sd" of the values (times ``scale``; no line break inside), or the value alone for one."""
    values = [scale * v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f}\u00a0±\u00a0{statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], raw: float) -> str:
    """Two markdown tables, one row per model (mean ± sd over its seeds): the
    accuracies in %, then the label-free metrics and the training time."""
    groups = {name: [r for r in rows if r["method"] == name] for name in dict.fromkeys(r["method"] for r in rows)}

    def cell(group, key, scale=100.0, digits=1):
        return mean_sd([r[key] for r in group if key in r], scale, digits)

    def label(name):
        return f"{NAMES[name]} ({FAMILIES[name]})" if name in NAMES else name

    accuracy = ["| model | steps | kNN | linear | fine-tune 10 % | supervised | kNN − pixels |",
                "|---" * 7 + "|", f"| raw pixels | | {100 * raw:.1f} | | | | |"]
    other = ["| model | seeds | seconds | RankMe | α-ReQ |", "|---" * 5 + "|"]
    for name, group in groups.items():
        steps = "/".join(map(str, sorted({r["steps"] for r in group if "steps" in r and "knn" in r})))
        gap = mean_sd([r["knn"] - raw for r in group if "knn" in r], 100.0)
        accuracy.append(f"| {label(name)} | {steps} | {cell(group, 'knn')} | {cell(group, 'linear')} | "
                        f"{cell(group, 'finetune10')} | {cell(group, 'test_acc')} | "
                        f"{'+' + gap if gap and not gap.startswith('-') else gap} |")
        seconds = [r["seconds"] for r in group if "seconds" in r]
        if seconds or any("rankme" in r for r in group):
            other.append(f"| {label(name)} | {len(group)} | {statistics.mean(seconds):.0f} | "
                         if seconds else f"| {label(name)} | {len(group)} | | ")
            other[-1] += f"{cell(group, 'rankme', 1.0)} | {cell(group, 'alpha', 1.0, 2)} |"
    return "\n".join(accuracy) + "\n\n" + "\n".join(other)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=list(REPRESENTATIVES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--dataset", default=recipes.TESTBED_DATASET)
    p.add_argument("--references", action=argparse.BooleanOptionalAction, default=True,
                   help="also the untrained network and the supervised ceiling")
    p.add_argument("--vit-references", action=argparse.BooleanOptionalAction, default=None,
                   help="also the untrained ViT and its from-scratch 10 %% baseline (default: with mae)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="print the table of runs saved by earlier --json runs, and train nothing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write every run here")
    args = p.parse_args(argv)
    if args.merge:
        saved = [json.load(open(path)) for path in args.merge]
        rows = [row for run in saved for row in run["rows"]]
        rows.sort(key=lambda r: ORDER.index(r["method"]) if r["method"] in ORDER else len(ORDER))
        print(table(rows, saved[0]["raw_pixels_knn"]))
        return
    size = recipes.recipe("simclr").image_size
    ds = data.load(args.dataset, image_size=size, seed=0)
    print(f"# testbed on {ds.name}: {len(ds.train_x):,} train / {len(ds.test_x):,} test images at "
          f"{size} px; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}", flush=True)
    raw = evaluate.knn_accuracy(evaluate.pixels(ds, "train"), ds.train_y, evaluate.pixels(ds, "test"), ds.test_y)
    rows = []
    for seed in args.seeds:
        for name in args.methods:
            rows.append(run_method(name, ds, seed, args.device))
            print(json.dumps(rows[-1]), flush=True)
        if args.references:
            steps = recipes.recipe("simclr").steps
            vit = "mae" in args.methods if args.vit_references is None else args.vit_references
            for row in run_references(ds, seed, args.device, steps, vit=vit):
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": ds.name, "raw_pixels_knn": raw, "rows": rows}, f, indent=1)
    print()
    print(table(rows, raw))


if __name__ == "__main__":
    main()
