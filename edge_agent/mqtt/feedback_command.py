"""``edge-agent feedback``: an operator labels an alert (false_alarm, confirmed, maintenance_done).

It publishes one ``edge-agent/feedback/1`` document (QoS 1, not retained) on
``<prefix>/<site>/<area>/<machine>/cmd/feedback`` and waits for the broker's
acknowledgement: with MQTT 5 a publish the broker's ACL refuses (only the operator
role may publish feedback) comes back "not authorized", said and exit 2. What the
agent does with the label is in :mod:`edge_agent.runtime.feedback`; it shows in the
machine's retained status (``feedback``) and its next alerts.

Registration in the CLI is one line, ``add_feedback_parser(sub)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid

from edge_agent.mqtt.operator import add_connection_arguments

LABELS = ("false_alarm", "confirmed", "maintenance_done")


def add_feedback_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``feedback`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "feedback", help="label an alert: false_alarm, confirmed or maintenance_done",
        description="Publish an operator's label on an alert to "
                    "<prefix>/<site>/<area>/<machine>/cmd/feedback (QoS 1) and wait for the "
                    "broker's acknowledgement. false_alarm: the machine goes back to normal and "
                    "the evidence that raised the alert is tolerated for a while (bounded, "
                    "decaying; a fault that grows still alarms); confirmed: the episode stays "
                    "open until maintenance_done; maintenance_done: the machine learns a new "
                    "baseline. Only the operator role may publish it (shipped ACL).")
    p.add_argument("alert_id", metavar="ALERT_ID", help="the alert's id")
    p.add_argument("label", metavar="LABEL", choices=LABELS, help=" | ".join(LABELS))
    p.add_argument("--broker", required=True, metavar="HOST[:PORT]",
                   help="broker address (port 1883, or 8883 with TLS, by default)")
    p.add_argument("--machine", required=True, help="the machine the alert is about")
    p.add_argument("--site", required=True, help="its site (topic level)")
    p.add_argument("--area", required=True, help="its area (topic level)")
    p.add_argument("--prefix", default="plant", help="topic prefix (default 'plant')")
    p.add_argument("--note", help="a note for the record (at most 500 characters)")
    p.add_argument("--user", help="who labels it (default: --username)")
    add_connection_arguments(p)
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="give up after S seconds without the acknowledgement (default 10)")
    p.set_defaults(func=feedback_command)
    return p


def feedback_document(args: argparse.Namespace) -> dict:
    """The ``edge-agent/feedback/1`` document the command sends."""
    from edge_agent.errors import UsageError
    from edge_agent.runtime.feedback import FeedbackRefused, parse

    doc = {"schema": "edge-agent/feedback/1", "alert_id": args.alert_id, "label": args.label,
           "machine": args.machine}
    user = args.user or args.username
    if user:
        doc["user"] = user
    if args.note:
        doc["note"] = args.note
    try:
        parse(doc, args.machine)  # the agent's own check, before anything is sent
    except FeedbackRefused as exc:
        raise UsageError(str(exc)) from None
    return doc


def feedback_command(args: argparse.Namespace, out=None) -> int:
    """Run ``edge-agent feedback``; returns the exit status (errors: :class:`UsageError`)."""
    from edge_agent.errors import UsageError
    from edge_agent.mqtt.client import make_client
    from edge_agent.mqtt.operator import connection_settings, parse_broker
    from edge_agent.mqtt.topics import TopicError, Topics

    out = out or sys.stdout
    host, port = parse_broker(args.broker)
    try:
        topic = Topics(args.prefix, args.site, args.area).feedback(args.machine)
    except TopicError as exc:
        raise UsageError(str(exc)) from None
    settings = connection_settings(args, host, port)
    doc = feedback_document(args)
    client = make_client(settings, f"edge-agent-feedback-{uuid.uuid4().hex[:12]}")
    connected, acked, failure = threading.Event(), threading.Event(), []

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            failure.append(f"broker refused the connection: {reason_code.getName()}")
            acked.set()
        connected.set()

    def on_publish(client, userdata, mid, reason_code, properties):
        if reason_code.is_failure:
            failure.append(f"broker refused the label on {topic}: {reason_code.getName()} "
                           f"(only the operator role may publish feedback)")
        acked.set()

    client.on_connect, client.on_publish = on_connect, on_publish
    try:
        client.connect(host, settings.broker_port, keepalive=30)
    except OSError as exc:
        raise UsageError(f"cannot connect to {host}:{settings.broker_port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(args.timeout):
            raise UsageError(f"no connection to {host}:{settings.broker_port} in {args.timeout:g} s")
        if not failure:
            client.publish(topic, json.dumps(doc, separators=(",", ":"), ensure_ascii=False),
                           qos=1)
            if not acked.wait(args.timeout):
                raise UsageError(f"no acknowledgement from the broker in {args.timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if failure:
        raise UsageError(failure[0])
    print(f"labelled {args.alert_id} {args.label} on {topic}", file=out)
    return 0
