"""Label-free quality metrics for learned representations.

- **RankMe** — Garrido, Balestriero, Najman and LeCun, "RankMe: Assessing the
  downstream performance of pretrained self-supervised representations by
  their rank", ICML 2023. The exponential of the entropy of the normalised
  singular values of the embedding matrix: a smooth effective rank.
- **α-ReQ** — Agrawal, Mondal, Ghosh and Richards, "α-ReQ: Assessing
  representation quality in self-supervised learning by measuring eigenspectrum
  decay", NeurIPS 2022 (reference code: the ``fastssl`` repository). The
  exponent α of a power law λ_i ∝ i^(−α) fitted to the covariance eigenspectrum.
- **LiDAR** — Thilak, Huang, Saremi, Dinh, Goh, Nakkiran, Susskind and
  Littwin, "LiDAR: Sensing linear probing performance in joint embedding SSL
  architectures", ICLR 2024. The same smooth rank, of the linear-discriminant
  matrix whose classes are the views of each image: it needs several views per
  image (:func:`lidar` takes ``(N, Q, D)``), not one embedding per image.
- ``std_of_l2_normalized`` from ``lightly.utils.debug`` (Chen and He,
  "Exploring simple Siamese representation learning", CVPR 2021): about
  1/√D for healthy embeddings, 0 under complete collapse.

Every function takes a feature matrix ``Z`` of shape (N, D) — N samples, D
dimensions — as a torch tensor or numpy array, on any device. The linear algebra
runs in float64 on Z's device; results come back as Python floats or CPU
float64 tensors.

Cost: one D×D (or N×N, whichever is smaller) Gram matrix, O(N·D·min(N, D))
time, plus its eigenvalues, O(min(N, D)³); memory O(N·D) for a float64 copy
of Z. For N = 25,600 and D = 2,048 that is a few seconds on two CPU cores,
about 10 s on one (see ``benchmarks/metrics.py``). Float64 matters: a float32
Gram matrix has a noise floor near 1e-7·λ_1, which flattens the spectrum of
collapsed features and biases exactly the cases these metrics should flag.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

__all__ = [
    "AlphaReQ",
    "PowerLawFit",
    "alpha_req",
    "collapse_report",
    "eigenspectrum",
    "fit_power_law",
    "format_collapse_report",
    "lidar",
    "rankme",
    "rankme_from_singular_values",
    "singular_values",
]


class AlphaReQ(NamedTuple):
    """Result of :func:`alpha_req`: the decay exponent and the fit's R²."""

    alpha: float
    r2: float


class PowerLawFit(NamedTuple):
    """A power law λ_i ≈ exp(intercept) · i^(−alpha) fitted over ranks first..last (1-based)."""

    alpha: float
    r2: float
    intercept: float
    first: int
    last: int


def _as_matrix(Z, name: str = "Z") -> torch.Tensor:
    """Z as a float64 tensor (N, D) on its own device; rejects bad input."""
    Z = torch.as_tensor(Z).detach()
    if Z.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (N, D), got shape {tuple(Z.shape)}")
    if Z.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (samples), got {Z.shape[0]}")
    Z = Z.to(torch.float64)
    if not torch.isfinite(Z).all():
        raise ValueError(f"{name} contains NaN or inf")
    return Z


