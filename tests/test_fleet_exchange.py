"""The fleet exchange's two ends without a network: the agent's FleetMember (with a real
Agent fitted on FEMTO snapshots and its real, unstarted AgentLink: outbox and publisher)
and the Aggregator (real, unstarted publisher). The bridged-broker scenario is in
tests/test_fleet_bridge.py; the ACL in tests/test_fleet_acl.py."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import jsonschema
import numpy as np
import pytest

from edge_agent.fleet.aggregate import aggregate
from edge_agent.fleet.aggregator import Aggregator
from edge_agent.fleet.aggregator_config import load_fleet_config, parse_fleet_config
from edge_agent.fleet.document import sign_document, sign_prior, update_to_doc, verify_prior
from edge_agent.fleet.keys import keygen, load_private_key, load_public_key
from edge_agent.fleet.member import FleetMember
from edge_agent.fleet.privacy import sensitivity
from edge_agent.fleet.rollout import Rollout, RolloutPolicy
from edge_agent.fleet.signed import rollout_doc
from edge_agent.models.prior import merge_channels, summary_from_detector
from edge_agent.mqtt.link import AgentLink
from edge_agent.mqtt.topics import Topics
from edge_agent.runtime.agent import Agent
from edge_agent.runtime.config import ConfigError, parse_config
from edge_agent.schema import load_schema
from tests.conftest import REPO
from tests.test_fleet_bridge import snapshots

CLASS = "femto-c1"
MACHINE, OTHER = "femto-bearing1_1", "femto-x"
T = Topics("plant", "site1", "line-3")


def validate(name, doc):
    jsonschema.Draft202012Validator(load_schema(name)).validate(doc)
    return doc


class Clock:
    def __init__(self, t=1.7e9):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    private, public = keygen(tmp_path_factory.mktemp("keys"))
    other, _ = keygen(tmp_path_factory.mktemp("other-keys"))
    return {"key": load_private_key(private), "pub": public, "other": load_private_key(other),
            "key_path": private}


def member_for(tmp_path, keys, **fleet):
    extra = "".join(f"{k} = {v}\n" for k, v in fleet.items())
    config = parse_config(f"""
