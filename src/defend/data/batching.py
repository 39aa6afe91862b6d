"""Batches of samples that stack: one shape per batch.

fastMRI data mixes k-space shapes across volumes (knee widths 368 and 372; brain widths and
coil counts), and a batch can only stack samples of one shape. :class:`ShapeBatchSampler`
groups a dataset's samples by a shape key (``dataset.shape_keys()``, read from file headers)
and cuts each group into batches, so every sample is used at any batch size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ShapeBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions whose samples share a shape key.

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
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.keys = list(keys)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        counts = Counter(self.keys)
        self._length = sum(-(-c // self.batch_size) for c in counts.values())

    def _groups(self, generator: torch.Generator) -> list[list[int]]:
        n = len(self.keys)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else range(n)
        groups: dict[Hashable, list[int]] = {}
        for i in order:
            groups.setdefault(self.keys[i], []).append(i)
        return list(groups.values())

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        groups = self._groups(generator)
        size = self.batch_size
        batches = [g[i : i + size] for g in groups for i in range(0, len(g), size)]
        if self.shuffle and len(groups) > 1:
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
        yield from batches

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
) -> DataLoader:
    """A ``DataLoader`` whose batches each hold samples of one shape (:class:`ShapeBatchSampler`).

    ``seed`` fixes the shuffle (the same batches however often the loader is iterated, with
    or without workers) and the workers' seeds.
    """
    sampler = ShapeBatchSampler(shape_keys(dataset), batch_size, shuffle, seed)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        generator=torch.Generator().manual_seed(seed + 1),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
