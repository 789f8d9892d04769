"""Readers for real recordings: every format round-trips a known file.

Uses ``sample_data/`` and, where marked, the full recordings in
``../shared/data`` (CI has ``../shared`` beside the clone).
"""

from __future__ import annotations

import csv
import itertools
import pickle
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.io.wavfile

from edge_agent.frame import FeatureRecord, Frame
from edge_agent.readers import (
    RecordingError,
    convert_ims_tables,
    read_feature_stream,
    read_recording,
    recording_kind,
    write_feature_stream,
    write_ims_feature_stream,
)
from edge_agent.readers._common import utc_seconds

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"full recordings not found at {SHARED} (CI has ../shared)"
)

CWRU_FILES = {
    "normal_0_97.mat": "X097",
    "48k_Drive_End_IR007_0_109.mat": "X109",
    "48k_Drive_End_B007_0_122.mat": "X122",
    "48k_Drive_End_OR007@6_0_135.mat": "X135",
}
CWRU_NORMAL = SAMPLE / "cwru" / "normal_0_97.mat"
IMS_SNAPSHOT = SAMPLE / "ims" / "2003.10.22.12.06.24"
IMS_T0 = 1066824384.0  # 2003-10-22T12:06:24Z
FEMTO = SAMPLE / "femto" / "femto_learning_Bearing1_2.npz"
IMS_TABLES = SHARED / "ims" / "aggregated"


def expect_error(path, *fragments, call=None):
    """Run ``call`` (default: read all of ``path``) and check the RecordingError."""
    with pytest.raises(RecordingError) as info:
        list(call() if call else read_recording(path))
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def check_contiguous(frames, n_total, fs, n_channels):
    """Blocks of all channels in turn, start times advancing by exactly n/fs."""
    assert len(frames) % n_channels == 0
    blocks = [frames[i : i + n_channels] for i in range(0, len(frames), n_channels)]
    offset = 0
    for block in blocks:
        assert len({f.start_s for f in block}) == 1
        assert len({f.samples.size for f in block}) == 1
        assert block[0].start_s == pytest.approx(blocks[0][0].start_s + offset / fs, abs=1e-9)
        offset += block[0].samples.size
    assert offset == n_total


def cwru_samples(path=CWRU_NORMAL, n=None):
    m = scipy.io.loadmat(path)
    key = CWRU_FILES[path.name]
    return m[f"{key}_DE_time"].ravel()[:n], m[f"{key}_FE_time"].ravel()[:n]


# CWRU ------------------------------------------------------------------------


@pytest.mark.parametrize("name", CWRU_FILES)
def test_cwru_sample_round_trip(name):
    path = SAMPLE / "cwru" / name
    assert recording_kind(path) == "cwru-mat"
    frames = list(read_recording(path))
    de, fe = cwru_samples(path)
    assert [(f.machine, f.channel) for f in frames] == [("cwru", "de"), ("cwru", "fe")]
    for f, expected in zip(frames, (de, fe)):
        assert isinstance(f, Frame) and f.fs_hz == 48000.0 and f.rpm == 1796.0
        assert f.start_s == 0.0 and f.source == f"{name}@0"
        assert f.samples.dtype == np.float32 and f.samples.ndim == 1
        assert f.samples.flags["C_CONTIGUOUS"] and f.samples.size == 120000
        np.testing.assert_array_equal(f.samples, expected.astype(np.float32))


def test_cwru_chunks_are_contiguous_and_lose_nothing():
    frames = list(read_recording(CWRU_NORMAL, chunk_s=1.0))
    assert [f.channel for f in frames] == ["de", "fe"] * 3
    assert [f.samples.size for f in frames[::2]] == [48000, 48000, 24000]
    assert [f.source for f in frames[::2]] == [
        "normal_0_97.mat@0", "normal_0_97.mat@48000", "normal_0_97.mat@96000"]
    check_contiguous(frames, 120000, 48000.0, 2)
    de, fe = cwru_samples()
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames[::2]]),
                                  de.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames[1::2]]),
                                  fe.astype(np.float32))


def test_cwru_rate_override_and_variable_number_quirk(tmp_path):
    assert read_recording(CWRU_NORMAL, fs_hz=12000).__next__().fs_hz == 12000.0
    # CWRU file 174 holds X173_* variables: found by suffix, not by number.
    de, fe = cwru_samples(n=1000)
    path = tmp_path / "174.mat"
    scipy.io.savemat(path, {"X173_DE_time": de[:, None], "X173_FE_time": fe[:, None],
                            "X173RPM": np.array([[1730.0]])})
    expect_error(path, "sample rate unknown", "--fs")
    frames = list(read_recording(path, fs_hz=12000))
    assert [f.channel for f in frames] == ["de", "fe"] and frames[0].rpm == 1730.0
    renamed = tmp_path / "12k_Drive_End_174.mat"
    shutil.copy(path, renamed)
    assert next(read_recording(renamed)).fs_hz == 12000.0


