"""The rollout document (``edge-agent/fleet-rollout/1``): which prior version members use,
signed with the fleet key like the prior itself (:func:`edge_agent.fleet.document.sign_document`).

The aggregator publishes it retained on ``<prefix>/<site>/fleet/<class>/rollout`` after
every change of :class:`~edge_agent.fleet.rollout.Rollout`; agents follow it and nothing
else: a member uses the ``candidate`` when it is listed in ``canaries`` during a trial, the
``stable`` version otherwise. ``seq`` grows with every change, so a replayed older document
is refused (``old_version``), and an agent accepts a stable version lower than the one it
uses only from a newer document whose stage is ``rolled_back`` (the one way a version moves
backward). The signature covers the canonical JSON as for priors
(:func:`edge_agent.fleet.document.canonical`).
"""

from __future__ import annotations

from edge_agent.fleet.document import PriorRefused, verify_signature
from edge_agent.fleet.rollout import STAGES, Rollout
from edge_agent.frame import iso_time

ROLLOUT_SCHEMA = "edge-agent/fleet-rollout/1"
MAX_CANARIES = 4096


def rollout_doc(rollout: Rollout, *, created_s: float) -> dict:
    """The unsigned document of ``rollout``'s state (see the module docstring)."""
    state = rollout.to_dict()
    return {"schema": ROLLOUT_SCHEMA, "class": rollout.fleet_class, "seq": state["seq"],
            "created": iso_time(created_s), "stage": state["stage"], "reason": state["reason"],
            "stable": state["stable"], "candidate": state["candidate"],
            "highest": state["highest"] or None, "previous": state["previous"][-32:],
            "canaries": state["canaries"],
            "history": [{**{k: c[k] for k in ("stage", "stable", "candidate", "reason")},
                         "ts": iso_time(c["ts_s"])} for c in state["history"]]}


def verify_rollout(doc, public_key, *, class_name: str, after_seq: int | None = None) -> dict:
    """The rollout document ``doc`` checked: signature, form, class and ``seq`` above
    ``after_seq`` (a replayed older one is ``old_version``)."""
    verify_signature(doc, public_key)
    if doc.get("schema") != ROLLOUT_SCHEMA:
        raise PriorRefused("format", f"not a {ROLLOUT_SCHEMA} document")
    seq, stage = doc.get("seq"), doc.get("stage")
    versions = [doc.get("stable"), doc.get("candidate")]
    canaries = doc.get("canaries")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1 or stage not in STAGES \
            or not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
                       for v in versions) \
            or not isinstance(canaries, list) or len(canaries) > MAX_CANARIES \
            or not all(isinstance(c, str) for c in canaries):
        raise PriorRefused("format", "rollout document members of the wrong type")
    if doc.get("class") != class_name:
        raise PriorRefused("wrong_class", f"rollout for class {doc.get('class')!r}, machine is "
                           f"{class_name!r}")
    if after_seq is not None and seq <= after_seq:
        raise PriorRefused("old_version", f"rollout {seq} is not newer than {after_seq}")
    return doc
