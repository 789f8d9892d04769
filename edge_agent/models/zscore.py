"""Per-feature robust z-scores: the score operators can read, and the explanations."""

from __future__ import annotations

import numpy as np


class RobustZScorer:
    """Mean of the ``k`` largest deviations from the baseline, in baseline scales.

    Works on standardised vectors from :class:`~edge_agent.models.baseline.Baseline`.
    For ``"up"`` features only rises count. Averaging the top ``k`` rather than
    taking the maximum keeps one noisy feature among twenty from alarming alone,
    while a real fault, which moves several features, scores high.

    >>> import numpy as np
    >>> scorer = RobustZScorer(["a", "b", "c", "d"], ["up", "up", "both", "both"], k=2)
    >>> float(scorer.score_one(np.array([8.0, -9.0, -4.0, 1.0])))
    6.0
    >>> [(name, z) for name, z in scorer.contributions(np.array([8.0, -9.0, -4.0, 1.0]), 2)]
    [('a', 8.0), ('c', -4.0)]
    """

    def __init__(self, names, directions, k: int = 3):
        self.names = list(names)
        self.up_ = np.array([d == "up" for d in directions])
        self.k = min(k, len(self.names))

    def deviations(self, z: np.ndarray) -> np.ndarray:
        """Evidence per feature: the rise for "up" features, the size of any change otherwise."""
        return np.where(self.up_, np.maximum(z, 0.0), np.abs(z))

    def score_one(self, z: np.ndarray) -> float:
        d = self.deviations(z)
        return float(np.mean(np.partition(d, -self.k)[-self.k:]))

    def learn_one(self, z: np.ndarray) -> None:
        """Nothing to learn: the baseline it reads from adapts (see Baseline.learn_one)."""

    def contributions(self, z: np.ndarray, top: int = 5) -> list[tuple[str, float]]:
        """The ``top`` features that deviate most, with their signed z."""
        d = self.deviations(z)
        order = np.argsort(-d, kind="stable")[:top]
        return [(self.names[j], float(z[j])) for j in order if d[j] > 0]
