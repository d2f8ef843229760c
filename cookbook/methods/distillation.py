"""Self-distillation (chapter 02): a student predicts a teacher's embedding of
another view, with no negatives. What keeps the embedding from collapsing to a
constant is the asymmetry: a predictor on the student side and no gradient
through the teacher.

- :class:`BYOL`: the teacher is an exponential moving average of the student.
- :class:`SimSiam`: the teacher is the student itself, behind a stop-gradient.
- :class:`DINO`: an EMA teacher whose output, centred and sharpened, is a
  distribution over ``K`` prototypes that the student matches by cross-entropy,
  global teacher views against every student view (multi-crop).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from lightly.loss import DINOLoss, NegativeCosineSimilarity
from lightly.models.modules import DINOProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead

from cookbook import augment
from cookbook.methods.base import (Method, check_size, check_temperature, forward_both, forward_views, register,
                                   two_views)
from cookbook.models import mlp_head


@register
class BYOL(Method):
    """BYOL (Grill et al., NeurIPS 2020): an online network with a predictor
    regresses a momentum teacher's embedding of the other view.

    The switches that show collapse:

    - ``predictor=False`` removes the predictor;
    - ``momentum=0`` drops the teacher: the target is the online network's own
      embedding, SimSiam's design (:class:`SimSiam` is that method with its
      paper's heads and fixed predictor learning rate);
    - ``stop_gradient=False`` (only with ``momentum=0``) lets gradients flow
      through the target as well.

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden, proj_dim: projector widths (default hidden: ``2 * dim``).
        proj_depth: linear layers in the projector (2 in the paper; 1 = linear).
        pred_hidden: predictor hidden width (default: ``proj_hidden``).
        momentum, momentum_end: EMA momentum, cosine-scheduled over training.
        proj_output_bn: batch norm on the projector's output (SimSiam's
            projector has it; BYOL's has not).
        fixed_predictor_lr: hold the predictor's learning rate at its peak
            (SimSiam's choice; BYOL decays it with the rest).
    """

    name = "byol"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int = 256,
                 predictor: bool = True, pred_hidden: int | None = None, stop_gradient: bool = True,
                 momentum: float = 0.99, momentum_end: float = 1.0, proj_depth: int = 2,
                 proj_output_bn: bool = False, fixed_predictor_lr: bool = False):
        dim = backbone.dim
        hidden = proj_hidden or 2 * dim
        if proj_depth < 1:
            raise ValueError(f"BYOL needs a projector (proj_depth >= 1), got proj_depth={proj_depth}")
        super().__init__(backbone, mlp_head(dim, hidden, proj_dim, proj_depth, last_batch_norm=proj_output_bn),
                         momentum, momentum_end)
        if momentum > 0 and not stop_gradient:
            raise ValueError("stop_gradient=False needs momentum=0: a momentum teacher receives no "
                             "gradient anyway. Set momentum=0 to let gradients flow through the target.")
        self.predictor = mlp_head(proj_dim, pred_hidden or hidden, proj_dim, 2) if predictor else nn.Identity()
        self.stop_gradient = stop_gradient
        self.proj_output_bn, self.fixed_predictor_lr = proj_output_bn, fixed_predictor_lr
        self.embedding_dim = proj_dim
        self.criterion = NegativeCosineSimilarity()
        if momentum > 0:
            self.teacher_backbone = self.add_teacher(self.backbone)
            self.teacher_projector = self.add_teacher(self.projector)

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.byol(size)

    def fixed_lr_modules(self) -> list[nn.Module]:
        return [self.predictor] if self.fixed_predictor_lr else []

    def loss(self, views):
        x0, x1 = two_views(views, "BYOL")
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        p0, p1 = self.predictor(z0), self.predictor(z1)
        if self.momentum > 0:
            with torch.no_grad():
                t0, t1 = forward_both(lambda x: self.teacher_projector(self.teacher_backbone(x)), x0, x1)
        elif self.stop_gradient:
            t0, t1 = z0.detach(), z1.detach()
        else:
            t0, t1 = z0, z1
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))


@register
class SimSiam(Method):
    """SimSiam (Chen and He, CVPR 2021): a Siamese network whose predictor
    output for one view regresses the stop-gradient embedding of the other,
    ``L = 0.5 * (D(p0, sg(z1)) + D(p1, sg(z0)))`` with ``D`` the negative
    cosine similarity (lightly's ``NegativeCosineSimilarity``). No teacher, no
    negatives; the stop-gradient is what prevents collapse (the paper's Fig. 2).

    The heads are the paper's, built by lightly: a 3-layer projector with batch
    norm on every layer, the output included (``SimSiamProjectionHead``), and a
    2-layer bottleneck predictor (``SimSiamPredictionHead``, hidden width a
    quarter of the output). The predictor's learning rate is not decayed (the
    paper's Table 1: decaying it hurts): :meth:`fixed_lr_modules` tells
    :func:`cookbook.train.fit` to hold it at the peak rate.

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden, proj_dim: projector widths (default: ``4 * dim`` both; the
            paper uses 2048 for a 2048-dim ResNet-50).
        pred_hidden: predictor bottleneck (default ``proj_dim // 4``).
        fixed_predictor_lr: hold the predictor's learning rate constant.
        stop_gradient: ``False`` lets gradients flow through the target too,
            the paper's ablation that collapses.
        predictor: ``False`` removes the predictor (the target is then the
            other view's own embedding), the paper's other ablation that
            collapses (its Table 1).
    """

    name = "simsiam"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int | None = None,
                 pred_hidden: int | None = None, fixed_predictor_lr: bool = True, stop_gradient: bool = True,
                 predictor: bool = True):
        dim = backbone.dim
        proj_dim = proj_dim or 4 * dim
        super().__init__(backbone, SimSiamProjectionHead(dim, proj_hidden or 4 * dim, proj_dim))
        self.predictor = (SimSiamPredictionHead(proj_dim, pred_hidden or max(proj_dim // 4, 1), proj_dim)
                          if predictor else nn.Identity())
        self.fixed_predictor_lr, self.stop_gradient = fixed_predictor_lr, stop_gradient
        self.embedding_dim = proj_dim
        self.criterion = NegativeCosineSimilarity()

    def default_views(self, size: int = 32) -> augment.Views:
        # the paper's (MoCo v2's) augmentation: crops of 20-100 %, jitter 0.4/0.4/0.4/0.1
        return augment.simclr(size, min_scale=0.2, cj_strength=0.5)

    def fixed_lr_modules(self) -> list[nn.Module]:
        return [self.predictor] if self.fixed_predictor_lr else []

    def loss(self, views):
        x0, x1 = two_views(views, "SimSiam")
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        p0, p1 = self.predictor(z0), self.predictor(z1)
        if self.stop_gradient:
            z0, z1 = z0.detach(), z1.detach()
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


@register
class DINO(Method):
    """DINO (Caron et al., ICCV 2021): self-distillation with no labels.

    Student and teacher end in a head that maps to ``K = output_dim`` logits.
    The teacher (an EMA of the student) sees the two global views; its logits
    are *centred* (a running mean ``c`` of its batch outputs is subtracted) and
    *sharpened* (a low temperature); the student, at a higher temperature,
    matches them on every other view, local crops included:

    ``L = sum_{t in global} sum_{s != t} H(softmax((g_t(x_t) - c) / tau_t),
    softmax(g_s(x_s) / tau_s))``, averaged over the pairs

    (lightly's ``DINOLoss``; the head is lightly's ``DINOProjectionHead``, an
    MLP to a bottleneck, l2-normalised, then a weight-normalised linear layer
    to the ``K`` prototypes). Centering alone would collapse to a uniform
    output, sharpening alone to a one-hot one; together they balance.

    Args:
        backbone: a module with attribute ``dim``.
        hidden_dim, bottleneck_dim, output_dim: head widths. The paper's are
            2048, 256 and 65,536 for a ViT-S; the defaults here (``4 * dim``,
            256, 4,096) suit the book's small backbones.
        teacher_temp: the teacher's temperature after warm-up (paper: 0.04).
        warmup_teacher_temp, warmup_fraction: the teacher's temperature starts
            at ``warmup_teacher_temp`` and rises linearly to ``teacher_temp``
            over this fraction of the run (the paper: 0.04 -> 0.07 over the
            first 30 epochs when it uses 0.07).
        student_temp: the student's temperature (paper: 0.1).
        center_momentum: the centre's EMA momentum (paper: 0.9).
        centering: False keeps the centre at zero (the ablation that collapses).
        momentum, momentum_end: the teacher's EMA momentum, cosine-scheduled
            (paper: 0.996 -> 1).
        batch_norm: batch norm in the head's MLP (the paper's ResNet-50 setting).
        norm_last_layer: hold the prototypes' norms at 1, so the logits are
            cosine similarities (the paper's default; False lets them grow).
    """

    name = "dino"

    def __init__(self, backbone: nn.Module, hidden_dim: int | None = None, bottleneck_dim: int = 256,
                 output_dim: int = 4096, teacher_temp: float = 0.04, warmup_teacher_temp: float | None = None,
                 warmup_fraction: float = 0.3, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: bool = True, momentum: float = 0.996, momentum_end: float = 1.0,
                 batch_norm: bool = False, norm_last_layer: bool = True):
        dim = backbone.dim
        for value, what in ((bottleneck_dim, "bottleneck_dim"), (output_dim, "output_dim")):
            check_size(value, what, 1)
        for value in (teacher_temp, student_temp, warmup_teacher_temp or teacher_temp):
            check_temperature(value)
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction is a fraction of the run in [0, 1], got {warmup_fraction}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must lie in [0, 1], got {center_momentum}")
        def head():
            with warnings.catch_warnings():  # lightly's head uses torch's older weight_norm
                warnings.simplefilter("ignore", FutureWarning)
                return DINOProjectionHead(dim, hidden_dim or 4 * dim, bottleneck_dim, output_dim,
                                          batch_norm=batch_norm, norm_last_layer=norm_last_layer)

        super().__init__(backbone, head(), momentum, momentum_end)
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.warmup_teacher_temp = teacher_temp if warmup_teacher_temp is None else warmup_teacher_temp
        self.warmup_fraction, self.centering = warmup_fraction, centering
        self.embedding_dim = output_dim
        # center_momentum 1 keeps the centre at its initial zeros: no centering
        self.criterion = DINOLoss(output_dim, teacher_temp=teacher_temp, student_temp=student_temp,
                                  center_momentum=center_momentum if centering else 1.0)
        self.teacher_backbone = self.add_teacher(self.backbone)
        self.teacher_projector = self.add_teacher(self.projector, head())
        self.register_buffer("progress", torch.zeros(()), persistent=False)  # fraction of the run done

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.dino(size)

    def teacher_temp_now(self) -> float:
        """The teacher's temperature at this point of the run (linear warm-up)."""
        if self.warmup_fraction == 0 or self.progress >= self.warmup_fraction:
            return self.teacher_temp
        t = float(self.progress) / self.warmup_fraction
        return self.warmup_teacher_temp + t * (self.teacher_temp - self.warmup_teacher_temp)

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        self.progress.fill_((step + 1) / max(total_steps, 1))

    def loss(self, views):
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError(f"DINO takes 2 global views of one size, then any local ones; got "
                             f"{len(views)} view(s) of sizes {[tuple(v.shape[-2:]) for v in views]}")
        student = forward_views(lambda x: self.projector(self.backbone(x)), views)
        with torch.no_grad():
            teacher = forward_views(lambda x: self.teacher_projector(self.teacher_backbone(x)), views[:2])
        return self.criterion(teacher, student, teacher_temp=self.teacher_temp_now())
