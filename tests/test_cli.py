import json
import subprocess
import sys

import pytest
import torch

from cookbook import cli


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--method", "--dataset", "--epochs", "--out", "--width", "--batch-size", "--optimizer",
                   "--lr", "--lr-rule", "--subset", "--device", "--seed", "--precision", "--compile", "--resume", "--set"):
        assert option in text


def test_set_options_are_parsed():
    assert cli._options(["temperature=0.2", "proj_depth=3", "predictor=false", "name=x"]) == {
        "temperature": 0.2, "proj_depth": 3, "predictor": False, "name": "x"}
    assert cli._options(["proj_hidden=none"]) == {"proj_hidden": None}
    with pytest.raises(cli.UsageError, match="KEY=VALUE"):
        cli._options(["temperature"])


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--method", "nope"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_train_writes_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "cookbook", "train", "--method", "byol", "--epochs", "2",
                          "--subset", "256", "--test-subset", "128", "--width", "4", "--batch-size", "64",
                          "--set", "momentum=0.9", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((out / "metrics.json").read_text())
    assert result["method"] == "byol" and result["options"] == {"momentum": 0.9}
    assert result["history"]["steps"] == 2 * (256 // 64)
    assert 0 <= result["knn_test"] <= 1 and result["rankme"] >= 1
    assert 0 <= result["knn_test_raw_pixels"] <= 1
    assert "kNN (test)" in run.stdout and "RankMe" in run.stdout
    assert f"raw pixels: {100 * result['knn_test_raw_pixels']:.1f} %" in run.stdout
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2


def test_bad_dataset_gives_a_clear_error(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cookbook", "train", "--method", "simclr",
                          "--dataset", "nosuch", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("error:") and "Traceback" not in run.stderr
    assert "shapes" in run.stderr  # the error lists the valid datasets
