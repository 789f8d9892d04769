"""Generic waveform files: ``.npy``, ``.npz``, ``.wav`` and ``.csv``.

The machine is the file stem (lower-cased, other characters replaced by
``_``); channels are ``ch0``, ``ch1``... unless the file names them.
Samples are multiplied by ``scale`` (g per file unit); integer WAV is first
normalised to +/-1 full scale, float WAV is taken as g. These formats carry
no clock: frames start at 0.0 unless the file gives a start (``start_s`` key
or comment, or a ``time_s`` column). ``fs_hz=`` always overrides the file.

* ``.npy``: 1-D, or 2-D (n_samples, n_channels); the rate must be given.
* ``.npz``: key ``samples`` as above, optional ``fs_hz``, ``channels``,
  ``start_s``, ``rpm``.
* ``.wav``: PCM 8/16/24/32-bit or IEEE float 32/64-bit (also in
  WAVE_FORMAT_EXTENSIBLE), read through a memory map, never whole.
* ``.csv``: columns of samples, see :func:`read_csv_waveform`.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge_agent.frame import Frame
from edge_agent.readers._common import (
    RecordingError,
    as_columns,
    block_frames,
    channel_names,
    check_args,
    check_scale,
    chunk_len,
    clean_name,
    npz_float,
    npz_get,
    open_npz,
    scaled,
)

_NEED_FS = "sample rate unknown: the file does not store it; pass --fs (fs_hz=)"


def read_npy(path, *, fs_hz=None, scale=1.0, chunk_s=10.0) -> Iterator[Frame]:
    """Yield frames from a ``.npy`` array, memory-mapped (the rate is required)."""
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    check_scale(path, scale)
    if fs_hz is None:
        raise RecordingError(path, _NEED_FS)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated header, pickled objects, not .npy at all
        raise RecordingError(path, f"not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise RecordingError(path, "is an .npz archive, not a single .npy array")
    data = as_columns(path, arr, "the array")
    machine = clean_name(path.stem)
    cols = [(machine, f"ch{i}") for i in range(data.shape[1])]
    return block_frames(data, cols, fs_hz=fs_hz, chunk_s=chunk_s, start_s=0.0,
                        source=path.name, to_g=scaled(scale))


def read_npz_waveform(path, *, fs_hz=None, scale=1.0, chunk_s=10.0) -> Iterator[Frame]:
    """Yield frames from an ``.npz`` with ``samples`` (+ ``fs_hz``, ``channels``,
    ``start_s``, ``rpm``)."""
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    check_scale(path, scale)
    with open_npz(path, ("samples",)) as z:
        fs = fs_hz or npz_float(path, z, "fs_hz")
        if fs is None:
            raise RecordingError(path, "sample rate unknown: no fs_hz key; pass --fs (fs_hz=)")
        data = as_columns(path, npz_get(path, z, "samples"), "samples")
        raw = [f"ch{i}" for i in range(data.shape[1])]
        if "channels" in z.files:
            raw = [str(c) for c in npz_get(path, z, "channels").reshape(-1)]
        names = channel_names(path, raw, data.shape[1])
        start_s = 0.0
        if "start_s" in z.files:
            v = npz_get(path, z, "start_s")
            if v.size != 1 or v.dtype.kind not in "iuf" or not np.isfinite(v).all():
                raise RecordingError(path, f"start_s must be one finite number, found {v!r}")
            start_s = float(v.reshape(-1)[0])
        rpm = npz_float(path, z, "rpm")
    machine = clean_name(path.stem)
    return block_frames(data, [(machine, c) for c in names], fs_hz=fs, chunk_s=chunk_s,
                        start_s=start_s, source=path.name, to_g=scaled(scale), rpm=rpm)


# WAV ---------------------------------------------------------------------------

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_PCM_FULL_SCALE = {8: 128.0, 16: 32768.0, 24: 8388608.0, 32: 2147483648.0}


def _wav_layout(path: Path) -> tuple[int, int, int, int, int, int]:
    """(format tag, channels, rate, bits, data offset, frames) of a RIFF/WAVE file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            raise RecordingError(path, "not a RIFF/WAVE file")
        fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise RecordingError(path, "no data chunk (truncated WAV?)")
            cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = f.read(n + (n & 1))
                if n < 16 or len(body) < 16:
                    raise RecordingError(path, "fmt chunk too short (truncated WAV?)")
                tag, n_ch, fs, _, align, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == _EXTENSIBLE and n >= 26:
                    tag = struct.unpack("<H", body[24:26])[0]  # sub-format GUID head
                fmt = (tag, n_ch, fs, align, bits)
            elif cid == b"data":
                if fmt is None:
                    raise RecordingError(path, "data chunk before the fmt chunk")
                offset = f.tell()
                if n > size - offset:
                    raise RecordingError(
                        path, f"data chunk declares {n} bytes but only {size - offset} follow "
                        "(truncated file)"
                    )
                break
            else:
                f.seek(n + (n & 1), os.SEEK_CUR)
    tag, n_ch, fs, align, bits = fmt
    if n_ch == 0 or fs == 0 or align != n_ch * bits // 8 or bits % 8:
        raise RecordingError(
            path, f"inconsistent fmt chunk ({n_ch} channels, {fs} Hz, {bits} bits, "
            f"{align} bytes per frame)"
        )
    if n // align == 0:
        raise RecordingError(path, "no samples in the data chunk")
    return tag, n_ch, fs, bits, offset, n // align


