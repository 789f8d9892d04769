"""The agent's TOML configuration: parsed, validated, with messages that name the key and the fix.

Every table maps onto a dataclass that the component it configures already
defines (learning: :class:`~edge_agent.models.DetectorConfig`, alerts:
:class:`~edge_agent.runtime.alerts.AlertPolicy`, limits: :class:`~edge_agent.mqtt.ingest.Limits`,
MQTT: :class:`MqttSettings`), so the keys and their
defaults cannot drift from the code. ``docs/configuration.md`` documents every
key and ``deploy/agent.example.toml`` shows them all; a test keeps the three in step.

Secrets may come from the environment instead of the file:
``EDGE_AGENT_MQTT_HOST``, ``EDGE_AGENT_MQTT_USERNAME``, ``EDGE_AGENT_MQTT_PASSWORD`` and
``EDGE_AGENT_MQTT_PASSWORD_FILE`` override ``[mqtt]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.runtime.alerts import AlertPolicy
from edge_agent.runtime.fleet_config import FleetConfig
from edge_agent.errors import UsageError
from edge_agent.runtime.ranges import check_config
from edge_agent.runtime.toml_build import ConfigError, build, convert
from edge_agent.models.detector import DetectorConfig

NAME = re.compile(r"[a-z0-9_.-]+\Z")
ENV_SECRETS = {"EDGE_AGENT_MQTT_HOST": "host", "EDGE_AGENT_MQTT_USERNAME": "username",
               "EDGE_AGENT_MQTT_PASSWORD": "password", "EDGE_AGENT_MQTT_PASSWORD_FILE": "password_file"}
KEY_ENV = "EDGE_AGENT_CHECKPOINT_KEY_FILE"  # overrides [agent] checkpoint_key_file


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker. ``password`` never appears in ``repr`` or in logs.

    ``port`` defaults to 8883 with TLS, 1883 without. TLS is on when ``tls`` is
    set or a CA or client certificate is given; without ``tls_ca`` the system's
    CAs are trusted. ``tls_insecure`` skips the host-name check (the chain is
    still verified) and is logged as a warning. ``password_file`` is read when
    the client is created (first line; the newline is not part of the password).
    ``inflight`` bounds unacknowledged outbox messages; reconnects back off
    exponentially from ``reconnect_min_s`` to ``reconnect_max_s``. A status
    document is never larger than ``status_max_bytes`` (nor than the broker's
    Maximum Packet Size).
    """

    host: str = "localhost"
    port: int | None = None
    protocol: str = "5"
    client_id: str | None = None
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 10.0
    inflight: int = 16
    max_refusals: int = 5
    status_max_bytes: int = 65536

    def __post_init__(self):
        if self.protocol not in ("5", "3.1.1"):
            raise UsageError(f"MQTT protocol must be '5' or '3.1.1', got {self.protocol!r}")
        if self.password is not None and self.password_file is not None:
            raise UsageError("give the MQTT password or a password file, not both")
        if self.tls_key is not None and self.tls_cert is None:
            raise UsageError("a TLS client key needs its certificate (tls_cert)")
        if not (self.inflight >= 1 and self.max_refusals >= 1 and self.keepalive_s >= 1):
            raise UsageError("inflight, max_refusals and keepalive_s must be at least 1")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise UsageError("need 0 < reconnect_min_s <= reconnect_max_s")
        if self.status_max_bytes < 4096:
            raise UsageError("status_max_bytes must be at least 4096")

    @property
    def use_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert)

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.use_tls else 1883)

    def resolve_password(self) -> str | None:
        if self.password_file is None:
            return self.password
        try:
            with open(self.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read MQTT password file {self.password_file}: "
                             f"{exc.strerror}") from None


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    fs_hz: float | None = None  # the rate the sensor is set to; frames at another are refused
    clip_g: float | None = None  # the sensor's full scale, for clipping detection


