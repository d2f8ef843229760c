"""Chapter 02 writes the key lines of self-distillation from scratch: the
BYOL/SimSiam loss with its stop-gradient, and DINO's centred, sharpened
cross-entropy. These tests execute those very cells of the notebook (not copies
of them) and check them against lightly's losses, which the package uses:
values, gradients, and what each does with a collapsed input."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, NegativeCosineSimilarity

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chapter_code, under any import mode
import chapter_code  # noqa: E402


def defined(name):
    return chapter_code.defined("02_self_distillation.ipynb", name)


def tensors(count, n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(count)]


@pytest.mark.parametrize("n, dim", [(2, 4), (64, 128), (300, 16)])
def test_notebook_byol_loss_is_two_plus_twice_lightlys_and_stops_the_target_gradient(n, dim):
    byol_loss = defined("byol_loss")
    p, z = tensors(2, n, dim, n)
    ours = byol_loss(p, z)
    theirs = 2 + 2 * NegativeCosineSimilarity()(p, z.detach())
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, p)[0], torch.autograd.grad(theirs, p)[0])
    ours = byol_loss(p, z)
    ours.backward()
    assert z.grad is None  # the stop-gradient


def test_notebook_byol_loss_is_zero_for_collapsed_embeddings_and_four_for_opposite_ones():
    byol_loss = defined("byol_loss")
    same = torch.ones(8, 5)
    assert byol_loss(same, 3 * same).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(same, -same).item() == pytest.approx(4.0)


@pytest.mark.parametrize("n, k, tt, ts", [(4, 8, 0.04, 0.1), (64, 256, 0.07, 0.2), (16, 32, 1.0, 1.0)])
def test_notebook_dino_loss_matches_lightly_over_the_two_global_views(n, k, tt, ts):
    dino_loss = defined("dino_loss")
    t0, t1, s0, s1 = tensors(4, n, k, k)
    center = torch.zeros(k, dtype=torch.float64)
    ours = 0.5 * (dino_loss(t0, s1, center, tt, ts) + dino_loss(t1, s0, center, tt, ts))
    theirs = DINOLoss(output_dim=k, teacher_temp=tt, student_temp=ts)([t0, t1], [s0, s1])
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(torch.autograd.grad(ours, (s0, s1)), torch.autograd.grad(theirs, (s0, s1))):
        torch.testing.assert_close(a, b)


def test_notebook_dino_loss_subtracts_the_centre_and_sends_no_gradient_to_the_teacher():
    dino_loss = defined("dino_loss")
    t, s = tensors(2, 8, 16, 0)
    center = torch.randn(16, dtype=torch.float64)
    shifted = DINOLoss(output_dim=16)
    shifted.center = center.view(1, 1, -1).clone()
    # lightly's loss averages two views; with the same view twice it is the one-view loss
    torch.testing.assert_close(dino_loss(t, s, center), shifted([t, t], [s, s]))
    dino_loss(t, s, center).backward()
    assert t.grad is None
    # a uniform teacher: the loss is the student's cross-entropy to the uniform distribution
    uniform = dino_loss(torch.zeros(8, 16), torch.zeros(8, 16), torch.zeros(16))
    torch.testing.assert_close(uniform, torch.log(torch.tensor(16.0)))