[agent]
id = "gw-1"
state_dir = "{tmp_path / 'state'}"
[topics]
prefix = "plant"
site = "site1"
area = "line-3"
[fleet]
trust_key = "{keys['pub']}"
publish_every_s = 60.0
{extra}
[[machine]]
id = "{MACHINE}"
class = "{CLASS}"
bearing = "pronostia"
channels = ["horizontal", "vertical"]
[machine.learning]
baseline_windows = 20
[[machine]]
id = "{OTHER}"
class = "{CLASS}"
""")
    agent = Agent(config)
    agent.process(snapshots(MACHINE, 0, 22), live=False)
    link = AgentLink(agent)
    clock = Clock()
    member = FleetMember(agent, link, clock=clock, seed=1)
    agent.fleet = member
    return agent, link, member, clock


@pytest.fixture
def fitted(tmp_path, keys):
    agent, link, member, clock = member_for(tmp_path, keys)
    yield agent, link, member, clock
    link.close(drain_s=0)


def own_summary(agent):
    parts = {c: summary_from_detector(d, class_name=CLASS, machine=MACHINE, channel=c)
             for (m, c), d in agent.pipeline.detectors.items() if m == MACHINE}
    return merge_channels(parts)


def signed_prior(agent, key, version, class_name=CLASS):
    s = own_summary(agent)
    members = [replace(s, machine=f"m{i}", class_name=class_name) for i in range(3)]
    return sign_prior(aggregate(members, class_name=class_name, version=version,
                                created_s=1.7e9), key)


def send(member, topic, doc):
    member.on_document(topic, json.dumps(doc).encode())


# -- sharing ------------------------------------------------------------------------------------
@pytest.fixture
def bootstrapping(tmp_path, keys):
    """A member that shares before its class has a prior (``share_before_prior = true``)."""
    agent, link, member, clock = member_for(tmp_path, keys, share_before_prior="true")
    yield agent, link, member, clock
    link.close(drain_s=0)


def test_an_update_is_privatised_accounted_bounded_and_queued_in_the_outbox(bootstrapping):
    agent, link, member, clock = bootstrapping
    assert member.fitted(MACHINE) and not member.fitted(OTHER)
    member.tick()
    pending = link.outbox.pending()
    assert [m.topic for m in pending] == [T.fleet_update(CLASS, "gw-1", MACHINE)]
    assert len(pending[0].payload) <= 65536 and pending[0].qos == 1 and not pending[0].retain
    doc = validate("fleet-update", json.loads(pending[0].payload))
    assert doc["autoencoder"] is None and doc["privacy"]["epsilon"] > 0
    # no prior yet: the bootstrap release, which says its guarantee is not exact
    assert doc["privacy"]["exact"] is False and doc["privacy"]["reference"] is None
    raw = own_summary(agent)
    shared = np.array([f["location"] for f in doc["features"]])
    assert not np.allclose(shared, raw.location)  # noise was added ...
    assert np.abs(shared - raw.location).max() < 1.0  # ... and the summary still means something
    member.tick()
    assert len(link.outbox.pending()) == 1  # at most every publish_every_s
    clock.t += 61
    member.tick()
    assert len(link.outbox.pending()) == 2
    status = member.status()["machines"]
    assert status[MACHINE]["sharing"] == "on" and status[MACHINE]["updates"] == 2
    assert status[MACHINE]["privacy"] == "bootstrap"
    assert status[OTHER]["sharing"] == "waiting_baseline"


def test_sharing_stops_at_the_privacy_budget_with_the_libraries_epsilon(tmp_path, keys):
    from dp_accounting import GaussianDpEvent, rdp

    agent, link, member, clock = member_for(tmp_path, keys, epsilon_budget=5.0,
                                            noise_multiplier=4.0, share_before_prior="true")
    try:
        for _ in range(20):
            member.tick()
            clock.t += 61
        sent = len(link.outbox.pending())
        status = member.status()["machines"][MACHINE]
        assert 1 <= sent < 20 and status["sharing"] == "budget_spent"
        acc = rdp.RdpAccountant()
        acc.compose(GaussianDpEvent(4.0), 4 * sent)  # two mechanisms per channel, two channels
        assert status["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
        assert status["epsilon"] <= 5.0
        link.close(drain_s=0)
        # the budget is not reset by a restart
        agent, link, member, clock = member_for(tmp_path, keys, epsilon_budget=5.0,
                                                noise_multiplier=4.0, share_before_prior="true")
        member.tick()
        assert member.status()["machines"][MACHINE]["sharing"] == "budget_spent"
        assert len(link.outbox.pending()) == sent
        spent = member.status()["machines"][MACHINE]["epsilon"]
        link.close(drain_s=0)
        # nor by raising the budget: what was spent counts against the new one
        agent, link, member, clock = member_for(tmp_path, keys, epsilon_budget=5.5,
                                                noise_multiplier=4.0, share_before_prior="true")
        assert member.status()["machines"][MACHINE]["epsilon"] == pytest.approx(spent)
        for _ in range(20):
            member.tick()
            clock.t += 61
        more = len(link.outbox.pending()) - sent
        acc = rdp.RdpAccountant()
        acc.compose(GaussianDpEvent(4.0), 4 * (sent + more))
        assert 0 <= more < sent and acc.get_epsilon(1e-5) <= 5.5
        assert member.status()["machines"][MACHINE]["epsilon"] == pytest.approx(
            acc.get_epsilon(1e-5), rel=1e-6)
    finally:
        link.close(drain_s=0)


# -- receiving ----------------------------------------------------------------------------------
def test_by_default_a_member_waits_for_a_prior_then_shares_exactly_against_it(tmp_path, keys):
    agent, link, member, clock = member_for(tmp_path, keys)  # share_before_prior's default
    try:
        member.tick()
        assert link.outbox.pending() == []
        assert member.status()["machines"][MACHINE]["sharing"] == "waiting_prior"
        send(member, T.fleet_prior(CLASS), signed_prior(agent, keys["key"], 3))
        member.tick()
        [update] = link.outbox.pending()
        doc = validate("fleet-update", json.loads(update.payload))
        assert doc["privacy"]["exact"] is True and doc["privacy"]["reference"] == "prior v3"
        status = member.status()["machines"][MACHINE]
        assert status["sharing"] == "on" and status["privacy"] == "exact"
        # clipped means of its own windows around the prior, noised by the noise multiplier
        # times one window's influence, in units of the prior's widened scale (the prior
        # here is its own summary thrice: its own scale); 20 windows make that noisy
        raw = own_summary(agent)
        assert [f["name"] for f in doc["features"]] == list(raw.feature_names)
        per_channel = len(raw.feature_names) // 2
        noise_sd = 4.0 * sensitivity(doc["windows"], per_channel, 3.0) * raw.scale
        shared = np.array([f["location"] for f in doc["features"]])
        assert np.all(np.abs(shared - raw.location) < 6 * noise_sd)
        assert not np.allclose(shared, raw.location)
        from dp_accounting import GaussianDpEvent, rdp

        acc = rdp.RdpAccountant()
        acc.compose(GaussianDpEvent(4.0), 4)  # level and scale, two channels
        assert status["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    finally:
        link.close(drain_s=0)


def test_a_prior_without_one_of_its_channels_stops_sharing_says_so_once_until_the_next(
        tmp_path, keys, caplog):
    from edge_agent.models.prior import summary_from_detector

    agent, link, member, clock = member_for(tmp_path, keys)  # share_before_prior's default
    try:
        horizontal = summary_from_detector(agent.pipeline.detectors[(MACHINE, "horizontal")],
                                           class_name=CLASS, machine=MACHINE,
                                           channel="horizontal")
        one_channel = sign_prior(aggregate(
            [replace(merge_channels({"horizontal": horizontal}), machine=f"m{i}")
             for i in range(3)], class_name=CLASS, version=1, created_s=1.7e9), keys["key"])
        send(member, T.fleet_prior(CLASS), one_channel)
        assert member.status()["machines"][MACHINE]["prior_version"] == 1
        for _ in range(3):
            member.tick()
            clock.t += 3600
        assert link.outbox.pending() == []  # nothing exact to share for the vertical channel
        assert member.status()["machines"][MACHINE]["sharing"] == "prior_mismatch"
        assert [r.version for r in caplog.records
                if getattr(r, "event", None) == "fleet_prior_mismatch"] == [1]
        send(member, T.fleet_prior(CLASS), signed_prior(agent, keys["key"], 2))
        member.tick()
        [update] = link.outbox.pending()
        assert json.loads(update.payload)["privacy"]["reference"] == "prior v2"
        assert member.status()["machines"][MACHINE]["sharing"] == "on"
    finally:
        link.close(drain_s=0)


def test_bad_priors_are_refused_by_reason_and_counted_a_good_one_is_applied(fitted, keys):
    agent, link, member, clock = fitted
    good = signed_prior(agent, keys["key"], 1)
    tampered = json.loads(json.dumps(good))
    tampered["features"][0]["location"] += 0.5
    unsigned = {k: v for k, v in good.items() if k != "signature"}
    topic = T.fleet_prior(CLASS)
    send(member, topic, tampered)
    send(member, topic, unsigned)
    send(member, topic, signed_prior(agent, keys["other"], 1))  # another key
    send(member, topic, signed_prior(agent, keys["key"], 1, class_name="fan-9"))
    member.on_document(topic, b"{not json")
    assert agent.pipeline.priors == {}
    assert member.status()["refused"] == {"signature": 2, "unsigned": 1, "wrong_class": 1,
                                          "format": 1}
    send(member, topic, good)
    assert agent.pipeline.priors[MACHINE].version == 1 and agent.pipeline.priors[OTHER].version == 1
    send(member, topic, signed_prior(agent, keys["key"], 2))
    assert agent.pipeline.priors[MACHINE].version == 2
    send(member, topic, good)  # an older version replayed
    assert agent.pipeline.priors[MACHINE].version == 2
    send(member, topic, signed_prior(agent, keys["key"], 2))  # the same again (a reconnect)
    assert member.status()["refused"]["old_version"] == 1  # the replay only
    status = member.status()
    assert status["machines"][MACHINE]["prior_version"] == 2
    link.publish_status()  # the agent status with its fleet member validates
    validate("agent-status", link.publisher._agent_status("online", **link.publisher._agent_parts))


def rollout_at(stage_changes, key):
    r = Rollout(CLASS, RolloutPolicy(canaries=(f"gw-1/{MACHINE}",), promote_after_s=10))
    docs = []
    for change in stage_changes:
        change(r)
        docs.append(validate("fleet-rollout", sign_document(rollout_doc(r, created_s=1.7e9), key)))
    return docs


def test_the_signed_rollout_decides_who_uses_what_and_only_it_moves_a_version_back(fitted, keys,
                                                                                 tmp_path):
    agent, link, member, clock = fitted
    members = [f"gw-1/{MACHINE}", f"gw-1/{OTHER}"]
    promoted1, trial2, promoted2, trial3, rolled_back = rollout_at([
        lambda r: (r.propose(1, now_s=0, members=members), r.evaluate(10)),
        lambda r: r.propose(2, now_s=10, members=members),
        lambda r: r.evaluate(20),
        lambda r: r.propose(3, now_s=20, members=members),
        lambda r: r.rollback(21)], keys["key"])
    for v in (1, 2, 3):
        send(member, T.fleet_doc(CLASS, "candidate"), signed_prior(agent, keys["key"], v))
    send(member, T.fleet_doc(CLASS, "rollout"), promoted1)
    assert {m: p.version for m, p in agent.pipeline.priors.items()} == {MACHINE: 1, OTHER: 1}
    send(member, T.fleet_doc(CLASS, "rollout"), trial2)
    assert {m: p.version for m, p in agent.pipeline.priors.items()} == {MACHINE: 2, OTHER: 1}
    assert member.status()["machines"][MACHINE]["prior_role"] == "candidate"
    send(member, T.fleet_doc(CLASS, "rollout"), promoted2)
    send(member, T.fleet_doc(CLASS, "rollout"), trial3)
    assert {m: p.version for m, p in agent.pipeline.priors.items()} == {MACHINE: 3, OTHER: 2}
    send(member, T.fleet_doc(CLASS, "rollout"), trial3)  # the same again (a reconnect)
    send(member, T.fleet_doc(CLASS, "rollout"), trial2)  # an old rollout replayed
    assert member.status()["refused"] == {"old_version": 1}
    forged = {**rolled_back, "stable": 3}  # a rollout that the aggregator did not sign
    send(member, T.fleet_doc(CLASS, "rollout"), forged)
    assert member.status()["refused"] == {"old_version": 1, "signature": 1}
    send(member, T.fleet_doc(CLASS, "rollout"), rolled_back)  # 3 dropped, back to 1
    assert {m: p.version for m, p in agent.pipeline.priors.items()} == {MACHINE: 1, OTHER: 1}
    assert member.status()["classes"][CLASS]["stage"] == "rolled_back"
    # a restart: the broker sends the retained documents again, the same rollout included
    link.close(drain_s=0)
    again = FleetMember(agent, link, clock=clock, seed=1)
    agent.pipeline.priors.clear()
    for v in (1, 2, 3):
        send(again, T.fleet_doc(CLASS, "candidate"), signed_prior(agent, keys["key"], v))
    send(again, T.fleet_doc(CLASS, "rollout"), rolled_back)
    assert {m: p.version for m, p in agent.pipeline.priors.items()} == {MACHINE: 1, OTHER: 1}
    assert again.status()["refused"] == {}
    send(again, T.fleet_doc(CLASS, "rollout"), trial3)  # older than the saved one: never
    assert again.status()["refused"] == {"old_version": 1}


# -- the aggregator -----------------------------------------------------------------------------
FLEET_TOML = """
[aggregator]
id = "fleet-agg-1"
state_dir = "{state}"
key = "{key}"
share_group = ""
max_classes = 2
max_members_per_class = 4
aggregate_every_s = 100.0
[rollout]
canaries = ["gw-0/m0"]
promote_after_s = 50.0
[topics]
prefix = "plant"
site = "site1"
"""


@pytest.fixture
def aggregator(tmp_path, keys):
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET_TOML.format(state=tmp_path / "agg", key=keys["key_path"]))
    clock = Clock()
    agg = Aggregator(load_fleet_config(path), clock=clock)
    yield agg, clock
    agg.outbox.close()  # (twice is harmless)


def update(summary, agent, machine, t, factor=1.0):
    s = replace(summary, machine=machine, location=summary.location + np.log10(factor) * summary.log)
    return T.fleet_update(CLASS, agent, machine), json.dumps(update_to_doc(
        s, agent=agent, created_s=t)).encode()


def test_the_aggregator_builds_a_robust_signed_prior_rolls_it_out_and_rolls_back(fitted, keys,
                                                                                  aggregator):
    agent, _, _, _ = fitted
    agg, clock = aggregator
    summary = own_summary(agent)
    for i in range(3):
        agg.handle(("update",) + update(summary, f"gw-{i}", f"m{i}", clock.t))
    agg.handle(("update",) + update(summary, "gw-9", "evil", clock.t, factor=10.0))  # poisoned
    agg.tick()
    doc = agg.priors[CLASS][1]
    prior = verify_prior(doc, load_public_key(keys["pub"]), class_name=CLASS)
    assert prior.members == 3 and prior.provenance["excluded"] == ["evil"]  # set aside
    honest = summary.typical()
    for name, value in prior.typical().items():  # the poisoned member moved nothing
        assert value == pytest.approx(honest[name], rel=1e-6), name
    status = agg.status()["classes"][CLASS]
    assert (status["stage"], status["candidate"], status["stable"]) == ("canary", 1, None)
    clock.t += 50
    agg.tick()
    assert agg.rollouts[CLASS].stable == 1
    # version 2: its canary alerts twice during the trial, none before: held back
    clock.t += 100
    agg.handle(("update",) + update(summary, "gw-1", "m1", clock.t))
    agg.tick()
    for _ in range(2):
        agg.handle(("alert", "plant/site1/line-3/m0/alerts", json.dumps(
            {"agent": "gw-0", "machine": "m0", "severity": "warning"}).encode()))
    clock.t += 50
    agg.tick()
    status = agg.status()["classes"][CLASS]
    assert status["stage"] == "held_back" and status["stable"] == 1
    assert status["reason"] == ("version 2 held back: canary alerts 2 in 50 s against 0 before "
                                "(factor 1.5)")
    # version 3 is promoted, and the operator's cmd/fleet-rollback returns to 1
    clock.t += 100
    agg.handle(("update",) + update(summary, "gw-2", "m2", clock.t))
    agg.tick()
    clock.t += 50
    agg.tick()
    assert agg.rollouts[CLASS].stable == 3
    agg.handle(("rollback", T.fleet_rollback(CLASS), b"{}"))
    assert agg.rollouts[CLASS].stable == 1 and agg.rollouts[CLASS].stage == "rolled_back"
    retained = json.loads(agg.publisher._statuses._docs[T.fleet_prior(CLASS)].payload)
    assert retained["version"] == 1 and retained == agg.priors[CLASS][1]
    rollout = json.loads(agg.publisher._statuses._docs[T.fleet_doc(CLASS, "rollout")].payload)
    validate("fleet-rollout", rollout)
    assert [h["stage"] for h in rollout["history"]] == ["canary", "promoted", "canary",
                                                         "held_back", "canary", "promoted",
                                                         "rolled_back"]
    # a restart keeps members, versions and the rollout
    agg.outbox.close()
    again = Aggregator(agg.config, clock=clock)
    assert again.rollouts[CLASS].to_dict() == agg.rollouts[CLASS].to_dict()
    assert set(again.members[CLASS]) == set(agg.members[CLASS])
    again.outbox.close()


def test_one_gateway_inventing_machines_does_not_outvote_the_others(fitted, keys, tmp_path):
    """A compromised gateway may publish updates for any machine name of its own: counted
    once per gateway, four invented machines at ×10 are one member, set aside."""
    agent, _, _, _ = fitted
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET_TOML.format(state=tmp_path / "agg", key=keys["key_path"])
                    .replace("max_members_per_class = 4", "max_members_per_class = 16"))
    clock = Clock()
    agg = Aggregator(load_fleet_config(path), clock=clock)
    summary = own_summary(agent)
    for i in range(3):
        agg.handle(("update",) + update(summary, f"gw-{i}", f"m{i}", clock.t))
    for k in range(4):
        agg.handle(("update",) + update(summary, "gw-9", f"fake{k}", clock.t, factor=10.0))
    agg.tick()
    prior = verify_prior(agg.priors[CLASS][1], load_public_key(keys["pub"]), class_name=CLASS)
    agg.outbox.close()
    assert prior.members == 3 and prior.provenance["excluded"] == ["gw-9/*"]
    honest = summary.typical()
    for name, value in prior.typical().items():
        assert value == pytest.approx(honest[name], rel=1e-6), name


def test_the_aggregator_bounds_what_the_network_names_and_refuses_by_reason(fitted, aggregator):
    agent, _, _, _ = fitted
    agg, clock = aggregator
    summary = own_summary(agent)
    for i in range(6):  # 4 members per class: new names are refused, nobody is pushed out
        agg.handle(("update",) + update(summary, f"gw-{i}", f"m{i}", clock.t + i))
    assert list(agg.members[CLASS]) == [f"gw-{i}/m{i}" for i in range(4)]
    agg.handle(("update",) + update(summary, "gw-3", "m3", clock.t + 9))  # a member: taken
    assert agg.members[CLASS]["gw-3/m3"]["created"] > agg.members[CLASS]["gw-2/m2"]["created"]
    topic, payload = update(summary, "gw-1", "m1", clock.t)
    for cls in ("c2", "c3"):  # two classes at most
        doc = {**json.loads(payload), "class": cls}
        agg.handle(("update", T.fleet_update(cls, "gw-1", "m1"), json.dumps(doc).encode()))
    agg.handle(("update", T.fleet_update(CLASS, "gw-1", "other"), payload))  # names another
    agg.handle(("update", topic, b"x" * 70_000))
    agg.handle(("update", topic, b"[1, 2]"))
    agg.handle(("update", "plant/site1/fleet/femto-c1/updates/gw-1", payload))
    assert set(agg.members) == {CLASS, "c2"}
    assert agg.status()["refused"] == {"too_many_members": 2, "too_many_classes": 1,
                                       "bad_topic": 2, "oversized": 1, "format": 1}
    validate("agent-status", agg.publisher._agent_status("online", fleet=agg.status()))


def test_the_example_fleet_toml_parses_and_errors_name_the_key(tmp_path):
    config = load_fleet_config(REPO / "deploy" / "fleet" / "fleet.example.toml")
    assert config.aggregator.share_group == "fleet-aggregators"
    assert config.mqtt.status_max_bytes == 1 << 20  # priors may be larger than a status
    base = FLEET_TOML.format(state=tmp_path, key=tmp_path / "k")
    for line, message in [("min_members = 0", "aggregator.min_members = 0 is out of range"),
                          ("method = 'mean'", "aggregator.method: 'mean'"),
                          ("canaries = ['m0']", "rollout.canaries[0]: 'm0' must be"),
                          ("colour = 1", "aggregator.colour: unknown key")]:
        table = "[rollout]" if "canaries" in line else "[aggregator]"
        text = base.replace("canaries = [\"gw-0/m0\"]\n", "") if "canaries" in line else base
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_fleet_config(text.replace(table + "\n", f"{table}\n{line}\n"))


def test_docs_fleet_md_documents_every_fleet_toml_key_with_its_default_and_range():
    import dataclasses
    import re

    from edge_agent.fleet.aggregator_config import AggregatorConfig
    from edge_agent.runtime.ranges import RANGES

    text = (REPO / "docs" / "fleet.md").read_text().split("### fleet.toml", 1)[1]
    rows = {m[0]: (m[1].strip(), m[2].strip())
            for m in re.findall(r"^\| `([a-z_.]+)` \| ([^|]*) \| ([^|]*) \|", text, re.M)}
    example = (REPO / "deploy" / "fleet" / "fleet.example.toml").read_text()
    for table, cls in (("aggregator", AggregatorConfig), ("rollout", RolloutPolicy)):
        for f in dataclasses.fields(cls):
            default, rng = rows.pop(f"{table}.{f.name}")
            assert re.search(rf"^{f.name} = ", example, re.M), f"example lacks {table}.{f.name}"
            if f.default is not dataclasses.MISSING:
                shown = (str(list(f.default)) if isinstance(f.default, tuple)
                         else f'"{f.default}"' if isinstance(f.default, str) else str(f.default))
                assert default == f"`{shown}`", (table, f.name, default)
            expected = RANGES.get(cls.__name__, {}).get(f.name)
            assert rng == (expected.text() if expected else "—"), (table, f.name, rng)
    assert rows == {}


def settled(*aggregators):
    """As if the broker had acknowledged their subscriptions ``PEER_SETTLE_S`` ago."""
    from edge_agent.fleet.aggregator import PEER_SETTLE_S

    for agg in aggregators:
        agg._subscribed_s = time.monotonic() - PEER_SETTLE_S


def test_an_aggregator_of_a_pair_leads_only_after_the_settle_time_and_its_peers_status(
        keys, tmp_path):
    pair = []
    for me, peer in (("fleet-agg-1", "fleet-agg-2"), ("fleet-agg-2", "fleet-agg-1")):
        text = FLEET_TOML.format(state=tmp_path / me, key=keys["key_path"]).replace(
            'id = "fleet-agg-1"', f'id = "{me}"\npeers = ["{peer}"]')
        pair.append(Aggregator(parse_fleet_config(text), clock=Clock()))
    first, second = pair
    try:
        # not subscribed yet, then just subscribed: a peer's retained status, rollout and
        # versions may be on their way, whichever name comes first
        for agg in pair:
            assert not agg.leader
            agg._subscribed_s = time.monotonic()
            assert not agg.leader
        settled(*pair)
        assert first.leader and second.leader  # no status came: the peer never ran
        for status, leads in (("online", False), ("offline", True)):
            doc = json.dumps({"agent": "fleet-agg-1", "status": status}).encode()
            second.handle(("peer", T.agent_status("fleet-agg-1"), doc))
            assert second.leader is leads, status
        online = json.dumps({"agent": "fleet-agg-2", "status": "online"}).encode()
        first.handle(("peer", T.agent_status("fleet-agg-2"), online))
        assert first.leader  # the first in name order leads while it is online
    finally:
        for agg in pair:
            agg.outbox.close()


def test_a_standby_aggregator_follows_the_leader_and_takes_over_when_it_goes_offline(
        fitted, keys, tmp_path):
    agent, _, _, _ = fitted
    summary = own_summary(agent)
    clock = Clock()
    pair = []
    for me, peer in (("fleet-agg-1", "fleet-agg-2"), ("fleet-agg-2", "fleet-agg-1")):
        text = FLEET_TOML.format(state=tmp_path / me, key=keys["key_path"]).replace(
            'id = "fleet-agg-1"', f'id = "{me}"\npeers = ["{peer}"]')
        pair.append(Aggregator(parse_fleet_config(text), clock=clock))
    leader, standby = pair
    settled(*pair)

    def retained(agg):
        return {t.rsplit("/", 1)[1]: d.payload for t, d in agg.publisher._statuses._docs.items()
                if t.startswith(T.fleet_root(CLASS)) and "/members/" not in t}

    try:
        online = json.dumps({"agent": "fleet-agg-1", "status": "online"}).encode()
        standby.handle(("peer", T.agent_status("fleet-agg-1"), online))
        assert leader.leader and not standby.leader
        # the shared subscription splits the updates; the member board gives both all of them
        for i in range(3):
            topic, payload = update(summary, f"gw-{i}", f"m{i}", clock.t)
            (leader if i % 2 else standby).handle(("update", topic, payload))
        for agg in pair:
            for board_topic, doc in list(agg.publisher._statuses._docs.items()):
                if "/members/" in board_topic:
                    for other in pair:
                        other.handle(("board", board_topic, doc.payload))
        assert set(leader.members[CLASS]) == set(standby.members[CLASS]) == {
            "gw-0/m0", "gw-1/m1", "gw-2/m2"}
        standby.tick()
        assert standby.rollouts == {}  # the standby publishes nothing
        leader.tick()
        clock.t += 50
        leader.tick()  # version 1 promoted by the leader
        docs = retained(leader)
        for name in ("prior", "candidate", "rollout"):
            standby.handle((name, T.fleet_doc(CLASS, name), docs[name]))
        assert standby.rollouts[CLASS].stable == 1 and 1 in standby.priors[CLASS]
        # the leader's Last Will: the standby leads, and its next version is 2, never 1 again
        offline = json.dumps({"agent": "fleet-agg-1", "status": "offline"}).encode()
        standby.handle(("peer", T.agent_status("fleet-agg-1"), offline))
        assert standby.leader
        clock.t += 200
        standby.handle(("update",) + update(summary, "gw-1", "m1", clock.t))
        standby.tick()
        assert standby.rollouts[CLASS].candidate == 2 and standby.rollouts[CLASS].seq == 3
        # the first restarts from its state (version 1, seq 2): before it leads it takes the
        # standby's newer rollout and versions, so its next version is 3, not a second 2
        leader.outbox.close()
        restarted = Aggregator(leader.config, clock=clock)
        pair.append(restarted)
        assert restarted.rollouts[CLASS].seq == 2
        restarted._subscribed_s = time.monotonic()
        assert not restarted.leader
        docs = retained(standby)
        for name in ("rollout", "prior", "candidate"):
            restarted.handle((name, T.fleet_doc(CLASS, name), docs[name]))
        settled(restarted)
        assert restarted.leader and restarted.rollouts[CLASS].seq == 3
        assert sorted(restarted.priors[CLASS]) == [1, 2]
        clock.t += 4000
        restarted.handle(("update",) + update(summary, "gw-2", "m2", clock.t))
        restarted.tick()
        assert restarted.rollouts[CLASS].candidate == 3 and restarted.rollouts[CLASS].seq == 4
    finally:
        for agg in pair:
            agg.outbox.close()


def test_fleet_aggregate_with_a_bad_configuration_key_or_commissioning_file_exits_2(
        tmp_path, keys):
    from tests.test_cli import edge_agent

    path = tmp_path / "fleet.toml"
    path.write_text(FLEET_TOML.format(state=tmp_path / "agg", key=tmp_path / "missing.key"))
    result = edge_agent("fleet", "aggregate", "--config", str(path), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "missing.key" in result.stderr
    path.write_text(path.read_text().replace("min_members = 3\n", "").replace(
        "max_classes = 2", "max_classes = 0"))
    result = edge_agent("fleet", "aggregate", "--config", str(path), check=False)
    assert result.returncode == 2 and "aggregator.max_classes = 0 is out of range" in result.stderr
    (tmp_path / "unsigned.json").write_text("{}")
    path.write_text(FLEET_TOML.format(state=tmp_path / "agg", key=keys["key_path"]).replace(
        "[rollout]", 'commissioning = ["unsigned.json"]\n[rollout]'))
    result = edge_agent("fleet", "aggregate", "--config", str(path), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "aggregator.commissioning: " in result.stderr and "unsigned.json: refused (unsigned)" \
        in result.stderr
