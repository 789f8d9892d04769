"""Alert logic: severity from evidence, persistence, hysteresis, cooldown, episodes, and what
an alert says."""

from __future__ import annotations

import json
import logging
import math
import pickle
import uuid

import pytest

from edge_agent.frame import FeatureRecord
from edge_agent.models import DetectorConfig, Verdict
from edge_agent.runtime.alerts import AlertPolicy, ChannelAlertState, MachineAlerter, alert_id
from edge_agent.runtime.evidence import evidence_names, window_evidence
from edge_agent.runtime.pipeline import Pipeline
from tests.test_learning import cwru_records, run

T = 2.0  # threshold of the constructed verdicts; the alarm threshold is 2 T
#: A channel's baseline: sustained RMS 0.1 g with a 5 % spread (log10 0.021), a noisy
#: low band (log10 spread 0.2: ×1.6 per standard deviation) and a quiet defect line.
REFERENCE = {"sustained_rms_g": 0.1, "band_10_20hz_rms_g": 0.01, "env_bpfo_g": 0.01,
             "env_bpfo_ratio": 1.5}
SPREAD = {"sustained_rms_g": 0.021, "band_10_20hz_rms_g": 0.2, "env_bpfo_g": 0.05,
          "env_bpfo_ratio": 0.05}
HEALTHY = {"sustained_rms_g": 0.1, "band_10_20hz_rms_g": 0.01}
DOUBLED = {"sustained_rms_g": 0.23, "band_10_20hz_rms_g": 0.01}  # ×2.3, z = 17


def verdict(score: float, magnitude: float = 2.0, phase: str = "monitoring") -> Verdict:
    return Verdict(phase, 1.0, "any", score, T, 2 * T, False, magnitude=magnitude,
                   min_change_ratio=1.15)


def feed(scores, features=None, policy=AlertPolicy(), step_s=60.0, magnitude=None):
    """Machine-level alerts for a sequence of scores (and features) on one channel; the
    practical change (magnitude) is there while the score is above the threshold, unless
    given."""
    alerter = MachineAlerter("m", policy)
    alerts = []
    for i, s in enumerate(scores):
        f = features[i] if isinstance(features, list) else (features or HEALTHY)
        rec = FeatureRecord("m", "x", i * step_s, dict(f), None, f"row {i}")
        m = magnitude if magnitude is not None else (2.0 if s >= T else 1.0)
        alert = alerter.update("x", verdict(s, m), rec, REFERENCE, "v", 0, spread=SPREAD)
        if alert:
            alerts.append((i, alert["severity"], alert))
    return [(i, s) for i, s, _ in alerts], alerter, [a for *_, a in alerts]


def test_one_noisy_window_never_alerts():
    alerts, _, _ = feed([0.5] * 10 + [50.0] + [0.5] * 10 + [3.0, 0.5, 3.0, 0.5, 0.5, 3.0])
    assert alerts == []


def test_a_score_at_alarm_level_without_evidence_is_a_warning_that_escalates_when_it_arrives():
    scores = [0.5] * 5 + [9.0] * 10
    features = [HEALTHY] * 10 + [DOUBLED] * 5
    alerts, alerter, docs = feed(scores, features)
    assert alerts == [(7, "warning"), (12, "alarm")]
    warning, alarm = docs
    assert warning["evidence"] == [] and "score at alarm level" in warning["summary"]
    assert alarm["episode"] == warning["episode"] and alarm["id"] != warning["id"]
    assert alarm["previous_severity"] == "warning"
    [rms] = alarm["evidence"]
    assert rms["feature"] == "sustained_rms_g" and rms["windows"] == 3
    assert rms["ratio"] == pytest.approx(2.3) and rms["z"] == pytest.approx(math.log10(2.3) / 0.021)
    assert (rms["ratio_limit"], rms["z_limit"]) == (2.0, 3.0)
    assert alarm["summary"].startswith("m ALARM on x: sustained RMS 0.23 g, 2.3× baseline")


def test_persistent_evidence_is_an_alarm_even_when_the_combined_score_stays_low():
    """One indicator at 2.3x its baseline, 17 spreads out, is a clear anomaly by itself: the
    alarm does not wait for the learners, which average it with the unchanged others."""
    alerts, _, docs = feed([0.5] * 8, [HEALTHY] * 3 + [DOUBLED] * 5)
    assert alerts == [(5, "alarm")] and docs[0]["evidence"][0]["feature"] == "sustained_rms_g"


