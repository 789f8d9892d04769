"""Faults against a real Mosquitto, each compared with the same run without the fault.

Every test runs ``edge-agent run`` as its own process, injects one fault (a full
disk through a real file-system limit, kill -9, a flood from one credential, a
client-id takeover, a crash) and compares the alert ids a QoS-1 subscriber
received with those the same input raises without the fault (the agent
in-process, no network): nothing lost, no second id for one episode. Tests wait
for events (log lines, messages), never for fixed delays, and are bounded.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edge_agent.frame import Frame
from edge_agent.mqtt.client import make_client
from edge_agent.mqtt.ingest import encode_raw
from edge_agent.runtime.agent import Agent
from edge_agent.runtime.config import MqttSettings, load_config
from edge_agent.runtime.sources import ReplaySource
from edge_agent.schema import load_schema
from tests.broker import PREFIX, SITE, USERS, Broker, ShippedBroker
from tests.conftest import REPO, SAMPLE_DATA, load_cwru_de

pytestmark = pytest.mark.slow

AGENT_ID = "gw-1"
AREA = "line-3"
T0 = 1.7e9  # the sensors' clock: frames are stamped from here, 0.1 s each
FRAME_SAMPLES = 4800  # 0.1 s at 48 kHz


# -- the agent as a process --------------------------------------------------------------------------
class LogLines:
    """An ``edge-agent`` command as a process, its JSON log lines collected as they arrive."""

    def __init__(self, *args: str, preexec_fn=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def events(self, name: str, where=lambda d: True) -> list[dict]:
        with self._cond:
            return [d for d in self.lines if d.get("event") == name and where(d)]


class AgentProcess(LogLines):
    """``edge-agent run``."""

    def __init__(self, config: Path, *args: str, preexec_fn=None):
        super().__init__("run", "--config", str(config), *args, preexec_fn=preexec_fn)

    def wait_event(self, name: str, timeout_s: float = 60.0, where=lambda d: True) -> dict:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [d for d in self.lines if d.get("event") == name and where(d)]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not found):
                    tail = "".join(self.raw[-30:])
                    raise AssertionError(f"no {name!r} event in {timeout_s} s "
                                         f"(exit {self.proc.poll()}):\n{tail[-4000:]}")
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.proc.wait(timeout_s)

    def stop(self, sig=signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)


class Watcher:
    """An operator's QoS-1 subscriber (paho) recording alerts and retained status documents."""

    def __init__(self, settings: MqttSettings, filters: list[str], client_id: str):
        self.messages: list = []
        self._cond = threading.Condition()
        self.client = make_client(settings, client_id)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(settings.host, settings.broker_port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "the watcher did not subscribe"

    def _on_message(self, client, userdata, message):
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def alert_ids(self) -> list[str]:
        with self._cond:
            return [json.loads(p)["id"] for t, p in self.messages if t.endswith("/alerts")]

    def docs(self, topic: str) -> list[dict]:
        with self._cond:
            return [json.loads(p) for t, p in self.messages if t == topic and p]

    def wait(self, predicate, timeout_s: float = 60.0, what: str = "messages"):
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self), timeout_s), \
                f"timed out waiting for {what}: {[t for t, _ in self.messages][-20:]}"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- configuration and input -------------------------------------------------------------------------
CONFIG = """
[agent]
id = "{agent_id}"
state_dir = "{state}"
checkpoint_every_s = {checkpoint_every_s}

[mqtt]
host = "127.0.0.1"
port = {port}
username = "{user}"
password_file = "{password_file}"
{tls}
keepalive_s = 5

[topics]
prefix = "{prefix}"
site = "{site}"
area = "{area}"

[resources]
status_every_s = 0.5
max_lag_s = 1e9       # the sensors' clock is years behind: never defer learning for it
learn_budget = 1.0

[[machine]]
id = "motor-1"
bearing = "6205-2RS"
window_s = 0.2
hop_s = 0.1
{channels}
[machine.learning]
baseline_windows = 20
"""

REPLAY = """
[[machine]]
id = "cwru"
bearing = "6205-2RS"
window_s = 0.2
hop_s = 0.1
[machine.learning]
baseline_windows = 20

[[machine]]
id = "femto-bearing1_2"
bearing = "pronostia"
[machine.learning]
baseline_windows = 60

[replay]
paths = {paths}
speed = {speed}
"""


