"""Differential privacy of what a member shares: clip, add Gaussian noise, account.

The unit protected is **one window of operation**: two baselines are neighbours when
they differ in one window's features, whatever those are (the number of windows, set
by configuration, is public). Everything a member shares about a channel goes through
two Gaussian mechanisms, each a mean over the ``n`` baseline windows of one
contribution per window and feature clipped to ``±clip`` (so a window's contribution
has an L2 norm of at most ``clip * sqrt(d)`` for ``d`` features), and replacing one
window moves the mean by at most ``Δ = 2 * clip * sqrt(d) / n`` (:func:`sensitivity`);
the noise added is ``N(0, (noise_multiplier * Δ)^2)`` per feature:

level
    each window's standardised values ``(t - centre) / unit`` against a **public
    reference** (:class:`Reference`): the class's signed fleet prior, its location and
    its widened scale (within-machine scale and between-machine spread), never this
    machine's own statistics;
scale
    each window's absolute deviation from the level just released, in the same units
    (a normal variable's mean absolute deviation is ``sqrt(2/pi)`` of its standard
    deviation).

:func:`private_summary` is that mechanism; the cumulative (ε, δ) over all releases of
a machine (two mechanisms of ``noise_multiplier`` per channel per release) is tracked
by the :class:`PrivacyAccountant` with Google's ``dp-accounting`` (Rényi DP), and the
guarantee is exact: it holds for any windows whatsoever.

Before its class has a prior, a machine has no public reference, and by default
(``[fleet] share_before_prior = false``) it shares nothing until a prior (commissioned
with ``edge-agent fleet prior`` and adopted by the aggregator, or made from other
members' updates) is applied. With ``share_before_prior = true`` it may share a
**bootstrap** update (:func:`privatise`: the same noise added around its own median and
MAD), so that a fleet can form without commissioning; one window's influence on a
median is bounded in practice (one order statistic's gap) but not in the worst case, so
such an update says ``"exact": false`` and its ε is not a guarantee.

What is *not* protected, said plainly in docs/fleet.md: the machine's class, name
and number of windows; its healthy level as such (the point of sharing); and the
autoencoder's weights, never shared with privacy on (their dependence on one window
is not bounded), so both mechanisms drop them.

>>> acc = PrivacyAccountant(budget_epsilon=4.0, delta=1e-5)
>>> acc.spend(noise_multiplier=4.0, count=2)
>>> round(acc.epsilon(), 3), acc.exhausted
(1.478, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from edge_agent.fleet._deps import need
from edge_agent.models.baseline import log_order, scale_floor
from edge_agent.models.prior import MemberSummary

#: Gaussian mechanisms per channel and release: the level and the scale.
MECHANISMS_PER_RELEASE = 2
#: Defaults of the mechanism (benchmarks/fleet.py measures what they cost): four times one
#: window's influence in noise (ε about 1.5 per release of one channel at δ 1e-5), each
#: value clipped at three reference units (the prior's widened scale; one unit, closer
#: to a median, measured a tighter prior that raised a premature alert on a healthy
#: FEMTO bearing), δ well below 1/windows.
DEFAULT_NOISE_MULTIPLIER = 4.0
DEFAULT_CLIP = 3.0
DEFAULT_DELTA = 1e-5
MEAN_ABS_TO_SIGMA = 1.0 / math.sqrt(2.0 / math.pi)


@dataclass(frozen=True)
class Reference:
    """A public centre and unit per feature to standardise a machine's windows against.

    Public means not computed from this machine's windows: a signed fleet prior is
    (it is computed from releases that were themselves privatised).
    """

    feature_names: tuple[str, ...]
    location: np.ndarray
    unit: np.ndarray
    log: np.ndarray
    #: where it came from, for the update's ``privacy.reference`` ("prior v3")
    source: str

    @classmethod
    def from_prior(cls, prior, names) -> "Reference | None":
        """The reference ``prior`` (one channel's: ``FleetPrior.for_channel``) gives
        features ``names``; ``None`` when it lacks one of them."""
        idx = prior.index(names)
        if len(idx) == 0 or (idx < 0).any():
            return None
        return cls(tuple(names), prior.location[idx], prior.widened_scale()[idx],
                   prior.log[idx], f"prior v{prior.version}")


def sensitivity(n_windows: int, n_features: int, clip: float) -> float:
    """L2 distance one replaced window can move either mechanism's mean by, in
    reference units.

    >>> round(sensitivity(120, 4, 3.0), 4)
    0.1
    """
    return 2.0 * clip * math.sqrt(n_features) / max(int(n_windows), 1)


def _standardised(X, reference: Reference, centre) -> np.ndarray:
    """Each window against ``centre`` in reference units; a value the window lacks (or a
    non-positive one of a log feature) reads as the centre: a function of that window
    alone, so the clipping bounds it like any other. One too far off to represent is
    infinite, and the clipping takes it to the bound like any other far-off value."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        T = np.where(reference.log, np.log10(np.where(X > 0, X, np.nan)), X)
        Z = (T - centre) / reference.unit
    return np.where(np.isnan(Z), 0.0, Z)


def clipped_level(X, reference: Reference, clip: float) -> np.ndarray:
    """The level mechanism before noise: the mean standardised window, each value
    clipped to ``±clip`` (so each window's L2 norm is at most ``clip * sqrt(d)``)."""
    return np.clip(_standardised(X, reference, reference.location), -clip, clip).mean(axis=0)


def clipped_deviation(X, reference: Reference, location, clip: float) -> np.ndarray:
    """The scale mechanism before noise: the mean absolute deviation of the windows from
    ``location`` (the level already released), in reference units, each value clipped
    to ``clip``."""
    return np.minimum(np.abs(_standardised(X, reference, location)), clip).mean(axis=0)


def private_summary(X, reference: Reference, *, class_name: str, machine: str,
                    noise_multiplier: float, clip: float, rng: np.random.Generator,
                    names=None) -> MemberSummary:
    """A channel's summary from its baseline windows ``X`` (rows in
    ``reference.feature_names`` order), by the two Gaussian mechanisms of the module
    docstring; ``names`` (default the reference's) are the features' names in the
    summary (qualified by channel). Spend ``MECHANISMS_PER_RELEASE`` events of
    ``noise_multiplier`` on the accountant for it.

    >>> ref = Reference(("rms_g",), np.array([-1.0]), np.array([0.05]), np.array([True]), "t")
    >>> X = 10 ** np.random.default_rng(0).normal(-0.98, 0.02, (200, 1))
    >>> s = private_summary(X, ref, class_name="c", machine="m", noise_multiplier=1.0,
    ...                     clip=3.0, rng=np.random.default_rng(1))
    >>> round(float(s.location[0]), 2), s.windows, s.ae_weights is None
    (-0.98, 200, True)
    """
    if noise_multiplier <= 0 or clip <= 0:
        raise ValueError("noise_multiplier and clip must be positive")
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    n, d = X.shape
    if d != len(reference.feature_names):
        raise ValueError(f"X has {d} features, the reference {len(reference.feature_names)}")
    sigma = noise_multiplier * sensitivity(n, d, clip)
    level = clipped_level(X, reference, clip) + rng.normal(0.0, sigma, d)
    location = reference.location + level * reference.unit
    mean_abs = clipped_deviation(X, reference, location, clip) + rng.normal(0.0, sigma, d)
    names = tuple(names or reference.feature_names)
    # Post-processing (no privacy cost). The capped means are kept as they are, not read
    # back through a normal model: that would give the heavy healthy tails (transients)
    # back the weight the median and MAD deny them, and benchmarks/fleet.py measured it
    # worse. The baseline's own floors (models.baseline) apply.
    floor = scale_floor(reference.log, log_order(names), location)
    scale = np.maximum(np.maximum(mean_abs, 0.0) * MEAN_ABS_TO_SIGMA * reference.unit, floor)
    return MemberSummary(class_name, machine, names, n, location, scale, reference.log, None)


def privatise(summary: MemberSummary, *, noise_multiplier: float, clip: float,
              rng: np.random.Generator) -> MemberSummary:
    """The bootstrap release (no public reference yet): ``summary`` with the noise
    :func:`private_summary` would add, around the machine's own median and in its own
    scales. Not an exact guarantee (see the module docstring).

    Level: ``+ N(0, (noise_multiplier * Δ)^2)`` scales per feature; scale: multiplied
    by ``exp`` of the same noise (a relative error, so it stays positive). The
    autoencoder weights are removed.

    >>> m = MemberSummary("c", "m", ("rms_g",), 100, [-1.0], [0.02], [True])
    >>> p = privatise(m, noise_multiplier=1.0, clip=3.0, rng=np.random.default_rng(0))
    >>> bool(abs(p.location[0] + 1.0) < 0.01), p.ae_weights is None
    (True, True)
    """
    if noise_multiplier <= 0 or clip <= 0:
        raise ValueError("noise_multiplier and clip must be positive")
    d = len(summary.feature_names)
    sigma = noise_multiplier * sensitivity(summary.windows, d, clip)
    level = summary.location + rng.normal(0.0, sigma, d) * summary.scale
    scale = summary.scale * np.exp(rng.normal(0.0, sigma, d))
    return replace(summary, location=level, scale=scale, ae_weights=None)


def release(detectors: dict, prior, *, class_name: str, machine: str, noise_multiplier: float,
            clip: float, rng: np.random.Generator, bootstrap: bool = False):
    """What a machine shares, privatised: ``(summary, how, mechanisms)``, or ``None``
    (nothing fitted, or no reference for every channel in ``prior`` and not ``bootstrap``,
    as ``[fleet] share_before_prior`` defaults to).

    ``detectors`` maps each channel (``None`` for a machine's only, unnamed one) to its
    :class:`~edge_agent.models.detector.ChannelDetector`; ``prior`` is the verified prior
    the machine uses, or ``None``. Each channel is one release of the two mechanisms:
    exact, against ``prior``'s public reference, when every channel has one; else the
    bootstrap release. ``how`` is ``{"exact", "reference"}`` for the update document;
    spend ``mechanisms`` events of ``noise_multiplier`` on the accountant.
    """
    from edge_agent.models.prior import (baseline_windows, merge_channels, qualified,
                                         summary_from_detector)

    noise = {"noise_multiplier": noise_multiplier, "clip": clip, "rng": rng}
    exact, source = {}, None
    for channel, det in detectors.items():
        rows = baseline_windows(det)
        part = None if prior is None or rows is None else prior.for_channel(channel)
        ref = None if part is None else Reference.from_prior(part, rows[0])
        if ref is None:
            exact = None
            break
        source = ref.source
        exact[channel] = private_summary(rows[1], ref, class_name=class_name, machine=machine,
                                         names=[qualified(channel, n) for n in rows[0]],
                                         **noise)
    if exact:
        return (merge_channels(exact), {"exact": True, "reference": source},
                MECHANISMS_PER_RELEASE * len(exact))
    if not bootstrap:
        return None
    parts = {channel: summary_from_detector(det, class_name=class_name, machine=machine,
                                            channel=channel, with_autoencoder=False)
             for channel, det in detectors.items()}
    parts = {c: privatise(s, **noise) for c, s in parts.items() if s is not None}
    if not parts:
        return None
    return (merge_channels(parts), {"exact": False, "reference": None},
            MECHANISMS_PER_RELEASE * len(parts))


class PrivacyAccountant:
    """Cumulative (ε, δ) of a machine's releases, by Rényi DP (``dp-accounting``).

    Parameters
    ----------
    budget_epsilon : float
        Sharing stops once :meth:`epsilon` would pass it.
    delta : float
        The δ of every ε reported.
    """

    def __init__(self, budget_epsilon: float, delta: float = 1e-5):
        if not budget_epsilon > 0 or not 0 < delta < 1:
            raise ValueError("budget_epsilon must be > 0 and delta in (0, 1)")
        self.budget_epsilon, self.delta = float(budget_epsilon), float(delta)
        #: ``[noise_multiplier, count]`` of every spend, merged by multiplier
        self.spent_: list[list[float]] = []

    @staticmethod
    def _epsilon(spent, delta) -> float:
        if not spent:
            return 0.0
        dp = need("dp_accounting")
        from dp_accounting import rdp

        accountant = rdp.RdpAccountant()
        for multiplier, count in spent:
            accountant.compose(dp.GaussianDpEvent(multiplier), int(count))
        return float(accountant.get_epsilon(delta))

    def epsilon(self, delta: float | None = None) -> float:
        """Cumulative ε at ``delta`` (default: the accountant's) of everything spent."""
        return self._epsilon(self.spent_, self.delta if delta is None else delta)

    def _with(self, noise_multiplier, count):
        spent = [list(s) for s in self.spent_]
        for s in spent:
            if s[0] == noise_multiplier:
                s[1] += count
                break
        else:
            spent.append([float(noise_multiplier), int(count)])
        return spent

    def would_exceed(self, noise_multiplier: float, count: int = MECHANISMS_PER_RELEASE) -> bool:
        """Whether spending ``count`` more events would pass the budget."""
        return self._epsilon(self._with(noise_multiplier, count), self.delta) > self.budget_epsilon

    def spend(self, noise_multiplier: float, count: int = MECHANISMS_PER_RELEASE) -> None:
        """Record ``count`` Gaussian mechanisms of ``noise_multiplier``; refuses to pass
        the budget (``RuntimeError``: check :meth:`would_exceed` first)."""
        if not noise_multiplier > 0 or count < 1:
            raise ValueError("noise_multiplier must be > 0 and count >= 1")
        if self.would_exceed(noise_multiplier, count):
            raise RuntimeError(f"privacy budget epsilon={self.budget_epsilon} would be passed")
        self.spent_ = self._with(noise_multiplier, count)

    @property
    def exhausted(self) -> bool:
        """Whether another release at the last-used noise would pass the budget
        (with nothing spent yet: never)."""
        if not self.spent_:
            return False
        return self.would_exceed(self.spent_[-1][0], MECHANISMS_PER_RELEASE)

    def state(self) -> dict:
        """What a checkpoint keeps (see :meth:`from_state`)."""
        return {"budget_epsilon": self.budget_epsilon, "delta": self.delta,
                "spent": [list(s) for s in self.spent_]}

    @classmethod
    def from_state(cls, state: dict) -> "PrivacyAccountant":
        acc = cls(state["budget_epsilon"], state["delta"])
        acc.spent_ = [[float(m), int(c)] for m, c in state["spent"]]
        return acc
