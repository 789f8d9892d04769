"""The staged rollout of fleet priors as a pure state machine (edge_agent.fleet.rollout)."""

from __future__ import annotations

import logging

import pytest

from edge_agent.fleet.rollout import Rollout, RolloutError, RolloutPolicy

MEMBERS = [f"gw-{i}/pump-{i}" for i in range(10)]
HOUR = 3600.0


def started(policy=RolloutPolicy(canaries=("gw-1/pump-1", "gw-2/pump-2"), promote_after_s=HOUR)):
    r = Rollout("pump-6205", policy)
    r.propose(1, now_s=0.0, members=MEMBERS)
    assert r.evaluate(HOUR).stage == "promoted"  # no alerts at all: version 1 is stable
    return r


def test_a_candidate_is_promoted_after_the_period_when_canary_alerts_do_not_rise():
    r = started()
    for t in (HOUR - 1000, HOUR - 500):  # two canary alerts in the hour before the trial
        r.observe_alert("gw-1/pump-1", t)
    r.propose(2, now_s=HOUR, members=MEMBERS)
    assert r.version_for("gw-1/pump-1") == 2 and r.version_for("gw-5/pump-5") == 1
    assert r.evaluate(2 * HOUR - 1) is None  # the period is not over: nothing changes
    for t in (HOUR + 10, HOUR + 20, HOUR + 30):  # three during it: 3 <= 1.5 x 2
        r.observe_alert("gw-2/pump-2", t)
    r.observe_alert("gw-5/pump-5", HOUR + 40)  # not a canary: does not count
    change = r.evaluate(2 * HOUR)
    assert change.stage == "promoted" and r.stable == 2 and r.candidate is None
    assert "canary alerts 3 in 3600 s against 2 before" in change.reason
    assert all(r.version_for(m) == 2 for m in MEMBERS)


def test_a_candidate_is_held_back_with_the_reason_when_canary_alerts_rise():
    r = started()
    r.observe_alert("gw-1/pump-1", HOUR - 10)
    r.propose(2, now_s=HOUR, members=MEMBERS)
    for t in range(4):  # 4 > 1.5 x 1
        r.observe_alert("gw-1/pump-1", HOUR + 100 + t)
    change = r.evaluate(2 * HOUR)
    assert change.stage == "held_back" and r.stable == 1 and r.candidate is None
    assert change.reason == ("version 2 held back: canary alerts 4 in 3600 s against 1 before "
                             "(factor 1.5)")
    assert all(r.version_for(m) == 1 for m in MEMBERS)  # canaries are back on the stable one
    assert r.to_dict()["reason"] == change.reason


def test_one_alert_on_quiet_canaries_is_no_evidence_but_two_are():
    for alerts, stage in ((1, "promoted"), (2, "held_back")):
        r = started()
        r.propose(2, now_s=HOUR, members=MEMBERS)
        for t in range(alerts):
            r.observe_alert("gw-2/pump-2", HOUR + 1 + t)
        assert r.evaluate(2 * HOUR).stage == stage


def test_rollback_returns_to_the_previous_version_and_versions_otherwise_only_move_forward():
    r = started()
    r.propose(2, now_s=HOUR, members=MEMBERS)
    r.evaluate(2 * HOUR)
    assert r.stable == 2
    with pytest.raises(RolloutError, match="not newer than 2"):
        r.propose(2, now_s=2 * HOUR, members=MEMBERS)  # a replay of the same version
    with pytest.raises(RolloutError, match="only move forward"):
        r.propose(1, now_s=2 * HOUR, members=MEMBERS)
    change = r.rollback(2 * HOUR + 5)
    assert change.stage == "rolled_back" and r.stable == 1
    assert change.reason == "rolled back from version 2 to 1 (cmd/fleet-rollback)"
    with pytest.raises(RolloutError, match="no earlier version"):
        r.rollback(2 * HOUR + 6)
    with pytest.raises(RolloutError, match="not newer than 2"):  # 2 was seen: the next is 3
        r.propose(2, now_s=2 * HOUR + 7, members=MEMBERS)
    r.propose(3, now_s=2 * HOUR + 7, members=MEMBERS)
    assert r.version_for("gw-1/pump-1") == 3 and r.version_for("gw-7/pump-7") == 1


def test_rollback_during_a_trial_drops_the_candidate():
    r = started()
    r.propose(2, now_s=HOUR, members=MEMBERS)
    r.evaluate(2 * HOUR)
    r.propose(3, now_s=2 * HOUR, members=MEMBERS)
    r.rollback(2 * HOUR + 1)
    assert (r.stable, r.candidate, r.stage) == (1, None, "rolled_back")
    assert r.evaluate(10 * HOUR) is None  # nothing on trial any more


def test_every_change_is_logged_and_kept_and_the_state_survives_a_restart(caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.fleet.rollout")
    r = started()
    r.propose(2, now_s=HOUR, members=MEMBERS)
    r.evaluate(2 * HOUR)
    r.rollback(2 * HOUR + 1)
    stages = [rec.stage for rec in caplog.records if getattr(rec, "event", "") == "fleet_rollout"]
    assert stages == ["canary", "promoted", "canary", "promoted", "rolled_back"]
    assert [c["stage"] for c in r.to_dict()["history"]] == stages
    assert [rec.seq for rec in caplog.records] == [1, 2, 3, 4, 5]
    again = Rollout.from_dict(r.to_dict(), r.policy)
    assert again.to_dict() == r.to_dict()
    with pytest.raises(RolloutError):
        again.propose(2, now_s=3 * HOUR, members=MEMBERS)  # the restart remembers version 2


def test_canaries_by_fraction_are_stable_and_at_least_one():
    policy = RolloutPolicy(canary_fraction=0.3, promote_after_s=HOUR)
    members = [f"gw-{i // 10}/m-{i}" for i in range(200)]
    chosen = Rollout("c", policy).choose_canaries(members)
    assert chosen == Rollout("c", policy).choose_canaries(reversed(members))
    assert 0.2 * 200 < len(chosen) < 0.4 * 200
    assert len(Rollout("c", RolloutPolicy(canary_fraction=0.0)).choose_canaries(members)) == 1
    assert Rollout("c", policy).choose_canaries([]) == ()