def _gram_eigenvalues(Z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ZᵀZ, decreasing, clamped at 0 (float64, CPU).

    Uses the smaller of ZᵀZ (D×D) and ZZᵀ (N×N): they share their non-zero
    eigenvalues, and min(N, D)² is far cheaper than a full SVD when N ≫ D.
    """
    gram = Z.T @ Z if Z.shape[0] >= Z.shape[1] else Z @ Z.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).cpu()


def singular_values(Z) -> torch.Tensor:
    """Singular values of Z (N, D) as given (not centred), decreasing.

    Returns a float64 CPU tensor of length min(N, D): σ_k = √(eigenvalue_k of
    ZᵀZ). Values below about 1e-8·σ_1 are rounding noise of the Gram matrix.
    """
    return _gram_eigenvalues(_as_matrix(Z)).sqrt()


def rankme_from_singular_values(sigma, eps: float = 1e-7) -> float:
    """RankMe from singular values: exp of the entropy of p_k = σ_k/‖σ‖₁ + ε."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if not sigma.abs().sum() > 0:
        raise ValueError("all singular values are zero: RankMe is undefined for a zero matrix")
    p = sigma / sigma.abs().sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def rankme(Z, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): a smooth rank of Z, in [1, min(N, K)].

    Z: (N, K), usually the projector output (embeddings) of N = 25,600
    training images, as given — not centred. With σ its singular values,

        p_k = σ_k / ‖σ‖₁ + ε,      RankMe = exp(−Σ_k p_k log p_k).

    A collapsed (constant) Z scores ≈ 1, an isotropic Gaussian ≈ K. Invariant
    to rescaling Z. Warns when N < K, because the score is then capped by N.
    Cost: O(N·K·min(N, K)) time, O(N·K) memory (float64).
    """
    Z = _as_matrix(Z)
    if Z.shape[0] < Z.shape[1]:
        warnings.warn(
            f"RankMe with N = {Z.shape[0]} samples < K = {Z.shape[1]} dimensions "
            f"is capped at {Z.shape[0]}; use at least K samples (the paper uses 25,600).",
            stacklevel=2,
        )
    return rankme_from_singular_values(_gram_eigenvalues(Z).sqrt(), eps)


def lidar(views, delta: float = 1e-4, eps: float = 1e-8) -> float:
    """LiDAR (Thilak et al., ICLR 2024): RankMe's smooth rank of the linear
    discriminant matrix in which every image is a class and its augmented views
    are that class's samples. In [1, min(N - 1, D)].

    views: ``(N, Q, D)``, the embeddings of Q >= 2 views of each of N >= 2
    images (the paper: N = 1,000 images, Q = 50 views; every view is one
    forward pass, so the cost is N·Q images). With μ_n the mean of image n's
    views and μ the mean of the μ_n,

        Σ_b = 1/N Σ_n (μ_n − μ)(μ_n − μ)ᵀ,
        Σ_w = 1/(NQ) Σ_{n,q} (z_nq − μ_n)(z_nq − μ_n)ᵀ + δ I,
        Σ   = Σ_w^(−1/2) Σ_b Σ_w^(−1/2),

    and with λ the eigenvalues of Σ, ``p_k = λ_k / ‖λ‖₁ + ε`` and
    LiDAR = exp(−Σ_k p_k log p_k). It counts the directions along which images
    differ more than their own views do: an embedding invariant to the views
    but constant across images scores ≈ 1, and one that separates images in k
    directions as much as one another scores ≈ k. Unlike RankMe it is unchanged
    by any invertible linear map of the embedding (up to δ), so the size of a
    dimension does not count, only how well it tells images apart.

    ``delta`` (δ, which keeps Σ_w invertible when the views agree exactly in
    some direction) and ``eps`` (ε, as in RankMe) are the paper's two
    regularisers; their values here are this package's choice, small against
    the unit-scale embeddings it measures. Cost: O(N·Q·D²) time for the
    scatter matrices and O(D³) for their eigendecompositions, float64.
    """
    Z = torch.as_tensor(views).detach()
    if Z.ndim != 3:
        raise ValueError(f"LiDAR takes the views of each image, shape (N, Q, D); got shape {tuple(Z.shape)}. "
                         "Stack Q augmented views of N images, e.g. with cookbook.evaluate.view_features")
    n, q, d = Z.shape
    if n < 2 or q < 2:
        raise ValueError(f"LiDAR needs at least 2 images and 2 views of each, got N = {n}, Q = {q}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0 (it keeps the within-view scatter invertible), got {delta}")
    Z = Z.to(torch.float64)
    if not torch.isfinite(Z).all():
        raise ValueError("the views contain NaN or inf")
    means = Z.mean(dim=1)  # (N, D): each image's class mean
    between = means - means.mean(dim=0)
    sigma_b = between.T @ between / n
    within = (Z - means[:, None]).reshape(n * q, d)
    sigma_w = within.T @ within / (n * q) + delta * torch.eye(d, dtype=Z.dtype, device=Z.device)
    w, basis = torch.linalg.eigh(sigma_w)
    inverse_sqrt = basis @ torch.diag(w.rsqrt()) @ basis.T
    lam = torch.linalg.eigvalsh(inverse_sqrt @ sigma_b @ inverse_sqrt).clamp_min(0).cpu()
    if not lam.sum() > 0:
        raise ValueError("every image has the same mean embedding: LiDAR is undefined (complete collapse)")
    p = lam / lam.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


def eigenspectrum(Z) -> torch.Tensor:
    """Eigenvalues of the covariance of Z (N, D), decreasing, normalised to sum to 1.

    Z is centred first. Returns a float64 CPU tensor of length min(N, D): each
    value is the fraction of the total variance along that principal axis.
    Raises ValueError when Z has no variance at all.
    """
    Z = _as_matrix(Z)
    lam = _gram_eigenvalues(Z - Z.mean(dim=0))
    total = lam.sum()
    if not total > 0:
        raise ValueError("Z has zero variance (all rows equal): the eigenspectrum is undefined")
    return lam / total


def fit_power_law(eigenvalues, fit_range: tuple[int, int] = (4, 100), min_points: int = 10) -> PowerLawFit:
    """Fit log λ_i = c − α·log i by least squares weighted by 1/i over ranks in fit_range.

    eigenvalues: 1-D, decreasing (e.g. from :func:`eigenspectrum`); rank i is
    1-based, so rank 1 is eigenvalues[0]. fit_range = (first, last) is
    inclusive. Ranks past the end of the spectrum or with λ_i ≤ 1e-12·λ_1
    (zero up to rounding, e.g. beyond rank N−1 when N ≤ D) are left out; fewer
    than ``min_points`` ranks left raises ValueError.

    The 1/i weights follow the α-ReQ reference code (fastssl). R² is the
    ordinary, unweighted coefficient of determination of log λ_i over the
    fitted ranks, 1 − Σ(y − ŷ)² / Σ(y − ȳ)² with y = log λ_i (the reference
    code reports it over a wider range, ranks 4–500).
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten().cpu()
    first, last = int(fit_range[0]), int(fit_range[1])
    if not 1 <= first <= last:
        raise ValueError(f"fit_range must be (first, last) with 1 <= first <= last, got {fit_range}")
    n_positive = int((lam > 1e-12 * lam.max().clamp_min(0)).sum()) if lam.numel() else 0
    last = min(last, n_positive)
    if last - first + 1 < min_points:
        if n_positive - 1 >= min_points:
            advice = f"use a smaller range, e.g. fit_range=(2, {n_positive})"
        else:
            advice = "no range is long enough: use more samples (N) and dimensions (D), ideally over 100"
        raise ValueError(
            f"too few positive eigenvalues to fit a power law: ranks {fit_range[0]}–{fit_range[1]} hold "
            f"{max(last - first + 1, 0)} (need {min_points}); the spectrum has {n_positive} positive "
            f"eigenvalues out of {lam.numel()}; {advice}."
        )
    i = torch.arange(first, last + 1, dtype=torch.float64)
    x, y, w = -i.log(), lam[first - 1 : last].log(), 1.0 / i
    x_bar, y_bar = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    alpha = (w * (x - x_bar) * (y - y_bar)).sum() / (w * (x - x_bar) ** 2).sum()
    intercept = y_bar - alpha * x_bar
    residual = y - (intercept + alpha * x)
    ss_tot = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / ss_tot if ss_tot > 0 else torch.tensor(1.0)
    return PowerLawFit(float(alpha), float(r2), float(intercept), first, last)


def alpha_req(Z, fit_range: tuple[int, int] = (4, 100)) -> AlphaReQ:
    """α-ReQ (Agrawal et al., NeurIPS 2022): decay exponent of the eigenspectrum of Z.

    Z: (N, D), usually backbone representations. Z is centred; λ_i are its
    covariance eigenvalues, decreasing, normalised to sum to 1; α is the slope
    of log λ_i against −log i, fitted by least squares weighted by 1/i over
    the ranks i in fit_range (1-based, inclusive; the reference skips the top 3
    and stops at 100). See :func:`fit_power_law` for R² and for the ValueError
    raised when the range holds fewer than 10 positive eigenvalues.

    Small α: a flat, high-dimensional spectrum (noise-like); large α: a few
    directions carry all the variance (dimensional collapse). The paper finds
    α ≈ 1 to go with good linear-probe accuracy. Invariant to rescaling Z.
    Cost: O(N·D·min(N, D)) time, O(N·D) memory (float64).
    """
    fit = fit_power_law(eigenspectrum(Z), fit_range)
    return AlphaReQ(fit.alpha, fit.r2)


def collapse_report(Z, fit_range: tuple[int, int] = (4, 100)) -> dict:
    """Collapse diagnostics for Z (N, D), as plain floats.

    Keys: ``rankme`` and ``rankme_max`` (= min(N, D)); ``alpha`` and
    ``alpha_r2`` (NaN when α cannot be fitted); ``std_of_l2_normalized``
    (lightly) and ``std_isotropic`` (= 1/√D, its value for an isotropic
    Gaussian); ``top_component_share`` (fraction of the variance on the first
    principal axis, NaN when Z has no variance); ``n`` and ``dim``.
    Complete collapse: std ≈ 0 and RankMe ≈ 1. Dimensional collapse: RankMe
    ≪ D, large α, large top share. See :func:`format_collapse_report`.
    """
    from lightly.utils.debug import std_of_l2_normalized

    Z = _as_matrix(Z)
    n, dim = Z.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the N < K cap is reported through rankme_max
        try:
            rank = rankme(Z)
        except ValueError:  # Z is all zeros
            rank = float("nan")
    try:
        lam = eigenspectrum(Z)
        top = float(lam[0])
    except ValueError:
        lam, top = None, float("nan")
    try:
        fit = fit_power_law(lam, fit_range) if lam is not None else None
    except ValueError:
        fit = None
    return {
        "rankme": rank,
        "rankme_max": float(min(n, dim)),
        "alpha": fit.alpha if fit else float("nan"),
        "alpha_r2": fit.r2 if fit else float("nan"),
        "std_of_l2_normalized": float(std_of_l2_normalized(Z)),
        "std_isotropic": 1.0 / math.sqrt(dim),
        "top_component_share": top,
        "n": float(n),
        "dim": float(dim),
    }


def format_collapse_report(report: dict) -> str:
    """One line from :func:`collapse_report`, with a rule-of-thumb verdict.

    The verdict is a hint, not a test: "complete collapse" when std_of_l2_normalized
    is under 10 % of 1/√D or RankMe < 1.5; "dimensional collapse?" when RankMe
    is under 10 % of its maximum or one axis carries over half the variance;
    otherwise "no collapse sign".
    """
    r = report
    std_ratio = r["std_of_l2_normalized"] / r["std_isotropic"]
    rank_ratio = r["rankme"] / r["rankme_max"]
    if std_ratio < 0.1 or r["rankme"] < 1.5:
        verdict = "complete collapse"
    elif rank_ratio < 0.1 or r["top_component_share"] > 0.5:
        verdict = "dimensional collapse?"
    else:
        verdict = "no collapse sign"
    return (
        f"RankMe {r['rankme']:.1f}/{r['rankme_max']:.0f} | α {r['alpha']:.2f} (R² {r['alpha_r2']:.2f}) | "
        f"std(ẑ)·√D {std_ratio:.2f} | top PC {100 * r['top_component_share']:.1f}% of variance | {verdict}"
    )