def write_config(tmp_path: Path, port: int, *, user="agent", password=USERS["agent"],
                 tls_ca=None, channels='channels = ["de"]', replay=None, speed=0.0,
                 checkpoint_every_s=300.0, name="agent.toml") -> Path:
    pw = tmp_path / f"{name}.pw"
    pw.write_text(password + "\n")
    text = CONFIG.format(agent_id=AGENT_ID, state=tmp_path / "state", port=port, user=user,
                         password_file=pw, tls=f'tls_ca = "{tls_ca}"' if tls_ca else "",
                         prefix=PREFIX, site=SITE, area=AREA, channels=channels,
                         checkpoint_every_s=checkpoint_every_s)
    if replay is not None:
        text += REPLAY.format(paths=json.dumps([str(p) for p in replay]), speed=speed)
    path = tmp_path / name
    path.write_text(text)
    return path


_SIGNALS: dict[str, object] = {}


def cwru(condition: str):
    if condition not in _SIGNALS:
        _SIGNALS[condition] = load_cwru_de(condition)[0]
    return _SIGNALS[condition]


def frames(condition: str, first: int, count: int) -> list[Frame]:
    """``count`` 0.1-s frames of a real CWRU recording, frame ``first`` on, stamped from T0."""
    signal_g = cwru(condition)
    n = len(signal_g) // FRAME_SAMPLES
    return [Frame("motor-1", "de", T0 + k * 0.1, 48000.0,
                  signal_g[(k % n) * FRAME_SAMPLES:(k % n + 1) * FRAME_SAMPLES].copy(), 1797.0,
                  "test") for k in range(first, first + count)]


#: Live input: 3 s healthy (the 20-window baseline), then the inner-race fault.
BASELINE = frames("normal", 0, 30)
FAULT = frames("inner_race", 30, 10)
MORE_FAULT = frames("inner_race", 40, 20)


def reference(config_path: Path, tmp_path: Path, *batches) -> tuple[list[str], str]:
    """The alert ids the agent raises for ``batches`` of frames with no fault, no network,
    and the time of its last window (to know when the agent under test is done)."""
    from edge_agent.frame import iso_time

    config = load_config(config_path)
    agent = Agent(replace(config, state_dir=tmp_path / "reference"))
    ids = []
    for batch in batches:
        for frame in batch:
            ids += [a["id"] for a in agent.process([frame], live=True)]
    return ids, iso_time(agent.channel_view[("motor-1", "de")]["start_s"])


def machine_done(last_window: str):
    """A watcher predicate: motor-1's retained status shows its last window processed."""
    topic = f"{PREFIX}/{SITE}/{AREA}/motor-1/status"
    return lambda w: any(d["channels"].get("de", {}).get("last_window_ts") == last_window
                         for d in w.docs(topic))


def replay_reference(config_path: Path, tmp_path: Path) -> list[str]:
    config = load_config(config_path)
    agent = Agent(replace(config, state_dir=tmp_path / "reference"))
    agent.run(threading.Event(), ReplaySource(config.replay.paths), exit_when_done=True)
    return [a["id"] for a in agent.recent_alerts]


class Sensor:
    """A sensor gateway with the sensor credential, publishing frames (QoS 1)."""

    def __init__(self, settings: MqttSettings, client_id="sensor-gw"):
        self.client = make_client(settings, client_id)
        self.client.connect(settings.host, settings.broker_port)
        self.client.loop_start()

    def send(self, batch, qos=1):
        infos = [self.client.publish(f"{PREFIX}/{SITE}/{AREA}/{f.machine}/{f.channel}/raw",
                                     encode_raw(f), qos=qos) for f in batch]
        for info in infos:
            info.wait_for_publish(30)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def settings_for(broker, user, port=None, **changes) -> MqttSettings:
    return MqttSettings(host=broker.host, port=port or broker.port, username=user,
                        password=(broker.users if hasattr(broker, "users") else USERS)[user],
                        **changes)


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "mosquitto") as b:
        yield b


def validate(name: str, doc: dict) -> dict:
    jsonschema.Draft202012Validator(load_schema(name)).validate(doc)
    return doc


