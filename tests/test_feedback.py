"""Operators' labels on alerts (edge_agent.runtime.feedback): what the agent learns from them,
on real CWRU recordings; the MQTT round trip is in tests/test_feedback_mqtt.py."""

from __future__ import annotations

import json
import pickle

import pytest

from edge_agent.models import DetectorConfig
from edge_agent.runtime import feedback
from edge_agent.runtime.feedback import FeedbackRefused
from edge_agent.runtime.pipeline import Pipeline
from edge_agent.runtime.state import apply_state, encode_state
from edge_agent.runtime.alerts import AlertPolicy, MachineAlerter
from edge_agent.schema import load_schema
from tests.test_learning import cwru_records, run

jsonschema = pytest.importorskip("jsonschema")


def _shifted(condition, t0, machine="m"):
    return cwru_records(condition, t0=t0, machine=machine)


@pytest.fixture(scope="module")
def ball_fault_alarm():
    """A machine baselined on the healthy recording, in alarm on the small ball fault."""
    pipeline = Pipeline(DetectorConfig(baseline_windows=30))
    healthy = cwru_records("normal")
    run(pipeline, healthy)
    ball = _shifted("ball", 100.0)
    verdicts, alerts = run(pipeline, ball[:15], len(healthy))
    assert [a["severity"] for a in alerts] == ["alarm"]
    return pipeline, alerts[0], len(healthy) + 15


def _copy(fixture):
    """A private copy of the fixture's learned state (each test changes it)."""
    pipeline, alarm, index = fixture
    copy = Pipeline(DetectorConfig(baseline_windows=30))
    copy.detectors, copy.alerters, copy.last_start_s = pickle.loads(pickle.dumps(
        (pipeline.detectors, pipeline.alerters, pipeline.last_start_s)))
    return copy, alarm, index


def _label(alert, label, **extra):
    return {"alert_id": alert["id"], "label": label, **extra}


def test_false_alarm_closes_the_episode_tolerates_it_and_a_worse_fault_still_alarms(
        ball_fault_alarm):
    pipeline, alarm, index = _copy(ball_fault_alarm)
    done, closing = pipeline.feedback("m", _label(alarm, "false_alarm", user="ana",
                                                  note="new coupling, runs louder"))
    assert done == "false_alarm"
    assert closing["severity"] == "normal" and closing["previous_severity"] == "alarm"
    assert closing["episode"] == alarm["episode"] and "false alarm" in closing["summary"]
    assert closing["feedback"][-1]["label"] == "false_alarm"
    jsonschema.validate(closing, load_schema("alert"))
    assert pipeline.alerter("m").state == "normal"
    # the same windows again: tolerated, no new alert
    verdicts, alerts = run(pipeline, _shifted("ball", 200.0)[15:], index)
    assert alerts == [] and {v["state"] for v in verdicts} == {"normal"}
    # learning may go up to the alarm threshold (this fault's saturated score is above it)
    assert feedback.learn_ratio(pipeline.alerter("m"), "de") == pytest.approx(2.0)
    # a clearly worse fault escalates through the tolerance, and says what was labelled
    _, alerts = run(pipeline, _shifted("inner_race", 300.0)[:20], index + 100)
    assert [a["severity"] for a in alerts][:1] == ["alarm"]
    assert alerts[0]["feedback"][-1] == {**_label(alarm, "false_alarm", user="ana",
                                                  note="new coupling, runs louder"),
                                         "ts_s": alerts[0]["feedback"][-1]["ts_s"]}
    jsonschema.validate(alerts[0], load_schema("alert"))


def test_without_the_label_the_same_fault_stays_in_alarm(ball_fault_alarm):
    pipeline, alarm, index = _copy(ball_fault_alarm)
    verdicts, alerts = run(pipeline, _shifted("ball", 200.0)[15:], index)
    assert pipeline.alerter("m").state == "alarm" and not any(v["learned"] for v in verdicts)


def test_confirmed_holds_the_episode_open_until_maintenance_done(ball_fault_alarm):
    pipeline, alarm, index = _copy(ball_fault_alarm)
    assert pipeline.feedback("m", _label(alarm, "confirmed")) == ("confirmed", None)
    assert pipeline.feedback("m", _label(alarm, "confirmed")) == ("repeat", None)  # idempotent
    # healthy running again would clear it after clear_windows calm windows: held open
    verdicts, alerts = run(pipeline, _shifted("normal", 400.0), index)
    assert alerts == [] and pipeline.alerter("m").announced == "alarm"
    assert pipeline.feedback("m", _label(alarm, "maintenance_done")) == ("maintenance_done", None)
    verdicts, _ = run(pipeline, _shifted("normal", 500.0)[:5], index + 100)
    assert {v["state"] for v in verdicts} == {"baselining"}  # re-baselined


def test_refused_labels_say_why(ball_fault_alarm):
    pipeline, alarm, _ = _copy(ball_fault_alarm)
    other = Pipeline(DetectorConfig(baseline_windows=30))
    cases = [({"alert_id": alarm["id"], "label": "wrong"}, "bad_label"),
             ({"alert_id": "not-an-id", "label": "confirmed"}, "bad_feedback"),
             ({"alert_id": "0a2eb43e-641b-5294-a920-0f69f2bf5f71", "label": "confirmed"},
              "unknown_alert"),
             ({"alert_id": alarm["id"], "label": "confirmed", "extra": 1}, "bad_feedback"),
             ("[]", "bad_feedback")]
    for doc, reason in cases:
        with pytest.raises(FeedbackRefused) as caught:
            pipeline.feedback("m", doc)
        assert caught.value.reason == reason, doc
    pipeline.alerters["n"] = MachineAlerter("n", AlertPolicy())
    with pytest.raises(FeedbackRefused) as caught:
        pipeline.feedback("n", _label(alarm, "confirmed"))
    assert caught.value.reason == "wrong_machine"
    with pytest.raises(FeedbackRefused):
        other.feedback("m", _label(alarm, "confirmed"))


