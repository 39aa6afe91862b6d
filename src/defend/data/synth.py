"""``defend data synth``: a small synthetic brain MRI data set for all three tasks.

One set of phantom volumes (:mod:`defend.data.phantom`) feeds

* reconstruction: fastMRI multi-coil HDF5 files that ``fastmri.data.SliceDataset`` reads as-is,
* segmentation: image / lesion-mask PNG pairs of the same slices,
* classification: the same images in torchvision ``ImageFolder`` layout (healthy / lesion).

Layout under ``OUT``::

    dataset.json                         parameters and counts
    {train,val,test}/file_brain_AXFLAIR_synth_VVV.h5
    seg/{train,val,test}/images/NAME.png  8-bit RSS image, min-max scaled per image
    seg/{train,val,test}/masks/NAME.png   label indices (0 background, 1 lesion)
    cls/{train,val,test}/{healthy,lesion}/NAME.png

``NAME`` is ``<volume stem>_sNN`` (slice ``NN``). Volumes are split about 70/15/15 in order
(at least one per split). The same arguments give byte-identical files; every file is written
atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from defend.data import phantom
from defend.errors import DefendError
from defend.io import atomic_write, write_json

SPLITS = ("train", "val", "test")
CLASSES = ("healthy", "lesion")
FORMAT = "defend-synth-v1"
ACQUISITION = "AXFLAIR"
NOISE = 0.004
FOV_MM = 220.0
SLICE_MM = 5.0

_ISMRMRD_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xmlns:xs="http://www.w3.org/2001/XMLSchema" \
xsi:schemaLocation="http://www.ismrm.org/ISMRMRD ismrmrd.xsd">
  <subjectInformation>
    <patientID>{patient_id}</patientID>
  </subjectInformation>
  <measurementInformation>
    <patientPosition>HFS</patientPosition>
    <protocolName>{protocol}</protocolName>
  </measurementInformation>
  <acquisitionSystemInformation>
    <systemVendor>defend-synth</systemVendor>
    <systemModel>phantom</systemModel>
    <systemFieldStrength_T>3.0</systemFieldStrength_T>
    <receiverChannels>{coils}</receiverChannels>
  </acquisitionSystemInformation>
  <experimentalConditions>
    <H1resonanceFrequency_Hz>123255802</H1resonanceFrequency_Hz>
  </experimentalConditions>
  <encoding>
    <encodedSpace>
      <matrixSize>
        <x>{height}</x>
        <y>{width}</y>
        <z>1</z>
      </matrixSize>
      <fieldOfView_mm>
        <x>{fov:.1f}</x>
        <y>{fov:.1f}</y>
        <z>{slice_mm:.1f}</z>
      </fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize>
        <x>{height}</x>
        <y>{width}</y>
        <z>1</z>
      </matrixSize>
      <fieldOfView_mm>
        <x>{fov:.1f}</x>
        <y>{fov:.1f}</y>
        <z>{slice_mm:.1f}</z>
      </fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum>
        <maximum>{width_max}</maximum>
        <center>{width_center}</center>
      </kspace_encoding_step_1>
      <kspace_encoding_step_2>
        <minimum>0</minimum>
        <maximum>0</maximum>
        <center>0</center>
      </kspace_encoding_step_2>
      <average>
        <minimum>0</minimum>
        <maximum>0</maximum>
        <center>0</center>
      </average>
      <slice>
        <minimum>0</minimum>
        <maximum>{slice_max}</maximum>
        <center>{slice_center}</center>
      </slice>
      <contrast>
        <minimum>0</minimum>
        <maximum>0</maximum>
        <center>0</center>
      </contrast>
      <phase>
        <minimum>0</minimum>
        <maximum>0</maximum>
        <center>0</center>
      </phase>
      <repetition>
        <minimum>0</minimum>
        <maximum>0</maximum>
        <center>0</center>
      </repetition>
      <set>
        <minimum>0</minimum>
        <maximum>0</maximum>
        <center>0</center>
      </set>
      <segment>
        <minimum>0</minimum>
        <maximum>0</maximum>
        <center>0</center>
      </segment>
    </encodingLimits>
  </encoding>
  <sequenceParameters>
    <TR>9000</TR>
    <TE>81</TE>
    <TI>2500</TI>
  </sequenceParameters>
</ismrmrdHeader>
"""