def test_cwru_errors(tmp_path):
    de, fe = cwru_samples(n=100)
    bad = tmp_path / "48k_foo.mat"
    scipy.io.savemat(bad, {"foo": de})
    expect_error(bad, "no variable ending in _DE_time or _FE_time; found ['foo']")
    mixed = tmp_path / "48k_mixed.mat"
    scipy.io.savemat(mixed, {"X097_DE_time": de[:, None], "X098_DE_time": de[:, None]})
    expect_error(mixed, "several recordings", "X097", "X098")
    ragged = tmp_path / "48k_ragged.mat"
    scipy.io.savemat(ragged, {"X097_DE_time": de[:, None], "X097_FE_time": fe[:50, None]})
    expect_error(ragged, "X097_FE_time has 50 samples but X097_DE_time has 100")
    fake = tmp_path / "48k_fake.mat"
    fake.write_text("not a mat file at all")
    expect_error(fake, "not a MATLAB v5 .mat file", "starts with b'not a mat fi'")
    truncated = tmp_path / "48k_Drive_End_B007_0_122.mat"
    data = (SAMPLE / "cwru" / truncated.name).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    expect_error(truncated, "a damaged or truncated MATLAB .mat file")


def test_a_mat_file_is_read_before_its_rate_is_asked_for(tmp_path):
    """A name without 12k/48k asks for --fs only once the file is a readable CWRU file."""
    data = (SAMPLE / "cwru" / "normal_0_97.mat").read_bytes()
    (tmp_path / "97.mat").write_bytes(data)
    expect_error(tmp_path / "97.mat", "sample rate unknown", "--fs")
    (tmp_path / "half.mat").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "half.mat", "damaged or truncated")
    (tmp_path / "text.mat").write_text("hello")
    expect_error(tmp_path / "text.mat", "not a MATLAB v5 .mat file")
    scipy.io.savemat(tmp_path / "other.mat", {"foo": np.zeros(3)})
    expect_error(tmp_path / "other.mat", "no variable ending in _DE_time")


def test_a_directory_that_is_not_ims_says_what_it_holds(tmp_path):
    shutil.copy(SAMPLE / "cwru" / "normal_0_97.mat", tmp_path)
    shutil.copy(FEMTO, tmp_path)
    (tmp_path / "notes").mkdir()
    expect_error(tmp_path, "holds none: it has 1 .mat, 1 .npz, 1 directory",
                 f"pass the files themselves, e.g. {tmp_path}/*.mat")
    empty = tmp_path / "notes"
    expect_error(empty, "empty directory")


@needs_shared
def test_cwru_full_file_chunked():
    path = SHARED / "cwru" / "48k_drive_end_0hp" / "normal_0_97.mat"
    frames = list(read_recording(path, chunk_s=2.0))
    check_contiguous(frames, 243938, 48000.0, 2)
    de, _ = cwru_samples(path)
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames[::2]]),
                                  de.astype(np.float32))


# IMS -------------------------------------------------------------------------


def test_ims_snapshot_round_trip():
    assert recording_kind(IMS_SNAPSHOT) == "ims-snapshot"
    frames = list(read_recording(IMS_SNAPSHOT))
    table = np.loadtxt(IMS_SNAPSHOT)
    # the rig is one machine; each bearing and axis is a channel
    assert [(f.machine, f.channel) for f in frames] == [
        ("ims", f"bearing{k}-{axis}") for k in range(1, 5) for axis in ("x", "y")]
    for col, f in enumerate(frames):
        assert f.start_s == IMS_T0 and f.fs_hz == 20000.0 and f.rpm == 2000.0
        assert f.source == "2003.10.22.12.06.24"
        np.testing.assert_array_equal(f.samples, table[:, col].astype(np.float32))


def test_ims_chunks_and_rate_override():
    frames = list(read_recording(IMS_SNAPSHOT, chunk_s=0.25, fs_hz=20480))
    assert frames[0].fs_hz == 20480.0
    check_contiguous(frames, 20480, 20480.0, 8)
    assert [f.samples.size for f in frames[::8]] == [5120] * 4
    assert frames[8].source == "2003.10.22.12.06.24@5120"


