"""``python -m cookbook``: train a method and measure it, from the shell.

    python -m cookbook train --method simclr --out runs/demo

trains with the method's CPU testbed recipe (``cookbook.recipes``: ``shapes``
at 16 px, ResNet-10 width 16, a fixed number of steps; every option below
overrides it), evaluates with kNN on the test split (beside the same kNN on
raw pixels, the baseline to beat), writes ``OUT/metrics.json`` and
``OUT/checkpoint.pt``, and prints a one-screen summary. Under torchrun
(``torchrun --nproc-per-node=N -m cookbook train ...``) every process trains
its share of each batch and rank 0 alone prints, evaluates and writes.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import math
import signal
import sys
import time
from pathlib import Path

RECIPE = "(default: the method's testbed recipe)"
KNN_K = 20  # neighbours of the summary's kNN (cookbook.evaluate.knn_accuracy's default)
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
    from cookbook.train import BASE_LR, LR_RULES, PRECISIONS

    p = argparse.ArgumentParser(prog="python -m cookbook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a method, evaluate it, write metrics.json and a checkpoint",
                       formatter_class=_HelpFormatter,
                       epilog="Every option is checked before anything loads or trains; a bad one "
                              "prints 'error: ...' and exits with code 2.")
    t.add_argument("--method", required=True, choices=sorted(METHODS), help="SSL method")
    t.add_argument("--dataset", default="shapes", help="shapes, cifar10, or folder:PATH (a folder or .tar[.gz|.xz])")
    t.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps in all (>= 1) {RECIPE}")
    t.add_argument("--epochs", type=int, default=None,
                   help="passes over the train split (>= 1), instead of --steps")
    t.add_argument("--out", default="runs/demo",
                   help="folder for metrics.json and checkpoint.pt (created; must be writable)")
    t.add_argument("--backbone", default=None, choices=BACKBONES, help=f"encoder {RECIPE}")
    t.add_argument("--width", type=int, default=None,
                   help=f"ResNet width, channels of the first stage {RECIPE}")
    t.add_argument("--batch-size", type=int, default=None,
                   help=f"images per step, >= 2 {RECIPE}; under torchrun, all processes together")
    t.add_argument("--optimizer", default=None, choices=sorted(BASE_LR), help=f"optimiser {RECIPE}")
    t.add_argument("--lr", type=float, default=None,
                   help=f"base learning rate per 256 images, > 0 {RECIPE}")
    t.add_argument("--lr-rule", default="linear", choices=LR_RULES, help="batch-size learning-rate rule")
    t.add_argument("--weight-decay", type=float, default=None,
                   help=f"weight decay, >= 0 {RECIPE}")
    t.add_argument("--subset", type=int, default=None,
                   help="train images, stratified (default: all)")
    t.add_argument("--test-subset", type=int, default=None,
                   help="test images, stratified (default: all)")
    t.add_argument("--image-size", type=int, default=None,
                   help=f"resize images to this side, pixels (>= {MIN_IMAGE_SIZE}) {RECIPE}")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--seed", type=int, default=0,
                   help="seed for data, model and augmentation (0 to 2**32 - 1)")
    t.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision; auto: fp32 on a CPU, bf16 or fp16 on a GPU by its hardware; "
                        "bf16 on a CPU with bf16 hardware is 1.2-1.3x faster")
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


def settings(args) -> dict:
    """The run's settings: each option given on the command line, else the
    method's testbed recipe (:mod:`cookbook.recipes`). ``options`` are the
    recipe's method options updated by ``--set``; ``steps`` is None when
    ``--epochs`` is given."""
    from cookbook import recipes

    r = recipes.recipe(args.method)
    if args.steps is not None and args.epochs is not None:
        raise UsageError(f"--steps {args.steps} and --epochs {args.epochs}: give one run length, not both")
    chosen = {name: getattr(args, name) if getattr(args, name) is not None else getattr(r, name)
              for name in ("backbone", "width", "batch_size", "optimizer", "lr", "weight_decay", "image_size")}
    steps = None if args.epochs is not None else (args.steps if args.steps is not None else r.steps)
    vit = r.vit or recipes.VIT_OPTIONS
    return {**chosen, "recipe": r, "steps": steps, "epochs": args.epochs,
            "vit": vit if chosen["backbone"] == "vit_tiny" else {}, "options": {**r.options, **_options(args.set)}}


def validate(args) -> dict:
    """Checks every option of ``train`` before any work starts: ranges, the
    dataset name, the method's ``--set`` options, the output folder (created and
    proved writable) and, with ``--resume``, the checkpoint file and the settings
    it records. Returns the run's :func:`settings`; raises UsageError."""
    from cookbook import data, distributed
    from cookbook.train import (BASE_LR, MAX_SEED, WEIGHT_DECAY, check_output_folder,
                                load_checkpoint, resolve_device, resume_conflicts, select_precision)

    _int_option(args, "--epochs", 1)
    _int_option(args, "--steps", 1)
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
    run = settings(args)
    world = distributed.planned_world_size()
    if run["batch_size"] % world or run["batch_size"] // world < 2:
        raise UsageError(f"--batch-size {run['batch_size']} is the batch of all {world} processes "
                         f"together: pass a multiple of {world}, with at least 2 images per "
                         f"process")
    if run["backbone"] == "vit_tiny" and args.width is not None:
        raise UsageError("--width sets a ResNet's width; vit_tiny has a fixed width, leave --width out")
    patch = run["vit"].get("patch_size", 4)
    if run["backbone"] == "vit_tiny" and run["image_size"] % patch:
        raise UsageError(f"--image-size {run['image_size']}: vit_tiny cuts {patch}x{patch} patches, so "
                         f"pass a multiple of {patch}")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None
    try:
        select_precision(device, args.precision)
    except ValueError as e:
        raise UsageError(f"--precision: {e}") from None

    name = args.dataset
    if name not in ("shapes", "cifar10") and not name.startswith("folder:"):
        raise UsageError(f"unknown dataset {name!r}; valid names: {', '.join(data.DATASETS)}")
    if name.startswith("folder:"):
        path = Path(name[len("folder:"):]).expanduser()
        if not name[len("folder:"):] or not path.exists():
            raise UsageError(f"--dataset {name}: no such folder or archive; pass folder:PATH with "
                             f"PATH an existing folder or .tar/.tar.gz/.tgz/.tar.xz laid out as "
                             f"train/<class>/<image> and test/<class>/<image>")
    subset = args.subset
    train_size = subset if subset is not None or name != "shapes" else data.SHAPES_TRAIN_SIZE
    if train_size is not None and run["batch_size"] > train_size:
        raise UsageError(f"--batch-size {run['batch_size']} is larger than the train split "
                         f"({train_size} images); pass a smaller --batch-size or a larger --subset")

    opts = run["options"]
    check_method_options(args.method, opts)
    if args.method == "wmse":  # whitening sub-batches must tile each process's batch
        from cookbook.methods import WMSE
        w_size = opts.get("w_size", inspect.signature(WMSE).parameters["w_size"].default)
        per_process = run["batch_size"] // world
        if per_process < w_size or per_process % w_size:
            raise UsageError(f"--batch-size {run['batch_size']}: W-MSE whitens sub-batches of w_size={w_size} "
                             f"images, so each process's batch ({per_process}) must be a multiple of it; "
                             f"pass --batch-size {max(w_size, per_process // w_size * w_size) * world} "
                             f"or --set w_size=...")
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
        lr = BASE_LR[run["optimizer"]] if run["lr"] is None else run["lr"]
        decay = WEIGHT_DECAY[run["optimizer"]] if run["weight_decay"] is None else run["weight_decay"]
        now = {"method": args.method, "dataset": args.dataset, "batch_size": run["batch_size"],
               "optimizer": run["optimizer"], "lr": lr, "lr_rule": args.lr_rule, "weight_decay": decay,
               "seed": args.seed, "device_type": device.type}
        if run["steps"] is not None:
            now["steps"] = run["steps"]
        else:
            now["epochs"] = run["epochs"]
        conflicts = resume_conflicts(saved, now)
        saved_opts = saved.get("options") or {}
        conflicts += [f"method option {k} was {saved_opts[k]!r}, now {v!r}"
                      for k, v in opts.items() if k in saved_opts and saved_opts[k] != v]
        if conflicts:
            raise UsageError(f"--resume {args.resume} was written by a different run: "
                             + ", ".join(conflicts) + ". Resume with the options the run was started "
                             "with (its metrics.json lists them), or start a new run without --resume")
    return run


