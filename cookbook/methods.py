"""Self-supervised methods behind one small interface.

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

Losses, heads and schedules come from lightly; each class cites its paper.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

from cookbook import augment
from cookbook.models import head_dim, mlp_head


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

    # --- teachers ---------------------------------------------------------
    def add_teacher(self, student: nn.Module) -> nn.Module:
        """Returns a frozen copy of ``student`` that :meth:`after_step` keeps as
        an exponential moving average of it."""
        teacher = copy.deepcopy(student)
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


def _two_views(views, method: str):
    if len(views) != 2:
        raise ValueError(f"{method} takes exactly 2 views, got {len(views)}; use a two-view augmentation")
    return views


def _forward_both(net, x0, x1):
    """One forward pass for both views when they have the same size (faster:
    half the kernel launches); batch-norm statistics then span both views."""
    if x0.shape == x1.shape:
        return net(torch.cat([x0, x1])).chunk(2)
    return net(x0), net(x1)


class SimCLR(Method):
    """SimCLR (Chen et al., ICML 2020): NT-Xent between two views' embeddings.

    Args:
        backbone: a module with attribute ``dim``.
        proj_depth: linear layers in the projector (0 = none, 2 = SimCLR v1, 3 = v2).
        proj_hidden: hidden width (default: the backbone's ``dim``).
        proj_dim: output size of the projector.
        temperature: NT-Xent temperature tau.
    """

    name = "simclr"

    def __init__(self, backbone: nn.Module, proj_depth: int = 2, proj_hidden: int | None = None,
                 proj_dim: int = 128, temperature: float = 0.5):
        dim = backbone.dim
        super().__init__(backbone, mlp_head(dim, proj_hidden or dim, proj_dim, proj_depth, last_batch_norm=True))
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.criterion = NTXentLoss(temperature=temperature)
        self.embedding_dim = head_dim(self.projector, dim)

    def loss(self, views):
        x0, x1 = _two_views(views, "SimCLR")
        z0, z1 = _forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        return self.criterion(z0, z1)


class BYOL(Method):
    """BYOL (Grill et al., NeurIPS 2020): an online network with a predictor
    regresses a momentum teacher's embedding of the other view.

    The switches that show collapse:

    - ``predictor=False`` removes the predictor;
    - ``momentum=0`` drops the teacher: the target is the online network's own
      embedding, which makes the method SimSiam (Chen and He, CVPR 2021);
    - ``stop_gradient=False`` (only with ``momentum=0``) lets gradients flow
      through the target as well.

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden, proj_dim: projector widths (default hidden: ``2 * dim``).
        pred_hidden: predictor hidden width (default: ``proj_hidden``).
        momentum, momentum_end: EMA momentum, cosine-scheduled over training.
    """

    name = "byol"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int = 256,
                 predictor: bool = True, pred_hidden: int | None = None, stop_gradient: bool = True,
                 momentum: float = 0.99, momentum_end: float = 1.0):
        dim = backbone.dim
        hidden = proj_hidden or 2 * dim
        super().__init__(backbone, mlp_head(dim, hidden, proj_dim, 2), momentum, momentum_end)
        if momentum > 0 and not stop_gradient:
            raise ValueError("stop_gradient=False needs momentum=0: a momentum teacher receives no "
                             "gradient anyway. Set momentum=0 to let gradients flow through the target.")
        self.predictor = mlp_head(proj_dim, pred_hidden or hidden, proj_dim, 2) if predictor else nn.Identity()
        self.stop_gradient = stop_gradient
        self.embedding_dim = proj_dim
        self.criterion = NegativeCosineSimilarity()
        if momentum > 0:
            self.teacher_backbone = self.add_teacher(self.backbone)
            self.teacher_projector = self.add_teacher(self.projector)

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.byol(size)

    def loss(self, views):
        x0, x1 = _two_views(views, "BYOL")
        z0, z1 = _forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        p0, p1 = self.predictor(z0), self.predictor(z1)
        if self.momentum > 0:
            with torch.no_grad():
                t0, t1 = _forward_both(lambda x: self.teacher_projector(self.teacher_backbone(x)), x0, x1)
        elif self.stop_gradient:
            t0, t1 = z0.detach(), z1.detach()
        else:
            t0, t1 = z0, z1
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))


METHODS: dict[str, type[Method]] = {"simclr": SimCLR, "byol": BYOL}


def build(name: str, backbone: nn.Module, **options) -> Method:
    """Builds a method by name, e.g. ``build("simclr", resnet18(16), temperature=0.2)``."""
    try:
        cls = METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    return cls(backbone, **options)
