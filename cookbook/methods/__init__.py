"""Self-supervised methods behind one small interface, one file per family of
the book (and of the SSL cookbook, Balestriero et al., 2023):

- :mod:`.base`: the :class:`Method` interface, the teacher (EMA) mechanism,
  the registry and :func:`build`;
- :mod:`.contrastive`: deep metric learning (SimCLR, MoCo, NNCLR, DCL);
- :mod:`.distillation`: self-distillation (BYOL, SimSiam, DINO);
- :mod:`.cca`: canonical correlation analysis (VICReg, Barlow Twins, SwAV, W-MSE);
- :mod:`.mim`: masked image modeling (MAE, SimMIM).

A method is an ``nn.Module`` built from a backbone and options:

- ``loss(views)``: the training loss for a list of augmented views, each
  float ``(B, 3, H, W)`` in [0, 1] on the method's device; returns a scalar.
- ``representation(x)``: backbone output ``(B, D)``, what evaluation probes.
- ``embedding(x)``: projector output ``(B, K)`` (``K = D`` without projector).
- ``default_views(size)``: the augmentation the method's paper uses.
- ``after_step(step, total_steps)``: called by the trainer after each
  optimiser step; methods with a teacher update it there.
"""

from cookbook.methods.base import METHODS, Method, build, register
from cookbook.methods.contrastive import DCL, MoCo, NNCLR, SimCLR
from cookbook.methods.distillation import BYOL, DINO, SimSiam
from cookbook.methods.cca import WMSE, BarlowTwins, SwAV, VICReg
from cookbook.methods.mim import MAE, SimMIM, random_patch_mask

__all__ = ["METHODS", "Method", "build", "register", "SimCLR", "MoCo", "NNCLR", "DCL", "BYOL", "SimSiam", "DINO",
           "VICReg", "BarlowTwins", "SwAV", "WMSE", "MAE", "SimMIM", "random_patch_mask"]
