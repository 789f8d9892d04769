"""Reaching the broker: connection settings and a configured paho-mqtt 2.x client.

Shared by the agent's publisher and the operator's ``edge-agent alerts``.
Passwords never appear in ``repr`` or in logs; paho's logger only sees packet
flags.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

from edge_agent.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker. ``password`` never appears in ``repr`` or in logs.

    ``port`` defaults to 8883 with TLS, 1883 without. TLS is on when ``tls`` is
    set or a CA or client certificate is given; without ``tls_ca`` the system's
    CAs are trusted. ``tls_insecure`` skips the host-name check (the chain is
    still verified) and is logged as a warning. ``password_file`` is read when
    the client is created (first line; the newline is not part of the password).
    ``inflight`` bounds unacknowledged outbox messages; reconnects back off
    exponentially from ``reconnect_min_s`` to ``reconnect_max_s``.
    """

    host: str = "localhost"
    port: int | None = None
    protocol: str = "5"
    client_id: str | None = None
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    inflight: int = 16
    max_refusals: int = 5

    def __post_init__(self):
        if self.protocol not in ("5", "3.1.1"):
            raise UsageError(f"MQTT protocol must be '5' or '3.1.1', got {self.protocol!r}")
        if self.password is not None and self.password_file is not None:
            raise UsageError("give the MQTT password or a password file, not both")
        if self.tls_key is not None and self.tls_cert is None:
            raise UsageError("a TLS client key needs its certificate (tls_cert)")
        if not (self.inflight >= 1 and self.max_refusals >= 1 and self.keepalive_s >= 1):
            raise UsageError("inflight, max_refusals and keepalive_s must be at least 1")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise UsageError("need 0 < reconnect_min_s <= reconnect_max_s")

    @property
    def use_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert)

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.use_tls else 1883)

    def resolve_password(self) -> str | None:
        if self.password_file is None:
            return self.password
        try:
            with open(self.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read MQTT password file {self.password_file}: "
                             f"{exc.strerror}") from None


def make_client(settings: MqttSettings, client_id: str, *, will: tuple[str, bytes] | None = None,
                persistent: bool = False):
    """A configured, unconnected paho client (protocol, TLS, credentials, Last Will, limits).

    ``persistent`` asks MQTT 3.1.1 for a persistent session (MQTT 5 chooses at connect time).
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    v5 = settings.protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                         clean_session=None if v5 else not persistent)
    client.enable_logger(_paho_logger())  # paho logs packet flags, never passwords or payloads
    if settings.use_tls:
        try:
            ctx = ssl.create_default_context(cafile=settings.tls_ca)
            if settings.tls_cert:
                ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"TLS setup failed: {exc}") from None
        if settings.tls_insecure:
            ctx.check_hostname = False
            log.warning("TLS host-name check disabled (tls_insecure)", extra={"event": "tls_insecure"})
        client.tls_set_context(ctx)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.resolve_password())
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    # paho holds our in-flight window plus one status per topic; anything beyond is our bug.
    client.max_inflight_messages_set(settings.inflight + 64)
    client.max_queued_messages_set(settings.inflight + 4096)
    return client


def _paho_logger() -> logging.Logger:
    logger = logging.getLogger("edge_agent.mqtt.paho")
    if not any(isinstance(f, _QuietShutdown) for f in logger.filters):
        logger.addFilter(_QuietShutdown())
    return logger


class _QuietShutdown(logging.Filter):
    """paho 2.2 logs an error for one more loop turn after every clean disconnect; it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Client is not connected"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def reason_name(code) -> str:
    """``ReasonCode`` → ``"not_authorized"``."""
    return code.getName().lower().replace(" ", "_").replace("-", "_")
