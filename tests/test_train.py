import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from cookbook import data, methods, models
from cookbook import train
from cookbook.train import (CHECKPOINT_NAME, NonFiniteLossError, fit, load_checkpoint, lr_at, memory_format,
                            prefetched, save_atomic, scaled_lr)


def tiny_run(**kw):
    torch.manual_seed(0)
    ds = data.load("shapes", subset=256, test_subset=64, seed=0)
    m = methods.SimCLR(models.resnet18(4))
    return m, ds, fit(m, ds, **{"epochs": 2, "batch_size": 64, "progress": False, "log": False, **kw})


def test_lr_rules():
    assert scaled_lr(0.1, 512, "linear") == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 1024, "none") == 0.1
    with pytest.raises(ValueError, match="sqrt"):
        scaled_lr(0.1, 256, "cubic")


def test_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))           # rising during warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))           # then never rising
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 89)), rel=1e-6)


def test_channels_last_except_where_one_thread_cpu_torch_crashes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert memory_format(models.resnet10(8), cpu) == torch.channels_last
    assert memory_format(models.resnet10(4), cpu) == torch.contiguous_format  # stride-2 conv from 4 channels
    assert memory_format(models.vit_tiny(16, dim=32, depth=1, heads=2), cpu) == torch.contiguous_format  # patches
    assert memory_format(models.resnet10(4), cuda) == torch.channels_last


def test_narrow_network_trains_with_one_thread():
    """The crash that memory_format avoids: width 4, torch on one thread."""
    code = textwrap.dedent("""
        import cookbook, torch
        from cookbook import data, methods, models
        from cookbook.train import fit
        torch.set_num_threads(1)
        ds = data.load("shapes", subset=64, test_subset=32, image_size=16, seed=0)
        fit(methods.SimCLR(models.resnet18(4)), ds, steps=3, batch_size=16, progress=False, log=False)
        print("trained")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-2000:]


def test_fit_history_and_checkpoint(tmp_path):
    m, ds, h = tiny_run(out=tmp_path, eval_every=1, eval_rankme=True)
    assert h.steps == 2 * (256 // 64) and len(h.epochs) == 2
    for e in h.epochs:
        assert set(e) >= {"epoch", "loss", "lr", "seconds", "knn_val", "rankme"}
        assert 0 <= e["knn_val"] <= 1 and e["rankme"] >= 1
    assert h.wall_time_s > 0 and h.images_per_s > 0 and h.peak_memory_mb > 0
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # loadable without pickle
    assert ckpt["epoch"] == 2 and ckpt["step"] == h.steps
    fresh = methods.SimCLR(models.resnet18(4))
    load_checkpoint(tmp_path / CHECKPOINT_NAME, fresh)
    for a, b in zip(fresh.state_dict().values(), m.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # no temporary files left behind


def test_training_changes_weights_and_is_seeded():
    m1, _, h1 = tiny_run(epochs=1)
    m2, _, h2 = tiny_run(epochs=1)
    untrained = methods.SimCLR(models.resnet18(4))
    torch.testing.assert_close(h1.final_loss, h2.final_loss)
    w1, w0 = next(m1.backbone.parameters()), next(untrained.backbone.parameters())
    assert not torch.allclose(w1, w0)


def test_prefetched_draws_as_a_plain_loop_would():
    """The background thread makes the same items in the same order from the same generator."""
    def draws(background):
        gen = torch.Generator().manual_seed(3)
        with prefetched(lambda i: (i, torch.rand(4, generator=gen)), 6, background=background) as items:
            out = list(items)
        return out, gen.get_state()

    (plain, state_plain), (ahead, state_ahead) = draws(False), draws(True)
    assert [i for i, _ in ahead] == list(range(6))
    for (_, a), (_, b) in zip(plain, ahead):
        assert torch.equal(a, b)
    assert torch.equal(state_plain, state_ahead)  # nothing drawn past the last item


def test_prefetched_raises_the_makers_error_and_stops_when_left_early():
    def make(i):
        if i == 2:
            raise ValueError("bad batch 2")
        return i

    with pytest.raises(ValueError, match="bad batch 2"):
        with prefetched(make, 5) as items:
            assert [next(items), next(items)] == [0, 1]
            next(items)
    made = []
    with pytest.raises(RuntimeError, match="step failed"):
        with prefetched(lambda i: made.append(i) or i, 1000) as items:
            for i in items:
                if i == 1:
                    raise RuntimeError("step failed")
    assert len(made) <= 4  # the thread stopped a batch or two ahead, not at the end
    assert not [t for t in __import__("threading").enumerate() if t.name == "cookbook-prefetch"]


def test_prefetched_sets_the_threads_of_its_own_thread_only():
    """The background thread runs on ``threads``; the caller keeps its count, and a thread started
    after the context gets torch's setting back."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with prefetched(lambda i: torch.get_num_threads(), 3, threads=1) as items:
            seen = list(items)
            during = torch.get_num_threads()
        later = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1, 1] and during == 2 and later == [2]


