"""From verdicts to alerts: severity from evidence, one alert per machine episode, words for operators.

Per channel, over its last ``persistence_n`` monitored windows:

* **WARNING** when ``persistence_k`` of them are anomalous: the learners see a
  statistically clear, persistent change (and some health indicator moved by
  at least ``min_change_ratio``). Early, and not yet an order to act.
* **ALARM** when some piece of evidence (:mod:`edge_agent.runtime.evidence`: a
  health indicator at ``alarm_ratio`` × its baseline and ``alarm_z`` spreads
  above it, ISO zone ``alarm_zone`` or worse, a bearing defect line at
  ``fault_line_ratio`` ×) was there in ``persistence_k`` of them. Evidence that
  persists is itself a clear anomaly, so the alarm does not wait for the
  learners' combined score (which weighs one indicator's rise against the
  others'). A score at the alarm level (``severe``) without evidence stays a
  WARNING, which says so; when the evidence arrives the episode escalates. A
  warning that falls due while evidence is building up waits for it (at most
  ``persistence_k - 1`` windows), so that one change pages once.

It steps down from ALARM to WARNING after ``clear_windows`` windows in a row
without persistent evidence, and from WARNING to NORMAL after
``clear_windows`` calm windows in a row: below ``clear_ratio`` × threshold, no
health indicator still changed by ``min_change_ratio``, no persistent evidence
(hysteresis: a score hovering at the threshold does not flap, and a machine that
settles at a new level is not "back to normal"). Stopped and baselining windows
are no evidence either way.

A machine's state is the worst of its channels': channels of one machine
that become anomalous together are one **episode**. An alert is raised when
the machine's state rises: the first opens the episode, an escalation is a new
alert of the same episode (same ``episode`` id), and a ``normal`` alert closes
it. The alert names the *leading* channel (the strongest evidence; for a
warning the highest score) and lists the others. At most
``cooldown_max_alerts`` alerts of one severity go out per machine within
``cooldown_s``: a genuine new escalation is never delayed by an earlier one,
while a flapping machine cannot storm the operators (further repeats are held
and counted, and go out when the window allows if the machine is still there).

All state is plain data (strings, numbers, lists, dicts), so it can be written
anywhere a checkpoint or an outbox record goes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from edge_agent.errors import UsageError
from edge_agent.models.verdict import Verdict
from edge_agent.runtime import feedback
from edge_agent.runtime.evidence import (ZONES, evidence_names, fault_lines, fmt, published,
                                         window_evidence)
from edge_agent.signal.features import feature_label, feature_unit

log = logging.getLogger(__name__)

STATES = ("normal", "warning", "alarm")
ALERT_SCHEMA = "edge-agent/alert/1"
_NAMESPACE = uuid.UUID("6c1f3f0e-3d5e-4b8a-9d0c-2f1d7a0e5b11")


@dataclass(frozen=True)
class AlertPolicy:
    """When verdicts become alerts (see module docstring; keys in docs/configuration.md)."""

    persistence_k: int = 3
    persistence_n: int = 5
    clear_windows: int = 10
    clear_ratio: float = 0.8
    cooldown_s: float = 3600.0
    cooldown_max_alerts: int = 3
    top_features: int = 3
    alarm_ratio: float = 2.0
    alarm_z: float = 3.0
    alarm_zone: str = "C"
    fault_line_ratio: float = 3.0
    evidence_features: tuple[str, ...] | None = None

    def __post_init__(self):
        if not 1 <= self.persistence_k <= self.persistence_n:
            raise UsageError("need 1 <= persistence_k <= persistence_n")
        if self.alarm_zone not in ("", *ZONES):
            raise UsageError(f"alarm_zone must be one of A, B, C, D or '' (no zone is evidence), "
                             f"got {self.alarm_zone!r}")
        if not (self.alarm_ratio > 1.0 and self.alarm_z >= 0.0 and self.fault_line_ratio > 1.0):
            raise UsageError("alarm_ratio and fault_line_ratio must be above 1, alarm_z at least 0")


class ChannelAlertState:
    """Persistence, evidence and hysteresis of one channel."""

    def __init__(self, policy: AlertPolicy):
        self.policy = policy
        self.state = "normal"
        #: [anomalous, severe, evidence keys] of the last ``persistence_n`` monitored windows
        self.recent: list[list] = []
        self.calm = 0  # consecutive calm windows (see the module docstring)
        self.mild = 0  # consecutive windows without persistent evidence
        self.evidence: dict[str, dict] = {}  # key -> latest entry of evidence still in `recent`
        self.waited = 0  # windows a due warning waited for evidence that was building up
        self.names: list[str] | None = None  # this channel's evidence features
        self.view: dict | None = None  # its latest window in words, while it is not normal
        self.zone_said = False  # the first monitored window in alarm_zone or worse was logged
        self.fleet_held = False  # its baseline differs from its fleet: never calm till confirmed

    def update(self, verdict: Verdict, evidence: list[dict] = ()) -> str:
        if verdict.phase != "monitoring":
            return self.state  # stopped or baselining: no evidence either way
        p = self.policy
        self.recent = (self.recent + [[verdict.anomalous, verdict.severe,
                                       [e["key"] for e in evidence]]])[-p.persistence_n:]
        live = {k for *_, keys in self.recent for k in keys}
        self.evidence = {k: e for k, e in {**self.evidence, **{e["key"]: e for e in evidence}}.items()
                         if k in live}
        persistent = self.persistent()
        calm = (verdict.score < p.clear_ratio * verdict.threshold and not persistent
                and verdict.magnitude < verdict.min_change_ratio and not self.fleet_held)
        self.calm = self.calm + 1 if calm else 0
        self.mild = 0 if persistent else self.mild + 1
        due = sum(a for a, _, _ in self.recent) >= p.persistence_k and self.state == "normal"
        waiting = due and bool(evidence) and self.waited < p.persistence_k - 1
        self.waited = self.waited + 1 if waiting else 0
        if persistent:
            self.state = "alarm"
        elif due and not waiting:
            self.state = "warning"
        elif self.state == "alarm" and self.mild >= p.clear_windows:
            self.state = "warning"
        elif self.state == "warning" and self.calm >= p.clear_windows:
            self.state = "normal"
        return self.state

    def persistent(self) -> list[dict]:
        """Evidence seen in ``persistence_k`` of the last windows, strongest first, each with
        the number of windows (``windows``) and its latest values."""
        counts: dict[str, int] = {}
        for *_, keys in self.recent:
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
        found = [{**self.evidence[k], "windows": n} for k, n in counts.items()
                 if n >= self.policy.persistence_k]
        return sorted(found, key=lambda e: -e["strength"])

    def reset(self) -> None:
        """Forget the evidence and start calm. A baseline held as differing from its fleet
        stays held: only fleet-confirm (or a re-baseline, which drops the channel) ends that."""
        held = self.fleet_held
        self.__init__(self.policy)
        self.fleet_held = held


class MachineAlerter:
    """Machine-level state, episodes, cooldown and alert construction.

    ``announced`` is what operators were last told. The machine's state rising
    above it raises an alert, unless ``cooldown_max_alerts`` alerts of that
    severity already went out within ``cooldown_s``: then it is held (and
    counted) and goes out as soon as the oldest of them leaves the window, if the
    machine is still there. Stepping down from alarm to warning is not
    announced; returning to normal is.
    """

    def __init__(self, machine: str, policy: AlertPolicy, agent_id: str = "edge-agent"):
        self.machine = machine
        self.policy = policy
        self.agent_id = agent_id
        self.channels: dict[str, ChannelAlertState] = {}
        self.state = "normal"
        self.announced = "normal"
        self.episode: str | None = None  # id of the episode operators were told of
        self.sent: dict[str, list[float]] = {}  # severity -> window times of recent alerts
        self.held = 0  # escalations held back by the cooldown (repeats not sent at once)
        self._holding = False

    def channel_state(self, channel: str) -> ChannelAlertState:
        if channel not in self.channels:
            self.channels[channel] = ChannelAlertState(self.policy)
        return self.channels[channel]

    def update(self, channel: str, verdict: Verdict, record, reference: dict,
               model_version: str, generation: int, spread: dict | None = None) -> dict | None:
        """Feed one channel's verdict; return an alert when operators must be told.

        ``reference`` and ``spread`` are the medians and robust log10 spreads of the
        channel's baseline (empty before it is learned).
        """
        ch = self.channel_state(channel)
        evidence = []
        if verdict.phase == "monitoring" and reference:
            if ch.names is None:
                ch.names = evidence_names(record.features, self.policy.evidence_features)
            evidence = window_evidence(record.features, ch.names, reference, spread or {},
                                       self.policy)
            # The zone says how bad a level is, not that it changed: a machine that runs in
            # zone C as it was commissioned (or is given the wrong ISO group) would page on
            # every window; the first monitored window in such a zone is said once, and the
            # zone is evidence only where the learners also see a change.
            zoned = [e for e in evidence if e["kind"] == "iso_zone"]
            if zoned and not ch.zone_said:
                ch.zone_said = True
                log.warning("%s/%s is in ISO 20816-3 zone %s (its first monitored window "
                            "there): the zone counts as evidence in windows the learners find "
                            "anomalous", self.machine, channel, zoned[0]["zone"],
                            extra={"event": "iso_zone_reached",
                                                     "machine": self.machine, "channel": channel,
                                                     "zone": zoned[0]["zone"]})
            if not verdict.anomalous:
                evidence = [e for e in evidence if e["kind"] != "iso_zone"]
        verdict, evidence = feedback.tolerate(self, channel, verdict, evidence, record.start_s)
        ch.update(verdict, evidence)
        if verdict.phase == "monitoring" and (ch.state != "normal" or verdict.anomalous):
            severe = sum(s for _, s, _ in ch.recent) >= self.policy.persistence_k
            ch.view = describe_window(self.policy, verdict, record, reference, model_version,
                                      generation, severe)
        elif ch.state == "normal":
            ch.view = None
        self.state = max((c.state for c in self.channels.values()), key=STATES.index)
        if self.state == "normal" and feedback.held(self):
            self.state = self.announced  # confirmed by an operator: open until maintenance
        if self.state == self.announced or (self.state != "normal" and
                                            STATES.index(self.state) < STATES.index(self.announced)):
            self._holding = False
            return None
        recent = self.sent.setdefault(self.state, [])
        recent[:] = [t for t in recent if record.start_s - t < self.policy.cooldown_s]
        if self.state != "normal" and len(recent) >= self.policy.cooldown_max_alerts:
            self.held += not self._holding
            self._holding = True
            return None
        self._holding = False
        previous, self.announced = self.announced, self.state
        recent.append(record.start_s)
        if previous == "normal":
            self.episode = alert_id(self.agent_id, self.machine, "episode", record.start_s,
                                    generation)
        lead, others = self.leading(channel)
        view = self.channels[lead].view if lead in self.channels else None
        if view is None or self.state == "normal":
            view = describe_window(self.policy, verdict, record, reference, model_version,
                                   generation)
        evidence = self.channels[lead].persistent() if self.state == "alarm" else []
        alert = feedback.remember(self, build_alert(self, self.state, previous, lead,
                                                    [lead] + others, view, evidence, record),
                                  record.start_s)
        if self.state == "normal":
            self.episode = None
        return alert

    def leading(self, channel: str) -> tuple[str, list[str]]:
        """The channel an alert names (strongest evidence, else the highest score against its
        threshold, among channels in the machine's state) and the others not normal."""
        def strength(name):
            c = self.channels[name]
            best = max((e["strength"] for e in c.persistent()), default=0.0)
            score = (c.view or {}).get("score_ratio") or 0.0
            return (best, score, name == channel)

        if self.state == "normal":
            return channel, []
        candidates = [n for n, c in self.channels.items() if c.state == self.state] or [channel]
        lead = max(sorted(candidates), key=strength)
        others = sorted(n for n, c in self.channels.items() if c.state != "normal" and n != lead)
        return lead, others

    def false_alarm(self, channel: str, record) -> dict | None:
        """An operator called the open episode a false alarm: every channel starts calm and
        a ``normal`` alert (raised by ``record``, the machine's latest window) closes it."""
        views = [c.view for c in self.channels.values() if c.view] + [None]
        for c in self.channels.values():
            c.reset()
        self.state = "normal"
        if self.announced == "normal":
            return None
        previous, self.announced = self.announced, "normal"
        view = views[0] or {"score": None, "threshold": None, "alarm_threshold": None,
                            "regime": None, "features": [], "fault_lines": [],
                            "iso_20816": None, "model_version": "unknown", "generation": 0}
        alert = build_alert(self, "normal", previous, channel, [channel], view, [], record)
        alert["summary"] += "; an operator labelled it a false alarm"
        self.episode = None
        return feedback.remember(self, alert, record.start_s)

    def reset(self) -> None:
        """Re-baseline: channel evidence is forgotten; what operators were told stays."""
        self.channels.clear()
        self.state = "normal"


def alert_id(agent_id: str, machine: str, severity: str, start_s: float, generation: int) -> str:
    """Deterministic id: the same window replayed after a crash gives the same id.

    >>> alert_id("a", "m", "alarm", 12.5, 0) == alert_id("a", "m", "alarm", 12.5, 0)
    True
    """
    return str(uuid.uuid5(_NAMESPACE, f"{agent_id}/{machine}/{severity}/{start_s:.6f}/{generation}"))


def describe_feature(c) -> dict:
    """A contribution as a JSON object with a sentence fragment for people."""
    unit = feature_unit(c.feature)
    entry = {"feature": c.feature, "label": feature_label(c.feature), "value": c.value,
             "baseline": c.baseline, "unit": unit, "z": c.z}
    if c.baseline > 0 and c.value > 0:
        entry["ratio"] = c.value / c.baseline
    suffix = f" {unit}" if unit else ""
    text = f"{entry['label']} {fmt(c.value)}{suffix} (baseline {fmt(c.baseline)}"
    if entry.get("ratio", 1) >= 1.5 or entry.get("ratio", 1) <= 0.67:
        text += f", ×{entry['ratio']:.1f}"
    entry["text"] = text + ")"
    return entry


def describe_window(policy: AlertPolicy, verdict: Verdict, record, reference: dict,
                    model_version: str, generation: int, severe: bool = False) -> dict:
    """What an alert says about one channel's window (plain data); ``severe``: the channel's
    score was at the alarm level in ``persistence_k`` of its last windows."""
    features = record.features
    zone = features.get("iso_zone")
    iso = None
    if zone in ZONES and "velocity_rms_mm_s" in features:
        iso = {"zone": zone, "velocity_rms_mm_s": features["velocity_rms_mm_s"]}
    ratio = (verdict.score / verdict.threshold if verdict.score is not None and verdict.threshold
             else None)
    return {"score": verdict.score,
            "threshold": verdict.threshold, "alarm_threshold": verdict.alarm_threshold,
            "score_ratio": ratio, "regime": verdict.regime,
            "features": [describe_feature(c) for c in verdict.contributions[:policy.top_features]],
            "fault_lines": fault_lines(features, reference, policy.fault_line_ratio),
            "iso_20816": iso, "model_version": model_version, "generation": generation,
            "severe": severe}


#: Pieces of evidence a summary names, and an alert document lists (the strongest).
SUMMARY_EVIDENCE = 3
DOCUMENT_EVIDENCE = 8


def summary(machine: str, severity: str, previous: str, channel: str, others: list[str],
            view: dict, evidence: list[dict]) -> str:
    """The alert's line for people: evidence first (the strongest three), then what the
    learners saw; a warning whose score is at the alarm level says so.

    >>> view = {"features": [], "fault_lines": [], "iso_20816": {"zone": "C",
    ...         "velocity_rms_mm_s": 4.1}}
    >>> ev = [{"kind": "feature", "feature": "velocity_rms_mm_s",
    ...        "text": "velocity RMS 4.1 mm/s, 2.3× baseline"},
    ...       {"kind": "iso_zone", "text": "velocity RMS 4.1 mm/s, ISO 20816 zone C"}]
    >>> summary("pump-7", "alarm", "warning", "de", [], view, ev)
    'pump-7 ALARM on de: velocity RMS 4.1 mm/s, 2.3× baseline, ISO 20816 zone C'
    """
    if severity == "normal":
        return f"{machine}: back to normal (was {previous})"
    evidence = [e for e in evidence if e["kind"] != "iso_zone"][:SUMMARY_EVIDENCE] + \
        [e for e in evidence if e["kind"] == "iso_zone"]
    parts = [e["text"] for e in evidence if e["kind"] != "iso_zone"]
    if severity == "warning" and view.get("severe"):
        parts.append("score at alarm level, no evidence of a ×2 change yet")
    named = {e.get("feature") for e in evidence} | {e.get("fault") for e in evidence}
    lines = [line for line in view["fault_lines"] if line["fault"] not in named]
    if lines:
        parts += [line["text"] for line in lines
                  if line["prominence_ratio"] >= 0.5 * lines[0]["prominence_ratio"]][:2]
    parts += [f["text"] for f in view["features"] if f["feature"] not in named]
    iso = view["iso_20816"]
    if iso is not None:
        if "velocity_rms_mm_s" in named or any(f["feature"] == "velocity_rms_mm_s"
                                               for f in view["features"]):
            tail = f"ISO 20816 zone {iso['zone']}"
        else:
            tail = f"velocity RMS {fmt(iso['velocity_rms_mm_s'])} mm/s, ISO 20816 zone {iso['zone']}"
        if parts and parts[0].startswith("velocity RMS") and tail.startswith("ISO"):
            parts[0] += ", " + tail  # "velocity RMS 4.1 mm/s, 2.3× baseline, ISO 20816 zone C"
        else:
            parts.append(tail)
    also = [f"also {', '.join(others)}"] if others else []
    return f"{machine} {severity.upper()} on {channel}: " + "; ".join(parts + also)


def build_alert(alerter: MachineAlerter, severity: str, previous: str, channel: str,
                channels: list[str], view: dict, evidence: list[dict], record) -> dict:
    """The alert document (``edge-agent/alert/1``) raised by ``record``'s window: the
    leading ``channel``'s latest window (``view``) and persistent ``evidence``."""
    from edge_agent.frame import iso_time

    return {
        "schema": ALERT_SCHEMA,
        "id": alert_id(alerter.agent_id, alerter.machine, severity, record.start_s,
                       view["generation"]),
        "episode": alerter.episode,
        "agent": alerter.agent_id,
        "machine": alerter.machine,
        "channel": channel,
        "channels": channels,
        "severity": severity,
        "previous_severity": previous,
        "ts": iso_time(record.start_s),
        "score": view["score"],
        "threshold": view["threshold"],
        "alarm_threshold": view["alarm_threshold"],
        "summary": summary(alerter.machine, severity, previous, channel, channels[1:], view,
                           evidence),
        "evidence": [published(e) for e in evidence[:DOCUMENT_EVIDENCE]],
        "features": view["features"],
        "fault_lines": view["fault_lines"],
        "iso_20816": view["iso_20816"],
        "regime": view["regime"],
        "source": record.source,
        "model_version": view["model_version"],
        "held_by_cooldown": alerter.held,
    }
