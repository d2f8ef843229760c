"""Chapter 05 writes LiDAR from its equations. These tests execute that very
cell of the notebook (not a copy of it) and check it against the package's
``cookbook.metrics.lidar``, which the chapter's runs use, and against answers
known by construction."""

import sys
from pathlib import Path

import pytest
import torch

from cookbook import metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chapter_code, under any import mode
import chapter_code  # noqa: E402


def lidar():
    return chapter_code.defined("05_choosing_without_labels.ipynb", "lidar")


def designed(n=300, q=6, dim=32, k=4, noise=0.05, seed=0):
    """Views of n images that differ in k orthogonal directions, plus view noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0][:k]
    codes = torch.randn(n, 1, k, generator=g).expand(-1, q, -1)
    return codes @ basis + noise * torch.randn(n, q, dim, generator=g)


@pytest.mark.parametrize("shape, delta", [((50, 2, 8), 1e-4), ((200, 8, 32), 1e-4), ((120, 4, 16), 1e-2)])
def test_notebook_lidar_matches_the_package(shape, delta):
    views = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))
    views[:, :, 0] += 3 * torch.randn(shape[0], 1, generator=torch.Generator().manual_seed(1))
    assert lidar()(views, delta=delta) == pytest.approx(metrics.lidar(views, delta=delta), rel=1e-9)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_notebook_lidar_counts_the_directions_images_differ_in(k):
    assert lidar()(designed(k=k)) == pytest.approx(k, abs=0.25)  # view noise adds a little


def test_notebook_lidar_ignores_an_invertible_linear_map_that_rankme_does_not():
    views = designed()
    g = torch.Generator().manual_seed(2)
    scale = torch.ones(32)
    scale[0] = 100.0
    mixed = views @ (torch.randn(32, 32, generator=g) @ torch.diag(scale))
    assert lidar()(mixed) == pytest.approx(lidar()(views), rel=1e-2)  # up to delta
    assert metrics.rankme(mixed.reshape(-1, 32)) < 0.5 * metrics.rankme(views.reshape(-1, 32))


def test_notebook_lidar_of_views_that_agree_with_nothing_is_high():
    noise = torch.randn(400, 8, 16, generator=torch.Generator().manual_seed(3))
    assert lidar()(noise) > 12  # of at most 16: the degenerate full rank the chapter shows