def test_labels_are_kept_in_the_alert_state_and_an_old_state_has_none(ball_fault_alarm):
    pipeline, alarm, _ = _copy(ball_fault_alarm)
    pipeline.feedback("m", _label(alarm, "confirmed", user="ana"))
    alerter = pipeline.alerter("m")
    restored = apply_state(MachineAlerter("m", AlertPolicy()), encode_state(alerter))
    assert restored.feedback["labels"][0]["user"] == "ana"
    assert restored.feedback["held"] == alarm["episode"]
    old = json.loads(encode_state(alerter))
    old["attrs"].pop("feedback")  # a state written before feedback existed
    restored = apply_state(MachineAlerter("m", AlertPolicy()), json.dumps(old))
    assert getattr(restored, "feedback", None) is None
    with pytest.raises(FeedbackRefused):  # it knows no alert to label, and says so
        _pipeline_with(restored).feedback(
            "m", _label(alarm, "confirmed"))


def _pipeline_with(alerter):
    pipeline = Pipeline()
    pipeline.alerters[alerter.machine] = alerter
    return pipeline


def test_a_false_alarm_in_zone_c_tolerates_zone_c_never_zone_d():
    """Zone evidence has no ratio: the tolerance keeps the zone the operator saw."""
    from edge_agent.models.verdict import Verdict

    alerter = MachineAlerter("m", AlertPolicy())
    zone = {"kind": "iso_zone", "key": "iso_zone", "zone": "C", "velocity_rms_mm_s": 5.0,
            "strength": 1.0}
    alert = {"id": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "episode": "e1",
             "severity": "alarm", "channels": ["de"], "evidence": [zone], "score": 6.0,
             "threshold": 3.0, "alarm_threshold": 6.0}
    feedback.remember(alerter, alert, 100.0)
    assert feedback.apply(alerter, _label(alert, "false_alarm"), at_s=101.0) == "false_alarm"
    verdict = Verdict("monitoring", 1.0, None, 4.0, 3.0, 6.0)
    _, kept = feedback.tolerate(alerter, "de", verdict, [zone], 102.0)
    assert kept == []  # zone C, as labelled: tolerated
    worse = {**zone, "zone": "D", "velocity_rms_mm_s": 9.0}
    _, kept = feedback.tolerate(alerter, "de", verdict, [worse], 103.0)
    assert kept == [worse]  # a worse zone is not


def test_a_false_alarm_elsewhere_keeps_a_fleet_held_baseline_held():
    alerter = MachineAlerter("m", AlertPolicy())
    alerter.channel_state("a").fleet_held = True
    alerter.channel_state("b").state = "warning"
    alerter.state = alerter.announced = "warning"

    class Record:
        start_s, machine, source, features = 5.0, "m", "test", {}

    alerter.false_alarm("b", Record())
    assert alerter.channel_state("a").fleet_held and alerter.state == "normal"
def _evidence(ratio):
    return [{"kind": "feature", "key": "sustained_rms_g", "feature": "sustained_rms_g",
             "ratio": ratio, "ratio_limit": 2.0, "z": 10.0, "strength": ratio / 2.0,
             "text": ""}]


def test_the_tolerance_is_bounded_and_fades():
    """Unit test of the tolerance alone (constructed verdicts and evidence)."""
    from edge_agent.models import Verdict

    alerter = MachineAlerter("m", AlertPolicy())
    fb = feedback.state(alerter)
    fb["alerts"].append({"id": "0a2eb43e-641b-5294-a920-0f69f2bf5f71", "episode": "e",
                         "severity": "alarm", "ts_s": 0.0, "channels": ["de"],
                         "score_ratio": 4.0, "alarm_ratio": 2.0,
                         "evidence": {"sustained_rms_g": 2.5, "bpfi": 135.0}})
    fb["last_s"] = 0.0
    feedback.apply(alerter, {"alert_id": "0a2eb43e-641b-5294-a920-0f69f2bf5f71",
                             "label": "false_alarm"})
    verdict = Verdict("monitoring", 1.0, "any", 4.5, 1.0, 2.0, magnitude=2.0,
                      min_change_ratio=1.15)
    tolerated, kept = feedback.tolerate(alerter, "de", verdict, _evidence(3.7), 0.0)
    assert not tolerated.anomalous and kept == []  # 4.5 < 1.25 × 4; 3.7 < 1.5 × 2.5
    assert feedback.tolerate(alerter, "de", verdict, _evidence(4.0), 0.0)[1] != []  # worse
    assert feedback.tolerate(alerter, "other", verdict, _evidence(3.0), 0.0)[1] != []
    # bounded: a huge labelled defect line is tolerated only up to 3 × its limit (3 × 3)
    line = [{"kind": "fault_line", "key": "line_bpfi", "fault": "bpfi", "ratio": 10.0,
             "ratio_limit": 3.0, "strength": 3.3, "text": ""}]
    assert feedback.tolerate(alerter, "de", verdict, line, 0.0)[1] == line
    # fades: after one half-life the excess over the limit is halved (2 × (3.75/2)^0.5 = 2.74)
    week = feedback.HALF_LIFE_S
    assert feedback.tolerate(alerter, "de", verdict, _evidence(2.6), week)[1] == []
    assert feedback.tolerate(alerter, "de", verdict, _evidence(2.9), week)[1] != []
    assert feedback.tolerate(alerter, "de", verdict, _evidence(2.1), 7 * week)[1] != []
    assert "de" not in fb["tolerance"]  # forgotten
