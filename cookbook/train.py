"""``fit``: the one training loop every chapter uses.

The data already lives on the training device as uint8 tensors; a batch is an
index slice of them, augmented on the device (``cookbook.augment``). No
DataLoader, no per-sample Python. The loop adds: SGD, LARS (You et al., 2017)
or AdamW; linear warm-up then cosine decay, per step (a length in epochs or in
optimiser steps); the batch-size learning-rate rule; mixed precision chosen
for the device (:func:`select_precision`; fp32 on CPU unless bf16 is asked for
where the CPU has it); the channels_last memory format (1.2-1.7x faster on a
2-core CPU as well; :func:`memory_format` says when it is left out); the next
batch augmented in a background thread of one torch thread while the
model steps (:func:`prefetched`; the same batches in the same order; on 2
CPU cores the whole loop then ran at 96-100 % of the speed of the model's
step alone, ``benchmarks/README.md``); optional
``torch.compile``; atomic checkpoints and resume; a check that stops on a
non-finite loss. Launched by ``torchrun``, it trains with
DistributedDataParallel (``cookbook.distributed``; the book's "Scaling out").
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import os
import queue
import resource
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
from tqdm import tqdm

from cookbook import distributed

# Learning rates are given for a batch of 256 and scaled by `lr_rule`.
BASE_LR = {"sgd": 0.06, "lars": 0.3, "adamw": 1e-3}
WEIGHT_DECAY = {"sgd": 5e-4, "lars": 1e-6, "adamw": 0.05}
LR_RULES = ("linear", "sqrt", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_NAME = "checkpoint.pt"
MAX_SEED = 2**32  # seeds are integers in [0, MAX_SEED)
# On a CPU, fit augments batch i + 1 in a background thread while the model steps on batch i
# (prefetched). On CUDA the augmentation is already asynchronous, and the thread is not measured there.
PREFETCH = True
# torch threads of that background thread. At the testbed's sizes the augmentation is many small ops,
# faster on one thread than on two, and one thread leaves the cores to the model (benchmarks/ceiling.py).
# Measured on 2 cores only: on many cores with large images, where one thread could fall behind the
# model, raise it (`python benchmarks/ceiling.py --scans` times a batch's views on 1 and 2 threads).
PREFETCH_THREADS = 1
_CHECKPOINT_KEYS = ("method", "optimizer", "epoch", "step", "history", "config", "generator")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or resumed from; the message says why and what to do."""


@dataclass
class History:
    """What a run did. ``epochs`` holds one dict per epoch: ``epoch``, ``loss``
    (mean over the epoch), ``lr`` (at the epoch's last step), ``seconds``
    (training time), and ``knn_val`` (kNN accuracy on a validation split carved
    from train, in [0, 1]) / ``rankme`` on the epochs where they were asked for."""

    epochs: list[dict] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0         # training time, all epochs, evaluation excluded
    images_per_s: float = 0.0        # source images per second (each gives len(views) views)
    peak_memory_mb: float = 0.0      # CUDA: peak allocated; CPU: peak resident set of the process
    device: str = "cpu"
    precision: str = "fp32"          # autocast precision (see select_precision)
    start_epoch: int = 0             # epochs done before this call (> 0 after a resume)

    def column(self, key: str) -> list:
        return [e.get(key) for e in self.epochs]

    @property
    def final_loss(self) -> float:
        return self.epochs[-1]["loss"] if self.epochs else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_lr(base_lr: float, batch_size: int, rule: str = "linear") -> float:
    """The batch-size rule: ``base_lr * B/256`` (linear, Goyal et al. 2017) or
    ``base_lr * sqrt(B/256)`` (square root, as SimCLR uses with LARS)."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / 256)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr_rule {rule!r}; choose one of {', '.join(LR_RULES)}")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from ~0 to ``peak`` over ``warmup_steps``, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return cosine_schedule(step - warmup_steps, total_steps - warmup_steps, peak, 0.0)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older torch, or a build without oneDNN
        return False


def select_precision(device: torch.device, requested: str = "auto") -> str:
    """The autocast precision for ``device``: "fp32", "bf16" or "fp16".

    "auto" is fp32 on CPU, bf16 on GPUs that compute it natively (compute
    capability 8.0 or newer: A100, H100, RTX 30xx and later) and fp16 with a
    gradient scaler on older ones (a T4, Colab's free GPU, has no bf16
    hardware). An explicit request is honoured on CUDA. On a CPU, "bf16" is
    honoured where the CPU has bf16 hardware (:func:`cpu_has_native_bf16`;
    1.2-1.3x the steps/s of fp32 on 2 Zen 5 cores, ``benchmarks/ceiling.py``),
    and refused elsewhere, where it is emulated and slow; fp16 is CUDA's only.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type != "cuda":
        if requested == "bf16" and device.type == "cpu":
            if not cpu_has_native_bf16():
                raise ValueError("precision bf16 on this CPU would be emulated (it has no AVX512-BF16 or AMX): "
                                 "use fp32 (or auto)")
            return "bf16"
        if requested in ("bf16", "fp16"):
            raise ValueError(f"precision {requested} on {device.type} is not supported: fp16 is for CUDA "
                             f"devices, bf16 for CUDA and CPUs with bf16 hardware; use fp32 (or auto)")
        return "fp32"
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"


