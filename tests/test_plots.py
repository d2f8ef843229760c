"""Each figure draws what it claims, on the Agg backend, in the house style:
readable at the book's column width, legends off the data, two panels instead
of twin axes, one colour per method."""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cookbook import metrics, plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def power_law_features(n=2000, d=128, a=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.arange(1, d + 1) ** (-a / 2)


def test_eigenspectrum_from_features_draws_spectrum_fit_and_range():
    Z = power_law_features()
    ax = plots.plot_eigenspectrum(Z, label="run A")
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.get_lines()) == 2 and len(ax.patches) == 1
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "run A"
    assert f"α = {metrics.alpha_req(Z).alpha:.2f}" in legend[1]
    assert "rank" in ax.get_xlabel() and "variance" in ax.get_ylabel()
    spectrum = ax.get_lines()[0].get_ydata()
    np.testing.assert_allclose(spectrum, metrics.eigenspectrum(Z).numpy(), rtol=1e-6)


def test_eigenspectrum_from_unsorted_eigenvalues_on_given_axes():
    _, ax = plt.subplots()
    eigenvalues = np.random.default_rng(0).permutation(np.arange(1, 201) ** -2.0) * 7
    assert plots.plot_eigenspectrum(eigenvalues, fit_range=(4, 100), ax=ax) is ax
    assert "α = 2.00" in ax.get_legend().get_texts()[1].get_text()
    fit = ax.get_lines()[1]
    assert (fit.get_xdata()[0], fit.get_xdata()[-1]) == (4, 100)


def test_eigenspectrum_too_short_for_a_fit_draws_the_spectrum_only():
    with pytest.warns(UserWarning, match="no power law"):
        ax = plots.plot_eigenspectrum(power_law_features(d=8))
    assert len(ax.get_lines()) == 1 and len(ax.patches) == 0


def test_singular_values_overlay():
    Z = power_law_features(d=64)
    spectra = {"representation": Z, "embedding": Z[:, :16], "given σ": np.array([1.0, 4.0, 2.0])}
    ax = plots.plot_singular_values(spectra)
    lines = ax.get_lines()
    assert len(lines) == 3 and ax.get_yscale() == "log"
    assert [len(line.get_xdata()) for line in lines] == [64, 16, 3]
    assert all(line.get_ydata()[0] == pytest.approx(1.0) for line in lines)
    np.testing.assert_allclose(lines[2].get_ydata(), [1.0, 0.5, 0.25])
    assert f"RankMe {metrics.rankme(Z):.1f}" in ax.get_legend().get_texts()[0].get_text()
    raw = plots.plot_singular_values({"raw": Z}, normalise=False)
    np.testing.assert_allclose(raw.get_lines()[0].get_ydata(), metrics.singular_values(Z).numpy())


def test_metric_vs_accuracy_scatter_with_spearman_rho():
    ax = plots.plot_metric_vs_accuracy([10, 20, 30, 40, 50], [55.0, 60.0, 58.0, 70.0, 80.0], labels=list("abcde"))
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 5
    assert len(ax.texts) == 5 and ax.texts[0].get_text() == "a"
    assert "Spearman ρ = 0.90" in ax.get_title() and "n = 5 models" in ax.get_title()
    assert ax.get_xlabel() == "RankMe" and ax.get_ylabel() == "kNN accuracy (%)"
    reversed_ = plots.plot_metric_vs_accuracy(np.array([1.0, 2.0, 3.0]), torch.tensor([0.9, 0.8, 0.1]),
                                              metric_name="α", accuracy_name="linear accuracy")
    assert "Spearman ρ = -1.00" in reversed_.get_title() and len(reversed_.texts) == 0
    assert "ρ = n/a" in plots.plot_metric_vs_accuracy([1.0, 2.0], [3.0, 4.0]).get_title()
    with pytest.raises(ValueError):
        plots.plot_metric_vs_accuracy([1.0, 2.0, 3.0], [1.0, 2.0])


def _run(setting, knn, linear, rankme, method="simclr"):
    return SimpleNamespace(setting=setting, method=SimpleNamespace(name=method),
                           metrics={"knn_test": knn, "linear_test": linear, "rankme": rankme})


