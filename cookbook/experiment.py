"""Studies: train a configuration, evaluate it, and choose among configurations.

A chapter's study is a list of runs that differ in one thing (the temperature,
the projector, ...). :func:`run` trains one method with
:func:`cookbook.train.fit` and evaluates it with
:func:`cookbook.evaluate.evaluate_model`; :func:`table_rows` flattens runs into
rows for a table; :func:`choose` picks a run by a criterion, and
:func:`selection_table` asks of a group of studies: had we chosen by RankMe,
by α-ReQ or by validation labels, what test accuracy would we have got?

Criteria (:data:`CRITERIA`):

- ``"knn_val"``: the highest kNN accuracy on a validation split carved from the
  training labels. This is the labelled baseline; it never sees test labels.
- ``"rankme"``: the highest RankMe of the embedding (Garrido et al., 2023);
  ``"rankme_rep"``: of the representation. They differ when the projector
  changes: the embedding's rank is capped by the projector's output size.
- ``"alpha"``: the α-ReQ exponent closest to 1 (Agrawal et al., 2022 find the
  best representations near α = 1; both too flat, α < 1, and too steep decay
  hurt).

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch
from scipy.stats import spearmanr

from cookbook import evaluate
from cookbook.train import History, fit

__all__ = ["CRITERIA", "COLUMNS", "Run", "run", "table", "table_rows", "choose", "selection_table", "spearman"]

CRITERIA = ("knn_val", "rankme", "rankme_rep", "alpha")

#: Column headers of :func:`table`, and how many decimals each keeps.
#: Accuracies are shown in percent.
COLUMNS = {
    "knn_val": ("kNN val (%)", 1), "knn_test": ("kNN test (%)", 1), "linear_test": ("linear test (%)", 1),
    "emb_knn_test": ("kNN test, projector output (%)", 1),
    "emb_linear_test": ("linear test, projector output (%)", 1),
    "rankme": ("RankMe (embedding)", 1), "rankme_rep": ("RankMe (representation)", 1), "alpha": ("α-ReQ", 2),
    "final_loss": ("final loss", 3), "steps": ("steps", 0), "train_s": ("train (s)", 0),
}
_PERCENT = ("knn_val", "knn_test", "linear_test", "emb_knn_test", "emb_linear_test")


@dataclass
class Run:
    """One trained and evaluated configuration.

    ``metrics`` holds :func:`cookbook.evaluate.evaluate_model`'s floats
    (``knn_val``, ``knn_test``, ``linear_test``, ``alpha`` of the
    representation; ``rankme`` of the embedding, ``rankme_rep`` of the
    representation), plus ``emb_knn_test`` and ``emb_linear_test`` for the
    projector's output when :func:`run` was asked for them. ``setting`` is the
    value the study varies (a number or a label), ``seconds`` the training wall
    time and ``eval_seconds`` the evaluation's.
    """

    name: str
    setting: object
    method: torch.nn.Module
    history: History
    metrics: dict = field(default_factory=dict)
    eval_seconds: float = 0.0

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
        return {"run": self.name, "setting": self.setting, **self.metrics, "steps": self.history.steps,
                "final_loss": self.history.final_loss, "train_s": self.seconds, "eval_s": self.eval_seconds}


def run(name: str, method, dataset, *, setting=None, embedding: bool = False, log: bool = True,
        **fit_options) -> Run:
    """Trains ``method`` on ``dataset`` with ``fit(method, dataset, **fit_options)``
    and evaluates it.

    ``embedding=True`` also scores the projector's output with kNN and the
    linear probe (``emb_knn_test``, ``emb_linear_test``): the guillotine
    comparison of backbone against projector. Progress bars are off; with
    ``log`` one line per run is printed.
    """
    fit_options.setdefault("progress", False)
    fit_options.setdefault("log", False)
    history = fit(method, dataset, **fit_options)
    start = time.perf_counter()
    scores = evaluate.evaluate_model(method, dataset)
    if embedding:
        train_e, test_e = (evaluate.features(method, dataset, split, "embedding") for split in ("train", "test"))
        scores["emb_knn_test"] = evaluate.knn_accuracy(train_e, dataset.train_y, test_e, dataset.test_y)
        scores["emb_linear_test"] = evaluate.linear_probe(train_e, dataset.train_y, test_e, dataset.test_y)
    result = Run(name, name if setting is None else setting, method, history, scores,
                 time.perf_counter() - start)
    if log:
        print(f"{name:<24} kNN val {scores['knn_val']:.3f}  kNN test {scores['knn_test']:.3f}  "
              f"linear {scores['linear_test']:.3f}  RankMe {scores['rankme']:6.1f}  alpha {scores['alpha']:.2f}  "
              f"train {history.wall_time_s:5.1f} s", flush=True)
    return result


def table_rows(runs: list[Run]) -> list[dict]:
    """``[r.row() for r in runs]``: feed it to ``pandas.DataFrame``."""
    return [r.row() for r in runs]


def table(runs: list[Run], columns=("knn_val", "knn_test", "linear_test", "rankme", "alpha", "train_s"),
          index: str = "setting"):
    """A pandas DataFrame of ``runs``, one row each, indexed by ``index``
    ("setting" or "run"), with the ``columns`` of :data:`COLUMNS`: accuracies
    in percent and every value rounded to the precision a single run supports."""
    import pandas as pd

    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; choose from {', '.join(COLUMNS)}")
    frame = pd.DataFrame(table_rows(runs)).set_index(index)
    frame = frame[list(columns)].astype(float)
    for key in columns:
        decimals = COLUMNS[key][1]
        values = frame[key] * (100 if key in _PERCENT else 1)
        frame[key] = values.round(decimals).astype(int) if decimals == 0 else values.round(decimals)
    return frame.rename(columns={key: COLUMNS[key][0] for key in columns})


def _score(metrics: dict, criterion: str) -> float:
    value = metrics[criterion]
    if math.isnan(value):
        return -math.inf
    return -abs(value - 1.0) if criterion == "alpha" else value


def choose(runs: list[Run], criterion: str) -> Run:
    """The run that ``criterion`` (one of :data:`CRITERIA`) prefers.

    Highest ``knn_val``, highest ``rankme`` / ``rankme_rep``, or ``alpha``
    closest to 1; runs whose criterion is NaN are never chosen unless all are.
    Ties go to the earlier run.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if not runs:
        raise ValueError("choose() needs at least one run")
    return max(runs, key=lambda r: _score(r.metrics, criterion))


def selection_table(studies: dict[str, list[Run]], report: str = "linear_test") -> list[dict]:
    """For each study and each criterion: the chosen setting and its ``report``
    accuracy, beside the best and the worst ``report`` of the study.

    The best is hindsight (it looks at the test split) and only measures how
    much a criterion leaves on the table; no criterion here sees test labels.
    """
    rows = []
    for study, runs in studies.items():
        values = [r.metrics[report] for r in runs]
        for criterion in CRITERIA:
            chosen = choose(runs, criterion)
            rows.append({"study": study, "chosen by": criterion, "setting": chosen.setting,
                         report: chosen.metrics[report], f"best {report}": max(values),
                         f"worst {report}": min(values)})
    return rows


def spearman(x, y) -> float:
    """Spearman's rank correlation of two sequences; NaN when either is constant
    or shorter than 3."""
    x, y = list(map(float, x)), list(map(float, y))
    if len(x) != len(y):
        raise ValueError(f"spearman: sequences of different lengths {len(x)} and {len(y)}")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)
