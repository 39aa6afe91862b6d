"""``defend bench``: benchmarks that print ratios measured in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import PROGRESS, app
from defend.errors import DefendError

bench_app = typer.Typer(
    help="Benchmarks: attack wall time against model time and ART; adversarial-training epoch "
    "time against standard training; robustness of checkpoints side by side.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("models")
def bench_models_command(
    out: Path = typer.Argument(Path("runs/bench"), help="Folder for data and checkpoints."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option(None, help="cpu, cuda ... (default: CUDA if present)."),
    n: int = typer.Option(4, help="Test samples per attack."),
    quick: bool = typer.Option(False, help="Smoke run: 32 px data, 1 epoch, short attacks."),
    progress: bool = PROGRESS,
) -> None:
    """The models `bench attacks` and `bench certify` time: synthesise the built-in data,
    train the four default models, attack each once.

    An interrupted run resumes when run again with the same options; a folder that holds
    models of other settings (e.g. a --quick one) is refused.
    """
    from defend.bench.fixtures import format_models, run_models

    summary = run_models(
        out, seed=seed, device=device, n=n, quick=quick, progress=progress, log=typer.echo
    )
    typer.echo(f"== summary ({out / 'summary.json'})")
    typer.echo(format_models(summary))


#: the options the timing benchmarks share
RUN_DIR = typer.Argument(Path("runs/bench"), help="Folder `defend bench models` wrote.")
JSON_OUT = typer.Option(None, help="Also write the results to this JSON file.")
REPEATS = typer.Option(3, help="Timed repeats after a warm-up (medians reported).")
BENCH_DEVICE = typer.Option(None, help="cpu, cuda ... (default: CUDA if present).")
THREADS = typer.Option(
    1,
    help="torch CPU threads during the run (0: torch's default); 1 keeps timings on a shared "
    "CPU stable.",
)


def _check(device: str | None, out: Path | None) -> None:
    """Refuse a bad device or an output file that cannot be written, before any work."""
    from defend.device import pick_device
    from defend.io import check_writable

    pick_device(device)
    if out is not None:
        check_writable(out, "file")


def _show(text: str, result: Any, out: Path | None) -> None:
    """Print a benchmark's table and write its result to ``out`` (strict JSON) if given."""
    from defend.io import jsonable, write_json

    typer.echo(text)
    if out is not None:
        write_json(out, jsonable(result))
        typer.echo(f"wrote {out}")


def _positive_ints(text: str, option: str) -> list[int]:
    """``"1,5,20"`` -> ``[1, 5, 20]``; one line naming ``option`` for anything else."""
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DefendError(f"{option} expects integers like 1,5,20, got '{text}'") from None
    if not counts or min(counts) < 1:
        raise DefendError(f"{option} expects positive integers, got '{text}'")
    return counts


@bench_app.command("attacks")
def bench_attacks_command(
    run_dir: Path = RUN_DIR,
    n: int = typer.Option(4, help="Samples per task, attacked as one batch."),
    out: Path = JSON_OUT,
    split: str = typer.Option("test", help="Data split the samples come from."),
    iters: int = typer.Option(20, help="Iterations of the gradient attacks and ART's PGD."),
    repeats: int = REPEATS,
    pixel_th: str = typer.Option("1,5,20", help="PixelAttack pixel counts, comma-separated."),
    pixel_max_iter: int = typer.Option(
        100, help="PixelAttack's DE generations per pixel count (100: ART's default)."
    ),
    dgde_patience: int = typer.Option(
        None, help="DGDE generations without progress to stop (default: DGDE's)."
    ),
    dgde_max_queries: int = typer.Option(
        None, help="DGDE's query budget per image (default: DGDE's)."
    ),
    device: str = BENCH_DEVICE,
    threads: int = THREADS,
) -> None:
    """Time each attack against its floor of pure model time and against ART's attacks."""
    from defend.bench import bench_attacks, format_bench

    _check(device, out)
    dgde = {"patience": dgde_patience, "max_queries": dgde_max_queries}
    result = bench_attacks(
        run_dir, n=n, split=split, iters=iters, repeats=repeats,
        pixel_th=_positive_ints(pixel_th, "--pixel-th"), pixel_max_iter=pixel_max_iter,
        dgde_params={k: v for k, v in dgde.items() if v is not None}, device=device,
        threads=threads or None, log=typer.echo,
    )  # fmt: skip
    _show("\n" + format_bench(result), result, out)


