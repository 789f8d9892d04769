"""Structured logs: one JSON object per line on standard output (container-friendly)."""

from __future__ import annotations

import json
import logging
import sys
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
