"""The CPU training ceiling: ``fit`` today against ``fit`` at commit aad48e6, side by side.

    python benchmarks/ceiling.py                     # 3 interleaved rounds of every side
    python benchmarks/ceiling.py --rounds 5 --epochs 5
    python benchmarks/ceiling.py --sides fit "model only"   # some sides (and always fit @ aad48e6)
    python benchmarks/ceiling.py --accuracy          # also: 3 seeds x each recipe's steps, fp32 and bf16
    python benchmarks/ceiling.py --scans             # feature extraction and augmentation only
    python benchmarks/ceiling.py --wait              # OpenMP wait settings, idle and with a core busy

Every side trains the testbed's SimCLR setting (``cookbook.recipes``: ResNet-10
width 16, ``shapes`` 10,000 images at 16 px, batch 256, lr 0.6, τ 0.5, the
recipe's views) with the same code, in a fresh process of its own, on the
CPU with torch's default threads:

- ``fit @ aad48e6``: the package as it was at that commit (``git archive``
  into a temporary folder, first on ``PYTHONPATH``): fp32, the default
  memory format, augmentation in the loop;
- ``fit, no prefetch``: today's package with ``train.PREFETCH = False``
  (channels_last, augmentation in the loop);
- ``fit, prefetch on 2 threads``: the background thread on torch's threads
  (two here; ``train.PREFETCH_THREADS = None``), as at commit 645b5a5;
- ``fit``: today's default (channels_last, the next batch augmented in a
  background thread of one torch thread, ``train.PREFETCH_THREADS``);
- ``fit, GOMP_SPINCOUNT=1000``: today's default with OpenMP's threads
  spinning briefly before they sleep (``book/setup.md``; ``--wait``);
- ``fit, compile``: today's ``fit(compile=True)``; its first epoch holds the
  compilation (cold the first time, then from torch's on-disk cache);
- ``fit, bf16``: today's ``fit(precision="bf16")``, CPU autocast in bf16
  (honoured where the CPU has bf16 hardware, e.g. AVX512-BF16);
- ``model only`` (eager, compiled, bf16): the same step on fixed view tensors,
  no augmentation or indexing: the ceiling the pipeline is measured against.

A side's images/s are over its epochs after the first, the median over the
rounds; the rounds interleave the sides, so a load that comes and goes on a
shared machine touches them alike. Then: feature extraction (``evaluate``'s
forward over the train split) at three batch sizes, under ``no_grad`` and
``inference_mode``, each memory format; the augmentation of a batch (SimCLR's
and DINO's views) on one torch thread and on two (``--scans``: these alone).
``--wait``: ``fit`` under GNU OpenMP's passive wait (the package's setting)
and with short spin counts, on idle cores and beside a process that keeps
one core busy.
``--accuracy`` trains recipes
(``--methods``, default SimCLR) to their length with 3 seeds in each of
``--variants`` (fp32, bf16, compile), and prints the test kNN and the wall
time (compilation included) of each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "aad48e6"
ROOT = Path(__file__).resolve().parent.parent
SIDES = {  # name: worker options
    "fit @ " + BASELINE: {"baseline": True},
    "fit, no prefetch": {"prefetch": False},
    "fit, prefetch on 2 threads": {"prefetch_threads": None},
    "fit": {},
    "fit, GOMP_SPINCOUNT=1000": {"env": {"GOMP_SPINCOUNT": "1000"}},
    "fit, compile": {"compile": True},
    "fit, bf16": {"precision": "bf16"},
    "model only": {"model_only": True},
    "model only, compile": {"model_only": True, "compile": True},
    "model only, bf16": {"model_only": True, "precision": "bf16"},
}


PIPELINES = [("eager", "fit", "model only"), ("compiled", "fit, compile", "model only, compile"),
             ("bf16", "fit, bf16", "model only, bf16")]


def worker(spec: dict) -> dict:
    """One side, in this process; uses only what both package versions have."""
    import cookbook  # noqa: F401  (before torch: OpenMP wait policy)
    import torch
    from cookbook import augment, data, methods, models, train

    ds = data.load("shapes", image_size=16, seed=0)
    torch.manual_seed(spec.get("seed", 0))
    if spec.get("recipe"):  # today's package only
        from cookbook import recipes
        recipe = recipes.recipe(spec["recipe"])
        method = recipe.build(ds.image_size)
        views = recipe.make_views(method, ds.image_size)
        spec = {**spec, "steps": recipe.steps, "lr": recipe.lr, "optimizer": recipe.optimizer,
                "batch_size": recipe.batch_size}
    else:
        method = methods.SimCLR(models.ResNet((1, 1, 1, 1), 16), temperature=0.5)
        views = augment.simclr(16, min_scale=0.6)
    if spec.get("model_only"):
        return model_only(method, views, ds, spec)
    if "prefetch" in spec:
        train.PREFETCH = spec["prefetch"]
    if "prefetch_threads" in spec:
        train.PREFETCH_THREADS = spec["prefetch_threads"]
    options = {"batch_size": spec.get("batch_size", 256), "views": views, "lr": spec.get("lr", 0.6), "device": "cpu", "progress": False,
               "log": False, "seed": spec.get("seed", 0), "compile": bool(spec.get("compile"))}
    for key in ("precision", "optimizer"):  # only where asked: the old fit has no precision
        if key in spec:
            options[key] = spec[key]
    if "steps" in spec:
        options["steps"] = spec["steps"]
    else:
        options["epochs"] = spec["epochs"]
    start = time.perf_counter()
    history = train.fit(method, ds, **options)
    result = {"epoch_seconds": [e["seconds"] for e in history.epochs], "loss": history.epochs[-1]["loss"],
              "wall_s": time.perf_counter() - start, "package": str(Path(cookbook.__file__).parent)}
    if spec.get("knn"):
        from cookbook import evaluate
        result["knn"] = evaluate.knn_accuracy(evaluate.features(method, ds, "train"), ds.train_y,
                                              evaluate.features(method, ds, "test"), ds.test_y)
    return result


def model_only(method, views, ds, spec: dict) -> dict:
    """SimCLR steps on one fixed batch of views in fit's memory format: no augmentation, no indexing."""
    import torch
    from cookbook import train

    layout = train.memory_format(method, torch.device("cpu"))
    method.to(memory_format=layout).train()
    opt = train.make_optimizer(method, "sgd", 0.6, 5e-4)
    batch = [v.contiguous(memory_format=layout) for v in views(ds.train_x[:256], torch.Generator().manual_seed(0))]
    loss_fn = torch.compile(method.loss) if spec.get("compile") else method.loss
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if spec.get("precision") == "bf16"
                else contextlib.nullcontext())

    def step():
        with autocast:
            loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(3):
        step()
    first = time.perf_counter() - start
    seconds = []
    for _ in range(spec["epochs"] - 1):  # "epochs" of 39 steps, as fit's
        start = time.perf_counter()
        for _ in range(len(ds.train_x) // 256):
            step()
        seconds.append(time.perf_counter() - start)
    return {"epoch_seconds": [first] + seconds, "first_steps": 3}


def feature_scan() -> list[str]:
    """evaluate's forward over the 10,000 train images: batch size, autograd mode, memory format."""
    import cookbook  # noqa: F401
    import torch
    from cookbook import data, evaluate, recipes

    ds = data.load("shapes", image_size=16, seed=0)
    method = recipes.recipe("simclr").build(16)
    lines = []
    for layout in (torch.contiguous_format, torch.channels_last):
        method.to(memory_format=layout)
        for batch in (256, 512, 2048):
            rates = {}
            for name, mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
                with mode():
                    evaluate.features(method, ds, "train", batch_size=batch)
                    start = time.perf_counter()
                    for _ in range(2):
                        evaluate.features(method, ds, "train", batch_size=batch)
                    rates[name] = 2 * len(ds.train_x) / (time.perf_counter() - start)
            lines.append(f"  model {str(layout).split('.')[-1]:<18} batch {batch:>5}: "
                         + ", ".join(f"{k} {v:,.0f} img/s" for k, v in rates.items()))
    return lines


def augment_scan() -> list[str]:
    """Milliseconds per batch of 256 for a recipe's views at 16 px, on one torch thread and on two."""
    import cookbook  # noqa: F401
    import torch
    from cookbook import data, recipes

    ds = data.load("shapes", image_size=16, seed=0)
    lines, default = [], torch.get_num_threads()
    for name in ("simclr", "dino"):
        recipe = recipes.recipe(name)
        views = recipe.make_views(recipe.build(16), 16)
        ms = {}
        for threads in (1, 2, 1, 2):  # twice each, interleaved; the faster of the two counts
            torch.set_num_threads(threads)
            gen = torch.Generator().manual_seed(0)
            views(ds.train_x[:256], gen)
            start = time.perf_counter()
            for i in range(20):
                views(ds.train_x[256 * i:256 * (i + 1)], gen)
            ms[threads] = min(ms.get(threads, float("inf")), (time.perf_counter() - start) / 20 * 1000)
        lines.append(f"  {name:<7} ({len(views)} views): " + ", ".join(f"{t} thread{'s' * (t > 1)} {v:.1f} ms"
                                                                      for t, v in sorted(ms.items())))
    torch.set_num_threads(default)
    return lines


def baseline_tree(ref: str) -> tempfile.TemporaryDirectory:
    """The package at ``ref``, extracted from this repository's history."""
    folder = tempfile.TemporaryDirectory(prefix="cookbook-" + ref + "-")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "cookbook"], capture_output=True)
    if archive.returncode:
        raise SystemExit(f"cannot read commit {ref} from {ROOT}: {archive.stderr.decode().strip()} "
                         "(the benchmark needs the repository's history: run it in a full clone)")
    subprocess.run(["tar", "-x", "-C", folder.name], input=archive.stdout, check=True)
    return folder


