"""Payload codecs of live ingestion: round trips, each refusal reason, and fuzzing."""

from __future__ import annotations

import json
import logging
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.frame import FeatureRecord, Frame
from edge_agent.mqtt.ingest import (HEADER, MAGIC, decode_features, decode_raw,
                                    encode_features, encode_raw, encode_raw_json)
from edge_agent.runtime.sensor_health import RejectionCounter
from edge_agent.runtime.validation import REASONS, Limits, PayloadError, check_frame

T0 = 1714564800.25  # 2024-05-01T12:00:00.25Z


def frame(n=2048, fs=25600.0, rpm=1480.0, seed=0) -> Frame:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    x = (0.5 * np.sin(2 * np.pi * 24.7 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    return Frame("pump-7", "de", T0, fs, x, rpm, "test")


def reason_of(fn, *args, **kwargs) -> str:
    with pytest.raises(PayloadError) as info:
        fn(*args, **kwargs)
    assert info.value.reason in REASONS
    return info.value.reason


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("encode", [encode_raw, encode_raw_json])
@pytest.mark.parametrize("rpm", [1480.0, None])
def test_raw_round_trip(encode, rpm):
    f = frame(rpm=rpm)
    got = decode_raw(encode(f), "pump-7", "de", source="mqtt:x")
    assert (got.machine, got.channel, got.start_s, got.fs_hz, got.rpm, got.source) == \
           ("pump-7", "de", T0, 25600.0, rpm, "mqtt:x")
    assert got.samples.dtype == np.float32 and got.samples.flags.writeable
    np.testing.assert_array_equal(got.samples, f.samples)


def test_binary_layout_is_as_documented():
    payload = encode_raw(frame(n=3, rpm=1500.0))
    assert HEADER.size == 32 and len(payload) == 32 + 3 * 4
    assert payload[:4] == b"EAVF" and payload[4] == 1 and payload[5] == 0x01
    assert struct.unpack_from("<H", payload, 6) == (0,)
    assert struct.unpack_from("<ddfI", payload, 8) == (T0, 25600.0, 1500.0, 3)


def test_json_raw_accepts_iso_time_and_unix_strings():
    samples = frame(n=64).samples.tolist()
    for ts in ("2024-05-01T12:00:00.25Z", "2024-05-01T14:00:00.25+02:00",
               "2024-05-01T12:00:00.25", str(T0), T0):
        doc = {"ts": ts, "fs_hz": 25600, "samples": samples, "extra": "ignored"}
        assert decode_raw(json.dumps(doc).encode(), "m", "c").start_s == pytest.approx(T0)


def test_features_round_trip_and_rules():
    rec = FeatureRecord("pump-7", "de", T0, {"rms_g": 0.12, "kurtosis": 3.1}, 1480.0)
    got = decode_features(encode_features(rec), "pump-7", "de")
    assert got.features == rec.features and got.rpm == 1480.0 and got.start_s == T0
    doc = {"ts": "2024-05-01T12:00:00Z", "features": {"rms_g": 0.1, "kurtosis": None, "rpm": 900}}
    got = decode_features(json.dumps(doc).encode(), "m", "c")
    assert got.features == {"rms_g": 0.1} and got.rpm == 900.0  # null: not reported


# -- each reason ----------------------------------------------------------------------------------
def with_header(**fields) -> bytes:
    values = {"magic": MAGIC, "version": 1, "flags": 0, "reserved": 0, "ts": T0, "fs": 25600.0,
              "rpm": 0.0, "n": 4}
    values.update(fields)
    samples = fields.get("samples", np.array([0.1, -0.2, 0.3, -0.1], "<f4").tobytes())
    values.pop("samples", None)
    return HEADER.pack(*values.values()) + samples


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty"),
    (b"EAV", "truncated"),
    (b"EAVF\x01", "truncated"),
    (b"\x00\x01\x02\x03garbage", "bad_magic"),
    (with_header(version=2), "bad_version"),
    (with_header(flags=0x80), "bad_header"),
    (with_header(reserved=1), "bad_header"),
    (with_header(n=5), "truncated"),
    (with_header(n=3), "bad_header"),
    (with_header(n=0, samples=b""), "empty"),
    (with_header(n=10**9), "oversized"),
    (with_header(ts=math.nan), "bad_timestamp"),
    (with_header(ts=1.7e12), "bad_timestamp"),  # milliseconds sent as seconds
    (with_header(ts=-1.0), "bad_timestamp"),
    (with_header(fs=0.0), "wrong_rate"),
    (with_header(fs=math.inf), "wrong_rate"),
    (with_header(flags=1, rpm=-5.0), "bad_rpm"),
    (with_header(flags=1, rpm=math.nan), "bad_rpm"),
    (with_header(samples=np.array([0.1, math.nan, 0.3, 0.0], "<f4").tobytes()), "non_finite"),
    (with_header(samples=np.zeros(4, "<f4").tobytes()), "flatline"),
    (b"{", "bad_json"),
    (b"{\xff}", "bad_json"),
    (b"[" * 100_000 + b"]" * 100_000, "bad_magic"),
    (b"{" + b'"a":[' * 50_000 + b"]" * 50_000 + b"}", "bad_json"),  # too deep
    (b"[1, 2]", "bad_magic"),
    (b'{"fs_hz": 1, "samples": [1, 2]}', "missing_field"),
    (b'{"ts": 1e9, "samples": [1, 2]}', "missing_field"),
    (b'{"ts": 1e9, "fs_hz": 100}', "missing_field"),
    (b'{"ts": true, "fs_hz": 100, "samples": [1, 2]}', "bad_timestamp"),
    (b'{"ts": "yesterday", "fs_hz": 100, "samples": [1, 2]}', "bad_timestamp"),
    (b'{"ts": 1e400, "fs_hz": 100, "samples": [1, 2]}', "bad_timestamp"),
    (b'{"ts": 1e9, "fs_hz": "100", "samples": [1, 2]}', "bad_type"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": "1,2"}', "bad_type"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": [1, true]}', "bad_type"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": [1, [2]]}', "bad_type"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": []}', "empty"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": [1, NaN]}', "non_finite"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": [1, 1e39]}', "non_finite"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": [1, ' + b"9" * 400 + b"]}", "non_finite"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": [1, ' + b"9" * 5000 + b"]}", "bad_json"),
    (b'{"ts": 1e9, "fs_hz": -100, "samples": [1, 2]}', "wrong_rate"),
    (b'{"ts": 1e9, "fs_hz": 100, "samples": [1, 2], "rpm": "fast"}', "bad_type"),
])
def test_raw_refusals(payload, reason):
    assert reason_of(decode_raw, payload, "m", "c") == reason


