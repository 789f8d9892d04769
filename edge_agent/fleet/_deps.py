"""The optional dependencies of fleet learning, imported when first needed."""

from __future__ import annotations

import importlib

from edge_agent.errors import UsageError

HINT = "pip install 'edge-agent[fleet]'"


def need(module: str):
    """Import ``module`` or say which extra provides it (a :class:`UsageError`, exit 2)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"fleet learning needs {module.split('.')[0]} ({exc}); "
                         f"install it with: {HINT}") from None
