"""Training on several processes with PyTorch's own ``torch.distributed``,
launched by ``torchrun`` (the book's "Scaling out" page).

``torchrun`` starts one process per device and tells each where it stands
through environment variables: ``RANK`` (0 to ``WORLD_SIZE - 1``, over all
machines), ``LOCAL_RANK`` (its index on its machine), ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. This module reads
them and leaves the launching to torchrun:

- :func:`setup` joins the process group (NCCL on CUDA, gloo on CPU) and
  returns the process's device; :func:`teardown` leaves it.
- :func:`rank`, :func:`world_size`, :func:`is_main`: where this process stands
  (0 and 1 outside a process group).
- :func:`gather`: all ranks' rows of a tensor, with gradients (Algorithm 1 of
  the SSL cookbook, Balestriero et al., 2023), for losses that need the whole
  batch and that lightly does not distribute itself.
- :func:`batch_indices`: this rank's share of a step's batch, cut from one
  permutation that every rank draws alike; :func:`staggered`: load data on
  one process before the others (one download).
- :func:`wrap`: ``DistributedDataParallel`` around a method's loss, with
  ``SyncBatchNorm`` on CUDA.
"""

from __future__ import annotations

import atexit
import datetime
import inspect
import os
import re
import signal
import sys

import torch
import torch.distributed as dist
from torch import nn

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class RankStopped(RuntimeError):
    """Another process of a distributed run stopped (it failed or was killed),
    so this one cannot go on; the message says what a killed run keeps."""


