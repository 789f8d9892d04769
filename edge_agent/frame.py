"""The unit of vibration that flows from a source into the pipeline."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """A contiguous block of samples from one accelerometer channel.

    Parameters
    ----------
    machine : str
        Machine identifier (one detector state per machine).
    channel : str
        Channel name within the machine, e.g. ``"de"`` or ``"horizontal"``.
    start_s : float
        Time of the first sample, seconds since the Unix epoch (UTC).
    fs_hz : float
        Sample rate in Hz.
    samples : numpy.ndarray
        One-dimensional acceleration in g, float32.
    rpm : float or None
        Shaft speed in revolutions per minute, when known.
    source : str
        Where the frame came from: file and snapshot, row or sample offset.
    """

    machine: str
    channel: str
    start_s: float
    fs_hz: float
    samples: np.ndarray = field(repr=False)
    rpm: float | None = None
    source: str = ""

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.fs_hz


def iso_time(t_s: float) -> str:
    """Format Unix seconds as an ISO 8601 UTC string with millisecond precision.

    >>> iso_time(0.25)
    '1970-01-01T00:00:00.250Z'
    """
    t = dt.datetime.fromtimestamp(t_s, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class FeatureRecord:
    """Features computed elsewhere (a smart sensor or a feature table) for one window.

    Parameters
    ----------
    machine, channel : str
        As for :class:`Frame`.
    start_s : float
        Window time, seconds since the Unix epoch (UTC).
    features : dict
        Feature name to value; names follow :mod:`edge_agent.signal.features`
        where the meaning is the same.
    rpm : float or None
        Shaft speed when the sensor reports it.
    source : str
        File and row the record came from.
    rejected : str or None
        Why the window cannot be analysed (one of
        :data:`edge_agent.runtime.validation.REASONS`, e.g. ``"non_finite"``), with
        ``features`` empty; such a record is never scored nor learned from.
    detail : str
        What was wrong, in words (for a rejected record).
    """

    machine: str
    channel: str
    start_s: float
    features: dict[str, float]
    rpm: float | None = None
    source: str = ""
    rejected: str | None = None
    detail: str = ""
    #: Not features: the window's compact envelope spectrum ``(df_hz, amplitudes)`` and its
    #: ISO 20816-3 class ``"group/foundation"``, when our own DSP made the record (for alerts'
    #: plots and the report).
    envelope: tuple | None = field(default=None, compare=False, repr=False)
    iso_class: str | None = field(default=None, compare=False, repr=False)
