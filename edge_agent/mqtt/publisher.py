"""MQTT publishing (paho-mqtt 2.x) behind a durable outbox: alerts are never lost.

Delivery of alerts (at least once)
----------------------------------
:meth:`Publisher.publish_alert` commits the alert to the :class:`~edge_agent.mqtt.outbox.Outbox`
and returns; a worker thread hands queued messages to paho in sequence order,
at most ``inflight`` unacknowledged at a time, and deletes each on its PUBACK.
paho keeps QoS 1 messages in memory only; it re-sends the unacknowledged ones
on reconnect (so the window survives an outage in order), and the outbox covers
a crash. A subscriber may see an alert twice; it drops a repeated ``id``.

Refusals, oversized messages and a full disk: see :mod:`edge_agent.mqtt.sender`,
which owns the in-order outbox side of sending. On MQTT 3.1.1 the broker
cannot refuse a publish: Mosquitto acknowledges and drops what the ACL denies,
so prefer MQTT 5.

Status documents
----------------
:meth:`Publisher.publish_status` does not use the outbox: a retained status is
state, not an event, and only the newest matters. The publisher keeps the
newest document per topic, has at most one of them in flight per topic (so they
cannot overtake each other) and publishes the newest again after every
reconnect. A document larger than ``status_max_bytes`` or than the broker's
Maximum Packet Size (MQTT 5 CONNACK) is never sent (counted as
``status_too_large``): the broker would disconnect the agent for it, and alerts
would wait behind it. Alerts go to paho before statuses at every turn.

The agent status has a retained Last Will ``offline`` (``reason:
connection_lost``); each connection publishes ``online`` first, then subscribes
again, then drains the outbox; :meth:`Publisher.close` publishes ``offline``
(``reason: shutdown``, or ``crashed`` with the error) before disconnecting.
Disconnects are counted by reason; a *session taken over* (MQTT 5 reason 0x8E:
another client connected with the agent's client id) is logged as an error and
counted as ``takeovers``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

from edge_agent import __version__
from edge_agent.errors import StorageError
from edge_agent.jsonl import dumps
from edge_agent.logs import RateLimitedLog
from edge_agent.mqtt.client import QUEUE_FULL, json_properties, make_client, reason_name
from edge_agent.mqtt.outbox import PRIORITY, Outbox
from edge_agent.mqtt.retained import RetainedBoard
from edge_agent.mqtt.sender import OutboxSender, publish_size
from edge_agent.mqtt.subscriptions import Subscriptions
from edge_agent.mqtt.topics import Topics
from edge_agent.runtime.config import MqttSettings
from edge_agent.schema import agent_status_doc

log = logging.getLogger(__name__)

#: MQTT 5 DISCONNECT reason: another client connected with this client id.
SESSION_TAKEN_OVER = 0x8E


class Publisher:
    """Publishes alerts through the outbox, retained status directly; subscribes for ingestion.

    Parameters
    ----------
    settings : MqttSettings
    outbox : Outbox
        Owned by the caller (closed by it, after :meth:`close`).
    topics : Topics
    agent_id : str
    machines : iterable of str
        Listed in the agent status (and its Last Will).
    clock : callable
        Wall clock for status documents.
    """

    def __init__(self, settings: MqttSettings, outbox: Outbox, topics: Topics, agent_id: str,
                 *, machines: Iterable[str] = (), clock: Callable[[], float] = time.time):
        self.settings, self.outbox, self.topics, self.agent_id = settings, outbox, topics, agent_id
        self.machines = sorted(set(machines))
        self._clock = clock
        self.started_s = clock()
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # counters
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._statuses = RetainedBoard()
        self._counters = {"sent": 0, "acked": 0, "reconnects": 0, "connects": 0,
                          "dead_lettered": 0, "handler_errors": 0, "retained_ignored": 0,
                          "takeovers": 0, "status_too_large": 0, "refused": {},
                          "connect_refused": {}, "disconnects": {}}
        self._last_problem = ("", 0.0)
        self._limited = RateLimitedLog(log)
        self.max_packet: int | None = None  # the broker's Maximum Packet Size, from CONNACK
        self._agent_parts: dict = {}  # the caller's parts of the agent status, kept for resends
        will = self._agent_status("offline", reason="connection_lost", with_ts=False)
        self.status_topic = topics.agent_status(agent_id)
        self._client_id = settings.client_id or f"edge-agent-{agent_id}"
        self._client = make_client(settings, self._client_id,
                                   will=(self.status_topic, dumps(will).encode()))
        c = self._client
        c.on_connect, c.on_disconnect, c.on_connect_fail = (self._on_connect, self._on_disconnect,
                                                            self._on_connect_fail)
        c.on_publish, c.on_subscribe = self._on_publish, self._on_subscribe
        self._sender = OutboxSender(settings, outbox, c, bump=self._bump, refused=self._refused)
        self._subs = Subscriptions(c, self._bump)
        self._worker = threading.Thread(target=self._run, name="edge-agent-mqtt", daemon=True)

    # -- public API ----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start draining the outbox."""
        # Clean start: the outbox, not a broker session, carries what was not delivered, and a
        # session would pile up raw frames for an agent that is down.
        kwargs = {"clean_start": True} if self.settings.protocol == "5" else {}
        self._client.connect_async(self.settings.host, self.settings.broker_port,
                                   keepalive=self.settings.keepalive_s, **kwargs)
        self._worker.start()
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish_alert(self, alert: dict, state: tuple[str, int, str] | None = None) -> int:
        """Queue an alert durably (committed on return); returns its outbox sequence number.

        ``state`` (machine, alerts raised, JSON) is committed in the same transaction
        (see :meth:`~edge_agent.mqtt.outbox.Outbox.put`).
        """
        seq = self.outbox.put(self.topics.alerts(alert["machine"]), dumps(alert).encode(), qos=1,
                              retain=False, msg_id=alert.get("id"),
                              priority=PRIORITY.get(alert.get("severity"), 0), state=state)
        self._events.put(("kick",))
        return seq

    def enqueue(self, topic: str, payload: bytes, *, qos: int = 1, priority: int = 0,
                msg_id: str | None = None) -> int:
        """Queue any JSON message (e.g. features) through the outbox."""
        seq = self.outbox.put(topic, payload, qos=qos, msg_id=msg_id, priority=priority)
        self._events.put(("kick",))
        return seq

    def publish_unrecorded(self, topic: str, payload: bytes, timeout_s: float = 5.0) -> bool:
        """Publish without the outbox (QoS 1, held in the client's memory only): for an alert
        the disk would not take when the agent is stopping. ``True`` when the broker
        acknowledged it within ``timeout_s``; ``False`` when not connected or not acknowledged."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):  # not queued: the connection went meanwhile
            return False
        return info.is_published()

    def publish_status(self, topic: str, doc: dict) -> None:
        """Publish ``doc`` retained on ``topic`` (QoS 1), now or as soon as connected.

        A document over :attr:`status_limit` is not sent (counted, logged at most once a
        minute): the previous one stays retained.
        """
        self.publish_retained(topic, dumps(doc).encode())

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """:meth:`publish_status` of ready bytes (a signed document must keep its exact
        numbers, which :func:`~edge_agent.jsonl.dumps` would round)."""
        limit = self.status_limit
        if publish_size(topic, payload) > limit:
            self._bump("status_too_large")
            self._limited.log(logging.ERROR, f"status_too_large {topic}", "status document "
                              "too large; not published", extra={
                                  "event": "status_too_large", "topic": topic,
                                  "bytes": len(payload), "limit": limit})
            return
        self._statuses.set(topic, payload)
        self._events.put(("kick",))

    @property
    def status_limit(self) -> int:
        """Largest status PUBLISH: ``status_max_bytes``, and below the broker's packet limit."""
        limit = self.settings.status_max_bytes
        return min(limit, self.max_packet) if self.max_packet else limit

    def publish_agent_status(self, lag_s: float | None = None,
                             processing: dict | None = None, **parts) -> None:
        """Publish the retained ``online`` agent status with current outbox and MQTT counters
        (and the caller's processing counters and other ``parts``: storage, rejected)."""
        self._agent_parts = {"lag_s": lag_s, "processing": processing, **parts}
        self.publish_status(self.status_topic, self._agent_status("online", **self._agent_parts))

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None],
                  qos: int = 1, *, retained: bool = False) -> None:
        """Call ``handler(topic, payload)`` (on paho's network thread: keep it quick)
        for each message matching ``topic_filter``; survives reconnects.

        Messages the broker delivers from its retained store are ignored (counted
        as ``retained_ignored``) unless ``retained``: a retained frame is stale, and
        a retained re-baseline command would run again at every reconnect.
        """
        self._subs.add(topic_filter, handler, qos, retained)
        self._events.put(("subscribe",))  # the worker subscribes: once per connection

    @property
    def subscribed(self) -> bool:
        """Connected, and the broker has acknowledged every subscription on this connection."""
        return self.connected and self._subs.all_acked()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until :attr:`subscribed`; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.subscribed:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def counters(self) -> dict:
        """sent, acked, refused (by reason), dead_lettered, reconnects, … (a copy)."""
        with self._lock:
            return {k: dict(v) if isinstance(v, dict) else v for k, v in self._counters.items()}

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty and every status is acknowledged; ``False`` on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self._idle() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._idle()

    def _idle(self) -> bool:
        return not self._statuses.busy() and not self.outbox.depth

    def close(self, drain_s: float = 2.0, timeout_s: float = 5.0, *,
              error: str | None = None) -> None:
        """Give the outbox ``drain_s`` to empty, publish ``offline`` (retained), disconnect.

        ``offline`` says ``reason: shutdown``, or ``crashed`` with ``error`` when given.
        What is still queued stays in the outbox for the next start.
        """
        if self._stopped.is_set():
            return
        if self.connected:
            self.wait_idle(drain_s)
            parts = dict(self._agent_parts)
            if error is not None:
                parts["error"] = error[:500]
            self.publish_status(self.status_topic, self._agent_status(
                "offline", reason="crashed" if error is not None else "shutdown", **parts))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.connected and self._statuses.busy(self.status_topic):
                time.sleep(0.02)
        self._stopped.set()
        self._events.put(("stop",))
        if self._worker.is_alive():
            self._worker.join(timeout_s)
        self._client.disconnect()  # a clean DISCONNECT: the broker does not send the Last Will
        self._client.loop_stop()

    # -- paho callbacks (network thread: no blocking, no SQLite) --------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            name = reason_name(reason_code)
            with self._lock:
                refused = self._counters["connect_refused"]
                refused[name] = refused.get(name, 0) + 1
            self._problem(f"broker refused the connection: {reason_code.getName()}")
            return
        maximum = getattr(properties, "MaximumPacketSize", None) if properties else None
        self.max_packet = self._sender.max_packet = int(maximum) if maximum else None
        with self._lock:
            self._counters["connects"] += 1
            self._counters["reconnects"] = self._counters["connects"] - 1
        self._connected.set()
        log.info("connected to MQTT broker", extra={
            "event": "mqtt_connected", "host": self.settings.host,
            "port": self.settings.broker_port, "protocol": self.settings.protocol})
        self._events.put(("connected",))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self._connected.is_set()
        self._connected.clear()
        self._subs.lost()
        if not was or self._stopped.is_set():
            return
        name = reason_name(reason_code)
        with self._lock:
            counts = self._counters["disconnects"]
            if name in counts or len(counts) < 32:  # reason names: a small, fixed set
                counts[name] = counts.get(name, 0) + 1
            if reason_code.value == SESSION_TAKEN_OVER:
                self._counters["takeovers"] += 1
        if reason_code.value == SESSION_TAKEN_OVER:
            self._limited.log(logging.ERROR, "takeover", "MQTT session taken over: another "
                              "client connected with this agent's client id; reconnecting",
                              extra={"event": "mqtt_session_taken_over",
                                     "client_id": self._client_id})
        else:
            self._limited.log(logging.WARNING, f"disconnect {name}", "MQTT connection lost; "
                              "reconnecting with backoff",
                              extra={"event": "mqtt_disconnected", "reason": str(reason_code)})

    def _on_connect_fail(self, client, userdata):
        self._problem(f"cannot connect to MQTT broker {self.settings.host}:"
                      f"{self.settings.broker_port}")

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._events.put(("ack", mid, reason_code.value, reason_name(reason_code)))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subs.on_suback(mid, reason_codes)

    # -- worker thread: owns the outbox side of sending ----------------------------------------
    def _run(self) -> None:
        next_expiry = time.monotonic() + 60.0
        while True:
            wait = self._sender.next_wait_s()
            try:
                events = [self._events.get(timeout=wait)]
                while len(events) < 1024:  # take what else is waiting: one fsync for many acks
                    events.append(self._events.get_nowait())
            except queue.Empty:
                pass
            try:
                if any(e[0] == "stop" for e in events):
                    return
                if any(e[0] == "connected" for e in events):
                    self._on_connected()
                elif any(e[0] == "subscribe" for e in events):
                    self._subscribe_new()
                self._handle_acks([e[1:] for e in events if e[0] == "ack"])
                if time.monotonic() > next_expiry:
                    next_expiry = time.monotonic() + 60.0
                    try:
                        self.outbox.expire()
                    except StorageError:  # a full disk: expiry waits, sending goes on
                        pass
                self._pump()
            except Exception:  # keep the worker alive; the outbox still holds everything
                log.exception("MQTT worker error", extra={"event": "mqtt_worker_error"})
                time.sleep(0.5)

    def _on_connected(self) -> None:
        self._sender.on_connected()
        self.publish_agent_status(**self._agent_parts)  # online first: it
        self._statuses.resend_all()                                     # replaces the Last Will
        self._pump_statuses(only=self.status_topic)
        self._subscribe_new()

    def _subscribe_new(self) -> None:
        with self._lock:
            connection = self._counters["connects"]
        self._subs.subscribe_new(connection, self.connected)

    def _pump(self) -> None:
        if not self.connected:
            return
        self._sender.pump()  # alerts first: a status never holds one back
        self._pump_statuses()

    def _pump_statuses(self, only: str | None = None) -> None:
        def publish(topic, payload):
            if not self.connected:
                return None
            info = self._client.publish(topic, payload, 1, True, properties=json_properties(self.settings.protocol))
            return None if info.rc == QUEUE_FULL else info.mid

        self._statuses.pump(publish, first=only, only=only is not None)

    def _handle_acks(self, acks: list[tuple[int, int, str]]) -> None:
        rows = []
        for mid, code, name in acks:
            topic = self._statuses.acked(mid)
            if topic is None:
                rows.append((mid, code, name))
            elif code >= 0x80:
                self._refused(name)
                log.error("broker refused a status message", extra={
                    "event": "status_refused", "topic": topic, "reason": name})
        self._sender.handle_acks(rows)

    # -- helpers -------------------------------------------------------------------------------
    def _agent_status(self, status: str, *, reason: str | None = None, with_ts: bool = True,
                      **parts) -> dict:
        counters = self.counters() if with_ts else None
        mqtt = None if counters is None else {
            "protocol": self.settings.protocol, "connected": self.connected,
            "max_packet_bytes": self.max_packet,
            **{k: counters[k] for k in ("reconnects", "sent", "acked", "refused",
                                            "retained_ignored", "disconnects", "takeovers",
                                            "status_too_large")}}
        return agent_status_doc(self.agent_id, status, __version__, reason=reason,
                                ts_s=self._clock() if with_ts else None, started_s=self.started_s,
                                machines=self.machines,
                                outbox=self._outbox_status() if with_ts else None, mqtt=mqtt,
                                **parts)

    def _outbox_status(self) -> dict:
        try:
            return self.outbox.status()
        except Exception:  # a damaged or unreadable database must not stop the status
            return {"depth": self.outbox.depth, "oldest_age_s": None, "dropped": {}}

    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _refused(self, name: str) -> None:
        with self._lock:
            refused = self._counters["refused"]
            refused[name] = refused.get(name, 0) + 1

    def _problem(self, message: str) -> None:
        """Log a connection problem when it changes, else at most once a minute."""
        last, when = self._last_problem
        if message != last or time.monotonic() - when > 60.0:
            self._last_problem = (message, time.monotonic())
            log.error(message, extra={"event": "mqtt_connect_failed"})
