"""Multi-process training under ``torchrun``: the same numbers as one process, N times the work.

``torchrun --nproc_per_node N -m defend.cli train ...`` starts N processes (environment
``WORLD_SIZE=N``, ``RANK``, ``LOCAL_RANK``); :func:`~defend.train.loop.fit` then trains
through :func:`process_group`:

* **Devices**: process ``r`` computes on ``cuda:LOCAL_RANK`` (NCCL) or, without CUDA or
  with ``--device cpu``, on the CPU (Gloo).
* **Global batches**: ``--batch-size`` is the global batch; every process takes its
  contiguous share of each one (:class:`~defend.data.batching.ShapeBatchSampler`) and
  minimises ``sum of its per-sample losses * N / g`` for a global batch of ``g`` rows, so
  DistributedDataParallel's gradient average is the one-process mean over the global batch.
* **Random draws** of the training attacks are made for the whole global batch and sliced to
  the process's rows (:func:`current_share`, :func:`global_like`), so they do not depend on
  how a batch is split.
* **Process 0** validates (the others wait, :func:`on_main`), writes checkpoints, logs and
  shows progress bars.

One process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) is the plain single-device loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from defend.data.batching import share_bounds
from defend.device import pick_device
from defend.errors import DefendError

T = TypeVar("T")

#: how long the other processes wait for process 0's validation (robust validation of a
#: large data set takes hours); training collectives keep torch's default timeout
WAIT_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes.

    Attributes:
        rank / size: the process's rank and the number of processes.
        device: where this process computes.
        wait_group: the Gloo group the others wait in while process 0 validates (None for
            one process).
    """

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wait_group: Any = field(default=None, repr=False, compare=False)

    @property
    def main(self) -> bool:
        """Whether this is process 0, the one that validates, writes and logs."""
        return self.rank == 0


def env_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DefendError(
            f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}"
        ) from None


def is_main_process() -> bool:
    """Whether this process is rank 0 (of the process group, else of ``RANK``; True alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def main_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` in process 0, a no-op in the others (one copy of every line)."""
    return log if is_main_process() else lambda line: None


