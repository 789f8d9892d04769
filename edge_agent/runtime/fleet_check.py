"""A new baseline compared with its fleet: is what the machine learned as normal healthy?

When a machine with a fleet prior has fitted its own baseline, its healthy medians
are judged against the fleet's levels as a window would be judged against a
baseline, with the alarm-grade evidence rules (:mod:`edge_agent.runtime.evidence`):
a health indicator at ``alarm_ratio`` × the fleet's level and ``alarm_z`` widened
spreads above it, ISO 20816-3 zone ``alarm_zone`` or worse, a bearing defect line
``fault_line_ratio`` × the fleet's. Any of them and the baseline *differs from its
fleet*: a WARNING says so, and the machine stays judged by its fleet until an
operator confirms the baseline (``cmd/fleet-confirm``), so a machine installed
damaged is not learned as healthy.
"""

from __future__ import annotations

import logging

from edge_agent.models.prior_monitor import FLEET_FEATURES
from edge_agent.models.verdict import Verdict
from edge_agent.runtime.alerts import STATES, alert_id, build_alert, describe_window
from edge_agent.runtime.evidence import evidence_names, window_evidence

log = logging.getLogger(__name__)

#: How the alert's summary says it, after the machine and channel.
DIFFERS = "differs from its fleet"


def compare_with_fleet(model, policy, zone: str | None = None) -> list[dict]:
    """Alarm-grade differences between a fitted regime's baseline and its fleet prior
    (evidence entries, strongest first; empty: it looks like its fleet). ``zone`` is the
    ISO 20816-3 zone of the window that completed the baseline (the machine's own group and
    foundation decide it); the velocity judged is the baseline's median."""
    monitor = model.prior_monitor
    reference, spread = monitor.reference()
    own = {k: float(v) for k, v in model.reference.items()}
    if zone and "velocity_rms_mm_s" in own:
        own["iso_zone"] = zone
    names = [n for n in evidence_names(own, policy.evidence_features)
             if n in reference and n in evidence_names([n], FLEET_FEATURES)]
    return window_evidence(own, names, reference, spread, policy)


def check_baseline(pipeline, machine: str, channel: str, model, record, generation: int,
                   model_version: str) -> dict | None:
    """Accept ``model``'s new baseline, or hold it and return the WARNING alert (``None``
    when the machine's operators already hear of a warning or alarm; the hold stands)."""
    policy = pipeline.policy_for(machine)
    differences = compare_with_fleet(model, policy, record.features.get("iso_zone"))
    if not differences:
        model.accepted = True
        log.info("baseline agrees with the fleet prior", extra={
            "event": "fleet_baseline_accepted", "machine": machine, "channel": channel,
            "prior_version": model.prior_monitor.version})
        return None
    model.accepted = False
    texts = [e["text"].replace("baseline", "fleet") for e in differences[:3]]
    model.fleet_differences = texts
    log.warning("baseline differs from its fleet: held until an operator confirms it", extra={
        "event": "fleet_baseline_held", "machine": machine, "channel": channel,
        "differences": texts, "prior_version": model.prior_monitor.version})
    alerter = pipeline.alerter(machine)
    ch = alerter.channel_state(channel)
    ch.fleet_held = True  # not back to normal while the baseline waits for an operator
    if alerter.announced != "normal":
        return None
    ch.state = "warning"
    alerter.state = max(alerter.state, "warning", key=STATES.index)
    verdict = Verdict("monitoring", 1.0, None, None, None, None)
    view = describe_window(policy, verdict, record, model.prior_monitor.reference()[0],
                           model_version, generation)
    ch.view = view
    alerter.announced = "warning"
    alerter.episode = alert_id(alerter.agent_id, machine, "episode", record.start_s, generation)
    alerter.sent.setdefault("warning", []).append(record.start_s)
    alert = build_alert(alerter, "warning", "normal", channel, [channel], view, [], record)
    alert["summary"] = (f"{machine} WARNING on {channel}: {DIFFERS}: " + "; ".join(texts)
                        + "; its baseline is not taken as normal until an operator confirms it")
    return alert
