"""``defend data synth``: a small synthetic brain MRI data set for all three tasks.

One set of phantom volumes (:mod:`defend.data.phantom`) feeds

* reconstruction: fastMRI multi-coil HDF5 files that ``fastmri.data.SliceDataset`` reads as-is,
* segmentation: image / lesion-mask PNG pairs of the same slices,
* classification: the same images in torchvision ``ImageFolder`` layout (healthy / lesion).

Layout under ``OUT``::

    dataset.json                         parameters and counts (written last)
    .synth-in-progress.json              parameters, while a run is under way or interrupted
    {train,val,test}/file_brain_AXFLAIR_synth_VVV.h5
    seg/{train,val,test}/images/NAME.png  8-bit RSS image, min-max scaled per image
    seg/{train,val,test}/masks/NAME.png   label indices (0 background, 1 lesion)
    cls/{train,val,test}/{healthy,lesion}/NAME.png

``NAME`` is ``<volume stem>_sNN`` (slice ``NN``). Volumes are split about 70/15/15 in order
(at least one per split); or ``test_volumes`` test, about 15 % val, the rest train. The same
arguments give byte-identical files; every file is written atomically, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from defend.data import phantom
from defend.errors import DefendError
from defend.io import atomic_write, check_writable, write_json

SPLITS = ("train", "val", "test")
CLASSES = ("healthy", "lesion")
FORMAT = "defend-synth-v1"
#: Written before the first file and removed after ``dataset.json``: an interrupted run.
MARKER = ".synth-in-progress.json"
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
{spaces}    <trajectory>cartesian</trajectory>
    <encodingLimits>
{limits}    </encodingLimits>
  </encoding>
  <sequenceParameters>
    <TR>9000</TR>
    <TE>81</TE>
    <TI>2500</TI>
  </sequenceParameters>
</ismrmrdHeader>
"""


def _space(name: str, height: int, width: int) -> str:
    """An ``encodedSpace`` / ``reconSpace`` element: matrix size and field of view."""
    return f"""    <{name}>
      <matrixSize>
        <x>{height}</x>
        <y>{width}</y>
        <z>1</z>
      </matrixSize>
      <fieldOfView_mm>
        <x>{FOV_MM:.1f}</x>
        <y>{FOV_MM:.1f}</y>
        <z>{SLICE_MM:.1f}</z>
      </fieldOfView_mm>
    </{name}>
"""


def _limit(name: str, maximum: int = 0, center: int = 0) -> str:
    """One ``encodingLimits`` element (minimum 0)."""
    return f"""      <{name}>
        <minimum>0</minimum>
        <maximum>{maximum}</maximum>
        <center>{center}</center>
      </{name}>
"""


#: the encoding limits that are 0 in a 2D single-contrast acquisition, in ISMRMRD's order
_ZERO_LIMITS = ("contrast", "phase", "repetition", "set", "segment")


