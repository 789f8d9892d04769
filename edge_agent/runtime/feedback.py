"""Operators' labels on alerts, and what the agent learns from them.

An operator labels an alert it raised (``…/<machine>/cmd/feedback``, or
``edge-agent feedback``) as one of :data:`LABELS`:

* ``false_alarm``: the machine goes back to normal at once (a ``normal`` alert closes
  the episode, saying so), and the evidence that triggered the alert gets a
  **tolerance**: on the alert's leading channel (whose score and evidence it reported),
  a window whose score is no higher than ``SCORE_MARGIN`` × the labelled alert's
  (against the threshold) is not anomalous,
  evidence no stronger than ``EVIDENCE_MARGIN`` × what the alert reported is not
  evidence, and windows scoring up to the tolerated score (never above the alarm
  threshold) may be learned from. The tolerance is **bounded**: the score by what the
  operator saw, evidence never above ``MAX_TOLERANCE`` × its configured limit (so an
  ALARM, which needs evidence, comes back for a fault that grows past that), at most
  :data:`MAX_TOLERANCES` channels; and
  it **decays**: its excess over the configured limits halves every ``HALF_LIFE_S`` of
  the machine's time, so a developing fault, which keeps getting worse, escalates
  through it, and the same level weeks later is judged afresh.
* ``confirmed``: the episode is held open: no automatic back-to-normal until
  ``maintenance_done``.
* ``maintenance_done``: the machine re-baselines (as ``cmd/rebaseline``), the hold and
  the tolerances end.

A label names an alert by id; the machine's alerter remembers the ids of its last
:data:`MAX_ALERTS` alerts. A label is refused, with a reason counted in the agent status
(:data:`REASONS`), when it is not a feedback document, names no alert this agent raised
for the machine of the topic, or an unknown label. The same label on the same alert again
is a repeat: acknowledged, no effect (delivery is at least once). Every accepted label is
kept (the last :data:`MAX_LABELS`) in the alerter's state, which is checkpointed and
committed with each alert; the machine status lists them and the machine's next alerts
carry the latest.

All state is plain data on the alerter (``alerter.feedback``), so it goes wherever the
alert state goes (:func:`edge_agent.runtime.state.encode_state`).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from edge_agent.runtime.evidence import ZONES

LABELS = ("false_alarm", "confirmed", "maintenance_done")
#: Why a feedback message was refused (counted in the agent status's ``rejected``).
REASONS = ("bad_feedback", "bad_label", "unknown_alert", "wrong_machine")
FEEDBACK_SCHEMA = "edge-agent/feedback/1"
MAX_ALERTS = 64  # alerts per machine a label may name
MAX_LABELS = 32  # labels kept per machine
MAX_TOLERANCES = 8  # channels with a tolerance per machine
MAX_NOTE_CHARS = 500
MAX_USER_CHARS = 64
SCORE_MARGIN = 1.25  # a tolerated score: up to this × the labelled alert's, against threshold
EVIDENCE_MARGIN = 1.5  # tolerated evidence: up to this × what the labelled alert reported
MAX_TOLERANCE = 3.0  # never more than this × a configured evidence limit is tolerated
HALF_LIFE_S = 7 * 86400.0  # the tolerance's excess over the limits halves this often
ALERT_LABELS = 3  # latest labels an alert carries
_ID_RE = re.compile(r"[0-9a-f-]{36}\Z")


class FeedbackRefused(ValueError):
    """A label that is refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse(doc, machine: str) -> dict:
    """The feedback document ``doc`` for ``machine`` checked: ``{alert_id, label, note, user}``.

    >>> parse({"alert_id": "0a2eb43e-641b-5294-a920-0f69f2bf5f71", "label": "confirmed",
    ...        "user": "ana"}, "pump-7")["label"]
    'confirmed'
    >>> parse({"alert_id": "0a2eb43e-641b-5294-a920-0f69f2bf5f71", "label": "ok"}, "pump-7")
    Traceback (most recent call last):
    ...
    edge_agent.runtime.feedback.FeedbackRefused: label 'ok' is not one of false_alarm, confirmed, maintenance_done
    """
    if not isinstance(doc, dict):
        raise FeedbackRefused("bad_feedback", "not a JSON object")
    if doc.get("schema", FEEDBACK_SCHEMA) != FEEDBACK_SCHEMA:
        raise FeedbackRefused("bad_feedback", f"schema {str(doc.get('schema'))[:40]!r}, "
                                              f"expected {FEEDBACK_SCHEMA}")
    unknown = sorted(set(doc) - {"schema", "alert_id", "label", "note", "user", "machine", "ts"})
    if unknown:
        raise FeedbackRefused("bad_feedback", f"unknown member(s) {', '.join(unknown)[:80]}")
    alert_id, label = doc.get("alert_id"), doc.get("label")
    if not isinstance(alert_id, str) or not _ID_RE.match(alert_id):
        raise FeedbackRefused("bad_feedback", "alert_id must be an alert's id (a UUID)")
    if label not in LABELS:
        raise FeedbackRefused("bad_label", f"label {str(label)[:40]!r} is not one of "
                                           f"{', '.join(LABELS)}")
    if doc.get("machine") not in (None, machine):
        raise FeedbackRefused("wrong_machine", f"the document names {str(doc['machine'])[:40]!r}, "
                                               f"the topic {machine!r}")
    out = {"alert_id": alert_id, "label": label}
    for key, limit in (("note", MAX_NOTE_CHARS), ("user", MAX_USER_CHARS)):
        value = doc.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= limit):
            raise FeedbackRefused("bad_feedback", f"{key} must be text of at most {limit} "
                                                  f"characters")
        if value:
            out[key] = value
    return out