@dataclass(frozen=True)
class MachineConfig:
    id: str
    area: str | None = None
    fleet_class: str | None = None  # TOML key "class": machines of one class share a prior
    channels: tuple[ChannelConfig, ...] = ()
    rpm: float | None = None
    bearing: str | None = None
    iso_group: int = 2
    iso_foundation: str = "rigid"
    window_s: float = 1.0
    hop_s: float | None = None
    envelope_band_hz: tuple[float, float] | None = None
    velocity_band_hz: tuple[float, float] = (10.0, 1000.0)
    learning: DetectorConfig = DetectorConfig()
    alerts: AlertPolicy = AlertPolicy()


@dataclass(frozen=True)
class TopicsConfig:
    prefix: str = "plant"
    site: str = "site"
    area: str = "area"


@dataclass(frozen=True)
class OutboxConfig:
    max_messages: int = 100_000
    max_age_days: float = 30.0
    max_dead_letters: int = 10_000


@dataclass(frozen=True)
class ReplayConfig:
    """Recordings fed to the agent as if they arrived live (demo, commissioning, tests)."""

    paths: tuple[str, ...] = ()
    speed: float = 0.0  # 0: as fast as possible; 1: real time; 60: a minute a second
    fs_hz: float | None = None
    machine: str | None = None


@dataclass(frozen=True)
class ResourcesConfig:
    queue_frames: int = 10_000  # frames waiting for processing before the oldest are dropped
    learn_budget: float = 0.5  # share of one core model updates may use (over ~30 s)
    max_lag_s: float = 60.0  # behind real time by more than this: updates are deferred
    status_every_s: float = 30.0
    workers: int = 1  # processes sharing the machines (one per core); see edge_agent.service
    # Names that arrive from the network are bounded: channels a machine without a channel
    # list may learn, and machines learned with accept_unknown_machines.
    max_channels_per_machine: int = 64
    max_unknown_machines: int = 256


@dataclass(frozen=True)
class AgentConfig:
    id: str
    state_dir: Path
    checkpoint_every_s: float = 300.0
    checkpoint_key_file: Path | None = None  # HMAC key of checkpoints; see runtime/state.py
    log_level: str = "info"
    accept_unknown_machines: bool = False
    mqtt: MqttSettings = MqttSettings()
    topics: TopicsConfig = TopicsConfig()
    outbox: OutboxConfig = OutboxConfig()
    limits: typing.Any = None  # ingest.Limits
    learning: DetectorConfig = DetectorConfig()
    alerts: AlertPolicy = AlertPolicy()
    resources: ResourcesConfig = ResourcesConfig()
    fleet: FleetConfig = FleetConfig()
    machines: tuple[MachineConfig, ...] = ()
    replay: ReplayConfig | None = None
    source: Path | None = field(default=None, compare=False)
    shard: tuple[int, int] | None = None  # (index, count) of a worker process

    def owns(self, machine: str) -> bool:
        """Whether this process handles ``machine`` (always, unless it is one of several workers)."""
        return self.shard is None or shard_of(machine, self.shard[1]) == self.shard[0]

    @property
    def mqtt_id(self) -> str:
        """This process's identity on the bus (a worker adds its number to the agent id)."""
        return self.id if self.shard is None else f"{self.id}-w{self.shard[0]}"

    def machine(self, machine_id: str) -> MachineConfig | None:
        return next((m for m in self.machines if m.id == machine_id), None)


def shard_of(machine: str, count: int) -> int:
    """The worker that owns ``machine``: stable across restarts and Python versions.

    >>> shard_of("pump-7", 1), shard_of("pump-7", 4) == shard_of("pump-7", 4)
    (0, True)
    """
    import zlib

    return zlib.crc32(machine.encode()) % count


def unreadable_files(config: "AgentConfig") -> list[str]:
    """The ``[mqtt]`` files (password, CA, client certificate and key) this process cannot
    read, each named by its key: checked at start, so that a wrong path is a configuration
    error rather than a failed connection."""
    problems = []
    for key in ("password_file", "tls_ca", "tls_cert", "tls_key"):
        path = getattr(config.mqtt, key)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.append(f"[mqtt] {key} = {str(path)!r}: cannot read it ({exc.strerror}); "
                            f"fix the path or the file's permissions")
    return problems


