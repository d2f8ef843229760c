"""Studies: one run end to end on a tiny dataset, and the choice logic on hand-made runs."""

import math

import pytest
import torch

from cookbook import data, evaluate, experiment, methods, models
from cookbook.experiment import Run
from cookbook.train import History


def fake_run(setting, knn_val, rankme, alpha, linear_test, rankme_rep=None, seed=0, linear_val=None):
    metrics = {"knn_val": knn_val, "knn_test": knn_val, "linear_test": linear_test, "rankme": rankme,
               "rankme_rep": rankme if rankme_rep is None else rankme_rep, "alpha": alpha,
               "linear_val": knn_val if linear_val is None else linear_val}
    return Run(str(setting), setting, torch.nn.Identity(), History(steps=10, wall_time_s=1.5), metrics,
               seed=seed)


@pytest.fixture
def study():
    # knn_val prefers 0.2, rankme prefers 0.5, alpha (closest to 1) prefers 1.0; test accuracy peaks at 0.2
    return [fake_run(0.1, 0.30, 20.0, 3.0, 0.40), fake_run(0.2, 0.50, 25.0, 2.0, 0.55),
            fake_run(0.5, 0.40, 40.0, 0.5, 0.45), fake_run(1.0, 0.35, 30.0, 1.1, 0.35)]


def test_choose_follows_each_criterion(study):
    assert experiment.choose(study, "knn_val").setting == 0.2
    assert experiment.choose(study, "rankme").setting == 0.5
    assert experiment.choose(study, "alpha").setting == 1.0  # |1.1 - 1| < |0.5 - 1|


def test_choose_skips_nan_and_rejects_bad_input(study):
    study[3].metrics["alpha"] = float("nan")
    assert experiment.choose(study, "alpha").setting == 0.5
    with pytest.raises(ValueError, match="unknown criterion 'accuracy'.*knn_val"):
        experiment.choose(study, "accuracy")
    with pytest.raises(ValueError, match="at least one run"):
        experiment.choose([], "rankme")


def test_selection_table_reports_the_choice_and_its_regret(study):
    rows = experiment.selection_table({"temperature": study})
    assert [r["chosen by"] for r in rows] == list(experiment.EVALUATED_CRITERIA)
    by = {r["chosen by"]: r for r in rows}
    assert by["knn_val"]["picks"] == [0.2] and by["knn_val"]["linear_test"][0] == 0.55
    assert by["rankme"]["linear_test"][0] == 0.45 and by["rankme"]["regret"][0] == pytest.approx(0.10)
    assert by["alpha"]["picks"] == [1.0] and by["alpha"]["regret"][0] == pytest.approx(0.20)
    assert by["knn_val"]["regret"] == (0.0, pytest.approx(float("nan"), nan_ok=True))
    assert all(r["seeds"] == 1 and r["study"] == "temperature" for r in rows)


def test_selection_table_chooses_within_each_seed():
    # seed 0: RankMe picks the best setting (regret 0); seed 1: it picks the worst (regret 0.3)
    runs = [fake_run("a", 0.5, 10.0, 2.0, 0.6, seed=0), fake_run("b", 0.4, 20.0, 2.0, 0.7, seed=0),
            fake_run("a", 0.5, 30.0, 2.0, 0.4, seed=1), fake_run("b", 0.6, 20.0, 2.0, 0.7, seed=1)]
    (rankme,) = experiment.selection_table({"s": runs}, criteria=("rankme",))
    assert rankme["picks"] == ["b", "a"] and rankme["seeds"] == 2
    assert rankme["linear_test"][0] == pytest.approx(0.55)
    assert rankme["regret"][0] == pytest.approx(0.15)
    assert rankme["regret"][1] == pytest.approx(math.sqrt(2 * 0.15 ** 2))
    (probe,) = experiment.selection_table({"s": runs}, criteria=("linear_val",))
    assert probe["picks"] == ["a", "b"] and probe["regret"][0] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="no 'linear_val'"):
        del runs[0].metrics["linear_val"]
        experiment.selection_table({"s": runs}, criteria=("linear_val",))


