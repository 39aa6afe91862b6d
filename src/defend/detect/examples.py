"""Detection data: clean and attacked inputs of a reconstruction model, with their regions.

:func:`make_detection_data` takes a reconstruction checkpoint and a data folder and, for every
slice of each split (the folder's train / val / test, which are split by volume, so no
volume is in two splits; ``tune`` attacks the val volumes at test's held-out settings, see
:data:`VOLUMES`), makes these samples:

* ``clean`` (label 0);
* ``copies`` pairs (:data:`SETTINGS`: 2 a slice for train and val; on test one per held-out
  budget, so that each budget is measured on every test slice) of
  * ``hallucination`` (label 1): :class:`~defend.attacks.HallucinationAttack` at a setting
    drawn per slice and copy from its split's :data:`SETTINGS`: region shape, size and
    position (:func:`~defend.attacks.region.random_regions`), target contrast, norm and
    budget. The test split holds region shapes (disk, blob) and budgets (the attack's
    default l-inf 0.1, l2 0.1, l-inf 0.03) that train and val never show;
  * ``noise`` (label 0): Gaussian noise on the entries the attack may move (the real parts
    of the measured k-space, as Buğday et al.'s attack) with the l2 norm of that
    hallucination's perturbation, a hard negative;
* ``pgd`` (label 1, reported apart): ART's PGD on the sampled k-space (10 steps) at the
  first copy's l-inf budget (0.1 where it is l2), raising the reconstruction
  error without a localised feature.

Each sample keeps what a detector sees (:func:`~defend.detect.features.detector_inputs`,
(6, h, w)), its (h, w) region (all False but for hallucinations), its settings and the
baseline scores: the oracle PSNR / SSIM / NRMSE of the reconstruction against the clean one
(they need the clean reference) and the reference-free ``dc_error`` (the measurement map's
norm over the reconstruction's) and ``kspace_residual`` (``||M F S f - y||^2 / ||y||^2``).

**Attack draws of their own.** The hallucination attacks of a split run with
:func:`attack_seed` (the data's seed, the split and :data:`STREAM` hashed together), never
with the data's seed itself, which ``defend matrix`` and ``defend attack`` evaluate with;
each one's random start is keyed by its slice and copy (:func:`attack_ids`) under that seed.
So a slice (a file and slice of a split's volumes) is attacked with draws of its own, apart
from every other split's slices and from the evaluation's attacks: the detector is not
trained on the very perturbations it is evaluated on (Carlini et al. 2019, "On Evaluating
Adversarial Robustness"). Settings and noise negatives draw from generators keyed by
(seed, split, slice, purpose) as well.

Files: ``OUT/SPLIT/part-NNNN.npz`` per chunk of slices, each written atomically, and
``OUT/manifest.json``; a rerun with the same settings makes only the missing parts. The
manifest keys the data on the checkpoint's content (:func:`checkpoint_identity`), so a model
retrained in place gets new data and a renamed or copied one keeps its own.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from defend.attacks.art_pgd import kspace_pgd
from defend.attacks.budget import KspaceBudget
from defend.attacks.region import random_regions
from defend.data import load_groups
from defend.data.arrays import split_size
from defend.detect.features import forward_in_passes
from defend.errors import DefendError
from defend.io import check_writable, file_sha256, load_checkpoint, write_json, write_npz

#: the attack settings per split: region shapes, (norm, eps) budgets (relative, the attack's
#: units), target contrast range (a fraction of the clean image's range), hallucinations per
#: slice (``copies``; ``each_budget``: copy c at budget c, else a budget drawn per copy)
SEEN = {"regions": ("line", "square"), "budgets": (("inf", 0.05), ("inf", 0.2), ("2", 0.05),
                                                   ("2", 0.2)), "alpha": (0.15, 0.5),
        "copies": 2, "each_budget": False}  # fmt: skip
HELD_OUT = {"regions": ("disk", "blob"), "budgets": (("inf", 0.1), ("2", 0.1), ("inf", 0.03)),
            "alpha": (0.15, 0.5), "copies": 3, "each_budget": True}  # fmt: skip
SETTINGS = {"train": SEEN, "val": SEEN, "tune": HELD_OUT, "test": HELD_OUT}
#: the data split whose volumes a detection split attacks: ``tune`` is the held-out settings
#: on the validation volumes, where a choice such as the score pooling is made, so that the
#: test volumes stay unseen until the final measurement
VOLUMES = {"train": "train", "val": "val", "tune": "val", "test": "test"}
#: the kinds of sample; a slice gives clean, (hallucination, noise) x copies, pgd, in order
KINDS = ("clean", "hallucination", "noise", "pgd")
LABELS = {"clean": 0, "hallucination": 1, "noise": 0, "pgd": 1}
#: bumped when what a part holds changes (older parts are refused, not mixed in)
VERSION = 4
#: the phase constant of the detection data's attack seeds (:func:`attack_seed`)
STREAM = "detection data"


def attack_ids(split: str, positions: np.ndarray) -> np.ndarray:
    """(N * copies,) one id per hallucination of the slices at ``positions``, slice-major:
    ``position * copies + copy`` (what seeds each one, whatever the chunking)."""
    copies = SETTINGS[split]["copies"]
    return (np.asarray(positions)[:, None] * copies + np.arange(copies)).reshape(-1)


def draw_settings(split: str, positions: np.ndarray, shape: tuple[int, int], seed: int) -> dict:
    """The hallucination settings of the slices at dataset ``positions`` of ``split``, each
    copy drawn from its own generator (``seed``, split, :func:`attack_ids`), so any chunking
    draws the same.

    Returns:
        ``{"region": (M, h, w) bool, "alpha": (M,), "norm": [M], "eps": (M,),
        "region_kind": [M]}``, M = N * copies, slice-major.
    """
    choice = SETTINGS[split]
    out: dict[str, list] = {"region": [], "alpha": [], "norm": [], "eps": [], "region_kind": []}
    for ident in attack_ids(split, positions):
        g = torch.Generator().manual_seed(_seed(seed, split, int(ident), "setting"))
        kind = choice["regions"][int(torch.randint(len(choice["regions"]), (1,), generator=g))]
        budget = int(torch.randint(len(choice["budgets"]), (1,), generator=g))
        if choice["each_budget"]:
            budget = int(ident) % choice["copies"]
        norm, eps = choice["budgets"][budget]
        low, high = choice["alpha"]
        out["alpha"].append(low + (high - low) * float(torch.rand(1, generator=g)))
        out["region"].append(random_regions(shape, 1, g, kinds=(kind,))[0])
        out["norm"].append(norm)
        out["eps"].append(eps)
        out["region_kind"].append(kind)
    return {
        **out,
        "region": torch.stack(out["region"]),
        "alpha": np.asarray(out["alpha"], np.float32),
        "eps": np.asarray(out["eps"], np.float32),
    }


def attack_seed(seed: int, split: str) -> int:
    """The seed the hallucination attacks of ``split`` run with (module doc): a 63-bit hash
    of ``(seed, split, STREAM)``, never ``seed`` itself (what the evaluation attacks run
    with), and another for every split."""
    derived = _seed(seed, split, 0, STREAM)
    return derived if derived != seed else derived ^ 1


def _seed(seed: int, split: str, position: int, what: str) -> int:
    """A generator seed of its own for each (seed, split, position, purpose)."""
    words = [seed, *map(ord, split), position, *map(ord, what)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def _hallucinate(
    estimator: Any, x: np.ndarray, settings: dict, positions: np.ndarray, seed: int, max_iter: int
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Each row of ``x`` (M, coils, H, W, 2) attacked at its own setting: one attack per
    budget, per-sample regions and contrasts; ``positions`` (M,) seed each row's start.
    Returns ``(x_adv, report rows)``."""
    # ART loads on first use (about 3 s); from the package, so that a class patched there runs
    from defend.attacks import HallucinationAttack  # ART: ~3 s, as below

    x_adv, rows = x.copy(), [{} for _ in range(len(x))]
    budgets = sorted(set(zip(settings["norm"], settings["eps"].tolist(), strict=True)))
    for norm, eps in budgets:
        picked = np.flatnonzero(
            (np.asarray(settings["norm"]) == norm) & (settings["eps"] == np.float32(eps))
        )
        attack = HallucinationAttack(
            estimator,
            eps=float(eps),
            norm=norm,
            max_iter=max_iter,
            region_mask=settings["region"][picked],
            alpha=settings["alpha"][picked],
            seed=seed,
        )
        x_adv[picked] = attack.generate(x[picked], indices=positions[picked])
        for i, row in zip(picked, attack.report_rows(), strict=True):
            rows[i] = row
    return x_adv, rows


