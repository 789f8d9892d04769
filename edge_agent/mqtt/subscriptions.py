"""Subscriptions that survive reconnects, and the handlers behind them.

The agent connects with a clean start (the outbox, not a broker session,
carries what was not delivered), so every new connection subscribes again.
Thread-safe: the worker subscribes, paho's network thread acknowledges and
delivers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Subscriptions:
    """Topic filters with their handlers; ``bump(name)`` counts into the publisher's counters."""

    def __init__(self, client, bump: Callable[[str], None]):
        self._client, self._bump = client, bump
        self._lock = threading.Lock()
        self.filters: dict[str, tuple[Callable[[str, bytes], None], int]] = {}
        self._live: set[str] = set()  # subscribed on this connection
        self._live_connection = 0  # the connection (count) they belong to
        self._mids: dict[int, str] = {}
        self._acked: set[str] = set()  # SUBACKed on this connection
        self._retained_logged = False

    def add(self, topic_filter: str, handler: Callable[[str, bytes], None], qos: int,
            retained: bool) -> None:
        """See :meth:`edge_agent.mqtt.publisher.Publisher.subscribe`."""
        def on_message(client, userdata, message):
            if message.retain and not retained:
                self._bump("retained_ignored")
                if not self._retained_logged:
                    self._retained_logged = True
                    log.warning("retained message ignored (ask its publisher not to retain)",
                                extra={"event": "retained_ignored", "topic": message.topic})
                return
            try:
                handler(message.topic, message.payload)
            except Exception:  # one bad message must not stop the network thread
                self._bump("handler_errors")
                log.exception("MQTT message handler failed", extra={"event": "handler_error",
                                                                    "topic": message.topic})

        with self._lock:
            self.filters[topic_filter] = (handler, qos)
        # A shared subscription ($share/<group>/<filter>) delivers topics matching <filter>.
        match = topic_filter.split("/", 2)[2] if topic_filter.startswith("$share/") else topic_filter
        self._client.message_callback_add(match, on_message)

    def subscribe_new(self, connection: int, connected: bool) -> None:
        """Subscribe what this connection (``connection``: its count) has not yet."""
        with self._lock:  # held across subscribe(): its SUBACK cannot overtake the mid
            if self._live_connection != connection:
                # a new connection with a clean start: the broker forgot every subscription
                self._live_connection, self._live = connection, set()
            for topic_filter, (_, qos) in self.filters.items():
                if connected and topic_filter not in self._live:
                    _, mid = self._client.subscribe(topic_filter, qos)
                    self._mids[mid] = topic_filter
                    self._live.add(topic_filter)

    def on_suback(self, mid: int, reason_codes) -> None:
        with self._lock:
            topic_filter = self._mids.pop(mid, None)
            refused = [c.getName() for c in reason_codes if c.is_failure]
            if topic_filter is not None and not refused:
                self._acked.add(topic_filter)
            complete = topic_filter is not None and set(self.filters) <= self._acked
        if complete:
            log.info("subscribed", extra={"event": "mqtt_subscribed",
                                          "filters": sorted(self.filters)})
        if refused:
            log.error("broker refused a subscription", extra={
                "event": "subscribe_refused", "topic": topic_filter, "reason": refused[0]})

    def lost(self) -> None:
        with self._lock:
            self._acked.clear()

    def all_acked(self) -> bool:
        with self._lock:
            return set(self.filters) <= self._acked
