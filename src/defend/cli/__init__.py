"""The ``defend`` command line: a thin Typer layer over the library's functions.

Every command maps onto one function a notebook can call; each module of this package is one
command group and only parses options, calls that function and prints.
:func:`~defend.cli.app.main` turns :class:`~defend.errors.DefendError` into a one-line
message and exit 2.

Imports: each command imports the library inside its function, the one place in the package
that does so on purpose. The command line then starts without torch, ART or
segmentation-models-pytorch (about 0.1 s against several seconds), which ``--help`` and every
one-line error of a mistyped command need; ``tests/test_attack_params.py`` checks it.
"""

from __future__ import annotations

import importlib

from defend.cli.app import app, main

#: the command groups, in the order ``defend --help`` lists them; importing a group's module
#: registers its commands on :data:`app`
GROUPS = ("data", "train", "import", "detect", "attack", "info", "certify", "matrix", "bench")
for _group in GROUPS:
    importlib.import_module(f"defend.cli.{_group}_commands")

__all__ = ["GROUPS", "app", "main"]
