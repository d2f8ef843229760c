"""Chapter 04 writes masked image modeling's pieces from their definitions: the
patches, the batched mask and the loss on the hidden patches. These tests
execute those very cells of the notebook (not copies of them) and check them
against lightly's ``patchify`` and the package's methods, which train the
chapter's models."""

import sys
from pathlib import Path

import pytest
import torch
from lightly.models import utils as lightly_utils

from cookbook import methods, models

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chapter_code, under any import mode
import chapter_code  # noqa: E402


def defined(name):
    return chapter_code.defined("04_masked_image_modeling.ipynb", name)


@pytest.mark.parametrize("size, p", [(16, 4), (16, 2), (32, 4), (8, 8)])
def test_notebook_patchify_matches_lightlys(size, p):
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size + p))
    torch.testing.assert_close(defined("patchify")(images, p), lightly_utils.patchify(images, p), rtol=0, atol=0)


@pytest.mark.parametrize("ratio, n", [(0.75, 16), (0.25, 16), (0.875, 16), (0.5, 64), (0.9, 49)])
def test_notebook_mask_hides_exactly_round_ratio_patches_disjoint_from_the_visible(ratio, n):
    keep, masked = defined("mask_patches")(32, n, ratio, torch.Generator().manual_seed(0))
    assert masked.shape == (32, round(ratio * n)) and keep.shape == (32, n - round(ratio * n))
    assert torch.equal(torch.cat([keep, masked], 1).sort(1).values, torch.arange(n).expand(32, -1))
    assert len({tuple(row.sort().values.tolist()) for row in masked}) > 1  # one mask per image
    k2, m2 = methods.random_patch_mask(32, n, ratio, torch.Generator().manual_seed(0))
    assert torch.equal(keep, k2) and torch.equal(masked, m2)  # the package draws the same


def tiny_vit():
    return models.vit_tiny(image_size=16, patch_size=4, dim=32, depth=1, heads=2, pool="mean")


@pytest.mark.parametrize("name, options", [("mae", {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}),
                                           ("mae", {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2,
                                                    "norm_pix": False}),
                                           ("simmim", {}), ("simmim", {"norm_pix": True})])
def test_notebook_loss_is_the_packages_with_gradients(name, options):
    loss = defined("masked_patch_loss")
    torch.manual_seed(0)
    model = methods.build(name, tiny_vit(), **options)
    images = torch.rand(4, 3, 16, 16)
    torch.manual_seed(1)
    package = model.loss([images])
    torch.manual_seed(1)
    prediction, _, hidden = model.reconstruct(images)
    ours = loss(prediction, images, hidden, 4, norm_pix=model.norm_pix, l1=name == "simmim")
    torch.testing.assert_close(ours, package)
    head = model.decoder.prediction_head if name == "mae" else model.head
    a = torch.autograd.grad(ours, head.weight)[0]
    b = torch.autograd.grad(package, head.weight)[0]
    torch.testing.assert_close(a, b)


def test_notebook_loss_counts_hidden_patches_only():
    """A perfect prediction of the hidden patches scores 0 whatever the visible ones hold."""
    loss, patchify = defined("masked_patch_loss"), defined("patchify")
    images = torch.rand(2, 3, 16, 16)
    hidden = torch.tensor([[0, 5, 9], [3, 4, 15]])
    target = torch.stack([patchify(images, 4)[i, hidden[i]] for i in range(2)])
    assert loss(target, images, hidden, 4, norm_pix=False) == 0
    assert loss(target + 0.5, images, hidden, 4, norm_pix=False, l1=True) == pytest.approx(0.5)