def test_fit_trains_alike_with_and_without_the_prefetching_thread(monkeypatch):
    """Bit for bit: the same losses and weights with the background augmentation as without."""
    m1, _, h1 = tiny_run(epochs=2)
    monkeypatch.setattr(train, "PREFETCH", False)
    m2, _, h2 = tiny_run(epochs=2)
    assert [e["loss"] for e in h1.epochs] == [e["loss"] for e in h2.epochs]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_save_atomic_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.ones(1)}, path)

    def broken(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_atomic({"a": torch.zeros(1)}, path)
    assert torch.load(path, weights_only=True)["a"].item() == 1.0


class ExplodingSimCLR(methods.SimCLR):
    """Returns NaN from its 3rd loss on."""

    calls = 0

    def loss(self, views):
        type(self).calls += 1
        out = super().loss(views)
        return out * float("nan") if type(self).calls >= 3 else out


def test_non_finite_loss_stops_with_step_and_advice():
    ds = data.load("shapes", subset=256, test_subset=64)
    ExplodingSimCLR.calls = 0
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*lower learning rate"):
        fit(ExplodingSimCLR(models.resnet18(4)), ds, epochs=2, batch_size=64, progress=False, log=False)


def test_bad_arguments_are_explained():
    ds = data.load("shapes", subset=128, test_subset=64)
    m = methods.SimCLR(models.resnet18(4))
    with pytest.raises(ValueError, match="larger than the train split"):
        fit(m, ds, batch_size=512)
    with pytest.raises(ValueError, match="sgd"):
        fit(m, ds, optimizer="rmsprop")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(m, ds, batch_size=64, resume="/nonexistent/checkpoint.pt")


def test_resume_refuses_a_different_run(tmp_path):
    tiny_run(epochs=1, out=tmp_path)
    with pytest.raises(ValueError, match="batch_size was 64, now 32"):
        tiny_run(epochs=1, batch_size=32, resume=tmp_path / CHECKPOINT_NAME)


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from cookbook import augment, data, methods, models
    from cookbook.train import fit

    class SlowViews(augment.Views):  # slow enough to be killed between checkpoints
        def __call__(self, x, gen=None):
            time.sleep(float(sys.argv[2]))
            return super().__call__(x, gen)

    torch.manual_seed(0)
    ds = data.load("shapes", subset=256, test_subset=64, seed=0)
    m = methods.SimCLR(models.resnet18(4))
    fit(m, ds, epochs=3, batch_size=64, views=SlowViews(augment.simclr().specs), out=sys.argv[1],
        checkpoint_every=1, progress=False, log=False)
""")


@pytest.mark.slow
def test_resume_after_a_real_kill(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    killed, full = tmp_path / "killed", tmp_path / "full"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.5"])
    ckpt = killed / CHECKPOINT_NAME
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    first = torch.load(ckpt, weights_only=True)
    assert first["epoch"] == 1

    # resume in this process with the same settings, then compare with an uninterrupted run
    subprocess.run([sys.executable, str(script), str(full), "0"], check=True)
    torch.manual_seed(0)
    ds = data.load("shapes", subset=256, test_subset=64, seed=0)
    m = methods.SimCLR(models.resnet18(4))
    from cookbook import augment
    h = fit(m, ds, epochs=3, batch_size=64, views=augment.simclr(), out=killed, resume=ckpt,
            checkpoint_every=1, progress=False, log=False)
    done = torch.load(full / CHECKPOINT_NAME, weights_only=True)
    assert h.steps == done["step"] == 3 * (256 // 64)
    assert [e["epoch"] for e in h.epochs] == [1, 2, 3]
    # same data order and augmentations after the resume: the losses agree
    for a, b in zip(h.epochs, done["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
