"""The baseline period: how long it lasts, what it covered, and every feature's healthy spread.

A baseline must cover normal running. A count alone does not: 120 windows are
two minutes of a sensor that sends a window a second and twenty hours of one
that sends a snapshot every ten minutes, which has then seen one shift, not a
day of them. So a baseline lasts ``baseline_windows`` windows and, when those
windows are *sparse* (at the machine's cadence they would take longer than
``sparse_span_s`` of running), at least ``baseline_running_s`` of running time
as well. Only running time counts: the interval before a window is credited
when the machine ran through it (no stop in between, no gap longer than the
restart gap).

The period is bounded in memory whatever its length: once it holds
``max(1024, 2 × baseline_windows)`` windows, every other one is dropped and
from then on only every second (fourth, ...) window is kept, so what is kept
stays spread evenly over the whole period.

Besides the learners' feature vectors it keeps every numeric feature of each
window, for the *reference*: the median and the robust spread (MAD scaled to a
standard deviation, in ``log10`` for positive levels) of all features, also
those the learners do not watch. Alerts judge evidence against it: "2× its
baseline and 3 of the baseline's own standard deviations".

>>> import numpy as np
>>> c = BaselineCollection(baseline_windows=3, baseline_running_s=3600.0, sparse_span_s=60.0)
>>> for k in range(3):
...     c.add(np.zeros(1), {"rms_g": 0.1 * (1 + k % 2)}, t_s=600.0 * k, restarted=False)
>>> c.sparse(), round(c.progress(), 3)        # 10-min cadence: sparse, 20 of 60 minutes
(True, 0.333)
>>> c.coverage()["windows"], c.coverage()["running_h"]
(3, 0.333)
"""

from __future__ import annotations

import numpy as np

from edge_agent.models.baseline import LOG_SCALE_FLOOR, MAD_TO_SIGMA, is_power

#: Fewest windows kept before thinning starts (the cap is at least twice the count).
MIN_KEPT = 1024
#: The upward spread is also read off this quantile (1.28 standard deviations of a
#: normal distribution above the median): a level that is up in one healthy window
#: in ten (intermittent knocks, a process that comes and goes) has a wide upward
#: spread, which the MAD alone, blind to what fewer than half the windows do, misses.
UPPER_Q = 0.9
UPPER_Q_SIGMAS = 1.2816