def memory_format(method: torch.nn.Module, device: torch.device) -> torch.memory_format:
    """``torch.channels_last``, except on a CPU for a network with a strided
    convolution of fewer than 8 input channels: a ResNet narrower than 8, or
    a ViT (its patch embedding reads the 3 colour channels with a stride).

    There torch 2.14's oneDNN backward of that convolution in channels_last
    corrupts the heap when torch runs one thread (``double free or
    corruption``; a 1x1 stride-2 convolution from 4 to 8 channels is enough,
    and the ViT's 3 -> 96 patch embedding segfaults), which kills the
    process. Narrow ResNets only appear in tests and smoke runs, and a ViT
    has that one convolution, so they train in the default format (the MAE
    testbed run gave the same loss and accuracies to the digit either way).
    """
    if device.type == "cpu" and any(
            isinstance(m, torch.nn.Conv2d) and m.in_channels < 8 and max(m.stride) > 1
            for m in method.modules()):
        return torch.contiguous_format
    return torch.channels_last


def make_optimizer(method: torch.nn.Module, name: str, lr: float, weight_decay: float):
    """SGD / LARS (momentum 0.9) or AdamW; no weight decay on biases and norm
    layers. Parameters of ``method.fixed_lr_modules()`` go in groups marked
    ``fixed_lr``, whose learning rate :func:`fit` holds at its peak."""
    decay, no_decay = get_weight_decay_parameters([method])
    fixed_modules = method.fixed_lr_modules() if hasattr(method, "fixed_lr_modules") else []
    fixed = {id(p) for m in fixed_modules for p in m.parameters()}
    groups = [{"params": [p for p in params if p.requires_grad and (id(p) in fixed) == is_fixed],
               "weight_decay": wd, "fixed_lr": is_fixed}
              for is_fixed in (False, True) for params, wd in ((decay, weight_decay), (no_decay, 0.0))]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(BASE_LR)}")


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a run
    killed mid-write never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # a failed write, or a signal (torchrun's SIGTERM) mid-write
        tmp.unlink(missing_ok=True)
        raise


def _first_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, for errors whose full text runs to pages."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:limit]}" if text else type(error).__name__


