"""Bad input gets a clear error, never a traceback or a silent wrong result (issue #17).

One test (often parametrised) per failure class. CLI cases run in-process through
``cli.main`` and assert the exit code and the message; cases that must fail before
any work are run with ``data.load`` replaced by a function that fails the test.
Where training has to start, it uses tiny data (64 train / 32 test images of
16 pixels, ResNet width 2, one epoch).
"""

import math
import os
import pickle
import random
import re

import pytest
import torch

from cookbook import cli, data, evaluate, methods, models
from cookbook.train import CHECKPOINT_NAME, CheckpointError, fit, load_checkpoint

TINY = ["--dataset", "shapes", "--subset", "64", "--test-subset", "32", "--image-size", "16",
        "--width", "2", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--no-progress"]


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``python -m cookbook train ARGV``, in this process."""
    try:
        code = cli.main(["train", *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the CLI starts loading data: the error had to come first."""
    def load(*args, **kwargs):
        raise AssertionError("data.load was called before the bad option was refused")

    monkeypatch.setattr(data, "load", load)


def refused(capsys, tmp_path, *argv, out=None):
    """Runs argv (with a fresh --out unless given) and returns the error message; asserts exit 2."""
    out_args = [] if any(a == "--out" for a in argv) else ["--out", str(out or tmp_path / "run")]
    code, _, err = run(capsys, *argv, *out_args)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run: its folder (checkpoint.pt and metrics.json)."""
    out = tmp_path_factory.mktemp("finished")
    assert cli.main(["train", "--method", "simclr", *TINY, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- 1. option ranges, refused up front

@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size must be >= 2"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
    (["--batch-size", "-8"], "--batch-size must be >= 2"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--width", "0"], "--width must be >= 1 (channels), got 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lr", "-0.1"], "--lr must be a finite number > 0"),
    (["--weight-decay=-1e-4"], "--weight-decay must be a finite number >= 0, got -0.0001"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["--subset", "0"], "--subset must be >= 1 (images), got 0"),
    (["--test-subset", "-5"], "--test-subset must be >= 1 (images), got -5"),
    (["--image-size", "4"], "--image-size must be >= 8 (pixels), got 4"),
    (["--seed", "-1"], "--seed must be from 0 to 4294967295, got -1"),
    (["--seed", str(2**64)], "--seed must be from 0 to 4294967295"),
    (["--eval-every", "-1"], "--eval-every must be >= 0 (0 = never), got -1"),
    (["--checkpoint-every", "-2"], "--checkpoint-every must be >= 0"),
    (["--subset", "64", "--batch-size", "128"], "--batch-size 128 is larger than the train split (64 images)"),
    (["--batch-size", "20000"], "larger than the train split (10000 images)"),  # all of shapes
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "5", "--epochs", "1"], "give one run length, not both"),
])
def test_option_out_of_range_is_refused_before_any_work(capsys, tmp_path, no_work, argv, message):
    err = refused(capsys, tmp_path, "--method", "simclr", "--device", "cpu", *argv)
    assert message in err
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("argv, message", [
    (["--method", "nope"], "invalid choice: 'nope'"),
    (["--method", "simclr", "--epochs", "two"], "invalid int value: 'two'"),
    (["--method", "simclr", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    ([], "the following arguments are required: --method"),
])
def test_argparse_errors_exit_2_with_usage(capsys, tmp_path, no_work, argv, message):
    code, _, err = run(capsys, *argv, "--out", str(tmp_path))
    assert code == 2 and message in err and "usage:" in err and "Traceback" not in err


# ---------------------------------------------------------------- 2. method options (--set)

@pytest.mark.parametrize("method, setting, message", [
    ("simclr", "tempurature=0.2", "simclr has no option 'tempurature'; did you mean temperature? "
                                  "Its options (with defaults) are: proj_depth=2"),
    ("byol", "queue_size=10", "byol has no option 'queue_size'"),
    ("simclr", "temperature=abc", "--set temperature='abc': simclr's temperature takes a number (default 0.5)"),
    ("simclr", "proj_depth=1.5", "simclr's proj_depth takes an integer (default 2)"),
    ("byol", "predictor=0", "byol's predictor takes true or false (default True)"),
    ("simclr", "proj_hidden=wide", "simclr's proj_hidden takes an integer or none"),
    ("simclr", "temperature=nan", "--set temperature=nan: must be a finite number"),
    ("simclr", "proj_dim=0", "--set proj_dim=0: must be >= 1"),
    ("simclr", "proj_hidden=0", "--set proj_hidden=0: must be >= 1"),  # was silently the default
    ("moco", "queue_size=-1", "--set queue_size=-1: must be >= 0"),
    ("simclr", "temperature", "--set takes KEY=VALUE, got 'temperature'"),
    ("simclr", "=0.2", "--set takes KEY=VALUE"),
])
def test_bad_method_option_is_refused_by_name(capsys, tmp_path, no_work, method, setting, message):
    assert message in refused(capsys, tmp_path, "--method", method, "--set", setting)


def test_method_option_given_twice_is_refused(capsys, tmp_path, no_work):
    err = refused(capsys, tmp_path, "--method", "simclr", "--set", "temperature=0.2", "--set", "temperature=0.5")
    assert "--set temperature is given twice" in err


def test_every_method_accepts_its_own_options(no_work):
    """The signature check must not refuse what the constructors take."""
    import inspect

    for name, cls in methods.METHODS.items():
        for key, p in inspect.signature(cls).parameters.items():
            if key != "backbone" and p.default is not inspect.Parameter.empty:
                cli.check_method_options(name, {key: p.default})


def test_method_option_range_the_constructor_checks_exits_2(capsys, tmp_path):
    err = refused(capsys, tmp_path, "--method", "byol", *TINY, "--set", "momentum=1.5")
    assert "momentum must lie in [0, 1], got 1.5" in err


# ---------------------------------------------------------------- 3. backbone, device, dataset name

@pytest.mark.parametrize("argv, message", [
    (["--backbone", "vit_tiny", "--width", "4"], "--width sets a ResNet's width; vit_tiny has a fixed width"),
    (["--backbone", "vit_tiny", "--image-size", "15"], "vit_tiny cuts 4x4 patches, so pass a multiple of 4"),
    (["--device", "tpu"], "--device: unknown device 'tpu'; use 'cpu', 'cuda' or 'cuda:N'"),
    (["--device", "meta"], "training runs on 'cpu' or 'cuda' only"),
    (["--device", "cpu", "--precision", "fp16"],
     "--precision: precision fp16 on cpu is not supported: fp16 is for CUDA"),
    (["--dataset", "nosuch"], "unknown dataset 'nosuch'; valid names: shapes, cifar10, folder:PATH"),
    (["--dataset", "folder:"], "no such folder or archive"),
    (["--dataset", "folder:/no/such/place"], "--dataset folder:/no/such/place: no such folder or archive"),
])
def test_bad_backbone_device_or_dataset_is_refused_up_front(capsys, tmp_path, no_work, argv, message):
    assert message in refused(capsys, tmp_path, "--method", "simclr", *argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cpu_bf16_is_refused_up_front_where_it_would_be_emulated(capsys, tmp_path, no_work, monkeypatch):
    from cookbook import train

    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    err = refused(capsys, tmp_path, "--method", "simclr", "--device", "cpu", "--precision", "bf16")
    assert "--precision: precision bf16 on this CPU would be emulated" in err and "use fp32" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda(capsys, tmp_path, no_work):
    err = refused(capsys, tmp_path, "--method", "simclr", "--device", "cuda")
    assert "CUDA is not available here; use 'cpu'" in err


# ---------------------------------------------------------------- 4. the output folder

def test_out_naming_an_existing_file(capsys, tmp_path, no_work):
    (tmp_path / "metrics").write_text("not a folder")
    err = refused(capsys, tmp_path, "--method", "simclr", "--out", str(tmp_path / "metrics"))
    assert "--out: the output folder" in err and "is an existing file; pass a folder path" in err


def test_out_below_a_file_cannot_be_created(capsys, tmp_path, no_work):
    (tmp_path / "file").write_text("x")
    err = refused(capsys, tmp_path, "--method", "simclr", "--out", str(tmp_path / "file" / "run"))
    assert "cannot write into the output folder" in err and "pass a folder you can create and write to" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_out_not_writable(capsys, tmp_path, no_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = refused(capsys, tmp_path, "--method", "simclr", "--out", str(locked / "run"))
    assert "cannot write into the output folder" in err


def test_out_whose_checkpoint_path_is_a_folder(capsys, tmp_path, no_work):
    (tmp_path / "run" / CHECKPOINT_NAME).mkdir(parents=True)
    err = refused(capsys, tmp_path, "--method", "simclr")
    assert f"{CHECKPOINT_NAME} is a folder, so no checkpoint can be written there" in err


def test_fit_checks_out_before_training(tmp_path):
    """The API too: an unusable out fails at once, not after the first epoch."""
    ds = data.load("shapes", subset=64, test_subset=32, image_size=16)
    (tmp_path / "file").write_text("x")
    m = methods.SimCLR(models.resnet18(2))
    before = [p.clone() for p in m.parameters()]
    with pytest.raises(ValueError, match="is an existing file"):
        fit(m, ds, epochs=1, batch_size=32, out=tmp_path / "file", progress=False, log=False)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # nothing trained


# ---------------------------------------------------------------- 5. the checkpoint file

def _bad_files(tmp_path):
    files = {"empty": b"", "text": b"hello, not a checkpoint\n", "random": random.Random(0).randbytes(4096)}
    for name, content in files.items():
        (tmp_path / f"{name}.pt").write_bytes(content)
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")  # a torch file, not ours
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"model": object}))  # refused by weights_only
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("missing", "no checkpoint at"),
    ("folder", "is a folder, not a checkpoint file"),
    ("empty", "is empty (0 bytes)"),
    ("text", "is not a checkpoint written by cookbook, or it is truncated or damaged"),
    ("random", "is not a checkpoint written by cookbook, or it is truncated or damaged"),
    ("foreign", "is not a checkpoint written by cookbook (it lacks method, optimizer"),
    ("pickle", "is not a checkpoint written by cookbook, or it is truncated or damaged"),
    ("truncated", "is not a checkpoint written by cookbook, or it is truncated or damaged"),
])
def test_resume_from_a_bad_file_is_refused_before_any_work(capsys, tmp_path, finished, monkeypatch,
                                                           name, message):
    _bad_files(tmp_path)
    whole = (finished / CHECKPOINT_NAME).read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "folder.pt").mkdir()
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("loaded data"))
    err = refused(capsys, tmp_path, "--method", "simclr", *TINY, "--resume", str(tmp_path / f"{name}.pt"))
    assert err.startswith("error: --resume: ") and message in err
    assert len(err) < 600  # one readable paragraph, not a dump


def test_resume_from_a_run_folder_suggests_its_checkpoint(capsys, tmp_path, finished):
    err = refused(capsys, tmp_path, "--method", "simclr", *TINY, "--resume", str(finished))
    assert f"did you mean {finished / CHECKPOINT_NAME}?" in err


# ---------------------------------------------------------------- 6. a resume with changed settings

@pytest.mark.parametrize("change, message", [
    (["--lr", "0.1"], "lr was 0.6, now 0.1"),
    (["--weight-decay", "0.001"], "weight_decay was 0.0005, now 0.001"),
    (["--set", "temperature=0.2"], "method option temperature was 0.5, now 0.2"),
    (["--lr-rule", "sqrt"], "lr_rule was 'linear', now 'sqrt'"),
    (["--optimizer", "adamw"], "optimizer was 'sgd', now 'adamw'"),
    (["--seed", "1"], "seed was 0, now 1"),
    (["--batch-size", "16"], "batch_size was 32, now 16"),
    (["--epochs", "3"], "epochs was 1, now 3"),
    (["--method", "dcl"], "method was 'simclr', now 'dcl'"),
    (["--dataset", "folder:."], "dataset was 'shapes', now 'folder:.'"),
])
def test_resume_with_a_changed_setting_is_refused_by_name_before_any_work(capsys, tmp_path, finished,
                                                                          monkeypatch, change, message):
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("loaded data"))
    argv = ["--method", "simclr", *TINY, *change, "--resume", str(finished / CHECKPOINT_NAME)]
    err = refused(capsys, tmp_path, *argv)
    assert "was written by a different run: " in err and message in err
    assert "start a new run without --resume" in err


@pytest.mark.parametrize("change, message", [
    (["--width", "3"], "backbone was 'ResNet-10 width 2"),
    (["--image-size", "24"], "image_size was 16, now 24"),
    (["--subset", "96"], "train_size was 64, now 96"),
])
def test_resume_with_another_model_or_data_is_refused_by_name(capsys, tmp_path, finished, change, message):
    argv = ["--method", "simclr", *TINY, *change, "--resume", str(finished / CHECKPOINT_NAME)]
    err = refused(capsys, tmp_path, *argv)
    assert message in err and "size mismatch" not in err


def test_resume_with_another_projector_names_the_tensor(capsys, tmp_path, finished):
    argv = ["--method", "simclr", *TINY, "--set", "proj_dim=64", "--resume", str(finished / CHECKPOINT_NAME)]
    err = refused(capsys, tmp_path, *argv)
    assert "holds a simclr model of another configuration" in err
    assert "is (128, 16) in the checkpoint, (64, 16) here" in err
    assert "same backbone, width and method options" in err


def test_load_checkpoint_into_another_method_or_width(finished):
    ckpt = finished / CHECKPOINT_NAME
    with pytest.raises(CheckpointError, match="holds a simclr model, not byol; build a simclr model"):
        load_checkpoint(ckpt, methods.BYOL(models.resnet10(2)))
    with pytest.raises(CheckpointError, match=r"another configuration \(backbone 'ResNet-10 width 2"):
        load_checkpoint(ckpt, methods.SimCLR(models.resnet10(4)))
    load_checkpoint(ckpt, methods.SimCLR(models.resnet10(2)))  # the right model loads


def test_resume_of_an_older_checkpoint_without_the_settings_is_refused(tmp_path, finished):
    ckpt = torch.load(finished / CHECKPOINT_NAME, weights_only=True)
    for key in ("lr", "weight_decay", "options"):
        del ckpt["config"][key]
    torch.save(ckpt, tmp_path / "old.pt")
    ds = data.load("shapes", subset=64, test_subset=32, image_size=16)
    with pytest.raises(ValueError, match="lr is not recorded in the checkpoint"):
        fit(methods.SimCLR(models.resnet18(2)), ds, epochs=1, batch_size=32, resume=tmp_path / "old.pt",
            progress=False, log=False)


def test_resume_of_a_finished_run_into_a_new_folder_writes_what_it_says(capsys, tmp_path, finished):
    new = tmp_path / "copy"
    code, out, err = run(capsys, "--method", "simclr", *TINY, "--out", str(new),
                         "--resume", str(finished / CHECKPOINT_NAME))
    assert code == 0, err
    assert (new / CHECKPOINT_NAME).is_file() and (new / "metrics.json").is_file()
    assert f"wrote        {new / 'metrics.json'}, {new / CHECKPOINT_NAME}" in out
    assert "in this session (resumed after epoch 1)" in out and "all sessions" in out


# ---------------------------------------------------------------- 7. fit's own arguments (the API)

@pytest.fixture(scope="module")
def shapes64():
    return data.load("shapes", subset=64, test_subset=32, image_size=16)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 1}, "batch_size must be an integer >= 2"),  # trained with loss 0 before
    ({"batch_size": 2.0}, "batch_size must be an integer >= 2"),
    ({"epochs": True}, "epochs must be an integer >= 1, got True"),
    ({"lr": float("nan")}, "lr must be a finite number > 0"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
    ({"warmup_epochs": -1}, "warmup_epochs must be a finite number >= 0, got -1"),
    ({"warmup_epochs": 5}, "warmup_epochs 5 is longer than the run (1 epochs)"),
    ({"eval_every": -1}, "eval_every must be an integer >= 0 (0 = never), got -1"),
    ({"checkpoint_every": 0.5}, "checkpoint_every must be an integer >= 0"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967296), got -1"),
    ({"lr_rule": "cubic"}, "unknown lr_rule 'cubic'; choose one of linear, sqrt, none"),
    ({"device": "gpu7"}, "unknown device 'gpu7'"),
])
def test_fit_refuses_bad_arguments_before_training(shapes64, kwargs, message):
    m = methods.SimCLR(models.resnet18(2))
    with pytest.raises(ValueError, match=re.escape(message)):
        fit(m, shapes64, **{"epochs": 1, "batch_size": 32, "progress": False, "log": False, **kwargs})


# ---------------------------------------------------------------- 8. the evaluation API

def _clusters(n=80, dim=8, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    return torch.eye(dim)[y] * 3 + 0.3 * torch.randn(n, dim, generator=g), y


def _with(x, row, value):
    x = x.clone()
    x[row, 0] = value
    return x


@pytest.mark.parametrize("fn", ["knn", "probe"])
@pytest.mark.parametrize("case, message", [
    ("nan_train", r"train: 1 of 60 feature rows hold NaN or infinite values \(the first is row 3\)"),
    ("inf_test", r"test: 1 of 20 feature rows hold NaN or infinite values \(the first is row 5\)"),
    ("dims", "train features have 8 dimensions but test features 6"),
    ("negative", r"train: labels must be class indices >= 0, got -1 \(row 2\)"),
    ("float_labels", "labels must be integer class indices"),
    ("int_features", "features must be floating point, got torch.int64"),
    ("one_class", "the training labels hold a single class"),
    ("lengths", r"expected features \(N, D\) and labels \(N,\)"),
    ("not_tensor", "features and labels must be torch tensors, got list"),
])
def test_evaluation_refuses_bad_features_and_labels(fn, case, message):
    x, y = _clusters()
    tr, ytr, te, yte = x[:60], y[:60], x[60:], y[60:]
    if case == "nan_train":
        tr = _with(tr, 3, float("nan"))
    elif case == "inf_test":
        te = _with(te, 5, float("inf"))
    elif case == "dims":
        te = te[:, :6]
    elif case == "negative":
        ytr = ytr.clone()
        ytr[2] = -1
    elif case == "float_labels":
        ytr = ytr.float()
    elif case == "int_features":
        tr = tr.long()
    elif case == "one_class":
        ytr = torch.zeros_like(ytr)
    elif case == "lengths":
        ytr = ytr[:-1]
    elif case == "not_tensor":
        tr = tr.tolist()
    call = evaluate.knn_accuracy if fn == "knn" else evaluate.linear_probe
    with pytest.raises(ValueError, match=message):
        call(tr, ytr, te, yte)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 2.5}, "need integers k >= 1"), ({"k": 0}, "need integers k >= 1"),
    ({"temperature": float("nan")}, "finite temperature > 0"), ({"chunk_size": 0}, "chunk_size >= 1"),
])
def test_knn_refuses_bad_parameters(kwargs, message):
    x, y = _clusters()
    with pytest.raises(ValueError, match=message):
        evaluate.knn_accuracy(x[:60], y[:60], x[60:], y[60:], **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"lrs": ()}, "lrs must be finite and > 0"), ({"weight_decays": (-1.0,)}, "weight_decays finite and >= 0"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"), ({"epochs": 0}, "epochs and batch_size"),
    ({"labels_per_class": 0}, "labels_per_class must be a positive integer"),
])
def test_linear_probe_refuses_bad_parameters(kwargs, message):
    x, y = _clusters()
    with pytest.raises(ValueError, match=message):
        evaluate.linear_probe(x[:60], y[:60], x[60:], y[60:], **kwargs)


def test_labels_need_not_be_contiguous():
    """Class ids 3 and 7 (say, a subset of a bigger label set) score like 0 and 1."""
    x, y = _clusters(classes=2)
    sparse = torch.where(y == 0, 3, 7)
    assert evaluate.knn_accuracy(x[:60], sparse[:60], x[60:], sparse[60:], k=5) == \
        evaluate.knn_accuracy(x[:60], y[:60], x[60:], y[60:], k=5) == 1.0
    huge = torch.where(y == 0, 0, 10**12)  # would allocate a 10^12-column vote table without remapping
    assert evaluate.knn_accuracy(x[:60], huge[:60], x[60:], huge[60:], k=5) == 1.0


def test_factor_probe_refuses_non_finite_input():
    x, _ = _clusters()
    values = torch.rand(80)
    with pytest.raises(ValueError, match="train features hold NaN or infinite values"):
        evaluate.factor_probe(_with(x[:60], 0, float("nan")), values[:60], x[60:], values[60:])
    with pytest.raises(ValueError, match="test values hold NaN"):
        evaluate.factor_probe(x[:60], values[:60], x[60:], torch.full((20,), float("nan")))
    with pytest.raises(ValueError, match="train features have 8 dimensions but test features 4"):
        evaluate.factor_probe(x[:60], values[:60], x[60:, :4], values[60:])


# ---------------------------------------------------------------- 9. data with fewer than 2 classes

def test_one_class_folder_is_an_error(capsys, tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "one" / split / "cat").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "one" / split / "cat" / f"{i}.png")
    monkeypatch.setenv("COOKBOOK_DATA", str(tmp_path / "cache"))
    err = refused(capsys, tmp_path, "--method", "simclr", "--dataset", f"folder:{tmp_path / 'one'}",
                  "--batch-size", "2", "--subset", "4", "--test-subset", "4", "--width", "2")
    assert "has 1 class (cat)" in err and "need at least 2 classes" in err


def test_a_subset_that_keeps_one_class_is_an_error():
    with pytest.raises(data.DataError, match="subset=1 keeps a single class of the train split"):
        data.load("shapes", subset=1, test_subset=8)


def test_too_large_subset_says_how_to_ask_for_all_on_the_command_line(tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "test"):
        for cls, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0))):
            (tmp_path / "two" / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(tmp_path / "two" / split / cls / "0.png")
    monkeypatch.setenv("COOKBOOK_DATA", str(tmp_path / "cache"))
    with pytest.raises(data.DataError, match=r"on the command line: --subset 2\)"):
        data.load(f"folder:{tmp_path / 'two'}", subset=5)


# ---------------------------------------------------------------- 10. a run that fails on its way

def test_diverging_run_is_a_clean_error_with_exit_1(capsys, tmp_path, monkeypatch):
    loss = methods.SimCLR.loss

    def nan_loss(self, views):
        return loss(self, views) * float("nan")

    monkeypatch.setattr(methods.SimCLR, "loss", nan_loss)
    code, _, err = run(capsys, "--method", "simclr", *TINY, "--out", str(tmp_path))
    assert code == 1 and err.startswith("error: the loss became nan at step 1 (epoch 1)")
    assert "Try a lower learning rate (it was" in err and "Traceback" not in err


# ---------------------------------------------------------------- 11. output conventions

def test_help_states_each_default_once_and_none_for_required(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "(default: None)" not in text and "default: False" not in text
    width_help = text[text.index("--width WIDTH ResNet"):text.index("--batch-size BATCH_SIZE images")]
    assert width_help.count("default") == 1 and "testbed recipe" in width_help
    assert "images per step, >= 2 (default: the method's testbed recipe)" in text
    assert "seed for data" in text and "default: 0)" in text


def test_progress_bar_goes_to_stderr_and_summary_reports_the_k_used(capsys, tmp_path):
    code, out, err = run(capsys, "--method", "simclr", *[a for a in TINY if a != "--no-progress"],
                         "--out", str(tmp_path))
    assert code == 0, err
    assert "\r" not in out and "epoch 1/1" in out
    assert "simclr" in err  # the bar, with the method as its label
    assert "(k=20, cosine" in out
    assert not math.isnan(float(out.split("kNN (test)")[1].split("%")[0]))


# ---------------------------------------------------------------- W-MSE's whitening sub-batches

@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "200"], "W-MSE whitens sub-batches of w_size=128 images, so each process's batch (200)"),
    (["--batch-size", "64"], "pass --batch-size 128"),
    (["--batch-size", "96", "--set", "w_size=64", "--set", "proj_dim=32"], "batch (96) must be a multiple"),
])
def test_wmse_batch_that_whitening_cannot_tile_is_refused_before_any_work(capsys, tmp_path, no_work, argv,
                                                                          message):
    assert message in refused(capsys, tmp_path, "--method", "wmse", "--device", "cpu", *argv)


def test_fit_refuses_a_wmse_batch_before_the_first_step():
    ds = data.load("shapes", subset=64, test_subset=32, image_size=16, seed=0)
    m = methods.WMSE(models.backbone("resnet10", width=2, image_size=16), proj_hidden=16, proj_dim=8, w_size=16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="multiple of it"):
        fit(m, ds, steps=1, batch_size=24, device="cpu", progress=False, log=False)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
