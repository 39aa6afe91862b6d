"""Input detectors for segmentation and classification: is this image adversarial?

A detector here is a binary classifier on the image a model would see (clean 0, adversarial
1), so that ART's own ``BinaryInputDetector`` drives it: :func:`input_detector_classifier`
wraps a trained one as ART's ``PyTorchClassifier`` (two logits) and
:func:`load_input_detector` returns the ``BinaryInputDetector`` itself (``detect(x)`` ->
``(report, is_adversarial)``).

Training data (:func:`make_input_detection_data`): every image of a split, clean, and attacked
by each of the task's :data:`ATTACKS` at the budgets ``defend attack`` and the robustness
tables use (seg: ``seg-fgsm`` FGSM and 10-step PGD at l-inf 0.008; cls: ART's 20-step PGD
at 8/255 and DGDE, whose few-pixel images are kept only where it changed the image). The
splits are the data folder's (by volume). One ``OUT/SPLIT.npz`` per split, written
atomically; a rerun reuses them.

**Attack draws of their own.** Each split is attacked with :func:`data_seed` (the run's seed,
the split and the constant :data:`STREAM` hashed together), never with the seed ``defend
matrix`` and ``defend attack`` evaluate with, and DGDE keys its draws by the image
(:func:`defend.attacks.sample_keys.sample_keys`): a detector is not trained on the very
perturbations it is then evaluated on (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"), and the train split's images do not share their noise with the test
split's images at the same positions.

:func:`train_input_detector` trains :class:`InputDetectorNet` in the one training loop and
calibrates it: the threshold on its score (the adversarial-minus-clean logit margin,
:func:`input_scores`) that flags 5 % of the validation split's clean images (clean only: the
attacked images are not negatives) is stored in the checkpoint (:func:`input_threshold`).
ART's ``BinaryInputDetector`` flags by argmax (margin > 0) instead, which a briefly trained
detector, seeing two attacked images for each clean one, can push onto every clean image.
:func:`evaluate_input_detector` gives the AUROC per attack on the test split, and the
detection and false-positive rates at both thresholds, the calibrated one's false positives
counted on the test split's clean images, which calibration never saw.
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
from art.defences.detector.evasion import BinaryInputDetector
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import Dataset

from defend.attacks.apply import attack_arrays
from defend.attacks.art_pgd import art_pgd
from defend.data import load_arrays
from defend.detect.detector import default_data_folder, threshold_at_fpr
from defend.device import seed_everything
from defend.errors import CheckpointError, DefendError
from defend.estimators import load_estimator
from defend.estimators.cls import make_classifier
from defend.io import (
    check_writable,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    write_json,
    write_npz,
)
from defend.tasks import Batch, Task, kind_of
from defend.train import TrainConfig
from defend.train.loop import best_path, fit, run_config

#: the attacks each input detector is trained and evaluated on: name -> what makes them
ATTACKS = {
    "seg": ("fgsm", "pgd10"),
    "cls": ("pgd20", "dgde"),
}
#: the default l-inf budgets (those of ``defend attack``: images in [0, 1])
EPS = {"seg": 0.008, "cls": 8 / 255}
#: the phase constant of the input detectors' attack seeds (:func:`data_seed`)
STREAM = "input-detector data"
#: bumped when what a split file holds changes (a folder of another version is refused)
VERSION = 2


def data_seed(seed: int, split: str) -> int:
    """The seed the input-detection data of ``split`` is attacked with: a 32-bit hash of
    ``(seed, STREAM, split)`` (numpy SeedSequence), never ``seed`` itself, the seed the
    evaluation attacks with (``defend matrix``, ``defend attack``), so the detector's data
    and the evaluation draw apart; each split draws apart from the others too."""
    words = [int(seed) % 2**63, *map(ord, STREAM), *map(ord, split)]
    derived = int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0])
    return derived if derived != seed else derived ^ 1


def _attack(
    name: str, estimator: Any, x: np.ndarray, y: np.ndarray, eps: float, seed: int
) -> np.ndarray:
    """``x`` (N, C, H, W) attacked by ``name`` (one of :data:`ATTACKS`' [task]) at l-inf
    ``eps`` (DGDE has no eps: it changes few pixels, as far as it needs; ``seed`` seeds its
    draws, the global seed ART's PGD start)."""

    if name == "fgsm":
        return attack_arrays(estimator, "seg-fgsm", x, y, {"eps": eps})[0]
    if name == "pgd10":
        return attack_arrays(estimator, "seg-fgsm", x, y, {"eps": eps, "max_iter": 10})[0]
    if name == "pgd20":
        labels = np.eye(estimator.nb_classes, dtype=np.float32)[y]
        return art_pgd(estimator, eps, 20, 64).generate(x, y=labels)
    if name == "dgde":
        return attack_arrays(estimator, "dgde", x, y, seed=seed)[0]
    raise DefendError(f"unknown input attack {name!r}")


def split_samples(
    task: str, estimator: Any, x: np.ndarray, y: np.ndarray, eps: float, seed: int = 0
) -> dict[str, Any]:
    """The clean images of a split and their attacked versions, as detection samples:
    ``image`` (M, C, H, W) float32, ``label`` (M,) 0/1, ``attack`` (M,) ('' for clean),
    ``index`` (M,) the image's position in the split."""
    images, labels = [x], [np.zeros(len(x), np.int64)]
    attacks, index = [np.full(len(x), "")], [np.arange(len(x))]
    for name in ATTACKS[kind_of(task)]:
        x_adv = _attack(name, estimator, x, y, eps, seed).astype(np.float32)
        changed = np.abs(x_adv - x).reshape(len(x), -1).max(1) > 0
        images.append(x_adv[changed])
        labels.append(np.ones(int(changed.sum()), np.int64))
        attacks.append(np.full(int(changed.sum()), name))
        index.append(np.flatnonzero(changed))
    return {
        "image": np.concatenate(images).astype(np.float32),
        "label": np.concatenate(labels),
        "attack": np.concatenate(attacks),
        "index": np.concatenate(index),
    }


def make_input_detection_data(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: tuple[str, ...] = ("train", "val", "test"),
    n: int | None = None,
    eps: float | None = None,
    seed: int = 0,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Make (or reuse) the input-detection data of a seg or cls ``checkpoint`` (module doc).

    Args:
        checkpoint: the guarded model. data_dir: its data folder. out: the data folder.
        splits: which splits. n: at most this many images per split (None: all).
        eps: the l-inf budget of the gradient attacks (default :data:`EPS`, ``defend
            attack``'s).
        seed: the run's seed; split ``s`` is attacked with ``data_seed(seed, s)`` (DGDE's
            draws, PGD's random start), apart from the evaluation's ``seed``.

    Returns:
        The manifest (``out/manifest.json``): task, attacks, budget, images per split.
    """

    ckpt = load_checkpoint(checkpoint)
    task = ckpt.get("task")
    if kind_of(task) not in ATTACKS:
        raise CheckpointError(f"{checkpoint}: input detectors guard seg or cls models, not {task}")
    eps = EPS[kind_of(task)] if eps is None else float(eps)
    if not 0 < eps <= 1:
        raise DefendError(f"eps must be in (0, 1] (images are in [0, 1]), got {eps}")
    out = check_writable(out, "dir")
    estimator = load_estimator(ckpt, device=device)
    checkpoint_key = {"sha256": file_sha256(checkpoint), "model_config": ckpt["model_config"]}
    manifest = {"task": task, "checkpoint": checkpoint_key, "attacks": ATTACKS[kind_of(task)],
                "eps": eps, "seed": seed, "n": n, "version": VERSION,
                "attack_seeds": f"data_seed(seed, split), stream {STREAM!r}"}  # fmt: skip
    old = out / "manifest.json"
    if old.exists() and json.loads(old.read_text()) != json.loads(json.dumps(manifest)):
        raise DefendError(f"{out} holds input-detection data of other settings; remove it")
    write_json(old, manifest)
    for split in splits:
        path = out / f"{split}.npz"
        if path.exists():
            continue
        split_seed = data_seed(seed, split)
        seed_everything(split_seed)
        x, y = load_arrays(Path(data_dir), task, split, n, checkpoint=ckpt)
        attacks = ", ".join(ATTACKS[kind_of(task)])
        log(f"input-detection data: {split} ({len(x)} images, attacks {attacks})")
        write_npz(path, split_samples(task, estimator, x, y, eps, split_seed))
    return manifest


def load_input_detection_data(folder: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """One split of :func:`make_input_detection_data`'s folder (its arrays)."""
    path = Path(folder) / f"{split}.npz"
    if not path.exists():
        raise DefendError(f"{path}: no input-detection data (defend train input-detector)")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


#: the gain of the high-pass residual channels: a budget of 0.008 becomes ~0.4
RESIDUAL_GAIN = 50.0


class InputDetectorNet(nn.Module):
    """A small all-convolutional binary classifier: ``(B, C, H, W) -> logits (B, 2)``
    (clean, adversarial).

    Its input is the image and, as steganalysis detectors do, its fixed high-pass residual
    ``x - mean_3x3(x)`` amplified by :data:`RESIDUAL_GAIN`: a perturbation of a few
    thousandths is invisible beside the image's contrast, not beside its smooth regions'
    residual. Full resolution in the first layer, global mean pooling at the end.

    Args:
        in_chans: image channels. chans: first-layer channels (doubled at each of 3 strides).
    """

    def __init__(self, in_chans: int = 1, chans: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * in_chans
        for i, stride in enumerate((1, 2, 2, 2)):
            out = chans * 2 ** max(i - 1, 0)
            layers += [nn.Conv2d(width, out, 3, stride, 1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x - F.avg_pool2d(x, 3, 1, padding=1, count_include_pad=False)
        inputs = torch.cat([x, RESIDUAL_GAIN * residual], dim=1)
        return self.head(self.features(inputs).mean(dim=(2, 3)))


class InputSet(Dataset):
    """Input-detection samples as batch dicts: ``input`` (C, H, W), ``label`` () long."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["label"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input": torch.as_tensor(self.arrays["image"][i]),
            "label": torch.tensor(int(self.arrays["label"][i])),
        }

    def shape_keys(self) -> list[tuple]:
        return [tuple(self.arrays["image"].shape[1:])] * len(self)


class InputDetectTask(Task):
    """Training and validation of an :class:`InputDetectorNet`: cross-entropy of the two
    logits, AUROC of the adversarial logit margin (monitored) and accuracy."""

    name = "input-detect"
    monitor = "auroc"
    loss_name = "cross-entropy"

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred, batch["label"], reduction="none")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:

        scores, labels = [], []
        for batch in batches:
            logits = model(batch["input"]).float()
            scores.append((logits[:, 1] - logits[:, 0]).cpu())
            labels.append(batch["label"].cpu())
        y, s = torch.cat(labels).numpy(), torch.cat(scores).numpy()
        both = len(np.unique(y)) == 2
        return {
            "auroc": float(roc_auc_score(y, s)) if both else float("nan"),
            "accuracy": float(((s > 0) == (y == 1)).mean()),
        }


def train_input_detector(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    detection_data: str | os.PathLike | None = None,
    chans: int = 16,
    n: int | None = None,
    eps: float | None = None,
    fpr: float = 0.05,
    config: Any = None,
    resume: bool = True,
    splits: tuple[str, ...] = ("train", "val", "test"),
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """``defend train input-detector``: make (or reuse) the input-detection data of a seg or
    cls ``checkpoint`` on ``data_dir`` (default ``OUT.data``), then train the detector on its
    train split, validated (and the best checkpoint kept) on val, and calibrate both
    checkpoints at false-positive rate ``fpr`` on val's clean images (module doc). ``n`` and
    ``eps``: :func:`make_input_detection_data`'s; chans: :class:`InputDetectorNet`'s;
    ``splits``: the detection data made (train and val train the detector; test is
    ``defend detect eval``'s, which a caller that evaluates otherwise leaves out).

    Returns:
        The per-epoch history (validation AUROC and accuracy).
    """

    if not 0 < fpr < 1:
        raise DefendError(f"--fpr must be in (0, 1), got {fpr}")
    config = config or TrainConfig()
    out = check_writable(out, "file")
    folder = Path(detection_data) if detection_data else default_data_folder(out)
    log(f"input-detection data: {folder}")
    manifest = make_input_detection_data(checkpoint, data_dir, folder, splits=splits, n=n,
                                         eps=eps, seed=config.seed, device=config.device,
                                         log=log)  # fmt: skip
    train_set = InputSet(load_input_detection_data(folder, "train"))
    val_set = InputSet(load_input_detection_data(folder, "val"))
    seed_everything(config.seed)
    shape = train_set.arrays["image"].shape[1:]
    model = InputDetectorNet(shape[0], chans)
    meta = {
        "kind": "input-detector",
        "model_config": {"in_chans": int(shape[0]), "chans": chans},
        "data": {"detection": manifest, "input_shape": list(shape)},
        "run": run_config(config, data=manifest["checkpoint"], attacks=manifest["attacks"]),
    }
    history = fit(InputDetectTask(), model, train_set, val_set, config, out, meta=meta,
                  resume=resume, log=log)  # fmt: skip
    for path in (out, best_path(out)):
        if path.exists():
            calibrate_input_detector(path, val_set.arrays, fpr)
    return history


def input_scores(classifier: Any, images: np.ndarray) -> np.ndarray:
    """The detector's score (N,) of images (N, C, H, W): its adversarial-minus-clean logit
    margin (ART's argmax flags a score > 0)."""
    logits = classifier.predict(images.astype(np.float32), batch_size=64)
    return logits[:, 1] - logits[:, 0]


def calibrate_input_detector(path: Path, val: dict[str, np.ndarray], fpr: float) -> float:
    """Store in checkpoint ``path`` the score threshold that flags at most a share ``fpr``
    of the clean images of ``val`` (the validation split of the input-detection data; its
    attacked images play no part), rewritten atomically. The false-positive rate it keeps on
    images it never saw is :func:`evaluate_input_detector`'s on the test split."""

    clean = val["attack"] == ""
    threshold = threshold_at_fpr(input_scores(input_detector_classifier(path), val["image"][clean]),
                                 fpr)  # fmt: skip
    ckpt = load_checkpoint(path)
    ckpt["calibration"] = {"fpr": fpr, "threshold": threshold, "negatives": int(clean.sum()),
                           "split": "val", "on": "clean"}  # fmt: skip
    save_checkpoint(path, ckpt)
    return threshold


def input_threshold(path: str | os.PathLike) -> float:
    """The calibrated score threshold of an input detector checkpoint (0, ART's argmax, for
    a checkpoint trained before calibration existed)."""

    return float(load_checkpoint(path).get("calibration", {}).get("threshold", 0.0))


def input_detector_classifier(path: str | os.PathLike, device: str | None = None) -> Any:
    """A trained input detector as ART's ``PyTorchClassifier`` (2 classes: clean,
    adversarial; inputs (N, C, H, W) in [0, 1]), what ``BinaryInputDetector`` takes."""

    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "input-detector":
        raise CheckpointError(f"{path}: not an input-detector checkpoint")
    model = InputDetectorNet(**ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    shape = tuple(ckpt["data"]["input_shape"])
    return make_classifier(model.eval(), shape, 2, device=device)


def load_input_detector(path: str | os.PathLike, device: str | None = None) -> Any:
    """ART's ``BinaryInputDetector`` over a trained input detector (``detect(x)`` ->
    ``(report, is_adversarial (N,) bool)``)."""

    return BinaryInputDetector(input_detector_classifier(path, device))


def evaluate_input_detector(
    detector: str | os.PathLike, folder: str | os.PathLike, split: str = "test"
) -> dict[str, Any]:
    """AUROC per attack of an input detector on a split of its data, and its detection and
    false-positive rates through ART's ``BinaryInputDetector`` (argmax: ``detected``,
    ``false_positive_rate``) and at its calibrated threshold (``detected_calibrated``,
    ``false_positive_rate_calibrated``, ``threshold``). The false-positive rates are over the
    split's clean images: on the test split (the default) images that calibration, made on
    the clean images of split ``calibration_split`` (``calibration_negatives`` of them),
    never saw (``held_out``)."""

    arrays = load_input_detection_data(folder, split)
    report, flagged = load_input_detector(detector).detect(arrays["image"], batch_size=64)
    logits = report["predictions"]
    score = logits[:, 1] - logits[:, 0]
    threshold = input_threshold(detector)
    calibrated = score > threshold
    clean = arrays["attack"] == ""
    calibration = load_checkpoint(detector).get("calibration", {})
    calibrated_on = calibration.get("split", "val")
    out: dict[str, Any] = {
        "split": split, "clean": int(clean.sum()), "threshold": threshold,
        "calibration_split": calibrated_on, "held_out": split != calibrated_on,
        "calibration_negatives": calibration.get("negatives"),
        "false_positive_rate": float(flagged[clean].mean()),
        "false_positive_rate_calibrated": float(calibrated[clean].mean()),
    }  # fmt: skip
    for name in np.unique(arrays["attack"][~clean]):
        picked = arrays["attack"] == name
        y = np.r_[np.zeros(clean.sum()), np.ones(picked.sum())]
        out[str(name)] = {
            "n": int(picked.sum()),
            "auroc": float(roc_auc_score(y, np.r_[score[clean], score[picked]])),
            "detected": float(flagged[picked].mean()),
            "detected_calibrated": float(calibrated[picked].mean()),
        }
    return out
