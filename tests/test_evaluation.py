"""The detection claims, checked on the real recordings in every CI run.

The same code prints the table in benchmarks/evaluate.py, side by side with the
two reference detectors.
"""

from __future__ import annotations

import pytest

from benchmarks import evaluate
from edge_agent.models import DetectorConfig
from tests.conftest import shared

EDGE, RMS, RIVER = 0, 1, 2


@pytest.fixture(autouse=True, scope="module")
def _data_present():
    shared("cwru", "48k_drive_end_0hp", "normal_0_97.mat")  # a clear failure if ../shared is absent


@pytest.mark.slow
def test_cwru_no_alert_on_healthy_windows_and_every_fault_alarms_within_10_windows():
    results = evaluate.evaluate_cwru(DetectorConfig())
    assert results["held_out_windows"] >= 15
    for fault, r in results["faults"].items():
        assert r["alerts_on_normal"][EDGE] == 0, fault
        assert r["first_alarm_window"][EDGE] is not None and r["first_alarm_window"][EDGE] < 10, fault


@pytest.mark.slow
def test_femto_quiet_first_half_sustained_alarm_and_twice_the_reference_lead():
    r = evaluate.evaluate_femto(DetectorConfig())
    assert r["alerts_first_half"][EDGE] == 0
    assert r["sustained_alarm_from"][EDGE] is not None
    assert r["lead_snapshots"][RMS] is not None  # the reference did alarm, late
    assert r["lead_snapshots"][EDGE] >= 2 * r["lead_snapshots"][RMS]


@pytest.mark.slow
def test_ims_failed_bearings_alarm_before_the_end():
    r = evaluate.evaluate_ims(DetectorConfig())
    last_row = r["rows"] - 1
    for bearing in (3, 4):
        first = r["bearings"][bearing]["first_alarm"][EDGE]
        assert first is not None and first < last_row - 100, bearing  # days before the end
    # The references alarm on every bearing within hours of the week-long gap (row 156).
    assert all(b["first_alarm"][RMS] < 250 for b in r["bearings"].values())
