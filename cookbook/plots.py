"""Figures for the book: spectra of representations and metric-vs-accuracy scatters.

- :func:`plot_eigenspectrum`: covariance eigenspectrum on log–log axes with the
  α-ReQ power law (Agrawal et al., NeurIPS 2022) fitted over its rank range.
- :func:`plot_singular_values`: singular-value spectra of several runs, the
  quantity behind RankMe (Garrido et al., ICML 2023).
- :func:`plot_metric_vs_accuracy`: does a label-free metric rank models like
  their accuracy does? Scatter with Spearman's rank correlation ρ.
- :func:`plot_study`: one study (a sweep of one setting): accuracies and
  RankMe against the setting.

Each function takes data (torch tensors, numpy arrays, lists, dicts) and an
optional matplotlib ``ax``, draws on it (or on a new figure) and returns it.
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

from cookbook import metrics
from cookbook.experiment import spearman

__all__ = ["plot_eigenspectrum", "plot_metric_vs_accuracy", "plot_singular_values", "plot_study"]


def _axes(ax):
    return ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]


def _spectrum(values, of_matrix) -> np.ndarray:
    """A 1-D spectrum sorted decreasing, or of_matrix(values) for a 2-D matrix."""
    values = torch.as_tensor(values).detach()
    if values.ndim == 2:
        return of_matrix(values).numpy()
    if values.ndim != 1:
        raise ValueError(f"expected a matrix (N, D) or a 1-D spectrum, got shape {tuple(values.shape)}")
    return np.sort(values.to(torch.float64).cpu().numpy())[::-1].copy()


def plot_eigenspectrum(Z_or_eigenvalues, fit_range: tuple[int, int] = (4, 100), ax=None, label: str | None = None):
    """Normalised covariance eigenspectrum, log–log, with its fitted power law.

    Z_or_eigenvalues: features (N, D), or their covariance eigenvalues (D,)
    in any order and scale (they are sorted and normalised to sum to 1).
    Draws λ_i against rank i, then the α-ReQ fit exp(c)·i^(−α) over fit_range
    (1-based, inclusive; see :func:`cookbook.metrics.fit_power_law`) with that
    range shaded and α in the legend. If no power law can be fitted, the
    spectrum is drawn alone, with a warning. Returns the Axes.
    """
    ax = _axes(ax)
    lam = _spectrum(Z_or_eigenvalues, metrics.eigenspectrum)
    lam = lam / lam.sum()
    ranks = np.arange(1, len(lam) + 1)
    positive = lam > 0  # zeros have no place on a log axis
    (line,) = ax.loglog(ranks[positive], lam[positive], label=label or "eigenspectrum")
    try:
        fit = metrics.fit_power_law(lam, fit_range)
    except ValueError as error:
        warnings.warn(f"no power law drawn: {error}", stacklevel=2)
    else:
        i = np.arange(fit.first, fit.last + 1)
        ax.loglog(i, np.exp(fit.intercept) * i ** (-fit.alpha), "k--", linewidth=1,
                  label=f"power law, α = {fit.alpha:.2f} (R² = {fit.r2:.2f})")
        ax.axvspan(fit.first, fit.last, color=line.get_color(), alpha=0.08, label=f"fit range {fit.first}–{fit.last}")
    ax.set_xlabel("rank i (1 = largest)")
    ax.set_ylabel(r"$\lambda_i\ /\ \Sigma_j\,\lambda_j$ (fraction of variance)")
    ax.legend(fontsize="small")
    return ax


def plot_singular_values(spectra: dict, ax=None, normalise: bool = True):
    """Several singular-value spectra overlaid, log y (e.g. representation vs embedding).

    spectra: {name: features (N, D) or their singular values (1-D)}. Each
    curve is σ_k against rank k, divided by σ_1 when ``normalise`` so that
    runs of different scale compare; the legend gives each one's RankMe.
    Returns the Axes.
    """
    ax = _axes(ax)
    for name, values in spectra.items():
        sigma = _spectrum(values, metrics.singular_values)
        score = metrics.rankme_from_singular_values(sigma)
        y = sigma / sigma[0] if normalise else sigma
        ax.plot(np.arange(1, len(sigma) + 1), y, label=f"{name} (RankMe {score:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("rank k (1 = largest)")
    ax.set_ylabel(r"$\sigma_k / \sigma_1$" if normalise else r"singular value $\sigma_k$ (feature units)")
    ax.legend(fontsize="small")
    return ax


def plot_metric_vs_accuracy(metric_values, accuracies, labels=None, metric_name: str = "RankMe",
                            accuracy_name: str = "kNN accuracy (%)", ax=None):
    """Scatter of a label-free metric against accuracy, Spearman's ρ in the title.

    metric_values, accuracies: one value per model, plotted as given (pass
    percentages if accuracy_name says %). labels: optional text per point.
    ρ is undefined (shown as "n/a") with fewer than 3 points or a constant
    series. Returns the Axes.
    """
    ax = _axes(ax)
    x = np.asarray(torch.as_tensor(metric_values, dtype=torch.float64))
    y = np.asarray(torch.as_tensor(accuracies, dtype=torch.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"metric_values and accuracies must be 1-D of equal length, got {x.shape} and {y.shape}")
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"got {len(labels)} labels for {len(x)} points")
    ax.scatter(x, y)
    for xi, yi, text in zip(x, y, labels if labels is not None else []):
        ax.annotate(str(text), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize="small")
    rho = spearman(x, y)
    rho_text = "n/a" if np.isnan(rho) else f"{rho:.2f}"
    ax.set_title(f"{metric_name} vs {accuracy_name}: Spearman ρ = {rho_text} (n = {len(x)})")
    ax.set_xlabel(metric_name)
    ax.set_ylabel(accuracy_name)
    return ax


def plot_study(runs, accuracies=("knn_test", "linear_test"), xlabel: str = "setting", log_x: bool = False,
               title: str | None = None, ax=None):
    """One study: accuracies (left axis, %) and RankMe (right axis) against the setting.

    runs: :class:`cookbook.experiment.Run` objects (or anything with
    ``.setting`` and a ``.metrics`` dict), in the order to draw. Numeric
    settings are placed by value (``log_x`` for a log axis), others evenly,
    in the given order. Returns the left Axes.
    """
    ax = _axes(ax)
    settings = [r.setting for r in runs]
    numeric = all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in settings)
    x = np.asarray(settings, dtype=float) if numeric else np.arange(len(settings))
    names = {"knn_test": "kNN (test)", "linear_test": "linear probe (test)", "knn_val": "kNN (validation)",
             "emb_knn_test": "kNN on projector output", "emb_linear_test": "linear probe on projector output"}
    for key in accuracies:
        ax.plot(x, [100 * r.metrics[key] for r in runs], "o-", label=names.get(key, key))
    if log_x:
        ax.set_xscale("log")
    if numeric:
        ax.set_xticks(x, [f"{s:g}" for s in settings])
        ax.minorticks_off()
    else:
        ax.set_xticks(x, [str(s) for s in settings], rotation=20, ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    right = ax.twinx()
    right.plot(x, [r.metrics["rankme"] for r in runs], "s--", color="0.5", label="RankMe (right axis)")
    right.set_ylabel("RankMe of the embedding")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    return ax