def read_wav(path, *, fs_hz=None, scale=1.0, chunk_s=10.0) -> Iterator[Frame]:
    """Yield frames from a ``.wav`` file, memory-mapped, one chunk at a time."""
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    check_scale(path, scale)
    tag, n_ch, fs, bits, offset, n = _wav_layout(path)
    if tag == _FLOAT and bits in (32, 64):
        data = np.memmap(path, f"<f{bits // 8}", "r", offset, (n, n_ch))
        to_g = scaled(scale)
    elif tag == _PCM and bits in (8, 16, 32):
        data = np.memmap(path, {8: "u1", 16: "<i2", 32: "<i4"}[bits], "r", offset, (n, n_ch))
        to_g = scaled(scale, _PCM_FULL_SCALE[bits])
        if bits == 8:  # 8-bit WAV is unsigned, centred on 128
            to_g = lambda x, f=to_g: f(x.astype(np.int16) - 128)  # noqa: E731
    elif tag == _PCM and bits == 24:
        data = np.memmap(path, "u1", "r", offset, (n, n_ch, 3))
        to_g = lambda x, f=scaled(scale, _PCM_FULL_SCALE[24]): f(_int24(x))  # noqa: E731
    else:
        raise RecordingError(path, f"unsupported WAV encoding (format tag {tag}, {bits} bits)")
    machine = clean_name(path.stem)
    cols = [(machine, f"ch{i}") for i in range(n_ch)]
    return block_frames(data, cols, fs_hz=fs_hz or float(fs), chunk_s=chunk_s, start_s=0.0,
                        source=path.name, to_g=to_g)


def _int24(b: np.ndarray) -> np.ndarray:
    """Little-endian 24-bit integers, (..., 3) bytes -> int32."""
    b = b.astype(np.int32)
    x = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    return np.where(x >= 1 << 23, x - (1 << 24), x)


# CSV ---------------------------------------------------------------------------

_META_RE = re.compile(r"\b(fs_hz|rpm|start_s)\s*=\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)")
_PROBE_ROWS = 4096  # rows read to derive the rate from time_s before cutting frames


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_lines(f, start: int = 1) -> Iterator[tuple[int, str]]:
    """(row number, text) of the data lines: comments and blank lines skipped."""
    for row, line in enumerate(f, start=start):
        text = line.strip()
        if text and not text.startswith("#"):
            yield row, text


def _parse_rows(path, rows: list[tuple[int, str]], delim: str, n_cols: int, names) -> np.ndarray:
    """Parse data lines into a (len(rows), n_cols) float64 array, or name the bad row."""
    try:
        out = np.loadtxt([t for _, t in rows], delimiter=delim, ndmin=2, dtype=np.float64)
        if out.shape[1] == n_cols:
            return out
    except ValueError:
        pass
    for row, text in rows:  # slow path, only to say where the problem is
        cells = [c.strip() for c in text.split(delim)]
        if len(cells) != n_cols:
            raise RecordingError(path, f"row {row} has {len(cells)} columns, expected {n_cols}")
        for name, cell in zip(names, cells):
            if not _is_number(cell):
                what = "empty cell" if not cell else f"{cell[:20]!r} is not a number"
                raise RecordingError(path, f"row {row}, column {name!r}: {what}")
    raise RecordingError(path, "cannot parse the data rows")  # pragma: no cover