def test_mean_sd_and_by_setting():
    runs = [fake_run(0.1, 0.2, 1.0, 1.0, 0.5, seed=s) for s in range(3)]
    runs[1].metrics["knn_test"], runs[2].metrics["knn_test"] = 0.4, 0.6
    mean, sd, n = experiment.mean_sd(runs, "knn_test")
    assert (mean, n) == (pytest.approx(0.4), 3) and sd == pytest.approx(0.2)
    assert math.isnan(experiment.mean_sd(runs[:1], "knn_test")[1])
    assert experiment.mean_sd(runs, "steps")[0] == 10
    with pytest.raises(ValueError, match="no 'accuracy'"):
        experiment.mean_sd(runs, "accuracy")
    groups = experiment.by_setting([fake_run("b", 0, 0, 0, 0), fake_run("a", 0, 0, 0, 0), fake_run("b", 0, 0, 0, 0)])
    assert list(groups) == ["b", "a"] and len(groups["b"]) == 2


def test_table_with_seeds_shows_mean_and_sd_per_setting():
    runs = [fake_run(tau, 0.5 + 0.1 * seed, 10.0 * (seed + 1), 2.0, 0.5, seed=seed)
            for tau in (0.1, 0.5) for seed in range(3)]
    frame = experiment.table(runs, columns=("knn_test", "rankme"))
    assert list(frame.index) == [0.1, 0.5] and frame.columns.name == "setting" and frame.index.name is None
    assert list(frame.columns) == ["seeds", "kNN test (%)", "RankMe"]
    assert frame.loc[0.1, "kNN test (%)"] == "60.0 ± 10.0" and frame.loc[0.5, "RankMe"] == "20.0 ± 10.0"
    assert (frame["seeds"] == 3).all()


