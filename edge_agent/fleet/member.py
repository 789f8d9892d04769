"""The agent's side of the fleet exchange: share what a machine learned, take what its fleet
learned (docs/fleet.md).

Sharing
    When a machine with a ``class`` has fitted its baseline and applied a prior (or, with
    ``share_before_prior``, before any), and again at most every ``[fleet]
    publish_every_s``, its summary (a location and scale per feature, never a window) is
    privatised (:func:`edge_agent.fleet.privacy.release`: clipped, Gaussian noise), the spend is
    recorded by its :class:`~edge_agent.fleet.privacy.PrivacyAccountant`, and the update
    goes through the durable outbox, QoS 1, not retained, on
    ``<prefix>/<site>/fleet/<class>/updates/<agent>/<machine>``. An update over
    ``max_update_bytes`` is not sent (counted, ``too_large``); when the next update would
    pass ``epsilon_budget`` nothing more is shared (``sharing: budget_spent``). The
    accountant is kept in ``state_dir/fleet.json``, so a restart does not reset the budget.
Receiving
    The retained ``prior``, ``candidate`` and ``rollout`` documents of each class are
    verified against ``[fleet] trust_key`` (a refusal is counted by reason in the agent
    status and logged: ``unsigned``, ``signature``, ``wrong_class``, ``old_version``,
    ``format``, ``features``). The signed rollout document says which version each member
    uses (the candidate on a canary during its trial, the stable version otherwise); the
    version a machine uses moves backward only on a newer rollout document
    (``rolled_back``, or a hold-back taking a canary back to the stable one). Without any
    rollout document, a ``prior`` is used only if newer than the machine's. A prior is
    applied with :meth:`edge_agent.runtime.pipeline.Pipeline.apply_prior`, on the
    processing thread.

All work runs on the agent's processing thread (``agent.submit(("call", fn))``): the
learning state has one owner. The MQTT handlers only queue.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter

from edge_agent.fleet.document import PriorRefused, update_id, update_to_doc, verify_prior
from edge_agent.fleet.signed import verify_rollout
from edge_agent.frame import iso_time
from edge_agent.mqtt.topics import TopicError, parse_topic

log = logging.getLogger(__name__)

#: Verified prior versions kept per class (the stable one, a candidate, a few to return to).
KEEP_VERSIONS = 8
#: How often the member looks for due updates (the processing thread does the work).
TICK_S = 1.0
UPDATE_NAMESPACE = uuid.UUID("5f0c8a52-3c1e-4d4b-9a55-6d2f1f7c9e13")


class FleetMember:
    """See the module docstring. ``start()`` after the link started, ``close()`` before it
    closes; :meth:`status` is the agent status's ``fleet`` member."""

    def __init__(self, agent, link, *, clock=time.time, seed: int | None = None):
        import numpy as np

        from edge_agent.fleet.keys import load_public_key
        from edge_agent.fleet.privacy import PrivacyAccountant

        self.agent, self.link, self.clock = agent, link, clock
        config = agent.config
        self.settings = config.fleet
        self.classes = {m.id: m.fleet_class for m in config.machines
                        if m.fleet_class and config.owns(m.id)}
        self.trust = None if self.settings.trust_key is None else \
            load_public_key(self.settings.trust_key)
        self.rng = np.random.default_rng(seed)
        self.path = config.state_dir / "fleet.json"
        state = json.loads(self.path.read_text()) if self.path.exists() else {}
        f = self.settings
        self.machines: dict[str, dict] = {}
        for machine, cls in self.classes.items():
            saved = state.get("machines", {}).get(machine, {})
            acc = saved.get("accountant")
            self.machines[machine] = {
                "class": cls, "last_publish_s": saved.get("last_publish_s"),
                "updates": saved.get("updates", 0), "too_large": saved.get("too_large", 0),
                "version": saved.get("version"),  # the version it uses (forward only)
                # Gaussian mechanisms per release (two per channel), as last spent
                "mechanisms": saved.get("mechanisms", 2), "privacy": saved.get("privacy"),
                "role": None, "applied": None,  # applied in this process
                "mismatched": None,  # the applied version lacks one of its channels/features
                # what was spent stays spent when the budget or delta is changed
                "accountant": PrivacyAccountant.from_state(
                    {**acc, "budget_epsilon": f.epsilon_budget, "delta": f.delta}) if acc
                else PrivacyAccountant(f.epsilon_budget, f.delta)}
        for m in self.machines.values():
            self._account(m)
        self.rollout_seq: dict[str, int] = dict(state.get("rollout_seq", {}))
        self.rollouts: dict[str, dict] = {}
        self.priors: dict[str, dict[int, object]] = {}  # class -> version -> FleetPrior
        self.published: dict[str, int] = {}  # class -> newest version on its prior topic
        self.refused: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._timer, name="edge-agent-fleet", daemon=True)
        topics = link.topics
        for cls in sorted(set(self.classes.values())):
            link.publisher.subscribe(topics.fleet_docs_filter(cls), self._on_message,
                                     retained=True)

    def _account(self, m: dict) -> None:
        """Cache the accountant's ε and whether the next release would pass the budget
        (dp-accounting takes milliseconds: once per release, not per status)."""
        acc = m["accountant"]
        m["epsilon"] = acc.epsilon()
        m["exhausted"] = acc.would_exceed(self.settings.noise_multiplier, m["mechanisms"])

    # -- threads ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.classes:
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _timer(self) -> None:
        while not self._stop.wait(TICK_S):
            self.agent.submit(("call", self.tick))

    def _on_message(self, topic: str, payload: bytes) -> None:  # paho's thread: queue only
        payload = bytes(payload)
        self.agent.submit(("call", lambda: self.on_document(topic, payload)))

    # -- sharing (processing thread) -------------------------------------------------------
    def tick(self) -> None:
        """Share what is due, within the learning CPU budget: when model updates would wait
        (``Agent.may_train``), so does sharing, and its time counts against that budget."""
        now = self.clock()
        for machine in sorted(self.classes):
            if self._due(machine, now) and self.agent.may_train(True):
                started = time.perf_counter()
                self.share(machine, now)
                self.agent._recent_training_s(time.perf_counter() - started)

    def fitted(self, machine: str) -> bool:
        """Every channel of ``machine`` heard so far has a fitted baseline."""
        dets = [d for (m, _), d in self.agent.pipeline.detectors.items() if m == machine]
        return bool(dets) and all(d.fitted for d in dets)

    def _due(self, machine: str, now: float) -> bool:
        m = self.machines[machine]
        return (self.settings.share and self.fitted(machine) and not self._waiting_prior(machine)
                and m["mismatched"] is None and (m["last_publish_s"] is None
                     or now - m["last_publish_s"] >= self.settings.publish_every_s)
                and not m["exhausted"])

    def _waiting_prior(self, machine: str) -> bool:
        """Without a prior, ``machine`` shares nothing (``share_before_prior`` off)."""
        return not self.settings.share_before_prior and machine not in self.agent.pipeline.priors

    def release(self, machine: str):
        """What ``machine`` would share now (:func:`edge_agent.fleet.privacy.release`)."""
        from edge_agent.fleet.privacy import release

        f = self.settings
        return release({channel: det for (mach, channel), det in sorted(
            self.agent.pipeline.detectors.items()) if mach == machine},
            self.agent.pipeline.priors.get(machine), class_name=self.machines[machine]["class"],
            machine=machine, noise_multiplier=f.noise_multiplier, clip=f.clip, rng=self.rng,
            bootstrap=f.share_before_prior)

    def share(self, machine: str, now: float) -> str | None:
        """Build, privatise, account and queue one update of ``machine``; its id, or None."""
        m, f = self.machines[machine], self.settings
        cls = m["class"]
        released = self.release(machine)
        if released is None:
            if not f.share_before_prior and m["applied"] is not None:
                # no public reference for some channel or feature: nothing exact to share
                # until another version is applied (said once, in the status and the log)
                m["mismatched"] = m["applied"]
                log.warning("fleet prior lacks a channel or feature of the machine; not sharing",
                            extra={"event": "fleet_prior_mismatch", "machine": machine,
                                   "class": cls, "version": m["applied"]})
            return None
        shared, how, mechanisms = released
        m["mechanisms"] = mechanisms  # the budget check of _due counts these from now on
        try:
            m["accountant"].spend(f.noise_multiplier, mechanisms)
        except RuntimeError:  # more channels than the last release: this one would pass it
            self._account(m)
            return None
        m["privacy"] = "exact" if how["exact"] else "bootstrap"
        self._account(m)
        epsilon = m["epsilon"]
        doc = update_to_doc(shared, agent=self.agent.config.id, created_s=now, privacy={
            "noise_multiplier": f.noise_multiplier, "clip": f.clip, "epsilon": epsilon,
            "delta": f.delta, **how})
        payload = json.dumps(doc, separators=(",", ":")).encode()
        m["last_publish_s"] = now
        this_update = update_id(doc)
        if len(payload) > f.max_update_bytes:
            m["too_large"] += 1
            log.error("fleet update too large; not published", extra={
                "event": "fleet_update_too_large", "machine": machine, "bytes": len(payload),
                "limit": f.max_update_bytes})
        else:
            topic = self.link.topics.fleet_update(cls, self.agent.config.id, machine)
            self.link.publisher.enqueue(topic, payload, qos=1, priority=-1,
                                        msg_id=str(uuid.uuid5(UPDATE_NAMESPACE, this_update)))
            m["updates"] += 1
            m["last_update"] = doc["created"]
            log.info("fleet update queued", extra={
                "event": "fleet_update_queued", "machine": machine, "class": cls,
                "update_id": this_update, "bytes": len(payload), "epsilon": round(epsilon, 4),
                "epsilon_budget": f.epsilon_budget})
        if m["exhausted"]:
            log.warning("privacy budget spent: this machine shares nothing more", extra={
                "event": "fleet_budget_spent", "machine": machine, "epsilon": epsilon,
                "epsilon_budget": f.epsilon_budget})
        self._save()
        return this_update

    # -- receiving (processing thread) -----------------------------------------------------
    def _refuse(self, reason: str, topic: str, detail: str) -> None:
        self.refused[reason] += 1
        log.warning("fleet document refused", extra={"event": "fleet_refused", "reason": reason,
                                                     "topic": topic, "detail": detail[:200]})

    def on_document(self, topic: str, payload: bytes) -> None:
        try:
            ref = parse_topic(topic, self.link.topics.prefix)
        except TopicError:
            return
        cls = ref.fleet_class
        if cls not in set(self.classes.values()) or not payload:
            return  # not one of ours, or a cleared retained message
        try:
            doc = json.loads(payload)
        except ValueError as exc:
            return self._refuse("format", topic, f"not JSON: {exc}")
        try:
            if self.trust is None:
                raise PriorRefused("signature", "no [fleet] trust_key: no prior can be trusted")
            if ref.kind == "fleet_rollout":
                # the same document again (a reconnect, a restart) is no replay of an old one
                seen = self.rollout_seq.get(cls)
                self.rollouts[cls] = verify_rollout(doc, self.trust, class_name=cls,
                                                    after_seq=None if seen is None else seen - 1)
                self.rollout_seq[cls] = doc["seq"]
            else:
                prior = verify_prior(doc, self.trust, class_name=cls)
                # with a rollout document the rollout decides (a rollback republishes an older
                # version); without one, an older prior is a replay
                if ref.kind == "fleet_prior" and cls not in self.rollouts \
                        and prior.version < self.published.get(cls, 0):
                    raise PriorRefused("old_version", f"version {prior.version} is older than "
                                       f"{self.published[cls]} (a replay)")
                versions = self.priors.setdefault(cls, {})
                versions[prior.version] = prior
                if ref.kind == "fleet_prior":
                    self.published[cls] = max(self.published.get(cls, 0), prior.version)
                for v in sorted(versions)[:-KEEP_VERSIONS]:
                    del versions[v]
        except PriorRefused as exc:
            return self._refuse(exc.reason, topic, exc.detail)
        self.reconcile(cls)

    def reconcile(self, cls: str) -> None:
        """Apply to each machine of ``cls`` the version it should use, when it is here."""
        rollout, versions = self.rollouts.get(cls), self.priors.get(cls, {})
        agent_id = self.agent.config.id
        for machine in sorted(mach for mach, c in self.classes.items() if c == cls):
            m = self.machines[machine]
            if rollout is not None:
                canary = rollout["stage"] == "canary" and f"{agent_id}/{machine}" in \
                    rollout["canaries"]
                target, role = ((rollout["candidate"], "candidate") if canary
                                else (rollout["stable"], "stable"))
            else:  # no rollout document: the newest on the prior topic (never a candidate)
                target, role = self.published.get(cls), "stable"
            if target is None or target not in versions or m["applied"] == target:
                continue
            # the signed rollout (its seq only grows) may take a version back; nothing else
            if m["version"] is not None and target < m["version"] and rollout is None:
                self._refuse("old_version", self.link.topics.fleet_prior(cls),
                             f"{machine} uses version {m['version']}, not {target}")
                continue
            self.agent.pipeline.apply_prior(machine, versions[target])
            previous = m["version"]
            m["version"], m["applied"], m["role"] = target, target, role
            m["mismatched"] = None
            log.info("fleet prior applied", extra={
                "event": "fleet_prior_applied", "machine": machine, "class": cls,
                "version": target, "previous": previous, "role": role,
                "stage": None if rollout is None else rollout["stage"]})
        self._save()

    # -- state -----------------------------------------------------------------------------
    def status(self) -> dict:
        f = self.settings
        machines = {}
        for machine, m in sorted(self.machines.items()):
            sharing = ("off" if not f.share else "budget_spent" if m["exhausted"] else
                       "waiting_baseline" if not self.fitted(machine) else
                       "waiting_prior" if self._waiting_prior(machine) else
                       "prior_mismatch" if m["mismatched"] is not None else "on")
            machines[machine] = {"class": m["class"], "prior_version": m["applied"],
                                 "prior_role": m["role"], "sharing": sharing,
                                 "epsilon": round(m["epsilon"], 6), "privacy": m["privacy"],
                                 "epsilon_budget": f.epsilon_budget, "delta": f.delta,
                                 "updates": m["updates"], "last_update": m.get("last_update"),
                                 "too_large": m["too_large"]}
        classes = {}
        for cls in sorted(set(self.classes.values())):
            r = self.rollouts.get(cls) or {}
            classes[cls] = {"stage": r.get("stage", "none"), "stable": r.get("stable"),
                            "candidate": r.get("candidate"), "reason": r.get("reason", ""),
                            "rollout_seq": r.get("seq")}
        return {"role": "member", "refused": dict(self.refused), "classes": classes,
                "machines": machines}

    def _save(self) -> None:
        state = {"machines": {machine: {
            "accountant": m["accountant"].state(), "last_publish_s": m["last_publish_s"],
            "updates": m["updates"], "too_large": m["too_large"], "version": m["version"],
            "mechanisms": m["mechanisms"], "privacy": m["privacy"]}
            for machine, m in self.machines.items()}, "rollout_seq": self.rollout_seq,
            "saved": iso_time(self.clock())}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)
