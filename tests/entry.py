"""The console entry point, as the tests run it.

:func:`defend_main` runs ``defend.cli.main`` (its one-line errors, exit codes and resume
hint included) on a command line. In this process by default: importing torch, ART and smp
again in a subprocess costs about 10 s a call on 2 cores, and the error paths tested here
are the same function. ``isolated=True`` runs a real subprocess, as a shell would, for the
few tests that need one (the console script itself, signals).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import traceback
from unittest import mock

MAIN = "from defend.cli import main; main()"


def defend_main(*args: object, isolated: bool = False) -> subprocess.CompletedProcess:
    """``defend ARGS``: the return code and the captured stdout and stderr. An exception that
    escapes ``main`` is what a subprocess would show: its traceback on stderr, exit 1."""
    argv = [str(a) for a in args]
    if isolated:
        return subprocess.run(
            [sys.executable, "-c", MAIN, *argv], capture_output=True, text=True, timeout=300
        )
    from defend.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with (
        mock.patch.object(sys, "argv", ["defend", *argv]),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        except Exception:  # noqa: BLE001 - shown as the interpreter would show it
            traceback.print_exc()
            code = 1
    if isinstance(code, str):
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert exit 2 and exactly one ``error: ...`` line on stderr holding ``needles``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
