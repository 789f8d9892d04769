"""Sensor health: refusals per machine, channel and reason, and each channel's latest state."""

from __future__ import annotations

import logging
import math
import threading
import time

log = logging.getLogger(__name__)


class RejectionCounter:
    """Refusals per machine, channel and reason, and each channel's latest sensor health.

    Health is ``"ok"`` when the channel's latest message was accepted, the
    reason when it was refused, and ``"no_data"`` when nothing arrived for
    ``stale_s`` seconds (or ever). A change of health is logged once, so a
    sensor that breaks shows in the log without one line per refused frame.
    Thread-safe: MQTT handlers record while the agent reads.
    """

    def __init__(self, stale_s: float | None = 300.0, clock=time.time):
        self.stale_s, self._clock = stale_s, clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._latest: dict[tuple[str, str], tuple[str, float]] = {}
        self.bad_topics = 0  # messages on topics that name no valid machine and channel

    def accepted(self, machine: str, channel: str) -> None:
        self._record(machine, channel, "ok")

    def rejected(self, machine: str, channel: str, reason: str, detail: str = "") -> None:
        with self._lock:
            counts = self._counts.setdefault((machine, channel), {})
            counts[reason] = counts.get(reason, 0) + 1
        self._record(machine, channel, reason, detail)

    def rejected_topic(self, detail: str) -> None:
        with self._lock:
            self.bad_topics += 1
            first = self.bad_topics == 1
        if first:  # later ones are counted, not logged
            log.warning("message on an invalid topic", extra={"event": "bad_topic",
                                                                "detail": detail})

    def _record(self, machine: str, channel: str, health: str, detail: str = "") -> None:
        with self._lock:
            previous = self._latest.get((machine, channel), ("no_data", 0.0))[0]
            self._latest[(machine, channel)] = (health, self._clock())
        if health != previous:
            level = logging.INFO if health == "ok" else logging.WARNING
            log.log(level, "sensor health changed", extra={
                "event": "sensor_health", "machine": machine, "channel": channel,
                "health": health, "previous": previous, "detail": detail})

    def counts(self, machine: str, channel: str) -> dict[str, int]:
        """Refusals of one channel by reason."""
        with self._lock:
            return dict(self._counts.get((machine, channel), {}))

    def totals(self) -> dict[str, int]:
        """Refusals of every channel by reason, and ``bad_topic``."""
        out: dict[str, int] = {"bad_topic": self.bad_topics} if self.bad_topics else {}
        with self._lock:
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
