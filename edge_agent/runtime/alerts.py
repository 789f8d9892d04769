"""From verdicts to alerts: persistence, hysteresis, cooldown, and words for operators.

Per channel, the state moves NORMAL → WARNING when ``k`` of the last ``n``
windows are anomalous and → ALARM when ``k`` of the last ``n`` are above the
alarm threshold. It steps down from ALARM to WARNING after ``clear_windows``
windows in a row without a severe one, and from WARNING to NORMAL after
``clear_windows`` windows in a row below ``clear_ratio`` × threshold
(hysteresis: a score hovering at the threshold does not flap).

A machine's state is the worst of its channels'. An alert is raised when the
machine's state rises, and a ``normal`` alert says when it has cleared. At most
``cooldown_max_alerts`` alerts of one severity go out per machine within
``cooldown_s``: a genuine new escalation is never delayed by an earlier one,
while a flapping machine cannot storm the operators (further repeats are held
and counted, and go out when the window allows if the machine is still there).
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

from edge_agent.models.detector import Verdict
from edge_agent.signal.bearing import FAULTS
from edge_agent.signal.features import feature_label, feature_unit

STATES = ("normal", "warning", "alarm")
ALERT_SCHEMA = "edge-agent/alert/1"
_NAMESPACE = uuid.UUID("6c1f3f0e-3d5e-4b8a-9d0c-2f1d7a0e5b11")


@dataclass(frozen=True)
class AlertPolicy:
    """When verdicts become alerts (see module docstring)."""

    persistence_k: int = 3
    persistence_n: int = 5
    clear_windows: int = 10
    clear_ratio: float = 0.8
    cooldown_s: float = 3600.0
    cooldown_max_alerts: int = 3
    top_features: int = 3
    fault_line_ratio: float = 3.0


class ChannelAlertState:
    """Persistence and hysteresis of one channel."""

    def __init__(self, policy: AlertPolicy):
        self.policy = policy
        self.state = "normal"
        self.recent: deque[tuple[bool, bool]] = deque(maxlen=policy.persistence_n)
        self.calm = 0  # consecutive windows below the clearing level
        self.mild = 0  # consecutive windows without a severe score

    def update(self, verdict: Verdict) -> str:
        if verdict.phase != "monitoring":
            return self.state  # stopped or baselining: no evidence either way
        p = self.policy
        self.recent.append((verdict.anomalous, verdict.severe))
        self.calm = self.calm + 1 if verdict.score < p.clear_ratio * verdict.threshold else 0
        self.mild = 0 if verdict.severe else self.mild + 1
        if sum(s for _, s in self.recent) >= p.persistence_k:
            self.state = "alarm"
        elif sum(a for a, _ in self.recent) >= p.persistence_k and self.state == "normal":
            self.state = "warning"
        elif self.state == "alarm" and self.mild >= p.clear_windows:
            self.state = "warning"
        elif self.state == "warning" and self.calm >= p.clear_windows:
            self.state = "normal"
        return self.state

    def reset(self) -> None:
        self.__init__(self.policy)


class MachineAlerter:
    """Machine-level state, cooldown and alert construction.

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
        self.sent: dict[str, deque[float]] = {}  # severity -> window times of recent alerts
        self.held = 0  # escalations held back by the cooldown (repeats not sent at once)
        self._holding = False

    def channel_state(self, channel: str) -> ChannelAlertState:
        if channel not in self.channels:
            self.channels[channel] = ChannelAlertState(self.policy)
        return self.channels[channel]

    def update(self, channel: str, verdict: Verdict, record, reference: dict,
               model_version: str, generation: int) -> dict | None:
        """Feed one channel's verdict; return an alert when operators must be told."""
        self.channel_state(channel).update(verdict)
        self.state = max((c.state for c in self.channels.values()), key=STATES.index)
        if self.state == self.announced or (self.state != "normal" and
                                            STATES.index(self.state) < STATES.index(self.announced)):
            self._holding = False
            return None
        recent = self.sent.setdefault(self.state, deque())
        while recent and record.start_s - recent[0] >= self.policy.cooldown_s:
            recent.popleft()
        if self.state != "normal" and len(recent) >= self.policy.cooldown_max_alerts:
            self.held += not self._holding
            self._holding = True
            return None
        self._holding = False
        previous, self.announced = self.announced, self.state
        recent.append(record.start_s)
        channels = sorted(ch for ch, c in self.channels.items() if c.state == self.state)
        return build_alert(self, self.state, previous, channel, channels or [channel], verdict,
                           record, reference, model_version, generation)

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


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def describe_feature(c, top_unit=True) -> dict:
    """A contribution as a JSON object with a sentence fragment for people."""
    unit = feature_unit(c.feature)
    entry = {"feature": c.feature, "label": feature_label(c.feature), "value": c.value,
             "baseline": c.baseline, "unit": unit, "z": c.z}
    if c.baseline > 0 and c.value > 0:
        entry["ratio"] = c.value / c.baseline
    suffix = f" {unit}" if unit else ""
    text = f"{entry['label']} {_fmt(c.value)}{suffix} (baseline {_fmt(c.baseline)}"
    if entry.get("ratio", 1) >= 1.5 or entry.get("ratio", 1) <= 0.67:
        text += f", ×{entry['ratio']:.1f}"
    entry["text"] = text + ")"
    return entry


