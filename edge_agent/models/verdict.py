"""What a detector says about one window: its verdict, and the features behind it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Contribution:
    """A feature behind a score: its deviation and its value against the baseline."""

    feature: str
    z: float
    value: float
    baseline: float


@dataclass(frozen=True)
class Verdict:
    """One window's verdict: phase, score against the thresholds, and why.

    ``anomalous``: the score reached the threshold and some health indicator's smoothed
    level changed by ``min_change_ratio`` or more (``magnitude``); ``severe``: anomalous at
    the alarm level. Alerts add the evidence (edge_agent.runtime.evidence).
    """

    phase: str  # "stopped" | "baselining" | "monitoring"
    baseline_progress: float
    regime: str | None = None
    score: float | None = None
    threshold: float | None = None
    alarm_threshold: float | None = None
    learned: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    contributions: tuple[Contribution, ...] = ()
    magnitude: float = 1.0  # largest smoothed amplitude-equivalent change of a health indicator
    min_change_ratio: float = 1.0
    #: what the window was judged against when the channel has a fleet prior: "prior"
    #: (the fleet's levels, while its own baseline is collected or not yet confirmed) or
    #: "own" (its own baseline); None without a prior
    basis: str | None = None

    @property
    def anomalous(self) -> bool:
        return (self.score is not None and self.score >= self.threshold
                and self.magnitude >= self.min_change_ratio)

    @property
    def severe(self) -> bool:
        return self.anomalous and self.score >= self.alarm_threshold


def combine(surprises: dict[str, float]) -> float:
    """Largest surprise, Bonferroni-corrected for the number of scorers.

    >>> round(combine({"zscore": 3.0, "trend": 0.5, "hst": 0.2, "autoencoder": 0.1}), 2)
    2.4
    """
    return max(0.0, max(surprises.values()) - math.log10(len(surprises)))
