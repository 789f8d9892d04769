"""Case Western Reserve University bearing data: MATLAB v5 ``.mat`` files.

Each file holds one recording session as column vectors named
``X<nnn>_DE_time`` (drive end), ``X<nnn>_FE_time`` (fan end) and, in some
files, ``X<nnn>_BA_time`` (base), plus ``X<nnn>RPM`` (measured shaft speed).
Variables are found by suffix, never by the number in the file name: CWRU
file 174 holds ``X173_*`` variables.

Sample rate, in order of precedence:

1. ``fs_hz=`` given by the caller;
2. ``12k`` or ``48k`` in the file name (``48k_Drive_End_IR007_0_109.mat``);
3. a name starting with ``normal`` (the normal-baseline recordings 97-100
   exist only at 48 kHz): 48000;
4. otherwise a :class:`RecordingError` asking for ``--fs``: the 12 kHz and
   48 kHz sets share the same layout and nothing in the file tells them apart.
   The file is read first, so a damaged or foreign file says so instead.

CWRU recordings carry no clock, so every file starts at ``start_s = 0.0``;
the replay timeline places files one after another.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge_agent.frame import Frame
from edge_agent.readers._common import RecordingError, block_frames, check_args, scaled

MACHINE = "cwru"
_CHANNEL_RE = re.compile(r"X(\d+)_?(DE|FE|BA)_time\Z")
_RPM_RE = re.compile(r"X(\d+)_?RPM\Z")
_RATE_IN_NAME = re.compile(r"(?<![0-9])(12|48)k(?![0-9a-z])", re.IGNORECASE)


def cwru_fs_from_name(name: str) -> float | None:
    """Sample rate implied by a CWRU file name, or None when it does not say.

    >>> cwru_fs_from_name("48k_Drive_End_B007_0_122.mat")
    48000.0
    >>> cwru_fs_from_name("normal_0_97.mat")
    48000.0
    >>> cwru_fs_from_name("105.mat") is None
    True
    """
    m = _RATE_IN_NAME.search(name)
    if m:
        return float(m.group(1)) * 1000.0
    if name.lower().startswith("normal"):
        return 48000.0
    return None


def _load(path: Path) -> dict:
    import scipy.io  # deferred: only .mat files need it

    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise RecordingError(
            path, "MATLAB v7.3 (HDF5) .mat files are not supported; re-save with -v7"
        ) from None
    except Exception as exc:  # scipy raises many types for damaged files
        with open(path, "rb") as f:
            head = f.read(19)
        if head == b"MATLAB 5.0 MAT-file":
            raise RecordingError(path, f"a damaged or truncated MATLAB .mat file ({exc})") from None
        raise RecordingError(path, f"not a MATLAB v5 .mat file: it starts with {head[:12]!r}, "
                                   f"not 'MATLAB 5.0 MAT-file'") from None


def read_cwru(path, *, fs_hz: float | None = None, chunk_s: float = 10.0) -> Iterator[Frame]:
    """Yield frames from a CWRU ``.mat`` file (machine ``"cwru"``).

    Parameters
    ----------
    path : str or os.PathLike
    fs_hz : float, optional
        Overrides the rate taken from the file name (see module notes).
    chunk_s : float
        Longest frame in seconds; channels ``de``, ``fe``, ``ba`` of one
        block come out before the next block.

    Yields
    ------
    Frame
        Samples in g; ``source`` is ``"<file>@<sample offset>"``.
    """
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    fs = fs_hz or cwru_fs_from_name(path.name)
    if fs is None:
        # Read it first: a damaged or foreign file is that, whatever its name says.
        _recording(path, _load(path))
        raise RecordingError(
            path, "sample rate unknown: the name says neither 12k nor 48k; pass --fs (fs_hz=)"
        )
    return _frames(path, fs, chunk_s)  # checks above run now, the loading on first use


def _frames(path: Path, fs: float, chunk_s: float) -> Iterator[Frame]:
    channels, data, rpm = _recording(path, _load(path))
    yield from block_frames(
        data,
        [(MACHINE, channel) for channel in channels],
        fs_hz=fs,
        chunk_s=chunk_s,
        start_s=0.0,
        source=path.name,
        to_g=scaled(1.0),
        rpm=rpm,
    )


def _recording(path: Path, mat: dict) -> tuple[list[str], np.ndarray, float | None]:
    """Channel names, the (n_samples, n_channels) data and the shaft speed of a loaded file."""
    names = [k for k in mat if not k.startswith("__")]
    found = {k: _CHANNEL_RE.match(k) for k in names}
    found = {k: m for k, m in found.items() if m}
    if not found:
        raise RecordingError(path, f"no variable ending in _DE_time or _FE_time; found {names}")
    numbers = {m.group(1) for m in found.values()}
    rpm_vars = [k for k in names if _RPM_RE.match(k)]
    numbers |= {_RPM_RE.match(k).group(1) for k in rpm_vars}
    if len(numbers) > 1:
        raise RecordingError(
            path,
            f"variables from several recordings (X{', X'.join(sorted(numbers))}): "
            f"{sorted(found) + rpm_vars}; expected one",
        )
    order = {"DE": 0, "FE": 1, "BA": 2}
    keys = sorted(found, key=lambda k: order[found[k].group(2)])
    columns, n_samples = [], None
    for key in keys:
        v = mat[key]
        if not (isinstance(v, np.ndarray) and v.dtype.kind in "iuf" and 1 in v.shape[:2]
                and v.ndim == 2 and v.size > 0):
            raise RecordingError(path, f"{key} is not a numeric column vector "
                                 f"(shape {getattr(v, 'shape', None)})")
        if n_samples is not None and v.size != n_samples:
            raise RecordingError(
                path, f"{key} has {v.size} samples but {keys[0]} has {n_samples}"
            )
        n_samples = v.size
        columns.append(v.reshape(-1))
    rpm = None
    if rpm_vars:
        v = np.asarray(mat[rpm_vars[0]])
        if v.size != 1 or v.dtype.kind not in "iuf":
            raise RecordingError(path, f"{rpm_vars[0]} is not a single number")
        rpm = float(v.reshape(-1)[0])
    return [found[k].group(2).lower() for k in keys], np.stack(columns, axis=1), rpm
