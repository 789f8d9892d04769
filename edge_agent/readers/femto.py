"""FEMTO-ST PRONOSTIA (IEEE PHM 2012 challenge): the lossless ``.npz`` repack.

Keys read: ``acc_milli_g`` (n_snapshots, 2560, n_channels) integers in
milli-g, ``acc_start_h_m_s_us`` (n_snapshots, 4) time of day of each snapshot
(hour, minute, second, microsecond), and when present ``channels``, ``fs_hz``
and ``acc_filenames``. The temperature keys (``temp_*``) are not used and may
be absent.

Each snapshot (0.1 s every 10 s) is one frame per channel. The files carry
only a time of day; the date comes from the challenge description (appendix
A.4 lists each learning-set experiment's date, matched here by its duration and
file count), taken as UTC, and is 1970-01-01 for experiments it does not list.
A step back in the time of day of more than 12 h is read as midnight passing
(next day). A smaller step back is a clock glitch, not the end of the recording
(Bearing1_1's acc_02121 and acc_02122 say 09:38:46 between 15:32:49 and 15:33:19):
that snapshot is yielded with the time it states, and the pipeline refuses it as
``time_goes_back`` (counted and said, as a live frame's would be), while the
snapshots after it go on.

Machine: ``femto-bearing<c>_<i>`` when the file name contains
``Bearing<c>_<i>``, else the file stem. Shaft speed comes from the
operating condition ``c`` named there, per the challenge description
(``IEEEPHM2012-Challenge-Details.pdf`` section 3.2 and Table 1: condition 1
is 1800 rpm, 2 is 1650 rpm, 3 is 1500 rpm); without such a name it is None.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from edge_agent.frame import Frame
from edge_agent.readers._common import (
    RecordingError,
    block_frames,
    check_args,
    clean_name,
    npz_float,
    npz_get,
    open_npz,
    scaled,
)

FS_HZ = 25600.0  # PRONOSTIA accelerometer rate (challenge description, section 4.1)
CONDITION_RPM = {1: 1800.0, 2: 1650.0, 3: 1500.0}
#: Experiment dates of the learning set (challenge description, appendix A.4),
#: as Unix seconds at 00:00 UTC.
EXPERIMENT_DAY_S = {
    "femto-bearing1_1": 1291161600.0,  # 2010-12-01, 7 h 47 min
    "femto-bearing1_2": 1302048000.0,  # 2011-04-06, 2 h 25 min
    "femto-bearing2_1": 1304640000.0,  # 2011-05-06, 2 h 31 min 40 s
    "femto-bearing2_2": 1308268800.0,  # 2011-06-17, 2 h 12 min 40 s
    "femto-bearing3_1": 1302134400.0,  # 2011-04-07, 1 h 25 min 40 s
    "femto-bearing3_2": 1309219200.0,  # 2011-06-28, 4 h 32 min 40 s
}
_NAME_RE = re.compile(r"bearing(\d)_(\d+)", re.IGNORECASE)
_HALF_DAY_S = 12 * 3600


def femto_machine(stem: str) -> tuple[str, float | None]:
    """Machine name and shaft speed (rpm) from a FEMTO file stem.

    >>> femto_machine("femto_learning_Bearing1_2")
    ('femto-bearing1_2', 1800.0)
    >>> femto_machine("my_copy")
    ('my_copy', None)
    """
    m = _NAME_RE.search(stem)
    if m:
        return f"femto-bearing{m.group(1)}_{m.group(2)}", CONDITION_RPM.get(int(m.group(1)))
    return clean_name(stem), None


def read_femto_npz(path, *, fs_hz=None, chunk_s=10.0) -> Iterator[Frame]:
    """Yield one frame per channel and snapshot of a FEMTO ``.npz`` repack.

    Parameters
    ----------
    path : str or os.PathLike
    fs_hz : float, optional
        Overrides the file's ``fs_hz`` (default 25600).
    chunk_s : float
        Longest frame; a 0.1-s snapshot is cut only when this is shorter.

    Yields
    ------
    Frame
        ``source`` is ``"<file>#<snapshot index> (<original acc file>)"``.
    """
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    machine, rpm = femto_machine(path.stem)
    return _frames(path, machine, rpm, fs_hz, chunk_s)


def _frames(path: Path, machine: str, rpm, fs_hz, chunk_s) -> Iterator[Frame]:
    with open_npz(path, ("acc_milli_g", "acc_start_h_m_s_us")) as z:
        acc = npz_get(path, z, "acc_milli_g")
        hms = npz_get(path, z, "acc_start_h_m_s_us")
        fs = fs_hz or npz_float(path, z, "fs_hz", FS_HZ)
        names = None
        if "acc_filenames" in z.files:
            names = [str(n) for n in npz_get(path, z, "acc_filenames").reshape(-1)]
        raw_channels = None
        if "channels" in z.files:
            raw_channels = [str(c) for c in npz_get(path, z, "channels").reshape(-1)]
    if acc.ndim != 3 or acc.dtype.kind not in "iuf" or 0 in acc.shape:
        raise RecordingError(
            path, f"acc_milli_g has shape {acc.shape} ({acc.dtype}); "
            "expected (n_snapshots, n_samples, n_channels) numbers"
        )
    n, _, n_ch = acc.shape
    if hms.shape != (n, 4) or hms.dtype.kind not in "iu":
        raise RecordingError(
            path, f"acc_start_h_m_s_us has shape {hms.shape} ({hms.dtype}); "
            f"expected ({n}, 4) integers (hour, minute, second, microsecond)"
        )
    if names is not None and len(names) != n:
        raise RecordingError(path, f"{len(names)} acc_filenames for {n} snapshots")
    channels = [f"ch{c}" for c in range(n_ch)]
    if raw_channels is not None:
        channels = [clean_name(c, f"ch{i}") for i, c in enumerate(raw_channels)]
        if len(channels) != n_ch or len(set(channels)) != n_ch:
            raise RecordingError(
                path, f"channels {raw_channels} do not name the {n_ch} columns of acc_milli_g"
            )
    columns = [(machine, ch) for ch in channels]
    day, prev = 0, None
    date_s = EXPERIMENT_DAY_S.get(machine, 0.0)
    for i in range(n):
        h, m, s, us = (int(v) for v in hms[i])
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61 and 0 <= us < 1_000_000):
            raise RecordingError(path, f"snapshot {i}: invalid time of day {h}:{m}:{s}.{us:06d}")
        tod = h * 3600 + m * 60 + s + us * 1e-6
        if prev is not None and prev - tod > _HALF_DAY_S:
            day += 1  # passed midnight
        if prev is None or tod >= prev or prev - tod > _HALF_DAY_S:
            prev = tod  # a glitch back in time does not become the clock that follows
        src = f"{path.name}#{i}" + (f" ({names[i]})" if names else "")
        yield from block_frames(
            acc[i], columns, fs_hz=fs, chunk_s=chunk_s, start_s=date_s + day * 86400.0 + tod,
            source=src, to_g=scaled(1.0, 1000.0), rpm=rpm, offset_in_source=False,
        )
