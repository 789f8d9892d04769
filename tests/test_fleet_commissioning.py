"""A class starts from a prior commissioned from recordings: the aggregator adopts it once.

By default (``share_before_prior = false``) members share nothing before their class has a
prior, so a fleet starts from ``edge-agent fleet prior`` on healthy siblings' recordings,
listed in ``[aggregator] commissioning``; the members' exact updates against it make the
next versions.
"""

from __future__ import annotations

import json

import pytest

from edge_agent.fleet.aggregator import Aggregator
from edge_agent.fleet.aggregator_config import load_fleet_config
from edge_agent.runtime.toml_build import ConfigError
from tests.test_fleet_exchange import (CLASS, FLEET_TOML, MACHINE, T, Clock, fitted,  # noqa: F401
                                       keys, own_summary, send, signed_prior, update)


def aggregator_with(tmp_path, keys, *files, state="agg", extra=""):  # noqa: F811
    path = tmp_path / "fleet.toml"
    listed = ", ".join(f'"{f}"' for f in files)
    path.write_text(FLEET_TOML.format(state=tmp_path / state, key=keys["key_path"])
                    .replace("[rollout]", f"commissioning = [{listed}]\n{extra}[rollout]"))
    return load_fleet_config(path)


def alert(agg, agent, machine):
    agg.handle(("alert", f"plant/site1/line-3/{machine}/alerts", json.dumps(
        {"agent": agent, "machine": machine, "severity": "warning"}).encode()))


def events(caplog, name):
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def retained(agg, topic):
    return json.loads(agg.publisher._statuses._docs[topic].payload)


def test_a_commissioned_prior_starts_the_class_once_and_members_share_exactly_against_it(
        fitted, keys, tmp_path):  # noqa: F811
    agent, link, member, clock = fitted
    commissioned = signed_prior(agent, keys["key"], 1)
    (tmp_path / "c1.prior.json").write_text(json.dumps(commissioned))
    config = aggregator_with(tmp_path, keys, "c1.prior.json")  # relative to fleet.toml
    agg_clock = Clock()
    agg = Aggregator(config, clock=agg_clock)
    try:
        agg.tick()
        status = agg.status()["classes"][CLASS]
        assert (status["stage"], status["stable"], status["candidate"]) == ("promoted", 1, None)
        assert status["reason"] == "version 1 commissioned from c1.prior.json"
        assert retained(agg, T.fleet_prior(CLASS)) == commissioned
        rollout = retained(agg, T.fleet_doc(CLASS, "rollout"))
        # a member with the default configuration waits, then shares exactly against it
        member.tick()
        assert link.outbox.pending() == []
        assert member.status()["machines"][MACHINE]["sharing"] == "waiting_prior"
        send(member, T.fleet_doc(CLASS, "rollout"), rollout)
        send(member, T.fleet_prior(CLASS), retained(agg, T.fleet_prior(CLASS)))
        member.tick()
        [shared] = link.outbox.pending()
        doc = json.loads(shared.payload)
        assert doc["privacy"] == {**doc["privacy"], "exact": True, "reference": "prior v1"}
        # members' updates make version 2, a candidate on trial (versions move forward)
        for i in range(3):
            agg.handle(("update",) + update(own_summary(agent), f"gw-{i}", f"m{i}", agg_clock.t))
        agg.tick()
        status = agg.status()["classes"][CLASS]
        assert (status["stage"], status["stable"], status["candidate"]) == ("canary", 1, 2)
        seq = agg.rollouts[CLASS].seq
        agg.outbox.close()
        # a restart does not adopt it again
        agg = Aggregator(config, clock=agg_clock)
        agg.tick()
        assert agg.rollouts[CLASS].seq == seq and agg.rollouts[CLASS].candidate == 2
    finally:
        agg.outbox.close()


def test_a_commissioned_prior_that_does_not_verify_or_is_not_newer_is_not_adopted(
        fitted, keys, tmp_path, caplog):  # noqa: F811
    from edge_agent.fleet.keys import keygen, load_private_key

    agent = fitted[0]
    doc = signed_prior(agent, keys["key"], 1)
    tampered = dict(doc, created="2020-01-01T00:00:00Z")
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    with pytest.raises(ConfigError, match=r"tampered\.json: refused \(signature\)"):
        Aggregator(aggregator_with(tmp_path, keys, "tampered.json"))
    other, _ = keygen(tmp_path / "other")
    (tmp_path / "other.json").write_text(json.dumps(signed_prior(agent, load_private_key(other), 1)))
    with pytest.raises(ConfigError, match=r"other\.json: refused \(signature\)"):
        Aggregator(aggregator_with(tmp_path, keys, "other.json"))
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read it"):
        Aggregator(aggregator_with(tmp_path, keys, "missing.json"))
    # a class that already made version 1 skips a commissioned version 1, and says so
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    clock = Clock(1.8e9)  # (a prior of other members at another time than the file's)
    agg = Aggregator(aggregator_with(tmp_path, keys, state="built"), clock=clock)
    for i in range(3):
        agg.handle(("update",) + update(own_summary(agent), f"gw-{i}", f"m{i}", clock.t))
    agg.tick()
    made = agg.priors[CLASS][1]
    agg.outbox.close()
    agg = Aggregator(aggregator_with(tmp_path, keys, "v1.json", state="built"), clock=clock)
    try:
        agg.tick()
        assert agg.priors[CLASS][1] == made and agg.rollouts[CLASS].candidate == 1
        assert len(events(caplog, "fleet_commissioning_skipped")) == 1
        agg.outbox.close()
        agg = Aggregator(aggregator_with(tmp_path, keys, "v1.json", state="built"), clock=clock)
        agg.tick()  # said once: not again at the next start
        assert len(events(caplog, "fleet_commissioning_skipped")) == 1
    finally:
        agg.outbox.close()


