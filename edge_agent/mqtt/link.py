"""The agent's side of MQTT: what it subscribes to, how it queues alerts, and the status it
keeps retained.

A machine is addressed only by its full configured path
``<prefix>/<site>/<area>/<machine>/…`` (its ``area``, else ``[topics] area``):
frames, features and commands on another area are refused and counted
(``wrong_area``), as are unknown machines and channels and names beyond the
bounds of :class:`~edge_agent.runtime.sensor_health.RejectionCounter`.
Status documents stay below ``[mqtt] status_max_bytes`` (and the broker's
packet limit): a machine status that would not fits its per-channel part and
says so (``truncated``).
"""

from __future__ import annotations

import dataclasses
import json
import logging

from edge_agent.jsonl import dumps
from edge_agent.mqtt.ingest import decode_features, decode_raw
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.publisher import Publisher
from edge_agent.mqtt.sender import publish_size
from edge_agent.mqtt.topics import TopicError, Topics
from edge_agent.runtime.agent import agent_version
from edge_agent.runtime.feedback import public as feedback_public
from edge_agent.runtime.validation import PayloadError
from edge_agent.schema import channel_status, machine_status_doc

log = logging.getLogger(__name__)


def _limits_for(agent, machine: str, channel: str):
    """Ingestion limits with the channel's configured sample rate and full scale."""
    limits = agent.config.limits
    m = agent.config.machine(machine)
    c = next((c for c in (m.channels if m else ()) if c.name == channel), None)
    if c is None:
        return limits
    return dataclasses.replace(
        limits, expected_fs_hz=(c.fs_hz,) if c.fs_hz else limits.expected_fs_hz,
        clip_g=c.clip_g if c.clip_g is not None else limits.clip_g)


_TOPICS: dict[int, tuple] = {}  # id(config) -> (config, topics): built once per configuration


def topics_of(config) -> Topics:
    """The topic tree of an agent configuration (``[topics]`` and each machine's ``area``)."""
    cached = _TOPICS.get(id(config))
    if cached is None or cached[0] is not config:
        t = config.topics
        if len(_TOPICS) > 16:
            _TOPICS.clear()
        cached = _TOPICS[id(config)] = (config, Topics(t.prefix, t.site, t.area, areas={
            m.id: m.area for m in config.machines if m.area}))
    return cached[1]


def _refusal(agent, topics: Topics, topic: str):
    """``(ref, None)`` for a topic the agent takes, else ``(ref or None, reason)``."""
    try:
        ref = topics.parse(topic)
    except TopicError as exc:
        return None, ("bad_topic", str(exc))
    if ref.machine is None:
        return ref, ("bad_topic", "not a machine's topic")
    if ref.site != topics.site or ref.area != topics.areas.get(ref.machine, topics.area):
        return ref, ("wrong_area", f"{ref.machine} is addressed as "
                                   f"{topics.machine_root(ref.machine)}")
    reason = agent.rejections.admit(ref.machine, ref.channel)
    return ref, None if reason is None else (reason, "")


def ingest_message(agent, topic: str, payload: bytes) -> None:
    """A message on a raw-frame or feature topic: check the topic, decode, check, count, queue.

    Runs on paho's network thread: it never raises and never blocks. A refusal
    is counted per machine, channel and reason (shown in the machine status) when
    the channel has a slot, else for the agent (its status's ``rejected``).
    """
    topics = topics_of(agent.config)
    ref, refusal = _refusal(agent, topics, topic)
    if ref is not None and ref.machine is not None and not agent.config.owns(ref.machine):
        return  # another worker's machine: it counts it
    if refusal is None and ref.kind not in ("raw", "features"):
        refusal = ("bad_topic", "carries no sensor data")
    if refusal is not None:
        agent.rejections.refused(refusal[0], topic, refusal[1])
        return
    limits = _limits_for(agent, ref.machine, ref.channel)
    decode = decode_raw if ref.kind == "raw" else decode_features
    try:
        item = decode(payload, ref.machine, ref.channel, limits=limits, source=f"mqtt:{topic}")
    except PayloadError as exc:
        agent.rejections.rejected(ref.machine, ref.channel, exc.reason, exc.detail)
        return
    if agent.rejections.accepted(ref.machine, ref.channel):
        agent.submit(item)