def test_plot_study_numeric_and_categorical_settings():
    runs = [_run(0.1, 0.2, 0.3, 10.0), _run(0.5, 0.4, 0.5, 20.0), _run(1.0, 0.3, 0.35, 15.0)]
    ax = plots.plot_study(runs, xlabel="temperature", log_x=True, title="t")
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "temperature"
    assert ax.figure.get_suptitle() == "t"
    knn, linear = ax.get_lines()
    np.testing.assert_allclose(knn.get_ydata(), [20, 40, 30])
    np.testing.assert_allclose(linear.get_xdata(), [0.1, 0.5, 1.0])
    rank_ax = ax.figure.axes[1]
    (rank_line,) = rank_ax.get_lines()
    np.testing.assert_allclose(rank_line.get_ydata(), [10, 20, 15])
    assert rank_ax.get_xscale() == "log" and "RankMe" in rank_ax.get_ylabel()
    (legend,) = ax.figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["kNN (test)", "linear probe (test)"]
    assert knn.get_color() == linear.get_color() == rank_line.get_color() == plots.COLORS["simclr"]

    labelled = [_run("none", 0.2, 0.3, 5.0), _run("linear", 0.3, 0.4, 6.0)]
    ax = plots.plot_study(labelled, accuracies=("linear_test",))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "linear"]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0, 1])


def test_plot_study_uses_two_panels_not_twin_axes():
    ax = plots.plot_study([_run(1, 0.2, 0.3, 10.0), _run(2, 0.4, 0.5, 20.0)])
    fig = ax.figure
    fig.canvas.draw()
    assert len(fig.axes) == 2
    left, right = (a.get_position() for a in fig.axes)
    assert left.x1 <= right.x0, "the RankMe panel must sit beside the accuracy panel, not on top of it"
    assert not ax.get_shared_x_axes().joined(ax, fig.axes[1])


def test_plot_study_draws_reference_lines_and_accepts_a_pair_of_axes():
    fig, (acc, rank) = plots.figure(ncols=2)
    runs = [_run(1, 0.2, 0.3, 10.0), _run(2, 0.4, 0.5, 20.0)]
    assert plots.plot_study(runs, ax=(acc, rank), references={"chance": 10, "raw_pixels": 25.0}) is acc
    assert len(acc.get_lines()) == 4 and len(rank.get_lines()) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "chance (10.0)" in labels and "raw pixels (25.0)" in labels
    _, single = plots.figure()
    with pytest.raises(ValueError, match="two panels"):
        plots.plot_study(runs, ax=single)
    with pytest.raises(ValueError, match="at least one run"):
        plots.plot_study([])


# ------------------------------------------------------------------ the house style
def test_style_sets_size_resolution_and_text():
    before = dict(matplotlib.rcParams)
    with plots.style():
        fig = plt.figure()
        assert fig.dpi >= 150 and fig.get_figwidth() == pytest.approx(plots.FIGURE_WIDTH)
        for key in ("font.size", "axes.labelsize", "xtick.labelsize", "ytick.labelsize", "legend.fontsize",
                    "axes.titlesize"):
            assert matplotlib.rcParams[key] >= plots.MIN_TEXT_PT, key
        assert matplotlib.rcParams["savefig.dpi"] >= 150
    assert dict(matplotlib.rcParams) == before, "style() must leave matplotlib's defaults as they were"


def test_display_scale():
    fig, _ = plots.figure()
    assert plots.display_scale(fig) == pytest.approx(plots.COLUMN_PX / (plots.FIGURE_WIDTH * 96))
    small = plt.figure(figsize=(3, 2), dpi=150)  # 450 px: shown at its size, 1.5625 times its size in inches
    assert plots.display_scale(small) == pytest.approx(450 / 288)
    wide = plt.figure(figsize=(15, 4), dpi=100)  # the old chapter figure, shrunk to the column
    assert plots.display_scale(wide) == pytest.approx(plots.COLUMN_PX / 1440)


