"""Convert the IMS aggregated feature tables to edge-agent feature records.

``test{N}_raw.csv`` holds one row per snapshot with six statistics per
channel, columns ``Bearing{k}_ch{c}_{stat}``; ``test{N}_spectral.csv``
(optional) adds eighteen waveform features per channel and joins on
``file_index``. The rig is one machine, ``ims{N}``: its four bearings sit on
one shaft, so a failing bearing's vibration reaches its neighbours and one
episode of the rig is one alert. Each bearing and accelerometer axis is a
channel, ``bearing{k}-x`` (``_ch1``) and ``bearing{k}-y`` (``_ch2``, test 1
only), at the time in the ``timestamp`` column (taken as UTC) and at the
rig's 2000 rpm.

``DatasetBearingTest_{N}.csv`` (:func:`read_ims_mean_abs_table`) holds one
mean |x| per channel and snapshot, indexed by time, columns ``Bearing {k}x``/``y``:
the same machine and channels, one feature, ``mean_abs_dc_g`` (mean |x| of the raw
signal, its DC offset included).

Names follow edge-agent's features only where the meaning is the same; the
table in ``docs/feature-stream.md`` gives the reasons. In short: the tables'
``_std`` (population standard deviation) is edge-agent's ``rms_g`` (AC RMS);
their ``_rms`` includes the DC offset (about -0.09 g on test 1) and is kept as
``rms_dc_g``; both kurtoses are excess kurtosis and get +3 (Pearson, Gaussian
= 3); features computed on the signal with its DC offset end in ``_dc``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Iterator
from pathlib import Path

from edge_agent.frame import FeatureRecord
from edge_agent.readers._common import RecordingError, utc_seconds
from edge_agent.readers.feature_stream import write_feature_stream

RPM = 2000.0
# table statistic -> (edge-agent feature name, offset added to the value)
RAW_MAP: dict[str, tuple[str, float]] = {
    "rms": ("rms_dc_g", 0.0),
    "mean": ("mean_g", 0.0),
    "std": ("rms_g", 0.0),
    "max": ("abs_max_g", 0.0),
    "kurt": ("kurtosis", 3.0),
    "skew": ("skewness", 0.0),
}
SPECTRAL_MAP: dict[str, tuple[str, float]] = {
    "crest_factor": ("crest_factor_dc", 0.0),
    "shape_factor": ("shape_factor_dc", 0.0),
    "impulse_factor": ("impulse_factor_dc", 0.0),
    "clearance_factor": ("clearance_factor_dc", 0.0),
    "energy": ("energy_dc_g2", 0.0),
    "mean_abs": ("mean_abs_dc_g", 0.0),
    "spectral_entropy": ("spectral_entropy", 0.0),
    "high_freq_ratio": ("hf_power_ratio_5khz", 0.0),
    "dominant_freq_hz": ("dominant_hz", 0.0),
    "psd_mean": ("psd_mean_g2_hz", 0.0),
    "psd_std": ("psd_std_g2_hz", 0.0),
    "bpfo_energy": ("bpfo_energy_g2_hz", 0.0),
    "bpfi_energy": ("bpfi_energy_g2_hz", 0.0),
    "bsf_energy": ("bsf_energy_g2_hz", 0.0),
    "env_kurtosis": ("env_kurtosis", 3.0),
    "env_bpfo_energy": ("env_bpfo_energy", 0.0),
    "env_bpfi_energy": ("env_bpfi_energy", 0.0),
    "env_bsf_energy": ("env_bsf_energy", 0.0),
}
_COLUMN_RE = re.compile(r"Bearing(\d+)_ch(\d+)_(\w+)\Z")
_AXIS = {"1": "x", "2": "y"}


def _read_table(path: Path, index_cols: tuple[str, ...], mapping) -> tuple[list, list, list]:
    """Header, rows as (row number, cells), and the column plan of a table.

    The plan is a list of (column, channel, feature, offset).
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecordingError(path, f"cannot read as CSV ({exc})") from None
    if not rows:
        raise RecordingError(path, "empty file")
    header = rows[0]
    missing = [c for c in index_cols if c not in header]
    if missing:
        raise RecordingError(path, f"missing column(s) {missing}; is this an IMS table?")
    plan = []
    for i, name in enumerate(header):
        if name in index_cols:
            continue
        m = _COLUMN_RE.match(name)
        if not m or m.group(2) not in _AXIS or m.group(3) not in mapping:
            raise RecordingError(path, f"column {name!r} is not a known IMS table column")
        feature, offset = mapping[m.group(3)]
        plan.append((i, f"bearing{m.group(1)}-{_AXIS[m.group(2)]}", feature, offset))
    body = [(n, cells) for n, cells in enumerate(rows[1:], start=2) if cells]
    for n, cells in body:
        if len(cells) != len(header):
            raise RecordingError(path, f"row {n} has {len(cells)} cells, expected {len(header)}")
    return header, body, plan


