"""Time-domain statistics of acceleration windows.

Every function reduces along ``axis`` and works on any number of windows or
channels at once. Moments are accumulated in float64 whatever the input type,
because float32 sums over tens of thousands of samples lose the digits that
kurtosis depends on.

>>> import numpy as np
>>> t = np.arange(48000) / 48000
>>> x = 2.0 * np.sin(2 * np.pi * 50 * t)          # 2 g amplitude
>>> round(float(rms_g(x)), 4), round(float(crest_factor(x)), 4)
(1.4142, 1.4142)
>>> round(float(kurtosis(x)), 3)                   # a sine: 1.5 (Gaussian: 3)
1.5
>>> x[1000] = 40.0                                # one knock on the frame
>>> round(float(kurtosis(x)), 1), round(float(sustained_stats(x)["sustained_kurtosis"]), 2)
(14.4, 1.5)
"""

from __future__ import annotations

import numpy as np


def _float(x):
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _central_moments(x, axis):
    """Return mean, centred samples and the 2nd, 3rd and 4th central moments.

    Element-wise work and the (pairwise) sums stay in the data's precision:
    float32 halves the memory traffic, and a float64 accumulator would cost a
    cast of every element. The centred samples' residual mean is corrected for.
    """
    x = np.moveaxis(_float(x), axis, -1)
    n = x.shape[-1]
    mean = x.sum(axis=-1, keepdims=True).astype(np.float64) / n
    centred = x - mean.astype(x.dtype)
    d, m2, m3, m4 = _moments_from_sums(*_power_sums(centred), n)
    return np.squeeze(mean, -1) + d, np.moveaxis(centred, -1, axis), m2, m3, m4


def _power_sums(c):
    """Sums of c, c², c³ and c⁴ along the last axis, as float64.

    numpy sums a contiguous axis pairwise, so even in float32 the relative error
    stays near 1e-6 for a window of 10⁵ samples; summing in the data's own
    precision spares a cast of every element.
    """
    c2 = c * c
    return tuple(s.sum(-1).astype(np.float64) for s in (c, c2, c2 * c, c2 * c2))


def _moments_from_sums(s1, s2, s3, s4, n):
    """Mean offset and central moments m2, m3, m4 from power sums of n samples."""
    d = s1 / n
    m2 = s2 / n - d * d
    m3 = s3 / n - 3 * d * s2 / n + 2 * d**3
    m4 = s4 / n - 4 * d * s3 / n + 6 * d * d * s2 / n - 3 * d**4
    return d, np.maximum(m2, 0.0), m3, np.maximum(m4, 0.0)


