"""Watching a new machine against its fleet's prior while its own baseline is collected.

A machine of a class with a verified :class:`~edge_agent.models.prior.FleetPrior`
need not run blind for its baseline period: each window is standardised against
the fleet's healthy levels, the scale widened by the between-machine spread
(:meth:`~edge_agent.models.prior.FleetPrior.widened_scale`: a healthy sibling
differs from the fleet's centre by both), on the features siblings can be
compared on (:data:`FLEET_FEATURES`). Only the level scorer votes
here: the trend, the trees and the autoencoder need a calibration on the machine's
own healthy windows, which it does not have yet.

The score is a surprise in the detector's units: ``-log10`` of the Bonferroni-corrected
normal tail probability of the largest deviation, so the threshold
``-log10(risk)`` means the same as the own baseline's null floor. The magnitude
(how far a health indicator's level moved, in amplitude terms) is read off the
median of the last ``trend_span`` windows' deviations, so one shock does not make a
change that matters.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque

import numpy as np

from edge_agent.models.baseline import log_order
from edge_agent.models.prior import FleetPrior
from edge_agent.models.verdict import Contribution, Verdict


#: Features a machine is compared with its fleet on: broadband severity (overall and
#: velocity RMS, the envelope level), impulsiveness (kurtosis, crest factor) and the
#: prominence of defect lines over the envelope floor. Narrow band levels are left to
#: the machine's own baseline: they follow each machine's structural resonances and
#: transfer path, which differ between siblings of one class (ISO 20816 judges machines
#: against each other on broadband velocity for the same reason).
FLEET_FEATURES = ("sustained_rms_g", "rms_g", "velocity_rms_mm_s", "env_mean_g",
                  "sustained_kurtosis", "kurtosis", "sustained_crest_factor", "crest_factor",
                  "env_*_ratio", "env_*_g")


def fleet_features(names, patterns=FLEET_FEATURES) -> np.ndarray:
    """Which of ``names`` are compared with the fleet (a whole-window statistic gives way
    to its sustained form when both are there).

    >>> fleet_features(["rms_g", "sustained_rms_g", "band_10_20hz_rms_g"]).tolist()
    [False, True, False]
    """
    names = list(names)
    present = set(names)
    return np.array([any(fnmatch.fnmatchcase(n, p) for p in patterns)
                     and f"sustained_{n}" not in present for n in names])


def _tail(z: float) -> float:
    """One-sided standard normal tail probability."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


class PriorMonitor:
    """Scores one channel's windows against its fleet prior (see the module docstring).

    Parameters
    ----------
    prior : FleetPrior
        The prior of this channel (:meth:`FleetPrior.for_channel`).
    names, directions : list of str
        The channel's watched features and their directions.
    config : DetectorConfig
        ``risk``, ``threshold_floor``, ``alarm_factor``, ``zscore_top_k``,
        ``trend_span`` and ``prior_change_ratio`` are used: a window is anomalous against
        the fleet only when a health indicator's level is ``prior_change_ratio`` × the
        fleet's (siblings differ more than a machine differs from itself).
    """

    def __init__(self, prior: FleetPrior, names, directions, config, patterns=FLEET_FEATURES):
        idx = prior.index(names)
        self.known_ = (idx >= 0) & fleet_features(names, patterns)
        take = np.where(self.known_, idx, 0)
        self.names = list(names)
        self.location_ = np.where(self.known_, prior.location[take], 0.0)
        self.scale_ = np.where(self.known_, prior.widened_scale()[take], 1.0)
        self.log_ = np.where(self.known_, prior.log[take], False)
        self.up_ = np.array([d == "up" for d in directions]) & self.known_
        self.order_ = log_order(names)
        self.version = prior.version
        self.config = config
        self.n_known_ = int(self.known_.sum())
        self.k = max(1, min(config.zscore_top_k, self.n_known_))
        self.threshold_ = max(config.threshold_floor, -math.log10(config.risk))
        self.alarm_threshold_ = config.alarm_factor * self.threshold_
        self._recent: deque = deque(maxlen=max(1, config.trend_span))
        self.windows_ = 0
        self._reference = self._build_reference()  # what alerts judge against: fixed

    @property
    def usable(self) -> bool:
        """Whether the prior covers any of the channel's features."""
        return bool(self.known_.any())

    def standardize(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(self.log_, np.log10(np.where(x > 0, x, np.nan)), x)
        z = (t - self.location_) / self.scale_
        return np.where(self.known_, np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0), 0.0)

    def reference(self) -> tuple[dict, dict]:
        """The fleet's healthy medians and (log10) spreads of this channel's features, as
        alerts judge evidence against (the own baseline's ``reference`` and ``spread``)."""
        return self._reference

    def _build_reference(self) -> tuple[dict, dict]:
        ref = {n: float(10.0 ** c) if lg else float(c)
               for n, c, lg, k in zip(self.names, self.location_, self.log_, self.known_) if k}
        spread = {n: float(s) for n, s, lg, k in zip(self.names, self.scale_, self.log_,
                                                     self.known_) if k and lg}
        return ref, spread

    def verdict(self, x, regime, progress: float, learned: bool) -> Verdict:
        """The verdict of one window (``progress``: of the own baseline being collected)."""
        z = self.standardize(x)
        self.windows_ += 1
        self._recent.append(z)
        d = np.where(self.up_, np.maximum(z, 0.0), np.where(self.known_, np.abs(z), 0.0))
        top = float(d.max()) if d.size else 0.0
        two_sided = not self.up_[int(np.argmax(d))] if d.size else False
        p = min(1.0, self.n_known_ * (2.0 if two_sided else 1.0) * _tail(top))
        score = max(0.0, -math.log10(max(p, 1e-300)))
        level = np.median(np.vstack(self._recent), axis=0)
        clear = self.up_ & self.log_ & (level >= 2.0)
        ratios = 10.0 ** (level * self.scale_ / self.order_)
        magnitude = float(ratios[clear].max()) if clear.any() else 1.0
        order = np.argsort(-d, kind="stable")[:5]
        contributions = tuple(
            Contribution(self.names[j], float(z[j]), float(x[j]),
                         float(10.0 ** self.location_[j]) if self.log_[j]
                         else float(self.location_[j]))
            for j in order if d[j] > 0 and math.isfinite(float(x[j])))
        return Verdict("monitoring", progress, regime, score, self.threshold_,
                       self.alarm_threshold_, learned, {"prior": score}, contributions,
                       magnitude, self.config.prior_change_ratio, basis="prior")


def attach(prior: FleetPrior, names, directions, config):
    """``(monitor, ae_init)`` of a regime with features ``names`` under ``prior``: the
    monitor (None when the prior covers none of its fleet features) and the fleet's
    autoencoder weights when they fit the regime's network (None otherwise)."""
    monitor = PriorMonitor(prior, names, directions, config)
    weights = (prior.ae_weights or {}).get("")
    shape = (len(names), max(2, len(names) // 3))  # IncrementalAutoencoder's default width
    idx = prior.index(names)
    if weights is None or np.shape(weights[0]) != shape or len(prior.feature_names) != \
            len(names) or (idx < 0).any():
        return (monitor if monitor.usable else None), None
    W1, b1, W2, b2 = weights  # the network's inputs and outputs in this regime's order
    return (monitor if monitor.usable else None), [W1[idx], b1, W2[:, idx], b2[idx]]
