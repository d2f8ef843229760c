"""Evaluation with labels: frozen features, a kNN classifier and a linear probe.

- :func:`features` runs a frozen model over a dataset split.
- :func:`knn_accuracy` is the weighted kNN classifier of Wu, Xiong, Yu and Lin,
  "Unsupervised feature learning via non-parametric instance discrimination",
  CVPR 2018, as used by DINO (Caron et al., ICCV 2021) and lightly: cosine
  similarity, the k nearest training samples vote with weight
  exp(similarity / T), T = 0.1. k = 20 by default: DINO's best k on
  ImageNet, and sized for our data (8-10 classes, 400-5,000 training images
  per class), where the 200 of InstDisc and lightly would reach across a
  large part of a class.
- :func:`linear_probe` trains a multinomial logistic regression on
  standardised frozen features, with learning rate and weight decay chosen on
  a validation split carved from the training labels (never the test labels).
- :func:`factor_probe` measures how well a linear map recovers a nuisance
  factor (hue, position, ...) from the features: what a representation kept.
- :func:`fine_tune` trains the whole network with (a fraction of) the labels:
  MIM's evaluation, and with an untrained network the supervised baseline.
- :func:`evaluate_model` bundles them with RankMe and α-ReQ
  (:mod:`cookbook.metrics`) into one dict of floats per trained model.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from cookbook import metrics

__all__ = [
    "evaluate_model",
    "factor_probe",
    "features",
    "fine_tune",
    "knn_accuracy",
    "linear_probe",
    "sample_per_class",
    "validation_split",
    "view_features",
]

WHICH = ("representation", "embedding")
SPLITS = ("train", "test")


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """``model`` in eval mode for the block, then every submodule's own flag back:
    model.train(True) would also unfreeze submodules deliberately left in eval
    mode (e.g. frozen BatchNorm)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor, which: str, batch_size: int) -> torch.Tensor:
    """model.<which> over uint8 images x (N, 3, H, W) in eval mode; float32 (N, D) on CPU."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {x.dtype}")
    device, forward = _model_device(model), getattr(model, which)
    with _eval_mode(model):
        out = [
            forward(x[i : i + batch_size].to(device, non_blocking=True).float().div_(255)).float().cpu()
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(out) if out else torch.empty(0, 0)


def features(model: nn.Module, dataset, split: str = "train", which: str = "representation",
             batch_size: int = 512) -> torch.Tensor:
    """Frozen features of every image of ``dataset.split(split)``.

    model: has ``representation(x)`` (backbone, (B, D)) and ``embedding(x)``
    (projector, (B, K)) taking float32 images in [0, 1] on its device.
    split: "train" or "test". which: "representation" or "embedding".
    Images go to the model's device batch by batch as uint8 and are divided by
    255 there; the model runs in eval mode under ``torch.no_grad`` (not
    inference mode, so the result can be fed to autograd) and every submodule
    gets its previous train/eval mode back afterwards.

    Returns a float32 CPU tensor (N, D). Cost: one forward pass over N images;
    memory O(N·D) on the CPU plus one batch on the device.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    return _run(model, _images(dataset, split), which, batch_size)


