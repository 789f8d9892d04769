"""Sensor health, and bounds on everything keyed by names that arrive from the network.

Per channel: refusals by reason and the channel's latest state. Only channels
that have a *slot* get an entry: the channels a machine's configuration lists,
or (a machine without a channel list, or an unlisted machine with
``accept_unknown_machines``) the first ``max_channels_per_machine`` channels
and ``max_unknown_machines`` machines heard from. Everything
else that is refused (an unknown machine, channel or area, a topic that does
not parse, a name beyond the bounds, junk on a channel without a slot) is
counted by reason for the agent as a whole, with a few example names, so a
flood of names cannot grow memory, the status documents or the log.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping

from edge_agent.logs import RateLimitedLog

log = logging.getLogger(__name__)

#: Why a message never reached a machine's channel (counted for the agent, not per channel).
AGENT_REASONS = ("bad_topic", "wrong_area", "unknown_machine", "unknown_channel",
                 "too_many_machines", "too_many_channels", "unknown_command",
                 # operators' labels (edge_agent.runtime.feedback.REASONS)
                 "bad_feedback", "bad_label", "unknown_alert", "wrong_machine")
EXAMPLES = 5  # example names kept per reason
EXAMPLE_CHARS = 120
HEALTH_LOG_S = 10.0  # a channel's health changes are logged at most this often


class RejectionCounter:
    """Refusals per channel with a slot, agent-wide ones by reason, each channel's health.

    Health is ``"ok"`` when the channel's latest message was accepted, the
    reason when it was refused, and ``"no_data"`` when nothing arrived for
    ``stale_s`` seconds (or ever). A change of health is logged (at most once in
    ``HEALTH_LOG_S`` per channel, counting what it left out), so a sensor that breaks
    shows in the log without one line per refused frame. Thread-safe: MQTT
    handlers record while the agent reads.

    Parameters
    ----------
    configured : mapping, optional
        ``{machine: channels}`` of the configuration; empty channels: any (within the bound).
    accept_unknown : bool
        Whether machines outside ``configured`` get slots (``accept_unknown_machines``).
    """

    def __init__(self, stale_s: float | None = 300.0, clock=time.time, *,
                 configured: Mapping[str, tuple[str, ...]] | None = None,
                 accept_unknown: bool = True, max_channels_per_machine: int = 64,
                 max_unknown_machines: int = 256):
        self.stale_s, self._clock = stale_s, clock
        self._lock = threading.Lock()
        self._configured = {m: frozenset(c) for m, c in (configured or {}).items()}
        self.accept_unknown = accept_unknown if configured is not None else True
        self.max_channels, self.max_machines = max_channels_per_machine, max_unknown_machines
        self._slots: dict[str, set[str]] = {}
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._latest: dict[tuple[str, str], tuple[str, float]] = {}
        self._refused: dict[str, list] = {}  # reason -> [count, deque of examples]
        self._log = RateLimitedLog(log)  # refusals: a line per reason and minute
        self._health_log = RateLimitedLog(log, every_s=HEALTH_LOG_S, max_keys=1024, clock=clock)

    # -- admission (bounded names) ----------------------------------------------------------------
    def admit(self, machine: str, channel: str | None) -> str | None:
        """``None`` when a message of ``machine``/``channel`` may be decoded (it has a slot,
        or one is free); else the reason it is refused."""
        with self._lock:
            return self._admit(machine, channel)

    def _admit(self, machine: str, channel: str | None) -> str | None:
        listed = self._configured.get(machine)
        if listed is None:
            if not self.accept_unknown:
                return "unknown_machine"
            unknown = sum(1 for m in self._slots if m not in self._configured)
            if machine not in self._slots and unknown >= self.max_machines:
                return "too_many_machines"
        if channel is None:
            return None
        if listed:
            return None if channel in listed else "unknown_channel"
        slots = self._slots.get(machine, ())
        return None if channel in slots or len(slots) < self.max_channels else "too_many_channels"

    def _has_slot(self, machine: str, channel: str) -> bool:
        """Configured for ``machine``, or given a slot by an accepted message already."""
        return channel in self._configured.get(machine, ()) or \
            channel in self._slots.get(machine, ())

    # -- counting ---------------------------------------------------------------------------------
    def accepted(self, machine: str, channel: str, *, trusted: bool = False) -> bool:
        """Record an accepted message; ``False`` (and refused) when no slot is left for it.
        ``trusted``: a recording's frame, which always gets one."""
        with self._lock:
            reason = None if trusted else self._admit(machine, channel)
            if reason is None:
                self._slots.setdefault(machine, set()).add(channel)
        if reason is not None:
            self.refused(reason, f"{machine}/{channel}")
            return False
        self._record(machine, channel, "ok")
        return True

    def rejected(self, machine: str, channel: str, reason: str, detail: str = "", *,
                 trusted: bool = False) -> None:
        """A refused message of a channel: counted per channel when it has a slot (configured,
        or taken by an accepted message) or is ``trusted``, else for the agent as a whole.
        A refused message never takes a slot: junk on new names cannot crowd out a real
        sensor's channel."""
        with self._lock:
            tracked = trusted or self._has_slot(machine, channel)
            if tracked:
                self._slots.setdefault(machine, set()).add(channel)
                counts = self._counts.setdefault((machine, channel), {})
                counts[reason] = counts.get(reason, 0) + 1
        if tracked:
            self._record(machine, channel, reason, detail)
        else:
            self.refused(reason, f"{machine}/{channel}", detail)

    def refused(self, reason: str, name: str, detail: str = "") -> None:
        """A message refused before it reached a channel: counted by ``reason`` (a fixed set),
        ``name`` kept among a few examples, logged at most once a minute per reason."""
        name = name[:EXAMPLE_CHARS]
        with self._lock:
            entry = self._refused.setdefault(reason, [0, deque(maxlen=EXAMPLES)])
            entry[0] += 1
            if name not in entry[1]:
                entry[1].append(name)
        self._log.log(logging.WARNING, f"refused {reason}", "messages refused", extra={
            "event": "refused", "reason": reason, "example": name, "detail": detail[:200]})

    def _record(self, machine: str, channel: str, health: str, detail: str = "") -> None:
        with self._lock:
            previous = self._latest.get((machine, channel), ("no_data", 0.0))[0]
            self._latest[(machine, channel)] = (health, self._clock())
        if health != previous:
            level = logging.INFO if health == "ok" else logging.WARNING
            self._health_log.log(level, f"{machine}/{channel}", "sensor health changed", extra={
                "event": "sensor_health", "machine": machine, "channel": channel,
                "health": health, "previous": previous, "detail": detail})

    # -- reading ----------------------------------------------------------------------------------
    def counts(self, machine: str, channel: str) -> dict[str, int]:
        """Refusals of one channel by reason."""
        with self._lock:
            return dict(self._counts.get((machine, channel), {}))

    def refused_summary(self) -> dict[str, dict]:
        """``{reason: {"count", "examples"}}`` of messages that reached no channel."""
        with self._lock:
            return {r: {"count": n, "examples": list(ex)} for r, (n, ex) in
                    sorted(self._refused.items())}

    def totals(self) -> dict[str, int]:
        """Refusals of every channel by reason, and those that reached no channel."""
        with self._lock:
            out = {r: n for r, (n, _) in self._refused.items()}
            for counts in self._counts.values():
                for reason, n in counts.items():
                    out[reason] = out.get(reason, 0) + n
        return out

    def health(self, machine: str, channel: str) -> str:
        with self._lock:
            health, t = self._latest.get((machine, channel), ("no_data", -math.inf))
        if self.stale_s is not None and self._clock() - t > self.stale_s:
            return "no_data"
        return health

    def channels(self, machine: str) -> dict[str, dict]:
        """``{channel: {"sensor_health", "rejected"}}`` of every channel heard from."""
        with self._lock:
            names = sorted({c for m, c in (*self._counts, *self._latest) if m == machine})
        return {c: {"sensor_health": self.health(machine, c), "rejected": self.counts(machine, c)}
                for c in names}
