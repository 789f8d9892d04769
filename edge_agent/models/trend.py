"""Trend: the slow, persistent rise that single windows only whisper.

A bearing that starts to fail rarely jumps: kurtosis creeps from 3 to 4, velocity
from 1.3 to 1.8 mm/s, window after window. Each window on its own is only mildly
unusual, so a per-window test at a low false-alarm rate misses it until late. An
exponentially weighted moving average of the standardised features (the EWMA
control chart of statistical process control) keeps the persistent shift and
averages the window-to-window noise away: with a span of 12 windows its noise
is about a third of a single window's, while a persistent shift keeps its size.

Unlike the other scorers it is fed every monitored window, healthy or not: the
trend of a developing fault is exactly what it is for.

It also keeps the *smoothed level* that decides whether a change matters in
practice (``Verdict.magnitude``): the same average, but one window may move it
by at most one baseline scale. A real change, which persists, gets there within
a few windows; a single shock (one window of repeated 20 g impacts) cannot make
a lasting change of it, which a plain average it would for the span's length.
"""

from __future__ import annotations

import numpy as np

from edge_agent.models.zscore import RobustZScorer


class TrendScorer:
    """Top-``k`` mean deviation of the EWMA of standardised features.

    >>> import numpy as np
    >>> trend = TrendScorer(["a", "b"], ["up", "up"], span=9, k=1)
    >>> [round(trend.update_and_score(np.array([2.0, 0.0])), 2) for _ in range(3)]
    [0.4, 0.72, 0.98]
    >>> _ = trend.update_and_score(np.array([100.0, 0.0]))     # a shock
    >>> round(float(trend.ewma_[0]), 1), round(float(trend.level_[0]), 1)
    (20.8, 2.0)
    """

    def __init__(self, names, directions, *, span: int = 12, k: int = 3):
        self.alpha = 2.0 / (span + 1.0)
        self.span = span
        self._z = RobustZScorer(names, directions, k=k)
        self.ewma_ = np.zeros(len(names))
        #: Smoothed level, moved by at most one scale per window (see the module docstring).
        self.level_ = np.zeros(len(names))

    def update_and_score(self, z: np.ndarray) -> float:
        self.ewma_ += self.alpha * (z - self.ewma_)
        self.level_ += np.clip(self.alpha * (z - self.level_), -1.0, 1.0)
        return self._z.score_one(self.ewma_)

    def reset(self) -> None:
        """Forget the trend (after a restart re-centred the baseline)."""
        self.ewma_[:] = 0.0
        self.level_[:] = 0.0

    def contributions(self, top: int = 5):
        return self._z.contributions(self.ewma_, top)