@bench_app.command("train")
def bench_train_command(
    data: Path = typer.Argument(
        Path("runs/bench/data"), help="Data folder with a train split (defend data synth DIR)."
    ),
    out: Path = JSON_OUT,
    tasks: str = typer.Option(
        "recon/unet,recon/varnet,seg,cls", help="TASK or TASK/MODEL names, comma-separated."
    ),
    steps: int = typer.Option(
        None, help="Attack steps per batch for every method (default: each method's; fgsm-rs 1)."
    ),
    batches: int = typer.Option(4, help="Training batches per benchmark epoch."),
    batch_size: int = typer.Option(8, help="Samples per batch."),
    repeats: int = REPEATS,
    device: str = BENCH_DEVICE,
    threads: int = THREADS,
) -> None:
    """Time each adversarial-training method's epoch over the standard epoch (ideal steps + 1)."""
    from defend.bench import bench_train, format_train_bench

    if out is not None:  # the device is checked by bench_train
        _check(None, out)
    result = bench_train(
        data, tasks=[t.strip() for t in tasks.split(",") if t.strip()], steps=steps,
        batches=batches, batch_size=batch_size, repeats=repeats, device=device,
        threads=threads or None, log=typer.echo,
    )  # fmt: skip
    _show("\n" + format_train_bench(result), result, out)


@bench_app.command("certify")
def bench_certify_command(
    run_dir: Path = RUN_DIR,
    samples: int = typer.Option(2, help="Test samples certified per model."),
    n0: int = typer.Option(100, help="Selection samples (recon: centre candidates)."),
    n: int = typer.Option(2000, help="Estimation samples."),
    batch_size: int = typer.Option(500, help="Noisy copies per forward pass."),
    repeats: int = REPEATS,
    out: Path = JSON_OUT,
    device: str = BENCH_DEVICE,
    threads: int = THREADS,
) -> None:
    """Certify throughput over the base model's forward throughput, and ART's smoothing."""
    from defend.bench.certify_speed import bench_certify, format_certify

    _check(device, out)
    rows = bench_certify(
        run_dir, samples=samples, n0=n0, n=n, batch_size=batch_size, repeats=repeats,
        device=device, threads=threads or None, log=typer.echo,
    )  # fmt: skip
    _show(format_certify(rows), rows, out)


@bench_app.command("robustness")
def bench_robustness_command(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoints of one task (e.g. a standard model and its hardened twin)."
    ),
    data: Path = typer.Option(..., help="Data folder."),
    split: str = typer.Option("test", help="Data split the samples come from."),
    n: int = typer.Option(16, help="Samples attacked (the first n of the split)."),
    eps: float = typer.Option(
        None, help="Attack budget (default: the task's, as defend train --eps)."
    ),
    seed: int = typer.Option(0, help="Random seed of the attacks."),
    device: str = BENCH_DEVICE,
    out: Path = JSON_OUT,
) -> None:
    """Clean metric, the project's attack and ART's PGD against each checkpoint, same samples."""
    from defend.bench.robustness import compare_robustness, format_robustness

    _check(device, out)
    results = compare_robustness(
        checkpoints, data, split=split, n=n, eps=eps, seed=seed, device=device, log=typer.echo
    )
    _show(format_robustness(results), results, out)