def ismrmrd_header(
    height: int, width: int, slices: int, coils: int, patient_id: str, protocol: str = "AX FLAIR"
) -> bytes:
    """A minimal ISMRMRD XML header for k-space of shape ``(slices, coils, height, width)``.

    Matches what ``fastmri.data.SliceDataset`` parses: encoded and recon matrix size
    ``(x, y, z) = (height, width, 1)`` (x is the readout, the k-space rows), and
    ``kspace_encoding_step_1`` limits with centre ``width // 2`` and maximum ``width - 1``, so
    that fastMRI's padding is ``[0, width)`` (no zero-padded columns).
    """
    return _ISMRMRD_HEADER.format(
        patient_id=patient_id,
        protocol=protocol,
        coils=coils,
        height=height,
        width=width,
        fov=FOV_MM,
        slice_mm=SLICE_MM,
        width_max=width - 1,
        width_center=width // 2,
        slice_max=slices - 1,
        slice_center=slices // 2,
    ).encode("utf-8")


def split_counts(volumes: int) -> dict[str, int]:
    """Volumes per split, about 70/15/15 with at least one each."""
    if volumes < 3:
        raise DefendError(f"need at least 3 volumes (one per split), got {volumes}")
    n_val = max(1, round(0.15 * volumes))
    n_test = max(1, round(0.15 * volumes))
    return {"train": volumes - n_val - n_test, "val": n_val, "test": n_test}


def volume_name(index: int) -> str:
    """File stem of volume ``index`` (fastMRI-like: ``file_brain_AXFLAIR_synth_007``)."""
    return f"file_brain_{ACQUISITION}_synth_{index:03d}"


def _write_h5(
    path: Path,
    kspace: np.ndarray,
    target: np.ndarray,
    lesion_mask: np.ndarray,
    header: bytes,
    patient_id: str,
) -> None:
    # fixed libver and no timestamps: identical inputs give identical bytes
    with h5py.File(path, "w", libver=("earliest", "v110"), track_order=False) as f:
        f.create_dataset("ismrmrd_header", data=np.bytes_(header), track_times=False)
        f.create_dataset("kspace", data=kspace, track_times=False)
        f.create_dataset("reconstruction_rss", data=target, track_times=False)
        f.create_dataset("lesion_mask", data=lesion_mask, track_times=False)
        f.attrs["acquisition"] = ACQUISITION
        f.attrs["max"] = float(target.max())
        f.attrs["norm"] = float(np.linalg.norm(target))
        f.attrs["patient_id"] = patient_id


