"""``defend matrix``: every defence against every attack, with a report.

    from defend.matrix import load_config, run_matrix
    config = load_config("smoke")          # or "quick" (the default), "paper", a TOML file
    summary = run_matrix(config, "runs/matrix-smoke")

:mod:`~defend.matrix.config` reads and checks the configuration, :mod:`~defend.matrix.builds`
makes (and caches) the models, denoisers and detectors through ``defend train``'s functions,
:mod:`~defend.matrix.rows` and :mod:`~defend.matrix.columns` are the rows and columns (one
registry line each; :func:`register_defence` adds your own row),
:mod:`~defend.matrix.cells` measures a cell, :mod:`~defend.matrix.results` writes the tables
and sanity flags, and :mod:`~defend.matrix.run` drives it all.
"""

from defend.matrix.config import format_config, load_config
from defend.matrix.defence_registry import register_defence
from defend.matrix.run import report, run_matrix

__all__ = ["format_config", "load_config", "register_defence", "report", "run_matrix"]