def test_limits_rate_clip_flatline_size():
    f = frame(n=4096)
    strict = Limits(expected_fs_hz=(25600.0, 51200.0), fs_tolerance=0.001)
    decode_raw(encode_raw(f), "m", "c", limits=strict)
    off = Frame("m", "c", T0, 25700.0, f.samples)
    assert reason_of(decode_raw, encode_raw(off), "m", "c", limits=strict) == "wrong_rate"

    clipped = f.samples.copy()
    clipped[::100] = 2.0  # 41 samples at a 2 g rail
    assert reason_of(decode_raw, encode_raw(Frame("m", "c", T0, 25600.0, clipped)), "m", "c",
                     limits=Limits(clip_g=2.0)) == "clipped"
    decode_raw(encode_raw(f), "m", "c", limits=Limits(clip_g=2.0))  # 0.55 g peak: fine

    stuck = f.samples.copy()
    stuck[1000:3500] = stuck[1000]  # converter stuck for 60 % of the frame
    assert reason_of(decode_raw, encode_raw(Frame("m", "c", T0, 25600.0, stuck)), "m", "c") \
        == "flatline"
    quiet = (1e-3 * np.random.default_rng(1).standard_normal(4096)).astype(np.float32)
    decode_raw(encode_raw(Frame("m", "c", T0, 25600.0, quiet)), "m", "c")  # stopped, not dead

    small = Limits(max_samples=1000, max_bytes=10_000)
    assert reason_of(decode_raw, encode_raw(f), "m", "c", limits=small) == "oversized"
    assert reason_of(decode_raw, encode_raw(f)[:3000], "m", "c", limits=Limits(max_samples=1000)) \
        == "oversized"
    assert reason_of(decode_raw, encode_raw_json(frame(n=900)), "m", "c", limits=small) == "oversized"

    future = Limits(max_future_s=60.0)
    assert reason_of(decode_raw, encode_raw(f), "m", "c", limits=future, now_s=T0 - 3600) \
        == "bad_timestamp"


