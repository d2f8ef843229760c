"""Backbones and heads.

Backbones take float images ``(B, 3, H, W)`` in [0, 1] and normalise them
themselves, so augmentation, training and evaluation never disagree about
normalisation. Each backbone has an attribute ``dim``: the size of its output
``(B, dim)``.

- :func:`resnet18`: CIFAR-style ResNet-18 (He et al., 2016) - 3x3 stem, no
  max-pool - with a width multiplier: ``width`` channels in the first stage
  (64 is the standard network, 11.2 M parameters; ``dim = 8 * width``).
- :func:`resnet10`: the same with one block per stage (the CPU testbed's
  backbone at width 16: 0.31 M parameters, ``dim = 128``).
- :func:`vit_tiny`: a small ViT built on torchvision's ``VisionTransformer``;
  its output is the class token or the mean of the patch tokens.
- :func:`mlp_head`: projection/prediction heads built on lightly's
  ``ProjectionHead`` with configurable depth (0 = no head at all).
"""

from __future__ import annotations

import torch
from torch import nn
from lightly.models.modules.heads import ProjectionHead

# CIFAR-10 channel statistics; close enough for `shapes` and most photos.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for ``x`` in [0, 1]."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, four stages of BasicBlocks, global average pool."""

    def __init__(self, blocks=(2, 2, 2, 2), width: int = 64):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width}")
        self.width, self.dim, self.blocks = width, 8 * width, tuple(blocks)
        layers = [Normalize(), nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        c_in = width
        for stage, n in enumerate(blocks):
            c_out = width * 2**stage
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 8 * width)``."""
        return self.net(x)


def resnet18(width: int = 64) -> ResNet:
    """CIFAR-style ResNet-18 with ``width`` channels in its first stage."""
    return ResNet((2, 2, 2, 2), width)


def resnet10(width: int = 16) -> ResNet:
    """CIFAR-style ResNet with one BasicBlock per stage (ResNet-10)."""
    return ResNet((1, 1, 1, 1), width)


class ViT(nn.Module):
    """torchvision's VisionTransformer without its classifier.

    ``pool="cls"`` returns the class token; ``pool="mean"`` the mean of the
    patch tokens after the last layer norm (what MAE's probes use).
    """

    def __init__(self, image_size=32, patch_size=4, dim=192, depth=6, heads=3, mlp_ratio=4, pool="cls"):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer

        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.dim, self.pool = dim, pool
        self.normalize = Normalize()
        self.vit = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=depth,
                                     num_heads=heads, hidden_dim=dim, mlp_dim=mlp_ratio * dim)
        self.vit.heads = nn.Identity()

    def forward(self, x):
        """``(B, 3, image_size, image_size)`` in [0, 1] -> ``(B, dim)``."""
        if self.pool == "cls":
            return self.vit(self.normalize(x))
        tokens = self.vit._process_input(self.normalize(x))
        tokens = torch.cat([self.vit.class_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.vit.encoder(tokens)[:, 1:].mean(dim=1)


def vit_tiny(image_size: int = 32, patch_size: int = 4, dim: int = 192, depth: int = 6, heads: int = 3,
             pool: str = "cls") -> ViT:
    """A ViT-Tiny-like encoder (192 wide, 3 heads, 6 layers), 4x4 patches by default."""
    return ViT(image_size, patch_size, dim, depth, heads, pool=pool)


BACKBONES = ("resnet18", "resnet10", "vit_tiny")


def backbone(name: str = "resnet18", width: int = 64, image_size: int = 32, **vit_options) -> nn.Module:
    """Builds a backbone by name: ``resnet18`` or ``resnet10`` (use ``width``)
    or ``vit_tiny`` (uses ``image_size`` and ``vit_options``: ``patch_size``,
    ``dim``, ``depth``, ``heads``, ``pool``)."""
    if name == "resnet18":
        return resnet18(width)
    if name == "resnet10":
        return resnet10(width)
    if name == "vit_tiny":
        return vit_tiny(image_size=image_size, **vit_options)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def describe(net: nn.Module) -> str:
    """One line for run cards, e.g. ``ResNet-18 width 16 (0.70 M parameters)``."""
    n = sum(p.numel() for p in net.parameters()) / 1e6
    if isinstance(net, ResNet):
        depth = 2 + 2 * sum(net.blocks)  # the stem, two convolutions a block, the classifier
        return f"ResNet-{depth} width {net.width} ({n:.2f} M parameters)"
    return f"{type(net).__name__} dim {getattr(net, 'dim', '?')} ({n:.2f} M parameters)"


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, depth: int = 2,
             batch_norm: bool = True, last_batch_norm: bool = False) -> nn.Module:
    """An MLP head (projector or predictor) as lightly builds them.

    ``depth`` counts linear layers: 0 is no head (identity, output ``in_dim``),
    1 a single linear map, 2 lightly's SimCLR/BYOL shape (linear-BN-ReLU-linear),
    3 SimCLR v2's. Hidden layers have batch norm and ReLU; the last layer is
    linear (with batch norm if ``last_batch_norm``, as in SimCLR).
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if depth == 0:
        return nn.Identity()
    dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
    blocks = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == depth - 1
        bn = nn.BatchNorm1d(b) if batch_norm and (not last or last_batch_norm) else None
        blocks.append((a, b, bn, None if last else nn.ReLU()))
    return ProjectionHead(blocks)


def head_dim(head: nn.Module, in_dim: int) -> int:
    """Output size of a head made by :func:`mlp_head`."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else in_dim
