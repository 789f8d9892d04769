"""The feature-stream CSV: features sent by smart sensors instead of waveforms.

One row per timestamp; the specification is ``docs/feature-stream.md``::

    # edge-agent feature-stream v1
    ts,pump-7/de/rms_g,pump-7/de/kurtosis,pump-7/de/rpm
    2024-05-01T12:00:00Z,0.124,3.07,1480
    2024-05-01T12:10:00Z,0.131,,1482

Reading yields one :class:`~edge_agent.frame.FeatureRecord` per row and
(machine, channel) that has at least one value in that row, in row order.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from edge_agent.frame import FeatureRecord
from edge_agent.readers._common import UTC, RecordingError, utc_seconds

FORMAT_LINE = "# edge-agent feature-stream v1"
VERSION = 1
RPM = "rpm"  # the feature name that carries shaft speed, not a feature
_VERSION_RE = re.compile(r"#\s*edge-agent\s+feature-stream\s+v(\d+)\b")
NAME_RE = re.compile(r"[a-z0-9_.-]+\Z")
FEATURE_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_SNIFF_LINES = 50


def _cells(line: str) -> list[str]:
    return [c.strip() for c in next(csv.reader([line]))]


def _header(path: Path) -> tuple[int, list[str]]:
    """Line number and cells of the header; checks the version line if any."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for row, line in enumerate(f, start=1):
                text = line.strip()
                if row == 1 and (m := _VERSION_RE.match(text)) and int(m.group(1)) != VERSION:
                    raise RecordingError(
                        path, f"feature-stream v{m.group(1)} is not supported (this reader: v1)"
                    )
                if text and not text.startswith("#"):
                    return row, _cells(text)
    except OSError as exc:
        raise RecordingError(path, f"cannot read ({exc.strerror or exc})") from None
    raise RecordingError(path, "empty file: no header row")


