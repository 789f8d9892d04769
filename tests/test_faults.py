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
class AgentProcess:
    """``edge-agent run`` with its JSON log lines collected as they arrive."""

    def __init__(self, config: Path, *args: str, preexec_fn=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config), *args],
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

    def events(self, name: str) -> list[dict]:
        with self._cond:
            return [d for d in self.lines if d.get("event") == name]

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


def reference(config_path: Path, tmp_path: Path, *batches) -> list[str]:
    """The alert ids the agent raises for ``batches`` of frames with no fault, no network."""
    config = load_config(config_path)
    agent = Agent(replace(config, state_dir=tmp_path / "reference"))
    ids = []
    for batch in batches:
        for frame in batch:
            ids += [a["id"] for a in agent.process([frame], live=True)]
    return ids


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
