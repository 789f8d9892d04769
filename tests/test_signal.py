"""DSP checked against analytic answers, against the scipy routines it replaces,
and on real CWRU bearing recordings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.signal
import scipy.stats

from edge_agent.signal import (BEARINGS, FaultOrders, FeatureSpec, envelope, envelope_spectrum,
                               extract_features, iso_zone, kurtosis, parse_bearing, peak_hz,
                               rms_g, skewness, sliding_windows, velocity_rms_mm_s, welch_psd)
from edge_agent.signal.features import FEATURE_DOCS
from edge_agent.signal.velocity import STANDARD_GRAVITY_M_S2
from tests.conftest import REPO, load_cwru_de

FS = 25600.0


def sine(amplitude_g, freq_hz, fs=FS, seconds=1.0, phase=0.0):
    t = np.arange(int(fs * seconds)) / fs
    return amplitude_g * np.sin(2 * np.pi * freq_hz * t + phase)


@pytest.mark.parametrize("amplitude_g, freq_hz", [(0.5, 100.0), (2.0, 50.0), (0.1, 317.3),
                                                  (1.0, 29.95)])
def test_sine_gives_analytic_rms_velocity_and_frequency(amplitude_g, freq_hz):
    x = sine(amplitude_g, freq_hz).astype(np.float32)
    feats = extract_features(x[None, :], FS)
    # Whole periods give exactly A/sqrt(2); 29.95 Hz leaves a partial one (0.1 %).
    assert feats["rms_g"][0] == pytest.approx(amplitude_g / np.sqrt(2), rel=1e-3)
    # v = a / (2 pi f): amplitude in m/s, then RMS in mm/s.
    velocity = amplitude_g * STANDARD_GRAVITY_M_S2 / (2 * np.pi * freq_hz) / np.sqrt(2) * 1000
    assert feats["velocity_rms_mm_s"][0] == pytest.approx(velocity, rel=0.01)
    assert feats["dominant_hz"][0] == pytest.approx(freq_hz, abs=0.2)
    assert feats["crest_factor"][0] == pytest.approx(np.sqrt(2), rel=1e-3)
    assert feats["kurtosis"][0] == pytest.approx(1.5, rel=5e-3)


def test_velocity_outside_iso_band_is_excluded():
    # 5 Hz and 2 kHz lie outside 10-1000 Hz: only the 100 Hz line counts.
    x = sine(1.0, 5.0) + sine(1.0, 2000.0) + sine(0.5, 100.0)
    expected = 0.5 * STANDARD_GRAVITY_M_S2 / (2 * np.pi * 100.0) / np.sqrt(2) * 1000
    assert velocity_rms_mm_s(x, FS) == pytest.approx(expected, rel=0.01)
    # Near the lower edge the Hann main lobe spans bins where 1/f^2 changes fast:
    # a slow machine needs a longer window and finer resolution.
    low = velocity_rms_mm_s(sine(1.0, 5.0, seconds=8.0), FS, band_hz=(2.0, 1000.0),
                            resolution_hz=0.25)
    assert low == pytest.approx(STANDARD_GRAVITY_M_S2 / (2 * np.pi * 5) / np.sqrt(2) * 1000, rel=0.02)


def test_iso_zone_boundaries():
    assert iso_zone([1.39, 1.41, 2.81, 4.51], group=2, foundation="rigid").tolist() == list("ABCD")
    assert iso_zone(float("nan")).tolist() == ""  # unknown velocity: no zone (not D)
    assert iso_zone([3.4, 3.6, 7.2, 11.1], group=1, foundation="flexible").tolist() == list("ABCD")
    with pytest.raises(ValueError, match="groups 1 and 2"):
        iso_zone(1.0, group=3)


@pytest.mark.parametrize("shape, axis, nperseg, noverlap, dtype, average", [
    ((4, 25600), -1, 6400, None, np.float64, "mean"),
    ((25600, 3), 0, 2048, 512, np.float64, "mean"),
    ((2, 3, 5000), -1, 5000, None, np.float32, "mean"),
    ((2, 9000, 2), 1, 1000, 999, np.float64, "mean"),
    ((4, 25600), -1, 6400, None, np.float64, "median"),
    ((3, 9000), -1, 1000, 250, np.float32, "median"),
    ((3, 40), -1, 2, None, np.float64, "mean"),  # the mean's correction at the smallest sizes
    ((3, 41), -1, 3, 1, np.float64, "mean"),
])
def test_batched_welch_matches_scipy(shape, axis, nperseg, noverlap, dtype, average):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) + 0.3).astype(dtype)  # with a DC offset to detrend
    f, p = welch_psd(x, FS, nperseg=nperseg, noverlap=noverlap, axis=axis, average=average)
    f_ref, p_ref = scipy.signal.welch(x, FS, window="hann", nperseg=nperseg, noverlap=noverlap,
                                      detrend="constant", scaling="density", axis=axis,
                                      average=average)
    np.testing.assert_allclose(f, f_ref)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(p, p_ref, rtol=tol, atol=tol * float(np.max(p_ref)))


def test_robust_welch_is_the_mean_when_stationary_and_ignores_a_shock():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 25600)) + sine(0.5, 160.0)
    f, mean_psd = welch_psd(x, FS, nperseg=6400, average="mean")
    _, robust_psd = welch_psd(x, FS, nperseg=6400, average="robust")
    np.testing.assert_allclose(robust_psd, mean_psd)  # nothing left out
    shocked = x.copy()
    shocked[:, 3000:3015] += 40.0 * np.hanning(15)  # one knock, 0.6 ms
    _, hit = welch_psd(shocked, FS, nperseg=6400, average="robust")
    _, hit_mean = welch_psd(shocked, FS, nperseg=6400, average="mean")
    total = lambda p: p.sum(axis=-1)  # noqa: E731
    assert np.all(np.abs(total(hit) / total(mean_psd) - 1) < 0.1)
    assert np.all(total(hit_mean) / total(mean_psd) > 1.3)


def test_sustained_statistics_ignore_one_shock_but_follow_repetitive_impacts():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(25600)
    knock = x.copy()
    knock[12000:12015] += 30.0 * np.hanning(15)
    impacts = x.copy()
    for start in range(100, 25600 - 20, 160):  # 160 impacts a second, like a BPFO line
        impacts[start:start + 15] += 6.0 * np.hanning(15)
    feats = extract_features(np.stack([x, knock, impacts]), FS)
    assert feats["kurtosis"][1] > 2 * feats["kurtosis"][0]  # the classic statistic jumps
    assert feats["sustained_kurtosis"][1] == pytest.approx(feats["sustained_kurtosis"][0], rel=0.05)
    assert feats["sustained_kurtosis"][2] > 1.3 * feats["sustained_kurtosis"][0]
    assert feats["sustained_rms_g"][1] == pytest.approx(feats["sustained_rms_g"][0], rel=0.02)


def test_fused_window_statistics_equal_the_separate_computations():
    from edge_agent.signal.stats import sustained_stats, time_features, window_statistics

    rng = np.random.default_rng(4)
    x = (rng.gamma(2.0, 0.05, size=(6, 25603)) - 0.09).astype(np.float32)  # DC offset, tail
    x[2, 4000:4010] += 3.0  # a shock in one sub-block
    fused = window_statistics(x)
    separate = {**time_features(x.astype(np.float64)), **sustained_stats(x.astype(np.float64))}
    assert set(fused) == set(separate)
    for name, value in separate.items():
        np.testing.assert_allclose(fused[name], value, rtol=2e-5, atol=1e-7, err_msg=name)


def test_moments_match_scipy_stats():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, size=(5, 10000))
    np.testing.assert_allclose(kurtosis(x), scipy.stats.kurtosis(x, axis=-1, fisher=False))
    np.testing.assert_allclose(skewness(x), scipy.stats.skew(x, axis=-1))
    np.testing.assert_allclose(rms_g(x.T, axis=0), x.std(axis=-1))


def test_envelope_matches_scipy_hilbert_after_butterworth():
    # An impact train at 107 Hz ringing a 3 kHz resonance, plus a shaft line at 30 Hz.
    fs, n = 20000.0, 20000
    t = np.arange(n) / fs
    impacts = np.zeros(n)
    impacts[(np.arange(0, 1, 1 / 107) * fs).astype(int)] = 1.0
    ring = np.exp(-t[:200] * 800) * np.sin(2 * np.pi * 3000 * t[:200])
    x = np.convolve(impacts, ring)[:n] + 0.2 * np.sin(2 * np.pi * 30 * t)
    x += np.random.default_rng(0).normal(0, 0.02, n)
    band = (2000.0, 4500.0)
    ours = envelope(x, fs, band)
    sos = scipy.signal.butter(8, band, btype="bandpass", fs=fs, output="sos")
    ref = np.abs(scipy.signal.hilbert(scipy.signal.sosfiltfilt(sos, x)))
    core = slice(1000, n - 1000)  # filter edge effects differ
    assert np.corrcoef(ours[core], ref[core])[0, 1] > 0.98
    f, a = envelope_spectrum(x, fs, band)
    assert peak_hz(f, a, min_hz=5.0) == pytest.approx(107.0, abs=0.5)


def test_band_rms_adds_up_to_overall_rms():
    x = np.random.default_rng(1).standard_normal((3, 25600))
    edges = (0.0, 10.0, 100.0, 1000.0, FS / 2 + 1)
    spec = FeatureSpec(bands_hz=tuple(zip(edges[:-1], edges[1:])))
    feats = extract_features(x, FS, spec)
    names = [f"band_{lo:g}_{hi:g}hz_rms_g".replace(".", "p") for lo, hi in spec.bands_hz]
    total = np.sqrt(sum(feats[n] ** 2 for n in names))
    np.testing.assert_allclose(total, feats["rms_g"], rtol=0.02)


def test_default_bands_are_log_spaced_and_below_nyquist():
    feats = extract_features(np.zeros((1, 4000)) + sine(1, 50, fs=4000.0), 4000.0)
    bands = sorted(k for k in feats if k.startswith("band_"))
    assert bands and all(int(k.split("_")[2][:-2]) <= 2000 for k in bands)


def test_axis_and_batch_shape_do_not_change_results():
    x = np.random.default_rng(2).standard_normal((2, 3, 12800)).astype(np.float32)
    a = extract_features(x, FS, rpm=1800, spec=FeatureSpec(fault_orders=BEARINGS["pronostia"]))
    b = extract_features(np.moveaxis(x, -1, 0), FS, axis=0, rpm=1800,
                         spec=FeatureSpec(fault_orders=BEARINGS["pronostia"]))
    one = extract_features(x[1, 2], FS, rpm=1800, spec=FeatureSpec(fault_orders=BEARINGS["pronostia"]))
    for name in a:
        assert a[name].shape == (2, 3)
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-9)
            np.testing.assert_allclose(a[name][1, 2], one[name], rtol=1e-5)


def test_flat_lined_window_gives_nan_not_an_error():
    feats = extract_features(np.zeros((1, 4096), dtype=np.float32), FS)
    assert feats["rms_g"][0] == 0.0
    assert np.isnan(feats["crest_factor"][0]) and np.isnan(feats["kurtosis"][0])


def test_every_feature_is_documented():
    feats = extract_features(sine(1, 50)[None], FS, rpm=1800,
                             spec=FeatureSpec(fault_orders=BEARINGS["pronostia"]))
    patterns = {k for k in FEATURE_DOCS}
    for name in feats:
        generic = (name if name in patterns else
                   "band_<lo>_<hi>hz_rms_g" if name.startswith("band_") else
                   "env_<fault>_g" if name.endswith("_g") else "env_<fault>_ratio")
        assert generic in patterns, name


def test_fault_orders_from_geometry_match_published_values():
    # IMS readme: 236.4, 296.9, 139.9, 14.8 Hz at 2000 rpm.
    f = BEARINGS["za-2115"].frequencies_hz(2000)
    assert [round(f[k], 1) for k in ("bpfo_hz", "bpfi_hz", "bsf_hz", "ftf_hz")] == \
        [236.4, 296.9, 139.9, 14.8]
    cwru = FaultOrders.from_geometry(9, 0.3126, 1.537)
    assert (round(cwru.bpfo, 4), round(cwru.bpfi, 4), round(cwru.ftf, 4)) == (3.5848, 5.4152, 0.3983)
    assert parse_bearing("6205-2RS") is BEARINGS["6205-2rs"]
    assert parse_bearing("bpfo=3,bpfi=5,bsf=2,ftf=0.4").bpfi == 5
    with pytest.raises(ValueError, match="catalogue name"):
        parse_bearing("nonsense")


def test_sliding_windows_view():
    w = sliding_windows(np.arange(20).reshape(2, 10), 4, 2)
    assert w.shape == (2, 4, 4) and w[1, 3].tolist() == [16, 17, 18, 19]


# --- real recordings -------------------------------------------------------------

CWRU_SHAFT_HZ = 1796 / 60.0


@pytest.fixture(scope="module")
def cwru_features():
    spec = FeatureSpec(fault_orders=BEARINGS["6205-2rs"])
    out = {}
    for name in ("normal", "inner_race", "outer_race", "ball"):
        de, rpm = load_cwru_de(name)
        out[name] = extract_features(sliding_windows(de, 48000, 48000), 48000.0, spec, rpm=rpm)
    return out


def test_cwru_envelope_peak_is_the_defect_frequency(cwru_features):
    bpfo, bpfi = 3.5848 * CWRU_SHAFT_HZ, 5.4152 * CWRU_SHAFT_HZ
    assert np.all(np.abs(cwru_features["outer_race"]["env_peak_hz"] - bpfo) < 3.0)
    assert np.all(np.abs(cwru_features["inner_race"]["env_peak_hz"] - bpfi) < 3.0)
    # The healthy bearing's strongest modulation is not a defect line.
    normal_peak = cwru_features["normal"]["env_peak_hz"]
    assert np.all(np.abs(normal_peak - bpfo) > 3.0) and np.all(np.abs(normal_peak - bpfi) > 3.0)


def test_cwru_healthy_envelope_is_far_lower_at_defect_lines(cwru_features):
    normal = cwru_features["normal"]
    assert np.max(normal["env_bpfo_g"]) * 50 < np.min(cwru_features["outer_race"]["env_bpfo_g"])
    assert np.max(normal["env_bpfi_g"]) * 50 < np.min(cwru_features["inner_race"]["env_bpfi_g"])
    assert np.max(normal["env_bpfi_ratio"]) * 20 < np.min(cwru_features["inner_race"]["env_bpfi_ratio"])


def test_cwru_features_are_physical(cwru_features):
    normal = cwru_features["normal"]
    assert 2.5 < np.median(normal["kurtosis"]) < 3.5  # near Gaussian when healthy
    assert np.median(cwru_features["outer_race"]["kurtosis"]) > 5  # impacts
    assert set(normal["iso_zone"]) <= set("AB")  # a healthy 2 hp motor


def test_stdlib_signal_is_not_shadowed_from_repo_root():
    out = subprocess.run([sys.executable, "-c", "import signal; print(signal.__file__)"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert "edge_agent" not in out and out.endswith("signal.py") or "lib-dynload" in out
    assert not (REPO / "signal").exists()

