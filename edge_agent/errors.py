"""Errors shown to people without a traceback, and the one the storage raises."""

from __future__ import annotations

import os
import shutil


class UsageError(Exception):
    """Something the user asked for cannot be done as asked; the message says why and what to do."""


class StorageError(Exception):
    """The state directory cannot take a write (disk full, file size limit, read-only, I/O error).

    ``path`` is what could not be written, ``detail`` the system's words for why;
    :attr:`free_bytes` is measured when asked (None if the file system cannot say).
    """

    def __init__(self, path, detail: str):
        self.path, self.detail = str(path), str(detail)
        super().__init__(f"{self.path}: {self.detail}")

    @property
    def free_bytes(self) -> int | None:
        return free_bytes(self.path)

    def as_status(self) -> dict:
        """``{state, path, free_bytes, error}`` for the agent status."""
        return {"state": "storage_full", "path": self.path, "free_bytes": self.free_bytes,
                "error": self.detail}


def free_bytes(path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent)."""
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
