"""Topic names and the published documents' JSON Schemas."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest

from edge_agent.runtime.alerts import AlertPolicy, MachineAlerter, build_alert, describe_window
from edge_agent.runtime.evidence import evidence_names, window_evidence
from edge_agent.frame import FeatureRecord
from edge_agent.runtime.validation import REASONS
from edge_agent.jsonl import dumps
from edge_agent.models.detector import Contribution, Verdict
from edge_agent.schema import (NAMES, agent_status_doc, channel_status, load_schema,
                               machine_status_doc)
from edge_agent.mqtt.topics import TopicError, Topics, alerts_filter, parse_topic

#: An alert as `edge-agent replay` produced it from the CWRU inner-race recording (the
#: command in docs/operators.md).
REPLAYED = json.loads(r'''{"schema":"edge-agent/alert/1","id":"73d66923-1c43-5753-808e-1aef6ae16325","episode":"db14690d-2124-545a-b588-d6782d8da2c0","agent":"edge-agent","machine":"cwru","channel":"de","channels":["de"],"severity":"alarm","previous_severity":"normal","ts":"1970-01-01T00:00:03.700Z","score":29.699,"threshold":3.83955,"alarm_threshold":7.67911,"summary":"cwru ALARM on de: BPFI 162 Hz envelope ×135; BPFO 107 Hz envelope ×50; 1000-2000 Hz band 0.226 g, 14.0× baseline; 2000-5000 Hz band 0.519 g (baseline 0.0599, ×8.7); sustained RMS 0.594 g (baseline 0.0718, ×8.3); velocity RMS 0.421 mm/s, ISO 20816 zone A","evidence":[{"kind":"fault_line","fault":"bpfi","frequency_hz":162.095,"envelope_g":0.341497,"baseline_g":0.00252425,"ratio":135.287,"prominence_ratio":11.9462,"ratio_limit":3.0,"windows":3,"text":"BPFI 162 Hz envelope ×135"},{"kind":"fault_line","fault":"bpfo","frequency_hz":107.305,"envelope_g":0.130485,"baseline_g":0.00261284,"ratio":49.9401,"prominence_ratio":4.05865,"ratio_limit":3.0,"windows":3,"text":"BPFO 107 Hz envelope ×50"},{"kind":"feature","feature":"band_1000_2000hz_rms_g","label":"1000-2000 Hz band","value":0.22591,"baseline":0.0161554,"unit":"g","ratio":13.9836,"z":54.066,"ratio_limit":2.0,"z_limit":3.0,"windows":3,"text":"1000-2000 Hz band 0.226 g, 14.0× baseline"},{"kind":"feature","feature":"band_2000_5000hz_rms_g","label":"2000-5000 Hz band","value":0.519367,"baseline":0.059984,"unit":"g","ratio":8.65841,"z":44.2411,"ratio_limit":2.0,"z_limit":3.0,"windows":3,"text":"2000-5000 Hz band 0.519 g, 8.7× baseline"},{"kind":"feature","feature":"sustained_rms_g","label":"sustained RMS","value":0.59386,"baseline":0.0719491,"unit":"g","ratio":8.25389,"z":43.2605,"ratio_limit":2.0,"z_limit":3.0,"windows":3,"text":"sustained RMS 0.594 g, 8.3× baseline"},{"kind":"feature","feature":"env_mean_g","label":"envelope level","value":0.639774,"baseline":0.0827475,"unit":"g","ratio":7.73164,"z":41.9208,"ratio_limit":2.0,"z_limit":3.0,"windows":3,"text":"envelope level 0.64 g, 7.7× baseline"},{"kind":"feature","feature":"band_500_1000hz_rms_g","label":"500-1000 Hz band","value":0.124907,"baseline":0.0222424,"unit":"g","ratio":5.61572,"z":12.4776,"ratio_limit":2.0,"z_limit":3.0,"windows":3,"text":"500-1000 Hz band 0.125 g, 5.6× baseline"},{"kind":"feature","feature":"band_50_100hz_rms_g","label":"50-100 Hz band","value":0.00217308,"baseline":0.000536656,"unit":"g","ratio":4.0493,"z":6.32583,"ratio_limit":2.0,"z_limit":3.0,"windows":3,"text":"50-100 Hz band 0.00217 g, 4.0× baseline"}],"features":[{"feature":"band_1000_2000hz_rms_g","label":"1000-2000 Hz band","value":0.22591,"baseline":0.0161557,"unit":"g","z":54.0655,"ratio":13.9833,"text":"1000-2000 Hz band 0.226 g (baseline 0.0162, ×14.0)"},{"feature":"band_2000_5000hz_rms_g","label":"2000-5000 Hz band","value":0.519367,"baseline":0.0598718,"unit":"g","z":44.2795,"ratio":8.67465,"text":"2000-5000 Hz band 0.519 g (baseline 0.0599, ×8.7)"},{"feature":"sustained_rms_g","label":"sustained RMS","value":0.59386,"baseline":0.0718099,"unit":"g","z":43.3002,"ratio":8.26989,"text":"sustained RMS 0.594 g (baseline 0.0718, ×8.3)"}],"fault_lines":[{"fault":"bpfi","frequency_hz":162.095,"envelope_g":0.341497,"baseline_g":0.00252425,"ratio":135.287,"prominence_ratio":11.9462,"text":"BPFI 162 Hz envelope ×135"},{"fault":"bpfo","frequency_hz":107.305,"envelope_g":0.130485,"baseline_g":0.00261284,"ratio":49.9401,"prominence_ratio":4.05865,"text":"BPFO 107 Hz envelope ×50"}],"iso_20816":{"zone":"A","velocity_rms_mm_s":0.420533},"regime":"1796rpm","source":"48k_Drive_End_IR007_0_109.mat@9600","model_version":"0.1.0+g0.u4","held_by_cooldown":0}''')


def validator(name: str):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def make_alert(severity="alarm", previous="normal", *, score=29.4, phase="monitoring",
               regime="1796rpm", features=None, reference=None, contributions=None) -> dict:
    """An alert from the real builder, round-tripped through our JSON encoder."""
    alerter = MachineAlerter("pump-7", AlertPolicy(), agent_id="gw-1")
    alerter.episode = "3f1c6a52-8f7d-5c55-9a51-0c2f6f3b5d11"
    verdict = Verdict(phase, 1.0, regime, score, None if score is None else 2.0,
                      None if score is None else 4.0,
                      contributions=contributions if contributions is not None else (
                          Contribution("sustained_rms_g", 42.9, 0.579, 0.0714),
                          Contribution("kurtosis", 8.0, 6.1, 3.0)))
    features = features if features is not None else {
        "velocity_rms_mm_s": 4.1, "iso_zone": "C", "env_bpfo_g": 0.31, "env_bpfo_ratio": 9.0,
        "bpfo_hz": 107.3, "env_bpfi_g": 0.02, "env_bpfi_ratio": 1.1, "bpfi_hz": 162.1,
        "sustained_rms_g": 0.579}
    record = FeatureRecord("pump-7", "de", 1714564800.0, features, 1480.0, "mqtt:plant/x")
    reference = reference if reference is not None else {
        "env_bpfo_g": 0.01, "env_bpfo_ratio": 1.5, "env_bpfi_g": 0.02, "env_bpfi_ratio": 1.0,
        "velocity_rms_mm_s": 1.8, "sustained_rms_g": 0.0714}
    spread = {k: 0.05 for k in reference}
    policy = alerter.policy
    evidence = [] if severity != "alarm" else [
        {**e, "windows": 3} for e in window_evidence(
            features, evidence_names(features), reference, spread, policy)]
    view = describe_window(policy, verdict, record, reference, "0.1.0+g0.u5", 0)
    alert = build_alert(alerter, severity, previous, "de", ["de", "nde"], view, evidence, record)
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


def test_an_alarm_states_its_evidence_and_the_limits_it_crossed():
    alert = make_alert()
    kinds = {e["kind"]: e for e in alert["evidence"]}
    assert set(kinds) == {"feature", "iso_zone", "fault_line"}
    assert kinds["iso_zone"]["zone"] == "C" and kinds["iso_zone"]["zone_limit"] == "C"
    assert kinds["fault_line"]["fault"] == "bpfo" and kinds["fault_line"]["ratio_limit"] == 3.0
    feature = next(e for e in alert["evidence"] if e["feature" if e["kind"] == "feature" else
                                                        "kind"] == "sustained_rms_g")
    assert feature["ratio"] >= feature["ratio_limit"] == 2.0 and feature["z"] >= feature["z_limit"]
    assert alert["summary"].startswith("pump-7 ALARM on de: ")
    assert alert["summary"].endswith("; also nde")
    assert "ISO 20816 zone C" in alert["summary"]
    assert make_alert("warning")["evidence"] == []
    too_many = {"evidence": [REPLAYED["evidence"][0]] * 9}
    assert not validator("alert").is_valid({**REPLAYED, **too_many})


def test_alert_schema_refuses_what_it_should():
    v = validator("alert")
    for change in ({"severity": "critical"}, {"schema": "edge-agent/alert/2"}, {"id": "x"},
                   {"ts": "yesterday"}, {"surprise": 1}, {"channels": []}, {"episode": "x"},
                   {"evidence": [{"kind": "feature", "feature": "rms_g"}]}):
        assert not v.is_valid({**REPLAYED, **change}), change
    missing = dict(REPLAYED)
    del missing["machine"]
    assert not v.is_valid(missing)


def test_status_documents_validate():
    ch = channel_status(phase="monitoring", state="alarm", baseline_progress=1.0, score=9.1,
                        threshold=2.0, alarm_threshold=4.0, regime="1480rpm",
                        last_window_s=1714564800.0, windows=1200, sensor_health="ok",
                        rejected={"clipped": 3, "flatline": 0},
                        baseline={"from_s": 1714478400.0, "to_s": 1714564700.0, "windows": 145,
                                  "running_h": 24.0, "complete": True})
    assert ch["baseline"]["from"] == "2024-04-30T12:00:00.000Z"
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


def test_the_machine_status_says_what_the_baseline_covered(tmp_path):
    """A real agent (no broker) after a recording: the status names its baseline's span."""
    from edge_agent.mqtt.link import machine_status
    from edge_agent.runtime.agent import Agent
    from edge_agent.runtime.config import parse_config
    from edge_agent.runtime.inputs import InputOptions, feature_records
    from tests.conftest import SAMPLE_DATA

    config = parse_config(f"""
[agent]
id = "gw-1"
state_dir = "{tmp_path}"
[[machine]]
id = "ims1"
""")
    agent = Agent(config)
    records = [r for _, r in feature_records(InputOptions(
        recordings=(SAMPLE_DATA / "ims" / "ims_test1_features.csv",)))]
    agent.process(records[:8 * 200], live=False)  # 200 snapshots: past the 24 h baseline
    doc = json.loads(dumps(machine_status(agent, "ims1")))
    validator("machine-status").validate(doc)
    b3 = doc["channels"]["bearing3-x"]
    assert b3["phase"] == "monitoring" and b3["baseline"]["complete"]
    assert b3["baseline"]["from"] == "2003-10-22T12:06:24.000Z"
    assert 24.0 <= b3["baseline"]["running_h"] < 24.5 and b3["baseline"]["windows"] > 120
    agent.process(records[8 * 200:8 * 210], live=False)
    assert machine_status(agent, "ims1")["channels"]["bearing3-x"]["baseline"] == b3["baseline"]