def _figures():
    """One figure of every plotting function, made as a chapter makes it."""
    Z = power_law_features(d=64)
    runs = [_run(0.1, 0.2, 0.3, 10.0), _run(0.5, 0.4, 0.5, 20.0), _run(1.0, 0.3, 0.35, 15.0)]
    yield "eigenspectrum", plots.plot_eigenspectrum(Z, label="SimCLR").figure
    yield "singular values", plots.plot_singular_values({"none": Z[:, :8], "linear, 128": Z}).figure
    yield "metric vs accuracy", plots.plot_metric_vs_accuracy(
        [1, 2, 3, 4], [10, 30, 20, 40], labels=list("abcd"), groups=["a", "a", "b", "b"]).figure
    yield "study", plots.plot_study(runs, log_x=True, title="SimCLR: temperature",
                                    references={"chance": 10, "supervised": 60}).figure
    fig, axes = plots.figure(ncols=3, sharey=True)
    for ax in axes:
        plots.plot_metric_vs_accuracy([1, 2, 3, 4], [10, 30, 20, 25], metric_name="RankMe (embedding)", ax=ax,
                                      groups=["temperature", "temperature", "projector", "projector"]
                                      if ax is axes[-1] else None)
    yield "three panels", fig
    fig, axes = plots.figure(ncols=2)
    for ax in axes:
        plots.plot_singular_values({"none": Z[:, :8], "2-layer, 128": Z}, ax=ax)
    yield "two spectra", fig
    sweep = [r for s, (lin, rank) in {0.1: (0.3, 10.0), 1.0: (0.5, 20.0), 10.0: (0.4, 30.0)}.items()
             for r in _seeded(s, lin, lin, rank)]
    for r in sweep:
        r.metrics.update(alpha=1.5, lidar=r.metrics["rankme"] / 2)
    fig, axes = plots.figure(ncols=2, nrows=2, height=5.6)
    plots.plot_sweep(sweep, xlabel="temperature τ", log_x=True, axes=axes,
                     references={"raw_pixels": 35, "untrained": 25, "supervised": 90})
    yield "sweep", fig


def _texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("name", ["eigenspectrum", "singular values", "metric vs accuracy", "study",
                                  "three panels", "two spectra", "sweep"])
def test_figures_are_readable_in_the_column(name):
    fig = dict(_figures())[name]
    fig.canvas.draw()
    assert fig.dpi >= 150
    assert fig.get_figwidth() * 96 <= plots.COLUMN_PX, "wider than the content column: its text would shrink"
    scale = plots.display_scale(fig)
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig)
             if t.get_fontsize() * scale < plots.MIN_TEXT_PT]
    assert not small, f"text below {plots.MIN_TEXT_PT} pt in the book: {small}"


@pytest.mark.parametrize("name", ["eigenspectrum", "singular values", "metric vs accuracy", "study",
                                  "three panels", "two spectra", "sweep"])
def test_legends_do_not_cover_data_or_labels(name):
    fig = dict(_figures())[name]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends, "every figure here has a legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), f"a legend covers the data of {ax}"
            for text in (ax.xaxis.label, ax.title):
                if text.get_text():
                    assert not box.overlaps(text.get_window_extent(renderer)), f"a legend covers {text}"


def test_panels_do_not_overlap():
    for name, fig in _figures():
        fig.canvas.draw()
        boxes = [ax.get_window_extent() for ax in fig.axes]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), f"{name}: two panels overlap (twin axes?)"


def test_method_colours_are_fixed_and_distinct():
    methods = ["simclr", "moco", "nnclr", "dcl", "byol", "simsiam", "dino", "vicreg", "barlowtwins", "swav",
               "wmse", "mae", "simmim", "supervised"]
    assert set(methods) <= set(plots.COLORS)
    assert len({plots.COLORS[m] for m in methods}) == len(methods)
    assert plots.color("MoCo v2") == plots.COLORS["moco"] == plots.color("moco")
    assert plots.color("Barlow Twins") == plots.color("barlow_twins") == plots.COLORS["barlowtwins"]
    assert not set(plots.STUDY_PALETTE) & set(plots.COLORS.values())


def test_study_colours_are_stable_and_distinct_within_a_figure():
    names = ["augmentations", "temperature", "batch (SimCLR)", "projector", "SimCLR"]
    first = plots.study_colors(names)
    assert first == plots.study_colors(names)
    assert first["SimCLR"] == plots.COLORS["simclr"]
    assert len(set(first.values())) == len(names)
    assert plots.color("temperature") == plots.color("temperature")
    many = plots.study_colors([f"study {i}" for i in range(len(plots.STUDY_PALETTE))])
    assert len(set(many.values())) == len(plots.STUDY_PALETTE)


def test_reference_lines():
    _, ax = plots.figure()
    ax.plot([0, 1], [30, 40])
    lines = plots.reference_lines(ax, chance=10, raw_pixels=25.5, untrained=18.0, supervised=75.0,
                                  scratch=41.0)
    assert [line.get_ydata()[0] for line in lines] == [10, 25.5, 18.0, 75.0, 41.0]
    assert [line.get_label() for line in lines] == ["chance (10.0)", "raw pixels (25.5)",
                                                    "untrained network (18.0)", "supervised (75.0)",
                                                    "from scratch, same labels (41.0)"]
    assert ax.get_ylim()[0] <= 10 and ax.get_ylim()[1] >= 75
    assert plots.reference_lines(ax) == []
    for bad in (float("nan"), "10", True):
        with pytest.raises(ValueError, match="chance"):
            plots.reference_lines(ax, chance=bad)


