"""Vibration velocity and its ISO 20816-3 evaluation zone.

Velocity RMS is what ISO 20816-3 judges a machine by. It is obtained from
acceleration by integration in the frequency domain: each spectral line of
acceleration ``a(f)`` becomes a velocity line ``a(f) / (2 π f)``, so the velocity
PSD is the acceleration PSD divided by ``(2 π f)²``. Integrating over the ISO band
(10–1000 Hz; 2–1000 Hz for machines below 600 rpm) gives the RMS.

>>> import numpy as np
>>> from edge_agent.signal.spectrum import welch_psd
>>> fs = 25600.0
>>> t = np.arange(int(fs)) / fs
>>> x = 0.5 * np.sin(2 * np.pi * 100.0 * t)     # 0.5 g at 100 Hz
>>> f, p = welch_psd(x, fs, nperseg=6400)
>>> v = velocity_rms_from_psd(f, p)            # 0.5·9.80665/(2π·100)/√2 m/s
>>> round(float(v), 2)
5.52
>>> str(iso_zone(v, group=2, foundation="rigid"))
'D'
"""

from __future__ import annotations

import numpy as np

from edge_agent.signal.spectrum import welch_psd

STANDARD_GRAVITY_M_S2 = 9.80665

#: ISO 20816-3 zone boundaries A/B, B/C, C/D in mm/s RMS (10–1000 Hz):
#: group 1 = large machines (300 kW–50 MW), group 2 = medium machines
#: (15–300 kW); foundations rigid or flexible.
ISO_20816_3_BOUNDARIES_MM_S = {
    (1, "rigid"): (2.3, 4.5, 7.1),
    (1, "flexible"): (3.5, 7.1, 11.0),
    (2, "rigid"): (1.4, 2.8, 4.5),
    (2, "flexible"): (2.3, 4.5, 7.1),
}

#: What each zone means, in the standard's words (shortened).
ISO_ZONE_MEANING = {
    "A": "newly commissioned",
    "B": "acceptable for unrestricted long-term operation",
    "C": "unsatisfactory for long-term continuous operation",
    "D": "severe enough to cause damage",
}

DEFAULT_VELOCITY_BAND_HZ = (10.0, 1000.0)


def velocity_rms_from_psd(freqs_hz, psd_g2_hz, *, band_hz=DEFAULT_VELOCITY_BAND_HZ, axis=-1):
    """Velocity RMS in mm/s over ``band_hz`` from an acceleration PSD in g²/Hz."""
    lo, hi = band_hz
    mask = (freqs_hz >= lo) & (freqs_hz <= hi) & (freqs_hz > 0)
    f = freqs_hz[mask]
    gain = (STANDARD_GRAVITY_M_S2 * 1000.0 / (2.0 * np.pi * f)) ** 2
    psd = np.moveaxis(np.compress(mask, psd_g2_hz, axis=axis), axis, -1)
    df = freqs_hz[1] - freqs_hz[0]
    return np.sqrt(psd @ gain * df)


def velocity_rms_mm_s(x, fs_hz: float, *, band_hz=DEFAULT_VELOCITY_BAND_HZ,
                      resolution_hz: float = 1.0, axis: int = -1):
    """Velocity RMS in mm/s over ``band_hz`` of acceleration ``x`` in g.

    ``resolution_hz`` sets the Welch segment length (``fs / resolution``, capped at
    the window); it should be finer than the lower band edge.
    """
    f, p = welch_psd(x, fs_hz, nperseg=int(round(fs_hz / resolution_hz)), axis=axis)
    return velocity_rms_from_psd(f, p, band_hz=band_hz, axis=axis)


def iso_zone(velocity_mm_s, *, group: int = 2, foundation: str = "rigid"):
    """ISO 20816-3 zone letter ('A'–'D') of velocity RMS values in mm/s.

    An unknown velocity (NaN: a flat-lined or empty window) has no zone: ''.

    >>> iso_zone([0.9, 2.0, 3.0, 6.0, float("nan")], group=2, foundation="rigid").tolist()
    ['A', 'B', 'C', 'D', '']
    """
    try:
        bounds = ISO_20816_3_BOUNDARIES_MM_S[(int(group), str(foundation))]
    except KeyError:
        raise ValueError(f"ISO 20816-3 has groups 1 and 2 and foundations 'rigid' and "
                         f"'flexible'; got group={group!r}, foundation={foundation!r}") from None
    velocity = np.asarray(velocity_mm_s, dtype=np.float64)
    letters = np.array(["A", "B", "C", "D"])
    zones = letters[np.searchsorted(bounds, np.nan_to_num(velocity, nan=0.0), side="right")]
    return np.where(np.isnan(velocity), "", zones)


__all__ = ["velocity_rms_mm_s", "velocity_rms_from_psd", "iso_zone", "welch_psd",
           "ISO_20816_3_BOUNDARIES_MM_S", "ISO_ZONE_MEANING"]