def test_ims_four_column_file(tmp_path):
    # Tests 2 and 3 have one accelerometer per bearing; built from real test-1 columns.
    table = np.loadtxt(IMS_SNAPSHOT)[:, ::2]
    path = tmp_path / "2004.02.12.10.32.39"
    np.savetxt(path, table, fmt="%.3f", delimiter="\t")
    frames = list(read_recording(path))
    expected = [("ims", f"bearing{k}-x") for k in range(1, 5)]
    assert [(f.machine, f.channel) for f in frames] == expected
    np.testing.assert_array_equal(frames[2].samples, table[:, 2].astype(np.float32))


def test_ims_directory_in_time_order(tmp_path, caplog):
    later = tmp_path / "2003.10.22.12.16.24"
    shutil.copy(IMS_SNAPSHOT, later)
    shutil.copy(IMS_SNAPSHOT, tmp_path / IMS_SNAPSHOT.name)
    (tmp_path / "notes.txt").write_text("operator notes")
    (tmp_path / ".hidden").write_text("x")
    assert recording_kind(tmp_path) == "ims-directory"
    with caplog.at_level("WARNING"):
        frames = list(read_recording(tmp_path))
    assert "notes.txt" in caplog.text and ".hidden" not in caplog.text
    assert len(frames) == 16
    assert [f.start_s for f in frames[::8]] == [IMS_T0, IMS_T0 + 600]
    assert frames[8].source == later.name


def test_ims_errors(tmp_path):
    lines = IMS_SNAPSHOT.read_text().splitlines()
    truncated = tmp_path / "2003.10.22.12.06.24"
    truncated.write_text("\n".join(lines[:10000] + ["-0.022\t-0.0"]))
    expect_error(truncated, "row 10001 has 2 columns, expected 8")
    short = tmp_path / "2003.10.22.12.09.13"
    short.write_text("\n".join(lines[:10000]) + "\n")
    expect_error(short, "10000 rows, expected 20480 (truncated?)")
    bad_cell = tmp_path / "2003.10.22.12.14.13"
    cells = lines[2].split("\t")
    cells[1] = "abc"
    bad_cell.write_text("\n".join(lines[:2] + ["\t".join(cells)] + lines[3:]))
    expect_error(bad_cell, "row 3, column 2: 'abc' is not a number")
    empty = tmp_path / "2003.10.22.12.19.13"
    empty.write_text("")
    expect_error(empty, "empty file")
    bad_date = tmp_path / "2003.13.45.12.06.24"
    shutil.copy(IMS_SNAPSHOT, bad_date)
    expect_error(bad_date, "not a valid YYYY.MM.DD.HH.MM.SS time")
    # a test-1 file among 4-column files would shift every channel
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.savetxt(mixed / "2004.02.12.10.32.39", np.loadtxt(IMS_SNAPSHOT)[:, :4], delimiter="\t")
    shutil.copy(IMS_SNAPSHOT, mixed / "2004.02.12.10.42.39")
    expect_error(mixed / "2004.02.12.10.42.39", "8 columns but the first snapshot",
                 call=lambda: read_recording(mixed))
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    expect_error(nothing, "empty directory")


@needs_shared
def test_ims_npz_repack_matches_ascii():
    path = SHARED / "ims" / "raw_test1_first50" / "ims_test1_first50_int16_milli_g.npz"
    assert recording_kind(path) == "ims-npz"
    frames = list(read_recording(path))
    assert len(frames) == 50 * 8
    with np.load(path) as z:
        data = z["data_milli_g"]
        names = list(z["filenames"])
    for i, f in enumerate(frames[:8]):
        np.testing.assert_array_equal(f.samples, (data[0, :, i] / 1000).astype(np.float32))
    assert frames[0].source == "ims_test1_first50_int16_milli_g.npz#0 (2003.10.22.12.06.24)"
    last = SHARED / "ims" / "raw_test1_first50" / "2003.10.22.16.44.13"
    ascii_frames = list(read_recording(last))
    assert names[49] == last.name
    for a, b in zip(frames[-8:], ascii_frames):
        assert (a.machine, a.channel, a.start_s, a.fs_hz) == (
            b.machine, b.channel, b.start_s, b.fs_hz)
        np.testing.assert_allclose(a.samples, b.samples, atol=1e-7)


# FEMTO -----------------------------------------------------------------------


