"""From frames to analysis windows to feature records.

Continuous streams (a long recording cut into chunks, or live frames that follow
each other) are windowed across frame boundaries: samples left over at the end of
a frame are kept and joined to the next frame when it starts where the last one
ended. A frame that does not continue the stream and is shorter than two windows
is a *snapshot* (IMS takes 1 s every 10 min, FEMTO 0.1 s every 10 s) and is
analysed whole as one window, unless the channel is known to stream (one of its
frames continued the one before: a sensor sending small packets) or the frame is
shorter than :data:`MIN_WINDOW_SAMPLES`; then it waits for its continuation.

A window that cannot be analysed is not dropped in silence: a frame too short for
a window that nothing continued, and a window whose samples are not finite or are
flat-lined, become *rejected* records (``FeatureRecord.rejected`` names the reason
of :data:`~edge_agent.runtime.validation.REASONS`), which the pipeline counts and
never scores nor learns from.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_agent.frame import FeatureRecord, Frame
from edge_agent.runtime.validation import DEFAULT_LIMITS, PayloadError, check_samples
from edge_agent.signal.features import FeatureSpec, extract_features
from edge_agent.signal.windows import sliding_windows

log = logging.getLogger(__name__)
_OFFSET = re.compile(r"@(\d+)$")

#: Most windows in one call of ``extract_features`` (see :func:`featurize`).
FEATURE_BATCH = 32
#: No window is shorter: spectra and sub-block statistics need samples.
MIN_WINDOW_SAMPLES = 256


@dataclass(frozen=True, slots=True)
class Window:
    """One analysis window of one channel."""

    machine: str
    channel: str
    start_s: float
    fs_hz: float
    samples: np.ndarray = field(repr=False)
    rpm: float | None
    source: str
    rejected: str | None = None  # why it cannot be analysed (see the module docstring)
    detail: str = ""


@dataclass
class _Pending:
    end_s: float
    fs_hz: float
    samples: np.ndarray
    start_s: float
    offset: int | None
    source: str
    analysed: bool = False  # analysed whole as a snapshot: not lost if nothing follows
    whole_frame: bool = False  # a frame too short for a window, waiting for its continuation
    rpm: float | None = None


class Windower:
    """Cut frames into windows of ``window_s`` every ``hop_s`` seconds.

    Parameters
    ----------
    window_s : float
        Window length.
    hop_s : float, optional
        Step between windows; default ``window_s`` (no overlap).
    """

    def __init__(self, window_s: float = 1.0, hop_s: float | None = None):
        if window_s <= 0 or (hop_s is not None and hop_s <= 0):
            raise ValueError("window and hop must be positive")
        self.window_s = window_s
        self.hop_s = window_s if hop_s is None else hop_s
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._streaming: set[tuple[str, str]] = set()
        self.samples_dropped = 0  # tails too short for a window, never analysed

    def push(self, frame: Frame) -> list[Window]:
        """Windows completed by ``frame`` (possibly none); rejected ones included."""
        key = (frame.machine, frame.channel)
        n = max(MIN_WINDOW_SAMPLES, int(round(self.window_s * frame.fs_hz)))
        hop = max(1, int(round(self.hop_s * frame.fs_hz)))
        prev = self._pending.pop(key, None)
        continues = (prev is not None and prev.fs_hz == frame.fs_hz
                     and abs(frame.start_s - prev.end_s) <= 0.5 / frame.fs_hz)
        out = []
        if continues:
            self._streaming.add(key)
            if prev.analysed:  # its samples were one window already: start after them
                prev, continues = None, False
        elif prev is not None and not prev.analysed:
            out += self._abandon(key, prev)
        size = frame.samples.size
        if not continues and size < 2 * n and key not in self._streaming:
            snapshot = size >= MIN_WINDOW_SAMPLES
            # Kept in case the next frame continues it (then it was a stream's first packet).
            self._pending[key] = _Pending(frame.start_s + size / frame.fs_hz, frame.fs_hz,
                                          frame.samples, frame.start_s, None, frame.source,
                                          analysed=snapshot, whole_frame=not snapshot,
                                          rpm=frame.rpm)
            if snapshot:
                out.append(self._window(frame, frame.samples, frame.start_s, frame.source))
            return out
        if continues:
            samples = np.concatenate([prev.samples, frame.samples])
            start_s, offset, source = prev.start_s, prev.offset, prev.source
        else:
            samples, start_s, source = frame.samples, frame.start_s, frame.source
            m = _OFFSET.search(source)
            offset = int(m.group(1)) if m else None
        blocks = sliding_windows(samples, n, hop)
        windows = out
        for k, block in enumerate(blocks):
            where = source if offset is None else _OFFSET.sub(f"@{offset + k * hop}", source)
            if offset is None and len(blocks) > 1:
                where = f"{source} +{k * hop / frame.fs_hz:g}s"
            windows.append(self._window(frame, block, start_s + k * hop / frame.fs_hz, where))
        consumed = len(blocks) * hop
        if consumed < samples.size:
            rest = samples[consumed:]
            self._pending[key] = _Pending(
                end_s=frame.start_s + frame.samples.size / frame.fs_hz, fs_hz=frame.fs_hz,
                samples=rest, start_s=start_s + consumed / frame.fs_hz,
                offset=None if offset is None else offset + consumed, source=source)
        return windows

    def flush(self) -> list[Window]:
        """End of input: what is left over. A stream's tail is counted as dropped; a frame
        too short for a window comes back as a rejected window (``too_short``)."""
        out = []
        for key, pending in list(self._pending.items()):
            if not pending.analysed:
                out += self._abandon(key, pending)
        self._pending.clear()
        return out

    def _abandon(self, key, pending: _Pending) -> list[Window]:
        """Nothing continued ``pending``: a stream's tail is dropped (counted); a whole frame
        too short for one window is rejected, so that it is counted and said."""
        self.samples_dropped += pending.samples.size
        if not pending.whole_frame:
            return []
        machine, channel = key
        n = pending.samples.size
        return [Window(machine, channel, pending.start_s, pending.fs_hz, pending.samples,
                       pending.rpm, pending.source, "too_short",
                       f"{n} samples ({n / pending.fs_hz:.3g} s at {pending.fs_hz:g} Hz), fewer "
                       f"than the {MIN_WINDOW_SAMPLES} a window needs")]

    @staticmethod
    def _window(frame, samples, start_s, source):
        return Window(frame.machine, frame.channel, start_s, frame.fs_hz,
                      np.ascontiguousarray(samples), frame.rpm, source)


def featurize(windows: Iterable[Window],
              spec_for: Callable[[str, str], FeatureSpec] = lambda m, c: FeatureSpec(),
              ) -> list[FeatureRecord]:
    """Feature records for ``windows``, in their order.

    Windows of equal sample rate, length and feature spec are stacked and go
    through :func:`~edge_agent.signal.features.extract_features` in batches of
    up to :data:`FEATURE_BATCH`: batching across channels pays, but a batch of
    hundreds of 1-s windows no longer fits the CPU's caches and is slower per
    window (``benchmarks/throughput.py``).
    """
    windows = list(windows)
    groups: dict[tuple, list[int]] = defaultdict(list)
    records: list[FeatureRecord | None] = [None] * len(windows)
    for i, w in enumerate(windows):
        if w.rejected:
            records[i] = _rejected(w, w.rejected, w.detail)
            continue
        key = (w.fs_hz, w.samples.size, spec_for(w.machine, w.channel), w.rpm is not None)
        groups[key].append(i)
    chunks = [(key, idx[k:k + FEATURE_BATCH]) for key, idx in groups.items()
              for k in range(0, len(idx), FEATURE_BATCH)]
    for (fs_hz, _, spec, speed_known), idx in chunks:
        batch = np.stack([windows[i].samples for i in idx])
        usable = _usable(batch)
        if not usable.all():
            for row in np.flatnonzero(~usable):
                records[idx[row]] = _rejected(windows[idx[row]], *_why(batch[row]))
            idx, batch = [i for i, ok in zip(idx, usable) if ok], batch[usable]
            if not idx:
                continue
        rpm = np.array([windows[i].rpm for i in idx], dtype=np.float64) if speed_known else None
        try:
            with np.errstate(all="ignore"):  # an extreme window yields NaN/inf features
                feats = extract_features(batch, fs_hz, spec, rpm=rpm, spectrum=True)
        except Exception:  # one odd group must not take the others with it
            log.exception("feature extraction failed; windows skipped", extra={
                "event": "featurize_error", "windows": len(idx), "fs_hz": fs_hz,
                "machines": sorted({windows[i].machine for i in idx})})
            continue
        df_hz, lines = feats.pop("env_spectrum_df_hz"), feats.pop("env_spectrum_g")
        iso_class = f"{spec.iso_group}/{spec.iso_foundation}"
        for row, i in enumerate(idx):
            w = windows[i]
            values = {name: _scalar(arr[row]) for name, arr in feats.items()}
            records[i] = FeatureRecord(w.machine, w.channel, w.start_s, values, w.rpm, w.source,
                                       envelope=(df_hz, lines[row]), iso_class=iso_class)
    return [r for r in records if r is not None]


def time_order(records: Iterable[FeatureRecord]) -> list[FeatureRecord]:
    """``records`` with channels interleaved in time order, each channel's own order kept.

    A record that goes back in time (a glitched clock) stays right after its
    channel's previous record, where the pipeline refuses it as ``time_goes_back``;
    a plain sort by time would move it ahead of the windows it really followed.

    >>> from edge_agent.frame import FeatureRecord as R
    >>> recs = [R("m", "a", 1.0, {}), R("m", "a", 2.0, {}), R("m", "a", 0.5, {}),
    ...         R("m", "b", 1.5, {}), R("m", "a", 3.0, {})]
    >>> [(r.channel, r.start_s) for r in time_order(recs)]
    [('a', 1.0), ('b', 1.5), ('a', 2.0), ('a', 0.5), ('a', 3.0)]
    """
    latest: dict[tuple[str, str], float] = {}
    keyed = []
    for rec in records:
        key = (rec.machine, rec.channel)
        latest[key] = max(rec.start_s, latest.get(key, rec.start_s))
        keyed.append((latest[key], rec))
    keyed.sort(key=lambda pair: pair[0])  # stable: equal times keep their arrival order
    return [rec for _, rec in keyed]


def _usable(batch: np.ndarray) -> np.ndarray:
    """Per window (row): every sample finite and not flat-lined (a cheap first look; frames
    from the network and the agent's recordings passed the full checks already)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(batch).all(axis=-1) & (
            batch.std(axis=-1, dtype=np.float64) >= DEFAULT_LIMITS.flat_std_g)


def _why(samples: np.ndarray) -> tuple[str, str]:
    """The reason and detail of :func:`check_samples` for a window :func:`_usable` refused."""
    try:
        check_samples(samples, DEFAULT_LIMITS)
    except PayloadError as exc:
        return exc.reason, exc.detail
    return "non_finite", "features could not be computed"  # not reached: _usable agrees


def _rejected(w: Window, reason: str, detail: str) -> FeatureRecord:
    return FeatureRecord(w.machine, w.channel, w.start_s, {}, w.rpm, w.source, reason, detail)


def _scalar(v):
    return str(v) if isinstance(v, np.str_) else float(v)
