"""Soak: 256 channels at real-time rate through a real Mosquitto; memory stays flat.

64 machines with 4 accelerometers each; every channel sends a real 0.1-s FEMTO
snapshot (2560 samples at 25.6 kHz) once a second, stamped with the wall clock,
as wireless vibration sensors do. The agent runs as its own process, on
loopback only. After a warm-up that covers every baseline (30 windows) and its
fit, resident memory must not grow by more than 5 % to the end, the agent must
keep up (small lag, no frame dropped) and every channel must be monitored.
Memory is judged by its peaks (see the test), as a leak raises them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.frame import Frame
from edge_agent.mqtt.ingest import encode_raw
from tests.broker import PREFIX, SITE, USERS, Broker
from tests.conftest import REPO, SAMPLE_DATA

pytestmark = pytest.mark.slow

MACHINES, CHANNELS = 64, 4
DURATION_S, WARM_UP_S = 240.0, 60.0

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
baseline_windows = 30
ae_baseline_epochs = 30
[resources]
status_every_s = 10.0
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def sensors(broker, stop: threading.Event, sent: list[int]) -> None:
    """Every second, one real snapshot per channel, published as a raw frame."""
    from edge_agent.mqtt.client import make_client
    from edge_agent.runtime.config import MqttSettings

    with np.load(SAMPLE_DATA / "femto" / "femto_learning_Bearing1_2.npz") as z:
        # the healthy first half: this is a memory soak, not a fault
        snapshots = z["acc_milli_g"][:100].astype(np.float32) / 1000.0
    client = make_client(MqttSettings(host=broker.host, port=broker.port, username="sensor",
                                      password=USERS["sensor"]), "soak-sensors")
    client.connect(broker.host, broker.port)
    client.loop_start()
    tick = time.time()
    while not stop.is_set():
        for c in range(MACHINES * CHANNELS):
            machine, channel = f"m{c // CHANNELS:02d}", f"c{c % CHANNELS}"
            snap = snapshots[(sent[0] // 256 + c) % len(snapshots), :, c % 2]
            frame = Frame(machine, channel, tick, 25600.0, snap, 1800.0, "soak")
            client.publish(f"{PREFIX}/{SITE}/hall/{machine}/{channel}/raw", encode_raw(frame),
                           qos=0)
            sent[0] += 1
        tick += 1.0
        stop.wait(max(0.0, tick - time.time()))
    client.disconnect()
    client.loop_stop()


def test_256_channels_in_real_time_memory_stays_flat(tmp_path):
    with Broker(tmp_path / "mosquitto") as broker:
        config = tmp_path / "agent.toml"
        config.write_text(CONFIG.format(state=tmp_path / "state", host=broker.host,
                                        port=broker.port, password=USERS["agent"],
                                        prefix=PREFIX, site=SITE))
        agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config",
                                  str(config)], cwd=REPO, stdout=subprocess.DEVNULL)
        time.sleep(3.0)
        stop, sent = threading.Event(), [0]
        feeder = threading.Thread(target=sensors, args=(broker, stop, sent), daemon=True)
        feeder.start()
        started, samples = time.monotonic(), []
        while time.monotonic() - started < DURATION_S:
            time.sleep(5.0)
            samples.append((time.monotonic() - started, rss_mb(agent.pid)))
            assert agent.poll() is None, "the agent died"
        stop.set()
        feeder.join(10)
        time.sleep(3.0)  # the last frames are processed and the status refreshed
        watcher = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-u", "operator",
             "-P", USERS["operator"], "-t", f"{PREFIX}/agents/gw-soak/status",
             "-t", f"{PREFIX}/{SITE}/hall/+/status", "-W", "3", "-v"],
            capture_output=True, text=True)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
    docs = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
            for line in watcher.stdout.splitlines()}
    status = docs[f"{PREFIX}/agents/gw-soak/status"]
    machines = [d for t, d in docs.items() if t.endswith("/status") and "/agents/" not in t]
    # Resident memory saw-tooths by tens of MB as the allocator takes and returns
    # pages, so a leak shows as a rising peak: compare the peaks of the two halves
    # after the warm-up.
    middle = (WARM_UP_S + DURATION_S) / 2
    first = max(rss for t, rss in samples if WARM_UP_S <= t < middle)
    second = max(rss for t, rss in samples if t >= middle)
    growth = second / first - 1
    report = (f"sent {sent[0]} frames; agent windows {status['processing']['windows']}; "
              f"peak RSS {first:.0f} MB in {WARM_UP_S:.0f}-{middle:.0f} s, {second:.0f} MB in "
              f"{middle:.0f}-{DURATION_S:.0f} s ({growth:+.1%}); lag {status.get('lag_s')} s; "
              f"samples {[(round(t), round(rss)) for t, rss in samples]}")
    print(report)
    assert growth <= 0.05, report
    assert status["processing"]["dropped_frames"] == 0, report
    assert status["processing"]["windows"] >= 0.95 * sent[0], report
    assert status["lag_s"] is not None and status["lag_s"] < 10, report
    assert len(machines) == MACHINES
    monitored = [c for d in machines for c in d["channels"].values() if c["phase"] == "monitoring"]
    assert len(monitored) == MACHINES * CHANNELS, report
