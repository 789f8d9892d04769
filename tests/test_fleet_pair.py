"""A redundant pair of ``edge-agent fleet aggregate`` processes on a live broker (the shipped
plant ACL, TLS): the leader adopts the commissioned prior; a standby started beside it with
a fresh state directory and the same commissioning file publishes nothing of its own (it
waits 5 s after subscribing, for the leader's retained status, before it could lead),
follows the leader's rollout, and takes over silently when the leader stops. On a quiet
machine the retained status usually arrives before the standby's first tick even without
the settle rule; that rule, the in-process hand-over and a restart of the first in name
order are unit-tested in tests/test_fleet_exchange.py.
"""

from __future__ import annotations

import pytest

from edge_agent.runtime.config import MqttSettings
from tests.broker import PREFIX, SITE, Broker
from tests.conftest import shared
from tests.test_cli import edge_agent
from tests.test_faults import Watcher
from tests.test_fleet_bridge import CLASS, FLEET_TOML, PLANT_USERS, LogProcess, plant_acl

pytestmark = pytest.mark.slow

PAIR = ("fleet-agg-1", "fleet-agg-2")  # the first in name order leads while it is online


def fleet_status(watcher, topic):
    return [d.get("fleet", {}) for d in watcher.docs(topic)]


def test_a_standby_started_beside_the_leader_publishes_nothing_of_its_own_then_takes_over(
        tmp_path):
    from edge_agent.fleet.keys import keygen

    key, _ = keygen(tmp_path / "keys")
    prior = tmp_path / "femto-c1.prior.json"
    edge_agent("fleet", "prior", shared("femto", "femto_learning_Bearing1_1.npz"),
               shared("femto", "femto_learning_Bearing1_2.npz"), "--class", CLASS,
               "--baseline-windows", "40", "--key", key, "--out", prior)
    plant = Broker(tmp_path / "plant", users=PLANT_USERS, acl=plant_acl()).start()
    procs = []
    watcher = None
    try:
        settings = MqttSettings(host="localhost", port=plant.tls_port,
                                username="fleet-aggregator",
                                password=PLANT_USERS["fleet-aggregator"],
                                tls_ca=str(plant.certs["ca"]))
        rollout = f"{PREFIX}/{SITE}/fleet/{CLASS}/rollout"
        status = {name: f"{PREFIX}/agents/{name}/status" for name in PAIR}
        watcher = Watcher(settings, [rollout, *status.values()], "pair-watcher")

        def start(me, peer):
            path = tmp_path / f"{me}.toml"
            path.write_text(FLEET_TOML.format(
                state=tmp_path / me, key=key, port=plant.tls_port,
                password=PLANT_USERS["fleet-aggregator"], ca=plant.certs["ca"], prefix=PREFIX,
                site=SITE).replace('id = "fleet-agg-1"',
                                   f'id = "{me}"\npeers = ["{peer}"]\n'
                                   f'commissioning = ["{prior.name}"]'))
            procs.append(LogProcess("fleet", "aggregate", "--config", str(path)))
            return procs[-1]

        leader = start(*PAIR)
        watcher.wait(lambda w: w.docs(rollout), 60, "the leader's rollout")
        [commissioned] = watcher.docs(rollout)
        assert (commissioned["seq"], commissioned["stable"], commissioned["stage"]) == (
            1, 1, "promoted")
        assert "commissioned from femto-c1.prior.json" in commissioned["reason"]

        standby = start(*reversed(PAIR))
        watcher.wait(lambda w: any(
            not f.get("leader", True)
            and f.get("classes", {}).get(CLASS, {}).get("rollout_seq") == 1
            for f in fleet_status(w, status[PAIR[1]])), 60, "the standby following the leader")
        leader.stop()
        watcher.wait(lambda w: any(f.get("leader") for f in fleet_status(w, status[PAIR[1]])),
                     60, "the standby leading")
        assert fleet_status(watcher, status[PAIR[1]])[-1]["classes"][CLASS]["stable"] == 1
        # one rollout document in all: the standby neither commissioned nor warned
        assert watcher.docs(rollout) == [commissioned]
        assert standby.events("fleet_rollout") == []
        assert standby.events("fleet_commissioning_skipped") == []
    finally:
        for p in procs:
            p.stop()
        if watcher is not None:
            watcher.close()
        plant.stop()
