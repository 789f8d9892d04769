"""Cutting a signal into analysis windows."""

from __future__ import annotations

import numpy as np


def sliding_windows(x, n: int, hop: int, axis: int = -1) -> np.ndarray:
    """Windows of ``n`` samples every ``hop`` samples, as a read-only view.

    The windows axis is inserted before the time axis, which stays last.
    Samples after the last whole window are not included.

    >>> sliding_windows(np.arange(10), 4, 3).tolist()
    [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    >>> sliding_windows(np.arange(3), 4, 3).shape
    (0, 4)
    """
    if n < 1 or hop < 1:
        raise ValueError(f"window and hop must be at least one sample, got {n}, {hop}")
    x = np.moveaxis(np.asarray(x), axis, -1)
    if x.shape[-1] < n:
        return np.empty(x.shape[:-1] + (0, n), dtype=x.dtype)
    return np.lib.stride_tricks.sliding_window_view(x, n, axis=-1)[..., ::hop, :]


def window_count(n_samples: int, n: int, hop: int) -> int:
    """Number of whole windows :func:`sliding_windows` yields.

    >>> window_count(10, 4, 3), window_count(3, 4, 3)
    (3, 0)
    """
    return 0 if n_samples < n else (n_samples - n) // hop + 1
