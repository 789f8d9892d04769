"""The durable outbox: order, acks, bounds policy, counters, threads, crash safety."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from edge_agent.mqtt.outbox import PRIORITY, Outbox, OutboxLocked


class Clock:
    def __init__(self, t: float = 1.7e9):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_put_pending_ack_in_order(tmp_path):
    with Outbox(tmp_path / "ob.sqlite") as ob:
        seqs = [ob.put(f"t/{i % 3}", f"m{i}".encode(), msg_id=f"id{i}") for i in range(10)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 10
        assert [m.payload for m in ob.pending(4)] == [b"m0", b"m1", b"m2", b"m3"]
        assert [m.seq for m in ob.pending(100, after=seqs[7])] == seqs[8:]
        assert ob.ack(seqs[0]) and not ob.ack(seqs[0])
        assert ob.pending(1)[0].seq == seqs[1]
        assert ob.depth == 9
        msg = ob.pending(1)[0]
        assert (msg.topic, msg.qos, msg.retain, msg.msg_id, msg.attempts) == ("t/1", 1, False, "id1", 0)
        ob.record_attempts([msg.seq, msg.seq])
        assert ob.pending(1)[0].attempts == 2


def test_sequence_numbers_never_repeat_after_the_queue_empties(tmp_path):
    with Outbox(tmp_path / "ob.sqlite") as ob:
        first = ob.put("t", b"a")
        ob.ack(first)
    with Outbox(tmp_path / "ob.sqlite") as ob:
        assert ob.put("t", b"b") > first  # a sender's cursor can trust the order


def test_same_message_id_is_queued_once(tmp_path):
    with Outbox(tmp_path / "ob.sqlite") as ob:
        a = ob.put("t", b"x", msg_id="alert-1")
        assert ob.put("t", b"x", msg_id="alert-1") == a
        assert ob.depth == 1 and ob.counters()["duplicate"] == 1


def test_overflow_drops_lowest_priority_oldest_first_and_logs_each(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge_agent.mqtt.outbox")
    with Outbox(tmp_path / "ob.sqlite", max_messages=4) as ob:
        ob.put("t", b"alarm-1", priority=PRIORITY["alarm"], msg_id="a1")
        ob.put("t", b"normal-1", priority=0, msg_id="n1")
        ob.put("t", b"warning-1", priority=PRIORITY["warning"], msg_id="w1")
        ob.put("t", b"normal-2", priority=0, msg_id="n2")
        ob.put("t", b"alarm-2", priority=2, msg_id="a2")  # full: the oldest normal goes
        assert [m.payload for m in ob.pending()] == [b"alarm-1", b"warning-1", b"normal-2", b"alarm-2"]
        ob.put("t", b"alarm-3", priority=2)  # then the other normal
        ob.put("t", b"alarm-4", priority=2)  # then the warning
        ob.put("t", b"alarm-5", priority=2)  # then the oldest alarm
        assert [m.payload for m in ob.pending()] == [b"alarm-2", b"alarm-3", b"alarm-4", b"alarm-5"]
        ob.put("t", b"normal-3", priority=0)  # ranks below everything queued: itself dropped
        assert [m.payload for m in ob.pending()][-1] == b"alarm-5"
        assert ob.status()["dropped"]["overflow"] == 5
    drops = [r for r in caplog.records if getattr(r, "event", "") == "outbox_drop"]
    assert [r.msg_id for r in drops[:4]] == ["n1", "n2", "w1", "a1"]
    assert all(r.reason == "overflow" for r in drops)


def test_expiry_drops_old_messages_but_not_ones_stamped_by_an_unset_clock(tmp_path, caplog):
    clock = Clock(10.0)  # gateway booted without RTC: 1970
    with Outbox(tmp_path / "ob.sqlite", max_age_s=3600, clock=clock) as ob:
        ob.put("t", b"from-1970")
        clock.t = 1.7e9  # NTP sets the clock
        ob.put("t", b"old")
        clock.t += 3601
        ob.put("t", b"new")
        assert [m.payload for m in ob.pending()] == [b"from-1970", b"new"]
        clock.t += 3601
        assert ob.expire() == 1
        status = ob.status()
        assert status["dropped"]["expired"] == 2 and status["depth"] == 1
        assert status["oldest_age_s"] == pytest.approx(clock.t - 10.0)
    assert sum(getattr(r, "reason", "") == "expired" for r in caplog.records) == 2


def test_counters_and_dead_letters_persist_across_reopen(tmp_path):
    path = tmp_path / "ob.sqlite"
    with Outbox(path, max_dead_letters=1) as ob:
        a, b, c = (ob.put("t", p) for p in (b"a", b"b", b"c"))
        ob.ack(a)
        assert ob.dead_letter(b, "not_authorized (0x87)")
        assert ob.dead_letter(c, "not_authorized (0x87)")  # the table holds 1: b is dropped
        assert not ob.dead_letter(c, "again")
    with Outbox(path, max_dead_letters=1) as ob:
        counters = ob.counters()
        assert counters["acked"] == 1 and counters["dead_lettered"] == 2
        assert counters["dropped.dead_letter_overflow"] == 1
        assert [(m.payload, why) for m, why in ob.dead_letters()] == [(b"c", "not_authorized (0x87)")]
        assert ob.status() == {"depth": 0, "oldest_age_s": None, "dead_letter": 1,
                               "dropped": {"overflow": 0, "expired": 0, "dead_letter_overflow": 1}}
        assert ob.requeue_dead_letters() == 1
        assert [m.payload for m in ob.pending()] == [b"c"] and ob.status()["dead_letter"] == 0


def test_file_is_wal_with_full_sync(tmp_path):
    with Outbox(tmp_path / "ob.sqlite") as ob:
        ob.put("t", b"x")
        assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_second_process_cannot_open_the_same_outbox(tmp_path):
    with Outbox(tmp_path / "ob.sqlite"):
        with pytest.raises(OutboxLocked, match="in use"):
            Outbox(tmp_path / "ob.sqlite")
    Outbox(tmp_path / "ob.sqlite").close()  # free again once closed


def test_threads_put_while_another_acks(tmp_path):
    with Outbox(tmp_path / "ob.sqlite") as ob:
        done = threading.Event()
        acked: list[int] = []
        errors: list[BaseException] = []

        def writer(k):
            try:
                for i in range(50):
                    ob.put(f"t/{k}", f"{k}-{i}".encode(), msg_id=f"{k}-{i}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def acker():
            while not done.is_set() or ob.depth:
                for m in ob.pending(10):
                    if ob.ack(m.seq):
                        acked.append(m.seq)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        ack_thread = threading.Thread(target=acker)
        ack_thread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        ack_thread.join(30)
        assert not errors
        assert len(acked) == 200 == len(set(acked)) and ob.depth == 0
        assert acked == sorted(acked)  # acked in sequence order, as a sender would
        assert ob.counters()["enqueued"] == 200 == ob.counters()["acked"]


WRITER = """
import sys
from edge_agent.mqtt.outbox import Outbox
ob = Outbox(sys.argv[1])
i = 0
while True:
    seq = ob.put("plant/s/a/m/alerts", b'{"n": %d}' % i, msg_id=f"id-{i}", priority=i % 3)
    print(seq, i, flush=True)
    i += 1
"""


def test_nothing_committed_is_lost_when_the_writer_is_killed(tmp_path):
    path = tmp_path / "ob.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    confirmed = []
    try:
        deadline = time.monotonic() + 30
        while len(confirmed) < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            confirmed.append(tuple(int(v) for v in line.split()))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, no chance to clean up
        proc.wait()
        proc.stdout.close()
    assert len(confirmed) >= 150
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Outbox(path) as ob:  # the lock died with the writer
        stored = {m.seq: m for m in ob.pending(100_000)}
        for seq, i in confirmed:  # every put that returned is there, intact
            assert stored[seq].payload == b'{"n": %d}' % i and stored[seq].msg_id == f"id-{i}"
        assert list(stored) == sorted(stored)
        assert ob.depth == len(stored) >= len(confirmed)
