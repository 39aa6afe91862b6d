"""The learned hallucination detector: a small CNN with an image score and a pixel map.

:class:`HallucinationDetector` reads the three deployment images of
:func:`~defend.detect.features.detector_inputs` (B, 6, h, w) through fastMRI's U-Net with two
output channels: channel 0 is the per-pixel hallucination logit (the map), channel 1 the
evidence whose top 10 % (:data:`TOP_SHARE`) is averaged into the image logit (the score).
One forward pass gives both, so a localised feature raises the score where the map fires.

:class:`DetectTask` trains it in the one training loop (:func:`defend.train.loop.fit`): loss
per sample = BCE of the image logit against the label + BCE of the map against the region
(pixels of a hallucination up-weighted by :data:`POS_WEIGHT`); the map term is left out for
samples whose region is unknown (ART PGD: attacked, but not in one place). Validation: AUROC
of the score (monitored), AUPRC, and the map's IoU on hallucinations at logit 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fastmri.models import Unet
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import Dataset

from defend.detect.examples import load_detection_data, make_detection_data
from defend.detect.features import CHANNELS, detector_inputs
from defend.device import pick_device, seed_everything
from defend.errors import CheckpointError, DefendError
from defend.io import check_writable, load_checkpoint, save_checkpoint
from defend.kspace import acquired_columns
from defend.memory import samples_per_pass
from defend.tasks import Batch, Task
from defend.train import TrainConfig
from defend.train.loop import best_path, fit, run_config

#: the weight of a hallucinated pixel in the map loss (regions cover ~1 % of an image)
POS_WEIGHT = 10.0
#: the share of pixels whose evidence makes the image score: 10 %, chosen among 1, 2, 5 and
#: 10 % by AUROC on the ``tune`` split (the held-out shapes and budgets on the validation
#: volumes; scripts/detection.py), before the test split was scored (docs/detection.md)
TOP_SHARE = 0.1


class HallucinationDetector(nn.Module):
    """Image score and pixel map of a reconstruction's deployment images.

    Args:
        chans: the U-Net's first-layer channels. pools: its down-sampling levels.
        top_share: the share of pixels whose evidence is averaged into the score.

    ``forward(inputs (B, 6, h, w)) -> (score (B,), map (B, h, w))``, both logits.
    """

    def __init__(self, chans: int = 16, pools: int = 3, top_share: float = TOP_SHARE) -> None:
        super().__init__()
        self.top_share = top_share
        self.net = Unet(in_chans=len(CHANNELS), out_chans=2, chans=chans, num_pool_layers=pools)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(inputs)
        evidence = out[:, 1].flatten(1)
        k = max(1, round(self.top_share * evidence.shape[1]))
        return evidence.topk(k, dim=1).values.mean(1), out[:, 0]


class DetectionSet(Dataset):
    """Detection samples (:func:`~defend.detect.examples.load_detection_data`'s arrays) as batch
    dicts: ``input`` (6, h, w), ``region`` (h, w) float, ``label`` float, ``pixel`` (1 where
    the region is known: every kind but ``pgd``).

    With ``flips`` each sample comes four times, as it is and mirrored along each image axis
    and both (item ``4 i + f``: sample ``i``, flip ``f``): a mirrored measurement is as
    natural as the original, and the flips are fixed per item, so any batch size or shuffle
    order sees the same samples.
    """

    def __init__(self, arrays: dict[str, np.ndarray], flips: bool = False) -> None:
        self.arrays, self.copies = arrays, 4 if flips else 1

    def __len__(self) -> int:
        return self.copies * len(self.arrays["label"])

    def __getitem__(self, item: int) -> dict[str, Any]:
        a, (i, flip) = self.arrays, divmod(item, self.copies)
        dims = [d for bit, d in ((1, -1), (2, -2)) if flip & bit]
        image = torch.as_tensor(a["inputs"][i])
        region = torch.as_tensor(a["region"][i], dtype=torch.float32)
        return {
            "input": torch.flip(image, dims) if dims else image,
            "region": torch.flip(region, dims) if dims else region,
            "label": torch.tensor(float(a["label"][i])),
            "pixel": torch.tensor(float(a["kind"][i] != "pgd")),
        }

    def shape_keys(self) -> list[tuple]:
        return [tuple(self.arrays["inputs"].shape[1:])] * len(self)


class DetectTask(Task):
    """Training and validation of a :class:`HallucinationDetector` (module doc)."""

    name = "detect"
    monitor = "auroc"
    loss_name = "bce-image+map"

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        score, heatmap = model(batch["input"])
        return torch.cat([score[:, None], heatmap.flatten(1)], dim=1)

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        score, heatmap = pred[:, 0], pred[:, 1:]
        image = F.binary_cross_entropy_with_logits(score, batch["label"], reduction="none")
        region = batch["region"].flatten(1)
        weight = torch.tensor(POS_WEIGHT, device=pred.device)
        pixels = F.binary_cross_entropy_with_logits(
            heatmap, region, pos_weight=weight, reduction="none"
        ).mean(1)
        return image + batch["pixel"] * pixels

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:

        scores, labels, inter, union = [], [], 0.0, 0.0
        for batch in batches:
            score, heatmap = model(batch["input"])
            scores.append(score.float().cpu())
            labels.append(batch["label"].cpu())
            shown = batch["region"].flatten(1).sum(1) > 0
            hit, truth = heatmap[shown] > 0, batch["region"][shown] > 0.5
            inter += float((hit & truth).sum())
            union += float((hit | truth).sum())
        y, s = torch.cat(labels).numpy(), torch.cat(scores).numpy()
        both = len(np.unique(y)) == 2
        return {
            "auroc": float(roc_auc_score(y, s)) if both else float("nan"),
            "auprc": float(average_precision_score(y, s)) if both else float("nan"),
            "map_iou": inter / union if union else float("nan"),
        }


def threshold_at_fpr(negative_scores: np.ndarray, fpr: float) -> float:
    """The score threshold (flagged: ``score > threshold``) that flags at most a share
    ``fpr`` of ``negative_scores`` (N,), the scores of clean samples: their ``1 - fpr``
    quantile (an observed score) raised by a relative 1e-4, so that the same samples scored
    in another batching (float rounding of the convolutions) stay below it."""
    top = float(np.quantile(negative_scores, 1 - fpr, method="higher"))
    return top + 1e-4 * max(1.0, abs(top))


def train_detector(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    detection_data: str | os.PathLike | None = None,
    n: int | None = None,
    max_iter: int = 150,
    chans: int = 16,
    fpr: float = 0.05,
    config: Any = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """``defend train detector``: make (or reuse) the detection data of the reconstruction
    model ``checkpoint`` on ``data_dir``'s train and val splits, then :func:`fit_detector`.

    Args:
        detection_data: where the detection data is kept (default ``OUT.data`` beside the
            detector; its test split is what ``defend detect eval`` adds).
        n: at most this many slices per split (None: all). max_iter: the hallucination
            attack's iterations (its default). The data's time grows with both.
        The rest: :func:`fit_detector`'s.
    """

    folder = Path(detection_data) if detection_data else default_data_folder(out)
    log(f"detection data: {folder}")
    make_detection_data(checkpoint, data_dir, folder, splits=("train", "val"), n=n,
                        max_iter=max_iter, seed=(config.seed if config else 0),
                        device=config.device if config else None, progress=progress)  # fmt: skip
    return fit_detector(folder, out, chans=chans, fpr=fpr, config=config, resume=resume, log=log)


def default_data_folder(detector: str | os.PathLike) -> Path:
    """Where a detector's detection data is kept by default: ``DET.data`` beside it."""
    return Path(detector).with_suffix(".data")


def fit_detector(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chans: int = 16,
    top_share: float = TOP_SHARE,
    fpr: float = 0.05,
    flips: bool = True,
    config: Any = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train a detector on a detection data folder (``make_detection_data``'s) and calibrate
    it: the score threshold at false-positive rate ``fpr`` on the validation split's clean
    samples (:func:`calibrate`) is stored in the checkpoint (and in its ``.best`` twin).

    Args:
        data: the detection data folder (its train and val splits).
        out: the detector checkpoint. chans: the U-Net's first-layer channels.
        top_share: the share of pixels averaged into the score (:class:`HallucinationDetector`).
        fpr: the false-positive rate the stored threshold keeps on clean validation samples.
        flips: train on each sample and its three mirror images (:class:`DetectionSet`).
        config: :class:`~defend.train.TrainConfig`.

    Returns:
        The per-epoch history (validation AUROC, AUPRC, map IoU).
    """

    if not 0 < fpr < 1:
        raise DefendError(f"--fpr must be in (0, 1), got {fpr}")
    config = config or TrainConfig()
    out = check_writable(out, "file")
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    train_set = DetectionSet(load_detection_data(data, "train"), flips=flips)
    val_set = DetectionSet(load_detection_data(data, "val"))
    seed_everything(config.seed)
    model = HallucinationDetector(chans, top_share=top_share)
    meta = {
        "kind": "detector",
        "model_config": {"chans": chans, "top_share": model.top_share},
        "data": {"detection": manifest, "input_shape": list(train_set.arrays["inputs"].shape[1:])},
        "run": run_config(
            config, data=manifest["checkpoint"], seed_data=manifest["seed"], flips=flips
        ),  # fmt: skip
    }
    history = fit(DetectTask(), model, train_set, val_set, config, out, meta=meta,
                  resume=resume, log=log)  # fmt: skip
    for path in (out, best_path(out)):
        if path.exists():
            calibrate(path, val_set, fpr)
    return history


def calibrate(path: Path, val_set: DetectionSet, fpr: float) -> float:
    """Store in checkpoint ``path`` the score threshold that flags at most a share ``fpr``
    of the validation split's **clean** samples (rewritten atomically); returns it.

    Only the clean reconstructions are negatives here: the same-norm noise samples are hard
    negatives made for training, and a deployed detector meets clean acquisitions, so "5 %
    FPR" means 5 % of clean images flagged. (Calibrated on clean and noise together, as
    before issue 31, the threshold moved with however the noise samples scored, and the
    clean false-positive rate was whatever that left.) The rate on images calibration never
    saw is :func:`~defend.detect.evaluate.evaluate_detector`'s ``test_fpr``.
    """

    ckpt = load_checkpoint(path)
    detector = _build(ckpt)
    clean = val_set.arrays["kind"] == "clean"
    if not clean.any():
        raise DefendError(f"{path}: no clean validation samples to calibrate the detector on")
    scores = detector_outputs(detector, val_set.arrays["inputs"][clean])[0]
    threshold = threshold_at_fpr(scores, fpr)
    ckpt["calibration"] = {"fpr": fpr, "threshold": threshold, "negatives": int(clean.sum()),
                           "split": "val", "on": "clean"}  # fmt: skip
    save_checkpoint(path, ckpt)
    return threshold


def _build(ckpt: dict[str, Any]) -> HallucinationDetector:
    detector = HallucinationDetector(**ckpt["model_config"])
    detector.load_state_dict(ckpt["state_dict"])
    return detector.eval()


def detector_outputs(
    detector: nn.Module, inputs: np.ndarray, batch: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (N,), maps (N, h, w))`` of a detector on stored inputs (N, 6, h, w), in
    batches (None: as many as the memory budget holds, :mod:`defend.memory`): the image
    logits and the per-pixel probabilities."""
    device = next(detector.parameters()).device
    if batch is None:
        first = torch.as_tensor(inputs[0], device=device)
        batch = samples_per_pass(lambda v: detector(v)[1], first, device, owner=detector)
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            score, heat = detector(torch.as_tensor(inputs[i : i + batch], device=device))
            scores.append(score.cpu().numpy())
            maps.append(torch.sigmoid(heat).cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)


class Detector:
    """A trained detector at deployment: numpy in, numpy out (``defend.load_detector``).

    Args:
        module: the :class:`HallucinationDetector`. threshold: the calibrated score
            threshold (``score > threshold``: flagged), or None.
    """

    def __init__(self, module: HallucinationDetector, threshold: float | None = None) -> None:
        self.module, self.threshold = module.eval(), threshold

    def inputs(self, x: Any, recon: Any) -> torch.Tensor:
        """The deployment images (B, 6, h, w) of masked k-space ``x`` (B, coils, H, W, 2)
        and the guarded model's output ``recon`` (B, h, w); the mask is read off ``x``
        (its measured columns)."""

        device = next(self.module.parameters()).device
        xt = torch.as_tensor(np.asarray(x, np.float32), device=device)
        rt = torch.as_tensor(np.asarray(recon, np.float32), device=device)
        return detector_inputs(xt, acquired_columns(xt), rt)

    def score(self, x: Any, recon: Any) -> np.ndarray:
        """(B,) image logits: higher is more likely hallucinated."""
        with torch.no_grad():
            return self.module(self.inputs(x, recon))[0].cpu().numpy()

    def heatmap(self, x: Any, recon: Any) -> np.ndarray:
        """(B, h, w) per-pixel hallucination probabilities."""
        with torch.no_grad():
            return torch.sigmoid(self.module(self.inputs(x, recon))[1]).cpu().numpy()

    def flag(self, x: Any, recon: Any) -> np.ndarray:
        """(B,) bool: the score above the calibrated threshold."""
        if self.threshold is None:
            raise DefendError("this detector has no calibrated threshold")
        return self.score(x, recon) > self.threshold


def load_detector(path: str | os.PathLike, device: str | None = None) -> Detector:
    """The detector of a ``defend train detector`` checkpoint."""

    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "detector":
        raise CheckpointError(f"{path}: not a detector checkpoint (defend train detector)")
    module = _build(ckpt).to(pick_device(device))
    return Detector(module, ckpt.get("calibration", {}).get("threshold"))