def load_checkpoint(path: str | os.PathLike, method: torch.nn.Module | None = None) -> dict:
    """Loads a checkpoint written by :func:`fit` (``weights_only=True``) and,
    when ``method`` is given, its weights into it.

    Raises FileNotFoundError when there is no file, and :class:`CheckpointError`
    (a ValueError) when the file is not a complete cookbook checkpoint or holds
    a model of another method or configuration; the message says which.
    """
    path = Path(path)
    if path.is_dir():
        hint = (f"; did you mean {path / CHECKPOINT_NAME}?" if (path / CHECKPOINT_NAME).is_file()
                else f"; pass the {CHECKPOINT_NAME} file inside the run's folder")
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; fit(..., out=DIR) writes DIR/{CHECKPOINT_NAME}")
    advice = (f"pass the {CHECKPOINT_NAME} that fit(..., out=DIR) or `python -m cookbook train --out DIR` "
              f"wrote, or start a new run without resuming")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); {advice}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here: truncated zip, foreign pickle, random bytes
        raise CheckpointError(f"{path} is not a checkpoint written by cookbook, or it is truncated or damaged "
                              f"({_first_line(e)}); {advice}") from e
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(_CHECKPOINT_KEYS)
    if missing or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} is not a checkpoint written by cookbook (it lacks "
                              f"{', '.join(missing) or 'a config'}); {advice}")
    if method is not None:
        _load_weights(method, ckpt, path)
    return ckpt


def _load_weights(method: torch.nn.Module, ckpt: dict, path: Path) -> None:
    """``method.load_state_dict`` that names what differs instead of listing tensor sizes."""
    saved = ckpt["config"]
    name = getattr(method, "name", type(method).__name__)
    if saved.get("method", name) != name:
        raise CheckpointError(f"{path} holds a {saved['method']} model, not {name}; build a {saved['method']} "
                              f"model to load it, or pass a checkpoint of a {name} run")
    try:
        method.load_state_dict(ckpt["method"])
    except RuntimeError as e:
        now = method.state_dict()
        was = ckpt["method"]
        diffs = [f"{k} is {tuple(was[k].shape)} in the checkpoint, {tuple(now[k].shape)} here"
                 for k in now if k in was and tuple(was[k].shape) != tuple(now[k].shape)]
        diffs += [f"{k} is missing from the checkpoint" for k in now if k not in was]
        diffs += [f"{k} is in the checkpoint only" for k in was if k not in now]
        written = ", ".join(f"{k} {saved[k]!r}" for k in ("backbone", "options") if k in saved)
        raise CheckpointError(
            f"{path} holds a {name} model of another configuration ({written or 'unknown'}): "
            f"{'; '.join(diffs[:3]) or _first_line(e)}{' ...' if len(diffs) > 3 else ''}. "
            f"Build the model with the same backbone, width and method options as the run that wrote it"
        ) from e


def resume_conflicts(saved: dict, config: dict) -> list[str]:
    """The settings of ``config`` that differ from a checkpoint's ``saved`` config, by name.

    Only the keys of ``config`` are compared, so a caller that knows part of a
    run's settings can check those early. A key the checkpoint does not record
    (an older version wrote it) is a conflict too: it cannot be verified.
    """
    out = []
    for key, now in config.items():
        if key not in saved:
            out.append(f"{key} is not recorded in the checkpoint (an older version wrote it)")
        elif key == "options" and isinstance(now, dict) and isinstance(saved[key], dict):
            was = saved[key]
            out += [f"method option {k} was {was.get(k)!r}, now {now.get(k)!r}"
                    for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
        elif key == "views" and saved[key] != now:
            out.append("views (the augmentation) differ from the run's")
        elif saved[key] != now:
            out.append(f"{key} was {saved[key]!r}, now {now!r}")
    return out


def check_output_folder(out: str | os.PathLike) -> Path:
    """Creates ``out`` if needed and proves it writable by writing a file there;
    raises ValueError saying what is wrong. Returns it as a Path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder {out} is an existing file; pass a folder path (it is created "
                         f"if missing)")
    if (out / CHECKPOINT_NAME).is_dir():
        raise ValueError(f"{out / CHECKPOINT_NAME} is a folder, so no checkpoint can be written there; "
                         f"remove it or pass another output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write into the output folder {out} ({e.strerror or e}); pass a folder "
                         f"you can create and write to") from e
    return out


def _check_int(value, name: str, minimum: int, what: str = "", maximum: int | None = None) -> None:
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum
            or (maximum is not None and value >= maximum)):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum})"
        raise ValueError(f"{name} must be an integer {bound}{what}, got {value!r}")


def _check_number(value, name: str, minimum: float, strict: bool, what: str = "") -> None:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}{what}, "
                         f"got {value!r}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device (default: CUDA when available, else CPU);
    ValueError for a name torch does not know or a device this machine lacks."""
    try:
        resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: training runs on 'cpu' or 'cuda' only")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu'")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return resolved


