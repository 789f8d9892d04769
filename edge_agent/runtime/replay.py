"""``edge-agent replay``: recordings through the whole pipeline, no network."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from edge_agent.runtime.alerts import AlertPolicy
from edge_agent.jsonl import dumps
from edge_agent.models.detector import DetectorConfig
from edge_agent.models.collection import coverage_text
from edge_agent.runtime.pipeline import Pipeline


@dataclass
class ReplaySummary:
    windows: Counter = field(default_factory=Counter)  # per machine
    states: dict = field(default_factory=dict)  # machine -> Counter of verdict states
    alerts: list = field(default_factory=list)
    baselines: dict = field(default_factory=dict)  # machine -> channel -> regime -> coverage

    def add(self, verdict: dict, alert: dict | None) -> None:
        machine = verdict["machine"]
        self.windows[machine] += 1
        self.states.setdefault(machine, Counter())[verdict["state"]] += 1
        if alert is not None:
            self.alerts.append(alert)

    def lines(self) -> list[str]:
        out = []
        for machine in sorted(self.windows):
            states = ", ".join(f"{k} {v}" for k, v in sorted(self.states[machine].items()))
            alerts = [a for a in self.alerts if a["machine"] == machine]
            first = next((a for a in alerts if a["severity"] != "normal"), None)
            tail = f"; first {first['severity']} at {first['ts']}" if first else ""
            out.append(f"{machine}: {self.windows[machine]} windows ({states}); "
                       f"{len(alerts)} alerts{tail}")
            out += [f"  baseline {channel}{'' if regime == 'any' else ' ' + regime}: "
                    f"{coverage_text(c)}" for channel, regimes in
                    sorted(self.baselines.get(machine, {}).items())
                    for regime, c in regimes.items()]
        return out


def detector_config(args) -> DetectorConfig:
    config = DetectorConfig()
    if getattr(args, "baseline_windows", None):  # the count given, whatever the cadence
        config = replace(config, baseline_windows=args.baseline_windows, baseline_running_s=0.0,
                         min_baseline_windows=min(config.min_baseline_windows,
                                                  args.baseline_windows))
    if getattr(args, "baseline_s", None):
        config = replace(config, baseline_s=args.baseline_s)
    return config


def run_replay(options, pipeline: Pipeline, on_verdict=None, on_alert=None) -> ReplaySummary:
    """Feed every window of ``options`` through ``pipeline``; callbacks see each output."""
    from edge_agent.runtime.inputs import feature_records

    summary = ReplaySummary()
    for index, record in feature_records(options):
        verdict, alert = pipeline.process(record, index)
        summary.add(verdict, alert)
        if on_verdict:
            on_verdict(verdict)
        if alert is not None and on_alert:
            on_alert(alert)
    summary.baselines = {m: pipeline.baseline_coverage(m) for m in summary.windows}
    return summary


class Progress:
    """A line on standard error every few seconds, for people watching a long replay."""

    def __init__(self, enabled: bool, every_s: float = 2.0):
        self.enabled, self.every_s = enabled, every_s
        self.start = self.last = time.monotonic()
        self.windows = self.alerts = 0

    def tick(self, verdict) -> None:
        self.windows += 1
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            print(f"replay: {self.windows} windows, {self.alerts} alerts, at {verdict['ts']} "
                  f"({self.windows / (now - self.start):.0f} windows/s)", file=sys.stderr)


def replay_command(args) -> int:
    from edge_agent.runtime.inputs import InputOptions

    options = InputOptions.from_args(args)
    pipeline = Pipeline(detector_config(args), AlertPolicy())
    progress = Progress(enabled=not args.quiet)
    sink = None
    if args.jsonl:
        sink = sys.stdout if args.jsonl == "-" else open(args.jsonl, "w", encoding="utf-8")

    def on_verdict(verdict):
        progress.tick(verdict)
        if sink:
            sink.write(dumps(verdict) + "\n")

    def on_alert(alert):
        progress.alerts += 1
        if sink:
            sink.write(dumps({"kind": "alert", **alert}) + "\n")
        if sink is not sys.stdout:
            print(f"{alert['ts']}  {alert['severity'].upper():7s} {alert['summary']}")

    try:
        summary = run_replay(options, pipeline, on_verdict, on_alert)
    finally:
        if sink not in (None, sys.stdout):
            sink.close()
    report = sys.stderr if sink is sys.stdout else sys.stdout
    if not args.quiet or report is sys.stdout:
        for line in summary.lines():
            print(line, file=report)
    return 0