def for_worker(config: "AgentConfig", index: int, count: int) -> "AgentConfig":
    """The configuration of worker ``index`` of ``count``: its machines, its own state."""
    return dataclasses.replace(
        config, shard=(index, count), state_dir=config.state_dir / f"worker-{index}",
        machines=tuple(m for m in config.machines if shard_of(m.id, count) == index))


# -- the agent configuration -----------------------------------------------------------------------
def _machine(table, index, defaults_learning, defaults_alerts) -> MachineConfig:
    key = f"machine[{index}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a [[machine]] table")
    table = dict(table)
    if "class" in table:  # a Python keyword: the field is fleet_class
        table["fleet_class"] = table.pop("class")
    if "fleet_class" in table and not isinstance(table["fleet_class"], str):
        raise ConfigError(f"{key}.class: expected a class name in quotes")
    channels = table.pop("channels", [])
    if not isinstance(channels, list):
        raise ConfigError(f"{key}.channels: expected a list of names or tables")
    learning = build(DetectorConfig, table.pop("learning", {}), f"{key}.learning", defaults_learning)
    alerts = build(AlertPolicy, table.pop("alerts", {}), f"{key}.alerts", defaults_alerts)
    machine = build(MachineConfig, table, key, skip=("channels", "learning", "alerts"))
    chans = tuple(build(ChannelConfig, {"name": c} if isinstance(c, str) else c,
                        f"{key}.channels[{i}]") for i, c in enumerate(channels))
    machine = dataclasses.replace(machine, channels=chans, learning=learning, alerts=alerts)
    _check_machine(machine, key)
    return machine


def _check_machine(m: MachineConfig, key: str) -> None:
    from edge_agent.signal.bearing import parse_bearing

    if not NAME.match(m.id):
        raise ConfigError(f"{key}.id: {m.id!r} must be lowercase letters, digits, '_', '.', '-' "
                          "(it becomes an MQTT topic level)")
    if m.fleet_class is not None and not NAME.match(m.fleet_class):
        raise ConfigError(f"{key}.class: {m.fleet_class!r} must match [a-z0-9_.-]+ (it becomes "
                          "an MQTT topic level)")
    for c in m.channels:
        if not NAME.match(c.name):
            raise ConfigError(f"{key}.channels: channel name {c.name!r} must match [a-z0-9_.-]+")
    if m.bearing is not None:
        try:
            parse_bearing(m.bearing)
        except ValueError as exc:
            raise ConfigError(f"{key}.bearing: {exc}") from None
    if m.iso_group not in (1, 2) or m.iso_foundation not in ("rigid", "flexible"):
        raise ConfigError(f"{key}: iso_group must be 1 or 2 and iso_foundation 'rigid' or "
                          f"'flexible' (ISO 20816-3); got {m.iso_group}, {m.iso_foundation!r}")
    if m.window_s <= 0 or (m.hop_s is not None and m.hop_s <= 0):
        raise ConfigError(f"{key}: window_s and hop_s must be positive")
    for band in (m.envelope_band_hz, m.velocity_band_hz):
        if band is not None and not 0 <= band[0] < band[1]:
            raise ConfigError(f"{key}: a band must be [low, high] with 0 <= low < high Hz, "
                              f"got {list(band)}")


