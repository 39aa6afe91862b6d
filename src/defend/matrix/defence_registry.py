"""Your own defences as matrix rows: :func:`register_defence` and the registry it fills.

A defence a plugin registers (docs/design.md, recipe "Add a defence") is a row of the tasks
it names: the row's model is the task's standard model, and the defence changes the defended
system a cell sees (:class:`defend.matrix.rows.System`): its ``outputs`` (what is scored), and
where it has them a detector's ``scores`` / ``threshold`` or a ``fallback``. The attacker of a
plain column still sees the base model (``System.estimator``), as against the built-in rows; an
adaptive attack against your defence is a column of your own (``register_attack``).

This module imports nothing of the matrix, so the configuration checks (:mod:`config`) and
the rows (:mod:`rows`) both read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from defend.errors import DefendError
from defend.plugins import load_plugins
from defend.tasks import kind_of

#: the built-in defence kinds a task's ``defences`` may list (``adversarial``: one row per
#: method of the task's ``hardening``)
BUILT_IN = ("none", "adversarial", "smoothing", "detector", "adversarial+detector")


@dataclass(frozen=True)
class Defence:
    """A registered defence: ``apply(system, config, paths)`` changes the standard model's
    :class:`~defend.matrix.rows.System` in place (``paths``: the row's builds, ``model`` and
    those ``builds(config, row)`` names, each a :class:`~defend.matrix.builds.Build`); it
    applies to ``tasks``."""

    apply: Callable[[Any, dict[str, Any], dict[str, Any]], None]
    tasks: tuple[str, ...]
    builds: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None


_REGISTERED: dict[str, Defence] = {}


def register_defence(name: str, apply: Callable[[Any, dict[str, Any], dict[str, Any]], None],
                     tasks: tuple[str, ...] | list[str],
                     builds: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None,
                     ) -> None:  # fmt: skip
    """Add the defence ``name`` as a matrix row of ``tasks`` (module doc).

    Args:
        apply: ``apply(system, config, paths)``, changing ``system`` in place.
        tasks: the tasks whose ``defences`` may list it (a built-in task stands for the
            registered tasks of its kind too).
        builds: ``builds(config, row) -> {name: Build}``, what the row needs built besides
            its model (their paths reach ``apply``); None: nothing.

    Raises:
        DefendError: the name is a built-in kind or another defence's, or says what a
            built-in row name says (``adv-`` starts a hardened row, ``+`` joins a detector).
    """
    if name in BUILT_IN or name.startswith("adv-") or "+" in name or not name:
        raise DefendError(f"register_defence: the name '{name}' is taken or reserved")
    entry = Defence(apply, tuple(tasks), builds)
    known = _REGISTERED.get(name)
    if known is not None and known != entry:
        raise DefendError(f"register_defence: the name '{name}' is taken")
    _REGISTERED[name] = entry


def task_defences(task: str) -> tuple[str, ...]:
    """The defences ``task``'s ``defences`` may list: :data:`BUILT_IN` and those registered
    for it or its kind (:func:`defend.tasks.kind_of`; not in the defaults)."""
    kind = kind_of(task)
    return (*BUILT_IN, *(n for n, d in _REGISTERED.items() if {task, kind} & set(d.tasks)))


def defence(name: str) -> Defence:
    """The registered defence ``name``, loading the plugins first if it is unknown (a Ray
    worker, a fresh process)."""
    if name not in _REGISTERED:
        load_plugins()
    if name not in _REGISTERED:
        raise DefendError(f"unknown defence '{name}' (is its plugin in DEFEND_PLUGINS?)")
    return _REGISTERED[name]
