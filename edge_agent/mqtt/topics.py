"""MQTT topic names, Unified-Namespace style, and parsing received topics back.

Every topic lives under a configurable *prefix* (one or more levels, e.g.
``plant`` or ``acme/uns``)::

    <prefix>/<site>/<area>/<machine>/alerts                 alerts, QoS 1, not retained
    <prefix>/<site>/<area>/<machine>/status                 machine status, retained
    <prefix>/agents/<agent-id>/status                       agent status, retained, Last Will
    <prefix>/<site>/<area>/<machine>/<channel>/raw          raw frames (subscribed)
    <prefix>/<site>/<area>/<machine>/<channel>/features     smart-sensor features (subscribed)
    <prefix>/<site>/<area>/<machine>/cmd/rebaseline         re-baseline command (subscribed)
    <prefix>/<site>/<area>/<machine>/cmd/fleet-confirm      confirm a baseline that differs
                                                            from its fleet (subscribed)
    <prefix>/<site>/<area>/<machine>/cmd/feedback           an operator's label on an alert (subscribed)
    <prefix>/<site>/fleet/<class>/updates/<agent>/<machine> a member's fleet update, QoS 1
    <prefix>/<site>/fleet/<class>/prior                     the class's fleet prior, retained
    <prefix>/<site>/fleet/<class>/candidate                 a prior on trial on the canaries, retained
    <prefix>/<site>/fleet/<class>/rollout                   the rollout's state, retained
    <prefix>/<site>/fleet/<class>/cmd/fleet-rollback        rollback command (to the aggregator)

Site, area, machine, channel and agent names match ``[a-z0-9_.-]+`` (the
names the readers produce). ``agents`` is not a valid site and ``cmd`` not a
valid channel, and ``fleet`` is not a valid area (the fleet exchange lives
under it), so every topic parses one way only. Class names follow the same
rule as machine names. See ``docs/mqtt.md`` and ``docs/fleet.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

NAME_RE = re.compile(r"[a-z0-9_.-]+\Z")
#: Prefix levels may use upper case (UNS enterprise names often do), never wildcards.
PREFIX_LEVEL_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
RESERVED_SITES = frozenset({"agents"})
RESERVED_CHANNELS = frozenset({"cmd"})
#: The fleet exchange of a site lives under ``<prefix>/<site>/fleet/``: not an area.
FLEET = "fleet"
RESERVED_AREAS = frozenset({FLEET})
#: Retained documents of a class, by the topic's last level (see :meth:`Topics.fleet_doc`).
FLEET_DOCS = ("prior", "candidate", "rollout")
#: Kinds a received topic can have (see :func:`Topics.parse`).
KINDS = ("alerts", "status", "agent_status", "raw", "features", "rebaseline", "fleet_confirm",
         "feedback", "fleet_update", "fleet_prior", "fleet_candidate", "fleet_rollout",
         "fleet_rollback")
#: Command topics' last level -> their kind.
COMMANDS = {"rebaseline": "rebaseline", "fleet-confirm": "fleet_confirm", "feedback": "feedback"}


class TopicError(ValueError):
    """A name or topic that is not valid in our namespace; the message says which level."""


def _unreserved(name: str, what: str, reserved: frozenset, why: str) -> str:
    """``name`` if it is a valid ``what`` name and not one of ``reserved`` (:class:`TopicError`
    saying ``why`` otherwise)."""
    check_name(name, what)
    if name in reserved:
        raise TopicError(f"{what} {name!r} is reserved ({why})")
    return name


def check_name(value: str, what: str = "name") -> str:
    """``value`` if it is a valid name level, else :class:`TopicError`.

    >>> check_name("pump-7", "machine")
    'pump-7'
    >>> check_name("Pump 7", "machine")
    Traceback (most recent call last):
    ...
    edge_agent.mqtt.topics.TopicError: machine 'Pump 7' must match [a-z0-9_.-]+
    """
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise TopicError(f"{what} {value!r} must match [a-z0-9_.-]+")
    return value


def check_prefix(prefix: str) -> str:
    """A prefix of one or more levels without wildcards, empty levels or ``$``."""
    if not isinstance(prefix, str) or not all(PREFIX_LEVEL_RE.match(p) for p in prefix.split("/")):
        raise TopicError(f"prefix {prefix!r} must be levels of [A-Za-z0-9_.-]+ separated by '/' "
                         f"(no wildcards, no empty level, no leading or trailing '/')")
    return prefix


@dataclass(frozen=True)
class TopicRef:
    """What a received topic is about.

    ``machine`` is ``None`` for agent status (then ``agent`` is set);
    ``channel`` is set for ``raw`` and ``features`` only; ``fleet_class`` for the
    ``fleet_*`` kinds (a fleet update also has ``agent`` and ``machine``, never ``area``).
    """

    kind: str
    site: str | None = None
    area: str | None = None
    machine: str | None = None
    channel: str | None = None
    agent: str | None = None
    fleet_class: str | None = None


@dataclass(frozen=True)
class Topics:
    """Topic names of one agent.

    Parameters
    ----------
    prefix : str
        Root of our namespace, e.g. ``"plant"``.
    site : str
        The site this gateway serves.
    area : str
        Default area of machines not listed in ``areas``.
    areas : mapping, optional
        Machine name to area, for gateways serving several areas.

    Examples
    --------
    >>> t = Topics("plant", "site1", "line-b")
    >>> t.alerts("pump-7")
    'plant/site1/line-b/pump-7/alerts'
    >>> t.parse("plant/site1/line-b/pump-7/de/raw")  # doctest: +NORMALIZE_WHITESPACE
    TopicRef(kind='raw', site='site1', area='line-b', machine='pump-7', channel='de',
             agent=None, fleet_class=None)
    >>> t.fleet_update("pump-6205", "gw-1", "pump-7")
    'plant/site1/fleet/pump-6205/updates/gw-1/pump-7'
    >>> t.parse(t.fleet_prior("pump-6205")).kind
    'fleet_prior'
    """

    prefix: str = "plant"
    site: str = "site"
    area: str = "area"
    areas: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        check_prefix(self.prefix)
        self._site_ok(self.site)
        self._area_ok(self.area)
        for machine, area in self.areas.items():
            check_name(machine, "machine")
            self._area_ok(area)

    @staticmethod
    def _area_ok(area: str) -> str:
        return _unreserved(area, "area", RESERVED_AREAS, "the fleet exchange lives under it")

    @staticmethod
    def _site_ok(site: str) -> str:
        return _unreserved(site, "site", RESERVED_SITES, "agent status lives under it")

    def machine_root(self, machine: str) -> str:
        """``<prefix>/<site>/<area>/<machine>``."""
        check_name(machine, "machine")
        return f"{self.prefix}/{self.site}/{self.areas.get(machine, self.area)}/{machine}"

    def alerts(self, machine: str) -> str:
        return f"{self.machine_root(machine)}/alerts"

    def machine_status(self, machine: str) -> str:
        return f"{self.machine_root(machine)}/status"

    def agent_status(self, agent_id: str) -> str:
        return f"{self.prefix}/agents/{check_name(agent_id, 'agent id')}/status"

    def raw(self, machine: str, channel: str) -> str:
        return f"{self.machine_root(machine)}/{self._channel_ok(channel)}/raw"

    def features(self, machine: str, channel: str) -> str:
        return f"{self.machine_root(machine)}/{self._channel_ok(channel)}/features"

    def rebaseline(self, machine: str) -> str:
        return f"{self.machine_root(machine)}/cmd/rebaseline"

    def fleet_confirm(self, machine: str) -> str:
        return f"{self.machine_root(machine)}/cmd/fleet-confirm"

    # -- the fleet exchange (docs/fleet.md) --------------------------------------------------------
    def fleet_root(self, fleet_class: str) -> str:
        """``<prefix>/<site>/fleet/<class>``."""
        return f"{self.prefix}/{self.site}/{FLEET}/{check_name(fleet_class, 'class')}"

    def fleet_update(self, fleet_class: str, agent_id: str, machine: str) -> str:
        """Where ``agent_id`` publishes ``machine``'s update (QoS 1, not retained)."""
        return (f"{self.fleet_root(fleet_class)}/updates/{check_name(agent_id, 'agent id')}/"
                f"{check_name(machine, 'machine')}")

    def fleet_doc(self, fleet_class: str, name: str) -> str:
        """A retained document of the class: ``prior``, ``candidate`` or ``rollout``."""
        if name not in FLEET_DOCS:
            raise TopicError(f"fleet document {name!r} is not one of {', '.join(FLEET_DOCS)}")
        return f"{self.fleet_root(fleet_class)}/{name}"

    def fleet_prior(self, fleet_class: str) -> str:
        return self.fleet_doc(fleet_class, "prior")

    def fleet_rollback(self, fleet_class: str) -> str:
        return f"{self.fleet_root(fleet_class)}/cmd/fleet-rollback"

    def fleet_updates_filter(self, fleet_class: str = "+") -> str:
        """Every member update of a class (``+``: of every class) on this site."""
        level = "+" if fleet_class == "+" else check_name(fleet_class, "class")
        return f"{self.prefix}/{self.site}/{FLEET}/{level}/updates/+/+"

    def fleet_docs_filter(self, fleet_class: str) -> str:
        """The retained documents of one class (``prior``, ``candidate``, ``rollout``)."""
        return f"{self.fleet_root(fleet_class)}/+"

    def fleet_rollback_filter(self) -> str:
        return f"{self.prefix}/{self.site}/{FLEET}/+/cmd/fleet-rollback"
    def feedback(self, machine: str) -> str:
        return f"{self.machine_root(machine)}/cmd/feedback"

    @staticmethod
    def _channel_ok(channel: str) -> str:
        return _unreserved(channel, "channel", RESERVED_CHANNELS, "commands live under it")

    # Subscription filters of this agent's site (every area, machine and channel).
    def raw_filter(self) -> str:
        return f"{self.prefix}/{self.site}/+/+/+/raw"

    def features_filter(self) -> str:
        return f"{self.prefix}/{self.site}/+/+/+/features"

    def rebaseline_filter(self) -> str:
        return f"{self.prefix}/{self.site}/+/+/cmd/rebaseline"

    def fleet_confirm_filter(self) -> str:
        return f"{self.prefix}/{self.site}/+/+/cmd/fleet-confirm"
    def feedback_filter(self) -> str:
        return f"{self.prefix}/{self.site}/+/+/cmd/feedback"

    def parse(self, topic: str) -> TopicRef:
        """Validate a received topic and say what it is about (:class:`TopicError` if not ours)."""
        return parse_topic(topic, self.prefix)


