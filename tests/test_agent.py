"""The agent end to end against a real Mosquitto: outages, crashes and restarts lose no alert."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from edge_agent.mqtt.link import connect_agent
from edge_agent.runtime.agent import Agent
from edge_agent.runtime.config import MqttSettings, load_config
from edge_agent.demo import SCENARIOS, ChainSource, demo_config
from edge_agent.schema import load_schema
from edge_agent.runtime.sources import ReplaySource
from tests.broker import PREFIX, SITE, USERS, Broker, listening
from tests.conftest import REPO, SAMPLE_DATA

pytestmark = pytest.mark.slow


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "mosquitto") as b:
        yield b


class Subscriber:
    """``edge-agent alerts --json`` as the operator, with a persistent session."""

    def __init__(self, broker, tmp_path: Path, session: str, topic_filter=None):
        pw = tmp_path / f"{session}.pw"
        pw.write_text(USERS["operator"] + "\n")
        self.lines: list[dict] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "alerts", "--broker",
             f"{broker.host}:{broker.port}", "--prefix", PREFIX, "--username", "operator",
             "--password-file", str(pw), "--session", session, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.subscribed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def _read_stderr(self):
        for line in self.process.stderr:
            if "subscribed to" in line:
                self.subscribed.set()

    def wait_subscribed(self, timeout_s) -> bool:
        """Until ``edge-agent alerts`` has its subscription acknowledged (it says so on
        standard error), so that no alert published after this can be missed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.subscribed.is_set():
            self.subscribed.wait(0.1)
        return self.subscribed.is_set()

    def wait_for(self, ids, timeout_s):
        deadline = time.monotonic() + timeout_s
        while not set(ids) <= {a["id"] for a in self.lines} and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


def wait_until(predicate, timeout_s: float) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def mqtt_settings(broker, **changes):
    return MqttSettings(host=broker.host, port=broker.port, username="agent",
                        password=USERS["agent"], **{"reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
                                                    "keepalive_s": 5, **changes})


def demo_sources(speed):
    return ChainSource(ReplaySource([SAMPLE_DATA / p for p in paths], machine=machine,
                                    speed=speed, undated_start_s=1.7e9)
                       for machine, paths, _, _ in SCENARIOS)


def by_machine(alerts):
    out = {}
    for a in alerts:
        out.setdefault(a["machine"], []).append(a["id"])
    return out


def test_a_30_s_broker_outage_mid_replay_loses_no_alert(broker, tmp_path):
    endpoint = types.SimpleNamespace(host=broker.host, port=broker.port, protocol="5")
    base = demo_config(endpoint, tmp_path / "offline", SAMPLE_DATA)
    offline = Agent(base)  # the same replay with no network: the alerts that must arrive
    offline.run(threading.Event(), demo_sources(0.0), exit_when_done=True)
    expected = list(offline.recent_alerts)
    assert len(expected) >= 5
    subscriber = Subscriber(broker, tmp_path, "ops-outage")
    # the default backoff (1 s doubling to reconnect_max_s, 10 s): the reconnect time is measured
    default = mqtt_settings(broker, reconnect_min_s=1.0, reconnect_max_s=10.0)
    assert (default.reconnect_min_s, default.reconnect_max_s) == (
        MqttSettings.reconnect_min_s, MqttSettings.reconnect_max_s)
    config = replace(base, state_dir=tmp_path / "agent", mqtt=default,
                     topics=replace(base.topics, prefix=PREFIX, site=SITE))
    agent = Agent(config)
    link = connect_agent(agent)
    assert link.publisher.wait_connected(10) and subscriber.wait_subscribed(30)
    stop = threading.Event()
    # FEMTO's 2 h 25 min at 300x: about 30 s; its alerts come near the end, the motors' after.
    worker = threading.Thread(target=agent.run, args=(stop, demo_sources(300.0)),
                              kwargs={"exit_when_done": True})
    worker.start()
    # mid-replay: a quarter of FEMTO's windows in, before its first alert
    assert wait_until(lambda: agent.stats["windows"] >= 100, 60)
    assert not agent.stats["alerts"]
    broker.stop()
    outage_started = time.monotonic()
    time.sleep(30.0)
    queued = link.outbox.depth
    broker.start()
    back = time.monotonic()
    assert link.publisher.wait_connected(20)
    reconnect_s = time.monotonic() - back  # the backoff had reached its cap during the outage
    worker.join(120)
    assert link.publisher.wait_idle(60), "the outbox did not drain after the outage"
    subscriber.wait_for([a["id"] for a in expected], 30)
    agent.close()
    subscriber.stop()
    assert time.monotonic() - outage_started >= 30.0
    assert reconnect_s <= MqttSettings.reconnect_max_s + 1.5, reconnect_s
    assert queued >= 1  # alerts were raised while the broker was down ...
    received = {a["id"]: a for a in subscriber.lines}
    assert set(received) == {a["id"] for a in expected}  # ... and none was lost
    arrived = by_machine(subscriber.lines)
    deduplicated = {m: list(dict.fromkeys(ids)) for m, ids in arrived.items()}
    assert deduplicated == by_machine(expected)  # per-machine order kept
    validator = jsonschema.Draft202012Validator(load_schema("alert"))
    for alert in received.values():
        validator.validate(alert)


