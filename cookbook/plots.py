"""Figures for the book, in one house style.

The style (see CONTRIBUTING.md, "Presentation standard"):

- :func:`use_style` (for a whole notebook) or :func:`style` (a ``with`` block)
  set matplotlib's defaults: figures :data:`FIGURE_WIDTH` inches wide, which
  is the width of the book's content column in a 1366 px window, saved at
  :data:`DPI` dots per inch, with text of at least 10 pt. :func:`figure` makes
  a figure of that size with one or more panels. :func:`display_scale` says
  how large a figure's text reads in the book.
- :data:`COLORS` and :func:`color`: one colour per method and per study,
  the same in every chapter.
- :func:`reference_lines` draws chance, raw pixels, an untrained network and
  the supervised ceiling on an accuracy axis; every accuracy plot shows the
  ones it has.
- Legends sit outside the data (:func:`legend_outside`), and two quantities
  get two panels, never twin y axes.

The plotting functions:

- :func:`plot_eigenspectrum`: covariance eigenspectrum on log–log axes with the
  α-ReQ power law (Agrawal et al., NeurIPS 2022) fitted over its rank range.
- :func:`plot_singular_values`: singular-value spectra of several runs, the
  quantity behind RankMe (Garrido et al., ICML 2023).
- :func:`plot_metric_vs_accuracy`: does a label-free metric rank models like
  their accuracy does? Scatter with Spearman's rank correlation ρ.
- :func:`plot_study`: one study (a sweep of one setting): accuracies in one
  panel, RankMe in a second, against the setting; seeds as error bars.
- :func:`plot_loss_curves`: training losses per method, with the chance level.
- :func:`plot_learning_curves`: a validation measure (kNN) during training,
  per method, mean and sd over seeds.
- :func:`plot_retrieval`: query images and their nearest neighbours.
- :func:`plot_map`: a 2-D map (t-SNE) coloured by class and by a nuisance factor.

Each takes data (torch tensors, numpy arrays, lists, dicts) and an optional
matplotlib ``ax``, draws on it (or on a new figure of the house style) and
returns it.
"""

from __future__ import annotations

import math
import re
import warnings
import zlib

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

from cookbook import metrics
from cookbook.experiment import by_setting, spearman

__all__ = [
    "COLORS", "COLUMN_PX", "DPI", "FIGURE_WIDTH", "MIN_TEXT_PT", "REFERENCE_STYLES", "RC", "color",
    "display_scale", "figure", "legend_outside", "plot_eigenspectrum", "plot_metric_vs_accuracy",
    "plot_comparison", "plot_image_rows", "plot_learning_curves", "plot_loss_curves", "plot_map",
    "plot_retrieval", "plot_singular_values", "plot_study",
    "reference_lines", "study_colors", "style", "use_style",
]

#: Width of the book's content column in a 1366 px wide window, in CSS px
#: (measured with tools/screenshots.py; sphinx-book-theme, primary and
#: secondary sidebars shown).
COLUMN_PX = 757
#: Width of a figure in inches. At 96 CSS px per inch it is 720 px, a little
#: narrower than the column, so a full-width figure is shown at about its true
#: size (scale 757 / 720) and its text at the point size it was drawn with.
FIGURE_WIDTH = 7.5
#: Resolution of saved and inline figures, dots per inch.
DPI = 150
#: Smallest text size, in points, as a reader sees it in the content column.
MIN_TEXT_PT = 10.0

#: matplotlib settings of the house style (see :func:`style`).
RC = {
    "figure.figsize": (FIGURE_WIDTH, 3.4),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.constrained_layout.use": True,
    "font.size": 10.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 11.5,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.8,
    "lines.markersize": 5.5,
}

#: One colour per method, the same in every chapter. Families share a hue
#: range: blues and purple for deep metric learning, reds for
#: self-distillation, greens for canonical correlation analysis, browns for
#: masked image modeling; the supervised model is black.
COLORS = {
    "simclr": "#1f5fa8",
    "moco": "#4fa3e0",
    "nnclr": "#17a2b8",
    "dcl": "#6a3d9a",
    "byol": "#c62828",
    "simsiam": "#ef7d16",
    "dino": "#d0509a",
    "vicreg": "#2e8b3e",
    "barlowtwins": "#7fb800",
    "swav": "#a69b00",
    "wmse": "#0f5e3c",
    "mae": "#8c564b",
    "simmim": "#c08a32",
    "supervised": "#000000",
}
#: Colours for studies and other series that are not methods; :func:`study_colors`
#: gives each name a stable one. None of them is a method's colour.
STUDY_PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7",
                 "#56b4e9", "#d55e00", "#7a7a00", "#5e3c99")

