"""Vibration DSP: pure functions over numpy arrays, no I/O, no state.

Every function takes an ``axis`` (time, or frequency for spectra) and handles
any number of channels or windows in one call.

Lives at ``edge_agent.signal`` rather than a top-level ``signal`` package because
that would shadow the standard library's :mod:`signal` for any process started
from the repository root.
"""

from edge_agent.signal.bearing import BEARINGS, FaultOrders, parse_bearing
from edge_agent.signal.envelope import (amplitude_near, analytic_bandpass, amplitude_spectrum,
                                        default_envelope_band_hz, envelope, envelope_spectrum)
from edge_agent.signal.features import FEATURE_DOCS, FeatureSpec, extract_features, feature_unit
from edge_agent.signal.spectrum import (band_power_g2, band_rms_g, default_bands_hz,
                                        dominant_hz, peak_hz, spectral_centroid_hz, welch_psd)
from edge_agent.signal.stats import (crest_factor, kurtosis, mean_g, peak_g, peak_to_peak_g,
                                     rms_g, skewness, time_features)
from edge_agent.signal.velocity import iso_zone, velocity_rms_from_psd, velocity_rms_mm_s
from edge_agent.signal.windows import sliding_windows, window_count

__all__ = [
    "BEARINGS", "FaultOrders", "parse_bearing",
    "amplitude_near", "analytic_bandpass", "amplitude_spectrum", "default_envelope_band_hz",
    "envelope", "envelope_spectrum",
    "FEATURE_DOCS", "FeatureSpec", "extract_features", "feature_unit",
    "band_power_g2", "band_rms_g", "default_bands_hz", "dominant_hz", "peak_hz",
    "spectral_centroid_hz", "welch_psd",
    "crest_factor", "kurtosis", "mean_g", "peak_g", "peak_to_peak_g", "rms_g", "skewness",
    "time_features",
    "iso_zone", "velocity_rms_from_psd", "velocity_rms_mm_s",
    "sliding_windows", "window_count",
]
