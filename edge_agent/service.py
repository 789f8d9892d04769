"""``edge-agent run``: the agent as a long-running service.

Start: load and validate the configuration, restore the last checkpoint, open
the outbox, connect (retrying in the background). Run until SIGTERM or SIGINT,
then write a checkpoint, publish ``offline`` and leave what is undelivered in
the outbox for the next start. Exit codes: 0 clean stop, 2 configuration or
usage error, 1 anything unexpected (logged with its traceback).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def run_command(args) -> int:
    from edge_agent import __version__
    from edge_agent.agent import Agent
    from edge_agent.config import load_config
    from edge_agent.logs import setup_logging
    from edge_agent.sources import ReplaySource

    config = load_config(args.config)
    setup_logging(config.log_level)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("stopping", extra={"event": "stopping", "signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = Agent(config)
    agent.restore()
    log.info("edge-agent starting", extra={
        "event": "start", "version": __version__, "agent": config.id,
        "state_dir": str(config.state_dir), "machines": [m.id for m in config.machines],
        "broker": f"{config.mqtt.host}:{config.mqtt.broker_port}", "mqtt": config.mqtt.protocol,
        "tls": config.mqtt.use_tls})
    source = None
    if config.replay is not None:
        source = ReplaySource(config.replay.paths, speed=config.replay.speed,
                              fs_hz=config.replay.fs_hz, machine=config.replay.machine,
                              position=agent.replay_position)
    try:
        agent.connect()
        agent.run(stop, source, exit_when_done=args.exit_after_replay)
    except Exception:
        log.exception("edge-agent failed", extra={"event": "crash"})
        agent.close(drain_s=0.0)
        return 1
    agent.close()
    log.info("edge-agent stopped", extra={"event": "stop", **agent.stats})
    return 0
