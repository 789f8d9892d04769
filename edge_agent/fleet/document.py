"""Fleet priors and member updates as JSON documents, and the prior's Ed25519 signature.

The documents are ``edge-agent/fleet-prior/1`` and ``edge-agent/fleet-update/1``
(schemas in :mod:`edge_agent.schema`). A prior is signed over its canonical JSON
(keys sorted, no spaces, ASCII, the ``signature`` member left out), so it may be
re-serialised in transit without breaking the signature. :func:`verify_prior` is the
only way an agent turns a document into a :class:`~edge_agent.models.prior.FleetPrior`:
every refusal is a :class:`PriorRefused` whose ``reason`` is one of :data:`REASONS`
(agents count refusals by reason in their status).

>>> import numpy as np
>>> from edge_agent.models.prior import FleetPrior
>>> from edge_agent.fleet.keys import _ed25519
>>> key = _ed25519().Ed25519PrivateKey.generate()
>>> prior = FleetPrior("pump-a", 3, 0.0, ("rms_g",), 3, [-1.0], [0.02], [0.05], [True])
>>> doc = sign_prior(prior, key)
>>> verify_prior(doc, key.public_key(), class_name="pump-a").version
3
>>> verify_prior(doc, key.public_key(), class_name="pump-a", newer_than=3)
Traceback (most recent call last):
...
edge_agent.fleet.document.PriorRefused: old_version: version 3 is not newer than 3
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math

import numpy as np

from edge_agent.fleet.keys import key_id
from edge_agent.frame import iso_time
from edge_agent.models.prior import FleetPrior, MemberSummary

PRIOR_SCHEMA = "edge-agent/fleet-prior/1"
UPDATE_SCHEMA = "edge-agent/fleet-update/1"
FORMAT = 1
#: Why a document was refused.
REASONS = ("unsigned", "signature", "wrong_class", "old_version", "format", "features")
MAX_FEATURES = 512
MAX_HIDDEN = 512
MAX_NAME = 128


class PriorRefused(Exception):
    """A prior (or update) document that must not be used; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def canonical(doc: dict) -> bytes:
    """The bytes a prior's signature covers: ``doc`` without ``signature``, canonical JSON."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _num(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError("a fleet document cannot carry NaN or infinity")
    return float(f"{value:.10g}")


MAX_CHANNELS = 64


def _weights_doc(weights) -> list | None:
    if weights is None:
        return None
    return [{"channel": channel, "hidden": int(np.shape(ws[0])[1]),
             "weights": [np.vectorize(_num, otypes=[float])(np.asarray(w)).tolist()
                         for w in ws]}
            for channel, ws in sorted(weights.items())]


def _weights_from(doc, names):
    """``{channel: [W1, b1, W2, b2]}`` checked against the features of each channel."""
    if doc is None:
        return None
    if not isinstance(doc, list) or not 1 <= len(doc) <= MAX_CHANNELS:
        raise PriorRefused("format", f"autoencoder must be a list of 1 to {MAX_CHANNELS}")
    out = {}
    for entry in doc:
        try:
            channel, hidden = entry["channel"], int(entry["hidden"])
            arrays = [np.array(w, dtype=np.float64) for w in entry["weights"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PriorRefused("format", f"autoencoder weights unreadable: {exc}") from None
        if not isinstance(channel, str) or channel in out:
            raise PriorRefused("format", "autoencoder channels must be distinct names")
        n = sum(1 for name in names if name.startswith(channel + "/")) if channel \
            else len(names)
        shapes = [(n, hidden), (hidden,), (hidden, n), (n,)]
        if not 1 <= hidden <= MAX_HIDDEN or len(arrays) != 4 \
                or [a.shape for a in arrays] != shapes \
                or not all(np.all(np.isfinite(a)) for a in arrays):
            raise PriorRefused("format", f"autoencoder weights of {channel or 'the machine'} "
                               f"are not {shapes}")
        out[channel] = arrays
    return out


def _time_s(text) -> float:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise PriorRefused("format", f"created {text!r} is not an ISO 8601 time") from None


def _features_from(doc, keys):
    rows = doc.get("features")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_FEATURES:
        raise PriorRefused("format", f"features must be a list of 1 to {MAX_FEATURES}")
    names, cols = [], {k: [] for k in keys}
    logs = []
    for row in rows:
        if not isinstance(row, dict) or set(row) != {"name", "log", *keys}:
            raise PriorRefused("format", f"feature entry {row!r:.80} has wrong members")
        name = row["name"]
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or \
                not isinstance(row["log"], bool):
            raise PriorRefused("format", f"feature entry {row!r:.80} has a bad name or log")
        for k in keys:
            v = row[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PriorRefused("format", f"feature {name}: {k} is not a finite number")
            cols[k].append(float(v))
        names.append(name)
        logs.append(row["log"])
    if len(set(names)) != len(names):
        raise PriorRefused("format", "a feature is named twice")
    if any(s <= 0 for s in cols["scale"]) or any(s < 0 for s in cols.get("spread", [])):
        raise PriorRefused("format", "a scale is not positive or a spread negative")
    return tuple(names), logs, cols


def _int(doc, key, low: int) -> int:
    v = doc.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise PriorRefused("format", f"{key} must be an integer >= {low}")
    return v


# -- priors -------------------------------------------------------------------------
def prior_to_doc(prior: FleetPrior) -> dict:
    """The unsigned document of ``prior``."""
    return {"schema": PRIOR_SCHEMA, "format": FORMAT, "class": prior.class_name,
            "version": int(prior.version), "created": iso_time(prior.created),
            "members": int(prior.members), "windows": int(prior.windows),
            "features": [{"name": n, "log": bool(lg), "location": _num(loc),
                          "scale": _num(sc), "spread": _num(sp)}
                         for n, lg, loc, sc, sp in zip(prior.feature_names, prior.log,
                                                       prior.location, prior.scale,
                                                       prior.spread)],
            "autoencoder": _weights_doc(prior.ae_weights),
            "provenance": dict(prior.provenance)}


def prior_from_doc(doc) -> FleetPrior:
    """Parse a prior document (signature not checked: see :func:`verify_prior`)."""
    if not isinstance(doc, dict) or doc.get("schema") != PRIOR_SCHEMA:
        raise PriorRefused("format", f"not a {PRIOR_SCHEMA} document")
    if doc.get("format") != FORMAT:
        raise PriorRefused("format", f"format {doc.get('format')!r}; this agent reads {FORMAT}")
    allowed = {"schema", "format", "class", "version", "created", "members", "windows",
               "features", "autoencoder", "provenance", "signature"}
    if set(doc) - allowed:
        raise PriorRefused("format", f"unknown members {sorted(set(doc) - allowed)}")
    cls = doc.get("class")
    if not isinstance(cls, str) or not 1 <= len(cls) <= MAX_NAME:
        raise PriorRefused("format", "class must be a name of 1 to 128 characters")
    names, logs, cols = _features_from(doc, ("location", "scale", "spread"))
    provenance = doc.get("provenance", {})
    if not isinstance(provenance, dict):
        raise PriorRefused("format", "provenance must be an object")
    return FleetPrior(cls, _int(doc, "version", 1), _time_s(doc.get("created")), names,
                      _int(doc, "members", 1), cols["location"], cols["scale"],
                      cols["spread"], logs, _weights_from(doc.get("autoencoder"), names),
                      _int(doc, "windows", 0), provenance)


def sign_document(doc: dict, private_key) -> dict:
    """``doc`` (a prior, a rollout) with an Ed25519 ``signature`` member over its canonical
    JSON (:func:`canonical`), made with the fleet's ``private_key``."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    value = private_key.sign(canonical(body))
    return {**body, "signature": {"alg": "Ed25519", "key_id": key_id(private_key.public_key()),
                                  "value": base64.b64encode(value).decode("ascii")}}


