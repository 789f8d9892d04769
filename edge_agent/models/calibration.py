"""Turning raw scores into a common currency: surprise against the machine's own history.

Each scorer speaks its own unit (baseline scales, HST mass, reconstruction
error). Each raw score is converted to a *surprise*, ``-log10`` of the chance
that a healthy window of this machine scores at least that much: 1 means one in
ten, 3 one in a thousand. Inside the history the chance is read off the ranks;
beyond its upper tail it is extrapolated with an exponential tail fitted to the
excesses over the 80th percentile (peaks over threshold), so a score far beyond
anything seen is very surprising instead of capped at "the largest seen".

The history holds the baseline's out-of-sample scores for good (the anchor) plus
a bounded window of recent scores of windows the machine learned from.
"""

from __future__ import annotations

import numpy as np

#: Share of the history treated as the tail.
TAIL_FRACTION = 0.2
#: Surprises are reported up to this many decades (beyond it: certainty).
MAX_SURPRISE = 30.0
#: The tail is refitted once the history has grown by this share since the last
#: fit: at every score while the history is short (right after commissioning,
#: when each healthy score teaches the most and a lag could freeze learning),
#: every few dozen once it holds a thousand (sorting it every window would cost).
REFIT_GROWTH = 1 / 32


class ScoreHistory:
    """The baseline's scores (kept for good) and a ring buffer of recent ones."""

    def __init__(self, recent_capacity: int):
        self.anchor_ = np.empty(0)
        # zeros, not empty: the whole buffer is resident from the start, so memory
        # does not creep up for hours while it fills
        self.recent_ = np.zeros(recent_capacity)
        self.n_recent_ = 0  # total appended; the ring holds the last ``capacity``
        self._fresh = 0

    def fit(self, scores) -> None:
        self.anchor_ = np.asarray(scores, dtype=np.float64)
        self.n_recent_ = 0
        self._fresh = len(self.anchor_)  # refit at next use

    def append(self, score: float) -> None:
        self.recent_[self.n_recent_ % len(self.recent_)] = score
        self.n_recent_ += 1
        self._fresh += 1

    def values(self) -> np.ndarray:
        return np.concatenate([self.anchor_, self.recent_[:min(self.n_recent_, len(self.recent_))]])

    def __len__(self) -> int:
        return len(self.anchor_) + min(self.n_recent_, len(self.recent_))

    def stale(self) -> bool:
        """True when enough new scores arrived to refit (and resets the count)."""
        if self._fresh >= max(1.0, REFIT_GROWTH * len(self)):
            self._fresh = 0
            return True
        return False


def _quantile_sorted(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (linear) of an already sorted array, without sorting again."""
    position = q * (len(values) - 1)
    below = int(position)
    above = min(below + 1, len(values) - 1)
    return float(values[below] + (values[above] - values[below]) * (position - below))


def tail_model(history: np.ndarray, tail_fraction: float = TAIL_FRACTION, *,
               is_sorted: bool = False):
    """Threshold ``u`` and scale ``beta`` of the exponential upper tail.

    ``beta`` is the median excess over ``u`` divided by ln 2 (for an exponential
    tail the median excess is ``beta ln 2``): unlike the mean excess, a few
    start-up transients in the baseline do not fatten the tail.
    """
    history = history if is_sorted else np.sort(history)
    u = _quantile_sorted(history, 1.0 - tail_fraction)
    excess = history[np.searchsorted(history, u, side="right"):] - u
    spread = u - _quantile_sorted(history, 0.5)
    # A handful of excesses can be nearly equal; never let the tail be steeper
    # than the body of the distribution suggests.
    median_excess = _quantile_sorted(excess, 0.5) if excess.size else 0.0
    beta = max(median_excess / np.log(2), 0.5 * spread, 1e-9)
    return u, beta


class TailCalibrator:
    """Surprise of a raw score against the history of healthy scores.

    >>> import numpy as np
    >>> cal = TailCalibrator()
    >>> cal.fit(np.random.default_rng(0).exponential(1.0, 2000))
    >>> [round(cal.surprise(s), 1) for s in (0.0, 1.0, 2.3, 6.9, 11.5)]   # exact: s / ln 10
    [0.0, 0.4, 1.0, 2.9, 4.8]
    """

    def __init__(self, recent_capacity: int = 1000):
        self.recent_capacity = recent_capacity
        self.history_ = ScoreHistory(recent_capacity)
        self._cache = None

    def fit(self, baseline_scores) -> None:
        """Anchor the history with out-of-sample scores of baseline windows."""
        self.history_.fit(baseline_scores)

    def learn_one(self, score: float) -> None:
        self.history_.append(float(score))

    def _model(self):
        if self._cache is None or self.history_.stale():
            history = np.sort(self.history_.values())
            self._cache = (history, *tail_model(history, is_sorted=True))
        return self._cache

    def surprise(self, score: float) -> float:
        history, u, beta = self._model()
        n = len(history)
        if score > u:
            p = TAIL_FRACTION * np.exp(-(score - u) / beta)
        else:
            p = (n - np.searchsorted(history, score, side="left") + 1) / (n + 1)
        return float(min(max(0.0, -np.log10(max(p, 1e-300))), MAX_SURPRISE))
