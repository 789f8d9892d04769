"""What is written by hand, timed side by side with the library it replaces, in one run.

    python benchmarks/hand_vs_library.py [--repeat 200]

Each pair computes the same thing (the tests in tests/test_signal.py and
tests/test_learning.py check that they agree); this prints the median time of
each and the ratio, on a 1-s window at 25.6 kHz (FEMTO's rate) of a real FEMTO
snapshot sequence, four channels at once as the agent batches them:

- ONNX export of the autoencoder's MLP: ``mlp_to_onnx`` vs ``skl2onnx``
  (the agent re-exports after every model update);
- Welch PSD: ``welch_psd`` vs ``scipy.signal.welch``;
- Hilbert envelope of a band: ``envelope`` (one rfft, band gain, one ifft) vs
  ``scipy.signal.sosfiltfilt`` (8th-order Butterworth) + ``scipy.signal.hilbert``;
- moments: ``window_statistics`` (all time-domain statistics and the sub-block
  ones in one pass) vs ``scipy.stats`` kurtosis and skew plus numpy for the
  others (without the sub-block statistics, which scipy has no equivalent of).

Then the latency of scoring the autoencoder (reconstruction error of 1 and of 32
windows) served by ONNX Runtime (one thread, as the agent does) against the same
network's scikit-learn ``predict``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FEMTO = REPO / "sample_data" / "femto" / "femto_learning_Bearing1_2.npz"
FS_HZ = 25600.0


def median_us(fn, repeat: int) -> float:
    fn()  # warm caches, imports and FFT plans
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def one_second_windows() -> np.ndarray:
    """Four 1-s channels of real acceleration (ten 0.1-s FEMTO snapshots each), g."""
    with np.load(FEMTO) as z:
        acc = z["acc_milli_g"][:40].astype(np.float32) / 1000.0  # (snapshot, 2560, axis)
    return np.stack([np.concatenate(acc[i * 10:(i + 1) * 10, :, i % 2]) for i in range(4)])


def fitted_mlp(n_features: int = 30):
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    Z = rng.normal(size=(256, n_features))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MLPRegressor(hidden_layer_sizes=(10,), activation="tanh", max_iter=20, random_state=0).fit(Z, Z)


def pairs(x: np.ndarray):
    import scipy.signal
    import scipy.stats

    from edge_agent.models.onnx_serving import export_with_skl2onnx, mlp_to_onnx
    from edge_agent.signal.envelope import envelope
    from edge_agent.signal.spectrum import welch_psd
    from edge_agent.signal.stats import window_statistics

    mlp = fitted_mlp()
    band = (1000.0, 0.45 * FS_HZ)
    sos = scipy.signal.butter(8, band, btype="bandpass", fs=FS_HZ, output="sos")
    x64 = x.astype(np.float64)

    def scipy_stats():
        centred = x64 - x64.mean(axis=-1, keepdims=True)
        rms = np.sqrt(np.mean(centred ** 2, axis=-1))
        peak = np.max(np.abs(x64), axis=-1)
        return (rms, peak, np.ptp(x64, axis=-1), peak / rms,
                scipy.stats.kurtosis(x64, axis=-1, fisher=False), scipy.stats.skew(x64, axis=-1))

    return [
        ("ONNX export of the MLP", 1,
         lambda: mlp_to_onnx(mlp.coefs_, mlp.intercepts_, "tanh"),
         lambda: export_with_skl2onnx(mlp, 30)),
        ("Welch PSD (4 Hz lines)", 4,
         lambda: welch_psd(x, FS_HZ, nperseg=6400),
         lambda: scipy.signal.welch(x, FS_HZ, nperseg=6400, axis=-1)),
        ("band envelope", 4,
         lambda: envelope(x, FS_HZ, band),
         lambda: np.abs(scipy.signal.hilbert(scipy.signal.sosfiltfilt(sos, x64)))),
        ("time-domain statistics", 4,
         lambda: window_statistics(x),
         scipy_stats),
    ]


def scoring_pairs():
    """Reconstruction error through ONNX Runtime and through scikit-learn, same network."""
    from edge_agent.models.onnx_serving import OnnxRegressor, mlp_to_onnx

    mlp = fitted_mlp()
    session = OnnxRegressor(mlp_to_onnx(mlp.coefs_, mlp.intercepts_, "tanh"), 30, threads=1)
    rng = np.random.default_rng(1)
    for n in (1, 32):
        Z = rng.normal(size=(n, 30)).astype(np.float32)
        ours = ((session.predict(Z) - Z) ** 2).mean(axis=1)
        theirs = ((mlp.predict(Z) - Z) ** 2).mean(axis=1)
        assert np.allclose(ours, theirs, atol=1e-5), "ONNX and scikit-learn disagree"
        yield (n, lambda Z=Z: ((session.predict(Z) - Z) ** 2).mean(axis=1),
               lambda Z=Z: ((mlp.predict(Z) - Z) ** 2).mean(axis=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    x = one_second_windows()
    print(f"{'what':<26} {'channels':>8} {'by hand µs':>11} {'library µs':>11} {'library/hand':>13}")
    for name, channels, hand, library in pairs(x):
        h, lib = median_us(hand, args.repeat), median_us(library, args.repeat)
        print(f"{name:<26} {channels:>8} {h:>11.0f} {lib:>11.0f} {lib / h:>12.1f}×")
    print(f"\n{'autoencoder scoring':<26} {'windows':>8} {'ORT µs':>11} {'sklearn µs':>11} "
          f"{'sklearn/ORT':>13}")
    for n, ort, sk in scoring_pairs():
        o, s = median_us(ort, args.repeat), median_us(sk, args.repeat)
        print(f"{'reconstruction error':<26} {n:>8} {o:>11.0f} {s:>11.0f} {s / o:>12.1f}×")


if __name__ == "__main__":
    main()