@torch.no_grad()
def view_features(model: nn.Module, dataset, view, n_images: int = 1000, n_views: int = 8,
                  split: str = "train", which: str = "embedding", seed: int = 0,
                  batch_size: int = 512) -> torch.Tensor:
    """The features of ``n_views`` augmented views of each of ``n_images``
    images (drawn at random, seeded), for :func:`cookbook.metrics.lidar`.

    view: an :class:`cookbook.augment.ViewSpec` (e.g. the first of a method's
    ``default_views(size).specs``). Returns float32 ``(n_images, n_views, D)``
    on the CPU. Cost: ``n_images · n_views`` forward passes, in eval mode.
    """
    from cookbook import augment

    if n_images < 2 or n_views < 2:
        raise ValueError(f"view_features needs at least 2 images and 2 views, got {n_images} and {n_views}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    images = _images(dataset, split)
    if n_images > len(images):
        raise ValueError(f"n_images = {n_images} but the {split} split has {len(images)} images")
    generator = torch.Generator().manual_seed(seed)
    chosen = images[torch.randperm(len(images), generator=generator)[:n_images]]
    device, forward = _model_device(model), getattr(model, which)
    view_generator = torch.Generator(device).manual_seed(seed + 1)
    with _eval_mode(model):
        per_view = [torch.cat([forward(augment.view(chosen[i:i + batch_size].to(device), view, view_generator))
                               .float().cpu() for i in range(0, n_images, batch_size)])
                    for _ in range(n_views)]
    return torch.stack(per_view, dim=1)


def pixels(dataset, split: str = "train") -> torch.Tensor:
    """The raw-pixel baseline: every image of ``dataset.split(split)`` flattened,
    float32 ``(N, 3·H·W)`` in [0, 1], on the dataset's device. A representation
    is worth learning only if it beats these features on kNN or a probe."""
    return _images(dataset, split).flatten(1).float() / 255


def _images(dataset, split: str) -> torch.Tensor:
    """uint8 images (N, 3, H, W) of ``split`` ("train" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return dataset.split(split)[0]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_labelled(feats, labels, name: str) -> None:
    """ValueError unless feats is finite float (N, D) and labels int class indices >= 0, (N,)."""
    if not isinstance(feats, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name}: features and labels must be torch tensors, got {type(feats).__name__} "
                         f"and {type(labels).__name__}")
    if feats.ndim != 2 or labels.ndim != 1 or len(feats) != len(labels):
        raise ValueError(
            f"{name}: expected features (N, D) and labels (N,), got {tuple(feats.shape)} and {tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise ValueError(f"{name}: no samples")
    if not feats.is_floating_point():
        raise ValueError(f"{name}: features must be floating point, got {feats.dtype}; pass the output of "
                         f"features() (float32)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integer class indices (int64), got {labels.dtype}")
    bad = ~torch.isfinite(feats).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{name}: {int(bad.sum())} of {len(feats)} feature rows hold NaN or infinite values "
                         f"(the first is row {int(bad.nonzero()[0])}); the model that made them has diverged "
                         f"or was fed bad images, so no accuracy can be measured")
    if int(labels.min()) < 0:
        raise ValueError(f"{name}: labels must be class indices >= 0, got {int(labels.min())} "
                         f"(row {int(labels.argmin())})")


def _check_train_test(train_features, train_labels, test_features, test_labels) -> None:
    _check_labelled(train_features, train_labels, "train")
    _check_labelled(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train features have {train_features.shape[1]} dimensions but test features "
                         f"{test_features.shape[1]}; extract both with the same model and `which`")
    classes = train_labels.unique()
    if len(classes) < 2:
        raise ValueError(f"the training labels hold a single class ({int(classes[0])}): every prediction "
                         f"would be right by construction; evaluate on data with at least 2 classes")


def _class_indices(train_labels: torch.Tensor, test_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Labels as indices 0..C-1 into the sorted classes of the training labels; a
    test label that no training sample has becomes -1 (never predicted)."""
    train_labels, test_labels = train_labels.cpu(), test_labels.cpu()
    classes = train_labels.unique()
    test_pos = torch.searchsorted(classes, test_labels).clamp_max(len(classes) - 1)
    test_idx = torch.where(classes[test_pos] == test_labels, test_pos, -1)
    return torch.searchsorted(classes, train_labels), test_idx, len(classes)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.1,
                 chunk_size: int = 512) -> float:
    """Accuracy of the weighted kNN classifier (Wu et al. 2018; DINO; lightly).

    Features (N, D) are l2-normalised; each test sample's k most cosine-similar
    training samples vote for their label with weight exp(similarity / T).
    Runs on train_features' device, ``chunk_size`` test samples at a time, so
    the similarity matrix never exceeds chunk_size × N_train (50,000 × 10,000
    with the default: 100 MB at a time). If k exceeds the number of training
    samples it is clamped to it, with a warning.

    Labels are class indices >= 0; a test label no training sample has counts
    as wrong. Returns the fraction of test samples classified correctly, in [0, 1].
    Raises ValueError for features that are not finite float (N, D) of one D,
    labels that are not integers >= 0, or training labels of a single class.
    Cost: O(N_train·N_test·D) time; memory O(N_train·(D + chunk_size)).
    """
    _check_train_test(train_features, train_labels, test_features, test_labels)
    if (not _is_int(k) or k < 1 or not _is_int(chunk_size) or chunk_size < 1
            or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"need integers k >= 1 and chunk_size >= 1 and a finite temperature > 0; got "
                         f"{k!r}, {chunk_size!r}, {temperature!r}")
    if k > len(train_labels):
        warnings.warn(f"k = {k} exceeds the {len(train_labels)} training samples; using k = {len(train_labels)}",
                      stacklevel=2)
        k = len(train_labels)
    device = train_features.device
    bank = F.normalize(train_features.detach().float(), dim=1)
    train_idx, test_idx, n_classes = _class_indices(train_labels, test_labels)
    bank_labels = train_idx.to(device)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_labels), chunk_size):
            query = F.normalize(test_features[start : start + chunk_size].to(device).float(), dim=1)
            similarity, index = (query @ bank.T).topk(k, dim=1)
            votes = torch.zeros(len(query), n_classes, device=device)
            votes.scatter_add_(1, bank_labels[index], (similarity / temperature).exp())
            correct += (votes.argmax(1).cpu() == test_idx[start : start + chunk_size]).sum().item()
    return correct / len(test_labels)


