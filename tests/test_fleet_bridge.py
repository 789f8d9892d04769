"""Fleet learning past one broker: a gateway's Mosquitto bridged to the plant broker, three
agents and an aggregator, with the shipped configurations (deploy/mosquitto, deploy/fleet).

The link between the brokers runs through a TCP relay the test can cut. The agents get
real FEMTO condition-1 snapshots (Bearing1_1, 1_2, 1_3: three machines of one class) as
live frames; the aggregator (``edge-agent fleet aggregate``, a process) builds, signs and
rolls out the prior (canary first, then promoted), it crosses the bridge back and is
applied; a fourth machine is then monitored from its first windows. During a 30-s cut of
the link the agents go on publishing updates: every update id an agent queued reaches the
aggregator once the link is back, none while it is down. The updates since make version 2,
rolled out the same way; an operator's ``cmd/fleet-rollback`` on the plant broker takes every
machine back to version 1.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.mqtt.client import make_client
from edge_agent.runtime.config import MqttSettings
from tests.broker import PREFIX, SITE, Broker, ShippedBroker
from tests.conftest import REPO, shared
from tests.test_faults import LogLines, Sensor, Watcher

pytestmark = pytest.mark.slow

DEPLOY = REPO / "deploy"
CLASS = "femto-c1"
AREA = "line-3"
AGENTS = {"gw-a": "femto-bearing1_1", "gw-b": "femto-bearing1_2", "gw-c": "femto-bearing1_3"}
RECORDINGS = {"femto-bearing1_1": "femto_learning_Bearing1_1.npz",
              "femto-bearing1_2": "femto_learning_Bearing1_2.npz",
              "femto-bearing1_3": "femto_test_Bearing1_3.npz"}
NEW_MACHINE = "femto-new"  # on gw-c: installed after the prior exists
BASELINE = 20
CUT_S = 30.0
PLANT_USERS = {"fleet-aggregator": "aggregator-pw-a66e9a", "fleet-bridge-gw-site1": "bridge-pw-b71d",
               "operator": "operator-pw-51be02"}


# -- the link between the brokers, and processes that log JSON lines ---------------------------
class Relay:
    """A TCP relay on loopback: ``cut()`` closes every connection and refuses new ones until
    ``restore()`` (a cable pulled between the gateway and the plant)."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = None
        self.restore()

    def restore(self):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        try:  # wakes the accept() blocked on it: a closed socket alone keeps listening
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class LogProcess(LogLines):
    """An ``edge-agent`` command whose JSON log lines are collected as they arrive."""

    def wait(self, predicate, timeout_s: float, what: str):
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self) or self.proc.poll() is not None,
                                     timeout_s)
            if not (ok and predicate(self)):
                raise AssertionError(f"timed out waiting for {what} (exit {self.proc.poll()}):\n"
                                     + "".join(self.raw[-25:])[-5000:])

    def wait_event(self, name: str, timeout_s: float = 60.0, where=lambda d: True) -> dict:
        self.wait(lambda p: p.events(name, where), timeout_s, f"event {name}")
        return self.events(name, where)[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(60)


# -- the shipped configurations, adapted to loopback ----------------------------------------
def plant_acl() -> str:
    acl = (DEPLOY / "fleet" / "plant-acl").read_text()
    own = "topic write acme/hamburg/fleet/+/updates/gw-hamburg-1/+"
    assert own in acl  # the bridge may carry its own agents' updates only
    acl = acl.replace(own, "\n".join(own.replace("gw-hamburg-1", a) for a in AGENTS))
    return acl.replace("gw-hamburg-1", "gw-site1").replace("acme", PREFIX).replace(
        "hamburg", SITE)


def gateway_broker(directory: Path, relay_port: int, plant: Broker) -> ShippedBroker:
    b = ShippedBroker(directory, agent_id="gw-a")
    acl = (b.dir / "acl").read_text().splitlines()
    out = []
    for line in acl:  # the shipped ACL is written for one agent: grant the others alike
        out.append(line)
        if "gw-a" in line:
            out += [line.replace("gw-a", other) for other in ("gw-b", "gw-c")]
    (b.dir / "acl").write_text("\n".join(out) + "\n")
    bridge = (DEPLOY / "fleet" / "bridge.conf").read_text()
    bridge = (bridge.replace("@PLANT_BROKER@", f"127.0.0.1:{relay_port}")
              .replace("@GATEWAY@", "gw-site1")
              .replace("@BRIDGE_PASSWORD@", PLANT_USERS["fleet-bridge-gw-site1"])
              .replace("/mosquitto/certs/ca.crt", str(plant.certs["ca"]))
              .replace("acme", PREFIX).replace("hamburg", SITE))
    b.conf.write_text(b.shipped_conf + "\n" + bridge)
    return b


AGENT_TOML = """
[agent]
id = "{agent}"
state_dir = "{state}"

[mqtt]
host = "localhost"
port = {port}
username = "edge-agent"
password = "{password}"
tls_ca = "{ca}"
keepalive_s = 5

[topics]
prefix = "{prefix}"
site = "{site}"
area = "{area}"

[resources]
status_every_s = 0.5
max_lag_s = 1e9
learn_budget = 1.0

[fleet]
trust_key = "{pub}"
publish_every_s = 2.0
epsilon_budget = 200.0
noise_multiplier = 4.0
share_before_prior = true  # the fleet forms from the members' updates, not commissioning

{machines}
"""

MACHINE_TOML = """
[[machine]]
id = "{machine}"
class = "{cls}"
bearing = "pronostia"
channels = ["horizontal", "vertical"]
[machine.learning]
baseline_windows = {baseline}
"""

FLEET_TOML = """
[aggregator]
id = "fleet-agg-1"
state_dir = "{state}"
key = "{key}"
min_members = 3
aggregate_every_s = 15.0

[rollout]
canaries = ["gw-a/femto-bearing1_1"]
promote_after_s = 1.5

[mqtt]
host = "localhost"
port = {port}
username = "fleet-aggregator"
password = "{password}"
tls_ca = "{ca}"
keepalive_s = 5

[topics]
prefix = "{prefix}"
site = "{site}"
"""


def snapshots(machine: str, first: int, count: int, name: str | None = None):
    """``count`` FEMTO snapshots (both channels) of ``machine``'s recording, from ``first``."""
    from edge_agent.runtime.inputs import InputOptions, timeline

    options = InputOptions(recordings=(shared("femto", RECORDINGS[machine]),))
    frames = list(itertools.islice(timeline(options), 2 * first, 2 * (first + count)))
    # Bearing1_3's file has times of day only (1970): dated like the others for live frames
    shift = 1.29e9 if frames and frames[0].start_s < 1e9 else 0.0
    return [replace(f, machine=name or f.machine, start_s=f.start_s + shift) for f in frames]


def test_a_prior_crosses_the_bridge_is_used_and_a_30_s_cut_loses_no_update(tmp_path):
    from edge_agent.fleet.keys import keygen

    key, pub = keygen(tmp_path / "keys")
    plant = Broker(tmp_path / "plant", users=PLANT_USERS, acl=plant_acl()).start()
    relay = Relay(plant.tls_port)
    gateway = gateway_broker(tmp_path / "gateway", relay.port, plant).start()
    procs = []
    try:
        for agent, machine in AGENTS.items():
            machines = MACHINE_TOML.format(machine=machine, cls=CLASS, baseline=BASELINE)
            if agent == "gw-c":
                machines += MACHINE_TOML.format(machine=NEW_MACHINE, cls=CLASS, baseline=BASELINE)
            path = tmp_path / f"{agent}.toml"
            path.write_text(AGENT_TOML.format(
                agent=agent, state=tmp_path / agent, port=gateway.agent_port,
                password=gateway.users["edge-agent"], ca=gateway.certs["ca"], prefix=PREFIX,
                site=SITE, area=AREA, pub=pub, machines=machines))
            procs.append(LogProcess("run", "--config", str(path)))
        agents = dict(zip(AGENTS, procs))
        fleet_toml = tmp_path / "fleet.toml"
        fleet_toml.write_text(FLEET_TOML.format(
            state=tmp_path / "aggregator", key=key, port=plant.tls_port,
            password=PLANT_USERS["fleet-aggregator"], ca=plant.certs["ca"], prefix=PREFIX,
            site=SITE))
        aggregator = LogProcess("fleet", "aggregate", "--config", str(fleet_toml))
        procs.append(aggregator)
        aggregator.wait_event("mqtt_subscribed", 60)
        for p in agents.values():
            p.wait_event("mqtt_subscribed", 60)
        sensor = Sensor(MqttSettings(host="localhost", port=gateway.tls_port, username="sensor",
                                     password=gateway.users["sensor"],
                                     tls_ca=str(gateway.certs["ca"])))
        for machine in AGENTS.values():
            sensor.send(snapshots(machine, 0, BASELINE + 5))

        # the prior is built from the three, signed, tried on the canary, promoted, applied
        built = aggregator.wait_event("fleet_prior_built", 120)
        assert (built["version"], built["members"]) == (1, 3)
        aggregator.wait_event("fleet_rollout", 60, where=lambda d: d["stage"] == "promoted")
        applied = {a: p.wait_event("fleet_prior_applied", 60, where=lambda d, m=m: d["machine"] == m)
                   for (a, m), p in zip(AGENTS.items(), agents.values())}
        assert [d for p in agents.values() for d in p.events("fleet_refused")] == []
        assert applied["gw-a"]["role"] == "candidate"  # the canary had it first
        assert all(applied[a]["role"] == "stable" for a in ("gw-b", "gw-c"))

        # a fourth machine of the class is monitored from its first windows
        watcher = Watcher(MqttSettings(host="localhost", port=gateway.tls_port,
                                       username="operator", password=gateway.users["operator"],
                                       tls_ca=str(gateway.certs["ca"])),
                          [f"{PREFIX}/{SITE}/{AREA}/{NEW_MACHINE}/status"], "ops")
        agents["gw-c"].wait_event("fleet_prior_applied", 30,
                                  where=lambda d: d["machine"] == NEW_MACHINE)
        new = snapshots("femto-bearing1_3", 0, 10, name=NEW_MACHINE)
        sensor.send(new)
        from edge_agent.frame import iso_time

        last = iso_time(new[-1].start_s)
        topic = f"{PREFIX}/{SITE}/{AREA}/{NEW_MACHINE}/status"
        watcher.wait(lambda w: any(d["channels"].get("horizontal", {}).get("last_window_ts") == last
                                   for d in w.docs(topic)), 60, "the new machine's 10th window")
        status = [d for d in watcher.docs(topic)
                  if d["channels"].get("horizontal", {}).get("last_window_ts") == last][-1]
        for ch in status["channels"].values():
            assert ch["phase"] == "monitoring" and ch["baseline_progress"] < 1.0, ch
        watcher.close()

        # a 30-s cut of the bridge: updates queue at the gateway and all arrive after it
        relay.cut()
        cut_at = time.time()
        time.sleep(CUT_S)  # the fault's duration, not a wait for something to happen
        during = {d["update_id"] for p in agents.values()
                  for d in p.events("fleet_update_queued")}
        relay.restore()

        def received(p):
            return {d["update_id"] for d in p.events("fleet_update") if d["via"] == "updates"}

        aggregator.wait(lambda p: during <= received(p), 90, "every queued update")
        queued_in_cut = [d for p in agents.values() for d in p.events("fleet_update_queued")
                         if cut_at <= _ts(d) <= cut_at + CUT_S]
        print("fleet bridge figures:", {"updates_queued": len(during),
                                        "queued_during_cut": len(queued_in_cut),
                                        "received": len(received(aggregator))})
        assert len(queued_in_cut) >= 3 * 5  # each agent kept publishing through the cut
        # ... and the cut was one: nothing reached the aggregator while it lasted
        assert not [(d["via"], d["update_id"], d["ts"], cut_at)
                    for d in aggregator.events("fleet_update")
                    if cut_at + 2.0 < _ts(d) < cut_at + CUT_S]
        assert not aggregator.events("fleet_update_refused")
        bridge_log = gateway.log()
        assert bridge_log.count("Connecting bridge (step 2) plant") >= 2, bridge_log[-3000:]

        # the updates since version 1 made version 2; an operator's cmd/fleet-rollback on the
        # plant broker takes every machine back to version 1, through the bridge
        aggregator.wait_event("fleet_rollout", 60,
                              where=lambda d: d["stage"] == "promoted" and d["stable"] == 2)
        for (agent, machine), p in zip(AGENTS.items(), agents.values()):
            p.wait_event("fleet_prior_applied", 60,
                         where=lambda d, m=machine: d["machine"] == m and d["version"] == 2)
        operator = make_client(MqttSettings(host="localhost", port=plant.tls_port,
                                            username="operator",
                                            password=PLANT_USERS["operator"],
                                            tls_ca=str(plant.certs["ca"])), "ops-rollback")
        operator.connect("localhost", plant.tls_port)
        operator.loop_start()
        operator.publish(f"{PREFIX}/{SITE}/fleet/{CLASS}/cmd/fleet-rollback", b"{}",
                         qos=1).wait_for_publish(30)
        operator.disconnect()
        operator.loop_stop()
        back = aggregator.wait_event("fleet_rollout", 30,
                                     where=lambda d: d["stage"] == "rolled_back")
        assert (back["stable"], back["candidate"]) == (1, None)
        for (agent, machine), p in zip(AGENTS.items(), agents.values()):
            p.wait_event("fleet_prior_applied", 30, where=lambda d, m=machine: (
                d["machine"] == m and d["version"] == 1 and d["stage"] == "rolled_back"))
        assert [d for p in agents.values() for d in p.events("fleet_refused")] == []
        sensor.close()
    finally:
        for p in procs:
            p.stop()
        gateway.stop()
        relay.cut()
        plant.stop()


def _ts(doc) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