@pytest.mark.parametrize("doc, reason", [
    ({"ts": T0, "features": {}}, "empty"),
    ({"ts": T0, "features": {"rms_g": None}}, "empty"),
    ({"ts": T0, "features": [1, 2]}, "bad_type"),
    ({"ts": T0}, "missing_field"),
    ({"features": {"rms_g": 1}}, "missing_field"),
    ({"ts": T0, "features": {"RMS": 1}}, "bad_feature"),
    ({"ts": T0, "features": {"rms_g": "1"}}, "bad_type"),
    ({"ts": T0, "features": {"rms_g": False}}, "bad_type"),
    ({"ts": T0, "features": {"rms_g": 1}, "rpm": -1}, "bad_rpm"),
    ({"ts": T0, "features": {"rms_g": 1, "rpm": 900}, "rpm": 1000}, "bad_rpm"),
    ({"ts": "2024-13-01", "features": {"rms_g": 1}}, "bad_timestamp"),
    ({"ts": T0, "features": {f"f{i}": 1 for i in range(2000)}}, "oversized"),
])
def test_feature_refusals(doc, reason):
    assert reason_of(decode_features, json.dumps(doc).encode(), "m", "c") == reason


def test_non_finite_feature_is_refused():
    payload = b'{"ts": 1e9, "features": {"rms_g": Infinity}}'
    assert reason_of(decode_features, payload, "m", "c") == "non_finite"
    assert reason_of(decode_features, "not bytes", "m", "c") == "bad_type"


def test_rejection_counter_and_sensor_health(caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.runtime.sensor_health")
    class Clock:
        t = 1000.0

        def __call__(self):
            return self.t

    clock = Clock()
    counter = RejectionCounter(stale_s=60.0, clock=clock)
    assert counter.health("m", "de") == "no_data"
    counter.accepted("m", "de")
    clock.t += 11  # health changes are logged at most every 10 s per channel
    counter.rejected("m", "de", "clipped", "41 samples at 2 g")
    counter.rejected("m", "de", "clipped")
    # a refusal on a channel that no accepted message gave a place yet is the agent's: junk on
    # new names must not take the places of real channels
    counter.rejected("m", "nde", "flatline")
    assert counter.refused_summary() == {"flatline": {"count": 1, "examples": ["m/nde"]}}
    counter.accepted("m", "nde")
    counter.rejected("m", "nde", "flatline")  # now the channel's
    counter.accepted("m", "nde")  # within 10 s of its last line: counted, not logged
    assert counter.health("m", "de") == "clipped" and counter.health("m", "nde") == "ok"
    assert counter.counts("m", "de") == {"clipped": 2}
    assert counter.totals() == {"clipped": 2, "flatline": 2}
    assert counter.channels("m") == {"de": {"sensor_health": "clipped", "rejected": {"clipped": 2}},
                                     "nde": {"sensor_health": "ok", "rejected": {"flatline": 1}}}
    clock.t += 61
    assert counter.health("m", "nde") == "no_data"
    counter.rejected("m", "nde", "flatline")
    changes = [(r.channel, r.previous, r.health, getattr(r, "suppressed", 0))
               for r in caplog.records if getattr(r, "event", "") == "sensor_health"]
    # logged on change only (the second clipped frame adds no line), and a flapping
    # channel's changes at most every 10 s, with the number left out
    assert changes == [("de", "no_data", "ok", 0), ("de", "ok", "clipped", 0),
                       ("nde", "no_data", "ok", 0), ("nde", "ok", "flatline", 2)]


def test_check_frame_applies_the_content_rules_to_frames_from_any_source():
    f = frame(n=300_000)  # longer than a payload may be: size is the reader's business
    assert check_frame(f) is f
    for bad, reason in ((Frame("m", "c", T0, 0.0, f.samples), "wrong_rate"),
                        (Frame("m", "c", math.nan, 100.0, f.samples), "bad_timestamp"),
                        (Frame("m", "c", T0, 100.0, f.samples, rpm=-1.0), "bad_rpm"),
                        (Frame("m", "c", T0, 100.0, np.zeros(100, np.float32)), "flatline"),
                        (Frame("m", "c", T0, 100.0, np.array([1.0, np.inf])), "non_finite"),
                        (Frame("m", "c", T0, 100.0, np.zeros((2, 2))), "bad_type"),
                        (Frame("m", "c", T0, 100.0, np.zeros(0, np.float32)), "empty")):
        assert reason_of(check_frame, bad) == reason


# -- fuzzing: thousands of malformed payloads, only PayloadError ever comes out -------------------
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_JSON = settings(FUZZ, max_examples=600)  # generating nested documents is the slow part
VALID = encode_raw(frame(n=256))
TIGHT = Limits(max_samples=4096, max_bytes=64 * 1024, expected_fs_hz=(25600.0,), clip_g=2.0)


def survives(payload: bytes, limits=TIGHT) -> None:
    for decode in (decode_raw, decode_features):
        try:
            out = decode(payload, "m", "c", limits=limits)
        except PayloadError as exc:
            assert exc.reason in REASONS
        else:
            assert isinstance(out, (Frame, FeatureRecord))


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(payload):
    survives(payload)
    survives(MAGIC + payload)


@FUZZ
@given(st.data())
def test_fuzz_mutated_binary_frames(data):
    payload = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(payload) - 1))
        payload[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload) + 16))
    survives(bytes(payload[:cut]) + data.draw(st.binary(max_size=16)))