def parse_topic(topic: str, prefix: str) -> TopicRef:
    """Parse ``topic`` under ``prefix`` into a :class:`TopicRef`.

    Raises :class:`TopicError` for topics outside the prefix, unknown shapes,
    wildcards, empty levels and names that do not match ``[a-z0-9_.-]+``.

    >>> parse_topic("plant/agents/gw-1/status", "plant").agent
    'gw-1'
    >>> parse_topic("plant/s/a/m/+/raw", "plant")
    Traceback (most recent call last):
    ...
    edge_agent.mqtt.topics.TopicError: channel '+' must match [a-z0-9_.-]+
    """
    if not isinstance(topic, str):
        raise TopicError(f"topic must be text, got {type(topic).__name__}")
    head = check_prefix(prefix) + "/"
    if not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under prefix {prefix!r}")
    levels = topic[len(head):].split("/")
    if len(levels) >= 2 and levels[1] == FLEET:
        return _parse_fleet(topic, levels)
    if len(levels) == 3 and levels[0] == "agents" and levels[2] == "status":
        return TopicRef("agent_status", agent=check_name(levels[1], "agent id"))
    if len(levels) == 4 and levels[3] in ("alerts", "status"):
        site, area, machine, kind = levels
        return TopicRef(kind, *_place(site, area, machine))
    if len(levels) == 5 and levels[3] == "cmd" and levels[4] in COMMANDS:
        return TopicRef(COMMANDS[levels[4]], *_place(*levels[:3]))
    if len(levels) == 5 and levels[4] in ("raw", "features"):
        site, area, machine, channel, kind = levels
        return TopicRef(kind, *_place(site, area, machine), Topics._channel_ok(channel))
    raise TopicError(f"topic {topic!r} is not one of ours (see docs/mqtt.md for the layout)")


