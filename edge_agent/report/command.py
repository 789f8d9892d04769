"""``edge-agent report``: plots, alert tables and a summary from a replay or a live capture.

The input is either the JSON lines of ``edge-agent replay --jsonl`` (``kind``
``verdict`` per window, ``alert`` per alert) or a capture of the MQTT alert and
machine-status topics (``mosquitto_sub -v`` lines ``TOPIC PAYLOAD``, or the JSON
lines of ``edge-agent alerts --json``). The output is ``report.html`` (one
self-contained file: inline CSS, plots as data URIs, nothing fetched, for an
air-gapped plant network), the PNGs beside it (per machine its anomaly score, its
physical trends and each alert's envelope spectrum: :mod:`edge_agent.report.physical`),
and a plain-text summary on standard output.

:mod:`edge_agent.report.parse` reads the input, :mod:`edge_agent.report.facts` derives
what is said about each machine, :mod:`edge_agent.report.html` draws the score plot and
writes the page, :mod:`edge_agent.report.physical` draws the physical figures, and this
module is the command. Registration in the CLI is one line,
``add_report_parser(sub)``; its default ``func`` is :func:`report_command`.
matplotlib is imported only when the command runs, so other commands do not pay
for it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_agent.errors import UsageError
from edge_agent.report.html import check_matplotlib, render_png, write_html
from edge_agent.report.facts import facts, png_name, summary_lines
from edge_agent.report.parse import Machine, load


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "report", help="HTML report with plots from a replay's JSON lines or a live capture",
        description="Read the JSON lines of 'edge-agent replay --jsonl' or a capture of the "
                    "alert and machine-status topics (mosquitto_sub -v, or edge-agent alerts "
                    "--json) and write DIR/report.html (self-contained: no external resources) "
                    "and per machine DIR/<machine>.png (anomaly score), DIR/<machine>-trends.png (physical "
                    "indicators, ISO zones) and DIR/<machine>-A<n>-envelope.png (each alert's "
                    "envelope spectrum), then print a summary per machine. Needs "
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
    sections, files = [], 0
    for machine in selected:
        f = facts(machine)
        png = render_png(machine, f)
        name = png_name(machine.name)
        (directory / name).write_bytes(png)
        extras = physical_figures(machine, f, directory, name)
        files += 1 + bool(extras["trends"]) + len(extras["envelopes"])
        sections.append((machine, f, png, extras))
        numbers = {a["id"]: f"A{i}" for i, a in enumerate(machine.alerts, 1)}
        print("\n".join(summary_lines(f, numbers)), file=out)
    html = directory / "report.html"
    write_html(html, title, args.input, sections)
    print(f"wrote {html} and {files} PNG file(s) in "
          f"{time.monotonic() - started:.1f} s", file=out)


def physical_figures(machine: Machine, f, directory: Path, name: str) -> dict:
    """Write ``<machine>-trends.png`` and ``<machine>-A<n>-envelope.png`` (when the input
    has what they show); returns their bytes for the page."""
    from edge_agent.report.physical import (envelope_figure, envelope_name, png as to_png,
                                            trends_figure, trends_name)

    extras = {"trends": None, "envelopes": {}}
    fig = trends_figure(machine, f)
    if fig is not None:
        extras["trends"] = to_png(fig)
        (directory / trends_name(name)).write_bytes(extras["trends"])
    for number, alert in enumerate(machine.alerts, 1):
        fig = envelope_figure(machine, number, alert)
        if fig is not None:
            data = extras["envelopes"][number] = to_png(fig)
            (directory / envelope_name(name, number)).write_bytes(data)
    return extras
    return 0
