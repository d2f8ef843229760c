"""Batched augmentations that run on whatever device the batch is on.

Every op takes a float batch ``(B, 3, H, W)`` with values in [0, 1] and draws
its random parameters per sample, so one call augments a whole batch without
a Python loop or PIL. Random resized crop and horizontal flip are one affine
``grid_sample``; the colour ops are blends selected per sample with
``torch.where``, so nothing waits on the GPU.

Parameter names and defaults follow lightly's transforms (``min_scale``,
``cj_prob``, ``cj_strength``, ``random_gray_scale``, ``gaussian_blur``,
``solarization_prob``, ...). Presets reproduce lightly's SimCLR, BYOL, DINO and
VICReg settings for 32x32 images; as in lightly's CIFAR-10 benchmarks, Gaussian
blur is off at that size (a sigma of 0.1-2 px is meant for 224 px images).

Two deliberate differences from torchvision's ``ColorJitter``: the four jitter
ops run in a fixed order (brightness, contrast, saturation, hue) instead of a
random one, and ``cj_prob`` decides per sample whether all four run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision uses


@dataclass(frozen=True)
class ViewSpec:
    """How to make one view. Probabilities are per sample, in [0, 1]."""

    size: int = 32                  # output side, pixels
    min_scale: float = 0.08         # crop area as a fraction of the image
    max_scale: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h
    hf_prob: float = 0.5
    rr_prob: float = 0.0            # probability of a random rotation
    rr_degrees: float | None = None  # rotate by U(-d, d) degrees; None: by a multiple of 90
    cj_prob: float = 0.8
    cj_strength: float = 1.0        # multiplies the four cj_* ranges below
    cj_bright: float = 0.8
    cj_contrast: float = 0.8
    cj_sat: float = 0.8
    cj_hue: float = 0.2             # fraction of a full hue turn
    random_gray_scale: float = 0.2
    gaussian_blur: float = 0.0
    sigmas: tuple[float, float] = (0.1, 2.0)  # blur sigma range, pixels
    solarization_prob: float = 0.0


def _rand(n: int, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def _uniform(lo: float, hi: float, n: int, gen, device) -> torch.Tensor:
    return lo + (hi - lo) * _rand(n, gen, device)


def _per_sample(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


# --- geometry ---------------------------------------------------------------

def sample_crops(n: int, spec: ViewSpec, gen=None, device="cpu", tries: int = 10):
    """Draws random-resized-crop boxes like torchvision, batched.

    For each sample, ``tries`` (area, log-ratio) candidates are drawn and the
    first that fits inside the image is kept; if none fits, a square crop of
    the drawn area is used (it always fits, and keeps the area in range).

    Returns ``(w, h, cx, cy)``, each ``(n,)``: crop width, height and centre as
    fractions of the image side.
    """
    area = _uniform(spec.min_scale, spec.max_scale, n * tries, gen, device).view(n, tries)
    lo, hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    ratio = torch.exp(_uniform(lo, hi, n * tries, gen, device)).view(n, tries)
    w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
    fits = (w <= 1) & (h <= 1)
    first = fits.int().argmax(dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    side = torch.sqrt(area[:, 0])
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), side)
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), side)
    cx = w / 2 + (1 - w) * _rand(n, gen, device)
    cy = h / 2 + (1 - h) * _rand(n, gen, device)
    return w, h, cx, cy


def sample_angles(n: int, spec: ViewSpec, gen=None, device="cpu") -> torch.Tensor:
    """Rotation angles in radians ``(n,)``: 0 with probability ``1 - rr_prob``,
    else uniform in [-rr_degrees, rr_degrees], or a random multiple of 90
    degrees when ``rr_degrees`` is None (as lightly's ``rr_degrees=None``)."""
    if spec.rr_degrees is None:
        angle = (torch.floor(_rand(n, gen, device) * 4) * (math.pi / 2))
    else:
        angle = _uniform(-spec.rr_degrees, spec.rr_degrees, n, gen, device) * (math.pi / 180)
    return torch.where(_rand(n, gen, device) < spec.rr_prob, angle, torch.zeros_like(angle))


def resized_crop(x: torch.Tensor, w, h, cx, cy, flip, size: int, angle=None) -> torch.Tensor:
    """Crops boxes ``(w, h, cx, cy)`` (fractions, ``(B,)`` each) out of ``x``
    ``(B, C, H, W)``, mirrors where ``flip`` ``(B,)`` is true, rotates the box
    by ``angle`` (radians, ``(B,)``, optional; positive turns the content
    counter-clockwise on screen) about its centre, and resizes
    bilinearly to ``(B, C, size, size)``. Pixels from outside the image repeat
    the border."""
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    cos, sin = (torch.cos(angle), torch.sin(angle)) if angle is not None else (1.0, 0.0)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = w * sign * cos
    theta[:, 0, 1] = -h * sin
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 0] = w * sign * sin
    theta[:, 1, 1] = h * cos
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --- colour -----------------------------------------------------------------

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``x`` ``(B, 3, H, W)``, as ``(B, 1, H, W)``."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to HSV, each channel in [0, 1]; shape kept."""
    r, g, b = x.unbind(1)
    v = x.amax(1)  # not max(1)/min(1), which also find the indices: 30x slower on a CPU batch
    c = v - x.amin(1)
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(v == r, (g - b) / safe_c,
                    torch.where(v == g, 2 + (b - r) / safe_c, 4 + (r - g) / safe_c))
    h = torch.where(c > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + h.unsqueeze(1) * 6) % 6
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(x: torch.Tensor, spec: ViewSpec, gen=None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter, each factor drawn per
    sample as in torchvision (factor in [max(0, 1 - s), 1 + s], hue shift in
    [-h, h]); applied to a sample with probability ``spec.cj_prob``."""
    n, dev = x.shape[0], x.device
    s = spec.cj_strength

    def factor(amount):
        return _uniform(max(0.0, 1 - amount * s), 1 + amount * s, n, gen, dev).view(-1, 1, 1, 1)

    y = (x * factor(spec.cj_bright)).clamp(0, 1)
    mean = grayscale(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * factor(spec.cj_contrast) + mean).clamp(0, 1)
    gray = grayscale(y)
    y = ((y - gray) * factor(spec.cj_sat) + gray).clamp(0, 1)
    if spec.cj_hue * s > 0:
        hsv = rgb_to_hsv(y)
        shift = _uniform(-spec.cj_hue * s, spec.cj_hue * s, n, gen, dev).view(-1, 1, 1)
        hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
        y = hsv_to_rgb(hsv)
    return torch.where(_per_sample(_rand(n, gen, dev) < spec.cj_prob), y, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blurs each sample of ``x`` ``(B, C, H, W)`` with its own ``sigma``
    ``(B,)`` in pixels: a separable kernel, reflect padding, one grouped conv
    per axis."""
    b, c, hgt, wid = x.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), (min(hgt, wid) - 1) // 2))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = x.reshape(1, b * c, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, hgt, wid)