_ALIASES = {"mocov2": "moco", "mocov3": "moco", "barlow": "barlowtwins", "wmse4": "wmse"}

#: How each reference line is drawn: label, colour, line style.
REFERENCE_STYLES = {
    "chance": ("chance", "0.55", ":"),
    "raw_pixels": ("raw pixels", "0.35", "--"),
    "untrained": ("untrained network", "0.45", "-."),
    "supervised": ("supervised", COLORS["supervised"], (0, (6, 2))),
    "scratch": ("from scratch, same labels", "0.2", (0, (1, 1))),
}

_MEASURES = {  # metric key: (legend label, marker, line style)
    "knn_test": ("kNN (test)", "o", "-"),
    "linear_test": ("linear probe (test)", "s", "--"),
    "knn_val": ("kNN (validation)", "D", ":"),
    "emb_knn_test": ("kNN, projector output", "^", "-"),
    "emb_linear_test": ("linear, projector output", "v", "--"),
    "finetune_test": ("fine-tune (test)", "^", "-."),
    "finetune_val": ("fine-tune (validation)", "P", ":"),
}


# ------------------------------------------------------------------ the style
def style():
    """A ``with`` block in the house style: ``with plots.style(): ...``."""
    return mpl.rc_context(RC)


def use_style() -> None:
    """Make the house style matplotlib's default for the rest of the session
    (a notebook's set-up cell calls it once)."""
    mpl.rcParams.update(RC)


def figure(ncols: int = 1, nrows: int = 1, height: float | None = None, **subplots):
    """A new figure of the house style: FIGURE_WIDTH inches wide, DPI, constrained layout.

    height: inches (default 3.4 for one row, 2.9 per row beyond). Other
    keyword arguments go to ``plt.subplots`` (``sharey=True``, ...). Returns
    ``(fig, ax)`` for one panel, ``(fig, axes)`` for several.
    """
    if ncols < 1 or nrows < 1:
        raise ValueError(f"a figure needs at least one panel, got ncols={ncols}, nrows={nrows}")
    height = height if height is not None else 3.4 + 2.9 * (nrows - 1)
    return plt.subplots(nrows, ncols, figsize=(FIGURE_WIDTH, height), dpi=DPI, layout="constrained",
                        **subplots)


def display_scale(fig) -> float:
    """How large the figure's text reads in the book's content column, relative to
    its size in points: 10 pt text reads as ``10 * display_scale(fig)`` pt.

    The book shows a figure at its size in pixels (width in inches × dpi) or
    at the column's width (:data:`COLUMN_PX`), whichever is smaller; a point
    is 96/72 CSS px.
    """
    width_in = fig.get_figwidth()
    shown_px = min(width_in * fig.dpi, COLUMN_PX)
    return shown_px / (width_in * 96.0)


def _key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return _ALIASES.get(key, key)


def color(name: str) -> str:
    """The colour of a method ("SimCLR", "MoCo v2", "barlow_twins" ...) or, for
    any other name, a stable colour of :data:`STUDY_PALETTE` (the same name
    gets the same colour in every chapter; use :func:`study_colors` to keep
    the names of one figure apart)."""
    key = _key(name)
    if key in COLORS:
        return COLORS[key]
    return STUDY_PALETTE[zlib.crc32(key.encode()) % len(STUDY_PALETTE)]


def study_colors(names) -> dict:
    """A colour for each of ``names`` (methods or studies): methods get their
    :data:`COLORS`; the others start from their stable colour (:func:`color`)
    and move to the next free one of :data:`STUDY_PALETTE` if another name of
    the figure already has it."""
    names = list(dict.fromkeys(names))
    chosen = {n: COLORS[_key(n)] for n in names if _key(n) in COLORS}
    used = set(chosen.values())
    for name in names:
        if name in chosen:
            continue
        start = STUDY_PALETTE.index(color(name))
        for step in range(len(STUDY_PALETTE)):
            candidate = STUDY_PALETTE[(start + step) % len(STUDY_PALETTE)]
            if candidate not in used:
                break
        chosen[name] = candidate
        used.add(candidate)
    return {n: chosen[n] for n in names}


