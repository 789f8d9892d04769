"""One channel's detector: stopped check, regimes, baseline, scorers, threshold.

For each window (a dict of features) it decides:

1. *stopped*: the overall level is below a floor (or the shaft below a minimum
   speed): not scored, not learned;
2. the operating regime (by shaft speed) and, while that regime's baseline is
   being collected, *baselining* with its progress;
3. otherwise four scores (robust z, its trend, Half-Space Trees, autoencoder), each turned
   into a surprise against its own history and combined, and the result compared
   with the adaptive threshold. The scorers look for different kinds of change
   (sudden, slow and persistent, a changed pattern between features), so they
   are combined as a union of tests, not averaged: the largest surprise less
   ``log10`` of their number (Bonferroni), which keeps "2" meaning "one healthy
   window in a hundred scores this high";
   A window counts as anomalous only if its change also matters in practice:
   some health indicator's smoothed level moved by ``min_change_ratio`` or more
   (amplitude terms), so a statistically clear but harmless few-percent drift on
   a very steady machine is not an alert;
4. whether to learn: only when the combined score is well below the threshold
   (``learn_fraction`` of it) *and* the caller allows it (the machine is not in
   warning or alarm). A window judged anomalous, or merely suspicious, is never
   learned from, so a developing fault cannot become the new normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_agent.models.autoencoder import IncrementalAutoencoder
from edge_agent.models.baseline import Baseline
from edge_agent.models.calibration import TailCalibrator
from edge_agent.models.collection import BaselineCollection
from edge_agent.models.hst import FrozenHalfSpaceTrees
from edge_agent.models.prior_monitor import PriorMonitor, attach
from edge_agent.models.regime import SpeedRegimes
from edge_agent.models.selection import select_features
from edge_agent.models.threshold import AdaptiveThreshold
from edge_agent.models.trend import TrendScorer
from edge_agent.models.verdict import Contribution, Verdict, combine
from edge_agent.models.zscore import RobustZScorer

__all__ = ["ChannelDetector", "Contribution", "DetectorConfig", "RegimeModel", "Verdict",
           "combine"]

SCORERS = ("zscore", "trend", "hst", "autoencoder")


@dataclass(frozen=True)
class DetectorConfig:
    """Learning parameters of a channel (documented in docs/configuration.md)."""

    baseline_windows: int = 120
    baseline_running_s: float | None = 86400.0
    sparse_span_s: float = 3600.0
    baseline_s: float | None = None
    min_baseline_windows: int = 20
    stopped_rms_g: float = 0.005
    stopped_fraction: float = 0.1
    stopped_rpm: float = 30.0
    regime_tolerance: float = 0.07
    max_regimes: int = 8
    features: tuple[str, ...] | None = None
    zscore_top_k: int = 3
    trend_span: int = 12
    learn_fraction: float = 0.5
    min_change_ratio: float = 1.15
    prior_change_ratio: float = 2.0
    restart_gap_s: float = 6 * 3600.0
    settle_windows: int = 12
    restart_budget: float = 0.25
    trend_min_windows: int = 48
    hst_trees: int = 10
    hst_min_windows: int = 64
    ae_batch: int = 32
    ae_replay: int = 256
    ae_baseline_epochs: int = 100
    risk: float = 1e-3
    threshold_floor: float = 2.0
    threshold_max_growth: float = 1.5
    alarm_factor: float = 2.0
    adapt_rate: float = 0.002
    adapt_down_rate: float = 0.02
    drift_budget: float = 2.0
    onnx_threads: int = 1
    seed: int = 42


def _level(features: dict) -> float | None:
    for name in ("sustained_rms_g", "rms_g"):
        value = features.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


class RegimeModel:
    """Baseline and learners of one operating regime of one channel."""

    # Class-level defaults: a checkpoint written before fleet priors existed unpickles
    # without these attributes and reads them from here (no prior, accepted baseline).
    prior_monitor: PriorMonitor | None = None
    accepted: bool | None = True
    ae_init: list | None = None
    fleet_differences: list | None = None  # why a held baseline differs from its fleet

    def __init__(self, names, directions, config: DetectorConfig):
        self.names, self.directions, self.config = names, directions, config
        c = config
        self.collection: BaselineCollection | None = BaselineCollection(
            baseline_windows=c.baseline_windows, baseline_s=c.baseline_s,
            baseline_running_s=c.baseline_running_s, sparse_span_s=c.sparse_span_s,
            min_windows=c.min_baseline_windows)
        self.fitted = False
        self.updates = 0
        self.restarts = 0
        self.settling: list[np.ndarray] | None = None
        #: What the baseline covered (see BaselineCollection.coverage), once fitted.
        self.coverage: dict | None = None
        #: Median of every numeric feature over the baseline, and the robust spread
        #: (log10) of the positive ones: what alerts judge evidence against.
        self.reference: dict[str, float] = {}
        self.reference_spread: dict[str, float] = {}
        #: With a fleet prior: what watches the regime until its own baseline is accepted
        #: (``accepted`` None: fitted, not yet compared with the prior; False: it differs
        #: from its fleet and waits for an operator).
        self.prior_monitor: PriorMonitor | None = None
        self.accepted: bool | None = True
        self.ae_init: list | None = None  # the fleet's autoencoder weights to start from

    # -- baseline phase ---------------------------------------------------------
    def progress(self) -> float:
        """Share of the baseline period collected (see models.collection)."""
        return 1.0 if self.fitted else self.collection.progress()

    def collect(self, x, features, t_s, restarted: bool) -> None:
        self.collection.add(x, features, t_s, restarted)

    def baseline_coverage(self) -> dict:
        """What the baseline covered (being collected: so far), whether it is complete, and
        its progress."""
        coverage = self.coverage if self.fitted else self.collection.coverage()
        return {**coverage, "complete": self.fitted, "progress": round(self.progress(), 3)}

    def fit(self) -> None:
        """Fit everything on the baseline; calibrate on out-of-sample scores.

        Calibration scores come from two-fold cross-fitting on interleaved
        windows (even windows scored by learners fitted on odd ones and the
        reverse): a learner's scores on its own training windows are optimistic
        and would set the threshold too low. Interleaving, rather than halves,
        keeps a run-in drift within the baseline period out of the calibration,
        which is about new windows from the same healthy state.

        The trend, though, runs over the cross-fitted windows in time order, as it
        does when monitoring: run over every other window it would average twice
        the time, understate how far a slowly wandering healthy feature takes it,
        and make its calibration overconfident.
        """
        X = np.vstack(self.collection.rows)
        raw = {name: np.empty(len(X)) for name in SCORERS}
        Z_all = np.empty_like(X)
        for train, test in ((slice(1, None, 2), slice(0, None, 2)),
                            (slice(0, None, 2), slice(1, None, 2))):
            learners = self._fit_learners(X[train])
            Z_all[test] = learners[0].standardize(X[test])
            for name, values in self._raw_scores(learners, Z_all[test]).items():
                raw[name][test] = values
        trend = TrendScorer(self.names, self.directions, span=self.config.trend_span,
                            k=self.config.zscore_top_k)
        raw["trend"] = np.array([trend.update_and_score(z) for z in Z_all])
        # The trend starts cold at zero: its warm-up would understate healthy
        # trend scores and make the calibration overconfident.
        raw["trend"][:min(self.config.trend_span, len(X) // 6)] = np.nan
        self.learners = self._fit_learners(X)
        self.calibrators = {name: TailCalibrator() for name in SCORERS}
        for name in SCORERS:
            self.calibrators[name].fit(raw[name][np.isfinite(raw[name])])
        # Half-Space Trees estimate healthy mass per cell: from a short baseline the
        # cells are too sparse to trust. The trend's calibration needs several of its
        # spans of healthy wander (its values a few windows apart are nearly the same):
        # a short baseline holds one or two. Both are learned and reported either way,
        # but vote only when the baseline was long enough (the threshold is
        # calibrated on the same voters that decide later).
        c = self.config
        self.voting = [n for n in SCORERS if (n != "hst" or len(X) >= c.hst_min_windows)
                       and (n != "trend" or len(X) >= c.trend_min_windows)]
        combined = [combine({n: self.calibrators[n].surprise(raw[n][i]) for n in self.voting
                             if np.isfinite(raw[n][i])}) for i in range(len(X))]
        # However the scorers depend on each other, a combined score below
        # -log10(risk) - log10(voters) is exceeded by healthy windows more often than
        # ``risk``: the threshold never goes below it, whatever 120 windows suggest.
        null_floor = -math.log10(c.risk) - math.log10(len(self.voting))
        self.threshold = AdaptiveThreshold(risk=c.risk, floor=max(c.threshold_floor, null_floor),
                                           max_growth=c.threshold_max_growth,
                                           alarm_factor=c.alarm_factor)
        self.threshold.fit(combined)
        self.baseline = self.learners[0]
        self.reference, self.reference_spread = self.collection.reference()
        self.coverage = self.collection.coverage()
        restart_at = self.collection.restart_at
        self.collection = None  # what it kept lives on in the learners
        self.fitted = True
        if self.prior_monitor is not None:
            self.accepted = None  # compared with the fleet before it counts as normal
        if restart_at:  # a restart during the baseline: settle on what followed it
            self.settling = []
            for x in X[restart_at:]:
                if self.settling is not None:
                    self.settle(x)

    def _fit_learners(self, X):
        c = self.config
        baseline = Baseline(self.names, self.directions, adapt_rate=c.adapt_rate,
                            adapt_down_rate=c.adapt_down_rate, drift_budget=c.drift_budget)
        for x in X:
            baseline.collect(x)
        baseline.fit()
        Z = baseline.standardize(X)
        zscore = RobustZScorer(self.names, self.directions, k=c.zscore_top_k)
        trend = TrendScorer(self.names, self.directions, span=c.trend_span, k=c.zscore_top_k)
        hst = FrozenHalfSpaceTrees(self.names, n_trees=c.hst_trees, seed=c.seed,
                                   window_size=int(np.clip(len(X), 16, 256))).fit(Z)
        ae = IncrementalAutoencoder(len(self.names), batch_size=c.ae_batch,
                                    replay_capacity=c.ae_replay,
                                    baseline_epochs=c.ae_baseline_epochs,
                                    threads=c.onnx_threads, seed=c.seed).fit(Z, self.ae_init)
        return baseline, zscore, trend, hst, ae

    @staticmethod
    def _raw_scores(learners, Z) -> dict:
        """Raw scores of windows ``Z`` by every scorer but the trend (see :meth:`fit`)."""
        _, zscore, _, hst, ae = learners
        return {"zscore": [zscore.score_one(z) for z in Z], "hst": [hst.score_one(z) for z in Z],
                "autoencoder": ae.score(Z)}

    # -- monitoring -------------------------------------------------------------
    def score(self, x):
        baseline, zscore, trend, hst, ae = self.learners
        z = baseline.standardize(x)
        raw = dict(zip(SCORERS, (zscore.score_one(z), trend.update_and_score(z),
                                 hst.score_one(z), ae.score_one(z))))
        surprise = {n: self.calibrators[n].surprise(raw[n]) for n in SCORERS}
        surprise = {n: v for n, v in surprise.items() if n in self.voting}
        return z, raw, surprise, combine(surprise)

    def magnitude(self) -> float:
        """Largest amplitude-equivalent change among health indicators whose smoothed
        level (TrendScorer.level_) is clearly off (at least two baseline scales)."""
        baseline, trend = self.learners[0], self.learners[2]
        clear = (np.array(self.directions) == "up") & (trend.level_ >= 2.0)
        ratios = baseline.amplitude_ratio(trend.level_)[clear]
        return float(ratios.max()) if ratios.size else 1.0

    def settle(self, x) -> float:
        """Collect a window after a restart; re-centre when enough. Returns progress."""
        self.settling.append(x)
        progress = len(self.settling) / self.config.settle_windows
        if progress >= 1.0:
            self.learners[0].reanchor(np.vstack(self.settling), self.config.restart_budget)
            self.learners[2].reset()
            self.settling = None
            self.restarts += 1
        return min(progress, 1.0)

    def learn(self, x, z, raw, combined, train: bool = True) -> None:
        """Learn a healthy window; ``train`` false defers the autoencoder's update."""
        baseline, _, _, hst, ae = self.learners
        baseline.learn_one(x)
        hst.learn_one(z)
        ae.learn_one(z, train)
        for name in SCORERS:
            self.calibrators[name].learn_one(raw[name])
        self.threshold.learn_one(combined)
        self.updates += 1

    def contributions(self, x, z, top=5):
        baseline, zscore = self.learners[0], self.learners[1]
        index = {n: j for j, n in enumerate(self.names)}
        return tuple(Contribution(name, zj, float(x[index[name]]), baseline.typical(index[name]))
                     for name, zj in zscore.contributions(z, top))


