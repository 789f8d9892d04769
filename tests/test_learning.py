"""The learners on real recordings: baseline, stopped machines, regimes, scorers,
protected adaptation (no habituation), restarts and re-baselining."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.signal

from edge_agent.frame import Frame
from edge_agent.models import ChannelDetector, DetectorConfig
from edge_agent.models.autoencoder import IncrementalAutoencoder
from edge_agent.models.baseline import Baseline
from edge_agent.models.hst import FrozenHalfSpaceTrees
from edge_agent.models.onnx_serving import OnnxRegressor, export_with_skl2onnx, mlp_to_onnx
from edge_agent.models.selection import select_features
from edge_agent.runtime.pipeline import Pipeline
from edge_agent.signal.bearing import BEARINGS
from edge_agent.signal.features import FeatureSpec
from edge_agent.runtime.windowing import Windower, featurize
from tests.conftest import load_cwru_de

SPEC = FeatureSpec(fault_orders=BEARINGS["6205-2rs"])


def cwru_records(condition="normal", *, rpm="file", t0=0.0, machine="m", gain=1.0,
                 window_s=0.2, hop_s=0.1, samples=None):
    """Feature records of a CWRU drive-end recording (0.2 s windows every 0.1 s)."""
    de, file_rpm = load_cwru_de(condition)
    x = (de if samples is None else samples) * np.float32(gain)
    frame = Frame(machine, "de", t0, 48000.0, x, file_rpm if rpm == "file" else rpm, "cwru@0")
    return featurize(Windower(window_s, hop_s).push(frame), lambda m, c: SPEC)


def run(pipeline, records, start_index=0):
    verdicts, alerts = [], []
    for i, rec in enumerate(records, start_index):
        verdict, alert = pipeline.process(rec, i)
        verdicts.append(verdict)
        if alert:
            alerts.append(alert)
    return verdicts, alerts


def test_every_verdict_shows_baseline_progress_until_monitoring():
    verdicts, alerts = run(Pipeline(DetectorConfig(baseline_windows=30)), cwru_records())
    progress = [v["baseline_progress"] for v in verdicts[:30]]
    assert [v["state"] for v in verdicts[:30]] == ["baselining"] * 30
    assert progress == sorted(progress) and progress[0] == pytest.approx(1 / 30, abs=1e-3)
    assert progress[-1] == 1.0
    assert all(v["state"] == "normal" and v["score"] is not None for v in verdicts[30:])
    assert alerts == []


def test_stopped_machine_is_neither_scored_nor_learned():
    detector = ChannelDetector(DetectorConfig(baseline_windows=30))
    for rec in cwru_records():
        detector.process(rec.features, rpm=rec.rpm, t_s=rec.start_s)
    updates = detector.updates
    # The same machine coasting down: its accelerometer sees 1/100 of the level.
    for rec in cwru_records(gain=0.01, t0=10.0):
        verdict = detector.process(rec.features, rpm=rec.rpm, t_s=rec.start_s)
        assert verdict.phase == "stopped" and verdict.score is None and not verdict.learned
    for rec in cwru_records(rpm=0.0, t0=20.0):  # or a speed sensor reading zero
        assert detector.process(rec.features, rpm=rec.rpm, t_s=rec.start_s).phase == "stopped"
    assert detector.updates == updates  # nothing learned while stopped
    rec = cwru_records(t0=30.0)[0]
    assert detector.process(rec.features, rpm=rec.rpm, t_s=rec.start_s).phase == "monitoring"


@pytest.mark.parametrize("speed_known", [True, False])
def test_speed_change_is_a_new_regime_not_a_fault(speed_known):
    de, _ = load_cwru_de("normal")
    # The healthy recording played 1796/1500 times slower: every line moves as it
    # would at 1500 rpm.
    slow = scipy.signal.resample_poly(de, 1796, 1500).astype(np.float32)
    rpm = (lambda r: r) if speed_known else (lambda r: None)
    records = (cwru_records(rpm=rpm(1796.0)) + cwru_records(rpm=rpm(1500.0), t0=100.0, samples=slow)
               + cwru_records(rpm=rpm(1796.0), t0=200.0))
    verdicts, alerts = run(Pipeline(DetectorConfig(baseline_windows=30)), records)
    if speed_known:
        assert alerts == []
        assert {v.get("regime") for v in verdicts} == {"1796rpm", "1500rpm"}
        # Each regime learned its baseline once; back at 1796 rpm nothing is re-learned.
        assert sum(v["state"] == "baselining" for v in verdicts) == 60
    else:  # the control: without the speed the same change does look like a fault
        assert any(a["severity"] == "alarm" for a in alerts)


def test_half_space_tree_limits_stay_frozen_after_an_outlier():
    from river import anomaly, compose, preprocessing

    normal = cwru_records()
    names, directions = select_features([k for k, v in normal[0].features.items()
                                         if isinstance(v, float)])
    X = np.array([[r.features[n] for n in names] for r in normal])
    baseline = Baseline(names, directions)
    for x in X[:30]:
        baseline.collect(x)
    baseline.fit()
    ours = FrozenHalfSpaceTrees(names, window_size=30).fit(baseline.standardize(X[:30]))
    vanilla = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(
        window_size=30, seed=42))
    for x in X[:60]:
        vanilla.learn_one(dict(zip(names, x)))
    faulty = np.array([[r.features[n] for n in names] for r in cwru_records("inner_race")])

    def separation():
        """Mean score of faulty windows minus mean score of held-out healthy ones."""
        ours_gap = (np.mean([ours.score_one(baseline.standardize(x)) for x in faulty])
                    - np.mean([ours.score_one(baseline.standardize(x)) for x in X[30:]]))
        vanilla_gap = (np.mean([vanilla.score_one(dict(zip(names, x))) for x in faulty])
                       - np.mean([vanilla.score_one(dict(zip(names, x))) for x in X[30:]]))
        return ours_gap, vanilla_gap

    ours_before, _ = separation()
    outlier = X[31] * 1000.0  # one absurd window (a sensor glitch)
    ours.learn_one(baseline.standardize(outlier))
    vanilla.learn_one(dict(zip(names, outlier)))
    ours_after, vanilla_after = separation()
    assert ours_before > 0.3
    assert ours_after == pytest.approx(ours_before, abs=0.02)  # limits frozen: unchanged
    assert abs(vanilla_after) < 0.01  # the running min-max squeezed everything into one cell


def test_autoencoder_replay_keeps_the_old_normal():
    # Old normal: the drive-end windows; new normal: the same bearing seen by the
    # fan-end accelerometer (other levels, other relations between features).
    import scipy.io

    from tests.conftest import CWRU_FILES, shared

    mat = scipy.io.loadmat(shared("cwru", "48k_drive_end_0hp", CWRU_FILES["normal"]))
    fe = next(v for k, v in mat.items() if k.endswith("FE_time")).ravel().astype(np.float32)
    old = cwru_records()
    new = cwru_records(samples=fe)
    names, directions = select_features([k for k, v in old[0].features.items()
                                         if isinstance(v, float)])
    b = Baseline(names, directions)
    for r in old:
        b.collect(np.array([r.features[n] for n in names]))
    b.fit()
    Z_old = b.standardize(np.array([[r.features[n] for n in names] for r in old]))
    Z_new = b.standardize(np.array([[r.features[n] for n in names] for r in new]))
    errors = {}
    for ratio in (1.0, 0.0):
        ae = IncrementalAutoencoder(len(names), replay_ratio=ratio, seed=3).fit(Z_old)
        initial = float(np.median(ae.score(Z_old)))
        rng = np.random.default_rng(0)
        for _ in range(120):  # 1920 windows of the new normal, in batches of 16
            ae.partial_fit(Z_new[rng.integers(len(Z_new), size=16)])
        errors[ratio] = (float(np.median(ae.score(Z_old))), float(np.median(ae.score(Z_new))))
    (old_replay, new_replay), (old_plain, new_plain) = errors[1.0], errors[0.0]
    assert old_replay * 1.4 < old_plain  # the old normal is not forgotten ...
    assert old_replay < 2.5 * initial
    assert new_replay <= 1.2 * new_plain  # ... and the new one is learned as well


def test_onnx_serving_matches_sklearn_and_skl2onnx():
    from sklearn.neural_network import MLPRegressor

    normal = cwru_records()
    names, directions = select_features([k for k, v in normal[0].features.items()
                                         if isinstance(v, float)])
    X = np.array([[r.features[n] for n in names] for r in normal])
    b = Baseline(names, directions)
    for x in X:
        b.collect(x)
    Z = b.fit().standardize(X)
    ae = IncrementalAutoencoder(len(names)).fit(Z)
    np.testing.assert_allclose(ae.score(Z), ae.score_sklearn(Z), atol=1e-5)
    # The hand-built graph against the library's export of the same network.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = OnnxRegressor(export_with_skl2onnx(ae.mlp_, len(names)), len(names))
    ours = OnnxRegressor(mlp_to_onnx(ae.mlp_.coefs_, ae.mlp_.intercepts_, "tanh"), len(names))
    np.testing.assert_allclose(ours.predict(Z), library.predict(Z), atol=1e-5)
    assert library.predict(Z).shape == Z.shape  # the (N*d, 1) output is reshaped
    deep = MLPRegressor(hidden_layer_sizes=(8, 3, 8), activation="relu", max_iter=50,
                        random_state=0).fit(Z, Z)
    np.testing.assert_allclose(
        OnnxRegressor(mlp_to_onnx(deep.coefs_, deep.intercepts_, "relu"), len(names)).predict(Z),
        deep.predict(Z), atol=1e-5)


def test_a_fault_lasting_hours_still_alarms_at_the_end():
    config = DetectorConfig(baseline_windows=30)
    pipeline = Pipeline(config)
    baseline = cwru_records()
    fault = cwru_records("outer_race", t0=60.0)
    # Six hours of the outer-race fault, one window a minute (the recording's
    # windows cycled): long enough to habituate any learner that learns from it.
    hours = [type(r)(r.machine, r.channel, 60.0 + 60.0 * k, r.features, r.rpm, r.source)
             for k, r in enumerate(fault[k % len(fault)] for k in range(360))]
    verdicts, alerts = run(pipeline, baseline + hours)
    monitored = verdicts[len(baseline):]
    first_alarm = next(i for i, v in enumerate(monitored) if v["state"] == "alarm")
    assert first_alarm < 10
    assert all(v["state"] == "alarm" for v in monitored[first_alarm:])  # to the very end
    assert not any(v["learned"] for v in monitored)  # the fault never taught anything
    model = pipeline.detector("m", "de").models["1796rpm"]
    assert model.threshold.threshold_ <= config.threshold_max_growth * model.threshold.commissioned_
    assert [a["severity"] for a in alerts] == ["alarm"]  # one alert, no storm


def test_benign_falling_level_is_followed_without_alerts(femto_horizontal):
    # FEMTO Bearing1_2, first half: the bearing runs in and its band levels fall
    # by about a quarter. The baseline follows; nothing alarms.
    detector = ChannelDetector(DetectorConfig())
    thresholds = []
    for rec in femto_horizontal[:435]:
        verdict = detector.process(rec.features, rpm=rec.rpm, t_s=rec.start_s)
        assert not verdict.anomalous or not verdict.severe
        if verdict.threshold:
            thresholds.append(verdict.threshold)
    model = detector.models["1800rpm"]
    j = model.names.index("band_2000_5000hz_rms_g")
    assert model.learners[0].drift()[j] < -2.0  # followed the fall
    assert model.updates > 200
    assert len(set(np.round(thresholds, 3))) > 1  # the threshold adapted


def test_restart_recentres_a_small_step_but_not_a_big_one():
    six_hours = 6 * 3600.0
    for gain, alarmed in ((1.15, False), (2.5, True)):
        pipeline = Pipeline(DetectorConfig(baseline_windows=30))
        before = cwru_records()
        # A week later the same bearing comes back 15 % (or 150 %) louder.
        after = cwru_records(t0=7 * 24 * 3600.0, gain=gain) + cwru_records(
            t0=7 * 24 * 3600.0 + 10, gain=gain)
        verdicts, alerts = run(pipeline, before + after)
        assert verdicts[len(before)]["state"] == "baselining"  # settling after the restart
        assert any(a["severity"] == "alarm" for a in alerts) == alarmed, gain
        assert after[0].start_s - before[-1].start_s > six_hours


def test_rebaseline_restarts_learning_for_one_machine_only():
    pipeline = Pipeline(DetectorConfig(baseline_windows=30))
    run(pipeline, cwru_records(machine="pump-1") + cwru_records(machine="pump-2"))
    assert pipeline.rebaseline("pump-1") == 1
    v1, _ = run(pipeline, cwru_records(machine="pump-1", t0=10.0)[:3])
    v2, _ = run(pipeline, cwru_records(machine="pump-2", t0=10.0)[:3])
    assert [v["state"] for v in v1] == ["baselining"] * 3
    assert [v["state"] for v in v2] == ["normal"] * 3
    assert pipeline.detector("pump-1", "de").generation == 1


def test_learned_state_stays_bounded():
    import pickle

    detector = ChannelDetector(DetectorConfig(baseline_windows=30))
    normal = cwru_records()
    sizes = []
    for k in range(12):
        for rec in normal:
            detector.process(rec.features, rpm=rec.rpm, t_s=rec.start_s + 10 * k)
        sizes.append(len(pickle.dumps(detector)))
    # Grows while the recent histories fill, then stays flat.
    assert sizes[-1] < 1.1 * sizes[len(sizes) // 2] and sizes[-1] < 2_000_000


def test_a_sparse_machine_learns_a_day_of_running_and_a_dense_one_its_120_windows(femto_horizontal):
    from edge_agent.readers import read_recording
    from tests.conftest import SAMPLE_DATA

    # IMS test 1 sends a snapshot every 10 minutes: 120 windows would be its first 20
    # hours. With the defaults its baseline runs on to 24 h of running time, across the
    # rig's six-day stop after its first day, which is not running time.
    ims = [r for r in read_recording(SAMPLE_DATA / "ims" / "ims_test1_features.csv")
           if r.channel == "bearing3-x"]
    detector = ChannelDetector(DetectorConfig())
    phases = [detector.process(r.features, rpm=r.rpm, t_s=r.start_s).phase for r in ims[:200]]
    first = phases.index("monitoring")
    coverage = detector.models["2000rpm"].coverage
    assert 120 < coverage["windows"] == first < 200
    assert 24.0 <= coverage["running_h"] < 24.5
    assert coverage["from_s"] == ims[0].start_s and coverage["to_s"] == ims[first - 1].start_s
    assert coverage["to_s"] - coverage["from_s"] > 6 * 86400  # the stop is in, not counted
    # FEMTO Bearing1_2 sends one every 10 s: its 120 windows are 20 minutes, and enough.
    detector = ChannelDetector(DetectorConfig())
    phases = [detector.process(r.features, rpm=r.rpm, t_s=r.start_s).phase
              for r in femto_horizontal[:130]]
    assert phases.index("monitoring") == 120
    assert detector.models["1800rpm"].coverage["running_h"] == pytest.approx(119 * 10 / 3600,
                                                                             abs=1e-3)


def test_a_long_baseline_counts_only_running_time_and_stays_bounded():
    # A sensor every minute: 120 windows take two hours, so the baseline wants 24 h of running.
    normal = cwru_records()
    detector = ChannelDetector(DetectorConfig())
    t, k, stopped, step = 0.0, 0, 0, 60.0
    while not any(m.fitted for m in detector.models.values()):
        rec = normal[k % len(normal)]
        if 1000 <= k < 1100:  # stopped for 100 windows: not running time
            features, stopped = dict(rec.features, sustained_rms_g=1e-4, rms_g=1e-4), stopped + 1
        else:
            features = rec.features
        detector.process(features, rpm=rec.rpm, t_s=t)
        t, k = t + step, k + 1
    model = detector.models["1796rpm"]
    running = model.coverage["running_h"] * 3600
    assert 24 * 3600 <= running < 24 * 3600 + step
    assert model.coverage["windows"] == k - stopped
    # from first to last window: the running time, the stop, and the interval that ended it
    span = model.coverage["to_s"] - model.coverage["from_s"]
    assert span == pytest.approx(running + (stopped + 1) * step, abs=1.0)
    assert len(model.learners[0].training_) <= 1024 < k - stopped  # thinned, evenly


def test_evidence_spread_covers_what_the_baseline_does_now_and_then():
    from edge_agent.models.collection import BaselineCollection

    # Kurtosis 3 with a knock (kurtosis 40) in one window of seven: the median and the MAD
    # see only the quiet windows; the upward spread sees the knocks, so a later knock is
    # not "3 standard deviations above" its baseline. The band, steady, keeps a tight spread.
    c = BaselineCollection(baseline_windows=140)
    for k in range(140):
        c.add(np.zeros(1), {"kurtosis": 40.0 if k % 7 == 0 else 3.0 + 0.01 * (k % 5),
                            "band_100_200hz_rms_g": 0.02 * (1 + 0.01 * (k % 5))}, t_s=k, restarted=False)
    medians, spread = c.reference()
    assert medians["kurtosis"] == pytest.approx(3.02)
    assert np.log10(40.0 / 3.02) / spread["kurtosis"] < 3.0
    assert np.log10(2.0) / spread["band_100_200hz_rms_g"] > 10


def test_the_threshold_never_goes_below_what_healthy_windows_exceed_too_often(femto_horizontal):
    """Calibrated surprises of n voters, however dependent, exceed -log10(risk) - log10(n)
    more often than ``risk``: whatever its 120 baseline windows suggest, and whatever the
    seed of its learners, the threshold stays above that."""
    import math

    for seed in (1, 42):
        detector = ChannelDetector(DetectorConfig(seed=seed))
        thresholds = [v.threshold for v in (detector.process(r.features, rpm=r.rpm, t_s=r.start_s)
                                            for r in femto_horizontal[:400]) if v.threshold]
        model = detector.models["1800rpm"]
        null = 3.0 - math.log10(len(model.voting))
        assert len(model.voting) == 4 and min(thresholds) >= null - 1e-9
