"""Each figure draws what it claims, on the Agg backend."""

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
    assert "Spearman ρ = 0.90" in ax.get_title() and "n = 5" in ax.get_title()
    assert ax.get_xlabel() == "RankMe" and ax.get_ylabel() == "kNN accuracy (%)"
    reversed_ = plots.plot_metric_vs_accuracy(np.array([1.0, 2.0, 3.0]), torch.tensor([0.9, 0.8, 0.1]),
                                              metric_name="α", accuracy_name="linear accuracy")
    assert "Spearman ρ = -1.00" in reversed_.get_title() and len(reversed_.texts) == 0
    assert "ρ = n/a" in plots.plot_metric_vs_accuracy([1.0, 2.0], [3.0, 4.0]).get_title()
    with pytest.raises(ValueError):
        plots.plot_metric_vs_accuracy([1.0, 2.0, 3.0], [1.0, 2.0])


def test_plot_study_numeric_and_categorical_settings():
    def run(setting, knn, linear, rankme):
        return SimpleNamespace(setting=setting, metrics={"knn_test": knn, "linear_test": linear, "rankme": rankme})

    runs = [run(0.1, 0.2, 0.3, 10.0), run(0.5, 0.4, 0.5, 20.0), run(1.0, 0.3, 0.35, 15.0)]
    ax = plots.plot_study(runs, xlabel="temperature", log_x=True, title="t")
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "temperature" and ax.get_title() == "t"
    knn, linear = ax.get_lines()
    np.testing.assert_allclose(knn.get_ydata(), [20, 40, 30])
    np.testing.assert_allclose(linear.get_xdata(), [0.1, 0.5, 1.0])
    (rank_line,) = ax.figure.axes[1].get_lines()
    np.testing.assert_allclose(rank_line.get_ydata(), [10, 20, 15])
    assert len(ax.get_legend().get_texts()) == 3

    labelled = [run("none", 0.2, 0.3, 5.0), run("linear", 0.3, 0.4, 6.0)]
    ax = plots.plot_study(labelled, accuracies=("linear_test",))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "linear"]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0, 1])