def read_csv_waveform(path, *, fs_hz=None, scale=1.0, chunk_s=10.0) -> Iterator[Frame]:
    """Yield frames from a CSV waveform, reading it one chunk at a time.

    Lines starting with ``#`` are comments; in those before the data,
    ``fs_hz=<Hz>``, ``rpm=<rpm>`` and ``start_s=<Unix s>`` are read. An
    optional header row names the channels. A column named ``time_s`` gives
    the start time (its first value) and, when neither ``fs_hz=`` nor the
    comment gives the rate, the rate: it must then be uniform (each step
    within a quarter sample of ``1/fs``) and increasing. Cells are separated
    by commas, tabs or semicolons (whichever the first line uses).
    """
    path = Path(path)
    check_args(path, fs_hz, chunk_s)
    check_scale(path, scale)
    meta, first, first_row = {}, None, 0
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for first_row, line in enumerate(f, start=1):
                text = line.strip()
                if text.startswith("#"):
                    meta.update((k, float(v)) for k, v in _META_RE.findall(text))
                elif text:
                    first = text
                    break
    except OSError as exc:
        raise RecordingError(path, f"cannot read ({exc.strerror or exc})") from None
    if first is None:
        raise RecordingError(path, "empty file: no header or data rows")
    delim = next((d for d in (",", "\t", ";") if d in first), ",")
    cells = [c.strip().strip('"') for c in first.split(delim)]
    header = not all(_is_number(c) for c in cells)
    names = cells if header else [f"ch{i}" for i in range(len(cells))]
    t_col = next((i for i, c in enumerate(names) if c.lower() == "time_s"), None)
    chans = channel_names(path, [c for i, c in enumerate(names) if i != t_col],
                          len(names) - (t_col is not None))
    if not chans:
        raise RecordingError(path, "no sample column besides time_s")
    fs = fs_hz or meta.get("fs_hz")
    if fs is None and t_col is None:
        raise RecordingError(path, "sample rate unknown: no time_s column and no "
                             "'# fs_hz=' comment; pass --fs (fs_hz=)")
    if fs is not None and not fs > 0:
        raise RecordingError(path, f"fs_hz must be positive, found {fs}")
    return _csv_frames(path, delim, names, t_col, chans, first_row + header, fs,
                       fs_hz is None, meta, scale, chunk_s)


def _csv_frames(path, delim, names, t_col, chans, skip, fs, check_time, meta, scale, chunk_s):
    n_cols, machine = len(names), clean_name(path.stem)
    cols = [(machine, c) for c in chans]
    keep = [i for i in range(n_cols) if i != t_col]
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for _ in range(skip - 1):
            next(f)
        lines = _csv_lines(f, start=skip)

        def take(k: int):
            got = list(itertools.islice(lines, k))
            if not got:
                return np.empty((0, n_cols)), np.empty(0, dtype=np.int64)
            return _parse_rows(path, got, delim, n_cols, names), np.array([r for r, _ in got])

        vals, rows = take(_PROBE_ROWS)
        if not len(vals):
            raise RecordingError(path, "no data rows")
        t0 = meta.get("start_s", 0.0)
        if t_col is not None:
            _check_times(path, vals[:, t_col], rows, None, None)
            t = vals[:, t_col]
            t0 = meta.get("start_s", float(t[0]))
            if fs is None:
                if len(t) < 2 or not t[-1] > t[0]:
                    raise RecordingError(path, "cannot derive the rate: time_s needs two or more "
                                         "increasing values; pass --fs (fs_hz=)")
                fs = float(f"{(len(t) - 1) / (t[-1] - t[0]):.6g}")  # tames printing jitter
        step = chunk_len(fs, chunk_s)
        sample0, last_t, exhausted = 0, None, False
        while True:
            while not exhausted and len(vals) < step:
                more, more_rows = take(step - len(vals))
                exhausted = not len(more)
                vals, rows = np.concatenate([vals, more]), np.concatenate([rows, more_rows])
            if not len(vals):
                return
            block, vals, brows, rows = vals[:step], vals[step:], rows[:step], rows[step:]
            if t_col is not None:
                last_t = _check_times(path, block[:, t_col], brows, last_t,
                                      fs if check_time else None)
            yield from block_frames(np.ascontiguousarray(block[:, keep]), cols, fs_hz=fs,
                                    chunk_s=chunk_s, start_s=t0, source=path.name,
                                    to_g=scaled(scale), rpm=meta.get("rpm"), sample0=sample0)
            sample0 += len(block)


def _check_times(path, t, rows, last_t, fs) -> float:
    """Check a block of time_s: all numbers, and uniform at ``fs`` unless None."""
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise RecordingError(path, f"row {rows[bad[0]]}: time_s is not a number ({t[bad[0]]})")
    if fs is not None:
        prev = np.concatenate([[t[0] - 1 / fs if last_t is None else last_t], t[:-1]])
        bad = np.flatnonzero(np.abs((t - prev) * fs - 1.0) > 0.25)
        if bad.size:
            k = bad[0]
            raise RecordingError(
                path, f"row {rows[k]}: time_s steps by {t[k] - prev[k]:.6g} s, expected "
                f"{1 / fs:.6g} s ({fs:g} Hz): not a uniformly sampled waveform"
            )
    return float(t[-1])