def sign_prior(prior: FleetPrior, private_key) -> dict:
    """The document of ``prior`` signed with the fleet's Ed25519 ``private_key``."""
    return sign_document(prior_to_doc(prior), private_key)


def verify_signature(doc, public_key) -> dict:
    """``doc`` (a prior, a rollout) if its signature is the fleet key's; :class:`PriorRefused`
    (``format``, ``unsigned``, ``signature``) otherwise. Nothing in it is believed before."""
    if not isinstance(doc, dict):
        raise PriorRefused("format", "a fleet document is a JSON object")
    signature = doc.get("signature")
    if signature is None:
        raise PriorRefused("unsigned", "the document carries no signature")
    if not isinstance(signature, dict) or signature.get("alg") != "Ed25519" \
            or not isinstance(signature.get("value"), str):
        raise PriorRefused("signature", "the signature is not an Ed25519 signature")
    from edge_agent.fleet._deps import need

    invalid = need("cryptography.exceptions").InvalidSignature
    try:
        public_key.verify(base64.b64decode(signature["value"], validate=True), canonical(doc))
    except (ValueError, TypeError, invalid):
        raise PriorRefused("signature", "bad signature: the document was altered or signed "
                           "with another key than the trusted one") from None
    return doc


def verify_prior(doc, public_key, *, class_name: str, newer_than: int | None = None,
                 feature_names=None) -> FleetPrior:
    """The prior in ``doc`` if it is signed by ``public_key``, for ``class_name``, newer
    than version ``newer_than`` and (given ``feature_names``) covers those features.

    The signature is checked before anything in the document is believed. Raises
    :class:`PriorRefused` otherwise.
    """
    verify_signature(doc, public_key)
    prior = prior_from_doc(doc)
    if prior.class_name != class_name:
        raise PriorRefused("wrong_class", f"prior for class {prior.class_name!r}, "
                           f"machine is {class_name!r}")
    if newer_than is not None and prior.version <= newer_than:
        raise PriorRefused("old_version",
                           f"version {prior.version} is not newer than {newer_than}")
    if feature_names is not None:
        missing = sorted(set(feature_names) - set(prior.feature_names))
        if missing:
            raise PriorRefused("features", f"the prior lacks features {missing[:5]}")
    return prior