def test_femto_sample_round_trip():
    assert recording_kind(FEMTO) == "femto-npz"
    frames = list(read_recording(FEMTO))
    with np.load(FEMTO) as z:
        acc, hms = z["acc_milli_g"], z["acc_start_h_m_s_us"]
    assert len(frames) == acc.shape[0] * 2 == 436
    assert {f.machine for f in frames} == {"femto-bearing1_2"}
    assert [f.channel for f in frames[:4]] == ["horizontal", "vertical"] * 2
    assert all(f.fs_hz == 25600.0 and f.rpm == 1800.0 for f in frames)
    day_s = 1302048000.0  # 2011-04-06, the experiment's date in the challenge description
    assert frames[0].start_s == pytest.approx(day_s + 8 * 3600 + 47 * 60 + 5.196910, abs=1e-6)
    assert frames[2].start_s - frames[0].start_s == pytest.approx(40.0)
    h, m, s, us = hms[-1]
    assert frames[-1].start_s == pytest.approx(day_s + h * 3600 + m * 60 + s + us / 1e6)
    assert frames[6].source == "femto_learning_Bearing1_2.npz#3 (acc_00013.csv)"
    for i in (0, 3, 217):
        for c in (0, 1):
            np.testing.assert_array_equal(frames[2 * i + c].samples,
                                          (acc[i, :, c] / 1000).astype(np.float32))


def test_femto_midnight_and_plain_name(tmp_path):
    with np.load(FEMTO) as z:
        arrays = {k: z[k][:3] if k.startswith("acc_") else z[k] for k in z.files}
    arrays["acc_start_h_m_s_us"] = np.array(
        [[23, 59, 50, 0], [23, 59, 59, 500000], [0, 0, 9, 500000]])
    path = tmp_path / "run7.npz"
    np.savez(path, **arrays)
    frames = list(read_recording(path))
    assert frames[0].machine == "run7" and frames[0].rpm is None
    assert [f.start_s for f in frames[::2]] == [86390.0, 86399.5, 86409.5]
    # A clock glitch (six hours back, no midnight) is no longer the end of the recording: the
    # snapshot keeps the time it states, and the pipeline refuses it (tests/test_cli.py).
    arrays["acc_start_h_m_s_us"][1] = [17, 59, 59, 500000]
    np.savez(path, **arrays)
    assert [f.start_s for f in read_recording(path)][::2] == [86390.0, 64799.5, 86409.5]


@needs_shared
def test_femto_full_file_with_temperature_keys():
    frames = list(read_recording(SHARED / "femto" / "femto_learning_Bearing1_2.npz"))
    assert len(frames) == 871 * 2
    assert frames[-1].start_s - frames[0].start_s == pytest.approx(870 * 10.0)


@needs_shared
@pytest.mark.parametrize("name, snapshots, glitches", [
    ("femto_learning_Bearing1_1.npz", 1402, [1060]),  # acc_02121 says 09:38:46 at 15:33
    ("femto_test_Bearing1_3.npz", 1188, [])])
def test_femto_sibling_runs_read_whole(name, snapshots, glitches):
    frames = list(read_recording(SHARED / "femto" / name))
    assert len(frames) == 2 * snapshots
    t = np.array([f.start_s for f in frames[::2]])
    assert list(np.flatnonzero(np.diff(t) < 0) + 1) == glitches
    steps = np.diff(np.delete(t, glitches))
    assert np.median(steps) == pytest.approx(20.0, abs=0.1)  # every second snapshot
    assert {f.rpm for f in frames} == {1800.0} and frames[0].samples.size == 2560


# generic waveforms -----------------------------------------------------------


def test_npy_one_and_two_channels(tmp_path):
    de, fe = cwru_samples(n=60000)
    one = tmp_path / "Pump 7.npy"
    np.save(one, de)
    expect_error(one, "sample rate unknown", "--fs")
    frames = list(read_recording(one, fs_hz=48000))
    assert [(f.machine, f.channel, f.fs_hz, f.start_s) for f in frames] == [
        ("pump_7", "ch0", 48000.0, 0.0)]
    np.testing.assert_array_equal(frames[0].samples, de.astype(np.float32))
    two = tmp_path / "pump.npy"
    np.save(two, np.stack([de, fe], axis=1))
    frames = list(read_recording(two, fs_hz=48000, chunk_s=0.5, scale=2.0))
    check_contiguous(frames, 60000, 48000.0, 2)
    assert [f.channel for f in frames[:2]] == ["ch0", "ch1"]
    np.testing.assert_allclose(np.concatenate([f.samples for f in frames[1::2]]), 2 * fe, rtol=1e-6)
    np.save(tmp_path / "wide.npy", np.stack([de, fe]))
    expect_error(tmp_path / "wide.npy", "more channels than samples", call=lambda: read_recording(
        tmp_path / "wide.npy", fs_hz=48000))


