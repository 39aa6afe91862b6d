"""``defend matrix`` and ``defend report``: the defence-versus-attack matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

# the library is imported inside each command: start-up without torch (defend.cli)
from defend.cli.app import PROGRESS, app


@app.command("matrix")
def matrix_command(
    config: str = typer.Argument(
        "quick", help="A preset (smoke, quick, paper) or a TOML configuration file."
    ),
    out: Path = typer.Option(Path("runs/matrix"), help="Folder for cells, tables and report."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Show the resolved configuration and stop."
    ),
    force: bool = typer.Option(False, help="Run every cell again (builds are kept)."),
    engine: str = typer.Option("local", help="local (one process) or ray."),
    address: str = typer.Option(None, help="ray: the address of an existing cluster."),
    workers: int = typer.Option(None, help="ray: CPUs of the local Ray (default all)."),
    shard: str = typer.Option(None, help="I/N: run every N-th cell from the I-th only."),
    cache: Path = typer.Option(None, help="Where builds are cached (default OUT/../cache)."),
    progress: bool = PROGRESS,
) -> None:
    """Every defence against every attack on the built-in data (or CONFIG's), resumable.

    Writes OUT/cells/*.json (one a cell, as it finishes), OUT/matrix.csv, OUT/matrix.md and
    the sanity flags; a run started again runs only the missing cells. Exit 1 when a cell
    failed (its error is in its record and in matrix.md).
    """
    from defend.matrix import format_config, load_config, run_matrix
    from defend.matrix.run import parse_shard

    resolved = load_config(config)
    if print_config:
        typer.echo(format_config(resolved))
        return
    summary = run_matrix(resolved, out, engine=engine, address=address,
                         shard=parse_shard(shard), force=force, cache=cache,
                         workers=workers, progress=progress, log=typer.echo)  # fmt: skip
    _show_matrix(summary)


@app.command("report")
def report_command(
    out: Path = typer.Argument(..., help="A matrix folder (defend matrix --out)."),
    merge: list[Path] = typer.Option(
        None, help="Also read the cells of these folders (shards); repeatable."
    ),
) -> None:
    """Rebuild a matrix's tables and report from its saved cells (and its shards')."""
    from defend.matrix import report

    folders = [out, *(merge or [])]
    _show_matrix(report(out, folders=folders))


def _show_matrix(summary: dict[str, Any]) -> None:
    out = Path(summary["out"])
    typer.echo((out / "matrix.md").read_text())
    typer.echo(f"tables: {out / 'matrix.md'}, long form: {out / 'matrix.csv'}")
    typer.echo(f"report: {out / 'report.html'} (open it in a browser)")
    if summary.get("missing"):
        typer.echo(f"{len(summary['missing'])} cells not run yet (run defend matrix again)")
    if summary["failed"]:
        typer.echo(f"{len(summary['failed'])} cells failed: {', '.join(summary['failed'])}",
                   err=True)  # fmt: skip
        raise typer.Exit(1)
