"""The TOML configuration: the example parses, the reference matches the code, errors are clear."""

from __future__ import annotations

import dataclasses
import re

import pytest

from edge_agent.runtime.alerts import AlertPolicy
from edge_agent.runtime.config import (AgentConfig, ConfigError, MachineConfig, MqttSettings, OutboxConfig,
                               ReplayConfig, ResourcesConfig, TopicsConfig, load_config,
                               parse_config)
from edge_agent.runtime.validation import Limits
from edge_agent.runtime.fleet_config import FleetConfig
from edge_agent.models import DetectorConfig
from tests.conftest import REPO
from tests.test_cli import edge_agent

EXAMPLE = REPO / "deploy" / "agent.example.toml"
REFERENCE = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
SECTIONS = {"agent": AgentConfig, "mqtt": MqttSettings, "topics": TopicsConfig,
            "outbox": OutboxConfig, "limits": Limits, "learning": DetectorConfig,
            "alerts": AlertPolicy, "resources": ResourcesConfig, "[machine]": MachineConfig,
            "replay": ReplayConfig, "fleet": FleetConfig}
NOT_KEYS = {"agent": {"mqtt", "topics", "outbox", "limits", "learning", "alerts", "resources",
                      "machines", "replay", "source", "shard", "fleet"}}

#: Fields whose TOML key is another word (``class`` is a Python keyword).
TOML_NAMES = {"fleet_class": "class"}

MINIMAL = """
[agent]
id = "gw-1"
state_dir = "/tmp/gw"
[[machine]]
id = "pump-1"
"""