class ChannelDetector:
    """Everything learned about one channel of one machine.

    >>> det = ChannelDetector(DetectorConfig(baseline_windows=3, min_baseline_windows=2))
    >>> det.process({"rms_g": 0.001}, rpm=None, t_s=0.0).phase
    'stopped'
    >>> det.process({"rms_g": 0.1, "kurtosis": 3.0}, rpm=None, t_s=1.0).baseline_progress
    0.3333333333333333
    """

    prior = None  # class default, for checkpoints older than fleet priors (as RegimeModel)

    def __init__(self, config: DetectorConfig = DetectorConfig()):
        self.config = config
        self.prior = None  # this channel's fleet prior (see seed_from_prior)
        self.reset()

    def seed_from_prior(self, prior) -> None:
        """Watch this channel against a verified fleet prior (``FleetPrior.for_channel``)
        until its own baseline is fitted and accepted; its autoencoder then starts from
        the fleet's weights. Regimes already monitoring on an accepted baseline keep it: the
        prior serves the ones being learned, and every re-baseline from now on."""
        self.prior = prior
        for model in self.models.values():
            if not model.fitted or model.accepted is not True:
                self._attach(model)

    def _attach(self, model: "RegimeModel") -> None:
        model.prior_monitor, model.ae_init = attach(self.prior, model.names, model.directions,
                                                    self.config)

    @staticmethod
    def _prior_or(model: "RegimeModel", x, verdict: Verdict) -> Verdict:
        if model.prior_monitor is None:
            return verdict
        return model.prior_monitor.verdict(x, verdict.regime, verdict.baseline_progress,
                                           verdict.learned)

    def reset(self) -> None:
        """Forget everything (after maintenance): the next windows form a new baseline."""
        self.generation = getattr(self, "generation", -1) + 1
        self.last_running_s: float | None = None
        self.regimes = SpeedRegimes(self.config.regime_tolerance, self.config.max_regimes)
        self.models: dict[str, RegimeModel] = {}
        self.names: list[str] | None = None

    @property
    def updates(self) -> int:
        return sum(m.updates for m in self.models.values())

    @property
    def fitted(self) -> bool:
        """Whether some regime of this channel has a fitted baseline."""
        return any(m.fitted for m in self.models.values())

    def _vector(self, features):
        if self.names is None:
            numeric = [k for k, v in features.items() if isinstance(v, (int, float))
                       and not isinstance(v, bool)]
            self.names, self.directions = select_features(numeric, self.config.features)
        return np.array([features.get(n, np.nan) if isinstance(features.get(n), (int, float))
                         else np.nan for n in self.names], dtype=np.float64)

    def _stopped(self, features, rpm, model):
        level = _level(features)
        if rpm is not None and rpm < self.config.stopped_rpm:
            return True
        if level is None:
            return False
        floor = self.config.stopped_rms_g
        if model is not None and model.fitted and "sustained_rms_g" in model.reference:
            floor = max(floor, self.config.stopped_fraction * model.reference["sustained_rms_g"])
        elif model is not None and model.fitted and "rms_g" in model.reference:
            floor = max(floor, self.config.stopped_fraction * model.reference["rms_g"])
        return level < floor

    def process(self, features: dict, *, rpm: float | None, t_s: float,
                may_learn: bool = True, may_train: bool = True,
                learn_ratio: float | None = None) -> Verdict:
        """Score one window and learn from it when allowed and healthy.

        ``learn_ratio``: windows scoring below this × threshold may be learned too (an
        operator's false-alarm label, :mod:`edge_agent.runtime.feedback`; bounded there).

        ``may_train`` false defers the costly model updates (not the learning):
        the agent is behind real time or over its CPU budget. That includes fitting
        a completed baseline, which then waits (still collecting) until allowed.
        """
        regime = self.regimes.assign(rpm) if rpm is not None and rpm >= self.config.stopped_rpm \
            else ("any" if rpm is None else None)
        model = self.models.get(regime) if regime else None
        for other in self.models.values():  # a stop, or another regime, is not this one's running
            if other is not model and not other.fitted:
                other.collection.pause()
        if regime is None or self._stopped(features, rpm, model):
            if model is not None and not model.fitted:
                model.collection.pause()
            return Verdict("stopped", model.progress() if model else 0.0, regime)
        x = self._vector(features)
        gap = None if self.last_running_s is None else t_s - self.last_running_s
        self.last_running_s = t_s
        if model is None:
            model = self.models[regime] = RegimeModel(self.names, self.directions, self.config)
            if self.prior is not None:
                self._attach(model)
        restarted = gap is not None and gap > self.config.restart_gap_s
        if not model.fitted:
            if not may_learn:
                # The machine is in warning or alarm (a restart that lost this channel's
                # checkpoint, a new regime mid-episode): what runs now may be the fault, and
                # a baseline learned from it would call the fault normal. Held until the
                # episode ends or an operator orders a re-baseline.
                model.collection.pause()
                return self._prior_or(model, x, Verdict("baselining", model.progress(), regime,
                                                        learned=False))
            # A complete baseline waits for its fit while updates are deferred; it keeps
            # collecting meanwhile (bounded: see models.collection).
            model.collect(x, {k: v for k, v in features.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)},
                          t_s, restarted)
            progress = model.progress()
            if progress >= 1.0 and may_train:
                model.fit()
            return self._prior_or(model, x, Verdict("baselining", progress, regime, learned=True))
        if model.accepted is not True and model.prior_monitor is not None:
            # fitted but not (yet) accepted as this machine's normal: still judged by its fleet
            return model.prior_monitor.verdict(x, regime, 1.0, False)
        if restarted and may_learn:
            model.settling = []
        if model.settling is not None:
            if not may_learn:  # as above: no re-centring on what may be the fault
                return Verdict("baselining", len(model.settling) / self.config.settle_windows,
                               regime, learned=False)
            return Verdict("baselining", model.settle(x), regime, learned=True)
        z, raw, surprise, combined = model.score(x)
        threshold = model.threshold.threshold_
        learned = may_learn and combined < max(self.config.learn_fraction,
                                               learn_ratio or 0.0) * threshold
        magnitude = model.magnitude()
        anomalous = combined >= threshold and magnitude >= self.config.min_change_ratio
        # The explanation is read only by alerts: worth building when this window is
        # anomalous or the machine is already in warning or alarm (may_learn false).
        explain = model.contributions(x, z) if anomalous or not may_learn else ()
        verdict = Verdict("monitoring", 1.0, regime, combined, threshold,
                          model.threshold.alarm_threshold_, learned, surprise, explain,
                          magnitude, self.config.min_change_ratio,
                          basis=None if model.prior_monitor is None else "own")
        if learned:
            model.learn(x, z, raw, combined, may_train)
        return verdict
