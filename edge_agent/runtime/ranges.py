"""What each numeric configuration key may be: one table, checked at load and documented.

A value outside its range would not fail loudly later: ``baseline_windows = -10``
never finishes a baseline (the machine is never watched), ``port = 99999`` fails
only at connect, a negative sample rate refuses every frame. So every numeric key
of every configuration table has a :class:`Range` in :data:`RANGES`, checked when
the file is loaded (an error names the key, the value and what it may be) and
shown in docs/configuration.md's *range* column; a test keeps the table, the code
and the reference in step. Command-line options that set the same values
(``replay --baseline-windows``, ``--window-s``) use the same ranges.

>>> Range(1, 65535).text(), Range(0, None, lo_open=True).text(), Range(0, 1).text()
('1 to 65535', '> 0', '0 to 1')
>>> Range(10).contains(9), Range(10).contains(10)
(False, True)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from edge_agent.runtime.toml_build import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``lo`` and ``hi`` (``None``: unbounded), inclusive unless open."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))

    def text(self) -> str:
        """The range in a reader's words, as docs/configuration.md shows it."""
        lo = None if self.lo is None else f"{'>' if self.lo_open else '≥'} {_num(self.lo)}"
        hi = None if self.hi is None else f"{'<' if self.hi_open else '≤'} {_num(self.hi)}"
        if lo and hi and not self.lo_open and not self.hi_open:
            return f"{_num(self.lo)} to {_num(self.hi)}"
        return " and ".join(p for p in (lo, hi) if p) or "any"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _r(lo=None, hi=None, *, lo_open=False, hi_open=False) -> Range:
    return Range(lo, hi, lo_open, hi_open)


POSITIVE = _r(0, lo_open=True)
NON_NEGATIVE = _r(0)
AT_LEAST_1 = _r(1)
FRACTION = _r(0, 1)
OPEN_FRACTION = _r(0, 1, lo_open=True)  # (0, 1]

#: Every numeric field of every configuration table, by dataclass name. Tuples of numbers
#: (``expected_fs_hz``, bands) have the range of their elements.
RANGES: dict[str, dict[str, Range]] = {
    "AgentConfig": {"checkpoint_every_s": POSITIVE},
    "MqttSettings": {"port": _r(1, 65535), "keepalive_s": _r(1, 65535),
                   "reconnect_min_s": POSITIVE, "reconnect_max_s": POSITIVE,
                   "inflight": _r(1, 65535), "max_refusals": AT_LEAST_1,
                   # a status must fit in a packet; 1 KiB holds the smallest useful one
                   "status_max_bytes": _r(1024, 268_435_455)},
    "OutboxConfig": {"max_messages": AT_LEAST_1, "max_age_days": POSITIVE,
                   "max_dead_letters": NON_NEGATIVE},
    "Limits": {"max_bytes": _r(64), "max_samples": _r(256), "max_features": AT_LEAST_1,
             "expected_fs_hz": POSITIVE, "fs_tolerance": _r(0, 0.5), "max_fs_hz": POSITIVE,
             "clip_g": POSITIVE, "clip_fraction": FRACTION, "clip_min_count": AT_LEAST_1,
             "flat_std_g": NON_NEGATIVE, "flat_run_fraction": OPEN_FRACTION,
             "min_ts_s": NON_NEGATIVE, "max_ts_s": POSITIVE, "max_future_s": NON_NEGATIVE,
             "max_rpm": POSITIVE},
    "DetectorConfig": {
        "baseline_windows": _r(10, 1_000_000), "baseline_s": POSITIVE,
        "baseline_running_s": NON_NEGATIVE, "sparse_span_s": POSITIVE,
        "trend_min_windows": AT_LEAST_1,
        "min_baseline_windows": _r(4), "stopped_rms_g": NON_NEGATIVE,
        "stopped_fraction": _r(0, 1, hi_open=True), "stopped_rpm": NON_NEGATIVE,
        "regime_tolerance": _r(0, 1, lo_open=True, hi_open=True), "max_regimes": _r(1, 64),
        "zscore_top_k": AT_LEAST_1, "trend_span": AT_LEAST_1, "learn_fraction": OPEN_FRACTION,
        "min_change_ratio": _r(1), "prior_change_ratio": _r(1), "restart_gap_s": POSITIVE, "settle_windows": AT_LEAST_1,
        "restart_budget": NON_NEGATIVE, "hst_trees": _r(1, 100), "hst_min_windows": AT_LEAST_1,
        "ae_batch": AT_LEAST_1, "ae_replay": AT_LEAST_1, "ae_baseline_epochs": AT_LEAST_1,
        # beyond the calibration's tail share (0.2) the threshold would sit inside the body
        "risk": _r(0, 0.2, lo_open=True, hi_open=True), "threshold_floor": NON_NEGATIVE,
        "threshold_max_growth": _r(1), "alarm_factor": _r(1), "adapt_rate": FRACTION,
        "adapt_down_rate": FRACTION, "drift_budget": NON_NEGATIVE, "onnx_threads": _r(1, 64),
        "seed": _r(0, 2**32 - 1)},
    "AlertPolicy": {"persistence_k": AT_LEAST_1, "persistence_n": _r(1, 1000),
                  "clear_windows": AT_LEAST_1, "clear_ratio": OPEN_FRACTION,
                  "cooldown_s": NON_NEGATIVE, "cooldown_max_alerts": AT_LEAST_1,
                  "top_features": _r(1, 20), "fault_line_ratio": _r(1, lo_open=True),
                  "alarm_ratio": _r(1, lo_open=True), "alarm_z": NON_NEGATIVE},
    "ResourcesConfig": {"queue_frames": AT_LEAST_1, "learn_budget": OPEN_FRACTION,
                      "max_lag_s": POSITIVE, "status_every_s": POSITIVE, "workers": _r(1, 256),
                      "max_channels_per_machine": _r(1, 4096), "max_unknown_machines": NON_NEGATIVE},
    "MachineConfig": {"rpm": POSITIVE, "iso_group": _r(1, 2), "window_s": _r(0.001, 3600),
                    "hop_s": _r(0.001, 3600), "envelope_band_hz": NON_NEGATIVE,
                    "velocity_band_hz": NON_NEGATIVE},
    "ChannelConfig": {"fs_hz": POSITIVE, "clip_g": POSITIVE},
    "ReplayConfig": {"speed": NON_NEGATIVE, "fs_hz": POSITIVE},
    # the fleet exchange: the agent's [fleet], the aggregator's fleet.toml (docs/fleet.md)
    "FleetConfig": {"publish_every_s": _r(1), "epsilon_budget": POSITIVE,
                  "delta": _r(0, 1, lo_open=True, hi_open=True), "noise_multiplier": POSITIVE,
                  "clip": POSITIVE, "max_update_bytes": _r(1024, 65536)},
    "AggregatorConfig": {"min_members": _r(1, 4096), "max_classes": _r(1, 4096),
                       "max_members_per_class": _r(1, 65536), "aggregate_every_s": POSITIVE,
                       "trim": _r(0, 0.5, hi_open=True), "weight_clip": NON_NEGATIVE},
    "RolloutPolicy": {"canary_fraction": FRACTION, "promote_after_s": NON_NEGATIVE,
                    "max_alert_rate_factor": _r(1)},
}