def test_npz_waveform(tmp_path):
    de, fe = cwru_samples(n=4800)
    path = tmp_path / "motor.npz"
    np.savez(path, samples=np.stack([de, fe], axis=1), fs_hz=48000.0,
             channels=np.array(["DE", "FE"]), start_s=1.7e9)
    assert recording_kind(path) == "npz"
    frames = list(read_recording(path))
    assert [(f.machine, f.channel, f.fs_hz, f.start_s) for f in frames] == [
        ("motor", "de", 48000.0, 1.7e9), ("motor", "fe", 48000.0, 1.7e9)]
    np.testing.assert_array_equal(frames[1].samples, fe.astype(np.float32))
    np.savez(path, samples=de)
    expect_error(path, "no fs_hz key", "--fs")
    np.savez(path, other=de)
    expect_error(path, "unknown .npz layout", "['other']")


def _write_pcm(path, ints: np.ndarray, width: int, fs: int = 48000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ints.shape[1])
        w.setsampwidth(width)
        w.setframerate(fs)
        raw = ints.astype("<i4").view(np.uint8).reshape(*ints.shape, 4)[..., :width]
        w.writeframes(raw.tobytes())


@pytest.mark.parametrize("width", [2, 3])
def test_wav_integer_normalised_then_scaled(tmp_path, width):
    de, fe = cwru_samples(n=100000)
    full = 2 ** (8 * width - 1)
    peak = max(np.abs(de).max(), np.abs(fe).max())
    ints = np.round(np.stack([de, fe], axis=1) / peak * (full - 1)).astype(np.int32)
    path = tmp_path / "de_fe.wav"
    _write_pcm(path, ints, width)
    assert recording_kind(path) == "wav"
    scale = peak * full / (full - 1)  # g per full scale
    frames = list(read_recording(path, scale=scale, chunk_s=1.0))
    assert frames[0].fs_hz == 48000.0 and [f.channel for f in frames[:2]] == ["ch0", "ch1"]
    check_contiguous(frames, 100000, 48000.0, 2)
    got = np.concatenate([f.samples for f in frames[::2]])
    np.testing.assert_allclose(got, ints[:, 0] / full * scale, rtol=1e-6, atol=1e-9)
    lsb = peak / (full - 1)
    np.testing.assert_allclose(got, de, atol=0.6 * lsb + 1e-7 * peak)  # quantisation only


def test_wav_float_is_g(tmp_path):
    de, _ = cwru_samples(n=10000)
    path = tmp_path / "de.wav"
    scipy.io.wavfile.write(path, 48000, de.astype(np.float32))
    (frame,) = read_recording(path)
    np.testing.assert_array_equal(frame.samples, de.astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    expect_error(path, "truncated")
    path.write_text("RIFX nonsense")
    expect_error(path, "not a RIFF/WAVE file")


def _write_csv(path, header, rows, comment=None):
    with open(path, "w", newline="") as f:
        if comment:
            f.write(comment + "\n")
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def test_csv_waveform_rate_from_time_column(tmp_path):
    de, fe = cwru_samples(n=24000)
    t = np.arange(24000) / 48000
    path = tmp_path / "bench.csv"
    _write_csv(path, ["time_s", "DE", "FE"],
               ([f"{ti:.7f}", repr(float(a)), repr(float(b))] for ti, a, b in zip(t, de, fe)))
    assert recording_kind(path) == "csv-waveform"
    frames = list(read_recording(path, chunk_s=0.1))
    assert frames[0].fs_hz == 48000.0 and [f.channel for f in frames[:2]] == ["de", "fe"]
    check_contiguous(frames, 24000, 48000.0, 2)
    assert frames[2].source == "bench.csv@4800"
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames[1::2]]),
                                  fe.astype(np.float32))


def test_csv_waveform_rate_from_comment(tmp_path):
    de, fe = cwru_samples(n=500)
    path = tmp_path / "nohdr.csv"
    _write_csv(path, None, zip(de, fe), comment="# fs_hz=48000 rpm=1796")
    frames = list(read_recording(path))
    assert [(f.channel, f.fs_hz, f.rpm) for f in frames] == [("ch0", 48000.0, 1796.0),
                                                              ("ch1", 48000.0, 1796.0)]
    np.testing.assert_array_equal(frames[0].samples, de.astype(np.float32))


def test_csv_waveform_errors(tmp_path):
    de, fe = cwru_samples(n=50)
    path = tmp_path / "x.csv"
    _write_csv(path, ["de", "fe"], zip(de, fe))
    expect_error(path, "sample rate unknown", "--fs")
    rows = [[f"{i / 48000:.7f}", repr(float(a)), repr(float(b))]
            for i, (a, b) in enumerate(zip(de, fe))]
    bad = [r[:] for r in rows]
    bad[5] = bad[5][:2]
    _write_csv(path, ["time_s", "de", "fe"], bad)
    expect_error(path, "row 7 has 2 columns, expected 3")
    bad = [r[:] for r in rows]
    bad[9][2] = "abc"
    _write_csv(path, ["time_s", "de", "fe"], bad)
    expect_error(path, "row 11, column 'fe': 'abc' is not a number")
    bad = [r[:] for r in rows]
    bad[20][0] = "nan"
    _write_csv(path, ["time_s", "de", "fe"], bad)
    expect_error(path, "row 22: time_s is not a number")
    bad = [r[:] for r in rows]
    bad[30][0] = f"{31.5 / 48000:.7f}"
    _write_csv(path, ["time_s", "de", "fe"], bad, comment="# fs_hz=48000")
    expect_error(path, "row 33: time_s steps by", "not a uniformly sampled waveform")
    path.write_text("# just a comment\n")
    expect_error(path, "empty file")


