"""Data: the fastMRI acquisition, synthetic phantoms, and datasets for recon / seg / cls.

See ``docs/design.md`` for the sample dicts every dataset returns.
"""

from defend.data.acquisition import Acquisition
from defend.data.arrays import load_arrays, load_dataset, load_groups, task_root
from defend.data.folders import ClsFolder, SegFolder
from defend.data.recon import ReconDataset
from defend.data.synth import synthesize

__all__ = [
    "Acquisition",
    "ClsFolder",
    "ReconDataset",
    "SegFolder",
    "load_arrays",
    "load_dataset",
    "load_groups",
    "synthesize",
    "task_root",
]
