"""``edge-agent report``: plots, alert tables and a summary from a replay or a live capture.

The input is either the JSON lines of ``edge-agent replay --jsonl`` (``kind``
``verdict`` per window, ``alert`` per alert) or a capture of the MQTT alert and
machine-status topics (``mosquitto_sub -v`` lines ``TOPIC PAYLOAD``, or the JSON
lines of ``edge-agent alerts --json``). The output is ``report.html`` (one
self-contained file: inline CSS, plots as data URIs, nothing fetched, for an
air-gapped plant network), one PNG per machine beside it, and a plain-text
summary on standard output.

:mod:`edge_agent.report.parse` reads the input, this module writes the summary, and
:mod:`edge_agent.report.html` draws the plots and writes the page. Registration in the CLI is one line,
``add_report_parser(sub)``; its default ``func`` is :func:`report_command`.
matplotlib is imported only when the command runs, so other commands do not pay
for it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge_agent.errors import UsageError
from edge_agent.report.parse import (ALERT_STATES, UNDATED_BEFORE_S, ChannelSeries, Machine,
                                     epoch_s, load)


# -- facts and the text summary -------------------------------------------------------------------
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
        Start and end of each span: it ends where the next sample starts, or
        one step after its last sample at a data gap or at the end.

    Examples
    --------

    >>> runs([0, 1, 2, 3, 10, 11], [1, 1, 0, 1, 1, 0], 1.0, 5.0)
    [(0, 2), (3, 4.0), (10, 11)]
    """
    spans, start = [], None
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = t[i]
        nxt = t[i + 1] if i + 1 < len(t) else None
        joined = nxt is not None and nxt - t[i] <= gap_s
        if start is not None and not (joined and flags[i + 1]):
            spans.append((start, nxt if joined else t[i] + step_s))
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
    relearned: int  # later baselining periods (settling after a restart, new speed, re-baseline)
    first: dict  # severity -> first alert of that severity
    counts: Counter
    final_state: str

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
    baselines = []
    for series in machine.channels.values():
        baselines.append(runs(series.t, [p == "baselining" for p in series.phase],
                              *series.step_and_gap()))
    firsts = [spans[0] for spans in baselines if spans]
    baseline = (min(a for a, _ in firsts), max(b for _, b in firsts)) if firsts else None
    first = {}
    for alert in machine.alerts:
        first.setdefault(alert["severity"], alert)
    return Facts(machine.name, machine.channel_names(),
                 sum(s.windows or len(s.t) for s in machine.channels.values()),
                 sum(len(s.t) for s in machine.channels.values()),
                 min(times, default=None), max(times, default=None), baseline,
                 max((len(spans) - 1 for spans in baselines if spans), default=0), first,
                 Counter(a["severity"] for a in machine.alerts), _final_state(machine))


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


def summary_lines(f: Facts) -> list[str]:
    """The plain-text summary of one machine."""
    windows = f"{f.windows} windows" + (f" ({f.samples} status samples)"
                                        if f.samples != f.windows else "")
    baseline = period(f.baseline, f) + (
        f"; baselining again {f.relearned} time(s) later (after a restart, a new speed or a "
        f"re-baseline)" if f.relearned else "")
    span = period((f.start, f.end), f) if f.start is not None else "no data"
    if f.relative:
        span += " (the recording carries no date: times from its first window)"
    return [f"{f.name}: {windows} on {len(f.channels)} channel(s) ({', '.join(f.channels)})",
            f"  time span      {span}",
            f"  baseline       {baseline}",
            f"  first warning  {first_alert(f, 'warning')}",
            f"  first alarm    {first_alert(f, 'alarm')}",
            f"  alerts         {alert_counts(f)}",
            f"  final state    {f.final_state}"]


# -- command --------------------------------------------------------------------------------------
def png_name(machine: str) -> str:
    """A safe file name for a machine's plot.

    >>> png_name("ims1-bearing3"), png_name("../line b/p7")
    ('ims1-bearing3.png', '_line_b_p7.png')
    """
    return (re.sub(r"[^A-Za-z0-9_.-]", "_", machine).lstrip(".") or "machine") + ".png"


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "report", help="HTML report with plots from a replay's JSON lines or a live capture",
        description="Read the JSON lines of 'edge-agent replay --jsonl' or a capture of the "
                    "alert and machine-status topics (mosquitto_sub -v, or edge-agent alerts "
                    "--json) and write DIR/report.html (self-contained: no external resources) "
                    "and DIR/<machine>.png, then print a summary per machine. Needs "
                    "matplotlib: pip install 'edge-agent[report]'.")
    p.add_argument("input", metavar="INPUT.jsonl", help="replay JSON lines or a capture ('-': "
                                                        "standard input)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: report/ beside "
                                                "the input, ./report for standard input)")
    p.add_argument("--title", metavar="TEXT", help="title of the page")
    p.add_argument("--machine", action="extend", nargs="+", metavar="NAME",
                   help="only these machines (repeat, or list several)")
    p.set_defaults(func=report_command)
    return p


def _select(machines: dict, wanted: list | None) -> list[Machine]:
    if not wanted:
        return [machines[m] for m in sorted(machines)]
    unknown = [m for m in wanted if m not in machines]
    if unknown:
        raise UsageError(f"no machine {', '.join(unknown)} in the input; it has "
                         f"{', '.join(sorted(machines))}")
    return [machines[m] for m in dict.fromkeys(wanted)]


def report_command(args: argparse.Namespace, out=None) -> int:
    """Run ``edge-agent report``.

    Parameters
    ----------
    args : argparse.Namespace
        From the parser of :func:`add_report_parser`.
    out : file, optional
        Where the summary goes (default standard output).

    Returns
    -------
    int
        The exit status, 0.

    Raises
    ------
    UsageError
        matplotlib is missing, the input is unusable, a ``--machine`` is not in
        it, or the output directory cannot be made.
    """
    from edge_agent.report.html import check_matplotlib, render_png, write_html

    out = out or sys.stdout
    started = time.monotonic()
    check_matplotlib()  # before reading a long input: say at once what is missing
    selected = _select(load(args.input), args.machine)
    directory = Path(args.out) if args.out else (
        Path("report") if args.input == "-" else Path(args.input).resolve().parent / "report")
    title = args.title or ("edge-agent report: "
                           + ("standard input" if args.input == "-" else Path(args.input).name))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror}") from None
    sections = []
    for machine in selected:
        f = facts(machine)
        png = render_png(machine, f)
        (directory / png_name(machine.name)).write_bytes(png)
        sections.append((machine, f, png))
        print("\n".join(summary_lines(f)), file=out)
    html = directory / "report.html"
    write_html(html, title, args.input, sections)
    print(f"wrote {html} and {len(sections)} PNG file(s) in "
          f"{time.monotonic() - started:.1f} s", file=out)
    return 0
