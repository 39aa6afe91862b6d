"""The matrix's configuration: a TOML file (or a shipped preset) checked against a schema.

A configuration names the data, the tasks with their models, defences, attacks and eps sweeps,
and the settings of the attacks and defences. :func:`load_config` reads a file or a preset
(``smoke``, ``quick``, ``paper``; ``defend/matrix/presets/NAME.toml``), fills what it leaves
out from :data:`DEFAULTS`, and checks every key: an unknown key, a wrong type or a bad value is
a :class:`~defend.errors.DefendError` of one line naming the key and the file.

    [run]                  # seed, samples attacked per cell, device, train_processes
    [data]                 # path = "" -> the built-in synthetic data of size / volumes / ...
    [recon] [seg] [cls]    # models, epochs, eps, hardening methods, defences, attacks, sigma
    [attack.NAME]          # parameters of each attack (defend attack NAME's)
    [smoothing] [detector] # Monte Carlo counts, EOT draws, denoiser and detector training
"""

from __future__ import annotations

import copy
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from defend.attacks import registered_attacks
from defend.data.synth import split_counts
from defend.errors import DefendError
from defend.matrix.columns import check_section
from defend.matrix.defence_registry import BUILT_IN, task_defences
from defend.memory import parse_bytes
from defend.plugins import load_plugins
from defend.smooth.denoiser import DEFAULT_DEPTH, DEFAULT_WIDTH
from defend.tasks import TASKS as ALL_TASKS
from defend.tasks import kind_of

PRESETS = ("smoke", "quick", "paper")
TASKS = ("recon", "seg", "cls")
#: the attacks a task's ``attacks`` may list (seg-pgd: seg-fgsm with its ``pgd_steps``)
TASK_ATTACKS = {
    "recon": ("hallucination", "art-pgd", "noise", "real-feature", "inside-radius"),
    "seg": ("seg-fgsm", "seg-pgd", "art-pgd", "noise", "inside-radius"),
    "cls": ("dgde", "art-pgd", "noise", "inside-radius"),
}


def task_attacks(task: str) -> tuple[str, ...]:
    """The attacks ``task``'s ``attacks`` may list: its kind's :data:`TASK_ATTACKS` and the
    attacks registered for it or its kind (:func:`defend.attacks.register_attack`; not in the
    defaults)."""
    kind = kind_of(task)
    plugins = (n for n, entry in registered_attacks().items() if entry.task in (task, kind))
    return (*TASK_ATTACKS[kind], *plugins)


def matrix_tasks() -> tuple[str, ...]:
    """Every task a configuration may name: the built-in :data:`TASKS` and those plugins
    registered (:func:`defend.tasks.register_task`)."""
    load_plugins()
    return tuple(ALL_TASKS)


HARDENING = {"recon": ("hallucination", "pgd"), "seg": ("pgd", "fgsm-rs", "trades"),
             "cls": ("pgd", "fgsm-rs", "trades")}  # fmt: skip


#: per kind of task: the default model, eps sweep and smoothing sigma of its section
KIND_DEFAULTS = {"recon": ("unet", [0.05, 0.1], 0.25),
                 "seg": ("Unet/resnet18", [0.008, 0.03], 0.25),
                 "cls": ("resnet18", [4 / 255, 8 / 255], 0.25)}  # fmt: skip


def task_defaults(kind: str) -> dict[str, Any]:
    """The default section of a task of ``kind`` (``[recon]``, ``[seg]``, ``[cls]`` and a
    registered task's ``[NAME]``)."""
    model, eps, sigma = KIND_DEFAULTS[kind]
    return {
        "models": [model],
        "epochs": 4,
        "eps": list(eps),
        "hardening": [HARDENING[kind][0]],
        "hardening_epochs": 4,
        "defences": list(BUILT_IN),
        "attacks": list(TASK_ATTACKS[kind]),
        "sigma": sigma,
        "model_options": {},
    }