@FUZZ
@given(magic=st.sampled_from([MAGIC, b"EAVG"]), version=st.integers(0, 255),
       flags=st.integers(0, 255), reserved=st.integers(0, 65535),
       ts=st.floats(allow_nan=True, allow_infinity=True),
       fs=st.floats(allow_nan=True, allow_infinity=True),
       rpm=st.floats(width=32, allow_nan=True, allow_infinity=True),
       n=st.integers(0, 2**32 - 1), body=st.binary(max_size=512))
def test_fuzz_binary_headers(magic, version, flags, reserved, ts, fs, rpm, n, body):
    survives(HEADER.pack(magic, version, flags, reserved, ts, fs, rpm, n) + body)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10),
                                                                       children, max_size=6),
    max_leaves=20)
NUMBERISH = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                      st.text(max_size=30), st.none(), st.booleans())


@FUZZ_JSON
@given(ts=st.one_of(NUMBERISH, st.datetimes().map(lambda d: d.isoformat())), fs=NUMBERISH,
       samples=st.one_of(st.lists(NUMBERISH, max_size=64), JSON_VALUES), rpm=NUMBERISH,
       features=st.one_of(st.dictionaries(st.text(max_size=12), NUMBERISH, max_size=8), JSON_VALUES),
       drop=st.sets(st.sampled_from(["ts", "fs_hz", "samples", "rpm", "features"])))
def test_fuzz_json_documents(ts, fs, samples, rpm, features, drop):
    doc = {"ts": ts, "fs_hz": fs, "samples": samples, "rpm": rpm, "features": features}
    for key in drop:
        doc.pop(key)
    survives(json.dumps(doc).encode())


@FUZZ_JSON
@given(JSON_VALUES)
def test_fuzz_any_json(value):
    survives(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=512),
       st.floats(1.0, 100_000.0), st.one_of(st.none(), st.floats(0, 20_000, width=32)))
def test_fuzz_valid_frames_round_trip(samples, fs, rpm):
    f = Frame("m", "c", T0, fs, np.array(samples, np.float32), rpm)
    for encode in (encode_raw, encode_raw_json):
        try:
            got = decode_raw(encode(f), "m", "c")
        except PayloadError as exc:
            assert exc.reason == "flatline"  # a random frame may be constant
            continue
        np.testing.assert_array_equal(got.samples, f.samples)
        assert got.rpm == (None if rpm is None else pytest.approx(rpm))