def _device(requested: str | None, local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` when the run is on CUDA, else the CPU."""
    device = pick_device(requested)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DefendError(f"multi-process training runs on CUDA or the CPU, not {device}")
    if device.index is not None:
        raise DefendError(
            f"--device {device} names one GPU; under torchrun process LOCAL_RANK uses "
            "cuda:LOCAL_RANK: pass --device cuda or leave it out"
        )
    if local_rank >= torch.cuda.device_count():
        raise DefendError(
            f"process LOCAL_RANK={local_rank} has no GPU ({torch.cuda.device_count()} "
            "present): start at most that many processes per node"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(requested: str | None = None) -> Iterator[World]:
    """The training processes for one run: one process, or torchrun's ``WORLD_SIZE``.

    With ``WORLD_SIZE > 1`` it joins the process group (NCCL on CUDA, Gloo on the CPU; an
    already initialised group is used as it is) and destroys the group it created on the
    way out, on errors too; on a normal exit the processes first wait for each other, so
    process 0's last checkpoint is written when :func:`fit` returns anywhere.

    Args:
        requested: the ``--device`` (None: CUDA when present, else the CPU).
    """
    size = env_world_size()
    owned = size > 1 and not dist.is_initialized()
    if size <= 1 and not dist.is_initialized():
        yield World(device=pick_device(requested))
        return
    device = _device(requested, int(os.environ.get("LOCAL_RANK", "0")))
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    wait = None
    try:
        wait = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
        world = World(dist.get_rank(), dist.get_world_size(), device, wait)
        yield world
        dist.barrier(group=wait)
    finally:
        if owned:
            dist.destroy_process_group()
        elif wait is not None:
            dist.destroy_process_group(wait)


def prepare(model: nn.Module, world: World) -> nn.Module:
    """``model`` on the world's device; on CUDA with several processes its BatchNorm layers
    become SyncBatchNorm (statistics over the global batch). On the CPU (Gloo) BatchNorm
    statistics stay per process (SyncBatchNorm needs CUDA), so a BatchNorm model trains
    slightly differently from one process; InstanceNorm models (the recon U-Net) do not."""
    if world.size > 1 and world.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(world.device)


def wrap(model: nn.Module, world: World) -> nn.Module:
    """The model the training steps call: DistributedDataParallel (gradients averaged over
    the processes in ``backward``) for several processes, else ``model`` itself.

    ``static_graph``: every step uses the same parameters, and some models hold parameters
    they never use (an smp encoder deeper than its ``encoder_depth``); DDP learns which in
    the first step and leaves their gradients None, as one process does (AdamW skips them).
    """
    if world.size == 1:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (else ``model``): what attacks
    run on, so that their backward passes reduce no gradients between processes."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` summed over the processes (a copy; ``value`` itself for one process)."""
    if world.size == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def on_main(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` run by process 0 alone, its (picklable) result sent to every process.

    The others wait in the world's Gloo group (:data:`WAIT_TIMEOUT`). If ``fn`` fails in
    process 0, it re-raises there and the others raise a one-line :class:`DefendError`.
    """
    if world.size == 1:
        return fn()
    box: list[Any] = [None]
    error: Exception | None = None
    if world.main:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:
            error, box[0] = exc, ("error", f"{type(exc).__name__}: {exc}".splitlines()[0])
    dist.broadcast_object_list(box, src=0, group=world.wait_group)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise DefendError(f"process 0 failed: {value}")
    return value


@dataclass(frozen=True)
class Share:
    """This process's rows ``[start, stop)`` of a global batch of ``total`` rows."""

    start: int
    stop: int
    total: int

    @classmethod
    def of(cls, total: int, world: World) -> Share:
        """Process ``world.rank``'s share of a global batch of ``total`` rows."""
        return cls(*share_bounds(total, world.rank, world.size), total)

    @property
    def rows(self) -> slice:
        return slice(self.start, self.stop)

    def select(self, pattern: torch.Tensor) -> tuple[torch.Tensor, Share]:
        """Rows picked from the global batch by ``pattern`` (total,) bool.

        Returns:
            This process's picks ``(stop - start,)`` bool, and its share of the picked rows
            as a global batch of their own (what an attack on them draws for).
        """
        counts = torch.cumsum(pattern.long(), 0).tolist()
        before = counts[self.start - 1] if self.start else 0
        upto = counts[self.stop - 1] if self.stop else 0
        return pattern[self.rows], Share(before, upto, counts[-1] if counts else 0)


_SHARE: ContextVar[Share | None] = ContextVar("defend_batch_share", default=None)


@contextmanager
def batch_share(share: Share) -> Iterator[None]:
    """Declare, for a block, which rows of the global batch the local batch holds."""
    token = _SHARE.set(share)
    try:
        yield
    finally:
        _SHARE.reset(token)


def current_share(n: int) -> Share:
    """The share of the global batch a local batch of ``n`` rows holds: the one declared by
    :func:`batch_share`, else the whole batch ``(0, n, n)`` (one process, attacks outside
    training)."""
    share = _SHARE.get()
    if share is None:
        return Share(0, n, n)
    if share.stop - share.start != n:
        raise DefendError(
            f"a batch of {n} rows under a declared share of {share.stop - share.start} rows"
        )
    return share


def global_like(x: torch.Tensor, fill: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Random numbers for the whole global batch of ``x``, sliced to ``x``'s rows.

    Args:
        x: a local batch ``(n, ...)`` (:func:`current_share`).
        fill: draws into (or like) an empty tensor ``(total, ...)`` of ``x``'s dtype and
            device, e.g. ``lambda t: t.uniform_(-eps, eps)`` or ``torch.rand_like``.

    Returns:
        ``(n, ...)``: the rows of the global draw that ``x`` holds, the same numbers one
        process draws for them (for one process, exactly ``fill(torch.empty_like(x))``).
    """
    share = current_share(len(x))
    return fill(x.new_empty((share.total, *x.shape[1:])))[share.rows]
