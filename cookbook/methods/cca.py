"""Canonical correlation analysis (chapter 03): make the two views' embeddings
agree while keeping every dimension informative and decorrelated, with no
negatives and no teacher.

- :class:`VICReg`: invariance, variance and covariance terms.
- :class:`BarlowTwins`: the cross-correlation matrix of the two views'
  standardised embeddings pushed to the identity.
- :class:`SwAV`: online clustering; each view predicts the other's balanced
  (Sinkhorn-Knopp) assignment to learnt prototypes.
- :class:`WMSE`: embeddings whitened in sub-batches, then pulled together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from lightly.loss import BarlowTwinsLoss, SwaVLoss, VICRegLoss, WMSELoss
from lightly.models.modules import SwaVPrototypes

from cookbook import augment
from cookbook.methods.base import (Method, check_size, check_temperature, forward_both, forward_views, register,
                                   two_views)
from cookbook.models import mlp_head


@register
class VICReg(Method):
    """VICReg (Bardes, Ponce and LeCun, ICLR 2022): for the embeddings ``Z, Z'``
    ``(B, K)`` of two views,

    ``L = λ s(Z, Z') + μ [v(Z) + v(Z')] / 2 + ν [c(Z) + c(Z')]``

    with ``s`` the mean squared error between paired embeddings (invariance),
    ``v`` the mean over dimensions of a hinge ``max(0, 1 - std)`` that keeps
    each dimension's standard deviation above 1 (variance) and ``c`` the sum
    of squared off-diagonal covariances divided by ``K`` (covariance);
    lightly's ``VICRegLoss``. The paper's Eq. 6 sums the two variance terms;
    the authors' code, and lightly, average them (the ``/ 2``).

    The projector ("expander") is the paper's shape: 3 linear layers, batch
    norm and ReLU on the two hidden ones, wider than the representation.

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden, proj_dim: expander widths (default ``4 * dim`` both; the
            paper uses 8192 for a 2048-dim ResNet-50).
        proj_depth: linear layers in the expander (3 in the paper).
        lambda_, mu, nu: weights of invariance, variance and covariance
            (25, 25, 1 in the paper). ``mu=0`` removes the variance term: the
            embedding collapses.
    """

    name = "vicreg"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int | None = None,
                 proj_depth: int = 3, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0):
        dim = backbone.dim
        if proj_depth < 1:
            raise ValueError(f"VICReg needs an expander (proj_depth >= 1), got proj_depth={proj_depth}")
        for what, value in (("lambda_", lambda_), ("mu", mu), ("nu", nu)):
            if not value >= 0:
                raise ValueError(f"{what} must be >= 0, got {value}")
        proj_dim = proj_dim or 4 * dim
        super().__init__(backbone, mlp_head(dim, proj_hidden or 4 * dim, proj_dim, proj_depth))
        self.lambda_, self.mu, self.nu = lambda_, mu, nu
        self.embedding_dim = proj_dim
        # distributed: variance and covariance over all ranks' embeddings (invariance is per pair)
        self.criterion = VICRegLoss(lambda_param=lambda_, mu_param=mu, nu_param=nu,
                                    gather_distributed=True)

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.vicreg(size)

    def loss(self, views):
        x0, x1 = two_views(views, "VICReg")
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        return self.criterion(z0, z1)


@register
class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al., ICML 2021): standardise each dimension of
    the embeddings ``Z, Z'`` ``(B, K)`` over the batch, form their
    cross-correlation ``C = Z^T Z' / B`` ``(K, K)``, and push it to the identity:

    ``L = sum_i (1 - C_ii)^2 + λ sum_i sum_{j != i} C_ij^2``

    (lightly's ``BarlowTwinsLoss``). The diagonal makes the views agree
    (invariance); the off-diagonal term decorrelates the dimensions
    (redundancy reduction), which is what keeps the embedding from collapsing.

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden, proj_dim: projector widths (default ``4 * dim`` both; the
            paper uses 8192 for a 2048-dim ResNet-50, and finds wider better).
        proj_depth: linear layers in the projector (3 in the paper).
        lambda_: weight of the off-diagonal term (paper: 5e-3, for K = 8192;
            the α-ReQ paper's Fig. 5 sweeps it with the projector's width).
    """

    name = "barlowtwins"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int | None = None,
                 proj_depth: int = 3, lambda_: float = 5e-3):
        dim = backbone.dim
        if proj_depth < 1:
            raise ValueError(f"Barlow Twins needs a projector (proj_depth >= 1), got proj_depth={proj_depth}")
        if not lambda_ >= 0:
            raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
        proj_dim = proj_dim or 4 * dim
        check_size(proj_dim, "proj_dim", 1)
        super().__init__(backbone, mlp_head(dim, proj_hidden or 4 * dim, proj_dim, proj_depth))
        self.lambda_ = lambda_
        self.embedding_dim = proj_dim
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_, gather_distributed=True)

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.byol(size)

    def loss(self, views):
        x0, x1 = two_views(views, "Barlow Twins")
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        return self.criterion(z0, z1)


