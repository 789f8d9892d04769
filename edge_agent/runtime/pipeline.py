"""Feature records in, verdicts and alerts out: one detector per channel, one alerter per machine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from edge_agent import __version__
from edge_agent.runtime.alerts import AlertPolicy, MachineAlerter
from edge_agent.frame import FeatureRecord, iso_time
from edge_agent.models.detector import ChannelDetector, DetectorConfig
from edge_agent.models.selection import NoFeatures

log = logging.getLogger(__name__)

#: Windows in a row that start before a channel's latest one after which that latest
#: time is taken as the glitch (a frame stamped ahead) and the channel's clock restarts.
CLOCK_RESET_WINDOWS = 3


class Pipeline:
    """The learning and alerting core, free of I/O.

    Parameters
    ----------
    config_for : callable, optional
        ``machine -> DetectorConfig``; default one config for all.
    policy_for : callable, optional
        ``machine -> AlertPolicy``.
    agent_id : str
        Goes into alert ids and alerts.
    """

    def __init__(self, config: DetectorConfig = DetectorConfig(),
                 policy: AlertPolicy = AlertPolicy(), *, agent_id: str = "edge-agent",
                 config_for: Callable[[str], DetectorConfig] | None = None,
                 policy_for: Callable[[str], AlertPolicy] | None = None):
        self.config_for = config_for or (lambda machine: config)
        self.policy_for = policy_for or (lambda machine: policy)
        self.agent_id = agent_id
        self.detectors: dict[tuple[str, str], ChannelDetector] = {}
        self.alerters: dict[str, MachineAlerter] = {}
        #: Start of the latest window accepted per (machine, channel): a later one that
        #: starts before it (a clock glitch) is rejected as ``time_goes_back``, one that
        #: starts with it (a redelivered frame) as ``duplicate``.
        self.last_start_s: dict[tuple[str, str], float] = {}
        self._behind: dict[tuple[str, str], int] = {}  # windows in a row before last_start_s
        self.priors: dict[str, object] = {}  # machine -> its class's verified FleetPrior
        self.default_prior = None  # the prior of machines not in `priors` (offline replay)

    def apply_prior(self, machine: str, prior) -> None:
        """Use a *verified* fleet prior for ``machine`` (edge_agent.fleet.document.verify_prior):
        channels being learned, and every later re-baseline, are watched against it."""
        self.priors[machine] = prior
        for (m, channel), det in self.detectors.items():
            if m == machine:
                part = prior.for_channel(channel)
                if part is not None:
                    det.seed_from_prior(part)

    @property
    def held_baselines(self) -> dict[tuple[str, str], list[str]]:
        """``(machine, channel) -> why its baseline differs from its fleet`` for the baselines
        held until an operator confirms them (see runtime.fleet_check); kept in the models,
        so a restart from a checkpoint keeps them held."""
        return {key: list(model.fleet_differences or ())
                for key, det in self.detectors.items() for model in det.models.values()
                if model.fitted and model.accepted is False}

    def confirm_baseline(self, machine: str) -> int:
        """An operator confirms the baselines of ``machine`` that differ from its fleet:
        they are its normal from now on. Returns how many channels were held."""
        confirmed = 0
        for (m, channel), det in self.detectors.items():
            for model in det.models.values() if m == machine else ():
                if model.fitted and model.accepted is False:
                    model.accepted, model.fleet_differences = True, None
                    confirmed += 1
            if m == machine:
                if machine in self.alerters:
                    self.alerter(machine).channel_state(channel).fleet_held = False
        if confirmed:
            log.warning("baseline confirmed by an operator: it is the machine's normal although "
                        "it differs from its fleet", extra={"event": "fleet_baseline_confirmed",
                                                            "machine": machine,
                                                            "channels": confirmed})
        return confirmed

    def detector(self, machine: str, channel: str) -> ChannelDetector:
        key = (machine, channel)
        if key not in self.detectors:
            det = self.detectors[key] = ChannelDetector(self.config_for(machine))
            prior = self.priors.get(machine, self.default_prior)
            part = prior.for_channel(channel) if prior is not None else None
            if part is not None:
                det.seed_from_prior(part)
        return self.detectors[key]

    def alerter(self, machine: str) -> MachineAlerter:
        if machine not in self.alerters:
            self.alerters[machine] = MachineAlerter(machine, self.policy_for(machine), self.agent_id)
        return self.alerters[machine]

    def process(self, record: FeatureRecord, index: int,
                may_train: bool = True) -> tuple[dict, dict | None]:
        """Verdict (as a JSON-ready dict) and the alert it raised, if any.

        ``may_train`` false defers costly model updates (see ChannelDetector.process).
        A rejected record (:attr:`FeatureRecord.rejected`), and one that starts before the
        channel's previous window, get a verdict with state ``rejected`` and its
        ``reason``; nothing is scored or learned from them.
        """
        key = (record.machine, record.channel)
        previous = self.last_start_s.get(key)
        if record.rejected is None and previous is not None and record.start_s <= previous:
            record = self._out_of_time(record, previous)
        if record.rejected is not None:
            return self._rejected(record, index), None
        detector = self.detector(record.machine, record.channel)
        alerter = self.alerter(record.machine)
        # No channel of a machine learns while the machine is in warning or alarm:
        # its other channels may carry the same fault, more faintly.
        try:
            verdict = detector.process(record.features, rpm=record.rpm, t_s=record.start_s,
                                       may_learn=alerter.state == "normal", may_train=may_train)
        except NoFeatures as exc:
            return self._rejected(replace(record, rejected="no_features", detail=str(exc)),
                                  index), None
        self.last_start_s[key] = record.start_s
        self._behind.pop(key, None)
        model = detector.models.get(verdict.regime)
        fitted = model is not None and model.fitted
        version = f"{__version__}+g{detector.generation}.u{detector.updates}"
        if fitted and model.accepted is None:  # a new baseline, to compare with its fleet
            from edge_agent.runtime.fleet_check import check_baseline

            held = check_baseline(self, record.machine, record.channel, model, record,
                                  detector.generation, version)
            if held is not None:
                return self._verdict(record, index, verdict, alerter), held
        if verdict.basis == "prior":  # judged against the fleet's levels
            reference, spread = model.prior_monitor.reference()
        else:
            reference = model.reference if fitted else {}
            spread = model.reference_spread if fitted else None
        alert = alerter.update(record.channel, verdict, record, reference, version,
                               detector.generation, spread=spread)
        return self._verdict(record, index, verdict, alerter), alert

    @staticmethod
    def _verdict(record, index, verdict, alerter) -> dict:
        state = (verdict.phase if verdict.phase != "monitoring"
                 else alerter.channel_state(record.channel).state)
        out = {"kind": "verdict", "machine": record.machine, "channel": record.channel,
               "index": index, "ts": iso_time(record.start_s), "source": record.source,
               "score": verdict.score, "threshold": verdict.threshold, "state": state,
               "learned": verdict.learned}
        if verdict.regime not in (None, "any"):
            out["regime"] = verdict.regime
        out["phase"], out["baseline_progress"] = verdict.phase, round(verdict.baseline_progress, 3)
        if verdict.phase == "baselining" and not verdict.learned:
            out["baseline_held"] = True  # the machine is in warning or alarm: nothing learned
        out["alarm_threshold"] = verdict.alarm_threshold
        if verdict.basis is not None:
            out["basis"] = verdict.basis  # "prior": judged against the fleet; "own"
        return out

    def _out_of_time(self, record: FeatureRecord, previous: float) -> FeatureRecord:
        """``record`` rejected as ``duplicate`` or ``time_goes_back``; or, when
        :data:`CLOCK_RESET_WINDOWS` windows in a row were behind, accepted: then the glitch
        was the earlier window's time (a frame stamped in the future), and this channel's
        clock starts again from here instead of refusing everything for as long."""
        key = (record.machine, record.channel)
        if record.start_s == previous:
            return replace(record, rejected="duplicate",
                           detail=f"starts at {iso_time(record.start_s)}, as the previous window "
                                  f"did (a frame delivered twice)")
        behind = self._behind[key] = self._behind.get(key, 0) + 1
        if behind < CLOCK_RESET_WINDOWS:
            return replace(record, rejected="time_goes_back",
                           detail=f"starts at {iso_time(record.start_s)}, before the previous "
                                  f"window ({iso_time(previous)})")
        log.warning("channel clock taken again: windows keep starting before the latest one, "
                    "whose time was the glitch", extra={
                        "event": "clock_reset", "machine": record.machine,
                        "channel": record.channel, "was": iso_time(previous),
                        "now": iso_time(record.start_s), "windows_refused": behind - 1})
        return record

    @staticmethod
    def _rejected(record: FeatureRecord, index: int) -> dict:
        return {"kind": "verdict", "machine": record.machine, "channel": record.channel,
                "index": index, "ts": iso_time(record.start_s), "source": record.source,
                "state": "rejected", "reason": record.rejected, "detail": record.detail,
                "learned": False}

    def baseline_coverage(self, machine: str) -> dict[str, dict[str, dict]]:
        """What each baseline of ``machine`` covered (so far): ``{channel: {regime: coverage}}``
        with ``complete`` and ``progress`` (see :meth:`RegimeModel.baseline_coverage`)."""
        return {channel: {regime: model.baseline_coverage() for regime, model in det.models.items()}
                for (m, channel), det in self.detectors.items() if m == machine}

    def rebaseline(self, machine: str) -> int:
        """Restart learning for every channel of ``machine``; returns how many channels."""
        channels = [det for (m, _), det in self.detectors.items() if m == machine]

        for det in channels:
            det.reset()
        if machine in self.alerters:
            self.alerters[machine].reset()
        return len(channels)
