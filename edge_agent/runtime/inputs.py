"""Recordings given on the command line, as one timeline of feature records.

Files are read in the order given and form one timeline per machine. A file whose
clock starts before the machine's previous file ended (CWRU files have no clock
and all start at 0) is moved to start one second after it, so windows never span
two recording sessions.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from edge_agent.errors import UsageError
from edge_agent.frame import FeatureRecord, Frame
from edge_agent.signal.bearing import FaultOrders, parse_bearing
from edge_agent.signal.features import FeatureSpec
from edge_agent.runtime.windowing import Windower, featurize, time_order

#: Bearings of the public rigs, used when a recording of that kind is replayed
#: without ``--bearing`` (``--bearing none`` turns it off).
DEFAULT_BEARING_BY_MACHINE_PREFIX = {"cwru": "6205-2rs", "ims": "za-2115", "femto": "pronostia"}

#: Clocks before 1990 are recordings without a date (placed at the Unix epoch).
UNDATED_S = 631152000.0

#: Windows featurized per call: large enough to batch channels, small enough to
#: keep memory flat on long recordings.
BATCH_WINDOWS = 256


@dataclass(frozen=True)
class InputOptions:
    recordings: tuple[Path, ...]
    channels: frozenset[str] | None = None
    machine: str | None = None
    fs_hz: float | None = None
    scale: float = 1.0
    window_s: float = 1.0
    hop_s: float | None = None
    rpm: float | None = None
    bearing: str | None = None
    spec: FeatureSpec = FeatureSpec()
    #: Where recordings without a date (CWRU's start at 0) begin; None keeps 0.
    undated_start_s: float | None = None

    @classmethod
    def from_args(cls, args) -> "InputOptions":
        channels = None
        if args.channel:
            channels = frozenset(c.strip().lower() for arg in args.channel
                                 for c in arg.split(",") if c.strip())
        spec = FeatureSpec(envelope_band_hz=args.envelope_band,
                           velocity_band_hz=tuple(args.velocity_band),
                           iso_group=args.iso_group, iso_foundation=args.iso_foundation)
        if args.bearing and args.bearing.lower() != "none":
            _bearing(args.bearing)  # fail now, with the user's words, not mid-replay
        return cls(recordings=tuple(Path(p) for p in args.recordings), channels=channels,
                   machine=args.machine, fs_hz=args.fs, scale=args.scale,
                   window_s=args.window_s, hop_s=args.hop_s, rpm=args.rpm,
                   bearing=args.bearing, spec=spec)

    def spec_for(self, machine: str) -> FeatureSpec:
        """Feature spec of ``machine``: the given bearing, else the default for a public
        rig's recording (``machine`` is the name in the recording, before renaming)."""
        if self.bearing is not None:
            name = None if self.bearing.lower() == "none" else self.bearing
        else:
            name = next((b for prefix, b in DEFAULT_BEARING_BY_MACHINE_PREFIX.items()
                         if machine.startswith(prefix)), None)
        return replace(self.spec, fault_orders=_bearing(name) if name else None)


def _bearing(spec: str) -> FaultOrders:
    try:
        return parse_bearing(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def timeline(options: InputOptions, origins: dict | None = None) -> Iterator[Frame | FeatureRecord]:
    """Frames and feature records of all recordings, renamed, filtered and in order.

    ``origins``, when given, is filled with ``{machine: name in the recording}``.
    """
    from edge_agent.readers import read_recording

    last_end: dict[str, float] = {}
    for path in options.recordings:
        items = read_recording(path, fs_hz=options.fs_hz, scale=options.scale)
        first_block, items = _peek_first_block(items)
        machines = {item.machine for item in first_block}
        rename = _renamer(options.machine, machines)
        shift: dict[str, float] = {}
        file_end: dict[str, float] = {}
        skipped: set[str] = set()
        for item in items:
            if options.channels and item.channel not in options.channels:
                skipped.add(item.channel)
                continue
            machine = rename(item.machine)
            if origins is not None:
                origins.setdefault(machine, item.machine)
            if machine not in shift:
                prev = last_end.get(machine)
                if prev is None:
                    undated = options.undated_start_s is not None and item.start_s < UNDATED_S
                    shift[machine] = options.undated_start_s - item.start_s if undated else 0.0
                else:
                    shift[machine] = 0.0 if item.start_s > prev else prev + 1.0 - item.start_s
            start = item.start_s + shift[machine]
            rpm = item.rpm if item.rpm is not None else options.rpm
            item = replace(item, machine=machine, start_s=start, rpm=rpm)
            end = start + (item.duration_s if isinstance(item, Frame) else 0.0)
            file_end[machine] = max(file_end.get(machine, end), end)
            yield item
        if options.channels and not file_end and skipped:
            raise UsageError(f"{path}: no channel {', '.join(sorted(options.channels))}; "
                             f"it has {', '.join(sorted(skipped))}")
        last_end.update(file_end)


def feature_records(options: InputOptions) -> Iterator[tuple[int, FeatureRecord]]:
    """(index, record) for every window; index counts windows per machine and channel."""
    windower = Windower(options.window_s, options.hop_s)
    counters: dict[tuple[str, str], itertools.count] = {}
    pending = []
    origins: dict[str, str] = {}
    specs: dict[str, FeatureSpec] = {}

    def drain():
        records = featurize(pending, lambda m, c: specs.setdefault(
            m, options.spec_for(origins.get(m, m))))
        records = time_order(records)  # channels interleaved in time order
        pending.clear()
        for rec in records:
            yield _numbered(rec, counters), rec

    for item in timeline(options, origins):
        if isinstance(item, FeatureRecord):
            yield from drain()  # keep time order with frames
            yield _numbered(item, counters), item
            continue
        pending.extend(windower.push(item))
        if len(pending) >= BATCH_WINDOWS:
            yield from drain()
    pending.extend(windower.flush())
    yield from drain()


def _numbered(rec, counters) -> int:
    return next(counters.setdefault((rec.machine, rec.channel), itertools.count()))


def _peek_first_block(items):
    """The items sharing the first timestamp, and an iterator over everything."""
    items = iter(items)
    head = []
    for item in items:
        if head and item.start_s != head[0].start_s:
            return head, itertools.chain(head, [item], items)
        head.append(item)
    return head, iter(head)


def _renamer(name: str | None, machines: set[str]):
    if not name:
        return lambda m: m
    if len(machines) <= 1:
        return lambda m: name
    return lambda m: f"{name}-{m}"
