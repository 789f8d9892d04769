"""``edge-agent demo``: the whole agent on real recordings, with a broker and an operator.

A broker starts on loopback (Mosquitto when installed, else the embedded amqtt
of the ``demo`` extra); the agent replays the sample recordings through
features, learning and alert logic into its durable outbox and publishes over
MQTT; an operator subscriber (``edge-agent alerts``, a separate process) prints
every alert it receives. At the end a summary compares what was published with
what the operator received.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from edge_agent.errors import UsageError

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"

#: machine id, recordings (under sample_data/), what the recordings are, config.
SCENARIOS = (
    ("femto-bearing1_2", ("femto/femto_learning_Bearing1_2.npz",),
     "FEMTO-ST bearing run to failure (2 h 25 min, every 4th snapshot)",
     {"bearing": "pronostia", "baseline_windows": 60}),
    ("motor-1", ("cwru/normal_0_97.mat", "cwru/48k_Drive_End_IR007_0_109.mat"),
     "CWRU motor: healthy, then an inner-race defect",
     {"bearing": "6205-2rs", "window_s": 0.2, "hop_s": 0.1, "baseline_windows": 20}),
    ("motor-2", ("cwru/normal_0_97.mat", "cwru/48k_Drive_End_B007_0_122.mat"),
     "CWRU motor: healthy, then a ball defect",
     {"bearing": "6205-2rs", "window_s": 0.2, "hop_s": 0.1, "baseline_windows": 20}),
    ("motor-3", ("cwru/normal_0_97.mat", "cwru/48k_Drive_End_OR007@6_0_135.mat"),
     "CWRU motor: healthy, then an outer-race defect",
     {"bearing": "6205-2rs", "window_s": 0.2, "hop_s": 0.1, "baseline_windows": 20}),
)


class ChainSource:
    """Several replay sources one after the other."""

    def __init__(self, sources):
        self.sources = list(sources)
        self.exhausted = False
        self.position = 0

    def blocks(self):
        for source in self.sources:
            for block in source.blocks():
                self.position += len(block)
                yield block
        self.exhausted = True


def demo_config(broker, state_dir: Path, data: Path):
    from edge_agent.runtime.config import AgentConfig, MachineConfig, TopicsConfig
    from edge_agent.runtime.validation import Limits
    from edge_agent.models import DetectorConfig
    from edge_agent.runtime.config import MqttSettings

    machines = []
    for machine, _, _, opts in SCENARIOS:
        opts = dict(opts)
        learning = replace(DetectorConfig(), baseline_windows=opts.pop("baseline_windows"))
        machines.append(MachineConfig(id=machine, learning=learning, **opts))
    return AgentConfig(id="demo-gateway", state_dir=state_dir, checkpoint_every_s=30.0,
                       mqtt=MqttSettings(host=broker.host, port=broker.port,
                                         protocol=broker.protocol),
                       topics=TopicsConfig(prefix="demo", site="lab", area="bearing-rigs"),
                       limits=Limits(), machines=tuple(machines))


class Operator:
    """``edge-agent alerts --json`` in its own process; collects what it prints."""

    def __init__(self, broker, out):
        self.alerts: list[dict] = []
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "alerts", "--broker",
             f"{broker.host}:{broker.port}", "--prefix", "demo", "--mqtt", broker.protocol,
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.subscribed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self):
        for line in self.process.stderr:  # "connected to …; subscribed to …", or a problem
            if "subscribed to" in line:
                self.subscribed.set()
            elif "connection" not in line:
                self.out.write(f"  operator: {line}")

    def _read(self):
        from edge_agent.mqtt.operator import format_alert

        for line in self.process.stdout:
            alert = json.loads(line)
            self.alerts.append(alert)
            self.out.write(f"  operator got  {format_alert(alert)}\n")
            self.out.flush()

    def wait_for(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.alerts) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        self.process.wait(5)


def demo_command(args, out=sys.stdout) -> int:
    from edge_agent.runtime.agent import Agent
    from edge_agent.mqtt.embedded_broker import EmbeddedBroker
    from edge_agent.mqtt.link import connect_agent
    from edge_agent.logs import setup_logging
    from edge_agent.runtime.sources import ReplaySource

    data = Path(args.data) if args.data else SAMPLE_DATA
    missing = [p for _, paths, _, _ in SCENARIOS for p in paths if not (data / p).exists()]
    if missing:
        raise UsageError(f"sample recordings not found under {data} ({missing[0]}): run the demo "
                         "from a checkout of the repository, or pass --data DIR")
    temp = None if args.state_dir else tempfile.TemporaryDirectory(prefix="edge-agent-demo-")
    state_dir = Path(args.state_dir or temp.name)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(state_dir / "agent.log", "w", encoding="utf-8")
    setup_logging("info", log_file)
    broker = EmbeddedBroker().start()
    out.write(f"edge-agent demo\n  broker    {broker.kind} on {broker.host}:{broker.port}\n"
              f"  state     {state_dir} (agent log: agent.log)\n")
    for machine, _, what, _ in SCENARIOS:
        out.write(f"  machine   {machine:17s} {what}\n")
    out.write("\n")
    operator = Operator(broker, out)
    agent = Agent(demo_config(broker, state_dir, data))
    try:
        link = connect_agent(agent)
        if not link.publisher.wait_connected(15):
            raise UsageError("the agent could not connect to the demo broker")
        if not operator.subscribed.wait(15):  # before the first alert, or it would miss it
            raise UsageError("the operator subscriber could not subscribe on the demo broker")
        # CWRU recordings carry no date: let them run as if recorded this morning.
        morning = time.time() // 86400 * 86400 + 6 * 3600
        source = ChainSource(ReplaySource([data / p for p in paths], machine=machine,
                                          speed=args.speed, undated_start_s=morning)
                             for machine, paths, _, _ in SCENARIOS)
        stop = threading.Event()
        worker = threading.Thread(target=agent.run, args=(stop, source),
                                  kwargs={"exit_when_done": True}, name="agent")
        started = time.monotonic()
        worker.start()
        while worker.is_alive():
            worker.join(1.0)
            s = agent.stats
            out.write(f"  ... {s['windows']} windows analysed, {s['alerts']} alerts published, "
                      f"outbox {link.outbox.depth}\n")
            out.flush()
        link.publisher.wait_idle(15)
        operator.wait_for(agent.stats["alerts"], 15)
        elapsed = time.monotonic() - started
        outbox_depth = link.outbox.depth
    finally:
        agent.close()
        operator.stop()
        broker.stop()
        log_file.close()
    _summary(agent, operator, elapsed, outbox_depth, out)
    if temp is not None:
        temp.cleanup()
    return 0 if {a["id"] for a in operator.alerts} >= {a["id"] for a in list(agent.recent_alerts)} else 1


def _summary(agent, operator, elapsed, outbox_depth, out) -> None:
    sent = list(agent.recent_alerts)
    received = {a["id"] for a in operator.alerts}
    out.write(f"\nSummary ({elapsed:.1f} s)\n")
    for machine, _, _, _ in SCENARIOS:
        states = [v.get("state") for (m, _), v in agent.channel_view.items() if m == machine]
        worst = max(states, key=("stopped", "baselining", "normal", "warning", "alarm").index,
                    default="-")
        mine = [a for a in sent if a["machine"] == machine]
        story = ", ".join(f"{a['severity']} at {a['ts'][11:19]}" for a in mine) or "no alert"
        windows = sum(i for (m, _), i in agent.indices.items() if m == machine)
        out.write(f"  {machine:17s} {windows:5d} windows  now {worst:8s} {story}\n")
    lost = [a["id"] for a in sent if a["id"] not in received]
    out.write(f"  {len(sent)} alerts published, {len(received & {a['id'] for a in sent})} received "
              f"by the operator" + (f", {len(lost)} missing!" if lost else ", none lost")
              + f"; {outbox_depth} left in the outbox\n")
