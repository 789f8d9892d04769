"""An anomaly threshold that follows benign drift but cannot be talked up by a fault.

The threshold is the score that healthy windows exceed with probability
``risk``, estimated by peaks over threshold (an exponential tail fitted to the
upper part of the score history). The history is the baseline's scores (kept
for good) plus recent scores of windows the machine learned from; windows
judged anomalous are never added. Two guards protect it from a fault that
creeps up just below it:

- it never falls below ``floor`` (a decade of surprise is never an alarm);
- it never rises above ``max_growth`` times its commissioning value.
"""

from __future__ import annotations

import numpy as np

from edge_agent.models.calibration import TAIL_FRACTION, ScoreHistory, tail_model


class AdaptiveThreshold:
    """Peaks-over-threshold quantile of the healthy score history, bounded.

    Parameters
    ----------
    risk : float
        Per-window probability that a healthy window exceeds the threshold.
    floor : float
        Lowest threshold, in the score's units.
    max_growth : float
        Highest threshold as a multiple of the commissioning threshold.
    alarm_factor : float
        The alarm threshold is this multiple of the warning threshold.
    recent_capacity : int
        How many recent learned scores the history keeps.

    >>> import numpy as np
    >>> t = AdaptiveThreshold(risk=1e-3, floor=1.0)
    >>> t.fit(np.random.default_rng(0).exponential(1.0, 2000))
    >>> round(t.threshold_, 1)   # exponential(1): the 1e-3 quantile is ln(1000) = 6.9
    7.1
    """

    def __init__(self, *, risk: float = 1e-3, floor: float = 2.0, max_growth: float = 1.5,
                 alarm_factor: float = 2.0, recent_capacity: int = 2000):
        self.risk = risk
        self.floor = floor
        self.max_growth = max_growth
        self.alarm_factor = alarm_factor
        self.recent_capacity = recent_capacity
        self.history_ = ScoreHistory(recent_capacity)

    def _estimate(self, history: np.ndarray) -> float:
        u, beta = tail_model(history)
        return u + beta * np.log(TAIL_FRACTION / self.risk)

    def fit(self, baseline_scores) -> None:
        self.history_.fit(baseline_scores)
        self.history_.stale()
        self.commissioned_ = max(self.floor, float(self._estimate(self.history_.anchor_)))
        self.threshold_ = self.commissioned_

    def learn_one(self, score: float) -> None:
        self.history_.append(float(score))
        if self.history_.stale():
            self.threshold_ = float(np.clip(self._estimate(self.history_.values()), self.floor,
                                            self.max_growth * self.commissioned_))

    @property
    def alarm_threshold_(self) -> float:
        return self.alarm_factor * self.threshold_
