"""Notebook budgets and run cards.

Every chapter notebook has a ``BUDGET`` parameter. A budget fixes what a run
costs: the dataset, the number of images, the backbone width and the number of
epochs. The chapter chooses the concrete numbers; this module only resolves the
name and describes the run.

=========  ==========================================================
``smoke``  ``shapes``, seconds of CPU; proves that the code runs.
``cpu``    ``shapes`` on the CPU testbed, at most 45 minutes on 2 cores (60
           for a family that needs longer runs, and for chapter 05's 90
           runs); the committed outputs of every chapter come from this
           budget.
``gpu``    CIFAR-10, sized on paper for one GPU; no chapter has timed it yet.
``auto``   ``gpu`` when CUDA is available, ``cpu`` otherwise.
=========  ==========================================================

Setting ``COOKBOOK_SMOKE=1`` in the environment forces ``smoke`` whatever the
notebook asks for; continuous integration uses it to execute every chapter in
seconds.

A :class:`RunCard` records what produced a notebook's outputs (budget, device,
dataset, backbone, epochs, package versions, wall time). Chapters print it at the
start and at the end, so that the rendered book shows it next to the figures.
"""

from __future__ import annotations

import getpass
import os
import platform
import re
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch

__all__ = ["BUDGETS", "resolve_budget", "default_device", "RunCard"]

BUDGETS = ("smoke", "cpu", "gpu", "auto")

#: Budgets a run can actually have once "auto" is resolved.
RESOLVED_BUDGETS = ("smoke", "cpu", "gpu")

SMOKE_ENV = "COOKBOOK_SMOKE"
_TRUE = {"1", "true", "yes", "on"}


def _smoke_forced() -> bool:
    return os.environ.get(SMOKE_ENV, "").strip().lower() in _TRUE


def _normalise(budget: Any) -> str:
    if not isinstance(budget, str) or budget.strip().lower() not in BUDGETS:
        valid = ", ".join(repr(b) for b in BUDGETS)
        raise ValueError(f"unknown budget {budget!r}; valid budgets are {valid}")
    return budget.strip().lower()


def resolve_budget(requested: str = "auto") -> str:
    """Turn a requested budget into the one the run will use.

    * ``COOKBOOK_SMOKE=1`` in the environment forces ``"smoke"`` whatever was
      asked (the request is still checked, so a typo is never hidden).
    * ``"auto"`` becomes ``"gpu"`` when ``torch.cuda.is_available()`` and
      ``"cpu"`` otherwise.
    * ``"smoke"``, ``"cpu"`` and ``"gpu"`` are returned as they are.

    The comparison is case-insensitive. Anything else raises ``ValueError``
    naming the valid values.
    """
    budget = _normalise(requested)
    if _smoke_forced():
        return "smoke"
    if budget == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return budget


def default_device(budget: str) -> torch.device:
    """The device a budget runs on: CUDA for ``"gpu"``, the CPU otherwise.

    ``"auto"`` is accepted and means CUDA when it is available. Asking for
    ``"gpu"`` on a machine without CUDA raises ``RuntimeError`` with advice.
    """
    budget = _normalise(budget)
    if budget == "auto":
        budget = "gpu" if torch.cuda.is_available() else "cpu"
    if budget != "gpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            "budget 'gpu' needs a CUDA GPU, but torch.cuda.is_available() is False. "
            "On Colab choose Runtime > Change runtime type > GPU and run the notebook "
            "again; on a machine without a GPU set BUDGET = 'cpu' (or 'auto')."
        )
    return torch.device("cuda")


# --------------------------------------------------------------------------- run card

# An absolute path: POSIX ("/home/me/x", "~/x") or Windows ("C:\\Users\\me"). A slash
# preceded by a word character ("16/32"), by a dot ("./data") or by another slash
# (the "//" of a URL) is not the start of an absolute path.
_ABS_PATH = re.compile(r"(?:(?<![\w./])/(?![/\s])|~[/\\]|\b[A-Za-z]:\\)[^\s,;'\"()]*")


def _user_name() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return None


def _private_names() -> set[str]:
    """Names that must not appear after scrubbing: the user's and the home directory's."""
    names = {_user_name(), os.path.basename(os.path.expanduser("~").rstrip("/\\"))}
    return {n for n in names if n}


def _scrub(value: Any) -> str:
    """Text of ``value`` with absolute paths reduced to their last component.

    ``/home/me/data/pets`` becomes ``.../pets``; a path whose last component is
    the user's name or the home directory's name becomes ``...``.
    """

    def short(match: re.Match) -> str:
        parts = [p for p in re.split(r"[/\\]", match.group(0)) if p and p != "~"]
        if not parts or parts[-1].endswith(":") or parts[-1] in _private_names():
            return "..."
        return ".../" + parts[-1]

    return _ABS_PATH.sub(short, str(value))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _versions() -> dict[str, str]:
    from cookbook import __version__ as cookbook_version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "lightly": _version("lightly"),
        "cookbook": cookbook_version,
    }