@register
class SwAV(Method):
    """SwAV (Caron et al., NeurIPS 2020): swapped prediction of cluster codes.

    Each view's l2-normalised embedding ``z`` ``(B, K)`` is scored against
    ``P`` learnt prototypes ``c_p`` (unit vectors): ``s = z c^T`` ``(B, P)``.
    The *codes* ``Q`` of a global view are soft assignments of the batch to
    the prototypes, made balanced (every prototype gets ``B / P`` of the
    batch) by a few Sinkhorn-Knopp iterations on ``exp(s / ε)``. Every other
    view predicts them:

    ``L = - sum_{t in global} sum_{v != t} mean_b sum_p Q_t[b, p] log softmax(s_v[b] / τ)_p``,
    averaged over the pairs (lightly's ``SwaVLoss``). The balance constraint
    is what prevents collapse: all images in one cluster would break it.

    With small batches there are too few images to balance ``P`` clusters; a
    *queue* of the last ``queue_length`` embeddings of each global view joins
    the Sinkhorn step (not the loss), once it is full.

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden, proj_dim: projector widths (paper: 2048 and 128; default
            ``4 * dim`` and 128).
        n_prototypes: number of prototypes ``P`` (paper: 3000 on ImageNet).
        temperature: ``τ`` of the prediction softmax (paper: 0.1).
        sinkhorn_iterations, sinkhorn_epsilon: Sinkhorn-Knopp iterations and
            the entropy weight ``ε`` (paper: 3 and 0.05).
        queue_length: embeddings kept per global view (0: no queue; paper:
            3840 for batches of 256).
        freeze_prototypes_steps: optimiser steps during which the prototypes
            are not updated (paper: the first epoch).
    """

    name = "swav"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int = 128,
                 n_prototypes: int = 3000, temperature: float = 0.1, sinkhorn_iterations: int = 3,
                 sinkhorn_epsilon: float = 0.05, queue_length: int = 0, freeze_prototypes_steps: int = 0):
        dim = backbone.dim
        check_size(proj_dim, "proj_dim", 1)
        check_size(n_prototypes, "n_prototypes", 2)
        check_size(sinkhorn_iterations, "sinkhorn_iterations", 1)
        check_size(queue_length, "queue_length", 0)
        check_size(freeze_prototypes_steps, "freeze_prototypes_steps", 0)
        check_temperature(temperature)
        check_temperature(sinkhorn_epsilon)
        super().__init__(backbone, mlp_head(dim, proj_hidden or 4 * dim, proj_dim, 2))
        self.prototypes = SwaVPrototypes(proj_dim, n_prototypes, freeze_prototypes_steps)
        self.temperature, self.queue_length = temperature, queue_length
        self.embedding_dim = proj_dim
        # distributed: the codes are balanced over every process's images (each keeps its own queue)
        self.criterion = SwaVLoss(temperature=temperature, sinkhorn_iterations=sinkhorn_iterations,
                                  sinkhorn_epsilon=sinkhorn_epsilon, sinkhorn_gather_distributed=True)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long), persistent=False)
        # queue[i]: the last queue_length embeddings of global view i, newest first
        self.register_buffer("queue", torch.zeros(2, queue_length, proj_dim), persistent=False)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long), persistent=False)

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.dino(size)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        self.steps_done.fill_(step + 1)

    def loss(self, views):
        if len(views) < 2 or views[0].shape != views[1].shape:
            raise ValueError(f"SwAV takes 2 global views of one size, then any local ones; got "
                             f"{len(views)} view(s) of sizes {[tuple(v.shape[-2:]) for v in views]}")
        with torch.no_grad():
            self.prototypes.normalize()
        z = [F.normalize(e, dim=1) for e in forward_views(lambda x: self.projector(self.backbone(x)), views)]
        step = int(self.steps_done)
        scores = [self.prototypes(e, step) for e in z]
        queue_scores = None
        if self.queue_length and int(self.queue_filled) >= self.queue_length:
            with torch.no_grad():
                queue_scores = [self.prototypes(q, step) for q in self.queue]
        loss = self.criterion(scores[:2], scores[2:], queue_scores).reshape(())  # lightly: shape (1,)
        if self.queue_length and self.training:
            self._push(z[:2])
        return loss

    @torch.no_grad()
    def _push(self, global_embeddings: list[torch.Tensor]) -> None:
        new = torch.stack([e.detach() for e in global_embeddings])[:, :self.queue_length]
        self.queue.copy_(torch.cat([new, self.queue], dim=1)[:, :self.queue_length])
        self.queue_filled.add_(new.shape[1])


