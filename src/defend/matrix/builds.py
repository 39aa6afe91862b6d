"""What the matrix's cells need, built once and cached by a hash of its settings.

Every build goes through the function under the matching command, so a cached model is what
``defend train`` would have written:

* ``data``: ``defend data synth`` (:func:`~defend.data.synthesize`), or the configured folder;
* ``model``: ``defend train TASK`` (:func:`~defend.train.train_model`); a hardened model is
  ``--adversarial METHOD`` fine-tuning the standard one (``--weights``) at the task's
  default eps;
* ``denoiser``: ``defend train denoiser`` (:func:`~defend.smooth.denoiser.train_denoiser`);
* ``detector``: ``defend train detector`` (recon) or ``defend train input-detector``.

A build lives in ``CACHE/<kind>-<hash>/`` with ``build.json`` (its settings and the seconds it
took) written last, so a folder without it is unfinished and is resumed (training resumes
from its checkpoint). Two configurations that need the same build share it.

A build's key (:attr:`Build.key`) hashes its settings, the keys of what it needs, the cache
format :data:`VERSION` and the package version (``defend.__version__``), so an upgrade
rebuilds rather than reuses. The configured data folder (``data.path``) is keyed on the
content of its files (:func:`data_fingerprint`), not on where it lies: files edited, added or
removed make a new key (and so new models), and a moved copy keeps it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import defend
from defend.data import synthesize
from defend.data.arrays import fingerprint, load_dataset
from defend.detect.detector import train_detector
from defend.detect.inputs import train_input_detector
from defend.errors import DefendError
from defend.io import load_checkpoint, write_json
from defend.matrix.config import TASKS, matrix_tasks
from defend.smooth.denoiser import DEFAULT_DEPTH, DEFAULT_WIDTH, train_denoiser
from defend.tasks import data_folder, kind_of
from defend.train import TrainConfig, default_schedule, make_objective, train_model

#: bumped when what a build holds changes, so older caches are rebuilt rather than reused
VERSION = 1
#: hardening settings per method beyond the defaults of ``defend train --adversarial``
#: (hallucination: the consistency term of docs/hardening.md)
HARDENING_OPTIONS = {"hallucination": {"beta": 4.0}}
#: settings that say where a build lies, not what it holds: left out of its key
WHERE = ("path",)
#: the splits of each task fingerprinted in a configured data folder
DATA_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Build:
    """One thing to build: its kind and settings (which hash to its folder)."""

    kind: str
    settings: dict[str, Any] = field(hash=False)
    needs: tuple[Build, ...] = ()

    @property
    def key(self) -> str:
        """``KIND-HASH``: the hash (12 hex digits) of the settings (less :data:`WHERE`), the
        needs' keys, :data:`VERSION` and ``defend.__version__``."""
        settings = {k: v for k, v in self.settings.items() if k not in WHERE}
        needs = [n.key for n in self.needs]
        text = json.dumps([VERSION, defend.__version__, self.kind, settings, needs],
                          sort_keys=True)  # fmt: skip
        return f"{self.kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Build) and other.key == self.key


def data_build(config: dict[str, Any]) -> Build:
    """The data the cells use: the configured folder (``data.path``, keyed on
    :func:`data_fingerprint`) or the synthetic data of ``data``'s settings and the seed."""
    data = config["data"]
    if data["path"]:
        path = Path(data["path"]).resolve()
        return Build("data", {"path": str(path), "fingerprint": data_fingerprint(path)})
    synth = {k: data[k] for k in ("size", "volumes", "slices", "coils")}
    if data["test_volumes"]:  # only where set: the keys of older builds stay as they were
        synth["test_volumes"] = data["test_volumes"]
    return Build("data", {**synth, "seed": config["run"]["seed"]})


