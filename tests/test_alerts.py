"""Alert logic: persistence, hysteresis, cooldown, and what an alert says."""

from __future__ import annotations

import uuid

import pytest

from edge_agent.runtime.alerts import AlertPolicy, ChannelAlertState, MachineAlerter, alert_id
from edge_agent.frame import FeatureRecord
from edge_agent.models import DetectorConfig, Verdict
from edge_agent.runtime.pipeline import Pipeline
from tests.test_learning import cwru_records, run

T = 2.0  # threshold of the constructed verdicts; the alarm threshold is 2 T


def verdict(score: float) -> Verdict:
    return Verdict("monitoring", 1.0, "any", score, T, 2 * T, False, magnitude=2.0,
                   min_change_ratio=1.15)


def feed(scores, policy=AlertPolicy(), step_s=60.0):
    """Machine-level alerts for a sequence of scores on one channel."""
    alerter = MachineAlerter("m", policy)
    alerts = []
    for i, s in enumerate(scores):
        rec = FeatureRecord("m", "x", i * step_s, {}, None, f"row {i}")
        alert = alerter.update("x", verdict(s), rec, {}, "v", 0)
        if alert:
            alerts.append((i, alert["severity"]))
    return alerts, alerter


def test_one_noisy_window_never_alerts():
    alerts, _ = feed([0.5] * 10 + [50.0] + [0.5] * 10 + [3.0, 0.5, 3.0, 0.5, 0.5, 3.0])
    assert alerts == []


def test_k_of_n_raises_warning_then_alarm():
    alerts, alerter = feed([0.5] * 5 + [3.0, 0.5, 3.0, 3.0] + [9.0, 9.0, 0.5, 9.0])
    assert alerts == [(8, "warning"), (12, "alarm")]
    assert alerter.state == "alarm"


def test_hysteresis_a_score_hovering_at_the_threshold_does_not_flap():
    # Around the threshold (1.9 / 2.1): once raised, it only clears after ten
    # windows in a row below 0.8 x threshold.
    hovering = [2.1, 1.9] * 30
    alerts, alerter = feed([2.1, 2.1, 2.1] + hovering + [1.0] * 9)
    assert alerts == [(2, "warning")] and alerter.state == "warning"
    alerts, _ = feed([2.1, 2.1, 2.1] + hovering + [1.0] * 10)
    assert alerts == [(2, "warning"), (72, "normal")]


def test_flapping_cannot_storm_and_a_held_alert_is_sent_when_the_window_allows():
    policy = AlertPolicy(clear_windows=2, cooldown_s=3600.0, cooldown_max_alerts=3)
    cycle = [3.0, 3.0, 3.0, 0.1, 0.1]  # warning, cleared, warning ... every 5 minutes
    alerts, alerter = feed(cycle * 24, policy)  # two hours
    warnings = [i * 60.0 for i, s in alerts if s == "warning"]
    # three at once, then held until the first leaves the hour: 6 in two hours, not 24
    assert warnings[2] < 900.0  # the first three go out as they come
    assert warnings[3] - warnings[0] >= 3600.0  # the fourth waits for the first to age out
    assert len(warnings) <= 6
    assert alerter.held >= 1


def test_a_new_escalation_is_not_delayed_by_an_earlier_cleared_one():
    # A short alarm that clears, then half an hour later a real one: it goes out at once.
    scores = [9.0] * 3 + [0.1] * 12 + [0.5] * 15 + [9.0] * 3
    alerts, _ = feed(scores, AlertPolicy(clear_windows=10, cooldown_s=3600.0))
    assert [s for _, s in alerts] == ["alarm", "normal", "alarm"]
    assert alerts[-1][0] == len(scores) - 1


def test_de_escalation_steps_down_without_a_new_alert():
    alerts, alerter = feed([9.0] * 3 + [3.0] * 12)
    assert alerts == [(2, "alarm")]
    assert alerter.channels["x"].state == "warning" and alerter.announced == "alarm"


def test_stopped_and_baselining_windows_are_not_evidence():
    state = ChannelAlertState(AlertPolicy())
    for _ in range(10):
        state.update(Verdict("stopped", 1.0))
        state.update(Verdict("baselining", 0.5))
    assert state.state == "normal" and not state.recent


def test_alert_ids_are_deterministic_and_distinct():
    a = alert_id("agent", "pump-1", "alarm", 1000.0, 0)
    assert a == alert_id("agent", "pump-1", "alarm", 1000.0, 0)
    assert len({a, alert_id("agent", "pump-1", "warning", 1000.0, 0),
                alert_id("agent", "pump-1", "alarm", 1000.0, 1),
                alert_id("agent", "pump-2", "alarm", 1000.0, 0)}) == 4
    assert uuid.UUID(a).version == 5


@pytest.fixture(scope="module")
def inner_race_alert():
    _, alerts = run(Pipeline(DetectorConfig(baseline_windows=30)),
                    cwru_records() + cwru_records("inner_race", t0=10.0))
    assert len(alerts) == 1
    return alerts[0]


def test_alert_on_a_real_fault_says_what_an_analyst_would(inner_race_alert):
    alert = inner_race_alert
    assert alert["severity"] == "alarm" and alert["machine"] == "m"
    assert alert["score"] >= alert["alarm_threshold"] > alert["threshold"] > 0
    assert alert["ts"].endswith("Z") and alert["model_version"].startswith("0.")
    assert uuid.UUID(alert["id"])
    top = alert["features"]
    assert 1 <= len(top) <= 3
    for feature in top:
        assert feature["value"] > feature["baseline"] > 0 and feature["unit"] in ("g", "mm/s", "")
        assert feature["label"] in feature["text"]
    # The inner race defect is named by its line.
    assert alert["fault_lines"][0]["fault"] == "bpfi"
    assert alert["fault_lines"][0]["frequency_hz"] == pytest.approx(162.1, abs=0.5)
    assert "BPFI 162 Hz envelope ×" in alert["summary"]
    assert alert["iso_20816"]["zone"] in "ABCD"
    assert "ISO 20816 zone" in alert["summary"]
