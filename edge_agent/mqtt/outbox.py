"""The durable outbox: every alert is on disk before any attempt to send it.

One SQLite database in WAL mode with ``synchronous=FULL``: :meth:`Outbox.put`
returns only after its transaction is committed and the WAL is fsynced, so a
message survives a process crash and a power loss from that moment on. A
message leaves the outbox only when the broker acknowledges it
(:meth:`Outbox.ack` on PUBACK) or by the policy below; every row has a
sequence number that never repeats, and :meth:`Outbox.pending` returns rows in
that order.

Policy (bounds)
---------------
*Count*: at most ``max_messages`` rows. When a put makes it one too many, the
row with the **lowest priority** is dropped, the **oldest** first: alarms
(priority 2) outlive warnings (1), which outlive everything else (0:
back-to-normal alerts, features). The new message itself can be the one
dropped when everything queued ranks above it.

*Age*: rows older than ``max_age_s`` are dropped (reason ``expired``) at each
put and each :meth:`Outbox.expire`. A row stamped before 2020 is never
expired by age: the gateway's clock was not set when it was queued (no RTC
before NTP), and a clock jumping forward must not wipe the queue. The count
bound still holds for such rows.

*Refusals*: a message the broker refuses for good is moved to a dead-letter
table (kept for inspection, :meth:`Outbox.requeue_dead_letters` puts it back),
bounded by ``max_dead_letters``, the oldest dropped first.

Every drop is logged (one warning per message, with its id and topic) and
counted; counters live in the same database, updated in the same transaction
as the drop, so they survive restarts too. One process at a time: a lock file
beside the database refuses a second agent on the same outbox.

Alert state
-----------
``put(..., state=(machine, raised, json))`` stores the machine's alert-state
machine after the alert in the ``alert_state`` table, in the same transaction
as the alert: after a crash the agent resumes the episode from there
(:meth:`Outbox.alert_states`) instead of raising it again under a new id.

Storage
-------
Any failure to write (disk full, file size limit, read-only file system, I/O
error) raises :class:`~edge_agent.errors.StorageError` after the transaction
is rolled back: nothing half-written stays, and the caller retries. Files are
created mode 0600 whatever the umask (SQLite gives the WAL and shared-memory
files the database's mode).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import StorageError, UsageError
from edge_agent.mqtt.transactions import OutboxLocked, Transaction, lock_file

__all__ = ["DROP_REASONS", "PRIORITY", "Outbox", "OutboxLocked", "OutboxMessage"]

log = logging.getLogger(__name__)

PRIORITY = {"alarm": 2, "warning": 1}  # any other severity: 0
DROP_REASONS = ("overflow", "expired", "dead_letter_overflow")
#: Rows queued before this (2020-01-01 UTC) carry an unset clock: never expired by age.
PLAUSIBLE_EPOCH_S = 1577836800.0
_LOG_EACH = 20  # drops logged one by one per call; the rest in one summary line

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)), retain INTEGER NOT NULL,
    msg_id TEXT, priority INTEGER NOT NULL, enqueued_s REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_msg_id ON outbox (msg_id) WHERE msg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_eviction ON outbox (priority, seq);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, msg_id TEXT, priority INTEGER NOT NULL, enqueued_s REAL NOT NULL,
    attempts INTEGER NOT NULL, reason TEXT NOT NULL, dead_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alert_state (
    machine TEXT PRIMARY KEY, raised INTEGER NOT NULL, state TEXT NOT NULL,
    updated_s REAL NOT NULL);
"""
_COLUMNS = "seq, topic, payload, qos, retain, msg_id, priority, enqueued_s, attempts"