def method_options(method: torch.nn.Module) -> dict:
    """The method's constructor options that it keeps as plain attributes
    (temperature, momentum, queue_size, ...), for a checkpoint's config.
    Options that only shape the network (widths, depths) show in the weights."""
    try:
        params = inspect.signature(type(method)).parameters
    except (TypeError, ValueError):
        return {}
    return {k: getattr(method, k) for k in params
            if k != "backbone" and isinstance(getattr(method, k, None), (bool, int, float, str))}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _evaluate(method, dataset, val_idx, train_idx, knn: bool, rankme: bool) -> dict:
    from cookbook import evaluate, metrics

    out = {}
    if knn:
        feats = evaluate.features(method, dataset, "train", which="representation")
        y = dataset.train_y.cpu()
        out["knn_val"] = float(evaluate.knn_accuracy(feats[train_idx], y[train_idx], feats[val_idx], y[val_idx]))
    if rankme:
        emb = evaluate.features(method, dataset, "train", which="embedding")[:25_600]
        out["rankme"] = float(metrics.rankme(emb))
    return out


def fit(method, dataset, *, epochs: int | None = None, steps: int | None = None,
        batch_size: int = 256, views=None,
        optimizer: str = "sgd", lr: float | None = None, lr_rule: str = "linear",
        weight_decay: float | None = None, warmup_epochs: float | None = None,
        device: str | torch.device | None = None, precision: str = "auto",
        compile: bool = False, seed: int = 0,
        eval_every: int = 0, eval_knn: bool = True, eval_rankme: bool = False,
        checkpoint_every: int = 0, out: str | os.PathLike | None = None,
        resume: str | os.PathLike | None = None, progress: bool = True, log: bool = True) -> History:
    """Trains ``method`` on ``dataset``'s train split and returns its :class:`History`.

    Args:
        method: a :class:`cookbook.methods.Method`.
        dataset: a :class:`cookbook.data.Dataset`; moved to ``device`` (once, in place).
        epochs: passes over the train split; the last partial batch is dropped.
            Default 10 when ``steps`` is not given.
        steps: optimiser steps in all, instead of ``epochs`` (the last epoch
            is cut short); the CPU testbed's recipes are given in steps.
        batch_size: source images per step; under torchrun, all processes
            together (the effective batch, which the lr rule scales by), a
            multiple of the number of processes.
        views: a :class:`cookbook.augment.Views` (default: ``method.default_views``).
        optimizer: "sgd", "lars" or "adamw".
        lr: base learning rate for a batch of 256 (default ``BASE_LR[optimizer]``),
            scaled by ``lr_rule`` ("linear", "sqrt" or "none").
        weight_decay: default ``WEIGHT_DECAY[optimizer]``; never on biases and norms.
        warmup_epochs: linear warm-up length (default: 10% of the run).
        device: default CUDA when available, else CPU.
        precision: "auto" (:func:`select_precision`), "fp32", "bf16" or "fp16";
            "bf16" on a CPU with bf16 hardware trains the testbed 1.2-1.3x faster
            than fp32 at the same accuracy (``benchmarks/README.md``).
        compile: ``torch.compile`` the loss (worth it for long GPU runs only;
            on 2 CPU cores no faster than eager after a 43-50 s first compilation:
            0.94-1.06x the steps/s, ``benchmarks/README.md``).
        seed: seeds the generator for batch order and augmentation.
        eval_every: every k epochs (and at the last), kNN accuracy on a
            validation split (10% of train, stratified) and/or RankMe of the
            embedding (``eval_knn``, ``eval_rankme``). 0 = never.
        checkpoint_every: every k epochs (and at the end when ``out`` is set),
            write ``out/checkpoint.pt`` atomically.
        resume: a checkpoint path: continue the run it was written by. Every
            setting it records (method and its options, backbone, dataset and
            image size, epochs, batch size, optimiser, lr, lr rule, weight
            decay, warm-up, views, seed, device type) must be the same, else
            ValueError naming each that differs; weights of another shape raise
            :class:`CheckpointError`. A finished run resumed with another
            ``out`` copies its checkpoint there. The number of processes may
            change: ``batch_size`` is the effective batch, which must not.
        progress: a plain-text progress bar on stderr; log: one line per epoch on stdout.

    Every argument is checked, and ``out`` created and proved writable, before
    anything trains: a bad one raises ValueError saying what to pass instead.

    Under ``torchrun`` (:mod:`cookbook.distributed`) every process calls
    ``fit`` alike. It joins the process group (gloo on CPU, NCCL on CUDA, one
    GPU per process), keeps the whole dataset on its device, draws the epoch's
    permutation from the shared ``seed`` and trains on its share of each batch
    (:func:`cookbook.distributed.batch_indices`), with augmentations of its
    own. DistributedDataParallel averages the gradients; the methods' losses
    gather the embeddings of all processes. Only rank 0 shows progress, logs,
    evaluates and writes checkpoints; the recorded losses are the means over
    the processes, and every process returns the same history except the
    evaluations, which rank 0's alone holds.
    """
    if optimizer not in BASE_LR:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(BASE_LR)}")
    if lr_rule not in LR_RULES:
        raise ValueError(f"unknown lr_rule {lr_rule!r}; choose one of {', '.join(LR_RULES)}")
    if epochs is not None and steps is not None:
        raise ValueError(f"give epochs or steps, not both (got epochs={epochs}, steps={steps})")
    if steps is not None:
        _check_int(steps, "steps", 1, " (optimiser steps in all)")
    elif epochs is None:
        epochs = 10
    if epochs is not None:
        _check_int(epochs, "epochs", 1)
    _check_int(batch_size, "batch_size", 2, " (the losses compare the samples of a batch, and batch norm "
               "needs two)")
    world, rank = distributed.planned_world_size(), distributed.planned_rank()
    if batch_size % world or batch_size // world < 2:
        raise ValueError(f"batch_size {batch_size} is the batch of all {world} processes together: "
                         f"it must be a multiple of {world} with at least 2 images per process")
    n = len(dataset.train_x)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the train split ({n} images): "
                         f"use a smaller batch_size or a larger subset")
    if hasattr(method, "check_batch_size"):  # any nn.Module with a loss may be trained
        method.check_batch_size(batch_size // world)
    if lr is not None:
        _check_number(lr, "lr", 0, True, " (base learning rate per 256 images)")
    if weight_decay is not None:
        _check_number(weight_decay, "weight_decay", 0, False)
    steps_per_epoch = n // batch_size
    if steps is not None:
        epochs = math.ceil(steps / steps_per_epoch)
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    if warmup_epochs is not None:
        _check_number(warmup_epochs, "warmup_epochs", 0, False)
        if warmup_epochs > epochs:
            raise ValueError(f"warmup_epochs {warmup_epochs} is longer than the run ({epochs} epochs)")
    _check_int(seed, "seed", 0, maximum=MAX_SEED)
    _check_int(eval_every, "eval_every", 0, " (0 = never)")
    _check_int(checkpoint_every, "checkpoint_every", 0, " (0 = only at the end)")
    device = distributed.setup(resolve_device(device))  # torchrun: this process's GPU, or the CPU
    distributed_run = distributed.active()
    main = distributed.is_main()  # rank 0 logs, evaluates and writes; the others only train
    precision = select_precision(device, precision)
    # now, not after the first epoch; only rank 0 writes there
    out = check_output_folder(out) if out is not None and main else None
    views = views or method.default_views(dataset.image_size)
    weight_decay = WEIGHT_DECAY[optimizer] if weight_decay is None else float(weight_decay)
    base_lr = BASE_LR[optimizer] if lr is None else float(lr)
    warmup_steps = round(0.1 * total_steps if warmup_epochs is None else steps_per_epoch * warmup_epochs)
    backbone = getattr(method, "backbone", None)
    from cookbook.models import describe
    # Everything that shapes the run's result; a resume must match it all but world_size, the
    # processes sharing a step (batch_size is their effective batch, and that must match).
    config = {"method": method.name, "options": method_options(method),
              "backbone": describe(backbone) if backbone is not None else None,
              "dataset": dataset.name, "train_size": n, "image_size": dataset.image_size,
              "epochs": epochs, "steps": total_steps, "batch_size": batch_size, "world_size": world,
              "optimizer": optimizer,
              "lr": base_lr, "lr_rule": lr_rule, "weight_decay": weight_decay,
              "warmup_steps": warmup_steps, "views": _describe_views(views), "seed": seed,
              "device_type": device.type, "precision": precision}
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        same = {k: v for k, v in config.items() if k != "world_size"}  # processes may change
        conflicts = resume_conflicts(ckpt["config"], same)
        if conflicts:
            raise ValueError(f"checkpoint {resume} was written by a different run: " + ", ".join(conflicts)
                             + ". Resume with the settings the run was started with, or start a new run "
                               "(no resume)")

    dataset.to(device)
    method.to(device)
    cuda = device.type == "cuda"
    layout = memory_format(method, device)
    method.to(memory_format=layout)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    # DDP: weights broadcast from rank 0, gradients averaged; SyncBatchNorm on CUDA
    forward = distributed.wrap(method, device) if distributed_run else method.loss
    peak_lr = scaled_lr(base_lr, batch_size, lr_rule)
    opt = make_optimizer(method, optimizer, peak_lr, weight_decay)
    gen = torch.Generator(device).manual_seed(seed)  # batch order: the same on every rank

    history, start_epoch, step = History(device=str(device), precision=precision), 0, 0
    if ckpt is not None:
        _load_weights(method, ckpt, Path(resume))
        try:
            opt.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["generator"])
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{resume}: its optimizer or random state does not fit this run "
                                  f"({_first_line(e)}); it is damaged, or was not written by fit") from e
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        history.epochs = list(ckpt["history"])
        history.start_epoch = start_epoch

    val_idx = train_idx = None
    if eval_every and eval_knn and main:
        from cookbook.evaluate import validation_split
        train_idx, val_idx = validation_split(dataset.train_y.cpu(), 0.1, seed)

    loss_fn = torch.compile(forward) if compile else forward
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision != "fp32" else contextlib.nullcontext())
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    check_every = 25 if cuda else 1  # reading the loss waits for the GPU: do it rarely there
    # the bar goes to stderr, so `> log` keeps the epoch lines without carriage returns
    bar = tqdm(total=total_steps, initial=step, disable=not (progress and main), ascii=True,
               ncols=80, file=sys.stderr, mininterval=2.0, desc=method.name)
    x_all = dataset.train_x
    method.train()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=device)
        aug_gen = gen  # one process draws augmentations from `gen`; ranks from their own
        if distributed_run:
            aug_seed = distributed.augmentation_seed(seed, epoch, rank)
            aug_gen = torch.Generator(device).manual_seed(aug_seed)
        losses, checked = [], 0
        epoch_steps = min(steps_per_epoch, total_steps - step)
        def make_batch(i, perm=perm, aug_gen=aug_gen):
            images = x_all[distributed.batch_indices(perm, i, batch_size, rank, world)]
            return [v.contiguous(memory_format=layout) for v in views(images, aug_gen)]

        with prefetched(make_batch, epoch_steps, background=PREFETCH and not cuda,
                        threads=PREFETCH_THREADS) as batches:
            for i, batch in enumerate(batches):
                lr_now = lr_at(step, total_steps, warmup_steps, peak_lr)
                for group in opt.param_groups:
                    group["lr"] = peak_lr if group.get("fixed_lr") else lr_now
                with autocast:
                    loss = loss_fn(batch)
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                method.after_step(step, total_steps)
                losses.append(loss.detach().float())
                step += 1
                if step % check_every == 0 or i == epoch_steps - 1:
                    if distributed_run:  # the run's loss is the ranks' mean; all stop on a NaN together
                        mean = distributed.mean_over_ranks(torch.stack(losses[checked:]))
                        losses[checked:] = mean.unbind()
                        checked = len(losses)
                    _check_finite(losses, step, epoch, lr_now, peak_lr)
                bar.update(1)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": float(torch.stack(losses).mean()), "lr": lr_now, "seconds": seconds}
        if eval_every and main and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            record.update(_evaluate(method, dataset, val_idx, train_idx, eval_knn, eval_rankme))
            method.train()
        history.epochs.append(record)
        if log and main:
            extra = "".join(f"  {k} {record[k]:.3f}" for k in ("knn_val", "rankme") if k in record)
            bar.write(f"epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  lr {lr_now:.4f}  "
                      f"{seconds:.1f} s  {epoch_steps * batch_size / seconds:.0f} img/s{extra}", file=sys.stdout)
        last = epoch + 1 == epochs
        if out is not None and (last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0)):
            save_atomic({"method": method.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                         "step": step, "history": history.epochs, "config": config,
                         "generator": gen.get_state().cpu()}, out / CHECKPOINT_NAME)
    bar.close()
    if out is not None and ckpt is not None and start_epoch == epochs:
        # a finished run resumed into another folder: give that folder its checkpoint too
        if not (out / CHECKPOINT_NAME).exists() or not (out / CHECKPOINT_NAME).samefile(resume):
            save_atomic(ckpt, out / CHECKPOINT_NAME)
    history.steps = step
    history.wall_time_s = sum(e["seconds"] for e in history.epochs)
    history.images_per_s = (step * batch_size / history.wall_time_s) if history.wall_time_s else 0.0
    history.peak_memory_mb = _peak_memory_mb(device)
    return history


