"""Self-distillation (chapter 02): a student predicts a teacher's embedding of
another view, with no negatives. What keeps the embedding from collapsing to a
constant is the asymmetry: a predictor on the student side and no gradient
through the teacher.

- :class:`BYOL`: the teacher is an exponential moving average of the student.
- :class:`SimSiam`: the teacher is the student itself, behind a stop-gradient.
"""

from __future__ import annotations

import torch
from torch import nn
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from cookbook import augment
from cookbook.methods.base import Method, forward_both, register, two_views
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
    """

    name = "simsiam"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int | None = None,
                 pred_hidden: int | None = None, fixed_predictor_lr: bool = True, stop_gradient: bool = True):
        dim = backbone.dim
        proj_dim = proj_dim or 4 * dim
        super().__init__(backbone, SimSiamProjectionHead(dim, proj_hidden or 4 * dim, proj_dim))
        self.predictor = SimSiamPredictionHead(proj_dim, pred_hidden or max(proj_dim // 4, 1), proj_dim)
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