def view(x: torch.Tensor, spec: ViewSpec, gen: torch.Generator | None = None) -> torch.Tensor:
    """One augmented view of a batch.

    Args:
        x: uint8 ``(B, 3, H, W)`` or float in [0, 1], on any device.
        spec: what to apply.
        gen: optional ``torch.Generator`` on ``x``'s device, for reproducible views.

    Returns:
        float32 ``(B, 3, spec.size, spec.size)`` in [0, 1].
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    n, dev = x.shape[0], x.device
    w, h, cx, cy = sample_crops(n, spec, gen, dev)
    flip = _rand(n, gen, dev) < spec.hf_prob
    angle = sample_angles(n, spec, gen, dev) if spec.rr_prob > 0 else None
    y = resized_crop(x, w, h, cx, cy, flip, spec.size, angle)
    if spec.cj_prob > 0:
        y = color_jitter(y, spec, gen)
    if spec.random_gray_scale > 0:
        gray = (_rand(n, gen, dev) < spec.random_gray_scale)
        y = torch.where(_per_sample(gray), grayscale(y).expand_as(y), y)
    if spec.gaussian_blur > 0:
        sigma = _uniform(spec.sigmas[0], spec.sigmas[1], n, gen, dev)
        blur = _rand(n, gen, dev) < spec.gaussian_blur
        y = torch.where(_per_sample(blur), gaussian_blur(y, sigma), y)
    if spec.solarization_prob > 0:
        solar = _rand(n, gen, dev) < spec.solarization_prob
        y = torch.where(_per_sample(solar), torch.where(y < 0.5, y, 1 - y), y)
    return y


class Views:
    """Makes a list of views of a batch, one per spec: ``Views(specs)(x)``.

    Multi-crop is just more specs: 2 global specs followed by k local ones.
    """

    def __init__(self, specs: list[ViewSpec] | tuple[ViewSpec, ...]):
        if not specs:
            raise ValueError("Views needs at least one ViewSpec")
        self.specs = tuple(specs)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> list[torch.Tensor]:
        return [view(x, spec, gen) for spec in self.specs]

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"Views({len(self.specs)} views: sizes {[s.size for s in self.specs]})"


# --- presets (lightly's defaults, at 32x32) -----------------------------------

def simclr(size: int = 32, **overrides) -> Views:
    """SimCLR (lightly ``SimCLRTransform``): strong colour jitter, two identical views."""
    spec = replace(ViewSpec(size=size), **overrides)
    return Views([spec, spec])


def byol(size: int = 32, **overrides) -> Views:
    """BYOL (lightly ``BYOLView1/2Transform``): milder jitter; the second view solarises."""
    base = replace(ViewSpec(size=size, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.2, cj_hue=0.1), **overrides)
    return Views([base, replace(base, solarization_prob=overrides.get("solarization_prob", 0.2))])


def vicreg(size: int = 32, **overrides) -> Views:
    """VICReg (lightly ``VICRegTransform``): jitter strength 0.5, some solarisation."""
    spec = replace(ViewSpec(size=size, cj_strength=0.5, cj_sat=0.4, solarization_prob=0.1), **overrides)
    return Views([spec, spec])


def dino(size: int = 32, local_size: int | None = None, n_local: int = 6,
         local_scale: tuple[float, float] = (0.05, 0.4), **overrides) -> Views:
    """DINO multi-crop (lightly ``DINOTransform``): 2 global crops of scale
    [0.4, 1] (the second solarises) and ``n_local`` local crops of scale
    ``local_scale`` at ``local_size`` (default: half of ``size``, as lightly's
    96 px local crops are about half of its 224 px global ones)."""
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
        raise ValueError(f"n_local is a number of local crops >= 0, got {n_local!r}")
    glob = replace(ViewSpec(size=size, min_scale=0.4, cj_strength=0.5, cj_sat=0.4), **overrides)
    local = replace(glob, size=local_size or max(size // 2, 1), min_scale=local_scale[0],
                    max_scale=local_scale[1])
    return Views([glob, replace(glob, solarization_prob=0.2)] + [local] * n_local)


PRESETS = {"simclr": simclr, "byol": byol, "vicreg": vicreg, "dino": dino}


def show_views(images: torch.Tensor, views: Views, n_images: int = 4, seed: int = 0):
    """Draws a grid: one column per image, the original on top and each of its
    views below, in the book's figure width (7.5 inches) with 10 pt labels.

    Args:
        images: uint8 ``(N, 3, H, W)``; the first ``n_images`` are shown.
        views: the augmentation to show.

    Returns:
        the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    x = images[:n_images].cpu()
    gen = torch.Generator().manual_seed(seed)
    out = views(x, gen)
    rows = 1 + len(out)
    side = min(7.5 / (len(x) + 0.6), 1.6)
    fig, axes = plt.subplots(rows, len(x), figsize=(7.5, side * rows + 0.2), squeeze=False,
                             layout="constrained")
    for j in range(len(x)):
        panels = [x[j].float() / 255] + [v[j] for v in out]
        for i, img in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j == 0:
                ax.set_ylabel("original" if i == 0 else f"view {i}", fontsize=10)
    return fig
