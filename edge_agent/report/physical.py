"""The physical figures of ``edge-agent report``: trends of what an analyst reads first, and the
envelope spectrum at each alert.

* ``<machine>-trends.png``: per window (or status sample) overall RMS in g; velocity RMS
  in mm/s over the ISO 20816-3 zones A-D of the machine's group and foundation (shaded,
  labelled with their limits); kurtosis and crest factor; the bearing defect lines'
  envelope amplitudes in g. The first baseline is shaded, each alert is a numbered
  marker (``A1``, …) at its time on every panel.
* ``<machine>-A<n>-envelope.png``: the alert's envelope spectrum (its
  ``envelope_spectrum``: the leading channel's window) beside the mean of that channel's
  baseline windows, on one amplitude scale, with BPFO, BPFI, BSF and FTF and their
  harmonics (×1-×3) marked.

Figures are built by :func:`trends_figure` and :func:`envelope_figure` (matplotlib
``Figure`` objects on the Agg canvas, for tests to read) and written by :func:`png`.
"""

from __future__ import annotations

import io

from edge_agent.report.facts import Facts
from edge_agent.report.parse import Machine, epoch_s
from edge_agent.signal.bearing import FAULTS
from edge_agent.signal.velocity import ISO_20816_3_BOUNDARIES_MM_S

ZONE_COLOURS = {"A": "#c8e6c9", "B": "#fff3b0", "C": "#ffd0a0", "D": "#f4a3a3"}
FAULT_COLOURS = {"bpfo": "#1f77b4", "bpfi": "#d62728", "bsf": "#2ca02c", "ftf": "#9467bd"}
CHANNEL_STYLES = ("-", "--", ":", "-.")
#: Channels by colour (tab10 without the colours of the defect lines' panel)
CHANNEL_COLOURS = ("#1d3c78", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                   "#17becf", "#000000")
BASELINE_COLOUR = "#b7d7ee"
HARMONICS = (1, 2, 3)
DEFAULT_ISO_CLASS = "2/rigid"


def png(fig) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def iso_class(machine: Machine) -> str | None:
    """The ISO 20816-3 class (``group/foundation``) the windows' zones were judged for."""
    for series in machine.channels.values():
        for ind in series.indicators:
            if ind and ind.get("iso_class"):
                return ind["iso_class"]
    return None


def zone_limits(cls: str) -> tuple[float, float, float]:
    """A/B, B/C and C/D limits in mm/s of a class ``"2/rigid"``.

    >>> zone_limits("2/rigid")
    (1.4, 2.8, 4.5)
    """
    group, foundation = cls.split("/")
    return ISO_20816_3_BOUNDARIES_MM_S[(int(group), foundation)]


def has_indicators(machine: Machine) -> bool:
    return any(ind for s in machine.channels.values() for ind in s.indicators)


def _series(series, name: str, axis):
    xs, ys = [], []
    _, gap = series.step_and_gap()
    for i, (t, ind) in enumerate(zip(series.t, series.indicators)):
        if i and t - series.t[i - 1] > gap:
            xs.append(float("nan"))
            ys.append(float("nan"))
        value = (ind or {}).get(name)
        xs.append(axis.x(t))
        ys.append(float("nan") if value is None else value)
    return xs, ys


def _mark_alerts(axes, machine: Machine, axis, top_only_labels: bool = True) -> None:
    from edge_agent.report.html import alert_colour

    for number, alert in enumerate(machine.alerts, 1):
        x, colour = axis.x(epoch_s(alert["ts"])), alert_colour(alert["severity"])
        for k, ax in enumerate(axes):
            ax.axvline(x, color=colour, lw=1.0, ls=":", zorder=2)
            if k == 0 or not top_only_labels:
                ax.annotate(f"A{number}", (x, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize=8, fontweight="bold", color="black", gid=f"alert-A{number}",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, lw=0.8))