def _describe_device(device: Any) -> str:
    device = torch.device(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        try:
            name = torch.cuda.get_device_name(device)
        except Exception:  # no driver, or a card description asked for on another machine
            name = "unknown GPU"
        return f"cuda ({name})"
    return device.type


def _format_wall_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


def _utc_text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _format_count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else _scrub(value)


class RunCard:
    """What produced a notebook's outputs. Printed at the start and at the end of a chapter.

    >>> card = RunCard("01_deep_metric_learning", budget="cpu", device="cpu",
    ...                dataset="shapes", train_size=10_000, test_size=2_000,
    ...                backbone="ResNet-18 width 16", epochs=20).start()   # doctest: +SKIP
    >>> ...                                                                # doctest: +SKIP
    >>> card.finish()                                                      # doctest: +SKIP

    ``budget`` is the resolved budget (``resolve_budget(BUDGET)``). Extra keyword
    arguments (batch size, learning rate, ...) are printed as further lines. The
    card never prints absolute local paths: any value that holds one is shortened
    to its last component, so a committed notebook does not leak a user's
    directory layout.
    """

    def __init__(
        self,
        chapter: str,
        budget: str,
        device: Any,
        dataset: str,
        train_size: int,
        test_size: int,
        backbone: str,
        epochs: int | str,
        **extra: Any,
    ) -> None:
        budget = _normalise(budget)
        if budget not in RESOLVED_BUDGETS:
            raise ValueError(
                f"a run card needs a resolved budget {RESOLVED_BUDGETS}, got {budget!r}; "
                "pass resolve_budget(BUDGET)"
            )
        self.chapter = _scrub(chapter)
        self.budget = budget
        self.device = torch.device(device)
        self.dataset = _scrub(dataset)
        self.train_size = train_size
        self.test_size = test_size
        self.backbone = _scrub(backbone)
        self.epochs = epochs
        self.extra = {str(k): v for k, v in extra.items()}
        self.versions = _versions()
        self.started: datetime | None = None
        self.finished: datetime | None = None
        self._t0: float | None = None
        self.wall_time_s: float | None = None

    # ------------------------------------------------------------------ public API
    def start(self) -> "RunCard":
        """Record the start time, print the card and return ``self``."""
        self.started = datetime.now(timezone.utc)
        self._t0 = time.perf_counter()
        self.finished = None
        self.wall_time_s = None
        print(self.render(), flush=True)
        return self

    def finish(self) -> dict:
        """Print the card again, now with the wall time, and return it as a dict."""
        if self._t0 is None:
            raise RuntimeError("RunCard.finish() called before RunCard.start()")
        self.wall_time_s = time.perf_counter() - self._t0
        self.finished = datetime.now(timezone.utc)
        print(self.render(), flush=True)
        return self.as_dict()

    def as_dict(self) -> dict:
        """The card as a plain dict (strings and numbers only)."""
        card = {
            "chapter": self.chapter,
            "budget": self.budget,
            "device": _describe_device(self.device),
            "dataset": self.dataset,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "backbone": self.backbone,
            "epochs": self.epochs if isinstance(self.epochs, int) else _scrub(self.epochs),
            "versions": dict(self.versions),
            "started": _utc_text(self.started),
            "finished": _utc_text(self.finished),
            "wall_time_s": None if self.wall_time_s is None else round(self.wall_time_s, 1),
            "wall_time": None if self.wall_time_s is None else _format_wall_time(self.wall_time_s),
        }
        for key, value in self.extra.items():
            card.setdefault(key, value if isinstance(value, (int, float, bool)) else _scrub(value))
        return card

    def render(self) -> str:
        """The card as the plain-text block that :meth:`start` and :meth:`finish` print."""
        versions = ", ".join(f"{name} {v}" for name, v in self.versions.items())
        lines = [
            f"=== run card: {self.chapter} ===",
            f"budget: {self.budget}",
            f"device: {_describe_device(self.device)}",
            f"dataset: {self.dataset} (train {_format_count(self.train_size)}"
            f" / test {_format_count(self.test_size)})",
            f"backbone: {self.backbone}",
            f"epochs: {_scrub(self.epochs)}",
        ]
        lines += [f"{key}: {_scrub(value)}" for key, value in self.extra.items()]
        lines += [f"versions: {versions}", f"started: {_utc_text(self.started) or 'not started'}"]
        if self.wall_time_s is not None:
            lines.append(f"finished: {_utc_text(self.finished)}")
            lines.append(f"wall time: {_format_wall_time(self.wall_time_s)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"RunCard(chapter={self.chapter!r}, budget={self.budget!r}, device={str(self.device)!r})"
