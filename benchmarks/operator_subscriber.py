"""An operator's alert subscriber in its own process, for the benchmarks that time alerts
at arrival; and the repository's test broker (``tests/broker.py``).

    python benchmarks/operator_subscriber.py HOST PORT   # one line per alert: [arrival, alert]
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_broker():
    """The repository's ``tests/broker.py``, loaded by path (a site-packages ``tests``
    package, e.g. tsfel's, must not shadow it)."""
    import importlib.util

    if "edge_agent_test_broker" not in sys.modules:
        spec = importlib.util.spec_from_file_location("edge_agent_test_broker",
                                                      REPO / "tests" / "broker.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["edge_agent_test_broker"]


class Subscriber:
    """An operator's subscriber in its own process (its own GIL, like a real operator's
    client): it timestamps each alert in paho's ``on_message`` and reports it on a pipe;
    the first copy of each id counts."""

    def __init__(self, broker):
        self.arrivals: dict[str, tuple[float, dict]] = {}
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, __file__, broker.host, str(broker.port)], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "subscribed":
            raise RuntimeError("the subscriber could not subscribe")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            t, alert = json.loads(line)
            with self.lock:
                self.arrivals.setdefault(alert["id"], (t, alert))

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def wait_for(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.count() >= n

    def reset(self) -> None:
        with self.lock:
            self.arrivals.clear()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def subscribe(host: str, port: int) -> None:
    """The subscriber process: one line per alert, ``[arrival time, alert]``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    prefix, users = repo_broker().PREFIX, repo_broker().USERS
    out = sys.stdout

    def on_message(client, userdata, message):
        t = time.time()
        out.write(json.dumps([t, json.loads(message.payload)]) + "\n")
        out.flush()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-operator", protocol=mqtt.MQTTv5)
    c.username_pw_set("operator", users["operator"])
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{prefix}/+/+/+/alerts", qos=1)
    c.on_subscribe = lambda *a: (out.write("subscribed\n"), out.flush())
    c.on_message = on_message
    c.connect(host, port)
    c.loop_forever()



if __name__ == "__main__":
    subscribe(sys.argv[1], int(sys.argv[2]))
