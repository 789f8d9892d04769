"""The agent as a service: bad input at the edge, damaged checkpoints, falling behind."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import replace

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.runtime.agent import Agent
from edge_agent.runtime.config import parse_config
from edge_agent.frame import Frame
from edge_agent.mqtt.ingest import HEADER, encode_raw, encode_raw_json
from edge_agent.runtime.validation import REASONS
from edge_agent.mqtt.link import ingest_message, machine_status
from edge_agent.schema import load_schema
from tests.conftest import SAMPLE_DATA, load_cwru_de

CONFIG = """
[agent]
id = "gw-test"
state_dir = "{state}"
[topics]
prefix = "plant"
site = "site1"
area = "line-a"
[limits]
max_samples = 20000
[[machine]]
id = "pump-7"
bearing = "6205-2RS"
window_s = 0.2
channels = [{{ name = "de", fs_hz = 48000.0, clip_g = 8.0 }}, "fe"]
[machine.learning]
baseline_windows = 20
"""

DE, _ = load_cwru_de("normal")
TOPIC = "plant/site1/line-a/pump-7/de/raw"


def make_agent(tmp_path, **changes) -> Agent:
    config = parse_config(CONFIG.format(state=tmp_path / "state"))
    return Agent(replace(config, **changes))


def frame(start_s: float, n: int = 9600, offset: int = 0, channel: str = "de") -> Frame:
    return Frame("pump-7", channel, start_s, 48000.0, DE[offset:offset + n].copy(), 1796.0, "test")


# -- bad input: thousands of malformed payloads through the agent's own ingestion ------------------

def _mutated_binary(draw):
    good = bytearray(encode_raw(frame(1.7e9, n=draw(st.integers(1, 4000)))))
    kind = draw(st.sampled_from(["truncate", "header", "samples", "extend", "flip"]))
    if kind == "truncate":
        return bytes(good[:draw(st.integers(0, len(good) - 1))])
    if kind == "header":
        ts, fs, rpm, n = (draw(st.floats(allow_nan=True, allow_infinity=True)),
                          draw(st.floats(allow_nan=True, allow_infinity=True)),
                          draw(st.floats(width=32, allow_nan=True, allow_infinity=True)),
                          draw(st.integers(0, 2**32 - 1)))
        magic = draw(st.sampled_from([b"EAVF", b"EAVG", b"\0\0\0\0"]))
        version, flags = draw(st.integers(0, 255)), draw(st.integers(0, 255))
        good[:HEADER.size] = HEADER.pack(magic, version, flags, 0, ts, fs, rpm, n)
        return bytes(good)
    if kind == "samples":  # NaN, infinities, clipping at the 8 g full scale, a stuck sensor
        values = np.frombuffer(bytes(good[HEADER.size:]), "<f4").copy()
        how = draw(st.sampled_from(["nan", "inf", "clip", "flat", "zero"]))
        if how == "nan":
            values[draw(st.integers(0, values.size - 1))] = np.nan
        elif how == "inf":
            values[::7] = np.inf
        elif how == "clip":
            values[::3] = 8.0
        elif how == "flat":
            values[:] = 0.125
        else:
            values[:] = 0.0
        return bytes(good[:HEADER.size]) + values.astype("<f4").tobytes()
    if kind == "extend":
        return bytes(good) + draw(st.binary(min_size=1, max_size=16))
    position = draw(st.integers(0, len(good) - 1))
    good[position] ^= draw(st.integers(1, 255))
    return bytes(good)


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                         st.floats(allow_nan=True, allow_infinity=True))


def _json_payload(draw):
    doc = json.loads(encode_raw_json(frame(1.7e9, n=32)))
    key = draw(st.sampled_from(sorted(doc) + ["extra"]))
    doc[key] = draw(st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=8),
                                   st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=3)))
    if draw(st.booleans()):
        doc.pop(draw(st.sampled_from(sorted(doc))), None)
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def malformed(draw):
    kind = draw(st.sampled_from(["junk", "binary", "json", "features", "topic"]))
    topic = TOPIC if kind != "features" else "plant/site1/line-a/pump-7/de/features"
    if kind == "junk":
        return topic, draw(st.binary(max_size=2048))
    if kind == "binary":
        return topic, _mutated_binary(draw)
    if kind == "json":
        return topic, _json_payload(draw)
    if kind == "features":
        name = draw(st.one_of(st.just("rms_g"), st.text(max_size=12)))
        value = draw(JSON_SCALARS)
        return topic, json.dumps({"ts": 1.7e9, "features": {name: value}}, allow_nan=True).encode()
    return draw(st.text(max_size=60)), encode_raw(frame(1.7e9, n=64))


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory):
    return make_agent(tmp_path_factory.mktemp("fuzz"))


@settings(max_examples=10_000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(malformed())
def test_ten_thousand_malformed_payloads_never_crash_and_are_each_counted(fuzz_agent, message):
    topic, payload = message
    agent = fuzz_agent
    before = sum(agent.rejections.totals().values()), len(agent._inbox)
    ingest_message(agent, topic, payload)  # must not raise, whatever arrives
    after = sum(agent.rejections.totals().values()), len(agent._inbox)
    assert after[0] - before[0] + after[1] - before[1] == 1  # refused and counted, or queued
    assert set(agent.rejections.totals()) <= set(REASONS)
    if len(agent._inbox) >= 50:
        agent.process(agent._drain())  # whatever was accepted is processed without error


def test_refusals_and_sensor_health_reach_the_machine_status(tmp_path):
    agent = make_agent(tmp_path)
    ingest_message(agent, TOPIC, encode_raw(frame(1.7e9)))
    nan = frame(1.7e9 + 1)
    nan.samples[100] = np.nan
    ingest_message(agent, TOPIC, encode_raw(nan))
    clipped = frame(1.7e9 + 2)
    clipped.samples[::50] = 8.0
    ingest_message(agent, TOPIC, encode_raw(clipped))
    wrong_rate = replace(frame(1.7e9 + 3), fs_hz=25600.0)
    ingest_message(agent, TOPIC, encode_raw(wrong_rate))
    ingest_message(agent, TOPIC, encode_raw(frame(1.7e9 + 4, n=30000)))  # over max_samples
    ingest_message(agent, TOPIC, b"EAVF\x01")
    ingest_message(agent, "plant/site1/line-a/pump-9/de/raw", encode_raw(frame(1.7e9)))
    agent.process(agent._drain())
    status = machine_status(agent, "pump-7")
    jsonschema.Draft202012Validator(load_schema("machine-status")).validate(status)
    de = status["channels"]["de"]
    assert de["rejected"] == {"non_finite": 1, "clipped": 1, "wrong_rate": 1, "oversized": 1,
                              "truncated": 1}
    assert de["sensor_health"] == "truncated"  # the latest message decides
    assert de["windows"] == 1  # the good frame (one 0.2-s window) was processed
    # a machine that is not configured gets no per-channel entry: counted for the agent
    assert agent.rejections.counts("pump-9", "de") == {}
    assert agent.rejections.refused_summary() == {"unknown_machine": {
        "count": 1, "examples": ["plant/site1/line-a/pump-9/de/raw"]}}


def test_a_machine_is_addressed_only_by_its_configured_area(tmp_path):
    agent = make_agent(tmp_path)
    good = encode_raw(frame(1.7e9))
    for topic in ("plant/site1/other-area/pump-7/de/raw", "plant/site1/agents/pump-7/de/raw",
                  "plant/site2/line-a/pump-7/de/raw", "plant/site1/line-a/pump-7/nde/raw"):
        ingest_message(agent, topic, good)
    assert not agent._inbox  # none of them is pump-7's data
    refused = agent.rejections.refused_summary()
    assert {r: v["count"] for r, v in refused.items()} == {"wrong_area": 3, "unknown_channel": 1}
    assert "plant/site1/other-area/pump-7/de/raw" in refused["wrong_area"]["examples"]
    assert agent.rejections.channels("pump-7") == {}  # nothing counted as the machine's
    ingest_message(agent, TOPIC, good)
    assert len(agent._inbox) == 1


# -- checkpoints ------------------------------------------------------------------------------------

def two_machine_agent(tmp_path) -> Agent:
    """pump-7 as configured, fan-2 accepted unconfigured with the same short baseline."""
    from edge_agent.models import DetectorConfig

    return make_agent(tmp_path, accept_unknown_machines=True,
                      learning=DetectorConfig(baseline_windows=20))


def learn_two_machines(agent):
    frames = [replace(frame(1.7e9 + k * 0.2, n=9600, offset=k * 9600 % 230000), machine=m)
              for k in range(110) for m in ("pump-7", "fan-2")]  # fan-2: 1-s windows
    agent.process(frames, live=False)
    return agent


def fitted(agent, machine):
    det = agent.pipeline.detectors.get((machine, "de"))
    return det is not None and any(m.fitted for m in det.models.values())


def test_damaged_checkpoint_is_moved_aside_and_only_that_machine_relearns(tmp_path, caplog):
    agent = learn_two_machines(two_machine_agent(tmp_path))
    assert fitted(agent, "pump-7") and fitted(agent, "fan-2")
    agent.checkpoint()
    victim = next((tmp_path / "state" / "checkpoints").glob("pump-7.*.ckpt"))
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    restored = two_machine_agent(tmp_path)
    with caplog.at_level("ERROR"):
        restored.restore()
    assert fitted(restored, "fan-2") and not fitted(restored, "pump-7")
    assert [p.name.split("-", 1)[1] for p in (tmp_path / "state" / "quarantine").iterdir()] == [
        victim.name]
    assert any("authentication failed" in r.reason for r in caplog.records
               if hasattr(r, "reason"))
    # it learns again from the next windows, the other goes on monitoring
    learn_two_machines(restored)
    assert fitted(restored, "pump-7")


def test_incompatible_or_unreadable_manifest_means_a_fresh_start(tmp_path):
    agent = learn_two_machines(two_machine_agent(tmp_path))
    agent.checkpoint()
    manifest = tmp_path / "state" / "checkpoints" / "MANIFEST.json"
    doc = json.loads(manifest.read_text())
    doc["format"] = 99  # written by a future version
    manifest.write_text(json.dumps(doc))
    fresh = two_machine_agent(tmp_path)
    fresh.restore()
    assert not fitted(fresh, "pump-7") and not fitted(fresh, "fan-2")
    assert any("MANIFEST" in p.name for p in (tmp_path / "state" / "quarantine").iterdir())
    manifest.write_text("{not json")
    fresh.restore()  # no crash either
    assert fresh.pipeline.detectors == {}


class _Planted:
    """A pickle that, when loaded, writes a marker file: what an attacker would plant."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_refused_before_it_runs_even_with_its_hash_updated(tmp_path):
    import hashlib
    import pickle

    from edge_agent.runtime.state import FORMAT, MAGIC

    agent = learn_two_machines(two_machine_agent(tmp_path))
    agent.checkpoint()
    checkpoints = tmp_path / "state" / "checkpoints"
    manifest = json.loads((checkpoints / "MANIFEST.json").read_text())
    marker = tmp_path / "code-ran"
    victim = manifest["machines"]["pump-7"]["file"]
    data = MAGIC + f" {FORMAT} 0.1.0\n".encode() + pickle.dumps(_Planted(marker))
    (checkpoints / victim).write_bytes(data)
    # what a writer without the key can do: update the hash, and the old-style checksum
    manifest["machines"]["pump-7"].update(sha256=hashlib.sha256(data).hexdigest(),
                                          hmac=hashlib.sha256(data).hexdigest())
    (checkpoints / "MANIFEST.json").write_text(json.dumps(manifest))
    restored = two_machine_agent(tmp_path)
    restored.restore()  # no crash, no code run: the manifest fails authentication
    assert not marker.exists()
    assert not fitted(restored, "pump-7") and not fitted(restored, "fan-2")
    learn_two_machines(restored)  # the agent goes on and learns again
    assert fitted(restored, "pump-7") and restored.checkpoint() is not None


