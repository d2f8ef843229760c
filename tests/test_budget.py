"""Tests of cookbook.budget: budget resolution, devices and run cards."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when not installed

from cookbook import budget as budget_mod  # noqa: E402
from cookbook.budget import BUDGETS, RunCard, default_device, resolve_budget  # noqa: E402

# What a committed notebook must not contain (mirrors tests/notebook_checks.py).
LOCAL_PATH = re.compile(r"/home/|/root/|/Users/|/work/|/tmp/|[A-Za-z]:\\Users", re.IGNORECASE)


@pytest.fixture
def no_smoke(monkeypatch):
    monkeypatch.delenv("COOKBOOK_SMOKE", raising=False)


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100 80GB HBM3")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def card(**overrides) -> RunCard:
    kwargs = dict(
        chapter="01_deep_metric_learning",
        budget="cpu",
        device="cpu",
        dataset="shapes",
        train_size=10_000,
        test_size=2_000,
        backbone="ResNet-18 width 16",
        epochs=20,
    )
    kwargs.update(overrides)
    return RunCard(**kwargs)


# ------------------------------------------------------------------ resolve_budget
def test_budget_names():
    assert BUDGETS == ("smoke", "cpu", "gpu", "auto")


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_explicit_budgets_are_kept(no_smoke, no_cuda, name):
    assert resolve_budget(name) == name


def test_auto_is_gpu_with_cuda(no_smoke, cuda):
    assert resolve_budget("auto") == "gpu"
    assert resolve_budget() == "gpu"


def test_auto_is_cpu_without_cuda(no_smoke, no_cuda):
    assert resolve_budget("auto") == "cpu"
    assert resolve_budget() == "cpu"


@pytest.mark.parametrize("name,expected", [("CPU", "cpu"), ("Gpu", "gpu"), (" smoke ", "smoke"), ("AUTO", "cpu")])
def test_case_insensitive(no_smoke, no_cuda, name, expected):
    assert resolve_budget(name) == expected


@pytest.mark.parametrize("value", ["1", "true", "YES"])
@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu", "auto"])
def test_smoke_env_forces_smoke(monkeypatch, cuda, value, name):
    monkeypatch.setenv("COOKBOOK_SMOKE", value)
    assert resolve_budget(name) == "smoke"


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_smoke_env_off(monkeypatch, cuda, value):
    monkeypatch.setenv("COOKBOOK_SMOKE", value)
    assert resolve_budget("cpu") == "cpu"
    assert resolve_budget("auto") == "gpu"


@pytest.mark.parametrize("bad", ["big", "", "tpu", None, 3])
def test_unknown_budget_names_valid_values(no_smoke, bad):
    with pytest.raises(ValueError) as info:
        resolve_budget(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in BUDGETS:
        assert repr(name) in message


def test_unknown_budget_rejected_even_in_smoke_mode(monkeypatch):
    monkeypatch.setenv("COOKBOOK_SMOKE", "1")
    with pytest.raises(ValueError):
        resolve_budget("gpus")


# ------------------------------------------------------------------ default_device
@pytest.mark.parametrize("name", ["smoke", "cpu"])
def test_cpu_budgets_run_on_cpu(cuda, name):
    assert default_device(name) == torch.device("cpu")


def test_gpu_budget_runs_on_cuda(cuda):
    assert default_device("gpu").type == "cuda"
    assert default_device("auto").type == "cuda"


def test_auto_device_without_cuda(no_cuda):
    assert default_device("auto") == torch.device("cpu")


def test_gpu_budget_without_cuda_gives_advice(no_cuda):
    with pytest.raises(RuntimeError) as info:
        default_device("gpu")
    message = str(info.value)
    assert "cpu" in message and "Colab" in message


def test_default_device_rejects_unknown():
    with pytest.raises(ValueError):
        default_device("fast")


# ------------------------------------------------------------------ RunCard
def test_start_prints_card(capsys):
    returned = card().start()
    out = capsys.readouterr().out
    assert isinstance(returned, RunCard)
    lines = out.splitlines()
    assert lines[0].startswith("=== run card: 01_deep_metric_learning")
    assert "budget: cpu" in lines
    assert f"device: cpu ({torch.get_num_threads()} threads)" in lines
    assert "dataset: shapes (train 10,000 / test 2,000)" in lines
    assert "backbone: ResNet-18 width 16" in lines
    assert "epochs: 20" in lines
    versions = next(line for line in lines if line.startswith("versions: "))
    for package in ("python", "torch", "torchvision", "lightly", "cookbook"):
        assert f"{package} " in versions
    assert f"torch {torch.__version__}" in versions
    assert re.search(r"^started: \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$", out, re.MULTILINE)
    assert "wall time" not in out


def test_finish_prints_wall_time_and_returns_dict(capsys, monkeypatch):
    clock = iter([100.0, 100.0 + 12 * 60 + 31.2])
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: next(clock))
    c = card(batch_size=256).start()
    capsys.readouterr()
    result = c.finish()
    out = capsys.readouterr().out
    assert "wall time: 12 min 31 s" in out.splitlines()
    assert "budget: cpu" in out and "batch_size: 256" in out
    assert result["wall_time"] == "12 min 31 s"
    assert result["wall_time_s"] == pytest.approx(751.2)
    assert result["budget"] == "cpu"
    assert result["train_size"] == 10_000 and result["test_size"] == 2_000
    assert result["batch_size"] == 256
    assert result["versions"]["torch"] == torch.__version__
    assert result == c.as_dict()


def test_wall_time_keeps_two_digit_seconds(capsys, monkeypatch):
    clock = iter([0.0, 7.4])
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: next(clock))
    assert card().start().finish()["wall_time"] == "0 min 07 s"


def test_finish_before_start_is_an_error():
    with pytest.raises(RuntimeError):
        card().finish()


def test_as_dict_before_start():
    d = card().as_dict()
    assert d["started"] is None and d["wall_time"] is None
    assert d["dataset"] == "shapes" and d["epochs"] == 20


def test_cuda_card_names_the_gpu(cuda, capsys):
    card(budget="gpu", device=torch.device("cuda"), dataset="cifar10").start()
    assert "device: cuda (NVIDIA H100 80GB HBM3)" in capsys.readouterr().out.splitlines()


def test_card_needs_a_resolved_budget():
    with pytest.raises(ValueError, match="resolve_budget"):
        card(budget="auto")
    with pytest.raises(ValueError):
        card(budget="huge")


def test_card_budget_is_normalised(capsys):
    card(budget="GPU").start()
    assert "budget: gpu" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    "dataset",
    [
        "folder:/home/alice/data/pets",
        "folder:/root/pets",
        "folder:/Users/alice/pets",
        "folder:/work/main/data/pets",
        "folder:/tmp/xyz/pets",
        "folder:C:\\Users\\alice\\pets",
        "folder:~/pets",
    ],
)
def test_card_prints_no_local_paths(capsys, monkeypatch, dataset):
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: next(clock))
    c = card(dataset=dataset, note=dataset, backbone=f"ResNet-18 from {dataset}").start()
    result = c.finish()
    out = capsys.readouterr().out
    assert not LOCAL_PATH.search(out), out
    assert not LOCAL_PATH.search(repr(result)), result
    assert "pets" in out  # the last component survives: the reader still knows which data


def test_card_hides_the_home_directory_and_user(capsys, monkeypatch):
    home = str(Path.home())
    monkeypatch.setattr(budget_mod, "_user_name", lambda: "alice")
    card(dataset="folder:/home/alice", note=home).start()
    out = capsys.readouterr().out
    assert "alice" not in out
    if home not in ("/", ""):
        assert home not in out


def test_card_keeps_relative_paths_and_urls(capsys):
    card(dataset="folder:data/pets", source="https://example.org/a/b", width="16/32").start()
    out = capsys.readouterr().out
    assert "dataset: folder:data/pets (train" in out
    assert "source: https://example.org/a/b" in out
    assert "width: 16/32" in out


def test_card_does_not_print_the_working_directory(capsys):
    card().start()
    out = capsys.readouterr().out
    assert str(Path.cwd()) not in out
    assert not LOCAL_PATH.search(out)
