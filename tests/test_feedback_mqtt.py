"""Operators' labels round-trip through the shipped Mosquitto configuration: only the operator
role may publish cmd/feedback, the agent applies it (a false alarm closes the episode with a
normal alert carrying the label), refuses and counts bad labels, and shows them in the
machine status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_agent.mqtt.client import make_client
from tests.broker import PREFIX, SITE, ShippedBroker
from tests.conftest import REPO
from tests.test_faults import (AGENT_ID, AREA, BASELINE, FAULT, AgentProcess, Sensor, Watcher,
                               shipped_settings, validate, write_config)

pytestmark = pytest.mark.slow


@pytest.fixture
def shipped(tmp_path):
    """The shipped broker, plus a read-only "dashboard" user for the test's watcher: on the
    plant listener client ids are user names, so a second operator connection (the feedback
    command) would take the watcher's over."""
    with ShippedBroker(tmp_path / "mosquitto", agent_id=AGENT_ID,
                       extra_users={"dashboard": "dashboard-pw-1d2e"},
                       extra_acl=f"\nuser dashboard\ntopic read {PREFIX}/#\n") as b:
        yield b


def label(broker, tmp_path, user: str, alert_id: str, value: str, *extra: str):
    password = tmp_path / f"{user}.pw"
    password.write_text(broker.users[user] + "\n")
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "feedback", alert_id, value,
         "--broker", f"localhost:{broker.tls_port}", "--tls-ca", str(broker.certs["ca"]),
         "--username", user, "--password-file", str(password), "--machine", "motor-1",
         "--site", SITE, "--area", AREA, "--prefix", PREFIX, *extra],
        capture_output=True, text=True, cwd=REPO, timeout=60)


def test_feedback_round_trips_through_the_shipped_broker(shipped, tmp_path):
    config = write_config(tmp_path, shipped.agent_port, user="edge-agent",
                          password=shipped.users["edge-agent"], tls_ca=shipped.certs["ca"])
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "localhost"'))
    status_topic = f"{PREFIX}/agents/{AGENT_ID}/status"
    machine_topic = f"{PREFIX}/{SITE}/{AREA}/motor-1/status"
    watcher = Watcher(shipped_settings(shipped, "dashboard", shipped.tls_port),
                      [f"{PREFIX}/+/+/+/alerts", machine_topic, status_topic], "ops-fb")
    sensor = Sensor(shipped_settings(shipped, "sensor", shipped.tls_port))
    agent = AgentProcess(config)
    try:
        agent.wait_event("mqtt_subscribed")
        sensor.send(BASELINE)
        agent.wait_event("baseline_learned")
        sensor.send(FAULT)
        watcher.wait(lambda w: w.alert_ids(), 60, "the alarm")
        alarm = watcher.docs(f"{PREFIX}/{SITE}/{AREA}/motor-1/alerts")[0]
        assert alarm["severity"] == "alarm"
        # a sensor cannot label an alert: the broker refuses it (MQTT 5 PUBACK)
        denied = label(shipped, tmp_path, "sensor", alarm["id"], "false_alarm")
        assert denied.returncode == 2 and "not authorized" in denied.stderr.lower(), denied
        # refused by the agent, each with its reason
        unknown = label(shipped, tmp_path, "operator", "0a2eb43e-641b-5294-a920-0f69f2bf5f71",
                        "confirmed")
        assert unknown.returncode == 0, unknown.stderr
        operator = make_client(shipped_settings(shipped, "operator", shipped.tls_port), "ops-raw")
        operator.connect("localhost", shipped.tls_port)
        operator.loop_start()
        topic = f"{PREFIX}/{SITE}/{AREA}/motor-1/cmd/feedback"
        for payload in (json.dumps({"alert_id": alarm["id"], "label": "fixed"}), "not json"):
            operator.publish(topic, payload, qos=1).wait_for_publish(10)
        operator.disconnect()
        operator.loop_stop()
        # the operator's false alarm: back to normal, said in a normal alert that carries it
        ok = label(shipped, tmp_path, "operator", alarm["id"], "false_alarm", "--note",
                   "new coupling", "--user", "ana")
        assert ok.returncode == 0 and "labelled" in ok.stdout, ok.stderr
        agent.wait_event("feedback_applied", 30, lambda d: d["done"] == "false_alarm")
        watcher.wait(lambda w: len(w.alert_ids()) == 2, 30, "the normal alert")
        closing = validate("alert", watcher.docs(f"{PREFIX}/{SITE}/{AREA}/motor-1/alerts")[1])
        assert closing["severity"] == "normal" and closing["episode"] == alarm["episode"]
        assert closing["feedback"][-1]["label"] == "false_alarm"
        assert closing["feedback"][-1]["user"] == "ana"
        assert closing["feedback"][-1]["note"] == "new coupling"
        # the same label again (redelivery, or twice by hand): no effect
        assert label(shipped, tmp_path, "operator", alarm["id"], "false_alarm").returncode == 0
        agent.wait_event("feedback_applied", 30, lambda d: d["done"] == "repeat")
        watcher.wait(lambda w: any(d.get("feedback") for d in w.docs(machine_topic)), 30,
                     "the label in the machine status")
        seen = len(watcher.docs(status_topic))
        watcher.wait(lambda w: len(w.docs(status_topic)) > seen + 1, 30, "a fresh agent status")
    finally:
        assert agent.stop() == 0
        sensor.close()
        watcher.close()
    assert len(watcher.alert_ids()) == 2
    status = validate("machine-status", [d for d in watcher.docs(machine_topic)
                                         if d.get("feedback")][-1])
    assert status["state"] == "normal"
    assert status["feedback"]["labels"][-1]["alert_id"] == alarm["id"]
    assert status["feedback"]["tolerated_channels"] == ["de"]
    agent_status = validate("agent-status", watcher.docs(status_topic)[-1])
    rejected = {r: v["count"] for r, v in agent_status["rejected"].items()}
    assert rejected == {"unknown_alert": 1, "bad_label": 1, "bad_feedback": 1}
    assert agent_status["processing"]["feedback"] == 2

    # the report of this live capture (as mosquitto_sub -v saves it): trends from the
    # statuses, each alert's envelope spectrum from the alert, the label in the summary
    capture = tmp_path / "capture.txt"
    capture.write_text("".join(f"{t} {p.decode()}\n" for t, p in watcher.messages if p))
    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "edge_agent", "report", str(capture),
                             "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert report.returncode == 0, report.stderr
    # (the normal alert raised by the label carries no spectrum: no window raised it)
    assert sorted(p.name for p in out.iterdir()) == [
        "motor-1-A1-envelope.png", "motor-1-trends.png", "motor-1.png", "report.html"]
    assert 'feedback       A1 false_alarm by ana ("new coupling")' in report.stdout
    assert "final state    normal" in report.stdout