# feature stream --------------------------------------------------------------

STREAM = """\
# edge-agent feature-stream v1
# plant 3, line B
ts,pump-7/de/rms_g,pump-7/de/kurtosis,pump-7/de/rpm,fan-2/nde/rms_g
2024-05-01T12:00:00Z,0.124,3.07,1480,0.051
2024-05-01T12:10:00,0.131,,1482,

# a comment between rows
2024-05-01T14:20:00+02:00,,,0,0.049
1714566200.5,nan,3.2,,
"""


def test_feature_stream_read(tmp_path):
    path = tmp_path / "plant.csv"
    path.write_text(STREAM)
    assert recording_kind(path) == "feature-stream"
    recs = list(read_recording(path))
    assert all(isinstance(r, FeatureRecord) for r in recs)
    t0 = 1714564800.0  # 2024-05-01T12:00:00Z
    got = [(r.machine, r.channel, r.start_s, r.rpm, r.source) for r in recs]
    assert got[:3] == [("pump-7", "de", t0, 1480.0, "plant.csv:row 4"),
                       ("fan-2", "nde", t0, None, "plant.csv:row 4"),
                       ("pump-7", "de", t0 + 600, 1482.0, "plant.csv:row 5")]
    # 14:20+02:00 is 12:20Z; a naive time is UTC
    assert got[3:] == [("pump-7", "de", t0 + 1200, 0.0, "plant.csv:row 8"),
                       ("fan-2", "nde", t0 + 1200, None, "plant.csv:row 8"),
                       ("pump-7", "de", t0 + 1400.5, None, "plant.csv:row 9")]
    assert recs[0].features == {"rms_g": 0.124, "kurtosis": 3.07}
    assert recs[2].features == {"rms_g": 0.131}  # empty cell: not reported
    assert recs[3].features == {}  # rpm only: the machine is stopped
    assert np.isnan(recs[5].features["rms_g"]) and recs[5].features["kurtosis"] == 3.2


def test_feature_stream_sniffed_without_format_line(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(STREAM.splitlines()[2:]))
    assert recording_kind(path) == "feature-stream"
    assert len(list(read_recording(path))) == 6


@pytest.mark.parametrize("text, fragments", [
    ("# edge-agent feature-stream v2\nts,a/b/c\n", ["v2 is not supported"]),
    ("ts,Pump/DE/rms\n1,2\n", ["row 1, column 2 'Pump/DE/rms'", "<machine>/<channel>/<feature>"]),
    ("ts,a/b/c,a/b/c\n1,2,3\n", ["'a/b/c' appears twice"]),
    ("ts,a/b/c\n1,2\n2,3,4\n", ["row 3 has 3 cells, expected 2"]),
    ("ts,a/b/c\nyesterday,2\n", ["row 2: ts 'yesterday' is neither ISO 8601 nor Unix seconds"]),
    ("ts,a/b/c\n1,2\n2,n/a\n", ["row 3, column 'a/b/c': 'n/a' is not a number"]),
    ("ts,a/b/c\n2024-01-02,2\n2024-01-01,3\n", ["row 3: ts 2024-01-01 is earlier", "time order"]),
])
def test_feature_stream_errors(tmp_path, text, fragments):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    expect_error(path, *fragments, call=lambda: read_feature_stream(path))


