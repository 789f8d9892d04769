"""A machine's healthy baseline: robust statistics of its features.

During the baseline phase feature vectors are collected; then each feature gets
a transform (log10 when it is always positive, so that "twice the level" is the
same step at any level), a robust centre (median) and scale (MAD, floored at a
repeatability limit). Later windows are standardised against it.

The baseline keeps adapting to windows it is allowed to learn from. A health
indicator that falls (run-in, a quieter machine) is followed quickly and without
limit, since a falling level is never damage; a rise is followed slowly and only
within a drift budget around the commissioning value: benign drift (season,
load) is followed, while a fault creeping up below the threshold can never drag
the reference along with it.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> b = Baseline(["rms_g", "skewness"], directions=["up", "both"])
>>> for _ in range(30):
...     b.collect(np.array([rng.normal(0.1, 0.005), rng.normal(0.0, 0.1)]))
>>> b.fit().fitted_
True
>>> z = b.standardize(np.array([0.2, 0.0]))        # twice the healthy level
>>> bool(z[0] > 10), bool(abs(z[1]) < 1)
(True, True)
"""

from __future__ import annotations

import numpy as np

#: Smallest scale of a log10 feature: about ±5 % in amplitude, the repeatability
#: of a vibration measurement. Tighter baselines (a quiet test bench) would
#: otherwise turn harmless few-percent changes into large deviations. Power-like
#: features (g², g²/Hz, energies) move twice as far in log for the same change.
LOG_SCALE_FLOOR = float(np.log10(1.05))
MAD_TO_SIGMA = 1.4826


def is_power(name: str) -> bool:
    """Whether a feature is a power (amplitude squared) rather than an amplitude.

    >>> [is_power(n) for n in ("rms_g", "psd_mean_g2_hz", "env_bpfo_energy", "kurtosis")]
    [False, True, True, False]
    """
    return "_g2" in name or "energy" in name


def log_order(names) -> np.ndarray:
    """log10 units per log10 of amplitude of each feature: 2 for a power (see
    :func:`is_power`), 1 otherwise.

    >>> log_order(["rms_g", "psd_mean_g2_hz"]).tolist()
    [1.0, 2.0]
    """
    return np.array([2.0 if is_power(n) else 1.0 for n in names])


def scale_floor(log, order, centre) -> np.ndarray:
    """Smallest scale of each feature: the repeatability limit for a log10 feature
    (:data:`LOG_SCALE_FLOOR` per amplitude order), 1 % of the centre otherwise."""
    return np.where(log, LOG_SCALE_FLOOR * order, np.maximum(0.01 * np.abs(centre), 1e-9))