def test_a_due_warning_waits_for_evidence_that_is_building_up():
    # anomalous from window 0, the evidence from window 1: one alert, the alarm at 3
    alerts, _, _ = feed([9.0] * 6, [HEALTHY] + [DOUBLED] * 5)
    assert alerts == [(3, "alarm")]
    # evidence that does not persist: the warning waits at most persistence_k - 1 windows
    alerts, _, _ = feed([9.0] * 8, [HEALTHY, HEALTHY, DOUBLED, HEALTHY, DOUBLED, HEALTHY,
                                    HEALTHY, HEALTHY])
    assert alerts == [(3, "warning")]


def test_knocks_in_every_window_are_no_evidence_when_the_sustained_statistics_are_calm():
    knock = {"kurtosis": 60.0, "sustained_kurtosis": 3.1, "crest_factor": 15.0,
             "sustained_crest_factor": 3.2, "sustained_rms_g": 0.1}
    reference = {"kurtosis": 3.0, "sustained_kurtosis": 3.0, "crest_factor": 3.5,
                 "sustained_crest_factor": 3.2, "sustained_rms_g": 0.1}
    spread = {k: 0.03 for k in reference}
    names = evidence_names(knock)
    assert names == ["sustained_crest_factor", "sustained_kurtosis", "sustained_rms_g"]
    assert window_evidence(knock, names, reference, spread, AlertPolicy()) == []


def test_evidence_must_persist_k_of_n_windows():
    scores = [9.0] * 12
    features = [HEALTHY] * 5 + [DOUBLED, HEALTHY, HEALTHY, DOUBLED, HEALTHY, HEALTHY, DOUBLED]
    alerts, _, _ = feed(scores, features)
    assert alerts == [(2, "warning")]  # two evidenced windows of any five: no alarm


def test_a_noisy_band_that_doubles_is_no_evidence():
    band = {"sustained_rms_g": 0.1, "band_10_20hz_rms_g": 0.025}  # ×2.5, but z = 2.0
    assert window_evidence(band, ["band_10_20hz_rms_g", "sustained_rms_g"], REFERENCE, SPREAD,
                           AlertPolicy()) == []
    alerts, _, _ = feed([9.0] * 10, band)
    assert alerts == [(2, "warning")]


def test_iso_zone_c_and_a_risen_defect_line_are_evidence_and_zone_b_is_not():
    policy = AlertPolicy()
    names = evidence_names(["velocity_rms_mm_s"])
    zone = lambda z, v: {"iso_zone": z, "velocity_rms_mm_s": v}  # noqa: E731
    assert window_evidence(zone("B", 2.0), names, {}, {}, policy) == []
    [c] = window_evidence(zone("C", 3.1), names, {}, {}, policy)
    assert c["kind"] == "iso_zone" and c["zone"] == "C" and "ISO 20816 zone C" in c["text"]
    line = {"env_bpfo_g": 0.05, "env_bpfo_ratio": 6.0, "bpfo_hz": 107.3}
    [bpfo] = window_evidence(line, [], REFERENCE, SPREAD, policy)
    assert bpfo["kind"] == "fault_line" and bpfo["ratio"] == pytest.approx(5.0)
    # Amplitude up but not standing out of the envelope floor: broadband impacting.
    assert window_evidence({**line, "env_bpfo_ratio": 2.0}, [], REFERENCE, SPREAD, policy) == []
    alerts, _, docs = feed([9.0] * 6, zone("D", 8.0))
    assert alerts == [(2, "alarm")] and docs[0]["evidence"][0]["zone"] == "D"


def test_a_machine_that_runs_in_zone_c_as_commissioned_is_not_paged(caplog):
    """The zone says how bad a level is, not that it changed: evidence only in windows the
    learners find anomalous; the machine's zone is logged once."""
    caplog.set_level(logging.WARNING, logger="edge_agent.runtime.alerts")
    steady = {"iso_zone": "C", "velocity_rms_mm_s": 3.1}
    alerts, _, _ = feed([0.5] * 12, steady)  # calm learners, zone C from the start
    assert alerts == []
    said = [r for r in caplog.records if getattr(r, "event", "") == "iso_zone_reached"]
    assert len(said) == 1 and said[0].zone == "C"
    alerts, _, docs = feed([0.5] * 3 + [9.0] * 6, steady)  # then it changes: an alarm
    assert alerts == [(5, "alarm")] and docs[0]["evidence"][0]["kind"] == "iso_zone"