def data_fingerprint(path: Path) -> dict[str, Any]:
    """The content of a data folder: ``{"TASK/SPLIT": fingerprint or None}`` for each task's
    train, val and test split (None: absent), each the fingerprint training resume checks
    (:func:`defend.data.arrays.fingerprint`: every file's name, size and sampled bytes).

    Computed once per process for a given set of files, sizes and change times (the matrix
    asks for it per cell)."""
    path = Path(path)
    if not path.is_dir():
        raise DefendError(f"data.path {path}: no such folder")
    stats = ((p, p.stat()) for p in sorted(path.rglob("*")) if p.is_file())
    signature = tuple((str(p), s.st_size, s.st_mtime_ns, s.st_ctime_ns) for p, s in stats)
    return copy.deepcopy(_fingerprint(str(path), signature))


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str, signature: tuple) -> dict[str, Any]:
    """:func:`data_fingerprint` of ``path`` (``signature``: its files' stats, the cache key)."""

    found: dict[str, Any] = {}
    # a registered task reading a folder of its own adds its files
    own = [t for t in matrix_tasks() if t not in TASKS and data_folder(t) not in TASKS]
    for task in (*TASKS, *own):
        for split in DATA_SPLITS:
            try:
                found[f"{task}/{split}"] = fingerprint(load_dataset(task, Path(path), split))
            except DefendError:  # this task's split is not there
                found[f"{task}/{split}"] = None
    return found


def model_build(config: dict[str, Any], task: str, model: str, method: str | None) -> Build:
    """The standard model (``method`` None) or its hardened twin."""
    section, seed = config[task], config["run"]["seed"]
    processes = config["run"]["train_processes"]  # > 1: trained under torchrun, its own build
    many = {"processes": processes} if processes > 1 else {}
    standard = Build("model", {"task": task, "model": model, "epochs": section["epochs"],
                               "seed": seed, "options": section["model_options"].get(model, {}),
                               **many}, (data_build(config),))  # fmt: skip
    if method is None:
        return standard
    settings = {"task": task, "model": model, "method": method,
                "epochs": section["hardening_epochs"],
                "seed": seed, **HARDENING_OPTIONS.get(method, {}), **many}  # fmt: skip
    return Build("hardened", settings, (data_build(config), standard))


def denoiser_build(config: dict[str, Any], task: str, base: Build) -> Build | None:
    epochs = config["smoothing"]["denoiser_epochs"]
    if epochs == 0:
        return None
    settings = {"sigma": config[task]["sigma"], "epochs": epochs, "seed": config["run"]["seed"]}
    for key, default in (("depth", DEFAULT_DEPTH), ("width", DEFAULT_WIDTH)):
        if config["smoothing"][f"denoiser_{key}"] != default:  # the default keeps older keys
            settings[key] = config["smoothing"][f"denoiser_{key}"]
    return Build("denoiser", settings, (data_build(config), base))


def detector_build(config: dict[str, Any], base: Build) -> Build:
    """The detector of ``base``: recon's trained on hallucinations of the configured
    iterations, seg / cls's on their attacks of ``detector.n`` images a split (0: all)."""
    settings = {
        **config["detector"],
        "seed": config["run"]["seed"],
        "max_iter": config["attack"]["hallucination"].get("max_iter", 150),
    }
    return Build("detector", settings, (data_build(config), base))