def test_spearman():
    assert experiment.spearman([1, 2, 3, 4], [10, 20, 25, 40]) == pytest.approx(1.0)
    assert experiment.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(experiment.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(experiment.spearman([1, 2], [1, 2]))
    with pytest.raises(ValueError, match="different lengths"):
        experiment.spearman([1, 2, 3], [1, 2])


def test_table_in_percent_and_rounded(study):
    frame = experiment.table(study, columns=("knn_test", "rankme", "alpha", "train_s"))
    assert list(frame.columns) == ["kNN test (%)", "RankMe", "α-ReQ", "train (s)"]
    assert list(frame.index) == [0.1, 0.2, 0.5, 1.0]
    assert frame.loc[0.2, "kNN test (%)"] == 50.0 and frame.loc[0.1, "train (s)"] == 2
    with pytest.raises(ValueError, match="unknown columns"):
        experiment.table(study, columns=("accuracy",))


def test_as_setting_shares_the_trained_model(study):
    again = study[0].as_setting("baseline")
    assert again.setting == "baseline" and study[0].setting == 0.1
    assert again.method is study[0].method and again.metrics is study[0].metrics


@pytest.mark.filterwarnings("ignore:k = .* exceeds")
def test_run_trains_and_evaluates_backbone_and_projector():
    ds = data.load("shapes", subset=128, test_subset=64, seed=0)
    torch.manual_seed(0)
    r = experiment.run("tiny", methods.SimCLR(models.resnet18(8)), ds, setting=0.5, embedding=True, log=False,
                       epochs=1, batch_size=32, device="cpu")
    assert r.setting == 0.5 and r.history.steps == 4 and r.seconds > 0
    assert set(r.metrics) == {"knn_val", "knn_test", "linear_val", "linear_test", "rankme", "rankme_rep",
                              "alpha", "emb_knn_test", "emb_linear_test"}
    assert all(0 <= r.metrics[k] <= 1 for k in ("knn_val", "knn_test", "emb_linear_test"))
    assert 1 <= r.metrics["rankme"] <= 128 and 1 <= r.metrics["rankme_rep"] <= r.method.backbone.dim
    row = r.row()
    assert row["run"] == "tiny" and row["steps"] == 4 and row["final_loss"] == r.history.final_loss


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_run_recipe_seeds_the_weights_and_references_are_evaluated_like_models():
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    tiny = recipes.recipe("simclr").with_(width=8, steps=2, batch_size=32)
    a, b = (experiment.run_recipe(tiny, ds, seed=3, setting="x", log=False) for _ in range(2))
    assert a.seed == 3 and a.setting == "x" and a.history.steps == 2
    assert a.metrics == b.metrics, "the same seed must give the same run"
    other = experiment.run_recipe(tiny, ds, seed=4, log=False, temperature=0.2)
    assert other.method.temperature == 0.2 and other.setting == "simclr"
    assert not any("knn_val" in e for e in other.history.epochs)  # no curve unless asked
    curve = experiment.run_recipe(tiny.with_(steps=6), ds, seed=4, log=False, eval_every=1,
                                  eval_rankme=True)
    assert [("knn_val" in e, "rankme" in e) for e in curve.history.epochs] == [(True, True)] * 2
    with pytest.raises(ValueError, match="fp16 is for CUDA"):  # the precision reaches fit, checked first
        experiment.run_recipe(tiny, ds, seed=0, log=False, precision="fp16", device="cpu")

    refs = experiment.references(tiny, ds, seeds=(0, 1), ceiling_steps=2, log=False)
    assert [(r.setting, r.seed) for r in refs] == [(name, seed) for seed in (0, 1)
                                                  for name in ("raw pixels", "untrained", "supervised")]
    pixels = refs[0].metrics
    raw_train, raw_test = evaluate.pixels(ds, "train"), evaluate.pixels(ds, "test")
    assert pixels["knn_test"] == evaluate.knn_accuracy(raw_train, ds.train_y, raw_test, ds.test_y)
    supervised = refs[2]
    assert 0 <= supervised.metrics["end_to_end_test"] <= 1 and supervised.history.steps == 2
    frame = experiment.table(refs, columns=("knn_test",))
    assert list(frame.index) == ["raw pixels", "untrained", "supervised"] and (frame["seeds"] == 2).all()
    ceiling = experiment.table(refs, columns=("knn_test", "end_to_end_test"))  # only "supervised" has it
    assert ceiling.loc["raw pixels", "end-to-end test (%)"] == ""
    assert " ± " in ceiling.loc["supervised", "end-to-end test (%)"]

    ds.factors = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0).factors
    factors = experiment.factor_table({"raw pixels": refs[0::3], "untrained": refs[1::3]}, ds)
    assert list(factors.columns) == ["hue R²", "x R²", "y R²", "scale R²", "class (%)"]
    assert " ± " in factors.loc["untrained", "hue R²"]


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_run_recipes_in_two_processes_returns_trained_runs_in_order():
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    # width 4: one-thread workers crashed on it while fit trained it in channels_last
    tiny = recipes.recipe("simclr").with_(width=4, steps=2, batch_size=32)
    jobs = [dict(recipe=tiny, seed=s, setting=t, name=f"τ {t}", temperature=t)
            for t, s in ((0.1, 0), (0.5, 1), (1.0, 2))]
    runs = experiment.run_recipes(jobs, ds, workers=2, log=False)
    assert [(r.name, r.setting, r.seed) for r in runs] == [("τ 0.1", 0.1, 0), ("τ 0.5", 0.5, 1), ("τ 1.0", 1.0, 2)]
    assert [r.method.temperature for r in runs] == [0.1, 0.5, 1.0]
    assert all(r.history.steps == 2 and r.seconds > 0 and 0 <= r.metrics["knn_test"] <= 1 for r in runs)
    # the model came back trained: its weights differ from the seeded initial ones
    torch.manual_seed(0)
    initial = tiny.build(ds.image_size)
    assert not torch.equal(next(initial.parameters()), next(runs[0].method.parameters()))
    assert next(runs[0].method.parameters()).device.type == "cpu"
    one = experiment.run_recipes(jobs[:1], ds, workers=1, log=False)[0]
    assert one.metrics == experiment.run_recipe(tiny, ds, seed=0, setting=0.1, log=False,
                                                temperature=0.1).metrics


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_references_in_two_processes_come_back_in_seed_order():
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    tiny = recipes.recipe("simclr").with_(width=4, steps=2, batch_size=32)
    both = experiment.references(tiny, ds, seeds=(0, 1), ceiling_steps=2, log=False, workers=2)
    assert [(r.setting, r.seed) for r in both] == [(name, seed) for seed in (0, 1)
                                                  for name in ("raw pixels", "untrained", "supervised")]
    alone = experiment.references(tiny, ds, seeds=(1,), ceiling_steps=2, log=False)
    # the floors do not depend on threads: raw pixels exactly, the seeded untrained net to rounding
    assert both[3].metrics["knn_test"] == alone[0].metrics["knn_test"]
    assert both[4].metrics["rankme"] == pytest.approx(alone[1].metrics["rankme"], rel=1e-3)
    assert both[5].history.steps == 2 and next(both[5].method.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="workers must be at least 1"):
        experiment.references(tiny, ds, workers=0)


