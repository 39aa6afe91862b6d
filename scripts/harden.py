"""Standard and hardened models of each task on the built-in data, attacked the same way.

    python scripts/harden.py runs/harden --out docs/hardening.md
    python scripts/harden.py runs/harden --sections seg,cls      # some tables only
    python scripts/harden.py --from-json docs/hardening.json     # the tables again, no training

Every model is trained by ``defend train``'s function (:func:`defend.train.train_model`, with
:func:`defend.train.make_objective` for ``--adversarial``) and attacked by ``defend bench
robustness``'s (:func:`defend.bench.robustness.robustness`: the first ``--n`` test samples, the
task's default attack budget, seed 0), so each row is what these commands print. A standard
model and its hardened twin train for the same epochs at the same learning rate.

RUN_DIR keeps the data (``defend data synth`` at its default size), the checkpoints, each
model's training time (``times.json``) and each model's measurements (``robustness/*.json``):
a rerun trains and attacks only what is missing, so it resumes where it stopped. The tables go
to ``--out``, the raw numbers beside it as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defend.bench.robustness import robustness
from defend.data import synthesize
from defend.io import jsonable, load_checkpoint, write_json, write_text
from defend.train import TrainConfig, default_schedule, make_objective, train_model


@dataclass(frozen=True)
class Spec:
    """One model of a table: ``defend train TASK --model MODEL --epochs E [adversarial]``."""

    name: str
    task: str
    model: str | None
    epochs: int
    adversarial: dict[str, Any] = field(default_factory=dict)  # make_objective's keywords
    start: str | None = None  # the name of the model whose weights it starts from
    options: dict[str, Any] = field(default_factory=dict)  # model options (``--set K=V``)
    lr: float | None = None  # the learning rate (default: the task's, ``default_schedule``)

    def command(self) -> str:
        """The ``defend train`` options of this model."""
        parts = [f"--model {self.model}"] if self.model else []
        parts += [f"--set {key}={value}" for key, value in self.options.items()]
        parts.append(f"--epochs {self.epochs}")
        if self.lr is not None:
            parts.append(f"--lr {self.lr:g}")
        if self.start:
            parts.append(f"--weights {self.start}.pt")
        for key, value in self.adversarial.items():
            flag = "--adversarial" if key == "method" else "--" + key.replace("_", "-")
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return " ".join(parts)


#: hallucination training as the tables run it: fine-tuning a standard model (``start``), with
#: the TRADES-style consistency term (beta: L1 of the attacked output from the clean one)
HALLUCINATION = {"method": "hallucination", "beta": 4.0}

#: segmentation hardened where the standard model breaks (PGD-10 Dice 0.61 at eps 0.1): the
#: lesions stand 0.56 above the white matter, so at the default 0.008 only partial-volume
#: boundary pixels can flip (``docs/hardening.md``)
STRONG_SEG = {"eps": 0.1, "warmup_epochs": 3}

#: VarNet with twice the cascade U-Nets' channels and one more pooling layer
WIDE = {"chans": 16, "pools": 3}
#: VarNet followed by an image-domain U-Net of the default U-Net's size (``refine_chans``)
REFINE = {"refine_chans": 16}
#: the same with twice the refine U-Net's channels
REFINE32 = {"refine_chans": 32}
#: :func:`_refined` arguments that start from the REFINE32 standard model
FROM_R32: dict[str, Any] = {"start": "varnetR32-standard", "options": REFINE32}


def _refined(
    name: str,
    epochs: int = 8,
    lr: float | None = None,
    start: str = "varnetR-standard",
    options: dict[str, Any] = REFINE,
    **adversarial: Any,
) -> Spec:
    """A refine VarNet hallucination-trained for ``epochs`` from ``start``, with
    :data:`HALLUCINATION` updated by ``adversarial``."""
    return Spec(
        name,
        "recon",
        "varnet",
        epochs,
        {**HALLUCINATION, **adversarial},
        start=start,
        options=options,
        lr=lr,
    )


#: each table's models; a hardened model's twin is the standard model of its section trained
#: for as many epochs in all (those of the model it starts from included)
SECTIONS: dict[str, list[Spec]] = {
    "recon-unet": [
        Spec("unet-standard", "recon", "unet", 16),
        Spec("unet-standard-24", "recon", "unet", 24),
        Spec("unet-hallucination", "recon", "unet", 8, HALLUCINATION, start="unet-standard"),
        Spec("unet-pgd", "recon", "unet", 8, {"method": "pgd"}, start="unet-standard"),
    ],
    "recon-varnet": [
        Spec("varnet-standard", "recon", "varnet", 20),
        Spec("varnet-standard-28", "recon", "varnet", 28),
        Spec("varnet-standard-36", "recon", "varnet", 36),
        Spec("varnet-hallucination", "recon", "varnet", 8, HALLUCINATION, start="varnet-standard"),
        Spec(
            "varnet-hallucination-16",
            "recon",
            "varnet",
            16,
            HALLUCINATION,
            start="varnet-standard",
        ),
        Spec(
            "varnet-h-beta8-eps0.15",
            "recon",
            "varnet",
            8,
            {**HALLUCINATION, "beta": 8.0, "eps": 0.15},
            start="varnet-standard",
        ),
    ],
    "recon-varnet-wide": [
        Spec("varnetL-standard", "recon", "varnet", 20, options=WIDE),
        Spec("varnetL-standard-28", "recon", "varnet", 28, options=WIDE),
        Spec(
            "varnetL-hallucination",
            "recon",
            "varnet",
            8,
            HALLUCINATION,
            start="varnetL-standard",
            options=WIDE,
        ),
    ],
    "recon-varnet-refine": [
        Spec("varnetR-standard", "recon", "varnet", 20, options=REFINE),
        Spec("varnetR-standard-28", "recon", "varnet", 28, options=REFINE),
        Spec("varnetR-standard-36", "recon", "varnet", 36, options=REFINE),
        _refined("varnetR-hallucination"),
        _refined("varnetR-h-lr1e-3", lr=1e-3),
        _refined("varnetR-h-lr1e-3-warmup3", lr=1e-3, warmup_epochs=3),
        _refined("varnetR-h-beta2-lr1e-3", lr=1e-3, beta=2.0),
        _refined("varnetR-h-beta1", beta=1.0),
        _refined("varnetR-h16-beta2", 16, lr=1e-3, warmup_epochs=3, beta=2.0),
        _refined("varnetR-h16-beta3", 16, lr=1e-3, warmup_epochs=3, beta=3.0),
        _refined("varnetR-h16-beta4", 16, lr=1e-3, warmup_epochs=3, beta=4.0),
    ],
    "recon-varnet-refine32": [
        Spec("varnetR32-standard", "recon", "varnet", 20, options=REFINE32),
        Spec("varnetR32-standard-36", "recon", "varnet", 36, options=REFINE32),
        _refined("varnetR32-h16-beta3", 16, lr=1e-3, warmup_epochs=3, beta=3.0, **FROM_R32),
        _refined("varnetR32-h16-beta4", 16, lr=1e-3, warmup_epochs=3, beta=4.0, **FROM_R32),
    ],
    "seg": [
        Spec("seg-standard", "seg", None, 10),
        Spec("seg-pgd", "seg", None, 10, {"method": "pgd"}),
        Spec("seg-fgsm-rs", "seg", None, 10, {"method": "fgsm-rs"}),
        Spec("seg-trades", "seg", None, 10, {"method": "trades"}),
        Spec("seg-pgd-4eps", "seg", None, 10, {"method": "pgd", "eps": 0.032}),
        Spec("seg-pgd-eps0.1", "seg", None, 10, {"method": "pgd", **STRONG_SEG}),
        Spec("seg-pgd-eps0.1-mix0.5", "seg", None, 10, {"method": "pgd", **STRONG_SEG, "mix": 0.5}),
        Spec("seg-trades-eps0.1", "seg", None, 10, {"method": "trades", **STRONG_SEG}),
    ],
    "cls": [
        Spec("cls-standard", "cls", None, 8),
        Spec("cls-pgd", "cls", None, 8, {"method": "pgd"}),
        Spec("cls-fgsm-rs", "cls", None, 8, {"method": "fgsm-rs"}),
        Spec("cls-trades", "cls", None, 8, {"method": "trades"}),
    ],
    "tradeoff": [
        Spec("unet-standard", "recon", "unet", 16),
        Spec("unet-standard-24", "recon", "unet", 24),
        Spec(
            "unet-h-beta1",
            "recon",
            "unet",
            8,
            {**HALLUCINATION, "beta": 1.0},
            start="unet-standard",
        ),
        Spec("unet-hallucination", "recon", "unet", 8, HALLUCINATION, start="unet-standard"),
        Spec("unet-h-scratch-beta6", "recon", "unet", 16, {**HALLUCINATION, "beta": 6.0}),
    ],
}

#: the columns of each task's table: (measurement key, header)
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "recon": [
        ("val_ssim", "val SSIM"),
        ("ssim_vs_twin", "val SSIM - twin"),
        ("clean_ssim", "test SSIM"),
        ("hallucination_strength", "hallucination strength"),
        ("strength_ratio", "x twin"),
        ("hallucination_input_strength", "strength in input"),
        ("net_strength", "net strength"),
        ("hallucination_input_psnr", "input PSNR dB"),
        ("art_pgd_ssim", "ART PGD SSIM"),
    ],
    "seg": [
        ("val_dice", "val Dice"),
        ("clean_dice", "test Dice"),
        ("fgsm_dice", "FGSM Dice"),
        ("pgd10_dice", "PGD-10 Dice"),
        ("dice_lost", "Dice lost to PGD-10"),
        ("stronger_fgsm_dice", f"FGSM Dice, eps {STRONG_SEG['eps']:g}"),
        ("stronger_pgd10_dice", f"PGD-10 Dice, eps {STRONG_SEG['eps']:g}"),
    ],
    "cls": [
        ("val_accuracy", "val accuracy"),
        ("clean_accuracy", "test accuracy"),
        ("pgd20_accuracy", "PGD-20 accuracy"),
        ("dgde_success", "DGDE success"),
        ("dgde_pixels", "DGDE pixels"),
    ],
}

#: a second, larger attack budget per task (seg: the synthetic segmentation task loses little
#: Dice at the default 0.008, see :data:`STRONG_SEG`)
STRONGER = {"seg": STRONG_SEG["eps"]}

#: the version of each task's measurements (:func:`robustness`): a cached measurement of an
#: older version is measured again (recon 2: the feature's strength in the attacked input)
VERSIONS = {"recon": 2, "seg": 1, "cls": 1}

ATTACKS = {
    "recon": "`defend attack hallucination` at its defaults (the paper's centred line scaled to "
    "the image, 12 x 1 px at 64 px; contrast 0.3; 150 iterations of step 0.1 eps, patience 10; "
    "relative l-inf eps {eps:g}; strength: mean over samples; strength in input: the same "
    "measure on the attacked zero-filled image, what a reconstruction faithful to its "
    "measurement shows); ART `ProjectedGradientDescent` "
    "on the sampled k-space (real parts, the same per-sample budget, 10 steps of eps / 4, "
    "raising the MSE to the ground truth)",
    "seg": "`defend attack seg-fgsm` (BCE, l-inf eps {eps:g}, and "
    f"{STRONG_SEG['eps']:g}): FGSM, and "
    "PGD with 10 steps of 0.25 eps from a random start",
    "cls": "ART `ProjectedGradientDescent` (l-inf eps {eps:.4g} = 8/255, 20 steps of eps / 4, "
    "one random start); `defend attack dgde` at its defaults (success: of the images classified "
    "right when clean)",
}


def total_epochs(spec: Spec) -> int:
    """Epochs of ``spec`` and of the models it starts from."""
    return spec.epochs + (total_epochs(spec_named(spec.start)) if spec.start else 0)


def spec_named(name: str) -> Spec:
    """The model of :data:`SECTIONS` called ``name``."""
    return next(spec for specs in SECTIONS.values() for spec in specs if spec.name == name)


class Hardening:
    """Trains and attacks the models of :data:`SECTIONS` in ``run``, keeping what is done."""

    def __init__(self, run: Path, n: int, device: str | None) -> None:
        self.run, self.n, self.device = run, n, device
        self.data = run / "data"
        self.times_file = run / "times.json"
        self.times = self._read_times()

    def _read_times(self) -> dict[str, float]:
        return json.loads(self.times_file.read_text()) if self.times_file.exists() else {}

    def prepare(self) -> None:
        if not (self.data / "dataset.json").exists():
            synthesize(self.data, progress=False)

    def train(self, spec: Spec) -> Path:
        """Train (or resume) ``spec``'s checkpoint; its training seconds go to times.json."""
        out = self.run / f"{spec.name}.pt"
        if out.exists():
            ckpt = load_checkpoint(out)
            if ckpt["epoch"] >= spec.epochs or ckpt.get("stopped"):
                return out
        weights = self.train(spec_named(spec.start)) if spec.start else None
        lr = spec.lr or default_schedule(spec.task, spec.model)[1]
        config = TrainConfig(epochs=spec.epochs, lr=lr, device=self.device, progress=False)
        adversarial = dict(spec.adversarial)
        objective = (
            make_objective(spec.task, adversarial.pop("method"), **adversarial)
            if (adversarial)
            else None
        )
        print(f"== training {spec.name}: defend train {spec.task} {spec.command()}", flush=True)
        start = time.perf_counter()
        train_model(
            spec.task,
            self.data,
            out,
            model=spec.model,
            model_options=spec.options or None,
            config=config,
            objective=objective,
            weights=weights,
            log=lambda line: print("  " + line, flush=True),
        )
        seconds = self.times.get(spec.name, 0.0) + time.perf_counter() - start
        self.times = self._read_times()  # another run of the script may have added models
        self.times[spec.name] = seconds
        write_json(self.times_file, self.times)
        return out

    def measure(self, spec: Spec) -> dict[str, Any]:
        """``spec``'s robustness (cached in ``robustness/NAME.json``) at the task's budget and
        at :data:`STRONGER`'s, and its validation metrics."""
        cache = self.run / "robustness" / f"{spec.name}.json"
        if cache.exists() and _version(cache) != VERSIONS[spec.task]:
            cache.unlink()  # measured by an older version of the task's robustness
        if not cache.exists():
            checkpoint = self.train(spec)
            print(f"== attacking {spec.name}", flush=True)
            result = robustness(checkpoint, self.data, n=self.n, device=self.device)
            ckpt = load_checkpoint(checkpoint)
            result["val"] = {k: v for k, v in ckpt["metrics"].items() if not k.startswith("zf_")}
            result["epochs"] = ckpt["epoch"]
            result["version"] = VERSIONS[spec.task]
            write_json(cache, jsonable(result))
        result = json.loads(cache.read_text())
        stronger_eps = result.get("stronger", {}).get("eps")
        if spec.task in STRONGER and stronger_eps != STRONGER[spec.task]:
            print(f"== attacking {spec.name} at eps {STRONGER[spec.task]}", flush=True)
            checkpoint = self.run / f"{spec.name}.pt"
            stronger = robustness(
                checkpoint, self.data, n=self.n, device=self.device, eps=STRONGER[spec.task]
            )
            result["stronger"] = {"eps": stronger["eps"], "metrics": stronger["metrics"]}
            write_json(cache, jsonable(result))
        result["seconds"] = self.seconds(spec)
        return result

    def seconds(self, spec: Spec) -> float | None:
        """Training seconds of ``spec``, those of the model it starts from included."""
        own = self.times.get(spec.name)
        if own is None or spec.start is None:
            return own
        base = self.seconds(spec_named(spec.start))
        return None if base is None else own + base


