"""A throwaway MQTT broker on loopback for the demo: Mosquitto if installed, else amqtt.

Loopback only and anonymous: it exists for the length of a demo on one
machine. Production uses the plant's secured Mosquitto (see ``deploy/``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from edge_agent.errors import UsageError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None)


def _wait_for_port(port: int, timeout_s: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise UsageError(f"the embedded MQTT broker did not start listening on 127.0.0.1:{port}")


class EmbeddedBroker:
    """Start with :meth:`start`; ``host``, ``port`` and ``protocol`` say how to reach it."""

    host = "127.0.0.1"

    def __init__(self):
        self.port = free_port()
        self.kind = self.protocol = None
        self._process = self._loop = None
        self._dir = tempfile.TemporaryDirectory(prefix="edge-agent-broker-")

    def start(self) -> "EmbeddedBroker":
        binary = find_mosquitto()
        if binary:
            self._start_mosquitto(binary)
        else:
            self._start_amqtt()
        return self

    def _start_mosquitto(self, binary: str) -> None:
        conf = Path(self._dir.name) / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 "persistence false", "log_type error"]
        if os.geteuid() == 0:  # as root Mosquitto would switch to user 'mosquitto'
            lines.append(f"user {getpass.getuser()}")
        conf.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        _wait_for_port(self.port, 10.0, lambda: self._process.poll() is None)
        self.kind, self.protocol = f"Mosquitto ({binary})", "5"

    def _start_amqtt(self) -> None:
        try:
            import asyncio

            from amqtt.broker import Broker
        except ImportError:
            raise UsageError("no MQTT broker for the demo: install Mosquitto, or the demo extra "
                             "(pip install 'edge-agent[demo]') for the embedded amqtt broker") from None
        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                              {"allow_anonymous": True}}}
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve():
            asyncio.set_event_loop(self._loop)
            self._broker = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
            started.set()
            self._loop.run_forever()

        threading.Thread(target=serve, name="amqtt-broker", daemon=True).start()
        started.wait(10.0)
        _wait_for_port(self.port, 10.0)
        self.kind, self.protocol = "amqtt (embedded, MQTT 3.1.1)", "3.1.1"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._loop is not None:
            import asyncio

            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._dir.cleanup()
