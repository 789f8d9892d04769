"""``edge-agent alerts``: the operator's subscriber that prints alerts as they arrive.

Registration in the CLI is one line, ``add_alerts_parser(sub)``: the parser's
default ``func`` is :func:`alerts_command`. Nothing heavy is imported until
the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections import OrderedDict

_SEEN_IDS = 10_000  # ids remembered to drop redeliveries


def add_alerts_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``alerts`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "alerts", help="print alerts from the MQTT broker as they arrive",
        description="Subscribe to <prefix>/<site>/<area>/<machine>/alerts and print each alert "
                    "(time, severity, machine, summary), or the JSON documents with --json. "
                    "A repeated alert id (redelivery after a reconnect) is printed once. "
                    "Exits 0 after --count alerts or when --timeout expires.")
    p.add_argument("--broker", required=True, metavar="HOST[:PORT]",
                   help="broker address (port 1883, or 8883 with TLS, by default; [v6]:port "
                        "for IPv6)")
    p.add_argument("--prefix", default="plant", help="topic prefix (default 'plant')")
    p.add_argument("--site", help="only this site")
    p.add_argument("--area", help="only this area")
    add_connection_arguments(p)
    p.add_argument("--session", metavar="CLIENT_ID",
                   help="keep a persistent session under this client id: alerts published "
                        "while this subscriber is away are delivered when it returns")
    p.add_argument("--json", action="store_true", help="print each alert as one JSON line")
    p.add_argument("--count", type=_positive_int, metavar="N", help="exit after N alerts")
    p.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds")
    p.set_defaults(func=alerts_command)
    return p


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """TLS, credentials and protocol of an operator's command (``alerts``, ``feedback``)."""
    p.add_argument("--tls", action="store_true", help="use TLS with the system's CAs")
    p.add_argument("--tls-ca", metavar="PATH", help="use TLS, trusting this CA file")
    p.add_argument("--tls-cert", metavar="PATH", help="client certificate (PEM)")
    p.add_argument("--tls-key", metavar="PATH", help="client key (PEM)")
    p.add_argument("--username", metavar="U")
    p.add_argument("--password-file", metavar="F",
                   help="file whose first line is the password (never on the command line)")
    p.add_argument("--mqtt", choices=("5", "3.1.1"), default="5", help="protocol (default 5)")


