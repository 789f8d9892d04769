"""What ``edge-agent report`` draws: a PNG per machine and one self-contained HTML page.

The plots are drawn on matplotlib's Agg canvas (files only, no display, no
global pyplot state). The page has inline CSS, the plots as base64 ``data:``
URIs, no script and no link to anything outside it, so it opens the same from a
USB stick, a mail attachment or a file share with no route to the internet.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import UsageError
from edge_agent.report.facts import (Facts, alert_counts, baseline_text, feedback_text,
                                     first_alert, gaps, period, png_name, runs)
from edge_agent.report.parse import ChannelSeries, Machine, epoch_s

# -- plot -----------------------------------------------------------------------------------------
COLOURS = {"score": "#1d3c78", "threshold": "#e08600", "alarm_threshold": "#c62828",
           "baselining": "#b7d7ee", "stopped": "#9e9e9e", "warning": "#ffd27f",
           "alarm": "#f4a3a3", "normal": "#2e7d32"}
LABELS = {"score": "anomaly score", "threshold": "warning threshold (adaptive)",
          "alarm_threshold": "alarm threshold", "baselining": "baselining (learning)",
          "stopped": "machine stopped", "gap": "no data", "warning": "warning state",
          "alarm": "alarm state", "alert_warning": "warning alert",
          "alert_alarm": "alarm alert", "alert_normal": "back-to-normal alert"}
LINES = {"score": {"lw": 1.0}, "threshold": {"lw": 1.4, "ls": "--"},
         "alarm_threshold": {"lw": 1.4, "ls": (0, (6, 2, 1, 2))}}
GAP_HATCH, GAP_EDGE = "//", "#c4c4c4"
MARKERS = {"warning": "^", "alarm": "^", "normal": "o"}


def alert_colour(severity: str) -> str:
    """Alerts take the colour of the threshold they crossed; green when back to normal."""
    return COLOURS.get({"alarm": "alarm_threshold", "warning": "threshold"}.get(severity),
                       COLOURS["normal"])


def check_matplotlib():
    """Figure and the Agg canvas; a :class:`UsageError` saying what to install if missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("edge-agent report draws with matplotlib, which is not installed: "
                         "pip install 'edge-agent[report]'") from None
    return Figure, FigureCanvasAgg


@dataclass(frozen=True)
class TimeAxis:
    """Unix seconds to plot x: matplotlib dates, or elapsed time for undated recordings."""

    start: float
    unit_s: float
    offset: float
    label: str
    dated: bool

    @classmethod
    def for_facts(cls, f: Facts) -> TimeAxis:
        if not f.relative:
            from matplotlib.dates import date2num

            return cls(0.0, 86400.0, date2num(datetime(1970, 1, 1)), "time (UTC)", True)
        span = (f.end or 0.0) - (f.start or 0.0)
        unit, name = next((u, n) for u, n in ((1, "s"), (60, "min"), (3600, "h"), (86400, "d"))
                          if span <= 120 * u or n == "d")
        return cls(f.start or 0.0, unit, 0.0, f"time since the first window ({name})", False)

    def x(self, t: float) -> float:
        return (t - self.start) / self.unit_s + self.offset


def _bands(ax, spans, axis: TimeAxis, **style) -> None:
    """Shade time spans over the full height of ``ax``."""
    ax.broken_barh([(axis.x(a), axis.x(b) - axis.x(a)) for a, b in spans], (0, 1),
                   transform=ax.get_xaxis_transform(), zorder=0, **style)


def _line(series: ChannelSeries, values: list, axis: TimeAxis):
    """x and y with NaN where not scored and across data gaps, so no line bridges them."""
    _, gap = series.step_and_gap()
    xs, ys = [], []
    for i, (t, v) in enumerate(zip(series.t, values)):
        if i and t - series.t[i - 1] > gap:
            xs.append(float("nan"))
            ys.append(float("nan"))
        xs.append(axis.x(t))
        ys.append(float("nan") if v is None else v)
    return xs, ys


def _draw_channel(ax, series: ChannelSeries, axis: TimeAxis, used: set) -> None:
    step, gap = series.step_and_gap()
    for key, flags in (("baselining", [p == "baselining" for p in series.phase]),
                       ("stopped", [p == "stopped" for p in series.phase]),
                       ("warning", [s == "warning" for s in series.state]),
                       ("alarm", [s == "alarm" for s in series.state])):
        spans = runs(series.t, flags, step, gap)
        if spans:
            _bands(ax, spans, axis, facecolors=COLOURS[key], alpha=0.55 if key == "stopped" else 1)
            used.add(key)
    if gaps(series):
        _bands(ax, gaps(series), axis, facecolors="none", edgecolors=GAP_EDGE, hatch=GAP_HATCH,
               linewidth=0)
        used.add("gap")
    sparse = len(series.t) < 200  # a capture's status samples: show each one
    for key, style in LINES.items():
        values = getattr(series, key)
        if any(v is not None for v in values):
            extra = ({"marker": "o" if sparse else None, "ms": 3} if key == "score"
                     else {"drawstyle": "steps-post"})  # a threshold holds until it changes
            ax.plot(*_line(series, values, axis), color=COLOURS[key], zorder=3, **style, **extra)
            used.add(key)


