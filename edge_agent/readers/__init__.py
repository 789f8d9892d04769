"""Readers for recorded vibration and for feature streams.

:func:`read_recording` picks the reader from the path (suffix, then content):

==================  ===========================================  =======================
kind                recognised by                                yields
==================  ===========================================  =======================
``cwru-mat``        ``.mat`` (CWRU ``X<nnn>_DE_time``...)       Frame (:mod:`.cwru`)
``ims-snapshot``    name ``YYYY.MM.DD.HH.MM.SS``                 Frame (:mod:`.ims`)
``ims-directory``   a directory of such snapshots                Frame (:mod:`.ims`)
``ims-npz``         ``.npz`` with ``data_milli_g``               Frame (:mod:`.ims`)
``femto-npz``       ``.npz`` with ``acc_milli_g``                Frame (:mod:`.femto`)
``npz``             ``.npz`` with ``samples``                    Frame (:mod:`.waveform`)
``npy``             ``.npy``                                     Frame (:mod:`.waveform`)
``wav``             ``.wav``                                     Frame (:mod:`.waveform`)
``csv-waveform``    other ``.csv``/``.tsv``/``.txt``             Frame (:mod:`.waveform`)
``feature-stream``  ``# edge-agent feature-stream v1`` first     FeatureRecord
                    line, or a ``ts`` + ``a/b/c`` header         (:mod:`.feature_stream`)
``ims-table``       IMS ``test{N}_raw.csv`` aggregated table     FeatureRecord
                                                                 (:mod:`.ims_tables`)
``ims-mean-abs``    IMS ``DatasetBearingTest_{N}.csv`` (mean     FeatureRecord
                    |x| per channel), header ``,Bearing 1x,…``   (:mod:`.ims_tables`)
==================  ===========================================  =======================

A file without a known suffix is recognised by its first bytes (NumPy,
zip, RIFF or MATLAB 5 magic). Every problem is a :class:`RecordingError`
whose message starts with the path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from edge_agent.frame import FeatureRecord, Frame
from edge_agent.readers._common import RecordingError, open_npz
from edge_agent.readers.cwru import read_cwru
from edge_agent.readers.feature_stream import (
    is_feature_stream,
    read_feature_stream,
    write_feature_stream,
)
from edge_agent.readers.femto import read_femto_npz
from edge_agent.readers.ims import (
    is_snapshot_name,
    read_ims_directory,
    read_ims_npz,
    read_ims_snapshot,
)
from edge_agent.readers.ims_tables import (
    MEAN_ABS_HEADER,
    MEAN_ABS_NAME_RE,
    convert_ims_tables,
    read_ims_mean_abs_table,
    write_ims_feature_stream,
)
from edge_agent.readers.waveform import read_csv_waveform, read_npy, read_npz_waveform, read_wav

__all__ = [
    "RecordingError",
    "convert_ims_tables",
    "read_feature_stream",
    "read_recording",
    "recording_kind",
    "write_feature_stream",
    "write_ims_feature_stream",
]

_GENERIC = {"npy": read_npy, "npz": read_npz_waveform, "wav": read_wav,
            "csv-waveform": read_csv_waveform}
_IN_G = {"cwru-mat": read_cwru, "ims-snapshot": read_ims_snapshot,
         "ims-directory": read_ims_directory, "ims-npz": read_ims_npz,
         "femto-npz": read_femto_npz}
_MAGIC = [(b"\x93NUMPY", ".npy"), (b"PK\x03\x04", ".npz"), (b"RIFF", ".wav"),
          (b"MATLAB 5.0", ".mat")]
_TEXT = (".csv", ".tsv", ".txt")
_IMS_RAW_HEADER = "file_index,timestamp,filename,"
_IMS_TEST_RE = re.compile(r"test(\d)_raw", re.IGNORECASE)


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return f.readline().strip()


def recording_kind(path) -> str:
    """Name the format of a recording (see the table in this module's notes).

    Raises
    ------
    RecordingError
        Missing or empty file, or a format none of the readers knows.
    """
    p = Path(path)
    if not p.exists():
        raise RecordingError(path, "no such file or directory")
    if p.is_dir():
        entries = list(p.iterdir())
        if not any(is_snapshot_name(e.name) for e in entries):
            raise RecordingError(path, _directory_problem(p, entries))
        return "ims-directory"
    if is_snapshot_name(p.name):
        return "ims-snapshot"
    if p.stat().st_size == 0:
        raise RecordingError(path, "empty file")
    suffix = p.suffix.lower()
    if suffix not in (".mat", ".npy", ".npz", ".wav", *_TEXT):
        with open(p, "rb") as f:
            head = f.read(16)
        suffix = next((s for magic, s in _MAGIC if head.startswith(magic)), suffix)
    if suffix == ".mat":
        return "cwru-mat"
    if suffix in (".npy", ".wav"):
        return suffix[1:]
    if suffix == ".npz":
        with open_npz(p) as z:
            keys = set(z.files)
        for key, kind in (("acc_milli_g", "femto-npz"), ("data_milli_g", "ims-npz"),
                          ("samples", "npz")):
            if key in keys:
                return kind
        raise RecordingError(
            path, f"unknown .npz layout: keys {sorted(keys)}; expected 'samples' "
            "(generic waveform), 'acc_milli_g' (FEMTO) or 'data_milli_g' (IMS)"
        )
    if suffix in _TEXT:
        if is_feature_stream(p):
            return "feature-stream"
        first = _first_line(p)
        if first.startswith(_IMS_RAW_HEADER):
            return "ims-table"
        if first.startswith(MEAN_ABS_HEADER):
            return "ims-mean-abs"
        if first.startswith("file_index,Bearing"):
            raise RecordingError(
                path, "an IMS spectral table: read its test<N>_raw.csv, which joins it"
            )
        return "csv-waveform"
    raise RecordingError(
        path, f"unknown format (suffix {p.suffix!r}): expected .mat, .npy, .npz, .wav, .csv, "
        "an IMS snapshot file or a directory of them"
    )


def _directory_problem(path: Path, entries: list[Path]) -> str:
    """What a directory that is not an IMS snapshot directory holds, and how to pass it."""
    suffixes: dict[str, int] = {}
    for e in entries:
        kind = "directory" if e.is_dir() else (e.suffix.lower() or "no suffix")
        suffixes[kind] = suffixes.get(kind, 0) + 1
    if not suffixes:
        return "empty directory: give recording files, or a directory of IMS snapshots"
    held = ", ".join(f"{n} {k}" for k, n in sorted(suffixes.items(), key=lambda kv: (-kv[1], kv[0])))
    known = sorted(k for k in suffixes if k in (".mat", ".npy", ".npz", ".wav", *_TEXT))
    how = (f"; pass the files themselves, e.g. {path}/*{known[0]}" if known else "")
    return (f"a directory is read only as IMS snapshots (files named like "
            f"2003.10.22.12.06.24), and this one holds none: it has {held}{how}")


def read_recording(
    path, *, fs_hz: float | None = None, scale: float = 1.0, chunk_s: float = 10.0
) -> Iterator[Frame | FeatureRecord]:
    """Read any supported recording lazily, as frames or feature records.

    The format is recognised now (errors are raised at once); the data are
    read as the iterator is consumed.

    Parameters
    ----------
    path : str or os.PathLike
        A file, or a directory of IMS snapshots.
    fs_hz : float, optional
        Sample rate in Hz. Required for ``.npy`` and for files that do not
        state it; overrides the rate a file states (e.g. 20480 for the IMS
        effective rate). Not allowed for feature streams.
    scale : float
        g per file unit, for generic waveforms (``.npy``, ``.npz``
        ``samples``, ``.wav``, CSV waveform) only; the other formats are in g.
    chunk_s : float
        Longest frame in seconds; longer recordings are cut into contiguous
        frames, all channels of one block before the next block.

    Yields
    ------
    Frame or FeatureRecord
    """
    kind = recording_kind(path)
    if kind in _GENERIC:
        return _GENERIC[kind](path, fs_hz=fs_hz, scale=scale, chunk_s=chunk_s)
    if scale != 1.0:
        raise RecordingError(
            path, f"scale={scale} applies only to generic waveforms; a {kind} file is in g"
        )
    if kind in _IN_G:
        return _IN_G[kind](path, fs_hz=fs_hz, chunk_s=chunk_s)
    if fs_hz is not None:
        raise RecordingError(path, f"fs_hz does not apply to a {kind} (features, not samples)")
    if kind == "feature-stream":
        return read_feature_stream(path)
    if kind == "ims-mean-abs":
        m = MEAN_ABS_NAME_RE.search(Path(path).name)
        return read_ims_mean_abs_table(path, test=int(m.group(1)) if m else 1)
    # ims-table: test number from the name, spectral table joined when beside it
    m = _IMS_TEST_RE.search(Path(path).name)
    if not m:
        raise RecordingError(
            path, "cannot tell which IMS test this table is (name it test<N>_raw.csv, "
            "or call convert_ims_tables(..., test=N))"
        )
    spectral = Path(path).with_name(f"test{m.group(1)}_spectral.csv")
    return convert_ims_tables(path, spectral if spectral.exists() else None,
                              test=int(m.group(1)))
