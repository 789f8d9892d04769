"""The detection claims, checked on every run to failure in ../shared/data in every CI run.

The same code prints the figures of benchmarks/README.md (``python benchmarks/evaluate.py``),
side by side with the two reference detectors. Each run is replayed whole, once per test
session, with edge-agent's default configuration (the criteria are in evaluate.py).
"""

from __future__ import annotations

import pytest

from benchmarks import evaluate
from tests.conftest import shared

RUNS = [*evaluate.FEMTO, *evaluate.IMS]


@pytest.fixture(scope="module")
def runs():
    shared("femto", "femto_learning_Bearing1_1.npz")  # a clear failure if ../shared is absent
    out = {}
    for name, path in {**evaluate.FEMTO, **evaluate.IMS}.items():
        records = evaluate.collect([path])
        out[name] = evaluate.evaluate_run(name, records, river=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_every_run_to_failure_passes_the_criteria(runs, name):
    r = runs[name]
    assert r["a"], f"(a) unbacked alarms at windows {r['unbacked_alarms']}"
    assert r["b"], f"(b) unbacked alerts before {r['b_limit']}: {r['unbacked_before']}"
    assert r["c"], (f"(c) final episode opens at {r['final_opens']} (level rule {r['level_onset']}), "
                    f"alarm at {r['final_alarm']}")
    # every alarm's evidence is as the document states it: ratio and z against the limits
    for alert in r["alerts"]:
        assert (alert["severity"] == "alarm") == bool(alert["evidence"]), alert["summary"]
        assert alert["summary"].split(": ", 1)[1].startswith(
            next((e["text"] for e in alert["evidence"] if e["kind"] != "iso_zone"), ""))


@pytest.mark.slow
def test_bearing1_2_keeps_its_early_warning(runs):
    r = runs["FEMTO Bearing1_2"]
    assert r["first_alert_severity"] == "warning"
    assert r["lead"]["first_alert"] >= 2 * r["lead"]["level"]


@pytest.mark.slow
def test_femto_baselines_end_where_dense_recordings_always_ended(runs):
    for name in evaluate.FEMTO:
        assert set(runs[name]["baseline_windows"].values()) == {120}, name


@pytest.mark.slow
def test_ims_test_1_is_one_machine_its_baseline_a_day_and_its_alarm_names_a_failed_bearing(runs):
    r = runs["IMS test 1"]
    coverage = r["coverage"]
    assert set(coverage) == {f"bearing{k}-{axis}" for k in range(1, 5) for axis in "xy"}
    assert all(24.0 <= c["running_h"] < 25.0 and c["windows"] > 120 for c in coverage.values())
    final = evaluate.final_episode(r["alerts"])
    alarm = next(a for a in final if a["severity"] == "alarm")
    assert alarm["channel"].split("-")[0] in ("bearing3", "bearing4")  # the two that failed
    assert len({a["episode"] for a in final}) == 1
    # the level rule's first firing (bearing 4 for one window in row 491) is not its onset
    assert r["level_first"] < r["level_onset"] - 500


@pytest.mark.slow
def test_cwru_no_alert_on_held_back_healthy_windows_and_every_fault_alarms_within_a_few():
    shared("cwru", "48k_drive_end_0hp", "normal_0_97.mat")
    results = evaluate.evaluate_cwru(river=False)
    assert results["held_out_windows"] >= 15
    for fault, r in results["faults"].items():
        assert r["alerts_on_normal"]["edge-agent"] == 0, fault
        first = r["first_alarm_window"]["edge-agent"]
        assert first is not None and first < 10, fault
        assert r["alarms_backed"], fault
