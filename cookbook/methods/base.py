"""The interface every method shares, the teacher (EMA) mechanism and the registry.

A method is an ``nn.Module`` built from a backbone and options:

- ``loss(views)``: the training loss for a list of augmented views, each
  float ``(B, 3, H, W)`` in [0, 1] on the method's device; returns a scalar.
- ``representation(x)``: backbone output ``(B, D)``, what evaluation probes.
- ``embedding(x)``: projector output ``(B, K)`` (``K = D`` without projector).
- ``default_views(size)``: the augmentation the method's paper uses (a
  :class:`cookbook.augment.Views`).
- ``after_step(step, total_steps)``: called by the trainer after each optimiser
  step; methods with a teacher update it there by exponential moving average.

Teachers use one shared mechanism: :meth:`Method.add_teacher` copies a module
and freezes the copy, and :meth:`Method.after_step` moves every copy towards its
student with a momentum that follows a cosine schedule from ``momentum`` to
``momentum_end`` (lightly's ``update_momentum`` and ``cosine_schedule``).

Methods register themselves by name with :func:`register`; :func:`build` makes one.
Losses, heads and schedules come from lightly; each class cites its paper.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

from cookbook import augment

class Method(nn.Module):
    """Base class: backbone + projector, and the teacher (EMA) mechanism."""

    name = "method"

    def __init__(self, backbone: nn.Module, projector: nn.Module | None = None,
                 momentum: float = 0.0, momentum_end: float = 1.0):
        super().__init__()
        if not 0.0 <= momentum <= 1.0 or not 0.0 <= momentum_end <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum} -> {momentum_end}")
        self.backbone = backbone
        self.projector = projector if projector is not None else nn.Identity()
        self.momentum, self.momentum_end = momentum, momentum_end
        self._ema_pairs: list[tuple[nn.Module, nn.Module]] = []

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.simclr(size)

    def check_batch_size(self, batch_size: int) -> None:
        """Raises ValueError if this method cannot train on batches of
        ``batch_size`` images per process (W-MSE whitens fixed sub-batches);
        :func:`cookbook.train.fit` asks before the first step."""

    def fixed_lr_modules(self) -> list[nn.Module]:
        """Modules whose learning rate :func:`cookbook.train.fit` holds at its
        peak instead of decaying it (SimSiam's predictor); none by default."""
        return []

    # --- teachers ---------------------------------------------------------
    def add_teacher(self, student: nn.Module, teacher: nn.Module | None = None) -> nn.Module:
        """Returns a frozen copy of ``student`` that :meth:`after_step` keeps as
        an exponential moving average of it. Modules that cannot be deep-copied
        (weight norm) pass a fresh ``teacher`` of the same shape instead; it
        starts from the student's weights."""
        if teacher is None:
            teacher = copy.deepcopy(student)
        else:
            teacher.load_state_dict(student.state_dict())
        deactivate_requires_grad(teacher)
        self._ema_pairs.append((student, teacher))
        return teacher

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_schedule(step, max(total_steps, 1), self.momentum, self.momentum_end)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        if not self._ema_pairs:
            return
        m = self.momentum_at(step, total_steps)
        for student, teacher in self._ema_pairs:
            update_momentum(student, teacher, m)

    def extra_repr(self) -> str:
        return f"name={self.name}"


def two_views(views, method: str):
    if len(views) != 2:
        raise ValueError(f"{method} takes exactly 2 views, got {len(views)}; use a two-view augmentation")
    return views


def forward_both(net, x0, x1):
    """One forward pass for both views when they have the same size (faster:
    half the kernel launches); batch-norm statistics then span both views."""
    return forward_views(net, [x0, x1])


def forward_views(net, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[net(v) for v in views]``, with one forward pass per image size
    (multi-crop: one for the global views, one for the local ones)."""
    out: list[torch.Tensor | None] = [None] * len(views)
    sizes = list(dict.fromkeys(tuple(v.shape) for v in views))
    for shape in sizes:
        index = [i for i, v in enumerate(views) if tuple(v.shape) == shape]
        for i, y in zip(index, net(torch.cat([views[i] for i in index])).chunk(len(index))):
            out[i] = y
    return out


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def check_size(value, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` buildable by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def build(name: str, backbone: nn.Module, **options) -> Method:
    """Builds a method by name, e.g. ``build("simclr", resnet18(16), temperature=0.2)``."""
    try:
        cls = METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    return cls(backbone, **options)
