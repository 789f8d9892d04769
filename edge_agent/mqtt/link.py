"""The agent's side of MQTT: what it subscribes to, how it queues alerts, and the status it
keeps retained."""

from __future__ import annotations

import dataclasses
import functools
import logging

from edge_agent.mqtt.ingest import decode_message
from edge_agent.mqtt.outbox import Outbox
from edge_agent.mqtt.publisher import Publisher
from edge_agent.mqtt.topics import TopicError, Topics
from edge_agent.runtime.agent import agent_version
from edge_agent.runtime.config import TopicsConfig
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


def _channel_allowed(agent, machine: str, channel: str) -> bool:
    if not agent.config.owns(machine):
        return False
    m = agent.config.machine(machine)
    if m is None:
        return agent.config.accept_unknown_machines
    return not m.channels or any(c.name == channel for c in m.channels)


@functools.lru_cache(maxsize=8)
def topics_of(config: TopicsConfig):
    """The topic tree of a ``[topics]`` table."""
    return Topics(config.prefix, config.site, config.area)


def ingest_message(agent, topic: str, payload: bytes) -> None:
    """A message on a raw-frame or feature topic: decode, check, count, queue.

    Runs on paho's network thread: it never raises and never blocks. A refusal
    is counted per machine, channel and reason (shown in the machine status).
    """
    topics = topics_of(agent.config.topics)
    try:
        ref = topics.parse(topic)
    except TopicError as exc:
        agent.rejections.rejected_topic(str(exc))
        return
    if not agent.config.owns(ref.machine):
        return  # another worker's machine: it counts it
    if ref.kind in ("raw", "features") and not _channel_allowed(agent, ref.machine, ref.channel):
        agent.rejections.rejected(ref.machine, ref.channel, "bad_topic",
                                  "machine or channel not in the configuration")
        return
    limits = _limits_for(agent, ref.machine, ref.channel) if ref.channel else agent.config.limits
    item = decode_message(topics, topic, payload, limits=limits, counter=agent.rejections)
    if item is not None:
        agent.submit(item)


class AgentLink:
    """An agent's connection to the broker: its outbox, publisher and subscriptions.

    The agent calls :meth:`publish_alert`, :meth:`publish_status` and :meth:`close`
    (see :attr:`edge_agent.runtime.agent.Agent.link`); it knows nothing else of MQTT.
    """

    def __init__(self, agent):
        config = agent.config
        self.agent = agent
        self.topics = topics_of(config.topics)
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

    def start(self) -> None:
        self.publisher.start()

    def _on_rebaseline(self, topic: str, payload: bytes) -> None:
        try:
            machine = self.topics.parse(topic).machine
        except TopicError as exc:
            log.warning("re-baseline command on a bad topic", extra={"event": "bad_command",
                                                                     "detail": str(exc)})
            return
        if not self.agent.known(machine):
            log.warning("re-baseline for an unknown machine ignored",
                        extra={"event": "bad_command", "machine": machine})
            return
        self.agent.submit(("rebaseline", machine))

    def publish_alert(self, alert: dict) -> None:
        """Commit ``alert`` to the outbox (durable on return); it is sent from there."""
        self.publisher.publish_alert(alert)

    def publish_status(self) -> None:
        """Every machine's retained status and the agent's."""
        agent = self.agent
        known = {m for m, _ in agent.channel_view} | {m.id for m in agent.config.machines}
        for machine in sorted(known):
            self.publisher.publish_status(self.topics.machine_status(machine),
                                          machine_status(agent, machine, self.outbox.depth))
        self.publisher.publish_agent_status(lag_s=agent.lag_s, processing=agent.stats)

    def close(self, drain_s: float = 5.0) -> None:
        self.publisher.close(drain_s=drain_s)
        self.outbox.close()


def connect_agent(agent) -> AgentLink:
    """Link ``agent`` to its broker (connecting in the background); returns the link."""
    link = AgentLink(agent)
    agent.link = link
    link.start()
    return link


def machine_status(agent, machine: str, outbox_depth: int = 0) -> dict:
    """The retained status document of one machine."""
    channels = {}
    health = agent.rejections.channels(machine)
    baselines = agent.pipeline.baseline_coverage(machine)
    names = sorted({c for m, c in agent.channel_view if m == machine} | set(health))
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
            baseline=baselines.get(channel, {}).get(view.get("regime", "any")))
    return machine_status_doc(agent.config.id, machine, channels,
                              outbox_depth=outbox_depth,
                              model_version=agent_version(agent, machine),
                              last_alert=agent.last_alert.get(machine), ts_s=agent.clock())