CONFIG = """
[agent]
id = "gw-crash"
state_dir = "{state}"
checkpoint_every_s = 0.3

[mqtt]
host = "{host}"
port = {port}
username = "agent"
password_file = "{password_file}"
keepalive_s = 2
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[topics]
prefix = "{prefix}"
site = "{site}"
area = "bench"

[resources]
status_every_s = 0.5

[[machine]]
id = "femto-bearing1_2"
bearing = "pronostia"
[machine.learning]
baseline_windows = 60

[[machine]]
id = "cwru"
bearing = "6205-2RS"
window_s = 0.2
hop_s = 0.1
[machine.learning]
baseline_windows = 20

[replay]
paths = ["{femto}", "{normal}", "{inner}"]
speed = {speed}
"""


def write_config(tmp_path, broker, speed):
    pw = tmp_path / "agent.pw"
    pw.write_text(USERS["agent"] + "\n")
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(
        state=tmp_path / "state", host=broker.host, port=broker.port, password_file=pw,
        prefix=PREFIX, site=SITE, speed=speed,
        femto=SAMPLE_DATA / "femto" / "femto_learning_Bearing1_2.npz",
        normal=SAMPLE_DATA / "cwru" / "normal_0_97.mat",
        inner=SAMPLE_DATA / "cwru" / "48k_Drive_End_IR007_0_109.mat"))
    return path


def log_events(text, event):
    out = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == event:
            out.append(doc)
    return out


