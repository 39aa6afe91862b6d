"""Small HDF5 files laid out as fastMRI ships them, for tests: the package's writer
(:mod:`defend.data.fastmri_files`)."""

from defend.data.fastmri_files import fastmri_header, write_volume

__all__ = ["fastmri_header", "write_volume"]