def levels(builds: list[Build]) -> list[list[Build]]:
    """The builds and everything they need, in levels: a build's needs lie in earlier levels."""
    depth: dict[Build, int] = {}

    def visit(build: Build) -> int:
        if build not in depth:
            depth[build] = 1 + max((visit(n) for n in build.needs), default=-1)
        return depth[build]

    for build in builds:
        visit(build)
    out: list[list[Build]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for build, level in depth.items():
        out[level].append(build)
    return out


class Builder:
    """Makes builds in ``cache`` (each once; what is there is reused)."""

    def __init__(self, cache: Path, device: str | None, log: Callable[[str], None] = print):
        self.cache, self.device, self.log = Path(cache), device, log

    def path(self, build: Build) -> Path:
        """The build's main file (data: its folder)."""
        if build.kind == "data" and "path" in build.settings:
            return Path(build.settings["path"])
        folder = self.cache / build.key
        return folder / ("data" if build.kind == "data" else f"{build.kind}.pt")

    def done(self, build: Build) -> bool:
        if build.kind == "data" and "path" in build.settings:
            return True
        return (self.cache / build.key / "build.json").exists()

    def make(self, build: Build) -> Path:
        """Build ``build`` (its needs first) unless it is done; returns :meth:`path`."""
        for need in build.needs:
            self.make(need)
        if self.done(build):
            return self.path(build)
        with tqdm.external_write_mode():  # above a progress bar, not through it
            self.log(f"== building {build.key}: {build.kind} {_short(build.settings)}")
        start = time.perf_counter()
        getattr(self, f"_{build.kind}")(build)
        write_json(self.cache / build.key / "build.json",
                   {"kind": build.kind, "settings": build.settings,
                    "needs": [n.key for n in build.needs],
                    "seconds": round(time.perf_counter() - start, 3)})  # fmt: skip
        return self.path(build)

    def make_all(self, builds: list[Build], progress: bool = True) -> None:
        """Make ``builds`` (and their needs), those not done under one progress bar."""
        missing = [b for level in levels(builds) for b in level if not self.done(b)]
        bar = tqdm(missing, desc="builds", unit="build", disable=not progress or not missing)
        for build in bar:
            bar.set_postfix_str(f"{build.kind} {build.settings.get('model', '')}".strip())
            self.make(build)

    def _config(self, epochs: int, **extra: Any) -> Any:
        return _train_config(epochs, self.device, **extra)

    def _data(self, build: Build) -> None:

        synthesize(self.path(build), progress=False, **build.settings)

    def _model(self, build: Build) -> None:
        s = build.settings
        self._train({"task": s["task"], "data": str(self.path(build.needs[0])),
                     "out": str(self.path(build)), "model": s["model"],
                     "options": s["options"], "epochs": s["epochs"], "seed": s["seed"],
                     "device": self.device}, s.get("processes", 1))  # fmt: skip

    def _hardened(self, build: Build) -> None:
        s = dict(build.settings)
        data, standard = (str(self.path(b)) for b in build.needs)
        processes = s.pop("processes", 1)
        spec = {"task": s.pop("task"), "data": data, "out": str(self.path(build)),
                "model": s.pop("model"), "method": s.pop("method"), "epochs": s.pop("epochs"),
                "seed": s.pop("seed"), "device": self.device, "weights": standard,
                "method_options": s}  # fmt: skip
        self._train(spec, processes)

    def _train(self, spec: dict[str, Any], processes: int) -> None:
        """:func:`train_spec` here, or in ``processes`` processes under torchrun (one per
        GPU, Gloo on CPU; rank 0 writes the checkpoint, as ``defend train`` does)."""
        if processes == 1:
            return train_spec(spec)

        spec_file = Path(spec["out"]).with_suffix(".spec.json")
        write_json(spec_file, spec)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(processes), "-m", "defend.matrix.builds",
                   str(spec_file)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"torchrun training of {spec['out']} failed: {last}")

    def _denoiser(self, build: Build) -> None:

        s = build.settings
        data, base = (self.path(b) for b in build.needs)
        train_denoiser(base, data, self.path(build), s["sigma"],
                       depth=s.get("depth", DEFAULT_DEPTH), width=s.get("width", DEFAULT_WIDTH),
                       config=self._config(s["epochs"], lr=1e-3, seed=s["seed"]),
                       log=_quiet)  # fmt: skip

    def _detector(self, build: Build) -> None:

        s = build.settings
        data, base = (self.path(b) for b in build.needs)
        config = self._config(s["epochs"], lr=1e-3, seed=s["seed"])
        if kind_of(load_checkpoint(base)["task"]) == "recon":
            train_detector(base, data, self.path(build), max_iter=s["max_iter"], config=config,
                           progress=False, log=_quiet)  # fmt: skip
        else:
            train_input_detector(base, data, self.path(build), n=s["n"] or None,
                                 config=config, splits=("train", "val"),  # the cells test
                                 log=_quiet)  # fmt: skip


def train_spec(spec: dict[str, Any]) -> None:
    """``defend train``'s function for a model build (``spec``: task, data, out, model,
    epochs, seed, device, and ``options`` for a standard model or ``method``,
    ``method_options`` and ``weights`` for a hardened one fine-tuned from it)."""

    _, lr = default_schedule(spec["task"], spec["model"])
    config = _train_config(spec["epochs"], spec["device"], lr=lr, seed=spec["seed"])
    objective = None
    if spec.get("method"):
        objective = make_objective(spec["task"], spec["method"], **spec["method_options"])
    train_model(spec["task"], Path(spec["data"]), Path(spec["out"]), model=spec["model"],
                model_options=spec.get("options"), config=config,
                weights=spec.get("weights"), objective=objective, log=_quiet)  # fmt: skip


def _train_config(epochs: int, device: str | None, **extra: Any) -> Any:

    return TrainConfig(epochs=epochs, device=device, progress=False, **extra)


def _quiet(line: str) -> None:
    """Training logs stay out of the matrix's output (the checkpoints keep the history)."""


def _short(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items() if k != "path")


if __name__ == "__main__":  # one process of a torchrun-trained build (Builder._train)
    train_spec(json.loads(Path(sys.argv[1]).read_text()))
