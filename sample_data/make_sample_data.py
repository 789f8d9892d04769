"""Regenerate ``sample_data/`` from the full recordings in ``../shared/data``.

Usage (from the repository root)::

    python sample_data/make_sample_data.py [--source ../shared/data]

Deterministic: the same inputs give byte-identical outputs (the MAT header
date and the zip entry times are fixed rather than taken from the clock).
See ``sample_data/README.md`` for what each file is.
"""

from __future__ import annotations

import argparse
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[1] / "shared" / "data"

CWRU_DIR = "cwru/48k_drive_end_0hp"
CWRU_FILES = [
    "normal_0_97.mat",
    "48k_Drive_End_IR007_0_109.mat",
    "48k_Drive_End_B007_0_122.mat",
    "48k_Drive_End_OR007@6_0_135.mat",
]
CWRU_FS_HZ = 48000
CWRU_SECONDS = 2.5
FEMTO_FILE = "femto/femto_learning_Bearing1_2.npz"
FEMTO_EVERY = 4  # keep snapshots 0, 4, 8, ... (every 3rd would take the total over 7 MB)
FEMTO_KEYS = ["acc_milli_g", "acc_filenames", "acc_start_h_m_s_us", "fs_hz", "channels"]
IMS_SNAPSHOT = "ims/raw_test1_first50/2003.10.22.12.06.24"
IMS_RAW = "ims/aggregated/test1_raw.csv"
IMS_SPECTRAL = "ims/aggregated/test1_spectral.csv"
IMS_TABLES_LICENSE = "ims/aggregated/LICENSE"
# Feature subset kept per channel in ims_test1_features.csv: all 24 would take ~4.5 MB.
# These four follow test 1's failures (bearing 3 inner race: BPFI; bearing 4 roller: BSF).
IMS_FEATURES = ["rms_g", "kurtosis", "env_bpfi_energy", "env_bsf_energy"]
IMS_DIGITS = 6  # the spectral table is itself written to 6 significant figures


def make_cwru(source: Path, out: Path) -> None:
    """First 2.5 s of the DE and FE channels, RPM kept, original variable names."""
    import scipy.io

    n = int(CWRU_SECONDS * CWRU_FS_HZ)
    out.mkdir(parents=True, exist_ok=True)
    for name in CWRU_FILES:
        mat = scipy.io.loadmat(source / CWRU_DIR / name)
        keep = {}
        for key, value in mat.items():
            if key.endswith(("_DE_time", "_FE_time")):
                keep[key] = value[:n]
            elif key.endswith("RPM"):
                keep[key] = np.asarray(value, dtype=np.float64)  # MATLAB class double
        buf = io.BytesIO()
        scipy.io.savemat(buf, keep, do_compression=True)
        data = bytearray(buf.getvalue())
        # savemat stamps the clock into the 116-byte text header; use fixed text instead.
        text = f"MATLAB 5.0 MAT-file, edge-agent sample_data: first {CWRU_SECONDS} s of CWRU {name}"
        data[:116] = text.encode("ascii").ljust(116, b" ")[:116]
        (out / name).write_bytes(bytes(data))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip entry times."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def make_femto(source: Path, out: Path) -> None:
    """Every 4th snapshot of Bearing1_2, same keys and layout, temperature dropped."""
    out.mkdir(parents=True, exist_ok=True)
    with np.load(source / FEMTO_FILE) as z:
        arrays = {}
        for key in FEMTO_KEYS:
            v = z[key]
            arrays[key] = v[::FEMTO_EVERY] if key.startswith("acc_") else v
    save_npz(out / Path(FEMTO_FILE).name, arrays)


def make_ims(source: Path, out: Path) -> None:
    """One original test-1 snapshot, and the test-1 tables as a feature stream."""
    from edge_agent.readers.ims_tables import write_ims_feature_stream

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / IMS_SNAPSHOT, out / Path(IMS_SNAPSHOT).name)
    # The tables are MIT-licensed: their notice travels with the derived file.
    shutil.copyfile(source / IMS_TABLES_LICENSE, out / "LICENSE-ims-tables.txt")
    notice = (source / IMS_TABLES_LICENSE).read_text().splitlines()
    copyright_line = next(line for line in notice if line.startswith("Copyright"))
    write_ims_feature_stream(
        source / IMS_RAW, out / "ims_test1_features.csv", source / IMS_SPECTRAL,
        test=1, features=IMS_FEATURES, digits=IMS_DIGITS,
        comments=[f"tables {copyright_line}, MIT licence: see LICENSE-ims-tables.txt",
                  f"features kept: {', '.join(IMS_FEATURES)}; {IMS_DIGITS} significant digits"],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help=f"the shared data directory (default {DEFAULT_SOURCE})")
    args = parser.parse_args(argv)
    make_cwru(args.source, HERE / "cwru")
    make_femto(args.source, HERE / "femto")
    make_ims(args.source, HERE / "ims")
    for p in sorted(HERE.rglob("*")):
        if p.is_file() and p.suffix not in (".py", ".md", ".txt"):
            print(f"{p.stat().st_size:>10,d}  {p.relative_to(HERE)}")


if __name__ == "__main__":
    main()
