"""JSON Schemas of the documents the agent publishes, and builders for the status documents.

The schemas (draft 2020-12) ship inside the package:

``alert``
    ``edge-agent/alert/1``: what :func:`edge_agent.runtime.alerts.build_alert` produces.
``machine-status``
    ``edge-agent/machine-status/1``: retained per-machine status.
``agent-status``
    ``edge-agent/agent-status/1``: retained agent status and its Last Will.
``fleet-prior``
    ``edge-agent/fleet-prior/1``: a class's signed fleet prior (:mod:`edge_agent.fleet.document`).
``fleet-update``
    ``edge-agent/fleet-update/1``: one machine's baseline summary for its fleet.
``feedback``
    ``edge-agent/feedback/1``: an operator's label on an alert (``cmd/feedback``), which the
    agent receives.
``fleet-rollout``
    ``edge-agent/fleet-rollout/1``: where a class's staged rollout stands, signed
    (:mod:`edge_agent.fleet.signed`).

Every document carries ``"schema": "edge-agent/<name>/<major>"``; the schema's
``$id`` is ``https://edge-agent.invalid/schema/<name>/<major>``. Field meanings
are in the schemas' ``description``\\ s and in ``docs/mqtt.md``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources

NAMES = ("alert", "machine-status", "agent-status", "feedback", "fleet-prior", "fleet-update",
         "fleet-rollout")
MACHINE_STATUS_SCHEMA = "edge-agent/machine-status/1"
AGENT_STATUS_SCHEMA = "edge-agent/agent-status/1"


@lru_cache(maxsize=None)
def _load_text(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")


def load_schema(name: str) -> dict:
    """The JSON Schema called ``name`` (one of :data:`NAMES`), as a fresh dict.

    >>> load_schema("alert")["$id"]
    'https://edge-agent.invalid/schema/alert/1'
    """
    if name not in NAMES:
        raise ValueError(f"no schema {name!r}; known: {', '.join(NAMES)}")
    return json.loads(_load_text(name))


def agent_status_doc(agent: str, status: str, version: str, *, reason: str | None = None,
                     ts_s: float | None = None, started_s: float | None = None,
                     machines: Iterable[str] | None = None, outbox: Mapping | None = None,
                     mqtt: Mapping | None = None, lag_s: float | None = None,
                     processing: Mapping | None = None, storage: Mapping | None = None,
                     rejected: Mapping | None = None, error: str | None = None,
                     fleet: Mapping | None = None) -> dict:
    """An ``edge-agent/agent-status/1`` document; optional parts are left out when ``None``.

    ``storage`` is ``{state, path, free_bytes, error}``, ``rejected`` the messages
    refused before they reached a machine (``{reason: {count, examples}}``),
    ``error`` what made a crashed agent stop, ``fleet`` the fleet exchange's state
    (:meth:`edge_agent.fleet.member.FleetMember.status`, or the aggregator's).

    >>> agent_status_doc("gw-1", "offline", "0.1.0", reason="connection_lost")["status"]
    'offline'
    """
    from edge_agent.frame import iso_time

    doc: dict = {"schema": AGENT_STATUS_SCHEMA, "agent": agent, "status": status,
                 "version": version}
    if reason is not None:
        doc["reason"] = reason
    if ts_s is not None:
        doc["ts"] = iso_time(ts_s)
    if started_s is not None:
        doc["started"] = iso_time(started_s)
    if machines is not None:
        doc["machines"] = sorted(set(machines))
    if outbox is not None:
        doc["outbox"] = {k: outbox[k] for k in ("depth", "oldest_age_s", "dropped", "dead_letter")
                         if k in outbox}
    if mqtt is not None:
        doc["mqtt"] = dict(mqtt)
    if lag_s is not None:
        doc["lag_s"] = lag_s
    if processing is not None:
        doc["processing"] = {k: int(v) for k, v in processing.items()}
    if storage is not None:
        doc["storage"] = dict(storage)
    if rejected is not None:
        doc["rejected"] = {k: dict(v) for k, v in rejected.items()}
    if error is not None:
        doc["error"] = error
    if fleet is not None:
        doc["fleet"] = dict(fleet)
    return doc


def channel_status(*, phase: str | None, state: str, baseline_progress: float,
                   score: float | None = None, threshold: float | None = None,
                   alarm_threshold: float | None = None, regime: str | None = None,
                   last_window_s: float | None = None, windows: int | None = None,
                   sensor_health: str = "no_data", rejected: Mapping[str, int] | None = None,
                   baseline: Mapping | None = None, baseline_held: bool = False,
                   indicators: Mapping | None = None, basis: str | None = None,
                   fleet_held: list[str] | None = None) -> dict:
    """One entry of a machine status's ``channels`` (see the schema for each field).

    ``baseline`` is what the current regime's baseline covered
    (:meth:`edge_agent.models.detector.RegimeModel.baseline_coverage`); ``basis`` what the
    latest window was judged against with a fleet prior, ``fleet_held`` why its baseline
    differs from its fleet while an operator has not confirmed it.
    """
    from edge_agent.frame import iso_time

    entry = {"phase": phase, "state": state,
             "baseline_progress": min(max(float(baseline_progress), 0.0), 1.0),
             "regime": regime, "score": score, "threshold": threshold,
             "alarm_threshold": alarm_threshold,
             "last_window_ts": None if last_window_s is None else iso_time(last_window_s),
             "sensor_health": sensor_health,
             "rejected": {k: int(v) for k, v in (rejected or {}).items() if v}}
    if windows is not None:
        entry["windows"] = int(windows)
    if baseline_held:
        entry["baseline_held"] = True
    if indicators:
        entry["indicators"] = dict(indicators)
    if basis is not None:
        entry["basis"] = basis
    if fleet_held:
        entry["fleet_held"] = [str(t) for t in fleet_held][:8]
    if baseline is not None and baseline.get("from_s") is not None:
        entry["baseline"] = {"from": iso_time(baseline["from_s"]), "to": iso_time(baseline["to_s"]),
                             "windows": int(baseline["windows"]),
                             "running_h": float(baseline["running_h"]),
                             "complete": bool(baseline.get("complete", True))}
    return entry


def machine_status_doc(agent: str, machine: str, channels: Mapping[str, dict], *,
                       outbox_depth: int, model_version: str | None,
                       last_alert: Mapping | None = None, ts_s: float | None = None,
                       feedback: Mapping | None = None) -> dict:
    """An ``edge-agent/machine-status/1`` document from :func:`channel_status` entries.

    The machine's ``state`` is the worst alert state of its monitored
    channels, else ``baselining`` if one is learning, else ``stopped``.

    >>> ch = channel_status(phase="monitoring", state="warning", baseline_progress=1.0)
    >>> machine_status_doc("gw-1", "pump-7", {"de": ch}, outbox_depth=0,
    ...                    model_version=None, ts_s=0)["state"]
    'warning'
    """
    from edge_agent.frame import iso_time

    states = [c["state"] for c in channels.values()]
    alerting = [s for s in states if s in ("normal", "warning", "alarm")]
    if alerting:
        state = max(alerting, key=("normal", "warning", "alarm").index)
    else:
        state = "baselining" if "baselining" in states else "stopped"
    doc = {"schema": MACHINE_STATUS_SCHEMA, "agent": agent, "machine": machine,
           "ts": iso_time(time.time() if ts_s is None else ts_s), "state": state,
           "channels": dict(channels), "outbox_depth": int(outbox_depth),
           "model_version": model_version}
    if last_alert is not None:
        doc["last_alert"] = {"id": last_alert["id"], "severity": last_alert["severity"],
                             "ts": last_alert["ts"]}
    if feedback is not None:  # operators' labels (edge_agent.runtime.feedback.public)
        doc["feedback"] = dict(feedback)
    return doc
