"""What a report says about each machine: its facts (periods, alerts, states) and summary lines.

Pure functions of what :mod:`edge_agent.report.parse` read; :mod:`edge_agent.report.html`
draws and writes them, :mod:`edge_agent.report.command` prints the summary.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from edge_agent.report.parse import ALERT_STATES, UNDATED_BEFORE_S, ChannelSeries, Machine, epoch_s


def runs(t: list, flags: list, step_s: float, gap_s: float) -> list[tuple[float, float]]:
    """Time spans of consecutive flagged samples.

    Parameters
    ----------
    t : list of float
        Sample times, ascending.
    flags : list of bool
        Which samples belong to a span.
    step_s, gap_s : float
        Typical step, and the spacing beyond which data is missing
        (:meth:`ChannelSeries.step_and_gap`).

    Returns
    -------
    list of (float, float)
        Start and end of each span: it ends where the next sample starts, one
        step after its last sample at a data gap, and at the last sample at the
        end (never past the data: a capture's status samples are far apart).

    Examples
    --------

    >>> runs([0, 1, 2, 3, 10, 11], [1, 1, 0, 1, 1, 0], 1.0, 5.0)
    [(0, 2), (3, 4.0), (10, 11)]
    >>> runs([0, 10, 20, 30], [0, 0, 1, 1], 10.0, 50.0)
    [(20, 30)]
    """
    spans, start = [], None
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = t[i]
        nxt = t[i + 1] if i + 1 < len(t) else None
        joined = nxt is not None and nxt - t[i] <= gap_s
        if start is not None and not (joined and flags[i + 1]):
            end = nxt if joined else (t[i] + step_s if nxt is not None else t[i])
            if end > start or nxt is None:
                spans.append((start, max(end, start)))
            start = None
    return spans


def gaps(series: ChannelSeries) -> list[tuple[float, float]]:
    """Stretches without data: the rig stood still or the capture missed them."""
    step, gap = series.step_and_gap()
    return [(a + step, b) for a, b in zip(series.t, series.t[1:]) if b - a > gap]


@dataclass
class Facts:
    """The summary of one machine, for the text and the HTML."""

    name: str
    channels: list
    windows: int
    samples: int
    start: float | None
    end: float | None
    baseline: tuple | None  # first baseline period, machine-wide
    baseline_windows: int | None  # windows of that baseline (the channel with most)
    baseline_running_h: float | None  # running hours it covered
    relearned: int  # later baselining periods (settling after a restart, new speed, re-baseline)
    first: dict  # severity -> first alert of that severity
    counts: Counter
    final_state: str
    feedback: dict  # alert id -> operators' latest label

    @property
    def relative(self) -> bool:
        """True for recordings without a date: times are shown from the first window."""
        return self.end is not None and self.end < UNDATED_BEFORE_S


def _final_state(machine: Machine) -> str:
    """The machine's state at the end: the worst alert state of its channels."""
    last = [s.state[-1] for s in machine.channels.values() if s.state]
    alerting = [s for s in last if s in ALERT_STATES]
    if alerting:
        return max(alerting, key=ALERT_STATES.index)
    if not last:
        return machine.alerts[-1]["severity"] if machine.alerts else "unknown"
    return "baselining" if "baselining" in last else last[-1]


def facts(machine: Machine) -> Facts:
    """Windows, time span, baseline, first alerts and final state of ``machine``.

    Parameters
    ----------
    machine : Machine
        As :func:`load` returns it.

    Returns
    -------
    Facts
        The baseline is the first baselining period of the machine's channels.
    """
    times = [t for s in machine.channels.values() for t in s.t]
    times += [epoch_s(a["ts"]) for a in machine.alerts]
    baselines, windows, running_h = [], [], []
    for series in machine.channels.values():
        step, gap = series.step_and_gap()
        spans = runs(series.t, [p == "baselining" for p in series.phase], step, gap)
        # One baseline until the channel is first monitored, across gaps in the data (a
        # stop, missing snapshots); later baselining is settling, a new speed, a re-baseline
        first_monitored = next((t for t, p in zip(series.t, series.phase)
                                if p == "monitoring"), float("inf"))
        early = [span for span in spans if span[0] < first_monitored]
        if early:
            spans = [(early[0][0], early[-1][1])] + spans[len(early):]
        if series.coverage:
            # the agent's own account (a status's): a capture may start in or after it
            c = series.coverage
            a, b = epoch_s(c["from"]), epoch_s(c["to"])
            spans = [(a, b)] + [span for span in spans if span[0] > b]
            windows.append(int(c["windows"]))
            running_h.append(float(c["running_h"]))
        elif spans:
            inside = [t for t, p in zip(series.t, series.phase)
                      if p == "baselining" and spans[0][0] <= t <= spans[0][1]]
            # running time: the steps between its windows, gaps (stops) left out
            running = sum(b - a for a, b in zip(inside, inside[1:]) if b - a <= gap)
            complete = series.windows == len(series.t)  # verdicts, not a capture's samples
            windows.append(len(inside) if complete else None)
            running_h.append(running / 3600.0 if complete else None)
        baselines.append(spans)
    firsts = [spans[0] for spans in baselines if spans]
    baseline = (min(a for a, _ in firsts), max(b for _, b in firsts)) if firsts else None
    known = [w for w in windows if w is not None]
    hours = [h for h in running_h if h is not None]
    first = {}
    for alert in machine.alerts:
        first.setdefault(alert["severity"], alert)
    return Facts(machine.name, machine.channel_names(),
                 sum(s.windows or len(s.t) for s in machine.channels.values()),
                 sum(len(s.t) for s in machine.channels.values()),
                 min(times, default=None), max(times, default=None), baseline,
                 max(known) if known else None, max(hours) if hours else None,
                 max((len(spans) - 1 for spans in baselines if spans), default=0), first,
                 Counter(a["severity"] for a in machine.alerts), _final_state(machine),
                 dict(machine.feedback))


def duration(seconds: float) -> str:
    """A span for people.

    >>> duration(3.7), duration(754), duration(1200), duration(8700), duration(273600)
    ('3.7 s', '12 min 34 s', '20 min', '2 h 25 min', '3 d 4 h')
    >>> duration(7200), duration(86400 * 6)
    ('2 h', '6 d')
    """
    s = round(seconds)
    if seconds < 60:
        return f"{seconds:.3g} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 2 * 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def when(t: float, f: Facts) -> str:
    """A moment: UTC date and time, or the time since the first window when undated."""
    if f.relative:
        return f"+{duration(t - f.start)}"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def period(span: tuple | None, f: Facts) -> str:
    """``start to end (length)``; the second date is left out when it is the same day."""
    if span is None:
        return "none"
    a, b = when(span[0], f), when(span[1], f)
    if not f.relative and a[:10] == b[:10]:
        b = b[11:]
    return f"{a} to {b} ({duration(span[1] - span[0])})"


def first_alert(f: Facts, severity: str) -> str:
    """The first alert of ``severity`` as its own ``ts`` and the time since the start."""
    alert = f.first.get(severity)
    if alert is None:
        return "none"
    return f"{alert['ts']}, {duration(epoch_s(alert['ts']) - f.start)} after the start"


def alert_counts(f: Facts) -> str:
    parts = [f"{f.counts[s]} {s}" for s in ("alarm", "warning", "normal") if f.counts[s]]
    return f"{sum(f.counts.values())}" + (f": {', '.join(parts)}" if parts else "")


def baseline_text(f: Facts) -> str:
    """The baseline period with the windows and running hours it covered, when known."""
    covered = [f"{f.baseline_windows} windows"] if f.baseline_windows is not None else []
    if f.baseline_running_h is not None:
        covered.append(f"{f.baseline_running_h:.2g} h of running" if f.baseline_running_h < 10
                       else f"{f.baseline_running_h:.0f} h of running")
    return period(f.baseline, f) + (f"; {', '.join(covered)}" if covered and f.baseline else "")


def feedback_text(f: Facts, numbers: dict) -> str:
    """Operators' labels: ``A2 false_alarm by ana ("new coupling")``; ``none``.

    ``numbers`` maps alert ids to their A-numbers in the report."""
    parts = []
    for alert_id, label in f.feedback.items():
        who = f" by {label['user']}" if label.get("user") else ""
        note = f' ("{label["note"]}")' if label.get("note") else ""
        parts.append(f"{numbers.get(alert_id, alert_id[:8])} {label['label']}{who}{note}")
    return "; ".join(parts) or "none"


def summary_lines(f: Facts, numbers: dict | None = None) -> list[str]:
    """The plain-text summary of one machine (first alerts in the order they came)."""
    windows = f"{f.windows} windows" + (f" ({f.samples} status samples)"
                                        if f.samples != f.windows else "")
    baseline = baseline_text(f) + (
        f"; baselining again {f.relearned} time(s) later (after a restart, a new speed or a "
        f"re-baseline)" if f.relearned else "")
    span = period((f.start, f.end), f) if f.start is not None else "no data"
    if f.relative:
        span += " (the recording carries no date: times from its first window)"
    firsts = sorted(("warning", "alarm"), key=lambda s: epoch_s(f.first[s]["ts"])
                    if s in f.first else float("inf"))
    return [f"{f.name}: {windows} on {len(f.channels)} channel(s) ({', '.join(f.channels)})",
            f"  time span      {span}",
            f"  baseline       {baseline}",
            *(f"  first {s:<9}{first_alert(f, s)}" for s in firsts),
            f"  alerts         {alert_counts(f)}",
            f"  feedback       {feedback_text(f, numbers or {})}",
            f"  final state    {f.final_state}"]


def png_name(machine: str) -> str:
    """A safe file name for a machine's plot.

    >>> png_name("ims1"), png_name("../line b/p7")
    ('ims1.png', '_line_b_p7.png')
    """
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", machine).lstrip(".") or "machine") + ".png"
