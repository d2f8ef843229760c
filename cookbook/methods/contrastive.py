"""Deep metric learning (chapter 01): pull two views of an image together and
push other images away, with a contrastive loss.

- :class:`SimCLR`: NT-Xent between two views, in-batch negatives.
- :class:`MoCo`: a momentum key encoder and a queue of negatives (MoCo v2).
- :class:`NNCLR`: the positive is a nearest neighbour from a support set.
- :class:`DCL`: NT-Xent with the positive taken out of the denominator.

Under ``torchrun`` (the book's "Scaling out") every loss here gathers the
embeddings of all processes (lightly's ``gather_distributed=True``), so the
negatives are those of the whole batch, as in one process; the queue and the
support set enqueue the gathered keys, so every process holds the same ones.
Outside a process group the flag changes nothing.
"""

from __future__ import annotations

import warnings

import torch

from torch import nn
from lightly.loss import DCLLoss, DCLWLoss, NTXentLoss
from lightly.models.modules import NNMemoryBankModule

from cookbook import augment
from cookbook.methods.base import Method, check_size, check_temperature, forward_both, register, two_views
from cookbook.models import head_dim, mlp_head


@register
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
        check_temperature(temperature)
        self.temperature = temperature
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)
        self.embedding_dim = head_dim(self.projector, dim)

    def loss(self, views):
        x0, x1 = two_views(views, "SimCLR")
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        return self.criterion(z0, z1)


@register
class MoCo(Method):
    """MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2020): InfoNCE between
    a query and the key of the other view, against a queue of earlier keys.

    The query encoder (backbone + projector) is trained; the key encoder is a
    momentum copy of it (:meth:`Method.add_teacher`) that embeds the key view
    without gradient. Each query's positive is its own image's key; its
    negatives are the ``queue_size`` keys of earlier steps, kept in lightly's
    memory bank inside ``NTXentLoss`` (a FIFO queue). MoCo v2 adds to MoCo a
    2-layer MLP projector (linear-ReLU-linear, no batch norm, like lightly's
    ``MoCoProjectionHead``), temperature 0.2 and SimCLR's augmentations.

    The loss is symmetrised: view 0's queries against view 1's keys and the
    reverse, averaged. With a queue, both halves are scored in one call on the
    concatenated pairs, which is exactly ``0.5 * (L(q0, k1) + L(q1, k0))`` with
    both halves against the queue as it was before the step; then the step's
    ``2 * B`` keys are enqueued (the queue advances by ``2 * B`` keys a step,
    so it holds keys of the last ``queue_size / (2 * B)`` steps). Calling the
    loss twice, as lightly's benchmarks do, would enqueue ``k1`` in the first
    call, so the second half would find each query's own-image, same-view key
    (a near copy of the query) among its negatives.

    Queue behaviour to know about:

    - the queue starts filled with random unit vectors (lightly's
      initialisation); they are replaced after ``queue_size / (2 * B)`` steps.
    - it is updated only when the loss is computed with gradients, so scoring
      held-out data under ``torch.no_grad()`` leaves it unchanged.
    - when ``queue_size`` is not a multiple of ``2 * B`` the keys that do not
      fit at the end are dropped and the queue restarts at the front.
    - it is not part of ``state_dict()`` (lightly registers it as a
      non-persistent buffer): a resumed run refills it from random vectors.
    - keys of a query's own image from the previous epoch are in the queue for
      roughly a fraction ``queue_size / (2 * N)`` of the queries (``N`` images
      in the training set): false negatives; keep ``queue_size`` well below
      ``2 * N`` on small subsets.
    - no Shuffling BN: MoCo shuffles keys across GPUs so that per-GPU
      batch-norm statistics cannot give the positive away; here batch norm runs
      over the whole batch on one device (both views in one pass, as SimCLR).

    Args:
        backbone: a module with attribute ``dim``.
        proj_hidden: projector hidden width (default: the backbone's ``dim``,
            as MoCo v2's 2048 for a ResNet-50).
        proj_dim: output size of the projector (128 in MoCo v2).
        temperature: InfoNCE temperature tau (0.2 in MoCo v2; 0.07 in MoCo v1).
        queue_size: number of negative keys in the queue (65536 in the papers
            on ImageNet, 4096 in lightly's CIFAR-10 benchmarks); 0 disables the
            queue and uses in-batch negatives only (NT-Xent between queries and
            keys, as SimCLR but with a momentum key encoder).
        momentum, momentum_end: key-encoder EMA momentum, cosine-scheduled over
            training. The papers use a constant 0.999 for 200-800 ImageNet
            epochs; for short runs 0.99 -> 1.0 (as our BYOL) lets the key
            encoder keep up. ``momentum=momentum_end=0`` makes the key encoder
            a copy of the query encoder, MoCo's ablation that fails to train.
    """

    name = "moco"

    def __init__(self, backbone: nn.Module, proj_hidden: int | None = None, proj_dim: int = 128,
                 temperature: float = 0.2, queue_size: int = 4096,
                 momentum: float = 0.99, momentum_end: float = 1.0):
        dim = backbone.dim
        super().__init__(backbone, mlp_head(dim, proj_hidden or dim, proj_dim, 2, batch_norm=False),
                         momentum, momentum_end)
        check_temperature(temperature)
        check_size(queue_size, "queue_size", 0)
        self.temperature, self.queue_size = temperature, queue_size
        self.embedding_dim = proj_dim
        # distributed: with a queue, all ranks' keys are enqueued (the same queue everywhere);
        # without, the in-batch negatives are all ranks' keys
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True,
                                    memory_bank_size=(queue_size, proj_dim) if queue_size else 0)
        self.key_backbone = self.add_teacher(self.backbone)
        self.key_projector = self.add_teacher(self.projector)

    @property
    def queue(self) -> torch.Tensor:
        """The queue of negative keys ``(queue_size, proj_dim)``, unit length
        (lightly's memory bank; empty when ``queue_size=0``)."""
        return self.criterion.memory_bank.bank

    def loss(self, views):
        x0, x1 = two_views(views, "MoCo")
        q0, q1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        with torch.no_grad():
            k0, k1 = forward_both(lambda x: self.key_projector(self.key_backbone(x)), x0, x1)
        if self.queue_size:
            # one call: both halves see the same queue, then all 2B keys are enqueued
            return self.criterion(torch.cat([q0, q1]), torch.cat([k1, k0]))
        return 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))