#: every key a configuration may hold, with its default (its type is the default's)
DEFAULTS: dict[str, Any] = {
    "run": {
        "seed": 0,
        "n": 8,
        "device": "auto",
        "split": "test",
        "tasks": list(TASKS),
        "adaptive": True,
        "train_processes": 1,
        "memory": "",  # each pass's budget (e.g. "8GiB"; "" auto: defend.memory)
    },  # fmt: skip
    "data": {"path": "", "size": 32, "volumes": 8, "slices": 4, "coils": 2, "test_volumes": 0},
    **{task: task_defaults(task) for task in TASKS},
    "attack": {
        "hallucination": {"max_iter": 40},
        "seg-fgsm": {"loss": "bce"},
        "seg-pgd": {"loss": "bce", "max_iter": 10},
        "dgde": {"max_queries": 400},
        "art-pgd": {"steps": 10},
        "noise": {},
        "evade": {"weight": 1.0},
        "inside-radius": {"steps": 10},
    },
    "smoothing": {
        "n0": 16,
        "n": 128,
        "alpha": 0.01,
        "recon_n": 1200,
        "delta": 0.05,
        "eot": 4,
        "query_draws": 32,
        "denoiser_epochs": 4,
        "denoiser_depth": DEFAULT_DEPTH,  # the DnCNN's layers and width (defend train
        "denoiser_width": DEFAULT_WIDTH,  # denoiser's defaults)
    },  # fmt: skip
    "detector": {"epochs": 4, "n": 0},
}
#: the sections whose keys are free here (an attack's parameters are checked against its
#: declaration, :func:`defend.matrix.columns.check_section`; a model's options by ``defend
#: train``'s model builder)
FREE = {"attack", *(f"attack.{name}" for name in DEFAULTS["attack"]),
        *(f"{task}.model_options" for task in TASKS)}  # fmt: skip


def defaults() -> dict[str, Any]:
    """:data:`DEFAULTS` with a section for each registered task (its kind's defaults)."""
    extra = {t: task_defaults(kind_of(t)) for t in matrix_tasks() if t not in DEFAULTS}
    return {**DEFAULTS, **extra}


def free() -> set[str]:
    """:data:`FREE` and the ``model_options`` of the registered tasks."""
    return FREE | {f"{task}.model_options" for task in matrix_tasks()}


def preset_path(name: str) -> Path:
    """The TOML file of a shipped preset."""
    if name not in PRESETS:
        raise DefendError(f"unknown preset {name!r}: choose {', '.join(PRESETS)}")
    return Path(str(resources.files("defend.matrix") / "presets" / f"{name}.toml"))


def load_config(source: str | os.PathLike | None = None) -> dict[str, Any]:
    """The resolved configuration of a preset name or a TOML file (None: ``quick``).

    Raises:
        DefendError: the file is missing or not TOML, or a key is unknown, of the wrong type
            or has a bad value (one line naming the key and the file).
    """
    path = preset_path(str(source or "quick")) if _is_preset(source) else Path(source)
    load_plugins()  # a plugin's attacks may be listed
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as error:
        hint = "" if path.suffix else f"; a preset is one of {', '.join(PRESETS)}"
        raise DefendError(
            f"{path}: cannot read the configuration ({error.strerror}){hint}"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise DefendError(f"{path}: not valid TOML ({error})") from None
    config = merge(defaults(), raw, path)
    check_values(config, path)
    config["source"] = str(path)
    return config


def _is_preset(source: str | os.PathLike | None) -> bool:
    return source is None or (isinstance(source, str) and source in PRESETS)


def merge(defaults: dict[str, Any], given: dict[str, Any], path: Path, where: str = "") -> dict:
    """``defaults`` with ``given`` laid over it, every key and type checked."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        name = f"{where}{key}"
        if key not in defaults and where.rstrip(".") not in free():
            raise DefendError(f"{path}: unknown key {name!r}" + _choices(defaults))
        default = defaults.get(key)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise DefendError(f"{path}: {name} must be a table")
            out[key] = merge(default, value, path, f"{name}.")
        elif key in defaults:
            out[key] = _typed(value, default, name, path)
        else:
            out[key] = value
    return out


def _choices(defaults: dict[str, Any]) -> str:
    return f" (expected one of {', '.join(defaults)})" if defaults else ""


def _typed(value: Any, default: Any, name: str, path: Path) -> Any:
    """``value`` if it has the type of ``default`` (an int passes for a float)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        kinds = {type(v) for v in default} or {type(v) for v in value}
        ok = isinstance(value, list) and all(
            isinstance(v, tuple(kinds)) or (float in kinds and isinstance(v, int)) for v in value
        )
        value = [float(v) for v in value] if ok and float in kinds else value
    else:
        ok = isinstance(value, type(default)) and not isinstance(value, bool)
    if not ok:
        raise DefendError(f"{path}: {name} must be {_kind(default)}, got {value!r}")
    return value


def _kind(default: Any) -> str:
    if isinstance(default, list):
        inner = {type(v).__name__ for v in default}
        return f"a list of {' or '.join(sorted(inner)) or 'values'}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        type(default), type(default).__name__
    )