def ismrmrd_header(
    height: int, width: int, slices: int, coils: int, patient_id: str, protocol: str = "AX FLAIR"
) -> bytes:
    """A minimal ISMRMRD XML header for k-space of shape ``(slices, coils, height, width)``.

    Matches what ``fastmri.data.SliceDataset`` parses: encoded and recon matrix size
    ``(x, y, z) = (height, width, 1)`` (x is the readout, the k-space rows), and
    ``kspace_encoding_step_1`` limits with centre ``width // 2`` and maximum ``width - 1``, so
    that fastMRI's padding is ``[0, width)`` (no zero-padded columns).
    """
    limits = (
        _limit("kspace_encoding_step_1", width - 1, width // 2)
        + _limit("kspace_encoding_step_2") + _limit("average")
        + _limit("slice", slices - 1, slices // 2)
        + "".join(_limit(name) for name in _ZERO_LIMITS)
    )  # fmt: skip
    spaces = _space("encodedSpace", height, width) + _space("reconSpace", height, width)
    return _ISMRMRD_HEADER.format(
        patient_id=patient_id, protocol=protocol, coils=coils, spaces=spaces, limits=limits
    ).encode("utf-8")


def split_counts(volumes: int, test_volumes: int = 0) -> dict[str, int]:
    """Volumes per split, about 70/15/15 with at least one each; ``test_volumes`` > 0: that
    many test volumes (a test split sized for the samples a matrix cell attacks), val still
    about 15 % of ``volumes``, train the rest."""
    if volumes < 3:
        raise DefendError(f"need at least 3 volumes (one per split), got {volumes}")
    n_val = max(1, round(0.15 * volumes))
    n_test = test_volumes or max(1, round(0.15 * volumes))
    if test_volumes < 0 or volumes - n_val - n_test < 1:
        raise DefendError(
            f"test_volumes must be >= 0 and leave a volume to train on and {n_val} to "
            f"validate on of {volumes}, got {test_volumes}"
        )
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


def _params(size: int, coils: int, volumes: int, slices: int, seed: int,
            test_volumes: int = 0) -> dict[str, Any]:  # fmt: skip
    """The parameters stored in ``dataset.json`` (and in the in-progress marker;
    ``test_volumes`` only where it is set, so older data sets keep their parameters)."""
    params = {"size": size, "coils": coils, "volumes": volumes, "slices": slices, "seed": seed,
              "noise": NOISE, "acquisition": ACQUISITION}  # fmt: skip
    return {**params, "test_volumes": test_volumes} if test_volumes else params


def _stored_params(path: Path) -> dict[str, Any] | None:
    """The parameters in a ``dataset.json`` or marker file of ours, else ``None``."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        return None
    params = info.get("params")
    return params if isinstance(params, dict) else None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"size 32 (you asked 64)"``; several: ``"size 32, seed 1 (you asked size 64, seed 0)"``."""
    keys = [k for k in new if old.get(k) != new[k]] or list(new)
    was = ", ".join(f"{k} {old.get(k)}" for k in keys)
    if len(keys) == 1:
        return f"{was} (you asked {new[keys[0]]})"
    return f"{was} (you asked {', '.join(f'{k} {new[k]}' for k in keys)})"


def _check_out(out: Path, params: dict[str, Any]) -> str:
    """What to do with ``out``: ``"new"``, ``"resume"`` (an interrupted run with the same
    parameters) or ``"done"`` (a complete data set with the same parameters).

    Raises:
        DefendError: ``out`` cannot be written, holds a data set (complete or interrupted) with
            other parameters, or holds something else.
    """
    check_writable(out, "dir")
    if not out.is_dir() or not any(out.iterdir()):
        return "new"
    for name, what, state in (
        ("dataset.json", "a synthetic data set", "done"),
        (MARKER, "an interrupted synth", "resume"),
    ):
        if (out / name).is_file():
            old = _stored_params(out / name)
            if old is None:
                raise DefendError(f"{out / name}: unreadable, or not written by defend data synth")
            if old != params:
                raise DefendError(
                    f"{out}: holds {what} with {_differences(old, params)}; remove it or "
                    "choose another folder"
                )
            return state
    raise DefendError(f"{out}: folder is not empty and holds no synthetic data set")


def _slice_files(out: Path, split: str, name: str, s: int, lesion: bool) -> tuple[Path, ...]:
    """The segmentation image, mask and classification image of slice ``s``."""
    slice_name = f"{name}_s{s:02d}.png"
    seg = out / "seg" / split
    return (
        seg / "images" / slice_name,
        seg / "masks" / slice_name,
        out / "cls" / split / CLASSES[int(lesion)] / slice_name,
    )


def _written_lesions(out: Path, split: str, name: str, slices: int) -> np.ndarray | None:
    """The lesion masks of a volume an interrupted run wrote completely, else ``None``.

    Every file is written atomically, so a file that exists is complete.
    """
    try:
        with h5py.File(out / split / f"{name}.h5", "r") as f:
            lesions = np.asarray(f["lesion_mask"][()]).astype(bool)
    except (OSError, KeyError):
        return None
    if lesions.shape[0] != slices:
        return None
    for s in range(slices):
        if not all(p.is_file() for p in _slice_files(out, split, name, s, lesions[s].any())):
            return None
    return lesions


def _write_volume(out: Path, split: str, v: int, params: dict[str, Any]) -> np.ndarray:
    """Generate volume ``v`` and write its HDF5 file and PNGs; returns its lesion masks."""
    size, coils, slices, seed = (params[k] for k in ("size", "coils", "slices", "seed"))
    rng = np.random.default_rng([seed, v])
    image, lesions = phantom.brain_volume(rng, size, slices)
    maps = phantom.coil_maps(rng, size, coils)
    kspace = phantom.multicoil_kspace(rng, image, maps, noise=NOISE)
    target = phantom.rss(phantom.ifft2c(kspace.astype(np.complex128))).astype(np.float32)

    name = volume_name(v)
    patient_id = f"synth-{seed}-{v:03d}"
    header = ismrmrd_header(size, size, slices, coils, patient_id)
    lesion_u8 = lesions.astype(np.uint8)
    atomic_write(
        out / split / f"{name}.h5",
        lambda p: _write_h5(p, kspace, target, lesion_u8, header, patient_id),
    )
    for s in range(slices):
        png = to_uint8(target[s])
        image_path, mask_path, cls_path = _slice_files(out, split, name, s, lesions[s].any())
        _write_png(image_path, png)
        _write_png(mask_path, lesion_u8[s])
        _write_png(cls_path, png)
    return lesions


def _info(params: dict[str, Any], summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The contents of ``dataset.json``."""
    return {
        "format": FORMAT,
        "params": params,
        "tasks": {
            "recon": {"challenge": "multicoil", "target": "reconstruction_rss"},
            "seg": {"classes": 1, "labels": ["lesion"]},
            "cls": {"classes": list(CLASSES)},
        },
        "splits": summary,
        "total": {
            "volumes": params["volumes"],
            "slices": params["volumes"] * params["slices"],
            "lesion_slices": sum(e["lesion_slices"] for e in summary.values()),
        },
    }


def _write_volumes(
    out: Path, params: dict[str, Any], counts: dict[str, int], *, resume: bool, progress: bool
) -> dict[str, dict[str, Any]]:
    """Write every volume (on ``resume``, keep those already complete); per-split counts."""
    splits = [s for s in SPLITS for _ in range(counts[s])]
    slices = params["slices"]
    summary: dict[str, dict[str, Any]] = {
        s: {"volumes": 0, "slices": 0, "lesion_slices": 0, "lesions_px": 0, "files": []}
        for s in SPLITS
    }
    for v in tqdm(range(params["volumes"]), desc="synth", unit="vol", disable=not progress):
        split, name = splits[v], volume_name(v)
        lesions = _written_lesions(out, split, name, slices) if resume else None
        if lesions is None:
            lesions = _write_volume(out, split, v, params)
        entry = summary[split]
        entry["volumes"] += 1
        entry["slices"] += slices
        entry["lesion_slices"] += int(lesions.any(axis=(1, 2)).sum())
        entry["lesions_px"] += int(lesions.sum())
        entry["files"].append(f"{name}.h5")
    return summary


def _check_params(size: int, coils: int, slices: int, seed: int) -> None:
    """Refuse what :func:`synthesize` cannot use (volumes: :func:`split_counts`).

    Raises:
        DefendError: ``size < 16``, ``coils < 1``, ``slices < 1`` or ``seed < 0``.
    """
    for key, value, low in (("size", size, 16), ("coils", coils, 1), ("slices", slices, 1)):
        if value < low:
            raise DefendError(f"{key} must be >= {low}, got {value}")
    if seed < 0:
        raise DefendError(f"seed must be >= 0, got {seed}")


def _existing(out: Path) -> dict[str, Any]:
    """What :func:`synthesize` returns for the complete data set in ``out``: ``dataset.json``
    plus ``seconds`` 0.0 and ``status`` ``"existing"``. Rewrites nothing; removes the marker of a
    run interrupted after it wrote ``dataset.json``."""
    (out / MARKER).unlink(missing_ok=True)
    return {**json.loads((out / "dataset.json").read_text()), "seconds": 0.0, "status": "existing"}


def _generate(
    out: Path, params: dict[str, Any], counts: dict[str, int], *, resume: bool, progress: bool
) -> tuple[dict[str, Any], float]:
    """Write the data set between the in-progress marker and ``dataset.json``.

    The marker :data:`MARKER` is written first and removed last, so an interrupted run leaves
    it behind. On ``resume``, ``atomic_write`` leftovers (``.*.tmp``) of the killed run are
    removed first and complete volumes are kept (see :func:`_write_volumes`).

    Returns:
        ``(info, seconds)``: the contents of ``dataset.json`` and the wall-clock seconds spent
        writing the volumes.
    """
    if resume:
        for tmp in out.rglob(".*.tmp"):  # atomic_write leftovers of a killed run
            tmp.unlink()
    write_json(out / MARKER, {"format": FORMAT, "params": params})
    start = time.perf_counter()
    summary = _write_volumes(out, params, counts, resume=resume, progress=progress)
    elapsed = time.perf_counter() - start
    info = _info(params, summary)
    write_json(out / "dataset.json", info)
    (out / MARKER).unlink()
    return info, elapsed


def synthesize(
    out: Path,
    size: int = 64,
    coils: int = 4,
    volumes: int = 24,
    slices: int = 8,
    seed: int = 0,
    progress: bool = True,
    test_volumes: int = 0,
) -> dict[str, Any]:
    """Generate the synthetic data set under ``out`` (see the module docstring for the layout).

    Each volume ``v`` is drawn from ``numpy.random.default_rng([seed, v])``, so a volume does
    not depend on how many others are generated. k-space is ``fft2c`` of the coil images of a
    phantom with a smooth random phase, plus white noise (std :data:`NOISE`); the target
    ``reconstruction_rss`` is the root-sum-of-squares of ``ifft2c`` of the stored k-space, so
    it is exactly what fastMRI computes from the fully sampled data.

    An interrupted run leaves ``OUT/.synth-in-progress.json`` (its parameters): the same call
    again resumes it, skipping the volumes already written. A folder that holds a complete
    data set with the same parameters is left as it is.

    Args:
        out: output folder; created if missing. It must be empty, or hold a data set (complete
            or interrupted) written with the same parameters.
        size: image size ``N`` (k-space and targets are ``N x N``), at least 16.
        coils: number of receive coils (1 still writes multi-coil files, with one coil).
        volumes: number of volumes (at least 3: one per split).
        slices: slices per volume.
        seed: random seed.
        progress: show a tqdm progress bar over volumes.
        test_volumes: volumes in the test split (0: about 15 %; :func:`split_counts`).

    Returns:
        the contents of ``OUT/dataset.json`` (parameters, per-split counts and file names),
        plus ``seconds`` and ``status``: ``"written"``, ``"resumed"`` or ``"existing"``.

    Raises:
        DefendError: invalid parameters; ``out`` cannot be written, holds a data set with other
            parameters (named in the message), or holds something else.
    """
    out = Path(out)
    _check_params(size, coils, slices, seed)
    counts = split_counts(volumes, test_volumes)
    params = _params(size, coils, volumes, slices, seed, test_volumes)
    state = _check_out(out, params)
    if state == "done":
        return _existing(out)
    info, elapsed = _generate(out, params, counts, resume=state == "resume", progress=progress)
    # timing is reported to the caller but kept out of the file (byte-identical reruns)
    status = "resumed" if state == "resume" else "written"
    return {**info, "seconds": elapsed, "status": status}


def describe_synth(out: str | Path, result: dict[str, Any]) -> str:
    """One line about what :func:`synthesize` returned, for the command line."""
    params, splits = result["params"], result["splits"]
    counts = " / ".join(f"{s} {splits[s]['volumes']}" for s in SPLITS)
    what = (
        f"{params['volumes']} volumes ({counts}), {result['total']['slices']} slices, "
        f"{params['size']} px, {params['coils']} coil{'s' if params['coils'] != 1 else ''}"
    )
    details = f"details in {Path(out) / 'dataset.json'}"
    if result.get("status") == "existing":
        return f"{out}: already there ({what}); nothing rewritten; {details}"
    resumed = " (resumed)" if result.get("status") == "resumed" else ""
    return f"wrote {out}{resumed}: {what} in {result['seconds']:.1f} s; {details}"
