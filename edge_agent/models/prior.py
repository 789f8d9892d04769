"""What one machine shares with its fleet, and what the fleet gives back.

A :class:`MemberSummary` is one machine's healthy baseline reduced to a robust
location and scale per feature, in the per-machine baseline's own units: log10 of
the value for an always-positive feature (``log`` true), the value itself otherwise
(see :mod:`edge_agent.models.baseline`); a machine with several channels names its
features ``<channel>/<feature>`` (:func:`qualified`), each channel having its own
healthy levels. Optionally it carries its autoencoders' weights (per channel
``[W1, b1, W2, b2]`` on standardised inputs). It never holds a window.

A :class:`FleetPrior` is what :func:`edge_agent.fleet.aggregate.aggregate` makes of
several members of one class: the robust location and scale of every feature's
healthy level across them, the between-machine ``spread`` of the location (same
units), the autoencoder weights averaged over members, and how many members and
windows it stands for.

>>> import numpy as np
>>> m = MemberSummary("pump-a", "p1", ("rms_g", "kurtosis"), 120, np.array([-1.0, 3.0]),
...                   np.array([0.02, 0.3]), np.array([True, False]))
>>> m.typical()
{'rms_g': 0.1, 'kurtosis': 3.0}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["FleetPrior", "MemberSummary", "baseline_windows", "qualified",
           "summary_from_detector", "summary_from_windows", "merge_channels"]

#: Separates a channel from a feature in a machine's summary ("horizontal/rms_g"): a class
#: has the same sensors on every member, and each channel has its own healthy levels.
CHANNEL_SEP = "/"


def qualified(channel: str | None, feature: str) -> str:
    """A feature's name in a machine's summary or prior.

    >>> qualified("de", "rms_g"), qualified(None, "rms_g")
    ('de/rms_g', 'rms_g')
    """
    return feature if channel is None else f"{channel}{CHANNEL_SEP}{feature}"


def _array(values, dtype=np.float64) -> np.ndarray:
    out = np.array(values, dtype=dtype)
    out.setflags(write=False)
    return out


def _weights(weights):
    """``{channel: [W1, b1, W2, b2]}`` as read-only arrays ("" for a machine's only channel)."""
    if weights is None:
        return None
    if not isinstance(weights, dict):
        raise TypeError("ae_weights is {channel: [W1, b1, W2, b2]} ('' for no channel)")
    out = {}
    for channel, ws in weights.items():
        if len(ws) != 4:
            raise ValueError("autoencoder weights are [W1, b1, W2, b2]")
        out[str(channel)] = [_array(w) for w in ws]
    return out or None


@dataclass(frozen=True)
class MemberSummary:
    """One machine's healthy baseline, as shared with its fleet.

    Parameters
    ----------
    class_name, machine : str
        The machine's class and name.
    feature_names : tuple of str
        Feature order of every array.
    windows : int
        Windows the baseline was fitted on.
    location, scale : ndarray
        Robust centre and scale of each feature in baseline units (log10 if ``log``).
    log : ndarray of bool
        Whether a feature's units are log10 of its value.
    ae_weights : dict, optional
        Autoencoder weights per channel, ``{channel: [W1, b1, W2, b2]}`` on standardised
        inputs (channel ``""`` in a summary without channels).
    """

    class_name: str
    machine: str
    feature_names: tuple[str, ...]
    windows: int
    location: np.ndarray
    scale: np.ndarray
    log: np.ndarray
    ae_weights: dict[str, list[np.ndarray]] | None = None

    def __post_init__(self):
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        object.__setattr__(self, "location", _array(self.location))
        object.__setattr__(self, "scale", _array(self.scale))
        object.__setattr__(self, "log", _array(self.log, bool))
        n = len(self.feature_names)
        if not (self.location.shape == self.scale.shape == self.log.shape == (n,)):
            raise ValueError(f"location, scale and log need one value per feature ({n})")
        object.__setattr__(self, "ae_weights", _weights(self.ae_weights))

    def typical(self) -> dict[str, float]:
        """The healthy value of each feature in its own unit."""
        return {n: float(10.0 ** c) if lg else float(c)
                for n, c, lg in zip(self.feature_names, self.location, self.log)}


@dataclass(frozen=True)
class FleetPrior:
    """The healthy behaviour of a class of machines, from several members.

    ``created`` is in seconds since the epoch; ``spread`` is the between-machine
    robust spread of the location (the same units as ``location``).
    """

    class_name: str
    version: int
    created: float
    feature_names: tuple[str, ...]
    members: int
    location: np.ndarray
    scale: np.ndarray
    spread: np.ndarray
    log: np.ndarray
    ae_weights: dict[str, list[np.ndarray]] | None = None
    windows: int = 0
    #: free text about how it was made (aggregation method, privacy), kept in the document
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        for name in ("location", "scale", "spread"):
            object.__setattr__(self, name, _array(getattr(self, name)))
        object.__setattr__(self, "log", _array(self.log, bool))
        n = len(self.feature_names)
        if not (self.location.shape == self.scale.shape == self.spread.shape
                == self.log.shape == (n,)):
            raise ValueError(f"location, scale, spread and log need one value per feature ({n})")
        object.__setattr__(self, "ae_weights", _weights(self.ae_weights))

    def index(self, names) -> np.ndarray:
        """Positions of ``names`` in the prior (-1 where it has no such feature)."""
        where = {n: i for i, n in enumerate(self.feature_names)}
        return np.array([where.get(n, -1) for n in names], dtype=int)

    def typical(self) -> dict[str, float]:
        """The fleet's healthy value of each feature in its own unit."""
        return {n: float(10.0 ** c) if lg else float(c)
                for n, c, lg in zip(self.feature_names, self.location, self.log)}

    def for_channel(self, channel: str | None) -> "FleetPrior | None":
        """The prior of one channel, its feature names without the channel (a prior made
        without channels is every channel's); ``None`` when it has nothing for it."""
        if channel is None or not any(CHANNEL_SEP in n for n in self.feature_names):
            return self
        prefix = channel + CHANNEL_SEP
        keep = [i for i, n in enumerate(self.feature_names) if n.startswith(prefix)]
        if not keep:
            return None
        return replace(self, feature_names=tuple(self.feature_names[i][len(prefix):]
                                                 for i in keep),
                       location=self.location[keep], scale=self.scale[keep],
                       spread=self.spread[keep], log=self.log[keep],
                       ae_weights=None if self.ae_weights is None or channel not in
                       self.ae_weights else {"": self.ae_weights[channel]})

    def widened_scale(self) -> np.ndarray:
        """Scale a new machine is judged with: the within-machine scale and the
        between-machine spread, the latter as a prediction for one more member
        (``spread² (1 + 1/members)``: the fleet's centre is itself estimated)."""
        return np.sqrt(self.scale ** 2 + self.spread ** 2 * (1.0 + 1.0 / max(self.members, 1)))


def summary_from_windows(X, names, *, class_name: str, machine: str,
                         ae_weights: dict | None = None) -> MemberSummary:
    """A summary from raw healthy windows (rows of ``X`` in ``names`` order), with the
    statistics :class:`edge_agent.models.baseline.Baseline` would fit on them.

    >>> import numpy as np
    >>> X = np.column_stack([np.full(20, 0.1), np.linspace(-0.5, 0.5, 20)])
    >>> s = summary_from_windows(X, ["rms_g", "skewness"], class_name="c", machine="m")
    >>> s.log.tolist(), round(float(s.location[0]), 3)
    ([True, False], -1.0)
    """
    from edge_agent.models.baseline import Baseline

    baseline = Baseline(names, None)
    for x in np.asarray(X, dtype=np.float64):
        baseline.collect(x)
    baseline.fit()
    return MemberSummary(class_name, machine, tuple(names), int(baseline.n_windows_),
                         baseline.center0_, baseline.scale_, baseline.log_, ae_weights)


def _ae_weights(ae) -> list[np.ndarray] | None:
    mlp = getattr(ae, "mlp_", None)
    if mlp is None:
        return None
    return [np.array(mlp.coefs_[0]), np.array(mlp.intercepts_[0]),
            np.array(mlp.coefs_[1]), np.array(mlp.intercepts_[1])]


def _main_regime(detector):
    """The regime fitted on most windows: it stands for the machine (a class shares one
    speed regime); ``None`` while no regime is fitted."""
    fitted = [m for m in detector.models.values() if m.fitted]
    return max(fitted, key=lambda m: m.baseline.n_windows_) if fitted else None


def baseline_windows(detector) -> tuple[tuple[str, ...], np.ndarray] | None:
    """``(feature names, windows)``: the raw baseline windows (rows) of the regime
    :func:`summary_from_detector` summarises, for a privatised summary
    (:func:`edge_agent.fleet.privacy.private_summary`); ``None`` while none is fitted."""
    model = _main_regime(detector)
    rows = None if model is None else getattr(model.baseline, "training_", None)
    return None if rows is None else (tuple(model.names), np.asarray(rows))


def summary_from_detector(detector, *, class_name: str, machine: str, channel: str | None = None,
                          with_autoencoder: bool = True) -> MemberSummary | None:
    """The summary of a fitted :class:`edge_agent.models.detector.ChannelDetector`.

    The regime fitted on most windows stands for the machine (a class shares one
    speed regime); ``None`` while no regime is fitted. The location is the
    commissioning centre (what the baseline was fitted on, not where it adapted to).
    """
    model = _main_regime(detector)
    if model is None:
        return None
    b = model.baseline
    weights = _ae_weights(model.learners[4]) if with_autoencoder else None
    return MemberSummary(class_name, machine, tuple(qualified(channel, n) for n in model.names),
                         int(b.n_windows_), b.commissioned_, b.scale_, b.log_,
                         None if weights is None else {channel or "": weights})


def merge_channels(summaries: dict) -> MemberSummary | None:
    """One machine's summary from its channels' (``{channel: MemberSummary}``, each made with
    its ``channel``): features side by side, windows the fewest of any channel's."""
    parts = [s for s in summaries.values() if s is not None]
    if not parts:
        return None
    weights = {k: v for s in parts for k, v in (s.ae_weights or {}).items()}
    return MemberSummary(parts[0].class_name, parts[0].machine,
                         sum((s.feature_names for s in parts), ()),
                         min(s.windows for s in parts),
                         np.concatenate([s.location for s in parts]),
                         np.concatenate([s.scale for s in parts]),
                         np.concatenate([s.log for s in parts]), weights or None)
