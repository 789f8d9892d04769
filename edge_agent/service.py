"""``edge-agent run``: the agent as a long-running service.

Start: load and validate the configuration, check that the state directory
takes a write (a full or read-only one is exit 2, naming the path and the
problem), open the outbox, restore the last checkpoint and then each machine's
alert state from the outbox, connect (retrying in the background). Run until
SIGTERM or SIGINT, then write a checkpoint (not when an alert is still waiting
for storage), publish ``offline`` and leave what is undelivered in the outbox
for the next start. Exit codes: 0 clean stop, 2 configuration or usage error,
1 anything unexpected: logged as ``edge-agent failed: <what>`` (with its
traceback), and the retained agent status says ``offline``, ``reason: crashed``
and the error.

With ``[resources] workers = N`` (N > 1, one per core of a multi-core gateway)
this process only supervises: it starts N workers (``edge-agent run --worker
i/N``), each owning the machines whose name hashes to it, with its own state
directory (``state_dir/worker-i``), outbox and MQTT identity (``<id>-w<i>``);
it forwards SIGTERM and restarts a worker that dies. Alert ids keep the agent's
id, so they are the same as one process would raise. Changing N moves machines
between workers: those learn their baselines again.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def run_command(args) -> int:
    from edge_agent import __version__
    from edge_agent.runtime.agent import Agent
    from edge_agent.runtime.config import load_config
    from edge_agent.errors import StorageError
    from edge_agent.logs import setup_logging
    from edge_agent.mqtt.link import AgentLink
    from edge_agent.runtime.sources import ReplaySource
    from edge_agent.runtime.state import state_dir_problem

    from edge_agent.runtime.config import ConfigError, for_worker, unreadable_files

    config = load_config(args.config)
    problems = unreadable_files(config)
    if problems:
        raise ConfigError(f"{args.config}: " + "; ".join(problems))
    setup_logging(config.log_level)
    if args.worker:
        index, count = args.worker
        config = for_worker(config, index, count)
    elif config.resources.workers > 1:
        return supervise(args, config.resources.workers)
    problem = state_dir_problem(config.state_dir)
    if problem is not None:
        raise ConfigError(f"state directory {config.state_dir}: {problem} "
                          f"({_free(config.state_dir)}); free space or fix [agent] state_dir")
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("stopping", extra={"event": "stopping", "signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent = Agent(config)
        link = AgentLink(agent)  # the outbox first: restore reads alert states from it
    except StorageError as exc:
        raise ConfigError(f"state directory {config.state_dir}: cannot write {exc.path}: "
                          f"{exc.detail} ({_free(config.state_dir)})") from None
    agent.link = link
    agent.restore(link.alert_states())
    if any(m.fleet_class for m in config.machines):
        from edge_agent.fleet.member import FleetMember

        agent.fleet = FleetMember(agent, link)  # subscribes before the link starts
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
        link.start()
        if getattr(agent, "fleet", None) is not None:
            agent.fleet.start()
        agent.run(stop, source, exit_when_done=args.exit_after_replay)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.exception(f"edge-agent failed: {error}", extra={"event": "crash", "error": error})
        agent.close(drain_s=2.0, error=error)  # a short drain: the outbox keeps the rest
        return 1
    if getattr(agent, "fleet", None) is not None:
        agent.fleet.close()
    agent.close()
    log.info("edge-agent stopped", extra={"event": "stop", **agent.stats})
    return 0


def _free(path) -> str:
    from edge_agent.errors import free_bytes

    free = free_bytes(path)
    return "free space unknown" if free is None else f"{free} bytes free"


def supervise(args, count: int) -> int:
    """Run ``count`` workers until SIGTERM; restart any that dies (with a growing pause)."""
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(args.config)]
    if args.exit_after_replay:
        command.append("--exit-after-replay")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    workers: dict[int, subprocess.Popen] = {}
    restarts = {i: 0 for i in range(count)}
    done: set[int] = set()

    def start(i):
        workers[i] = subprocess.Popen(command + ["--worker", f"{i}/{count}"])
        log.info("worker started", extra={"event": "worker_start", "worker": i,
                                          "pid": workers[i].pid})

    for i in range(count):
        start(i)
    while not stopping.is_set() and len(done) < count:
        time.sleep(0.2)
        for i, proc in list(workers.items()):
            code = proc.poll()
            if code is None or i in done:
                continue
            if code == 0:
                done.add(i)  # finished its replay (--exit-after-replay)
                continue
            restarts[i] += 1
            log.error("worker died; restarting it", extra={
                "event": "worker_died", "worker": i, "exit_code": code,
                "restarts": restarts[i]})
            time.sleep(min(2.0 ** restarts[i], 60.0))
            start(i)
    for proc in workers.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = [proc.wait() for proc in workers.values()]
    log.info("workers stopped", extra={"event": "stop", "exit_codes": codes})
    return 0 if all(c == 0 for c in codes) else 1