def _same_norm_noise(
    x: np.ndarray, x_adv: np.ndarray, movable: np.ndarray, split: str, positions: np.ndarray,
    seed: int,
) -> np.ndarray:  # fmt: skip
    """Gaussian noise on the ``movable`` entries of each slice (0/1, the shape of ``x``) with
    the l2 norm of its attack's perturbation ``x_adv - x`` (a hard negative)."""
    noisy = x.copy()
    for i, position in enumerate(positions):
        rng = np.random.default_rng(_seed(seed, split, int(position), "noise"))
        noise = rng.standard_normal(x.shape[1:]).astype(np.float32) * movable[i]
        size = np.linalg.norm(x_adv[i] - x[i])
        noisy[i] += noise * (size / max(np.linalg.norm(noise), 1e-30))
    return noisy


def _scores(
    estimator: Any, x: np.ndarray, clean_recon: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]:
    """The reconstruction of k-space ``x`` (N, coils, H, W, 2), the detector's inputs and the
    baseline scores of each slice (the oracle ones against ``clean_recon`` (N, h, w); None:
    ``x`` is the clean k-space, compared with its own reconstruction)."""
    # skimage (through fastmri.evaluate) loads on first use: about 0.7 s
    from defend.metrics import image_similarity

    recon, inputs, residual = forward_in_passes(estimator, torch.as_tensor(x))
    clean_recon = recon if clean_recon is None else clean_recon
    # the map over the reconstruction: both channels carry the same per-sample scale
    dc_error = inputs[:, 2].flatten(1).norm(dim=1) / inputs[:, 0].flatten(1).norm(dim=1)
    oracle = [
        image_similarity(c, r)
        for c, r in zip(clean_recon.cpu().numpy(), recon.cpu().numpy(), strict=True)
    ]
    scores = {k: np.array([o[k] for o in oracle], np.float32) for k in ("psnr", "ssim", "nrmse")}
    scores["dc_error"] = dc_error.cpu().numpy().astype(np.float32)
    scores["kspace_residual"] = residual.cpu().numpy().astype(np.float32)
    return recon, inputs, scores


