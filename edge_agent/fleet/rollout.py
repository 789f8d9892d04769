"""Staged rollout of a class's fleet prior: canaries first, promotion on evidence, rollback.

One :class:`Rollout` per class, owned by the aggregator (it sees every member's
updates and alerts; the agents only follow the signed rollout document it
publishes). The life of a version:

``propose(v)``
    A new prior version ``v`` (strictly above every version seen) becomes the
    *candidate*. It applies to the canaries only: the configured members, else a
    stable share (``canary_fraction``, at least one) of the members known then.
``evaluate(now)``
    Once ``promote_after_s`` has passed, the canaries' alert count since the
    candidate started is compared with their count over the same length of time
    just before it. If it rose by no more than ``max_alert_rate_factor``
    (``after <= factor * max(before, 1)``: a single alert on the canaries is not
    evidence against a prior) the candidate is *promoted*: it becomes the stable
    version every member uses. Otherwise it is *held back* with the reason
    (``"canary alerts 7 in 3600 s against 1 before (factor 1.5)"``), and the
    canaries return to the stable version.
``rollback()``
    ``cmd/fleet-rollback``: the stable version returns to the one before it (a
    candidate on trial is dropped). The only way a version moves backward; a
    rollback with no earlier version is refused with a reason.

Every change is logged (``event: fleet_rollout``) and kept in :attr:`Rollout.history`
(bounded). The state is a plain dict (:meth:`Rollout.to_dict`) so the aggregator
can persist it and publish it.

>>> r = Rollout("pump-6205", RolloutPolicy(canaries=("gw-1/pump-1",), promote_after_s=60))
>>> r.propose(1, now_s=0.0, members=["gw-1/pump-1", "gw-2/pump-2"]).stage
'canary'
>>> r.version_for("gw-2/pump-2"), r.version_for("gw-1/pump-1")
(None, 1)
>>> r.evaluate(now_s=61.0).stage
'promoted'
>>> r.version_for("gw-2/pump-2")
1
"""

from __future__ import annotations

import bisect
import logging
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Stages of the rollout document (``stage``).
STAGES = ("none", "canary", "promoted", "held_back", "rolled_back")
#: Changes kept in the history (the log has them all).
HISTORY = 32
#: Alert times kept per member (older ones are never needed once a trial is decided).
MAX_ALERTS_PER_MEMBER = 1000


class RolloutError(ValueError):
    """A change the rollout refuses (an old version, a rollback with nothing to return to)."""


@dataclass(frozen=True)
class RolloutPolicy:
    """How a class's new prior is rolled out (``[fleet]`` of ``fleet.toml``).

    Parameters
    ----------
    canaries : tuple of str
        Members (``"<agent>/<machine>"``) that try a new version first. Empty:
        ``canary_fraction`` of the members, chosen by a stable hash of their name.
    canary_fraction : float
        Share of the members that are canaries when none are listed (at least one).
    promote_after_s : float
        How long the canaries run a candidate before it is judged.
    max_alert_rate_factor : float
        The canaries' alert count may rise by at most this factor for promotion.
    """

    canaries: tuple[str, ...] = ()
    canary_fraction: float = 0.1
    promote_after_s: float = 86400.0
    max_alert_rate_factor: float = 1.5


@dataclass(frozen=True)
class Change:
    """One change of a rollout, as logged and kept in the history."""

    ts_s: float
    stage: str
    stable: int | None
    candidate: int | None
    reason: str

    def to_dict(self) -> dict:
        return {"ts_s": self.ts_s, "stage": self.stage, "stable": self.stable,
                "candidate": self.candidate, "reason": self.reason}


def is_canary_by_hash(member: str, fleet_class: str, fraction: float) -> bool:
    """A stable pseudo-random choice: the same member is a canary at every restart.

    >>> is_canary_by_hash("gw-1/pump-1", "c", 1.0), is_canary_by_hash("gw-1/pump-1", "c", 0.0)
    (True, False)
    """
    return zlib.crc32(f"{fleet_class}\0{member}".encode()) % 10_000 < fraction * 10_000