def test_run_recipes_rejects_bad_jobs_before_training():
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    tiny = recipes.recipe("simclr").with_(width=8, steps=2, batch_size=32)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        experiment.run_recipes([dict(recipe=tiny)], ds, workers=0)
    with pytest.raises(ValueError, match="job 1 has no 'recipe'"):
        experiment.run_recipes([dict(recipe=tiny), dict(seed=1)], ds)


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_mim_runs_are_fine_tuned_and_scratch_is_the_untrained_references_fine_tune():
    """MIM is judged by fine-tuning: a run asked to fine-tune carries the fine-tune's
    accuracy, computed exactly as evaluate.fine_tune computes it from the trained
    backbone; the references' untrained network, fine-tuned alike, is the scratch
    baseline."""
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    tiny = recipes.recipe("mae").with_(steps=2, batch_size=32, vit={**recipes.VIT_OPTIONS, "patch_size": 4,
                                                                      "dim": 16, "depth": 1, "heads": 2})
    tune = dict(labelled_fraction=0.5, steps=3, batch_size=16)
    r = experiment.run_recipe(tiny, ds, seed=1, log=False, fine_tune=tune, decoder_dim=16, decoder_heads=2)
    assert set(r.metrics) >= {"finetune_test", "knn_test"} and "finetune_val" not in r.metrics
    assert r.metrics["finetune_test"] == evaluate.fine_tune(r.method.backbone, ds, seed=1, device="cpu", **tune)
    both = experiment.run_recipe(tiny, ds, seed=1, log=False, fine_tune={**tune, "split": "both"},
                                 decoder_dim=16, decoder_heads=2)
    assert both.metrics["finetune_val"] == evaluate.fine_tune(both.method.backbone, ds, seed=1, split="val",
                                                              **tune)
    frame = experiment.table([r, both], columns=("finetune_test",), index="run")
    assert frame.columns[0] == "fine-tune test (%)"
    with pytest.raises(ValueError, match="split"):
        experiment.run_recipe(tiny, ds, log=False, fine_tune={**tune, "split": "train"})

    refs = experiment.references(tiny, ds, seeds=(0,), ceiling_steps=2, log=False, fine_tune=tune)
    untrained = next(x for x in refs if x.setting == "untrained")
    assert "finetune_test" in untrained.metrics
    assert all("finetune_test" not in x.metrics for x in refs if x.setting != "untrained")
    assert experiment.choose([r, both], "knn_val") in (r, both)