def check_values(config: dict[str, Any], path: Path) -> None:
    """Values within their ranges and choices (types are :func:`merge`'s)."""

    def bad(key: str, message: str) -> DefendError:
        return DefendError(f"{path}: {key} {message}")

    run = config["run"]
    if run["memory"]:
        try:
            parse_bytes(run["memory"])
        except DefendError as error:
            raise bad("run.memory", str(error).removeprefix("memory ")) from None
    for key in ("n", "train_processes"):
        if run[key] < 1:
            raise bad(f"run.{key}", f"must be >= 1, got {run[key]}")
    for task in run["tasks"]:
        if task not in matrix_tasks():
            raise bad("run.tasks", f"holds {task!r}: choose from {', '.join(matrix_tasks())}")
    if run["split"] not in ("train", "val", "test"):
        raise bad("run.split", f"must be train, val or test, got {run['split']!r}")
    for key in ("size", "volumes", "slices", "coils"):
        if config["data"][key] < 1:
            raise bad(f"data.{key}", f"must be >= 1, got {config['data'][key]}")
    _check_splits(config["data"], bad)
    for task in matrix_tasks():
        _check_task(config[task], task, bad)
    for key, value in config["smoothing"].items():
        low = {"denoiser_epochs": 0, "denoiser_depth": 2}.get(key, 1)
        if key not in ("alpha", "delta") and value < low:
            raise bad(f"smoothing.{key}", f"must be >= {low}, got {value}")
    for key, high in (("alpha", 1), ("delta", 0.5)):
        if not 0 < config["smoothing"][key] < high:
            raise bad(f"smoothing.{key}", f"must be in (0, {high}), got {config['smoothing'][key]}")
    if config["detector"]["epochs"] < 1:
        raise bad("detector.epochs", f"must be >= 1, got {config['detector']['epochs']}")
    known = [*DEFAULTS["attack"], *registered_attacks()]
    for name, section in config["attack"].items():
        if name not in known:
            raise bad(f"attack.{name}", f"is not an attack: choose {', '.join(known)}")
        try:
            check_section(name, section)
        except DefendError as error:
            raise bad(f"[attack.{name}]", str(error)) from None


def _check_splits(data: dict[str, Any], bad: Any) -> None:
    """The synthetic data's volumes split into train, val and test (:func:`split_counts`)."""
    if data["volumes"] < 3:
        raise bad("data.volumes", f"must be >= 3 (one a split), got {data['volumes']}")
    try:
        split_counts(data["volumes"], data["test_volumes"])
    except DefendError as error:
        raise bad("data.test_volumes", str(error).removeprefix("test_volumes ")) from None


def _check_task(section: dict[str, Any], task: str, bad: Any) -> None:
    for key, choices in (("defences", task_defences(task)), ("attacks", task_attacks(task)),
                         ("hardening", HARDENING[kind_of(task)])):  # fmt: skip
        for value in section[key]:
            if value not in choices:
                raise bad(f"{task}.{key}", f"holds {value!r}: choose from {', '.join(choices)}")
    if not section["models"]:
        raise bad(f"{task}.models", "must name at least one model")
    if any(not 0 < e < 1 for e in section["eps"]) or not section["eps"]:
        raise bad(f"{task}.eps", f"must be numbers in (0, 1), got {section['eps']}")
    for key in ("epochs", "hardening_epochs"):
        if section[key] < 1:
            raise bad(f"{task}.{key}", f"must be >= 1, got {section[key]}")
    if not section["sigma"] > 0:
        raise bad(f"{task}.sigma", f"must be > 0, got {section['sigma']}")


def format_config(config: dict[str, Any]) -> str:
    """The resolved configuration as TOML (what ``defend matrix --print-config`` shows)."""
    lines = [f"# resolved from {config.get('source', '?')}"]
    for section, values in config.items():
        if not isinstance(values, dict):
            continue
        plain = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if plain:
            lines += ["", f"[{section}]", *(f"{k} = {_toml(v)}" for k, v in plain.items())]
        for key, sub in values.items():
            if isinstance(sub, dict):
                lines += ["", f"[{section}.{key}]", *(f"{k} = {_toml(v)}" for k, v in sub.items())]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