class AgentLink:
    """An agent's connection to the broker: its outbox, publisher and subscriptions.

    The agent calls :meth:`publish_alert`, :meth:`publish_status` and :meth:`close`
    (see :attr:`edge_agent.runtime.agent.Agent.link`); it knows nothing else of MQTT.
    """

    def __init__(self, agent):
        config = agent.config
        self.agent = agent
        self.topics = topics_of(config)
        self.outbox = Outbox(config.state_dir / "outbox.sqlite",
                             max_messages=config.outbox.max_messages,
                             max_age_s=config.outbox.max_age_days * 86400.0,
                             max_dead_letters=config.outbox.max_dead_letters)
        self.publisher = Publisher(config.mqtt, self.outbox, self.topics, config.mqtt_id,
                                   machines=[m.id for m in config.machines])
        self.publisher.subscribe(self.topics.raw_filter(),
                                 lambda t, p: ingest_message(agent, t, p))
        self.publisher.subscribe(self.topics.features_filter(),
                                 lambda t, p: ingest_message(agent, t, p))
        self.publisher.subscribe(self.topics.rebaseline_filter(), self._on_rebaseline)
        self.publisher.subscribe(self.topics.fleet_confirm_filter(),
                                 lambda t, p: self._on_rebaseline(t, p, "fleet_confirm"))
        self.publisher.subscribe(self.topics.feedback_filter(), self._on_feedback)

    def start(self) -> None:
        self.publisher.start()

    def _machine_command(self, topic: str, kind: str) -> str | None:
        """The machine a command topic addresses; ``None`` when it is another worker's, or
        refused (counted as ``unknown_command`` and the like)."""
        ref, refusal = _refusal(self.agent, self.topics, topic)
        if ref is not None and ref.machine is not None and not self.agent.config.owns(ref.machine):
            return None
        if refusal is None and not self.agent.known(ref.machine):
            refusal = ("unknown_command", f"{kind} for a machine this agent does not handle")
        if refusal is not None:
            self.agent.rejections.refused(refusal[0] if refusal[0] != "unknown_machine"
                                          else "unknown_command", topic, refusal[1])
            return None
        return ref.machine

    def _on_rebaseline(self, topic: str, payload: bytes, kind: str = "rebaseline") -> None:
        """A machine command (``rebaseline``, ``fleet_confirm``): the topic is the command."""
        machine = self._machine_command(topic, kind)
        if machine is not None:
            self.agent.submit((kind, machine))

    def _on_feedback(self, topic: str, payload: bytes) -> None:
        """An operator's label: the topic checked here, the label on the processing thread
        (:func:`edge_agent.runtime.feedback.on_agent`), which counts what it refuses."""
        machine = self._machine_command(topic, "feedback")
        if machine is None:
            return
        try:
            doc = json.loads(payload[:4096]) if len(payload) <= 4096 else None
        except ValueError:
            doc = None
        self.agent.submit(("feedback", machine, doc, topic))

    def alert_states(self) -> dict[str, tuple[int, str]]:
        """Each machine's alert state as its last committed alert left it (for restore)."""
        return self.outbox.alert_states()

    def publish_alert(self, alert: dict, state=None) -> None:
        """Commit ``alert`` (and ``state``) to the outbox (durable on return); it is sent
        from there."""
        self.publisher.publish_alert(alert, state=state)

    def publish_unrecorded(self, alert: dict) -> bool:
        """Last resort at a stop while the outbox cannot take ``alert``: see
        :meth:`~edge_agent.mqtt.publisher.Publisher.publish_unrecorded`."""
        return self.publisher.publish_unrecorded(self.topics.alerts(alert["machine"]),
                                                 dumps(alert).encode())

    def publish_status(self) -> None:
        """Every machine's retained status and the agent's."""
        agent = self.agent
        known = {m for m, _ in agent.channel_view} | {m.id for m in agent.config.machines}
        limit = self.publisher.status_limit
        for machine in sorted(known):
            topic = self.topics.machine_status(machine)
            self.publisher.publish_status(topic, fitted(
                machine_status(agent, machine, self.outbox.depth),
                lambda doc: publish_size(topic, dumps(doc).encode()) <= limit))
        fleet = getattr(agent, "fleet", None)  # edge_agent.fleet.member.FleetMember
        self.publisher.publish_agent_status(lag_s=agent.lag_s, processing=agent.stats,
                                            storage=agent.storage_status(),
                                            rejected=agent.rejections.refused_summary(),
                                            fleet=None if fleet is None else fleet.status())

    def close(self, drain_s: float = 5.0, error: str | None = None) -> None:
        self.publisher.close(drain_s=drain_s, error=error)
        self.outbox.close()