@dataclass(frozen=True)
class OutboxMessage:
    """One queued message (a row of the outbox)."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    msg_id: str | None
    priority: int
    enqueued_s: float
    attempts: int

    @classmethod
    def _from_row(cls, row) -> OutboxMessage:
        seq, topic, payload, qos, retain, msg_id, priority, enqueued_s, attempts = row[:9]
        return cls(seq, topic, bytes(payload), qos, bool(retain), msg_id, priority, enqueued_s,
                   attempts)


class Outbox:
    """Durable, bounded, thread-safe message queue on SQLite (see module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        Database file; created (with its directory) if missing.
    max_messages : int
        Bound on queued rows (policy: lowest priority, oldest first).
    max_age_s : float or None
        Rows older than this are dropped as ``expired``; ``None`` keeps them.
    max_dead_letters : int
        Bound on the dead-letter table.
    clock : callable
        Wall clock in Unix seconds (tests pass a fake one).
    """

    def __init__(self, path, *, max_messages: int = 10_000, max_age_s: float | None = 7 * 86400.0,
                 max_dead_letters: int = 1000, clock: Callable[[], float] = time.time):
        if max_messages < 1 or max_dead_letters < 0 or (max_age_s is not None and max_age_s <= 0):
            raise ValueError("outbox bounds must be positive")
        self.path = Path(path)
        self.max_messages, self.max_age_s = int(max_messages), max_age_s
        self.max_dead_letters = int(max_dead_letters)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)  # whatever the umask; SQLite copies it to -wal and -shm
            self._lockfile = lock_file(self.path)
        except OSError as exc:
            raise StorageError(self.path, exc.strerror or str(exc)) from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise UsageError(f"outbox {self.path}: the file system does not support SQLite "
                                 f"WAL mode (got {mode!r}); put the state directory on a local disk")
            self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            self._db.executescript(_SCHEMA)
            self._depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error as exc:
            os.close(self._lockfile)
            raise StorageError(self.path, str(exc)) from None
        except BaseException:
            os.close(self._lockfile)
            raise

    # -- writing -------------------------------------------------------------------------------
    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
            msg_id: str | None = None, priority: int = 0,
            state: tuple[str, int, str] | None = None) -> int:
        """Queue a message durably; returns its sequence number once committed.

        A ``msg_id`` already queued is not queued twice (the existing row's
        sequence number is returned, counted as ``duplicate``). ``state`` is
        ``(machine, alerts raised, JSON)``, stored in the same transaction.
        """
        now = self._clock()
        with self._lock, self._transaction():
            if state is not None:
                machine, raised, doc = state
                self._db.execute(
                    "INSERT INTO alert_state (machine, raised, state, updated_s) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (machine) DO UPDATE SET raised = excluded.raised, "
                    "state = excluded.state, updated_s = excluded.updated_s",
                    (machine, int(raised), doc, now))
            if msg_id is not None:
                row = self._db.execute("SELECT seq FROM outbox WHERE msg_id = ?", (msg_id,)).fetchone()
                if row is not None:
                    self._count("duplicate")
                    return row[0]
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, msg_id, priority, enqueued_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (topic, sqlite3.Binary(bytes(payload)), int(qos), int(bool(retain)), msg_id,
                 int(priority), now))
            self._depth += 1
            self._count("enqueued")
            self._expire(now)
            excess = self._depth - self.max_messages
            if excess > 0:
                victims = self._db.execute(f"SELECT {_COLUMNS} FROM outbox ORDER BY priority, seq "
                                           f"LIMIT ?", (excess,)).fetchall()
                self._drop([OutboxMessage._from_row(r) for r in victims], "overflow")
            return cur.lastrowid

    def ack(self, seq: int) -> bool:
        """Delete a delivered message; ``False`` if it was no longer queued."""
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete delivered messages in one transaction (one fsync); returns how many were queued."""
        seqs = [(s,) for s in seqs]
        if not seqs:
            return 0
        with self._lock, self._transaction():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", seqs)
            gone = self._db.total_changes - before
            self._depth -= gone
            if gone:
                self._count("acked", gone)
            return gone

    def record_attempts(self, seqs: Iterable[int]) -> None:
        """Count one more send attempt of each message (for diagnostics and the refusal rule)."""
        seqs = [(s,) for s in seqs]
        if seqs:
            with self._lock, self._transaction():
                self._db.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", seqs)

    def dead_letter(self, seq: int, reason: str) -> bool:
        """Move a refused message to the dead-letter table (logged as an error)."""
        now = self._clock()
        with self._lock, self._transaction():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return False
            self._db.execute(f"INSERT INTO dead_letter ({_COLUMNS}, reason, dead_s) "
                             f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, reason, now))
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._depth -= 1
            self._count("dead_lettered")
            msg = OutboxMessage._from_row(row)
            log.error("outbox: broker refused message for good, kept as dead letter",
                      extra={"event": "outbox_dead_letter", "seq": seq, "msg_id": msg.msg_id,
                             "topic": msg.topic, "reason": reason})
            excess = self._dead_count() - self.max_dead_letters
            if excess > 0:
                old = self._db.execute(f"SELECT {_COLUMNS} FROM dead_letter ORDER BY seq LIMIT ?",
                                       (excess,)).fetchall()
                self._drop([OutboxMessage._from_row(r) for r in old], "dead_letter_overflow",
                           table="dead_letter")
            return True

    def requeue_dead_letters(self) -> int:
        """Put every dead letter back at the end of the queue (e.g. after an ACL fix)."""
        now = self._clock()  # requeued now: the age bound restarts
        with self._lock:
            with self._transaction():
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM dead_letter ORDER BY seq").fetchall()
                added = 0
                for r in rows:  # a msg_id queued again meanwhile is not queued twice
                    added += self._db.execute(
                        "INSERT OR IGNORE INTO outbox (topic, payload, qos, retain, msg_id, "
                        "priority, enqueued_s) VALUES (?, ?, ?, ?, ?, ?, ?)", (*r[1:7], now)).rowcount
                self._db.execute("DELETE FROM dead_letter")
                self._depth += added
                self._count("requeued", added)
        if rows:  # the count bound applies again from the next put on
            log.warning("outbox: dead letters requeued", extra={"event": "outbox_requeue",
                                                                 "count": added})
        return added

    def expire(self) -> int:
        """Drop expired rows now; returns how many."""
        with self._lock, self._transaction():
            return self._expire(self._clock())

    # -- reading -------------------------------------------------------------------------------
    def alert_states(self) -> dict[str, tuple[int, str]]:
        """``{machine: (alerts raised, state JSON)}`` as the last committed alerts left them."""
        with self._lock:
            return {m: (raised, doc) for m, raised, doc in
                    self._db.execute("SELECT machine, raised, state FROM alert_state")}

    def pending(self, limit: int = 100, after: int = 0,
                exclude_topics: Iterable[str] = ()) -> list[OutboxMessage]:
        """Up to ``limit`` queued messages with ``seq > after``, in sequence order,
        leaving out ``exclude_topics`` (topics held back behind a message that waits)."""
        exclude = sorted(set(exclude_topics))
        where = f" AND topic NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE seq > ?{where} "
                                    f"ORDER BY seq LIMIT ?", (after, *exclude, int(limit))).fetchall()
        return [OutboxMessage._from_row(r) for r in rows]

    def dead_letters(self, limit: int = 100) -> list[tuple[OutboxMessage, str]]:
        """Dead letters, oldest first, with the refusal reason."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS}, reason FROM dead_letter ORDER BY seq "
                                    f"LIMIT ?", (int(limit),)).fetchall()
        return [(OutboxMessage._from_row(r), r[9]) for r in rows]

    @property
    def depth(self) -> int:
        return self._depth

    def counters(self) -> dict[str, int]:
        """Persisted counters: enqueued, acked, duplicate, dead_lettered, requeued, dropped.<reason>."""
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters ORDER BY name"))

    def status(self) -> dict:
        """``depth``, ``oldest_age_s`` (None when empty), ``dropped`` by reason, ``dead_letter``."""
        counters = self.counters()
        with self._lock:
            oldest = self._db.execute("SELECT MIN(enqueued_s) FROM outbox").fetchone()[0]
            dead = self._dead_count()
        return {"depth": self._depth,
                "oldest_age_s": None if oldest is None else max(self._clock() - oldest, 0.0),
                "dropped": {r: counters.get(f"dropped.{r}", 0) for r in DROP_REASONS},
                "dead_letter": dead}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                os.close(self._lockfile)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals (callers hold self._lock) ---------------------------------------------------
    def _transaction(self):
        return Transaction(self)

    def _count(self, name: str, n: int = 1) -> None:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, n))

    def _dead_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]

    def _expire(self, now: float) -> int:
        if self.max_age_s is None:
            return 0
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE enqueued_s < ? "
                                f"AND enqueued_s >= ? ORDER BY seq",
                                (now - self.max_age_s, PLAUSIBLE_EPOCH_S)).fetchall()
        self._drop([OutboxMessage._from_row(r) for r in rows], "expired")
        return len(rows)

    def _drop(self, messages: list[OutboxMessage], reason: str, table: str = "outbox") -> None:
        if not messages:
            return
        self._db.executemany(f"DELETE FROM {table} WHERE seq = ?", [(m.seq,) for m in messages])
        if table == "outbox":
            self._depth -= len(messages)
        self._count(f"dropped.{reason}", len(messages))
        for m in messages[:_LOG_EACH]:
            log.warning("outbox: message dropped", extra={
                "event": "outbox_drop", "reason": reason, "seq": m.seq, "msg_id": m.msg_id,
                "topic": m.topic, "priority": m.priority, "enqueued_s": m.enqueued_s})
        if len(messages) > _LOG_EACH:
            log.warning("outbox: more messages dropped", extra={
                "event": "outbox_drop", "reason": reason, "count": len(messages) - _LOG_EACH})