# -- 1. full disk ------------------------------------------------------------------------------------
def _generation(state: Path) -> int:
    manifest = state / "checkpoints" / "MANIFEST.json"
    return json.loads(manifest.read_text())["generation"] if manifest.exists() else 0


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("limit", ["rlimit_fsize", "tmpfs"])
def test_full_disk_holds_every_alert_until_space_returns(broker, tmp_path, limit):
    """The state directory stops taking writes once the agent has connected, before its
    first alert: every alert is held (a replay pauses, no checkpoint), the status says
    storage_full, and when space returns every alert arrives with the ids it would have had."""
    recordings = [SAMPLE_DATA / "femto" / "femto_learning_Bearing1_2.npz",
                  SAMPLE_DATA / "cwru" / "normal_0_97.mat",
                  SAMPLE_DATA / "cwru" / "48k_Drive_End_IR007_0_109.mat"]
    state = tmp_path / "state"
    if limit == "tmpfs" and not _tmpfs(state, "8m"):
        pytest.skip("mounting a tmpfs is not permitted here (the RLIMIT_FSIZE variant runs)")
    try:
        config = write_config(tmp_path, broker.port, replay=recordings, speed=1500.0,
                              checkpoint_every_s=1.0)
        expected = replay_reference(config, tmp_path)
        assert len(expected) >= 3
        watcher = Watcher(settings_for(broker, "operator"),
                          [f"{PREFIX}/+/+/+/alerts", f"{PREFIX}/agents/{AGENT_ID}/status"],
                          "ops-full-disk")
        agent = AgentProcess(config, "--exit-after-replay")
        agent.wait_event("mqtt_subscribed")
        filler = state / "filler"
        if limit == "rlimit_fsize":  # every write past byte 1 of any file fails: EFBIG
            hard = resource.prlimit(agent.pid, resource.RLIMIT_FSIZE)[1]
            resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (1, hard))
        else:  # fill the tmpfs: ENOSPC
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
        held = agent.wait_event("storage_full", 90, where=lambda d: d.get("what") == "alert")
        assert held["path"].startswith(str(state)) and "free_bytes" in held
        topic = f"{PREFIX}/agents/{AGENT_ID}/status"
        seen = len(watcher.docs(topic))
        watcher.wait(lambda w: len(w.docs(topic)) >= seen + 4, 30, "status while blocked")
        blocked = watcher.docs(topic)[seen + 1:]
        assert all(d["storage"]["state"] == "storage_full" for d in blocked)
        validate("agent-status", blocked[-1])
        # the replay waits: not one window scored while the alert is held
        assert len({d["processing"]["windows"] for d in blocked}) == 1
        before = set(watcher.alert_ids())
        generation = _generation(state)
        # space returns
        if limit == "rlimit_fsize":
            resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (hard, hard))
        else:
            filler.unlink()
        assert agent.wait(240) == 0, "".join(agent.raw[-20:])
        watcher.wait(lambda w: set(expected) <= set(w.alert_ids()), 60, "every alert")
        watcher.close()
        received = list(dict.fromkeys(watcher.alert_ids()))
        assert received == expected  # nothing lost, no new id, in order
        assert len(before) < len(expected)  # the alerts were held, not sent meanwhile
        assert agent.events("storage_ok") and agent.wait_event("stop")["storage_retries"] >= 1
        assert _generation(state) > generation  # checkpoints resumed once the alerts were in
    finally:
        if limit == "tmpfs":
            subprocess.run(["umount", "-l", str(state)], capture_output=True)


def test_sigterm_while_an_alert_waits_writes_no_checkpoint_and_the_restart_sends_it(broker,
                                                                                   tmp_path):
    recordings = [SAMPLE_DATA / "cwru" / "normal_0_97.mat",
                  SAMPLE_DATA / "cwru" / "48k_Drive_End_IR007_0_109.mat"]
    config = write_config(tmp_path, broker.port, replay=recordings)
    expected = replay_reference(config, tmp_path)
    assert expected
    watcher = Watcher(settings_for(broker, "operator"), [f"{PREFIX}/+/+/+/alerts"], "ops-term")
    agent = AgentProcess(config, "--exit-after-replay")
    agent.wait_event("mqtt_subscribed")
    hard = resource.prlimit(agent.pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (1, hard))
    held = agent.wait_event("storage_full", 90, where=lambda d: d.get("what") == "alert")
    generation = _generation(tmp_path / "state")
    assert agent.stop() == 0
    stopped = agent.wait_event("stop_uncommitted")
    assert stopped["alert_id"] == held["alert_id"] and _generation(tmp_path / "state") == generation
    assert not agent.events("checkpoint") or all(
        d["ts"] < held["ts"] for d in agent.events("checkpoint"))
    again = AgentProcess(config, "--exit-after-replay")  # space is back: the same alert, same id
    assert again.wait(120) == 0
    watcher.wait(lambda w: set(expected) <= set(w.alert_ids()), 30, "the alerts")
    watcher.close()
    assert list(dict.fromkeys(watcher.alert_ids())) == expected
    assert held["alert_id"] in expected


