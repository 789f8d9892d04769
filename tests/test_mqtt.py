"""The MQTT transport against a real Mosquitto (tests/broker.py): delivery, status, security, outages."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import jsonschema
import pytest

from edge_agent.mqtt.ingest import decode_raw, encode_raw
from edge_agent.mqtt.operator import add_alerts_parser, alerts_command
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.client import make_client
from edge_agent.mqtt.publisher import Publisher
from edge_agent.runtime.config import MqttSettings
from edge_agent.schema import channel_status, load_schema, machine_status_doc
from edge_agent.mqtt.topics import Topics, alerts_filter
from tests.broker import PREFIX, SITE, USERS, Broker
from tests.test_ingest import frame
from tests.test_schema import make_alert



# -- fixtures and helpers --------------------------------------------------------------------------
def wait_until(predicate, timeout_s: float):
    """Poll ``predicate`` until it is true (returned) or ``timeout_s`` passes (falsy)."""
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return result


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture
def own_broker(tmp_path):
    """A broker of the test's own, for tests that stop it."""
    with Broker(tmp_path / "mosquitto") as b:
        yield b


def settings(broker, user="agent", **changes) -> MqttSettings:
    base = {"host": broker.host, "port": broker.port, "username": user, "password": USERS[user],
            "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 10}
    base.update(changes)
    return MqttSettings(**base)


@pytest.fixture
def agents(tmp_path):
    """``start(broker, site=…, agent_id=…, **settings)`` → a started Publisher; all closed after."""
    made = []

    def start(broker, *, site=SITE, agent_id="gw-1", outbox_path=None, wait=True, **changes):
        outbox = Outbox(outbox_path or tmp_path / f"outbox-{len(made)}.sqlite")
        pub = Publisher(settings(broker, **changes), outbox, Topics(PREFIX, site, "line-a"),
                        agent_id, machines=["pump-7"])
        made.append(pub)
        pub.start()
        if wait:
            assert pub.wait_connected(10), broker.log()[-3000:]
        return pub

    yield start
    for pub in made:
        pub.close(drain_s=0, timeout_s=2)
        pub.outbox.close()


class Collector:
    """An operator-side subscriber that records every message."""

    def __init__(self, broker, topic_filter=f"{PREFIX}/#", *, user="operator", session=None,
                 **changes):
        self.messages: list = []
        self.cond = threading.Condition()
        self.filter = topic_filter
        s = settings(broker, user=user, **changes)
        self.client = make_client(s, session or f"collector-{id(self)}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        kwargs = {}
        if session:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect(broker.host, s.broker_port, keepalive=10, **kwargs)
        self.client.loop_start()
        assert self.subscribed.wait(5), "collector did not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.filter, qos=1)

    def _on_message(self, client, userdata, message):
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout_s=10.0) -> list:
        """Messages so far, once ``predicate(messages)`` holds."""
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.messages), timeout_s), \
                [(m.topic, m.payload[:100]) for m in self.messages]
            return list(self.messages)

    def on(self, topic: str) -> list:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collectors():
    made = []

    def make(*args, **kwargs):
        made.append(Collector(*args, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def validate(name: str, payload: bytes) -> dict:
    doc = json.loads(payload)
    jsonschema.Draft202012Validator(load_schema(name)).validate(doc)
    return doc


def connack(broker, port=None, **changes) -> str:
    """The CONNACK reason a client with these settings gets (or the connect error)."""
    s = settings(broker, **changes)
    client = make_client(s, f"probe-{time.monotonic_ns()}")
    result: list[str] = []
    got = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        result.append(reason_code.getName())
        got.set()

    client.on_connect = on_connect
    try:
        client.connect(broker.host, port or s.broker_port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return f"error: {type(exc).__name__}"
    client.loop_start()
    try:
        got.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0] if result else "no CONNACK"


# -- delivery --------------------------------------------------------------------------------------
def test_alert_arrives_with_qos1_and_validates(broker, agents, collectors):
    sub = collectors(broker, alerts_filter(PREFIX))
    pub = agents(broker)
    alert = make_alert()
    seq = pub.publish_alert(alert)
    assert pub.outbox.depth in (0, 1) and seq > 0
    [msg] = sub.wait_for(lambda ms: len(ms) == 1)
    assert msg.topic == f"{PREFIX}/{SITE}/line-a/pump-7/alerts"
    assert msg.qos == 1 and not msg.retain
    assert validate("alert", msg.payload) == alert
    if pub.settings.protocol == "5":
        assert msg.properties.ContentType == "application/json"
    assert pub.wait_idle(5) and pub.counters()["acked"] == 1


def test_retained_status_documents_validate(broker, agents, collectors):
    pub = agents(broker)
    topics = pub.topics
    ch = channel_status(phase="monitoring", state="warning", baseline_progress=1.0, score=3.2,
                        threshold=2.0, alarm_threshold=4.0, last_window_s=time.time(),
                        sensor_health="ok", rejected={"clipped": 2})
    for n in range(30):  # a burst: only the newest may end up retained
        pub.publish_status(topics.machine_status("pump-7"), machine_status_doc(
            "gw-1", "pump-7", {"de": {**ch, "windows": n}}, outbox_depth=0, model_version="m"))
    assert pub.wait_idle(5)
    late = collectors(broker)  # subscribes after the fact: sees retained messages only
    msgs = late.wait_for(lambda ms: {m.topic for m in ms} >= {topics.machine_status("pump-7"),
                                                               pub.status_topic})
    machine = [m for m in msgs if m.topic == topics.machine_status("pump-7")]
    assert len(machine) == 1 and machine[0].retain
    assert validate("machine-status", machine[0].payload)["channels"]["de"]["windows"] == 29
    [agent] = [m for m in msgs if m.topic == pub.status_topic]
    doc = validate("agent-status", agent.payload)
    assert agent.retain and doc["status"] == "online" and doc["machines"] == ["pump-7"]


AGENT_SCRIPT = """
import sys, time
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.publisher import Publisher
from edge_agent.runtime.config import MqttSettings
from edge_agent.mqtt.topics import Topics
host, port, password, path = sys.argv[1:5]
pub = Publisher(MqttSettings(host=host, port=int(port), username="agent", password=password,
                             keepalive_s=5), Outbox(path), Topics("plant", "site1", "line-a"),
                "gw-doomed", machines=["pump-7"])
pub.start()
assert pub.wait_connected(10)
print("ready", flush=True)
time.sleep(60)
"""


def test_last_will_offline_when_the_agent_process_dies(broker, collectors, tmp_path):
    topic = f"{PREFIX}/agents/gw-doomed/status"
    sub = collectors(broker, topic)
    proc = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, broker.host, str(broker.port),
                             USERS["agent"], str(tmp_path / "ob.sqlite")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        sub.wait_for(lambda ms: any(json.loads(m.payload)["status"] == "online" for m in ms))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    msgs = sub.wait_for(lambda ms: json.loads(ms[-1].payload)["status"] == "offline")
    will = validate("agent-status", msgs[-1].payload)
    assert will["reason"] == "connection_lost" and "ts" not in will
    late = collectors(broker, topic)
    [retained] = late.wait_for(lambda ms: len(ms) == 1)
    assert retained.retain and json.loads(retained.payload)["status"] == "offline"


def test_clean_close_publishes_offline_and_no_will(broker, agents, collectors):
    pub = agents(broker, agent_id="gw-closing")
    sub = collectors(broker, pub.status_topic)
    sub.wait_for(lambda ms: len(ms) == 1)  # retained online
    pub.close()
    msgs = sub.wait_for(lambda ms: len(ms) == 2)
    doc = validate("agent-status", msgs[-1].payload)
    assert doc["status"] == "offline" and doc["reason"] == "shutdown"
    # A marker on the same topic, sent after the close: a Last Will would come before it.
    marker = make_client(settings(broker), "marker")
    marker.connect(broker.host, broker.port)
    marker.loop_start()
    marker.publish(pub.status_topic, b'{"marker": true}', qos=1).wait_for_publish(5)
    marker.disconnect()
    marker.loop_stop()
    msgs = sub.wait_for(lambda ms: any(b"marker" in m.payload for m in ms))
    assert len(msgs) == 3  # online, offline, the marker: the Last Will was not sent as well


# -- security --------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_anonymous_and_wrong_password_are_refused(broker, protocol):
    assert connack(broker, protocol=protocol) == "Success"
    assert connack(broker, protocol=protocol, username=None, password=None) == "Not authorized"
    assert connack(broker, protocol=protocol, password="wrong") in (
        "Bad user name or password", "Not authorized")


def test_publisher_with_wrong_password_backs_off_and_counts(broker, agents):
    started = time.monotonic()
    pub = agents(broker, agent_id="gw-badpw", password="wrong", wait=False, reconnect_min_s=0.5,
                 reconnect_max_s=1.0)
    assert wait_until(lambda: sum(pub.counters()["connect_refused"].values()) >= 2, 30)
    elapsed = time.monotonic() - started
    refused = pub.counters()["connect_refused"]
    # backing off (0.5 s, then 1 s between attempts): never more than one attempt per 0.5 s
    assert not pub.connected and sum(refused.values()) <= 1 + elapsed / 0.5 + 1, (refused, elapsed)


def test_publish_outside_the_acl_is_refused_counted_and_not_retried(broker, agents, collectors):
    sub = collectors(broker)
    pub = agents(broker, site="site2", agent_id="gw-1")  # the agent may not write under site2
    pub.publish_alert(make_alert())
    assert wait_until(lambda: pub.counters()["dead_lettered"] == 1, 10)
    # then an alert the ACL allows, through the same connection: once it is acknowledged,
    # a retry loop of the refused one would have shown in the counters
    allowed = agents(broker, agent_id="gw-1b")
    allowed.publish_alert(make_alert())
    assert allowed.wait_idle(10)
    counters = pub.counters()
    assert counters["refused"] == {"not_authorized": 1} and counters["sent"] == 1
    assert counters["dead_lettered"] == 1 and pub.outbox.depth == 0
    [(msg, reason)] = pub.outbox.dead_letters()
    assert reason == "not_authorized (0x87)" and json.loads(msg.payload)["machine"] == "pump-7"
    assert not [m for m in sub.messages if m.topic.startswith(f"{PREFIX}/site2/")]
    assert pub.outbox.status()["dead_letter"] == 1


def test_mqtt311_cannot_report_an_acl_refusal(broker, agents, collectors):
    """The documented pitfall: on 3.1.1 Mosquitto acknowledges and drops a denied publish."""
    sub = collectors(broker)
    pub = agents(broker, site="site2", protocol="3.1.1")
    pub.publish_alert(make_alert())
    assert pub.wait_idle(5)
    allowed = agents(broker, agent_id="gw-allowed", protocol="3.1.1")  # a marker after it
    marker = make_alert()
    marker["id"] = "22222222-2222-4222-8222-222222222222"
    allowed.publish_alert(marker)
    sub.wait_for(lambda ms: any(marker["id"].encode() in m.payload for m in ms))
    assert pub.counters()["refused"] == {} and pub.counters()["acked"] == 1
    assert [json.loads(m.payload)["id"] for m in sub.messages if m.topic.endswith("/alerts")] \
        == [marker["id"]]  # the denied one was dropped in silence


def test_tls_with_the_generated_ca_and_a_client_certificate(broker, agents, collectors):
    certs = broker.certs
    sub = collectors(broker, alerts_filter(PREFIX), port=broker.tls_port, tls_ca=str(certs["ca"]))
    pub = agents(broker, port=broker.tls_port, tls_ca=str(certs["ca"]),
                 tls_cert=str(certs["client_cert"]), tls_key=str(certs["client_key"]))
    pub.publish_alert(make_alert())
    [msg] = sub.wait_for(lambda ms: len(ms) == 1)
    validate("alert", msg.payload)


def test_tls_fails_without_the_ca(broker, agents):
    assert connack(broker, port=broker.tls_port, tls=True) == "error: SSLCertVerificationError"
    assert connack(broker, port=broker.tls_port, tls_ca=str(broker.certs["ca"])) == "Success"
    pub = agents(broker, port=broker.tls_port, tls=True, wait=False)
    assert not pub.wait_connected(1.5)


def test_password_never_appears_in_logs(broker, agents, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    secret_file = tmp_path / "password"
    secret_file.write_text(USERS["agent"] + "\n")
    pub = agents(broker, password=None, password_file=str(secret_file), agent_id="gw-logs")
    pub.publish_alert(make_alert())
    assert pub.wait_idle(5)
    bad = agents(broker, password="wrong-" + USERS["agent"], agent_id="gw-logs2", wait=False)
    assert wait_until(lambda: bad.counters()["connect_refused"], 30)
    pub.close()
    bad.close(drain_s=0, timeout_s=1)
    assert caplog.records, "expected DEBUG logs from the publisher and paho"
    everything = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "Sending CONNECT" in everything  # paho's packet log was captured
    assert USERS["agent"] not in everything
    assert USERS["agent"] not in repr(pub.settings) + repr(bad.settings)


# -- outages ---------------------------------------------------------------------------------------
def test_outbox_delivers_everything_in_order_after_a_broker_outage(own_broker, agents, collectors):
    sub = collectors(own_broker, alerts_filter(PREFIX), session="operator-console")
    pub = agents(own_broker)
    frames: list = []
    pub.subscribe(pub.topics.raw_filter(),
                  lambda topic, payload: frames.append(decode_raw(payload, "pump-7", "de")))
    ids = []

    def send(n):
        for _ in range(n):
            alert = make_alert()
            alert["id"] = f"00000000-0000-4000-8000-{len(ids):012d}"
            ids.append(alert["id"])
            pub.publish_alert(alert)

    send(5)
    assert pub.wait_idle(5)
    own_broker.pause()
    send(40)  # handed to the connection, not acknowledged: in flight when the broker goes
    assert wait_until(lambda: pub.counters()["sent"] >= 5 + pub.settings.inflight, 30)
    own_broker.stop()
    send(40)  # while the broker is down: each one committed to disk, none acknowledged
    assert wait_until(lambda: not pub.connected, 30)
    assert 40 <= pub.outbox.depth <= 80
    own_broker.start()
    assert pub.wait_connected(10) and pub.wait_idle(10), own_broker.log()[-3000:]
    msgs = sub.wait_for(lambda ms: len({json.loads(m.payload)["id"] for m in ms}) == 85, 15)
    seen: list[str] = []
    for m in msgs:  # redelivery is allowed, loss and reordering are not
        alert_id = json.loads(m.payload)["id"]
        if alert_id not in seen:
            seen.append(alert_id)
    assert seen == ids
    assert pub.counters()["reconnects"] >= 1 and pub.counters()["acked"] >= 85, pub.counters()

    commands: list[str] = []
    pub.subscribe(pub.topics.rebaseline_filter(), lambda topic, payload: commands.append(topic))
    assert pub.wait_subscribed(5)
    operator = make_client(settings(own_broker, user="operator"), "operator-1")
    operator.connect(own_broker.host, own_broker.port)
    operator.loop_start()
    command_topic = pub.topics.rebaseline("pump-7")
    operator.publish(command_topic, b"{}", qos=1, retain=True).wait_for_publish(5)
    operator.publish(command_topic, b"{}", qos=1).wait_for_publish(5)
    operator.disconnect()
    operator.loop_stop()
    deadline = time.monotonic() + 5
    while len(commands) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert commands == [command_topic] * 2  # both arrive live (retain is not set on delivery)

    assert pub.wait_subscribed(5)  # subscribed again after the outage
    sensor = make_client(settings(own_broker, user="sensor"), "sensor-1")
    sensor.connect(own_broker.host, own_broker.port)
    sensor.loop_start()
    sent = frame(n=512)
    sensor.publish(pub.topics.raw("pump-7", "de"), encode_raw(sent), qos=1).wait_for_publish(5)
    sensor.disconnect()
    sensor.loop_stop()
    deadline = time.monotonic() + 5
    while not frames and time.monotonic() < deadline:
        time.sleep(0.02)
    assert frames and (frames[0].samples == sent.samples).all()

    late = agents(own_broker, agent_id="gw-late")  # connects after the retained command
    late_commands: list[str] = []
    late.subscribe(late.topics.rebaseline_filter(), lambda t, p: late_commands.append(t))
    deadline = time.monotonic() + 5
    while not late.counters()["retained_ignored"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert late.counters()["retained_ignored"] == 1 and late_commands == []


def test_queued_alerts_survive_an_agent_restart(broker, agents, collectors, tmp_path):
    path = tmp_path / "restart.sqlite"
    with Outbox(path) as ob:  # an agent that queued alerts and died before connecting
        for i in range(3):
            alert = make_alert()
            alert["id"] = f"00000000-0000-4000-8000-{i:012d}"
            ob.put(Topics(PREFIX, SITE, "line-a").alerts("pump-7"), json.dumps(alert).encode(),
                   msg_id=alert["id"], priority=2)
    sub = collectors(broker, alerts_filter(PREFIX))
    pub = agents(broker, outbox_path=path, agent_id="gw-restart")
    msgs = sub.wait_for(lambda ms: len(ms) == 3)
    assert [json.loads(m.payload)["id"][-1] for m in msgs] == ["0", "1", "2"]
    assert pub.wait_idle(5)


# -- the operator's command ------------------------------------------------------------------------
def test_alerts_command_prints_each_alert_once(broker, agents, tmp_path):
    password_file = tmp_path / "operator.pw"
    password_file.write_text(USERS["operator"] + "\n")
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_alerts_parser(parser.add_subparsers(dest="command"))
    results = {}

    def run(name, extra):
        args = parser.parse_args(["alerts", "--broker", f"{broker.host}:{broker.port}",
                                  "--site", SITE, "--username", "operator", "--password-file",
                                  str(password_file), "--count", "2", "--timeout", "15", *extra])
        out = io.StringIO()
        results[name] = (args.func(args, out=out), out)

    threads = [threading.Thread(target=run, args=("text", [])),
               threading.Thread(target=run, args=("json", ["--json", "--mqtt", "3.1.1"]))]
    subscribed = broker.log().count("Received SUBSCRIBE from edge-agent-alerts-")
    for t in threads:
        t.start()
    assert wait_until(lambda: broker.log().count("Received SUBSCRIBE from edge-agent-alerts-")
                      >= subscribed + 2, 30)  # both subscribed before the first alert
    pub = agents(broker, agent_id="gw-op")
    first, second = make_alert(), make_alert("normal", "alarm")
    second["id"] = "11111111-1111-4111-8111-111111111111"
    pub.publish_alert(first)
    raw = make_client(settings(broker), "duplicate-sender")  # a redelivered copy
    raw.connect(broker.host, broker.port)
    raw.loop_start()
    raw.publish(pub.topics.alerts("pump-7"), json.dumps(first), qos=1).wait_for_publish(5)
    raw.disconnect()
    raw.loop_stop()
    pub.publish_alert(second)
    for t in threads:
        t.join(20)
    code, out = results["text"]
    lines = out.getvalue().splitlines()
    assert code == 0 and len(lines) == 2, lines
    assert "ALARM" in lines[0] and "pump-7/de" in lines[0] and "NORMAL" in lines[1]
    code, out = results["json"]
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0 and [d["id"] for d in docs] == [first["id"], second["id"]]


def test_alerts_command_times_out_and_reports_refusal(broker):
    parser = argparse.ArgumentParser()
    add_alerts_parser(parser.add_subparsers())
    args = parser.parse_args(["alerts", "--broker", f"{broker.host}:{broker.port}",
                              "--timeout", "0.5"])
    from edge_agent.errors import UsageError

    with pytest.raises(UsageError, match="Not authorized"):
        alerts_command(args)


# -- refusal and status rules of the Publisher class alone (paho's publish stubbed, no broker) -----
class _Sent:
    def __init__(self, mid):
        from paho.mqtt.enums import MQTTErrorCode

        self.mid, self.rc = mid, MQTTErrorCode.MQTT_ERR_SUCCESS


def _ack(pub, mid, code, name):
    pub._handle_acks([(mid, code, name)])  # what the worker does with a PUBACK


@pytest.fixture
def offline_publisher(tmp_path):
    outbox = Outbox(tmp_path / "unit.sqlite")
    pub = Publisher(MqttSettings(reconnect_min_s=0.05, reconnect_max_s=0.1, max_refusals=3,
                                 inflight=1), outbox, Topics(PREFIX, SITE, "line-a"), "gw-unit")
    sent: list[tuple[int, str, bytes]] = []

    def publish(topic, payload, qos=0, retain=False, properties=None):
        sent.append((len(sent) + 1, topic, payload))
        return _Sent(len(sent))

    pub._client.publish = publish
    pub._connected.set()
    yield pub, sent
    outbox.close()


def test_transient_refusal_is_retried_behind_its_topic_then_dead_lettered(offline_publisher):
    pub, sent = offline_publisher
    ob = pub.outbox
    a1, a2, b1 = (ob.put(t, p) for t, p in (("t/a", b"a1"), ("t/a", b"a2"), ("t/b", b"b1")))

    def last():
        return sent[-1][0], sent[-1][2]

    pub._pump()
    mid, payload = last()
    assert payload == b"a1"
    _ack(pub, mid, 0x97, "quota_exceeded")  # transient: a1 waits, a2 waits behind it
    pub._pump()
    assert last()[1] == b"b1"  # another topic goes on
    _ack(pub, last()[0], 0x00, "success")
    pub._pump()
    assert last()[1] == b"b1"  # nothing new before the backoff
    for refusal in (2, 3):
        time.sleep(0.12)
        pub._pump()
        mid, payload = last()
        assert payload == b"a1"
        _ack(pub, mid, 0x97, "quota_exceeded")
    assert [m.payload for m, _ in ob.dead_letters()] == [b"a1"]  # max_refusals reached
    pub._pump()
    mid, payload = last()
    assert payload == b"a2"
    _ack(pub, mid, 0x87, "not_authorized")  # permanent: at once
    assert [why for _, why in ob.dead_letters()] == ["quota_exceeded (0x97)",
                                                     "not_authorized (0x87)"]
    assert ob.depth == 0 and pub.counters()["refused"] == {"quota_exceeded": 3, "not_authorized": 1}
    assert len(sent) == 5  # a1 three times, b1, a2: no loop


def test_one_status_in_flight_per_topic_and_the_newest_wins(offline_publisher):
    pub, sent = offline_publisher
    for n in range(3):
        pub.publish_status("t/status", {"n": n})
    pub._pump()
    pub._pump()
    assert [p for _, _, p in sent] == [b'{"n":2}']
    pub.publish_status("t/status", {"n": 3})
    pub._pump()
    assert len(sent) == 1  # {"n": 3} waits for the PUBACK of {"n": 2}
    _ack(pub, sent[-1][0], 0x00, "success")
    pub._pump()
    assert sent[-1][2] == b'{"n":3}'
    _ack(pub, sent[-1][0], 0x00, "success")
    pub._pump()
    assert len(sent) == 2 and pub.wait_idle(0)


def test_queue_full_is_paho_s_code():
    from paho.mqtt.enums import MQTTErrorCode

    from edge_agent.mqtt.client import QUEUE_FULL

    assert QUEUE_FULL == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE


def test_session_taken_over_is_logged_and_counted(offline_publisher, caplog):
    """MQTT 5 brokers that send DISCONNECT 0x8E on a client-id takeover (Mosquitto 2.0.11 only
    closes the socket: tests/test_faults.py covers that against the shipped config)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    pub, _ = offline_publisher
    with caplog.at_level(logging.ERROR):
        pub._on_disconnect(None, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E),
                           None)
    counters = pub.counters()
    assert counters["takeovers"] == 1 and counters["disconnects"] == {"session_taken_over": 1}
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "mqtt_session_taken_over"]
    assert record.client_id == "edge-agent-gw-unit"
    status = pub._agent_status("online")
    assert status["mqtt"]["takeovers"] == 1
    jsonschema.Draft202012Validator(load_schema("agent-status")).validate(json.loads(
        json.dumps(status)))


def test_nothing_larger_than_the_brokers_packet_limit_is_sent(offline_publisher):
    pub, sent = offline_publisher
    pub.max_packet = pub._sender.max_packet = 5000  # as a CONNACK would say
    assert pub.status_limit == 5000
    pub.publish_status("t/status", {"blob": "x" * 6000})
    pub._pump()
    assert sent == [] and pub.counters()["status_too_large"] == 1
    big = pub.outbox.put("t/alerts", b"y" * 6000, msg_id="big")
    small = pub.outbox.put("t/alerts", b"z" * 10, msg_id="small")
    pub._pump()  # the big one would get the agent disconnected at every attempt
    assert [p for _, _, p in sent] == [b"z" * 10]
    assert [(m.seq, why.split(" (")[0]) for m, why in pub.outbox.dead_letters()] == [
        (big, "larger than the broker's maximum packet size")] and small > big


def test_a_machine_status_over_the_limit_keeps_the_channels_that_fit(tmp_path):
    from edge_agent.jsonl import dumps
    from edge_agent.mqtt.link import fitted

    channels = {f"c{i:03d}": channel_status(phase="monitoring", state="normal",
                                             baseline_progress=1.0, last_window_s=1.7e9 + i,
                                             sensor_health="ok") for i in range(300)}
    doc = machine_status_doc("gw-1", "pump-7", channels, outbox_depth=0, model_version=None,
                             ts_s=0)
    assert len(dumps(doc)) > 50_000
    cut = fitted(doc, lambda d: len(dumps(d).encode()) <= 20_000)
    assert len(dumps(cut).encode()) <= 20_000 < len(dumps(doc))
    kept = set(cut["channels"])
    assert cut["truncated"] == {"channels": 300 - len(kept)} and len(kept) > 50
    assert kept == {f"c{i:03d}" for i in range(300 - len(kept), 300)}  # the newest kept
    jsonschema.Draft202012Validator(load_schema("machine-status")).validate(
        json.loads(dumps(cut)))
    assert fitted(doc, lambda d: True) is doc
