"""A prior commissioned from recordings, as ``[aggregator] commissioning`` lists it.

``edge-agent fleet prior`` makes it from healthy siblings' recordings and signs it with the
fleet key; the aggregator checks each listed file at start and adopts it once
(:meth:`edge_agent.fleet.aggregator.Aggregator.commission`).
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.fleet.document import PriorRefused, verify_prior
from edge_agent.runtime.toml_build import ConfigError


def read_commissioned(path: Path, public_key, classes=()) -> tuple:
    """``(file name, verified prior, signed document)`` of a commissioned prior.

    A ConfigError (exit 2) names the file and the reason: unreadable, not a prior, refused
    by :func:`~edge_agent.fleet.document.verify_prior` (``signature``, ``unsigned``...), or
    of a class not in ``classes`` (when given).
    """
    where = f"aggregator.commissioning: {path}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        prior = verify_prior(doc, public_key, class_name=doc.get("class") or "")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: not a prior document ({exc})") from None
    except PriorRefused as exc:
        raise ConfigError(f"{where}: refused ({exc.reason}): {exc.detail}") from None
    if classes and prior.class_name not in classes:
        raise ConfigError(f"{where}: class {prior.class_name!r} is not in aggregator.classes")
    return path.name, prior, doc
