"""``python -m cookbook``: train a method and measure it, from the shell.

    python -m cookbook train --method simclr --dataset shapes --epochs 5 --out runs/demo

trains, evaluates with kNN on the test split (beside the same kNN on raw pixels,
the baseline to beat), writes ``OUT/metrics.json`` and
``OUT/checkpoint.pt``, and prints a one-screen summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Defaults that keep a bare `train --method simclr` under 2 minutes on 2 CPU cores.
CPU_DEFAULTS = {"width": 8, "subset": 4000, "test_subset": 1000}
GPU_DEFAULTS = {"width": 64, "subset": None, "test_subset": None}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _options(pairs: list[str]) -> dict:
    opts = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r} (e.g. --set temperature=0.2)")
        opts[key.replace("-", "_")] = _value(val)
    return opts


def parser() -> argparse.ArgumentParser:
    from cookbook.methods import METHODS
    from cookbook.models import BACKBONES
    from cookbook.train import BASE_LR, LR_RULES

    p = argparse.ArgumentParser(prog="python -m cookbook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a method, evaluate it, write metrics.json and a checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--method", required=True, choices=sorted(METHODS), help="SSL method")
    t.add_argument("--dataset", default="shapes", help="shapes, cifar10, or folder:PATH (a folder or .tar[.gz|.xz])")
    t.add_argument("--epochs", type=int, default=5, help="passes over the train split")
    t.add_argument("--out", default="runs/demo", help="folder for metrics.json and checkpoint.pt")
    t.add_argument("--backbone", default="resnet18", choices=BACKBONES, help="encoder")
    t.add_argument("--width", type=int, default=None,
                   help=f"ResNet width (default {CPU_DEFAULTS['width']} on CPU, {GPU_DEFAULTS['width']} on CUDA)")
    t.add_argument("--batch-size", type=int, default=256, help="images per step")
    t.add_argument("--optimizer", default="sgd", choices=sorted(BASE_LR), help="optimiser")
    t.add_argument("--lr", type=float, default=None, help="base learning rate per 256 images (default per optimiser)")
    t.add_argument("--lr-rule", default="linear", choices=LR_RULES, help="batch-size learning-rate rule")
    t.add_argument("--weight-decay", type=float, default=None, help="default per optimiser")
    t.add_argument("--subset", type=int, default=None,
                   help=f"train images, stratified (default {CPU_DEFAULTS['subset']} on CPU, all on CUDA)")
    t.add_argument("--test-subset", type=int, default=None,
                   help=f"test images, stratified (default {CPU_DEFAULTS['test_subset']} on CPU, all on CUDA)")
    t.add_argument("--image-size", type=int, default=None, help="resize images to this side (pixels)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--seed", type=int, default=0, help="seed for data, model and augmentation")
    t.add_argument("--compile", action="store_true", help="torch.compile the loss")
    t.add_argument("--eval-every", type=int, default=0, help="online kNN on a validation split every k epochs")
    t.add_argument("--checkpoint-every", type=int, default=1, help="write a checkpoint every k epochs")
    t.add_argument("--resume", default=None, help="continue the run that wrote this checkpoint")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable, e.g. --set temperature=0.2 --set proj_depth=3")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    return p


def train(args) -> dict:
    import torch

    from cookbook import data, evaluate, metrics, methods, models
    from cookbook.train import fit

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    width = args.width or defaults["width"]
    subset = args.subset if args.subset is not None else defaults["subset"]
    test_subset = args.test_subset if args.test_subset is not None else defaults["test_subset"]
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ds = data.load(args.dataset, subset=subset, test_subset=test_subset, image_size=args.image_size, seed=args.seed)
    print(ds)
    net = models.backbone(args.backbone, width=width, image_size=ds.image_size)
    method = methods.build(args.method, net, **_options(args.set))
    out = Path(args.out)
    history = fit(method, ds, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                  lr=args.lr, lr_rule=args.lr_rule, weight_decay=args.weight_decay, device=args.device,
                  compile=args.compile, seed=args.seed, eval_every=args.eval_every,
                  checkpoint_every=args.checkpoint_every, out=out, resume=args.resume,
                  progress=not args.no_progress)
    train_f = evaluate.features(method, ds, "train")
    test_f = evaluate.features(method, ds, "test")
    knn = evaluate.knn_accuracy(train_f, ds.train_y.cpu(), test_f, ds.test_y.cpu())
    # the same kNN on raw pixels: the baseline that says whether training taught the network anything
    knn_pixels = evaluate.knn_accuracy(evaluate.pixels(ds, "train"), ds.train_y,
                                       evaluate.pixels(ds, "test"), ds.test_y)
    emb = evaluate.features(method, ds, "train", which="embedding")[:25_600]
    result = {
        "method": args.method, "dataset": ds.name, "train_size": len(ds.train_x), "test_size": len(ds.test_x),
        "backbone": models.describe(net), "options": _options(args.set), "epochs": args.epochs,
        "batch_size": args.batch_size, "device": history.device,
        "knn_test": float(knn), "knn_test_raw_pixels": float(knn_pixels), "rankme": float(metrics.rankme(emb)),
        "wall_time_s": time.perf_counter() - t0, "history": history.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(summary(result, out))
    return result


def summary(r: dict, out: Path) -> str:
    h = r["history"]
    lines = [
        "",
        f"{r['method']} on {r['dataset']} ({r['train_size']:,} train / {r['test_size']:,} test images)",
        f"  backbone     {r['backbone']}",
        f"  training     {r['epochs']} epochs, {h['steps']} steps of {r['batch_size']}, {h['wall_time_s']:.1f} s "
        f"on {r['device']} ({h['images_per_s']:.0f} img/s, peak memory {h['peak_memory_mb']:.0f} MB)",
        f"  final loss   {h['epochs'][-1]['loss']:.4f}" if h["epochs"] else "  final loss   -",
        f"  kNN (test)   {100 * r['knn_test']:.1f} %   (k=200, cosine, T=0.1; "
        f"raw pixels: {100 * r['knn_test_raw_pixels']:.1f} %)",
        f"  RankMe       {r['rankme']:.1f}   (embedding, train images)",
        f"  total time   {r['wall_time_s']:.1f} s",
        f"  wrote        {out / 'metrics.json'}, {out / 'checkpoint.pt'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            train(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: say what and how to fix, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
