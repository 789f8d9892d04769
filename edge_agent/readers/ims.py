"""NASA / IMS (University of Cincinnati) bearing run-to-failure snapshots.

Two layouts are read:

* the original ASCII snapshots: one file per acquisition, named
  ``YYYY.MM.DD.HH.MM.SS`` (the acquisition time, taken as UTC: the archive
  states no time zone), 20480 rows of tab-separated values in g, 8 columns in
  test 1 (bearing k on columns 2k-1, 2k) or 4 columns in tests 2 and 3
  (bearing k on column k);
* the lossless ``.npz`` repack of test 1 (``data_milli_g`` int16 of shape
  (n_snapshots, 20480, 8) in milli-g, ``filenames``, ``timestamps``, ``fs_hz``).

The rig is one machine, ``ims``: its four bearings sit on one shaft and hear
each other. Each bearing and accelerometer axis is a channel, ``bearing<k>-x``
and ``bearing<k>-y`` (8 columns) or ``bearing<k>-x`` only (4 columns). The sample rate is the nominal
20 kHz of the official readme (the effective rate is closer to 20.48 kHz:
pass ``fs_hz=20480`` to use it); the shaft turns at 2000 rpm.

A directory is read as the snapshots in it, in time order. Only files whose
name is a snapshot time are read; dot-files and sub-directories are skipped
silently, any other file is skipped with a logged warning naming it (the
test-1 sample folders also hold the ``.npz`` repack of the same snapshots,
which must not be replayed twice).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge_agent.frame import Frame
from edge_agent.readers._common import (
    RecordingError,
    block_frames,
    check_args,
    npz_float,
    npz_get,
    open_npz,
    scaled,
    utc_seconds,
)

log = logging.getLogger(__name__)

FS_HZ = 20000.0
RPM = 2000.0
ROWS = 20480
NAME_FORMAT = "%Y.%m.%d.%H.%M.%S"
_NAME_RE = re.compile(r"\d{4}\.\d{2}\.\d{2}\.\d{2}\.\d{2}\.\d{2}\Z")


def is_snapshot_name(name: str) -> bool:
    """True for an IMS snapshot file name such as ``2003.10.22.12.06.24``."""
    return bool(_NAME_RE.match(name))


def ims_columns(n_columns: int) -> list[tuple[str, str]]:
    """(machine, channel) of each column of an IMS snapshot.

    >>> ims_columns(4)[2]
    ('ims', 'bearing3-x')
    >>> ims_columns(8)[5]
    ('ims', 'bearing3-y')
    """
    if n_columns == 8:
        return [("ims", f"bearing{k}-{ch}") for k in range(1, 5) for ch in ("x", "y")]
    if n_columns == 4:
        return [("ims", f"bearing{k}-x") for k in range(1, 5)]
    raise ValueError(f"IMS snapshots have 4 or 8 columns, not {n_columns}")


def snapshot_time_s(path) -> float:
    """Acquisition time of a snapshot file from its name, Unix seconds UTC."""
    path = Path(path)
    try:
        return utc_seconds(path.name, NAME_FORMAT)
    except ValueError:
        raise RecordingError(path, "file name is not a valid YYYY.MM.DD.HH.MM.SS time") from None


def load_snapshot(path) -> np.ndarray:
    """Read one ASCII snapshot as a (20480, 4 or 8) float64 array in g.

    Raises
    ------
    RecordingError
        Empty, truncated or ragged file, non-numeric cell (with its row).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no data": reported below
            data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except OSError as exc:
        raise RecordingError(path, f"cannot read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError):
        _diagnose(path)  # raises with the row and column at fault
        raise  # pragma: no cover - _diagnose always raises
    if data.size == 0:
        raise RecordingError(path, "empty file: no samples")
    if data.shape[1] not in (4, 8):
        raise RecordingError(
            path, f"{data.shape[1]} columns; IMS snapshots have 8 (test 1) or 4 (tests 2, 3)"
        )
    if data.shape[0] != ROWS:
        raise RecordingError(
            path, f"{data.shape[0]} rows, expected {ROWS}"
            + (" (truncated?)" if data.shape[0] < ROWS else "")
        )
    return data


def _diagnose(path: Path) -> None:
    """Find the first bad row of a snapshot that numpy refused, and raise."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    n_cols = None
    for row, line in enumerate(text.splitlines(), start=1):
        cells = line.split()
        if not cells:
            continue
        if n_cols is None:
            n_cols = len(cells)
        elif len(cells) != n_cols:
            raise RecordingError(path, f"row {row} has {len(cells)} columns, expected {n_cols}")
        for col, cell in enumerate(cells, start=1):
            try:
                float(cell)
            except ValueError:
                raise RecordingError(
                    path, f"row {row}, column {col}: {cell[:20]!r} is not a number"
                ) from None
    raise RecordingError(path, "not a table of numbers")


def read_ims_snapshot(path, *, fs_hz=None, chunk_s=10.0) -> Iterator[Frame]:
    """Yield the frames of one ASCII snapshot (all bearings and channels).

    ``source`` is the file name, with ``@<sample offset>`` only when
    ``chunk_s`` is shorter than the 1-s snapshot.
    """
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    start_s = snapshot_time_s(path)
    return _snapshot_frames(path, start_s, fs_hz or FS_HZ, chunk_s)


def _snapshot_frames(path: Path, start_s: float, fs: float, chunk_s: float) -> Iterator[Frame]:
    yield from _frames_of(path, load_snapshot(path), start_s, fs, chunk_s)


def _frames_of(path: Path, data: np.ndarray, start_s: float, fs: float, chunk_s: float):
    return block_frames(
        data, ims_columns(data.shape[1]), fs_hz=fs, chunk_s=chunk_s, start_s=start_s,
        source=path.name, to_g=scaled(1.0), rpm=RPM, offset_in_source=False,
    )


def read_ims_directory(path, *, fs_hz=None, chunk_s=10.0) -> Iterator[Frame]:
    """Yield the frames of every snapshot in a directory, in time order.

    All snapshots must have the same number of columns (one test).
    """
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    snapshots, others = [], []
    for entry in path.iterdir():
        if entry.name.startswith(".") or entry.is_dir():
            continue
        (snapshots if is_snapshot_name(entry.name) else others).append(entry)
    if not snapshots:
        raise RecordingError(
            path, "no IMS snapshot files (names like 2003.10.22.12.06.24) in this directory"
        )
    if others:
        log.warning("%s: skipping %d file(s) that are not IMS snapshots: %s", path,
                    len(others), ", ".join(sorted(p.name for p in others)[:10]))
    timed = sorted((snapshot_time_s(p), p.name, p) for p in snapshots)
    return _directory_frames(timed, fs_hz or FS_HZ, chunk_s)


def _directory_frames(timed, fs: float, chunk_s: float) -> Iterator[Frame]:
    n_cols = None
    for start_s, _, p in timed:
        data = load_snapshot(p)
        if n_cols is None:
            n_cols = data.shape[1]
        elif data.shape[1] != n_cols:
            # a test-1 file among test-2/3 files would shift every channel
            raise RecordingError(
                p, f"{data.shape[1]} columns but the first snapshot of the directory had {n_cols}"
            )
        yield from _frames_of(p, data, start_s, fs, chunk_s)


def read_ims_npz(path, *, fs_hz=None, chunk_s=10.0) -> Iterator[Frame]:
    """Yield frames from the int16 milli-g ``.npz`` repack of IMS snapshots.

    ``source`` is ``"<file>#<snapshot index> (<original file name>)"``.
    """
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    return _npz_frames(path, fs_hz, chunk_s)


def _npz_frames(path: Path, fs_hz, chunk_s) -> Iterator[Frame]:
    z = open_npz(path, ("data_milli_g", "filenames"))
    data = npz_get(path, z, "data_milli_g")
    names = [str(n) for n in npz_get(path, z, "filenames").reshape(-1)]
    if data.ndim != 3 or data.shape[2] not in (4, 8) or data.dtype.kind not in "iuf":
        raise RecordingError(
            path, f"data_milli_g has shape {data.shape} ({data.dtype}); "
            "expected (n_snapshots, n_samples, 4 or 8) numbers"
        )
    if len(names) != data.shape[0]:
        raise RecordingError(
            path, f"{len(names)} filenames for {data.shape[0]} snapshots in data_milli_g"
        )
    stamps = names
    if "timestamps" in z.files:
        stamps = [str(t) for t in npz_get(path, z, "timestamps").reshape(-1)]
    if len(stamps) != len(names):
        raise RecordingError(path, f"{len(stamps)} timestamps for {len(names)} snapshots")
    fs = fs_hz or npz_float(path, z, "fs_hz", FS_HZ)
    columns = ims_columns(data.shape[2])
    for i, name in enumerate(names):
        try:
            start_s = utc_seconds(stamps[i], None if stamps is not names else NAME_FORMAT)
        except ValueError:
            raise RecordingError(path, f"snapshot {i}: {stamps[i]!r} is not a valid time") from None
        yield from block_frames(
            data[i], columns, fs_hz=fs, chunk_s=chunk_s, start_s=start_s,
            source=f"{path.name}#{i} ({name})", to_g=scaled(1.0, 1000.0), rpm=RPM,
            offset_in_source=False,
        )
