"""Sanity values for RankMe and alpha-ReQ on matrices whose answer is known."""

import math

import numpy as np
import pytest
import torch

from cookbook import metrics


def gaussian(n, d, seed=0, scale=None):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return Z if scale is None else Z * scale


def with_exact_spectrum(eigenvalues, n=2000, seed=0):
    """Z (n, D) whose covariance eigenvalues are exactly ∝ eigenvalues: orthogonal, zero-mean columns."""
    Z = gaussian(n, len(eigenvalues), seed)
    Q, _ = torch.linalg.qr(Z - Z.mean(dim=0))  # columns stay zero-mean: combinations of zero-mean columns
    return Q * eigenvalues.sqrt()


def power_law(d, a):
    return torch.arange(1, d + 1, dtype=torch.float64) ** (-a)


# RankMe ---------------------------------------------------------------------


def test_rankme_isotropic_gaussian():
    assert metrics.rankme(gaussian(10_000, 128).float()) == pytest.approx(127.8, abs=0.3)


def test_rankme_rank_r_matrix_with_equal_singular_values():
    g = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(500, 10, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(64, 10, generator=g, dtype=torch.float64))
    assert metrics.rankme(3.0 * U @ V.T) == pytest.approx(10, abs=0.01)


def test_rankme_constant_matrix_is_one():
    assert metrics.rankme(torch.full((1000, 128), 0.7)) == pytest.approx(1, abs=0.01)


@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_rankme_and_alpha_are_scale_invariant(factor):
    Z = gaussian(3000, 256, seed=2, scale=power_law(256, 1.0).sqrt()).float()
    assert metrics.rankme(Z * factor) == pytest.approx(metrics.rankme(Z), rel=1e-6)
    assert metrics.alpha_req(Z * factor).alpha == pytest.approx(metrics.alpha_req(Z).alpha, abs=1e-6)


@pytest.mark.parametrize("shape", [(400, 32), (20, 50)])
def test_singular_values_from_gram_match_svd(shape):
    Z = gaussian(*shape, seed=3) + 2.0  # an offset makes the spectrum far from flat
    expected = torch.linalg.svdvals(Z)
    got = metrics.singular_values(Z)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-8 * expected[0].item())


def test_rankme_follows_the_paper_formula_on_svd():
    Z = gaussian(300, 40, seed=4, scale=power_law(40, 0.7))
    sigma = torch.linalg.svdvals(Z)
    p = sigma / sigma.sum() + 1e-7
    assert metrics.rankme(Z) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-9)


def test_rankme_of_zero_matrix_raises():
    with pytest.raises(ValueError, match="zero"):
        metrics.rankme(torch.zeros(10, 4))
    assert math.isnan(metrics.collapse_report(torch.zeros(10, 4))["rankme"])


def test_rankme_warns_when_fewer_samples_than_dimensions():
    with pytest.warns(UserWarning, match="capped"):
        score = metrics.rankme(gaussian(50, 128))
    assert score <= 50


@pytest.mark.parametrize("function", [metrics.rankme, metrics.alpha_req, metrics.eigenspectrum])
def test_bad_matrices_raise(function):
    Z = gaussian(200, 16)
    for bad in (Z[:1], Z[0], torch.where(Z > 2, float("nan"), Z), torch.where(Z > 2, float("inf"), Z)):
        with pytest.raises(ValueError):
            function(bad)


# alpha-ReQ ------------------------------------------------------------------


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_alpha_exact_power_law_spectrum(a):
    lam = power_law(256, a)
    result = metrics.alpha_req(with_exact_spectrum(lam))
    assert result.alpha == pytest.approx(a, abs=1e-6)
    assert result.r2 == pytest.approx(1.0, abs=1e-9)
    # The same fit straight on the eigenvalues (the helper both paths share).
    assert metrics.fit_power_law(lam / lam.sum()).alpha == pytest.approx(a, abs=1e-9)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_alpha_gaussian_with_power_law_population_spectrum(a):
    Z = gaussian(10_000, 512, seed=5, scale=power_law(512, a).sqrt()).float()
    assert metrics.alpha_req(Z).alpha == pytest.approx(a, abs=0.05)


