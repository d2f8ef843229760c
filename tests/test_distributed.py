"""Distributed training on CPU: gloo, 2 processes (the book's "Scaling out").

(a) Exactness: SimCLR's and VICReg's 2-rank loss and gradients are the
    single-process ones on the concatenated batch; lightly's Barlow Twins
    matches its distributed definition (per-rank standardisation), and on
    embeddings gathered by the package's gather layer it is exact too. fit keeps
    weights, teacher, queue and support set alike on both ranks, and a stopped
    2-rank run resumes to the losses of an uninterrupted one.
(b) A 2-process torchrun CLI run writes one metrics.json and one checkpoint.
(c) Killing one rank ends the run with a clear error; the checkpoint is intact.

Each launch starts 2 Python processes; all of it takes ~30 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # distributed_cases, under any import mode
import distributed_cases as cases  # noqa: E402

from cookbook import cli, distributed, methods, models  # noqa: E402
from cookbook.train import CHECKPOINT_NAME, fit, load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI_RUN = ["--method", "simclr", "--subset", "64", "--test-subset", "32", "--image-size", "16",
           "--width", "2", "--batch-size", "32", "--device", "cpu", "--no-progress"]
TOL = dict(rtol=1e-5, atol=1e-5)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_ENV}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node=2 -m cookbook train ...``, via
    ``python -m torch.distributed.run`` (what the torchrun script runs)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "cookbook", "train", *args]


# ---------------------------------------------------------------- no processes
def test_rank_shares_make_up_the_single_process_batch():
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    for step in range(5):
        whole = distributed.batch_indices(perm, step, 8)
        shares = [distributed.batch_indices(perm, step, 8, r, 2) for r in range(2)]
        assert torch.equal(torch.cat(shares), whole) and len(shares[0]) == 4
    with pytest.raises(ValueError, match="multiple of 2"):
        distributed.batch_indices(perm, 0, 7, 0, 2)
    seeds = {distributed.augmentation_seed(0, e, r) for e in range(3) for r in range(4)}
    assert len(seeds) == 12  # no two ranks or epochs augment alike


def test_outside_a_process_group_nothing_is_gathered():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather(x) is x and distributed.world_size() == 1 and distributed.is_main()


def test_batch_must_split_over_the_processes(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    ds = cases.shapes()
    with pytest.raises(ValueError, match="multiple of 4 with at least 2 images per process"):
        fit(methods.SimCLR(models.resnet18(2)), ds, batch_size=18, progress=False, log=False)
    with pytest.raises(ValueError, match="multiple of 4 with at least 2 images per process"):
        fit(methods.SimCLR(models.resnet18(2)), ds, batch_size=4, progress=False, log=False)
    code = cli.main(["train", "--method", "simclr", "--batch-size", "30", "--out", str(tmp_path)])
    assert code == 2
    assert "--batch-size 30 is the batch of all 4 processes together" in capsys.readouterr().err


# ------------------------------------------------------------ (a) exactness
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Runs tests/distributed_cases.py on 2 gloo processes; returns its folder."""
    out = tmp_path_factory.mktemp("ranks")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(Path(cases.__file__)), str(out)],
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return out


def _ranks(out: Path, case: str) -> list[dict]:
    return [torch.load(out / f"{case}-rank{r}.pt", weights_only=True) for r in range(2)]


def _single_process(case: str, loss_fn=None) -> tuple[torch.Tensor, dict]:
    model, views = cases.probe(case)
    loss = (loss_fn or model.loss)(views)
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", ["simclr", "vicreg", "gather", "barlow_gathered"])
def test_two_ranks_give_the_single_process_loss_and_gradients(two_ranks, case):
    ranks = _ranks(two_ranks, case)
    loss, grads = _single_process(case)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    for r in ranks:
        torch.testing.assert_close(r["loss"], loss, **TOL)
        assert r["grads"].keys() == grads.keys()
        for k in grads:
            torch.testing.assert_close(r["grads"][k], grads[k], **TOL, msg=f"{case}: grad of {k}")
    if case in ("simclr", "vicreg"):  # their losses have a per-rank part: each rank scored its rows
        assert not torch.equal(ranks[0]["local_loss"], ranks[1]["local_loss"])


def test_without_gathering_the_negatives_are_per_rank(two_ranks):
    """The control: SimCLR with lightly's gather switched off scores each rank
    against its own half only, and the loss is not the single-process one."""
    ranks = _ranks(two_ranks, "simclr_local")
    loss, _ = _single_process("simclr")
    assert not torch.allclose(ranks[0]["loss"], loss, **TOL)


