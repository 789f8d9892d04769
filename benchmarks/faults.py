"""Faults, measured: what reaches an operator, and what the agent costs, with and without them.

    python benchmarks/faults.py                      # this checkout
    python benchmarks/faults.py --tree OTHER_CHECKOUT  # another version's edge_agent, same scenarios

Each scenario runs ``edge-agent run`` (from ``--tree``) as a process next to a real Mosquitto
built from ``--deploy`` (default: this checkout's deploy/mosquitto, adapted to loopback by
tests/broker.ShippedBroker) and prints one JSON line of figures: alerts expected (the same
input, no fault, in-process with this checkout's code), received, lost, duplicated (a second
id for one episode), the agent's disconnects, RSS, the largest retained status, log lines.

* ``flood``: the sensor credential sends 25,000 4-byte messages on distinct channels of a
  configured machine without a channel list and 200,000 for unknown machines, between a
  baseline and a fault.
* ``takeover``: a client with the sensor credential connects as the agent's client id every
  two seconds on the plant listener, while frames flow.
* ``kill9``: kill -9 right after the alarm reaches the operator, restart, more fault frames.
* ``full_disk``: a replay (FEMTO + CWRU, 5 alerts) whose state directory stops taking writes
  (RLIMIT_FSIZE on the running agent) once it has connected, and takes them again 8 s later.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import broker as test_broker  # noqa: E402
from tests import test_faults as tf  # noqa: E402


class TreeAgent(tf.AgentProcess):
    """``edge-agent run`` from another checkout (its own edge_agent first on the path)."""

    def __init__(self, tree: Path, config: Path, *args, preexec_fn=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)}, preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        self.lines, self.raw = [], []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()


def wait_quietly(watcher, predicate, timeout_s: float, what: str) -> bool:
    """Wait as :meth:`Watcher.wait` does, but a timeout is a figure (lost), not an error."""
    try:
        watcher.wait(predicate, timeout_s, what)
        return True
    except AssertionError:
        return False


def opened(stack, thing):
    """``thing``, closed when the scenario ends."""
    stack.callback(thing.close)
    return thing


def started(stack, agent):
    """``agent``, stopped (SIGTERM) when the scenario ends, before the broker."""
    stack.callback(agent.stop, timeout_s=60)
    return agent


def wait_connected(agent: tf.AgentProcess) -> None:
    agent.wait_event("mqtt_connected")
    time.sleep(1.0)  # older versions log no "subscribed": give the SUBACKs a moment


def outcome(expected: list[str], received: list[str]) -> dict:
    unique = list(dict.fromkeys(received))
    return {"expected": len(expected), "received": len(set(unique) & set(expected)),
            "lost": len(set(expected) - set(unique)),
            "duplicated": len(set(unique) - set(expected))}


def refusals_seen(watcher) -> int:
    """Refusals the agent reports: agent-wide (``rejected``) plus per channel (machine status)."""
    total = 0
    for topic in {t for t, _ in watcher.messages if t.endswith("/status")}:
        doc = (watcher.docs(topic) or [{}])[-1]
        total += sum(v.get("count", 0) for v in doc.get("rejected", {}).values())
        total += sum(sum(c.get("rejected", {}).values()) for c in doc.get("channels", {}).values())
    return total


def settled(watcher, since: float, quiet_s: float = 3.0, limit_s: float = 90.0) -> float:
    """Seconds from ``since`` until the reported refusals stop growing for ``quiet_s`` while
    fresh status documents keep arriving (the agent's status shares the busy connection)."""
    last, changed, fresh = -1, time.monotonic(), len(watcher.messages)
    while time.monotonic() - since < limit_s:
        seen, docs = refusals_seen(watcher), len(watcher.messages)
        if seen != last:
            last, changed, fresh = seen, time.monotonic(), docs
        elif time.monotonic() - changed >= quiet_s and docs >= fresh + 4:
            break
        time.sleep(0.2)
    return round(changed - since, 1)


def largest_status(watcher) -> int:
    return max((len(p) for t, p in watcher.messages if t.endswith("/status")), default=0)


def disconnects(agent) -> dict:
    """Connections the agent lost, by the reason it logged (rate-limited lines count the rest)."""
    out: dict[str, int] = {}
    for d in agent.events("mqtt_disconnected") + agent.events("mqtt_session_taken_over"):
        reason = str(d.get("reason", "session taken over"))
        out[reason] = out.get(reason, 0) + 1 + int(d.get("suppressed", 0))
    return out


#: A second sensor gateway with a user of its own (one connection per user on the plant
#: listener), so the impostor with the shared sensor credential cannot kick it.
GATEWAY = {"sensor-gw2": "gw2-pw-4242"}
GATEWAY_ACL = f"\nuser sensor-gw2\ntopic write {tf.PREFIX}/{tf.SITE}/+/+/+/raw\n"


@contextlib.contextmanager
def shipped(work: Path, deploy: Path):
    """The broker of ``deploy``, and an exit stack that closes what the scenario opens."""
    test_broker.DEPLOY = deploy
    b = test_broker.ShippedBroker(work / "mosquitto", agent_id=tf.AGENT_ID,
                                  extra_users=GATEWAY, extra_acl=GATEWAY_ACL)
    with contextlib.ExitStack() as stack:
        stack.callback(b.stop)
        b.start()
        yield b, stack


def agent_port(b) -> int:
    return b.agent_port  # the agents' listener, or the plant one in configurations without it


def live_config(work: Path, b, channels='channels = ["de"]') -> Path:
    config = tf.write_config(work, agent_port(b), user="edge-agent",
                             password=b.users["edge-agent"], tls_ca=b.certs["ca"],
                             channels=channels)
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "localhost"'))
    return config


def watch(b, port, *topics) -> tf.Watcher:
    return tf.Watcher(tf.shipped_settings(b, "operator", port),
                      [f"{tf.PREFIX}/+/+/+/alerts", *topics], "ops")


def flood(tree: Path, work: Path, deploy: Path, channels: int = 25_000,
          machines: int = 200_000) -> dict:
    with shipped(work, deploy) as (b, stack):
        config = live_config(work, b, channels="")
        expected, last_window = tf.reference(config, work, tf.BASELINE, tf.FAULT)
        watcher = opened(stack, watch(b, b.tls_port, f"{tf.PREFIX}/#"))
        sensor = opened(stack, tf.Sensor(tf.shipped_settings(b, "sensor", b.tls_port)))
        agent = started(stack, TreeAgent(tree, config))
        wait_connected(agent)
        sensor.send(tf.BASELINE)
        agent.wait_event("baseline_learned")
        rss0, lines0 = tf.rss_mb(agent.pid), len(agent.raw)
        began = time.monotonic()
        for i in range(channels):
            sensor.client.publish(f"{tf.PREFIX}/{tf.SITE}/{tf.AREA}/motor-1/c{i}/raw", b"junk")
        for i in range(machines):
            sensor.client.publish(f"{tf.PREFIX}/{tf.SITE}/{tf.AREA}/m{i}/de/raw", b"junk")
        published = time.monotonic()
        # The broker queues at most max_queued_messages (1000) for a subscriber that lags;
        # frames sent into a flood may be dropped there, before the agent. So the fault is
        # sent once the agent has taken in the flood (its refusal counters stop growing).
        consumed_s = settled(watcher, published)
        sensor.send(tf.FAULT)
        wait_quietly(watcher, tf.machine_done(last_window), 150, "the last window")
        time.sleep(3.0)  # two more status periods: the largest document they publish
        figures = {"scenario": "flood", "sent": channels + machines + len(tf.FAULT),
                   **outcome(expected, watcher.alert_ids()), "disconnects": disconnects(agent),
                   "seconds": round(time.monotonic() - began, 1),
                   "flood_consumed_s": consumed_s, "refusals_reported": refusals_seen(watcher),
                   "rss_mb": [round(rss0), round(tf.rss_mb(agent.pid))],
                   "largest_status_bytes": largest_status(watcher),
                   "log_lines": len(agent.raw) - lines0}
        return figures


def takeover(tree: Path, work: Path, deploy: Path, attempts: int = 10) -> dict:
    from edge_agent.mqtt.client import make_client

    with shipped(work, deploy) as (b, stack):
        config = live_config(work, b)
        expected, last_window = tf.reference(config, work, tf.BASELINE, tf.FAULT)
        watcher = opened(stack, watch(b, b.tls_port,
                                      f"{tf.PREFIX}/{tf.SITE}/{tf.AREA}/motor-1/status"))
        agent = started(stack, TreeAgent(tree, config))
        wait_connected(agent)
        stop = threading.Event()

        def impostor():  # the sensor credential, the agent's client id, every 2 s
            for _ in range(attempts):
                c = make_client(tf.shipped_settings(b, "sensor", b.tls_port),
                                f"edge-agent-{tf.AGENT_ID}")
                c.connect("localhost", b.tls_port)
                c.loop_start()
                if stop.wait(2.0):
                    break
                c.disconnect()
                c.loop_stop()

        thread = threading.Thread(target=impostor)
        thread.start()
        gateway = opened(stack, tf.Sensor(tf.shipped_settings(b, "sensor-gw2", b.tls_port),
                                          "gw2"))
        for frame in tf.BASELINE + tf.FAULT:
            gateway.send([frame])
            time.sleep(2.0 * attempts / len(tf.BASELINE + tf.FAULT))
        thread.join()
        wait_quietly(watcher, tf.machine_done(last_window), 30, "the last window")
        figures = {"scenario": "takeover", "attempts": attempts,
                   **outcome(expected, watcher.alert_ids()), "disconnects": disconnects(agent)}
        return figures


def kill9(tree: Path, work: Path, deploy: Path) -> dict:
    with shipped(work, deploy) as (b, stack):
        config = live_config(work, b)
        # a periodic checkpoint between the baseline and the fault, as in a plant's first hours
        config.write_text(config.read_text().replace("checkpoint_every_s = 300.0",
                                                     "checkpoint_every_s = 2.0"))
        expected, last_window = tf.reference(config, work, tf.BASELINE, tf.FAULT, tf.MORE_FAULT)
        watcher = opened(stack, watch(b, b.tls_port,
                                      f"{tf.PREFIX}/{tf.SITE}/{tf.AREA}/motor-1/status"))
        sensor = opened(stack, tf.Sensor(tf.shipped_settings(b, "sensor", b.tls_port)))
        agent = started(stack, TreeAgent(tree, config))
        wait_connected(agent)
        sensor.send(tf.BASELINE)
        learned = agent.wait_event("baseline_learned")
        agent.wait_event("checkpoint", where=lambda d: d["ts"] > learned["ts"])
        sensor.send(tf.FAULT)
        watcher.wait(lambda w: w.alert_ids(), 60, "the alarm")
        agent.stop(signal.SIGKILL)
        again = started(stack, TreeAgent(tree, config))
        wait_connected(again)
        sensor.send(tf.MORE_FAULT)
        wait_quietly(watcher, tf.machine_done(last_window), 60, "the last window")
        figures = {"scenario": "kill9", **outcome(expected, watcher.alert_ids()),
                   "relearned_baselines": len(again.events("baseline_learned"))}
        return figures


def full_disk(tree: Path, work: Path, deploy: Path, hold_s: float = 8.0) -> dict:
    recordings = [tf.SAMPLE_DATA / "femto" / "femto_learning_Bearing1_2.npz",
                  tf.SAMPLE_DATA / "cwru" / "normal_0_97.mat",
                  tf.SAMPLE_DATA / "cwru" / "48k_Drive_End_IR007_0_109.mat",
                  tf.SAMPLE_DATA / "cwru" / "normal_0_97.mat",
                  tf.SAMPLE_DATA / "cwru" / "48k_Drive_End_OR007@6_0_135.mat"]
    with shipped(work, deploy) as (b, stack):
        config = tf.write_config(work, agent_port(b), user="edge-agent",
                                 password=b.users["edge-agent"], tls_ca=b.certs["ca"],
                                 replay=recordings, speed=1500.0, checkpoint_every_s=1.0)
        config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "localhost"'))
        expected = tf.replay_reference(config, work)
        watcher = opened(stack, watch(b, b.tls_port))
        agent = started(stack, TreeAgent(tree, config, "--exit-after-replay"))
        wait_connected(agent)
        hard = resource.prlimit(agent.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (1, hard))
        time.sleep(hold_s)
        during = len(set(watcher.alert_ids()))
        if agent.proc.poll() is None:
            resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (hard, hard))
        code = agent.wait(240)
        time.sleep(2.0)
        figures = {"scenario": "full_disk", **outcome(expected, watcher.alert_ids()),
                   "received_while_full": during, "exit_code": code,
                   "processing_errors": len(agent.events("processing_error"))}
        return figures


SCENARIOS = {"flood": flood, "takeover": takeover, "kill9": kill9, "full_disk": full_disk}


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose edge_agent runs")
    parser.add_argument("--deploy", type=Path, default=REPO / "deploy" / "mosquitto",
                        help="broker configuration (mosquitto.conf and acl)")
    parser.add_argument("scenario", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.scenario) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    for name in args.scenario or SCENARIOS:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps({"tree": str(args.tree), **SCENARIOS[name](
                args.tree.resolve(), Path(work), args.deploy.resolve())}), flush=True)


if __name__ == "__main__":
    main()
