"""Soak: many channels at real-time rate through a real Mosquitto; does memory stay flat?

Run from the repository root (needs Mosquitto installed, and the sample data)::

    python benchmarks/soak.py                      # 64 machines x 4 channels, 240 s
    python benchmarks/soak.py --machines 16 --duration-s 120

Every channel sends a real 0.1-s FEMTO snapshot (2560 samples at 25.6 kHz, the healthy
first half of Bearing1_2) once a second, stamped with the wall clock, as wireless
vibration sensors do. The agent runs as its own process (``edge-agent run``), on
loopback only, with Python's allocation tracer on (``-X tracemalloc``), so memory is
judged two ways side by side:

* *traced*: the bytes Python and NumPy hold (``tracemalloc.get_traced_memory``),
  sampled every second. A leak makes it grow; the allocator's page churn does not.
  The figure is the median of the last third of the measurement against the median
  of its first third.
* *resident* (RSS): what the kernel sees, saw-toothing by tens of MB as the allocator
  takes and returns pages; a leak shows as rising peaks, so the peak of the second
  half of the measurement is set against the peak of the first.

The measurement starts once every channel is monitoring (and at least ``--warm-up-s``
after the first frame): a baseline fit waits for the learning CPU budget, so how long
learning takes depends on the machine, and the models it builds are not a leak. The
warm-up is bounded (``--warm-up-timeout-s``); a channel still learning then is reported.

The test suite runs a short version of this (tests/test_soak.py) and asserts on the
traced figure; this script is the long one whose figures go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "femto" / "femto_learning_Bearing1_2.npz"

CONFIG = """
[agent]
id = "gw-soak"
state_dir = "{state}"
checkpoint_every_s = 60.0
accept_unknown_machines = true
[mqtt]
host = "{host}"
port = {port}
username = "agent"
password = "{password}"
[topics]
prefix = "{prefix}"
site = "{site}"
area = "hall"
[learning]
baseline_windows = {baseline}
min_baseline_windows = {baseline}
ae_baseline_epochs = 30
[resources]
status_every_s = 5.0
"""

#: The agent, with a thread printing the traced bytes every second on standard error.
TRACED_AGENT = """
import sys, threading, time, tracemalloc
def report():
    while True:
        print(f"TRACED {time.monotonic():.3f} {tracemalloc.get_traced_memory()[0]}",
              file=sys.stderr, flush=True)
        time.sleep(1.0)
