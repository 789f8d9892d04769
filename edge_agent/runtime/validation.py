"""What a frame may be: the content checks every source's frames pass, and why one is refused.

The checks are the same for a frame from a recording and one from the network
(:mod:`edge_agent.mqtt.ingest` decodes payloads, then calls them); a refusal is a
:class:`PayloadError` whose ``reason`` is one of :data:`REASONS`, counted per
channel by :class:`~edge_agent.runtime.sensor_health.RejectionCounter`. A frame
is refused, never repaired: features of a clipped or flat-lined signal would be
learned or scored as if the machine had changed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from edge_agent.frame import Frame

REASONS = ("oversized", "truncated", "bad_magic", "bad_version", "bad_header", "bad_json",
           "bad_type", "missing_field", "bad_timestamp", "wrong_rate", "bad_rpm", "bad_feature",
           "empty", "non_finite", "clipped", "flatline", "bad_topic", "too_short",
           "time_goes_back", "duplicate", "no_features")


class PayloadError(ValueError):
    """A payload refused at the edge; ``reason`` is one of :data:`REASONS`, ``detail`` says more."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")

    def __reduce__(self):
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class Limits:
    """What a payload may be. Defaults accept any plausible sensor; tighten per deployment.

    Parameters
    ----------
    max_bytes, max_samples, max_features : int
        Size bounds (``oversized``); checked before anything is parsed.
    expected_fs_hz : tuple of float
        Sample rates the sensors are configured for; empty accepts any rate up
        to ``max_fs_hz``. A rate within ``fs_tolerance`` (relative) matches.
    clip_g : float or None
        The sensor's full scale in g. A frame is ``clipped`` when at least
        ``max(clip_min_count, clip_fraction × n)`` samples reach 99.5 % of it.
        ``None`` (unknown range) disables the check.
    flat_std_g : float
        A frame whose standard deviation is below this is ``flatline``
        (a dead or disconnected sensor; a stopped machine still shows sensor noise).
    flat_run_fraction : float
        Also ``flatline`` when one run of identical consecutive samples covers
        this fraction of the frame (a stuck converter), and at least 16 samples.
    min_ts_s, max_ts_s : float
        Plausible timestamps (Unix s); the default upper bound (2100) catches
        milliseconds sent as seconds.
    max_future_s : float or None
        Refuse timestamps this far ahead of the gateway clock; ``None`` does not check.
    max_rpm : float
        Largest plausible shaft speed.
    """

    max_bytes: int = 4 * 1024 * 1024
    max_samples: int = 262_144
    max_features: int = 1024
    expected_fs_hz: tuple[float, ...] = ()
    fs_tolerance: float = 0.01
    max_fs_hz: float = 1_000_000.0
    clip_g: float | None = None
    clip_fraction: float = 0.001
    clip_min_count: int = 3
    flat_std_g: float = 1e-6
    flat_run_fraction: float = 0.5
    min_ts_s: float = 0.0
    max_ts_s: float = 4102444800.0
    max_future_s: float | None = None
    max_rpm: float = 100_000.0


DEFAULT_LIMITS = Limits()


def check_frame(frame: Frame, limits: Limits = DEFAULT_LIMITS, *,
                now_s: float | None = None) -> Frame:
    """Apply the content checks to a frame from any source (a recording, a simulator).

    Time, rate, speed and samples are checked as for a payload (:class:`PayloadError`
    with the same reasons); size limits are not, since they guard the network
    side and a recording's reader chooses its own block size.
    """
    samples = np.asarray(frame.samples)
    if samples.ndim != 1 or samples.dtype.kind != "f":
        raise PayloadError("bad_type", f"samples must be a 1-D float array, got {samples.dtype} "
                                       f"with shape {samples.shape}")
    if samples.size == 0:
        raise PayloadError("empty", "no samples")
    check_time(frame.start_s, limits, now_s)
    check_rate(frame.fs_hz, limits)
    check_rpm(frame.rpm, limits)
    check_samples(samples, limits)
    return frame


def check_time(ts: float, limits: Limits, now_s: float | None) -> None:
    if not (math.isfinite(ts) and limits.min_ts_s <= ts <= limits.max_ts_s):
        raise PayloadError("bad_timestamp", f"ts {ts!r} outside [{limits.min_ts_s}, "
                                            f"{limits.max_ts_s}] Unix s")
    if limits.max_future_s is not None:
        now = time.time() if now_s is None else now_s
        if ts > now + limits.max_future_s:
            raise PayloadError("bad_timestamp", f"ts is {ts - now:.0f} s ahead of the gateway clock")


def check_rate(fs: float, limits: Limits) -> None:
    if not (math.isfinite(fs) and 0 < fs <= limits.max_fs_hz):
        raise PayloadError("wrong_rate", f"sample rate {fs!r} Hz outside (0, {limits.max_fs_hz}]")
    if limits.expected_fs_hz and not any(abs(fs - e) <= limits.fs_tolerance * e
                                         for e in limits.expected_fs_hz):
        raise PayloadError("wrong_rate", f"sample rate {fs:g} Hz, expected "
                                         f"{', '.join(f'{e:g}' for e in limits.expected_fs_hz)}")


def check_rpm(rpm: float | None, limits: Limits) -> float | None:
    if rpm is not None and not (math.isfinite(rpm) and 0 <= rpm <= limits.max_rpm):
        raise PayloadError("bad_rpm", f"rpm {rpm!r} outside [0, {limits.max_rpm}]")
    return rpm


def check_samples(x: np.ndarray, limits: Limits) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        raise PayloadError("non_finite", f"{x.size - int(finite.sum())} of {x.size} samples "
                                         f"are NaN or infinite")
    if limits.clip_g is not None:
        at_rail = int(np.count_nonzero(np.abs(x) >= 0.995 * limits.clip_g))
        if at_rail >= max(limits.clip_min_count, limits.clip_fraction * x.size):
            raise PayloadError("clipped", f"{at_rail} of {x.size} samples at the sensor's "
                                          f"full scale ({limits.clip_g:g} g)")
    std = float(np.std(x, dtype=np.float64))
    if not std >= limits.flat_std_g:
        raise PayloadError("flatline", f"standard deviation {std:.3g} g below "
                                       f"{limits.flat_std_g:g} g")
    changes = np.flatnonzero(x[1:] != x[:-1])
    longest = int(np.diff(np.concatenate(([-1], changes, [x.size - 1]))).max())
    if longest >= max(16, limits.flat_run_fraction * x.size):
        raise PayloadError("flatline", f"{longest} identical samples in a row of {x.size}")