# -- member updates -----------------------------------------------------------------
def update_id(doc: dict) -> str:
    """What identifies one update: its member and creation time (``gw-1/pump-7@<created>``)."""
    return f"{doc['agent']}/{doc['machine']}@{doc['created']}"


def update_to_doc(summary: MemberSummary, *, agent: str, created_s: float,
                  privacy: dict | None = None) -> dict:
    """The ``edge-agent/fleet-update/1`` document of ``summary``.

    ``privacy`` is ``{noise_multiplier, clip, epsilon, delta, exact, reference}`` when
    ``summary`` was privatised (:mod:`edge_agent.fleet.privacy`; ``exact`` false for a
    bootstrap release, ``reference`` the prior it was standardised against), else ``None``.
    """
    return {"schema": UPDATE_SCHEMA, "format": FORMAT, "class": summary.class_name,
            "agent": agent, "machine": summary.machine, "created": iso_time(created_s),
            "windows": int(summary.windows),
            "features": [{"name": n, "log": bool(lg), "location": _num(loc), "scale": _num(sc)}
                         for n, lg, loc, sc in zip(summary.feature_names, summary.log,
                                                   summary.location, summary.scale)],
            "autoencoder": _weights_doc(summary.ae_weights),
            "privacy": None if privacy is None else {
                **{k: _num(privacy[k]) for k in ("noise_multiplier", "clip", "epsilon", "delta")},
                "exact": bool(privacy.get("exact", False)),
                "reference": privacy.get("reference")}}


def update_from_doc(doc, *, class_name: str | None = None) -> MemberSummary:
    """Parse a member update; raises :class:`PriorRefused` (``format``, ``wrong_class``)."""
    if not isinstance(doc, dict) or doc.get("schema") != UPDATE_SCHEMA \
            or doc.get("format") != FORMAT:
        raise PriorRefused("format", f"not a {UPDATE_SCHEMA} document of format {FORMAT}")
    allowed = {"schema", "format", "class", "agent", "machine", "created", "windows",
               "features", "autoencoder", "privacy"}
    if set(doc) != allowed:
        raise PriorRefused("format", f"members {sorted(set(doc) ^ allowed)} wrong")
    for key in ("class", "agent", "machine"):
        if not isinstance(doc[key], str) or not 1 <= len(doc[key]) <= MAX_NAME:
            raise PriorRefused("format", f"{key} must be a name of 1 to {MAX_NAME} characters")
    if class_name is not None and doc["class"] != class_name:
        raise PriorRefused("wrong_class", f"update for {doc['class']!r}, expected {class_name!r}")
    _time_s(doc["created"])
    names, logs, cols = _features_from(doc, ("location", "scale"))
    return MemberSummary(doc["class"], doc["machine"], names, _int(doc, "windows", 1),
                         cols["location"], cols["scale"], logs,
                         _weights_from(doc["autoencoder"], names))
