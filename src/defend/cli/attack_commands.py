"""``defend attack NAME``: one command per attack, its options generated from the attack's
declared parameters (:mod:`defend.attacks.params`)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.adaptive.evade_params import EVADING_HALLUCINATION
from defend.attacks.declared import DECLARED
from defend.attacks.params import Param, by_name
from defend.cli.app import BEFORE_RUN, DEVICE, PROGRESS, app
from defend.errors import DefendError

#: the adaptive attacks ``defend attack`` offers through an option of a plain one
ADAPTIVE = {"hallucination-evade": EVADING_HALLUCINATION}

attack_app = typer.Typer(help="Run an attack against a checkpoint.", no_args_is_help=True)
app.add_typer(attack_app, name="attack")


def _run_attack(name: str, common: dict[str, Any], params: dict, progress: bool = True) -> None:
    """Check device and output folder, run the attack, print its summary."""
    from defend.adaptive.runner import run_attack
    from defend.attacks.apply import format_summary

    params = {k: v for k, v in params.items() if v is not None}
    params["verbose"] = progress
    result = run_attack(name, **common, params=params)
    shapes = len(result["shapes"])
    typer.echo(
        f"attacked {result['attacked']} samples of {result['data_root']}"
        + (f" ({shapes} k-space shapes)" if shapes > 1 else "")
    )
    typer.echo(format_summary(result["summary"]))
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {', '.join(result['files'].values())}")


CHECKPOINT = typer.Option(..., help="A defend train checkpoint of the attack's task.")
DATA = typer.Option(..., help="Data folder.")
OUT = typer.Option(..., help="Output folder for metrics.csv, metrics.json, figure.png.")
SPLIT = typer.Option("test", help="Data split to attack.")
N = typer.Option(16, help="Number of samples to attack.")
SKIP = typer.Option(1, help="Attack every skip-th sample of the split.")
SAVE = typer.Option(False, help="Also write OUT/adversarial.npz (x, x_adv, y, indices).")


SMOOTH_SIGMA = typer.Option(
    None, help="Attack the smoothed model at this noise level (EOT), as defend certify's."
)
DENOISER = typer.Option(None, help="With --smooth-sigma: the denoiser in front of the model.")
EOT = typer.Option(8, help="With --smooth-sigma: noise draws averaged per forward pass.")


def _common(
    checkpoint: Path,
    data: Path,
    out: Path,
    split: str,
    n: int,
    device: str | None,
    save_adversarial: bool,
    smooth_sigma: float | None = None,
    denoiser: Path | None = None,
    eot: int = 8,
    skip: int = 1,
) -> dict[str, Any]:
    """The keyword arguments every attack command passes to ``run_attack``."""
    if smooth_sigma is None and denoiser is not None:
        raise DefendError("--denoiser needs --smooth-sigma (the noise it removes)")
    smooth = None if smooth_sigma is None else {"sigma": smooth_sigma, "denoiser": denoiser}
    return {
        "smooth": smooth and {**smooth, "eot": eot},
        "checkpoint": checkpoint,
        "data_dir": data,
        "out": out,
        "split": split,
        "n": n,
        "skip": skip,
        "device": device,
        "save_adversarial": save_adversarial,
    }


#: the options every attack command has, before its declared parameters
ATTACK_OPTIONS = {
    "checkpoint": (Path, CHECKPOINT), "data": (Path, DATA), "out": (Path, OUT),
    "split": (str, SPLIT), "n": (int, N), "skip": (int, SKIP), "device": (str, DEVICE),
    "save_adversarial": (bool, SAVE), "smooth_sigma": (float, SMOOTH_SIGMA),
    "denoiser": (Path, DENOISER), "eot": (int, EOT),
}  # fmt: skip


def _param_option(param: Param) -> inspect.Parameter:
    """The Typer option of a declared attack parameter (its help with unit and range)."""
    notes = "; ".join(v for v in (param.unit, param.allowed()) if v)
    text = param.help[0].upper() + param.help[1:] + (f" ({notes})" if notes else "") + "."
    if param.kind is bool:
        option = typer.Option(param.default, help=text)
    else:
        option = typer.Option(None if param.parse else param.default, param.option, help=text)
    kind = str if param.parse else param.cli_type or param.kind
    return inspect.Parameter(param.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=kind)  # fmt: skip


def _attack_command(name: str, summary: str, adaptive: str | None = None,
                    declared_params: tuple[Param, ...] | None = None) -> None:  # fmt: skip
    """Register ``defend attack NAME``: the common options, then the attack's declared
    parameters (:mod:`defend.attacks.declared`, or ``declared_params`` for a registered
    attack); with ``adaptive``, also that attack's own parameters, whose ``detector``
    switches to it (``--evade DET.pt``)."""
    declared = by_name(DECLARED[name] if declared_params is None else declared_params)
    own = dict(declared)
    if adaptive is not None:
        declared = {**declared, **by_name(ADAPTIVE[adaptive])}
    params = [p for p in declared.values() if p.cli]

    def command(**values: Any) -> None:
        progress = values.pop("progress")
        common = _common(**{key: values.pop(key) for key in ATTACK_OPTIONS})
        given = {p.name: p.parse(v) if p.parse and v is not None else v
                 for p, v in ((declared[k], v) for k, v in values.items())}  # fmt: skip
        for key, value in given.items():
            declared[key].check(value)
        chosen = adaptive if adaptive and given.get("detector") is not None else name
        if chosen == name:
            given = {k: v for k, v in given.items() if k in own}
        _run_attack(chosen, common, given, progress)

    fixed = [
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for key, (kind, option) in ATTACK_OPTIONS.items()
    ]
    progress = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=PROGRESS,
                                 annotation=bool)  # fmt: skip
    command.__signature__ = inspect.Signature([*fixed, *map(_param_option, params), progress])
    command.__doc__ = summary
    attack_app.command(name)(command)


_attack_command("hallucination", "Masked iterative FGSM in k-space: make a reconstruction "
                "hallucinate (Morshuis et al.); --evade DET.pt attacks a detector jointly.",
                adaptive="hallucination-evade")  # fmt: skip
_attack_command("seg-fgsm", "FGSM / PGD against a segmentation model (Wang & Xu).")
_attack_command("dgde", "DGDE: black-box few-pixel differential evolution on a classifier.")


def add_registered() -> list[str]:
    """Load the plugins (``DEFEND_PLUGINS``, :mod:`defend.plugins`) and add ``defend attack
    NAME`` for every attack registered since start-up (:func:`defend.attacks.register_attack`);
    returns the names added. :func:`defend.cli.app.main` runs it before parsing."""
    from defend.attacks import registered_attacks
    from defend.plugins import load_plugins

    load_plugins()
    known = {info.name for info in attack_app.registered_commands}
    added = []
    for name, entry in registered_attacks().items():
        if name not in known:
            summary = (entry.attack.__doc__ or name).strip().splitlines()[0]
            _attack_command(name, summary, declared_params=entry.attack.PARAMS)
            added.append(name)
    return added


BEFORE_RUN.append(add_registered)
