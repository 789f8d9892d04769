"""Reading the input of ``edge-agent report``: replay JSON lines or a live capture.

A replay's ``edge-agent replay --jsonl`` lines (``kind`` ``verdict`` per window,
``alert`` per alert) and captures of the alert and machine-status topics
(``mosquitto_sub -v`` lines ``TOPIC PAYLOAD``, or ``edge-agent alerts --json``)
become one :class:`Machine` per machine: its channels' series and its alerts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from statistics import median

from edge_agent.errors import UsageError

ALERT_SCHEMA = "edge-agent/alert/1"
STATUS_SCHEMA = "edge-agent/machine-status/1"
ALERT_STATES = ("normal", "warning", "alarm")
UNDATED_BEFORE_S = 31_536_000.0  # recordings without a date (CWRU) start at the Unix epoch


COLUMNS = ("t", "score", "threshold", "alarm_threshold", "state", "phase", "indicators")


@dataclass
class ChannelSeries:
    """One channel's windows (or status samples) in time order; ``None`` where not scored."""

    t: list = field(default_factory=list)  # Unix seconds, UTC
    score: list = field(default_factory=list)
    threshold: list = field(default_factory=list)
    alarm_threshold: list = field(default_factory=list)
    state: list = field(default_factory=list)
    phase: list = field(default_factory=list)
    indicators: list = field(default_factory=list)  # physical indicators (dict or None)
    windows: int = 0  # windows processed; a capture holds only some of them
    #: What the agent said its baseline covered (a status's ``baseline``: from, to,
    #: windows, running_h), for a capture that started after the baseline.
    coverage: dict | None = None

    def add(self, t, score, threshold, alarm_threshold, state, phase, indicators=None) -> None:
        for name, value in zip(COLUMNS, (t, score, threshold, alarm_threshold, state, phase,
                                         indicators)):
            getattr(self, name).append(value)

    def sort(self) -> None:
        """Time order: a capture may hold status documents out of order."""
        columns = COLUMNS
        rows = sorted(zip(*(getattr(self, c) for c in columns)), key=lambda row: row[0])
        for c, values in zip(columns, zip(*rows) if rows else [()] * len(columns)):
            setattr(self, c, list(values))

    def step_and_gap(self) -> tuple[float, float]:
        """Typical step between samples and the spacing beyond which data is missing."""
        diffs = sorted(b - a for a, b in zip(self.t, self.t[1:]) if b > a)
        if not diffs:
            return 1.0, float("inf")
        # The upper quartile, not the median: status documents come both periodically
        # and at state changes, so many short steps must not make every period a gap.
        return median(diffs), 5.0 * diffs[(3 * len(diffs)) // 4]


@dataclass
class Machine:
    """What the input says about one machine."""

    name: str
    channels: dict = field(default_factory=dict)  # name -> ChannelSeries
    alerts: list = field(default_factory=list)  # alert documents, time order
    feedback: dict = field(default_factory=dict)  # alert id -> operators' latest label on it

    def channel(self, name: str) -> ChannelSeries:
        return self.channels.setdefault(name, ChannelSeries())

    def channel_names(self) -> list[str]:
        """Channels with data, and those only alerts name."""
        return sorted(set(self.channels) | {a.get("channel") or "?" for a in self.alerts})


def epoch_s(ts: str) -> float:
    """Unix seconds of an ISO 8601 time; a time without offset is taken as UTC.

    >>> epoch_s("2011-04-06T10:06:15.196Z")
    1302084375.196
    """
    when = datetime.fromisoformat(ts)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


# -- input ----------------------------------------------------------------------------------------
def _document(line: str):
    """The JSON object of a line (``mosquitto_sub -v`` lines start with the topic)."""
    import json

    line = line.strip()
    if not line:
        return None
    if not line.startswith("{"):
        line = line.partition(" ")[2].strip()  # TOPIC PAYLOAD
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return doc if isinstance(doc, dict) else False


def _add_status(machines: dict, doc: dict, seen: set) -> None:
    """One sample per channel of a machine-status document, at its last window."""
    for name, c in doc["channels"].items():
        # A retained status is re-sent unchanged: one sample per window, not per message;
        # but a new state at the same window (an operator's label) is a new sample.
        key = (doc["machine"], name, c.get("last_window_ts"), c.get("state"))
        if c.get("last_window_ts") is None or key in seen:
            continue  # nothing processed yet, or a window already seen
        seen.add(key)
        series = machines.setdefault(doc["machine"], Machine(doc["machine"])).channel(name)
        series.add(epoch_s(c["last_window_ts"]), c.get("score"), c.get("threshold"),
                   c.get("alarm_threshold"), c["state"], c.get("phase"), c.get("indicators"))
        series.windows = max(series.windows, c.get("windows") or 0)
        if c.get("baseline") and c["baseline"].get("complete", True):
            series.coverage = c["baseline"]
    _add_labels(machines[doc["machine"]] if doc["machine"] in machines else None,
                (doc.get("feedback") or {}).get("labels"))


def _add_labels(machine, labels) -> None:
    """Operators' labels (from an alert's or a status's ``feedback``), the latest per alert."""
    for label in labels or ():
        if machine is not None and isinstance(label, dict) and label.get("alert_id"):
            machine.feedback[label["alert_id"]] = label


def add_document(machines: dict, doc: dict, seen: set) -> bool:
    """Add one received or replayed document to ``machines``.

    Parameters
    ----------
    machines : dict
        Machine name to :class:`Machine`, updated in place.
    doc : dict
        A verdict (``kind: verdict``), an alert or a machine status document.
    seen : set
        Alert ids and status samples already added: repeats are dropped.

    Returns
    -------
    bool
        False for a document of another kind (agent status, ...), which is ignored.
    """
    if doc.get("kind") == "verdict":
        series = machines.setdefault(doc["machine"], Machine(doc["machine"])).channel(
            doc["channel"])
        series.add(epoch_s(doc["ts"]), doc.get("score"), doc.get("threshold"),
                   doc.get("alarm_threshold"), doc["state"], doc.get("phase"),
                   doc.get("indicators"))
        series.windows += 1
    elif doc.get("schema") == ALERT_SCHEMA:
        if doc["id"] not in seen:  # delivery is at least once: a repeated id is a redelivery
            seen.add(doc["id"])
            epoch_s(doc["ts"])  # a bad time is the line's problem, found here
            machine = machines.setdefault(doc["machine"], Machine(doc["machine"]))
            machine.alerts.append(doc)
            _add_labels(machine, doc.get("feedback"))
    elif doc.get("schema") == STATUS_SCHEMA:
        _add_status(machines, doc, seen)
    else:
        return False
    return True


def load(path: str) -> dict[str, Machine]:
    """Read a replay's JSON lines or a live capture.

    Lines that are not JSON objects (a capture cut mid-line, another topic's
    binary payload) are skipped with a note on standard error; a document of
    ours with a missing or malformed member is an error naming the line.

    Parameters
    ----------
    path : str
        The file, or ``-`` for standard input.

    Returns
    -------
    dict
        Machine name to :class:`Machine`, channels and alerts in time order.

    Raises
    ------
    UsageError
        The file cannot be read, holds a malformed document or nothing usable.
    """
    machines: dict[str, Machine] = {}
    seen: set = set()
    skipped: list[int] = []
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with stream:
        for lineno, line in enumerate(stream, 1):
            doc = _document(line)
            if doc is False:
                skipped.append(lineno)
            elif doc is not None:
                try:
                    add_document(machines, doc, seen)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    why = f"no member {exc}" if isinstance(exc, KeyError) else str(exc)
                    raise UsageError(f"{path}:{lineno}: not a valid edge-agent document "
                                     f"({why})") from None
    if skipped:
        print(f"edge-agent report: skipped {len(skipped)} line(s) that are not JSON objects "
              f"(first: line {skipped[0]})", file=sys.stderr)
    if not machines:
        raise UsageError(f"{path}: no verdicts, alerts or machine status with a window; expected "
                         f"'edge-agent replay --jsonl' output or a capture of the alert and "
                         f"status topics")
    for machine in machines.values():
        machine.alerts.sort(key=lambda a: epoch_s(a["ts"]))
        for series in machine.channels.values():
            series.sort()
    return machines