def launched() -> bool:
    """True when this process was started by ``torchrun`` (its environment
    variables are set), whether or not the process group is joined yet."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def active() -> bool:
    """True inside a joined process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the process that logs, evaluates and writes files."""
    return rank() == 0


def planned_world_size() -> int:
    """:func:`world_size`, or before the group is joined, ``WORLD_SIZE`` as
    torchrun set it (1 when not launched by torchrun): to check options first."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def planned_rank() -> int:
    """:func:`rank`, or before the group is joined, ``RANK`` as torchrun set it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ["RANK"]) if launched() else 0


def local_device(device: str | torch.device | None = None) -> torch.device:
    """The device of this process: under torchrun with CUDA, ``cuda:LOCAL_RANK``
    (one GPU per process); otherwise ``device`` as given (default: CUDA when
    available, else CPU). ValueError when the processes cannot each have a GPU."""
    wanted = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if not launched() or wanted.type != "cuda":
        return wanted
    local, here = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    count = torch.cuda.device_count()
    if local >= count:
        raise ValueError(f"torchrun started {max(here, local + 1)} processes on this machine, "
                         f"which has {count} GPU(s); pass --nproc-per-node={count} or fewer (one "
                         f"process per GPU)")
    if wanted.index is not None and wanted.index != local and here > 1:
        raise ValueError(f"device {device!r}: under torchrun each process takes the GPU of its "
                         f"LOCAL_RANK (cuda:{local} here); pass --device cuda without an index")
    return torch.device("cuda", local)


def setup(device: str | torch.device | None = None, timeout_s: float = 1800) -> torch.device:
    """Joins the process group that torchrun describes, once, and returns this
    process's device (:func:`local_device`). Backend: NCCL for CUDA, gloo for
    CPU. Outside torchrun it joins nothing and returns the device.

    ``timeout_s``: how long a collective waits for a missing rank before it
    fails (PyTorch's default, 30 minutes). A rank that dies usually ends the
    run at once instead: torchrun stops the others, and gloo reports the
    closed connection.
    """
    device = local_device(device)
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(teardown)
    return device


def teardown() -> None:
    """Leaves the process group, if joined (safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def stop_on_sigterm() -> None:
    """Makes SIGTERM raise :class:`RankStopped` in the main thread. torchrun
    sends SIGTERM to the surviving processes when one of them dies; this turns
    that into an exception the caller can report, instead of a silent exit.
    Later SIGTERMs are ignored, so that the report is not cut short."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sys.exc_info()[1] is not None:
            return  # an error is being handled already: let it be reported
        raise RankStopped("stopped by torchrun (SIGTERM): another process of this run failed or "
                          "was killed; its own output says why")
    signal.signal(signal.SIGTERM, handler)


def lost_contact(error: BaseException) -> RankStopped | None:
    """``error`` as a :class:`RankStopped` when a collective raised it (a rank
    died and gloo or NCCL saw its connection close), else None. Collectives
    also run inside ``backward`` (DDP's gradient averaging), where no Python
    frame of torch.distributed is left: the message names the backend there."""
    if isinstance(error, RankStopped):
        return error
    tb, frame_file = error.__traceback__, ""
    while tb is not None:  # the innermost Python frame: where the error came from
        frame_file, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    inside = f"{os.sep}torch{os.sep}distributed{os.sep}" in frame_file
    dist_error = getattr(dist, "DistError", ())
    backend = re.search(r"\bgloo\b|\bnccl\b|connection (reset|closed) by peer", str(error),
                        re.IGNORECASE)
    if not (inside or backend or (dist_error and isinstance(error, dist_error))):
        return None
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return RankStopped(f"lost contact with another process of this run, which failed or was "
                       f"killed (its own output says why); {type(error).__name__}: {first[:300]}")


class _Gather(torch.autograd.Function):
    """All ranks' tensors, concatenated along dim 0; backward sums every
    rank's gradient for the whole gathered tensor and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce writes in place
        dist.all_reduce(grad)  # sum: every rank's loss depends on these rows
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` ``(n, ...)``, concatenated in rank order: ``(W n, ...)``,
    with gradients flowing back to the rank that computed each row. Every rank
    must pass the same shape. Outside a process group, ``x`` itself.

    Gradients: each rank computes the same batch-wide loss; backward adds up
    all ranks' gradients for this rank's rows, and DDP then averages over the
    ranks, so the weights get exactly the single-process gradient.
    """
    return _Gather.apply(x) if active() else x


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over all ranks, without gradient (``x`` itself
    outside a process group). Gloo has no average, hence sum and divide."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def staggered(load):
    """``load()`` on rank 0 first, then on each machine's first process, then on
    the others, with a barrier between: a download or a decoded-image cache is
    written once, whether machines share the cache folder or not, and the later
    processes read it. Returns what ``load()`` returned on this process."""
    if not active():
        return load()
    stage = 0 if dist.get_rank() == 0 else 1 if int(os.environ.get("LOCAL_RANK", 0)) == 0 else 2
    result = None
    for turn in range(3):
        if turn == stage:
            result = load()
        dist.barrier()
    return result


def batch_indices(perm: torch.Tensor, step: int, batch_size: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's share of step ``step``'s batch: the ``step``-th block of
    ``batch_size`` entries of ``perm`` (a permutation every rank draws alike),
    cut into ``world_size`` equal contiguous shares. The shares of all ranks,
    concatenated in rank order, are the single-process batch.

    perm: ``(N,)`` indices; batch_size: the effective batch, a multiple of
    ``world_size``. Returns ``(batch_size / world_size,)`` indices.
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {world_size} "
                         f"processes; pass a multiple of {world_size}")
    share = batch_size // world_size
    start = step * batch_size + rank * share
    return perm[start:start + share]


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of rank ``rank``'s augmentation generator for ``epoch``: distinct
    per rank (ranks must not crop their images alike) and per epoch, so that a
    resumed run draws what an uninterrupted one would without saving each
    rank's generator."""
    return ((seed * 1_000_003 + epoch) * 65_537 + rank + 1) % 2**63


class _LossModule(nn.Module):
    """The method's training loss as a forward pass, the call DDP wraps."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.method.loss(views)


def wrap(method: nn.Module, device: torch.device) -> nn.Module:
    """A module whose ``forward(views)`` returns ``method.loss(views)``, as
    ``DistributedDataParallel``: the weights start from rank 0's, and each
    backward averages the gradients over the ranks. On CUDA the method's batch
    norms become ``SyncBatchNorm`` first (in place), so their statistics span
    the whole batch; PyTorch has no SyncBatchNorm on CPU, where each rank
    normalises its own share. Buffers are not broadcast at each step (see the
    book's "Scaling out" page for why the queues agree anyway).

    ``static_graph``: the same parameters take part in every step (some may
    never get a gradient, e.g. a ViT's unused class token), so DDP learns
    which on the first step instead of searching the graph at every step.
    """
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(method)  # replaces children in place
    ids = [device.index] if device.type == "cuda" else None
    # no buffer broadcast before each forward (the argument's name changed in PyTorch 2.1x)
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
               else {"broadcast_buffers": False})
    return DistributedDataParallel(_LossModule(method), device_ids=ids, static_graph=True,
                                   **no_sync)
