"""Canonical correlation analysis (chapter 03): make the two views' embeddings
agree while keeping every dimension informative and decorrelated, with no
negatives and no teacher.

- :class:`VICReg`: invariance, variance and covariance terms.
"""

from __future__ import annotations

from torch import nn
from lightly.loss import VICRegLoss

from cookbook import augment
from cookbook.methods.base import Method, forward_both, register, two_views
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