def legend_outside(ax, handles=None, labels=None, where: str = "auto", **options):
    """A legend that does not cover data; returns it (None when nothing is labelled).

    where: "right" puts it to the right of ``ax``, outside the axes (for a
    figure with one panel); "below" puts it under the x-axis label of ``ax``
    (for a panel among several), or under all panels, across the figure,
    when ``figure_wide`` is true (pass it in ``options``) and the figure uses
    constrained layout; "auto" is "right" for a figure with one panel and
    "below" otherwise. With constrained layout the panels shrink to make room.
    """
    figure_wide = options.pop("figure_wide", False)
    if where not in ("right", "below", "auto"):
        raise ValueError(f"where must be 'right', 'below' or 'auto', got {where!r}")
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    fig = ax.figure
    if where == "auto":
        where = "right" if len(fig.axes) == 1 else "below"
    if where == "right":
        return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                         borderaxespad=0, **options)
    constrained = isinstance(fig.get_layout_engine(), mpl.layout_engine.ConstrainedLayoutEngine)
    if figure_wide and constrained:
        return fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 3),
                          **options)
    # Below this panel's x-axis label: an offset in points from the bottom of the axes
    # (tick labels, their pads and the label), so that it holds whatever the panel's size.
    tick_pt = max([t.get_fontsize() for t in ax.xaxis.get_majorticklabels()] or [MIN_TEXT_PT])
    label_pt = ax.xaxis.label.get_fontsize() if ax.get_xlabel() else 0.0
    below_pt = 1.3 * tick_pt + 1.3 * label_pt + 20
    anchor = mpl.transforms.offset_copy(ax.transAxes, fig=fig, y=-below_pt, units="points")
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                     bbox_transform=anchor, borderaxespad=0, ncols=options.pop("ncols", 1),
                     **options)