def _write_png(path: Path, array: np.ndarray) -> None:
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))  # 2-D uint8: mode L
    atomic_write(path, lambda p: image.save(p, format="PNG", optimize=False))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scale one image to ``[0, 255]`` and round to uint8 (constant image -> zeros)."""
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.round((image - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _owned_files(out: Path) -> list[Path]:
    """Files a previous ``synthesize`` run wrote under ``out`` (matched by name pattern)."""
    stem = f"file_brain_{ACQUISITION}_synth_*"
    found: list[Path] = []
    for split in SPLITS:
        found += (out / split).glob(f"{stem}.h5")
        for sub in ("images", "masks"):
            found += (out / "seg" / split / sub).glob(f"{stem}.png")
        for cls in CLASSES:
            found += (out / "cls" / split / cls).glob(f"{stem}.png")
    return found


def synthesize(
    out: Path,
    size: int = 64,
    coils: int = 4,
    volumes: int = 24,
    slices: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the synthetic data set under ``out`` (see the module docstring for the layout).

    Each volume ``v`` is drawn from ``numpy.random.default_rng([seed, v])``, so a volume does
    not depend on how many others are generated. k-space is ``fft2c`` of the coil images of a
    phantom with a smooth random phase, plus white noise (std :data:`NOISE`); the target
    ``reconstruction_rss`` is the root-sum-of-squares of ``ifft2c`` of the stored k-space, so
    it is exactly what fastMRI computes from the fully sampled data.

    Args:
        out: output folder; created if missing. It must be empty or hold an earlier synthetic
            data set (whose files are replaced).
        size: image size ``N`` (k-space and targets are ``N x N``), at least 16.
        coils: number of receive coils (1 still writes multi-coil files, with one coil).
        volumes: number of volumes (at least 3: one per split).
        slices: slices per volume.
        seed: random seed.
        progress: show a tqdm progress bar over volumes.

    Returns:
        the contents of ``OUT/dataset.json``: parameters, per-split counts and file names.

    Raises:
        DefendError: invalid parameters, or ``out`` holds something else.
    """
    out = Path(out)
    if size < 16:
        raise DefendError(f"size must be >= 16, got {size}")
    if coils < 1:
        raise DefendError(f"coils must be >= 1, got {coils}")
    if slices < 1:
        raise DefendError(f"slices must be >= 1, got {slices}")
    if seed < 0:
        raise DefendError(f"seed must be >= 0, got {seed}")
    counts = split_counts(volumes)
    if out.exists() and not out.is_dir():
        raise DefendError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "dataset.json").is_file():
            raise DefendError(f"{out}: folder is not empty and holds no synthetic data set")
        for old in _owned_files(out):  # replaced below; leftovers from a larger earlier run go
            old.unlink()

    splits = [s for s in SPLITS for _ in range(counts[s])]
    summary: dict[str, dict[str, Any]] = {
        s: {"volumes": 0, "slices": 0, "lesion_slices": 0, "lesions_px": 0, "files": []}
        for s in SPLITS
    }
    start = time.perf_counter()
    for v in tqdm(range(volumes), desc="synth", unit="vol", disable=not progress):
        rng = np.random.default_rng([seed, v])
        image, lesions = phantom.brain_volume(rng, size, slices)
        maps = phantom.coil_maps(rng, size, coils)
        kspace = phantom.multicoil_kspace(rng, image, maps, noise=NOISE)
        target = phantom.rss(phantom.ifft2c(kspace.astype(np.complex128))).astype(np.float32)

        split, name = splits[v], volume_name(v)
        patient_id = f"synth-{seed}-{v:03d}"
        header = ismrmrd_header(size, size, slices, coils, patient_id)
        lesion_u8 = lesions.astype(np.uint8)
        atomic_write(
            out / split / f"{name}.h5",
            lambda p, k=kspace, t=target, m=lesion_u8, h=header, i=patient_id: _write_h5(
                p, k, t, m, h, i
            ),
        )
        for s in range(slices):
            slice_name = f"{name}_s{s:02d}.png"
            png = to_uint8(target[s])
            label = CLASSES[int(lesions[s].any())]
            _write_png(out / "seg" / split / "images" / slice_name, png)
            _write_png(out / "seg" / split / "masks" / slice_name, lesion_u8[s])
            _write_png(out / "cls" / split / label / slice_name, png)
        entry = summary[split]
        entry["volumes"] += 1
        entry["slices"] += slices
        entry["lesion_slices"] += int(lesions.any(axis=(1, 2)).sum())
        entry["lesions_px"] += int(lesions.sum())
        entry["files"].append(f"{name}.h5")
    elapsed = time.perf_counter() - start

    info: dict[str, Any] = {
        "format": FORMAT,
        "params": {
            "size": size,
            "coils": coils,
            "volumes": volumes,
            "slices": slices,
            "seed": seed,
            "noise": NOISE,
            "acquisition": ACQUISITION,
        },
        "tasks": {
            "recon": {"challenge": "multicoil", "target": "reconstruction_rss"},
            "seg": {"classes": 1, "labels": ["lesion"]},
            "cls": {"classes": list(CLASSES)},
        },
        "splits": summary,
        "total": {
            "volumes": volumes,
            "slices": volumes * slices,
            "lesion_slices": sum(e["lesion_slices"] for e in summary.values()),
        },
    }
    write_json(out / "dataset.json", info)
    # timing is reported to the caller but kept out of the file (byte-identical reruns)
    return {**info, "seconds": elapsed}