def test_manifest_paths_stay_inside_checkpoints_and_files_are_private(tmp_path):
    import os
    import pickle

    from edge_agent.runtime.state import StateStore, load_key

    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        key = load_key(tmp_path / "key", tmp_path / "state")
        store = StateStore(tmp_path / "state", key)
        store.save({"pump-7": {"x": 1}}, {})
        outside = tmp_path / "outside.ckpt"
        outside.write_bytes(pickle.dumps(_Planted(tmp_path / "code-ran")))
        manifest_path = store.manifest_path
        manifest = json.loads(manifest_path.read_text())
        for bad in (str(outside), "../../outside.ckpt", "sub/x.1.ckpt"):
            manifest["machines"] = {"pump-7": {"file": bad, "hmac": "0" * 64}}
            manifest["hmac"] = store._manifest_mac(manifest)  # as if the key leaked
            manifest_path.write_text(json.dumps(manifest))
            machines, _ = StateStore(tmp_path / "state", key).load()
            assert machines == {} and outside.exists() and not (tmp_path / "code-ran").exists()
        modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777)
                 for p in [tmp_path / "key", *(tmp_path / "state").rglob("*")]}
        assert modes["key"] == "0o600" and modes["state/checkpoints"] == "0o700"
        assert all(m == "0o600" for p, m in modes.items() if p.endswith((".ckpt", ".json")))
        assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
        with pytest.raises(Exception, match="inside the state directory"):
            load_key(tmp_path / "state" / "key", tmp_path / "state")
    finally:
        os.umask(old)