def _values(path: Path, row: int, cells: list[str], plan, out: dict, header) -> None:
    """Add one table row's features to ``out[channel]``."""
    for i, channel, feature, offset in plan:
        cell = cells[i].strip()
        if not cell:
            continue  # not measured for this snapshot
        try:
            value = float(cell)
        except ValueError:
            raise RecordingError(
                path, f"row {row}, column {header[i]!r}: {cell[:20]!r} is not a number"
            ) from None
        out.setdefault(channel, {})[feature] = value + offset


def convert_ims_tables(raw_csv, spectral_csv=None, *, test: int = 1) -> Iterator[FeatureRecord]:
    """Yield feature records from the IMS aggregated tables.

    Parameters
    ----------
    raw_csv : str or os.PathLike
        ``test{N}_raw.csv`` (file_index, timestamp, filename, statistics).
    spectral_csv : str or os.PathLike, optional
        ``test{N}_spectral.csv``, joined on ``file_index``; every raw row
        must have its spectral row.
    test : int
        IMS test number (1, 2 or 3), used in the machine names.

    Yields
    ------
    FeatureRecord
        Per snapshot, machine ``ims{test}`` with channels ``bearing1-x``,
        ``bearing1-y``, ... in table order; ``source`` is
        ``"test1_raw.csv:row N (2003.10.22.12.06.24)"``.
    """
    raw = Path(raw_csv)
    if test not in (1, 2, 3):
        raise RecordingError(raw, f"IMS test must be 1, 2 or 3, not {test!r}")
    header, body, plan = _read_table(raw, ("file_index", "timestamp", "filename"), RAW_MAP)
    spectral = {}
    if spectral_csv is not None:
        sp = Path(spectral_csv)
        s_header, s_body, s_plan = _read_table(sp, ("file_index",), SPECTRAL_MAP)
        k = s_header.index("file_index")
        spectral = {cells[k].strip(): (n, cells) for n, cells in s_body}
    i_idx, i_ts, i_name = (header.index(c) for c in ("file_index", "timestamp", "filename"))
    last_t = None
    for row, cells in body:
        try:
            t = utc_seconds(cells[i_ts].strip())
        except ValueError:
            raise RecordingError(
                raw, f"row {row}: timestamp {cells[i_ts]!r} is not a date-time"
            ) from None
        if last_t is not None and t < last_t:
            raise RecordingError(raw, f"row {row}: timestamp goes back in time")
        last_t = t
        feats: dict[str, dict[str, float]] = {}
        _values(raw, row, cells, plan, feats, header)
        if spectral_csv is not None:
            key = cells[i_idx].strip()
            if key not in spectral:
                raise RecordingError(sp, f"no row for file_index {key} (row {row} of {raw.name})")
            s_row, s_cells = spectral[key]
            _values(sp, s_row, s_cells, s_plan, feats, s_header)
        source = f"{raw.name}:row {row} ({cells[i_name].strip()})"
        for channel, features in feats.items():  # table order
            yield FeatureRecord(f"ims{test}", channel, t, features, RPM, source)


_MEAN_ABS_COLUMN_RE = re.compile(r"Bearing (\d+)([xy])\Z")
MEAN_ABS_HEADER = ",Bearing 1x"  # how a DatasetBearingTest_N.csv starts
MEAN_ABS_NAME_RE = re.compile(r"DatasetBearingTest_(\d)", re.IGNORECASE)


