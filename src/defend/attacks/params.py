"""Attack parameters, declared once: :class:`Param`.

Each attack lists its parameters as a tuple of :class:`Param` (``TorchAttack.PARAMS`` and a
subclass's own). From that one declaration come the attack's ``attack_params`` (ART's list),
its constructor's signature and defaults, the range checks its ``_check_params`` runs, the
``defend attack NAME`` options, the check of a matrix's ``[attack.NAME]`` section, and the
parameter tables of the docs (:func:`markdown_table`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from defend.errors import DefendError


@dataclass(frozen=True)
class Param:
    """One attack parameter.

    Args:
        name: the keyword (and attribute) name, e.g. ``max_iter``.
        default: its default value (``None``: unset, the attack derives one).
        help: one line, what it is, in the units below.
        kind: ``float``, ``int``, ``bool``, ``str``, ``tuple`` (of ints) or ``object``
            (anything, checked by the attack itself: arrays, checkpoints).
        unit: the unit of the value, e.g. ``"fraction of eps"``, ``"px"``, ``"queries"``.
        choices: the allowed strings (``kind=str``).
        low, high: the allowed range; ``open_low`` / ``open_high`` exclude the ends.
        optional: ``None`` is allowed.
        flag: the CLI spelling where it is not ``--name-with-dashes`` (e.g. ``--F``).
        cli: whether ``defend attack`` offers it as an option (arrays and estimators: no).
        cli_type: the option's type where ``kind`` is ``object`` (e.g. ``Path``, ``float``).
        parse: turns the CLI's string into the value (e.g. ``"60x4"`` -> ``(4, 60)``);
            with it the option takes a string.
    """

    name: str
    default: Any
    help: str
    kind: type = float
    unit: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    optional: bool = False
    flag: str | None = None
    cli: bool = True
    cli_type: type | None = None
    parse: Callable[[str], Any] | None = field(default=None, compare=False)

    @property
    def option(self) -> str:
        """The CLI option, e.g. ``--max-iter``."""
        return self.flag or "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """The allowed values in words: ``in (0, 1]``, ``>= 1``, ``line or square`` ..."""
        if self.choices:
            return " or ".join(filter(None, [", ".join(self.choices[:-1]), self.choices[-1]]))
        lo = None if self.low is None else f"{'(' if self.open_low else '['}{self.low:g}"
        hi = None if self.high is None else f"{self.high:g}{')' if self.open_high else ']'}"
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if hi:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return ""

    def check(self, value: Any) -> None:
        """Raise a one-line :class:`DefendError` unless ``value`` is allowed."""
        if value is None:
            if self.optional or self.default is None:
                return
            raise DefendError(f"{self.name} must be given ({self.allowed()})")
        if self.kind is object:
            return
        if self.kind is bool:
            if not isinstance(value, bool | int):
                raise DefendError(f"{self.name} must be true or false, got {value!r}")
            return
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise DefendError(f"{self.name} must be {self.allowed()}, got {value!r}")
            return
        values = value if self.kind is tuple else [value]
        if self.kind is tuple and (not isinstance(value, tuple | list) or not value):
            raise DefendError(f"{self.name} must be a non-empty list of integers, got {value!r}")
        for v in values:
            self._check_number(v, value)

    def _check_number(self, v: Any, value: Any) -> None:
        whole = self.kind in (int, tuple)
        if isinstance(v, bool) or not isinstance(v, int | float) or (whole and v != int(v)):
            what = "an integer" if whole else "a number"
            raise DefendError(f"{self.name} must be {what}, got {value!r}")
        below = self.low is not None and (v <= self.low if self.open_low else v < self.low)
        above = self.high is not None and (v >= self.high if self.open_high else v > self.high)
        if math.isnan(v) or math.isinf(v) or below or above:
            raise DefendError(f"{self.name} must be {self._range_words()}, got {value!r}")

    def _range_words(self) -> str:
        """``in (0, 1]`` where both ends are set, else ``a finite number > 0`` (floats) or
        ``>= 1`` (integers)."""
        if self.low is not None and self.high is not None or self.kind in (int, tuple):
            return self.allowed()
        return f"a finite number {self.allowed()}".rstrip()


#: What every attack takes (:class:`~defend.attacks.torch_attack.TorchAttack`).
COMMON = (
    Param("batch_size", None, "samples attacked together (default: what the memory budget "
          "holds, defend.memory; results do not depend on it)", int, "samples", low=1,
          optional=True),
    Param("seed", 0, "the attack's seed (each sample draws from (seed, its index))", int),
    Param("verbose", False, "show a progress bar", bool, cli=False),
)  # fmt: skip


def by_name(params: Iterable[Param]) -> dict[str, Param]:
    """``{name: Param}``; a later declaration of a name replaces an earlier one (a subclass
    changing a default)."""
    found: dict[str, Param] = {}
    for p in params:
        found[p.name] = p
    return found


def check_known(params: dict[str, Param], given: Iterable[str], what: str) -> None:
    """One line naming the first key of ``given`` that ``params`` does not declare."""
    for key in given:
        if key not in params:
            raise DefendError(f"{what} has no parameter {key!r}: choose from {', '.join(params)}")


def markdown_table(params: Iterable[Param]) -> str:
    """The docs' table of an attack's parameters: option, default, unit, allowed, meaning."""
    rows = ["| parameter | default | unit | allowed | meaning |", "|---|---|---|---|---|"]
    for p in params:
        default = "-" if p.default is None else f"`{p.default!r}`"
        rows.append(f"| `{p.name}` | {default} | {p.unit} | {p.allowed()} | {p.help} |")
    return "\n".join(rows)