# -- falling behind ---------------------------------------------------------------------------------

def test_model_updates_wait_while_behind_real_time_and_scoring_never_does(tmp_path):
    from edge_agent.runtime.config import ResourcesConfig

    agent = make_agent(tmp_path, resources=ResourcesConfig(learn_budget=1.0))  # lag rule only
    now = time.time()
    wall = [now]
    agent.clock = lambda: wall[0]
    agent.process([frame(now - 5 + k * 0.2, offset=k * 9600) for k in range(20)], live=True)
    model = agent.pipeline.detectors[("pump-7", "de")].models["1796rpm"]
    assert model.fitted  # learned in real time
    # The agent falls an hour behind (a backlog after an outage): every window is still
    # scored, but model updates wait.
    wall[0] = now + 3600
    agent.process([frame(now - 1 + k * 0.2, offset=k * 9600 % 230000) for k in range(40)],
                  live=True)
    assert agent.lag_s > 3000 and agent.stats["deferred_updates"] >= 30
    assert agent.channel_view[("pump-7", "de")]["score"] is not None
    ae = model.learners[4]
    assert 30 <= len(ae._pending) <= 4 * ae.batch_size  # healthy windows wait, bounded
    waiting, updates = len(ae._pending), ae.n_updates_
    agent.process([frame(wall[0] - 0.2, offset=96000)], live=True)  # caught up
    assert agent.lag_s < 5 and ae.n_updates_ > updates and len(ae._pending) < waiting
    # Recordings are never deferred: a replay must give the same result every time.
    replay = make_agent(tmp_path / "replay")
    replay.process([frame(now - 3600 + k * 0.2, offset=k * 9600) for k in range(24)], live=False)
    assert replay.stats["deferred_updates"] == 0
    assert replay.pipeline.detectors[("pump-7", "de")].models["1796rpm"].fitted


