"""The CPU testbed: one measured recipe per method, the CLI's defaults.

Every output the book commits is computed on 2 CPU cores, so each method needs
a setting where it learns decisively in a minute or two. The testbed is that
setting, chosen by measurement (``book/testbed.md`` tells the story and
``benchmarks/testbed.py`` prints the table):

- ``shapes`` at 16 x 16 pixels, all 10,000 train and 2,000 test images;
- a ResNet-10 (one BasicBlock per stage) of width 16: 0.31 M parameters and a
  128-dimensional representation (α-ReQ fits eigenvalues 4 to 100);
- a batch of 256 and a fixed number of optimiser **steps** (not seconds: a
  time budget changes with the machine's load, and would not reproduce):
  600 for every method but BYOL, which starts learning later and gets 1,200
  (its learning curve, and DINO's over a longer run, are in ``book/testbed.md``);
  masked image modeling trains a small ViT instead, for about the same time
  per method (MAE 1,200 steps, SimMIM 600);
- crops of at least 60 % of the image and SimCLR's strong colour jitter. At
  16 px the ImageNet-style crops of 8 % (3-4 pixels on a side) leave no shape
  to match, and weak jitter lets the networks match views by hue, a nuisance
  factor of ``shapes``; both were measured to stop every method learning.

A :class:`Recipe` holds one method's setting; :data:`CPU` maps method names to
them. Everything not named in a recipe takes the method's paper defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from cookbook import augment, methods, models

TESTBED_DATASET = "shapes"


@dataclass(frozen=True)
class Recipe:
    """How to train one method on the testbed.

    ``views`` names an :mod:`cookbook.augment` preset and its overrides, or is
    None for the method's own augmentation; ``vit`` holds the ViT's options
    when ``backbone`` is ``vit_tiny``. ``lr`` is per 256 images (linear rule).
    """

    method: str
    steps: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float | None = None
    batch_size: int = 256
    backbone: str = "resnet10"
    width: int = 16
    image_size: int = 16
    options: dict = field(default_factory=dict)
    views: tuple[str, dict] | None = ("simclr", {"min_scale": 0.6})
    vit: dict = field(default_factory=dict)

    def build(self, image_size: int | None = None, **options) -> methods.Method:
        """The method on a fresh backbone; ``options`` override the recipe's."""
        net = models.backbone(self.backbone, width=self.width, image_size=image_size or self.image_size,
                              **self.vit)
        return methods.build(self.method, net, **{**self.options, **options})

    def make_views(self, method: nn.Module, image_size: int | None = None) -> augment.Views:
        size = image_size or self.image_size
        if self.views is None:
            return method.default_views(size)
        preset, overrides = self.views
        return augment.PRESETS[preset](size, **overrides)

    def fit_options(self) -> dict:
        """Keyword arguments of :func:`cookbook.train.fit` (views apart)."""
        return {"steps": self.steps, "batch_size": self.batch_size, "optimizer": self.optimizer,
                "lr": self.lr, "weight_decay": self.weight_decay}

    def with_(self, **changes) -> "Recipe":
        return replace(self, **changes)


# Self-distillation did not learn hue invariance in the budget: with colour jitter alone
# SimSiam partly collapsed or kept hue. Grey views and random rotations (two nuisance
# factors of `shapes` the default views leave alone) hand it the invariances instead.
# BYOL's teacher follows the student with momentum 0.9 (rising to 1 by the end): at the
# paper's 0.99 it lagged too far behind for a run this short.
_GRAY_ROTATED = {"min_scale": 0.6, "cj_strength": 0.5, "random_gray_scale": 1.0, "rr_prob": 1.0,
                 "rr_degrees": 180.0}