def chunk_samples(
    estimator: Any,
    x: np.ndarray,
    y: np.ndarray,
    positions: np.ndarray,
    split: str,
    seed: int = 0,
    max_iter: int = 150,
) -> dict[str, np.ndarray]:
    """The samples of each slice of a chunk (module doc) in slice-major order: for slice 0
    clean, (hallucination, noise) for each copy, pgd; then slice 1 ...

    Args:
        estimator: the guarded reconstruction estimator, for this chunk's k-space shape.
        x: (N, coils, H, W, 2) masked k-space. y: (N, h, w) ground-truth images.
        positions: (N,) the slices' dataset positions in ``split`` (they seed everything).
        seed: the data's seed (the attacks run with ``attack_seed(seed, split)``).
        max_iter: the hallucination attack's iterations.
    """
    n, shape, copies = len(x), tuple(y.shape[-2:]), SETTINGS[split]["copies"]
    settings = draw_settings(split, positions, shape, seed)
    attacked, pgd_eps, rows = _attack_chunk(
        estimator, x, y, settings, positions, split, seed, max_iter
    )
    parts = _score_kinds(estimator, x, attacked, copies)
    columns = _columns(parts, settings, pgd_eps, rows, positions, copies)
    sizes, order, filler = _kind_sizes(n, copies), _slice_order(n, copies), _fillers(shape)
    return {key: _gather(values, sizes, order, filler.get(key)) for key, values in columns.items()}


