"""The agent's durable side: checkpoints, restore, and alerts committed before anything goes on.

:class:`Durable` is a part of :class:`~edge_agent.runtime.agent.Agent` (see its
module docstring for the rules); it owns nothing the agent does not.
"""

from __future__ import annotations

import json
import logging
import threading

from edge_agent.errors import StorageError, free_bytes
from edge_agent.runtime.state import apply_state, encode_state

log = logging.getLogger(__name__)

#: Backoff of an alert's commit while the outbox cannot write: first and longest wait.
COMMIT_RETRY_S = (0.2, 10.0)


class AlertUncommitted(Exception):
    """The agent was told to stop while an alert waited for storage (nothing after it ran).

    ``alert`` is the alert; ``live``: it came from live frames, which are not kept, so a
    restart cannot raise it again (a recording's alert is raised again, same id)."""

    def __init__(self, alert: dict, live: bool):
        super().__init__(alert["id"])
        self.alert, self.live = alert, live


class Durable:
    """Checkpoints, restore and alert commits of an :class:`~edge_agent.runtime.agent.Agent`."""

    _stop: threading.Event

    # -- checkpoints ------------------------------------------------------------------------------
    def _machine_state(self, machine: str) -> dict:
        p = self.pipeline
        return {"detectors": {c: d for (m, c), d in p.detectors.items() if m == machine},
                "alerter": p.alerters.get(machine), "windower": self.windowers.get(machine),
                "indices": {c: i for (m, c), i in self.indices.items() if m == machine},
                "last_start_s": {c: t for (m, c), t in p.last_start_s.items() if m == machine},
                "last_alert": self.last_alert.get(machine),
                "alerts_raised": self.alerts_raised.get(machine, 0)}

    def checkpoint(self) -> int | None:
        """Write a generation; ``None`` when storage fails (logged, in the status, retried)."""
        try:
            generation = self.store.save({m: self._machine_state(m) for m in self.machines()},
                                         {"replay_position": self.replay_position,
                                          "stats": self.stats})
        except StorageError as exc:
            self._storage_failed(exc, "checkpoint")
            return None
        self._storage_ok()
        self._checkpoint_due = False
        self.stats["checkpoints"] += 1
        log.info("checkpoint written", extra={"event": "checkpoint", "generation": generation,
                                              "machines": len(self.machines())})
        return generation

    def restore(self, alert_states: dict[str, tuple[int, str]] | None = None) -> None:
        """The last checkpoint, then each machine's alert state from the outbox
        (``{machine: (alerts raised, JSON)}``) where it is newer than the checkpoint's."""
        try:
            machines, agent_state = self.store.load()
        except Exception as exc:  # never a crash loop: at worst every machine learns again
            log.exception("checkpoints could not be read; every machine learns a new baseline",
                          extra={"event": "restore_failed", "error": str(exc)})
            machines, agent_state = {}, {}
        for machine, state in machines.items():
            for channel, detector in state["detectors"].items():
                self.pipeline.detectors[(machine, channel)] = detector
            if state.get("alerter") is not None:
                self.pipeline.alerters[machine] = state["alerter"]
            if state.get("windower") is not None:
                self.windowers[machine] = state["windower"]
            for channel, index in state.get("indices", {}).items():
                self.indices[(machine, channel)] = index
            for channel, t in state.get("last_start_s", {}).items():
                self.pipeline.last_start_s[(machine, channel)] = t
            if state.get("last_alert"):
                self.last_alert[machine] = state["last_alert"]
            self.alerts_raised[machine] = int(state.get("alerts_raised", 0))
        resumed = self._resume_alert_states(alert_states or {})
        self.replay_position = int(agent_state.get("replay_position", 0))
        self.stats.update({k: v for k, v in agent_state.get("stats", {}).items() if k in self.stats})
        self.fitted = {(m, c, regime) for (m, c), d in self.pipeline.detectors.items()
                       for regime, model in d.models.items() if model.fitted}
        if machines or self.store.quarantined:
            learned = sorted("/".join(f) for f in self.fitted)
            log.info("state restored", extra={"event": "restore", "machines": sorted(machines),
                                              "baselines": learned,
                                              "generation": self.store.generation,
                                              "quarantined": self.store.quarantined,
                                              "alert_states_resumed": resumed,
                                              "replay_position": self.replay_position})

    def _resume_alert_states(self, alert_states: dict[str, tuple[int, str]]) -> list[str]:
        resumed = []
        for machine, (raised, text) in sorted(alert_states.items()):
            if raised <= self.alerts_raised.get(machine, 0) or not self.config.owns(machine):
                continue
            try:
                doc = json.loads(text)
                if not doc.get("live", True):
                    # a recording's alert: the replay resumes from the checkpoint's position
                    # and raises it again, the same way (same id); its state must not run ahead
                    continue
                apply_state(self.pipeline.alerter(machine), json.dumps(doc["alerter"]))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("alert state in the outbox unreadable; the checkpoint's is kept",
                          extra={"event": "alert_state_unreadable", "machine": machine,
                                 "error": str(exc)})
                continue
            self.alerts_raised[machine] = raised
            if doc.get("last_alert"):
                self.last_alert[machine] = doc["last_alert"]
            resumed.append(machine)
        return resumed

    # -- alerts before anything else ------------------------------------------------------------
    def _commit(self, alert: dict, live: bool = True) -> None:
        """Commit ``alert`` and its machine's alert state to the outbox; until that succeeds,
        retry with backoff (see the module docstring). Raises :class:`AlertUncommitted` when
        told to stop meanwhile."""
        if self.link is None:
            return
        machine = alert["machine"]
        state = json.dumps({"alerter": json.loads(encode_state(self.pipeline.alerter(machine))),
                            "last_alert": alert, "live": live}, separators=(",", ":"))
        delay = COMMIT_RETRY_S[0]
        while True:
            try:
                self.link.publish_alert(alert, state=(machine, self.alerts_raised[machine], state))
            except StorageError as exc:
                self.stats["storage_retries"] += 1
                self._storage_failed(exc, "alert", alert_id=alert["id"], retry_in_s=delay)
                self._publish_status()  # the status goes on while the alert waits
                if self._stop.wait(delay):
                    raise AlertUncommitted(alert, live) from None
                delay = min(2 * delay, COMMIT_RETRY_S[1])
                continue
            self._storage_ok()
            return

    def _storage_failed(self, exc: StorageError, what: str, **extra) -> None:
        self.storage = exc
        self._storage_log.log(logging.ERROR, f"storage_full {what}", "storage_full: the state directory "
                              "cannot take a write; holding on and retrying", extra={
                                  "event": "storage_full", "what": what, "path": exc.path,
                                  "free_bytes": exc.free_bytes, "error": exc.detail, **extra})

    def _storage_ok(self) -> None:
        if self.storage is not None:
            log.warning("storage writable again", extra={"event": "storage_ok",
                                                         "path": self.storage.path})
            self.storage = None
            self._publish_status()

    def storage_status(self) -> dict:
        """``{state, path, free_bytes[, error]}`` for the agent status."""
        if self.storage is not None:
            return self.storage.as_status()
        return {"state": "ok", "path": str(self.config.state_dir),
                "free_bytes": free_bytes(self.config.state_dir)}
