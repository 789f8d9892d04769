"""tsfel, the feature library a user might pick instead: its cost per channel-window.

Used by ``throughput.py``; tsfel is a benchmark-only tool (``pip install tsfel==0.2.0``),
imported only when measured.
"""

from __future__ import annotations

import time

import numpy as np

#: tsfel features corresponding to ours (tsfel name -> our feature it stands for).
TSFEL_FEATURES = {
    "statistical": {"Mean": "mean_g", "Root mean square": "rms_g (tsfel's keeps the mean)",
                    "Standard deviation": "rms_g", "Max": "peak_g", "Min": "peak_g",
                    "Peak to peak distance": "peak_to_peak_g", "Kurtosis": "kurtosis",
                    "Skewness": "skewness"},
    "spectral": {"Spectral centroid": "spectral_centroid_hz",
                 "Fundamental frequency": "dominant_hz",
                 "Max power spectrum": "dominant_hz (its level)",
                 "Spectrogram mean coefficient": "band_*_rms_g (32 bands)"},
}
TSFEL_WINDOWS = 20  # two-column windows: 40 channel-windows


def tsfel_config():
    """tsfel's default configuration reduced to :data:`TSFEL_FEATURES`."""
    import tsfel

    full = tsfel.get_features_by_domain()
    return {domain: {name: full[domain][name] for name in names}
            for domain, names in TSFEL_FEATURES.items()}


def measure_tsfel(windows: list[np.ndarray], fs_hz: float, repeats: int) -> dict:
    """Milliseconds per channel-window (fastest of ``repeats``) over ``windows`` (each
    samples × channels): tsfel's extractor (n_jobs=None) and its feature functions called
    directly. Raises ImportError without tsfel."""
    import importlib.metadata

    import tsfel
    from tsfel.feature_extraction import features as tf

    windows = [np.asarray(w, dtype=np.float64) for w in windows]
    n_columns = windows[0].shape[1]
    config = tsfel_config()
    tsfel.time_series_features_extractor(config, windows[:2], fs=fs_hz, n_jobs=None, verbose=0)
    extractor = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        table = tsfel.time_series_features_extractor(config, windows, fs=fs_hz, n_jobs=None,
                                                     verbose=0)
        extractor.append((time.perf_counter() - t0) / (n_columns * len(windows)))
    calls = []
    for domain in config.values():
        for spec in domain.values():
            params = dict(spec["parameters"] or {})
            if "fs" in params:
                params["fs"] = fs_hz
            calls.append((getattr(tf, spec["function"].replace("tsfel.", "")), params))
    columns = [w[:, i] for w in windows for i in range(n_columns)]
    direct = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in columns:
            for fn, params in calls:
                fn(x, **params)
        direct.append((time.perf_counter() - t0) / len(columns))
    return {"version": importlib.metadata.version("tsfel"),
            "features": sum(len(d) for d in config.values()),
            "values_per_channel": table.shape[1] // n_columns,
            "extractor_ms": 1e3 * min(extractor), "direct_ms": 1e3 * min(direct)}
