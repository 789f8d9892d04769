"""The command line as a user runs it: features and replay on every kind of input."""

from __future__ import annotations

import json
import subprocess
import sys
import wave

import numpy as np
import pytest

from edge_agent.cli import build_parser
from tests.conftest import REPO, SAMPLE_DATA

CWRU = SAMPLE_DATA / "cwru"


def edge_agent(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "edge_agent", *map(str, args)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_version_and_help_on_every_command():
    out = edge_agent("--version").stdout
    assert out.startswith("edge-agent 0.")
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert {"features", "replay"} <= set(commands)
    for name in commands:
        assert "usage: edge-agent" in edge_agent(name, "--help").stdout


def test_replay_help_states_the_real_baseline_default():
    from edge_agent.models import DetectorConfig
    from edge_agent.models.collection import baseline_rule

    text = " ".join(edge_agent("replay", "--help").stdout.split())
    assert f"(default: {baseline_rule(DetectorConfig())})" in text


def test_features_prints_documented_fields():
    rows = json_lines(edge_agent("features", CWRU / "48k_Drive_End_OR007@6_0_135.mat",
                                 "--channel", "de").stdout)
    assert len(rows) == 2  # 2.5 s of recording, 1-s windows
    for i, row in enumerate(rows):
        assert set(row) == {"machine", "channel", "index", "ts", "source", "features"}
        assert (row["machine"], row["channel"], row["index"]) == ("cwru", "de", i)
        assert row["source"] == f"48k_Drive_End_OR007@6_0_135.mat@{48000 * i}"
        feats = row["features"]
        assert abs(feats["env_peak_hz"] - 3.5848 * 1796 / 60) < 3  # BPFO, default bearing
        assert feats["iso_zone"] in "ABCD" and feats["velocity_rms_mm_s"] > 0


def test_features_with_overlap_rpm_and_explicit_bearing(tmp_path):
    samples = np.load(SAMPLE_DATA / "femto" / "femto_learning_Bearing1_2.npz")["acc_milli_g"]
    path = tmp_path / "bearing.npy"
    np.save(path, samples[:40, :, 0].reshape(-1) / 1000.0)  # 4 s of continuous horizontal data
    rows = json_lines(edge_agent("features", path, "--fs", 25600, "--window-s", 1, "--hop-s",
                                 0.5, "--rpm", 1800, "--bearing", "n=13,d=3.5,D=25.6").stdout)
    assert [r["index"] for r in rows] == list(range(7))
    assert rows[0]["features"]["bpfo_hz"] == pytest.approx(13 / 2 * (1 - 3.5 / 25.6) * 30)


def test_replay_jsonl_verdicts_and_alerts():
    out = edge_agent("replay", CWRU / "normal_0_97.mat", CWRU / "48k_Drive_End_IR007_0_109.mat",
                     "--window-s", 0.2, "--hop-s", 0.1, "--baseline-windows", 20,
                     "--jsonl", "-").stdout
    rows = json_lines(out)
    verdicts = [r for r in rows if r["kind"] == "verdict"]
    alerts = [r for r in rows if r["kind"] == "alert"]
    for v in verdicts:
        assert {"machine", "channel", "index", "ts", "source", "score", "threshold", "state",
                "learned"} <= set(v)
        assert v["state"] in ("stopped", "baselining", "normal", "warning", "alarm")
    for channel in ("de", "fe"):
        indices = [v["index"] for v in verdicts if v["channel"] == channel]
        assert indices == list(range(len(indices)))  # per machine (and channel), from 0
    sources = [v["source"] for v in verdicts if v["channel"] == "de"]
    assert sources[0] == "normal_0_97.mat@0" and sources[1] == "normal_0_97.mat@4800"
    assert any(s.startswith("48k_Drive_End_IR007_0_109.mat@") for s in sources)
    assert [a["severity"] for a in alerts] == ["alarm"]
    first_fault = next(i for i, r in enumerate(rows) if r["kind"] == "verdict"
                       and r["source"].startswith("48k_Drive"))
    assert rows.index(alerts[0]) > first_fault  # raised on the fault, not before


def test_replay_feature_stream_the_rig_is_one_machine_a_channel_per_bearing_and_axis():
    result = edge_agent("replay", SAMPLE_DATA / "ims" / "ims_test1_features.csv", "--jsonl", "-")
    verdicts = [r for r in json_lines(result.stdout) if r["kind"] == "verdict"]
    assert {v["machine"] for v in verdicts} == {"ims1"}
    assert {v["channel"] for v in verdicts} == {f"bearing{k}-{a}" for k in range(1, 5) for a in "xy"}
    first = [v for v in verdicts if v["channel"] == "bearing3-x"]
    assert first[0]["index"] == 0 and first[0]["source"].startswith("ims_test1_features.csv:row")
    assert len(first) == 2156
    # A snapshot every 10 minutes: the default baseline is a day of running, across the
    # rig's six-day stop, and the summary says so for every channel.
    assert [v["phase"] for v in first].index("monitoring") == 169
    lines = [line for line in result.stderr.splitlines() if not line.startswith("replay: ")]
    assert lines[0].startswith("ims1: 17248 windows")
    assert ("  baseline bearing3-x 2000rpm: 2003-10-22 12:06 to 2003-10-29 16:39, 169 windows, "
            "24.1 h of running") in lines
    assert sum(line.startswith("  baseline bearing") for line in lines) == 8


def test_replay_wav_and_csv_waveforms(tmp_path):
    from tests.conftest import load_cwru_de

    de, _ = load_cwru_de("normal")
    with wave.open(str(tmp_path / "pump.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes((de / 4.0 * 32767).astype("<i2").tobytes())  # ±4 g full scale
    rows = json_lines(edge_agent("replay", tmp_path / "pump.wav", "--scale", 4.0,
                                 "--window-s", 0.2, "--baseline-windows", 20, "--jsonl", "-").stdout)
    assert {r["machine"] for r in rows} == {"pump"} and len(rows) == 25
    (tmp_path / "fan.csv").write_text("# fs_hz=48000\nvertical\n"
                                      + "\n".join(f"{v:.6f}" for v in de[:96000]))
    rows = json_lines(edge_agent("replay", tmp_path / "fan.csv", "--window-s", 0.2,
                                 "--baseline-windows", 20, "--jsonl", "-").stdout)
    assert {(r["machine"], r["channel"]) for r in rows} == {("fan", "vertical")}


def test_replay_baseline_by_duration():
    out = edge_agent("replay", CWRU / "normal_0_97.mat", "--channel", "de", "--window-s", 0.05,
                     "--baseline-s", 1.5, "--jsonl", "-").stdout
    rows = json_lines(out)
    states = [r["state"] for r in rows]
    # 1.5 s of running time is covered by the 31st window, which starts 1.5 s after the first.
    assert len(rows) == 50
    assert states[:31] == ["baselining"] * 31 and set(states[31:]) == {"normal"}
    assert rows[12]["baseline_progress"] == pytest.approx(0.4)  # 0.6 s of 1.5 s


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path):
    missing = edge_agent("replay", tmp_path / "nope.mat", check=False)
    assert missing.returncode == 2 and "nope.mat" in missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "broken.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    broken = edge_agent("features", tmp_path / "broken.mat", check=False)
    assert broken.returncode == 2 and "broken.mat" in broken.stderr
    bearing = edge_agent("features", CWRU / "normal_0_97.mat", "--bearing", "6205", check=False)
    assert bearing.returncode == 2 and "catalogue name" in bearing.stderr
    channel = edge_agent("features", CWRU / "normal_0_97.mat", "--channel", "ba", check=False)
    assert channel.returncode == 2 and channel.stdout == ""
    assert "normal_0_97.mat: no channel ba; it has de, fe" in channel.stderr


def test_the_readme_alert_example_is_what_replay_writes():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = json.loads(readme.split("An example (trimmed to two pieces of evidence and two "
                                      "features):\n\n```json\n", 1)[1].split("```", 1)[0])
    rows = json_lines(edge_agent(
        "replay", CWRU / "normal_0_97.mat", CWRU / "48k_Drive_End_OR007@6_0_135.mat",
        "--machine", "motor-3", "--channel", "de", "--window-s", "0.2", "--hop-s", "0.1",
        "--baseline-windows", "20", "--jsonl", "-").stdout)
    alert = next(r for r in rows if r["kind"] == "alert")
    for key, value in example.items():
        if key in ("features", "evidence"):  # the README keeps two of each
            name = lambda e: e.get("feature") or e.get("fault")  # noqa: E731
            assert value == [f for f in alert[key] if name(f) in {name(v) for v in value}]
        else:
            assert alert[key] == value, key


def test_replay_the_ims_mean_abs_table(tmp_path):
    """README: DatasetBearingTest_1.csv is read as the rig's feature stream (its first day and
    a half here: a day of baseline, then monitored)."""
    from tests.conftest import shared

    lines = shared("ims", "aggregated", "DatasetBearingTest_1.csv").read_text().splitlines()
    copy = tmp_path / "DatasetBearingTest_1.csv"
    copy.write_text("\n".join(lines[:301]) + "\n")
    out = edge_agent("replay", copy, "--jsonl", "-")
    verdicts = json_lines(out.stdout)
    assert {v["machine"] for v in verdicts} == {"ims1"} and len(verdicts) == 300 * 8
    assert {v["phase"] for v in verdicts[-8:]} == {"monitoring"}
    assert "baseline bearing1-x 2000rpm: 2003-10-22 12:06 to 2003-10-29 16:39, 169 windows" \
        in out.stderr
