"""Fleet priors in use: the CLI on real recordings, a baseline that differs from its fleet,
and the leave-one-out evaluation of benchmarks/fleet.py in a cheap form."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from edge_agent.frame import FeatureRecord
from edge_agent.models.prior import FleetPrior
from edge_agent.runtime.pipeline import Pipeline
from edge_agent.models.detector import DetectorConfig
from tests.conftest import shared
from tests.test_cli import edge_agent, json_lines


@pytest.mark.slow
def test_keygen_prior_and_replay_with_a_prior_on_real_recordings(tmp_path):
    femto = [shared("femto", f) for f in ("femto_learning_Bearing1_1.npz",
                                          "femto_learning_Bearing1_2.npz",
                                          "femto_test_Bearing1_3.npz")]
    edge_agent("fleet", "keygen", tmp_path / "keys")
    key, pub = tmp_path / "keys" / "fleet.key", tmp_path / "keys" / "fleet.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    refused = edge_agent("fleet", "keygen", tmp_path / "keys", check=False)
    assert refused.returncode == 2 and "already holds a fleet key" in refused.stderr
    prior = tmp_path / "prior.json"
    out = edge_agent("fleet", "prior", femto[0], femto[1], "--class", "femto-c1",
                     "--baseline-windows", "120", "--key", key, "--out", prior).stdout
    assert "2 members" in out and "signed" in out and "fewer than 3 members" in out
    doc = json.loads(prior.read_text())
    assert doc["class"] == "femto-c1" and doc["members"] == 2 and doc["signature"]
    assert "raw" not in prior.read_text() and doc["windows"] == 240

    # the third bearing with the prior: judged against the fleet from its first window, then
    # against its own baseline once fitted (and found like its fleet)
    lines = json_lines(edge_agent("replay", femto[2], "--prior", prior, "--trust-key", pub,
                                  "--jsonl", "-", "--quiet").stdout)
    verdicts = [v for v in lines if v["kind"] == "verdict" and v["channel"] == "horizontal"]
    assert verdicts[0]["phase"] == "monitoring" and verdicts[0]["basis"] == "prior"
    bases = [v["basis"] for v in verdicts]
    switch = bases.index("own")
    assert set(bases[:switch]) == {"prior"} and set(bases[switch:]) == {"own"}
    assert 100 <= switch <= 130  # its own 120-window baseline, then its own

    # a tampered prior, an unsigned one, another class, no key: exit 2, said plainly
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps({k: v for k, v in doc.items() if k != "signature"}))
    doc["features"][0]["location"] += 0.5
    (tmp_path / "tampered.json").write_text(json.dumps(doc))
    bad = edge_agent("replay", femto[2], "--prior", tmp_path / "tampered.json", "--trust-key",
                     pub, "--quiet", check=False)
    assert bad.returncode == 2 and "signature" in bad.stderr and "Traceback" not in bad.stderr
    other = edge_agent("replay", femto[2], "--prior", prior, "--trust-key", pub, "--class",
                       "fan", check=False)
    assert other.returncode == 2 and "wrong_class" in other.stderr
    bad = edge_agent("replay", femto[2], "--prior", unsigned, "--trust-key", pub, check=False)
    assert bad.returncode == 2 and "signature" in bad.stderr
    alone = edge_agent("replay", femto[2], "--prior", prior, check=False)
    assert alone.returncode == 2 and "--trust-key" in alone.stderr


def _records(velocity, n, start=0):
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        v = velocity * float(np.exp(rng.normal(0, 0.03)))
        features = {"sustained_rms_g": 0.1 * float(np.exp(rng.normal(0, 0.03))),
                    "sustained_kurtosis": 3.0 + float(rng.normal(0, 0.05)),
                    "velocity_rms_mm_s": v, "iso_zone": "C" if v > 4.5 else "B"}  # group 1
        yield i, FeatureRecord("pump-7", "de", 60.0 * i, features, rpm=None,
                               source=f"synthetic#{i}")


def test_a_baseline_that_differs_from_its_fleet_is_held_until_an_operator_confirms_it():
    # the fleet runs at 5.6 mm/s (zone C) and so does this pump: nothing against the fleet,
    # but a baseline in ISO zone C is no healthy baseline: a WARNING, and it stays on the prior
    names = ("sustained_rms_g", "sustained_kurtosis", "velocity_rms_mm_s")
    prior = FleetPrior("pump", 2, 0.0, names, 3, [-1.0, np.log10(3.0), np.log10(5.6)],
                       [0.013, 0.007, 0.013], [0.02, 0.01, 0.02], [True, True, True])
    config = DetectorConfig(baseline_windows=30, baseline_running_s=0.0,
                            min_baseline_windows=20)
    pipeline = Pipeline(config)
    pipeline.apply_prior("pump-7", prior)
    alerts, bases = [], []
    for i, rec in _records(5.6, 60):
        verdict, alert = pipeline.process(rec, i)
        bases.append(verdict.get("basis"))
        if alert:
            alerts.append(alert)
    assert bases[0] == "prior" and set(bases) == {"prior"}
    assert len(alerts) == 1 and alerts[0]["severity"] == "warning"
    assert "differs from its fleet" in alerts[0]["summary"]
    assert "zone C" in alerts[0]["summary"] and "operator confirms" in alerts[0]["summary"]
    assert pipeline.held_baselines[("pump-7", "de")]
    # a restart from a checkpoint (the detectors are pickled) keeps it held
    import pickle

    restored = Pipeline(config)
    restored.detectors = pickle.loads(pickle.dumps(pipeline.detectors))
    assert restored.held_baselines == pipeline.held_baselines
    assert pipeline.confirm_baseline("pump-7") == 1
    verdict, _ = pipeline.process(next(_records(5.6, 1, start=60))[1], 60)
    assert verdict["basis"] == "own" and ("pump-7", "de") not in pipeline.held_baselines


def test_a_baseline_like_its_fleet_is_accepted_and_a_prior_seeds_the_autoencoder():
    names = ("sustained_rms_g", "sustained_kurtosis", "velocity_rms_mm_s")
    rng = np.random.default_rng(5)
    weights = [rng.normal(0, 0.3, (3, 2)), np.zeros(2), rng.normal(0, 0.3, (2, 3)), np.zeros(3)]
    prior = FleetPrior("pump", 2, 0.0, names, 3, [-1.0, np.log10(3.0), np.log10(2.0)],
                       [0.013, 0.007, 0.013], [0.02, 0.01, 0.02], [True, True, True],
                       {"": weights})
    config = DetectorConfig(baseline_windows=30, baseline_running_s=0.0,
                            min_baseline_windows=20, ae_baseline_epochs=1)
    seeded, plain = Pipeline(config), Pipeline(config)
    seeded.apply_prior("pump-7", prior)
    for i, rec in _records(2.0, 40):
        verdict, alert = seeded.process(rec, i)
        plain.process(rec, i)
        assert alert is None
    assert verdict["basis"] == "own" and not seeded.held_baselines
    ae = seeded.detectors[("pump-7", "de")].models["any"].learners[4].mlp_
    ae_plain = plain.detectors[("pump-7", "de")].models["any"].learners[4].mlp_
    # one epoch from the fleet's weights stays near them, taken in the channel's feature order
    # (sorted: kurtosis, rms, velocity); the plain one starts elsewhere
    names_here = seeded.detectors[("pump-7", "de")].names
    assert names_here == ["sustained_kurtosis", "sustained_rms_g", "velocity_rms_mm_s"]
    expected = weights[0][[1, 0, 2]]
    assert np.abs(ae.coefs_[0] - expected).max() < 0.1
    assert np.abs(ae_plain.coefs_[0] - expected).max() > 0.3


@pytest.mark.slow
def test_leave_one_out_monitored_at_once_damaged_alerted_and_poison_changes_nothing():
    """benchmarks/fleet.py criteria (a), (c) and (d), without the long runs of (b) and (e)."""
    from benchmarks import fleet

    study = fleet.Study()
    for new in study.records:
        plain = fleet.judge_new(study, new, study.prior(new), full=False, without=False)
        assert plain["a"] is not None and plain["a"] < fleet.MONITORED_WITHIN, (new, plain)
        assert plain["c"] is not None and plain["c"] < fleet.DAMAGED_WITHIN, (new, plain)
        poisoned = fleet.judge_new(study, new, study.prior(new, poison="added"), full=False,
                                   without=False)
        assert (poisoned["a"], poisoned["c"]) == (plain["a"], plain["c"]), new
        assert study.prior(new, poison="added").provenance["excluded"]


@pytest.mark.slow
def test_an_operator_confirms_a_held_baseline_over_mqtt_and_a_sensor_cannot(tmp_path):
    import threading

    from edge_agent.mqtt.client import make_client
    from edge_agent.mqtt.link import connect_agent
    from edge_agent.runtime.agent import Agent
    from edge_agent.runtime.config import (AgentConfig, MachineConfig, MqttSettings,
                                           TopicsConfig)
    from edge_agent.runtime.validation import Limits
    from tests.broker import PREFIX, SITE, USERS, Broker
    from tests.test_agent import wait_until
    from tests.test_mqtt import settings

    names = ("sustained_rms_g", "sustained_kurtosis", "velocity_rms_mm_s")
    prior = FleetPrior("pump", 2, 0.0, names, 3, [-1.0, np.log10(3.0), np.log10(5.6)],
                       [0.013, 0.007, 0.013], [0.02, 0.01, 0.02], [True, True, True])
    learning = DetectorConfig(baseline_windows=30, baseline_running_s=0.0,
                              min_baseline_windows=20)
    with Broker(tmp_path / "mosquitto") as broker:
        config = AgentConfig(
            id="gw-1", state_dir=tmp_path / "state",
            mqtt=MqttSettings(host=broker.host, port=broker.port, username="agent",
                              password=USERS["agent"], reconnect_min_s=0.2,
                              reconnect_max_s=1.0, keepalive_s=5),
            topics=TopicsConfig(prefix=PREFIX, site=SITE, area="line-a"), limits=Limits(),
            machines=(MachineConfig(id="pump-7", learning=learning),))
        agent = Agent(config)
        agent.pipeline.apply_prior("pump-7", prior)
        for i, rec in _records(5.6, 40):
            agent.pipeline.process(rec, i)
        assert agent.pipeline.held_baselines
        for i, rec in _records(5.6, 1, start=40):  # the agent's own view of a window
            agent.channel_view[("pump-7", "de")] = {**agent.pipeline.process(rec, i)[0],
                                                    "start_s": rec.start_s}
        link = connect_agent(agent)
        stop = threading.Event()
        worker = threading.Thread(target=agent.run, args=(stop,))
        worker.start()
        try:
            assert link.publisher.wait_connected(10) and link.publisher.wait_subscribed(10)
            import jsonschema

            from edge_agent.mqtt.link import machine_status
            from edge_agent.schema import load_schema

            status = machine_status(agent, "pump-7")
            jsonschema.Draft202012Validator(load_schema("machine-status")).validate(status)
            de = status["channels"]["de"]
            assert de["basis"] == "prior" and "zone C" in de["fleet_held"][0]
            topic = link.topics.fleet_confirm("pump-7")
            for user in ("sensor", "operator"):  # the ACL lets only the operator command
                client = make_client(settings(broker, user=user), f"{user}-confirm")
                client.connect(broker.host, broker.port)
                client.loop_start()
                client.publish(topic, b"{}", qos=1).wait_for_publish(5)
                client.disconnect()
                client.loop_stop()
            assert wait_until(lambda: not agent.pipeline.held_baselines, 10)
            assert "fleet_held" not in machine_status(agent, "pump-7")["channels"]["de"]
            denied = [line for line in broker.log().splitlines()
                      if "Denied PUBLISH from sensor-confirm" in line]
            assert denied and "cmd/fleet-confirm" in denied[0]
        finally:
            stop.set()
            worker.join(30)
            agent.close()


def test_a_member_recording_without_a_complete_baseline_is_a_clear_error(femto_horizontal):
    from edge_agent.errors import UsageError
    from edge_agent.fleet.offline import member_from_records

    records = list(enumerate(femto_horizontal[:60]))
    with pytest.raises(UsageError, match="no complete baseline of 120 running windows"):
        member_from_records(records, class_name="c", config=DetectorConfig(), source="short.npz")
    member = member_from_records(list(enumerate(femto_horizontal[:200])), class_name="c",
                                 config=DetectorConfig())
    assert member.windows == 120 and member.ae_weights is not None
    assert not any("/" in n for n in member.feature_names)  # one channel: plain names