def _ratio(num, den):
    """num / den, NaN where the denominator is zero (a flat-lined window)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def mean_g(x, axis=-1):
    """DC offset: the mean acceleration, g."""
    return np.mean(x, axis=axis, dtype=np.float64)


def rms_g(x, axis=-1):
    """AC RMS acceleration, g: the RMS after the DC offset is removed."""
    return np.sqrt(_central_moments(x, axis)[2])


def peak_g(x, axis=-1):
    """Largest absolute deviation from the mean, g."""
    _, centred, *_ = _central_moments(x, axis)
    return np.max(np.abs(centred), axis=axis).astype(np.float64)


def peak_to_peak_g(x, axis=-1):
    """Maximum minus minimum, g."""
    return np.ptp(x, axis=axis).astype(np.float64)


def crest_factor(x, axis=-1):
    """Peak over AC RMS, dimensionless (sine: 1.414; impacts raise it)."""
    return _ratio(peak_g(x, axis), rms_g(x, axis))


def kurtosis(x, axis=-1):
    """Pearson kurtosis m4 / m2², dimensionless (Gaussian: 3, sine: 1.5).

    Not the excess kurtosis: bearing-diagnostics literature quotes healthy
    machines near 3, and so do we.
    """
    _, _, m2, _, m4 = _central_moments(x, axis)
    return _ratio(m4, m2 * m2)


def skewness(x, axis=-1):
    """Skewness m3 / m2^1.5, dimensionless (symmetric signals: 0)."""
    _, _, m2, m3, _ = _central_moments(x, axis)
    return _ratio(m3, m2**1.5)


def time_features(x, axis=-1) -> dict[str, np.ndarray]:
    """All time-domain features in one pass over the data.

    Returns a dict with ``mean_g``, ``rms_g``, ``peak_g``, ``peak_to_peak_g``,
    ``crest_factor``, ``kurtosis`` and ``skewness``, each reduced along ``axis``.
    """
    mean, centred, m2, m3, m4 = _central_moments(x, axis)
    rms = np.sqrt(m2)
    peak = np.max(np.abs(centred), axis=axis).astype(np.float64)
    return {
        "mean_g": mean,
        "rms_g": rms,
        "peak_g": peak,
        "peak_to_peak_g": np.ptp(x, axis=axis).astype(np.float64),
        "crest_factor": _ratio(peak, rms),
        "kurtosis": _ratio(m4, m2 * m2),
        "skewness": _ratio(m3, m2**1.5),
    }


def window_statistics(x, n_blocks: int = 8, axis=-1) -> dict[str, np.ndarray]:
    """:func:`time_features` and :func:`sustained_stats` from one pass over the data.

    The mean-removed window is cut into sub-blocks; the power sums of each block
    give both the whole window's central moments (summed) and each block's
    (shifted to the block's own mean), so the data is read once, not twice.
    """
    x = np.moveaxis(_float(x), axis, -1)
    n = x.shape[-1]
    block = n // n_blocks
    if block < 2:
        raise ValueError(f"window of {n} samples is too short for {n_blocks} sub-blocks")
    mean = np.mean(x, axis=-1, dtype=np.float64)
    c = x - mean[..., None].astype(x.dtype)
    whole = block * n_blocks
    blocks = c[..., :whole].reshape(*c.shape[:-1], n_blocks, block)
    sums = _power_sums(blocks)
    bmax, bmin = blocks.max(axis=-1).astype(np.float64), blocks.min(axis=-1).astype(np.float64)
    totals = [s.sum(axis=-1) for s in sums]
    cmax, cmin = bmax.max(axis=-1), bmin.min(axis=-1)
    if whole < n:  # samples after the last whole block count for the window
        tail = c[..., whole:]
        totals = [t + s for t, s in zip(totals, _power_sums(tail))]
        cmax = np.maximum(cmax, tail.max(axis=-1))
        cmin = np.minimum(cmin, tail.min(axis=-1))
    d, m2, m3, m4 = _moments_from_sums(*totals, n)
    rms, peak = np.sqrt(m2), np.maximum(cmax - d, d - cmin)
    db, m2b, _, m4b = _moments_from_sums(*sums, block)
    rms_b, peak_b = np.sqrt(m2b), np.maximum(bmax - db, db - bmin)
    return {
        "mean_g": mean + d,
        "rms_g": rms,
        "peak_g": peak,
        "peak_to_peak_g": cmax - cmin,
        "crest_factor": _ratio(peak, rms),
        "kurtosis": _ratio(m4, m2 * m2),
        "skewness": _ratio(m3, m2**1.5),
        "sustained_rms_g": np.median(rms_b, axis=-1),
        "sustained_kurtosis": np.median(_ratio(m4b, m2b * m2b), axis=-1),
        "sustained_crest_factor": np.median(_ratio(peak_b, rms_b), axis=-1),
    }


def sustained_stats(x, n_blocks: int = 8, axis=-1) -> dict[str, np.ndarray]:
    """RMS, kurtosis and crest factor that persist through the window.

    The window is cut into ``n_blocks`` equal sub-blocks and each statistic is the
    median over them. A one-off shock (a knock on the frame, a dropped tool, an
    electrical glitch) lands in one sub-block and leaves the median alone, while
    the repetitive impacting of a bearing defect is present in every sub-block
    and raises it. Trailing samples that do not fill a sub-block are ignored.

    Returns ``sustained_rms_g``, ``sustained_kurtosis`` and ``sustained_crest_factor``.
    """
    x = np.moveaxis(np.asarray(x), axis, -1)
    block = x.shape[-1] // n_blocks
    if block < 2:
        raise ValueError(f"window of {x.shape[-1]} samples is too short for {n_blocks} sub-blocks")
    blocks = x[..., : block * n_blocks].reshape(*x.shape[:-1], n_blocks, block)
    _, centred, m2, _, m4 = _central_moments(blocks, -1)
    peak = np.max(np.abs(centred), axis=-1)
    rms = np.sqrt(m2)
    return {
        "sustained_rms_g": np.median(rms, axis=-1),
        "sustained_kurtosis": np.median(_ratio(m4, m2 * m2), axis=-1),
        "sustained_crest_factor": np.median(_ratio(peak, rms), axis=-1),
    }