def test_fine_tune_on_the_validation_split_never_reads_the_test_split():
    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    net = models.resnet10(2)
    torch.manual_seed(0)
    val = evaluate.fine_tune(net, ds, labelled_fraction=0.5, steps=2, batch_size=16, split="val")
    ds.test_x = ds.test_x.zero_()  # a val score that read the test split would change
    torch.manual_seed(0)
    assert evaluate.fine_tune(net, ds, labelled_fraction=0.5, steps=2, batch_size=16, split="val") == val
    _, held = evaluate.validation_split(ds.train_y, 0.1, 0)
    assert val * len(held) == pytest.approx(round(val * len(held)))  # a fraction of the held-out images
    with pytest.raises(ValueError, match="split"):
        evaluate.fine_tune(net, ds, split="train")


def test_selection_table_reports_the_oracle_beside_the_picks():
    # best linear_test per seed: 0.7 (seed 0) and 0.5 (seed 1), whatever the criterion picks
    runs = [fake_run("a", 0.5, 10.0, 2.0, 0.6, seed=0), fake_run("b", 0.4, 20.0, 2.0, 0.7, seed=0),
            fake_run("a", 0.5, 30.0, 2.0, 0.5, seed=1), fake_run("b", 0.6, 20.0, 2.0, 0.3, seed=1)]
    rows = experiment.selection_table({"s": runs}, criteria=("rankme", "linear_val"))
    for row in rows:
        assert row["oracle"][0] == pytest.approx(0.6) and row["oracle"][1] == pytest.approx(math.sqrt(0.02))
        assert row["oracle"][0] - row["linear_test"][0] == pytest.approx(row["regret"][0])
    assert set(rows[0]) == {"study", "chosen by", "picks", "seeds", "linear_test", "regret", "oracle"}
    with pytest.raises(ValueError, match="no 'factor_hue' metric; add it with add_factor_scores"):
        experiment.selection_table({"s": runs}, report="factor_hue")


def sweep(metric, report, seeds=3, rng=None, noise=0.0, key="rankme"):
    """Fake runs, one per (setting, seed): ``key`` = metric[i] and linear_test =
    report[i] for setting i, each plus Gaussian noise of sd ``noise``."""
    rng = rng or torch.Generator().manual_seed(0)
    runs = []
    for i, (m, t) in enumerate(zip(metric, report)):
        for s in range(seeds):
            dm, dt = (noise * torch.randn(2, generator=rng)).tolist()
            r = fake_run(i, 0.5, 10.0, 1.0, t + dt, seed=s)
            r.metrics[key] = m + dm
            runs.append(r)
    return runs


def test_spearman_ci_known_answers():
    up = [float(i) for i in range(8)]
    rho, low, high = experiment.spearman_ci(sweep(up, [0.1 * x for x in up], noise=1e-4), "rankme")
    assert rho == pytest.approx(1.0) and low == pytest.approx(1.0) and high == pytest.approx(1.0)
    rho, low, high = experiment.spearman_ci(sweep(up, [-x for x in up], noise=1e-4), "rankme")
    assert rho == pytest.approx(-1.0) and high == pytest.approx(-1.0)
    # α-ReQ counts by its closeness to 1, on either side: the report rises as |α - 1| falls
    alphas = [1 + (-1) ** i * (8 - i) / 10 for i in range(8)]
    runs = sweep(alphas, up, noise=1e-4, key="alpha")
    assert experiment.spearman_ci(runs, "alpha")[0] == pytest.approx(1.0)
    assert experiment.spearman([r.metrics["alpha"] for r in runs], [r.metrics["linear_test"] for r in runs]) < 0.5


def test_spearman_ci_of_noise_contains_zero_and_is_seeded():
    rng = torch.Generator().manual_seed(1)
    runs = sweep(torch.rand(30, generator=rng).tolist(), torch.rand(30, generator=rng).tolist(), rng=rng, noise=0.3)
    rho, low, high = experiment.spearman_ci(runs, "rankme")
    assert low < 0 < high and low <= rho <= high and high - low < 1
    assert experiment.spearman_ci(runs, "rankme") == (rho, low, high)
    assert experiment.spearman_ci(runs, "rankme", seed=1) != (rho, low, high)
    wider = experiment.spearman_ci(runs, "rankme", level=0.99)
    assert wider[1] <= low and wider[2] >= high


