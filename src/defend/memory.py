"""One memory budget for every pass through a model.

Where a user thinks in samples, a command takes ``--batch-size``. Everywhere else (the noisy
copies of smoothing, EOT's draws, detection data, the matrix's attacks) the number of samples
one pass holds is derived from a budget in bytes, ``samples = budget // per_sample``:

* the budget (:func:`memory_budget`): ``DEFEND_MEMORY`` (e.g. ``8GiB``; the matrix's ``[run]
  memory`` sets it), else on CUDA 80 % of the device's free memory (``torch.cuda.
  mem_get_info``), on the CPU the smaller of :data:`CPU_BUDGET` and 75 % of the host's
  available memory;
* ``per_sample`` (:func:`sample_bytes`) is measured, not guessed: one sample through the
  model with autograd on, counting the bytes of every tensor autograd saves for the backward
  pass (``torch.autograd.graph.saved_tensors_hooks``) plus the input and output, i.e. what
  one more sample adds to the peak of a pass with gradients (a pass without is cheaper, so
  the count is safe for both).

Results never depend on the derived sizes: smoothing draws its noise in seeded blocks, EOT
one draw at a time, the attacks per sample.
"""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from collections.abc import Callable, Iterator

import torch

from defend.device import free_memory
from defend.errors import DefendError

#: the CPU budget for a pass's tensors: a CPU pass gains no speed from holding more samples
#: once it holds a few (docs/benchmark.md: certify at real size, 6 and 2 GiB), and with the
#: process's own ~1.5 GiB (libraries, model, data) a real-size fastMRI slice's work stays
#: well within 8 GiB of host memory (6 GiB took certify to 7.2 GiB)
CPU_BUDGET = 2 * 2**30
#: the most samples one derived pass holds: beyond this a pass's fixed costs are negligible,
#: and memory is better left to the rest of the machine
MAX_SAMPLES = 1000
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_measured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parse_bytes(text: str | int) -> int:
    """``8GiB``, ``512MiB``, ``2G``, ``1.5g`` or a plain byte count as bytes.

    Raises:
        DefendError: anything else, or not above 0 (one line naming the value).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
        if found is None:
            raise DefendError(f"memory must be a size such as 8GiB or 512MiB, got {text!r}")
        value = int(float(found[1]) * _UNITS[found[2]])
    if value <= 0:
        raise DefendError(f"memory must be > 0, got {text!r}")
    return value


def memory_budget(device: str | torch.device) -> int:
    """Bytes a pass's tensors may take on ``device`` (module doc)."""
    if os.environ.get("DEFEND_MEMORY"):
        return parse_bytes(os.environ["DEFEND_MEMORY"])
    device = torch.device(device)
    free = free_memory(device)
    if device.type == "cuda":
        return int(0.8 * free)
    return CPU_BUDGET if free is None else min(CPU_BUDGET, int(0.75 * free))


def _no_backward(_: None) -> torch.Tensor:
    raise RuntimeError("a pass measured by sample_bytes has no backward")


def _pass_bytes(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves in ``forward(x)`` (each storage once), of ``x``
    and of the output with their gradients."""
    storages: dict[int, torch.UntypedStorage] = {}

    def pack(tensor: torch.Tensor) -> None:
        # the storage is held until the count, so that a freed one's address is not reused
        # by a later tensor (which would count once); the graph keeps nothing: a node
        # holding its own output would be a cycle through C++ that Python's collector
        # cannot free, the model with it
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage

    x = x.detach().clone().requires_grad_(True)
    devices = [x.device] if x.device.type == "cuda" else []
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, _no_backward)
    with torch.random.fork_rng(devices=devices), torch.enable_grad(), hooks:  # draws nothing
        out = forward(x)
    return sum(s.nbytes() for s in storages.values()) + 2 * x.nbytes + 2 * out.nbytes


def sample_bytes(forward: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor,
                 owner: object = None) -> int:  # fmt: skip
    """Bytes one sample ``sample`` (...) adds to a pass through ``forward``: the growth of
    :func:`_pass_bytes` from a batch of one to a batch of two (what is saved once, e.g. the
    weights, drops out), at least the input's bytes (module doc). Measured once per ``owner``
    (default ``forward``; pass the model when ``forward`` is a bound method), forward
    function and shape; the measurement draws no random numbers (the generators are
    forked), so results do not depend on whether a size was measured or given."""
    owner = forward if owner is None else owner
    known = _measured.setdefault(owner, {})
    function = getattr(forward, "__func__", forward)  # which forward of the owner
    name = getattr(function, "__qualname__", type(function).__qualname__)
    key = (name, tuple(sample.shape), sample.dtype, str(sample.device))
    if key not in known:
        one, two = (_pass_bytes(forward, sample.expand(k, *sample.shape)) for k in (1, 2))
        known[key] = max(two - one, sample.nbytes)
    return known[key]


def samples_per_pass(forward: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor,
                     device: str | torch.device, owner: object = None) -> int:  # fmt: skip
    """How many samples like ``sample`` one pass through ``forward`` may hold within the
    budget of ``device`` (:func:`memory_budget`, :func:`sample_bytes`): at least 1, at most
    :data:`MAX_SAMPLES`."""
    fits = memory_budget(device) // sample_bytes(forward, sample, owner)
    return max(1, min(MAX_SAMPLES, fits))


@contextlib.contextmanager
def budget(size: str | int | None) -> Iterator[None]:
    """Within the block, :func:`memory_budget` is ``size`` (``8GiB``, ...; empty or None:
    unchanged), as ``DEFEND_MEMORY`` sets it (the matrix's ``[run] memory``)."""
    if not size:
        yield
        return
    before = os.environ.get("DEFEND_MEMORY")
    os.environ["DEFEND_MEMORY"] = str(parse_bytes(size))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DEFEND_MEMORY", None)
        else:
            os.environ["DEFEND_MEMORY"] = before
