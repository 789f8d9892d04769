"""SQLite transactions that fail cleanly, and the one-process lock of the outbox.

A write that the file system refuses (full, file-size limit, read-only, I/O
error) is rolled back, a failed ``COMMIT`` included (SQLite may leave that
transaction open), and raised as :class:`~edge_agent.errors.StorageError`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from edge_agent.errors import StorageError, UsageError


class OutboxLocked(UsageError):
    """Another process holds the outbox."""


class Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; on error (a failed COMMIT too), roll back, recount the
    cached depth, and raise a storage failure as :class:`~edge_agent.errors.StorageError`."""

    def __init__(self, outbox):  # an Outbox: its _db, path and cached _depth
        if outbox._db is None:
            raise ValueError(f"outbox {outbox.path} is closed")
        self.outbox = outbox

    def __enter__(self):
        try:
            self.outbox._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise storage_error(self.outbox, exc) from exc

    def __exit__(self, exc_type, exc, tb):
        db = self.outbox._db
        if exc_type is None:
            try:
                db.execute("COMMIT")
                return False
            except sqlite3.Error as error:  # e.g. SQLITE_FULL: the transaction may stay open
                exc = error
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.outbox._depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error:
            pass
        if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
            raise storage_error(self.outbox, exc) from exc
        if exc_type is None:
            raise exc
        return False


def storage_error(outbox, exc: sqlite3.Error) -> StorageError:
    name = getattr(exc, "sqlite_errorname", None)
    return StorageError(outbox.path, f"{exc}" + (f" ({name})" if name else ""))


def lock_file(path: Path) -> int:
    """An exclusive, non-blocking lock on ``<path>.lock`` (released when the process dies)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process guard
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutboxLocked(f"outbox {path} is in use by another edge-agent process") from None
    return fd