def _draw_alerts(ax, channel: str, numbered: list, axis: TimeAxis, used: set) -> None:
    """A dotted line at every alert; the marker and number on the channel that raised it."""
    for number, alert in numbered:
        severity, x = alert["severity"], axis.x(epoch_s(alert["ts"]))
        colour = alert_colour(severity)
        ax.axvline(x, color=colour, lw=0.9, ls=":", zorder=2)
        if (alert.get("channel") or "?") != channel:
            continue
        y = alert.get("score") or 0.0
        ax.plot([x], [y], ls="none", marker=MARKERS.get(severity, "o"), ms=10, color=colour,
                markeredgecolor="black", markeredgewidth=0.8, zorder=5, clip_on=False)
        ax.annotate(f"A{number}", (x, y), xytext=(0, 10), textcoords="offset points",
                    ha="center", fontsize=9, fontweight="bold", zorder=6,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, lw=0.8))
        used.add(f"alert_{severity}")


def _legend(used: set) -> list:
    """Legend entries for what was drawn, in the order of :data:`LABELS`."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    for key in (k for k in LABELS if k in used):
        if key in LINES:
            handles.append(Line2D([], [], color=COLOURS[key], **LINES[key]))
        elif key.startswith("alert_"):
            handles.append(Line2D([], [], ls="none", marker=MARKERS[key[6:]], ms=9,
                                  color=alert_colour(key[6:]), markeredgecolor="black"))
        elif key == "gap":
            handles.append(Patch(facecolor="white", edgecolor=GAP_EDGE, hatch=GAP_HATCH))
        else:
            handles.append(Patch(facecolor=COLOURS[key]))
        handles[-1].set_label(LABELS[key])
    return handles


def _format_axes(axes, axis: TimeAxis, peak: float) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.ticker import NullLocator

    for ax in axes:
        ax.set_yscale("symlog", linthresh=2.0, linscale=1.0)  # see every threshold and the peak
        top = max(1.35 * peak, 5.0)  # room above the highest score for its alert label
        ax.set_ylim(-0.3, top)  # below 0 so a marker at 0 (back to normal) is not cut
        ax.set_yticks([v for v in (0, 1, 2, 4, 8, 16, 32, 64, 128) if v <= top],
                      labels=[f"{v}" for v in (0, 1, 2, 4, 8, 16, 32, 64, 128) if v <= top])
        ax.yaxis.set_minor_locator(NullLocator())
        # in words: the number alone (a −log10 p) means nothing to most readers
        ax.set_ylabel("anomaly score: how unusual\n2 = 1 healthy window in 100\n"
                      "(−log₁₀ p, log scale above 2)", fontsize=9)
        ax.grid(True, axis="both", color="#dddddd", lw=0.6)
    if axis.dated:
        locator = AutoDateLocator(minticks=5, maxticks=12)
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlabel(axis.label)


def render_png(machine: Machine, f: Facts) -> bytes:
    """Plot a machine's anomaly score over time, one subplot per channel.

    Each subplot shows the score, the warning threshold as it adapted and the
    alarm threshold; shading for baselining, stopped, warning and alarm, hatching
    where data is missing; a numbered marker (``A1``, ...) on the channel that
    raised each alert and a dotted line at it on every channel.

    Parameters
    ----------
    machine : Machine
    f : Facts
        Its summary (:func:`edge_agent.report.command.facts`): channels and time span.

    Returns
    -------
    bytes
        A PNG image, 1200 pixels wide.
    """
    Figure, FigureCanvasAgg = check_matplotlib()
    fig = Figure(figsize=(12, 1.7 + 2.6 * len(f.channels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(f.channels), 1, sharex=True, squeeze=False)[:, 0]
    axis, used = TimeAxis.for_facts(f), set()
    numbered = list(enumerate(machine.alerts, 1))
    for ax, name in zip(axes, f.channels):
        if name in machine.channels:
            _draw_channel(ax, machine.channels[name], axis, used)
        _draw_alerts(ax, name, numbered, axis, used)
        ax.set_title(f"channel {name}", loc="left", fontsize=10, fontweight="bold")
    values = [v for s in machine.channels.values() for v in s.score + s.alarm_threshold
              if v is not None] + [a.get("score") or 0.0 for a in machine.alerts]
    _format_axes(axes, axis, max(values, default=1.0))
    span = period((f.start, f.end), f) if f.start is not None else "no data"
    fig.suptitle(f"{f.name}: anomaly score per channel, {span}", fontsize=12)
    fig.legend(handles=_legend(used), loc="outside lower center", ncol=6, fontsize=9,
               frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# -- page -----------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:1.5em auto;
max-width:1240px;padding:0 1em;color:#1b1b1b}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #1d3c78}
h3{font-size:1.05em;margin:.2em 0}.meta{color:#555}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f1f3f7}td.n{text-align:right;
font-variant-numeric:tabular-nums}img{max-width:100%;height:auto;border:1px solid #ddd}
.alert{border-left:6px solid #999;padding:.4em .9em;margin:1em 0;background:#fafafa}
.alarm{border-color:#c62828}.warning{border-color:#e08600}.normal{border-color:#2e7d32}
.sev{font-weight:bold;text-transform:uppercase}.sev.alarm{color:#c62828}
.sev.warning{color:#b36b00}.sev.normal{color:#2e7d32}code{font-size:.9em}
@media print{h2.machine{page-break-before:always}.alert{page-break-inside:avoid}}
"""


