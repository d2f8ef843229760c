"""``python -m cookbook``: train a method and measure it, from the shell.

    python -m cookbook train --method simclr --dataset shapes --epochs 5 --out runs/demo

trains, evaluates with kNN on the test split (beside the same kNN on raw pixels,
the baseline to beat), writes ``OUT/metrics.json`` and
``OUT/checkpoint.pt``, and prints a one-screen summary.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import math
import sys
import time
from pathlib import Path

# Defaults that keep a bare `train --method simclr` under 2 minutes on 2 CPU cores.
CPU_DEFAULTS = {"width": 8, "subset": 4000, "test_subset": 1000}
GPU_DEFAULTS = {"width": 64, "subset": None, "test_subset": None}


KNN_K = 200  # neighbours of the summary's kNN; fewer when the train split is smaller
MIN_IMAGE_SIZE = 8  # below this the crops and the ResNet's downsampling leave next to nothing


class UsageError(ValueError):
    """A bad command line: ``main`` prints it as ``error: ...`` and returns 2."""


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _options(pairs: list[str]) -> dict:
    opts = {}
    for pair in pairs:
        key, sep, val = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--set takes KEY=VALUE, got {pair!r} (e.g. --set temperature=0.2)")
        if key in opts:
            raise UsageError(f"--set {key} is given twice; give each method option once")
        opts[key] = _value(val)
    return opts


_TYPE_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text",
               type(None): "none"}


def _option_types(param: inspect.Parameter) -> set[type] | None:
    """The types a constructor parameter takes, from its annotation (a string under
    ``from __future__ import annotations``) or else its default; None if unknown."""
    annotation = param.annotation
    if isinstance(annotation, str):
        names = [part.strip() for part in annotation.split("|")]
        if all(name in _TYPE_NAMES for name in names):
            return {_TYPE_NAMES[name] for name in names}
        return None
    if annotation in _TYPE_WORDS:
        return {annotation}
    if param.default is not inspect.Parameter.empty and type(param.default) in _TYPE_WORDS:
        return {type(param.default)}
    return None


def check_method_options(method: str, opts: dict) -> None:
    """Refuses a ``--set`` option the method's constructor does not take (naming
    the valid ones) or a value of the wrong type or range; raises UsageError."""
    from cookbook.methods import METHODS

    signature = inspect.signature(METHODS[method])
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return  # takes anything: the constructor is the judge
    params = {name: p for name, p in signature.parameters.items()
              if name != "backbone" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, value in opts.items():
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            valid = ", ".join(f"{name}={p.default!r}" for name, p in params.items())
            raise UsageError(f"--set {key}: {method} has no option {key!r}"
                             + (f"; did you mean {close[0]}?" if close else "")
                             + f" Its options (with defaults) are: {valid}")
        types, default = _option_types(params[key]), params[key].default
        if types is None:
            continue
        fits = (type(value) in types or (type(value) is int and float in types))
        if not fits:
            words = " or ".join(_TYPE_WORDS[t] for t in sorted(types, key=list(_TYPE_WORDS).index))
            raise UsageError(f"--set {key}={value!r}: {method}'s {key} takes {words} "
                             f"(default {default!r})")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--set {key}={value!r}: must be a finite number")
        minimum = 1 if key.endswith(("_dim", "_hidden")) else 0
        if type(value) is int and value < minimum:
            raise UsageError(f"--set {key}={value}: must be >= {minimum}")


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" only where there is a default and the help does not state it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.required or default is None or default is False or default == []
                or default is argparse.SUPPRESS or "default" in text):
            return text
        if text.endswith(")"):  # "(>= 1)" becomes "(>= 1; default: 5)"
            return f"{text[:-1]}; default: %(default)s)"
        return f"{text} (default: %(default)s)"


def parser() -> argparse.ArgumentParser:
    from cookbook.methods import METHODS
    from cookbook.models import BACKBONES
    from cookbook.train import BASE_LR, LR_RULES

    p = argparse.ArgumentParser(prog="python -m cookbook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a method, evaluate it, write metrics.json and a checkpoint",
                       formatter_class=_HelpFormatter,
                       epilog="Every option is checked before anything loads or trains; a bad one "
                              "prints 'error: ...' and exits with code 2.")
    t.add_argument("--method", required=True, choices=sorted(METHODS), help="SSL method")
    t.add_argument("--dataset", default="shapes", help="shapes, cifar10, or folder:PATH (a folder or .tar[.gz|.xz])")
    t.add_argument("--epochs", type=int, default=5, help="passes over the train split (>= 1)")
    t.add_argument("--out", default="runs/demo",
                   help="folder for metrics.json and checkpoint.pt (created; must be writable)")
    t.add_argument("--backbone", default="resnet18", choices=BACKBONES, help="encoder")
    t.add_argument("--width", type=int, default=None,
                   help=f"ResNet width, channels of the first stage (default {CPU_DEFAULTS['width']} "
                        f"on CPU, {GPU_DEFAULTS['width']} on CUDA)")
    t.add_argument("--batch-size", type=int, default=256, help="images per step (>= 2)")
    t.add_argument("--optimizer", default="sgd", choices=sorted(BASE_LR), help="optimiser")
    t.add_argument("--lr", type=float, default=None,
                   help="base learning rate per 256 images, > 0 (default per optimiser)")
    t.add_argument("--lr-rule", default="linear", choices=LR_RULES, help="batch-size learning-rate rule")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay, >= 0 (default per optimiser)")
    t.add_argument("--subset", type=int, default=None,
                   help=f"train images, stratified (default {CPU_DEFAULTS['subset']} on CPU, all on CUDA)")
    t.add_argument("--test-subset", type=int, default=None,
                   help=f"test images, stratified (default {CPU_DEFAULTS['test_subset']} on CPU, all on CUDA)")
    t.add_argument("--image-size", type=int, default=None,
                   help=f"resize images to this side, pixels (>= {MIN_IMAGE_SIZE}; "
                        "default: native)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--seed", type=int, default=0,
                   help="seed for data, model and augmentation (0 to 2**32 - 1)")
    t.add_argument("--compile", action="store_true", help="torch.compile the loss")
    t.add_argument("--eval-every", type=int, default=0,
                   help="online kNN on a validation split every k epochs (0 = never)")
    t.add_argument("--checkpoint-every", type=int, default=1,
                   help="write a checkpoint every k epochs (0 = at the end only)")
    t.add_argument("--resume", default=None,
                   help="continue the run that wrote this checkpoint, with the same options")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable, e.g. --set temperature=0.2 "
                        "--set proj_depth=3 (a wrong key lists the valid ones)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (epoch lines only)")
    return p


def _int_option(args, name: str, minimum: int, maximum: int | None = None, what: str = "") -> None:
    value = getattr(args, name.lstrip("-").replace("-", "_"))
    if value is not None and (value < minimum or (maximum is not None and value >= maximum)):
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum - 1}"
        raise UsageError(f"{name} must be {bound}{what}, got {value}")


def _float_option(args, name: str, minimum: float, strict: bool) -> None:
    value = getattr(args, name.lstrip("-").replace("-", "_"))
    if value is not None and (not math.isfinite(value) or value < minimum
                              or (strict and value == minimum)):
        relation = ">" if strict else ">="
        raise UsageError(f"{name} must be a finite number {relation} {minimum}, got {value}")


def validate(args) -> dict:
    """Checks every option of ``train`` before any work starts: ranges, the
    dataset name, the method's ``--set`` options, the output folder (created and
    proved writable) and, with ``--resume``, the checkpoint file and the settings
    it records. Returns the parsed ``--set`` options; raises UsageError."""
    from cookbook import data
    from cookbook.train import (BASE_LR, MAX_SEED, WEIGHT_DECAY, check_output_folder,
                                load_checkpoint, resolve_device, resume_conflicts)

    _int_option(args, "--epochs", 1)
    _int_option(args, "--batch-size", 2, what=" (the losses compare the images of a batch)")
    _int_option(args, "--width", 1, what=" (channels)")
    _int_option(args, "--subset", 1, what=" (images)")
    _int_option(args, "--test-subset", 1, what=" (images)")
    _int_option(args, "--image-size", MIN_IMAGE_SIZE, what=" (pixels)")
    _int_option(args, "--seed", 0, MAX_SEED)
    _int_option(args, "--eval-every", 0, what=" (0 = never)")
    _int_option(args, "--checkpoint-every", 0, what=" (0 = at the end only)")
    _float_option(args, "--lr", 0, strict=True)
    _float_option(args, "--weight-decay", 0, strict=False)
    if args.backbone != "resnet18" and args.width is not None:
        raise UsageError(f"--width sets the ResNet's width; {args.backbone} has a fixed width, "
                         f"leave --width out")
    if args.backbone == "vit_tiny" and args.image_size is not None and args.image_size % 4:
        raise UsageError(f"--image-size {args.image_size}: vit_tiny cuts 4x4 patches, so pass a "
                         f"multiple of 4")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None

    name = args.dataset
    if name not in ("shapes", "cifar10") and not name.startswith("folder:"):
        raise UsageError(f"unknown dataset {name!r}; valid names: {', '.join(data.DATASETS)}")
    if name.startswith("folder:"):
        path = Path(name[len("folder:"):]).expanduser()
        if not name[len("folder:"):] or not path.exists():
            raise UsageError(f"--dataset {name}: no such folder or archive; pass folder:PATH with "
                             f"PATH an existing folder or .tar/.tar.gz/.tgz/.tar.xz laid out as "
                             f"train/<class>/<image> and test/<class>/<image>")
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    subset = args.subset if args.subset is not None else defaults["subset"]
    train_size = subset if subset is not None or name != "shapes" else data.SHAPES_TRAIN_SIZE
    if train_size is not None and args.batch_size > train_size:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the train split "
                         f"({train_size} images); pass a smaller --batch-size or a larger --subset")

    opts = _options(args.set)
    check_method_options(args.method, opts)
    try:
        check_output_folder(args.out)
    except ValueError as e:
        raise UsageError(f"--out: {e}") from None

    if args.resume is not None:
        try:
            ckpt = load_checkpoint(args.resume)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--resume: {e}") from None
        saved = ckpt["config"]
        lr = BASE_LR[args.optimizer] if args.lr is None else args.lr
        decay = WEIGHT_DECAY[args.optimizer] if args.weight_decay is None else args.weight_decay
        now = {"method": args.method, "dataset": args.dataset, "epochs": args.epochs,
               "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": lr,
               "lr_rule": args.lr_rule, "weight_decay": decay, "seed": args.seed,
               "device_type": device.type}
        conflicts = resume_conflicts(saved, now)
        saved_opts = saved.get("options") or {}
        conflicts += [f"method option {k} was {saved_opts[k]!r}, now {v!r}"
                      for k, v in opts.items() if k in saved_opts and saved_opts[k] != v]
        if conflicts:
            raise UsageError(f"--resume {args.resume} was written by a different run: "
                             + ", ".join(conflicts) + ". Resume with the options the run was started "
                             "with (its metrics.json lists them), or start a new run without --resume")
    return opts


def train(args) -> dict:
    opts = validate(args)
    import torch

    from cookbook import data, evaluate, metrics, methods, models
    from cookbook.train import fit

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    width = args.width if args.width is not None else defaults["width"]
    subset = args.subset if args.subset is not None else defaults["subset"]
    test_subset = args.test_subset if args.test_subset is not None else defaults["test_subset"]
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ds = data.load(args.dataset, subset=subset, test_subset=test_subset, image_size=args.image_size, seed=args.seed)
    print(ds)
    net = models.backbone(args.backbone, width=width, image_size=ds.image_size)
    try:
        method = methods.build(args.method, net, **opts)
    except (TypeError, RuntimeError, IndexError) as e:  # an option value the constructor cannot use
        raise UsageError(f"{args.method} cannot be built with --set {opts}: {e}") from e
    out = Path(args.out)
    history = fit(method, ds, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                  lr=args.lr, lr_rule=args.lr_rule, weight_decay=args.weight_decay, device=args.device,
                  compile=args.compile, seed=args.seed, eval_every=args.eval_every,
                  checkpoint_every=args.checkpoint_every, out=out, resume=args.resume,
                  progress=not args.no_progress)
    train_f = evaluate.features(method, ds, "train")
    test_f = evaluate.features(method, ds, "test")
    k = min(KNN_K, len(ds.train_x))
    knn = evaluate.knn_accuracy(train_f, ds.train_y.cpu(), test_f, ds.test_y.cpu(), k=k)
    # the same kNN on raw pixels: the baseline that says whether training taught the network anything
    knn_pixels = evaluate.knn_accuracy(evaluate.pixels(ds, "train"), ds.train_y,
                                       evaluate.pixels(ds, "test"), ds.test_y, k=k)
    emb = evaluate.features(method, ds, "train", which="embedding")[:25_600]
    result = {
        "method": args.method, "dataset": ds.name, "train_size": len(ds.train_x), "test_size": len(ds.test_x),
        "backbone": models.describe(net), "options": opts, "epochs": args.epochs,
        "batch_size": args.batch_size, "device": history.device,
        "knn_test": float(knn), "knn_test_raw_pixels": float(knn_pixels), "knn_k": k,
        "rankme": float(metrics.rankme(emb)),
        "wall_time_s": time.perf_counter() - t0, "history": history.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(summary(result, out))
    return result


def summary(r: dict, out: Path) -> str:
    h = r["history"]
    resumed = h.get("start_epoch", 0)
    written = [out / "metrics.json"] + [out / "checkpoint.pt"] * (out / "checkpoint.pt").is_file()
    lines = [
        "",
        f"{r['method']} on {r['dataset']} ({r['train_size']:,} train / {r['test_size']:,} test images)",
        f"  backbone     {r['backbone']}",
        f"  training     {r['epochs']} epochs, {h['steps']} steps of {r['batch_size']}, {h['wall_time_s']:.1f} s "
        f"on {r['device']} ({h['images_per_s']:.0f} img/s, peak memory {h['peak_memory_mb']:.0f} MB)"
        + (", all sessions" if resumed else ""),
        f"  final loss   {h['epochs'][-1]['loss']:.4f}" if h["epochs"] else "  final loss   -",
        f"  kNN (test)   {100 * r['knn_test']:.1f} %   (k={r.get('knn_k', KNN_K)}, cosine, T=0.1; "
        f"raw pixels: {100 * r['knn_test_raw_pixels']:.1f} %)",
        f"  RankMe       {r['rankme']:.1f}   (embedding, train images)",
        f"  total time   {r['wall_time_s']:.1f} s"
        + (f" in this session (resumed after epoch {resumed})" if resumed else ""),
        f"  wrote        {', '.join(map(str, written))}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv``; returns the exit code: 0 done, 2 bad input
    (``error: ...`` on stderr, nothing trained), 1 a run that failed on its way
    (the loss diverged, a disk filled), 130 interrupted. argparse's own errors
    (an unknown option or method) exit with 2 by SystemExit."""
    args = parser().parse_args(argv)
    from cookbook.train import CHECKPOINT_NAME, NonFiniteLossError

    try:
        if args.command == "train":
            train(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: say what and how to fix, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}; a checkpoint written before this (if any) is intact", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        ckpt = Path(args.out) / CHECKPOINT_NAME
        hint = f"; continue with --resume {ckpt} and the same options" if ckpt.is_file() else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