@register
class NNCLR(Method):
    """NNCLR (Dwibedi et al., ICCV 2021): contrastive learning whose positive
    for a view is the nearest neighbour of the other view's projection in a
    support set of earlier projections.

    The projection ``z`` of each view is replaced by its nearest neighbour (by
    cosine similarity) in the support set, lightly's ``NNMemoryBankModule``, a
    FIFO queue of the projections of earlier steps; NT-Xent then pulls the
    prediction ``p`` (projector + predictor) of the other view towards that
    neighbour: ``0.5 * (L(NN(z0), p1) + L(NN(z1), p0))``. Neighbours carry no
    gradient: it reaches the network through the predictions.

    Both neighbours are looked up in the support set as it was before the step;
    then view 0's projections are enqueued, ``B`` a step (lightly's example
    enqueues view 1's: the views are exchangeable, so either will do). Looking
    up after the update would let view 1 find view 0 of its own image: a
    trivial positive.

    Notes: the support set starts filled with random vectors (lightly's
    initialisation), so the first ``support_size / B`` steps partly contrast
    against noise; it is updated only when the loss is computed with gradients;
    it is not part of ``state_dict()``. The default views are BYOL's, as in the
    paper (lightly's example uses SimCLR's). lightly's NT-Xent also uses
    same-view negatives, as SimCLR; the paper's loss (Eq. 2) contrasts across
    views only.

    Args:
        backbone: a module with attribute ``dim``.
        proj_depth: linear layers in the projector (3 in the paper, each
            followed by batch norm, ReLU on the hidden ones: lightly's
            ``NNCLRProjectionHead``).
        proj_hidden: projector hidden width (default: the backbone's ``dim``).
        proj_dim: output size of projector and predictor (256 in the paper,
            128 in lightly's CIFAR-10 benchmarks).
        pred_hidden: predictor hidden width (default: ``proj_hidden``; 4096 in
            the paper). The predictor is linear-BN-ReLU-linear.
        temperature: NT-Xent temperature tau (0.1 in the paper).
        support_size: number of projections in the support set (98304 in the
            paper on ImageNet, 4096 in lightly's CIFAR-10 benchmarks).
    """

    name = "nnclr"

    def __init__(self, backbone: nn.Module, proj_depth: int = 3, proj_hidden: int | None = None,
                 proj_dim: int = 128, pred_hidden: int | None = None, temperature: float = 0.1,
                 support_size: int = 4096):
        dim = backbone.dim
        hidden = proj_hidden or dim
        super().__init__(backbone, mlp_head(dim, hidden, proj_dim, proj_depth, last_batch_norm=True))
        check_temperature(temperature)
        check_size(support_size, "support_size", 1)
        self.temperature, self.support_size = temperature, support_size
        self.embedding_dim = head_dim(self.projector, dim)
        self.predictor = mlp_head(self.embedding_dim, pred_hidden or hidden, self.embedding_dim, 2)
        self.support = NNMemoryBankModule(size=(support_size, self.embedding_dim))
        # lightly's NNMemoryBankModule does not take the flag its base class has: all ranks'
        # projections are enqueued, so every rank looks neighbours up in the same support set
        self.support.gather_distributed = True
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def default_views(self, size: int = 32) -> augment.Views:
        return augment.byol(size)  # the paper uses BYOL's augmentations (lightly's example: SimCLR's)

    def nearest_neighbour(self, z: torch.Tensor, update: bool = False) -> torch.Tensor:
        """Each row of ``z`` ``(B, K)`` replaced by its nearest neighbour (cosine
        similarity) in the support set; enqueues ``z`` afterwards if ``update``."""
        return self.support(z.detach(), update=update)

    def loss(self, views):
        x0, x1 = two_views(views, "NNCLR")
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        p0, p1 = self.predictor(z0), self.predictor(z1)
        nn1 = self.nearest_neighbour(z1)  # first, so that view 1 does not find view 0 of this step
        nn0 = self.nearest_neighbour(z0, update=z0.requires_grad)
        return 0.5 * (self.criterion(nn0, p1) + self.criterion(nn1, p0))


