"""Power spectral density and the features read off it.

The PSD is a batched Welch estimate (Hann window, constant detrend, one-sided
density) computed with :mod:`scipy.fft`. It matches ``scipy.signal.welch`` (a test
checks it) but avoids importing :mod:`scipy.signal`, which costs about 0.7 s at
start-up on a gateway, and it is computed once per window and shared by the band
energies, the velocity, the centroid and the dominant frequency.

Functions that read a spectrum take ``(freqs_hz, psd, axis)`` with frequency
along ``axis``.

>>> import numpy as np
>>> fs = 25600.0
>>> x = np.sin(2 * np.pi * 160.0 * np.arange(25600) / fs)
>>> f, p = welch_psd(x, fs, nperseg=6400)
>>> round(float(dominant_hz(f, p)), 1)
160.0
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

#: Edges of the default bands, Hz: a 1-2-5 series, log-spaced like the octave
#: bands analysts read. Bands that do not fit below the Nyquist frequency are left out.
DEFAULT_BAND_EDGES_HZ = (10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                         5000.0, 10000.0, 20000.0)


#: A Welch segment with this many times the median segment's power is a transient.
TRANSIENT_POWER_RATIO = 2.5


def default_bands_hz(fs_hz: float) -> tuple[tuple[float, float], ...]:
    """The default log-spaced bands that lie wholly below the Nyquist frequency.

    >>> default_bands_hz(2000.0)
    ((10.0, 20.0), (20.0, 50.0), (50.0, 100.0), (100.0, 200.0), (200.0, 500.0), (500.0, 1000.0))
    """
    edges = DEFAULT_BAND_EDGES_HZ
    return tuple((lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi <= fs_hz / 2)


def band_name(lo_hz: float, hi_hz: float) -> str:
    """Stable feature name of a band's RMS.

    >>> band_name(1000, 2000)
    'band_1000_2000hz_rms_g'
    """
    return f"band_{lo_hz:g}_{hi_hz:g}hz_rms_g".replace(".", "p")


def hann(n: int, dtype=np.float64) -> np.ndarray:
    """Periodic Hann window (the DFT-even form that Welch's method uses), read-only.

    >>> hann(4)
    array([0. , 0.5, 1. , 0.5])
    """
    return _hann(n, np.dtype(dtype).str)


@functools.lru_cache(maxsize=32)
def _hann(n: int, dtype: str) -> np.ndarray:
    # A window of the full length costs about a tenth of its FFT to build; the
    # same few lengths come back for every window, so they are built once.
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(dtype)
    w.setflags(write=False)
    return w


def _median_bias(n: int) -> float:
    """Ratio of median to mean of a chi-square(2) sample of size n (as scipy corrects)."""
    ii_2 = 2.0 * np.arange(1.0, (n - 1) // 2 + 1)
    return 1.0 + float(np.sum(1.0 / (ii_2 + 1.0) - 1.0 / ii_2))


def welch_psd(x, fs_hz: float, *, nperseg: int | None = None,
              noverlap: int | None = None, average: str = "mean", axis: int = -1):
    """One-sided power spectral density by Welch's method, g²/Hz.

    Parameters
    ----------
    x : array_like
        Acceleration in g; any shape, time along ``axis``.
    fs_hz : float
        Sample rate.
    nperseg : int, optional
        Segment length; default and maximum the whole window.
    noverlap : int, optional
        Overlap in samples; default ``nperseg // 2``.
    average : {"mean", "median", "robust"}
        How segments are combined: ``"mean"`` and ``"median"`` as in
        ``scipy.signal.welch`` (the median is bias-corrected for noise, so it
        overstates pure tones); ``"robust"`` is the mean of the segments whose
        total power is within :data:`TRANSIENT_POWER_RATIO` of the median
        segment's. A stationary signal keeps every segment (the result is the
        mean); a one-off shock's segments are left out.
    axis : int
        Time axis; in the result it becomes the frequency axis.

    Returns
    -------
    freqs_hz : ndarray
    psd : ndarray
        Same shape as ``x`` but ``nperseg // 2 + 1`` along ``axis``.
    """
    x = np.moveaxis(np.asarray(x), axis, -1)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    n = x.shape[-1]
    nperseg = n if nperseg is None else min(int(nperseg), n)
    noverlap = nperseg // 2 if noverlap is None else int(noverlap)
    step = nperseg - noverlap
    if nperseg < 2 or step < 1:
        raise ValueError(f"need nperseg >= 2 and noverlap < nperseg, got {nperseg}, {noverlap}")
    segments = np.lib.stride_tricks.sliding_window_view(x, nperseg, axis=-1)[..., ::step, :]
    # Removing each segment's mean before the Hann window equals removing it from
    # the spectrum afterwards, where it touches only bins 0 and 1 (the periodic
    # Hann window's DFT is N/2 at 0 and -N/4 at ±1): one pass over the data saved.
    window = hann(nperseg, x.dtype)
    spectra = scipy.fft.rfft(segments * window, axis=-1)
    means = segments.mean(axis=-1)
    spectra[..., 0] -= means * (nperseg / 2)
    spectra[..., 1] += means * (nperseg / 4 if nperseg > 2 else nperseg / 2)  # 2: k=1 is k=-1
    power = spectra.real**2 + spectra.imag**2
    if average == "robust":
        energy = power.sum(axis=-1, keepdims=True)
        keep = energy <= TRANSIENT_POWER_RATIO * np.median(energy, axis=-2, keepdims=True)
        combined = (np.sum(power * keep, axis=-2, dtype=np.float64)
                    / np.sum(keep, axis=-2, dtype=np.float64))
    elif average == "median":
        nseg = power.shape[-2]
        combined = np.median(power, axis=-2).astype(np.float64) / _median_bias(nseg)
    elif average == "mean":
        combined = power.mean(axis=-2, dtype=np.float64)
    else:
        raise ValueError(f"average must be 'mean', 'median' or 'robust', got {average!r}")
    psd = combined / (fs_hz * float(np.sum(window**2)))
    psd[..., 1:] *= 2.0  # one-sided: fold the negative frequencies ...
    if nperseg % 2 == 0:
        psd[..., -1] /= 2.0  # ... which the Nyquist bin has none of
    freqs = scipy.fft.rfftfreq(nperseg, 1.0 / fs_hz)
    return freqs, np.moveaxis(psd, -1, axis)


def _in_band(freqs_hz, lo_hz, hi_hz):
    return (freqs_hz >= lo_hz) & (freqs_hz < hi_hz)


def band_power_g2(freqs_hz, psd, band_hz, axis=-1):
    """Power in ``[lo, hi)`` Hz, g², by summing the PSD over the band's bins."""
    df = freqs_hz[1] - freqs_hz[0]
    mask = _in_band(freqs_hz, *band_hz)
    return np.sum(np.compress(mask, psd, axis=axis), axis=axis) * df


