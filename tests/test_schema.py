"""Topic names and the published documents' JSON Schemas."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest

from edge_agent.runtime.alerts import AlertPolicy, MachineAlerter, build_alert
from edge_agent.frame import FeatureRecord
from edge_agent.runtime.validation import REASONS
from edge_agent.jsonl import dumps
from edge_agent.models.detector import Contribution, Verdict
from edge_agent.schema import (NAMES, agent_status_doc, channel_status, load_schema,
                               machine_status_doc)
from edge_agent.mqtt.topics import TopicError, Topics, alerts_filter, parse_topic

#: An alert as `edge-agent replay` produced it from the CWRU inner-race recording
#: (with the fault line's ``prominence_ratio`` that build_alert has added since).
REPLAYED = json.loads(r'''{"schema":"edge-agent/alert/1","id":"73d66923-1c43-5753-808e-1aef6ae16325","agent":"edge-agent","machine":"cwru","channel":"de","channels":["de"],"severity":"alarm","previous_severity":"normal","ts":"1970-01-01T00:00:03.700Z","score":29.3979,"threshold":2.0,"alarm_threshold":4.0,"summary":"cwru ALARM: BPFI 162 Hz envelope ×96; BSF 141 Hz envelope ×8; 1000-2000 Hz band 0.226 g (baseline 0.0167, ×13.5); 2000-5000 Hz band 0.529 g (baseline 0.0598, ×8.8); RMS 0.579 g (baseline 0.0714, ×8.1); velocity RMS 0.398 mm/s, ISO zone A","features":[{"feature":"band_1000_2000hz_rms_g","label":"1000-2000 Hz band","value":0.225594,"baseline":0.0167206,"unit":"g","z":53.3324,"ratio":13.492,"text":"1000-2000 Hz band 0.226 g (baseline 0.0167, ×13.5)"},{"feature":"sustained_rms_g","label":"RMS","value":0.579458,"baseline":0.0713957,"unit":"g","z":42.9155,"ratio":8.11614,"text":"RMS 0.579 g (baseline 0.0714, ×8.1)"}],"fault_lines":[{"fault":"bpfi","frequency_hz":162.095,"envelope_g":0.340075,"baseline_g":0.00352775,"ratio":96.4,"prominence_ratio":11.2,"text":"BPFI 162 Hz envelope ×96"}],"iso_20816":{"zone":"A","velocity_rms_mm_s":0.398125},"regime":"1796rpm","source":"48k_Drive_End_IR007_0_109.mat@9600","model_version":"0.1.0+g0.u5","held_by_cooldown":0}''')


def validator(name: str):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def make_alert(severity="alarm", previous="normal", *, score=29.4, phase="monitoring",
               regime="1796rpm", features=None, reference=None, contributions=None) -> dict:
    """An alert from the real builder, round-tripped through our JSON encoder."""
    alerter = MachineAlerter("pump-7", AlertPolicy(), agent_id="gw-1")
    verdict = Verdict(phase, 1.0, regime, score, None if score is None else 2.0,
                      None if score is None else 4.0,
                      contributions=contributions if contributions is not None else (
                          Contribution("sustained_rms_g", 42.9, 0.579, 0.0714),
                          Contribution("kurtosis", 8.0, 6.1, 3.0)))
    features = features if features is not None else {
        "velocity_rms_mm_s": 4.1, "iso_zone": "C", "env_bpfo_g": 0.31, "env_bpfo_ratio": 9.0,
        "bpfo_hz": 107.3, "env_bpfi_g": 0.02, "env_bpfi_ratio": 1.1, "bpfi_hz": 162.1}
    record = FeatureRecord("pump-7", "de", 1714564800.0, features, 1480.0, "mqtt:plant/x")
    reference = reference if reference is not None else {
        "env_bpfo_g": 0.01, "env_bpfo_ratio": 1.5, "env_bpfi_g": 0.02, "env_bpfi_ratio": 1.0}
    alert = build_alert(alerter, severity, previous, "de", ["de"], verdict, record, reference,
                        "0.1.0+g0.u5", 0)
    return json.loads(dumps(alert))


def test_schemas_load_and_are_valid_draft_2020_12():
    for name in NAMES:
        schema = load_schema(name)
        assert schema["$id"] == f"https://edge-agent.invalid/schema/{name}/1"
        assert schema["properties"]["schema"]["const"] == f"edge-agent/{name}/1"
        validator(name)
    with pytest.raises(ValueError, match="no schema"):
        load_schema("../pyproject")


@pytest.mark.parametrize("alert", [
    REPLAYED,
    make_alert(),
    make_alert("warning"),
    make_alert("normal", "alarm", score=None, phase="baselining", regime=None),  # after re-baseline
    make_alert(features={"velocity_rms_mm_s": math.nan, "iso_zone": "D"}, reference={}),
    make_alert(features={}, contributions=(Contribution("rms_g", math.inf, math.nan, 0.0),)),
], ids=["replayed", "alarm", "warning", "cleared-unscored", "nan-velocity", "non-finite"])
def test_alerts_the_builder_makes_validate(alert):
    validator("alert").validate(alert)


def test_the_builder_names_a_fault_line():
    assert [line["fault"] for line in make_alert()["fault_lines"]] == ["bpfo"]


def test_alert_schema_refuses_what_it_should():
    v = validator("alert")
    for change in ({"severity": "critical"}, {"schema": "edge-agent/alert/2"}, {"id": "x"},
                   {"ts": "yesterday"}, {"surprise": 1}, {"channels": []}):
        assert not v.is_valid({**REPLAYED, **change}), change
    missing = dict(REPLAYED)
    del missing["machine"]
    assert not v.is_valid(missing)


def test_status_documents_validate():
    ch = channel_status(phase="monitoring", state="alarm", baseline_progress=1.0, score=9.1,
                        threshold=2.0, alarm_threshold=4.0, regime="1480rpm",
                        last_window_s=1714564800.0, windows=1200, sensor_health="ok",
                        rejected={"clipped": 3, "flatline": 0})
    idle = channel_status(phase=None, state="baselining", baseline_progress=0.0)
    doc = machine_status_doc("gw-1", "pump-7", {"de": ch, "nde": idle}, outbox_depth=2,
                             model_version="0.1.0+g0.u5", ts_s=1714564801.0,
                             last_alert=REPLAYED)
    assert doc["state"] == "alarm" and doc["channels"]["de"]["rejected"] == {"clipped": 3}
    validator("machine-status").validate(json.loads(dumps(doc)))
    for health in ("ok", "no_data", *REASONS):
        validator("machine-status").validate({**doc, "channels": {"de": {**ch, "sensor_health": health}}})
    assert not validator("machine-status").is_valid(
        {**doc, "channels": {"de": {**ch, "sensor_health": "sad"}}})

    online = agent_status_doc("gw-1", "online", "0.1.0", ts_s=1714564801.0, started_s=1714560000.0,
                              machines=["pump-7", "fan-2"], lag_s=0.4,
                              outbox={"depth": 0, "oldest_age_s": None, "dead_letter": 0,
                                      "dropped": {"overflow": 0, "expired": 1}},
                              mqtt={"protocol": "5", "connected": True, "reconnects": 1,
                                    "sent": 10, "acked": 9, "refused": {"not_authorized": 1}})
    will = agent_status_doc("gw-1", "offline", "0.1.0", reason="connection_lost")
    full = agent_status_doc(
        "gw-1", "online", "0.1.0", ts_s=1714564801.0,
        storage={"state": "storage_full", "path": "/var/lib/edge-agent/outbox.sqlite",
                 "free_bytes": 0, "error": "database or disk is full (SQLITE_FULL)"},
        rejected={"wrong_area": {"count": 3, "examples": ["plant/s/other/pump-7/de/raw"]},
                  "too_many_channels": {"count": 24937, "examples": ["pump-7/c63"]}},
        mqtt={"protocol": "5", "connected": True, "max_packet_bytes": 4210688,
              "disconnects": {"session_taken_over": 1}, "takeovers": 1, "status_too_large": 0},
        processing={"frames": 1, "dropped_at_stop": 12, "storage_retries": 4})
    crashed = agent_status_doc("gw-1", "offline", "0.1.0", reason="crashed", ts_s=1714564801.0,
                               error="RecordingError: broken.npz: not a readable .npz archive")
    for doc in (online, will, full, crashed):
        validator("agent-status").validate(doc)
    assert not validator("agent-status").is_valid({**will, "status": "sleeping"})
    assert not validator("agent-status").is_valid(
        {**full, "storage": {**full["storage"], "state": "tired"}})
    assert not validator("agent-status").is_valid(
        {**full, "rejected": {"bad_topic": {"count": 1, "examples": ["x"] * 6}}})
    cut = machine_status_doc("gw-1", "pump-7", {"de": ch}, outbox_depth=0, model_version=None,
                             ts_s=0)
    validator("machine-status").validate({**cut, "truncated": {"channels": 40}})
    assert not validator("machine-status").is_valid({**cut, "truncated": {"channels": 0}})


def test_topics_build_and_parse_back():
    t = Topics("acme/uns", "site1", "line-a", areas={"fan-2": "line-b"})
    assert t.alerts("pump-7") == "acme/uns/site1/line-a/pump-7/alerts"
    assert t.machine_status("fan-2") == "acme/uns/site1/line-b/fan-2/status"
    assert t.agent_status("gw-1") == "acme/uns/agents/gw-1/status"
    assert t.raw("pump-7", "de") == "acme/uns/site1/line-a/pump-7/de/raw"
    assert t.features("pump-7", "de") == "acme/uns/site1/line-a/pump-7/de/features"
    assert t.rebaseline("pump-7") == "acme/uns/site1/line-a/pump-7/cmd/rebaseline"
    assert t.raw_filter() == "acme/uns/site1/+/+/+/raw"
    for topic, kind in ((t.alerts("pump-7"), "alerts"), (t.machine_status("fan-2"), "status"),
                        (t.raw("pump-7", "de"), "raw"), (t.features("pump-7", "nde"), "features"),
                        (t.rebaseline("fan-2"), "rebaseline")):
        ref = t.parse(topic)
        assert ref.kind == kind and ref.site == "site1" and ref.machine in ("pump-7", "fan-2")
    assert t.parse(t.raw("pump-7", "de")).channel == "de"
    assert t.parse(t.agent_status("gw-1")).agent == "gw-1"
    assert alerts_filter("plant", "site1", "line-b") == "plant/site1/line-b/+/alerts"


@pytest.mark.parametrize("topic", [
    "plant/site1/line-a/pump-7/de/raw/extra", "plant/site1/line-a/pump-7//raw",
    "plant/site1/line-a/+/de/raw", "plant/site1/line-a/#", "plant/site1/line-a/Pump7/de/raw",
    "other/site1/line-a/pump-7/de/raw", "plantx/site1/line-a/pump-7/de/raw",
    "plant/site1/line-a/pump-7/cmd/raw", "plant/agents/a/pump-7/alerts",
    "plant/site1/line-a/pump-7/cmd/shutdown", "plant/site1/line-a/pump 7/alerts", "plant",
    "plant/", "", "/plant/site1/line-a/pump-7/alerts", "plant/site1/line-a/pump-7/\u00e9/raw",
])
def test_invalid_topics_are_refused(topic):
    with pytest.raises(TopicError):
        parse_topic(topic, "plant")


@pytest.mark.parametrize("kwargs", [
    {"prefix": "plant/#"}, {"prefix": "plant/"}, {"prefix": ""}, {"prefix": "a//b"},
    {"site": "agents"}, {"site": "Site1"}, {"area": "line a"}, {"areas": {"m": "+"}},
])
def test_invalid_names_are_refused(kwargs):
    with pytest.raises(TopicError):
        Topics(**{"prefix": "plant", "site": "s", "area": "a", **kwargs})
    with pytest.raises(TopicError):
        Topics().raw("m", "cmd")