def test_hysteresis_a_score_hovering_at_the_threshold_does_not_flap():
    # Around the threshold (1.9 / 2.1): once raised, it only clears after ten
    # windows in a row below 0.8 x threshold with health indicators back to normal.
    hovering = [2.1, 1.9] * 30
    alerts, alerter, _ = feed([2.1, 2.1, 2.1] + hovering + [1.0] * 9)
    assert alerts == [(2, "warning")] and alerter.state == "warning"
    alerts, _, _ = feed([2.1, 2.1, 2.1] + hovering + [1.0] * 10)
    assert alerts == [(2, "warning"), (72, "normal")]


def test_a_warning_stands_while_a_health_indicator_stays_changed():
    """A calm score is not "back to normal" while the practical change is still there."""
    alerter = MachineAlerter("m", AlertPolicy())
    states = []
    for i, (s, m) in enumerate([(3.0, 1.3)] * 3 + [(0.5, 1.3)] * 20 + [(0.5, 1.0)] * 10):
        rec = FeatureRecord("m", "x", i * 60.0, dict(HEALTHY), None, "")
        alert = alerter.update("x", verdict(s, m), rec, REFERENCE, "v", 0, spread=SPREAD)
        states.append(alert["severity"] if alert else None)
    assert states.index("warning") == 2 and states.index("normal") == 32


def test_flapping_cannot_storm_and_a_held_alert_is_sent_when_the_window_allows():
    policy = AlertPolicy(clear_windows=2, cooldown_s=3600.0, cooldown_max_alerts=3)
    cycle = [3.0, 3.0, 3.0, 0.1, 0.1]  # warning, cleared, warning ... every 5 minutes
    alerts, alerter, _ = feed(cycle * 24, policy=policy)
    warnings = [i * 60.0 for i, s in alerts if s == "warning"]
    # three at once, then held until the first leaves the hour: 6 in two hours, not 24
    assert warnings[2] < 900.0  # the first three go out as they come
    assert warnings[3] - warnings[0] >= 3600.0  # the fourth waits for the first to age out
    assert len(warnings) <= 6
    assert alerter.held >= 1


def test_a_new_escalation_is_not_delayed_by_an_earlier_cleared_one():
    # A short alarm that clears, then half an hour later a real one: it goes out at once.
    scores = [9.0] * 3 + [0.1] * 12 + [0.5] * 15 + [9.0] * 3
    features = [DOUBLED] * 3 + [HEALTHY] * 27 + [DOUBLED] * 3
    alerts, _, docs = feed(scores, features, AlertPolicy(clear_windows=10, cooldown_s=3600.0))
    assert [s for _, s in alerts] == ["alarm", "normal", "alarm"]
    assert alerts[-1][0] == len(scores) - 1
    # each episode has its own id; the normal alert closes the first
    assert docs[0]["episode"] == docs[1]["episode"] != docs[2]["episode"]


def test_de_escalation_steps_down_without_a_new_alert():
    alerts, alerter, _ = feed([9.0] * 15, [DOUBLED] * 3 + [HEALTHY] * 12)
    assert alerts == [(2, "alarm")]
    assert alerter.channels["x"].state == "warning" and alerter.announced == "alarm"


def test_stopped_and_baselining_windows_are_not_evidence():
    state = ChannelAlertState(AlertPolicy())
    for _ in range(10):
        state.update(Verdict("stopped", 1.0))
        state.update(Verdict("baselining", 0.5))
    assert state.state == "normal" and not state.recent
    # Nor does a stop clear an alarm: the machine is still in alarm when it runs again.
    alerter = feed([9.0] * 5, DOUBLED)[1]
    for i in range(20):
        rec = FeatureRecord("m", "x", 1000.0 + i, {}, None, "")
        assert alerter.update("x", verdict(None, phase="stopped"), rec, REFERENCE, "v", 0) is None
    assert alerter.state == "alarm"


def test_alert_ids_are_deterministic_and_distinct():
    a = alert_id("agent", "pump-1", "alarm", 1000.0, 0)
    assert a == alert_id("agent", "pump-1", "alarm", 1000.0, 0)
    assert len({a, alert_id("agent", "pump-1", "warning", 1000.0, 0),
                alert_id("agent", "pump-1", "alarm", 1000.0, 1),
                alert_id("agent", "pump-2", "alarm", 1000.0, 0)}) == 4
    assert uuid.UUID(a).version == 5