def state(alerter) -> dict:
    """The alerter's feedback state, made on first use (older checkpoints have none)."""
    fb = getattr(alerter, "feedback", None)
    if fb is None:
        fb = alerter.feedback = {"alerts": [], "labels": [], "tolerance": {}, "held": None,
                                 "last_s": None}
    return fb


def remember(alerter, alert: dict, record_start_s: float) -> dict:
    """Keep what a label on ``alert`` needs; attach the machine's latest labels to it."""
    fb = state(alerter)
    strengths = {e.get("feature") or e.get("fault") or e["kind"]: e.get("ratio")
                 for e in alert["evidence"] if e.get("ratio") is not None}
    ratio = (alert["score"] / alert["threshold"]
             if alert.get("score") is not None and alert.get("threshold") else None)
    # the worst ISO zone it showed, as an index (a zone has no ratio to tolerate up to)
    zones = [ZONES.index(e["zone"]) for e in alert["evidence"]
             if e["kind"] == "iso_zone" and e.get("zone") in ZONES]
    fb["alerts"] = (fb["alerts"] + [{
        "id": alert["id"], "episode": alert["episode"], "severity": alert["severity"],
        "zone": max(zones, default=None),
        "ts_s": record_start_s, "channels": list(alert["channels"]), "score_ratio": ratio,
        "alarm_ratio": (alert["alarm_threshold"] / alert["threshold"]
                        if alert.get("alarm_threshold") and alert.get("threshold") else None),
        "evidence": strengths}])[-MAX_ALERTS:]
    if fb["labels"]:
        alert["feedback"] = [dict(label) for label in fb["labels"][-ALERT_LABELS:]]
    return alert


def find(alerter, alert_id: str) -> dict | None:
    """The remembered alert ``alert_id`` of this machine, if any."""
    return next((a for a in state(alerter)["alerts"] if a["id"] == alert_id), None)


def _decay(alerter, since_s: float) -> float:
    now = state(alerter)["last_s"]
    age = max(0.0, (now if now is not None else since_s) - since_s)
    return 0.5 ** (age / HALF_LIFE_S)


def tolerate(alerter, channel: str, verdict, evidence: list, t_s: float):
    """``(verdict, evidence)`` of one window with the channel's tolerance applied: the
    threshold raised to the tolerated score, evidence within its tolerance dropped."""
    fb = state(alerter)
    fb["last_s"] = t_s
    tol = fb["tolerance"].get(channel)
    if tol is None or verdict.phase != "monitoring":
        return verdict, evidence
    k = _decay(alerter, tol["since_s"])
    if k < 0.01:  # forgotten
        del fb["tolerance"][channel]
        return verdict, evidence
    if tol.get("score_ratio") and verdict.threshold:
        # Bounded by what the operator saw (an alarm also needs evidence, bounded below)
        tolerated = verdict.threshold * (1.0 + (tol["score_ratio"] - 1.0) * k)
        if tolerated > verdict.threshold:
            verdict = replace(verdict, threshold=tolerated)
    kept = []
    for e in evidence:
        limit = e.get("ratio_limit")
        labelled = tol["evidence"].get(e.get("feature") or e.get("fault") or e["kind"])
        if labelled is not None and limit and e.get("ratio") is not None:
            # in log terms: the excess over the limit decays toward the limit itself
            cap = math.log(min(labelled, MAX_TOLERANCE * limit) / limit)
            if math.log(max(e["ratio"], 1e-12) / limit) <= max(0.0, cap) * k:
                continue
        elif (e["kind"] == "iso_zone" and tol.get("zone") is not None and k >= 0.5
              and ZONES.index(e["zone"]) <= tol["zone"]):
            continue  # the zone the operator saw and called normal (never a worse one),
            # until half forgotten
        kept.append(e)
    return verdict, kept


def learn_ratio(alerter, channel: str) -> float | None:
    """Windows scoring below this × threshold may be learned (a false alarm's tolerance)."""
    tol = state(alerter)["tolerance"].get(channel)
    if tol is None or not tol.get("score_ratio"):
        return None
    k = _decay(alerter, tol["since_s"])
    return min(1.0 + (tol["score_ratio"] - 1.0) * k, tol.get("alarm_ratio") or 1.0)