def trends_figure(machine: Machine, f: Facts):
    """The trends figure of ``machine`` (see the module docstring); None without indicators."""
    from edge_agent.report.html import TimeAxis, check_matplotlib

    if not has_indicators(machine):
        return None
    Figure, FigureCanvasAgg = check_matplotlib()
    fig = Figure(figsize=(12, 11), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4, 1, sharex=True)
    axis = TimeAxis.for_facts(f)
    names = sorted(machine.channels)
    style = {c: CHANNEL_STYLES[i % len(CHANNEL_STYLES)] for i, c in enumerate(names)}
    if f.baseline is not None:
        for ax in axes:
            # above the ISO zone bands (zorder 0), below the lines: both must show
            ax.axvspan(axis.x(f.baseline[0]), axis.x(f.baseline[1]), color=BASELINE_COLOUR,
                       alpha=0.6, zorder=0.5, label="_baseline", gid="baseline")
    rms, velocity, shape, lines = axes
    peak_velocity = 0.0
    sparse = max(len(machine.channels[c].t) for c in names) < 200
    marker = {"marker": "o", "ms": 3} if sparse else {}  # a capture's few samples: each shown
    colour = {c: CHANNEL_COLOURS[i % len(CHANNEL_COLOURS)] for i, c in enumerate(names)}

    def draw(ax, series, name, label, gid, **style):
        xs, ys = _series(series, name, axis)
        if any(y == y for y in ys):  # a feature stream may not have it: nothing drawn
            ax.plot(xs, ys, lw=1.0, label=label, gid=gid, **{**marker, **style})
        return [y for y in ys if y == y]

    for c in names:
        s = machine.channels[c]
        draw(rms, s, "rms_g", f"{c}: overall RMS", f"rms_g/{c}", color=colour[c])
        peak_velocity = max([peak_velocity] + draw(
            velocity, s, "velocity_rms_mm_s", f"{c}: velocity RMS",
            f"velocity_rms_mm_s/{c}", color=colour[c]))
        for name, ls in (("kurtosis", "-"), ("crest_factor", "--")):
            # the shock-robust form when there (what the alarms judge): a knock is no trend
            robust = any((ind or {}).get(f"sustained_{name}") is not None
                         for ind in s.indicators)
            key = f"sustained_{name}" if robust else name
            draw(shape, s, key, f"{c}: {key.replace('_', ' ')}", f"{key}/{c}",
                 color=colour[c], ls=ls)
        for fault in FAULTS:
            draw(lines, s, f"env_{fault}_g", f"{c}: {fault.upper()}", f"env_{fault}_g/{c}",
                 color=FAULT_COLOURS[fault], ls=style[c])
    cls = iso_class(machine)
    if cls:
        limits = zone_limits(cls)
        top = max(1.25 * peak_velocity, 1.25 * limits[0])
        edges = (0.0, *limits, max(top, 1.25 * limits[2]))
        for zone, lo, hi in zip("ABCD", edges, edges[1:]):
            velocity.axhspan(lo, hi, color=ZONE_COLOURS[zone], zorder=0, gid=f"iso-zone-{zone}")
            if lo < top:
                velocity.text(1.005, min((lo + min(hi, top)) / 2, top) / top, f"zone {zone}",
                              transform=velocity.transAxes, fontsize=8, va="center")
        velocity.set_ylim(0, top)
        velocity.set_title(f"velocity RMS (10-1000 Hz) over the ISO 20816-3 zones of group "
                           f"{cls.split('/')[0]}, {cls.split('/')[1]} foundation (A/B "
                           f"{limits[0]:g}, B/C {limits[1]:g}, C/D {limits[2]:g} mm/s)",
                           loc="left", fontsize=10)
    else:
        velocity.set_title("velocity RMS (10-1000 Hz); no ISO zone known", loc="left",
                           fontsize=10)
    rms.set_title("overall RMS", loc="left", fontsize=10)
    shape.set_title("impulsiveness: kurtosis (3 for Gaussian vibration) and crest factor; "
                    "sustained: the median over sub-blocks, so a single knock does not count",
                    loc="left", fontsize=10)
    lines.set_title("bearing defect lines in the envelope spectrum", loc="left", fontsize=10)
    rms.set_ylabel("acceleration RMS (g)")
    velocity.set_ylabel("velocity RMS (mm/s)")
    shape.set_ylabel("kurtosis, crest factor")
    lines.set_ylabel("envelope amplitude (g)")
    if any(line.get_gid() for line in lines.get_lines()):
        lines.set_yscale("log")
    for ax in axes:
        ax.grid(True, color="#dddddd", lw=0.6)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", ncol=4, framealpha=0.85)
        else:
            ax.text(0.5, 0.5, "not in this input (a feature stream without it)",
                    transform=ax.transAxes, ha="center", va="center", color="#555555")
    _mark_alerts(axes, machine, axis)
    if axis.dated:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        locator = AutoDateLocator(minticks=5, maxticks=12)
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlabel(axis.label + "; shaded blue: the baseline; A1, A2, …: the alerts")
    fig.suptitle(f"{f.name}: physical indicators per channel", fontsize=12)
    return fig


