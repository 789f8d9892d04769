"""Bad recordings and bad options get a clear refusal or a counted rejection, never a
traceback and never a window learned as normal (issue 11's cases, as a user meets them)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_agent.frame import Frame
from edge_agent.runtime.agent import Agent
from edge_agent.runtime.config import AgentConfig, MachineConfig
from edge_agent.runtime.validation import Limits
from tests.conftest import SAMPLE_DATA, shared
from tests.test_cli import edge_agent, json_lines

NORMAL = SAMPLE_DATA / "cwru" / "normal_0_97.mat"


def noise(n, seed=0):
    return np.random.default_rng(seed).normal(0.0, 0.1, n).astype(np.float32)


def no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout
    return result


def test_windows_with_nan_samples_are_rejected_never_learned(tmp_path):
    x = noise(24 * 8000)
    x[3 * 8000 + 10:3 * 8000 + 20] = np.nan  # window 3
    x[9 * 8000] = np.inf  # window 9
    np.save(tmp_path / "pump.npy", x)
    out = no_traceback(edge_agent("replay", tmp_path / "pump.npy", "--fs", "8000",
                                  "--baseline-windows", "10", "--jsonl", "-"))
    verdicts = [v for v in json_lines(out.stdout) if v["kind"] == "verdict"]
    rejected = [v for v in verdicts if v["state"] == "rejected"]
    assert [(v["index"], v["reason"]) for v in rejected] == [(3, "non_finite"), (9, "non_finite")]
    assert all(not v["learned"] and "score" not in v for v in rejected)
    assert "10 of 8000 samples are NaN or infinite" in rejected[0]["detail"]
    # ... and the 22 good windows were analysed: 10 for the baseline, then monitored
    assert sum(v["phase"] == "monitoring" for v in verdicts if v["state"] != "rejected") == 12
    assert "rejected windows (never scored nor learned): non_finite 2" in out.stderr
    assert "pump/ch0 window at 1970-01-01T00:00:03.000Z (pump.npy@24000) rejected, non_finite" \
        in out.stderr


def test_nan_samples_in_a_csv_waveform(tmp_path):
    x = noise(4 * 8000)
    text = "# fs_hz=8000\na\n" + "\n".join("nan" if 9000 <= i < 9100 else f"{v:.5f}"
                                         for i, v in enumerate(x))
    (tmp_path / "probe.csv").write_text(text)
    out = no_traceback(edge_agent("replay", tmp_path / "probe.csv", "--baseline-windows", "10",
                                  "--jsonl", "-"))
    states = [v["state"] for v in json_lines(out.stdout)]
    assert states == ["baselining", "rejected", "baselining", "baselining"]


def test_a_recording_too_short_for_one_window_says_so(tmp_path):
    np.save(tmp_path / "blip.npy", noise(100))
    out = no_traceback(edge_agent("replay", tmp_path / "blip.npy", "--fs", "8000", check=False))
    assert out.returncode == 2
    assert "100 samples (0.0125 s at 8000 Hz), fewer than the 256 a window needs" in out.stderr
    assert "nothing to analyse in" in out.stderr and "blip.npy" in out.stderr


@pytest.mark.parametrize("option, value", [("--baseline-windows", "0"),
                                           ("--baseline-windows", "-5"),
                                           ("--baseline-windows", "9"),
                                           ("--window-s", "0"), ("--hop-s", "-1")])
def test_replay_refuses_invalid_values(option, value):
    out = no_traceback(edge_agent("replay", NORMAL, option, value, check=False))
    assert out.returncode == 2 and f"argument {option}: must be" in out.stderr


def test_a_baseline_that_the_recording_never_completes_is_said():
    out = no_traceback(edge_agent("replay", NORMAL, "--baseline-s", "0.5"))
    assert "baseline de 1796rpm: 1970-01-01 00:00 to 1970-01-01 00:00, 2 windows, 0.0 h of " \
           "running (still learning: 10%); never monitored: give a longer recording" in out.stdout


@pytest.mark.parametrize("target, problem", [("missing/x.jsonl", "No such file or directory"),
                                             (".", "Is a directory")])
def test_jsonl_that_cannot_be_written_is_a_clear_error(tmp_path, target, problem):
    out = no_traceback(edge_agent("replay", NORMAL, "--jsonl", tmp_path / target, check=False))
    assert out.returncode == 2
    assert f"--jsonl {tmp_path / target}: cannot write it ({problem})" in out.stderr


def test_femto_bearing1_1_replays_whole_past_its_clock_glitch(tmp_path):
    """Snapshot 1060 says 09:38:46 between 15:32:49 and 15:33:19: refused and counted,
    the 1401 others analysed."""
    out = no_traceback(edge_agent("replay", shared("femto", "femto_learning_Bearing1_1.npz"),
                                  "--quiet", "--jsonl", tmp_path / "b11.jsonl"))
    verdicts = [v for v in json_lines((tmp_path / "b11.jsonl").read_text())
                if v["kind"] == "verdict"]
    assert len(verdicts) == 2 * 1402
    rejected = [v for v in verdicts if v["state"] == "rejected"]
    assert {(v["index"], v["reason"]) for v in rejected} == {(1060, "time_goes_back")}
    assert "(acc_02121.csv)" in rejected[0]["source"]
    assert "before the previous window (2010-12-01T15:32:39.065Z)" in rejected[0]["detail"]
    assert verdicts[-1]["index"] == 1401 and verdicts[-1]["state"] != "rejected"
    assert "rejected windows (never scored nor learned): time_goes_back 2" in out.stdout


def test_a_live_frame_whose_time_goes_back_is_refused_and_counted(tmp_path):
    config = AgentConfig(id="gw", state_dir=tmp_path, limits=Limits(),
                         machines=(MachineConfig(id="m1"),))
    agent = Agent(config)
    t0 = 1.7e9
    frames = [Frame("m1", "x", t0 + 10 * k, 25600.0, noise(2560, k), 1800.0, "mqtt")
              for k in range(6)]
    glitch = Frame("m1", "x", t0 - 6 * 3600, 25600.0, noise(2560, 9), 1800.0, "mqtt:glitch")
    for frame in frames[:3] + [glitch] + frames[3:]:
        agent.submit(frame)
    agent.run(threading.Event(), exit_when_done=True)
    assert agent.rejections.counts("m1", "x") == {"time_goes_back": 1}
    assert agent.indices[("m1", "x")] == 7 and agent.stats["windows"] == 6
    assert agent.channel_view[("m1", "x")]["start_s"] == frames[-1].start_s


def test_a_feature_stream_with_nothing_to_watch_is_rejected_and_said(tmp_path):
    rows = "\n".join(f"2024-05-01T12:{m:02d}:00Z,0.0{m % 7},{50 + m}" for m in range(30))
    (tmp_path / "probe.csv").write_text("# edge-agent feature-stream v1\n"
                                        "ts,pump/de/mean_g,pump/de/dominant_hz\n" + rows + "\n")
    out = no_traceback(edge_agent("replay", tmp_path / "probe.csv", check=False))
    assert out.returncode == 2
    assert "rejected windows (never scored nor learned): no_features 30" in out.stdout
    assert "no feature to watch among ['dominant_hz', 'mean_g']" in out.stderr
    assert "name some in [learning] features" in out.stderr


def test_a_frame_stamped_ahead_does_not_blind_its_channel_and_a_repeat_is_not_scored_twice(
        tmp_path):
    config = AgentConfig(id="gw", state_dir=tmp_path, limits=Limits(),
                         machines=(MachineConfig(id="m1"),))
    agent = Agent(config)
    t0 = 1.7e9
    frames = [Frame("m1", "x", t0 + 10 * k, 25600.0, noise(2560, k), 1800.0, "mqtt")
              for k in range(12)]
    ahead = Frame("m1", "x", t0 + 30 * 86400, 25600.0, noise(2560, 99), 1800.0, "mqtt:ahead")
    for frame in frames[:4] + [frames[3], ahead] + frames[4:]:  # a redelivery, then the glitch
        agent.submit(frame)
    agent.run(threading.Event(), exit_when_done=True)
    # the repeat is refused once; two windows after the glitch are refused, then the channel
    # takes its clock from the frames again and every later one is scored
    assert agent.rejections.counts("m1", "x") == {"duplicate": 1, "time_goes_back": 2}
    assert agent.channel_view[("m1", "x")]["start_s"] == frames[-1].start_s
    assert agent.stats["windows"] == 4 + 1 + 6