def _num(value, digits: int = 3) -> str:
    """A number to ``digits`` significant digits; a dash when missing.

    >>> _num(0.0247365), _num(None), _num(1302084375.2, 4)
    ('0.0247', '—', '1.302e+09')
    """
    return "—" if value is None else f"{value:.{digits}g}"


def _anchor(machine: str) -> str:
    return "machine-" + escape(png_name(machine)[:-4])


def _state(state: str) -> str:
    return f'<span class="sev {escape(state)}">{escape(state)}</span>'


def _summary_table(sections: list) -> str:
    rows = []
    for machine, f, *_ in sections:
        numbers = {a["id"]: f"A{i}" for i, a in enumerate(machine.alerts, 1)}
        rows.append(
            f'<tr><td><a href="#{_anchor(f.name)}">{escape(f.name)}</a></td>'
            f"<td>{escape(', '.join(f.channels))}</td><td class=n>{f.windows}</td>"
            f"<td>{escape(period((f.start, f.end), f) if f.start is not None else 'no data')}</td>"
            f"<td>{escape(baseline_text(f))}</td>"
            f"<td>{escape(first_alert(f, 'warning'))}</td>"
            f"<td>{escape(first_alert(f, 'alarm'))}</td>"
            f"<td>{escape(alert_counts(f))}</td><td>{escape(feedback_text(f, numbers))}</td>"
            f"<td>{_state(f.final_state)}</td></tr>")
    return ("<table><tr><th>Machine</th><th>Channels</th><th>Windows</th><th>Time span</th>"
            "<th>Baseline</th><th>First warning</th><th>First alarm</th><th>Alerts</th>"
            "<th>Operators' feedback</th><th>Final state</th></tr>" + "".join(rows)
            + "</table>")


def _features_table(features: list) -> str:
    if not features:
        return "<p>No feature contributions in this alert.</p>"
    rows = "".join(
        f"<tr><td>{escape(str(c.get('label') or c.get('feature')))}</td>"
        f"<td class=n>{_num(c.get('value'))}</td><td class=n>{_num(c.get('baseline'))}</td>"
        f"<td class=n>{'×' + _num(c['ratio']) if c.get('ratio') is not None else '—'}</td>"
        f"<td>{escape(c.get('unit') or '—')}</td><td class=n>{_num(c.get('z'))}</td>"
        f"<td><code>{escape(str(c.get('feature')))}</code></td></tr>" for c in features)
    return ("<table><tr><th>Feature</th><th>Value</th><th>Baseline</th><th>Ratio</th>"
            "<th>Unit</th><th>z</th><th>Name</th></tr>" + rows + "</table>")


def _fault_lines(lines: list) -> str:
    if not lines:
        # the feature table may show a line's amplitude risen less: the rule is ×3 in both
        return ("<p>Bearing defect lines: none rose 3 times (fault_line_ratio) over its "
                "baseline in both envelope amplitude and prominence over the envelope floor, "
                "the rule for naming a defect line.</p>")
    rows = "".join(
        f"<tr><td>{escape(str(line.get('fault', '')).upper())}</td>"
        f"<td class=n>{_num(line.get('frequency_hz'), 4)}</td>"
        f"<td class=n>{_num(line.get('envelope_g'))}</td>"
        f"<td class=n>{_num(line.get('baseline_g'))}</td>"
        f"<td class=n>×{_num(line.get('ratio'))}</td>"
        f"<td class=n>×{_num(line.get('prominence_ratio'))}</td></tr>" for line in lines)
    return ("<table><tr><th>Defect line</th><th>Frequency (Hz)</th><th>Envelope (g)</th>"
            "<th>Baseline (g)</th><th>Ratio</th><th>Prominence rise</th></tr>"
            + rows + "</table>")


