"""The root of the ``defend`` command line: the Typer app, the options and helpers the
command groups share, and :func:`main`, the console entry point (one-line errors, exit 2).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer

from defend.errors import DefendError

try:  # Typer >= 0.22 vendors Click as typer._click; earlier versions use Click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

app = typer.Typer(
    help="Attack and harden deep networks for medical imaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


PROGRESS = typer.Option(True, help="Show progress bars.")


def signature(options: dict[str, tuple[Any, Any]]) -> inspect.Signature:
    """A command's signature from its declared options (name -> (type, ``typer.Option`` or
    ``typer.Argument``)), in order: Typer reads a command's parameters from it, so that a
    command with many options is one table and a short function taking ``**options``."""
    return inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind)
        for name, (kind, info) in options.items()
    ])  # fmt: skip


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["chans=32", "crop=[320,320]"]`` -> ``{"chans": 32, "crop": [320, 320]}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DefendError(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def check_model_options(task: str, model: str | None, pairs: list[str]) -> dict[str, Any]:
    """``--set`` pairs parsed and checked against the model (one line naming the pair)."""
    from defend.errors import ModelOptionError
    from defend.models import check_model_options

    options = parse_options(pairs)
    try:
        check_model_options(task, model, options)
    except ModelOptionError as exc:
        pair = next(p for p in reversed(pairs) if p.partition("=")[0] == exc.key)
        raise DefendError(f"--set {pair}: {exc.reason}") from None
    return options


def format_metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


def warn_quality(checkpoint: Path) -> None:
    """``warning: ...`` on stderr for each sign that the checkpoint's model is of no use, from
    the metrics it was chosen by (:func:`defend.metrics.quality_warnings`)."""
    from defend.io import load_checkpoint
    from defend.metrics import quality_warnings
    from defend.tasks import TASKS, kind_of

    ckpt = load_checkpoint(checkpoint)
    kind = ckpt.get("kind") or (kind_of(ckpt["task"]) if ckpt.get("task") in TASKS else None)
    classes = (ckpt.get("data") or {}).get("classes")
    count = len(classes) if isinstance(classes, list) else None
    for line in quality_warnings(kind or "", ckpt.get("metrics") or {}, count):
        typer.echo(f"warning: {checkpoint}: {line}", err=True)


#: run by :func:`main` before the app parses anything (errors as one line): e.g. the plugins'
#: attack commands (:func:`defend.cli.attack_commands.add_registered`)
BEFORE_RUN: list[Callable[[], None]] = []

DEVICE = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present).")

INTERRUPTED = "interrupted: rerun the same command to resume"


def _interrupted() -> NoReturn:
    """End a progress bar left mid-line, say how to resume, exit 130 (128 + SIGINT)."""
    typer.echo("", err=True)
    typer.echo(INTERRUPTED, err=True)
    sys.exit(130)


def _show_usage_error(exc: ClickException) -> None:
    """Print a usage error as Typer does in standalone mode (boxed with rich if present)."""
    try:
        from typer import rich_utils
        from typer.core import HAS_RICH
    except ImportError:  # pragma: no cover - older or newer Typer layouts
        HAS_RICH = False
    if HAS_RICH and app.rich_markup_mode is not None:
        rich_utils.rich_format_error(exc)
    else:
        exc.show()


def main() -> None:
    """Console entry point: one-line errors instead of tracebacks, a resume hint on Ctrl-C.

    Runs the app with ``standalone_mode=False``: Typer then turns Ctrl-C into a returned exit
    code 130 (instead of exiting silently) and re-raises usage errors, which are shown as in
    standalone mode (exit 2); ``--help`` returns 0.
    """
    try:
        for step in BEFORE_RUN:
            step()
        code = app(standalone_mode=False)
    except DefendError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except ClickException as exc:
        _show_usage_error(exc)
        sys.exit(exc.exit_code)
    if code == 130:
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
