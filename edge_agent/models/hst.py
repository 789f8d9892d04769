"""River Half-Space Trees behind scaling frozen at the baseline.

River's usual pipeline puts a running ``MinMaxScaler`` in front of HST; one
outlier stretches its limits for good (even with ``protect_anomaly_detector``),
squeezing every later window into the middle of the range. Here the inputs are
robust z-scores from the baseline and HST's limits are fixed from the baseline's
spread, so a fault lands in the edge cells, where healthy mass is thin.
"""

from __future__ import annotations

import math

import numpy as np

#: HST memory and first-call time grow as 2**height (height 15: 13 s, 390 MB).
MAX_HEIGHT = 10


class FrozenHalfSpaceTrees:
    """Half-Space Trees with limits frozen from the baseline's standardised windows.

    Parameters
    ----------
    names : list of str
        Feature names (HST takes dicts).
    n_trees : int
        Number of trees.
    height : int, optional
        Tree height; default about ``log2(window_size)``, at most 10, so that
        leaves hold some mass when the baseline is short.
    window_size : int
        Windows per reference period.
    seed : int
        Random seed, for reproducible replays.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> Z = rng.normal(size=(60, 3))
    >>> hst = FrozenHalfSpaceTrees(["a", "b", "c"], window_size=30).fit(Z)
    >>> hst.score_one(np.array([8.0, 8.0, 8.0])) > hst.score_one(np.zeros(3))
    True
    """

    def __init__(self, names, *, n_trees: int = 25, height: int | None = None,
                 window_size: int = 64, seed: int = 42):
        self.names = list(names)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed

    def fit(self, Z: np.ndarray) -> "FrozenHalfSpaceTrees":
        """Freeze the limits from baseline windows ``Z`` and learn them."""
        from river.anomaly import HalfSpaceTrees

        lo = np.min(Z, axis=0) - 1.0
        hi = np.maximum(np.max(Z, axis=0), lo + 1.0) + 3.0
        self.limits_ = {n: (float(a), float(b)) for n, a, b in zip(self.names, lo, hi)}
        height = self.height or int(np.clip(math.floor(math.log2(max(self.window_size, 2))), 3,
                                            MAX_HEIGHT))
        self.model_ = HalfSpaceTrees(n_trees=self.n_trees, height=min(height, MAX_HEIGHT),
                                     window_size=self.window_size, limits=self.limits_,
                                     seed=self.seed)
        # HST scores against its *previous* reference window: cycle the baseline
        # through two whole windows so that the baseline itself is the reference.
        for i in range(2 * self.window_size):
            self.model_.learn_one(self._as_dict(Z[i % len(Z)]))
        return self

    def _as_dict(self, z):
        return dict(zip(self.names, map(float, z)))

    def score_one(self, z: np.ndarray) -> float:
        """Anomaly score in [0, 1]: 1 where healthy windows never were."""
        return float(self.model_.score_one(self._as_dict(z)))

    def learn_one(self, z: np.ndarray) -> None:
        self.model_.learn_one(self._as_dict(z))