def reference_lines(ax, *, chance: float | None = None, raw_pixels: float | None = None,
                    untrained: float | None = None, supervised: float | None = None,
                    scratch: float | None = None) -> list:
    """Horizontal reference lines on an accuracy axis, in the axis's units (pass
    percentages on a % axis): chance (1 / number of classes), kNN or probe on
    raw pixels, the same evaluation of an untrained network, a supervised
    model's accuracy (the ceiling), and the network trained from scratch with
    the labels a fine-tune gets (the baseline of masked image modeling).
    Lines left as None are not drawn. Each is labelled for the legend
    ("raw pixels (31.2)"). Returns the lines drawn.
    """
    drawn = []
    for key, value in (("chance", chance), ("raw_pixels", raw_pixels), ("untrained", untrained),
                       ("supervised", supervised), ("scratch", scratch)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(value):
            raise ValueError(f"reference line {key}={value!r}: expected a finite number "
                             "in the axis's units")
        label, colour, linestyle = REFERENCE_STYLES[key]
        drawn.append(ax.axhline(float(value), color=colour, linestyle=linestyle, linewidth=1.2,
                                zorder=1, label=f"{label} ({value:.1f})"))
    return drawn


# ------------------------------------------------------------------ the plots
def _axes(ax):
    return ax if ax is not None else figure()[1]


def _spectrum(values, of_matrix) -> np.ndarray:
    """A 1-D spectrum sorted decreasing, or of_matrix(values) for a 2-D matrix."""
    values = torch.as_tensor(values).detach()
    if values.ndim == 2:
        return of_matrix(values).numpy()
    if values.ndim != 1:
        raise ValueError(f"expected a matrix (N, D) or a 1-D spectrum, got shape {tuple(values.shape)}")
    return np.sort(values.to(torch.float64).cpu().numpy())[::-1].copy()


def plot_eigenspectrum(Z_or_eigenvalues, fit_range: tuple[int, int] = (4, 100), ax=None,
                       label: str | None = None):
    """Normalised covariance eigenspectrum, log–log, with its fitted power law.

    Z_or_eigenvalues: features (N, D), or their covariance eigenvalues (D,)
    in any order and scale (they are sorted and normalised to sum to 1).
    Draws λ_i against rank i, then the α-ReQ fit exp(c)·i^(−α) over fit_range
    (1-based, inclusive; see :func:`cookbook.metrics.fit_power_law`) with that
    range shaded and α in the legend (outside the axes). If no power law can
    be fitted, the spectrum is drawn alone, with a warning. Returns the Axes.
    """
    ax = _axes(ax)
    lam = _spectrum(Z_or_eigenvalues, metrics.eigenspectrum)
    lam = lam / lam.sum()
    ranks = np.arange(1, len(lam) + 1)
    positive = lam > 0  # zeros have no place on a log axis
    line_color = color(label) if label else None
    (line,) = ax.loglog(ranks[positive], lam[positive], label=label or "eigenspectrum",
                        color=line_color)
    try:
        fit = metrics.fit_power_law(lam, fit_range)
    except ValueError as error:
        warnings.warn(f"no power law drawn: {error}", stacklevel=2)
    else:
        i = np.arange(fit.first, fit.last + 1)
        ax.loglog(i, np.exp(fit.intercept) * i ** (-fit.alpha), "k--", linewidth=1,
                  label=f"power law, α = {fit.alpha:.2f}\n(R² = {fit.r2:.2f})")
        ax.axvspan(fit.first, fit.last, color=line.get_color(), alpha=0.08,
                   label=f"fit range {fit.first}–{fit.last}")
    ax.set_xlabel("rank i (1 = largest)")
    ax.set_ylabel(r"$\lambda_i\ /\ \Sigma_j\,\lambda_j$ (variance)")
    legend_outside(ax)
    return ax


def plot_singular_values(spectra: dict, ax=None, normalise: bool = True):
    """Several singular-value spectra overlaid, log y (e.g. representation vs embedding).

    spectra: {name: features (N, D) or their singular values (1-D)}. Each
    curve is σ_k against rank k, divided by σ_1 when ``normalise`` so that
    runs of different scale compare; the legend (outside the axes) gives each
    one's RankMe. Curves named after a method or study get its colour
    (:func:`study_colors`). Returns the Axes.
    """
    ax = _axes(ax)
    # Curves already on the axes keep their colours; new names take the next free ones.
    names = [line.get_label().split(" (RankMe")[0] for line in ax.get_lines()]
    names += [str(n) for n in spectra]
    colours = study_colors(names)
    for name, values in spectra.items():
        sigma = _spectrum(values, metrics.singular_values)
        score = metrics.rankme_from_singular_values(sigma)
        y = sigma / sigma[0] if normalise else sigma
        ax.plot(np.arange(1, len(sigma) + 1), y, label=f"{name} (RankMe {score:.1f})",
                color=colours[str(name)])
    ax.set_yscale("log")
    ax.set_xlabel("rank k (1 = largest)")
    ax.set_ylabel(r"$\sigma_k / \sigma_1$" if normalise else r"singular value $\sigma_k$ (feature units)")
    legend_outside(ax)
    return ax


def plot_metric_vs_accuracy(metric_values, accuracies, labels=None, metric_name: str = "RankMe",
                            accuracy_name: str = "kNN accuracy (%)", ax=None, groups=None):
    """Scatter of a label-free metric against accuracy, Spearman's ρ in the title.

    metric_values, accuracies: one value per model, plotted as given (pass
    percentages if accuracy_name says %). labels: optional text per point.
    groups: optional study name per point; each study gets its colour
    (:func:`study_colors`) and a legend entry outside the axes. ρ (over all
    points) is undefined (shown as "n/a") with fewer than 3 points or a
    constant series. Returns the Axes.
    """
    ax = _axes(ax)
    x = np.asarray(torch.as_tensor(metric_values, dtype=torch.float64))
    y = np.asarray(torch.as_tensor(accuracies, dtype=torch.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"metric_values and accuracies must be 1-D of equal length, got {x.shape} and {y.shape}")
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"got {len(labels)} labels for {len(x)} points")
    if groups is not None and len(groups) != len(x):
        raise ValueError(f"got {len(groups)} groups for {len(x)} points")
    if groups is None:
        ax.scatter(x, y, color=STUDY_PALETTE[0], zorder=3)
    else:
        groups = [str(g) for g in groups]
        for name, colour in study_colors(groups).items():
            mask = np.array([g == name for g in groups])
            ax.scatter(x[mask], y[mask], color=colour, label=name, zorder=3)
        legend_outside(ax)
    for xi, yi, text in zip(x, y, labels if labels is not None else []):
        ax.annotate(str(text), (xi, yi), textcoords="offset points", xytext=(4, 4))
    rho = spearman(x, y)
    rho_text = "n/a" if np.isnan(rho) else f"{rho:.2f}"
    ax.set_title(f"Spearman ρ = {rho_text}\nn = {len(x)} models")
    ax.set_xlabel(metric_name)
    ax.set_ylabel(accuracy_name)
    return ax


def _method_color(runs) -> str | None:
    names = {getattr(getattr(r, "method", None), "name", None) for r in runs}
    if len(names) == 1:
        (name,) = names
        if name and _key(name) in COLORS:
            return COLORS[_key(name)]
    return None


def _mean_sd(runs, key: str, scale: float = 1.0) -> tuple[float, float]:
    values = [scale * float(r.metrics[key]) for r in runs]
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _mean_line(ax, x, mean_sd, **style):
    """Means joined by a line, with error bars (one sd) only where a setting has seeds."""
    mean, sd = np.array(mean_sd, dtype=float).reshape(-1, 2).T
    if np.any(sd > 0):
        return ax.errorbar(x, mean, yerr=sd, capsize=3, zorder=3, **style)
    return ax.plot(x, mean, zorder=3, **style)


def _setting_positions(settings) -> tuple[list, bool, dict]:
    """A study's settings in drawing order and their x positions: numbers
    sorted and placed by value, anything else evenly in first-seen order.
    Returns (settings, numeric, {setting: x})."""
    settings = list(dict.fromkeys(settings))
    numeric = all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in settings)
    if numeric:
        settings = sorted(settings)
    return settings, numeric, {s: (float(s) if numeric else i) for i, s in enumerate(settings)}


