"""From frames to analysis windows to feature records.

Continuous streams (a long recording cut into chunks, or live frames that follow
each other) are windowed across frame boundaries: samples left over at the end of
a frame are kept and joined to the next frame when it starts where the last one
ended. A frame that does not continue the stream and is shorter than two windows
is a *snapshot* (IMS takes 1 s every 10 min, FEMTO 0.1 s every 10 s) and is
analysed whole as one window, unless the channel is known to stream (one of its
frames continued the one before: a sensor sending small packets) or the frame is
shorter than :data:`MIN_WINDOW_SAMPLES`; then it waits for its continuation.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_agent.frame import FeatureRecord, Frame
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


@dataclass
class _Pending:
    end_s: float
    fs_hz: float
    samples: np.ndarray
    start_s: float
    offset: int | None
    source: str
    analysed: bool = False  # analysed whole as a snapshot: not lost if nothing follows


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
        """Windows completed by ``frame`` (possibly none)."""
        key = (frame.machine, frame.channel)
        n = max(MIN_WINDOW_SAMPLES, int(round(self.window_s * frame.fs_hz)))
        hop = max(1, int(round(self.hop_s * frame.fs_hz)))
        prev = self._pending.pop(key, None)
        continues = (prev is not None and prev.fs_hz == frame.fs_hz
                     and abs(frame.start_s - prev.end_s) <= 0.5 / frame.fs_hz)
        if continues:
            self._streaming.add(key)
            if prev.analysed:  # its samples were one window already: start after them
                prev, continues = None, False
        elif prev is not None and not prev.analysed:
            self.samples_dropped += prev.samples.size
        size = frame.samples.size
        if not continues and size < 2 * n and key not in self._streaming:
            snapshot = size >= MIN_WINDOW_SAMPLES
            # Kept in case the next frame continues it (then it was a stream's first packet).
            self._pending[key] = _Pending(frame.start_s + size / frame.fs_hz, frame.fs_hz,
                                          frame.samples, frame.start_s, None, frame.source,
                                          analysed=snapshot)
            return [self._window(frame, frame.samples, frame.start_s, frame.source)] if snapshot else []
        if continues:
            samples = np.concatenate([prev.samples, frame.samples])
            start_s, offset, source = prev.start_s, prev.offset, prev.source
        else:
            samples, start_s, source = frame.samples, frame.start_s, frame.source
            m = _OFFSET.search(source)
            offset = int(m.group(1)) if m else None
        blocks = sliding_windows(samples, n, hop)
        windows = []
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

    def flush(self) -> None:
        """End of input: count what is left over as dropped."""
        self.samples_dropped += sum(p.samples.size for p in self._pending.values()
                                    if not p.analysed)
        self._pending.clear()

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
    for i, w in enumerate(windows):
        key = (w.fs_hz, w.samples.size, spec_for(w.machine, w.channel), w.rpm is not None)
        groups[key].append(i)
    records: list[FeatureRecord | None] = [None] * len(windows)
    chunks = [(key, idx[k:k + FEATURE_BATCH]) for key, idx in groups.items()
              for k in range(0, len(idx), FEATURE_BATCH)]
    for (fs_hz, _, spec, speed_known), idx in chunks:
        batch = np.stack([windows[i].samples for i in idx])
        rpm = np.array([windows[i].rpm for i in idx], dtype=np.float64) if speed_known else None
        try:
            with np.errstate(all="ignore"):  # an extreme window yields NaN/inf features
                feats = extract_features(batch, fs_hz, spec, rpm=rpm)
        except Exception:  # one odd group must not take the others with it
            log.exception("feature extraction failed; windows skipped", extra={
                "event": "featurize_error", "windows": len(idx), "fs_hz": fs_hz,
                "machines": sorted({windows[i].machine for i in idx})})
            continue
        for row, i in enumerate(idx):
            w = windows[i]
            values = {name: _scalar(arr[row]) for name, arr in feats.items()}
            records[i] = FeatureRecord(w.machine, w.channel, w.start_s, values, w.rpm, w.source)
    return [r for r in records if r is not None]


def _scalar(v):
    return str(v) if isinstance(v, np.str_) else float(v)
