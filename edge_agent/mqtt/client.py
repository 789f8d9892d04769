"""Reaching the broker: a paho-mqtt 2.x client configured from
:class:`~edge_agent.runtime.config.MqttSettings`.

Shared by the agent's publisher and the operator's ``edge-agent alerts``.
Passwords never appear in ``repr`` or in logs; paho's logger only sees packet
flags.
"""

from __future__ import annotations

import logging
import ssl
from edge_agent.errors import UsageError
from edge_agent.runtime.config import MqttSettings

log = logging.getLogger(__name__)


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


#: paho's return code when its own queue is full (we hold back and try again later).
QUEUE_FULL = 15  # paho.mqtt.enums.MQTTErrorCode.MQTT_ERR_QUEUE_SIZE, checked in the tests


def json_properties(protocol: str):
    """MQTT 5 PUBLISH properties of a JSON document (UTF-8, application/json); None on 3.1.1."""
    if protocol != "5":
        return None
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1  # UTF-8 text
    props.ContentType = "application/json"
    return props
