"""Batches of samples that stack: one shape per batch.

fastMRI data mixes k-space shapes across volumes (knee widths 368 and 372; brain widths and
coil counts), and a batch can only stack samples of one shape. :class:`ShapeBatchSampler`
groups a dataset's samples by a shape key (``dataset.shape_keys()``, read from file headers)
and cuts each group into batches, so every sample is used at any batch size.

The same sampler is the distributed sampler of multi-process training: with ``rank`` and
``world`` it cuts the very batches one process would make (the *global* batches) and gives
each process its contiguous share of every one (:func:`share_bounds`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def share_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` that process ``rank`` of ``world`` takes of a global batch of
    ``total`` rows: ``[rank * total // world, (rank + 1) * total // world)``, contiguous and
    as even as the split allows (sizes differ by at most one)."""
    return rank * total // world, (rank + 1) * total // world


class ShapeBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions whose samples share a shape key.

    With ``world > 1`` it is the distributed sampler of multi-process training: every process
    builds the same global batches (same keys, batch size and seed) and yields its contiguous
    share of each (:func:`share_bounds`), so the processes together see exactly the batches
    of one process and ``batch_size`` is the global batch. (``DistributedSampler`` cannot do
    this: it splits the sample order before batching, so a batch could mix shapes.) A global
    batch with fewer rows than processes is skipped (:attr:`skipped` counts them), as one
    process would then have no rows.

    Args:
        keys: one hashable key per sample, in dataset order (e.g. ``(input shape, target
            shape)``).
        batch_size: samples per batch at most (a group's last batch may be smaller).
        shuffle: shuffle the samples (one ``randperm`` over the data set) and, with several
            groups, the order of the batches.
        seed: the shuffle's seed. Every ``iter()`` starts from it afresh (as
            ``DistributedSampler`` does with its seed and epoch), so the batches do not depend
            on how often, or by whom, the sampler was iterated before (DataLoader workers, a
            progress bar).
        rank / world: this process's rank and the number of processes (default one process).
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        self.keys = list(keys)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        sizes = [self._sizes(c) for c in Counter(self.keys).values()]
        self._length = sum(s >= self.world for group in sizes for s in group)
        #: global batches per pass with fewer rows than processes (not yielded)
        self.skipped = sum(s < self.world for group in sizes for s in group)

    def _sizes(self, count: int) -> list[int]:
        """The batch sizes a group of ``count`` samples is cut into."""
        full, rest = divmod(count, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def _groups(self, generator: torch.Generator) -> list[list[int]]:
        n = len(self.keys)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else range(n)
        groups: dict[Hashable, list[int]] = {}
        for i in order:
            groups.setdefault(self.keys[i], []).append(i)
        return list(groups.values())

    def global_batches(self) -> list[list[int]]:
        """Every global batch of one pass, in order (those that are skipped included)."""
        generator = torch.Generator().manual_seed(self.seed)
        groups = self._groups(generator)
        size = self.batch_size
        batches = [g[i : i + size] for g in groups for i in range(0, len(g), size)]
        if self.shuffle and len(groups) > 1:
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
        return batches

    def global_sizes(self) -> list[int]:
        """The global size of each batch :meth:`__iter__` yields a share of, in order."""
        return [len(b) for b in self.global_batches() if len(b) >= self.world]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            if len(batch) >= self.world:
                start, stop = share_bounds(len(batch), self.rank, self.world)
                yield batch[start:stop]

    def __len__(self) -> int:
        return self._length


def shape_keys(dataset: Dataset) -> list[Hashable]:
    """The dataset's ``shape_keys()`` if it has them, else one key for every sample."""
    keys = getattr(dataset, "shape_keys", None)
    return list(keys()) if callable(keys) else [None] * len(dataset)  # type: ignore[arg-type]


def shape_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """A ``DataLoader`` whose batches each hold samples of one shape (:class:`ShapeBatchSampler`).

    ``seed`` fixes the shuffle (the same batches however often the loader is iterated, with
    or without workers) and the workers' seeds. With ``world > 1`` the loader yields process
    ``rank``'s share of each global batch of ``batch_size`` rows (its ``batch_sampler``
    tells the global sizes, :meth:`ShapeBatchSampler.global_sizes`).
    """
    sampler = ShapeBatchSampler(shape_keys(dataset), batch_size, shuffle, seed, rank, world)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        generator=torch.Generator().manual_seed(seed + 1),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