def band_rms_g(freqs_hz, psd, bands_hz, axis=-1) -> dict[str, np.ndarray]:
    """RMS acceleration in each band, g, keyed by :func:`band_name`."""
    return {band_name(lo, hi): np.sqrt(band_power_g2(freqs_hz, psd, (lo, hi), axis))
            for lo, hi in bands_hz}


def spectral_centroid_hz(freqs_hz, psd, axis=-1):
    """Power-weighted mean frequency (DC excluded), Hz."""
    psd = np.moveaxis(psd, axis, -1)[..., 1:]
    total = psd.sum(axis=-1)
    out = np.full(total.shape, np.nan)
    np.divide(psd @ freqs_hz[1:], total, out=out, where=total > 0)
    return out


def peak_hz(freqs_hz, spectrum, *, min_hz=0.0, max_hz=np.inf, axis=-1):
    """Frequency of the largest line in ``[min_hz, max_hz]``, refined between bins.

    The refinement fits a parabola through the log-amplitudes of the peak bin and
    its neighbours (exact for a Gaussian main lobe, within a few hundredths of a
    bin for a Hann window).
    """
    spectrum = np.moveaxis(np.asarray(spectrum, dtype=np.float64), axis, -1)
    idx = np.flatnonzero((freqs_hz >= min_hz) & (freqs_hz <= max_hz))
    if idx.size == 0:
        return np.full(spectrum.shape[:-1], np.nan)
    k = idx[0] + np.argmax(spectrum[..., idx], axis=-1)
    km = np.clip(k - 1, 0, spectrum.shape[-1] - 1)
    kp = np.clip(k + 1, 0, spectrum.shape[-1] - 1)
    tiny = np.finfo(np.float64).tiny
    a, b, c = (np.log(np.maximum(np.take_along_axis(spectrum, j[..., None], -1)[..., 0], tiny))
               for j in (km, k, kp))
    den = a - 2.0 * b + c
    delta = np.zeros_like(b)
    np.divide(0.5 * (a - c), den, out=delta, where=(den < 0) & (km < k) & (kp > k))
    return freqs_hz[k] + np.clip(delta, -0.5, 0.5) * (freqs_hz[1] - freqs_hz[0])


def dominant_hz(freqs_hz, psd, *, min_hz=2.0, axis=-1):
    """Frequency of the strongest spectral line above ``min_hz``, Hz."""
    return peak_hz(freqs_hz, psd, min_hz=min_hz, axis=axis)