#: Keys that must not exceed another key of the same table: (smaller, larger).
ORDER: dict[str, tuple[tuple[str, str], ...]] = {
    "MqttSettings": (("reconnect_min_s", "reconnect_max_s"),),
    "Limits": (("min_ts_s", "max_ts_s"),),
    "DetectorConfig": (("min_baseline_windows", "baseline_windows"),),
    "AlertPolicy": (("persistence_k", "persistence_n"),),
}


def numeric_fields(cls) -> list[str]:
    """Fields of ``cls`` holding a number, an optional number or a tuple of numbers."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name != "shard"
            and any(t in str(hints[f.name]) for t in ("int", "float"))
            and "str" not in str(hints[f.name])]


def _values(value) -> list[float]:
    if value is None or isinstance(value, bool):
        return []
    return [float(v) for v in value] if isinstance(value, tuple) else [float(value)]


def check(obj, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key.<field>`` for the first value of ``obj`` (a
    configuration dataclass) outside its range or order."""
    cls = type(obj).__name__
    for name, rng in RANGES.get(cls, {}).items():
        value = getattr(obj, name)
        if not all(rng.contains(v) for v in _values(value)):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{key}.{name} = {shown!r} is out of range: use "
                              f"{'values' if isinstance(value, tuple) else 'a value'} "
                              f"{rng.text()} (docs/configuration.md)")
    for smaller, larger in ORDER.get(cls, ()):
        a, b = getattr(obj, smaller), getattr(obj, larger)
        if a is not None and b is not None and a > b:
            raise ConfigError(f"{key}.{smaller} = {a!r} is more than {key}.{larger} = {b!r}: "
                              f"{smaller} must not exceed {larger}")


def check_config(config) -> None:
    """Every table of an ``AgentConfig`` against :data:`RANGES` (general tables first)."""
    check(config, "agent")
    for key in ("mqtt", "outbox", "limits", "learning", "alerts", "resources", "fleet"):
        check(getattr(config, key), key)
    if config.replay is not None:
        check(config.replay, "replay")
    for i, machine in enumerate(config.machines):
        check(machine, f"machine[{i}]")
        check(machine.learning, f"machine[{i}].learning")
        check(machine.alerts, f"machine[{i}].alerts")
        for j, channel in enumerate(machine.channels):
            check(channel, f"machine[{i}].channels[{j}]")