def _version(cache: Path) -> int:
    return json.loads(cache.read_text()).get("version", 1)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def section_table(specs: list[Spec], results: list[dict[str, Any]]) -> str:
    """One markdown table: a row a model, the standard twin first."""
    task = specs[0].task
    columns = COLUMNS[task]
    header = ["model", "training (`defend train` options)", "epochs in all", "train s"]
    header += [h for _, h in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    twins = {
        total_epochs(spec): r
        for spec, r in zip(specs, results, strict=True)
        if not spec.adversarial
    }
    for spec, result in zip(specs, results, strict=True):
        twin = twins.get(total_epochs(spec), results[0])
        standard = twin["metrics"]
        values = {**result["metrics"], **{f"val_{k}": v for k, v in result["val"].items()}}
        if "ssim" in result["val"]:
            values["ssim_vs_twin"] = result["val"]["ssim"] - twin["val"]["ssim"]
        stronger = result.get("stronger", {}).get("metrics", {})
        values.update({f"stronger_{k}": v for k, v in stronger.items()})
        if "pgd10_dice" in values:
            values["dice_lost"] = values["clean_dice"] - values["pgd10_dice"]
        if "hallucination_strength" in values:
            ratio = values["hallucination_strength"] / standard["hallucination_strength"]
            values["strength_ratio"] = ratio
            # what the model added beyond the feature the attacked measurement holds (the
            # mean of the per-sample differences is the difference of the means)
            written = values.get("hallucination_input_strength")
            if written is not None:
                values["net_strength"] = values["hallucination_strength"] - written
        row = [
            spec.name,
            f"`{spec.command()}`",
            str(total_epochs(spec)),
            _cell(result["seconds"] and round(result["seconds"])),
        ]
        lines.append("| " + " | ".join(row + [_cell(values.get(k)) for k, _ in columns]) + " |")
    eps = results[0]["eps"]
    attacks = ATTACKS[task].format(eps=eps)
    lines += ["", f"{results[0]['n']} test samples; attacks: {attacks}."]
    return "\n".join(lines)


def from_json(path: Path, out: Path) -> None:
    """The tables again from the measurements of an earlier run (``OUT.json``), no training:
    for columns computed from what was measured (``net strength``)."""
    raw = json.loads(Path(path).read_text())
    tables = {name: section_table(SECTIONS[name], raw[name]) for name in SECTIONS if name in raw}
    write_text(out.with_suffix(".tables.md"), render(tables))
    print(f"wrote {out.with_suffix('.tables.md')} from {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", help="folder of data, checkpoints, results")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render tables only")
    parser.add_argument("--out", type=Path, default=Path("docs/hardening.md"))
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--n", type=int, default=16, help="test samples attacked per model")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.from_json is not None:
        from_json(args.from_json, args.out)
        return
    if args.run is None:
        parser.error("give RUN_DIR (or --from-json FILE)")
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    hardening = Hardening(args.run, args.n, args.device)
    hardening.prepare()
    tables, raw = {}, {}
    for name in names:
        results = [hardening.measure(spec) for spec in SECTIONS[name]]
        tables[name] = section_table(SECTIONS[name], results)
        raw[name] = results
        print(tables[name], flush=True)
    write_text(args.out.with_suffix(".tables.md"), render(tables))
    write_json(args.out.with_suffix(".json"), jsonable(raw))
    print(f"wrote {args.out.with_suffix('.tables.md')} and {args.out.with_suffix('.json')}")


def render(tables: dict[str, str]) -> str:
    body = [f"### {name}\n\n{table}\n" for name, table in tables.items()]
    return "<!-- written by scripts/harden.py; do not edit -->\n\n" + "\n".join(body)


if __name__ == "__main__":
    main()
