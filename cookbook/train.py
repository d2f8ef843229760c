"""``fit``: the one training loop every chapter uses.

The data already lives on the training device as uint8 tensors; a batch is an
index slice of them, augmented on the device (``cookbook.augment``). No
DataLoader, no per-sample Python. The loop adds: SGD, LARS (You et al., 2017)
or AdamW; linear warm-up then cosine decay, per step (a length in epochs or in
optimiser steps); the batch-size learning-rate rule; mixed precision chosen
for the device (:func:`select_precision`) and channels_last on CUDA (fp32 on
CPU); optional ``torch.compile``; atomic checkpoints and resume; a check that
stops on a non-finite loss.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
from tqdm import tqdm

# Learning rates are given for a batch of 256 and scaled by `lr_rule`.
BASE_LR = {"sgd": 0.06, "lars": 0.3, "adamw": 1e-3}
WEIGHT_DECAY = {"sgd": 5e-4, "lars": 1e-6, "adamw": 0.05}
LR_RULES = ("linear", "sqrt", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_NAME = "checkpoint.pt"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


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


def select_precision(device: torch.device, requested: str = "auto") -> str:
    """The autocast precision for ``device``: "fp32", "bf16" or "fp16".

    "auto" is fp32 on CPU (CPU bf16 autocast was measured to be unreliable:
    sometimes faster, often slower), bf16 on GPUs that compute it natively
    (compute capability 8.0 or newer: A100, H100, RTX 30xx and later) and fp16
    with a gradient scaler on older ones (a T4, Colab's free GPU, has no bf16
    hardware). An explicit request is honoured, except half precision on CPU.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            raise ValueError(f"precision {requested} is for CUDA devices; on {device.type} use fp32 (or auto)")
        return "fp32"
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"


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
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, method: torch.nn.Module | None = None) -> dict:
    """Loads a checkpoint written by :func:`fit` (``weights_only=True``) and,
    when ``method`` is given, its weights into it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; fit(..., out=DIR) writes DIR/{CHECKPOINT_NAME}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if method is not None:
        method.load_state_dict(ckpt["method"])
    return ckpt


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
        batch_size: source images per step.
        views: a :class:`cookbook.augment.Views` (default: ``method.default_views``).
        optimizer: "sgd", "lars" or "adamw".
        lr: base learning rate for a batch of 256 (default ``BASE_LR[optimizer]``),
            scaled by ``lr_rule`` ("linear", "sqrt" or "none").
        weight_decay: default ``WEIGHT_DECAY[optimizer]``; never on biases and norms.
        warmup_epochs: linear warm-up length (default: 10% of the run).
        device: default CUDA when available, else CPU.
        precision: "auto" (:func:`select_precision`), "fp32", "bf16" or "fp16".
        compile: ``torch.compile`` the loss (worth it for long GPU runs only).
        seed: seeds the generator for batch order and augmentation.
        eval_every: every k epochs (and at the last), kNN accuracy on a
            validation split (10% of train, stratified) and/or RankMe of the
            embedding (``eval_knn``, ``eval_rankme``). 0 = never.
        checkpoint_every: every k epochs (and at the end when ``out`` is set),
            write ``out/checkpoint.pt`` atomically.
        resume: a checkpoint path: continue the run it was written by.
        progress: a plain-text progress bar; log: one line per epoch.
    """
    if optimizer not in BASE_LR:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(BASE_LR)}")
    n = len(dataset.train_x)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the train split ({n} images): "
                         f"use a smaller batch_size or a larger subset")
    if epochs is not None and steps is not None:
        raise ValueError(f"give epochs or steps, not both (got epochs={epochs}, steps={steps})")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if epochs is None and steps is None:
        epochs = 10
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = select_precision(device, precision)
    dataset.to(device)
    method.to(device)
    cuda = device.type == "cuda"
    if cuda:
        method.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    views = views or method.default_views(dataset.image_size)
    weight_decay = WEIGHT_DECAY[optimizer] if weight_decay is None else weight_decay
    peak_lr = scaled_lr(BASE_LR[optimizer] if lr is None else lr, batch_size, lr_rule)
    opt = make_optimizer(method, optimizer, peak_lr, weight_decay)
    steps_per_epoch = n // batch_size
    if steps is not None:
        epochs = math.ceil(steps / steps_per_epoch)
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    warmup_steps = round(0.1 * total_steps if warmup_epochs is None else steps_per_epoch * warmup_epochs)
    gen = torch.Generator(device).manual_seed(seed)
    config = {"method": method.name, "dataset": dataset.name, "train_size": n, "epochs": epochs,
              "steps": total_steps, "batch_size": batch_size, "optimizer": optimizer, "seed": seed}

    history, start_epoch, step = History(device=str(device), precision=precision), 0, 0
    if resume is not None:
        ckpt = load_checkpoint(resume, method)
        diff = {k: (ckpt["config"].get(k), v) for k, v in config.items() if ckpt["config"].get(k) != v}
        if diff:
            raise ValueError(f"checkpoint {resume} was written by a different run: "
                             + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in diff.items()))
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        history.epochs = list(ckpt["history"])

    val_idx = train_idx = None
    if eval_every and eval_knn:
        from cookbook.evaluate import validation_split
        train_idx, val_idx = validation_split(dataset.train_y.cpu(), 0.1, seed)

    out = Path(out) if out is not None else None
    loss_fn = torch.compile(method.loss) if compile else method.loss
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision != "fp32" else contextlib.nullcontext())
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    check_every = 25 if cuda else 1  # reading the loss waits for the GPU: do it rarely there
    bar = tqdm(total=total_steps, initial=step, disable=not progress, ascii=True, ncols=80,
               file=sys.stdout, mininterval=2.0, desc=method.name)
    x_all = dataset.train_x
    method.train()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=device)
        losses = []
        epoch_steps = min(steps_per_epoch, total_steps - step)
        for i in range(epoch_steps):
            batch = [v.contiguous(memory_format=torch.channels_last) if cuda else v
                     for v in views(x_all[perm[i * batch_size:(i + 1) * batch_size]], gen)]
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
                _check_finite(losses, step, epoch, lr_now)
            bar.update(1)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": float(torch.stack(losses).mean()), "lr": lr_now, "seconds": seconds}
        if eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            record.update(_evaluate(method, dataset, val_idx, train_idx, eval_knn, eval_rankme))
            method.train()
        history.epochs.append(record)
        if log:
            extra = "".join(f"  {k} {record[k]:.3f}" for k in ("knn_val", "rankme") if k in record)
            bar.write(f"epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  lr {lr_now:.4f}  "
                      f"{seconds:.1f} s  {epoch_steps * batch_size / seconds:.0f} img/s{extra}", file=sys.stdout)
        last = epoch + 1 == epochs
        if out is not None and (last or (checkpoint_every and (epoch + 1) % checkpoint_every == 0)):
            save_atomic({"method": method.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                         "step": step, "history": history.epochs, "config": config,
                         "generator": gen.get_state().cpu()}, out / CHECKPOINT_NAME)
    bar.close()
    history.steps = step
    history.wall_time_s = sum(e["seconds"] for e in history.epochs)
    history.images_per_s = (step * batch_size / history.wall_time_s) if history.wall_time_s else 0.0
    history.peak_memory_mb = _peak_memory_mb(device)
    return history


def _check_finite(losses: list[torch.Tensor], step: int, epoch: int, lr: float) -> None:
    """Raises :class:`NonFiniteLossError` naming the first bad step, if any."""
    recent = torch.stack(losses[-25:])
    finite = torch.isfinite(recent)
    if bool(finite.all()):
        return
    first = int((~finite).nonzero()[0]) + step - len(recent) + 1  # 1-based step number
    raise NonFiniteLossError(
        f"the loss became {float(recent[~finite][0])} at step {first} (epoch {epoch + 1}); training stopped. "
        f"Try a lower learning rate (the current one is {lr:.4g}) or a longer warm-up.")