def parse_config(text: str, source: Path | None = None, environ=os.environ) -> AgentConfig:
    """An :class:`AgentConfig` from TOML text (see the module docstring)."""
    from edge_agent.runtime.validation import Limits

    where = str(source) if source else "config"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    try:
        known = {"agent", "mqtt", "topics", "outbox", "limits", "learning", "alerts",
                 "resources", "machine", "replay", "fleet"}
        for name in doc:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise ConfigError(f"[{name}]: unknown table" +
                                  (f"; did you mean [{close[0]}]?" if close else
                                   f"; known: {', '.join(sorted(known))}"))
        agent = dict(doc.get("agent", {}))
        if environ.get(KEY_ENV):
            agent["checkpoint_key_file"] = environ[KEY_ENV]
        if "id" not in agent or "state_dir" not in agent:
            raise ConfigError("[agent]: 'id' and 'state_dir' are required (who the agent is on "
                              "the bus, and the writable directory for its state and outbox)")
        mqtt = dict(doc.get("mqtt", {}))
        for env, key in ENV_SECRETS.items():
            if environ.get(env):
                mqtt[key] = environ[env]
                if key == "password":
                    mqtt.pop("password_file", None)
                elif key == "password_file":
                    mqtt.pop("password", None)
        learning = build(DetectorConfig, doc.get("learning", {}), "learning")
        alerts = build(AlertPolicy, doc.get("alerts", {}), "alerts")
        machines = tuple(_machine(t, i, learning, alerts)
                         for i, t in enumerate(doc.get("machine", [])))
        ids = [m.id for m in machines]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"machine: ids must be unique, got {ids}")
        config = AgentConfig(
            id=convert(agent.pop("id"), str, "agent.id"),
            state_dir=convert(agent.pop("state_dir"), Path, "agent.state_dir"),
            mqtt=build(MqttSettings, mqtt, "mqtt"),
            topics=build(TopicsConfig, doc.get("topics", {}), "topics"),
            outbox=build(OutboxConfig, doc.get("outbox", {}), "outbox"),
            limits=build(Limits, doc.get("limits", {}), "limits"),
            learning=learning, alerts=alerts,
            resources=build(ResourcesConfig, doc.get("resources", {}), "resources"),
            fleet=build(FleetConfig, doc.get("fleet", {}), "fleet"),
            machines=machines,
            replay=build(ReplayConfig, doc["replay"], "replay") if "replay" in doc else None,
            source=source)
        config = build(AgentConfig, agent, "agent", config, skip=("shard",))
        if not NAME.match(config.id):
            raise ConfigError(f"agent.id: {config.id!r} must match [a-z0-9_.-]+ (it becomes an "
                              "MQTT topic level)")
        if config.resources.workers < 1:
            raise ConfigError("resources.workers: at least 1 (one process per core to use)")
        if min(config.resources.max_channels_per_machine, config.resources.max_unknown_machines) < 1:
            raise ConfigError("resources.max_channels_per_machine and max_unknown_machines: "
                              "at least 1")
        if config.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("agent.log_level: use debug, info, warning or error")
        for name in ("prefix", "site", "area"):
            value = getattr(config.topics, name)
            if not (NAME.match(value) or (name == "prefix" and re.fullmatch(r"[a-z0-9_.-]+(/[a-z0-9_.-]+)*", value))):
                raise ConfigError(f"topics.{name}: {value!r} must match [a-z0-9_.-]+")
        if not machines and not config.accept_unknown_machines and config.replay is None:
            raise ConfigError("no [[machine]] configured: add one per machine, or set "
                              "agent.accept_unknown_machines = true to learn every machine "
                              "that sends frames")
        check_config(config)
        return config
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path, environ=os.environ) -> AgentConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    config = parse_config(text, path, environ)
    # Relative paths are relative to the file, not to where one stands.
    if not config.state_dir.is_absolute():
        config = dataclasses.replace(config, state_dir=(path.parent / config.state_dir).resolve())
    key = config.checkpoint_key_file
    if key is not None and not key.is_absolute():
        config = dataclasses.replace(config, checkpoint_key_file=(path.parent / key).resolve())
    trust = config.fleet.trust_key
    if trust is not None and not trust.is_absolute():
        config = dataclasses.replace(config, fleet=dataclasses.replace(
            config.fleet, trust_key=(path.parent / trust).resolve()))
    if config.replay is not None:
        paths = tuple(str((path.parent / p).resolve()) if not Path(p).is_absolute() else p
                      for p in config.replay.paths)
        config = dataclasses.replace(config, replay=dataclasses.replace(config.replay, paths=paths))
        _check_recordings(path, config.replay)
    return config


def _check_recordings(source: Path, replay: ReplayConfig) -> None:
    """Every ``[replay]`` recording exists and is of a known format: checked at load, not
    after connecting to the broker."""
    from edge_agent.readers import RecordingError, recording_kind

    if not replay.paths:
        raise ConfigError(f"{source}: replay.paths: no recording given")
    for i, p in enumerate(replay.paths):
        try:
            recording_kind(p)
        except RecordingError as exc:
            raise ConfigError(f"{source}: replay.paths[{i}] = {p!r}: {exc.problem}") from None