def test_channels_anomalous_together_are_one_episode_led_by_the_strongest_evidence():
    """Bearings on one shaft: the neighbour that hears the failing bearing does not page
    again, and the escalation names the bearing with the evidence."""
    alerter = MachineAlerter("rig", AlertPolicy())
    strong = {"sustained_rms_g": 0.5, "band_10_20hz_rms_g": 0.01}  # ×5
    alerts = []
    for i in range(10):
        for channel, features, score in (("bearing2-x", HEALTHY, 9.0),
                                         ("bearing3-x", strong if i >= 5 else HEALTHY,
                                          9.0 if i >= 5 else 0.5)):
            rec = FeatureRecord("rig", channel, i * 600.0, dict(features), None, f"row {i}")
            alert = alerter.update(channel, verdict(score), rec, REFERENCE, "v", 0, spread=SPREAD)
            alerts += [(i, alert)] if alert else []
    (i, warning), (j, alarm) = alerts
    assert (i, warning["severity"], warning["channel"], warning["channels"]) == \
        (2, "warning", "bearing2-x", ["bearing2-x"])
    assert (j, alarm["severity"], alarm["channel"]) == (7, "alarm", "bearing3-x")
    assert alarm["channels"] == ["bearing3-x", "bearing2-x"]
    assert alarm["episode"] == warning["episode"]
    assert alarm["evidence"][0]["ratio"] == pytest.approx(5.0)
    assert alarm["summary"].startswith("rig ALARM on bearing3-x: sustained RMS 0.5 g, 5.0× baseline")
    assert alarm["summary"].endswith("; also bearing2-x")


def test_alerter_state_is_plain_data_and_survives_a_restart_mid_episode():
    _, alerter, [warning] = feed([9.0] * 4, [HEALTHY] * 4)
    state = {k: v for k, v in vars(alerter).items() if k not in ("policy", "channels")}
    channels = {c: {k: v for k, v in vars(ch).items() if k != "policy"}
                for c, ch in alerter.channels.items()}
    assert json.loads(json.dumps({"alerter": state, "channels": channels}))["alerter"] == state
    restored = pickle.loads(pickle.dumps(alerter))  # a restart from a checkpoint
    alerts = []
    for i in range(4, 8):
        rec = FeatureRecord("m", "x", i * 60.0, dict(DOUBLED), None, "")
        alert = restored.update("x", verdict(9.0), rec, REFERENCE, "v", 0, spread=SPREAD)
        alerts += [(i, alert)] if alert else []
    [(i, alarm)] = alerts
    assert i == 6 and alarm["severity"] == "alarm" and alarm["episode"] == warning["episode"]


@pytest.fixture(scope="module")
def inner_race_alert():
    _, alerts = run(Pipeline(DetectorConfig(baseline_windows=30)),
                    cwru_records() + cwru_records("inner_race", t0=10.0))
    assert len(alerts) == 1
    return alerts[0]


def test_alert_on_a_real_fault_says_what_an_analyst_would(inner_race_alert):
    alert = inner_race_alert
    assert alert["severity"] == "alarm" and alert["machine"] == "m"
    assert alert["score"] > alert["threshold"] > 0
    assert alert["ts"].endswith("Z") and alert["model_version"].startswith("0.")
    assert uuid.UUID(alert["id"]) and uuid.UUID(alert["episode"])
    top = alert["features"]
    assert 1 <= len(top) <= 3
    for feature in top:
        assert feature["value"] > feature["baseline"] > 0 and feature["unit"] in ("g", "mm/s", "")
        assert feature["label"] in feature["text"]
    # The inner race defect is named by its line, and backs the alarm with the rest.
    assert alert["fault_lines"][0]["fault"] == "bpfi"
    assert alert["fault_lines"][0]["frequency_hz"] == pytest.approx(162.1, abs=0.5)
    evidence = {e.get("feature") or e.get("fault"): e for e in alert["evidence"]}
    assert evidence["bpfi"]["kind"] == "fault_line" and evidence["bpfi"]["ratio"] >= 3
    assert all(e["ratio"] >= 2 and e["z"] >= 3 for e in alert["evidence"] if e["kind"] == "feature")
    assert all(e["windows"] >= 3 for e in alert["evidence"])
    first = alert["evidence"][0]
    assert alert["summary"].startswith(f"m ALARM on de: {first['text']}")
    assert "BPFI 162 Hz envelope ×" in alert["summary"]
    assert alert["iso_20816"]["zone"] in "ABCD"
    assert "ISO 20816 zone" in alert["summary"]