def connect_agent(agent) -> AgentLink:
    """Link ``agent`` to its broker (connecting in the background); returns the link."""
    link = AgentLink(agent)
    agent.link = link
    link.start()
    return link


def fitted(doc: dict, fits) -> dict:
    """``doc`` with as many of its channels as ``fits(doc)`` allows (the most recently
    heard first), and ``truncated: {"channels": omitted}`` when some were left out."""
    if fits(doc):
        return doc
    channels = doc["channels"]
    order = sorted(channels, key=lambda c: channels[c].get("last_window_ts") or "", reverse=True)
    lo, hi = 0, len(order)
    while lo < hi:  # the most channels that fit
        mid = (lo + hi + 1) // 2
        trial = {**doc, "channels": {c: channels[c] for c in sorted(order[:mid])},
                 "truncated": {"channels": len(order) - mid}}
        lo, hi = (mid, hi) if fits(trial) else (lo, mid - 1)
    return {**doc, "channels": {c: channels[c] for c in sorted(order[:lo])},
            "truncated": {"channels": len(order) - lo}}


def machine_status(agent, machine: str, outbox_depth: int = 0) -> dict:
    """The retained status document of one machine."""
    channels = {}
    health = agent.rejections.channels(machine)
    baselines = agent.pipeline.baseline_coverage(machine)
    names = sorted({c for m, c in agent.channel_view if m == machine} | set(health))
    held = agent.pipeline.held_baselines  # walks every model: once per status, not per channel
    for channel in names:
        view = agent.channel_view.get((machine, channel), {})
        sensor = health.get(channel, {"sensor_health": "ok" if view else "no_data",
                                      "rejected": {}})
        channels[channel] = channel_status(
            phase=view.get("phase"), state=view.get("state", "baselining"),
            baseline_progress=view.get("baseline_progress", 0.0), score=view.get("score"),
            threshold=view.get("threshold"), alarm_threshold=view.get("alarm_threshold"),
            regime=view.get("regime"), last_window_s=view.get("start_s"),
            windows=agent.indices.get((machine, channel)),
            sensor_health=sensor["sensor_health"], rejected=sensor["rejected"],
            baseline=baselines.get(channel, {}).get(view.get("regime", "any")),
            baseline_held=bool(view.get("baseline_held")), indicators=view.get("indicators"),
            basis=view.get("basis"),
            fleet_held=held.get((machine, channel)))
    return machine_status_doc(agent.config.id, machine, channels,
                              outbox_depth=outbox_depth,
                              model_version=agent_version(agent, machine),
                              last_alert=agent.last_alert.get(machine), ts_s=agent.clock(),
                              feedback=feedback_public(agent.pipeline.alerters.get(machine)))
