"""Recordings fed to the agent as if they arrived live, resumable after a restart."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edge_agent.runtime.inputs import InputOptions, timeline


class ReplaySource:
    """Time blocks of frames and feature records from recordings, paced by their clocks.

    Parameters
    ----------
    paths : sequence of path
        Recordings in time order (see :func:`edge_agent.runtime.inputs.timeline`).
    speed : float
        0 replays as fast as the agent can process; 1 in real time; 60 a minute
        of recording per second.
    position : int
        Items already processed before a restart; they are skipped.
    """

    def __init__(self, paths, *, speed: float = 0.0, fs_hz: float | None = None,
                 machine: str | None = None, position: int = 0,
                 undated_start_s: float | None = None,
                 sleep: Callable[[float], object] = time.sleep, clock=time.monotonic):
        self.options = InputOptions(recordings=tuple(Path(p) for p in paths), fs_hz=fs_hz,
                                    machine=machine, undated_start_s=undated_start_s)
        self.speed = speed
        self.position = position
        self._sleep, self._clock = sleep, clock
        self.exhausted = False

    def blocks(self) -> Iterator[list]:
        """Lists of items sharing a start time; :attr:`position` counts items handed out."""
        items = itertools.islice(timeline(self.options), self.position, None)
        start = None
        for _, group in itertools.groupby(items, key=lambda item: item.start_s):
            block = list(group)
            if self.speed > 0:
                t = block[0].start_s
                start = start or (self._clock(), t)
                due = start[0] + (t - start[1]) / self.speed
                delay = due - self._clock()
                if delay > 0:
                    self._sleep(delay)
            self.position += len(block)
            yield block
        self.exhausted = True