def test_spearman_ci_bootstrap_resamples_each_settings_seeds():
    """The vectorised bootstrap equals scipy's ρ on the same resampled means."""
    from scipy.stats import spearmanr

    rng = torch.Generator().manual_seed(2)
    runs = sweep(torch.rand(6, generator=rng).tolist(), torch.rand(6, generator=rng).tolist(), rng=rng, noise=0.2)
    x = torch.rand(50, 6, generator=rng).round(decimals=1).numpy()  # with ties
    y = torch.rand(50, 6, generator=rng).numpy()
    assert experiment._row_spearman(x, y) == pytest.approx([spearmanr(a, b).statistic for a, b in zip(x, y)])
    # one resample by hand: each setting's seeds drawn with replacement, settings in order
    import numpy as np

    groups = list(experiment.by_setting(runs).values())
    rho, low, high = experiment.spearman_ci(runs, "rankme", n_boot=1, seed=5, level=0.5)
    draw = np.random.default_rng(5)
    picks = [draw.integers(3, size=(1, 3))[0] for _ in groups]
    by_hand = spearmanr([np.mean([g[k].metrics["rankme"] for k in p]) for g, p in zip(groups, picks)],
                        [np.mean([g[k].metrics["linear_test"] for k in p]) for g, p in zip(groups, picks)]).statistic
    assert low == pytest.approx(by_hand) and high == pytest.approx(by_hand)