def test_a_complete_baseline_waits_for_its_fit_while_behind(tmp_path):
    from edge_agent.runtime.config import ResourcesConfig

    agent = make_agent(tmp_path, resources=ResourcesConfig(learn_budget=1.0))
    hour_ago = time.time() - 3600
    agent.process([frame(hour_ago + k * 0.2, offset=k * 9600 % 230000) for k in range(30)],
                  live=True)
    model = agent.pipeline.detectors[("pump-7", "de")].models["1796rpm"]
    view = agent.channel_view[("pump-7", "de")]
    assert not model.fitted and view["phase"] == "baselining" and view["baseline_progress"] == 1
    assert model.collection.seen == 30  # still collecting (bounded: see models.collection)
    agent.process([frame(time.time() - 0.2, offset=0)], live=True)
    assert model.fitted


# -- no egress --------------------------------------------------------------------------------------

AUDIT = """
import json, os, sys
out = open(sys.argv[1], "w")
WATCH = ("socket.getaddrinfo", "socket.gethostbyname", "socket.sendto",
         "urllib.Request", "http.client.connect", "subprocess.Popen", "os.system")

def own_listening_ports():
    # ports this process itself listens on: /proc/net/tcp rows whose inode is one of our fds
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in open("/proc/self/net/tcp").readlines()[1:]:
        cols = line.split()
        if cols[3] == "0A" and cols[9] in inodes:
            ports.add(int(cols[1].split(":")[1], 16))
    return ports

def hook(event, args):
    if event == "socket.connect":
        address = args[1]
        own = isinstance(address, tuple) and address[1] in own_listening_ports()
        out.write(json.dumps(["socket.connect", list(address) if isinstance(address, tuple)
                              else repr(address), own]) + "\\n")
        out.flush()
    elif event in WATCH:
        out.write(json.dumps([event, repr(args)[:300], False]) + "\\n")
        out.flush()
sys.addaudithook(hook)
from edge_agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_the_agent_connects_to_the_broker_and_nowhere_else(tmp_path):
    from tests.broker import Broker
    from tests.test_agent import write_config

    with Broker(tmp_path / "mosquitto") as broker:
        config = write_config(tmp_path, broker, speed=0.0)
        audit = tmp_path / "audit.jsonl"
        (tmp_path / "audit.py").write_text(AUDIT)
        result = subprocess.run([sys.executable, str(tmp_path / "audit.py"), str(audit), "run",
                                 "--config", str(config), "--exit-after-replay"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    # paho wakes its network thread through a socket pair: a connection to a loopback
    # listener of the agent's own process. Every other connection must be the broker.
    connects = [(address, own) for event, address, own in events if event == "socket.connect"]
    lookups = [args for event, args, _ in events if event.startswith("socket.get")]
    assert [broker.host, broker.port] in [a for a, _ in connects], "never reached the broker"
    assert all(a == [broker.host, broker.port] or own for a, own in connects), connects
    assert all(broker.host in args for args in lookups), lookups
    assert not [e for e, _, _ in events if e in ("urllib.Request", "http.client.connect",
                                                 "subprocess.Popen", "os.system",
                                                 "socket.sendto")]


def test_a_recording_feeds_only_the_configured_channels(tmp_path):
    # CWRU files hold drive-end and fan-end channels; pump-7 lists "de" and "fe", so
    # restricting it to "de" must leave the fan end out (as MQTT frames of it are refused).
    from edge_agent.runtime.config import MachineConfig
    from edge_agent.runtime.sources import ReplaySource

    agent = make_agent(tmp_path)
    only_de = replace(agent.config.machines[0], channels=agent.config.machines[0].channels[:1])
    assert isinstance(only_de, MachineConfig) and [c.name for c in only_de.channels] == ["de"]
    agent = make_agent(tmp_path, machines=(only_de,))
    source = ReplaySource([SAMPLE_DATA / "cwru" / "normal_0_97.mat"], machine="pump-7")
    agent.run(threading.Event(), source, exit_when_done=True)
    assert {c for m, c in agent.channel_view} == {"de"}
    assert agent.stats["skipped_items"] > 0 and agent.stats["windows"] > 0


def test_only_machines_it_handles_take_a_rebaseline_command(tmp_path):
    # With a [replay] table the agent learns the machines its recordings name; a command
    # for any other machine must not be taken as one of them.
    from edge_agent.runtime.config import ReplayConfig
    from edge_agent.runtime.sources import ReplaySource

    recording = SAMPLE_DATA / "cwru" / "normal_0_97.mat"
    agent = make_agent(tmp_path, machines=(), replay=ReplayConfig(paths=(str(recording),)))
    assert not agent.known("cwru") and not agent.known("pump-9")
    agent.run(threading.Event(), ReplaySource([recording]), exit_when_done=True)
    assert agent.known("cwru") and not agent.known("pump-9")
    assert make_agent(tmp_path / "b").known("pump-7")  # configured


def test_junk_on_new_channel_names_takes_no_slot_from_a_real_sensor(tmp_path):
    """A machine without a channel list takes its first channels as they come; messages
    refused on new names are counted for the agent and take none of those places."""
    from edge_agent.runtime.config import ResourcesConfig

    config = parse_config(CONFIG.format(state=tmp_path / "state").replace(
        'channels = [{ name = "de", fs_hz = 48000.0, clip_g = 8.0 }, "fe"]\n', ""))
    agent = Agent(replace(config, resources=ResourcesConfig(max_channels_per_machine=4)))
    assert config.machine("pump-7").channels == ()
    for k in range(64):
        ingest_message(agent, f"plant/site1/line-a/pump-7/junk{k}/raw", b"\x00\x01")
    ingest_message(agent, TOPIC, encode_raw(frame(1.7e9)))
    assert len(agent._inbox) == 1  # the real sensor's frame got through
    refused = agent.rejections.refused_summary()
    assert refused["bad_magic"]["count"] == 64 and len(refused["bad_magic"]["examples"]) == 5
    assert agent.rejections.counts("pump-7", "de") == {} and \
        agent.rejections.health("pump-7", "de") == "ok"


def test_a_machine_whose_windows_fail_does_not_starve_the_others(tmp_path, monkeypatch):
    agent = two_machine_agent(tmp_path)
    real = agent.pipeline.process

    def failing(record, index, **kw):  # a bug that hits one machine's every window
        if record.machine == "fan-2":
            raise RuntimeError("boom")
        return real(record, index, **kw)

    monkeypatch.setattr(agent.pipeline, "process", failing)
    learn_two_machines(agent)
    assert fitted(agent, "pump-7") and not fitted(agent, "fan-2")
    clean = learn_two_machines(two_machine_agent(tmp_path / "clean"))
    # each of fan-2's windows is counted as an error, pump-7's are all processed
    assert agent.stats["processing_errors"] == clean.stats["windows"] - agent.stats["windows"] > 0
