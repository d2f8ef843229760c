"""Chapter 01 writes the key lines of its four methods from scratch: NT-Xent
(SimCLR), the queue loss and momentum update (MoCo v2), the nearest-neighbour
swap (NNCLR) and the decoupled loss (DCL). These tests execute those very cells
of the notebook (not copies of them) and check them against lightly's
implementations, which the package uses: values and gradients, for several
sizes and temperatures."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DCLLoss, NTXentLoss
from lightly.models.modules import NNMemoryBankModule
from lightly.models.utils import update_momentum

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chapter_code, under any import mode
import chapter_code  # noqa: E402


def defined(name):
    return chapter_code.defined("01_deep_metric_learning.ipynb", name)


@pytest.fixture(scope="module")
def nt_xent():
    return defined("nt_xent")


def pair(n, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g, dtype=dtype, requires_grad=True) for _ in range(2)]


def assert_same_values_and_gradients(ours, theirs, inputs):
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n, tau", [(2, 0.5), (8, 0.1), (64, 0.2), (200, 1.0)])
def test_notebook_nt_xent_matches_lightly(nt_xent, n, tau):
    z0, z1 = pair(n, 32, n)
    assert_same_values_and_gradients(nt_xent(z0, z1, tau), NTXentLoss(temperature=tau)(z0, z1), (z0, z1))


def test_notebook_nt_xent_is_low_for_matching_views_and_log_2n_minus_1_for_equal_ones(nt_xent):
    n = 16
    z = F.one_hot(torch.arange(n), 32).float()  # orthogonal embeddings, each view equal to its partner
    assert nt_xent(z, z, 0.05) < 1e-3
    same = torch.ones(n, 8)
    torch.testing.assert_close(nt_xent(same, same, 0.5), torch.log(torch.tensor(2.0 * n - 1)))


@pytest.mark.parametrize("n, queue_size, tau", [(4, 16, 0.2), (32, 512, 0.07), (8, 8, 1.0)])
def test_notebook_moco_loss_matches_lightly_with_its_queue(n, queue_size, tau):
    moco_loss = defined("moco_loss")
    q, k = pair(n, 16, queue_size)
    queue = F.normalize(torch.randn(queue_size, 16, generator=torch.Generator().manual_seed(1),
                                    dtype=torch.float64), dim=1)
    lightly_loss = NTXentLoss(temperature=tau, memory_bank_size=(queue_size, 16))
    lightly_loss.memory_bank.bank = queue.clone()
    assert_same_values_and_gradients(moco_loss(q, k, queue, tau), lightly_loss(q, k), (q, k))


def test_notebook_moco_loss_is_log_k_plus_1_when_nothing_is_learnt():
    moco_loss = defined("moco_loss")
    same = torch.ones(4, 8)
    torch.testing.assert_close(moco_loss(same, same, torch.ones(63, 8), 0.2), torch.log(torch.tensor(64.0)))


@pytest.mark.parametrize("m", [0.0, 0.9, 0.999, 1.0])
def test_notebook_momentum_update_matches_lightly(m):
    momentum_update = defined("momentum_update")
    torch.manual_seed(0)
    query, key = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    key_lightly = torch.nn.Linear(5, 3)
    key_lightly.load_state_dict(key.state_dict())
    momentum_update(key, query, m)
    update_momentum(query, key_lightly, m)
    for ours, theirs in zip(key.parameters(), key_lightly.parameters()):
        torch.testing.assert_close(ours, theirs)
    if m == 0.0:  # m = 0 copies the query encoder
        torch.testing.assert_close(key.weight, query.weight)


@pytest.mark.parametrize("n, support_size", [(1, 1), (8, 64), (32, 16)])
def test_notebook_nearest_neighbour_matches_lightly(n, support_size):
    nearest_neighbour = defined("nearest_neighbour")
    g = torch.Generator().manual_seed(n)
    z, support = torch.randn(n, 12, generator=g), torch.randn(support_size, 12, generator=g)
    lightly_support = NNMemoryBankModule(size=(support_size, 12))
    lightly_support.bank = support.clone()
    torch.testing.assert_close(nearest_neighbour(z, support), lightly_support(z))


def test_notebook_nearest_neighbour_finds_a_scaled_copy():
    nearest_neighbour = defined("nearest_neighbour")
    support = torch.randn(10, 6)
    # cosine similarity ignores length: 3 × row 7 is nearest to row 7
    torch.testing.assert_close(nearest_neighbour(3 * support[7:8], support), support[7:8])


@pytest.mark.parametrize("n, tau", [(2, 0.1), (16, 0.1), (64, 0.5)])
def test_notebook_dcl_loss_matches_lightly(n, tau):
    dcl_loss = defined("dcl_loss")
    z0, z1 = pair(n, 24, n)
    assert_same_values_and_gradients(dcl_loss(z0, z1, tau), DCLLoss(temperature=tau)(z0, z1), (z0, z1))


def test_notebook_dcl_loss_is_log_2n_minus_2_for_equal_views():
    dcl_loss = defined("dcl_loss")
    same = torch.ones(16, 8)
    torch.testing.assert_close(dcl_loss(same, same, 0.1), torch.log(torch.tensor(30.0)))
