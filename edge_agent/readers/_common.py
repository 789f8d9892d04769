"""Pieces shared by the format readers: the error type, names, time and chunking."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from edge_agent.errors import UsageError
from edge_agent.frame import Frame

NAME_RE = re.compile(r"[a-z0-9_.-]+\Z")
UTC = dt.timezone.utc


class RecordingError(UsageError, ValueError):
    """A recording that cannot be read as asked.

    The message always starts with the file path, then says the problem in
    plain words, e.g. ``"data/x.mat: no variable ending in _DE_time ..."``.

    Parameters
    ----------
    path : str or os.PathLike
        The file (or directory) concerned, as the caller named it.
    problem : str
        What is wrong, with the row number where one applies.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Keep the exception picklable (multiprocessing) despite the 2-arg init.
        return (type(self), (self.path, self.problem))


def clean_name(text: str, fallback: str = "recording") -> str:
    """Turn free text into a machine or channel name (``[a-z0-9_.-]+``).

    >>> clean_name("48k_Drive_End_OR007@6_0_135")
    '48k_drive_end_or007_6_0_135'
    >>> clean_name("  Horizontal Accel. ")
    'horizontal_accel'
    """
    name = re.sub(r"[^a-z0-9_.-]+", "_", text.strip().lower()).strip("_.-")
    return name or fallback


def utc_seconds(text: str, fmt: str | None = None) -> float:
    """Parse a date-time as UTC (naive values are taken as UTC) to Unix seconds.

    >>> utc_seconds("2003.10.22.12.06.24", "%Y.%m.%d.%H.%M.%S")
    1066824384.0
    >>> utc_seconds("1970-01-01T01:00:00+01:00")
    0.0
    """
    t = dt.datetime.strptime(text, fmt) if fmt else dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def check_args(path, fs_hz: float | None, chunk_s: float) -> None:
    """Reject a non-positive or non-finite sample rate or chunk length."""
    if fs_hz is not None and not (math.isfinite(fs_hz) and fs_hz > 0):
        raise RecordingError(path, f"fs_hz must be a positive number, got {fs_hz!r}")
    if not (math.isfinite(chunk_s) and chunk_s > 0):
        raise RecordingError(path, f"chunk_s must be a positive number, got {chunk_s!r}")


def chunk_len(fs_hz: float, chunk_s: float) -> int:
    """Samples per frame: the most that fit in ``chunk_s`` seconds, at least one."""
    # The epsilon keeps 10 s x 25600 Hz from flooring to 255999 through rounding.
    return max(1, math.floor(chunk_s * fs_hz * (1 + 1e-12)))


def block_frames(
    data,
    columns: Sequence[tuple[str, str]],
    *,
    fs_hz: float,
    chunk_s: float,
    start_s: float,
    source: str,
    to_g: Callable[[np.ndarray], np.ndarray],
    rpm: float | None = None,
    offset_in_source: bool = True,
    sample0: int = 0,
) -> Iterator[Frame]:
    """Cut a (n_samples, n_columns) array into frames of at most ``chunk_s``.

    All columns of one time block are yielded before the next block, so the
    frames come out in time order across the whole recording. ``data`` may be
    a memory map: only one block at a time is converted.

    Parameters
    ----------
    data : array_like, shape (n_samples, n_columns)
    columns : sequence of (machine, channel)
        One pair per column of ``data``.
    fs_hz, chunk_s, start_s : float
        Sample rate, longest frame, time of sample 0 (Unix seconds).
    source : str
        Frame source; ``"@<sample offset>"`` is appended when
        ``offset_in_source`` or when the block had to be cut.
    to_g : callable
        Converts one block of ``data`` to float64 g.
    rpm : float or None
    sample0 : int
        Position of ``data[0]`` in the whole recording, when ``data`` is one
        piece of a longer stream read piece by piece.
    """
    n_total = data.shape[0]
    step = chunk_len(fs_hz, chunk_s)
    tag = offset_in_source or step < n_total
    for offset in range(0, n_total, step):
        block = to_g(np.asarray(data[offset : offset + step]))
        # start from the offset rather than by accumulation: exact n/fs steps
        t = start_s + (sample0 + offset) / fs_hz
        src = f"{source}@{sample0 + offset}" if tag else source
        for col, (machine, channel) in enumerate(columns):
            yield Frame(
                machine=machine,
                channel=channel,
                start_s=t,
                fs_hz=float(fs_hz),
                samples=np.ascontiguousarray(block[:, col], dtype=np.float32),
                rpm=rpm,
                source=src,
            )


def scaled(scale: float, full_scale: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """A ``to_g`` converter: ``x / full_scale * scale`` in float64."""
    factor = scale / full_scale
    if factor == 1.0:
        return lambda x: np.asarray(x, dtype=np.float64)
    return lambda x: np.asarray(x, dtype=np.float64) * factor


def open_npz(path, required: Sequence[str] = ()):
    """Open an ``.npz`` archive lazily, checking that ``required`` keys exist."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile, pickle and format errors alike
        raise RecordingError(path, f"not a readable .npz archive ({exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise RecordingError(path, "holds a single array, not an .npz archive of named arrays")
    missing = [k for k in required if k not in z.files]
    if missing:
        z.close()
        raise RecordingError(path, f"missing key(s) {missing}; found {sorted(z.files)}")
    return z


def npz_get(path, z, key: str) -> np.ndarray:
    """One array of an open archive; a damaged member becomes a RecordingError."""
    try:
        return z[key]
    except Exception as exc:
        raise RecordingError(path, f"key {key!r} cannot be read ({exc})") from None


def npz_float(path, z, key: str, default: float | None = None) -> float | None:
    """A positive finite scalar stored under ``key`` (e.g. ``fs_hz``), or ``default``."""
    if key not in z.files:
        return default
    v = npz_get(path, z, key)
    try:
        x = float(v.reshape(-1)[0]) if v.size == 1 else None
    except (TypeError, ValueError):
        x = None
    if x is None or not (math.isfinite(x) and x > 0):
        raise RecordingError(path, f"{key} must be one positive number, found {v!r}"[:200])
    return x


def channel_names(path, raw: list[str], n: int) -> list[str]:
    """Clean channel names, checking there is one distinct name per column."""
    names = [clean_name(c, f"ch{i}") for i, c in enumerate(raw)]
    if len(names) != n:
        raise RecordingError(path, f"{len(names)} channel names for {n} columns: {raw}")
    if len(set(names)) != n:
        raise RecordingError(path, f"channel names are not distinct once cleaned: {names}")
    return names


def as_columns(path, arr: np.ndarray, what: str) -> np.ndarray:
    """View ``arr`` as (n_samples, n_channels) real numbers, or explain why not."""
    if arr.dtype.kind not in "iuf":
        raise RecordingError(path, f"{what} has dtype {arr.dtype}; expected real numbers")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2:
        raise RecordingError(
            path, f"{what} has shape {arr.shape}; expected (n_samples,) or (n_samples, n_channels)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RecordingError(path, f"{what} is empty (shape {arr.shape})")
    if arr.shape[1] > arr.shape[0]:
        raise RecordingError(
            path, f"{what} has shape {arr.shape}: more channels than samples; "
            "expected (n_samples, n_channels), transpose it"
        )
    return arr


def check_scale(path, scale: float) -> None:
    if not (np.isfinite(scale) and scale != 0):
        raise RecordingError(path, f"scale must be a finite non-zero number, got {scale!r}")
