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


def aggregator_with(tmp_path, keys, *files, state="agg"):  # noqa: F811
    path = tmp_path / "fleet.toml"
    listed = ", ".join(f'"{f}"' for f in files)
    path.write_text(FLEET_TOML.format(state=tmp_path / state, key=keys["key_path"])
                    .replace("[rollout]", f"commissioning = [{listed}]\n[rollout]"))
    return load_fleet_config(path)


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
        assert [r.event for r in caplog.records if hasattr(r, "event")].count(
            "fleet_commissioning_skipped") == 1
    finally:
        agg.outbox.close()