# The ViT of masked image modeling: 4 x 4-pixel patches (16 tokens at 16 px). With 2 x 2
# patches (64 tokens) MAE beat scratch by more (+21 points fine-tuned, 600 steps), but every
# step, pre-training and fine-tuning alike, cost about four times as much on the CPU.
VIT_OPTIONS = {"patch_size": 4, "dim": 96, "depth": 4, "heads": 3, "pool": "mean"}
# MIM's decoder: one block of width 64 (the paper's ViT-L decoder has 8 of 512). Two of 128
# took twice the time for the same fine-tune (0.415 against 0.424, one seed).
_MAE_DECODER = {"decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2}

CPU: dict[str, Recipe] = {
    "simclr": Recipe("simclr", steps=600, lr=0.6, options={"temperature": 0.5}),
    # MoCo v2's paper setting (momentum 0.99, 4,096 keys, tau 0.2, lr 0.6 here) stayed below
    # raw pixels: a queue of keys from 8 steps ago, made by a slow key encoder, lags a
    # network that changes this fast. One step's keys, a faster key encoder and a lower
    # lr learn (benchmarks/results/search-moco-cpu.jsonl, validation split).
    "moco": Recipe("moco", steps=600, lr=0.3,
                   options={"momentum": 0.9, "queue_size": 512, "temperature": 0.5}),
    "nnclr": Recipe("nnclr", steps=600, lr=0.6),
    "dcl": Recipe("dcl", steps=600, lr=0.6),
    "byol": Recipe("byol", steps=1200, lr=0.3, options={"momentum": 0.9}, views=("simclr", _GRAY_ROTATED)),
    "simsiam": Recipe("simsiam", steps=600, lr=0.3, views=("simclr", _GRAY_ROTATED)),
    # DINO collapsed to a uniform output with BYOL's momentum 0.9 and learnt nothing in 600 steps
    # with a slower teacher rising to 1 (14 runs). With momentum 0.97, batch norm in the head
    # and two local crops of 30-60 % it reached a validation kNN of 0.96 in 2,400 steps (one
    # seed, 16 minutes). At 600 steps a teacher held at 0.97 (not rising to 1) and twice the
    # learning rate did best of 10 more runs: 0.48 and 0.41 (seeds 0, 1; raw pixels 0.39);
    # momentum 0.95 0.45 and 0.34; 0.95 or 0.9 with lr 0.6 collapsed (RankMe 2), and so did a
    # student temperature of 0.2 (benchmarks/results/search-dino-cpu.jsonl).
    "dino": Recipe("dino", steps=600, lr=0.6,
                   options={"momentum": 0.97, "momentum_end": 0.97, "output_dim": 1024,
                            "batch_norm": True},
                   views=("dino", {**_GRAY_ROTATED, "n_local": 2, "local_scale": (0.3, 0.6)})),
    "vicreg": Recipe("vicreg", steps=600, lr=0.3),  # SGD: LARS was no better here, and slower
    # Barlow Twins' loss sums K = 512 squared terms, about twenty times VICReg's: with SGD at
    # VICReg's lr it stayed below raw pixels, and a sixth of it learns (0.3: 0.34, 0.05: 0.49,
    # 0.02: 0.46; lambda 0.02 or 0.001 instead of 5e-3: 0.21 and 0.30). LARS, the paper's
    # optimizer, scales each layer's step to its weights whatever the loss's size; with it and
    # a projector narrower than the batch (K = 128 < 256: with K = 512 the batch's correlation
    # matrix cannot reach the identity) it reached 0.56.
    # SwAV collapsed with 32 or 128 prototypes (RankMe 5-6, a queue did not help) and learns
    # with its paper's 3,000 (0.59). W-MSE learns with its paper's heads (0.70). Validation kNN,
    # one seed each: benchmarks/results/search-cca-cpu.jsonl.
    "barlowtwins": Recipe("barlowtwins", steps=600, lr=0.3, optimizer="lars", weight_decay=1e-4,
                          options={"proj_dim": 128, "proj_hidden": 512}),
    "swav": Recipe("swav", steps=600, lr=0.3, options={"n_prototypes": 3000}),
    "wmse": Recipe("wmse", steps=600, lr=0.3),
    # Masked image modeling is judged by fine-tuning with 10 % of the labels against the
    # same ViT from scratch (0.41 test, one seed). At 600 steps MAE did not beat it (0.42;
    # with lr 4e-3 0.42; 1,200 steps of 128: 0.43); 1,800 steps did (0.54). SimMIM (0.39 at
    # 600 steps, 0.37 at lr 5e-4) and SimCLR on the ViT (0.37, kNN below raw pixels) did not.
    # The three get about the same pre-training time (one step of SimMIM, whose encoder reads
    # every patch, costs two of MAE; one of SimCLR, two views, four): 1,200 steps of MAE, what
    # chapter 04's 45 minutes allow (three seeds there).
    # benchmarks/results/search-mim-cpu.jsonl (validation and test, one seed each).
    "mae": Recipe("mae", steps=1200, lr=1.5e-3, optimizer="adamw", backbone="vit_tiny", views=None,
                  vit=VIT_OPTIONS, options={"mask_ratio": 0.75, **_MAE_DECODER}),
    "simmim": Recipe("simmim", steps=600, lr=1.5e-3, optimizer="adamw", backbone="vit_tiny", views=None,
                     vit=VIT_OPTIONS, options={"mask_ratio": 0.6}),
    # SimCLR on MIM's ViT (chapter 04's joint-embedding reference), with its testbed views.
    "simclr_vit": Recipe("simclr", steps=300, lr=1.5e-3, optimizer="adamw", backbone="vit_tiny",
                         vit=VIT_OPTIONS, options={"temperature": 0.5}),
}


def recipe(method: str) -> Recipe:
    """The testbed recipe of ``method``; ValueError naming the known ones."""
    try:
        return CPU[method.lower()]
    except KeyError:
        raise ValueError(f"no testbed recipe for {method!r}; recipes exist for {', '.join(CPU)}") from None
