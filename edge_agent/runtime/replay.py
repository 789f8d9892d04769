"""``edge-agent replay``: recordings through the whole pipeline, no network."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from edge_agent.errors import UsageError
from edge_agent.runtime.alerts import AlertPolicy
from edge_agent.jsonl import dumps
from edge_agent.models.detector import DetectorConfig
from edge_agent.models.collection import coverage_text
from edge_agent.runtime.pipeline import Pipeline
from edge_agent.runtime.windowing import MIN_WINDOW_SAMPLES


@dataclass
class ReplaySummary:
    windows: Counter = field(default_factory=Counter)  # per machine
    states: dict = field(default_factory=dict)  # machine -> Counter of verdict states
    rejected: dict = field(default_factory=dict)  # machine -> Counter of rejection reasons
    alerts: list = field(default_factory=list)
    baselines: dict = field(default_factory=dict)  # machine -> channel -> regime -> coverage
    basis: dict = field(default_factory=dict)  # machine -> Counter of "prior" / "own" verdicts
    final: dict = field(default_factory=dict)  # machine -> its state at the end of the replay

    def add(self, verdict: dict, alert: dict | None) -> None:
        machine = verdict["machine"]
        self.windows[machine] += 1
        self.states.setdefault(machine, Counter())[verdict["state"]] += 1
        if verdict["state"] == "rejected":
            self.rejected.setdefault(machine, Counter())[verdict["reason"]] += 1
        if alert is not None:
            self.alerts.append(alert)
        if "basis" in verdict:
            self.basis.setdefault(machine, Counter())[verdict["basis"]] += 1

    def lines(self) -> list[str]:
        out = []
        for machine in sorted(self.windows):
            states = ", ".join(f"{k} {v}" for k, v in sorted(self.states[machine].items()))
            alerts = [a for a in self.alerts if a["machine"] == machine]
            first = next((a for a in alerts if a["severity"] != "normal"), None)
            tail = f"; first {first['severity']} at {first['ts']}" if first else ""
            final = f"; final state {self.final[machine]}" if machine in self.final else ""
            out.append(f"{machine}: {self.windows[machine]} windows ({states}); "
                       f"{len(alerts)} alerts{tail}{final}")
            if machine in self.basis:
                b = self.basis[machine]
                out.append(f"  judged against the fleet prior: {b['prior']} windows, against its "
                           f"own baseline: {b['own']} windows")
            if machine in self.rejected:
                reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.rejected[machine].items()))
                out.append(f"  rejected windows (never scored nor learned): {reasons}")
            for channel, regimes in sorted(self.baselines.get(machine, {}).items()):
                for regime, c in regimes.items():
                    unfinished = ("; never monitored: give a longer recording or a shorter "
                                  "baseline" if c.get("complete") is False else "")
                    out.append(f"  baseline {channel}{'' if regime == 'any' else ' ' + regime}: "
                               f"{coverage_text(c)}{unfinished}")
        return out

    @property
    def accepted_windows(self) -> int:
        return sum(self.windows.values()) - sum(sum(c.values()) for c in self.rejected.values())


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
    summary.final = {m: final_state(pipeline, m) for m in summary.windows}
    return summary


def final_state(pipeline: Pipeline, machine: str) -> str:
    """What the machine was at the end: its alert state once monitored, else ``baselining``
    (or ``no_windows`` when no window was learned or scored: all rejected, or never running)."""
    alerter = pipeline.alerters.get(machine)
    models = [m for (name, _), d in pipeline.detectors.items() if name == machine
              for m in d.models.values()]
    if alerter is not None and (alerter.state != "normal" or any(m.fitted for m in models)):
        return alerter.state
    return "baselining" if models else "no_windows"


def alert_line(alert: dict) -> str:
    """The printed line of an alert: time, severity, machine/channel, what it says.

    >>> alert_line({"ts": "1970-01-01T00:00:03.700Z", "severity": "alarm", "machine": "m1",
    ...             "channel": "de", "summary": "m1 ALARM on de: BPFI 162 Hz envelope ×135"})
    '1970-01-01T00:00:03.700Z  ALARM    m1/de  BPFI 162 Hz envelope ×135'
    """
    machine, severity, channel = alert["machine"], alert["severity"], alert.get("channel")
    text = alert["summary"]
    for lead in (f"{machine} {severity.upper()} on {channel}: ", f"{machine}: "):
        if text.startswith(lead):
            text = text[len(lead):]
            break
    where = f"{machine}/{channel}" if channel else machine
    return f"{alert['ts']}  {severity.upper():<7}  {where}  {text}"


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


class Rejections:
    """Rejected windows said on standard error: the first few of each reason, then a count."""

    SAY_EACH = 5

    def __init__(self, out=sys.stderr):
        self.out, self.said = out, Counter()

    def __call__(self, verdict: dict) -> None:
        reason = verdict["reason"]
        self.said[reason] += 1
        if self.said[reason] <= self.SAY_EACH:
            more = " (further ones are only counted)" if self.said[reason] == self.SAY_EACH else ""
            print(f"replay: {verdict['machine']}/{verdict['channel']} window at {verdict['ts']} "
                  f"({verdict['source']}) rejected, {reason}: {verdict['detail']}{more}",
                  file=self.out)


def _open_sink(path: str):
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--jsonl {path}: cannot write it ({exc.strerror}); give a file in an "
                         f"existing, writable directory, or '-' for standard output") from None


def replay_command(args, prior=None) -> int:
    """``edge-agent replay``; ``prior``: a verified fleet prior for every machine replayed."""
    from edge_agent.runtime.inputs import InputOptions

    options = InputOptions.from_args(args)
    pipeline = Pipeline(detector_config(args), AlertPolicy())
    pipeline.default_prior = prior
    progress = Progress(enabled=not args.quiet)
    sink = _open_sink(args.jsonl) if args.jsonl else None
    say_rejected = Rejections()

    def on_verdict(verdict):
        progress.tick(verdict)
        if verdict["state"] == "rejected":
            say_rejected(verdict)
        if sink:
            sink.write(dumps(verdict) + "\n")

    def on_alert(alert):
        progress.alerts += 1
        if sink:
            sink.write(dumps({"kind": "alert", **alert}) + "\n")
        if sink is not sys.stdout:
            print(alert_line(alert))

    try:
        summary = run_replay(options, pipeline, on_verdict, on_alert)
    finally:
        if sink not in (None, sys.stdout):
            sink.close()
    report = sys.stderr if sink is sys.stdout else sys.stdout
    if not args.quiet or report is sys.stdout:
        for line in summary.lines():
            print(line, file=report)
    if not summary.accepted_windows:
        what = "no window" if not summary.windows else "every window was rejected (see above)"
        raise UsageError(f"nothing to analyse in {', '.join(map(str, options.recordings))}: "
                         f"{what}; a window is {options.window_s:g} s, and at least "
                         f"{MIN_WINDOW_SAMPLES} samples")
    return 0