def test_a_version_commissioned_beside_a_stable_one_is_tried_against_the_alerts_before_a_restart(
        fitted, keys, tmp_path, caplog):  # noqa: F811
    agent = fitted[0]
    for v in (1, 2):
        (tmp_path / f"c{v}.json").write_text(json.dumps(signed_prior(agent, keys["key"], v)))
    clock = Clock()
    agg = Aggregator(aggregator_with(tmp_path, keys, "c1.json"), clock=clock)
    try:
        agg.tick()
        for i in range(2):  # fewer than min_members: nothing is built
            agg.handle(("update",) + update(own_summary(agent), f"gw-{i}", f"m{i}", clock.t))
        for _ in range(4):  # the canary's alerts in the 40 s before a restart
            clock.t += 10
            alert(agg, "gw-0", "m0")
        agg._save()  # (the service saves them with its status, at most every 5 s)
        agg.outbox.close()
        clock.t += 1
        # the restart lists the next commissioned version: a candidate on trial on the canary
        agg = Aggregator(aggregator_with(tmp_path, keys, "c1.json", "c2.json"), clock=clock)
        agg.tick()
        rollout = agg.rollouts[CLASS]
        assert (rollout.stage, rollout.stable, rollout.candidate) == ("canary", 1, 2)
        assert rollout.reason.startswith("version 2 on trial on 1 canary")
        for _ in range(3):  # as many as before, at the same rate: not worse (1.5 x 4 allowed)
            clock.t += 10
            alert(agg, "gw-0", "m0")
        clock.t += 21
        agg.tick()
        assert (rollout.stage, rollout.stable, rollout.candidate) == ("promoted", 2, None)
        assert "canary alerts 3 in 51 s against 4 before" in rollout.reason
        # c1, adopted before the restart, was neither adopted again nor warned about
        assert events(caplog, "fleet_commissioning_skipped") == []
        assert [r.stage for r in rollout.history] == ["promoted", "canary", "promoted"]
    finally:
        agg.outbox.close()


def test_commissioning_refuses_a_class_not_aggregated_and_a_rollback_below_it(
        fitted, keys, tmp_path, caplog):  # noqa: F811
    agent = fitted[0]
    (tmp_path / "fan.json").write_text(json.dumps(signed_prior(agent, keys["key"], 1,
                                                               class_name="fan-9")))
    with pytest.raises(ConfigError, match=r"fan\.json: class 'fan-9' is not in aggregator"):
        Aggregator(aggregator_with(tmp_path, keys, "fan.json", extra=f'classes = ["{CLASS}"]\n'))
    (tmp_path / "c1.json").write_text(json.dumps(signed_prior(agent, keys["key"], 1)))
    agg = Aggregator(aggregator_with(tmp_path, keys, "c1.json"), clock=Clock())
    try:
        agg.tick()
        seq = agg.rollouts[CLASS].seq
        agg.handle(("rollback", f"plant/site1/fleet/{CLASS}/cmd/fleet-rollback", b""))
        [refused] = events(caplog, "fleet_rollback_refused")
        assert "no earlier version to roll back to (stable 1)" in refused.reason
        assert agg.rollouts[CLASS].seq == seq and agg.rollouts[CLASS].stable == 1
    finally:
        agg.outbox.close()


def test_a_standby_taking_over_after_the_leader_moved_past_the_commissioned_prior_is_silent(
        fitted, keys, tmp_path, caplog):  # noqa: F811
    from tests.test_fleet_exchange import settled

    agent = fitted[0]
    (tmp_path / "c1.json").write_text(json.dumps(signed_prior(agent, keys["key"], 1)))
    clock = Clock()
    pair = []
    for me, peer in (("fleet-agg-1", "fleet-agg-2"), ("fleet-agg-2", "fleet-agg-1")):
        aggregator_with(tmp_path, keys, "c1.json", state=me, extra=f'peers = ["{peer}"]\n')
        path = tmp_path / "fleet.toml"  # (written again for each)
        path.write_text(path.read_text().replace('id = "fleet-agg-1"', f'id = "{me}"'))
        pair.append(Aggregator(load_fleet_config(path), clock=clock))
    leader, standby = pair
    settled(*pair)
    try:
        online = json.dumps({"agent": "fleet-agg-1", "status": "online"}).encode()
        standby.handle(("peer", T.agent_status("fleet-agg-1"), online))
        leader.tick()  # commissions version 1
        for i in range(3):
            leader.handle(("update",) + update(own_summary(agent), f"gw-{i}", f"m{i}", clock.t))
        leader.tick()
        clock.t += 60
        leader.tick()  # version 2 made from the members' updates, promoted: 1 is not retained
        assert (leader.rollouts[CLASS].stable, leader.rollouts[CLASS].stage) == (2, "promoted")
        for name in ("prior", "rollout"):
            topic = T.fleet_doc(CLASS, name)
            standby.handle((name, topic, leader.publisher._statuses._docs[topic].payload))
        assert sorted(standby.priors[CLASS]) == [2]
        offline = json.dumps({"agent": "fleet-agg-1", "status": "offline"}).encode()
        standby.handle(("peer", T.agent_status("fleet-agg-1"), offline))
        standby.tick()
        assert standby.leader and standby.rollouts[CLASS].seq == leader.rollouts[CLASS].seq
        assert events(caplog, "fleet_commissioning_skipped") == []
    finally:
        for agg in pair:
            agg.outbox.close()
