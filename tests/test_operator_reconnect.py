"""``edge-agent alerts`` says when its connection to the broker is lost and when it is back
(a real Mosquitto stopped and started again on the same port)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tests.broker import PREFIX, USERS, Broker
from tests.conftest import REPO

pytestmark = pytest.mark.slow


class Lines:
    """A process's standard error, line by line as it comes, with waiting for a line."""

    def __init__(self, proc):
        self.lines, self._cond = [], threading.Condition()
        threading.Thread(target=self._read, args=(proc.stderr,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait(self, text: str, after: int = 0, timeout_s: float = 60.0) -> int:
        with self._cond:
            found = self._cond.wait_for(lambda: any(text in line for line in self.lines[after:]),
                                        timeout_s)
            assert found, f"no line with {text!r}: {self.lines}"
            return next(i for i, line in enumerate(self.lines) if i >= after and text in line)


def test_alerts_says_when_the_connection_is_lost_and_regained(tmp_path):
    password = tmp_path / "operator.pw"
    password.write_text(USERS["operator"] + "\n")
    with Broker(tmp_path / "mosquitto") as broker:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "alerts", "--broker",
             f"{broker.host}:{broker.port}", "--prefix", PREFIX, "--username", "operator",
             "--password-file", str(password), "--timeout", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            err = Lines(proc)
            first = err.wait("connected to")
            broker.stop()
            lost = err.wait("connection to", after=first + 1)
            assert "lost" in err.lines[lost] and "reconnecting" in err.lines[lost]
            broker.start()
            back = err.wait("connection regained", after=lost + 1)
            assert f"{PREFIX}/+/+/+/alerts" in err.lines[back]
        finally:
            proc.terminate()
            proc.wait(30)