def _iso(alert: dict) -> str:
    iso = alert.get("iso_20816")
    if not iso:
        return "ISO 20816-3 zone: not evaluated"
    return (f"ISO 20816-3 zone <b>{escape(str(iso.get('zone')))}</b> (velocity RMS "
            f"{_num(iso.get('velocity_rms_mm_s'))} mm/s)")


def _image(png: bytes, alt: str) -> str:
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
            f'alt="{escape(alt)}">')


def _labels(alert: dict, labels: dict) -> str:
    label = labels.get(alert.get("id"))
    if not label:
        return ""
    who = f" by {escape(label['user'])}" if label.get("user") else ""
    note = f": “{escape(label['note'])}”" if label.get("note") else ""
    return f"<p><b>Operator's label: {escape(label['label'])}</b>{who}{note}</p>"


def _alert(number: int, alert: dict, envelope: bytes | None = None,
           labels: dict | None = None) -> str:
    severity = str(alert.get("severity", "?"))
    channels = ", ".join(alert.get("channels") or [])
    return (
        f'<section class="alert {escape(severity)}"><h3>A{number} · {_state(severity)} · '
        f"{escape(str(alert.get('ts')))} · channel {escape(str(alert.get('channel')))}"
        f"{' (in this state: ' + escape(channels) + ')' if channels else ''}</h3>"
        f"<p>{escape(str(alert.get('summary', '')))}</p>" + _labels(alert, labels or {})
        + f"<p>score {_num(alert.get('score'))}, warning threshold {_num(alert.get('threshold'))}, "
        f"alarm threshold {_num(alert.get('alarm_threshold'))}; was "
        f"{escape(str(alert.get('previous_severity')))}; {_iso(alert)}</p>"
        + _features_table(alert.get("features") or [])
        + _fault_lines(alert.get("fault_lines") or [])
        + (_image(envelope, f"envelope spectrum at A{number} beside the baseline's, defect "
                            f"frequencies marked") if envelope else "")
        + f'<p class="meta">id <code>{escape(str(alert.get("id")))}</code> · source '
        f"{escape(str(alert.get('source')))} · regime {escape(str(alert.get('regime')))} · "
        f"model {escape(str(alert.get('model_version')))}</p></section>")


def _machine(machine: Machine, f: Facts, png: bytes, extras: dict | None = None) -> str:
    image = base64.b64encode(png).decode("ascii")
    extras = extras or {}
    envelopes = extras.get("envelopes", {})
    alerts = "".join(_alert(i, a, envelopes.get(i), f.feedback)
                     for i, a in enumerate(machine.alerts, 1))
    trends = (_image(extras["trends"], f"physical indicators of {f.name} over time: RMS, "
                                       f"velocity over the ISO 20816-3 zones, kurtosis, crest "
                                       f"factor, defect lines; baseline and alerts marked")
              if extras.get("trends") else "<p>No physical indicators in the input (a "
                                           "feature stream without them).</p>")
    return (f'<h2 class="machine" id="{_anchor(f.name)}">{escape(f.name)}</h2>'
            f"<p>{f.windows} windows on {escape(', '.join(f.channels))}; time span "
            f"{escape(period((f.start, f.end), f) if f.start is not None else 'no data')}; "
            f"baseline {escape(baseline_text(f))}; final state {_state(f.final_state)}.</p>"
            + trends +
            f'<img src="data:image/png;base64,{image}" alt="anomaly score of {escape(f.name)} '
            f'per channel over time, with thresholds, states and alerts">'
            "<p class=meta>The anomaly score says how unusual a window is for this machine: "
            "2 means that one healthy window in a hundred scores as high, 3 one in a "
            "thousand (−log₁₀ of that probability). A warning needs 3 of 5 windows over the "
            "warning threshold; an alarm also needs evidence (see the trends above).</p>"
            f"<h3>Alerts ({escape(alert_counts(f))})</h3>"
            + (alerts or "<p>No alerts.</p>"))


def write_html(path: Path, title: str, source: str, sections: list) -> None:
    """Write the page: a summary table, then per machine its plot and alert tables.

    Parameters
    ----------
    path : Path
        The HTML file to write.
    title : str
        Title of the page.
    source : str
        The input file, named on the page.
    sections : list
        ``(Machine, Facts, png_bytes)`` per machine, in page order.
    """
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = "standard input" if source == "-" else Path(source).name
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=meta>From {escape(name)}; made "
        f"{now} by edge-agent {escape(__version__)}. Scores are surprises (−log₁₀ p): 2 means "
        f"one healthy window in a hundred scores this high.</p><h2>Summary</h2>"
        + _summary_table(sections) + "".join(_machine(*s) for s in sections)
        + "</body></html>\n")
    path.write_text(page, encoding="utf-8")