threading.Thread(target=report, daemon=True).start()
from edge_agent.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def test_broker_module():
    """tests/broker.py by path: a benchmark dependency installs a top-level ``tests``."""
    spec = importlib.util.spec_from_file_location("edge_agent_test_broker",
                                                  REPO / "tests" / "broker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@dataclass
class SoakResult:
    machines: int
    channels: int
    duration_s: float  # of the measurement, after the warm-up
    warm_up_s: float  # how long the warm-up took: until every channel was monitoring
    sent: int = 0
    status: dict = field(default_factory=dict)  # the agent's last retained status
    machine_docs: list = field(default_factory=list)
    rss: list = field(default_factory=list)  # (t, MB)
    traced: list = field(default_factory=list)  # (t, bytes)
    exit_code: int | None = None

    def _after_warm_up(self, series):
        return [(t, v) for t, v in series if t >= self.warm_up_s]

    @property
    def traced_growth(self) -> float:
        """Median traced bytes of the last third of the measurement over its first third, − 1."""
        values = [v for _, v in self._after_warm_up(self.traced)]
        third = max(1, len(values) // 3)
        return statistics.median(values[-third:]) / statistics.median(values[:third]) - 1

    @property
    def rss_peaks_mb(self) -> tuple[float, float]:
        measured = self._after_warm_up(self.rss)
        middle = self.warm_up_s + self.duration_s / 2
        return (max(v for t, v in measured if t < middle), max(v for t, v in measured if t >= middle))

    @property
    def monitored(self) -> int:
        return sum(c.get("phase") == "monitoring" for d in self.machine_docs
                   for c in d["channels"].values())

    def report(self) -> str:
        first, second = self.rss_peaks_mb
        p = self.status.get("processing", {})
        return (f"{self.machines} machines x {self.channels // self.machines} channels for "
                f"{self.duration_s:.0f} s (warm-up {self.warm_up_s:.0f} s): sent {self.sent} "
                f"frames, agent windows {p.get('windows')}, dropped {p.get('dropped_frames')}, "
                f"lag {self.status.get('lag_s')} s, monitored {self.monitored}/{self.channels}; "
                f"traced memory {self._after_warm_up(self.traced)[0][1] / 1e6:.1f} MB after the "
                f"warm-up, {self.traced_growth:+.1%} from the first to the last third; peak RSS "
                f"{first:.0f} MB then {second:.0f} MB ({second / first - 1:+.1%})")


def _sensors(broker, users, machines, channels, stop, result, prefix, site):
    from edge_agent.frame import Frame
    from edge_agent.mqtt.client import make_client
    from edge_agent.mqtt.ingest import encode_raw
    from edge_agent.runtime.config import MqttSettings

    with np.load(SAMPLE) as z:
        snapshots = z["acc_milli_g"][:100].astype(np.float32) / 1000.0  # the healthy half
    client = make_client(MqttSettings(host=broker.host, port=broker.port, username="sensor",
                                      password=users["sensor"]), "soak-sensors")
    client.connect(broker.host, broker.port)
    client.loop_start()
    tick = time.time()
    while not stop.is_set():
        for c in range(machines * channels):
            machine, channel = f"m{c // channels:02d}", f"c{c % channels}"
            snap = snapshots[(result.sent // 256 + c) % len(snapshots), :, c % 2]
            frame = Frame(machine, channel, tick, 25600.0, snap, 1800.0, "soak")
            client.publish(f"{prefix}/{site}/hall/{machine}/{channel}/raw", encode_raw(frame),
                           qos=0)
            result.sent += 1
        tick += 1.0
        stop.wait(max(0.0, tick - time.time()))
    client.disconnect()
    client.loop_stop()


def run_soak(workdir: Path, *, machines: int, channels: int, duration_s: float,
             warm_up_s: float, warm_up_timeout_s: float = 300.0,
             baseline_windows: int = 30) -> SoakResult:
    """One soak in ``workdir``; returns what it measured (see the module docstring).

    The warm-up lasts at least ``warm_up_s`` and until every channel is monitoring, at
    most ``warm_up_timeout_s``; then memory is measured for ``duration_s``.
    """
    tb = test_broker_module()
    result = SoakResult(machines, machines * channels, duration_s, warm_up_s)
    with tb.Broker(workdir / "mosquitto") as broker:
        config = workdir / "agent.toml"
        config.write_text(CONFIG.format(state=workdir / "state", host=broker.host,
                                        port=broker.port, password=tb.USERS["agent"],
                                        prefix=tb.PREFIX, site=tb.SITE, baseline=baseline_windows))
        agent = subprocess.Popen([sys.executable, "-X", "tracemalloc=1", "-c", TRACED_AGENT,
                                  str(config)], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        connected = threading.Event()

        def read_logs():  # the agent says when it is connected and subscribed
            for line in agent.stdout:
                if '"event": "mqtt_connected"' in line:
                    connected.set()

        def read_traced():
            for line in agent.stderr:
                if line.startswith("TRACED "):
                    _, t, n = line.split()
                    result.traced.append((float(t) - started, int(n)))

        threading.Thread(target=read_logs, daemon=True).start()
        threading.Thread(target=read_traced, daemon=True).start()
        if not connected.wait(60):
            agent.kill()
            raise RuntimeError("the agent did not connect to the broker")
        # (frames sent before its subscriptions are acknowledged are lost: the warm-up covers it)
        watcher = StatusWatcher(broker, tb)
        started = time.monotonic()
        result.traced.clear()
        stop = threading.Event()
        feeder = threading.Thread(target=_sensors, args=(broker, tb.USERS, machines, channels,
                                                         stop, result, tb.PREFIX, tb.SITE),
                                  daemon=True)
        feeder.start()

        def sample():  # one sample a second of resident memory (traced comes by itself)
            time.sleep(1.0)
            result.rss.append((time.monotonic() - started, rss_mb(agent.pid)))
            if agent.poll() is not None:
                raise RuntimeError(f"the agent died (exit {agent.returncode})")

        # the warm-up: learning, however long the learning budget makes it on this machine
        while time.monotonic() - started < warm_up_s:
            sample()
        while (not watcher.wait_monitored(machines * channels, timeout_s=1.0)
               and time.monotonic() - started < warm_up_timeout_s):
            sample()
        result.warm_up_s = time.monotonic() - started
        while time.monotonic() - started < result.warm_up_s + duration_s:
            sample()
        stop.set()
        feeder.join(10)
        watcher.wait_caught_up(result.sent, timeout_s=60)
        result.status = dict(watcher.docs.get(watcher.agent_topic, {}))  # before the offline one
        result.machine_docs = [d for t, d in watcher.docs.items() if t != watcher.agent_topic]
        agent.send_signal(signal.SIGTERM)
        result.exit_code = agent.wait(60)
        watcher.close()
    return result


class StatusWatcher:
    """The agent's and the machines' retained status documents, as an operator sees them."""

    def __init__(self, broker, tb):
        from edge_agent.mqtt.client import make_client
        from edge_agent.runtime.config import MqttSettings

        self.docs: dict[str, dict] = {}
        self.agent_topic = f"{tb.PREFIX}/agents/gw-soak/status"
        self._changed = threading.Condition()
        self._client = make_client(MqttSettings(host=broker.host, port=broker.port,
                                                username="operator",
                                                password=tb.USERS["operator"]), "soak-watcher")
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe([(self.agent_topic, 1), (f"{tb.PREFIX}/{tb.SITE}/hall/+/status", 1)])
        self._client.loop_start()

    def _on_message(self, client, userdata, message):
        with self._changed:
            self.docs[message.topic] = json.loads(message.payload)
            self._changed.notify_all()

    def wait_caught_up(self, sent: int, timeout_s: float) -> None:
        """Until the agent status counts a window for (almost) every frame sent and a
        status published after that (the last frames processed), or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while time.monotonic() < deadline:
                windows = self.docs.get(self.agent_topic, {}).get("processing", {}).get("windows", 0)
                if windows >= 0.99 * sent:
                    return
                self._changed.wait(max(0.0, deadline - time.monotonic()))

    def wait_monitored(self, channels: int, timeout_s: float) -> bool:
        """Whether the machines' status documents show ``channels`` channels monitoring
        within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                if sum(c.get("phase") == "monitoring" for t, d in self.docs.items()
                       if t != self.agent_topic for c in d.get("channels", {}).values()) >= channels:
                    return True
                if time.monotonic() >= deadline:
                    return False
                self._changed.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def main(argv=None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4, help="per machine")
    parser.add_argument("--duration-s", type=float, default=240.0)
    parser.add_argument("--warm-up-s", type=float, default=60.0,
                        help="at least; the warm-up also lasts until every channel monitors")
    parser.add_argument("--warm-up-timeout-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edge-agent-soak-") as tmp:
        result = run_soak(Path(tmp), machines=args.machines, channels=args.channels,
                          duration_s=args.duration_s, warm_up_s=args.warm_up_s,
                          warm_up_timeout_s=args.warm_up_timeout_s)
    print(result.report())
    print("RSS samples (s, MB):", [(round(t), round(v)) for t, v in result.rss[::10]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