def fault_lines(features: dict, reference: dict, min_ratio: float) -> list[dict]:
    """Bearing defect lines that rose ``min_ratio`` times or more, most distinctive first.

    A line is named only when both its envelope amplitude and its prominence
    over the local envelope floor rose: broadband impacting lifts every line's
    amplitude, and only the defect's own line stands out from the floor.
    """
    lines = []
    for fault in FAULTS:
        values = [features.get(f"env_{fault}_g"), reference.get(f"env_{fault}_g"),
                  features.get(f"env_{fault}_ratio"), reference.get(f"env_{fault}_ratio"),
                  features.get(f"{fault}_hz")]
        if not all(isinstance(v, float) and v == v for v in values) or min(values[1], values[3]) <= 0:
            continue
        value, base, prominence, base_prominence, freq = values
        ratio, rise = value / base, prominence / base_prominence
        if ratio >= min_ratio and rise >= min_ratio:
            lines.append({"fault": fault, "frequency_hz": freq, "envelope_g": value,
                          "baseline_g": base, "ratio": ratio, "prominence_ratio": rise,
                          "text": f"{fault.upper()} {freq:.0f} Hz envelope ×{ratio:.0f}"})
    return sorted(lines, key=lambda line: -line["prominence_ratio"])


def build_alert(alerter: MachineAlerter, severity, previous, channel, channels, verdict,
                record, reference, model_version, generation) -> dict:
    from edge_agent.frame import iso_time

    policy = alerter.policy
    features = record.features
    top = [describe_feature(c) for c in verdict.contributions[:policy.top_features]]
    lines = fault_lines(features, reference, policy.fault_line_ratio)
    named = [line["text"] for line in lines
             if line["prominence_ratio"] >= 0.5 * lines[0]["prominence_ratio"]]
    parts = named[:2] + [t["text"] for t in top]
    zone = features.get("iso_zone")
    iso = None
    if zone in ("A", "B", "C", "D") and "velocity_rms_mm_s" in features:
        iso = {"zone": zone, "velocity_rms_mm_s": features["velocity_rms_mm_s"]}
        if any(t["feature"] == "velocity_rms_mm_s" for t in top):
            parts.append(f"ISO 20816 zone {zone}")
        else:
            parts.append(f"velocity RMS {_fmt(features['velocity_rms_mm_s'])} mm/s, "
                         f"ISO 20816 zone {zone}")
    if severity == "normal":
        summary = f"{alerter.machine}: back to normal (was {previous})"
    else:
        summary = f"{alerter.machine} {severity.upper()}: " + "; ".join(parts)
    return {
        "schema": ALERT_SCHEMA,
        "id": alert_id(alerter.agent_id, alerter.machine, severity, record.start_s, generation),
        "agent": alerter.agent_id,
        "machine": alerter.machine,
        "channel": channel,
        "channels": channels,
        "severity": severity,
        "previous_severity": previous,
        "ts": iso_time(record.start_s),
        "score": verdict.score,
        "threshold": verdict.threshold,
        "alarm_threshold": verdict.alarm_threshold,
        "summary": summary,
        "features": top,
        "fault_lines": lines,
        "iso_20816": iso,
        "regime": verdict.regime,
        "source": record.source,
        "model_version": model_version,
        "held_by_cooldown": alerter.held,
    }