def test_legend_outside_rejects_unknown_places():
    _, ax = plots.figure()
    ax.plot([0, 1], label="a")
    with pytest.raises(ValueError, match="where"):
        plots.legend_outside(ax, where="inside")
    assert plots.legend_outside(plots.figure()[1]) is None  # nothing labelled


def _seeded(setting, knn, linear, rankme, spread=0.02, method="simclr"):
    return [_run(setting, knn + d, linear + d, rankme + 100 * d, method) for d in (-spread, 0.0, spread)]


def test_plot_study_draws_seeds_as_mean_and_error_bars_and_several_variants():
    runs = _seeded(0.1, 0.2, 0.3, 10.0) + _seeded(0.5, 0.4, 0.5, 20.0)
    ax = plots.plot_study(runs, accuracies=("linear_test",))
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), [30, 50])
    assert ax.collections, "seeds must be drawn as error bars"
    variants = {"lr held": runs, "lr ∝ τ": _seeded(0.1, 0.3, 0.45, 12.0) + _seeded(1.0, 0.3, 0.4, 9.0)}
    ax = plots.plot_study(variants, accuracies=("linear_test",), log_x=True)
    labels = [t.get_text() for t in ax.figure.legends[0].get_texts()]
    assert labels == ["lr held", "lr ∝ τ"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5", "1"]


def test_plot_comparison_has_a_bar_per_method_and_references_per_panel():
    runs = [r for name in ("SimCLR", "DCL") for r in _seeded(name, 0.6, 0.7, 10.0)]
    fig = plots.plot_comparison(runs, references={"knn_test": {"raw_pixels": 40.0},
                                                  "linear_test": {"raw_pixels": 50.0}})
    knn_ax, linear_ax = fig.axes
    heights = [p.get_height() for p in knn_ax.patches]
    np.testing.assert_allclose(heights, [60, 60])
    assert knn_ax.patches[0].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(plots.COLORS["simclr"]))
    (raw,) = [line for line in linear_ax.get_lines() if line.get_label().startswith("raw pixels")]
    assert raw.get_ydata()[0] == 50.0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["raw pixels"]
    # a line drawn in one panel only is named in the legend too
    for r in runs:
        r.metrics["finetune_test"] = 0.5
    fig = plots.plot_comparison(runs, accuracies=("linear_test", "finetune_test"),
                                references={"linear_test": {"raw_pixels": 50.0},
                                            "finetune_test": {"scratch": 41.0}})
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["raw pixels", "from scratch, same labels"]


def test_plot_loss_curves_one_panel_per_method_with_chance():
    from cookbook.train import History

    history = History(epochs=[{"epoch": e, "loss": 5.0 - e} for e in (1, 2, 3)], steps=30)
    fig = plots.plot_loss_curves({"SimCLR": [history, history], "MoCo v2": [history]},
                                 chance={"SimCLR": 6.2})
    simclr, moco = (ax for ax in fig.axes if ax.get_visible())
    assert simclr.get_title() == "SimCLR" and len(simclr.get_lines()) == 3  # two seeds and chance
    np.testing.assert_allclose(simclr.get_lines()[0].get_xdata(), [10, 20, 30])
    assert simclr.get_lines()[-1].get_ydata()[0] == 6.2 and len(moco.get_lines()) == 1


def _curve(values, steps=40, every=2):
    from cookbook.train import History

    epochs = [{"epoch": e, "loss": 1.0} | ({"knn_val": v} if v is not None else {})
              for e, v in enumerate(values, 1)]
    return History(epochs=epochs, steps=steps)


def test_plot_learning_curves_mean_and_band_over_seeds_against_the_step():
    seeds = [_curve([None, 0.2, None, 0.6]), _curve([None, 0.4, None, 0.8])]
    ax = plots.plot_learning_curves({"BYOL": seeds, "SimSiam": [_curve([0.3, 0.5, 0.6, 0.7])]},
                                    references={"raw_pixels": 41.0})
    byol, simsiam, raw = ax.get_lines()
    np.testing.assert_allclose(byol.get_xdata(), [20, 40])  # epochs 2 and 4 of 10 steps each
    np.testing.assert_allclose(byol.get_ydata(), [30, 70])  # the mean of the seeds, in %
    assert len(ax.collections) == 1  # a band for the method with seeds, none for one seed
    assert len(simsiam.get_xdata()) == 4 and raw.get_ydata()[0] == 41.0
    assert byol.get_color() == plots.color("BYOL")