def is_feature_stream(path) -> bool:
    """True when a CSV file declares the format or has a ``ts`` + ``a/b/c`` header."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for row, line in enumerate(f, start=1):
                text = line.strip()
                if row == 1 and _VERSION_RE.match(text):
                    return True
                if text and not text.startswith("#"):
                    cells = _cells(text)
                    return cells[0] == "ts" and any("/" in c for c in cells[1:])
                if row > _SNIFF_LINES:
                    break
    except (OSError, csv.Error):
        pass
    return False


def parse_column(name: str) -> tuple[str, str, str] | None:
    """Split ``machine/channel/feature``, or None when the name is not valid.

    >>> parse_column("ims1/bearing3-x/kurtosis")
    ('ims1', 'bearing3-x', 'kurtosis')
    >>> parse_column("Pump/DE/RMS") is None
    True
    """
    parts = name.split("/")
    if len(parts) != 3:
        return None
    machine, channel, feature = parts
    if NAME_RE.match(machine) and NAME_RE.match(channel) and FEATURE_RE.match(feature):
        return machine, channel, feature
    return None


def parse_ts(text: str) -> float:
    """A ``ts`` cell to Unix seconds: a number, or ISO 8601 (naive = UTC).

    >>> parse_ts("2003-10-22T12:06:24Z"), parse_ts("1066824384.5")
    (1066824384.0, 1066824384.5)
    """
    try:
        t = float(text)
    except ValueError:
        t = utc_seconds(text)
    if not math.isfinite(t):
        raise ValueError(f"not a finite time: {text!r}")
    return t


def read_feature_stream(path) -> Iterator[FeatureRecord]:
    """Read a feature-stream CSV lazily.

    The header is checked now; rows are read as the iterator is consumed.

    Yields
    ------
    FeatureRecord
        ``source`` is ``"<file>:row <N>"`` with N the 1-based line number in
        the file, so it matches what an editor or spreadsheet shows.

    Raises
    ------
    RecordingError
        Bad header, wrong cell count, unparsable ``ts`` or value, ``ts``
        going backwards (each with its row number).
    """
    path = Path(path)
    header_row, header = _header(path)
    if header[0] != "ts":
        raise RecordingError(
            path, f"row {header_row}: first column must be 'ts', found {header[0]!r}"
        )
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    seen = set()
    for i, name in enumerate(header[1:], start=1):
        parsed = parse_column(name)
        if parsed is None:
            raise RecordingError(
                path, f"row {header_row}, column {i + 1} {name!r}: expected "
                "<machine>/<channel>/<feature> with machine and channel in [a-z0-9_.-] "
                "and feature in [a-z][a-z0-9_]*",
            )
        if name in seen:
            raise RecordingError(path, f"row {header_row}: column {name!r} appears twice")
        seen.add(name)
        groups.setdefault(parsed[:2], []).append((i, parsed[2]))
    if not groups:
        raise RecordingError(path, f"row {header_row}: no feature columns after 'ts'")
    return _records(path, header_row, header, groups)


def _records(path: Path, header_row: int, header: list[str], groups) -> Iterator[FeatureRecord]:
    n_cols, last_t = len(header), None
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for row, line in enumerate(f, start=1):
            text = line.strip()
            if row <= header_row or not text or text.startswith("#"):
                continue
            try:
                cells = _cells(text)
            except csv.Error as exc:
                raise RecordingError(path, f"row {row}: {exc}") from None
            if len(cells) != n_cols:
                raise RecordingError(path, f"row {row} has {len(cells)} cells, expected {n_cols}")
            try:
                t = parse_ts(cells[0])
            except ValueError:
                raise RecordingError(
                    path, f"row {row}: ts {cells[0]!r} is neither ISO 8601 nor Unix seconds"
                ) from None
            if last_t is not None and t < last_t:
                raise RecordingError(
                    path, f"row {row}: ts {cells[0]} is earlier than the row before; "
                    "rows must be in time order"
                )
            last_t = t
            source = f"{path.name}:row {row}"
            for (machine, channel), cols in groups.items():
                features, rpm = {}, None
                for i, feature in cols:
                    if not cells[i]:
                        continue  # empty: not reported in this row
                    try:
                        value = float(cells[i])
                    except ValueError:
                        raise RecordingError(
                            path, f"row {row}, column {header[i]!r}: "
                            f"{cells[i][:20]!r} is not a number"
                        ) from None
                    if feature == RPM:
                        rpm = value
                    else:
                        features[feature] = value
                if features or rpm is not None:
                    yield FeatureRecord(machine, channel, t, features, rpm, source)


def format_ts(t_s: float) -> str:
    """Unix seconds as ISO 8601 UTC, to the microsecond, fraction only when needed.

    >>> format_ts(1066824384.0), format_ts(0.25)
    ('2003-10-22T12:06:24Z', '1970-01-01T00:00:00.250000Z')
    """
    sec, us = divmod(round(t_s * 1_000_000), 1_000_000)
    t = dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=sec, microseconds=us)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{us:06d}Z" if us else "Z")


def write_feature_stream(
    path, records: Iterable[FeatureRecord], *, comments: Iterable[str] = (),
    digits: int | None = None,
) -> int:
    """Write feature records as a feature-stream CSV; return the number of rows.

    Records with the same ``start_s`` share a row (a (machine, channel)
    seen twice at one time starts a new row). Columns come in order of first
    appearance, ``rpm`` last within its (machine, channel). The file is
    written beside ``path`` and renamed into place.

    Parameters
    ----------
    path : str or os.PathLike
    records : iterable of FeatureRecord
        In time order (``start_s`` never decreasing).
    comments : iterable of str
        Extra ``#`` lines after the format line (provenance, units...).
    digits : int, optional
        Significant digits per value; default: the shortest text that reads
        back as the same float.

    Raises
    ------
    ValueError
        Invalid machine, channel or feature name, a feature named ``rpm``,
        or records out of time order.
    """
    records = list(records)
    fmt = repr if digits is None else (lambda v: f"{v:.{digits}g}")
    columns: dict[tuple[str, str], dict[str, None]] = {}
    rpm_groups = set()
    for r in records:
        if not (NAME_RE.match(r.machine) and NAME_RE.match(r.channel)):
            raise ValueError(f"machine/channel {r.machine!r}/{r.channel!r} not in [a-z0-9_.-]+")
        feats = columns.setdefault((r.machine, r.channel), {})
        for name in r.features:
            if not FEATURE_RE.match(name) or name == RPM:
                raise ValueError(
                    f"feature name {name!r} is not allowed ([a-z][a-z0-9_]*, not 'rpm')"
                )
            feats.setdefault(name, None)
        if r.rpm is not None:
            rpm_groups.add((r.machine, r.channel))
    index: dict[tuple[str, str, str], int] = {}
    for (m, c), feats in columns.items():
        for name in [*feats, *([RPM] if (m, c) in rpm_groups else [])]:
            index[(m, c, name)] = len(index) + 1
    rows: list[list[str]] = []
    row_t, row_groups = None, set()
    for r in records:
        if row_t is not None and r.start_s < row_t:
            raise ValueError(f"records out of time order at {format_ts(r.start_s)} ({r.source})")
        if r.start_s != row_t or (r.machine, r.channel) in row_groups:
            rows.append([format_ts(r.start_s)] + [""] * len(index))
            row_t, row_groups = r.start_s, set()
        row_groups.add((r.machine, r.channel))
        for name, value in r.features.items():
            rows[-1][index[(r.machine, r.channel, name)]] = fmt(float(value))
        if r.rpm is not None:
            rows[-1][index[(r.machine, r.channel, RPM)]] = fmt(float(r.rpm))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(FORMAT_LINE + "\n")
        for line in comments:
            f.write("# " + line.replace("\n", " ") + "\n")
        f.write(",".join(["ts", *("/".join(k) for k in index)]) + "\n")
        for cells in rows:
            f.write(",".join(cells) + "\n")
    os.replace(tmp, path)
    return len(rows)