@bench_app.command("memory")
def bench_memory_command(
    out: Path = typer.Argument(Path("runs/bench-memory"), help="Folder for data and runs."),
    budget: float = typer.Option(8.0, help="The host-memory budget each step is held to (GiB)."),
    quick: bool = typer.Option(False, help="2 attack iterations, 1 detector epoch: a first look."),
    anatomy: str = typer.Option(
        "knee", help="knee (15 coils, 640 x 368 / 372) or brain (16 coils, 640 x 320 / 288)."
    ),  # fmt: skip
) -> None:
    """Peak host memory of train recon, attack hallucination, certify, train detector and a
    one-cell matrix at fastMRI's real size, each in its own process, against the budget.
    Exit 1 when a step fails or exceeds it."""
    from defend.bench.peak_memory import ANATOMIES, run_memory_bench
    from defend.io import check_writable

    if anatomy not in ANATOMIES:
        raise DefendError(f"--anatomy must be {' or '.join(ANATOMIES)}, got {anatomy!r}")
    if budget <= 0:
        raise DefendError(f"--budget must be > 0 GiB, got {budget:g}")
    rows = run_memory_bench(check_writable(out, "dir"), budget, quick, typer.echo, anatomy)
    typer.echo(f"== written to {out / 'memory.json'}")
    if any(r["code"] != 0 or r["ratio"] > 1 for r in rows):
        raise typer.Exit(1)


@bench_app.command("device")
def bench_device_command(
    folder: Path = typer.Argument(Path("runs/bench-device"), help="Folder for the data."),
    quick: bool = typer.Option(False, help="Tiny sizes: checks the path on a CPU in seconds."),
    repeats: int = REPEATS,
    device: str | None = BENCH_DEVICE,
    out: Path | None = JSON_OUT,
) -> None:
    """The GPU path's figures at fastMRI's size (15 coils, 640 x 368 k-space) and the paper
    preset's models: VarNet slices/s, hallucination attack iterations/s, certify noisy
    copies/s, and the peak device memory of each."""
    from defend.bench.device_figures import format_figures, run_device_figures
    from defend.io import check_writable

    _check(device, out)
    if repeats < 1:
        raise DefendError(f"--repeats must be >= 1, got {repeats}")
    result = run_device_figures(check_writable(folder, "dir"), quick, repeats, device)
    _show(format_figures(result), result, out)


@bench_app.command("matrix")
def bench_matrix_command(
    config: str = typer.Argument("quick", help="A preset (smoke, quick, paper) or a TOML file."),
    folder: Path = typer.Argument(Path("runs/bench-matrix"), help="Folder for the run."),
    existing: bool = typer.Option(
        False, help="Profile the run already in FOLDER (its matrix/ and cache/) without running."
    ),  # fmt: skip
    wall: float = typer.Option(0.0, help="--existing: the run's wall time in seconds (needed)."),
    samples: str = typer.Option(
        "", help="Scaling instead: the matrix at these samples a cell, e.g. 8,16,32,64."
    ),  # fmt: skip
    engine: str = typer.Option("local", help="--samples: local or ray."),
    workers: int | None = typer.Option(None, help="--samples with ray: its CPUs."),
    progress: bool = PROGRESS,
    out: Path | None = JSON_OUT,
) -> None:
    """The matrix of CONFIG run from an empty cache in FOLDER: its wall time over its
    model-time floor (the passes its attacks, Monte Carlo draws and training need, timed
    now), per part and per row, and the share of time in builds, data, attacks, smoothing,
    detection and bookkeeping."""
    from defend.bench.matrix_time import (
        bench_matrix,
        format_profile,
        format_scaling,
        matrix_profile,
        matrix_scaling,
    )
    from defend.io import check_writable

    _check(None, out)
    folder = check_writable(folder, "dir")
    if samples:
        counts = _positive_ints(samples, "--samples")
        if engine not in ("local", "ray"):
            raise DefendError(f"--engine must be local or ray, got {engine!r}")
        rows = matrix_scaling(config, folder, counts, engine=engine, workers=workers,
                              progress=progress, log=typer.echo)  # fmt: skip
        _show(format_scaling(rows), rows, out)
        return
    if existing:
        if not (folder / "matrix" / "config.json").exists():
            raise DefendError(f"{folder}: holds no matrix run (matrix/config.json)")
        if wall <= 0:
            raise DefendError("--existing needs --wall SECONDS, the run's measured wall time")
        result = matrix_profile(folder / "matrix", folder / "cache", wall)
    else:
        result = bench_matrix(config, folder, progress=progress, log=typer.echo)
    _show(format_profile(result), result, out)