@contextlib.contextmanager
def prefetched(make, n: int, background: bool = True, threads: int | None = None):
    """A context whose value iterates over ``make(0), ..., make(n - 1)``,
    computing ``make(i + 1)`` in a background thread while the caller works
    on ``make(i)`` (``background=False``: a plain loop).

    ``threads``: torch's intra-op threads in that background thread (None:
    torch's setting). torch keeps the count per thread, so the caller's ops
    keep theirs; the background thread puts torch's default for threads
    started later back when it ends.

    The calls run one at a time, in order, in that one thread, so a
    ``make`` that draws from a generator draws exactly as a plain loop
    would: the items are the same, bit for bit. torch releases the GIL
    inside its ops, so on a CPU the augmentation of the next batch fills the
    gaps that the model's step leaves on the cores (``benchmarks/ceiling.py``).
    An exception in ``make`` is raised to the caller; leaving the context
    (at the end, or early on an exception) stops and joins the thread.
    """
    if not background:
        yield map(make, range(n))
        return
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def work():
        if threads is not None:
            default = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            produce()
        finally:
            if threads is not None:
                torch.set_num_threads(default)

    def produce():
        for i in range(n):
            try:
                item = (True, make(i))
            except BaseException as e:  # handed to the caller and raised there
                item = (False, e)
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set() or not item[0]:
                return

    def items():
        for _ in range(n):
            ok, item = ready.get()
            if not ok:
                raise item
            yield item

    thread = threading.Thread(target=work, name="cookbook-prefetch", daemon=True)
    thread.start()
    try:
        yield items()
    finally:
        stop.set()
        thread.join()


def _describe_views(views) -> str:
    specs = getattr(views, "specs", None)
    return repr(specs) if specs is not None else type(views).__qualname__  # no object addresses


def _check_finite(losses: list[torch.Tensor], step: int, epoch: int, lr: float,
                  peak_lr: float | None = None) -> None:
    """Raises :class:`NonFiniteLossError` naming the first bad step, if any."""
    recent = torch.stack(losses[-25:])
    finite = torch.isfinite(recent)
    if bool(finite.all()):
        return
    first = int((~finite).nonzero()[0]) + step - len(recent) + 1  # 1-based step number
    raise NonFiniteLossError(
        f"the loss became {float(recent[~finite][0])} at step {first} (epoch {epoch + 1}); training stopped. "
        f"Try a lower learning rate (it was {lr:.4g} at this step"
        + (f", {peak_lr:.4g} at its peak" if peak_lr is not None else "") + ") or a longer warm-up.")
