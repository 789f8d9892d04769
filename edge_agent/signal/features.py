"""The feature vector of a vibration window, with names, units and meaning.

:func:`extract_features` turns any number of acceleration windows (one per row,
or along any ``axis``) into a dict of named feature arrays. Names are stable
across versions; :data:`FEATURE_DOCS` documents each with its unit.

>>> import numpy as np
>>> fs = 25600.0
>>> t = np.arange(25600) / fs
>>> x = np.stack([0.5 * np.sin(2 * np.pi * 100.0 * t), np.sin(2 * np.pi * 50.0 * t)])
>>> feats = extract_features(x, fs)
>>> np.round(feats["rms_g"], 3).tolist(), np.round(feats["dominant_hz"], 1).tolist()
([0.354, 0.707], [100.0, 50.0])
>>> feats["iso_zone"].tolist()
['D', 'D']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.signal.envelope import (amplitude_near, amplitude_spectrum, compact_spectrum,
                                        default_envelope_band_hz, envelope)
from edge_agent.signal.bearing import FAULTS, FaultOrders
from edge_agent.signal.spectrum import (band_rms_g, default_bands_hz, dominant_hz, peak_hz,
                                        spectral_centroid_hz, welch_psd)
from edge_agent.signal.stats import _central_moments, _ratio, window_statistics
from edge_agent.signal.velocity import DEFAULT_VELOCITY_BAND_HZ, iso_zone, velocity_rms_from_psd


@dataclass(frozen=True)
class FeatureSpec:
    """How features are computed for one kind of sensor (parameters as given).

    Parameters
    ----------
    bands_hz : tuple of (lo, hi), optional
        Bands for ``band_<lo>_<hi>hz_rms_g``; default the log-spaced
        :func:`~edge_agent.signal.spectrum.default_bands_hz`.
    velocity_band_hz : (lo, hi)
        ISO 20816 band; use ``(2, 1000)`` for machines below 600 rpm.
    psd_resolution_hz : float
        Welch segment length is ``fs / psd_resolution_hz``, at most a quarter of
        the window so that there are always seven half-overlapping segments.
    psd_average : {"robust", "mean", "median"}
        How Welch segments are combined (see
        :func:`~edge_agent.signal.spectrum.welch_psd`). ``"robust"`` leaves out
        segments hit by a one-off shock, so band levels and velocity follow what
        persists through the window.
    sustained_blocks : int
        Sub-blocks for the ``sustained_*`` statistics.
    envelope_band_hz : (lo, hi), optional
        Band-pass before the envelope; default
        :func:`~edge_agent.signal.envelope.default_envelope_band_hz`.
    envelope_min_hz, envelope_max_hz : float
        Range searched for ``env_peak_hz``: above shaft wobble, below where
        bearing defect lines end.
    fault_orders : FaultOrders, optional
        Bearing defect orders; with a shaft speed they add the ``*_hz`` defect
        frequencies and the envelope amplitudes ``env_<fault>_g`` at them.
    fault_tolerance : float
        Relative half-width of the search band around each defect frequency
        (slip makes real lines fall 1–2 % off the kinematic value).
    iso_group, iso_foundation : int, str
        ISO 20816-3 machine group (1 or 2) and foundation (rigid, flexible).
    """

    bands_hz: tuple[tuple[float, float], ...] | None = None
    velocity_band_hz: tuple[float, float] = DEFAULT_VELOCITY_BAND_HZ
    psd_resolution_hz: float = 4.0
    psd_average: str = "robust"
    sustained_blocks: int = 8
    envelope_band_hz: tuple[float, float] | None = None
    envelope_min_hz: float = 5.0
    envelope_max_hz: float = 1000.0
    fault_orders: FaultOrders | None = None
    fault_tolerance: float = 0.02
    iso_group: int = 2
    iso_foundation: str = "rigid"


def extract_features(x, fs_hz: float, spec: FeatureSpec = FeatureSpec(), *,
                     rpm=None, axis: int = -1, spectrum: bool = False) -> dict[str, np.ndarray]:
    """Compute every feature of the windows in ``x``.

    Parameters
    ----------
    x : array_like
        Acceleration in g, time along ``axis`` (e.g. shape ``(n_windows, n_samples)``).
    fs_hz : float
        Sample rate.
    spec : FeatureSpec
        Feature parameters.
    rpm : float or array_like, optional
        Shaft speed, scalar or one per window.
    axis : int
        Time axis.
    spectrum : bool
        Also return the compact envelope spectrum (``env_spectrum_g``, lines up to
        ``envelope_max_hz``, :func:`~edge_agent.signal.envelope.compact_spectrum`) and its
        line spacing ``env_spectrum_df_hz`` (a float): not features, for alerts' plots.

    Returns
    -------
    dict
        Feature name to an array of the shape of ``x`` without ``axis``
        (``iso_zone`` holds letters; everything else float64).
    """
    x = np.moveaxis(np.asarray(x), axis, -1)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    n = x.shape[-1]
    out = window_statistics(x, spec.sustained_blocks)

    nperseg = max(2, min(n // 4, int(round(fs_hz / spec.psd_resolution_hz))))
    freqs, psd = welch_psd(x, fs_hz, nperseg=nperseg, average=spec.psd_average)
    bands = default_bands_hz(fs_hz) if spec.bands_hz is None else spec.bands_hz
    # A band needs two PSD lines to be a band rather than one line's leakage.
    df = fs_hz / nperseg
    out.update(band_rms_g(freqs, psd, [(lo, hi) for lo, hi in bands if hi - lo >= 2 * df]))
    out["spectral_centroid_hz"] = spectral_centroid_hz(freqs, psd)
    out["dominant_hz"] = dominant_hz(freqs, psd)
    velocity = velocity_rms_from_psd(freqs, psd, band_hz=spec.velocity_band_hz)
    out["velocity_rms_mm_s"] = velocity
    out["iso_zone"] = iso_zone(velocity, group=spec.iso_group, foundation=spec.iso_foundation)

    band = spec.envelope_band_hz or default_envelope_band_hz(fs_hz)
    env = envelope(x, fs_hz, band)
    env_mean, _, env_m2, _, env_m4 = _central_moments(env, -1)
    out["env_rms_g"] = np.sqrt(env_m2)
    out["env_kurtosis"] = _ratio(env_m4, env_m2 * env_m2)
    out["env_mean_g"] = env_mean
    ef, ea = amplitude_spectrum(env, fs_hz)
    out["env_peak_hz"] = peak_hz(ef, ea, min_hz=spec.envelope_min_hz, max_hz=spec.envelope_max_hz)
    if spectrum:
        # compacted first, then rounded: float32 rounding keeps the order, so the same lines
        df_hz, lines_g = compact_spectrum(ef, ea, spec.envelope_max_hz)
        out["env_spectrum_df_hz"], out["env_spectrum_g"] = df_hz, lines_g.astype(np.float32)

    if rpm is not None and spec.fault_orders is not None:
        shaft_hz = np.broadcast_to(np.asarray(rpm, dtype=np.float64) / 60.0, x.shape[:-1])
        env_df = ef[1] - ef[0]
        # The floor is the envelope spectrum's median where defect lines live: a
        # one-off shock raises that whole region, so lines and floor rise together.
        local = (ef >= spec.envelope_min_hz) & (ef <= spec.envelope_max_hz)
        floor = np.median(ea[..., local], axis=-1) if local.any() else np.full(ea.shape[:-1], np.nan)
        for name in FAULTS:
            f_hz = getattr(spec.fault_orders, name) * shaft_hz
            out[f"{name}_hz"] = f_hz
            tol = np.maximum(spec.fault_tolerance * f_hz, 1.5 * env_df)
            amp = amplitude_near(ef, ea, f_hz, tol)
            # A line closer to 0 Hz than three envelope bins (FTF in a 0.1 s
            # window) cannot be told from the envelope's own low-frequency hump.
            amp = np.where(f_hz >= max(3 * env_df, spec.envelope_min_hz), amp, np.nan)
            out[f"env_{name}_g"] = amp
            # Relative to the local floor, so a louder machine or a knock does not
            # read as a defect: how many times the median line the defect line is.
            out[f"env_{name}_ratio"] = _ratio(amp, floor)
    return out


def feature_unit(name: str) -> str:
    """The unit of a feature from its name ('' for dimensionless or unknown).

    >>> feature_unit("velocity_rms_mm_s"), feature_unit("bpfo_hz"), feature_unit("kurtosis")
    ('mm/s', 'Hz', '')
    >>> feature_unit("bpfo_energy_g2_hz")
    'g²/Hz'
    """
    return next((unit for suffix, unit in _UNIT_SUFFIXES if name.endswith(suffix)), "")


#: Unit suffixes of feature names, longest first so ``_g2_hz`` wins over ``_hz``.
_UNIT_SUFFIXES = (("_g2_hz", "g²/Hz"), ("_mm_s", "mm/s"), ("_g2", "g²"), ("_hz", "Hz"),
                  ("_g", "g"), ("_c", "°C"))


_LABELS = {
    "rms_g": "RMS", "peak_g": "peak", "peak_to_peak_g": "peak-to-peak", "mean_g": "DC offset",
    "crest_factor": "crest factor", "kurtosis": "kurtosis", "skewness": "skewness",
    "sustained_rms_g": "sustained RMS", "sustained_kurtosis": "sustained kurtosis",
    "sustained_crest_factor": "sustained crest factor", "velocity_rms_mm_s": "velocity RMS",
    "spectral_centroid_hz": "spectral centroid", "dominant_hz": "dominant frequency",
    "env_rms_g": "envelope RMS", "env_mean_g": "envelope level",
    "env_kurtosis": "envelope kurtosis", "env_peak_hz": "envelope peak",
}


def feature_label(name: str) -> str:
    """A short name operators read in alerts.

    >>> feature_label("band_1000_2000hz_rms_g"), feature_label("env_bpfo_ratio")
    ('1000-2000 Hz band', 'BPFO envelope prominence')
    >>> feature_label("bpfo_energy_g2_hz")
    'bpfo energy'
    """
    if name in _LABELS:
        return _LABELS[name]
    if name.startswith("band_") and name.endswith("hz_rms_g"):
        lo, hi = name[5:-8].split("_")
        return f"{lo.replace('p', '.')}-{hi.replace('p', '.')} Hz band"
    for fault in FAULTS:
        if name == f"env_{fault}_ratio":
            return f"{fault.upper()} envelope prominence"
        if name == f"env_{fault}_g":
            return f"{fault.upper()} envelope line"
    stem = next((name[:-len(suffix)] for suffix, _ in _UNIT_SUFFIXES if name.endswith(suffix)), name)
    return stem.replace("_", " ")


#: Every feature :func:`extract_features` can produce: name → (unit, meaning).
FEATURE_DOCS: dict[str, tuple[str, str]] = {
    "mean_g": ("g", "DC offset (mean acceleration); drifts with sensor temperature"),
    "rms_g": ("g", "AC RMS acceleration (mean removed): overall vibration level"),
    "peak_g": ("g", "largest absolute deviation from the mean"),
    "peak_to_peak_g": ("g", "maximum minus minimum"),
    "crest_factor": ("", "peak over RMS; impacts from early bearing damage raise it (sine 1.41)"),
    "kurtosis": ("", "Pearson kurtosis (Gaussian 3); impulsiveness, rises with early defects"),
    "skewness": ("", "asymmetry of the amplitude distribution (symmetric 0)"),
    "sustained_rms_g": ("g", "median of the RMS of 8 sub-blocks: the level that persists "
                             "through the window, unmoved by a one-off shock"),
    "sustained_kurtosis": ("", "median kurtosis of 8 sub-blocks: repetitive impacting (bearing "
                               "damage) raises it, a single knock does not"),
    "sustained_crest_factor": ("", "median crest factor of 8 sub-blocks"),
    "band_<lo>_<hi>hz_rms_g": ("g", "RMS acceleration in the band [lo, hi) Hz from the Welch "
                                    "PSD (shock-hit segments left out); default bands "
                                    "10-20-50-100-200-500-1k-2k-5k-10k-20k Hz below Nyquist and "
                                    "at least two PSD lines wide"),
    "spectral_centroid_hz": ("Hz", "power-weighted mean frequency; rises when high-frequency "
                                   "impact energy grows"),
    "dominant_hz": ("Hz", "frequency of the strongest PSD line above 2 Hz"),
    "velocity_rms_mm_s": ("mm/s", "velocity RMS over the ISO 20816 band (10-1000 Hz) by "
                                  "frequency-domain integration"),
    "iso_zone": ("", "ISO 20816-3 zone A/B/C/D of velocity_rms_mm_s for the configured group "
                     "and foundation ('' when the velocity is unknown)"),
    "env_rms_g": ("g", "RMS of the Hilbert envelope's fluctuation (envelope mean removed) in "
                       "the envelope band"),
    "env_mean_g": ("g", "mean of the Hilbert envelope: level in the envelope band"),
    "env_kurtosis": ("", "Pearson kurtosis of the envelope; impacts make it peaky"),
    "env_peak_hz": ("Hz", "strongest envelope-spectrum line between 5 and 1000 Hz: the "
                          "repetition rate of impacts"),
    "bpfo_hz": ("Hz", "ball-pass frequency, outer race (needs shaft speed and bearing)"),
    "bpfi_hz": ("Hz", "ball-pass frequency, inner race"),
    "bsf_hz": ("Hz", "ball (rolling element) spin frequency"),
    "ftf_hz": ("Hz", "fundamental train (cage) frequency"),
    "env_<fault>_g": ("g", "largest envelope-spectrum amplitude within ±2 % of that defect "
                           "frequency (fault = bpfo, bpfi, bsf, ftf); NaN when the line is "
                           "within three envelope-spectrum bins of 0 Hz"),
    "env_<fault>_ratio": ("", "env_<fault>_g over the median envelope-spectrum line between "
                              "5 and 1000 Hz: how far the defect line stands above the local "
                              "floor"),
}
