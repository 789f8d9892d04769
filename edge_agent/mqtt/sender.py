"""The in-order outbox sender: hands queued rows to paho, deletes them on PUBACK.

Runs on the publisher's worker thread only (no locking of its own). At most
``inflight`` rows are unacknowledged at a time, handed in sequence order.

Refusals (MQTT 5 PUBACK reason >= 0x80)
---------------------------------------
*Transient* (0x80 unspecified, 0x83 implementation specific, 0x91 packet id
in use, 0x97 quota exceeded): the message stays queued and is re-sent after a
backoff (later messages of its topic wait, other topics go on); after
``max_refusals`` refusals it is treated as permanent. *Permanent* (0x87 not
authorized, 0x90 topic invalid, 0x99 payload format invalid, anything else):
the message moves to the outbox's dead-letter table at once. A message larger
than the broker's Maximum Packet Size (CONNACK) is dead-lettered before it is
sent: the broker would disconnect the agent for it at every attempt.

Storage
-------
When the outbox cannot write (disk full), a delivered row cannot be deleted:
it is remembered as delivered (never handed to paho again) and its deletion is
retried on the next turn; a failed attempt counter is only diagnostics.
"""

from __future__ import annotations

import logging
import time

from edge_agent.errors import StorageError
from edge_agent.logs import RateLimitedLog
from edge_agent.mqtt.client import QUEUE_FULL, json_properties

log = logging.getLogger(__name__)

TRANSIENT_REFUSALS = frozenset({0x80, 0x83, 0x91, 0x97})
#: Bytes of a PUBLISH packet beyond topic and payload (fixed header, packet id, properties).
PUBLISH_OVERHEAD = 64


def publish_size(topic: str, payload: bytes) -> int:
    """Upper bound of the PUBLISH packet that carries ``payload`` on ``topic``."""
    return len(topic.encode()) + len(payload) + PUBLISH_OVERHEAD