def _setting_axis(ax, ticks, settings, numeric: bool, log_x: bool, xlabel: str) -> None:
    """A study's x axis: one tick per setting, numbers as ``%g`` (on a log
    scale if asked), labels slanted so that long ones do not collide."""
    if log_x:
        ax.set_xscale("log")
    if numeric:
        ax.set_xticks(ticks, [f"{s:g}" for s in settings])
        ax.minorticks_off()
    else:
        ax.set_xticks(ticks, [str(s) for s in settings], rotation=30, ha="right")
    ax.set_xlabel(xlabel)


def plot_study(runs, accuracies=("knn_test", "linear_test"), xlabel: str = "setting", log_x: bool = False,
               title: str | None = None, ax=None, references: dict | None = None):
    """One study in two panels: accuracies (%, left) and RankMe (right) against the setting.

    runs: :class:`cookbook.experiment.Run` objects (or anything with
    ``.setting`` and a ``.metrics`` dict), in the order to draw; or a dict
    ``{series name: runs}`` to draw several variants of a study (one colour
    each, :func:`study_colors`). Runs that share a setting (its seeds) are
    drawn as their mean with an error bar of one sample standard deviation.
    Numeric settings are placed by value (``log_x`` for a log axis), others
    evenly, in first-seen order. A single series takes the colour of its
    method (:data:`COLORS`); each accuracy has its marker and line style.
    references: keyword arguments of :func:`reference_lines`, in % (e.g.
    ``{"chance": 10, "raw_pixels": 31.2}``). ax: None (a new figure), or a
    pair of Axes (accuracy, RankMe). The legend sits below the panels.
    Returns the accuracy Axes; ``ax.figure.axes`` holds both panels.
    """
    if ax is None:
        fig, (ax, rank_ax) = figure(ncols=2, height=3.3)
    else:
        try:
            ax, rank_ax = ax
        except (TypeError, ValueError):
            raise ValueError("plot_study draws two panels: pass ax=(accuracy_axes, rankme_axes), "
                             "e.g. from plots.figure(ncols=2), or leave ax=None") from None
    series = runs if isinstance(runs, dict) else {None: runs}
    if not series or not all(series.values()):
        raise ValueError("plot_study needs at least one run")
    all_settings, numeric, position = _setting_positions(r.setting for group in series.values() for r in group)
    colours = study_colors([str(name) for name in series]) if len(series) > 1 else {}
    for name, group_runs in series.items():
        groups = by_setting(group_runs)
        if numeric:
            groups = dict(sorted(groups.items()))
        x = np.array([position[s] for s in groups])
        colour = colours.get(str(name)) or _method_color(group_runs) or STUDY_PALETTE[0]
        for key in accuracies:
            label, marker, linestyle = _MEASURES.get(key, (key, "o", "-"))
            if name is not None:
                label = str(name) if len(accuracies) == 1 else f"{name}, {label}"
            projector = key.startswith("emb_")  # the projector's output: lighter, open markers
            _mean_line(ax, x, [_mean_sd(g, key, 100) for g in groups.values()], marker=marker,
                       linestyle=linestyle, color=colour, alpha=0.6 if projector else 1.0,
                       markerfacecolor="white" if projector else colour, label=label)
        _mean_line(rank_ax, x, [_mean_sd(g, "rankme") for g in groups.values()], marker="o", color=colour)
    reference_lines(ax, **(references or {}))
    ticks = [position[s] for s in all_settings]
    for panel in (ax, rank_ax):
        _setting_axis(panel, ticks, all_settings, numeric, log_x, xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy")
    rank_ax.set_ylabel("RankMe (embedding)")
    rank_ax.set_title("RankMe (no labels)")
    legend_outside(ax, where="below", figure_wide=True)
    if title:
        ax.figure.suptitle(title)
    return ax


#: Axis labels of the quantities :func:`plot_sweep` draws.
SWEEP_LABELS = {
    "linear_test": "linear probe, test (%)", "linear_val": "linear probe, val. (%)",
    "knn_test": "kNN, test (%)", "knn_val": "kNN, val. (%)", "finetune_test": "fine-tune, test (%)",
    "rankme": "RankMe (embedding)", "rankme_rep": "RankMe (repr.)", "alpha": "α-ReQ (repr.)",
    "lidar": "LiDAR (embedding)", "transfer_linear_test": "transfer linear (%)",
}


def plot_sweep(runs, keys=("linear_test", "rankme", "alpha", "lidar"), xlabel: str = "setting",
               log_x: bool = False, axes=None, references: dict | None = None, title: str | None = None):
    """One sweep, one panel per quantity of ``keys`` against the setting:
    the mean over a setting's runs (seeds) with one sample standard deviation
    as an error bar, and each run as a dot.

    runs: :class:`cookbook.experiment.Run` objects (``.setting`` and
    ``.metrics``), settings drawn by value when all are numbers (``log_x``
    for a log axis), else evenly in first-seen order. Keys holding
    accuracies (``*_test``, ``*_val``) are drawn in %; ``references``
    (keyword arguments of :func:`reference_lines`, in %) go on the first
    panel when it is an accuracy. α-ReQ's panel shows α = 1 as a dotted line
    (the criterion picks the α closest to it). axes: None (a new row of
    ``len(keys)`` panels) or that many Axes. A NaN (an α-ReQ that could not
    be fitted) leaves a gap. Returns the list of Axes.
    """
    if not runs:
        raise ValueError("plot_sweep needs at least one run")
    if axes is None:
        _, axes = figure(ncols=len(keys), height=3.0)
    axes = list(np.ravel(axes))
    if len(axes) != len(keys):
        raise ValueError(f"plot_sweep draws {len(keys)} panels ({', '.join(keys)}) but got {len(axes)} axes")
    groups = by_setting(runs)
    settings, numeric, position = _setting_positions(groups)
    colour = _method_color(runs) or STUDY_PALETTE[0]
    x = np.array([position[s] for s in settings])
    for ax, key in zip(axes, keys):
        scale = 100.0 if key.endswith(("_test", "_val")) else 1.0
        for xi, s in zip(x, settings):
            values = [scale * float(r.metrics[key]) for r in groups[s]]
            ax.scatter([xi] * len(values), values, s=12, color=colour, alpha=0.45, zorder=2)
        _mean_line(ax, x, [_mean_sd(groups[s], key, scale) for s in settings], marker="o", color=colour)
        if key == "alpha":
            ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1.2)
        ax.set_ylabel(SWEEP_LABELS.get(key, key))
        _setting_axis(ax, x, settings, numeric, log_x, xlabel)
    if references and keys[0].endswith(("_test", "_val")):
        reference_lines(axes[0], **references)
        legend_outside(axes[0], where="below", figure_wide=True)
    if title:
        axes[0].figure.suptitle(title)
    return axes