def live_alert_held(broker, tmp_path, filters, client_id):
    """An agent that learned its baseline from live frames and whose first alert waits for a
    disk that takes no write (a 1-byte file-size limit on the running agent): its config,
    an operator's watcher of ``filters``, the sensor, the agent and the ``storage_full`` event."""
    config = write_config(tmp_path, broker.port)
    watcher = Watcher(settings_for(broker, "operator"), filters, client_id)
    sensor = Sensor(settings_for(broker, "sensor"))
    agent = AgentProcess(config)
    agent.wait_event("mqtt_subscribed")
    sensor.send(BASELINE)
    agent.wait_event("baseline_learned")
    hard = resource.prlimit(agent.pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (1, hard))
    sensor.send(FAULT)
    held = agent.wait_event("storage_full", 90, where=lambda d: d.get("what") == "alert")
    return config, watcher, sensor, agent, held


def test_sigterm_while_a_live_alert_waits_hands_it_to_the_broker_and_logs_it(broker, tmp_path):
    """Live frames are not kept, so no restart can raise a live alert the disk would not take:
    at the stop it is published without the outbox and logged in full."""
    config, watcher, sensor, agent, held = live_alert_held(
        broker, tmp_path, [f"{PREFIX}/+/+/+/alerts"], "ops-live")
    expected, _ = reference(config, tmp_path, BASELINE, FAULT)
    assert held["alert_id"] == expected[0] and not watcher.alert_ids()
    assert agent.stop() == 0
    stopped = agent.wait_event("stop_uncommitted")
    assert stopped["live"] and stopped["published_without_outbox"]
    assert stopped["alert"]["id"] == held["alert_id"] and stopped["alert"]["summary"]
    watcher.wait(lambda w: held["alert_id"] in w.alert_ids(), 30, "the held alert")
    sensor.close()
    watcher.close()
    assert list(dict.fromkeys(watcher.alert_ids())) == [held["alert_id"]]