def documented(section: str) -> dict[str, str]:
    """``{key: default}`` from the reference's table for ``section``."""
    body = REFERENCE.split(f"## [{section}]\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for cells in re.findall(r"^\| (`[^|]+`) \| ([^|]*) \|", body, re.M):
        for key in re.findall(r"`([a-z_0-9]+)`", cells[0]):
            rows[key] = cells[1].strip()
    return rows


@pytest.mark.parametrize("section", SECTIONS)
def test_reference_documents_every_key_with_the_codes_default(section):
    cls = SECTIONS[section]
    fields = {TOML_NAMES.get(f.name, f.name): f for f in dataclasses.fields(cls)} \
        if dataclasses.is_dataclass(cls) else {}
    keys = set(fields) - NOT_KEYS.get(section, set())
    docs = documented(section)
    assert keys == set(docs), f"[{section}] code {sorted(keys)} docs {sorted(docs)}"
    for name in keys:
        default, shown = fields[name].default, docs[name]
        if shown.startswith("`") and default is not dataclasses.MISSING:
            literal = shown.strip("`").strip('"')
            expected = ("true" if default else "false") if isinstance(default, bool) else (
                str(list(default)) if isinstance(default, tuple) else str(default))
            assert literal == expected, f"[{section}].{name}: docs say {literal}, code {expected}"


def documented_ranges(section: str) -> dict[str, str]:
    body = REFERENCE.split(f"## [{section}]\n", 1)[1].split("\n## ", 1)[0]
    return {key: cells[1].strip() for cells in re.findall(r"^\| (`[^|]+`) \| [^|]* \| ([^|]*) \|",
                                                          body, re.M)
            for key in re.findall(r"`([a-z_0-9]+)`", cells[0])}


@pytest.mark.parametrize("section", SECTIONS)
def test_every_numeric_key_has_a_range_and_the_reference_shows_it(section):
    from edge_agent.runtime.ranges import RANGES, numeric_fields

    cls = SECTIONS[section]
    ranges = RANGES.get(cls.__name__, {})
    assert set(numeric_fields(cls)) - NOT_KEYS.get(section, set()) == set(ranges)
    shown = documented_ranges(section)
    for key, rng in ranges.items():
        assert shown[key] == rng.text(), f"[{section}].{key}: docs {shown[key]!r}, code {rng.text()!r}"
    for key in set(shown) - set(ranges):
        assert shown[key] == "—" or key == "channels", (section, key)


@pytest.mark.parametrize("table, line, fragment", [
    ("mqtt", "port = 99999", "mqtt.port = 99999 is out of range: use a value 1 to 65535"),
    ("mqtt", "reconnect_min_s = 90.0", "reconnect_min_s <= reconnect_max_s"),
    ("learning", "baseline_windows = -10", "learning.baseline_windows = -10 is out of range: use a "
                                           "value 10 to 1000000"),
    ("learning", "risk = 0.5", "learning.risk = 0.5 is out of range: use a value > 0 and < 0.2"),
    ("alerts", "persistence_k = 6", "persistence_k <= persistence_n"),
    ("resources", "learn_budget = 0", "resources.learn_budget = 0.0 is out of range"),
    ("fleet", "max_update_bytes = 100000", "fleet.max_update_bytes = 100000 is out of range: use "
                                           "a value 1024 to 65536"),
    ("fleet", "delta = 1.0", "fleet.delta = 1.0 is out of range: use a value > 0 and < 1"),
    ("limits", "expected_fs_hz = [25600, -1]", "limits.expected_fs_hz = [25600.0, -1.0] is out of "
                                               "range: use values > 0"),
])
def test_a_value_out_of_range_is_refused_naming_key_and_range(table, line, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(f"[{table}]\n{line}\n" + MINIMAL)
    assert fragment in str(info.value)


def test_machine_and_channel_values_out_of_range(tmp_path):
    bad_rate = MINIMAL + 'channels = [{name = "de", fs_hz = -5}]\n'
    with pytest.raises(ConfigError, match=r"machine\[0\]\.channels\[0\]\.fs_hz = -5.0 is out of range"):
        parse_config(bad_rate)
    with pytest.raises(ConfigError, match=r"machine\[0\]\.learning\.baseline_windows = 5 is out of"):
        parse_config(MINIMAL + "[machine.learning]\nbaseline_windows = 5\n")


def test_replay_paths_are_checked_at_load(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL + '[replay]\npaths = ["missing.mat"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"replay.paths[0] = '{tmp_path / 'missing.mat'}': no such file or directory" in str(info.value)
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 64)
    path.write_text(MINIMAL + '[replay]\npaths = ["odd.bin"]\n')
    with pytest.raises(ConfigError, match=r"replay.paths\[0\] = .*odd.bin': unknown format"):
        load_config(path)
    for command in (["config", "check", str(path)], ["run", "--config", str(path)]):
        result = edge_agent(*command, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "replay.paths[0]" in result.stderr and "odd.bin" in result.stderr


def test_example_shows_every_key_and_parses(tmp_path):
    config = load_config(EXAMPLE)
    assert config.id == "gw-hamburg-1" and config.mqtt.protocol == "5"
    pump = config.machine("pump-7")
    assert pump.learning.baseline_windows == 240  # machine override ...
    assert pump.learning.risk == config.learning.risk  # ... on top of [learning]
    assert [c.name for c in pump.channels] == ["de", "nde"] and pump.channels[0].fs_hz == 25600
    assert config.machine("fan-2").channels[0].name == "x"
    text = EXAMPLE.read_text()
    for section, cls in SECTIONS.items():
        for key in documented(section):
            assert re.search(rf"^#? ?{key}\b|[{{,] {key} =", text, re.M) or key in (
                "tls_cert", "tls_key", "learning", "alerts", "password"), f"{section}.{key}"


def test_minimal_config_and_relative_state_dir(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL.replace('"/tmp/gw"', '"state"'))
    config = load_config(path)
    assert config.state_dir == tmp_path / "state"
    assert config.learning == DetectorConfig() and config.machines[0].alerts == AlertPolicy()


def test_an_unreadable_mqtt_file_stops_run_with_the_key_and_check_warns(tmp_path):
    ca = tmp_path / "missing-ca.crt"
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL.replace('"/tmp/gw"', '"state"').replace(
        "[[machine]]", f'[mqtt]\nport = 1\ntls_ca = "{ca}"\n[[machine]]'))
    run = edge_agent("run", "--config", path, check=False)
    assert run.returncode == 2 and f"[mqtt] tls_ca = '{ca}': cannot read it" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    check = edge_agent("config", "check", path)
    assert "warning: not readable here: [mqtt] tls_ca" in check.stdout
    ca.write_text("")  # readable (if not a valid CA): no warning
    assert "warning" not in edge_agent("config", "check", path).stdout


@pytest.mark.parametrize("text, message", [
    (MINIMAL + "baseline_windows = 10\n", "machine[0].baseline_windows: unknown key"),
    (MINIMAL.replace("[[machine]]", "[learning]\nbaseline_window = 5\n[[machine]]"),
     "did you mean 'baseline_windows'"),
    (MINIMAL.replace("[[machine]]", "[learning]\nrisk = 'low'\n[[machine]]"),
     "learning.risk: expected a number"),
    (MINIMAL + 'bearing = "6205"\n', "machine[0].bearing: bearing '6205'"),
    (MINIMAL + 'id2 = 1\n', "unknown key"),
    (MINIMAL.replace('id = "pump-1"', 'id = "Pump 1"'), "must be lowercase"),
    ("[agent]\nid = 'gw'\n", "'id' and 'state_dir' are required"),
    (MINIMAL + "[mqtt]\nprotocol = '4'\n", "MQTT protocol must be '5' or '3.1.1'"),
    (MINIMAL.replace("[[machine]]", "[mqttt]\n[[machine]]"), "did you mean [mqtt]"),
    ("[agent]\nid = 'gw'\nstate_dir = '/tmp'\n", "no [[machine]] configured"),
    ("[agent\n", "not valid TOML"),
])
def test_errors_name_the_key_and_the_fix(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_secrets_from_the_environment_are_never_shown():
    config = parse_config(MINIMAL + "[mqtt]\nusername = 'x'\npassword_file = '/nope'\n",
                          environ={"EDGE_AGENT_MQTT_USERNAME": "edge",
                                   "EDGE_AGENT_MQTT_PASSWORD": "s3cret-pw",
                                   "EDGE_AGENT_MQTT_HOST": "mosquitto"})
    assert config.mqtt.username == "edge" and config.mqtt.resolve_password() == "s3cret-pw"
    assert config.mqtt.host == "mosquitto"
    assert config.mqtt.password_file is None
    assert "s3cret-pw" not in repr(config)


def test_config_check_command(tmp_path):
    out = edge_agent("config", "check", EXAMPLE).stdout
    assert "OK" in out and "machine pump-7" in out and "broker broker.plant.local:8884" in out
    assert "state in /var/lib/edge-agent: " in out and "free" in out
    assert "checkpoint key /run/secrets/edge-agent-checkpoint-key" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "window_s = -1\n")
    result = edge_agent("config", "check", bad, check=False)
    assert result.returncode == 2 and "bad.toml: machine[0]: window_s" in result.stderr