def read_ims_mean_abs_table(path, *, test: int = 1) -> Iterator[FeatureRecord]:
    """Yield feature records from an IMS ``DatasetBearingTest_{N}.csv`` table.

    The first column (unnamed) is the snapshot time (``2003-10-22 12:06:24``, taken as
    UTC), the others ``Bearing {k}x`` or ``Bearing {k}y`` hold mean |x| in g. Each row
    gives machine ``ims{test}`` one record per channel ``bearing{k}-{x|y}`` with the
    feature ``mean_abs_dc_g``; ``source`` is ``"DatasetBearingTest_1.csv:row N"``.
    """
    path = Path(path)
    if test not in (1, 2, 3):
        raise RecordingError(path, f"IMS test must be 1, 2 or 3, not {test!r}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RecordingError(path, f"cannot read as CSV ({exc})") from None
    if not rows or rows[0][:1] != [""]:
        raise RecordingError(path, "expected a header ',Bearing 1x,…' (time, then one column "
                                   "per bearing and axis)")
    channels = []
    for name in rows[0][1:]:
        m = _MEAN_ABS_COLUMN_RE.match(name.strip())
        if not m:
            raise RecordingError(path, f"column {name!r} is not 'Bearing <k>x' or 'Bearing <k>y'")
        channels.append(f"bearing{m.group(1)}-{m.group(2)}")
    return _mean_abs_records(path, rows, channels, test)


def _mean_abs_records(path: Path, rows, channels, test) -> Iterator[FeatureRecord]:
    for row, cells in enumerate(rows[1:], start=2):
        if not cells:
            continue
        if len(cells) != len(channels) + 1:
            raise RecordingError(path, f"row {row} has {len(cells)} cells, expected "
                                       f"{len(channels) + 1}")
        try:
            t = utc_seconds(cells[0].strip())
        except ValueError:
            raise RecordingError(path, f"row {row}: time {cells[0]!r} is not a date-time") from None
        for channel, cell in zip(channels, cells[1:]):
            if not cell.strip():
                continue
            try:
                value = float(cell)
            except ValueError:
                raise RecordingError(path, f"row {row}, {channel}: {cell[:20]!r} is not a "
                                           f"number") from None
            yield FeatureRecord(f"ims{test}", channel, t, {"mean_abs_dc_g": value}, RPM,
                                f"{path.name}:row {row}")


def write_ims_feature_stream(
    raw_csv, out_csv, spectral_csv=None, *, test: int = 1,
    features: Collection[str] | None = None, digits: int | None = None,
    comments: Collection[str] = (),
) -> int:
    """Convert the IMS tables and write them as a feature-stream CSV.

    Parameters
    ----------
    raw_csv, spectral_csv, test
        As for :func:`convert_ims_tables`.
    out_csv : str or os.PathLike
    features : collection of str, optional
        Keep only these edge-agent feature names (default: all).
    digits : int, optional
        Significant digits written per value (default: exact round trip).
    comments : collection of str
        Extra comment lines (e.g. the tables' copyright notice).

    Returns
    -------
    int
        Number of rows written.
    """
    records = convert_ims_tables(raw_csv, spectral_csv, test=test)
    if features is not None:
        keep = set(features)
        records = (
            FeatureRecord(r.machine, r.channel, r.start_s,
                          {k: v for k, v in r.features.items() if k in keep}, r.rpm, r.source)
            for r in records
        )
    names = [Path(raw_csv).name] + ([Path(spectral_csv).name] if spectral_csv else [])
    comments = [
        f"source: IMS bearing test {test} aggregated tables {' + '.join(names)}, "
        "computed from the IMS Bearing Data Set (J. Lee, H. Qiu, G. Yu, J. Lin and Rexnord "
        "Technical Services, IMS, University of Cincinnati; NASA Ames Prognostics Data "
        "Repository)",
        "converted by edge_agent.readers.ims_tables; mapping in docs/feature-stream.md",
        *comments,
    ]
    return write_feature_stream(out_csv, records, comments=comments, digits=digits)
