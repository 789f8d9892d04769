"""Robust aggregation of member summaries into a fleet prior.

First, with three members or more, a member that is no sibling is set aside: one
whose healthy levels are typically (the median over the level features) ``outlier_ratio``
times (×2: the alarm-grade difference that says a machine "differs from its fleet")
or more away from every other member's, in amplitude terms. A faulty sensor, a
wrong class or a malicious gateway sends such a summary; it is named in
``provenance.excluded``. Never more than a minority is set aside: when most members
disagree, nobody can tell which are right and all are kept.

Levels and scales are aggregated coordinate-wise by the median (or a trimmed
mean), the between-machine spread by the median absolute deviation of the
members' levels: with three members or more, one faulty or malicious member can
move none of them outside the range of the others. With two members no
statistic can tell which one is wrong; the prior says so (``provenance.robust``).

The autoencoder weights are averaged by FedAvg (weighted by windows) after each
member's deviation from the coordinate-wise median weights is clipped to a norm
(by default the median of the members' deviation norms): one member's weights
move the average by at most its weight share of that norm. Members' networks
share their initialisation (the detectors' common seed), which is what makes an
average of weights meaningful.

>>> import numpy as np
>>> from edge_agent.models.prior import MemberSummary
>>> def member(name, level):
...     return MemberSummary("fan", name, ("rms_g",), 100, [np.log10(level)], [0.02], [True])
>>> prior = aggregate([member("a", 0.10), member("b", 0.11), member("evil", 100.0)],
...                   class_name="fan", version=1, created_s=0.0)
>>> 0.10 <= prior.typical()["rms_g"] <= 0.11
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edge_agent.models.baseline import MAD_TO_SIGMA, log_order
from edge_agent.models.prior import FleetPrior, MemberSummary

METHODS = ("median", "trimmed_mean")
#: A member this many times (amplitude) from every other one is no sibling (see above).
OUTLIER_RATIO = 2.0


class AggregationError(ValueError):
    """Members that cannot be aggregated (none, mixed classes, no common feature)."""


def gateway_votes(members: dict[str, MemberSummary]) -> list[MemberSummary]:
    """One summary per gateway: ``members`` is ``{"<agent>/<machine>": summary}``; the
    machines of one agent (with the same features) become the coordinate-wise median of
    their levels and scales, their windows summed, as ``<agent>/*``.

    Robustness is about who can lie: one compromised gateway can invent machine names
    (its credential may publish updates for any machine of its own), and so outvote the
    honest members if every machine counted once. Counted once per gateway, it is one
    member, which the median already bounds.

    >>> import numpy as np
    >>> def m(name, level):
    ...     return MemberSummary("fan", name, ("rms_g",), 100, [level], [0.02], [True])
    >>> votes = gateway_votes({"gw-1/a": m("a", -1.0), "gw-9/x": m("x", 1.0),
    ...                        "gw-9/y": m("y", 1.0), "gw-9/z": m("z", 1.0)})
    >>> [(v.machine, v.windows, float(v.location[0])) for v in votes]
    [('a', 100, -1.0), ('gw-9/*', 300, 1.0)]
    """
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[str, MemberSummary]]] = {}
    for name, summary in sorted(members.items()):
        agent = name.split("/", 1)[0]
        groups.setdefault((agent, tuple(summary.feature_names)), []).append((name, summary))
    votes = []
    for (agent, _), group in groups.items():
        if len(group) == 1:
            votes.append(group[0][1])
            continue
        parts = [s for _, s in group]
        first = parts[0]
        votes.append(replace(first, machine=f"{agent}/*", windows=sum(s.windows for s in parts),
                             location=np.median([s.location for s in parts], axis=0),
                             scale=np.median([s.scale for s in parts], axis=0),
                             ae_weights=None))
    return votes


def robust_center(values: np.ndarray, method: str = "median", trim: float = 0.2) -> np.ndarray:
    """Coordinate-wise robust centre of the rows of ``values`` (NaN ignored).

    ``trimmed_mean`` drops ``ceil(trim * n)`` rows from each end per coordinate (at
    least one when there are three or more), so a single outlier never counts.

    >>> robust_center(np.array([[1.0], [2.0], [1000.0]]), "trimmed_mean").tolist()
    [2.0]
    """
    values = np.asarray(values, dtype=np.float64)
    if method == "median":
        return np.nanmedian(values, axis=0)
    if method != "trimmed_mean":
        raise ValueError(f"method must be one of {METHODS}")
    out = np.empty(values.shape[1])
    for j in range(values.shape[1]):
        col = np.sort(values[np.isfinite(values[:, j]), j])
        n = len(col)
        cut = max(math.ceil(trim * n), 1 if n >= 3 else 0)
        cut = min(cut, (n - 1) // 2)
        out[j] = col[cut:n - cut].mean() if n else np.nan
    return out


def clipped_fedavg(weights: Sequence[Sequence[np.ndarray]], windows: Sequence[int], *,
                   clip: float | None = None) -> list[np.ndarray]:
    """FedAvg of members' weight lists, weighted by ``windows``, each member's deviation
    from the coordinate-wise median clipped to norm ``clip`` (default: the median norm).

    >>> w = [[np.array([1.0, 1.0])], [np.array([1.2, 0.8])], [np.array([1e6, -1e6])]]
    >>> bool(np.abs(clipped_fedavg(w, [1, 1, 1])[0] - 1.0).max() < 0.5)
    True
    """
    flat = np.array([np.concatenate([np.ravel(a) for a in ws]) for ws in weights])
    shapes = [np.shape(a) for a in weights[0]]
    centre = np.median(flat, axis=0)
    deviation = flat - centre
    norms = np.linalg.norm(deviation, axis=1)
    bound = float(np.median(norms)) if clip is None else float(clip)
    factor = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    share = np.asarray(windows, dtype=np.float64)
    share = share / share.sum()
    mean = centre + (share[:, None] * deviation * factor[:, None]).sum(axis=0)
    out, at = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(mean[at:at + size].reshape(shape))
        at += size
    return out


def outliers(L: np.ndarray, log: np.ndarray, order: np.ndarray,
             ratio: float = OUTLIER_RATIO) -> list[int]:
    """Rows of member levels ``L`` (members × features) that are no siblings (see the module
    docstring): the median over log features of the distance, in log10 amplitude, to the
    nearest other member is ``log10(ratio)`` or more; at most a minority of members.

    >>> L = np.log10([[0.10, 1.0], [0.12, 1.1], [1.0, 10.0]])
    >>> outliers(L, np.array([True, True]), np.ones(2))
    [2]
    """
    n = len(L)
    if n < 3 or not log.any():
        return []
    A = L[:, log] / order[log]
    gap = np.full(n, np.inf)
    for i in range(n):
        d = np.abs(np.delete(A, i, axis=0) - A[i])  # (others, features)
        gap[i] = np.nanmedian(np.nanmin(d, axis=0))
    far = [i for i in range(n) if gap[i] >= np.log10(ratio)]
    return far if len(far) <= (n - 1) // 2 else []


def aggregate(summaries: Sequence[MemberSummary], *, class_name: str, version: int,
              created_s: float, method: str = "median", trim: float = 0.2,
              weight_clip: float | None = None,
              outlier_ratio: float | None = OUTLIER_RATIO) -> FleetPrior:
    """The fleet prior of ``summaries`` (members of ``class_name``).

    Features are those every member has with the same units (log or not). A
    channel's autoencoder averages the members that shared one of the same shape
    (the features of every member must then be the same: the network's inputs are).
    """
    if method not in METHODS:
        raise AggregationError(f"method must be one of {METHODS}, not {method!r}")
    summaries = list(summaries)
    if not summaries:
        raise AggregationError("no member summary to aggregate")
    wrong = sorted({s.class_name for s in summaries} - {class_name})
    if wrong:
        raise AggregationError(f"summaries of other classes {wrong} given for {class_name!r}")
    machines = [s.machine for s in summaries]
    if len(set(machines)) != len(machines):
        raise AggregationError("a machine is given twice: each member counts once")
    first = summaries[0]
    names = [n for n in first.feature_names if all(n in s.feature_names for s in summaries)]
    rows = {n: [s.feature_names.index(n) for s in summaries] for n in names}
    names = [n for n in names if len({bool(s.log[i]) for s, i in zip(summaries, rows[n])}) == 1]
    if not names:
        raise AggregationError("the members have no feature in common (with the same units)")
    L = np.array([[s.location[i] for s, i in zip(summaries, rows[n])] for n in names]).T
    S = np.array([[s.scale[i] for s, i in zip(summaries, rows[n])] for n in names]).T
    log = np.array([bool(first.log[rows[n][0]]) for n in names])
    order = log_order(names)
    excluded = [] if outlier_ratio is None else outliers(L, log, order, outlier_ratio)
    if excluded:
        keep = [i for i in range(len(summaries)) if i not in excluded]
        L, S = L[keep], S[keep]
        out = [summaries[i].machine for i in excluded]
        summaries = [summaries[i] for i in keep]
    else:
        out = []
    location = robust_center(L, method, trim)
    scale = np.exp(robust_center(np.log(S), method, trim))  # scales compare by ratio
    spread = np.nanmedian(np.abs(L - np.nanmedian(L, axis=0)), axis=0) * MAD_TO_SIGMA
    ae = _average_weights(summaries, names, weight_clip)
    provenance = {"method": method, "robust": len(summaries) + len(out) >= 3,
                  "machines": sorted(machines)[:64], "excluded": sorted(out)[:64],
                  "autoencoder_members": 0 if ae is None else ae[1]}
    return FleetPrior(class_name, int(version), float(created_s), tuple(names), len(summaries),
                      location, scale, spread, log, None if ae is None else ae[0],
                      int(sum(s.windows for s in summaries)), provenance)


def _average_weights(summaries, names, clip):
    """``({channel: averaged weights}, members used)``: per channel, the members whose
    weights have the shapes of the first one's (the same features, the same network)."""
    out, used = {}, set()
    channels = sorted({c for s in summaries for c in (s.ae_weights or {})})
    def inputs(s, channel):  # the network's inputs, in order: weights are positional
        return [n for n in s.feature_names if not channel or n.startswith(channel + "/")]

    for channel in channels:
        wanted = [n for n in names if not channel or n.startswith(channel + "/")]
        usable = [s for s in summaries if channel in (s.ae_weights or {})
                  and inputs(s, channel) == wanted
                  and np.shape(s.ae_weights[channel][0])[0] == len(wanted)]
        if not usable:
            continue
        shapes = [np.shape(w) for w in usable[0].ae_weights[channel]]
        usable = [s for s in usable if [np.shape(w) for w in s.ae_weights[channel]] == shapes]
        out[channel] = clipped_fedavg([s.ae_weights[channel] for s in usable],
                                      [s.windows for s in usable], clip=clip)
        used |= {s.machine for s in usable}
    return (out, len(used)) if out else None
