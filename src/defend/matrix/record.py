"""A matrix cell's record: what ``OUT/cells/<id>.json`` holds, as one typed object.

:class:`CellRecord` is what :func:`defend.matrix.cells.run_cell` returns, what the results,
the report and the provenance checks read, and (through :meth:`CellRecord.to_json` /
:meth:`CellRecord.from_json`) the file format, which keeps the keys it always had: a field
that is unset (None, or an empty summary on a failed cell) is left out of the file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from defend.intervals import Estimate

#: fields left out of the JSON file when None (``eps`` None means "no eps" and is kept)
OPTIONAL = ("seed", "split", "worst_case_of", "params", "roc", "examples", "error", "traceback",
            "config_hash", "builds_hash", "builds", "defend_version", "phases")  # fmt: skip
#: the outcome summary, left out when empty (a failed cell has none)
SUMMARY = ("metrics", "intervals", "counts", "per_sample")


@dataclass
class CellRecord:
    """One cell's outcome (:mod:`defend.matrix.cells` lists every field's meaning).

    Identity: ``id``, ``task``, ``model``, ``defence``, ``attack``, ``adaptive`` (``none``,
    ``eot`` or ``evade``), ``eps`` (None: an attack without one), ``seed``, ``n`` (samples
    attacked), ``split``; on adaptive cells ``worst_case_of`` (the two attacks whose
    per-sample worst it reports); ``params`` (the attack's). Outcome: ``status`` (``ok`` or
    ``failed`` with ``error`` and ``traceback``), ``seconds``, ``phases`` (where they went,
    :mod:`defend.matrix.phases`; ok cells); on ``ok`` cells ``metrics``
    (means over the samples judged; ``quality_metric`` names the quality unit),
    ``intervals`` (95 %, ``[low, high]``), ``counts`` (samples judged) and ``per_sample``
    (NaN where not judged), each keyed by metric; ``roc`` (a detector's curve) and
    ``examples`` (the npz of example images, relative to OUT). Provenance
    (:mod:`defend.matrix.provenance`): ``config_hash``, ``builds_hash``, ``builds``,
    ``defend_version``.
    """

    id: str
    task: str
    model: str
    defence: str
    attack: str
    adaptive: str = "none"
    eps: float | None = None
    seed: int | None = None
    n: int = 0
    split: str | None = None
    worst_case_of: list[str] | None = None
    params: dict[str, Any] | None = None
    roc: dict[str, list[float]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, list[float | None]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    examples: str | None = None
    status: str = "ok"
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    phases: dict[str, float] | None = None
    config_hash: str | None = None
    builds_hash: str | None = None
    builds: dict[str, str] | None = None
    defend_version: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the cell finished (a failed one carries ``error``)."""
        return self.status == "ok"

    @property
    def attack_name(self) -> str:
        """The column's attack with its adaptive variant, e.g. ``art-pgd+eot``."""
        return self.attack + ("" if self.adaptive == "none" else f"+{self.adaptive}")

    @property
    def column(self) -> str:
        """The column label: ``art-pgd+eot @0.03`` (no ``@`` without an eps)."""
        return self.attack_name if self.eps is None else f"{self.attack_name} @{self.eps:.3g}"

    @property
    def row(self) -> str:
        """The row label: ``model / defence``."""
        return f"{self.model} / {self.defence}"

    def estimate(self, metric: str) -> Estimate | None:
        """``metric`` with its interval and count, None where the record lacks it; NaN
        where no sample could be judged (the file holds null)."""
        if metric in self.metrics and self.metrics[metric] is None:
            return Estimate(math.nan, math.nan, math.nan, self.counts.get(metric, 0))
        value = self.metrics.get(metric)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        low, high = self.intervals.get(metric, (math.nan, math.nan))
        count = self.counts.get(metric, self.n)
        return Estimate(float(value), _float(low), _float(high), int(count))

    def to_json(self) -> dict[str, Any]:
        """The file's dict: every field, :data:`OPTIONAL` ones left out when None and
        :data:`SUMMARY` ones when empty."""
        unset = lambda k, v: (k in OPTIONAL and v is None) or (k in SUMMARY and v == {})  # noqa: E731
        return {k: v for k, v in asdict(self).items() if not unset(k, v)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellRecord:
        """The record of a file's dict (keys this version does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
