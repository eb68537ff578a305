"""Result rows and the small statistics the benchmarks need.

A Row is one measured quantity of the agent beside its floor, measured in the same
run. ``ratio`` is agent / floor; ``limit`` and ``offset`` state the target as
``agent <= limit * floor + offset`` (or ``>=`` with ``higher_is_better``), and rows
without a floor compare ``agent`` against ``limit`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile (``fraction`` in (0, 1]) of ``values``."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


@dataclass(frozen=True)
class Row:
    """One measured quantity; ``floor`` None means the row has no same-run floor."""

    section: str
    name: str
    unit: str
    agent: float
    floor: float | None = None
    limit: float | None = None
    offset: float = 0.0
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor == 0:
            return None
        return self.agent / self.floor

    @property
    def bound(self) -> float | None:
        """The value the target allows, in ``unit``, or None without a target."""
        if self.limit is None:
            return None
        if self.floor is None:
            return self.limit
        return self.limit * self.floor + self.offset

    @property
    def passed(self) -> bool | None:
        bound = self.bound
        if bound is None:
            return None
        return self.agent >= bound if self.higher_is_better else self.agent <= bound

    @property
    def target(self) -> str:
        if self.limit is None:
            return ""
        sign = ">=" if self.higher_is_better else "<="
        if self.floor is None:
            return f"{sign} {self.limit:g} {self.unit}"
        extra = f" + {self.offset:g} {self.unit}" if self.offset else ""
        return f"{sign} {self.limit:g} x floor{extra}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, passed=self.passed, target=self.target)
        return data
