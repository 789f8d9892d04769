"""``edge-agent fleet aggregate --config fleet.toml``: members' updates in, signed priors out.

MQTT is its only peer. It subscribes to the member updates of its site
(``<prefix>/<site>/fleet/+/updates/+/+``; through the shared subscription
``$share/<share_group>/…`` when ``share_group`` is set, so a redundant pair splits the
stream and either alone receives all of it), to the alerts (the canaries' alert rate
decides a promotion) and to ``cmd/fleet-rollback``. It keeps each member's latest
update (bounded: ``max_classes``, ``max_members_per_class``; a new member of a full class
is refused, ``too_many_members``, never made room for) in its state directory, and when a
class has ``min_members`` members with something new, at most every ``aggregate_every_s``,
it aggregates them robustly, one vote per gateway
(:func:`edge_agent.fleet.aggregate.gateway_votes`, then
:func:`edge_agent.fleet.aggregate.aggregate`), signs the prior with the fleet
key and starts its staged rollout (:mod:`edge_agent.fleet.rollout`): the candidate
retained on ``…/fleet/<class>/candidate``, the stable version on ``…/fleet/<class>/prior``,
the signed rollout document on ``…/fleet/<class>/rollout``. A prior commissioned from
recordings (``edge-agent fleet prior``, listed in ``[aggregator] commissioning``) starts a
class: it is the stable version of a class that has none, so its machines share exactly
private updates against it from their first (:mod:`edge_agent.fleet.privacy`).

A redundant pair shares what each receives on the *member board*, retained on
``…/fleet/<class>/members/<agent>/<machine>`` (aggregators only), so both hold every
member; the *leader* (the first of ``[aggregator] id`` and ``peers`` in name order whose
retained status is online) is the only one that publishes priors and rollouts, and the
other adopts its retained rollout. Every update, refusal and rollout change is logged.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict

from edge_agent.fleet.aggregator_config import FleetFile
from edge_agent.fleet.commissioning import read_commissioned
from edge_agent.fleet.document import (PriorRefused, sign_document, sign_prior, update_from_doc,
                                       update_id)
from edge_agent.fleet.rollout import Rollout, RolloutError
from edge_agent.fleet.signed import rollout_doc
from edge_agent.mqtt.topics import TopicError, Topics, alerts_filter, parse_topic, shared_filter
from edge_agent.runtime.fleet_config import MAX_UPDATE_BYTES
from edge_agent.runtime.state import write_atomic

log = logging.getLogger(__name__)

#: Signed prior versions kept per class (the stable one, those a rollback returns to, a candidate).
KEEP_VERSIONS = 8
#: How long after its subscriptions are acknowledged an aggregator waits for the retained
#: status of a peer before it leads (the broker sends retained messages right after the
#: acknowledgement; a peer that never ran has none).
PEER_SETTLE_S = 5.0


class Aggregator:
    """The service (see the module docstring). :meth:`run` until ``stop`` is set."""

    def __init__(self, config: FleetFile, *, clock=time.time):
        from edge_agent.fleet.keys import load_private_key
        from edge_agent.mqtt.outbox import Outbox
        from edge_agent.mqtt.publisher import Publisher

        self.config, self.clock = config, clock
        a = config.aggregator
        self.key = load_private_key(a.key)
        self.topics = Topics(config.topics.prefix, config.topics.site, "area")
        a.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = a.state_dir / "aggregator.json"
        self.alerts_path = a.state_dir / "alerts.json"  # the trials' alert times
        self.members: dict[str, OrderedDict[str, dict]] = {}  # class -> member -> update doc
        self.rollouts: dict[str, Rollout] = {}
        self.priors: dict[str, dict[int, dict]] = {}  # class -> version -> signed document
        self.built_s: dict[str, float] = {}
        self.dirty: set[str] = set()
        self.updates: Counter = Counter()  # updates taken, per class
        self.refused: Counter = Counter()
        self.peers_online: dict[str, bool] = {}
        self.commissioned: set[str] = set()  # signatures of the commissioned priors adopted
        self._alerts_unsaved = False  # (saved with the status, at most every 5 s)
        self._subscribed_s: float | None = None  # (monotonic) when first subscribed
        self._load()
        self._commissioned = [read_commissioned(path, self.key.public_key(), a.classes)
                              for path in a.commissioning]
        self._inbox: queue.Queue = queue.Queue(maxsize=100_000)
        self.outbox = Outbox(a.state_dir / "outbox.sqlite")
        self.publisher = Publisher(config.mqtt, self.outbox, self.topics, a.id)
        updates = self.topics.fleet_updates_filter()
        sub = self.publisher.subscribe
        sub(shared_filter(a.share_group, updates) if a.share_group else updates,
            lambda t, p: self._put(("update", t, p)))
        sub(alerts_filter(self.topics.prefix, self.topics.site),
            lambda t, p: self._put(("alert", t, p)))
        sub(self.topics.fleet_rollback_filter(), lambda t, p: self._put(("rollback", t, p)))
        sub(f"{self.topics.prefix}/{self.topics.site}/fleet/+/members/+/+",
            lambda t, p: self._put(("board", t, p)), retained=True)
        for peer in a.peers:
            sub(self.topics.agent_status(peer), lambda t, p: self._put(("peer", t, p)),
                retained=True)
        if a.peers:  # the standby follows the leader's retained documents
            for name in ("rollout", "prior", "candidate"):
                sub(f"{self.topics.prefix}/{self.topics.site}/fleet/+/{name}",
                    lambda t, p, n=name: self._put((n, t, p)), retained=True)

    # -- input (paho's thread: queue only) ---------------------------------------------------
    def _put(self, item) -> None:
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.refused["overloaded"] += 1

    # -- the leader of a redundant pair ------------------------------------------------------
    @property
    def leader(self) -> bool:
        """No peer first in name order is online, as far as their retained statuses say.

        In a pair, not before ``PEER_SETTLE_S`` has passed since the subscriptions were
        acknowledged: the retained statuses, rollout and versions of a peer (one that leads
        now, or led while this one was down) come first, so that neither a standby started
        beside a leader nor a restarted leader publishes from what it knew before.
        """
        a = self.config.aggregator
        if a.peers and (self._subscribed_s is None
                        or time.monotonic() - self._subscribed_s < PEER_SETTLE_S):
            return False
        return all(not self.peers_online.get(p, False) for p in a.peers if p < a.id)

    # -- handling (the main thread) ----------------------------------------------------------
    def handle(self, item) -> None:
        kind, topic, payload = item
        now = self.clock()
        if kind == "update":
            self._on_update(topic, payload, board=False)
        elif kind == "board":
            self._on_update(topic.replace("/members/", "/updates/"), payload, board=True)
        elif kind == "alert":
            self._on_alert(payload, now)
        elif kind == "rollback":
            self._on_rollback(topic, now)
        elif kind == "peer":
            try:
                doc = json.loads(payload)
                self.peers_online[doc["agent"]] = doc.get("status") == "online"
            except (ValueError, KeyError, TypeError):
                pass
        elif kind == "rollout":  # a newer one is a peer's (the leader's own comes back older)
            self._adopt(payload)
        elif kind in ("prior", "candidate"):
            self._keep(payload)

    def _refuse(self, reason: str, topic: str, detail: str) -> None:
        self.refused[reason] += 1
        log.warning("fleet update refused", extra={"event": "fleet_update_refused",
                                                   "reason": reason, "topic": topic[:200],
                                                   "detail": detail[:200]})

    def _on_update(self, topic: str, payload: bytes, *, board: bool) -> None:
        try:
            ref = parse_topic(topic, self.topics.prefix)
        except TopicError as exc:
            return self._refuse("bad_topic", topic, str(exc))
        if ref.kind != "fleet_update" or ref.site != self.topics.site:
            return self._refuse("bad_topic", topic, "not an update of this site")
        if len(payload) > MAX_UPDATE_BYTES:
            return self._refuse("oversized", topic, f"{len(payload)} bytes")
        cls, a = ref.fleet_class, self.config.aggregator
        if a.classes and cls not in a.classes:
            return self._refuse("wrong_class", topic, f"class {cls} is not aggregated here")
        if cls not in self.members and len(self.members) >= a.max_classes:
            return self._refuse("too_many_classes", topic, f"already {a.max_classes} classes")
        try:
            doc = json.loads(payload)
            update_from_doc(doc, class_name=cls)
        except ValueError as exc:
            return self._refuse("format", topic, f"not JSON: {exc}")
        except PriorRefused as exc:
            return self._refuse(exc.reason, topic, exc.detail)
        if (doc["agent"], doc["machine"]) != (ref.agent, ref.machine):
            return self._refuse("bad_topic", topic, "the update names another member")
        member = f"{ref.agent}/{ref.machine}"
        members = self.members.setdefault(cls, OrderedDict())
        old = members.get(member)
        if old is not None and old["created"] >= doc["created"]:
            return  # the same update again (redelivery, the board), or an older one
        if old is None and len(members) >= a.max_members_per_class:
            # never make room by dropping a member: new names would push the honest ones out
            return self._refuse("too_many_members", topic,
                                f"class {cls} has {len(members)} members already")
        members[member] = doc
        members.move_to_end(member)
        self.dirty.add(cls)
        self.updates[cls] += 1
        log.info("fleet update", extra={"event": "fleet_update", "class": cls, "member": member,
                                        "update_id": update_id(doc), "via": "board" if board
                                        else "updates", "members": len(members)})
        if not board:  # share it with the other of a redundant pair
            self.publisher.publish_retained(topic.replace("/updates/", "/members/"), payload)
        self._save()

    def _on_alert(self, payload: bytes, now: float) -> None:
        try:
            doc = json.loads(payload)
            member, severity = f"{doc['agent']}/{doc['machine']}", doc["severity"]
        except (ValueError, KeyError, TypeError):
            return
        if severity not in ("warning", "alarm"):
            return
        for cls, members in self.members.items():
            if member in members and cls in self.rollouts:
                self.rollouts[cls].observe_alert(member, now)
                self._alerts_unsaved = True

    def _on_rollback(self, topic: str, now: float) -> None:
        try:
            cls = parse_topic(topic, self.topics.prefix).fleet_class
        except TopicError:
            return
        rollout = self.rollouts.get(cls)
        if rollout is None or not self.leader:
            return
        try:
            rollout.rollback(now)
        except RolloutError as exc:
            log.error("fleet rollback refused", extra={"event": "fleet_rollback_refused",
                                                       "class": cls, "reason": str(exc)})
            return
        self._publish(cls, now)

    def _adopt(self, payload: bytes) -> None:
        """Follow a newer retained rollout (a peer's that leads, or led while this one was down)."""
        from edge_agent.fleet.signed import verify_rollout

        try:
            doc = json.loads(payload)
            cls = doc["class"]
            verify_rollout(doc, self.key.public_key(), class_name=cls)
            rollout = self.rollouts.setdefault(cls, Rollout(cls, self.config.rollout))
            if not rollout.adopt(doc, now_s=self.clock()):
                return
        except (ValueError, KeyError, TypeError, PriorRefused):
            return
        # a commissioned prior not newer than the peer's versions was the peer's to adopt
        # or warn about (a pair shares its configuration)
        self.commissioned.update(d["signature"]["value"] for _, p, d in self._commissioned
                                 if p.class_name == cls and int(p.version) <= rollout.highest)

    def _keep(self, payload: bytes) -> None:
        """The standby keeps the leader's signed versions (checked with the fleet key)."""
        from edge_agent.fleet.document import verify_prior

        try:
            doc = json.loads(payload)
            prior = verify_prior(doc, self.key.public_key(), class_name=doc.get("class"))
        except (ValueError, TypeError, AttributeError, PriorRefused):
            return
        self.priors.setdefault(prior.class_name, {})[prior.version] = doc
        self._prune(prior.class_name, prior.version)

    def _prune(self, cls: str, version: int) -> None:
        """Keep the stable version, those a rollback returns to, the candidate and ``version``."""
        r, versions = self.rollouts.get(cls), self.priors.get(cls, {})
        keep = {version, *((r.stable, r.candidate, *r.previous[-KEEP_VERSIONS:]) if r else ())}
        for v in [v for v in versions if v not in keep]:
            del versions[v]

    # -- commissioning -----------------------------------------------------------------------
    def commission(self, now: float) -> None:
        """Adopt each commissioned prior not adopted yet (:meth:`Rollout.commission`); one
        that is not newer than the class's versions is skipped, with one warning unless it
        is the very document adopted before (by this aggregator, or by the peer it follows)."""
        for source, prior, doc in self._commissioned:
            cls, version = prior.class_name, int(prior.version)
            rollout = self.rollouts.setdefault(cls, Rollout(cls, self.config.rollout))
            versions = self.priors.setdefault(cls, {})
            if doc["signature"]["value"] in self.commissioned:
                continue  # adopted before this restart
            if version <= rollout.highest:
                if versions.get(version, {}).get("signature") != doc["signature"]:  # (a peer's)
                    log.warning("commissioned prior not adopted: not newer", extra={
                        "event": "fleet_commissioning_skipped", "class": cls,
                        "version": version, "highest": rollout.highest, "file": source})
                self.commissioned.add(doc["signature"]["value"])  # said once
                self._save()
                continue
            versions[version] = doc
            self.commissioned.add(doc["signature"]["value"])
            rollout.commission(version, now_s=now, source=source,
                               members=list(self.members.get(cls, {})))
            self._publish(cls, now)

    # -- building and publishing -------------------------------------------------------------
    def tick(self) -> None:
        """Build what is due, judge trials that are over (the main loop calls it)."""
        if not self.leader:
            return
        now, a = self.clock(), self.config.aggregator
        if self._commissioned:
            self.commission(now)
            self._commissioned = []
        for cls in sorted(self.dirty):
            members = self.members.get(cls, {})
            due = cls not in self.built_s or now - self.built_s[cls] >= a.aggregate_every_s
            if len(members) >= a.min_members and due:
                self.build(cls, now)
        for cls, rollout in self.rollouts.items():
            if rollout.evaluate(now) is not None:
                self._publish(cls, now)

    def build(self, cls: str, now: float) -> int:
        """Aggregate ``cls``'s members into a new signed version and put it on trial."""
        from edge_agent.fleet.aggregate import aggregate, gateway_votes

        a = self.config.aggregator
        rollout = self.rollouts.setdefault(cls, Rollout(cls, self.config.rollout))
        # one vote per gateway: a gateway that invents machine names does not outvote the others
        summaries = gateway_votes({m: update_from_doc(d, class_name=cls)
                                   for m, d in self.members[cls].items()})
        version = rollout.highest + 1
        prior = aggregate(summaries, class_name=cls, version=version, created_s=now,
                          method=a.method, trim=a.trim, weight_clip=a.weight_clip or None)
        doc = sign_prior(prior, self.key)
        versions = self.priors.setdefault(cls, {})
        versions[version] = doc
        self._prune(cls, version)
        rollout.propose(version, now_s=now, members=list(self.members[cls]))
        self.built_s[cls] = now
        self.dirty.discard(cls)
        log.info("fleet prior built", extra={"event": "fleet_prior_built", "class": cls,
                                             "version": version, "members": prior.members,
                                             "windows": prior.windows})
        self._publish(cls, now)
        return version

    def _publish(self, cls: str, now: float) -> None:
        rollout, versions = self.rollouts[cls], self.priors.get(cls, {})
        if rollout.candidate is not None and rollout.candidate in versions:
            self._retain(self.topics.fleet_doc(cls, "candidate"), versions[rollout.candidate])
        if rollout.stable is not None and rollout.stable in versions:
            self._retain(self.topics.fleet_prior(cls), versions[rollout.stable])
        self._retain(self.topics.fleet_doc(cls, "rollout"),
                     sign_document(rollout_doc(rollout, created_s=now), self.key))
        self._save()

    def _retain(self, topic: str, doc: dict) -> None:
        self.publisher.publish_retained(topic, json.dumps(doc, separators=(",", ":")).encode())

    # -- state -------------------------------------------------------------------------------
    def status(self) -> dict:
        classes = {}
        for cls in sorted(set(self.members) | set(self.rollouts)):
            r = self.rollouts.get(cls) or Rollout(cls)
            classes[cls] = {"stage": r.stage, "stable": r.stable, "candidate": r.candidate,
                            "reason": r.reason, "rollout_seq": r.seq,
                            "members": len(self.members.get(cls, {})),
                            "updates": self.updates[cls]}
        return {"role": "aggregator", "leader": self.leader, "refused": dict(self.refused),
                "classes": classes}

    def _save(self) -> None:
        state = {"members": {c: dict(m) for c, m in self.members.items()},
                 "rollouts": {c: r.to_dict() for c, r in self.rollouts.items()},
                 "priors": {c: {str(v): d for v, d in p.items()} for c, p in self.priors.items()},
                 "built_s": self.built_s, "dirty": sorted(self.dirty),
                 "commissioned": sorted(self.commissioned)}
        write_atomic(self.state_path, json.dumps(state, separators=(",", ":")).encode())
        self._save_alerts()

    def _save_alerts(self) -> None:
        """The trials' alert times, in a file of their own: they change with every alert,
        the members' updates in aggregator.json seldom."""
        alerts = {c: r.alert_times(self.clock()) for c, r in self.rollouts.items()}
        write_atomic(self.alerts_path, json.dumps(alerts, separators=(",", ":")).encode())
        self._alerts_unsaved = False

    def _load(self) -> None:
        if not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        self.members = {c: OrderedDict(m) for c, m in state["members"].items()}
        self.rollouts = {c: Rollout.from_dict(r, self.config.rollout)
                         for c, r in state["rollouts"].items()}
        self.priors = {c: {int(v): d for v, d in p.items()} for c, p in state["priors"].items()}
        self.built_s, self.dirty = dict(state["built_s"]), set(state["dirty"])
        self.commissioned = set(state.get("commissioned", ()))
        alerts = json.loads(self.alerts_path.read_text()) if self.alerts_path.exists() else {}
        for cls, times in alerts.items():
            if cls in self.rollouts:
                self.rollouts[cls].restore_alert_times(times)

    # -- the service -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.publisher.start()
        last_status = 0.0
        every = 5.0
        try:
            while not stop.is_set():
                try:
                    self.handle(self._inbox.get(timeout=0.2))
                    while True:
                        self.handle(self._inbox.get_nowait())
                except queue.Empty:
                    pass
                if self._subscribed_s is None and self.publisher.subscribed:
                    self._subscribed_s = time.monotonic()
                self.tick()
                if time.monotonic() - last_status >= every:
                    if self._alerts_unsaved:
                        self._save_alerts()
                    self.publisher.publish_agent_status(fleet=self.status())
                    last_status = time.monotonic()
        finally:
            if self._alerts_unsaved:
                self._save_alerts()
            self.publisher.publish_agent_status(fleet=self.status())
            self.publisher.close(drain_s=2.0)
            self.outbox.close()