def test_full_or_read_only_state_directory_at_start_is_exit_2(broker, tmp_path):
    config = write_config(tmp_path, broker.port)
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o500)
    try:
        # the agent as an unprivileged user cannot write there; root ignores modes, so the
        # same process is given a file-size limit instead (writes fail with EFBIG)
        def no_writes():
            resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

        run = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                             capture_output=True, text=True, cwd=REPO, timeout=60,
                             preexec_fn=no_writes if os.geteuid() == 0 else None)
    finally:
        os.chmod(state, 0o700)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr and str(state) in run.stderr
    assert "bytes free" in run.stderr
    check = subprocess.run([sys.executable, "-m", "edge_agent", "config", "check", str(config)],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert check.returncode == 0 and "writable" in check.stdout and "free" in check.stdout
    # a read-only file system (a read-only bind mount, where mounting is permitted)
    if subprocess.run(["mount", "--bind", "-o", "ro", str(state), str(state)],
                      capture_output=True).returncode != 0:
        return
    try:
        run = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        check = subprocess.run([sys.executable, "-m", "edge_agent", "config", "check",
                                str(config)], capture_output=True, text=True, cwd=REPO, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
    assert run.returncode == 2 and "Read-only file system" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "NOT writable here" in check.stdout


# -- 2. kill -9 with live data ----------------------------------------------------------------------
def test_kill_9_right_after_an_alarm_resumes_the_episode(broker, tmp_path):
    """Live frames: baseline, fault, ALARM; kill -9 as soon as the alarm reaches the operator;
    restart; more fault frames. The episode goes on: no second ALARM under a new id, and the
    baseline (checkpointed as soon as it was fitted) is not learned again."""
    config = write_config(tmp_path, broker.port)
    expected, last_window = reference(config, tmp_path, BASELINE, FAULT, MORE_FAULT)
    assert len(expected) == 1  # one episode, one alarm
    topic = f"{PREFIX}/{SITE}/{AREA}/motor-1/status"
    watcher = Watcher(settings_for(broker, "operator"), [f"{PREFIX}/+/+/+/alerts", topic],
                      "ops-kill")
    sensor = Sensor(settings_for(broker, "sensor"))
    first = AgentProcess(config)
    first.wait_event("mqtt_subscribed")
    sensor.send(BASELINE)
    learned = first.wait_event("baseline_learned")
    first.wait_event("checkpoint", where=lambda d: d["ts"] >= learned["ts"])
    sensor.send(FAULT)
    watcher.wait(lambda w: w.alert_ids(), 60, "the alarm")
    first.stop(signal.SIGKILL)
    second = AgentProcess(config)
    restore = second.wait_event("restore")
    assert restore["baselines"] == ["motor-1/de/1797rpm"]
    assert restore["alert_states_resumed"] == ["motor-1"]
    second.wait_event("mqtt_subscribed")
    sensor.send(MORE_FAULT)
    watcher.wait(machine_done(last_window), 60, "the last window processed")
    assert second.stop() == 0
    sensor.close()
    watcher.close()
    assert list(dict.fromkeys(watcher.alert_ids())) == expected  # no new id for one episode
    assert not second.events("baseline_learned")
    assert watcher.docs(topic)[-1]["state"] == "alarm"


# -- 3. a flood from one credential, against the shipped broker configuration ----------------------
@pytest.fixture
def shipped(tmp_path):
    with ShippedBroker(tmp_path / "mosquitto", agent_id=AGENT_ID) as b:
        yield b


def shipped_settings(broker, user, port):
    return MqttSettings(host="localhost", port=port, username=user, password=broker.users[user],
                        tls_ca=str(broker.certs["ca"]), keepalive_s=10)


FLOOD_CHANNELS, FLOOD_MACHINES = 25_000, 20_000


def test_a_flood_of_names_from_one_credential_is_bounded_and_alerts_flow(shipped, tmp_path):
    """The sensor credential sends 25,000 4-byte messages on distinct channels of a configured
    machine (one without a channel list) and frames for 20,000 unknown machines, through the
    shipped broker config (max_packet_size, ACL). Memory, status size and log stay bounded,
    the agent is never disconnected, and the alarm is the one the same input raises alone."""
    config = write_config(tmp_path, shipped.agent_port, user="edge-agent",
                          password=shipped.users["edge-agent"], tls_ca=shipped.certs["ca"],
                          channels="")
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "localhost"'))
    expected, last_window = reference(config, tmp_path, BASELINE, FAULT)
    status_topic = f"{PREFIX}/agents/{AGENT_ID}/status"
    machine_topic = f"{PREFIX}/{SITE}/{AREA}/motor-1/status"
    watcher = Watcher(shipped_settings(shipped, "operator", shipped.tls_port),
                      [f"{PREFIX}/+/+/+/alerts", machine_topic, status_topic], "ops")
    sensor = Sensor(shipped_settings(shipped, "sensor", shipped.tls_port))
    agent = AgentProcess(config)
    agent.wait_event("mqtt_subscribed")
    sensor.send(BASELINE)
    agent.wait_event("baseline_learned")
    rss_before, lines_before = rss_mb(agent.pid), len(agent.raw)
    sent = 0
    for i in range(FLOOD_CHANNELS):
        sensor.client.publish(f"{PREFIX}/{SITE}/{AREA}/motor-1/c{i}/raw", b"junk", qos=0)
    for i in range(FLOOD_MACHINES):
        sensor.client.publish(f"{PREFIX}/{SITE}/{AREA}/m{i}/de/raw", b"junk", qos=0)
    sent = FLOOD_CHANNELS + FLOOD_MACHINES
    sensor.send(FAULT)
    watcher.wait(lambda w: w.alert_ids(), 90, "the alarm")
    watcher.wait(machine_done(last_window), 60, "the last window processed")
    seen = len(watcher.docs(status_topic))
    watcher.wait(lambda w: len(w.docs(status_topic)) > seen + 1, 30, "a fresh agent status")
    rss_after, lines_after = rss_mb(agent.pid), len(agent.raw)
    assert agent.stop() == 0
    sensor.close()
    watcher.close()
    status = validate("agent-status", watcher.docs(status_topic)[-2])
    machine_docs = [(t, p) for t, p in watcher.messages if t == machine_topic]
    largest = max(len(p) for t, p in watcher.messages if t.endswith("/status"))
    refused = {r: v["count"] for r, v in status["rejected"].items()}
    figures = {"sent": sent, "refused": refused, "rss_mb": (round(rss_before), round(rss_after)),
               "log_lines": lines_after - lines_before, "largest_status_bytes": largest,
               "reconnects": status["mqtt"]["reconnects"], "alerts": len(watcher.alert_ids())}
    print("flood figures:", figures)
    assert list(dict.fromkeys(watcher.alert_ids())) == expected  # nothing lost, nothing new
    assert status["mqtt"]["reconnects"] == 0 and status["mqtt"]["disconnects"] == {}
    assert status["mqtt"]["max_packet_bytes"] == shipped.max_packet_size
    # every junk message counted (QoS 0 may be dropped by the broker under load, never added)
    assert 0.9 * FLOOD_MACHINES <= refused["unknown_machine"] <= FLOOD_MACHINES
    per_channel = validate("machine-status", json.loads(machine_docs[-1][1]))["channels"]
    assert set(per_channel) == {"de"}  # junk on new channel names takes no slot
    junk_on_channels = sum(refused.values()) - refused["unknown_machine"]
    assert 0.9 * FLOOD_CHANNELS <= junk_on_channels + sum(
        sum(c["rejected"].values()) for c in per_channel.values()) <= FLOOD_CHANNELS + 1
    assert all(len(v["examples"]) <= 5 for v in status["rejected"].values())
    assert largest < 65536  # far below the broker's 4 MB packet limit
    # a line per refusal reason and minute, one per channel slot (at most 64): bounded
    assert lines_after - lines_before < 64 + 20
    assert rss_after - rss_before < 25


# -- 5. client-id takeover, against the shipped broker configuration --------------------------------
def test_no_credential_can_take_over_the_agents_session(shipped, tmp_path):
    """On the plant listener the shipped config binds client ids to users: a client with the
    sensor (or operator) credential that connects as the agent's client id gets its user name
    as id instead, and the agent is not disconnected. On the agents' own listener (unbound,
    for multi-worker agents; only the agent's network reaches it) a takeover does happen, and
    the agent logs and counts it."""
    config = write_config(tmp_path, shipped.agent_port, user="edge-agent",
                          password=shipped.users["edge-agent"], tls_ca=shipped.certs["ca"])
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "localhost"'))
    expected, last_window = reference(config, tmp_path, BASELINE, FAULT)
    status_topic = f"{PREFIX}/agents/{AGENT_ID}/status"
    watcher = Watcher(shipped_settings(shipped, "operator", shipped.tls_port),
                      [f"{PREFIX}/+/+/+/alerts", status_topic,
                       f"{PREFIX}/{SITE}/{AREA}/motor-1/status"], "ops")
    agent = AgentProcess(config)
    agent.wait_event("mqtt_subscribed")
    agent_id = f"edge-agent-{AGENT_ID}"

    def impostor(user, port):
        connected = threading.Event()
        client = make_client(shipped_settings(shipped, user, port), agent_id)
        client.on_connect = lambda *a: connected.set()
        client.connect("localhost", port)
        client.loop_start()
        assert connected.wait(10)
        return client

    for attempt in range(10):
        user = ("sensor", "operator")[attempt % 2]
        client = impostor(user, shipped.tls_port)
        client.disconnect()
        client.loop_stop()
    assert shipped.log().count(f"as {agent_id} ") == 1  # only the agent ever had that id
    sensor = Sensor(shipped_settings(shipped, "sensor", shipped.tls_port))
    sensor.send(BASELINE + FAULT)
    watcher.wait(lambda w: w.alert_ids(), 60, "the alarm")
    watcher.wait(machine_done(last_window), 60, "the last window processed")
    assert not agent.events("mqtt_disconnected")
    assert list(dict.fromkeys(watcher.alert_ids())) == expected
    # the agents' listener does not bind ids: a takeover there is seen and reported
    thief = impostor("sensor", shipped.agent_port)
    lost = agent.wait_event("mqtt_disconnected", 30)
    agent.wait_event("mqtt_connected", 30, where=lambda d: d["ts"] > lost["ts"])
    thief.loop_stop()
    seen = len(watcher.docs(status_topic))
    watcher.wait(lambda w: len(w.docs(status_topic)) > seen + 1, 30, "a fresh agent status")
    assert agent.stop() == 0
    sensor.close()
    watcher.close()
    mqtt = validate("agent-status", watcher.docs(status_topic)[-2])["mqtt"]
    assert mqtt["reconnects"] >= 1 and sum(mqtt["disconnects"].values()) >= 1


# -- 8. a crash ------------------------------------------------------------------------------------
def test_a_crash_says_crashed_with_its_error_and_loses_no_alert(broker, tmp_path):
    # A recording that passes the check at start (a zip archive with a 'samples' array) but
    # whose data are damaged: the read fails mid-run, as a disk error would.
    broken = tmp_path / "broken.npz"
    np.savez(broken, samples=np.zeros((48000, 1), dtype=np.float32), fs_hz=np.array(48000.0))
    data = bytearray(broken.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64  # the CRC no longer matches
    broken.write_bytes(bytes(data))
    recordings = [SAMPLE_DATA / "cwru" / "normal_0_97.mat",
                  SAMPLE_DATA / "cwru" / "48k_Drive_End_IR007_0_109.mat"]
    good = write_config(tmp_path, broker.port, replay=recordings, name="good.toml")
    expected = replay_reference(good, tmp_path)
    # a CWRU file is one block, known complete when the next file is read: the good one
    # after the fault lets the fault's block (and its alert) through before the crash
    config = write_config(tmp_path, broker.port, replay=recordings + [recordings[0], broken])
    status_topic = f"{PREFIX}/agents/{AGENT_ID}/status"
    watcher = Watcher(settings_for(broker, "operator"), [f"{PREFIX}/+/+/+/alerts", status_topic],
                      "ops-crash")
    agent = AgentProcess(config)
    assert agent.wait(120) == 1
    watcher.wait(lambda w: any(d["status"] == "offline" for d in w.docs(status_topic)), 30,
                 "the offline status")
    watcher.wait(lambda w: set(expected) <= set(w.alert_ids()), 30, "the alerts before it")
    watcher.close()
    offline = validate("agent-status", watcher.docs(status_topic)[-1])
    assert offline["status"] == "offline" and offline["reason"] == "crashed"
    assert "broken.npz" in offline["error"]
    [crash] = agent.events("crash")
    assert crash["msg"].startswith("edge-agent failed: ") and "broken.npz" in crash["msg"]
    assert list(dict.fromkeys(watcher.alert_ids())) == expected


# -- 4. the area level of a topic -------------------------------------------------------------------
def test_only_the_machines_configured_area_addresses_it(broker, tmp_path):
    """Fault frames on another area's topics and a re-baseline under another area are refused
    and counted: the alarm comes from the machine's own frames, at the window it would."""
    config = write_config(tmp_path, broker.port)
    healthy, late_fault = frames("normal", 30, 10), frames("inner_race", 40, 10)
    expected, last_window = reference(config, tmp_path, BASELINE, healthy, late_fault)
    assert len(expected) == 1
    status_topic = f"{PREFIX}/agents/{AGENT_ID}/status"
    watcher = Watcher(settings_for(broker, "operator"),
                      [f"{PREFIX}/+/+/+/alerts", status_topic,
                       f"{PREFIX}/{SITE}/{AREA}/motor-1/status"], "ops-area")
    sensor = Sensor(settings_for(broker, "sensor"))
    agent = AgentProcess(config)
    agent.wait_event("mqtt_subscribed")
    sensor.send(BASELINE)
    agent.wait_event("baseline_learned")
    early_fault = frames("inner_race", 30, 10)  # the healthy frames' times: a fault if taken
    for area in ("other-area", "agents"):
        for f in early_fault:
            sensor.client.publish(f"{PREFIX}/{SITE}/{area}/motor-1/de/raw", encode_raw(f),
                                  qos=1).wait_for_publish(10)
    operator = make_client(settings_for(broker, "operator"), "operator-console")
    operator.connect(broker.host, broker.port)
    operator.loop_start()
    operator.publish(f"{PREFIX}/{SITE}/other-area/motor-1/cmd/rebaseline", b"{}",
                     qos=1).wait_for_publish(10)
    operator.disconnect()
    operator.loop_stop()
    sensor.send(healthy + late_fault)
    watcher.wait(machine_done(last_window), 60, "the last window processed")
    seen = len(watcher.docs(status_topic))
    watcher.wait(lambda w: len(w.docs(status_topic)) > seen + 1, 30, "a fresh agent status")
    assert agent.stop() == 0
    sensor.close()
    watcher.close()
    assert list(dict.fromkeys(watcher.alert_ids())) == expected
    assert not agent.events("rebaseline")
    rejected = validate("agent-status", watcher.docs(status_topic)[-2])["rejected"]
    assert rejected["wrong_area"]["count"] == 2 * len(early_fault) + 1
    assert f"{PREFIX}/{SITE}/other-area/motor-1/cmd/rebaseline" in \
        rejected["wrong_area"]["examples"] or rejected["wrong_area"]["count"] > 5


# -- 7. at SIGTERM, the queued live frames that are dropped are counted -----------------------------
def test_sigterm_counts_the_queued_live_frames_it_drops(broker, tmp_path):
    """Frames queued for processing at a stop are dropped and counted. To have a known number
    queued, the processing thread is held (an alert waits for a disk that takes no write)
    while the backlog arrives; a refused message sent after it marks that all of it is in."""
    status_topic = f"{PREFIX}/agents/{AGENT_ID}/status"
    _, watcher, sensor, agent, _ = live_alert_held(broker, tmp_path, [status_topic], "ops-term")
    backlog = frames("normal", 40, 300)  # after the fault's frames: none a duplicate
    sensor.send(backlog)
    sensor.client.publish(f"{PREFIX}/{SITE}/{AREA}/no-such-machine/de/raw", b"marker", qos=1)
    agent.wait_event("refused", 60, where=lambda d: "/no-such-machine/" in d.get("example", ""))
    assert agent.stop() == 0
    sensor.close()
    stop = agent.wait_event("stop")
    dropped = agent.wait_event("dropped_at_stop")["frames"]
    # every backlog frame was queued behind the held alert (so were the fault's frames after
    # the one that raised it): each one dropped and counted
    assert len(backlog) <= dropped < len(backlog) + len(FAULT)
    assert stop["dropped_at_stop"] == dropped and stop["dropped_frames"] == 0
    watcher.wait(lambda w: any(d["status"] == "offline" for d in w.docs(status_topic)), 30,
                 "the offline status")
    watcher.close()
    offline = validate("agent-status", watcher.docs(status_topic)[-1])
    assert offline["reason"] == "shutdown" and offline["processing"]["dropped_at_stop"] == dropped


def test_a_checkpoint_lost_mid_episode_learns_no_baseline_from_the_fault(tmp_path):
    """The alarm's state comes back from the outbox, the learned baseline does not (an upgrade
    with a new checkpoint format, a new key, a damaged file): the channel must not learn the
    fault as its new normal and call the machine back to normal."""
    from edge_agent.jsonl import dumps
    from edge_agent.mqtt.outbox import Outbox

    class OutboxOnly:  # the agent's link without a broker: alerts into a real outbox
        def __init__(self, outbox):
            self.outbox = outbox

        def publish_alert(self, alert, state=None):
            self.outbox.put("alerts", dumps(alert).encode(), msg_id=alert["id"], state=state)

        def publish_status(self):
            pass

        def close(self, drain_s=0, error=None):
            pass

    config = load_config(write_config(tmp_path, 1883))
    outbox = Outbox(tmp_path / "outbox.sqlite")
    first = Agent(config)
    first.link = OutboxOnly(outbox)
    raised = [a for f in BASELINE + FAULT for a in first.process([f], live=True)]
    assert [a["severity"] for a in raised] == ["alarm"]
    first.checkpoint()
    (config.state_dir / "checkpoints" / "MANIFEST.json").unlink()  # the checkpoint is gone
    second = Agent(config)
    second.link = OutboxOnly(outbox)
    second.restore(outbox.alert_states())
    assert second.pipeline.alerters["motor-1"].state == "alarm"
    later = [a for f in frames("inner_race", 40, 200) for a in second.process([f], live=True)]
    assert later == []  # no "back to normal": the episode stays open
    view = second.channel_view[("motor-1", "de")]
    assert view["phase"] == "baselining" and view.get("baseline_held")
    detector = second.pipeline.detectors[("motor-1", "de")]
    assert not any(m.fitted for m in detector.models.values())  # nothing learned from it
    outbox.close()