@register
class DCL(SimCLR):
    """DCL (Yeh et al., ECCV 2022): SimCLR with the positive pair removed from
    the denominator of the contrastive loss (lightly's ``DCLLoss``).

    Decoupling the positive from the negatives removes the NT-Xent gradient's
    "negative-positive coupling" factor, which shrinks the gradient when the
    positive is easy or the negatives few; DCL is thus less dependent on large
    batches. Unweighted, the loss is lower than NT-Xent on the same embeddings
    (a smaller denominator), and it can be negative.

    Args:
        backbone, proj_depth, proj_hidden, proj_dim: as :class:`SimCLR`.
        temperature: temperature tau (0.1 in the paper and lightly).
        weighted: DCL-W, lightly's ``DCLWLoss``: weights each positive term by
            a negative von Mises-Fisher weight (sigma 0.5), giving more weight
            to the harder positives.
    """

    name = "dcl"

    def __init__(self, backbone: nn.Module, proj_depth: int = 2, proj_hidden: int | None = None,
                 proj_dim: int = 128, temperature: float = 0.1, weighted: bool = False):
        super().__init__(backbone, proj_depth, proj_hidden, proj_dim, temperature)
        self.weighted = weighted
        loss = DCLWLoss if weighted else DCLLoss
        self.criterion = loss(temperature=temperature, gather_distributed=True)

    def loss(self, views):
        x0, x1 = two_views(views, "DCL")
        z0, z1 = forward_both(lambda x: self.projector(self.backbone(x)), x0, x1)
        if not self.weighted:
            return self.criterion(z0, z1)
        with warnings.catch_warnings():
            # lightly 1.6's weight function copies a tensor with torch.tensor(), which warns
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            return self.criterion(z0, z1)