def plot_loss_curves(histories: dict, chance: dict | None = None, ylabel: str = "loss (mean over an epoch)"):
    """Training loss against optimiser steps, one panel per method.

    histories: ``{method name: [History, ...]}`` (one per seed; each drawn as
    its own thin line). chance: ``{method name: loss of an encoder that has
    learnt nothing}``, drawn as a dotted line in that method's panel. Panels
    share no y axis: the losses of different methods have different scales.
    Returns the figure.
    """
    if not histories:
        raise ValueError("plot_loss_curves needs at least one method")
    n = len(histories)
    ncols = 2 if n > 1 else 1
    nrows = math.ceil(n / ncols)
    fig, axes = figure(ncols=ncols, nrows=nrows, height=2.6 * nrows, squeeze=False)
    for ax, (name, runs) in zip(axes.flat, histories.items()):
        for h in runs:
            per_epoch = max(h.steps / max(len(h.epochs), 1), 1)
            steps = [min((e["epoch"] - h.start_epoch) * per_epoch, h.steps) for e in h.epochs]
            ax.plot(steps, [e["loss"] for e in h.epochs], color=color(name), alpha=0.8,
                    marker="o" if len(steps) < 3 else None)
        if chance and name in chance:
            ax.axhline(chance[name], **_reference_style("chance"), label=f"chance ({chance[name]:.2f})")
            ax.legend(loc="upper right")
        ax.set_title(name)
        ax.set_xlabel("optimiser step")

    for row in axes:
        row[0].set_ylabel(ylabel)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig


