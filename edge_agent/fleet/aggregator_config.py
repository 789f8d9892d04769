"""``fleet.toml``: the configuration of ``edge-agent fleet aggregate`` (docs/fleet.md).

Tables ``[aggregator]``, ``[rollout]`` (:class:`~edge_agent.fleet.rollout.RolloutPolicy`),
``[mqtt]`` (:class:`~edge_agent.runtime.config.MqttSettings`, as the agent's) and
``[topics]`` (``prefix``, ``site``). Unknown keys are refused, every numeric key has its
range in :data:`edge_agent.runtime.ranges.RANGES`, and an error names the key (exit 2).
``deploy/fleet/fleet.example.toml`` shows every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fleet.aggregate import METHODS
from edge_agent.fleet.rollout import RolloutPolicy
from edge_agent.runtime.config import ENV_SECRETS, NAME, MqttSettings
from edge_agent.runtime.ranges import check
from edge_agent.runtime.toml_build import ConfigError, build

#: A prior document with autoencoder weights can pass the agents' 64 kB status bound: the
#: aggregator's retained documents may be this large unless [mqtt] status_max_bytes says less.
DOC_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class AggregatorConfig:
    """``[aggregator]`` of ``fleet.toml`` (the reference is docs/fleet.md)."""

    id: str
    state_dir: Path
    key: Path
    share_group: str = "fleet-aggregators"
    peers: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    min_members: int = 3
    max_classes: int = 64
    max_members_per_class: int = 1024
    aggregate_every_s: float = 3600.0
    method: str = "median"
    trim: float = 0.2
    weight_clip: float = 0.0
    commissioning: tuple[Path, ...] = ()


@dataclass(frozen=True)
class FleetTopics:
    prefix: str = "plant"
    site: str = "site"


@dataclass(frozen=True)
class FleetFile:
    aggregator: AggregatorConfig
    rollout: RolloutPolicy
    mqtt: MqttSettings
    topics: FleetTopics
    source: Path | None = None


def parse_fleet_config(text: str, source: Path | None = None, environ=os.environ) -> FleetFile:
    """A :class:`FleetFile` from TOML text; ``EDGE_AGENT_MQTT_*`` override ``[mqtt]`` as for
    the agent (``EDGE_AGENT_MQTT_PASSWORD_FILE`` in compose)."""
    where = str(source) if source else "fleet.toml"
    try:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}") from None
        known = ("aggregator", "rollout", "mqtt", "topics")
        for name in doc:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise ConfigError(f"[{name}]: unknown table" + (
                    f"; did you mean [{close[0]}]?" if close else f"; known: {', '.join(known)}"))
        if not all(k in doc.get("aggregator", {}) for k in ("id", "state_dir", "key")):
            raise ConfigError("[aggregator]: 'id', 'state_dir' and 'key' are required (who it is "
                              "on the bus, where it keeps members and versions, the fleet's "
                              "private key from `edge-agent fleet keygen`)")
        mqtt = dict(doc.get("mqtt", {}))
        mqtt.setdefault("status_max_bytes", DOC_MAX_BYTES)
        for env, key in ENV_SECRETS.items():
            if environ.get(env):
                mqtt[key] = environ[env]
                other = {"password": "password_file", "password_file": "password"}.get(key)
                mqtt.pop(other, None)
        config = FleetFile(aggregator=build(AggregatorConfig, doc["aggregator"], "aggregator"),
                           rollout=build(RolloutPolicy, doc.get("rollout", {}), "rollout"),
                           mqtt=build(MqttSettings, mqtt, "mqtt"),
                           topics=build(FleetTopics, doc.get("topics", {}), "topics"),
                           source=source)
        a = config.aggregator
        for key, obj in (("aggregator", a), ("rollout", config.rollout), ("mqtt", config.mqtt)):
            check(obj, key)
        names = [("aggregator.id", a.id), *((f"aggregator.classes[{i}]", c)
                                            for i, c in enumerate(a.classes)),
                 *((f"aggregator.peers[{i}]", c) for i, c in enumerate(a.peers)),
                 ("topics.site", config.topics.site)]
        if a.share_group:
            names.append(("aggregator.share_group", a.share_group))
        for key, value in names:
            if not NAME.match(value):
                raise ConfigError(f"{key}: {value!r} must match [a-z0-9_.-]+ (a topic level)")
        if a.method not in METHODS:
            raise ConfigError(f"aggregator.method: {a.method!r}; use one of {', '.join(METHODS)}")
        for i, member in enumerate(config.rollout.canaries):
            agent, _, machine = member.partition("/")
            if not (NAME.match(agent) and NAME.match(machine)):
                raise ConfigError(f"rollout.canaries[{i}]: {member!r} must be '<agent>/<machine>'")
        return config
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_fleet_config(path) -> FleetFile:
    """``fleet.toml`` at ``path``; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    config = parse_fleet_config(text, path)
    a = config.aggregator
    fixed = {k: (path.parent / getattr(a, k)).resolve() for k in ("state_dir", "key")
             if not getattr(a, k).is_absolute()}
    fixed["commissioning"] = tuple((path.parent / p).resolve() for p in a.commissioning)
    return dataclasses.replace(config, aggregator=dataclasses.replace(a, **fixed))