@register
class WMSE(Method):
    """W-MSE (Ermolov et al., ICML 2021): whiten, then pull together.

    The embeddings ``(B, K)`` of the two views are cut into random sub-batches
    of ``w_size`` images; each sub-batch is centred and whitened by the
    inverse Cholesky factor of its covariance, ``ẑ = W (z - mean)`` with
    ``W^T W = Σ^{-1}``, so its dimensions are decorrelated with unit variance.
    The loss is the mean squared distance between the two views' whitened,
    l2-normalised embeddings, ``L = mean_b ||ẑ_b / |ẑ_b| - ẑ'_b / |ẑ'_b| ||^2``
    (lightly's ``WMSELoss``). A collapsed embedding cannot be whitened: the
    whitening itself is the anti-collapse term, with no weight to tune.

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden, proj_dim: projector widths (paper: 1024 and 64 on CIFAR).
        w_size: whitening sub-batch size (paper: 128 on CIFAR). It must be at
            least ``2 * proj_dim`` (lightly refuses less: the covariance of
            too few samples is near-singular) and divide the batch size.
        w_iter: whitening repetitions with fresh sub-batches (paper: 1 on CIFAR).
    """

    name = "wmse"

    def __init__(self, backbone: nn.Module, proj_hidden: int = 1024, proj_dim: int = 64, w_size: int = 128,
                 w_iter: int = 1):
        dim = backbone.dim
        check_size(proj_dim, "proj_dim", 1)
        check_size(w_size, "w_size", 2)
        check_size(w_iter, "w_iter", 1)
        if w_size < 2 * proj_dim:
            raise ValueError(f"w_size={w_size} must be at least 2 * proj_dim = {2 * proj_dim}: the covariance of "
                             f"fewer samples than that is near-singular. Raise w_size or lower proj_dim.")
        super().__init__(backbone, mlp_head(dim, proj_hidden, proj_dim, 2))
        self.w_size, self.w_iter = w_size, w_iter
        self.embedding_dim = proj_dim
        # distributed: each process whitens sub-batches of its own images; nothing is gathered
        self.criterion = WMSELoss(embedding_dim=proj_dim, w_size=w_size, w_iter=w_iter, num_samples=2)

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.simclr(size)

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < self.w_size or batch_size % self.w_size:
            raise ValueError(f"W-MSE whitens sub-batches of w_size={self.w_size} images: the batch size "
                             f"({batch_size} per process) must be a multiple of it. Change the batch size "
                             f"or w_size.")

    def loss(self, views):
        x0, x1 = two_views(views, "W-MSE")
        self.check_batch_size(len(x0))
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        return self.criterion(torch.cat([z0, z1]))