def test_feature_stream_write_read_round_trip(tmp_path):
    recs = list(itertools.islice(read_recording(SAMPLE / "ims" / "ims_test1_features.csv"), 80))
    extra = [
        FeatureRecord("pump-7", "de", recs[-1].start_s + 0.123456, {"rms_g": 0.1 + 1e-12}, None),
        FeatureRecord("pump-7", "de", recs[-1].start_s + 0.123456, {"peak_g": 0.5}, 1480.5),
        FeatureRecord("pump-7", "de", recs[-1].start_s + 1, {}, 0.0),
    ]
    path = tmp_path / "out.csv"
    assert write_feature_stream(path, recs + extra, comments=["test"]) == 10 + 2 + 1
    assert path.read_text().startswith("# edge-agent feature-stream v1\n# test\nts,")
    back = list(read_feature_stream(path))
    assert len(back) == len(recs) + 3
    for a, b in zip(recs + extra, back):
        assert (a.machine, a.channel, a.features, a.rpm) == (
            b.machine, b.channel, b.features, b.rpm)
        assert a.start_s == pytest.approx(b.start_s, abs=1e-6)
    with pytest.raises(ValueError, match="feature name 'RMS'"):
        write_feature_stream(path, [FeatureRecord("m", "c", 0.0, {"RMS": 1.0})])
    with pytest.raises(ValueError, match="out of time order"):
        write_feature_stream(path, [FeatureRecord("m", "c", 1.0, {"a": 1.0}),
                                    FeatureRecord("m", "c", 0.0, {"a": 1.0})])


def test_sample_ims_feature_stream():
    recs = list(read_recording(SAMPLE / "ims" / "ims_test1_features.csv"))
    assert len(recs) == 2156 * 8
    assert {r.machine for r in recs} == {"ims1"}
    assert {r.channel for r in recs} == {f"bearing{k}-{axis}" for k in range(1, 5) for axis in "xy"}
    assert set(recs[0].features) == {"rms_g", "kurtosis", "env_bpfi_energy", "env_bsf_energy"}
    assert recs[0].start_s == IMS_T0 and recs[0].rpm == 2000.0
    # first snapshot, bearing 3 x: the raw table's excess kurtosis is 0.4054385195773422
    assert recs[4].features["kurtosis"] == pytest.approx(3.40544, abs=1e-5)


# IMS tables conversion -------------------------------------------------------


@needs_shared
def test_ims_tables_conversion():
    raw, spectral = IMS_TABLES / "test1_raw.csv", IMS_TABLES / "test1_spectral.csv"
    recs = list(convert_ims_tables(raw, spectral, test=1))
    assert len(recs) == 2156 * 8
    assert [(r.machine, r.channel) for r in recs[:8]] == [
        ("ims1", f"bearing{k}-{axis}") for k in range(1, 5) for axis in ("x", "y")]
    with open(raw) as f:
        rows = list(csv.DictReader(f))
    with open(spectral) as f:
        srow = next(csv.DictReader(f))
    b3x = recs[4]
    assert (b3x.machine, b3x.channel) == ("ims1", "bearing3-x")
    assert b3x.features["kurtosis"] == float(rows[0]["Bearing3_ch1_kurt"]) + 3
    assert b3x.features["env_kurtosis"] == float(srow["Bearing3_ch1_env_kurtosis"]) + 3
    assert b3x.features["rms_g"] == float(rows[0]["Bearing3_ch1_std"])
    assert b3x.features["rms_dc_g"] == float(rows[0]["Bearing3_ch1_rms"])
    assert b3x.features["abs_max_g"] == float(rows[0]["Bearing3_ch1_max"])
    assert len(b3x.features) == 24 and b3x.rpm == 2000.0
    assert recs[0].start_s == IMS_T0
    assert recs[-1].start_s == 1069803596.0  # 2003-11-25T23:39:56Z
    assert recs[-1].source == "test1_raw.csv:row 2157 (2003.11.25.23.39.56)"
    # the table's definitions, checked against the raw snapshot itself
    x = np.loadtxt(IMS_SNAPSHOT)[:, 4]
    d = x - x.mean()
    assert b3x.features["rms_g"] == pytest.approx(np.sqrt(np.mean(d**2)), rel=1e-12)
    pearson = np.mean(d**4) / np.mean(d**2) ** 2
    assert b3x.features["kurtosis"] == pytest.approx(pearson, rel=1e-9)
    # read_recording joins the spectral table lying beside the raw one
    first = next(read_recording(raw))
    assert first.features == recs[0].features


@needs_shared
def test_ims_tables_write_read_round_trip(tmp_path):
    raw, spectral = IMS_TABLES / "test1_raw.csv", IMS_TABLES / "test1_spectral.csv"
    out = tmp_path / "test1_features.csv"
    assert write_ims_feature_stream(raw, out, spectral, test=1) == 2156
    back = read_feature_stream(out)
    for a, b in itertools.zip_longest(convert_ims_tables(raw, spectral), back):
        assert (a.machine, a.channel, a.start_s, a.features, a.rpm) == (
            b.machine, b.channel, b.start_s, b.features, b.rpm)


