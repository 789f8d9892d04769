"""The long-running agent: frames in, alerts out, state kept.

One processing thread owns the learning state. MQTT handlers (on paho's network
thread) only decode, validate and queue; recordings (a replay source) are read
on the processing thread. Each unit of work (a block of frames) is windowed,
then featurized in batches of up to ``FEATURE_BATCH`` windows, each batch scored
and its alerts committed to the durable outbox before the next; checkpoints are
taken between units, so a restart resumes from one consistent moment.

An alert's commit is a precondition of everything after it. When the outbox
cannot write (disk full, file size limit, read-only, I/O error) the processing
thread holds the alert and retries with backoff until it is committed: a
replay pauses, live frames wait in the inbox (up to ``queue_frames``, then the
oldest are dropped and counted), no checkpoint is written (it would record
alert state ahead of the outbox), and the agent status and a rate-limited log
line say ``storage_full`` with the path and the free bytes. A stop while an
alert waits ends without a checkpoint: a recording's alert is raised again by
the restart under the same id; a live alert (its frames are not kept) is
handed to the broker without the outbox when connected and logged in full. Each alert carries its machine's alert state into the outbox in
the same transaction; a restart resumes the episode from there.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import replace

from edge_agent import __version__
from edge_agent.errors import StorageError
from edge_agent.frame import FeatureRecord, Frame
from edge_agent.logs import RateLimitedLog
from edge_agent.runtime.config import AgentConfig, MachineConfig
from edge_agent.runtime import feedback
from edge_agent.runtime.durable import AlertUncommitted, Durable
from edge_agent.runtime.pipeline import Pipeline
from edge_agent.runtime.state import StateStore, checkpoint_key_path, load_key
from edge_agent.runtime.windowing import FEATURE_BATCH, Windower, featurize, time_order
from edge_agent.signal.bearing import parse_bearing
from edge_agent.signal.features import FeatureSpec

log = logging.getLogger(__name__)


#: The CPU budget of model updates is measured over about this long.
BUDGET_WINDOW_S = 30.0
#: A checkpoint that failed for lack of storage is tried again after this long.
CHECKPOINT_RETRY_S = 5.0


class Agent(Durable):
    """Everything one gateway process runs (see the module docstring).

    Parameters
    ----------
    config : AgentConfig
    clock : callable
        Wall clock (Unix seconds), for lag and schedules.
    """

    def __init__(self, config: AgentConfig, *, clock=time.time):
        from edge_agent.runtime.sensor_health import RejectionCounter

        self.config, self.clock = config, clock
        self.pipeline = Pipeline(agent_id=config.id,
                                 config_for=lambda m: self.machine_config(m).learning,
                                 policy_for=lambda m: self.machine_config(m).alerts)
        self.windowers: dict[str, Windower] = {}
        self.indices: dict[tuple[str, str], int] = {}
        self.channel_view: dict[tuple[str, str], dict] = {}  # latest verdict, for status
        self._skipped_channels: set[tuple[str, str]] = set()
        self.last_alert: dict[str, dict] = {}
        self.recent_alerts: deque[dict] = deque(maxlen=1000)
        r = config.resources
        self.rejections = RejectionCounter(
            configured={m.id: tuple(c.name for c in m.channels) for m in config.machines},
            accept_unknown=config.accept_unknown_machines,
            max_channels_per_machine=r.max_channels_per_machine,
            max_unknown_machines=r.max_unknown_machines)
        self.store = StateStore(config.state_dir,
                                load_key(checkpoint_key_path(config), config.state_dir))
        self.replay_position = 0
        self.alerts_raised: dict[str, int] = {}  # per machine; decides checkpoint vs outbox state
        self.storage: StorageError | None = None  # the write that fails now, if any
        self._storage_log = RateLimitedLog(log)
        self._errors_log = RateLimitedLog(log)  # a line per machine and minute, with a count
        self._stop = threading.Event()
        self._checkpoint_due = False  # a baseline was fitted: keep it at once
        self.fitted: set[tuple[str, str, str]] = set()  # (machine, channel, regime) monitored
        self.stats = {"frames": 0, "windows": 0, "alerts": 0, "dropped_frames": 0,
                      "deferred_updates": 0, "checkpoints": 0, "processing_errors": 0,
                      "skipped_items": 0, "dropped_at_stop": 0, "storage_retries": 0,
                      "feedback": 0}
        self.lag_s: float | None = None
        self._inbox: deque = deque()
        self._inbox_lock = threading.Lock()
        self._wake = threading.Event()
        self._specs: dict[str, FeatureSpec] = {}
        self._train_s = 0.0  # recent time spent on model updates (fading, 30 s constant)
        self._accounted_at = time.monotonic()
        #: Where alerts and status go (:class:`edge_agent.mqtt.link.AgentLink`): an object with
        #: ``publish_alert(alert)``, ``publish_status()`` and ``close(drain_s)``; None offline.
        self.link = None
        #: The fleet member (:class:`edge_agent.fleet.member.FleetMember`) when a machine has a
        #: class; its status goes into the agent status.
        self.fleet = None

    # -- configuration ----------------------------------------------------------------------------
    def machine_config(self, machine: str) -> MachineConfig:
        return self.config.machine(machine) or MachineConfig(
            id=machine, learning=self.config.learning, alerts=self.config.alerts)

    def known(self, machine: str) -> bool:
        """Whether this process handles ``machine``: its worker's, and configured or already
        fed (by accepted frames, or a recording of ``[replay]``).
        Called from the MQTT thread: membership tests only, no iteration."""
        return self.config.owns(machine) and (
            self.config.machine(machine) is not None
            or machine in self.pipeline.alerters or machine in self.windowers)

    def channel_configured(self, machine: str, channel: str) -> bool:
        """False for a channel its machine's ``channels`` list leaves out (none listed: any)."""
        m = self.config.machine(machine)
        return m is None or not m.channels or any(c.name == channel for c in m.channels)

    def _skip_channel(self, machine: str, channel: str) -> None:
        # A recording's other channels (MQTT frames of one are refused at ingestion).
        if (machine, channel) not in self._skipped_channels:
            self._skipped_channels.add((machine, channel))
            log.info("channel not configured; its windows are skipped", extra={
                "event": "channel_skipped", "machine": machine, "channel": channel})
        self.stats["skipped_items"] += 1

    def spec_for(self, machine: str) -> FeatureSpec:
        if machine not in self._specs:
            m = self.machine_config(machine)
            self._specs[machine] = FeatureSpec(
                fault_orders=parse_bearing(m.bearing) if m.bearing else None,
                iso_group=m.iso_group, iso_foundation=m.iso_foundation,
                envelope_band_hz=m.envelope_band_hz, velocity_band_hz=m.velocity_band_hz)
        return self._specs[machine]

    def windower(self, machine: str) -> Windower:
        if machine not in self.windowers:
            m = self.machine_config(machine)
            self.windowers[machine] = Windower(m.window_s, m.hop_s)
        return self.windowers[machine]

    # -- state ------------------------------------------------------------------------------------
    def machines(self) -> list[str]:
        return sorted({m for m, _ in self.pipeline.detectors} | set(self.pipeline.alerters))

    # -- input (any thread) ---------------------------------------------------------------------
    def submit(self, item) -> None:
        """Queue a frame, a feature record, ``("rebaseline", machine)`` or ``("call", fn)``
        (``fn()`` on the processing thread); never blocks.

        When the queue is full the oldest item is dropped and counted (the agent
        reports it in its status rather than stalling the network thread).
        """
        with self._inbox_lock:
            if len(self._inbox) >= self.config.resources.queue_frames:
                self._inbox.popleft()
                self.stats["dropped_frames"] += 1
            self._inbox.append(item)
        self._wake.set()

    def _drain(self) -> list:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
        return items

    # -- processing (the processing thread only) -------------------------------------------------
    def may_train(self, live: bool) -> bool:
        """Whether model updates may run now: not when live frames are behind real time, nor
        when updates used more than ``learn_budget`` of a core over the last half minute.

        Recordings are never deferred: replaying them must give the same result every
        time (a restart after a crash resumes a replay and must raise the same alerts).
        """
        if not live:
            return True
        c = self.config.resources
        if self.lag_s is not None and self.lag_s > c.max_lag_s:
            return False
        return self._recent_training_s() / BUDGET_WINDOW_S <= c.learn_budget

    def _recent_training_s(self, add_s: float = 0.0) -> float:
        """Seconds of model updates in the recent past (older ones fade, 30 s constant)."""
        now = time.monotonic()
        self._train_s = self._train_s * math.exp(-(now - self._accounted_at) / BUDGET_WINDOW_S)
        self._train_s += add_s
        self._accounted_at = now
        return self._train_s

    def process(self, items, live: bool = True) -> list[dict]:
        """Window, featurize, score and alert on ``items``; returns the alerts raised.

        ``live`` says whether the items arrived now (MQTT) or come from a recording.
        """
        from edge_agent.runtime.validation import PayloadError, check_frame

        alerts, windows, records = [], [], []
        for item in items:
            if isinstance(item, tuple):  # a command: after the windows queued before it
                alerts += self._score(windows, records, live)
                windows, records = [], []
                if item[0] == "call":
                    # an upper layer's work on this thread (the fleet member), never the end
                    # of the others
                    self._call(item[1])
                elif item[0] == "rebaseline":
                    self.rebaseline(item[1])
                elif item[0] == "fleet_confirm":  # a baseline that differs from its fleet
                    self.pipeline.confirm_baseline(item[1])
                else:  # an operator's label (edge_agent.runtime.feedback)
                    alerts += feedback.on_agent(self, *item[1:])
            elif not self.config.owns(item.machine):
                continue  # another worker's machine (a replay is read by every worker)
            elif not live and not self.channel_configured(item.machine, item.channel):
                self._skip_channel(item.machine, item.channel)
            elif isinstance(item, Frame):
                if not live:  # live frames were checked (and counted) when decoded
                    try:
                        check_frame(item, self.config.limits)
                    except PayloadError as exc:
                        self.rejections.rejected(item.machine, item.channel, exc.reason,
                                                 exc.detail, trusted=True)
                        continue
                    self.rejections.accepted(item.machine, item.channel, trusted=True)
                self.stats["frames"] += 1
                if item.rpm is None and self.machine_config(item.machine).rpm is not None:
                    item = replace(item, rpm=self.machine_config(item.machine).rpm)
                windows += self.windower(item.machine).push(item)
                if live:  # how far behind the wall clock the sensors' frames are handled
                    self.lag_s = max(0.0, self.clock() - item.start_s - item.duration_s)
            elif isinstance(item, FeatureRecord):
                records.append(item)
        alerts += self._score(windows, records, live)
        return alerts

    def _score(self, windows, records, live: bool) -> list[dict]:
        # Featurized and scored a batch at a time: an alert in a burst of hundreds of
        # channels is committed after its own batch, not after the whole burst.
        alerts = []
        for k in range(0, len(windows), FEATURE_BATCH):
            batch = featurize(windows[k:k + FEATURE_BATCH], lambda m, c: self.spec_for(m))
            alerts += self._score_records(time_order(batch), live)
        return alerts + self._score_records(time_order(records), live)

    def _score_records(self, records, live: bool) -> list[dict]:
        alerts = []
        for rec in records:
            key = (rec.machine, rec.channel)
            index = self.indices.get(key, 0)
            self.indices[key] = index + 1
            train = self.may_train(live)
            t = time.perf_counter()
            try:
                verdict, alert = self.pipeline.process(rec, index, may_train=train)
            except Exception:  # one machine's failure must not take the others' windows along
                self.stats["processing_errors"] += 1
                self._errors_log.log(logging.ERROR, rec.machine, "processing a window failed; "
                                     "it is skipped, the others go on", exc_info=True, extra={
                                         "event": "processing_error", "machine": rec.machine,
                                         "channel": rec.channel, "source": rec.source})
                continue
            if verdict["state"] == "rejected":  # counted as the channel's sensor health
                self.rejections.rejected(rec.machine, rec.channel, verdict["reason"],
                                         verdict["detail"], trusted=True)
                continue
            if train:
                self._recent_training_s(time.perf_counter() - t)
            # a learned monitoring window whose model update had to wait
            self.stats["deferred_updates"] += (not train and verdict["learned"]
                                               and verdict["phase"] == "monitoring")
            self.stats["windows"] += 1
            fitted = (rec.machine, rec.channel, verdict.get("regime") or "any")
            if verdict["phase"] == "monitoring" and fitted not in self.fitted:
                self.fitted.add(fitted)  # known from the checkpoint, or learned just now
                log.info("baseline learned", extra={
                    "event": "baseline_learned", "machine": rec.machine, "channel": rec.channel,
                    "regime": verdict.get("regime"), "windows": index})
                self._checkpoint_due = True
            self.channel_view[key] = {**verdict, "start_s": rec.start_s}
            if alert is not None:
                alerts.append(self.raise_alert(alert, live))
        return alerts

    def _call(self, fn) -> None:
        try:
            fn()
        except Exception:
            self.stats["processing_errors"] += 1
            self._errors_log.log(logging.ERROR, "call", "a queued task failed", exc_info=True,
                                 extra={"event": "processing_error", "task": repr(fn)[:80]})
    def raise_alert(self, alert: dict, live: bool) -> dict:
        """Count, keep and commit ``alert``: durable before the next window, or nothing goes on."""
        machine = alert["machine"]
        self.stats["alerts"] += 1
        self.last_alert[machine] = alert
        self.recent_alerts.append(alert)
        self.alerts_raised[machine] = self.alerts_raised.get(machine, 0) + 1
        self._commit(alert, live)
        log.warning(alert["summary"], extra={"event": "alert", "alert_id": alert["id"],
                                             "machine": machine, "severity": alert["severity"]})
        return alert

    def rebaseline(self, machine: str) -> None:
        channels = self.pipeline.rebaseline(machine)
        self.forget_windows(machine)
        log.warning("re-baseline ordered", extra={"event": "rebaseline", "machine": machine,
                                                  "channels": channels})

    def forget_windows(self, machine: str) -> None:
        """The agent's side of a re-baseline (the pipeline's is Pipeline.rebaseline): the
        machine's partial windows and which of its baselines were announced as learned."""
        self.windowers.pop(machine, None)
        self.fitted = {f for f in self.fitted if f[0] != machine}

    # -- main loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event, source=None, *, exit_when_done: bool = False) -> None:
        """Process until ``stop`` is set (or, with ``exit_when_done``, the source is exhausted)."""
        resources, every_s = self.config.resources, self.config.checkpoint_every_s
        last_checkpoint = last_status = time.monotonic()
        blocks = source.blocks() if source is not None else iter(())
        self._stop = stop
        try:
            while not stop.is_set():
                items = self._drain()
                if items:
                    self._process_safely(items, live=True)
                block = next(blocks, None) if source is not None and not source.exhausted else None
                if block is not None:
                    self._process_safely(block, live=False)
                    self.replay_position = source.position
                if not items and block is None:
                    if exit_when_done and (source is None or source.exhausted):
                        break
                    self._wake.wait(0.2)
                    self._wake.clear()
                now = time.monotonic()
                due = self._checkpoint_due and (self.storage is None or
                                                now - last_checkpoint >= CHECKPOINT_RETRY_S)
                if now - last_checkpoint >= every_s or due:
                    self.checkpoint()  # on failure: storage_full, retried after a pause
                    last_checkpoint = now
                if now - last_status >= resources.status_every_s:
                    self._publish_status()
                    last_status = now
        except AlertUncommitted as exc:
            self._stop_uncommitted(exc)
            self._count_dropped_at_stop()
            self._publish_status()
            return
        self._count_dropped_at_stop()
        self.checkpoint()
        self._publish_status()

    def _stop_uncommitted(self, exc: AlertUncommitted) -> None:
        """No checkpoint: a recording's alert is raised again by the restart, same id. A live
        alert's frames are gone, so it is handed to the broker without the outbox (QoS 1, in
        memory: delivered if the connection holds until the drain) and logged whole."""
        published = False
        if exc.live and self.link is not None:
            published = self.link.publish_unrecorded(exc.alert)
        log.error("stopping with an alert not yet committed: no checkpoint; " + (
            "a live alert, the restart cannot raise it again: the alert follows in full"
            if exc.live else "the restart raises it again"), extra={
                "event": "stop_uncommitted", "alert_id": exc.alert["id"], "live": exc.live,
                "published_without_outbox": published,
                **({"alert": exc.alert} if exc.live else {})})

    def _count_dropped_at_stop(self) -> None:
        dropped = len(self._drain())
        if dropped:
            self.stats["dropped_at_stop"] += dropped
            log.warning("queued live frames dropped at stop", extra={
                "event": "dropped_at_stop", "frames": dropped})

    def _process_safely(self, items, live: bool) -> None:
        """:meth:`process`, but a failure is logged and counted, never the end of the agent."""
        try:
            self.process(items, live=live)
        except AlertUncommitted:
            raise
        except Exception:
            self.stats["processing_errors"] += 1
            log.exception("processing failed; the block is skipped", extra={
                "event": "processing_error", "items": len(items)})

    def _publish_status(self) -> None:
        if self.link is not None:
            self.link.publish_status()

    def close(self, drain_s: float = 5.0, error: str | None = None) -> None:
        if self.link is not None:
            self.link.close(drain_s=drain_s, error=error)


def agent_version(agent: Agent, machine: str) -> str | None:
    detectors = [d for (m, _), d in agent.pipeline.detectors.items() if m == machine]
    if not detectors:
        return None
    return f"{__version__}+g{max(d.generation for d in detectors)}.u{sum(d.updates for d in detectors)}"
