"""What a reliability engineer looks at first, carried along for plots: physical indicators
per window and the envelope spectrum at an alert.

* Every verdict (and each channel of the machine status) carries ``indicators``: the
  window's overall and sustained RMS (g), velocity RMS (mm/s) with its ISO 20816-3 zone
  and class (``"2/rigid"``: group/foundation), kurtosis, crest factor and the bearing
  defect lines' envelope amplitudes (g), to 4 significant digits.
* Every alert carries ``envelope_spectrum``: the compact envelope spectrum
  (:func:`edge_agent.signal.envelope.compact_spectrum`: at most 400 lines up to
  ``envelope_max_hz``) of the leading channel's latest window and the mean of its
  baseline windows', with the defect frequencies, so a live capture can be plotted
  (``edge-agent report``) without the recording.

The baseline spectrum is kept on the channel's detector (checkpointed with it) and starts
again when the detector does (a re-baseline: a new generation).
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.signal.bearing import FAULTS

INDICATORS = ("rms_g", "sustained_rms_g", "velocity_rms_mm_s", "kurtosis", "sustained_kurtosis",
              "crest_factor", "sustained_crest_factor",
              *(f"env_{fault}_g" for fault in FAULTS))


def _round(value: float, digits: int = 4) -> float | None:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else None


def indicators(record) -> dict | None:
    """The window's physical indicators (see the module docstring), or None for a feature
    stream that has none of them.

    >>> from edge_agent.frame import FeatureRecord
    >>> indicators(FeatureRecord("m", "de", 0.0, {"rms_g": 0.123456, "iso_zone": "A",
    ...                                           "velocity_rms_mm_s": 0.8}, iso_class="2/rigid"))
    {'rms_g': 0.1235, 'velocity_rms_mm_s': 0.8, 'iso_zone': 'A', 'iso_class': '2/rigid'}
    """
    f = record.features
    out = {name: _round(f[name]) for name in INDICATORS if isinstance(f.get(name), float)}
    if not out:
        return None
    if f.get("iso_zone") and record.iso_class:
        out["iso_zone"], out["iso_class"] = f["iso_zone"], record.iso_class
    return out


def learn_baseline(detector, record, verdict) -> None:
    """Add a baseline window's envelope spectrum to the channel's baseline mean."""
    if record.envelope is None or verdict.phase != "baselining" or not verdict.learned:
        return
    df_hz, lines = record.envelope
    kept = getattr(detector, "envelope_baseline_", None)
    if (kept is None or kept["generation"] != detector.generation or kept["df_hz"] != df_hz
            or len(kept["sum"]) != len(lines)):
        kept = detector.envelope_baseline_ = {"generation": detector.generation,
                                              "df_hz": df_hz, "sum": np.zeros(len(lines)),
                                              "n": 0}
    kept["sum"] += lines
    kept["n"] += 1


def alert_spectrum(detector, channel: str, record) -> dict | None:
    """The ``envelope_spectrum`` of an alert whose leading channel's latest window is
    ``record`` (None without one)."""
    if record is None or record.envelope is None:
        return None
    df_hz, lines = record.envelope
    out = {"channel": channel, "df_hz": _round(df_hz, 6),
           "window_g": [_round(float(v)) or 0.0 for v in lines]}
    kept = getattr(detector, "envelope_baseline_", None)
    if (kept is not None and kept["n"] and kept["generation"] == detector.generation
            and kept["df_hz"] == df_hz and len(kept["sum"]) == len(lines)):
        out["baseline_g"] = [_round(float(v)) or 0.0 for v in kept["sum"] / kept["n"]]
    found = {fault: _round(record.features[f"{fault}_hz"], 6) for fault in FAULTS
             if isinstance(record.features.get(f"{fault}_hz"), float)
             and math.isfinite(record.features[f"{fault}_hz"])}
    if found:
        out["lines_hz"] = found
    return out
