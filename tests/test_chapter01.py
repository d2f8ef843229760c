"""Chapter 01 writes NT-Xent from scratch. This test executes that very cell of the
notebook (not a copy of it) and checks it against lightly's NTXentLoss: values
and gradients, for several batch sizes and temperatures."""

from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_deep_metric_learning.ipynb"


@pytest.fixture(scope="module")
def nt_xent():
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells
             if c.cell_type == "code" and c.source.lstrip().startswith("def nt_xent(")]
    assert len(cells) == 1, "the chapter should define nt_xent in exactly one code cell"
    namespace = {"torch": torch, "F": F}
    exec(compile(cells[0].source, f"{NOTEBOOK.name}:nt_xent", "exec"), namespace)
    return namespace["nt_xent"]


@pytest.mark.parametrize("n, tau", [(2, 0.5), (8, 0.1), (64, 0.2), (200, 1.0)])
def test_notebook_nt_xent_matches_lightly(nt_xent, n, tau):
    g = torch.Generator().manual_seed(n)
    z0, z1 = (torch.randn(n, 32, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ours = nt_xent(z0, z1, tau)
    grads = torch.autograd.grad(ours, (z0, z1))
    theirs = NTXentLoss(temperature=tau)(z0, z1)
    expected = torch.autograd.grad(theirs, (z0, z1))
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


def test_notebook_nt_xent_is_low_for_matching_views_and_log_2n_minus_1_for_equal_ones(nt_xent):
    n = 16
    z = F.one_hot(torch.arange(n), 32).float()  # orthogonal embeddings, each view equal to its partner
    assert nt_xent(z, z, 0.05) < 1e-3
    same = torch.ones(n, 8)
    torch.testing.assert_close(nt_xent(same, same, 0.5), torch.log(torch.tensor(2.0 * n - 1)))
