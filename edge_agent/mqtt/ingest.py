"""Payloads of live ingestion: decode, validate, count what was refused and why.

Three payload forms arrive over MQTT (specified byte by byte in ``docs/mqtt.md``):

* **binary raw frame** on ``…/<channel>/raw``: a 32-byte little-endian header
  (magic ``EAVF``, version 1, flags, timestamp, sample rate, rpm, sample
  count) followed by float32 samples in g;
* **JSON raw frame** on the same topic, for simple sensors:
  ``{"ts": …, "fs_hz": …, "samples": […], "rpm": …}``;
* **JSON feature message** on ``…/<channel>/features``, from smart sensors:
  ``{"ts": …, "features": {name: value}, "rpm": …}``.

The decoders raise only :class:`~edge_agent.runtime.validation.PayloadError`,
whose ``reason`` is one of :data:`~edge_agent.runtime.validation.REASONS`; the
content checks (time, rate, speed, samples) are those of
:mod:`edge_agent.runtime.validation`, which every source's frames pass. The agent
counts a refusal (:class:`RejectionCounter`) and shows the latest one as the
channel's sensor health.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import struct

import numpy as np

from edge_agent.frame import FeatureRecord, Frame
from edge_agent.runtime.validation import (DEFAULT_LIMITS, Limits, PayloadError, check_rate,
                                           check_rpm, check_samples, check_time)

log = logging.getLogger(__name__)

MAGIC = b"EAVF"
VERSION = 1
FLAG_RPM = 0x01
HEADER = struct.Struct("<4sBBHddfI")  # magic, version, flags, reserved, ts_s, fs_hz, rpm, n
FEATURE_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


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
    check_time(ts, limits, now_s)
    check_rate(fs, limits)
    rpm = check_rpm(rpm, limits)
    check_samples(samples, limits)
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
    check_time(ts, limits, now_s)
    return FeatureRecord(machine, channel, ts, features, check_rpm(rpm, limits), source)


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