class Rollout:
    """The rollout state of one class (see the module docstring).

    Attributes
    ----------
    stable : int or None
        The version every member that is not on trial uses.
    candidate : int or None
        The version on trial on :attr:`canaries`.
    stage : str
        One of :data:`STAGES`.
    reason : str
        Why the last change happened (for a hold-back: the figures).
    """

    def __init__(self, fleet_class: str, policy: RolloutPolicy = RolloutPolicy()):
        self.fleet_class, self.policy = fleet_class, policy
        self.stable: int | None = None
        self.candidate: int | None = None
        self.previous: list[int] = []  # earlier stable versions, newest last (for rollback)
        self.highest = 0  # the highest version ever proposed: versions only move forward
        self.stage, self.reason = "none", ""
        self.canaries: tuple[str, ...] = ()
        self.started_s: float | None = None
        self.seq = 0  # increments with every change: the rollout document's replay guard
        self.history: deque[Change] = deque(maxlen=HISTORY)
        self._alerts: dict[str, list[float]] = {}

    # -- what members use ------------------------------------------------------------------------
    def version_for(self, member: str) -> int | None:
        """The version ``member`` should use now."""
        if self.stage == "canary" and member in self.canaries:
            return self.candidate
        return self.stable

    def choose_canaries(self, members: Iterable[str]) -> tuple[str, ...]:
        """The canaries among ``members``: the configured ones, else a share by hash."""
        members = sorted(set(members))
        if self.policy.canaries:
            return tuple(m for m in self.policy.canaries)
        chosen = [m for m in members
                  if is_canary_by_hash(m, self.fleet_class, self.policy.canary_fraction)]
        if not chosen and members:  # at least one: the member whose hash is smallest
            chosen = [min(members, key=lambda m: zlib.crc32(f"{self.fleet_class}\0{m}".encode()))]
        return tuple(chosen)

    # -- changes ---------------------------------------------------------------------------------
    def propose(self, version: int, *, now_s: float, members: Iterable[str]) -> Change:
        """Start the trial of ``version`` on the canaries (a candidate on trial is replaced)."""
        if version <= self.highest:
            raise RolloutError(f"version {version} is not newer than {self.highest}: "
                               f"versions only move forward")
        self.highest = version
        self.candidate, self.started_s = version, now_s
        self.canaries = self.choose_canaries(members)
        return self._change(now_s, "canary", f"version {version} on trial on "
                            f"{len(self.canaries)} canar{'y' if len(self.canaries) == 1 else 'ies'}"
                            f" for {self.policy.promote_after_s:g} s")

    def commission(self, version: int, *, now_s: float, source: str,
                   members: Iterable[str] = ()) -> Change:
        """Adopt a prior commissioned from recordings (``[aggregator] commissioning``): the
        stable version of a class that has none (no machine uses a prior yet, so there is
        no alert rate to try it on), else a candidate on trial like a built one."""
        if self.stable is not None:
            return self.propose(version, now_s=now_s, members=members)
        if version <= self.highest:
            raise RolloutError(f"version {version} is not newer than {self.highest}: "
                               f"versions only move forward")
        self.highest, self.stable, self.candidate = version, version, None
        return self._change(now_s, "promoted", f"version {version} commissioned from {source}")

    def observe_alert(self, member: str, ts_s: float) -> None:
        """A warning or alarm of ``member`` at ``ts_s`` (its window's time)."""
        times = self._alerts.setdefault(member, [])
        bisect.insort(times, ts_s)
        if len(times) > MAX_ALERTS_PER_MEMBER:
            del times[0]

    def alert_times(self, now_s: float) -> dict[str, list[float]]:
        """The alert times that may still count in a trial (the last two trial lengths),
        to persist: a trial started after a restart is judged against the alerts before it."""
        since = now_s - 2 * self.policy.promote_after_s
        return {m: t[bisect.bisect_left(t, since):] for m, t in self._alerts.items()
                if t and t[-1] >= since}

    def restore_alert_times(self, times: dict[str, list[float]]) -> None:
        """Alert times from :meth:`alert_times` (of an earlier run), kept with those since."""
        for member, ts in times.items():
            for t in ts:
                self.observe_alert(member, float(t))

    def alert_counts(self, now_s: float) -> tuple[int, int]:
        """The canaries' alerts ``(before, after)`` the candidate started, over equal spans."""
        start = self.started_s
        span = now_s - start
        before = after = 0
        for member in self.canaries:
            times = self._alerts.get(member, [])
            before += bisect.bisect_left(times, start) - bisect.bisect_left(times, start - span)
            after += bisect.bisect_right(times, now_s) - bisect.bisect_left(times, start)
        return before, after

    def evaluate(self, now_s: float) -> Change | None:
        """Promote or hold back the candidate when its trial is over; else ``None``."""
        if self.stage != "canary" or now_s - self.started_s < self.policy.promote_after_s:
            return None
        before, after = self.alert_counts(now_s)
        factor = self.policy.max_alert_rate_factor
        span = now_s - self.started_s
        figures = (f"canary alerts {after} in {span:g} s against {before} before "
                   f"(factor {factor:g})")
        if after <= factor * max(before, 1):
            if self.stable is not None:
                self.previous.append(self.stable)
                del self.previous[:-HISTORY]
            self.stable, self.candidate = self.candidate, None
            return self._change(now_s, "promoted", f"version {self.stable} promoted: {figures}")
        held = self.candidate
        self.candidate = None
        return self._change(now_s, "held_back", f"version {held} held back: {figures}")

    def rollback(self, now_s: float) -> Change:
        """Return to the stable version before the current one (drops a candidate on trial)."""
        if not self.previous:
            raise RolloutError(f"class {self.fleet_class}: no earlier version to roll back to "
                               f"(stable {self.stable})")
        left = self.stable
        self.stable, self.candidate = self.previous.pop(), None
        return self._change(now_s, "rolled_back", f"rolled back from version {left} to "
                            f"{self.stable} (cmd/fleet-rollback)")

    def adopt(self, doc: dict, *, now_s: float) -> bool:
        """Follow the verified rollout document ``doc`` of the leader of a redundant pair,
        when it is newer (``True``); a trial it left unfinished starts over at ``now_s`` (its
        start is not published)."""
        if doc["seq"] <= self.seq:
            return False
        self.seq, self.stage, self.reason = doc["seq"], doc["stage"], doc["reason"]
        self.stable, self.candidate = doc["stable"], doc["candidate"]
        self.previous, self.canaries = list(doc.get("previous", [])), tuple(doc["canaries"])
        self.highest = max(self.highest, *(v or 0 for v in (doc["stable"], doc["candidate"],
                                                              doc.get("highest"))))
        self.started_s = now_s if self.stage == "canary" else None
        return True

    def _change(self, now_s: float, stage: str, reason: str) -> Change:
        self.stage, self.reason, self.seq = stage, reason, self.seq + 1
        change = Change(now_s, stage, self.stable, self.candidate, reason)
        self.history.append(change)
        log.info(reason, extra={"event": "fleet_rollout", "class": self.fleet_class,
                                "stage": stage, "stable": self.stable,
                                "candidate": self.candidate, "seq": self.seq,
                                "canaries": list(self.canaries)})
        return change

    # -- persistence and the published document ---------------------------------------------------
    def to_dict(self) -> dict:
        """The state (without alert times: :meth:`alert_times`), as persisted and published
        in the rollout document."""
        return {"class": self.fleet_class, "seq": self.seq, "stage": self.stage,
                "reason": self.reason, "stable": self.stable, "candidate": self.candidate,
                "previous": list(self.previous), "highest": self.highest,
                "canaries": list(self.canaries) if self.stage == "canary" else [],
                "started_s": self.started_s,
                "history": [c.to_dict() for c in self.history]}

    @classmethod
    def from_dict(cls, doc: dict, policy: RolloutPolicy = RolloutPolicy()) -> Rollout:
        """A rollout restored from :meth:`to_dict` (alert times: :meth:`restore_alert_times`)."""
        r = cls(doc["class"], policy)
        r.seq, r.stage, r.reason = int(doc["seq"]), doc["stage"], doc["reason"]
        r.stable, r.candidate = doc["stable"], doc["candidate"]
        r.previous, r.highest = list(doc["previous"]), int(doc["highest"])
        r.canaries, r.started_s = tuple(doc["canaries"]), doc["started_s"]
        r.history.extend(Change(**c) for c in doc["history"])
        if r.stage not in STAGES:
            raise RolloutError(f"unknown rollout stage {r.stage!r}")
        return r