def held(alerter) -> bool:
    """Whether a confirmed episode is held open (no automatic back-to-normal)."""
    fb = getattr(alerter, "feedback", None)
    return bool(fb and fb["held"] and fb["held"] == alerter.episode)


def apply(alerter, label: dict, at_s: float | None = None) -> str:
    """Apply a checked label (:func:`parse`) to the machine of ``alerter``.

    Returns
    -------
    str
        ``"repeat"`` (the same label on the same alert again: nothing done), or the
        label applied. For ``false_alarm`` of the open episode the alerter is back to
        normal and the caller publishes :func:`closing_alert`; for
        ``maintenance_done`` the caller re-baselines the machine.

    Raises
    ------
    FeedbackRefused
        ``unknown_alert``: the machine raised no such alert (or it is too old), or a
        ``false_alarm`` on a back-to-normal alert.
    """
    fb = state(alerter)
    alert = find(alerter, label["alert_id"])
    if alert is None:
        raise FeedbackRefused("unknown_alert", f"{alerter.machine} raised no alert "
                                               f"{label['alert_id']} (of its last {MAX_ALERTS})")
    if any(x["alert_id"] == label["alert_id"] and x["label"] == label["label"]
           for x in fb["labels"]):
        return "repeat"
    if label["label"] == "false_alarm" and alert["severity"] == "normal":
        raise FeedbackRefused("bad_label", "a back-to-normal alert cannot be a false alarm")
    now = at_s if at_s is not None else (fb["last_s"] or alert["ts_s"])
    fb["labels"] = (fb["labels"] + [{**label, "ts_s": now}])[-MAX_LABELS:]
    if label["label"] == "false_alarm":
        # The leading channel's: the score and evidence the alert reported are its own (the
        # others listed were merely not normal; a fault there must not be tolerated)
        for channel in alert["channels"][:1]:
            fb["tolerance"][channel] = {"score_ratio": (alert["score_ratio"] or 1.0) * SCORE_MARGIN,
                                        "alarm_ratio": alert["alarm_ratio"],
                                        "evidence": {k: v * EVIDENCE_MARGIN
                                                     for k, v in alert["evidence"].items()},
                                        "zone": alert.get("zone"), "since_s": now}
        while len(fb["tolerance"]) > MAX_TOLERANCES:  # the oldest go first
            del fb["tolerance"][min(fb["tolerance"], key=lambda c: fb["tolerance"][c]["since_s"])]
        if fb["held"] == alert["episode"]:
            fb["held"] = None
    elif label["label"] == "confirmed":
        if alert["episode"] == alerter.episode and alerter.announced != "normal":
            fb["held"] = alert["episode"]
    else:  # maintenance_done: a new baseline, nothing tolerated or held
        fb["held"], fb["tolerance"] = None, {}
    return label["label"]


def episode_open(alerter, alert_id: str) -> bool:
    """Whether ``alert_id`` belongs to the episode operators were last told of, still open."""
    alert = find(alerter, alert_id)
    return (alert is not None and alerter.announced != "normal"
            and alert["episode"] == alerter.episode)


def public(alerter) -> dict | None:
    """What the machine status says: latest labels, held episode, tolerated channels."""
    fb = getattr(alerter, "feedback", None)
    if not fb or not fb["labels"]:
        return None
    return {"labels": [dict(x) for x in fb["labels"][-ALERT_LABELS:]],
            "held_open": fb["held"], "tolerated_channels": sorted(fb["tolerance"])}


def on_agent(agent, machine: str, doc, topic: str) -> list[dict]:
    """Apply a label received on ``topic`` in the agent's processing thread; returns the
    alerts it raised (committed like any other). Refusals are counted by reason."""
    import logging

    try:
        if doc is None:
            raise FeedbackRefused("bad_feedback", "not JSON (or over 4 kB)")
        done, alert = agent.pipeline.feedback(machine, doc)
    except FeedbackRefused as exc:
        agent.rejections.refused(exc.reason, topic, str(exc))
        return []
    agent.stats["feedback"] += 1
    if done == "maintenance_done":  # as cmd/rebaseline: the agent's side of it too
        agent.forget_windows(machine)
    alerter = agent.pipeline.alerters.get(machine)
    for (m, channel), view in agent.channel_view.items():  # the status says it at once
        if m == machine and alerter is not None and view.get("state") in ("warning", "alarm"):
            view["state"] = alerter.channel_state(channel).state
    agent._checkpoint_due = True  # labels are learned state: kept at once
    logging.getLogger(__name__).info("feedback applied", extra={
        "event": "feedback_applied", "machine": machine, "label": doc.get("label"),
        "alert_id": doc.get("alert_id"), "done": done})
    return [agent.raise_alert(alert, live=True)] if alert is not None else []
