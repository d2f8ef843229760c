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