def test_fit_is_weighted_by_inverse_rank_and_r2_unweighted():
    g = torch.Generator().manual_seed(6)
    lam = (power_law(200, 1.0) * torch.exp(0.3 * torch.randn(200, generator=g, dtype=torch.float64)))
    lam = lam.sort(descending=True).values
    fit = metrics.fit_power_law(lam, (4, 100))
    i = np.arange(4, 101)
    x, y = -np.log(i), np.log(lam[3:100].numpy())
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(1 / i))  # polyfit weights multiply residuals
    assert fit.alpha == pytest.approx(slope, rel=1e-9)
    assert fit.intercept == pytest.approx(intercept, rel=1e-9)
    unweighted_slope = np.polyfit(x, y, 1)[0]
    assert abs(fit.alpha - unweighted_slope) > 1e-3  # the weights matter on this spectrum
    residual = y - (intercept + slope * x)
    assert fit.r2 == pytest.approx(1 - (residual**2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-9)
    assert (fit.first, fit.last) == (4, 100)


def test_fit_range_is_cut_at_the_last_positive_eigenvalue():
    lam = torch.cat([power_law(30, 1.0), torch.zeros(20)])
    fit = metrics.fit_power_law(lam, (4, 100))
    assert (fit.first, fit.last) == (4, 30)
    assert fit.alpha == pytest.approx(1.0, abs=1e-9)


def test_alpha_too_few_eigenvalues_raises_with_a_suggestion():
    with pytest.raises(ValueError, match=r"too few positive eigenvalues.*fit_range=\(2, 12\)"):
        metrics.alpha_req(gaussian(1000, 12))
    with pytest.raises(ValueError, match="no range is long enough"):
        metrics.alpha_req(gaussian(1000, 8))
    with pytest.raises(ValueError, match="too few positive eigenvalues"):
        metrics.alpha_req(gaussian(10, 512))  # N < D: rank 9 after centring


def test_eigenspectrum_is_normalised_covariance_spectrum():
    Z = gaussian(300, 20, seed=7, scale=power_law(20, 1.0)) + 5.0
    lam = metrics.eigenspectrum(Z)
    expected = np.sort(np.linalg.eigvalsh(np.cov(Z.numpy(), rowvar=False)))[::-1]
    np.testing.assert_allclose(lam.numpy(), expected / expected.sum(), atol=1e-12)
    assert metrics.eigenspectrum(Z).sum().item() == pytest.approx(1.0)


# Collapse report ------------------------------------------------------------


def test_collapse_report_healthy_dimensional_and_complete():
    healthy = metrics.collapse_report(gaussian(2000, 64))
    assert set(healthy) >= {"rankme", "alpha", "std_of_l2_normalized", "top_component_share"}
    assert all(isinstance(v, float) for v in healthy.values())
    assert healthy["std_of_l2_normalized"] == pytest.approx(1 / 8, rel=0.05)
    assert "no collapse sign" in metrics.format_collapse_report(healthy)

    low_rank = gaussian(2000, 3, seed=8) @ gaussian(3, 64, seed=9) + 1e-4 * gaussian(2000, 64, seed=10)
    dimensional = metrics.collapse_report(low_rank)
    assert dimensional["rankme"] < 5 and dimensional["top_component_share"] > 0.3
    assert "dimensional collapse" in metrics.format_collapse_report(dimensional)

    complete = metrics.collapse_report(torch.ones(500, 64))
    assert complete["rankme"] == pytest.approx(1, abs=0.01)
    assert complete["std_of_l2_normalized"] == pytest.approx(0, abs=1e-6)
    assert math.isnan(complete["alpha"]) and math.isnan(complete["top_component_share"])
    line = metrics.format_collapse_report(complete)
    assert "complete collapse" in line and "\n" not in line


# --- LiDAR -----------------------------------------------------------------

def _designed_views(k: int, d: int, spread: float = 3.0, sigma: float = 0.5) -> torch.Tensor:
    """2k images whose means are ±spread·e_i (i < k): Σ_b = spread²/k on k axes;
    2d views of each at mean ± sigma·√d·e_j (j < d): Σ_w = sigma² I exactly."""
    eye = torch.eye(d, dtype=torch.float64)
    means = torch.cat([spread * eye[:k], -spread * eye[:k]])  # (2k, d)
    offsets = sigma * d ** 0.5 * torch.cat([eye, -eye])  # (2d, d)
    return means[:, None, :] + offsets[None, :, :]


@pytest.mark.parametrize("k, d", [(1, 4), (3, 8), (8, 8), (5, 32)])
def test_lidar_counts_the_directions_images_differ_in_more_than_their_views(k, d):
    views = _designed_views(k, d)
    assert metrics.lidar(views, delta=1e-9) == pytest.approx(k, rel=1e-4)


def test_lidar_is_unchanged_by_an_invertible_linear_map_unlike_rankme():
    gen = torch.Generator().manual_seed(0)
    views = _designed_views(4, 16)
    stretch = torch.randn(16, 16, generator=gen, dtype=torch.float64) + 4 * torch.eye(16, dtype=torch.float64)
    mapped = views @ stretch
    assert metrics.lidar(mapped, delta=1e-9) == pytest.approx(metrics.lidar(views, delta=1e-9), rel=1e-4)
    flat = views.reshape(-1, 16)
    assert abs(metrics.rankme(flat @ stretch) - metrics.rankme(flat)) > 0.5  # RankMe is not


def test_lidar_of_views_that_carry_no_image_identity_is_near_full_rank_but_small_signal():
    """Pure noise: every image's views are independent draws, so the image means
    differ only by chance, equally in every direction: LiDAR is high (the
    'degenerate full rank' case of a label-free metric)."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(400, 4, 16, generator=gen)
    assert metrics.lidar(noise) > 14


def test_lidar_rejects_bad_input_with_what_to_do():
    with pytest.raises(ValueError, match=r"\(N, Q, D\)"):
        metrics.lidar(torch.randn(10, 4))
    with pytest.raises(ValueError, match="2 views"):
        metrics.lidar(torch.randn(10, 1, 4))
    with pytest.raises(ValueError, match="NaN"):
        metrics.lidar(torch.full((3, 2, 4), float("nan")))
    with pytest.raises(ValueError, match="collapse"):
        metrics.lidar(torch.ones(5, 3, 4))
    with pytest.raises(ValueError, match="delta"):
        metrics.lidar(torch.randn(5, 3, 4), delta=0.0)


def test_view_features_stacks_views_of_each_image_for_lidar():
    from cookbook import augment, data, evaluate, methods, models

    ds = data.load("shapes", subset=64, test_subset=16, image_size=16)
    torch.manual_seed(0)
    model = methods.SimCLR(models.resnet10(4))
    spec = augment.ViewSpec(size=16, min_scale=0.6)
    views = evaluate.view_features(model, ds, spec, n_images=20, n_views=3, seed=1)
    assert views.shape == (20, 3, model.embedding_dim) and views.dtype == torch.float32
    assert not torch.allclose(views[:, 0], views[:, 1])  # different views
    again = evaluate.view_features(model, ds, spec, n_images=20, n_views=3, seed=1)
    assert torch.equal(views, again)  # seeded
    assert model.training  # mode restored
    assert metrics.lidar(views) >= 1
    with pytest.raises(ValueError, match="n_images"):
        evaluate.view_features(model, ds, spec, n_images=1000)