def validation_split(labels: torch.Tensor, fraction: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded split of sample indices into (train_idx, val_idx).

    Each class c with n_c samples sends round(fraction·n_c) of them, chosen at
    random, to validation — at least 1 and at most n_c − 1, so that every
    class with two or more samples appears on both sides (a class with a
    single sample stays in train). Returns two sorted int64 tensors that
    partition range(len(labels)). Cost: O(N).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = torch.as_tensor(labels).cpu()
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def sample_per_class(labels: torch.Tensor, n_per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted int64 indices of n_per_class samples of every class, drawn at random (seeded).

    Raises ValueError when a class has fewer than n_per_class samples.
    """
    labels = torch.as_tensor(labels).cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < n_per_class:
            raise ValueError(f"class {int(c)} has {len(idx)} samples, fewer than n_per_class = {n_per_class}")
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:n_per_class]])
    return torch.cat(chosen).sort().values


def _train_softmax(x: torch.Tensor, y: torch.Tensor, n_classes: int, grid: list[tuple[float, float]],
                   epochs: int, batch_size: int, seed: int) -> list[nn.Linear]:
    """Train one logistic regression per (lr, weight decay) in grid, all at once.

    x must be standardised. All heads see the same mini-batches: their logits
    come from one matmul, and the summed loss gives each head exactly the
    gradient of its own loss. SGD with Nesterov momentum 0.9, cosine
    learning-rate decay, zero initialisation (the problem is convex).
    """
    heads = [nn.Linear(x.shape[1], n_classes).to(x.device) for _ in grid]
    for head in heads:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    optimiser = torch.optim.SGD(
        [{"params": head.parameters(), "lr": lr, "weight_decay": wd} for head, (lr, wd) in zip(heads, grid)],
        momentum=0.9, nesterov=True,
    )
    steps_per_epoch = math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            weight = torch.cat([head.weight for head in heads])  # (G·C, D)
            bias = torch.cat([head.bias for head in heads])
            logits = (x[batch] @ weight.T + bias).view(len(batch), len(heads), n_classes)
            loss = F.cross_entropy(logits.permute(0, 2, 1), y[batch][:, None].expand(-1, len(heads)),
                                   reduction="sum") / len(batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return heads


def _standardise(fit_on: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    std, mean = torch.std_mean(fit_on, dim=0, correction=0)
    std = std.clamp_min(1e-6)
    return [(t - mean).div_(std) for t in (fit_on, *others)]


@torch.no_grad()
def _accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return (head(x).argmax(1) == y).float().mean().item()


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, labels_per_class: int | None = None, val_fraction: float = 0.1,
                 seed: int = 0, lrs: tuple[float, ...] = (0.01, 0.1, 1.0),
                 weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2), epochs: int = 30,
                 batch_size: int = 1024, device: str | torch.device | None = None,
                 return_details: bool = False) -> float | dict:
    """Test accuracy of a linear probe (multinomial logistic regression) on frozen features.

    Protocol:

    1. With ``labels_per_class`` (e.g. 10 or 100), keep only that many
       training samples per class, drawn stratified and seeded; they are all
       the labels the probe ever sees. Otherwise use every training sample.
    2. Carve a stratified, seeded validation split (``val_fraction``) out of
       those labelled samples (:func:`validation_split`) — with 10 labels per
       class and the default fraction that is 1 validation sample per class,
       so the choice is noisy, as it would be with that few labels.
    3. Standardise with the mean and std of the fitting part only; train one
       probe per (lr, weight decay) in ``lrs × weight_decays`` (SGD, Nesterov
       momentum 0.9, cosine decay, ``epochs`` epochs of ``batch_size``; the
       weight decay is SGD's L2 term on weights and bias) and keep
       the pair with the best validation accuracy (ties: the earlier pair).
    4. Refit with that pair on train + validation (standardised afresh) and
       score on the test split. Test labels are used only in this last step.

    Runs on ``device``: by default CUDA when available, else train_features'
    device. Returns the test accuracy in [0, 1]; with ``return_details=True``
    a dict with ``test_accuracy``, ``lr``, ``weight_decay``, ``val_accuracy``
    and ``grid`` ({(lr, wd): validation accuracy}). Inputs are checked as in
    :func:`knn_accuracy` (ValueError).

    Cost: (|grid| + 1)·epochs passes over N·D·C multiply-adds, i.e.
    O(|grid|·epochs·N·D·C) time; memory O(N·D) on the device.
    """
    _check_train_test(train_features, train_labels, test_features, test_labels)
    if labels_per_class is not None and (not _is_int(labels_per_class) or labels_per_class < 1):
        raise ValueError(f"labels_per_class must be a positive integer or None, got {labels_per_class!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if not _is_int(epochs) or epochs < 1 or not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive integers, got {epochs!r} and {batch_size!r}")
    if not lrs or not weight_decays or any(not math.isfinite(v) or v <= 0 for v in lrs) \
            or any(not math.isfinite(v) or v < 0 for v in weight_decays):
        raise ValueError(f"lrs must be finite and > 0 and weight_decays finite and >= 0, neither empty; got "
                         f"{lrs!r} and {weight_decays!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else train_features.device
    # classes from the training labels only: test labels stay unseen
    train_idx, test_idx, n_classes = _class_indices(train_labels, test_labels)
    x, y = train_features.to(device, torch.float32), train_idx.to(device)
    if labels_per_class is not None:
        keep = sample_per_class(train_labels, labels_per_class, seed).to(device)
        x, y = x[keep], y[keep]

    fit_idx, val_idx = (i.to(device) for i in validation_split(y.cpu(), val_fraction, seed))
    x_fit, x_val = _standardise(x[fit_idx], x[val_idx])
    grid = list(itertools.product(lrs, weight_decays))
    heads = _train_softmax(x_fit, y[fit_idx], n_classes, grid, epochs, batch_size, seed)
    val_accuracy = {pair: _accuracy(head, x_val, y[val_idx]) for pair, head in zip(grid, heads)}
    lr, wd = max(grid, key=lambda pair: val_accuracy[pair])  # max keeps the first of equals
    del heads, x_fit, x_val  # free device memory before the refit

    x_all, x_test = _standardise(x, test_features.to(device, torch.float32))
    (head,) = _train_softmax(x_all, y, n_classes, [(lr, wd)], epochs, batch_size, seed)
    test_accuracy = _accuracy(head, x_test, test_idx.to(device))
    if not return_details:
        return test_accuracy
    return {"test_accuracy": test_accuracy, "lr": lr, "weight_decay": wd,
            "val_accuracy": val_accuracy[(lr, wd)], "grid": val_accuracy}


def _factor_targets(values: torch.Tensor, circular: bool) -> torch.Tensor:
    values = values.double().reshape(len(values), -1)
    if circular:  # a hue of 0.99 is next to 0.01: regress the point on the circle
        angle = 2 * math.pi * values
        return torch.cat([angle.cos(), angle.sin()], dim=1)
    return values


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (D, T) and bias (T,) of ridge regression on centred x; ``ridge`` per sample."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    weights = torch.linalg.solve(gram, xc.T @ (y - y_mean))
    return weights, y_mean - x_mean @ weights


def _r2(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> float:
    residual = ((y - x @ weights - bias) ** 2).sum()
    total = ((y - y.mean(0)) ** 2).sum()
    return float(1 - residual / total)


def factor_probe(train_features: torch.Tensor, train_values: torch.Tensor, test_features: torch.Tensor,
                 test_values: torch.Tensor, circular: bool = False, val_fraction: float = 0.1, seed: int = 0,
                 ridges: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)) -> float:
    """Test R² of a linear (ridge) regression from frozen features to a factor.

    ``train_values`` / ``test_values``: (N,) or (N, T) floats, e.g. the
    ``shapes`` factors ``hue`` (``circular=True``: a fraction of a turn,
    regressed as the point (cos 2πh, sin 2πh)), ``x`` or ``y``. Features are
    standardised; the ridge strength is chosen on a random validation split of
    the training samples, then the regression is refitted on all of them and
    scored on test. R² is 1 for a factor the features determine linearly and
    about 0 (or below) for one they do not carry; it is pooled over the
    target's columns. float64 throughout; cost O(N·D² + D³).
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or len(train_features) != len(train_values) \
            or len(test_features) != len(test_values):
        raise ValueError(f"factor_probe: expected features (N, D) with N values, got "
                         f"{tuple(train_features.shape)} / {len(train_values)} and "
                         f"{tuple(test_features.shape)} / {len(test_values)}")
    if len(train_features) < 10:
        raise ValueError(f"factor_probe: {len(train_features)} training samples; need at least 10")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"factor_probe: train features have {train_features.shape[1]} dimensions but test "
                         f"features {test_features.shape[1]}; extract both with the same model")
    for what, t in (("train features", train_features), ("test features", test_features),
                    ("train values", train_values), ("test values", test_values)):
        if "features" in what and not t.is_floating_point():
            raise ValueError(f"factor_probe: {what} must be floating point, got {t.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"factor_probe: {what} hold NaN or infinite values; a diverged model or "
                             f"missing factor values cannot be probed")
    x, x_test = _standardise(train_features.double().cpu(), test_features.double().cpu())
    y, y_test = _factor_targets(train_values.cpu(), circular), _factor_targets(test_values.cpu(), circular)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(x)))
    val, fit_ = order[:n_val], order[n_val:]
    best = max(ridges, key=lambda r: _r2(x[val], y[val], *_ridge(x[fit_], y[fit_], r)))
    return _r2(x_test, y_test, *_ridge(x, y, best))