def run_side(spec: dict, baseline: str | None) -> dict:
    # the package's wait policy; a spin count only where the side sets one
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    env.update(OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **spec.get("env", {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (baseline if spec.get("baseline") else str(ROOT),
                                                    env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"side {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def images_per_s(out: dict, steps: int) -> float:
    """A side's source images per second over its epochs after the first (batches of 256)."""
    timed = out["epoch_seconds"][1:]
    return len(timed) * steps * 256 / sum(timed)


def speed(args, steps: int) -> None:
    print(f"SimCLR testbed setting, {args.epochs} epochs of {steps} steps per side (the first untimed), "
          f"{args.rounds} rounds")
    sides = {name: SIDES[name] for name in args.sides}
    with baseline_tree(BASELINE) as old:
        rates = {name: [] for name in sides}
        first = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, options in sides.items():
                out = run_side({**options, "epochs": args.epochs}, old)
                rates[name].append(images_per_s(out, steps))
                first[name].append(out["epoch_seconds"][0])
                print(f"  round {r + 1}  {name:<27} {rates[name][-1]:>7,.0f} img/s  "
                      f"(first epoch {out['epoch_seconds'][0]:.1f} s)", flush=True)
    median = {name: statistics.median(v) for name, v in rates.items()}
    base = median["fit @ " + BASELINE]
    print(f"\n| side | img/s (median of {args.rounds}) | range | × fit @ {BASELINE} | first epoch s, round 1 "
          f"| later rounds |")
    print("|---|---|---|---|---|---|")
    for name in sides:
        later = f"{statistics.median(first[name][1:]):.1f}" if args.rounds > 1 else ""
        print(f"| {name} | {median[name]:,.0f} | {min(rates[name]):,.0f}-{max(rates[name]):,.0f} | "
              f"{median[name] / base:.2f} | {first[name][0]:.1f} | {later} |")
    pairs = [(label, loop, model) for label, loop, model in PIPELINES if loop in median and model in median]
    if pairs:
        print("pipeline / model only: " + ", ".join(f"{label} {median[loop] / median[model]:.0%}"
                                                    for label, loop, model in pairs))
    scans()


def scans() -> None:
    print("\nfeature extraction (evaluate.features, train split, 10,000 images):")
    print("\n".join(feature_scan()))
    print("\naugmentation of a batch of 256 at 16 px (the recipe's views, augment.Views):")
    print("\n".join(augment_scan()))


WAITS = {  # GNU OpenMP's wait between parallel regions: PASSIVE sleeps at once, a spin count spins first
    "passive (the package's)": {},
    "passive, GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "passive, GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
}


def wait_scan(args, steps: int) -> None:
    """``fit`` under each OpenMP wait setting, on idle cores and with one core kept busy by another process."""
    print(f"fit (SimCLR testbed setting) under OpenMP wait settings, {args.epochs} epochs of {steps} steps "
          f"(the first untimed), {args.rounds} rounds; 'busy': another process spins on one core")
    rates = {}
    for r in range(args.rounds):
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for name, env in WAITS.items():
                    out = run_side({"epochs": args.epochs, "env": env}, None)
                    rates.setdefault((name, busy), []).append(images_per_s(out, steps))
                    print(f"  round {r + 1}  {'busy' if busy else 'idle'}  {name:<30} "
                          f"{rates[name, busy][-1]:>7,.0f} img/s", flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    print(f"\n| wait setting | idle img/s (median of {args.rounds}) | one core busy |")
    print("|---|---|---|")
    for name in WAITS:
        print(f"| {name} | {statistics.median(rates[name, False]):,.0f} | {statistics.median(rates[name, True]):,.0f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="epochs of 39 steps per side and round (the first untimed)")
    p.add_argument("--accuracy", action="store_true", help="also full-length runs of recipes, 3 seeds per variant")
    p.add_argument("--methods", nargs="+", default=["simclr"], help="--accuracy: the recipes")
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "compile"],
                   help="--accuracy: fp32 eager, bf16 autocast, compiled fp32")
    p.add_argument("--skip-speed", action="store_true", help="--accuracy only")
    p.add_argument("--scans", action="store_true",
                   help="only the feature-extraction and augmentation scans (seconds, not the rounds)")
    p.add_argument("--wait", action="store_true",
                   help="only fit under OpenMP wait settings (passive, spin counts), idle and with a core busy")
    p.add_argument("--sides", nargs="+", default=list(SIDES), metavar="SIDE",
                   help=f"the sides to time (default: all; fit @ {BASELINE} is always among them): "
                        + "; ".join(SIDES))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first is not timed)")
    unknown = [name for name in args.sides if name not in SIDES]
    if unknown:
        p.error(f"unknown side(s) {', '.join(map(repr, unknown))}; choose from: {'; '.join(SIDES)}")
    args.sides = ["fit @ " + BASELINE] + [name for name in args.sides if name != "fit @ " + BASELINE]
    import cookbook  # noqa: F401
    import torch

    steps = 10_000 // 256
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # a cache of our own: the first round compiles cold, the later ones read torch's on-disk cache
    cache = tempfile.TemporaryDirectory(prefix="cookbook-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    if args.scans:
        scans()
    elif args.wait:
        wait_scan(args, steps)
    elif not args.skip_speed:
        speed(args, steps)
    if args.accuracy:
        print("\nfull-length runs (each recipe's steps), test kNN (k = 20); wall time with compilation:")
        for name in args.methods:
            for variant in args.variants:
                options = {"precision": "bf16"} if variant == "bf16" else {"compile": variant == "compile"}
                runs = [run_side({"recipe": name, "seed": seed, "knn": True, **options}, None) for seed in range(3)]
                knn = ", ".join(f"{o['knn']:.3f}" for o in runs)
                wall = ", ".join(f"{o['wall_s']:.0f}" for o in runs)
                mean, sd = statistics.mean(o["knn"] for o in runs), statistics.stdev(o["knn"] for o in runs)
                print(f"  {name:<8} {variant:<8} kNN {mean:.3f} ± {sd:.3f} ({knn}); wall {wall} s", flush=True)
    cache.cleanup()


if __name__ == "__main__":
    main()
