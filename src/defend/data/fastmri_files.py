"""Files laid out as fastMRI ships them: what ``defend bench memory`` measures real sizes on
and the tests read.

As fastMRI's own fixtures (``tests/create_temp_data.py`` in facebookresearch/fastMRI):
complex k-space ``(slices, coils, H, W)`` (single-coil ``(slices, H, W)``), a smaller target
``reconstruction_rss`` / ``reconstruction_esc`` ``(slices, h, w)``, ``max`` / ``norm`` /
``acquisition`` attributes, values around 1e-4 as in the real files, plus the
``ismrmrd_header`` that fastMRI's ``SliceDataset`` reads the padding from:

    padding_left  = encodedSpace.matrixSize.y // 2 - kspace_encoding_step_1.center
    padding_right = padding_left + kspace_encoding_step_1.maximum + 1

The k-space is white noise: right in shape, layout and scale, not in content.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <acquisitionSystemInformation><receiverChannels>{coils}</receiverChannels>
  </acquisitionSystemInformation>
  <encoding>
    <encodedSpace>
      <matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>440</x><y>220</y><z>7.5</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{recon_h}</x><y>{recon_w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>220</x><y>220</y><z>5</z></fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>{step1_max}</maximum><center>{step1_center}</center>
      </kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center>
      </kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>{slice_max}</maximum><center>0</center></slice>
    </encodingLimits>
  </encoding>
</ismrmrdHeader>
"""


def fastmri_header(
    height: int,
    width: int,
    recon: tuple[int, int],
    left: int,
    right: int,
    coils: int = 3,
    slices: int = 3,
) -> bytes:
    """An ISMRMRD header whose encoding limits give fastMRI's padding ``[left, right)``.

    ``encodedSpace`` is the k-space ``(x, y) = (H, W)``, ``reconSpace`` the target ``(h, w)``.
    """
    return _HEADER.format(
        coils=coils,
        height=height,
        width=width,
        recon_h=recon[0],
        recon_w=recon[1],
        step1_center=width // 2 - left,
        step1_max=right - left - 1,
        slice_max=slices - 1,
    ).encode("utf-8")


def write_volume(
    path: Path,
    *,
    coils: int = 3,
    height: int = 32,
    width: int = 40,
    recon: tuple[int, int] = (24, 24),
    padding: tuple[int, int] | None = None,
    slices: int = 3,
    seed: int = 0,
    singlecoil: bool = False,
    target: bool = True,
    scale: float = 1e-4,
) -> np.ndarray:
    """Write one fastMRI-style volume; return its k-space (complex64).

    Args:
        padding: acquired columns ``[left, right)`` (default: 2 columns of padding each side).
        singlecoil: ``(slices, H, W)`` k-space and ``reconstruction_esc``, as fastMRI's knee
            single-coil files; else multi-coil with ``reconstruction_rss``.
        target: write the target (fastMRI's test files have none).
        scale: typical k-space magnitude (real fastMRI files: ~1e-4).
    """
    left, right = padding or (2, width - 2)
    rng = np.random.default_rng(seed)
    shape = (slices, height, width) if singlecoil else (slices, coils, height, width)
    kspace = (scale * (rng.normal(size=shape) + 1j * rng.normal(size=shape))).astype(np.complex64)
    kspace[..., :left] = 0  # as scanners store it: nothing measured in the padding
    kspace[..., right:] = 0
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))  # fastMRI's ifft2c: orthonormal
    image = np.abs(np.fft.fftshift(np.fft.ifft2(shifted, norm="ortho"), axes=(-2, -1)))
    if not singlecoil:
        image = np.sqrt((image**2).sum(axis=1))
    h, w = recon
    top, side = (height - h) // 2, max((width - w) // 2, 0)
    reference = image[:, top : top + h, side : side + w]
    stored = np.zeros((slices, h, w), dtype=np.float32)  # a narrow volume: zero-padded target
    stored[:, :, : reference.shape[-1]] = reference
    header = fastmri_header(height, width, recon, left, right, coils, slices)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        if target:
            key = "reconstruction_esc" if singlecoil else "reconstruction_rss"
            f.create_dataset(key, data=stored)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header))
        f.attrs["max"] = float(stored.max())
        f.attrs["norm"] = float(np.linalg.norm(stored))
        f.attrs["acquisition"] = "AXFLAIR" if width < recon[1] else "CORPD_FBK"
    return kspace


#: fastMRI's folder of each split (multi-coil)
SPLIT_FOLDERS = {"train": "multicoil_train", "val": "multicoil_val", "test": "multicoil_test"}


def write_real_size_set(out: Path, coils: int = 15, widths: tuple[int, ...] = (368, 372),
                        slices: int = 2, height: int = 640, seed: int = 0) -> Path:  # fmt: skip
    """A fastMRI-layout multi-coil set at real size: per split (:data:`SPLIT_FOLDERS`) one
    volume per k-space width in ``widths`` (``coils`` x ``height`` x width, 320 x 320
    targets, ``slices`` slices), the acquired columns all but 17 of each side's padding as in
    fastMRI's knee files. Kept if ``out/.complete`` says it was written with these settings.

    Returns:
        ``out``.
    """
    out = Path(out)
    settings = f"{coils} {widths} {slices} {height} {seed}\n"
    done = out / ".complete"
    if done.exists() and done.read_text() == settings:
        return out
    for s, (split, folder) in enumerate(SPLIT_FOLDERS.items()):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for v, width in enumerate(widths):
            pad = (width - 334) // 2 if width > 334 else 2
            write_volume(out / folder / f"file_{split}_{width}.h5", coils=coils, height=height,
                         width=width, recon=(320, 320), padding=(pad, width - pad),
                         slices=slices, seed=seed * 100 + s * 10 + v)  # fmt: skip
    done.write_text(settings)
    return out
