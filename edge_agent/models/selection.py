"""Which features the learners watch, and in which direction damage moves them.

From our own DSP the default set is the health indicators a vibration analyst
trends, in their shock-robust form: sustained level, impulsiveness and crest,
ISO velocity, band levels, and the bearing defect lines relative to the envelope
floor. Feature streams from other sources are watched on every numeric feature
except those that describe the sensor or the speed rather than the machine's
health (DC offset, frequencies, zones). A stream that has nothing else (IMS's
``DatasetBearingTest_1.csv`` sends mean |x| with the DC offset in) is watched on
its DC-inclusive levels: a level that drifts with the offset is a poorer
indicator than none only when there is a better one.

Level, energy and impulsiveness features are *health indicators*: damage raises
them, so only a rise counts ("up"). Everything else counts in both directions.

>>> select_features(["rms_g", "mean_g", "dominant_hz", "spectral_entropy", "kurtosis",
...                  "rms_dc_g", "bpfo_energy_g2_hz"])
(['bpfo_energy_g2_hz', 'kurtosis', 'rms_g', 'spectral_entropy'], ['up', 'up', 'up', 'both'])
"""

from __future__ import annotations

import fnmatch
import re

#: Watched by default when the features come from edge-agent's own DSP.
WAVEFORM_DEFAULTS = ("sustained_rms_g", "sustained_kurtosis", "sustained_crest_factor",
                     "velocity_rms_mm_s", "band_*_rms_g", "env_bpfo_ratio", "env_bpfi_ratio",
                     "env_bsf_ratio", "env_ftf_ratio")

#: Never watched by default: not about the machine's health. Frequencies (``*_hz``)
#: jump between spectral lines; ``*_dc*`` features were measured with the
#: sensor's DC offset left in and drift with it, like ``mean_g``.
EXCLUDED = ("mean_g", "iso_zone", "rpm", "*_hz", "*_dc", "*_dc_*", "index")
#: ... except these, which are spectral densities or move with the spectrum's shape.
INCLUDED = ("spectral_centroid_hz", "*_g2_hz")

_UP = re.compile(r"(_g|_g2|_g2_hz|_mm_s|_energy.*|kurtosis|"
                 r"(crest|impulse|clearance|shape)_factor(_dc)?|^env_(bpfo|bpfi|bsf|ftf)_ratio)$")


def direction(name: str) -> str:
    """``"up"`` for health indicators, ``"both"`` otherwise.

    >>> [direction(n) for n in ("rms_g", "env_bpfi_ratio", "high_freq_ratio", "skewness")]
    ['up', 'up', 'both', 'both']
    """
    return "up" if _UP.search(name) else "both"


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


#: DC-inclusive levels, watched only when a stream has nothing better (see above).
DC_LEVELS = ("*_dc_g", "*_dc_g2", "*_factor_dc")


class NoFeatures(ValueError):
    """A window has no feature the learners could watch; the message says which it has."""


def select_features(names, configured=None) -> tuple[list[str], list[str]]:
    """Watched feature names (sorted) and their directions.

    Parameters
    ----------
    names : iterable of str
        Numeric features available in the first window.
    configured : iterable of str, optional
        Names or glob patterns chosen by the user; default as described above.

    Raises
    ------
    NoFeatures
        Nothing to watch: none configured matches, or none of ``names`` is a health
        indicator.

    >>> select_features(["mean_abs_dc_g", "mean_g"])
    (['mean_abs_dc_g'], ['up'])
    """
    names = sorted(set(names))
    if configured:
        chosen = [n for n in names if _matches(n, configured)]
        if not chosen:
            raise NoFeatures(f"none of the configured features {list(configured)} is among "
                             f"the available ones: {names}")
    elif "sustained_rms_g" in names:
        chosen = [n for n in names if _matches(n, WAVEFORM_DEFAULTS)]
    else:
        chosen = ([n for n in names if _matches(n, INCLUDED) or not _matches(n, EXCLUDED)]
                  or [n for n in names if _matches(n, DC_LEVELS)])
    if not chosen:
        raise NoFeatures(f"no feature to watch among {names}: they describe the sensor or the "
                         f"speed, not the machine's health; name some in [learning] features")
    return chosen, [direction(n) for n in chosen]