def plot_learning_curves(histories: dict, key: str = "knn_val", scale: float = 100.0,
                         ylabel: str = "kNN, validation (%)", references: dict | None = None, ax=None):
    """A measure recorded during training (``fit(..., eval_every=k)``) against
    the optimiser step: one line per method, the mean over its seeds, with a
    band of one sample sd.

    histories: ``{method name: [History, ...]}``, one per seed; the seeds of a
    method must have been evaluated at the same steps. references: keyword
    arguments of :func:`reference_lines` (in the axis's units). Returns the axis.
    """
    if not histories:
        raise ValueError("plot_learning_curves needs at least one method")
    ax = _axes(ax)
    for name, runs in histories.items():
        curves = []
        for h in runs:
            per_epoch = max(h.steps / max(len(h.epochs), 1), 1)
            points = [(min((e["epoch"] - h.start_epoch) * per_epoch, h.steps), scale * e[key])
                      for e in h.epochs if key in e]
            curves.append(points)
        if not curves[0]:
            raise ValueError(f"{name}: no {key!r} in its history; train with fit(..., eval_every=k)")
        if len({tuple(x for x, _ in c) for c in curves}) != 1:
            raise ValueError(f"{name}: its seeds were evaluated at different steps")
        x = np.array([p[0] for p in curves[0]])
        y = np.array([[p[1] for p in c] for c in curves])
        mean = y.mean(0)
        line, = ax.plot(x, mean, color=color(name), marker="o", markersize=3, label=name, zorder=3)
        if len(y) > 1:
            sd = y.std(0, ddof=1)
            ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    if references:
        reference_lines(ax, **references)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    legend_outside(ax)
    return ax


def _reference_style(key: str) -> dict:
    _, colour, linestyle = REFERENCE_STYLES[key]
    return {"color": colour, "linestyle": linestyle, "linewidth": 1.2, "zorder": 1}


def plot_retrieval(queries, neighbours, query_labels=None, neighbour_labels=None, class_names=None):
    """A retrieval grid: each row a query image, then its nearest neighbours.

    queries: uint8 or float images (Q, 3, H, W); neighbours: (Q, K, 3, H, W).
    Labels (class indices) are printed under the images, and a neighbour
    whose class differs from its query's is framed in red. Returns the figure.
    """
    queries, neighbours = torch.as_tensor(queries), torch.as_tensor(neighbours)
    if neighbours.ndim != 5 or queries.ndim != 4 or len(neighbours) != len(queries):
        raise ValueError(f"expected queries (Q, 3, H, W) and neighbours (Q, K, 3, H, W), got "
                         f"{tuple(queries.shape)} and {tuple(neighbours.shape)}")
    q, k = neighbours.shape[:2]
    size = FIGURE_WIDTH / (k + 1.3)
    fig, axes = plt.subplots(q, k + 1, figsize=(FIGURE_WIDTH, size * q * 1.25), squeeze=False,
                             gridspec_kw={"width_ratios": [1.3] + [1] * k})

    def show(ax, image, label, wrong=False):
        image = image.float() / 255 if not image.is_floating_point() else image
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():
            side.set_visible(True)
            side.set_color("#d62728" if wrong else "0.7")
            side.set_linewidth(2.5 if wrong else 0.8)
        if label is not None:
            ax.set_xlabel(class_names[label] if class_names else str(label), labelpad=2)

    for i in range(q):
        ql = None if query_labels is None else int(query_labels[i])
        show(axes[i, 0], queries[i], ql)
        for j in range(k):
            nl = None if neighbour_labels is None else int(neighbour_labels[i][j])
            show(axes[i, j + 1], neighbours[i, j], nl, wrong=ql is not None and nl is not None and nl != ql)
    axes[0, 0].set_title("query")
    axes[0, 1].set_title("nearest neighbours →", loc="left")
    return fig


