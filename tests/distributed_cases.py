"""The cases of tests/test_distributed.py: models and batches both sides build
alike, and the worker that each of the 2 gloo processes runs.

    RANK=r WORLD_SIZE=2 ... python tests/distributed_cases.py OUT

Each rank writes ``OUT/<case>-rank<r>.pt``; the test, in a process with no
process group, computes the single-process reference and compares.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cookbook  # noqa: F401  (before torch: OpenMP wait policy)
import torch
from torch import nn
from lightly.loss import BarlowTwinsLoss

from cookbook import data, distributed, methods, models
from cookbook.train import CHECKPOINT_NAME, fit

BATCH = 8          # the single-process batch; each of 2 ranks takes 4
LAMBDA = 5e-3      # Barlow Twins' off-diagonal weight (the paper's)
FIT = dict(batch_size=16, progress=False, log=False, seed=3)


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two views ``(BATCH, 3, 16, 16)`` in [0, 1]."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, 3, 16, 16, generator=g), torch.rand(BATCH, 3, 16, 16, generator=g)


def vectors() -> tuple[torch.Tensor, torch.Tensor]:
    """Two views ``(BATCH, 12)`` for the small probes below."""
    g = torch.Generator().manual_seed(2)
    return torch.randn(BATCH, 12, generator=g), torch.randn(BATCH, 12, generator=g)


def method(name: str) -> nn.Module:
    """SimCLR or VICReg on a width-2 ResNet-18, with every batch norm in eval
    mode: nothing in the network depends on the batch, only the loss does."""
    torch.manual_seed(0)
    m = methods.build(name, models.resnet18(2)).eval()
    return m


class BarlowProbe(nn.Module):
    """A linear projector and lightly's BarlowTwinsLoss: with its own
    ``gather_distributed`` (per-rank standardisation), or, ``gathered``, on
    the embeddings of all ranks gathered by cookbook.distributed.gather."""

    def __init__(self, gathered: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(12, 6)
        self.gathered = gathered
        self.criterion = BarlowTwinsLoss(lambda_param=LAMBDA, gather_distributed=not gathered)

    def loss(self, views):
        z_a, z_b = self.proj(views[0]), self.proj(views[1])
        if self.gathered:
            z_a, z_b = distributed.gather(z_a), distributed.gather(z_b)
        return self.criterion(z_a, z_b)


def barlow_definition(z_a: torch.Tensor, z_b: torch.Tensor, shares: int) -> torch.Tensor:
    """Barlow Twins as distributed (the paper's code): each of ``shares`` ranks
    standardises its own rows, the cross-correlations are averaged over ranks."""
    c = sum(_standardise(a).T @ _standardise(b) / len(a)
            for a, b in zip(z_a.chunk(shares), z_b.chunk(shares))) / shares
    off = c - torch.diag(torch.diagonal(c))
    return (torch.diagonal(c) - 1).pow(2).sum() + LAMBDA * off.pow(2).sum()


def _standardise(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)


class GatherProbe(nn.Module):
    """A loss of the whole batch through cookbook.distributed.gather: the
    squared cross-covariance of the two views' embeddings plus their variance."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(12, 6)

    def loss(self, views):
        z = distributed.gather(self.proj(views[0]))
        w = distributed.gather(self.proj(views[1]))
        z, w = z - z.mean(0), w - w.mean(0)
        return (z.T @ w / len(z)).pow(2).sum() - z.var(0).mean()


def probe(case: str) -> tuple[nn.Module, list[torch.Tensor]]:
    """The model and the (single-process) batch of an exactness case."""
    if case in ("simclr", "vicreg", "simclr_local"):
        m = method("simclr" if case == "simclr_local" else case)
        if case == "simclr_local":
            m.criterion.gather_distributed = False  # the control: per-rank negatives only
        return m, list(images())
    if case in ("barlow", "barlow_gathered"):
        return BarlowProbe(gathered=case == "barlow_gathered"), list(vectors())
    return GatherProbe(), list(vectors())


EXACT_CASES = ("simclr", "vicreg", "simclr_local", "barlow", "barlow_gathered", "gather")


def shapes() -> data.Dataset:
    return data.load("shapes", subset=64, test_subset=32, image_size=16, seed=0)


def consistency_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    size = {"queue_size": 64} if name == "moco" else {"support_size": 64}
    return methods.build(name, models.resnet18(2), **size)


class StopAfter:
    """Views that raise after ``calls`` batches: a run stopped mid-epoch on every rank."""

    def __init__(self, views, calls: int):
        self.views, self.calls, self.specs = views, calls, views.specs

    def __call__(self, x, gen=None):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt("stopped by the test")
        return self.views(x, gen)


def worker(out: Path) -> None:
    distributed.setup("cpu")
    rank, world = distributed.rank(), distributed.world_size()
    assert world == 2, world

    # (a) exactness: this rank's share of the batch through DDP
    for case in EXACT_CASES:
        model, views = probe(case)
        net = distributed.wrap(model, torch.device("cpu"))
        loss = net([v.chunk(world)[rank] for v in views])
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": distributed.mean_over_ranks(loss), "local_loss": loss.detach(),
                    "grads": grads}, out / f"{case}-rank{rank}.pt")

    # what fit keeps alike on every rank: weights, EMA teacher, queue, support set
    ds = shapes()
    for name in ("moco", "nnclr"):
        m = consistency_model(name)
        bank = (m.queue if name == "moco" else m.support.bank).clone()
        fit(m, ds, steps=2, **FIT)
        now = m.queue if name == "moco" else m.support.bank
        torch.save({"params": torch.cat([p.detach().flatten() for p in m.parameters()]),
                    "bank_before": bank, "bank": now.clone()}, out / f"{name}-rank{rank}.pt")

    # resume: a run stopped in its second epoch and resumed ends as an uninterrupted one
    torch.manual_seed(0)
    full = fit(methods.SimCLR(models.resnet18(2)), ds, epochs=2, out=out / "full", **FIT)
    torch.manual_seed(0)
    m = methods.SimCLR(models.resnet18(2))
    try:  # 64 images, batches of 16: 4 steps an epoch; stop at step 6
        fit(m, ds, epochs=2, out=out / "stopped", views=StopAfter(m.default_views(16), 5),
            checkpoint_every=1, **FIT)
        raise AssertionError("the run was not stopped")
    except KeyboardInterrupt:
        pass
    if rank == 0:  # the epoch-1 checkpoint, for the single-process resume of the test
        shutil.copy(out / "stopped" / CHECKPOINT_NAME, out / "epoch1.pt")
    torch.distributed.barrier()
    torch.manual_seed(0)
    resumed = fit(methods.SimCLR(models.resnet18(2)), ds, epochs=2, out=out / "stopped",
                  resume=out / "epoch1.pt", **FIT)
    torch.save({"full": full.column("loss"), "resumed": resumed.column("loss"),
                "start_epoch": resumed.start_epoch}, out / f"resume-rank{rank}.pt")
    distributed.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(Path(sys.argv[1]))