def envelope_figure(machine: Machine, number: int, alert: dict):
    """The envelope figure of alert ``A<number>``; None when the alert carries no spectrum."""
    from edge_agent.report.html import alert_colour, check_matplotlib

    spectrum = alert.get("envelope_spectrum")
    if not spectrum or not spectrum.get("window_g"):
        return None
    Figure, FigureCanvasAgg = check_matplotlib()
    panels = [("alert's window", spectrum["window_g"])]
    if spectrum.get("baseline_g"):
        panels.append(("baseline (mean of its windows)", spectrum["baseline_g"]))
    fig = Figure(figsize=(12, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    df = spectrum["df_hz"]
    freqs = [df * (i + 1) for i in range(len(spectrum["window_g"]))]
    top = max(max(values) for _, values in panels) * 1.15 or 1.0
    for ax, (title, values) in zip(axes, panels):
        ax.plot(freqs, values, color="#1d3c78" if "baseline" in title else
                alert_colour(alert["severity"]), lw=0.9, gid=f"spectrum/{title.split()[0]}")
        for fault, f_hz in (spectrum.get("lines_hz") or {}).items():
            for h in (HARMONICS if fault != "ftf" else (1,)):  # FTF harmonics crowd 0 Hz
                if f_hz * h <= freqs[-1]:
                    ax.axvline(f_hz * h, color=FAULT_COLOURS.get(fault, "grey"),
                               ls="--" if h > 1 else "-", lw=0.8, alpha=0.8,
                               gid=f"line-{fault}-{h}x")
                    ax.text(f_hz * h, top, f"{fault.upper()}" + (f"×{h}" if h > 1 else ""),
                            rotation=90, fontsize=7, va="top", ha="right",
                            color=FAULT_COLOURS.get(fault, "grey"))
        ax.set_ylim(0, top)
        ax.set_xlim(0, freqs[-1])
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_xlabel("envelope frequency (Hz)")
        ax.grid(True, color="#dddddd", lw=0.6)
    axes[0].set_ylabel("envelope amplitude (g)")
    fig.suptitle(f"{machine.name} A{number} {alert['severity'].upper()} at {alert['ts']}: "
                 f"envelope spectrum of channel {spectrum.get('channel', alert.get('channel'))}",
                 fontsize=11)
    return fig


def envelope_name(png_name: str, number: int) -> str:
    """``<machine>-A<n>-envelope.png`` from the machine's ``<machine>.png``.

    >>> envelope_name("motor-3.png", 2)
    'motor-3-A2-envelope.png'
    """
    return f"{png_name[:-4]}-A{number}-envelope.png"


def trends_name(png_name: str) -> str:
    return f"{png_name[:-4]}-trends.png"