#: The ``shapes`` factors a probe can read: (name, circular). Rotation is left
#: out: most shapes look the same after some rotations, so it is not a function
#: of the image.
FACTORS = (("hue", True), ("x", False), ("y", False), ("scale", False))


def factor_probes(model: nn.Module, dataset, factors=FACTORS, which: str = "representation",
                  seed: int = 0) -> dict:
    """:func:`factor_probe` test R² of every factor in ``factors`` (``(name,
    circular)`` pairs; default :data:`FACTORS`), from ``model``'s frozen
    ``which`` features, as ``{name: R²}``. ``dataset.factors`` must hold
    them (``shapes`` does); ValueError otherwise."""
    known = (dataset.factors or {}).get("train", {})
    missing = [name for name, _ in factors if name not in known]
    if missing:
        raise ValueError(f"dataset {dataset.name!r} has no factors {missing}; factor probes need a "
                         f"dataset with known factors of variation, such as 'shapes'")
    train_f, test_f = (features(model, dataset, split, which) for split in SPLITS)
    return {name: factor_probe(train_f, dataset.factors["train"][name], test_f, dataset.factors["test"][name],
                               circular=circular, seed=seed)
            for name, circular in factors}


def nearest_neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int = 8) -> torch.Tensor:
    """Indices (Q, k) into ``bank`` (N, D) of the ``k`` rows most cosine-similar to
    each row of ``queries`` (Q, D), most similar first."""
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"expected bank (N, D) and queries (Q, D), got {tuple(bank.shape)} and "
                         f"{tuple(queries.shape)}")
    if not 1 <= k <= len(bank):
        raise ValueError(f"k must be in [1, {len(bank)}], got {k}")
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    return similarity.topk(k, dim=1).indices


