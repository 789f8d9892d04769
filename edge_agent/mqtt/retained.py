"""Retained status documents: only the newest per topic matters, and it must win.

A retained status is state, not an event, so it does not go through the outbox:
the board keeps the newest document per topic, hands at most one per topic to
paho at a time (an older one finishing later could otherwise be the one left
retained) and marks everything to be sent again after a reconnect.
Thread-safe: the agent sets documents, the MQTT worker sends them, paho's
acknowledgements clear them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Doc:
    payload: bytes
    dirty: bool = True  # the newest document has not been handed to paho yet
    mid: int | None = None  # the one in flight


class RetainedBoard:
    """The newest document per topic and what of it is in flight."""

    def __init__(self):
        self._lock = threading.Lock()
        self._docs: dict[str, _Doc] = {}
        self._mids: dict[int, str] = {}

    def set(self, topic: str, payload: bytes) -> None:
        with self._lock:
            doc = self._docs.setdefault(topic, _Doc(b""))
            doc.payload, doc.dirty = payload, True

    def resend_all(self) -> None:
        """After a reconnect: a retained message may have been lost with the session."""
        with self._lock:
            for doc in self._docs.values():
                doc.dirty = True

    def pump(self, publish: Callable[[str, bytes], int | None], first: str | None = None,
             only: bool = False) -> None:
        """Hand every dirty document without one in flight to ``publish`` (which returns
        the message id, or ``None`` when paho's queue is full), ``first`` before the others
        (``only``: ``first`` alone)."""
        with self._lock:
            topics = [first] if only else sorted(self._docs, key=lambda t: t != first)
            for topic in (t for t in topics if t in self._docs):
                doc = self._docs[topic]
                if not doc.dirty or doc.mid is not None:
                    continue  # one in flight per topic: a newer one follows its PUBACK
                mid = publish(topic, doc.payload)
                if mid is None:
                    return
                doc.dirty, doc.mid = False, mid
                self._mids[mid] = topic

    def acked(self, mid: int) -> str | None:
        """The topic whose document message ``mid`` carried (now acknowledged), if any."""
        with self._lock:
            topic = self._mids.pop(mid, None)
            if topic is not None:
                self._docs[topic].mid = None
            return topic

    def busy(self, topic: str | None = None) -> bool:
        """Whether ``topic`` (any topic when ``None``) still has a document to deliver."""
        with self._lock:
            docs = self._docs.values() if topic is None else [self._docs.get(topic)]
            return any(d is not None and (d.dirty or d.mid is not None) for d in docs)