def connection_settings(args: argparse.Namespace, host: str, port: int | None, **extra):
    """The :class:`~edge_agent.runtime.config.MqttSettings` of the options that
    :func:`add_connection_arguments` added (``extra``: more settings)."""
    from edge_agent.errors import UsageError
    from edge_agent.runtime.config import MqttSettings

    if args.password_file and not args.username:
        raise UsageError("--password-file needs --username")
    return MqttSettings(host=host, port=port, protocol=args.mqtt, username=args.username,
                        password_file=args.password_file, tls=args.tls, tls_ca=args.tls_ca,
                        tls_cert=args.tls_cert, tls_key=args.tls_key, **extra)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def parse_broker(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``.

    >>> parse_broker("gw.local:8883"), parse_broker("[::1]"), parse_broker("broker")
    (('gw.local', 8883), ('::1', None), ('broker', None))
    """
    from edge_agent.errors import UsageError

    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise UsageError(f"--broker {text!r}: expected [IPv6]:PORT")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise UsageError(f"--broker {text!r}: no host")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--broker {text!r}: port must be 1-65535")
    return host, int(port)


def format_alert(alert: dict) -> str:
    """One readable line: time, severity, machine and channel, summary.

    >>> format_alert({"ts": "2024-05-01T12:00:00.000Z", "severity": "alarm", "machine": "p7",
    ...               "channel": "de", "summary": "p7 ALARM on de: RMS 0.5 g, 2.1× baseline"})
    '2024-05-01T12:00:00.000Z  ALARM    p7/de  RMS 0.5 g, 2.1× baseline'
    """
    machine, severity = str(alert.get("machine", "?")), str(alert.get("severity", "?"))
    summary = str(alert.get("summary", ""))
    for lead in (f"{machine} {severity.upper()} on {alert.get('channel')}: ",
                 f"{machine} {severity.upper()}: ", f"{machine}: "):
        if summary.startswith(lead):
            summary = summary[len(lead):]
            break
    where = f"{machine}/{alert['channel']}" if alert.get("channel") else machine
    return f"{alert.get('ts', '?')}  {severity.upper():<7}  {where}  {summary}"


def alerts_command(args: argparse.Namespace, out=None) -> int:
    """Run ``edge-agent alerts`` (see :func:`add_alerts_parser`); returns the exit status."""
    from edge_agent.errors import UsageError
    from edge_agent.mqtt.client import make_client, reason_name
    from edge_agent.mqtt.topics import TopicError, alerts_filter

    out = out or sys.stdout
    host, port = parse_broker(args.broker)
    try:
        topic_filter = alerts_filter(args.prefix, args.site, args.area)
    except TopicError as exc:
        raise UsageError(str(exc)) from None
    settings = connection_settings(args, host, port, reconnect_min_s=1.0, reconnect_max_s=30.0)
    v5 = settings.protocol == "5"
    client_id = args.session or f"edge-agent-alerts-{uuid.uuid4().hex[:12]}"
    client = make_client(settings, client_id, persistent=bool(args.session))
    done, failure = threading.Event(), []
    seen: OrderedDict[str, None] = OrderedDict()
    received = [0]
    lock = threading.Lock()

    connections = [0]

    def say(text: str) -> None:  # on standard error: --json keeps standard output clean
        print(f"edge-agent alerts: {text}", file=sys.stderr, flush=True)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            failure.append(f"broker refused the connection: {reason_code.getName()} "
                           f"({reason_name(reason_code)})")
            done.set()
        else:
            client.subscribe(topic_filter, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        refused = [c for c in reason_codes if c.is_failure]
        if refused:
            failure.append(f"broker refused the subscription to {topic_filter}: "
                           f"{refused[0].getName()}")
            done.set()
            return
        connections[0] += 1
        again = "connection regained" if connections[0] > 1 else "connected"
        say(f"{again} to {host}:{settings.broker_port}; subscribed to {topic_filter}")

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not done.is_set():
            say(f"connection to {host}:{settings.broker_port} lost ({reason_code.getName()}); "
                f"reconnecting{' (alerts meanwhile wait in the session)' if args.session else ''}")

    def on_message(client, userdata, message):
        try:
            alert = json.loads(message.payload)
            alert_id = alert["id"]
        except (ValueError, TypeError, KeyError):
            print(f"edge-agent alerts: not an alert on {message.topic}", file=sys.stderr)
            return
        with lock:
            if alert_id in seen or done.is_set():
                return  # redelivery (at least once) or past --count
            seen[alert_id] = None
            if len(seen) > _SEEN_IDS:
                seen.popitem(last=False)
            out.write((json.dumps(alert, separators=(",", ":"), ensure_ascii=False)
                       if args.json else format_alert(alert)) + "\n")
            out.flush()
            received[0] += 1
            if args.count and received[0] >= args.count:
                done.set()

    client.on_connect, client.on_message = on_connect, on_message
    client.on_subscribe, client.on_disconnect = on_subscribe, on_disconnect
    connect_kwargs = {}
    if v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        connect_kwargs["clean_start"] = not args.session
        if args.session:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 7 * 86400
            connect_kwargs["properties"] = props
    try:
        client.connect(host, settings.broker_port, keepalive=30, **connect_kwargs)
    except OSError as exc:  # ssl.SSLError and ConnectionRefusedError are OSErrors
        raise UsageError(f"cannot connect to {host}:{settings.broker_port}: {exc}") from None
    client.loop_start()
    try:
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        while not done.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            done.wait(0.5 if left is None else min(left, 0.5))
    finally:
        client.disconnect()
        client.loop_stop()
    if failure:
        raise UsageError(failure[0])
    return 0