def run_until(command, event: str, occurrence: int, timeout_s: float = 120.0) -> str:
    """Start ``command``, SIGKILL it right after its ``occurrence``-th log line of ``event``
    (or let it finish first); returns what it logged. Kill points are events, not delays,
    so they fall in the same places on a fast or a loaded machine."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=REPO)
    lines, seen = [], 0
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            lines.append(line)
            if f'"event": "{event}"' in line:
                seen += 1
                if seen == occurrence:
                    process.send_signal(signal.SIGKILL)
                    break
        lines += process.stdout.read().splitlines(keepends=True)
    finally:
        timer.cancel()
        process.wait(30)
    return "".join(lines)


#: Where the ten kills fall: right after a start, a fitted baseline (before its checkpoint),
#: a checkpoint and an alert (committed to the outbox, maybe not sent), at their n-th time.
KILL_POINTS = ["start", "baseline_learned", "checkpoint", "alert", "checkpoint", "alert",
               "baseline_learned", "checkpoint", "alert", "start"]


def test_kill_9_at_random_points_then_restart_loses_and_relearns_nothing(broker, tmp_path):
    path = write_config(tmp_path, broker, speed=1500.0)
    config = load_config(path)
    offline = Agent(replace(config, state_dir=tmp_path / "offline"))
    offline.run(threading.Event(), ReplaySource(config.replay.paths), exit_when_done=True)
    expected = {a["id"] for a in offline.recent_alerts}
    assert len(expected) >= 3
    subscriber = Subscriber(broker, tmp_path, "ops-crash")
    assert subscriber.wait_subscribed(30)
    rng = random.Random(20261121)
    logs, command = [], [sys.executable, "-m", "edge_agent", "run", "--config", str(path),
                         "--exit-after-replay"]
    for event in KILL_POINTS:
        logs.append(run_until(command, event, rng.randint(1, 3)))
    final = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    logs.append(final.stdout)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    subscriber.wait_for(expected, 60)
    subscriber.stop()
    received = {a["id"] for a in subscriber.lines}
    assert received == expected  # nothing lost, nothing under a new id
    # Each restart resumed from the last checkpoint: the replay position never went back,
    # and once a machine's baseline was checkpointed it was restored, not learned again.
    restores = [log_events(text, "restore") for text in logs]
    positions = [r[0]["replay_position"] if r else 0 for r in restores]
    assert positions == sorted(positions) and positions[-1] > 0
    learned_again = []
    for text, restore in zip(logs, restores):
        restored = set(restore[0]["baselines"]) if restore else set()
        learned_again += [e for e in log_events(text, "baseline_learned")
                          if f"{e['machine']}/{e['channel']}/{e['regime']}" in restored]
    assert any(log_events(text, "baseline_learned") for text in logs)
    assert any(r and r[0]["baselines"] for r in restores)  # some restarts restored learned ones
    assert learned_again == []
    assert log_events(final.stdout, "stop")


def test_agent_status_and_last_will(broker, tmp_path):
    path = write_config(tmp_path, broker, speed=200.0)
    pw = tmp_path / "op.pw"
    pw.write_text(USERS["operator"])
    watcher = subprocess.Popen(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-u", "operator", "-P",
         USERS["operator"], "-V", "mqttv5", "-t", f"{PREFIX}/agents/gw-crash/status",
         "-t", f"{PREFIX}/{SITE}/bench/+/status"], stdout=subprocess.PIPE, text=True)
    docs: list[dict] = []
    threading.Thread(target=lambda: docs.extend(json.loads(line) for line in watcher.stdout),
                     daemon=True).start()

    def seen(predicate):
        return wait_until(lambda: any(predicate(d) for d in list(docs)), 60)

    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(path)],
                             stdout=subprocess.DEVNULL, cwd=REPO)
    assert seen(lambda d: d.get("machine") == "femto-bearing1_2" and d["channels"].get(
        "horizontal", {}).get("windows"))  # it runs and says so
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    # keep-alive 2 s: the broker gives up after 3 s and sends the will
    assert seen(lambda d: d.get("status") == "offline")
    watcher.terminate()
    watcher.wait(10)
    docs = list(docs)
    agent_docs = [d for d in docs if d["schema"].startswith("edge-agent/agent-status")]
    machine_docs = [d for d in docs if d["schema"].startswith("edge-agent/machine-status")]
    assert agent_docs[0]["status"] == "online"
    assert agent_docs[-1]["status"] == "offline" and agent_docs[-1]["reason"] == "connection_lost"
    assert {d["machine"] for d in machine_docs} >= {"femto-bearing1_2"}
    for doc, name in [(d, "agent-status") for d in agent_docs] + [
            (d, "machine-status") for d in machine_docs]:
        jsonschema.Draft202012Validator(load_schema(name)).validate(doc)
    femto = [d for d in machine_docs if d["machine"] == "femto-bearing1_2"][-1]
    assert femto["channels"]["horizontal"]["sensor_health"] == "ok"
    assert femto["channels"]["horizontal"]["windows"] > 0


def test_two_workers_share_the_machines_and_raise_the_same_alerts(broker, tmp_path):
    from edge_agent.runtime.config import shard_of

    path = write_config(tmp_path, broker, speed=600.0)
    path.write_text(path.read_text().replace("[resources]\n", "[resources]\nworkers = 2\n"))
    config = load_config(path)
    assert {shard_of("femto-bearing1_2", 2), shard_of("cwru", 2)} == {0, 1}
    offline = Agent(replace(config, state_dir=tmp_path / "offline"))
    offline.run(threading.Event(), ReplaySource(config.replay.paths), exit_when_done=True)
    expected = {a["id"] for a in offline.recent_alerts}
    subscriber = Subscriber(broker, tmp_path, "ops-workers")
    assert subscriber.wait_subscribed(30)
    supervisor = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config",
                                   str(path), "--exit-after-replay"], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Once worker 0 (FEMTO's) has checkpointed it dies; the supervisor restarts it, it resumes.
    checkpoints = tmp_path / "state" / "worker-0" / "checkpoints"
    assert wait_until(lambda: any(checkpoints.glob("femto-bearing1_2.*.ckpt")), 120)
    killed = subprocess.run(["pkill", "-KILL", "-f", "worker 0/2"]).returncode == 0
    out, _ = supervisor.communicate(timeout=300)
    subscriber.wait_for(expected, 30)
    subscriber.stop()
    assert supervisor.returncode == 0, out[-3000:]
    assert {a["id"] for a in subscriber.lines} == expected  # same ids as one process
    assert killed and log_events(out, "worker_died")
    state = tmp_path / "state"
    assert sorted(p.name for p in state.iterdir()) == ["worker-0", "worker-1"]
    assert list((state / "worker-0" / "checkpoints").glob("femto-bearing1_2.*.ckpt"))
    assert list((state / "worker-1" / "checkpoints").glob("cwru.*.ckpt"))
    assert not list((state / "worker-0" / "checkpoints").glob("cwru.*"))


def test_the_local_try_it_config_against_a_stock_mosquitto(tmp_path):
    """README's "Try it": deploy/agent.local.toml against Mosquitto as installed (no config
    file: loopback, anonymous); an operator sees the alarm and the retained statuses."""
    from tests.broker import find_program, free_port

    local = REPO / "deploy" / "agent.local.toml"
    config = load_config(local)
    assert all(Path(p).is_file() for p in config.replay.paths)  # relative to the file
    port = free_port()
    text = (local.read_text().replace("port = 1883", f"port = {port}")
            .replace('"/tmp/edge-agent-local"', json.dumps(str(tmp_path / "state")))
            .replace('"../sample_data/', json.dumps(str(SAMPLE_DATA))[:-1] + "/"))
    path = tmp_path / "agent.toml"
    path.write_text(text)
    broker = subprocess.Popen([find_program("mosquitto"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: listening("127.0.0.1", port), 30)
        operator = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "alerts", "--broker", f"127.0.0.1:{port}",
             "--json", "--count", "1", "--timeout", "120"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert "subscribed to" in operator.stderr.readline()
        run = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(path),
                              "--exit-after-replay"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        alerts = [json.loads(line) for line in operator.communicate(timeout=60)[0].splitlines()]
        retained = subprocess.run([find_program("mosquitto_sub"), "-p", str(port), "-t",
                                   "plant/#", "-v", "-W", "2"], capture_output=True, text=True)
    finally:
        broker.terminate()
        broker.wait(10)
    assert [(a["machine"], a["severity"]) for a in alerts] == [("motor-1", "alarm")]
    assert "BPFI" in alerts[0]["summary"]  # the inner-race defect line is named
    docs = {topic: json.loads(payload) for topic, payload in
            (line.split(" ", 1) for line in retained.stdout.splitlines())}
    assert docs["plant/lab/test-bench/motor-1/status"]["state"] == "alarm"
    assert docs["plant/agents/local-gateway/status"]["status"] == "offline"