class BaselineCollection:
    """Windows of a baseline period, its coverage, and its reference statistics.

    Parameters
    ----------
    baseline_windows : int
        Fewest windows.
    baseline_s : float, optional
        An explicit running time instead of the rule above (with at least
        ``min_windows`` windows).
    baseline_running_s : float, optional
        Running time a sparse baseline needs; None: the count alone.
    sparse_span_s : float
        ``baseline_windows`` windows spanning more running time than this are sparse.
    min_windows : int
        Fewest windows of an explicit ``baseline_s``.
    """

    def __init__(self, *, baseline_windows: int = 120, baseline_s: float | None = None,
                 baseline_running_s: float | None = 86400.0, sparse_span_s: float = 3600.0,
                 min_windows: int = 20):
        self.baseline_windows = baseline_windows
        self.baseline_s = baseline_s
        self.baseline_running_s = baseline_running_s
        self.sparse_span_s = sparse_span_s
        self.min_windows = min_windows
        self.cap = max(MIN_KEPT, 2 * baseline_windows)
        self.rows: list[np.ndarray] = []  # learners' vectors of the kept windows
        self.ref_names: list[str] = []  # every numeric feature seen, in order of appearance
        self._ref_index: dict[str, int] = {}
        self.ref_rows: list[np.ndarray] = []
        self.seen = 0  # windows collected, kept or not
        self.stride = 1  # every ``stride``-th window is kept
        self.running_s = 0.0
        self.intervals = 0  # intervals credited to running_s
        self.first_s: float | None = None
        self.last_s: float | None = None
        self.restart_at: int | None = None  # first kept row after a restart
        self._clock_s: float | None = None  # the previous running window, None after a stop

    def pause(self) -> None:
        """The machine stopped (or ran in another regime): the next interval is not running."""
        self._clock_s = None

    def add(self, x, features: dict, t_s: float, restarted: bool) -> None:
        """Collect one running window: its learners' vector ``x`` and its numeric features."""
        if restarted:
            self.restart_at = len(self.rows)
        elif self._clock_s is not None:
            self.running_s += max(0.0, t_s - self._clock_s)
            self.intervals += 1
        self._clock_s = t_s
        self.first_s = t_s if self.first_s is None else self.first_s
        self.last_s = t_s
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        row = np.full(len(self.ref_names), np.nan)
        for name, value in features.items():
            j = self._ref_index.get(name)
            if j is None:
                j = self._ref_index[name] = len(self.ref_names)
                self.ref_names.append(name)
                row = np.append(row, np.nan)
            row[j] = value
        self.rows.append(np.asarray(x, dtype=np.float64))
        self.ref_rows.append(row)
        if len(self.rows) >= self.cap:
            self.rows, self.ref_rows = self.rows[::2], self.ref_rows[::2]
            if self.restart_at is not None:
                self.restart_at = (self.restart_at + 1) // 2
            self.stride *= 2

    # -- how far along ---------------------------------------------------------------------------
    def cadence_s(self) -> float | None:
        """Mean running time between windows so far."""
        return self.running_s / self.intervals if self.intervals else None

    def sparse(self) -> bool:
        """Whether ``baseline_windows`` windows take longer than ``sparse_span_s`` of running."""
        cadence = self.cadence_s()
        return cadence is not None and cadence * self.baseline_windows > self.sparse_span_s

    def progress(self) -> float:
        """Share of the baseline period collected (1: complete)."""
        if self.baseline_s is not None:
            return min(self.running_s / self.baseline_s, self.seen / self.min_windows, 1.0)
        by_count = self.seen / self.baseline_windows
        if self.baseline_running_s and self.sparse():
            return min(by_count, self.running_s / self.baseline_running_s, 1.0)
        return min(by_count, 1.0)

    def coverage(self) -> dict:
        """What the baseline covered: first and last window (Unix s), windows, running hours."""
        return {"from_s": self.first_s, "to_s": self.last_s, "windows": self.seen,
                "running_h": round(self.running_s / 3600.0, 3)}


    # -- the reference ---------------------------------------------------------------------------
    def reference(self) -> tuple[dict[str, float], dict[str, float]]:
        """Median of every numeric feature, and the robust spread of the positive ones.

        The spread is the MAD of ``log10`` of the value scaled to a standard deviation,
        floored at the repeatability of a measurement (as the learners' baseline is:
        5 % in amplitude, twice that in log for powers).
        """
        n = len(self.ref_names)
        R = np.vstack([np.pad(r, (0, n - len(r)), constant_values=np.nan) for r in self.ref_rows])
        medians, spreads = {}, {}
        for j, name in enumerate(self.ref_names):
            values = R[:, j][np.isfinite(R[:, j])]
            if not values.size:
                continue
            medians[name] = float(np.median(values))
            if np.all(values > 0):
                logs = np.log10(values)
                centre = np.median(logs)
                mad = float(np.median(np.abs(logs - centre))) * MAD_TO_SIGMA
                upper = float(np.quantile(logs, UPPER_Q) - centre) / UPPER_Q_SIGMAS
                floor = LOG_SCALE_FLOOR * (2.0 if is_power(name) else 1.0)
                spreads[name] = max(mad, upper, floor)
        return medians, spreads


def coverage_text(coverage: dict) -> str:
    """A baseline's coverage in words.

    >>> coverage_text({"from_s": 0.0, "to_s": 86400.0, "windows": 145, "running_h": 24.0})
    '1970-01-01 00:00 to 1970-01-02 00:00, 145 windows, 24.0 h of running'
    >>> coverage_text({"from_s": 0.0, "to_s": 3600.0, "windows": 61, "running_h": 1.0,
    ...                "complete": False, "progress": 0.042})
    '1970-01-01 00:00 to 1970-01-01 01:00, 61 windows, 1.0 h of running (still learning: 4%)'
    """
    import datetime as dt

    def at(t):
        return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")

    if coverage.get("from_s") is None:
        return "no running window yet"
    text = (f"{at(coverage['from_s'])} to {at(coverage['to_s'])}, {coverage['windows']} windows, "
            f"{coverage['running_h']:.1f} h of running")
    if coverage.get("complete") is False:
        text += f" (still learning: {coverage['progress']:.0%})"
    return text


def baseline_rule(config) -> str:
    """The baseline a ``DetectorConfig`` learns, in words.

    >>> from edge_agent.models.detector import DetectorConfig
    >>> baseline_rule(DetectorConfig())
    '120 windows, and 24 h of running when they take longer than 1 h'
    """
    if config.baseline_s is not None:
        return (f"{config.baseline_s / 3600:g} h of running (at least "
                f"{config.min_baseline_windows} windows)")
    if not config.baseline_running_s:
        return f"{config.baseline_windows} windows"
    return (f"{config.baseline_windows} windows, and {config.baseline_running_s / 3600:g} h of "
            f"running when they take longer than {config.sparse_span_s / 3600:g} h")
