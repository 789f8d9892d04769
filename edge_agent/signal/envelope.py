"""Envelope analysis: the standard way to find bearing defects.

A defect does not vibrate at its defect frequency: each impact rings a structural
resonance in the kHz range, and the defect rate shows as the *modulation* of that
resonance. So we band-pass around the resonances, take the Hilbert envelope and
look at the spectrum of the envelope, where the defect frequency stands out.

Band-pass and Hilbert transform are one step here: the analytic signal of the
band-passed signal is the inverse FFT of the spectrum with negative frequencies
and out-of-band bins zeroed and positive in-band bins doubled. A test compares it
with ``scipy.signal.hilbert`` after a Butterworth band-pass.

>>> import numpy as np
>>> fs = 20000.0
>>> t = np.arange(20000) / fs
>>> x = (1 + 0.5 * np.sin(2 * np.pi * 107 * t)) * np.sin(2 * np.pi * 3000 * t)
>>> f, a = envelope_spectrum(x, fs, band_hz=(1000, 9000))
>>> round(float(peak_hz(f, a, min_hz=5)), 1), round(float(amplitude_near(f, a, 107.0, 1.0)), 2)
(107.0, 0.5)
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from edge_agent.signal.spectrum import hann, peak_hz


def default_envelope_band_hz(fs_hz: float) -> tuple[float, float]:
    """Band-pass used before the envelope unless one is configured.

    From 1 kHz (above the shaft harmonics and most structural lines) to 0.45 fs
    (below the anti-alias roll-off): wide enough to contain the resonances that
    bearing impacts excite on most machines without knowing where they are.

    >>> default_envelope_band_hz(48000.0)
    (1000.0, 21600.0)
    """
    hi = 0.45 * fs_hz
    return (min(1000.0, hi / 4.0), hi)


def analytic_bandpass(x, fs_hz: float, band_hz, axis: int = -1):
    """Analytic signal of ``x`` band-passed to ``band_hz`` (complex, same shape)."""
    x = np.asarray(x)
    n = x.shape[axis]
    # One real FFT gives the positive frequencies; doubled in band and zero
    # elsewhere they are the analytic signal's whole spectrum.
    half = scipy.fft.rfft(x, axis=axis)
    f = scipy.fft.rfftfreq(n, 1.0 / fs_hz)
    gain = np.where((f >= band_hz[0]) & (f <= band_hz[1]), 2.0, 0.0)
    gain[0] = min(gain[0], 1.0)  # DC is kept once, not doubled
    if n % 2 == 0:
        gain[-1] = 0.0  # the Nyquist line has no analytic counterpart
    shape = [1] * x.ndim
    shape[axis] = half.shape[axis]
    spectrum = half * gain.reshape(shape).astype(half.real.dtype)
    return scipy.fft.ifft(spectrum, n=n, axis=axis)  # zero-padded: no negative frequencies


def envelope(x, fs_hz: float, band_hz, axis: int = -1):
    """Hilbert envelope (magnitude of the analytic signal) of the band-passed ``x``, g."""
    return np.abs(analytic_bandpass(x, fs_hz, band_hz, axis=axis))


def amplitude_spectrum(x, fs_hz: float, axis: int = -1):
    """One-sided amplitude spectrum of ``x`` with mean removed, Hann window, g.

    Scaled so that a sine of amplitude A reads A at its frequency.
    """
    x = np.moveaxis(np.asarray(x), axis, -1)
    n = x.shape[-1]
    w = hann(n, x.real.dtype)
    spec = np.abs(scipy.fft.rfft((x - x.mean(axis=-1, keepdims=True)) * w, axis=-1))
    spec *= 2.0 / w.sum()
    return scipy.fft.rfftfreq(n, 1.0 / fs_hz), np.moveaxis(spec, -1, axis)


#: Lines of a compact envelope spectrum (alerts carry one, for plots).
COMPACT_LINES = 400


def compact_spectrum(f, a, max_hz: float, lines: int = COMPACT_LINES):
    """A spectrum cut to ``(0, max_hz]`` and, when longer than ``lines``, the largest of each
    run of ``k`` neighbouring lines (peaks survive, as a plot must show them).

    Returns ``(df_hz, amplitudes)``: line ``i`` is at ``(i + 1) * df_hz`` (its run's last line).

    >>> import numpy as np
    >>> f = np.arange(0, 2001) * 1.0
    >>> a = np.zeros((1, 2001)); a[0, 236] = 1.0
    >>> df, c = compact_spectrum(f, a, 1000.0)
    >>> df, c.shape, int(c[0].argmax() + 1) * df
    (3.0, (1, 333), 237.0)
    """
    a = np.asarray(a)
    df = float(f[1] - f[0])
    n = int(min(len(f) - 1, np.floor(max_hz / df)))
    k = max(1, int(np.ceil(n / lines)))
    n -= n % k
    body = a[..., 1:n + 1]
    return df * k, body.reshape(*body.shape[:-1], n // k, k).max(axis=-1)


def envelope_spectrum(x, fs_hz: float, band_hz=None, axis: int = -1):
    """Amplitude spectrum of the envelope, g (frequencies, amplitudes)."""
    band_hz = default_envelope_band_hz(fs_hz) if band_hz is None else band_hz
    return amplitude_spectrum(envelope(x, fs_hz, band_hz, axis=axis), fs_hz, axis=axis)


def amplitude_near(freqs_hz, spectrum, target_hz, tolerance_hz, axis: int = -1):
    """Largest amplitude within ``target ± tolerance`` Hz (NaN if no bin there).

    ``target_hz`` and ``tolerance_hz`` may be arrays broadcasting against the
    spectrum without its frequency axis (one shaft speed per window).
    Only the few bins around each target are read, not the whole spectrum.
    """
    spectrum = np.moveaxis(np.asarray(spectrum), axis, -1)
    n, f0, df = spectrum.shape[-1], freqs_hz[0], freqs_hz[1] - freqs_hz[0]
    target = np.broadcast_to(np.asarray(target_hz, dtype=np.float64), spectrum.shape[:-1])
    tol = np.broadcast_to(np.asarray(tolerance_hz, dtype=np.float64), spectrum.shape[:-1])
    known = np.isfinite(target) & np.isfinite(tol)
    lo = np.clip(np.ceil((np.where(known, target - tol, 0.0) - f0) / df), 0, n)
    hi = np.clip(np.floor((np.where(known, target + tol, -df) - f0) / df), -1, n - 1)
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    width = max(1, int(np.max(hi - lo, initial=0)) + 1)
    idx = lo[..., None] + np.arange(width)
    values = np.take_along_axis(spectrum, np.minimum(idx, n - 1), axis=-1)
    out = np.max(np.where(idx <= hi[..., None], values, -np.inf), axis=-1)
    return np.where(known & (hi >= lo), out, np.nan)


__all__ = ["analytic_bandpass", "envelope", "envelope_spectrum", "amplitude_spectrum",
           "amplitude_near", "default_envelope_band_hz", "peak_hz"]
