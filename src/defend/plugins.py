"""Plugins: your own attacks, registered by modules that ``defend`` imports by name.

A plugin is any importable module that calls :func:`defend.attacks.register_attack` when it
is imported. List the modules in the environment variable ``DEFEND_PLUGINS``
(comma-separated, e.g. ``DEFEND_PLUGINS=mylab.attacks``): the command line imports them
before it builds ``defend attack``'s commands, and the matrix before it checks a
configuration and before it runs a cell (also in a Ray worker, which inherits the
environment). In a notebook, import the module yourself.
"""

from __future__ import annotations

import importlib
import os

from defend.errors import DefendError

#: the environment variable that names the plugin modules
ENV = "DEFEND_PLUGINS"


def plugin_modules() -> list[str]:
    """The module names ``DEFEND_PLUGINS`` lists, in order."""
    return [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every module ``DEFEND_PLUGINS`` names (a module imports once however often this
    is called); a module that cannot be imported is a one-line :class:`DefendError`."""
    names = plugin_modules()
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise DefendError(f"{ENV}: cannot import plugin module '{name}' ({exc})") from None
    return names