def test_plot_learning_curves_refuses_histories_without_evaluations():
    with pytest.raises(ValueError, match="eval_every"):
        plots.plot_learning_curves({"BYOL": [_curve([None, None])]})
    with pytest.raises(ValueError, match="different steps"):
        plots.plot_learning_curves({"BYOL": [_curve([0.1, 0.2]), _curve([None, 0.2])]})
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_learning_curves({})


def test_plot_retrieval_frames_neighbours_of_another_class():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    fig = plots.plot_retrieval(images, torch.zeros(2, 3, 3, 4, 4), torch.tensor([0, 1]),
                               torch.tensor([[0, 1, 0], [1, 1, 0]]), class_names=["a", "b"])
    assert len(fig.axes) == 8
    red = [ax for ax in fig.axes if ax.spines["left"].get_linewidth() > 2]
    assert len(red) == 2
    with pytest.raises(ValueError, match="expected queries"):
        plots.plot_retrieval(images, torch.zeros(2, 3, 4, 4))


def test_plot_image_rows_one_row_per_entry_titled_by_class():
    images = torch.rand(5, 3, 4, 4)
    fig = plots.plot_image_rows({"input": images, "masked": torch.zeros(5, 3, 4, 4, dtype=torch.uint8)},
                                class_names=list("abcde"), labels=torch.arange(5))
    assert len(fig.axes) == 10
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["input", "masked"]
    two_lines = plots.plot_image_rows({"SimMIM: rebuilt": images, "input": images})
    assert two_lines.axes[0].get_ylabel() == "SimMIM:\nrebuilt"  # long labels on two lines
    assert [ax.get_title() for ax in fig.axes[:5]] == list("abcde")
    assert fig.get_figwidth() * 96 <= plots.COLUMN_PX
    with pytest.raises(ValueError, match="same number"):
        plots.plot_image_rows({"a": images, "b": images[:2]})


def test_plot_map_colours_classes_and_factors():
    points = np.random.default_rng(0).normal(size=(30, 2))
    fig = plots.plot_map(points, {"class": np.arange(30) % 3, "hue": np.linspace(0, 1, 30)},
                         class_names=["a", "b", "c"])
    class_ax, hue_ax = fig.axes[:2]
    assert len(class_ax.collections) == 3 and class_ax.get_title() == "class"
    assert hue_ax.collections[0].get_cmap().name == "hsv"
    with pytest.raises(ValueError, match="points must be"):
        plots.plot_map(points[:, :1], {"class": np.arange(30)})


def test_plot_sweep_draws_each_quantity_as_seed_means_and_checks_its_axes():
    runs = [r for s, lin in ((0.1, 0.3), (1.0, 0.5)) for r in _seeded(s, lin, lin, 10.0 + 10 * lin)]
    for r in runs:
        r.metrics.update(alpha=0.8, lidar=7.0)
    runs[0].metrics["alpha"] = float("nan")  # an α-ReQ that could not be fitted: a gap, not an error
    axes = plots.plot_sweep(runs, log_x=True)
    assert len(axes) == 4 and [ax.get_xscale() for ax in axes] == ["log"] * 4
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), [30, 50])  # accuracies in %
    np.testing.assert_allclose(axes[1].get_lines()[0].get_ydata(), [13, 15])  # RankMe as it is
    assert any(line.get_ydata()[0] == 1.0 for line in axes[2].get_lines()), "alpha = 1 is marked"
    assert [t.get_text() for t in axes[3].get_xticklabels()] == ["0.1", "1"]
    assert axes[2].get_ylabel() == "α-ReQ (repr.)"
    labelled = plots.plot_sweep([_run("a / b", 0.2, 0.3, 5.0), _run("c / d", 0.2, 0.4, 6.0)],
                                keys=("linear_test", "rankme"))
    assert [t.get_text() for t in labelled[0].get_xticklabels()] == ["a / b", "c / d"]
    with pytest.raises(ValueError, match="draws 4 panels.*got 2 axes"):
        plots.plot_sweep(runs, axes=plots.figure(ncols=2)[1])
    with pytest.raises(ValueError, match="at least one run"):
        plots.plot_sweep([])