def train(args) -> dict:
    run = validate(args)
    import torch

    from cookbook import data, distributed, evaluate, metrics, methods, models
    from cookbook.train import fit

    if distributed.launched():  # torchrun: join the process group before any work
        distributed.stop_on_sigterm()
        distributed.setup(args.device)
    main = distributed.is_main()  # rank 0 prints, evaluates and writes; the others only train
    opts = run["options"]
    t0 = time.perf_counter()
    # under torchrun every process holds the data; rank 0 downloads or decodes it first
    ds = distributed.staggered(lambda: data.load(args.dataset, subset=args.subset,
                                                 test_subset=args.test_subset,
                                                 image_size=run["image_size"], seed=args.seed))
    if main:
        print(ds)
    torch.manual_seed(args.seed)  # just before the weights are drawn, as benchmarks/testbed.py does
    net = models.backbone(run["backbone"], width=run["width"], image_size=ds.image_size, **run["vit"])
    try:
        method = methods.build(args.method, net, **opts)
    except (TypeError, RuntimeError, IndexError) as e:  # an option value the constructor cannot use
        raise UsageError(f"{args.method} cannot be built with --set {opts}: {e}") from e
    out = Path(args.out)
    history = fit(method, ds, epochs=run["epochs"], steps=run["steps"], batch_size=run["batch_size"],
                  views=run["recipe"].make_views(method, ds.image_size), optimizer=run["optimizer"],
                  lr=run["lr"], lr_rule=args.lr_rule, weight_decay=run["weight_decay"], device=args.device,
                  precision=args.precision, compile=args.compile, seed=args.seed, eval_every=args.eval_every,
                  checkpoint_every=args.checkpoint_every, out=out, resume=args.resume,
                  progress=not args.no_progress)
    if not main:
        return {}
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
        "image_size": ds.image_size, "backbone": models.describe(net), "options": opts,
        "steps": history.steps, "epochs": len(history.epochs), "batch_size": run["batch_size"],
        "optimizer": run["optimizer"], "processes": distributed.world_size(),
        "device": history.device,
        "knn_test": float(knn), "knn_test_raw_pixels": float(knn_pixels), "knn_k": k,
        "rankme": float(metrics.rankme(emb)),
    }
    if args.method in ("mae", "simmim"):  # MIM's own evaluation: 10 % of the labels, against scratch
        fine_tune = {"labelled_fraction": 0.1, "steps": 300, "batch_size": 128, "seed": args.seed}
        result["finetune10_test"] = evaluate.fine_tune(method.backbone, ds, **fine_tune)
        torch.manual_seed(args.seed)  # the same network, initialised as the method initialises it, untrained
        fresh = models.backbone(run["backbone"], width=run["width"], image_size=ds.image_size, **run["vit"])
        scratch = methods.build(args.method, fresh, **opts).backbone.to(history.device)
        result["finetune10_test_scratch"] = evaluate.fine_tune(scratch, ds, **fine_tune)
    result.update(wall_time_s=time.perf_counter() - t0, history=history.to_dict())
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
        f"  training     {h['steps']} steps of {r['batch_size']} ({r['epochs']} epochs), "
        f"{h['wall_time_s']:.1f} s "
        f"on {r['device']}"
        + (f" x {r['processes']} processes" if r.get("processes", 1) > 1 else "")
        + f" ({h['images_per_s']:.0f} img/s, peak memory {h['peak_memory_mb']:.0f} MB)"
        + (", all sessions" if resumed else ""),
        f"  final loss   {h['epochs'][-1]['loss']:.4f}" if h["epochs"] else "  final loss   -",
        f"  kNN (test)   {100 * r['knn_test']:.1f} %   (k={r.get('knn_k', KNN_K)}, cosine, T=0.1; "
        f"raw pixels: {100 * r['knn_test_raw_pixels']:.1f} %)",
        f"  RankMe       {r['rankme']:.1f}   (embedding, train images)",
        *([f"  fine-tune    {100 * r['finetune10_test']:.1f} %   (10 % of the labels, 300 steps; the same "
           f"network from scratch: {100 * r['finetune10_test_scratch']:.1f} %)"] if "finetune10_test" in r else []),
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
    from cookbook import distributed
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
    except RuntimeError as e:  # under torchrun: another process of the run died
        stopped = distributed.lost_contact(e)
        if stopped is None:
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's SIGTERM must not cut this short
        ckpt = Path(args.out) / CHECKPOINT_NAME
        kept = (f"the last complete checkpoint, {ckpt}, is intact; continue with the same "
                f"torchrun command and --resume {ckpt}" if ckpt.is_file()
                else "no checkpoint was written yet")
        print(f"error (rank {distributed.planned_rank()}): {stopped}; {kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        ckpt = Path(args.out) / CHECKPOINT_NAME
        hint = f"; continue with --resume {ckpt} and the same options" if ckpt.is_file() else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
