"""Errors shown to people without a traceback."""


class UsageError(Exception):
    """Something the user asked for cannot be done as asked; the message says why and what to do."""
