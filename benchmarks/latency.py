"""Alert latency through a real Mosquitto on loopback, and the outbox's throughput.

    python benchmarks/latency.py [--machines 40] [--cycles 3]

Latency (window complete → alert at a subscriber):

- A Mosquitto from ``tests/broker.py`` (password file, ACL, MQTT 5) on
  127.0.0.1; the agent (``edge_agent.runtime.agent.Agent``, the object ``edge-agent
  run`` drives) connects as user ``agent`` with its durable outbox in a
  temporary directory on the local disk; a paho subscriber connects as
  ``operator`` to ``<prefix>/+/+/+/alerts`` (QoS 1) from a separate process
  and timestamps each alert in its ``on_message`` with ``time.time()`` (same
  host, same clock).
- ``--machines`` machines, one channel each (``horizontal``, 25.6 kHz, bearing
  PRONOSTIA at 1800 rpm, 0.1-s windows, default learning and alert policy).
  Frames are real FEMTO Bearing1_2 snapshots, one 0.1-s snapshot per frame,
  so each frame is exactly one window.
- Baseline (not measured): 120 healthy snapshots per machine (starting
  3 × machine index) go through an agent as a recording would (``live=False``:
  nothing deferred); it writes a checkpoint, and the live agent is a fresh one
  that restores it (as after a restart) and connects: its CPU-budget
  accounting then starts from the live phase, not from 40 baseline fits.
- Live phase (measured): a feeder thread submits, every 0.1 s of wall time, one
  frame per machine with ``agent.submit`` (where the MQTT ingestion handler
  puts decoded frames), stamped as if its last sample had just been taken:
  all machines' frames at the tick (``--arrival burst``, the default: sensors
  sampled together, so an alert waits for the windows ahead of it in the same
  block) or machine ``m`` at ``m/n`` of the tick (``--arrival spread``:
  free-running sensors).
  Each machine runs ``--cycles`` cycles of 50 frames: 8 frames of the bearing's
  real end-of-life snapshots (830-870: the alarm), then 42 healthy ones (the
  back-to-normal after the alarm clears). Machines start their cycles staggered
  over the first 5 s, so faults do not all begin in the same tick. Each cycle
  raises an ``alarm`` and a ``normal`` alert per machine; with the default
  cooldown (3 alerts of one severity per machine and hour) that is at most 6
  per machine, hence many machines.
- **Latency** of an alert = its arrival at the subscriber − the wall time at
  which the window that raised it was complete, i.e. when the frame carrying
  the window's last sample was handed to the agent (``agent.submit``). The
  window is found by the alert's ``source`` (unique per frame). Also split at
  the moment ``publish_alert`` returned (the alert committed to the outbox,
  fsynced).

Outbox throughput (same broker): ``Outbox.put`` alone (durable: SQLite WAL,
``synchronous=FULL``, one transaction and fsync per alert) of 2000 real alert
payloads; then 2000 alerts queued in a fresh outbox, drained through a
``Publisher`` (in-flight window 16, QoS 1, removal on PUBACK) to the
subscriber: from ``Publisher.start()`` to the last arrival.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from operator_subscriber import Subscriber, repo_broker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FEMTO = REPO.parent / "shared" / "data" / "femto" / "femto_learning_Bearing1_2.npz"
FS_HZ, TICK_S, RPM = 25600.0, 0.1, 1800.0
BASELINE = 120
FAULT, HEALTHY = 8, 42  # frames per cycle
FAULT_SNAPSHOTS = (830, 871)
DRAIN = 2000


def log(msg: str) -> None:
    print(f"[latency] {msg}", file=sys.stderr, flush=True)


def snapshots() -> np.ndarray:
    """Horizontal snapshots of Bearing1_2 in g, (871, 2560) float32."""
    with np.load(FEMTO) as z:
        return np.ascontiguousarray(z["acc_milli_g"][:, :, 0], dtype=np.float32) / np.float32(1000)


# -- broker, agent, subscriber ---------------------------------------------------------------------
def start_broker(directory: Path):
    return repo_broker().Broker(directory / "broker").start()


def agent_config(broker, state_dir: Path, n: int):
    from edge_agent.runtime.config import AgentConfig, ChannelConfig, MachineConfig, TopicsConfig
    from edge_agent.runtime.validation import Limits
    from edge_agent.runtime.config import MqttSettings
    PREFIX, SITE, USERS = repo_broker().PREFIX, repo_broker().SITE, repo_broker().USERS
    machines = tuple(MachineConfig(id=f"bearing-{m:02d}", bearing="pronostia", rpm=RPM,
                                   window_s=TICK_S,
                                   channels=(ChannelConfig("horizontal", fs_hz=FS_HZ),))
                     for m in range(n))
    return AgentConfig(id="bench-gateway", state_dir=state_dir,
                       mqtt=MqttSettings(host=broker.host, port=broker.port, username="agent",
                                         password=USERS["agent"]),
                       topics=TopicsConfig(prefix=PREFIX, site=SITE, area="line-1"),
                       limits=Limits(), machines=machines)


# -- feeding the agent -----------------------------------------------------------------------------
def frame(machine: str, samples, start_s: float, tag: str):
    from edge_agent.frame import Frame

    return Frame(machine, "horizontal", start_s, FS_HZ, samples, RPM, f"bench/{machine}/{tag}")


def learn_baselines(config, snaps, n: int) -> None:
    """Commissioning: 120 healthy frames per machine through an agent (as a recording: nothing
    deferred), then a checkpoint in ``config.state_dir`` for the live agent to restore."""
    from edge_agent.runtime.agent import Agent

    agent = Agent(config)
    t0 = time.time() - BASELINE * TICK_S - 1.0
    for k in range(BASELINE):
        agent.process([frame(f"bearing-{m:02d}", snaps[3 * m + k], t0 + k * TICK_S, f"b{k}")
                       for m in range(n)], live=False)
    fitted = sum(any(mod.fitted for mod in d.models.values())
                 for d in agent.pipeline.detectors.values())
    if fitted != n:
        raise RuntimeError(f"only {fitted} of {n} baselines learned")
    agent.checkpoint()
    log(f"{fitted} baselines learned and checkpointed")


def schedule(m: int, n: int, cycles: int) -> list[tuple[str, int]]:
    """Frames of machine ``m`` in the live phase: ('h'|'f', snapshot), one per tick."""
    lead = (m * (FAULT + HEALTHY)) // n
    healthy = iter(range(3 * m + BASELINE, 10_000))
    lo, hi = FAULT_SNAPSHOTS
    plan = [("h", next(healthy)) for _ in range(lead)]
    for c in range(cycles):
        start = lo + (m + 11 * c) % (hi - lo - FAULT)
        plan += [("f", start + j) for j in range(FAULT)]
        plan += [("h", next(healthy)) for _ in range(HEALTHY)]
    return plan


def feed_live(agent, snaps, n: int, cycles: int, spread: bool) -> dict[str, float]:
    """One frame per machine every 0.1 s: all at the tick (``spread`` false: sensors sampled
    together) or machine ``m`` at ``m/n`` of the tick (free-running sensors).
    Returns source -> wall time the frame was handed to the agent."""
    plans = [schedule(m, n, cycles) for m in range(n)]
    ticks = max(map(len, plans))
    complete: dict[str, float] = {}
    start = time.time() + 0.2
    late = 0
    for i in range(ticks):
        for m, plan in enumerate(plans):
            if i >= len(plan):
                continue
            due = start + i * TICK_S + (m * TICK_S / n if spread else 0.0)
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            elif m == 0:
                late += 1
            kind, s = plan[i]
            now = time.time()
            f = frame(f"bearing-{m:02d}", snaps[s], now - TICK_S, f"{i}{kind}{s}")
            complete[f.source] = now
            agent.submit(f)
        if i % 50 == 0:
            log(f"live tick {i}/{ticks}: {agent.stats['alerts']} alerts so far")
    log(f"{ticks} ticks fed ({late} started late)")
    return complete


# -- latency ---------------------------------------------------------------------------------------
def measure_latency(broker, tmp: Path, snaps, n: int, cycles: int, sub,
                    spread: bool) -> dict:
    """Baselines first (checkpointed), then a fresh agent restores them and goes live."""
    from edge_agent.mqtt.link import connect_agent
    from edge_agent.runtime.agent import Agent

    config = agent_config(broker, tmp / "state", n)
    log(f"learning {n} baselines")
    learn_baselines(config, snaps, n)
    agent = Agent(config)
    agent.restore()
    link = connect_agent(agent)
    if not link.publisher.wait_connected(10):
        raise RuntimeError("the agent could not connect to the broker")
    committed: dict[str, float] = {}
    put_s: list[float] = []
    publish = link.publisher.publish_alert

    def timed_publish(alert):  # instrumentation only: when the alert is durable in the outbox
        t0 = time.time()
        seq = publish(alert)
        committed[alert["id"]] = t1 = time.time()
        put_s.append(t1 - t0)
        return seq

    link.publisher.publish_alert = timed_publish
    before = dict(agent.stats)
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop,), name="agent")
    worker.start()
    try:
        sub.reset()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        complete = feed_live(agent, snaps, n, cycles, spread)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        time.sleep(1.0)
        expected = agent.stats["alerts"] - before["alerts"]
        got_all = sub.wait_for(expected, 30)
        stats = {k: agent.stats[k] - before.get(k, 0) for k in agent.stats}
    finally:
        stop.set()
        worker.join(30)
        agent.close()
    lat, to_outbox, to_sub, kinds = [], [], [], {}
    for alert_id, (arrived, alert) in sub.arrivals.items():
        done = complete.get(alert["source"])
        if done is None:
            continue
        lat.append(arrived - done)
        if alert_id in committed:
            to_outbox.append(committed[alert_id] - done)
            to_sub.append(arrived - committed[alert_id])
        kinds[alert["severity"]] = kinds.get(alert["severity"], 0) + 1
    return {"alerts_raised": expected, "received": len(lat), "all_received": got_all,
            "severities": kinds, "latency": summary(lat), "to_outbox": summary(to_outbox),
            "outbox_to_subscriber": summary(to_sub), "outbox_put": summary(put_s),
            "stats": stats, "cpu_share": cpu,
            "samples": [a for _, a in list(sub.arrivals.values())[:50]]}


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.sort(np.asarray(values)) * 1e3
    return {"n": len(v), "p50_ms": float(np.percentile(v, 50)),
            "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v[-1]),
            "mean_ms": float(v.mean())}


# -- outbox throughput -----------------------------------------------------------------------------
def payloads(samples: list[dict], n: int) -> list[tuple[str, bytes, str]]:
    """``n`` real alerts (cycled from ``samples``) under fresh ids: (topic, payload, id)."""
    from edge_agent.jsonl import dumps

    PREFIX, SITE = repo_broker().PREFIX, repo_broker().SITE
    out = []
    for k in range(n):
        alert = dict(samples[k % len(samples)], id=str(uuid.uuid4()))
        out.append((f"{PREFIX}/{SITE}/line-1/{alert['machine']}/alerts", dumps(alert).encode(),
                    alert["id"]))
    return out


def measure_put(tmp: Path, items) -> float:
    """Alerts per second through ``Outbox.put`` alone (one durable transaction each)."""
    from edge_agent.mqtt.outbox import Outbox

    with Outbox(tmp / "put" / "outbox.sqlite") as outbox:
        t0 = time.perf_counter()
        for topic, payload, msg_id in items:
            outbox.put(topic, payload, qos=1, msg_id=msg_id, priority=2)
        return len(items) / (time.perf_counter() - t0)


def measure_drain(broker, tmp: Path, items, sub) -> dict:
    """Alerts per second from a full outbox through the publisher to the subscriber."""
    from edge_agent.mqtt.outbox import Outbox
    from edge_agent.mqtt.publisher import Publisher
    from edge_agent.runtime.config import MqttSettings
    from edge_agent.mqtt.topics import Topics

    PREFIX, SITE, USERS = repo_broker().PREFIX, repo_broker().SITE, repo_broker().USERS
    outbox = Outbox(tmp / "drain" / "outbox.sqlite")
    for topic, payload, msg_id in items:
        outbox.put(topic, payload, qos=1, msg_id=msg_id, priority=2)
    sub.reset()
    settings = MqttSettings(host=broker.host, port=broker.port, username="agent",
                            password=USERS["agent"], client_id="bench-drain")
    publisher = Publisher(settings, outbox, Topics(PREFIX, SITE, "line-1"), "bench-drain")
    t0 = time.perf_counter()
    publisher.start()
    ok = sub.wait_for(len(items), 120)
    t1 = time.perf_counter()
    idle = publisher.wait_idle(30)
    first = min(t for t, _ in sub.arrivals.values())
    last = max(t for t, _ in sub.arrivals.values())
    publisher.close()
    depth = outbox.depth
    outbox.close()
    return {"alerts": len(items), "all_received": ok, "seconds": t1 - t0,
            "per_s": len(items) / (t1 - t0), "first_to_last_per_s": (len(items) - 1) / (last - first),
            "outbox_empty": idle and depth == 0}


# -- report ----------------------------------------------------------------------------------------
def report(lat: dict, put_rate: float, drain: dict, args) -> None:
    s = lat["stats"]
    print(f"Alert latency through Mosquitto on loopback: {args.machines} machines, "
          f"{args.cycles} fault cycles each, 0.1-s FEMTO windows every 0.1 s per machine "
          f"({args.machines * 10} windows/s, arrival: {args.arrival}), {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f}")
    sev = ", ".join(f"{k} {v}" for k, v in sorted(lat["severities"].items()))
    print(f"  alerts raised in the live phase {lat['alerts_raised']}, received and matched to "
          f"their window {lat['received']} ({sev}); agent windows {s['windows']}, deferred model "
          f"updates {s['deferred_updates']}, dropped frames {s['dropped_frames']}, errors "
          f"{s['processing_errors']}; this process used {lat['cpu_share']:.0%} of a core "
          f"during the live phase (agent and feeder threads)")
    print(f"  {'':<40} {'n':>5} {'p50':>9} {'p99':>9} {'max':>9}")
    for name, key in (("window complete → alert at subscriber", "latency"),
                      ("  window complete → committed in outbox", "to_outbox"),
                      ("    of which Outbox.put (fsync)", "outbox_put"),
                      ("  committed → at subscriber", "outbox_to_subscriber")):
        r = lat[key]
        if r["n"]:
            print(f"  {name:<40} {r['n']:>5} {r['p50_ms']:>6.1f} ms {r['p99_ms']:>6.1f} ms "
                  f"{r['max_ms']:>6.1f} ms")
    p99 = lat["latency"].get("p99_ms", float("inf"))
    print(f"  p99 {p99:.1f} ms (target ≤ 50 ms: {'met' if p99 <= 50 else 'NOT met'}); "
          f"≥ 200 alerts: {'yes' if lat['received'] >= 200 else 'NO'}\n")
    print(f"Outbox throughput ({DRAIN} real alert payloads, SQLite WAL synchronous=FULL)")
    print(f"  Outbox.put alone (one fsynced transaction per alert): {put_rate:.0f} alerts/s")
    print(f"  full outbox drained through the publisher to the subscriber: {drain['per_s']:.0f} "
          f"alerts/s ({drain['seconds']:.2f} s from Publisher.start(), "
          f"{drain['first_to_last_per_s']:.0f}/s first to last arrival; all received: "
          f"{drain['all_received']}, outbox empty after: {drain['outbox_empty']})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machines", type=int, default=40)
    parser.add_argument("--cycles", type=int, default=3, help="fault cycles per machine (≤ 3 "
                                                              "keeps within the default cooldown)")
    parser.add_argument("--arrival", choices=("burst", "spread"), default="burst",
                        help="frames of all machines at each tick (burst, default) or spread "
                             "evenly over it")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw results")
    args = parser.parse_args(argv)
    from edge_agent.logs import setup_logging

    warnings.filterwarnings("ignore")
    snaps = snapshots()
    with tempfile.TemporaryDirectory(prefix="edge-agent-latency-") as tmp, \
            open(Path(tmp) / "agent.log", "w", encoding="utf-8") as log_file:
        tmp = Path(tmp)
        setup_logging("info", log_file)  # the agent's JSON logs, kept out of the report
        broker = start_broker(tmp)
        log(f"Mosquitto on {broker.host}:{broker.port}")
        sub = Subscriber(broker)
        try:
            lat = measure_latency(broker, tmp, snaps, args.machines, args.cycles, sub,
                                  args.arrival == "spread")
            items = payloads(lat["samples"] or [{"machine": "bearing-00", "severity": "alarm"}],
                             DRAIN)
            log("outbox: put alone")
            put_rate = measure_put(tmp, items)
            log("outbox: drain through the publisher")
            drain = measure_drain(broker, tmp, items, sub)
        finally:
            sub.close()
            broker.stop()
            setup_logging("warning", sys.stderr)
    report(lat, put_rate, drain, args)
    if args.json:
        lat.pop("samples")
        args.json.write_text(json.dumps({"latency": lat, "put_per_s": put_rate, "drain": drain},
                                        indent=1))


if __name__ == "__main__":
    main()