class OutboxSender:
    """The outbox side of a :class:`~edge_agent.mqtt.publisher.Publisher` (see module docstring).

    ``bump(name, n)`` and ``refused(name)`` count into the publisher's counters.
    """

    def __init__(self, settings, outbox, client, *, bump, refused):
        self.settings, self.outbox, self._client = settings, outbox, client
        self._bump, self._refused = bump, refused
        self.inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._retry: dict[int, tuple[float, int]] = {}  # seq -> (not before, refusals)
        self._barrier: set[int] = set()  # mids paho re-sends after a reconnect
        self._barrier_until = 0.0
        self._delivered: set[int] = set()  # acknowledged, not yet deleted (storage failed)
        #: refused for good, not yet moved to the dead letters (storage failed): seq -> reason
        self._dead: dict[int, str] = {}
        self.max_packet: int | None = None  # the broker's Maximum Packet Size (CONNACK)
        self._log = RateLimitedLog(log)

    def next_wait_s(self) -> float:
        """How long the worker may sleep before a retry falls due."""
        return min([max(t - time.monotonic(), 0.0) for t, _ in self._retry.values()] + [1.0])

    def on_connected(self) -> None:
        # paho re-sends the messages that were in flight when the connection dropped, right
        # after its on_connect; newer rows wait for their PUBACKs so they cannot overtake them.
        self._barrier = set(self.inflight)
        self._barrier_until = time.monotonic() + max(self.settings.keepalive_s, 5)

    def pump(self) -> None:
        """Hand queued rows to paho, in order, up to the in-flight window."""
        self._delete_delivered()
        for seq, reason in list(self._dead.items()):
            self._dead_letter(seq, reason)
        if self._barrier:
            self._barrier &= self.inflight.keys()
            if self._barrier and time.monotonic() < self._barrier_until:
                return
            if self._barrier:  # never re-sent (should not happen): send those rows again
                log.warning("in-flight messages not re-sent after reconnect; sending them again",
                            extra={"event": "mqtt_resend", "count": len(self._barrier)})
                for mid in self._barrier:
                    self.inflight.pop(mid, None)
                self._barrier.clear()
        room = self.settings.inflight - len(self.inflight)
        if room <= 0:
            return
        sending = set(self.inflight.values()) | self._delivered | set(self._dead)
        blocked, now = set(), time.monotonic()
        handed: list[int] = []
        after, full = 0, False
        while len(handed) < room and not full:
            # Rows in flight or waiting for a retry come first; a waiting row holds back the
            # rest of its topic (per-topic order), so later pages leave those topics out.
            rows = self.outbox.pending(limit=len(sending) + len(self._retry) + room, after=after,
                                       exclude_topics=blocked)
            if not rows:
                break
            for msg in rows:
                after = msg.seq
                if msg.seq in sending or msg.topic in blocked:
                    continue
                if msg.seq in self._retry and self._retry[msg.seq][0] > now:
                    blocked.add(msg.topic)
                    continue
                if self.max_packet and publish_size(msg.topic, msg.payload) > self.max_packet:
                    self._dead_letter(msg.seq, f"larger than the broker's maximum packet size "
                                               f"({self.max_packet} bytes)")
                    continue
                info = self._client.publish(msg.topic, msg.payload, msg.qos, msg.retain,
                                            properties=json_properties(self.settings.protocol))
                if info.rc == QUEUE_FULL:
                    full = True
                    break
                self.inflight[info.mid] = msg.seq
                handed.append(msg.seq)
                if len(handed) >= room:
                    break
        if handed:
            self._bump("sent", len(handed))
            try:
                self.outbox.record_attempts(handed)
            except StorageError as exc:  # diagnostics only: sending goes on
                self._log.log(logging.WARNING, "outbox_storage", "outbox cannot count send "
                              "attempts", extra={"event": "storage_full", "detail": str(exc)})

    def handle_acks(self, acks: list[tuple[int, int, str]]) -> None:
        """PUBACKs of outbox rows: delete the delivered ones, handle refusals."""
        delivered = []
        for mid, code, name in acks:
            seq = self._handle_ack(mid, code, name)
            if seq is not None:
                delivered.append(seq)
        if delivered:
            self._bump("acked", len(delivered))  # first: an empty outbox implies the count
            self._delivered.update(delivered)
            self._delete_delivered()

    def owns(self, mid: int) -> bool:
        return mid in self.inflight

    def _delete_delivered(self) -> None:
        if not self._delivered:
            return
        try:
            self.outbox.ack_many(sorted(self._delivered))
        except StorageError as exc:  # kept as delivered: never sent again, deleted later
            self._log.log(logging.WARNING, "outbox_storage", "outbox cannot delete delivered "
                          "messages; retrying", extra={"event": "storage_full",
                                                       "detail": str(exc),
                                                       "waiting": len(self._delivered)})
            return
        self._delivered.clear()

    def _handle_ack(self, mid: int, code: int, name: str) -> int | None:
        seq = self.inflight.pop(mid, None)
        if seq is None:
            return None
        if code < 0x80:
            self._retry.pop(seq, None)
            return seq
        self._refused(name)
        refusals = self._retry.get(seq, (0.0, 0))[1] + 1
        if code in TRANSIENT_REFUSALS and refusals < self.settings.max_refusals:
            delay = min(self.settings.reconnect_min_s * 2 ** refusals, self.settings.reconnect_max_s)
            self._retry[seq] = (time.monotonic() + delay, refusals)
            log.warning("broker refused a message; retrying later", extra={
                "event": "publish_refused", "seq": seq, "reason": name, "retry_in_s": delay})
        else:
            self._retry.pop(seq, None)
            self._dead_letter(seq, f"{name} (0x{code:02x})")
        return None

    def _dead_letter(self, seq: int, reason: str) -> None:
        """Move a refused row to the dead letters; when the disk will not take it, remember it
        (never sent again meanwhile) and try at the next pump, so the PUBACKs handled after it
        in the same batch are not lost."""
        try:
            self.outbox.dead_letter(seq, reason)
        except StorageError as exc:
            self._dead[seq] = reason
            self._log.log(logging.WARNING, "outbox_storage", "outbox cannot keep a refused "
                          "message as a dead letter; retrying", extra={
                              "event": "storage_full", "detail": str(exc), "seq": seq})
            return
        self._dead.pop(seq, None)
        self._bump("dead_lettered")