def test_ims_tables_errors(tmp_path):
    header = "file_index,timestamp,filename,Bearing1_ch1_std,Bearing1_ch1_kurt"
    raw = tmp_path / "test2_raw.csv"
    raw.write_text(f"{header}\n0,2004-02-12 10:32:39,2004.02.12.10.32.39,0.07,0.2\n"
                   "1,2004-02-12 10:42:39,2004.02.12.10.42.39,0.07,x\n")
    expect_error(raw, "row 3, column 'Bearing1_ch1_kurt': 'x' is not a number",
                 call=lambda: convert_ims_tables(raw, test=2))
    raw.write_text(f"{header},Bearing1_ch1_new\n0,2004-02-12 10:32:39,f,0.07,0.2,1\n")
    expect_error(raw, "column 'Bearing1_ch1_new' is not a known IMS table column",
                 call=lambda: convert_ims_tables(raw))
    raw.write_text(f"{header}\n0,2004-02-12 10:32:39,2004.02.12.10.32.39,0.07,0.2\n")
    spectral = tmp_path / "test2_spectral.csv"
    spectral.write_text("file_index,Bearing1_ch1_env_kurtosis\n5,1.0\n")
    expect_error(spectral, "no row for file_index 0",
                 call=lambda: convert_ims_tables(raw, spectral, test=2))
    spectral.unlink()
    (rec,) = read_recording(raw)
    assert (rec.machine, rec.channel, rec.features) == ("ims2", "bearing1-x",
                                                        {"rms_g": 0.07, "kurtosis": 3.2})


# dispatch and API ------------------------------------------------------------


def test_dispatch_errors(tmp_path):
    expect_error(tmp_path / "missing.wav", "no such file or directory",
                 call=lambda: read_recording(tmp_path / "missing.wav"))
    odd = tmp_path / "data.xyz"
    odd.write_text("1,2,3")
    expect_error(odd, "unknown format (suffix '.xyz')")
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    expect_error(empty, "empty file")
    expect_error(CWRU_NORMAL, "scale=2.0 applies only to generic waveforms",
                 call=lambda: read_recording(CWRU_NORMAL, scale=2.0))
    stream = SAMPLE / "ims" / "ims_test1_features.csv"
    expect_error(stream, "fs_hz does not apply", call=lambda: read_recording(stream, fs_hz=1.0))
    expect_error(CWRU_NORMAL, "chunk_s must be a positive number",
                 call=lambda: read_recording(CWRU_NORMAL, chunk_s=0))


def test_kind_sniffed_from_content_without_suffix(tmp_path):
    de, _ = cwru_samples(n=100)
    np.save(tmp_path / "a.npy", de)
    (tmp_path / "a.npy").rename(tmp_path / "capture_001")
    assert recording_kind(tmp_path / "capture_001") == "npy"
    shutil.copy(CWRU_NORMAL, tmp_path / "cwru_97.dat")
    assert recording_kind(tmp_path / "cwru_97.dat") == "cwru-mat"


def test_errors_are_checked_at_call_and_picklable(tmp_path):
    with pytest.raises(RecordingError):
        read_recording(tmp_path / "absent.mat")  # no iteration needed
    err = RecordingError(tmp_path / "x.mat", "bad")
    assert isinstance(err, ValueError) and str(err) == f"{tmp_path / 'x.mat'}: bad"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.problem, str(again)) == (err.path, err.problem, str(err))


def test_import_does_not_load_scipy_signal():
    code = "import sys, edge_agent.readers; print('scipy.signal' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_shared
def test_ims_mean_abs_table_is_the_same_rig_and_channels():
    """DatasetBearingTest_1.csv: mean |x| per bearing and axis, the rig one machine."""
    path = SHARED / "ims" / "aggregated" / "DatasetBearingTest_1.csv"
    assert recording_kind(path) == "ims-mean-abs"
    records = list(read_recording(path))
    assert len(records) == 2156 * 8
    assert {r.machine for r in records} == {"ims1"}
    assert [r.channel for r in records[:8]] == [f"bearing{k}-{a}" for k in (1, 2, 3, 4)
                                                for a in "xy"]
    first = records[0]
    assert first.features == {"mean_abs_dc_g": pytest.approx(0.10414384765625)}
    assert first.rpm == 2000.0 and first.source == "DatasetBearingTest_1.csv:row 2"
    assert first.start_s == utc_seconds("2003-10-22 12:06:24")


def test_ims_mean_abs_table_errors(tmp_path):
    bad = tmp_path / "DatasetBearingTest_1.csv"
    bad.write_text(",Bearing 1x,Pump\n2003-10-22 12:06:24,0.1,0.2\n")
    expect_error(bad, "column 'Pump' is not 'Bearing <k>x'")
    bad.write_text(",Bearing 1x\nyesterday,0.1\n")
    expect_error(bad, "row 2: time 'yesterday' is not a date-time")
