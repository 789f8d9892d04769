"""Evidence an operator can act on: what turns an anomaly into an ALARM.

The learners say a channel is *different* from its healthy self; evidence says
the difference is large enough to act on, in the terms of condition-monitoring
practice (a relative alarm at +6 dB, i.e. twice the machine's own baseline):

* a **health indicator** (RMS, velocity RMS, a band level, the envelope level,
  kurtosis, crest factor; in their shock-robust, sustained form when the features
  have it) at ``alarm_ratio`` times its baseline median or more (twice, in
  amplitude terms; four times for an energy) *and*
  ``alarm_z`` or more of the baseline's own robust standard deviations above
  it, so that a noisy band that doubles now and then while healthy is no
  evidence;
* the **ISO 20816-3 zone** ``alarm_zone`` or worse (C: unsatisfactory for
  long-term operation; D: severe enough to cause damage), in a window the learners
  find anomalous: the zone says how bad a level is, not that it changed, so a machine
  that runs in zone C as it was commissioned is logged once, not paged;
* a **bearing defect line** whose envelope amplitude and prominence over the
  local envelope floor both rose ``fault_line_ratio`` times or more.

Each window's evidence is a list of JSON-ready entries (``kind`` feature,
iso_zone or fault_line); :class:`~edge_agent.runtime.alerts.ChannelAlertState`
keeps it only when it persists (``persistence_k`` of the last
``persistence_n`` windows), so a single shock is never evidence.
"""

from __future__ import annotations

import fnmatch
import math

from edge_agent.models.baseline import is_power
from edge_agent.signal.bearing import FAULTS
from edge_agent.signal.features import feature_label, feature_unit

#: Health indicators judged as evidence by default: levels that damage raises, in
#: edge-agent's names and the band energies of feature streams (IMS tables).
#: A statistic of the whole window (``rms_g``, ``kurtosis``, ``crest_factor``) counts only
#: when its shock-robust form (``sustained_*``, the median over sub-blocks) is not there:
#: a knock in each of three windows is not damage, and evidence stands on its own.
EVIDENCE_FEATURES = ("sustained_rms_g", "rms_g", "velocity_rms_mm_s", "band_*_rms_g",
                     "env_mean_g", "sustained_kurtosis", "kurtosis", "sustained_crest_factor",
                     "crest_factor", "*_energy_g2_hz", "env_*_energy")
ZONES = ("A", "B", "C", "D")



def fmt(value: float) -> str:
    """Three significant digits, as alerts print numbers."""
    return f"{value:.3g}"


def evidence_names(names, patterns=None) -> list[str]:
    """The features of a channel judged as evidence (``patterns``: names or globs).

    By default a whole-window statistic gives way to its sustained form:

    >>> evidence_names(["rms_g", "sustained_rms_g", "skewness", "band_10_20hz_rms_g"])
    ['band_10_20hz_rms_g', 'sustained_rms_g']
    >>> evidence_names(["rms_g", "kurtosis", "bpfi_energy_g2_hz"])   # a feature stream
    ['bpfi_energy_g2_hz', 'kurtosis', 'rms_g']
    """
    names = set(names)
    if patterns is None:
        patterns = EVIDENCE_FEATURES
        names = {n for n in names if f"sustained_{n}" not in names}
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def feature_evidence(features: dict, names, reference: dict, spread: dict, *,
                     ratio: float, z: float) -> list[dict]:
    """Health indicators of this window at ``ratio`` × baseline and ``z`` spreads above it.

    ``reference`` and ``spread`` are the baseline's medians and robust log10 standard
    deviations (:meth:`edge_agent.models.collection.BaselineCollection.reference`).
    An energy must rise ``ratio²`` times: the limits are in amplitude terms.

    >>> e = feature_evidence({"velocity_rms_mm_s": 4.1}, ["velocity_rms_mm_s"],
    ...                      {"velocity_rms_mm_s": 1.8}, {"velocity_rms_mm_s": 0.05},
    ...                      ratio=2.0, z=3.0)
    >>> e[0]["text"], round(e[0]["z"], 1)
    ('velocity RMS 4.1 mm/s, 2.3× baseline', 7.2)
    """
    out = []
    for name in names:
        value, base, sigma = features.get(name), reference.get(name), spread.get(name)
        if not (isinstance(value, float) and math.isfinite(value) and value > 0
                and base and base > 0 and sigma):
            continue
        order = 2.0 if is_power(name) else 1.0
        r = value / base
        zz = math.log10(r) / sigma
        if r >= ratio ** order and zz >= z:
            unit = feature_unit(name)
            label = feature_label(name)
            out.append({"kind": "feature", "key": name, "feature": name, "label": label,
                        "value": value, "baseline": base, "unit": unit, "ratio": r, "z": zz,
                        "ratio_limit": ratio ** order, "z_limit": z,
                        "strength": r ** (1.0 / order) / ratio,
                        "text": f"{label} {fmt(value)}{' ' + unit if unit else ''}, "
                                f"{r:.1f}× baseline"})
    return out


