"""Structured logs: one JSON object per line on standard output (container-friendly)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``; exceptions as a ``traceback`` field.

    >>> record = logging.LogRecord("edge_agent", logging.WARNING, "", 0, "outbox full", (), None)
    >>> record.event, record.dropped = "outbox_drop", 3
    >>> doc = json.loads(JsonFormatter().format(record))
    >>> doc["level"], doc["msg"], doc["event"], doc["dropped"]
    ('warning', 'outbox full', 'outbox_drop', 3)
    """

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", stream=None) -> None:
    """Route every logger to one JSON-lines handler (replacing earlier ones)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimitedLog:
    """Log lines keyed by what they are about, at most one per key every ``every_s`` seconds.

    The first line of a key goes out at once; the next one after the interval
    carries ``suppressed``, the number of lines left out meanwhile. Keys are
    bounded (``max_keys``; beyond, they share one), so names from the network
    cannot grow it.

    >>> import logging
    >>> limited = RateLimitedLog(logging.getLogger("doc"), every_s=60.0, clock=lambda: 0.0)
    >>> [limited.log(logging.WARNING, "bad_topic", "x") for _ in range(3)]
    [True, False, False]
    >>> limited.suppressed("bad_topic")
    2
    """

    def __init__(self, logger: logging.Logger, *, every_s: float = 60.0, max_keys: int = 256,
                 clock=time.monotonic):
        self.logger, self.every_s, self.max_keys, self._clock = logger, every_s, max_keys, clock
        self._keys: dict[str, list] = {}  # key -> [last logged at, suppressed since]
        self._lock = threading.Lock()  # MQTT handlers and the processing thread share one

    def log(self, level: int, key: str, msg: str, *, extra: dict | None = None,
            exc_info: bool = False) -> bool:
        """Log ``msg`` unless ``key`` was logged within ``every_s``; returns whether it was.
        ``exc_info``: with the exception being handled (its traceback in the line)."""
        with self._lock:
            if key not in self._keys and len(self._keys) >= self.max_keys:
                key = "(other)"
            now = self._clock()
            entry = self._keys.get(key)
            if entry is not None and 0 <= now - entry[0] < self.every_s:  # a clock set back: log
                entry[1] += 1
                return False
            suppressed = entry[1] if entry is not None else 0
            self._keys[key] = [now, 0]
        self.logger.log(level, msg, exc_info=exc_info, extra={**(extra or {}), **(
            {"suppressed": suppressed} if suppressed else {})})
        return True

    def suppressed(self, key: str) -> int:
        entry = self._keys.get(key)
        return entry[1] if entry is not None else 0