def _place(site: str, area: str, machine: str) -> tuple[str, str, str]:
    return Topics._site_ok(site), Topics._area_ok(area), check_name(machine, "machine")


def _parse_fleet(topic: str, levels: list[str]) -> TopicRef:
    """``<site>/fleet/<class>/…`` (see the module docstring)."""
    site = Topics._site_ok(levels[0])
    fleet_class = check_name(levels[2], "class") if len(levels) > 2 else None
    rest = levels[3:]
    if len(rest) == 3 and rest[0] == "updates":
        return TopicRef("fleet_update", site, agent=check_name(rest[1], "agent id"),
                        machine=check_name(rest[2], "machine"), fleet_class=fleet_class)
    if len(rest) == 1 and rest[0] in FLEET_DOCS:
        return TopicRef(f"fleet_{rest[0]}", site, fleet_class=fleet_class)
    if rest == ["cmd", "fleet-rollback"]:
        return TopicRef("fleet_rollback", site, fleet_class=fleet_class)
    raise TopicError(f"topic {topic!r} is not one of the fleet exchange's (see docs/fleet.md)")


def shared_filter(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription: each message goes to one subscriber of ``group``.

    >>> shared_filter("fleet-aggregators", "plant/site1/fleet/+/updates/+/+")
    '$share/fleet-aggregators/plant/site1/fleet/+/updates/+/+'
    """
    return f"$share/{check_name(group, 'share group')}/{topic_filter}"


def alerts_filter(prefix: str, site: str | None = None, area: str | None = None) -> str:
    """Subscription filter for alerts, optionally narrowed to a site and an area.

    >>> alerts_filter("plant"), alerts_filter("plant", area="line-b")
    ('plant/+/+/+/alerts', 'plant/+/line-b/+/alerts')
    """
    check_prefix(prefix)
    site_level = "+" if site is None else Topics._site_ok(site)
    area_level = "+" if area is None else check_name(area, "area")
    return f"{prefix}/{site_level}/{area_level}/+/alerts"
