"""The two detectors a user might pick instead of edge-agent, for side-by-side evaluation.

- ``RmsSixSigma``: alarm when the RMS is above the baseline mean + 6 σ for 3
  consecutive windows (per channel).
- ``VanillaRiver``: River's textbook pipeline, ``MinMaxScaler | HalfSpaceTrees``
  inside a ``QuantileFilter`` (q = 0.99), on the same features edge-agent watches;
  an alarm after 3 consecutive windows classified anomalous. Its HST reference
  window is the baseline length, so it has a reference when monitoring starts.

Both learn from the same baseline windows edge-agent does and see the same
feature records.
"""

from __future__ import annotations

import numpy as np

PERSISTENCE = 3


class RmsSixSigma:
    def __init__(self, baseline_windows: int, feature: str = "rms_g"):
        self.baseline_windows = baseline_windows
        self.feature = feature
        self.values: list[float] = []
        self.run = 0

    def update(self, features: dict) -> bool:
        """True when this window completes an alarm (3 consecutive exceedances)."""
        value = features.get(self.feature)
        if value is None or not np.isfinite(value):
            return False
        if len(self.values) < self.baseline_windows:
            self.values.append(value)
            if len(self.values) == self.baseline_windows:
                self.limit = np.mean(self.values) + 6 * np.std(self.values, ddof=1)
            return False
        self.run = self.run + 1 if value > self.limit else 0
        return self.run >= PERSISTENCE


class VanillaRiver:
    def __init__(self, baseline_windows: int, names: list[str], q: float = 0.99, seed: int = 42):
        from river import anomaly, compose, preprocessing

        self.model = anomaly.QuantileFilter(
            compose.Pipeline(preprocessing.MinMaxScaler(),
                             anomaly.HalfSpaceTrees(window_size=max(baseline_windows, 10),
                                                    seed=seed)), q=q)
        self.baseline_windows = baseline_windows
        self.names = names
        self.seen = 0
        self.run = 0

    def update(self, features: dict) -> bool:
        x = {n: float(features[n]) for n in self.names
             if isinstance(features.get(n), float) and np.isfinite(features[n])}
        self.seen += 1
        if self.seen <= self.baseline_windows:
            self.model.learn_one(x)
            return False
        anomalous = self.model.classify(self.model.score_one(x))
        self.model.learn_one(x)
        self.run = self.run + 1 if anomalous else 0
        return self.run >= PERSISTENCE
