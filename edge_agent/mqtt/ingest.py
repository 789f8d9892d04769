"""Payloads of live ingestion: decode, validate, count what was refused and why.

Three payload forms arrive over MQTT (specified byte by byte in ``docs/mqtt.md``):

* **binary raw frame** on ``…/<channel>/raw``: a 32-byte little-endian header
  (magic ``EAVF``, version 1, flags, timestamp, sample rate, rpm, sample
  count) followed by float32 samples in g;
* **JSON raw frame** on the same topic, for simple sensors:
  ``{"ts": …, "fs_hz": …, "samples": […], "rpm": …}``;
* **JSON feature message** on ``…/<channel>/features``, from smart sensors:
  ``{"ts": …, "features": {name: value}, "rpm": …}``.

The decoders raise only :class:`PayloadError`, whose ``reason`` is one of
:data:`REASONS`; the agent counts it (:class:`RejectionCounter`) and shows the
latest one as the channel's sensor health. A frame is refused, never repaired:
features of a clipped or flat-lined signal would be learned or scored as if
the machine had changed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import struct
import time
from dataclasses import dataclass

import numpy as np

from edge_agent.frame import FeatureRecord, Frame

log = logging.getLogger(__name__)

MAGIC = b"EAVF"
VERSION = 1
FLAG_RPM = 0x01
HEADER = struct.Struct("<4sBBHddfI")  # magic, version, flags, reserved, ts_s, fs_hz, rpm, n
FEATURE_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
REASONS = ("oversized", "truncated", "bad_magic", "bad_version", "bad_header", "bad_json",
           "bad_type", "missing_field", "bad_timestamp", "wrong_rate", "bad_rpm", "bad_feature",
           "empty", "non_finite", "clipped", "flatline", "bad_topic")


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


# -- encoding (tests, demo, sensor simulators) ----------------------------------------------------
def encode_raw(frame: Frame) -> bytes:
    """A frame as a binary raw-frame payload (format version 1)."""
    samples = np.ascontiguousarray(frame.samples, dtype="<f4").ravel()
    flags = FLAG_RPM if frame.rpm is not None else 0
    return HEADER.pack(MAGIC, VERSION, flags, 0, float(frame.start_s), float(frame.fs_hz),
                       float(frame.rpm or 0.0), samples.size) + samples.tobytes()


def encode_raw_json(frame: Frame) -> bytes:
    """A frame as a JSON raw-frame payload."""
    doc = {"ts": frame.start_s, "fs_hz": frame.fs_hz,
           "samples": np.asarray(frame.samples, dtype=np.float64).tolist()}
    if frame.rpm is not None:
        doc["rpm"] = frame.rpm
    return json.dumps(doc, separators=(",", ":")).encode()


def encode_features(record: FeatureRecord) -> bytes:
    """A feature record as a JSON feature message."""
    doc = {"ts": record.start_s, "features": dict(record.features)}
    if record.rpm is not None:
        doc["rpm"] = record.rpm
    return json.dumps(doc, separators=(",", ":")).encode()


# -- decoding -------------------------------------------------------------------------------------
def decode_raw(payload: bytes, machine: str, channel: str, *, limits: Limits = DEFAULT_LIMITS,
               source: str = "mqtt", now_s: float | None = None) -> Frame:
    """Decode and validate a raw frame, binary or JSON (told apart by the first bytes)."""
    payload = _as_bytes(payload, limits)
    if payload.startswith(MAGIC):
        ts, fs, rpm, samples = _binary(payload, limits)
    elif payload.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{"):
        doc = _json_object(payload)
        ts = _timestamp(_field(doc, "ts"))
        fs = _number(_field(doc, "fs_hz"), "fs_hz")
        rpm = None if doc.get("rpm") is None else _number(doc["rpm"], "rpm")
        samples = _json_samples(_field(doc, "samples"), limits)
    elif MAGIC.startswith(payload[:4]):
        raise PayloadError("truncated", f"{len(payload)} bytes, shorter than the magic")
    else:
        raise PayloadError("bad_magic", f"starts with {payload[:4]!r}: neither binary frame "
                                        f"(EAVF) nor a JSON object")
    _check_time(ts, limits, now_s)
    _check_rate(fs, limits)
    rpm = _check_rpm(rpm, limits)
    _check_samples(samples, limits)
    return Frame(machine, channel, ts, fs, samples, rpm, source)


def decode_features(payload: bytes, machine: str, channel: str, *,
                    limits: Limits = DEFAULT_LIMITS, source: str = "mqtt",
                    now_s: float | None = None) -> FeatureRecord:
    """Decode and validate a feature message. A feature whose value is ``null`` was not reported."""
    doc = _json_object(_as_bytes(payload, limits))
    ts = _timestamp(_field(doc, "ts"))
    raw = _field(doc, "features")
    if not isinstance(raw, dict):
        raise PayloadError("bad_type", f"features must be an object, got {type(raw).__name__}")
    if len(raw) > limits.max_features:
        raise PayloadError("oversized", f"{len(raw)} features, more than {limits.max_features}")
    rpm = None if doc.get("rpm") is None else _number(doc["rpm"], "rpm")
    features: dict[str, float] = {}
    for name, value in raw.items():
        if not FEATURE_RE.match(name):
            raise PayloadError("bad_feature", f"feature name {name[:40]!r} must match [a-z][a-z0-9_]*")
        if value is None:
            continue
        value = _number(value, f"feature {name}")
        if not math.isfinite(value):
            raise PayloadError("non_finite", f"feature {name} is {value}")
        features[name] = value
    if "rpm" in features:  # as in the feature stream, rpm is the record's speed, not a feature
        speed = features.pop("rpm")
        if rpm is not None and rpm != speed:
            raise PayloadError("bad_rpm", f"rpm {rpm} and features.rpm {speed} disagree")
        rpm = speed
    if not features:
        raise PayloadError("empty", "no feature with a value")
    _check_time(ts, limits, now_s)
    return FeatureRecord(machine, channel, ts, features, _check_rpm(rpm, limits), source)


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
    _check_time(frame.start_s, limits, now_s)
    _check_rate(frame.fs_hz, limits)
    _check_rpm(frame.rpm, limits)
    _check_samples(samples, limits)
    return frame


def _as_bytes(payload, limits: Limits) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError("bad_type", f"payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if not payload:
        raise PayloadError("empty", "empty payload")
    if len(payload) > limits.max_bytes:
        raise PayloadError("oversized", f"{len(payload)} bytes, more than {limits.max_bytes}")
    return payload


def _binary(payload: bytes, limits: Limits):
    if len(payload) < HEADER.size:
        raise PayloadError("truncated", f"{len(payload)} bytes, shorter than the "
                                        f"{HEADER.size}-byte header")
    _, version, flags, reserved, ts, fs, rpm, n = HEADER.unpack_from(payload)
    if version != VERSION:
        raise PayloadError("bad_version", f"format version {version}, this agent reads {VERSION}")
    if flags & ~FLAG_RPM or reserved:
        raise PayloadError("bad_header", f"reserved bits set (flags 0x{flags:02x}, "
                                         f"reserved 0x{reserved:04x})")
    if n > limits.max_samples:
        raise PayloadError("oversized", f"{n} samples, more than {limits.max_samples}")
    if n == 0:
        raise PayloadError("empty", "no samples")
    size = HEADER.size + 4 * n
    if len(payload) != size:
        reason = "truncated" if len(payload) < size else "bad_header"
        raise PayloadError(reason, f"{len(payload)} bytes where the header announces {size}")
    samples = np.frombuffer(payload, dtype="<f4", count=n, offset=HEADER.size).astype(np.float32)
    return ts, fs, (rpm if flags & FLAG_RPM else None), samples


def _json_object(payload: bytes) -> dict:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadError("bad_json", f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(doc, dict):
        raise PayloadError("bad_type", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _field(doc: dict, key: str):
    if key not in doc:
        raise PayloadError("missing_field", f"no {key!r}")
    return doc[key]


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError("bad_type", f"{what} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise PayloadError("non_finite", f"{what} is too large") from None


def _json_samples(values, limits: Limits) -> np.ndarray:
    if not isinstance(values, list):
        raise PayloadError("bad_type", f"samples must be an array, got {type(values).__name__}")
    if len(values) > limits.max_samples:
        raise PayloadError("oversized", f"{len(values)} samples, more than {limits.max_samples}")
    if not values:
        raise PayloadError("empty", "no samples")
    if not all(type(v) is float or (type(v) is int) for v in values):
        bad = next(v for v in values if not (type(v) is float or type(v) is int))
        raise PayloadError("bad_type", f"samples must be numbers, found {type(bad).__name__}")
    try:
        wide = np.array(values, dtype=np.float64)
    except OverflowError:
        raise PayloadError("non_finite", "a sample is too large") from None
    with np.errstate(over="ignore"):
        return wide.astype(np.float32)  # beyond float32 becomes inf: refused as non_finite


def _timestamp(value) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            t = dt.datetime.fromisoformat(value)
        except ValueError:
            raise PayloadError("bad_timestamp", f"ts {value[:40]!r} is neither ISO 8601 nor "
                                                f"Unix seconds") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)  # a time without offset is UTC
        try:
            return t.timestamp()
        except (OverflowError, ValueError, OSError):
            raise PayloadError("bad_timestamp", f"ts {value[:40]!r} out of range") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PayloadError("bad_timestamp", f"ts must be a number or a string, "
                                            f"got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise PayloadError("bad_timestamp", "ts is too large") from None


def _check_time(ts: float, limits: Limits, now_s: float | None) -> None:
    if not (math.isfinite(ts) and limits.min_ts_s <= ts <= limits.max_ts_s):
        raise PayloadError("bad_timestamp", f"ts {ts!r} outside [{limits.min_ts_s}, "
                                            f"{limits.max_ts_s}] Unix s")
    if limits.max_future_s is not None:
        now = time.time() if now_s is None else now_s
        if ts > now + limits.max_future_s:
            raise PayloadError("bad_timestamp", f"ts is {ts - now:.0f} s ahead of the gateway clock")


def _check_rate(fs: float, limits: Limits) -> None:
    if not (math.isfinite(fs) and 0 < fs <= limits.max_fs_hz):
        raise PayloadError("wrong_rate", f"sample rate {fs!r} Hz outside (0, {limits.max_fs_hz}]")
    if limits.expected_fs_hz and not any(abs(fs - e) <= limits.fs_tolerance * e
                                         for e in limits.expected_fs_hz):
        raise PayloadError("wrong_rate", f"sample rate {fs:g} Hz, expected "
                                         f"{', '.join(f'{e:g}' for e in limits.expected_fs_hz)}")


def _check_rpm(rpm: float | None, limits: Limits) -> float | None:
    if rpm is not None and not (math.isfinite(rpm) and 0 <= rpm <= limits.max_rpm):
        raise PayloadError("bad_rpm", f"rpm {rpm!r} outside [0, {limits.max_rpm}]")
    return rpm


def _check_samples(x: np.ndarray, limits: Limits) -> None:
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


def decode_message(topics, topic: str, payload: bytes, *, limits: Limits = DEFAULT_LIMITS,
                   counter=None,
                   now_s: float | None = None) -> Frame | FeatureRecord | None:
    """Decode a message received on a ``raw`` or ``features`` topic, counting the outcome.

    ``topics`` is the agent's :class:`edge_agent.mqtt.topics.Topics`, ``counter`` a
    :class:`edge_agent.runtime.sensor_health.RejectionCounter`. Returns
    ``None`` when the message is refused; the refusal is then in ``counter``
    (a topic that does not parse counts as ``bad_topic`` for the agent).
    """
    from edge_agent.mqtt.topics import TopicError

    try:
        ref = topics.parse(topic)
        if ref.kind not in ("raw", "features"):
            raise TopicError(f"{topic!r} carries no sensor data")
    except TopicError as exc:
        if counter is not None:
            counter.rejected_topic(str(exc))
        return None
    decode = decode_raw if ref.kind == "raw" else decode_features
    try:
        out = decode(payload, ref.machine, ref.channel, limits=limits, source=f"mqtt:{topic}",
                     now_s=now_s)
    except PayloadError as exc:
        if counter is not None:
            counter.rejected(ref.machine, ref.channel, exc.reason, exc.detail)
        return None
    if counter is not None:
        counter.accepted(ref.machine, ref.channel)
    return out