def evaluate_model(model: nn.Module, dataset, which: str = "representation", val_fraction: float = 0.1,
                   seed: int = 0, n_spectrum: int = 25_600, batch_size: int = 512) -> dict:
    """Every evaluation of one trained model, as a dict of floats.

    - ``knn_val``: kNN fitted on the train part, scored on a validation split
      carved from the train split (stratified, seeded) — use this, and only
      this, to select hyper-parameters.
    - ``knn_test``: kNN fitted on the whole train split, scored on test.
    - ``linear_val``: the probe's own validation accuracy (its best
      hyper-parameters, on a split carved from train): the labelled way to
      choose between models scored by ``linear_test``.
    - ``linear_test``: :func:`linear_probe` test accuracy.
    - ``rankme``: RankMe of the embeddings of ``n_spectrum`` (25,600, as in
      the paper) random training images, or all of them if fewer;
      ``rankme_rep``: RankMe of their representations.
    - ``alpha``: α-ReQ of the representations of the same images; NaN, with
      a warning, when it cannot be fitted (dimension or N too small).

    kNN and probe use the ``which`` features. Cost: forward passes over the
    train and test splits (and the spectrum subset once more), the kNN
    (O(N_train·N_test·D)) and the probe (see :func:`linear_probe`).
    """
    train_x, train_y = dataset.split("train")
    _, test_y = dataset.split("test")
    train_f = features(model, dataset, "train", which, batch_size)
    test_f = features(model, dataset, "test", which, batch_size)
    knn_device = _model_device(model)
    train_f_dev, test_f_dev = train_f.to(knn_device), test_f.to(knn_device)

    fit_idx, val_idx = validation_split(train_y, val_fraction, seed)
    probe = linear_probe(train_f, train_y, test_f, test_y, val_fraction=val_fraction, seed=seed,
                         return_details=True)
    result = {
        "knn_val": knn_accuracy(train_f_dev[fit_idx.to(knn_device)], train_y[fit_idx],
                                train_f_dev[val_idx.to(knn_device)], train_y[val_idx]),
        "knn_test": knn_accuracy(train_f_dev, train_y, test_f_dev, test_y),
        "linear_val": probe["val_accuracy"],
        "linear_test": probe["test_accuracy"],
    }
    del train_f_dev, test_f_dev

    generator = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(train_y), generator=generator)[:n_spectrum]
    subset_x = train_x[subset]
    representation = train_f[subset] if which == "representation" else _run(model, subset_x, "representation",
                                                                               batch_size)
    embedding = train_f[subset] if which == "embedding" else _run(model, subset_x, "embedding", batch_size)
    result["rankme"] = metrics.rankme(embedding.to(knn_device))
    result["rankme_rep"] = metrics.rankme(representation.to(knn_device))
    try:
        result["alpha"] = metrics.alpha_req(representation.to(knn_device)).alpha
    except ValueError as error:
        warnings.warn(f"alpha-ReQ set to NaN: {error}", stacklevel=2)
        result["alpha"] = float("nan")
    return {key: float(value) for key, value in result.items()}