def zone_evidence(features: dict, alarm_zone: str) -> dict | None:
    """The ISO 20816-3 zone of this window, when it is ``alarm_zone`` or worse."""
    zone, velocity = features.get("iso_zone"), features.get("velocity_rms_mm_s")
    if not alarm_zone or zone not in ZONES or ZONES.index(zone) < ZONES.index(alarm_zone) \
            or not (isinstance(velocity, float) and math.isfinite(velocity)):
        return None
    return {"kind": "iso_zone", "key": "iso_zone", "zone": zone, "velocity_rms_mm_s": velocity,
            "zone_limit": alarm_zone,
            "strength": 1.0 + ZONES.index(zone) - ZONES.index(alarm_zone),
            "text": f"velocity RMS {fmt(velocity)} mm/s, ISO 20816 zone {zone}"}


def fault_lines(features: dict, reference: dict, min_ratio: float) -> list[dict]:
    """Bearing defect lines that rose ``min_ratio`` times or more, most distinctive first.

    A line is named only when both its envelope amplitude and its prominence
    over the local envelope floor rose: broadband impacting lifts every line's
    amplitude, and only the defect's own line stands out from the floor.
    """
    lines = []
    for fault in FAULTS:
        values = [features.get(f"env_{fault}_g"), reference.get(f"env_{fault}_g"),
                  features.get(f"env_{fault}_ratio"), reference.get(f"env_{fault}_ratio"),
                  features.get(f"{fault}_hz")]
        if not all(isinstance(v, float) and v == v for v in values) or min(values[1], values[3]) <= 0:
            continue
        value, base, prominence, base_prominence, freq = values
        ratio, rise = value / base, prominence / base_prominence
        if ratio >= min_ratio and rise >= min_ratio:
            lines.append({"fault": fault, "frequency_hz": freq, "envelope_g": value,
                          "baseline_g": base, "ratio": ratio, "prominence_ratio": rise,
                          "text": f"{fault.upper()} {freq:.0f} Hz envelope ×{ratio:.0f}"})
    return sorted(lines, key=lambda line: -line["prominence_ratio"])


def line_evidence(lines: list[dict], min_ratio: float) -> list[dict]:
    """Defect lines (from :func:`fault_lines`) as evidence entries."""
    return [{"kind": "fault_line", "key": f"line_{line['fault']}", **line,
             "ratio_limit": min_ratio,
             "strength": line["ratio"] / min_ratio}
            for line in lines]


def window_evidence(features: dict, names, reference: dict, spread: dict, policy) -> list[dict]:
    """Every piece of evidence in one window, strongest first (``policy``: an AlertPolicy)."""
    found = feature_evidence(features, names, reference, spread, ratio=policy.alarm_ratio,
                             z=policy.alarm_z)
    zone = zone_evidence(features, policy.alarm_zone)
    found += [zone] if zone else []
    found += line_evidence(fault_lines(features, reference, policy.fault_line_ratio),
                           policy.fault_line_ratio)
    return sorted(found, key=lambda e: -e["strength"])


def published(entry: dict) -> dict:
    """An evidence entry as the alert document states it (without the internal fields)."""
    out = {k: v for k, v in entry.items() if k not in ("key", "strength", "text")}
    return {**out, "text": entry["text"]}
