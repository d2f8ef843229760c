"""Run a grid of training settings and write one JSON line per run: the tool
behind the testbed's recipe search (``book/testbed.md`` says what it found).

    python benchmarks/sweep.py GRID.json OUT.jsonl [--workers 4] [--device cuda]

GRID.json is a list of settings; each is a dict with the keys of
:func:`run_setting` (missing keys take its defaults). Settings already in
OUT.jsonl (same key) are skipped, so an interrupted sweep resumes. On a GPU
several workers share the device; runs use fp32 without TF32, so that a
recipe found there behaves the same on a CPU (the same steps, the same maths).

Every run reports kNN on a validation split carved from train (the number to
choose recipes by) and, for the record, on the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cookbook  # noqa: F401  (before torch: OpenMP wait policy)

DEFAULTS = dict(method="simclr", dataset="shapes", backbone="resnet10", width=16, vit={}, image_size=16,
                subset=None, test_subset=None, steps=600, batch_size=256, optimizer="sgd", lr=None,
                weight_decay=None, options={}, views={}, seed=0, knn_k=20, finetune=False)


def key(setting: dict) -> str:
    return json.dumps({**DEFAULTS, **setting}, sort_keys=True)


def run_setting(setting: dict, device: str) -> dict:
    import torch

    from cookbook import augment, data, evaluate, methods, metrics, models
    from cookbook.train import fit

    s = {**DEFAULTS, **setting}
    ds = data.load(s["dataset"], subset=s["subset"], test_subset=s["test_subset"], image_size=s["image_size"],
                   seed=0)
    fit_idx, val_idx = evaluate.validation_split(ds.train_y, 0.1, 0)
    out = {"key": key(setting), "setting": s}

    def knn(train_f, test_f):
        y = ds.train_y.cpu()
        return {"knn_val": evaluate.knn_accuracy(train_f[fit_idx], y[fit_idx], train_f[val_idx], y[val_idx],
                                                 k=s["knn_k"]),
                "knn_test": evaluate.knn_accuracy(train_f, y, test_f, ds.test_y.cpu(), k=s["knn_k"])}

    if s["method"] == "pixels":
        out.update(knn(evaluate.pixels(ds, "train"), evaluate.pixels(ds, "test")))
        return out
    torch.manual_seed(s["seed"])
    net = models.backbone(s["backbone"], width=s["width"], image_size=ds.image_size, **s["vit"])
    if s["method"] == "supervised":
        t0 = time.perf_counter()
        tune = dict(labelled_fraction=s["options"].get("fraction", 1.0), steps=s["steps"],
                    batch_size=s["batch_size"], lr=s["lr"] or 1e-3, seed=s["seed"], device=device)
        out["test_acc"] = evaluate.fine_tune(net.to(device), ds, **tune)
        out["val_acc"] = evaluate.fine_tune(net.to(device), ds, split="val", **tune)
        out["seconds"] = time.perf_counter() - t0
        return out
    method = methods.build(s["method"], net, **s["options"])
    views = None
    if s["views"]:
        v = dict(s["views"])
        views = augment.PRESETS[v.pop("preset")](ds.image_size, **v)
    if s["steps"] > 0:
        h = fit(method, ds, steps=s["steps"], batch_size=s["batch_size"], optimizer=s["optimizer"], lr=s["lr"],
                weight_decay=s["weight_decay"], views=views, device=device, precision="fp32", seed=s["seed"],
                progress=False, log=False)
        out.update(seconds=h.wall_time_s, loss_first=h.epochs[0]["loss"], loss_last=h.final_loss)
    train_f = evaluate.features(method, ds, "train")
    out.update(knn(train_f, evaluate.features(method, ds, "test")))
    emb = evaluate.features(method, ds, "train", which="embedding")
    out["rankme"] = metrics.rankme(emb)
    out["rankme_rep"] = metrics.rankme(train_f)
    try:
        out["alpha"] = metrics.alpha_req(train_f).alpha
    except ValueError:
        out["alpha"] = float("nan")
    if s["finetune"]:
        tune = dict(labelled_fraction=0.1, seed=s["seed"], device=device)
        out["finetune10"] = evaluate.fine_tune(method.backbone, ds, **tune)
        out["finetune10_val"] = evaluate.fine_tune(method.backbone, ds, split="val", **tune)
    return out


def _worker(args):
    setting, device, threads = args
    import torch

    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        return run_setting(setting, device)
    except Exception as error:  # a failed setting is a result too
        return {"key": key(setting), "setting": {**DEFAULTS, **setting}, "error": repr(error)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid")
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    grid = json.load(open(args.grid))
    done = set()
    if os.path.exists(args.out):
        done = {json.loads(line)["key"] for line in open(args.out) if line.strip()}
    todo = [s for s in grid if key(s) not in done]
    print(f"{len(todo)} of {len(grid)} settings to run", file=sys.stderr)
    threads = max(1, (os.cpu_count() or 2) // args.workers)
    jobs = [(s, args.device, threads) for s in todo]
    t0 = time.perf_counter()
    with open(args.out, "a") as f:
        if args.workers == 1:
            results = map(_worker, jobs)
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(args.workers)
            results = pool.imap_unordered(_worker, jobs)
        for i, r in enumerate(results, 1):
            f.write(json.dumps(r) + "\n")
            f.flush()
            brief = {k: round(v, 3) for k, v in r.items() if isinstance(v, float)}
            print(f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {r['setting']['method']} {brief} "
                  f"{r.get('error', '')}", file=sys.stderr)


if __name__ == "__main__":
    main()
