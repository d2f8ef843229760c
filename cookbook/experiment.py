"""Studies: train a configuration, evaluate it, and choose among configurations.

A chapter's study is a list of runs that differ in one thing (the temperature,
the projector, ...). :func:`run` trains one method with
:func:`cookbook.train.fit` and evaluates it with
:func:`cookbook.evaluate.evaluate_model`; :func:`table_rows` flattens runs into
rows for a table; :func:`choose` picks a run by a criterion, and
:func:`selection_table` asks of a group of studies: had we chosen by RankMe,
by α-ReQ or by validation labels, what test accuracy would we have got?

A study may hold several runs per setting (one per seed): :func:`table`
then shows mean ± sd over the seeds, :func:`mean_sd` gives the numbers, and
:func:`selection_table` chooses within each seed and reports the regret.

Criteria (:data:`CRITERIA`):

- ``"linear_val"``: the highest validation accuracy of the linear probe (on
  a split carved from the training labels): the labelled baseline, scored
  against the same probe's test accuracy. It never sees test labels.
- ``"knn_val"``: the highest kNN accuracy on that validation split.
- ``"finetune_val"``: the highest validation accuracy of a fine-tune (runs
  trained with ``fine_tune=``; masked image modeling is judged this way).
- ``"rankme"``: the highest RankMe of the embedding (Garrido et al., 2023);
  ``"rankme_rep"``: of the representation. They differ when the projector
  changes: the embedding's rank is capped by the projector's output size.
- ``"alpha"``: the α-ReQ exponent closest to 1 (Agrawal et al., 2022 find the
  best representations near α = 1; both too flat, α < 1, and too steep decay
  hurt).
- ``"lidar"``: the highest LiDAR of the embedding (Thilak et al., ICLR 2024),
  for runs trained with ``lidar=`` (see :func:`run`): RankMe's smooth rank of
  the linear discriminant between images, each image's views its class.

:func:`spearman_ci` asks how well a criterion orders the settings as the
test accuracy does, with a bootstrap interval over the seeds, and
:func:`add_factor_scores` adds downstream tasks other than the class (the
``shapes`` factors) as reports.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from cookbook import augment, evaluate, metrics
from cookbook.train import History, fit

__all__ = ["CRITERIA", "COLUMNS", "Run", "run", "run_recipe", "run_recipes", "references", "by_setting", "mean_sd",
           "table", "table_rows", "choose", "selection_table", "factor_table", "add_factor_scores",
           "add_transfer_scores", "spearman", "spearman_ci"]

CRITERIA = ("linear_val", "knn_val", "finetune_val", "rankme", "rankme_rep", "alpha", "lidar")
#: What :func:`selection_table` compares unless told: every criterion a run
#: always has (``finetune_val`` only exists for runs that were fine-tuned,
#: ``lidar`` for runs asked for it).
EVALUATED_CRITERIA = tuple(c for c in CRITERIA if c not in ("finetune_val", "lidar"))

#: Column headers of :func:`table`, and how many decimals each keeps.
#: Accuracies are shown in percent.
COLUMNS = {
    "knn_val": ("kNN val (%)", 1), "linear_val": ("linear val (%)", 1), "knn_test": ("kNN test (%)", 1),
    "linear_test": ("linear test (%)", 1),
    "emb_knn_test": ("kNN test, after g (%)", 1),
    "emb_linear_test": ("linear test, after g (%)", 1),
    "finetune_val": ("fine-tune val (%)", 1), "finetune_test": ("fine-tune test (%)", 1),
    "end_to_end_test": ("end-to-end test (%)", 1),
    "rankme": ("RankMe", 1), "rankme_rep": ("RankMe (repr.)", 1), "alpha": ("α-ReQ", 2),
    "lidar": ("LiDAR", 1), "lidar_s": ("LiDAR (s)", 1),
    **{f"factor_{name}": (f"{name} R²", 2) for name, _ in evaluate.FACTORS},
    "transfer_knn_test": ("transfer kNN (%)", 1), "transfer_linear_test": ("transfer linear (%)", 1),
    "final_loss": ("final loss", 3), "steps": ("steps", 0), "train_s": ("train (s)", 0),
}
_PERCENT = ("knn_val", "linear_val", "knn_test", "linear_test", "emb_knn_test", "emb_linear_test",
            "finetune_val", "finetune_test", "end_to_end_test", "transfer_knn_test", "transfer_linear_test")


@dataclass
class Run:
    """One trained and evaluated configuration.

    ``metrics`` holds :func:`cookbook.evaluate.evaluate_model`'s floats
    (``knn_val``, ``knn_test``, ``linear_test``, ``alpha`` of the
    representation; ``rankme`` of the embedding, ``rankme_rep`` of the
    representation), plus ``emb_knn_test`` and ``emb_linear_test`` for the
    projector's output when :func:`run` was asked for them, and
    ``finetune_test`` and ``finetune_val`` when it was asked to fine-tune,
    ``lidar`` and ``lidar_s`` when it was asked for LiDAR, and
    ``factor_<name>`` after :func:`add_factor_scores`.
    ``setting`` is the
    value the study varies (a number or a label), ``seed`` the training seed,
    ``seconds`` the training wall time and ``eval_seconds`` the evaluation's.
    """

    name: str
    setting: object
    method: torch.nn.Module
    history: History
    metrics: dict = field(default_factory=dict)
    eval_seconds: float = 0.0
    seed: int = 0

    @property
    def seconds(self) -> float:
        return self.history.wall_time_s

    def as_setting(self, setting) -> "Run":
        """The same trained run under another ``setting`` label, for another
        study that it also belongs to (e.g. the baseline in every sweep). The
        model, history and metrics are shared, not copied."""
        return replace(self, setting=setting)

    def row(self) -> dict:
        """A flat dict for a table: name, setting, the metrics, steps, final loss, seconds."""
        return {"run": self.name, "setting": self.setting, "seed": self.seed, **self.metrics,
                "steps": self.history.steps,
                "final_loss": self.history.final_loss, "train_s": self.seconds, "eval_s": self.eval_seconds}


def run(name: str, method, dataset, *, setting=None, embedding: bool = False, log: bool = True,
        fine_tune: dict | None = None, lidar: dict | None = None, factors: bool = False, transfer=None,
        **fit_options) -> Run:
    """Trains ``method`` on ``dataset`` with ``fit(method, dataset, **fit_options)``
    and evaluates it.

    ``embedding=True`` also scores the projector's output with kNN and the
    linear probe (``emb_knn_test``, ``emb_linear_test``): the guillotine
    comparison of backbone against projector. ``fine_tune`` (keyword
    arguments of :func:`cookbook.evaluate.fine_tune`, e.g.
    ``dict(labelled_fraction=0.1, steps=300)``) also fine-tunes a copy of the
    backbone, seeded like the run, and scores it on the test split
    (``finetune_test``); ``"split": "both"`` among them fine-tunes a second
    copy scored on the validation split (``finetune_val``, to choose by).
    Each fine-tune costs about ``steps`` supervised steps. ``lidar`` (e.g.
    ``dict(n_images=500, n_views=8)``; also ``view``, ``split``,
    ``batch_size``, ``delta``, ``eps``: see :func:`_lidar`) also measures
    LiDAR on the embedding, with views drawn like the run's first view and
    seeded like the run (``lidar``, and its seconds ``lidar_s``, features
    included). ``factors=True`` adds the nuisance factors' R²
    (:func:`add_factor_scores`) and ``transfer`` (another
    :class:`cookbook.data.Dataset`) the probes on it
    (:func:`add_transfer_scores`), so that a worker of :func:`run_recipes`
    scores its own run; both are checked before training. Progress bars are
    off; with ``log`` one line per run is printed.
    """
    if lidar is not None:
        _check_lidar_options(lidar)  # before training, not after
    if factors:
        _check_factors(dataset)
    if transfer is not None:
        _check_transfer([method], transfer)
    fit_options.setdefault("progress", False)
    fit_options.setdefault("log", False)
    history = fit(method, dataset, **fit_options)
    start = time.perf_counter()
    scores = evaluate.evaluate_model(method, dataset)
    if embedding:
        train_e, test_e = (evaluate.features(method, dataset, split, "embedding") for split in ("train", "test"))
        scores["emb_knn_test"] = evaluate.knn_accuracy(train_e, dataset.train_y, test_e, dataset.test_y)
        scores["emb_linear_test"] = evaluate.linear_probe(train_e, dataset.train_y, test_e, dataset.test_y)
    if fine_tune is not None:
        scores.update(_fine_tuned(method.backbone, dataset, fine_tune, fit_options.get("seed", 0),
                                  fit_options.get("device")))
    if lidar is not None:
        scores.update(_lidar(method, dataset, lidar, fit_options.get("views"), fit_options.get("seed", 0)))
    result = Run(name, name if setting is None else setting, method, history, scores,
                 seed=fit_options.get("seed", 0))
    if factors:
        add_factor_scores([result], dataset)
    if transfer is not None:
        add_transfer_scores([result], transfer)
    result.eval_seconds = time.perf_counter() - start
    if log:
        _print_run(result)
    return result


def _fine_tuned(backbone, dataset, options: dict, seed: int, device) -> dict:
    """``finetune_test`` (and ``finetune_val``) of ``backbone`` (see :func:`run`)."""
    options = {"seed": seed, "device": device, **options}
    split = options.pop("split", "test")
    if split not in ("test", "val", "both"):
        raise ValueError(f"fine_tune's split must be 'test', 'val' or 'both', got {split!r}")
    splits = ("test", "val") if split == "both" else (split,)
    return {f"finetune_{s}": evaluate.fine_tune(backbone, dataset, split=s, **options) for s in splits}


_LIDAR_OPTIONS = ("n_images", "n_views", "view", "split", "delta", "eps", "batch_size")


def _check_lidar_options(options) -> None:
    """ValueError unless ``options`` is a dict of :data:`_LIDAR_OPTIONS` whose ``view`` (if any) is a ViewSpec."""
    if not isinstance(options, dict):
        raise ValueError(f"lidar must be a dict of options such as dict(n_images=500, n_views=8), "
                         f"got {type(options).__name__}")
    unknown = sorted(set(options) - set(_LIDAR_OPTIONS))
    if unknown:
        raise ValueError(f"unknown lidar options {unknown}; choose from {', '.join(_LIDAR_OPTIONS)}")
    if "view" in options and not isinstance(options["view"], augment.ViewSpec):
        raise ValueError(f"lidar's view must be a cookbook.augment.ViewSpec (e.g. views.specs[0]), "
                         f"got {type(options['view']).__name__}")


def _lidar(method, dataset, options: dict, views, seed: int) -> dict:
    """``lidar`` and ``lidar_s`` of ``method``'s embedding (see :func:`run`).

    ``options``: ``n_images`` and ``n_views`` (default 1,000 and 8) of
    :func:`cookbook.evaluate.view_features`, ``split`` and ``batch_size``
    likewise, ``delta`` and ``eps`` of :func:`cookbook.metrics.lidar`, and
    ``view``, the :class:`cookbook.augment.ViewSpec` the views are drawn
    with; by default the first spec of ``views`` (the run's augmentations),
    or of ``method.default_views`` when the run had none. Images and views
    are drawn with ``seed``. Thilak et al. (ICLR 2024) use 1,000 images and
    50 views; the cost is ``n_images · n_views`` forward passes plus the
    metric's O(N·Q·K²) (K the embedding's size). A fully collapsed
    embedding, for which LiDAR is undefined, gets NaN with a warning.
    """
    options = dict(options)
    view = options.pop("view", None) or (views or method.default_views(dataset.image_size)).specs[0]
    metric_options = {key: options.pop(key) for key in ("delta", "eps") if key in options}
    start = time.perf_counter()
    views_z = evaluate.view_features(method, dataset, view, which="embedding", seed=seed, **options)
    try:
        value = metrics.lidar(views_z, **metric_options)
    except ValueError as error:
        if "collapse" not in str(error):
            raise
        warnings.warn(f"LiDAR set to NaN: {error}", stacklevel=3)
        value = float("nan")
    return {"lidar": float(value), "lidar_s": time.perf_counter() - start}


def _print_run(run: Run) -> None:
    scores = run.metrics
    print(f"{run.name:<24} kNN val {scores['knn_val']:.3f}  kNN test {scores['knn_test']:.3f}  "
          f"linear {scores['linear_test']:.3f}  RankMe {scores['rankme']:6.1f}  alpha {scores['alpha']:.2f}  "
          + (f"  LiDAR {scores['lidar']:6.1f}" if "lidar" in scores else "")
          + (f"  fine-tune {scores['finetune_test']:.3f}" if "finetune_test" in scores else "")
          + f"  train {run.seconds:5.1f} s", flush=True)


def run_recipe(recipe, dataset, *, seed: int = 0, setting=None, name: str | None = None,
               embedding: bool = False, device=None, log: bool = True, eval_every: int = 0,
               eval_rankme: bool = False, fine_tune: dict | None = None, lidar: dict | None = None,
               factors: bool = False, transfer=None, precision: str = "auto", **method_options) -> Run:
    """Trains a fresh model with a :class:`cookbook.recipes.Recipe` and evaluates it (:func:`run`).

    ``torch.manual_seed(seed)`` comes first, so every run of one architecture
    and seed starts from the same weights; ``seed`` also drives the batch
    order and the augmentations. ``method_options`` override the recipe's
    method options (``temperature=0.2``); change anything else with
    ``recipe.with_(steps=..., lr=..., views=...)``. The model is built for
    ``dataset``'s image size. ``eval_every`` and ``eval_rankme`` go to
    :func:`cookbook.train.fit`: a learning curve in ``run.history.epochs``
    (kNN on a validation split every k epochs, and RankMe if asked).
    ``fine_tune`` goes to :func:`run` (masked image modeling's evaluation),
    and so do ``lidar`` (LiDAR's views are drawn with the first spec of the
    recipe's views unless it names a ``view``), ``factors`` and ``transfer``.
    ``precision`` goes to :func:`cookbook.train.fit`: "bf16" on a CPU with bf16
    hardware trains 1.2-1.3x faster at the same kNN (SimCLR, VICReg and SimSiam
    checked, ``benchmarks/README.md``); the committed chapters ran in fp32.
    """
    torch.manual_seed(seed)
    method = recipe.build(dataset.image_size, **method_options)
    views = recipe.make_views(method, dataset.image_size)
    return run(name or recipe.method, method, dataset, setting=setting, embedding=embedding, log=log,
               fine_tune=fine_tune, lidar=lidar, factors=factors, transfer=transfer, views=views, device=device,
               seed=seed, eval_every=eval_every, eval_rankme=eval_rankme, precision=precision,
               **recipe.fit_options())


_WORKER_DATASET = None


def _start_worker(dataset, threads: int) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    torch.set_num_threads(threads)
    warnings.formatwarning = _warning_without_path  # a notebook shows workers' stderr


def _warning_without_path(message, category, filename, lineno, line=None) -> str:
    """A warning as one line, ``Category: message``: without the source file's
    absolute path, which a committed notebook must never show."""
    return f"{category.__name__}: {message}\n"


def _in_workers(task, jobs: list, dataset, workers: int):
    """``task(job, dataset)`` for each job in ``workers`` spawned processes of
    ``cpu_count // workers`` torch threads each; yields the results in the
    jobs' order. A worker that dies ends the loop with ``BrokenProcessPool``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or workers) // workers)
    context = multiprocessing.get_context("spawn")  # a fork would copy torch's thread pools
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_start_worker,
                             initargs=(dataset, threads)) as pool:
        yield from pool.map(_call_in_worker, [(task, job) for job in jobs])


def _call_in_worker(task_and_job):
    task, job = task_and_job
    return task(job, _WORKER_DATASET)


def _run_job(job: dict, dataset) -> Run:
    job = dict(job)
    result = run_recipe(job.pop("recipe"), dataset, log=False, **job)
    result.method.cpu()  # it comes back to the parent by pickling
    return result


def run_recipes(jobs: list[dict], dataset, *, workers: int = 1, log: bool = True) -> list[Run]:
    """``[run_recipe(dataset=dataset, **job) for job in jobs]``, ``workers`` runs at a time.

    Each job is a dict of :func:`run_recipe`'s keyword arguments with its
    ``recipe``: ``dict(recipe=r, seed=0, setting="no variance", mu=0.0)``.
    With ``workers > 1`` the jobs go to that many processes, each with
    ``cpu_count // workers`` torch threads, and their runs come back in the
    jobs' order, trained models included (on the CPU). On 2 CPU cores two
    one-thread runs at once ran at 0.43 and 0.44 s a step each against 0.38 s
    for one two-thread run (SimCLR, width 16, batch 256; 1.75× the
    throughput: ``python benchmarks/parallel_runs.py``), so a study takes
    a little over half the time, and a run's ``seconds`` is its own
    one-thread wall time, more than a lone run's. One-thread kernels round
    differently from two-thread ones, so the same job's numbers differ
    slightly between the two ways. On one GPU keep
    ``workers=1``.

    A worker that dies (killed, out of memory) ends the call with
    ``BrokenProcessPool`` instead of leaving it waiting.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    for i, job in enumerate(jobs):
        if "recipe" not in job:
            raise ValueError(f"job {i} has no 'recipe': each job is a dict of run_recipe's keyword "
                             f"arguments with its recipe, e.g. dict(recipe=r, seed=0)")
        if job.get("lidar") is not None:  # every job's options checked before any job trains
            _check_lidar_options(job["lidar"])
        if job.get("factors"):
            _check_factors(dataset)
        if job.get("transfer") is not None:
            _check_transfer([], job["transfer"])
    if workers == 1 or len(jobs) <= 1:
        return [run_recipe(dataset=dataset, log=log, **job) for job in jobs]
    runs = []
    for result in _in_workers(_run_job, jobs, dataset, workers):
        if log:
            _print_run(result)
        runs.append(result)
    return runs


def references(recipe, dataset, *, seeds=(0,), ceiling_steps: int | None = None, device=None,
               log: bool = True, workers: int = 1, fine_tune: dict | None = None) -> list[Run]:
    """The floors and the ceiling every accuracy is read against, as runs.

    For each seed, three runs evaluated like any trained model
    (:func:`cookbook.evaluate.evaluate_model`), with settings named
    ``"raw pixels"`` (the flattened images themselves), ``"untrained"``
    (``recipe``'s network at its seeded initial weights) and
    ``"supervised"`` (that network trained end to end with cross-entropy on
    every training label, :func:`cookbook.evaluate.fine_tune` with
    ``labelled_fraction=1`` for ``ceiling_steps`` steps, default the recipe's,
    of the recipe's batch size; then frozen and probed like the others). The
    supervised runs also hold ``end_to_end_test``: the test accuracy of the
    network's own classifier. Training a ceiling costs about half an SSL run
    of the same steps (one view per image). With ``workers > 1`` the seeds
    run that many at a time, as in :func:`run_recipes`. With ``fine_tune``
    (as in :func:`run`) the untrained run is also fine-tuned: that is the
    network trained *from scratch* with those labels and steps, the baseline
    that masked image modeling's fine-tune must beat.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    jobs = [dict(recipe=recipe, seed=seed, steps=ceiling_steps or recipe.steps, device=device,
                 fine_tune=fine_tune) for seed in seeds]
    if workers == 1 or len(jobs) <= 1:
        per_seed = (_references_of_seed(job, dataset) for job in jobs)
    else:
        per_seed = _in_workers(_references_of_seed_on_cpu, jobs, dataset, workers)
    runs = []
    for seed_runs in per_seed:
        for r in seed_runs:
            runs.append(r)
            if log:
                print(f"{r.setting:<12} seed {r.seed}  kNN test {r.metrics['knn_test']:.3f}  linear "
                      f"{r.metrics['linear_test']:.3f}  RankMe {r.metrics['rankme']:6.1f}  alpha "
                      f"{r.metrics['alpha']:.2f}", flush=True)
    return runs


def _references_of_seed(job: dict, dataset) -> list[Run]:
    """The raw-pixel, untrained and supervised runs of one seed (:func:`references`)."""
    from torch import nn

    from cookbook.methods import Method

    recipe, seed, steps, device = job["recipe"], job["seed"], job["steps"], job["device"]
    torch.manual_seed(seed)
    untrained = recipe.build(dataset.image_size).to(device)
    start = time.perf_counter()
    accuracy, model = evaluate.fine_tune(untrained.backbone, dataset, labelled_fraction=1.0, steps=steps,
                                         batch_size=recipe.batch_size, seed=seed, device=device,
                                         return_model=True)
    seconds = time.perf_counter() - start
    supervised = Method(model[0])
    runs = []
    for setting, method, wall in (("raw pixels", Method(nn.Flatten()), 0.0), ("untrained", untrained, 0.0),
                                  ("supervised", supervised, seconds)):
        scores = evaluate.evaluate_model(method, dataset, seed=seed)
        if setting == "supervised":
            scores["end_to_end_test"] = accuracy
        if setting == "untrained" and job.get("fine_tune") is not None:
            scores.update(_fine_tuned(untrained.backbone, dataset, job["fine_tune"], seed, device))
        history = History(steps=steps if setting == "supervised" else 0, wall_time_s=wall)
        runs.append(Run(setting, setting, method, history, scores, seed=seed))
    return runs


def _references_of_seed_on_cpu(job: dict, dataset) -> list[Run]:
    runs = _references_of_seed(job, dataset)
    for r in runs:
        r.method.cpu()  # they come back to the parent by pickling
    return runs


def table_rows(runs: list[Run]) -> list[dict]:
    """``[r.row() for r in runs]``: feed it to ``pandas.DataFrame``."""
    return [r.row() for r in runs]


def by_setting(runs: list[Run]) -> dict:
    """``{setting: [runs of that setting]}``, settings in their first-seen order."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r.setting, []).append(r)
    return groups


def _value(run: Run, key: str) -> float:
    row = run.row()
    if key not in row:
        raise ValueError(f"runs have no {key!r}; they have {', '.join(map(str, row))}")
    return float(row[key])


def mean_sd(runs: list[Run], key: str) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n) of ``key`` over ``runs`` (e.g. the
    seeds of one setting), in the metric's own units (accuracies as fractions).
    The sd of a single run is NaN: one seed says nothing about the spread."""
    if not runs:
        raise ValueError("mean_sd needs at least one run")
    return (*_mean_sd_of([_value(r, key) for r in runs]), len(runs))


def _format(mean: float, sd: float, decimals: int) -> str:
    text = f"{mean:.{decimals}f}"
    return text if math.isnan(sd) else f"{text} ± {sd:.{decimals}f}"


def table(runs: list[Run], columns=("knn_val", "knn_test", "linear_test", "rankme", "alpha", "train_s"),
          index: str = "setting"):
    """A pandas DataFrame of ``runs`` with the ``columns`` of :data:`COLUMNS`,
    accuracies in percent.

    With one run per setting: one row each, indexed by ``index`` ("setting"
    or "run"), every value rounded to the precision a single run supports.
    With several runs of a setting (its seeds, ``index="setting"``): one row
    per setting, each cell the text "mean ± sd" over the seeds (sample sd),
    and a first column "seeds" with their number; a setting whose runs lack
    a column (the raw pixels have no fine-tune) shows an empty cell. The
    index's name is put in the corner (``rename_axis``), so pandas prints no
    empty header row.
    """
    import pandas as pd

    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; choose from {', '.join(COLUMNS)}")
    if not runs:
        raise ValueError("table needs at least one run")
    groups = by_setting(runs) if index == "setting" else {r.name: [r] for r in runs}
    if all(len(g) == 1 for g in groups.values()):
        frame = pd.DataFrame(table_rows(runs)).set_index(index)
        frame = frame[list(columns)].astype(float)
        for key in columns:
            decimals = COLUMNS[key][1]
            values = frame[key] * (100 if key in _PERCENT else 1)
            frame[key] = values.round(decimals).astype(int) if decimals == 0 else values.round(decimals)
        frame = frame.rename(columns={key: COLUMNS[key][0] for key in columns})
    else:
        rows = {}
        for setting, group in groups.items():
            row = {"seeds": len(group)}
            for key in columns:
                if not all(key in r.row() for r in group):  # e.g. no fine-tune of raw pixels
                    row[COLUMNS[key][0]] = ""
                    continue
                mean, sd, _ = mean_sd(group, key)
                scale = 100 if key in _PERCENT else 1
                row[COLUMNS[key][0]] = _format(scale * mean, scale * sd, COLUMNS[key][1])
            rows[setting] = row
        frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame.rename_axis(index=None, columns=index)


def factor_table(groups: dict, dataset, factors=evaluate.FACTORS):
    """What each model kept of the nuisance factors: a DataFrame with one row
    per ``{name: runs}`` of ``groups`` and, as "mean ± sd" over the runs
    (seeds), the test R² of a ridge probe for each factor
    (:func:`cookbook.evaluate.factor_probes`) and the linear probe's test
    accuracy on the class ("class (%)"). The R² values are kept in each run's
    metrics (:func:`add_factor_scores`), so a run is probed once."""
    import pandas as pd

    add_factor_scores([r for runs in groups.values() for r in runs], dataset, factors)
    rows = {}
    for name, runs in groups.items():
        row = {f"{factor} R²": _format(*_mean_sd_of([r.metrics[f"factor_{factor}"] for r in runs]), 2)
               for factor, _ in factors}
        row["class (%)"] = _format(*[100 * v for v in _mean_sd_of([r.metrics["linear_test"] for r in runs])], 1)
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(index=None, columns="model")


def add_factor_scores(runs: list[Run], dataset, factors=evaluate.FACTORS) -> None:
    """Adds to each run's metrics, in place, the test R² of a ridge probe for
    each nuisance factor of ``factors`` (``(name, circular)`` pairs, default
    :data:`cookbook.evaluate.FACTORS`: hue, x, y, scale), read from the
    frozen representation (:func:`cookbook.evaluate.factor_probes`, seeded by
    the run's seed), as ``"factor_<name>"`` (e.g. ``factor_hue``, in [-∞, 1],
    1 for a factor the features determine linearly).

    These are downstream tasks other than the class, to report against
    (``selection_table(studies, report="factor_hue")``, ``spearman_ci(runs,
    "rankme", "factor_x")``) or show (``table(runs, columns=("factor_hue",))``).
    A run that holds these scores already (probed by :func:`factor_table`, or
    sharing its metrics with another through :meth:`Run.as_setting`) is not
    probed again. Cost per run: forward passes over the train and test splits
    and one ridge fit per factor (O(N·D² + D³)). ValueError when ``dataset``
    has no factors (CIFAR-10: only ``shapes`` records them).
    """
    _check_factors(dataset)
    keys = [f"factor_{name}" for name, _ in factors]
    for r in runs:
        if all(key in r.metrics for key in keys):  # probed already, e.g. shared by as_setting
            continue
        probes = evaluate.factor_probes(r.method, dataset, factors, seed=r.seed)
        r.metrics.update({f"factor_{name}": float(value) for name, value in probes.items()})


def add_transfer_scores(runs: list[Run], dataset) -> None:
    """Adds to each run's metrics, in place, how its frozen representation
    does on another labelled ``dataset`` (a :class:`cookbook.data.Dataset`
    the runs were not trained on, e.g. CIFAR-10 for models of ``shapes``):
    ``transfer_knn_test`` and ``transfer_linear_test``, the kNN and linear
    probe (:func:`cookbook.evaluate.knn_accuracy`,
    :func:`cookbook.evaluate.linear_probe`, seeded by the run's seed) fitted
    on ``dataset``'s train split and scored on its test split, fractions in
    [0, 1]. The probe's hyper-parameters are chosen on a validation split of
    ``dataset``'s train split, as always.

    This is the other-dataset column of a selection: had a criterion chosen
    on the training data, would its pick transfer (``selection_table(studies,
    report="transfer_linear_test")``)? Runs already holding both scores
    (e.g. sharing metrics through :meth:`Run.as_setting`) are not scored
    again; all runs of one call are scored on the same ``dataset``, so do not
    mix calls with different datasets in one study. Load ``dataset`` at the
    image size the runs were trained at: a ResNet would take any size, but
    its features would not be the ones it learnt; a ViT, built for one size,
    gets a ValueError before any work. Cost per run: forward passes over ``dataset``'s train and test splits, a kNN and a
    linear probe (see :func:`cookbook.evaluate.linear_probe`).
    """
    keys = ("transfer_knn_test", "transfer_linear_test")
    _check_transfer([r.method for r in runs], dataset)
    for r in runs:
        if all(key in r.metrics for key in keys):
            continue
        train_f, test_f = (evaluate.features(r.method, dataset, split) for split in ("train", "test"))
        r.metrics["transfer_knn_test"] = float(evaluate.knn_accuracy(train_f, dataset.train_y, test_f,
                                                                     dataset.test_y))
        r.metrics["transfer_linear_test"] = float(evaluate.linear_probe(train_f, dataset.train_y, test_f,
                                                                        dataset.test_y, seed=r.seed))


def _check_factors(dataset) -> None:
    if not dataset.factors:
        raise ValueError(f"dataset {dataset.name!r} records no factors of variation, so there is no downstream "
                         f"task but the class to score; add_factor_scores needs a dataset such as 'shapes'")


def _check_transfer(models: list, dataset) -> None:
    """ValueError unless ``dataset`` is a labelled dataset whose images every model can take."""
    if not all(hasattr(dataset, key) for key in ("train_x", "train_y", "test_x", "test_y")):
        raise ValueError(f"transfer must be a cookbook.data.Dataset (e.g. data.load('cifar10', image_size=16)), "
                         f"got {type(dataset).__name__}")
    size = dataset.image_size
    for model in models:
        vit = getattr(getattr(model, "backbone", None), "vit", None)
        expected = getattr(vit, "image_size", None)  # only a ViT is built for one size
        if expected is not None and expected != size:
            raise ValueError(f"a network built for {expected}-pixel images cannot read {dataset.name!r}, whose "
                             f"images are {size} pixels; load it with image_size={expected}")


def _check_has(runs: list[Run], key: str) -> None:
    """ValueError naming the runs that lack the metric ``key``, and how to get it."""
    missing = [r.name for r in runs if key not in r.row()]
    if missing:
        how = ("add it with add_factor_scores" if key.startswith("factor_") else
               "add it with add_transfer_scores" if key.startswith("transfer_") else
               "train them with lidar=dict(...)" if key == "lidar" else
               "train them with fine_tune=dict(...)" if key.startswith("finetune_") else
               "evaluate them with cookbook.evaluate.evaluate_model")
        raise ValueError(f"runs {missing} have no {key!r} metric; {how}")


def _oriented(value: float, criterion: str) -> float:
    """``value`` of ``criterion`` such that higher is better: α-ReQ's -|α - 1|, the others as they are."""
    return -abs(value - 1.0) if criterion == "alpha" else value


def _score(metrics: dict, criterion: str) -> float:
    value = metrics[criterion]
    return -math.inf if math.isnan(value) else _oriented(value, criterion)


def choose(runs: list[Run], criterion: str) -> Run:
    """The run that ``criterion`` (one of :data:`CRITERIA`) prefers.

    Highest ``linear_val`` / ``knn_val``, highest ``rankme`` / ``rankme_rep`` /
    ``lidar``, or ``alpha`` closest to 1; runs whose criterion is NaN are never chosen
    unless all are. Ties go to the earlier run.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if not runs:
        raise ValueError("choose() needs at least one run")
    _check_has(runs, criterion)
    return max(runs, key=lambda r: _score(r.metrics, criterion))


def selection_table(studies: dict[str, list[Run]], report: str = "linear_test",
                    criteria: tuple[str, ...] = EVALUATED_CRITERIA) -> list[dict]:
    """Had we chosen each study's setting by a criterion, what would we have got?

    A study is a list of runs that differ in one setting, with one run per
    setting and seed. Each seed is a replication of the whole study: within
    the runs of one seed, each criterion of ``criteria`` picks a run
    (:func:`choose`), and its *regret* is the best ``report`` accuracy of that
    seed's runs minus the picked run's. The best is hindsight (it looks at
    the test split); it only measures what a criterion leaves on the table.

    One row per study and criterion: ``picks`` (the setting chosen in each
    seed, in seed order), ``report`` and ``regret`` as (mean, sd) over the
    seeds, ``oracle`` (the best ``report`` of each seed, as (mean, sd) over
    the seeds: what hindsight would have got, the same in every row of a
    study) and ``seeds``. Accuracies are fractions in [0, 1].
    """
    rows = []
    for study, runs in studies.items():
        _check_has(runs, report)
        seeds = sorted({r.seed for r in runs})
        per_seed = {s: [r for r in runs if r.seed == s] for s in seeds}
        best = {s: max(r.metrics[report] for r in per_seed[s]) for s in seeds}
        for criterion in criteria:
            picks, accuracy, regret = [], [], []
            for s in seeds:
                chosen = choose(per_seed[s], criterion)
                picks.append(chosen.setting)
                accuracy.append(chosen.metrics[report])
                regret.append(best[s] - chosen.metrics[report])
            rows.append({"study": study, "chosen by": criterion, "picks": picks, "seeds": len(seeds),
                         report: _mean_sd_of(accuracy), "regret": _mean_sd_of(regret),
                         "oracle": _mean_sd_of(list(best.values()))})
    return rows


def _mean_sd_of(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def spearman(x, y) -> float:
    """Spearman's rank correlation of two sequences; NaN when either is constant
    or shorter than 3."""
    x, y = list(map(float, x)), list(map(float, y))
    if len(x) != len(y):
        raise ValueError(f"spearman: sequences of different lengths {len(x)} and {len(y)}")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def spearman_ci(runs: list[Run], metric: str, report: str = "linear_test", *, n_boot: int = 2000,
                level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's ρ between ``metric`` (a criterion such as ``"rankme"``) and
    ``report`` across the settings of ``runs``, with a bootstrap interval over
    the seeds.

    Each setting (:func:`by_setting`) is summarised by the means over its runs
    (seeds) of ``metric`` and ``report``, and ρ is :func:`spearman` of those
    means. α-ReQ enters as -|α - 1|, the direction :func:`choose` uses, and
    every other metric as it is (higher is better), so a positive ρ always
    means "the criterion orders the settings as the report does", and ρ = 1
    means it ranks them exactly as the report does.

    The interval is a percentile bootstrap at ``level``: each of ``n_boot``
    resamples draws, for every setting independently, as many of its runs as
    it has, with replacement (a run's metric and report stay paired), and
    recomputes the means and ρ. It covers the seed-to-seed variation of
    training (initial weights, batches, augmentations, the seeded evaluation
    subsets) for *these* settings; it does not cover the choice of settings,
    another dataset, budget or architecture. With 3 seeds a setting has only
    10 distinct resamples and the bootstrap understates the spread of such
    small samples: read the interval as a lower bound on the uncertainty (a
    setting with one run adds none). Resamples whose ρ is NaN (constant
    means) are dropped; if all are, the interval is NaN. ρ, and then the
    interval, is NaN with fewer than 3 settings, with constant means, or when
    a run's metric is NaN (an α-ReQ that could not be fitted): drop such
    runs first if that is what you mean.

    Returns ``(rho, low, high)``, each in [-1, 1] or NaN; deterministic for a
    given ``seed``. Cost: O(n_boot · (runs + settings · log settings)).
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need an integer n_boot >= 1 and a level in (0, 1), got {n_boot!r} and {level!r}")
    _check_has(runs, metric)
    _check_has(runs, report)
    nan = float("nan")
    groups = [np.array([[_oriented(_value(r, metric), metric), _value(r, report)] for r in g])
              for g in by_setting(runs).values()]  # one (seeds, 2) array per setting
    means = np.array([g.mean(axis=0) for g in groups]).reshape(-1, 2)
    rho = nan if np.isnan(means).any() else spearman(means[:, 0], means[:, 1])
    if math.isnan(rho):
        return nan, nan, nan
    rng = np.random.default_rng(seed)
    boot = np.stack([g[rng.integers(len(g), size=(n_boot, len(g)))].mean(axis=1) for g in groups], axis=1)
    rhos = _row_spearman(boot[..., 0], boot[..., 1])  # boot: (n_boot, settings, 2)
    rhos = rhos[~np.isnan(rhos)]
    if len(rhos) == 0:
        return rho, nan, nan
    low, high = np.quantile(rhos, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(low), float(high)


def _row_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row of ``x`` with the same row of ``y`` (both (B, S)):
    Pearson's correlation of their ranks (ties averaged, as scipy's); NaN
    where a row is constant."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=1) / np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
