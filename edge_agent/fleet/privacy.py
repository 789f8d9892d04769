"""Differential privacy of what a member shares: clip, add Gaussian noise, account.

The unit protected is **one window of operation**. A member's summary is treated
as the mean, over its ``n`` baseline windows, of each window's standardised
contribution clipped to ``clip`` baseline scales (L2 norm over the features) for
the level, and to ``clip`` scales per feature for the absolute deviation behind
the scale. Adding or removing one window then moves either sum by at most
``clip`` scales, so either mean by about ``clip / n`` (replacing one: twice
that), and :func:`privatise` adds Gaussian noise of standard deviation
``noise_multiplier * clip / n`` scales to each, calibrated, as DP-SGD is, to
the add/remove-one-window neighbourhood with the window count public: two Gaussian
mechanisms of noise multiplier ``noise_multiplier`` per release, whose
cumulative (ε, δ) over all releases the :class:`PrivacyAccountant` tracks with
Google's ``dp-accounting`` (Rényi DP).

What is *not* protected, said plainly in docs/fleet.md: the machine's class,
name and number of windows; the baseline's median and MAD (the robust
statistics the agent computes) bound one window's influence in practice (one
order statistic's gap) but not in the worst case, so the (ε, δ) statement is
exact only for the clipped-mean summary of :func:`clipped_summary`; and the
autoencoder's weights, which are never shared once privacy is on (their
dependence on one window is not bounded), so :func:`privatise` drops them.

>>> acc = PrivacyAccountant(budget_epsilon=4.0, delta=1e-5)
>>> acc.spend(noise_multiplier=4.0, count=2)
>>> round(acc.epsilon(), 3), acc.exhausted
(1.478, False)
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from edge_agent.fleet._deps import need
from edge_agent.models.prior import MemberSummary

#: Gaussian mechanisms per release: the level and the scale.
MECHANISMS_PER_RELEASE = 2
#: Defaults of the mechanism (benchmarks/fleet.py measures what they cost): four times one
#: clipped window's influence in noise (ε about 1.5 per release at δ 1e-5), windows
#: clipped at 3 baseline scales, δ well below 1/windows.
DEFAULT_NOISE_MULTIPLIER = 4.0
DEFAULT_CLIP = 3.0
DEFAULT_DELTA = 1e-5


def clipped_summary(summary: MemberSummary, X, *, clip: float) -> MemberSummary:
    """``summary`` with level and scale recomputed from raw windows ``X`` (rows in
    ``summary.feature_names`` order) as clipped means around its own centre:
    the estimator whose per-window sensitivity is exactly ``clip / n`` scales.
    """
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        T = np.where(summary.log, np.log10(np.where(X > 0, X, np.nan)), X)
    Z = np.nan_to_num((T - summary.location) / summary.scale, nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    level = (Z * np.minimum(1.0, clip / np.maximum(norms, 1e-300))).mean(axis=0)
    # mean |z| of a normal variable is sqrt(2/pi): the scale stays a standard deviation
    spread = np.minimum(np.abs(Z), clip).mean(axis=0) / math.sqrt(2.0 / math.pi)
    return MemberSummary(summary.class_name, summary.machine, summary.feature_names, len(X),
                         summary.location + level * summary.scale,
                         summary.scale * np.maximum(spread, 0.1), summary.log,
                         summary.ae_weights)


def privatise(summary: MemberSummary, *, noise_multiplier: float, clip: float,
              rng: np.random.Generator) -> MemberSummary:
    """``summary`` with Gaussian noise calibrated to one window's clipped contribution.

    Level: ``+ N(0, (noise_multiplier * clip / n)^2)`` scales per feature; scale:
    multiplied by ``exp`` of the same noise (a relative error, so it stays
    positive). The autoencoder weights are removed. Spend
    ``MECHANISMS_PER_RELEASE`` events of ``noise_multiplier`` on the accountant
    for each release.

    >>> m = MemberSummary("c", "m", ("rms_g",), 100, [-1.0], [0.02], [True])
    >>> p = privatise(m, noise_multiplier=1.0, clip=3.0, rng=np.random.default_rng(0))
    >>> bool(abs(p.location[0] + 1.0) < 0.01), p.ae_weights is None
    (True, True)
    """
    if noise_multiplier <= 0 or clip <= 0:
        raise ValueError("noise_multiplier and clip must be positive")
    sigma = noise_multiplier * clip / max(int(summary.windows), 1)
    d = len(summary.feature_names)
    level = summary.location + rng.normal(0.0, sigma, d) * summary.scale
    scale = summary.scale * np.exp(rng.normal(0.0, sigma, d))
    return replace(summary, location=level, scale=scale, ae_weights=None)


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