def _attack_chunk(
    estimator: Any, x: np.ndarray, y: np.ndarray, settings: dict, positions: np.ndarray,
    split: str, seed: int, max_iter: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[dict[str, float]]]:  # fmt: skip
    """The attacked k-space of the N slices ``x`` (N, coils, H, W, 2) of a chunk.

    Returns:
        ``(attacked, pgd_eps, rows)``: ``attacked["hallucination"]`` and ``["noise"]``
        (N * copies, coils, H, W, 2), slice-major, each copy at its ``settings``
        (:func:`draw_settings`) and the noise with its hallucination's l2 norm;
        ``attacked["pgd"]`` (N, coils, H, W, 2) at ``pgd_eps`` (N,), the first copy's
        l-inf budget (0.1 where it is l2); ``rows``: the hallucination attack's report row
        of each copy.
    """
    # ART loads on first use: load_detection_data's callers need none of it (about 3 s)
    from defend.attacks.hallucination import sampled_columns

    copies, ids = SETTINGS[split]["copies"], attack_ids(split, positions)
    x_rep = np.repeat(x, copies, axis=0)
    x_hal, rows = _hallucinate(estimator, x_rep, settings, ids, attack_seed(seed, split), max_iter)
    sampled = sampled_columns(torch.as_tensor(x_rep), estimator).float()
    movable = KspaceBudget(1.0).movable(sampled).expand(x_rep.shape).numpy()  # attack entries
    x_noise = _same_norm_noise(x_rep, x_hal, movable, split, ids, seed)
    first = slice(None, None, copies)  # PGD at the first copy's l-inf budget (else 0.1)
    linf = np.where(np.asarray(settings["norm"][first]) == "inf", settings["eps"][first], 0.1)
    x_pgd = kspace_pgd(estimator, x, y, linf.astype(np.float32), steps=10)
    return {"hallucination": x_hal, "noise": x_noise, "pgd": x_pgd}, linf, rows


def _score_kinds(
    estimator: Any, x: np.ndarray, attacked: dict[str, np.ndarray], copies: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]]:
    """:func:`_scores` of each kind of sample, by kind in :data:`KINDS` order: the clean
    k-space ``x`` (N, ...) against itself, each attacked kind (:func:`_attack_chunk`) against
    the clean reconstruction of its slice."""
    clean = _scores(estimator, x)
    reference = clean[0].repeat_interleave(copies, 0)  # one per copy, slice-major
    return {
        "clean": clean,
        "hallucination": _scores(estimator, attacked["hallucination"], reference),
        "noise": _scores(estimator, attacked["noise"], reference),
        "pgd": _scores(estimator, attacked["pgd"], clean[0]),
    }


def _columns(
    parts: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]], settings: dict,
    pgd_eps: np.ndarray, rows: list[dict[str, float]], positions: np.ndarray, copies: int,
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """Each column of a chunk's samples as ``{kind: (samples of the kind, ...) array}``
    (:func:`_kind_sizes`), rows in each kind's order (slice-major); a kind a column does not
    apply to is left out (:func:`_gather` fills it with :func:`_fillers`' row)."""
    sizes = _kind_sizes(len(positions), copies)
    columns = {
        "inputs": {k: p[1].cpu().numpy() for k, p in parts.items()},
        "region": {"hallucination": settings["region"].numpy()},
        "position": {
            "clean": positions,
            "hallucination": np.repeat(positions, copies),
            "noise": np.repeat(positions, copies),
            "pgd": positions,
        },  # fmt: skip
        "norm": {
            "hallucination": np.asarray(settings["norm"]),
            "noise": np.asarray(settings["norm"]),
            "pgd": np.full(sizes["pgd"], "inf"),
        },  # fmt: skip
        "eps": {"hallucination": settings["eps"], "noise": settings["eps"], "pgd": pgd_eps},
        "region_kind": {"hallucination": np.asarray(settings["region_kind"])},
        "strength": {"hallucination": np.array([r["strength"] for r in rows], np.float32)},
    }
    for key in parts["clean"][2]:
        columns[key] = {k: p[2][key] for k, p in parts.items()}
    columns["label"] = {k: np.full(v, LABELS[k], np.int64) for k, v in sizes.items()}
    columns["kind"] = {k: np.full(v, k) for k, v in sizes.items()}
    return columns