class Baseline:
    """Robust per-feature statistics with protected adaptation.

    Parameters
    ----------
    names : list of str
        Feature names, in vector order.
    directions : list of {"up", "both"}
        ``"up"`` for health indicators (level, impulsiveness, defect lines): only
        a rise is evidence of damage, a fall is floored at the low end of normal.
    adapt_rate : float
        Weight of one learned window in the moving centre (exponential
        forgetting with a time constant of ``1 / adapt_rate`` windows).
    adapt_down_rate : float
        The same for a health indicator ("up") below its centre.
    drift_budget : float
        How far, in baseline scales, the centre may move from its
        commissioning value.
    """

    def __init__(self, names, directions=None, *, adapt_rate: float = 0.002,
                 adapt_down_rate: float = 0.02, drift_budget: float = 2.0):
        self.names = list(names)
        self.directions = list(directions or ["both"] * len(self.names))
        #: log10 units per log10 of amplitude: 2 for power-like features.
        self.order_ = log_order(self.names)
        self.adapt_rate = adapt_rate
        self.adapt_down_rate = adapt_down_rate
        self.drift_budget = drift_budget
        self.up_ = np.array([d == "up" for d in self.directions])
        self._rows: list[np.ndarray] = []
        self.fitted_ = False

    # -- baseline phase ---------------------------------------------------------
    @property
    def n_collected(self) -> int:
        return len(self._rows)

    def collect(self, x: np.ndarray) -> None:
        """Add one healthy window's raw feature vector."""
        self._rows.append(np.asarray(x, dtype=np.float64))

    def fit(self) -> "Baseline":
        """Freeze the commissioning statistics from the collected windows."""
        X = np.vstack(self._rows)
        finite = np.isfinite(X)
        # A feature never measured (a defect line the window cannot resolve) has
        # no statistics: it reads 0 (the centre) from now on.
        X = np.where(finite.any(axis=0), X, 0.0)
        finite = np.isfinite(X)
        self.log_ = np.array([bool(np.all(X[finite[:, j], j] > 0)) and finite[:, j].any()
                              for j in range(X.shape[1])])
        T = self._transform(X)
        self.center0_ = np.nanmedian(T, axis=0)
        mad = np.nanmedian(np.abs(T - self.center0_), axis=0) * MAD_TO_SIGMA
        floor = scale_floor(self.log_, self.order_, self.center0_)
        self.scale_ = np.maximum(np.nan_to_num(mad, nan=0.0), floor)
        self.center0_ = np.nan_to_num(self.center0_, nan=0.0)
        self.commissioned_ = self.center0_.copy()
        self.center_ = self.center0_.copy()
        raw_z = (T - self.center0_) / self.scale_
        # Values below the 5th percentile of healthy count as that percentile for
        # "up" features: a quieter machine is not a damaged one.
        self.floor_z_ = np.where(np.array(self.directions) == "up",
                                 np.nanpercentile(raw_z, 5, axis=0), -np.inf)
        self.medians_ = np.nanmedian(X, axis=0)
        self.n_windows_ = X.shape[0]
        self.training_ = X
        self._rows = []
        self.fitted_ = True
        return self

    # -- monitoring -------------------------------------------------------------
    def _transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.log_, np.log10(np.where(X > 0, X, np.nan)), X)

    def standardize(self, X) -> np.ndarray:
        """Robust z of raw feature vector(s); missing values read as the centre."""
        z = (self._transform(X) - self.center_) / self.scale_
        z = np.maximum(z, self.floor_z_)
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)

    def learn_one(self, x) -> None:
        """Move the centre towards a window judged healthy (see the module docstring)."""
        t = self._transform(x)
        ok = np.isfinite(t)
        delta = np.where(ok, t, self.center_) - self.center_
        falling = self.up_ & (delta < 0)
        centre = self.center_ + np.where(falling, self.adapt_down_rate, self.adapt_rate) * delta
        budget = self.drift_budget * self.scale_
        low = np.where(self.up_, -np.inf, self.center0_ - budget)
        self.center_ = np.clip(centre, low, self.center0_ + budget)

    def reanchor(self, X, max_change: float) -> np.ndarray:
        """Re-centre on windows taken after a restart, within ``max_change`` of commissioning.

        ``max_change`` is a relative amplitude change (0.25: ±25 %) for log
        features and a number of scales for the others. It bounds the total
        movement from the commissioning centre over all restarts, so repeated
        restarts cannot walk the baseline up a developing fault. Returns the
        applied shift in scales.
        """
        T = self._transform(np.atleast_2d(X))
        measured = np.isfinite(T).any(axis=0)
        target = np.where(measured, np.nanmedian(np.where(measured, T, 0.0), axis=0), self.center0_)
        # A shift within one scale is indistinguishable from the settling
        # windows' own noise: keep the centre there.
        target = np.where(np.abs(target - self.center0_) < self.scale_, self.center0_, target)
        room = np.where(self.log_, np.log10(1.0 + max_change) * self.order_,
                        max_change * self.scale_)
        new = np.clip(target, self.commissioned_ - room, self.commissioned_ + room)
        shift = (new - self.center0_) / self.scale_
        self.center0_ = new
        self.center_ = new.copy()
        return shift

    def amplitude_ratio(self, z: np.ndarray) -> np.ndarray:
        """Amplitude-equivalent ratio to the centre of standardised values ``z``
        (1 for features that are not on a log scale)."""
        return np.where(self.log_, 10.0 ** (z * self.scale_ / self.order_), 1.0)

    def drift(self) -> np.ndarray:
        """How far each centre has moved since commissioning, in baseline scales."""
        return (self.center_ - self.center0_) / self.scale_

    def typical(self, j: int) -> float:
        """The current healthy value of feature ``j`` in its own unit."""
        c = self.center_[j]
        return float(10.0 ** c) if self.log_[j] else float(c)
