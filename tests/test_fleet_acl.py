"""The fleet exchange's rights in the shipped broker configuration (deploy/mosquitto/acl):
agents publish their own machines' updates only, only the aggregator publishes priors, and
operators may order a rollback. Checked with MQTT 5 reason codes against a real Mosquitto."""

from __future__ import annotations

import threading

import pytest

from edge_agent.mqtt.client import make_client
from edge_agent.mqtt.topics import Topics
from edge_agent.runtime.config import MqttSettings
from tests.broker import PREFIX, SITE, ShippedBroker

AGENT_ID = "gw-1"
AGGREGATOR = {"fleet-aggregator": "aggregator-pw-a66e9a"}
T = Topics(PREFIX, SITE, "line-3")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    with ShippedBroker(tmp_path_factory.mktemp("fleet-acl"), agent_id=AGENT_ID,
                       extra_users=AGGREGATOR) as b:
        yield b


class Probe:
    """One credential's client on the shipped broker's plain loopback listener."""

    def __init__(self, broker, user):
        settings = MqttSettings(host=broker.host, port=broker.port, username=user,
                                password=broker.users[user])
        self.client = make_client(settings, f"probe-{user}")
        self._cond = threading.Condition()
        self.acks: dict[int, str] = {}
        self.received: list[str] = []
        self.client.on_publish = self._acked
        self.client.on_subscribe = self._acked
        self.client.on_message = self._message
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert connected.wait(10), f"{user} did not connect"

    def _acked(self, client, userdata, mid, reason, properties):
        codes = reason if isinstance(reason, list) else [reason]
        with self._cond:
            self.acks[mid] = "denied" if codes[0].is_failure else "allowed"
            self._cond.notify_all()

    def _message(self, client, userdata, message):
        with self._cond:
            self.received.append(message.topic)
            self._cond.notify_all()

    def wait_for(self, topic):
        with self._cond:
            assert self._cond.wait_for(lambda: topic in self.received, 10), f"no {topic}"

    def _wait(self, mid) -> str:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self.acks, 10), "no acknowledgement"
            return self.acks[mid]

    def publish(self, topic, retain=False) -> str:
        return self._wait(self.client.publish(topic, b"{}", qos=1, retain=retain).mid)

    def subscribe(self, topic_filter) -> str:
        return self._wait(self.client.subscribe(topic_filter, qos=1)[1])

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_agents_publish_only_their_own_updates_and_only_the_aggregator_publishes_priors(shipped):
    agent, aggregator, operator, sensor = (Probe(shipped, u) for u in
                                           ("edge-agent", "fleet-aggregator", "operator", "sensor"))
    try:
        got = {
            "agent own update": agent.publish(T.fleet_update("pump-6205", AGENT_ID, "pump-7")),
            "agent other agent's update": agent.publish(T.fleet_update("pump-6205", "gw-2",
                                                                       "pump-7")),
            "agent prior": agent.publish(T.fleet_prior("pump-6205"), retain=True),
            "agent rollout": agent.publish(T.fleet_doc("pump-6205", "rollout"), retain=True),
            "aggregator prior": aggregator.publish(T.fleet_prior("pump-6205"), retain=True),
            "aggregator candidate": aggregator.publish(T.fleet_doc("pump-6205", "candidate"),
                                                       retain=True),
            "aggregator rollout": aggregator.publish(T.fleet_doc("pump-6205", "rollout"),
                                                     retain=True),
            "aggregator update": aggregator.publish(T.fleet_update("pump-6205", AGENT_ID,
                                                                   "pump-7")),
            "operator rollback": operator.publish(T.fleet_rollback("pump-6205")),
            "operator prior": operator.publish(T.fleet_prior("pump-6205"), retain=True),
            "operator update": operator.publish(T.fleet_update("pump-6205", AGENT_ID, "x")),
        }
        # Mosquitto grants a wildcard subscription and checks each message on delivery: a
        # denied message sent before an allowed marker has not arrived when the marker has.
        for probe, filters in ((agent, [T.fleet_updates_filter(), T.fleet_docs_filter("c")]),
                               (aggregator, [T.fleet_updates_filter(), f"{PREFIX}/{SITE}/+/+/+/raw",
                                             f"{PREFIX}/{SITE}/+/+/alerts"])):
            for f in filters:
                assert probe.subscribe(f) == "allowed"
        assert agent.publish(T.fleet_update("c", AGENT_ID, "m")) == "allowed"
        assert sensor.publish(f"{PREFIX}/{SITE}/line-3/m/de/raw") == "allowed"
        assert agent.publish(f"{PREFIX}/{SITE}/line-3/m/alerts") == "allowed"
        assert aggregator.publish(T.fleet_prior("c"), retain=True) == "allowed"  # the marker
        agent.wait_for(T.fleet_prior("c"))
        aggregator.wait_for(f"{PREFIX}/{SITE}/line-3/m/alerts")
        got["agent reads updates"] = "allowed" if T.fleet_update("c", AGENT_ID, "m") in \
            agent.received else "denied"
        got["aggregator reads updates"] = "allowed" if T.fleet_update("c", AGENT_ID, "m") in \
            aggregator.received else "denied"
        got["aggregator reads raw"] = "allowed" if any(
            t.endswith("/raw") for t in aggregator.received) else "denied"
        got["aggregator reads alerts"] = got["agent reads prior"] = "allowed"  # waited for
    finally:
        for p in (agent, aggregator, operator, sensor):
            p.close()
    assert got == {
        "agent own update": "allowed", "agent other agent's update": "denied",
        "agent prior": "denied", "agent rollout": "denied",
        "agent reads prior": "allowed", "agent reads updates": "denied",
        "aggregator prior": "allowed", "aggregator candidate": "allowed",
        "aggregator rollout": "allowed", "aggregator update": "denied",
        "aggregator reads updates": "allowed", "aggregator reads alerts": "allowed",
        "aggregator reads raw": "denied",
        "operator rollback": "allowed", "operator prior": "denied", "operator update": "denied",
    }