def test_spearman_ci_is_nan_without_enough_settings_and_rejects_bad_input():
    two = sweep([1.0, 2.0], [0.1, 0.2], noise=0.1)
    assert all(math.isnan(v) for v in experiment.spearman_ci(two, "rankme"))
    constant = sweep([5.0] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert all(math.isnan(v) for v in experiment.spearman_ci(constant, "rankme"))
    runs = sweep([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4], noise=0.01)
    runs[0].metrics["rankme"] = float("nan")
    assert all(math.isnan(v) for v in experiment.spearman_ci(runs, "rankme"))
    # three settings whose seeds are equal: every resample is the data itself
    assert experiment.spearman_ci(sweep([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]), "rankme") == pytest.approx((-0.5,) * 3)
    with pytest.raises(ValueError, match="level"):
        experiment.spearman_ci(runs, "rankme", level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        experiment.spearman_ci(runs, "rankme", n_boot=0)
    with pytest.raises(ValueError, match="no 'lidar' metric; train them with lidar="):
        experiment.spearman_ci(runs, "lidar")


def test_lidar_is_a_criterion_chosen_like_rankme_but_not_evaluated_by_default(study):
    assert "lidar" in experiment.CRITERIA and "lidar" not in experiment.EVALUATED_CRITERIA
    assert experiment.COLUMNS["lidar"] == ("LiDAR", 1) and "lidar_s" in experiment.COLUMNS
    for r, value in zip(study, (3.0, 9.0, 5.0, float("nan"))):
        r.metrics["lidar"] = value
    assert experiment.choose(study, "lidar").setting == 0.2
    assert [r["chosen by"] for r in experiment.selection_table({"s": study})] == list(experiment.EVALUATED_CRITERIA)
    del study[0].metrics["lidar"]
    with pytest.raises(ValueError, match="no 'lidar' metric; train them with lidar="):
        experiment.choose(study, "lidar")


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_runs_measure_lidar_on_their_first_view_and_seed():
    from cookbook import augment, metrics, recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    tiny = recipes.recipe("simclr").with_(width=4, steps=2, batch_size=32)
    options = dict(n_images=32, n_views=4)
    r = experiment.run_recipe(tiny, ds, seed=3, log=False, lidar=options)
    spec = tiny.make_views(r.method, ds.image_size).specs[0]
    assert spec != r.method.default_views(ds.image_size).specs[0]  # the recipe's views, not the method's
    views = evaluate.view_features(r.method, ds, spec, 32, 4, seed=3)
    assert r.metrics["lidar"] == pytest.approx(metrics.lidar(views), rel=1e-6)
    assert math.isfinite(r.metrics["lidar"]) and 1 <= r.metrics["lidar"] <= min(31, views.shape[2])
    assert r.metrics["lidar_s"] > 0
    plain = experiment.run_recipe(tiny, ds, seed=3, log=False)
    assert plain.metrics == {k: v for k, v in r.metrics.items() if k not in ("lidar", "lidar_s")}
    again = experiment.run_recipes([dict(recipe=tiny, seed=3, lidar=options)], ds, log=False)[0]
    assert again.metrics["lidar"] == r.metrics["lidar"]
    assert "LiDAR" in experiment.table([r], columns=("lidar",)).columns

    # run(): the views given to fit, or a view named in the options
    other = augment.ViewSpec(size=16, min_scale=0.9, cj_prob=0.0)
    torch.manual_seed(0)
    method = tiny.build(ds.image_size)
    own = augment.simclr(16, min_scale=0.3)
    s = experiment.run("s", method, ds, log=False, steps=1, batch_size=32, seed=1, views=own,
                       lidar={**options, "view": other})
    assert s.metrics["lidar"] == pytest.approx(metrics.lidar(evaluate.view_features(method, ds, other, 32, 4,
                                                                                    seed=1)), rel=1e-6)
    assert experiment._lidar(method, ds, options, own, 1)["lidar"] == pytest.approx(
        metrics.lidar(evaluate.view_features(method, ds, own.specs[0], 32, 4, seed=1)), rel=1e-6)
    assert experiment._lidar(method, ds, options, None, 1)["lidar"] == pytest.approx(
        metrics.lidar(evaluate.view_features(method, ds, method.default_views(16).specs[0], 32, 4, seed=1)),
        rel=1e-6)


def test_bad_lidar_options_fail_before_training():
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    slow = recipes.recipe("simclr").with_(width=4, steps=10_000, batch_size=32)  # would take minutes
    with pytest.raises(ValueError, match=r"unknown lidar options \['n_image'\]"):
        experiment.run_recipe(slow, ds, log=False, lidar=dict(n_image=32))
    with pytest.raises(ValueError, match="must be a dict"):
        experiment.run_recipe(slow, ds, log=False, lidar=True)
    with pytest.raises(ValueError, match="ViewSpec"):
        experiment.run_recipe(slow, ds, log=False, lidar=dict(view="simclr"))


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_add_factor_scores_makes_the_factors_reports(monkeypatch):
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    tiny = recipes.recipe("simclr").with_(width=4, steps=1, batch_size=32)
    runs = [experiment.run_recipe(tiny, ds, seed=s, setting=t, log=False, temperature=t)
            for t in (0.1, 0.5, 1.0) for s in (0, 1)]
    calls = []
    probes = evaluate.factor_probes
    monkeypatch.setattr(evaluate, "factor_probes", lambda *a, **k: calls.append(1) or probes(*a, **k))
    experiment.add_factor_scores(runs + [runs[0].as_setting("again")], ds)
    assert len(calls) == len(runs)  # the shared run is probed once
    expected = probes(runs[3].method, ds, seed=1)
    assert {k: runs[3].metrics[f"factor_{k}"] for k in ("hue", "x", "y", "scale")} == pytest.approx(expected)
    assert all(r.metrics["factor_hue"] <= 1 for r in runs)
    (row,) = experiment.selection_table({"τ": runs}, report="factor_hue", criteria=("rankme",))
    best = [max(r.metrics["factor_hue"] for r in runs if r.seed == s) for s in (0, 1)]
    assert row["oracle"][0] == pytest.approx(sum(best) / 2) and "factor_hue" in row
    assert len(experiment.spearman_ci(runs, "rankme", report="factor_x", n_boot=50)) == 3
    assert list(experiment.table(runs, columns=("factor_hue", "factor_x")).columns) == ["seeds", "hue R²", "x R²"]

    ds.factors = None  # as CIFAR-10
    with pytest.raises(ValueError, match="no factors"):
        experiment.add_factor_scores(runs, ds)


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_add_transfer_scores_probes_another_dataset_with_its_own_labels():
    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    other = data.load("shapes", subset=64, test_subset=32, image_size=16, seed=1)
    torch.manual_seed(0)
    model = methods.build("simclr", models.backbone("resnet10", width=4, image_size=16))
    r = Run("net", "a", model, History(steps=0, wall_time_s=0.0), {}, seed=3)
    experiment.add_transfer_scores([r], other)
    train_f, test_f = evaluate.features(model, other, "train"), evaluate.features(model, other, "test")
    assert r.metrics["transfer_knn_test"] == evaluate.knn_accuracy(train_f, other.train_y, test_f, other.test_y)
    assert r.metrics["transfer_linear_test"] == evaluate.linear_probe(train_f, other.train_y, test_f,
                                                                      other.test_y, seed=3)
    other.train_x = other.train_x.zero_()  # scored once: a second call must not read the images again
    experiment.add_transfer_scores([r, r.as_setting("b")], other)
    assert r.metrics["transfer_knn_test"] == evaluate.knn_accuracy(train_f, other.train_y, test_f, other.test_y)
    frame = experiment.table([r], columns=("transfer_knn_test", "transfer_linear_test"))
    assert list(frame.columns) == ["transfer kNN (%)", "transfer linear (%)"]
    with pytest.raises(ValueError, match="add it with add_transfer_scores"):
        experiment.selection_table({"s": [Run("x", "x", model, History(), {"rankme": 1.0})]},
                                   report="transfer_linear_test", criteria=("rankme",))


def test_add_transfer_scores_refuses_a_vit_and_a_dataset_of_another_size():
    vit = methods.build("mae", models.backbone("vit_tiny", image_size=16, patch_size=4, dim=32, depth=1, heads=2))
    r = Run("vit", "a", vit, History(), {})
    other = data.load("shapes", subset=32, test_subset=16, image_size=32, seed=1)
    with pytest.raises(ValueError, match="built for 16-pixel images.*image_size=16"):
        experiment.add_transfer_scores([r], other)
    assert r.metrics == {}


@pytest.mark.filterwarnings("ignore:k = .* exceeds", "ignore:RankMe with N")
def test_run_scores_factors_and_transfer_itself_and_checks_them_before_training():
    from cookbook import recipes

    ds = data.load("shapes", subset=96, test_subset=48, image_size=16, seed=0)
    other = data.load("shapes", subset=64, test_subset=32, image_size=16, seed=1)
    tiny = recipes.recipe("simclr").with_(width=8, steps=2, batch_size=32)
    r = experiment.run_recipe(tiny, ds, seed=0, log=False, factors=True, transfer=other)
    scored = {k: v for k, v in r.metrics.items() if k.startswith(("factor_", "transfer_"))}
    assert set(scored) == {"factor_hue", "factor_x", "factor_y", "factor_scale", "transfer_knn_test",
                           "transfer_linear_test"}
    again = experiment.Run("copy", "copy", r.method, r.history, {}, seed=0)
    experiment.add_factor_scores([again], ds)
    experiment.add_transfer_scores([again], other)
    assert again.metrics == scored
    no_factors = data.Dataset("plain", ds.train_x, ds.train_y, ds.test_x, ds.test_y, ds.classes)
    method = tiny.build(16)
    before = [p.detach().clone() for p in method.parameters()]
    with pytest.raises(ValueError, match="records no factors"):
        experiment.run("x", method, no_factors, factors=True, steps=2, batch_size=32)
    with pytest.raises(ValueError, match="transfer must be a cookbook.data.Dataset"):
        experiment.run_recipes([dict(recipe=tiny, seed=0), dict(recipe=tiny, seed=1, transfer="cifar10")],
                               ds, workers=2)
    assert all(torch.equal(a, b) for a, b in zip(before, method.parameters()))  # nothing trained