def test_barlow_twins_matches_its_distributed_definition(two_ranks):
    """lightly's BarlowTwinsLoss(gather_distributed=True): each rank standardises
    its own rows; the cross-correlation matrices are averaged over the ranks.
    (Its loss on embeddings gathered first is the single-process one: the
    ``barlow_gathered`` case above.)"""
    ranks = _ranks(two_ranks, "barlow")
    model, (a, b) = cases.probe("barlow")
    definition, grads = _single_process(
        "barlow", lambda v: cases.barlow_definition(model.proj(v[0]), model.proj(v[1]), shares=2))
    for r in ranks:
        torch.testing.assert_close(r["loss"], definition, **TOL)
        for k in grads:
            torch.testing.assert_close(r["grads"][k], grads[k], **TOL, msg=f"gradient of {k}")
    # ... which is not the single-process loss: there the whole batch is standardised at once
    whole, _ = _single_process("barlow")
    assert not torch.allclose(whole, definition, **TOL)
    one_share = cases.barlow_definition(model.proj(a), model.proj(b), shares=1)
    torch.testing.assert_close(one_share, whole, **TOL)


@pytest.mark.parametrize("name", ["moco", "nnclr"])
def test_fit_keeps_weights_teacher_and_queue_alike_on_every_rank(two_ranks, name):
    ranks = _ranks(two_ranks, name)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # MoCo: key encoder (EMA) included
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"])
    assert not torch.equal(ranks[0]["bank"], ranks[0]["bank_before"])  # the keys were enqueued
    fresh = cases.consistency_model(name)
    assert not torch.equal(ranks[0]["params"], torch.cat([p.flatten() for p in fresh.parameters()]))


def test_a_stopped_two_rank_run_resumes_exactly(two_ranks):
    for r in _ranks(two_ranks, "resume"):
        assert r["start_epoch"] == 1 and len(r["full"]) == len(r["resumed"]) == 2
        assert r["resumed"] == pytest.approx(r["full"], rel=1e-5)


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks):
    """The number of processes may change on resume; the effective batch may not."""
    ckpt = two_ranks / "epoch1.pt"
    assert load_checkpoint(ckpt)["config"]["world_size"] == 2
    ds = cases.shapes()
    torch.manual_seed(0)
    h = fit(methods.SimCLR(models.resnet18(2)), ds, epochs=2, resume=ckpt, **cases.FIT)
    assert h.start_epoch == 1 and len(h.epochs) == 2 and h.steps == 2 * 64 // 16
    with pytest.raises(ValueError, match="batch_size was 16, now 8"):
        fit(methods.SimCLR(models.resnet18(2)), ds, epochs=2, resume=ckpt,
            **{**cases.FIT, "batch_size": 8})


# ------------------------------------------------------------ (b) the CLI
def test_torchrun_cli_run_writes_one_metrics_file_and_one_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(_torchrun(*CLI_RUN, "--epochs", "1", "--out", str(out)), env=_env(),
                            capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["batch_size"] == 32
    assert metrics["history"]["steps"] == 2
    config = load_checkpoint(out / CHECKPOINT_NAME)["config"]
    assert config["world_size"] == 2 and config["batch_size"] == 32
    # rank 0 alone prints the summary and the epoch lines
    assert result.stdout.count("kNN (test)") == 1 and result.stdout.count("epoch 1/1") == 1
    assert "x 2 processes" in result.stdout


# ------------------------------------------------------------ (c) a rank dies
def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v[5:]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds rank 1 in /proc")
def test_killing_one_rank_stops_the_run_with_a_clear_error(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun(*CLI_RUN, "--epochs", "500", "--checkpoint-every", "1",
                                      "--out", str(out)),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while (not (out / CHECKPOINT_NAME).exists() and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.05)
        rank1 = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
        assert proc.poll() is None and len(rank1) == 1, "the run ended before rank 1 was killed"
        os.kill(rank1[0], signal.SIGKILL)
        log = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode != 0, log[-3000:]
    # rank 0 says what happened and what it kept; torchrun names the rank that died
    assert "error (rank 0)" in log and "another process of this run" in log, log[-3000:]
    assert f"--resume {out / CHECKPOINT_NAME}" in log
    assert "rank      : 1" in log and "SIGKILL" in log
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)  # complete and loadable
    assert ckpt["epoch"] >= 1 and ckpt["config"]["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no temporary file left