def plot_image_rows(rows: dict, class_names=None, labels=None):
    """A grid of images: one row per entry of ``rows`` (``{row label: images}``,
    each float ``(B, 3, H, W)`` in [0, 1], or uint8), the same ``B`` in every
    row; pixels drawn as squares. ``labels`` (``(B,)`` ints, with
    ``class_names``) title the columns. Returns the figure."""
    rows = {name: (x.float() / 255 if x.dtype == torch.uint8 else x.float()).detach().cpu()
            for name, x in rows.items()}
    if not rows or len({len(x) for x in rows.values()}) != 1:
        raise ValueError("plot_image_rows needs one or more rows with the same number of images")
    n = len(next(iter(rows.values())))
    side = min(FIGURE_WIDTH / (n + 1.2), 1.4)
    fig, axes = plt.subplots(len(rows), n, figsize=(FIGURE_WIDTH, side * len(rows) + 0.35), dpi=DPI,
                             squeeze=False, layout="constrained")
    for i, (name, images) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(images[j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j == 0:  # a long label on two lines, so that it stays beside its row
                ax.set_ylabel(name.replace(": ", ":\n") if len(name) > 12 else name, fontsize=10)
            if i == 0 and labels is not None:
                label = int(labels[j])
                ax.set_title(class_names[label] if class_names else str(label), fontsize=10)
    return fig


def plot_map(points, colour_by: dict, titles: dict | None = None, class_names=None):
    """A 2-D map of a representation (e.g. t-SNE), one panel per colouring.

    points: (N, 2). colour_by: ``{panel name: values (N,)}``; integer values
    are classes (a categorical palette and a legend with ``class_names``),
    float values a continuous factor (a colour bar; hue gets a circular
    colour map). Returns the figure.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got {points.shape}")
    fig, axes = figure(ncols=len(colour_by), height=3.6, squeeze=False)
    for ax, (name, values) in zip(axes.flat, colour_by.items()):
        values = np.asarray(values)
        if len(values) != len(points):
            raise ValueError(f"{name}: {len(values)} values for {len(points)} points")
        if np.issubdtype(values.dtype, np.integer):
            palette = plt.get_cmap("tab10")
            for c in np.unique(values):
                mask = values == c
                ax.scatter(*points[mask].T, s=4, color=palette(int(c) % 10),
                           label=class_names[c] if class_names else str(c), rasterized=True)
            legend_outside(ax, where="below", ncols=4, markerscale=3)
        else:
            cmap = "hsv" if name.lower().startswith("hue") else "viridis"
            mapped = ax.scatter(*points.T, s=4, c=values, cmap=cmap, rasterized=True)
            fig.colorbar(mapped, ax=ax, shrink=0.8, label=name)
        ax.set_title((titles or {}).get(name, name))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():
            side.set_visible(False)
    return fig


def plot_comparison(runs, accuracies=("knn_test", "linear_test"), references: dict | None = None):
    """Methods side by side, one panel per accuracy: a bar per method (its
    runs' ``setting``) at the mean over its runs (seeds), an error bar of one
    sample sd, and each seed as a dot.

    references: ``{accuracy key: keyword arguments of reference_lines}`` in %,
    drawn across that accuracy's panel and named in a legend below the
    panels. Returns the figure.
    """
    if not runs:
        raise ValueError("plot_comparison needs at least one run")
    groups = by_setting(runs)
    fig, axes = figure(ncols=len(accuracies), height=3.4, squeeze=False, sharey=True)
    for ax, key in zip(axes.flat, accuracies):
        for i, (name, group) in enumerate(groups.items()):
            mean, sd = _mean_sd(group, key, 100)
            ax.bar(i, mean, 0.7, yerr=sd, capsize=3, color=color(str(name)), zorder=2)
            ax.scatter([i] * len(group), [100 * float(r.metrics[key]) for r in group], s=10,
                       color="black", zorder=3)
        reference_lines(ax, **((references or {}).get(key) or {}))
        ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=20, ha="right")
        ax.set_title(_MEASURES.get(key, (key,))[0])
        ax.grid(axis="x", visible=False)
    axes.flat[0].set_ylabel("test accuracy (%)")
    named = {}  # every panel's lines, once each; the values differ by panel, so they are left out
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            named.setdefault(label.split(" (")[0], handle)
    legend_outside(axes.flat[0], list(named.values()), list(named), where="below", figure_wide=True)
    return fig