def _kind_sizes(n: int, copies: int) -> dict[str, int]:
    """How many samples of each kind N slices give: N clean and pgd, N * copies of the rest."""
    return {"clean": n, "hallucination": n * copies, "noise": n * copies, "pgd": n}


def _fillers(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The row (1, ...) a column gets for the kinds it does not apply to: no region, no
    budget (empty norm, eps 0), no region kind, strength NaN."""
    return {"region": np.zeros((1, *shape), bool), "norm": np.array([""]),
            "eps": np.zeros(1, np.float32), "region_kind": np.array([""]),
            "strength": np.full(1, np.nan, np.float32)}  # fmt: skip


def _slice_order(n: int, copies: int) -> list[tuple[str, int]]:
    """(kind, row) of every sample, slice-major: clean, (hallucination, noise) x copies, pgd."""
    order = []
    for j in range(n):
        order.append(("clean", j))
        for c in range(j * copies, (j + 1) * copies):
            order += [("hallucination", c), ("noise", c)]
        order.append(("pgd", j))
    return order


def _gather(
    values: dict[str, np.ndarray], sizes: dict[str, int], order: list[tuple[str, int]],
    filler: np.ndarray | None,
) -> np.ndarray:  # fmt: skip
    """One column in ``order`` from its per-kind arrays; a kind without one takes ``filler``
    (one row, repeated)."""
    full = {k: np.asarray(values[k]) if k in values else np.repeat(filler, size, axis=0)
            for k, size in sizes.items()}  # fmt: skip
    return np.stack([full[kind][row] for kind, row in order])


def make_detection_data(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: tuple[str, ...] = ("train", "val", "test"),
    n: int | None = None,
    chunk: int = 16,
    max_iter: int = 150,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Make (or finish) the detection data of ``checkpoint`` on ``data_dir`` (module doc).

    Args:
        checkpoint: the reconstruction model to guard (``defend train recon``'s).
        data_dir: its data folder. out: the detection data folder.
        splits: which splits. n: at most this many slices per split (None: all).
        chunk: slices per part file. max_iter: the hallucination attack's iterations.
        seed: what every draw is seeded from.

    Returns:
        The manifest (also ``out/manifest.json``): settings and slice counts per split.
    """
    # ART loads on first use: load_detection_data's callers need none of it (about 3 s)
    from defend.estimators import load_estimator

    _check_request(splits, n, chunk, max_iter)
    out = check_writable(out, "dir")
    ckpt = load_checkpoint(checkpoint, "recon")
    estimator = load_estimator(ckpt, device=device)
    sizes = {s: min(split_size(Path(data_dir), "recon", VOLUMES[s], ckpt), n or math.inf)
             for s in splits}  # fmt: skip
    manifest = {
        "version": VERSION,
        "checkpoint": checkpoint_identity(checkpoint, ckpt),
        "seed": seed,
        "max_iter": max_iter,
        "chunk": chunk,
        "settings": SETTINGS,
        "slices": {s: int(v) for s, v in sizes.items()},
    }
    manifest = _merge_manifest(out / "manifest.json", manifest)
    write_json(out / "manifest.json", manifest)
    todo = [(s, first) for s in splits for first in range(0, int(sizes[s]), chunk)]
    total = sum(int(sizes[s]) for s in splits)
    bar = tqdm(total=total, desc="detection data", unit="slice", disable=not progress)
    for split, first in todo:
        positions = np.arange(first, min(first + chunk, int(sizes[split])))
        part = out / split / f"part-{first // chunk:04d}.npz"
        _write_part(part, estimator, ckpt, data_dir, split, positions, seed, max_iter)
        bar.update(len(positions))
    bar.close()
    return manifest


def _check_request(splits: tuple[str, ...], n: int | None, chunk: int, max_iter: int) -> None:
    """One-line errors, before anything is read: counts below 1, a split not in
    :data:`SETTINGS`."""
    if chunk < 1 or max_iter < 1 or (n is not None and n < 1):
        raise DefendError(f"chunk, max_iter and n must be >= 1, got {chunk}, {max_iter}, {n}")
    unknown = [s for s in splits if s not in SETTINGS]
    if unknown:
        raise DefendError(f"unknown split {unknown[0]!r}: choose from {', '.join(SETTINGS)}")


def _write_part(
    path: Path, estimator: Any, ckpt: dict[str, Any], data_dir: str | os.PathLike, split: str,
    positions: np.ndarray, seed: int, max_iter: int,
) -> None:  # fmt: skip
    """One part file (kept if it exists, else written atomically): the :func:`chunk_samples`
    of the slices at ``positions`` of ``split``'s volumes (:data:`VOLUMES`), each k-space
    shape group attacked through the estimator reshaped to it, the groups concatenated (a
    narrow volume's images centre zero-padded to the widest group's, :func:`_concatenate`)."""
    if path.exists():
        return
    groups = load_groups(
        Path(data_dir), "recon", VOLUMES[split], indices=positions, checkpoint=ckpt
    )
    parts = [
        chunk_samples(estimator.reshaped(x.shape[1:]), x, y, pos, split, seed, max_iter)
        for x, y, pos in groups
    ]
    write_npz(path, {k: _concatenate([p[k] for p in parts]) for k in parts[0]})


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """The shape groups' arrays along axis 0; a narrow (FLAIR, ``W x W``) volume's images
    centre zero-padded to the groups' largest ``(h, w)``, the reconstruction's frame."""
    if len({a.shape[1:] for a in arrays}) == 1 or min(a.ndim for a in arrays) < 3:
        return np.concatenate(arrays)
    h, w = (max(a.shape[axis] for a in arrays) for axis in (-2, -1))
    padded = []
    for a in arrays:
        top, left = (h - a.shape[-2]) // 2, (w - a.shape[-1]) // 2
        rows, columns = (top, h - a.shape[-2] - top), (left, w - a.shape[-1] - left)
        padded.append(np.pad(a, [(0, 0)] * (a.ndim - 2) + [rows, columns]))
    return np.concatenate(padded)


def checkpoint_identity(checkpoint: str | os.PathLike, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What detection data is keyed on: the SHA-256 of the checkpoint file's bytes (16 hex
    digits) and its model config; ``file`` (its name) is kept for messages, not compared."""
    return {"file": Path(checkpoint).name, "sha256": file_sha256(checkpoint),
            "model_config": ckpt["model_config"]}  # fmt: skip


def _keyed(manifest: dict[str, Any], key: str) -> Any:
    """``manifest[key]`` as compared between runs (the checkpoint without its file name)."""
    value = manifest.get(key)
    if key == "checkpoint" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "file"}
    return value


def _merge_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest with this run's splits added; a folder holding data of other
    settings (or other slice counts for a split) is refused, as its parts would not match."""
    if not path.exists():
        return manifest
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(manifest))
    changed = [k for k in new if k != "slices" and _keyed(old, k) != _keyed(new, k)]
    slices = old.get("slices", {})
    changed += [f"{s} slices" for s, v in new["slices"].items() if slices.get(s, v) != v]
    if changed:
        raise DefendError(
            f"{path.parent} holds detection data with other {', '.join(changed)}; "
            "choose another folder or remove it"
        )
    return {**new, "slices": {**slices, **new["slices"]}}


def load_detection_data(folder: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """All samples of one split of a detection data folder: the arrays of
    :func:`chunk_samples` (``inputs`` (M, 6, h, w), ``region`` (M, h, w), ``label`` ...)."""
    root = Path(folder) / split
    parts = sorted(root.glob("part-*.npz"))
    if not parts:
        raise DefendError(
            f"{root}: no detection data (defend train detector and defend detect eval make it)"
        )
    loaded = []
    for part in parts:
        with np.load(part, allow_pickle=False) as f:
            loaded.append({k: f[k] for k in f.files})
    return {k: np.concatenate([p[k] for p in loaded]) for k in loaded[0]}
