"""Chapter 03 writes the key lines of the family from scratch: the Barlow Twins
loss, SwAV's Sinkhorn-Knopp codes and W-MSE's whitening. These tests execute
those very cells of the notebook (not copies of them) and check them against
lightly's, which the package uses: values, gradients, and what each does with a
collapsed input."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import BarlowTwinsLoss
from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn
from lightly.loss.wmse_loss import Whitening2d

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chapter_code, under any import mode
import chapter_code  # noqa: E402


def defined(name):
    return chapter_code.defined("03_canonical_correlation.ipynb", name)


def randn(n, dim, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, requires_grad=grad)


@pytest.mark.parametrize("n, dim, lam", [(8, 4, 5e-3), (256, 64, 5e-3), (300, 16, 0.1)])
def test_notebook_barlow_twins_loss_matches_lightlys_with_gradients(n, dim, lam):
    loss = defined("barlow_twins_loss")
    z0, z1 = randn(n, dim, n, grad=True), randn(n, dim, n + 1, grad=True)
    ours, theirs = loss(z0, z1, lam), BarlowTwinsLoss(lambda_param=lam)(z0, z1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    for a, b in zip(torch.autograd.grad(ours, (z0, z1)), torch.autograd.grad(theirs, (z0, z1))):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_notebook_barlow_twins_loss_charges_a_repeated_feature_its_off_diagonal():
    loss = defined("barlow_twins_loss")
    one = randn(512, 1, 0).repeat(1, 32) + 1e-4 * randn(512, 32, 1)
    assert abs(float(loss(one, one, 1.0)) - 32 * 31) < 5  # every off-diagonal correlation ~1


@pytest.mark.parametrize("b, p, iters", [(16, 4, 3), (256, 16, 3), (64, 100, 10)])
def test_notebook_sinkhorn_matches_lightlys_and_balances(b, p, iters):
    sinkhorn = defined("sinkhorn")
    scores = F.normalize(randn(b, 8, b), dim=1) @ F.normalize(randn(p, 8, p), dim=1).T
    codes = sinkhorn(scores, 0.05, iters)
    torch.testing.assert_close(codes, lightly_sinkhorn(scores, iterations=iters, epsilon=0.05),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(codes.sum(1), torch.ones(b))  # each image: a distribution
    many = sinkhorn(scores, 0.05, 200).sum(0)
    torch.testing.assert_close(many, torch.full((p,), b / p), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("n, dim", [(64, 8), (256, 32)])
def test_notebook_whiten_matches_lightlys_and_gives_identity_covariance(n, dim):
    whiten = defined("whiten")
    z = randn(n, dim, dim) @ randn(dim, dim, dim + 1) + 3.0
    ours = whiten(z)
    torch.testing.assert_close(ours, Whitening2d(dim, track_running_stats=False)(z), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ours.mean(0), torch.zeros(dim), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.T @ ours / (n - 1), torch.eye(dim), atol=1e-3, rtol=0)


def test_notebook_whiten_refuses_a_collapsed_embedding():
    whiten = defined("whiten")
    with pytest.raises(torch.linalg.LinAlgError):
        whiten(randn(64, 1, 0).repeat(1, 8))