def fine_tune(backbone: nn.Module, dataset, *, labelled_fraction: float = 0.1, steps: int = 300,
              batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0,
              device: str | torch.device | None = None, return_model: bool = False,
              split: str = "test") -> float | tuple:
    """Test accuracy of ``backbone`` fine-tuned end to end with a linear head
    on ``labelled_fraction`` of the training labels (stratified, seeded).

    ``split="val"`` scores on a validation split instead (10 % of train,
    :func:`validation_split` with seed 0, the split recipes are chosen on);
    the labelled images are then drawn from the other 90 %.

    The backbone is copied (the caller's stays as it was). AdamW with a linear
    warm-up over the first 10 % of ``steps`` then cosine decay, cross-entropy,
    random resized crops (scale 0.5-1) and flips; batch norm in train mode.
    Nothing is chosen on the test split: the protocol is fixed. ``seed``
    sets the labelled subset, the head's initial weights, the batches and the
    augmentations, so one backbone and seed give one result. With an
    untrained backbone and ``labelled_fraction=1`` it is the supervised
    baseline at that budget (the "supervised ceiling" of the testbed).

    Returns the test accuracy in [0, 1] (and the fine-tuned network
    ``nn.Sequential(backbone, head)`` when ``return_model``).
    """
    from cookbook import augment
    from cookbook.train import lr_at

    if not 0 < labelled_fraction <= 1:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    device = torch.device(device or _model_device(backbone))
    train_x, train_y = dataset.split("train")
    test_x, test_y = dataset.split("test")
    if split == "val":
        fit_idx, val_idx = validation_split(train_y, 0.1, 0)
        test_x, test_y = train_x[val_idx.to(train_x.device)], train_y[val_idx.to(train_y.device)]
        train_x, train_y = train_x[fit_idx.to(train_x.device)], train_y[fit_idx.to(train_y.device)]
    if labelled_fraction < 1:
        keep, _ = validation_split(train_y, 1 - labelled_fraction, seed)
        train_x, train_y = train_x[keep.to(train_x.device)], train_y[keep.to(train_y.device)]
    train_x, train_y = train_x.to(device), train_y.to(device)
    with torch.random.fork_rng(devices=[]):  # the head's initial weights follow `seed` too
        torch.manual_seed(seed)
        head = nn.Linear(backbone.dim, dataset.num_classes)
    model = nn.Sequential(copy.deepcopy(backbone), head).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    view = augment.ViewSpec(size=dataset.image_size, min_scale=0.5, cj_prob=0.0, random_gray_scale=0.0)
    generator = torch.Generator(device).manual_seed(seed)
    batch_size = min(batch_size, len(train_x))
    model.train()
    for step in range(steps):
        batch = torch.randint(len(train_x), (batch_size,), generator=generator, device=device)
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, steps, max(steps // 10, 1), lr)
        loss = F.cross_entropy(model(augment.view(train_x[batch], view, generator)), train_y[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(test_x[i:i + 512].to(device).float() / 255).argmax(1).cpu()
                                 for i in range(0, len(test_x), 512)])
    accuracy = (predictions == test_y.cpu()).float().mean().item()
    return (accuracy, model) if return_model else accuracy
