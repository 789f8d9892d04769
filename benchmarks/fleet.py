"""Fleet priors on real recordings: FEMTO condition 1, leave one bearing out.

Run from the repository root (needs ../shared/data)::

    python benchmarks/fleet.py                 # every figure of benchmarks/README.md's fleet part
    python benchmarks/fleet.py --json out.json

Bearing1_1, 1_2 and 1_3 run at the same speed and load: siblings of one class. Each in
turn is the *new* machine, and the prior is aggregated (``edge-agent fleet prior``'s
code, median) from the other two, each member's baseline its first 120 windows. Every
run uses edge-agent's default configuration; nothing here is tuned to a bearing.

(a) windows until the new machine is monitored: with the prior, against 120 without;
(b) its run from the start, with the prior: no alert the detection criteria of
    ``evaluate.py`` call premature (an unbacked alert before the level rule's onset
    minus 40 % of the run); backed alerts before that limit are listed too;
(c) installed damaged: its recording from the level rule's onset on (already degraded)
    is the new machine; with the prior an alert within 10 windows; without it the
    windows before any alert (expected: never: its first 120 damaged windows become
    its normal);
(d) one poisoned member (every level ×10, as a faulty or malicious gateway would send)
    added to the two honest ones: (a)-(c) unchanged. Also shown, not judged: a prior
    from one honest and one poisoned member, where no statistic can tell which is wrong;
(e) the default differential-privacy noise (``privacy.DEFAULT_NOISE_MULTIPLIER``,
    ``DEFAULT_CLIP``), as a new fleet forms: each member's bootstrap release makes a first
    prior, then each shares exactly against it (``privacy.release``), and that second
    prior is judged; over several noise draws: how (a)-(c) change, and the ε each member
    spent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import evaluate  # noqa: E402
from edge_agent.fleet.aggregate import aggregate  # noqa: E402
from edge_agent.fleet.offline import (fitted_pipeline, member_detectors,  # noqa: E402
                                      member_from_pipeline)
from edge_agent.fleet import privacy  # noqa: E402
from edge_agent.models.baseline import is_power  # noqa: E402
from edge_agent.models.detector import DetectorConfig  # noqa: E402
from edge_agent.runtime.pipeline import Pipeline  # noqa: E402

CLASS = "femto-condition-1"
#: Criterion (c): an alert within this many windows of installing a damaged machine.
DAMAGED_WITHIN = 10
#: Criterion (a): monitored within this many windows.
MONITORED_WITHIN = 10
POISON = 10.0


def poisoned(member, factor: float = POISON):
    """``member`` with every level ``factor`` times (amplitude terms; powers factor²)."""
    shift = np.array([np.log10(factor) * (2.0 if is_power(n.split("/")[-1]) else 1.0)
                      for n in member.feature_names])
    location = np.where(member.log, member.location + shift, member.location * factor)
    return replace(member, machine=member.machine + "-poisoned", location=location)


def run(records, prior, *, stop_after_alert: bool = False, limit: int | None = None) -> dict:
    """The new machine's run: first monitored window, alerts (with their window index)."""
    pipeline = Pipeline(DetectorConfig())
    pipeline.default_prior = prior
    monitored, alerts, basis = None, [], {}
    for index, record in records:
        if limit is not None and index >= limit:
            break
        verdict, alert = pipeline.process(record, index)
        if monitored is None and verdict.get("phase") == "monitoring":
            monitored = index
        if "basis" in verdict:
            basis[verdict["basis"]] = basis.get(verdict["basis"], 0) + 1
        if alert is not None:
            alerts.append({"index": index, **alert})
            if stop_after_alert and alert["severity"] != "normal":
                break
    return {"monitored": monitored, "alerts": alerts, "basis": basis,
            "held": sorted(f"{m}/{c}" for m, c in pipeline.held_baselines)}


def first_alert(alerts) -> int | None:
    return next((a["index"] for a in alerts if a["severity"] != "normal"), None)


def late(records, onset: int):
    """The recording from ``onset`` on, as a machine installed then (windows renumbered)."""
    return [(i - onset, r) for i, r in records if i >= onset]


class Study:
    """The recordings, level-rule onsets and members' summaries, read once."""

    def __init__(self, names=None):
        self.records = {n: evaluate.collect([p]) for n, p in evaluate.FEMTO.items()
                        if names is None or n in names}
        self.onset, self.windows = {}, {}
        for name, recs in self.records.items():
            n = 1 + max(i for i, _ in recs)
            channels = {r.channel for _, r in recs}
            level = evaluate.episodes(evaluate.reference_run("level", recs,
                                                             {c: 120 for c in channels}))
            self.onset[name], self.windows[name] = level[-1][0], n
        config = DetectorConfig()
        self.pipelines = {name: fitted_pipeline(recs, config=config)
                          for name, recs in self.records.items()}
        self.members = {name: member_from_pipeline(pipeline, class_name=CLASS)
                        for name, pipeline in self.pipelines.items()}

    def shared(self, name: str, prior, rng):
        """What member ``name``'s agent would share, privatised with the defaults
        (``prior``: exact against it; ``None``: the bootstrap release)."""
        summary, how, _ = privacy.release(
            member_detectors(self.pipelines[name]), prior, class_name=CLASS,
            machine=self.members[name].machine, rng=rng,
            noise_multiplier=privacy.DEFAULT_NOISE_MULTIPLIER, clip=privacy.DEFAULT_CLIP,
            bootstrap=prior is None)
        assert how["exact"] == (prior is not None)
        return summary

    def prior(self, new: str, *, poison: str | None = None, noise_seed: int | None = None,
              honest=None, commissioned: bool = False):
        names = [n for n in self.members if n != new]
        if honest is not None:
            names = names[:honest]
        members = [self.members[n] for n in names]
        if noise_seed is not None:
            # as a new fleet forms: the bootstrap releases make version 1, then every
            # member shares exactly against it (the figures judge this second prior)
            # (``commissioned``: against a commissioning prior of the same members instead,
            # made without noise from recordings the plant chose to use)
            rng = np.random.default_rng(noise_seed)
            first = aggregate(members if commissioned else
                              [self.shared(n, None, rng) for n in names], class_name=CLASS,
                              version=1, created_s=0.0)
            members = [self.shared(n, first, rng) for n in names]
        if poison == "added":
            members = members + [poisoned(members[0])]
        elif poison == "replaced":
            members = members[:1] + [poisoned(members[1])]
        return aggregate(members, class_name=CLASS, version=1, created_s=0.0)


def judge_new(study: Study, new: str, prior, *, full: bool = True, without: bool = True) -> dict:
    """(a), (b) and (c) for the machine ``new`` with ``prior`` (``full``: also the whole run
    for (b); ``without``: also the damaged machine without a prior)."""
    recs, onset = study.records[new], study.onset[new]
    out = {}
    start = run(recs, prior, limit=MONITORED_WITHIN + 2) if not full else None
    if full:
        whole = run(recs, prior)
        start = whole
        judged = evaluate.judge(whole["alerts"], study.windows[new], onset)
        limit = judged["b_limit"]
        out["b"] = judged["b"]
        out["unbacked_before"] = judged["unbacked_before"]
        out["backed_before"] = [(a["index"], a["severity"]) for a in whole["alerts"]
                                if a["severity"] != "normal" and evaluate.backed(a)
                                and a["index"] < limit]
        out["b_limit"] = limit
        out["first_alert"] = first_alert(whole["alerts"])
        out["basis"] = whole["basis"]
        out["held"] = whole["held"]
        out["c_full"] = judged["c"]
    out["a"] = start["monitored"]
    damaged = late(recs, onset)
    with_prior = run(damaged, prior, stop_after_alert=True)
    out["c"] = first_alert(with_prior["alerts"])
    out["c_summary"] = next((a["summary"] for a in with_prior["alerts"]), None)
    if without:
        out["c_without"] = first_alert(run(damaged, None)["alerts"])
        out["c_without_of"] = len({i for i, _ in damaged})
    return out


def passes(r: dict) -> dict:
    return {"a": r["a"] is not None and r["a"] < MONITORED_WITHIN,
            "b": r.get("b"),
            "c": r["c"] is not None and r["c"] < DAMAGED_WITHIN}


def study_all(seeds=(0, 1, 2), quick: bool = False) -> dict:
    study = Study()
    results = {"onsets": study.onset, "windows": study.windows, "runs": {}}
    for new in study.records:
        row = {"plain": judge_new(study, new, study.prior(new), full=not quick)}
        row["poison_added"] = judge_new(study, new, study.prior(new, poison="added"),
                                        full=not quick, without=False)
        if not quick:
            row["poison_replaced"] = judge_new(study, new, study.prior(new, poison="replaced"),
                                               full=True, without=False)
            row["dp_commissioned"] = [judge_new(
                study, new, study.prior(new, noise_seed=s, commissioned=True), full=True,
                without=False) for s in seeds]
            row["dp"] = [judge_new(study, new, study.prior(new, noise_seed=s), full=True,
                                   without=False) for s in seeds]
        results["runs"][new] = row
    acc = privacy.PrivacyAccountant(budget_epsilon=1e9, delta=privacy.DEFAULT_DELTA)
    # each member shared twice (bootstrap, then exact), two mechanisms per channel each
    channels = len(member_detectors(study.pipelines[next(iter(study.pipelines))]))
    acc.spend(privacy.DEFAULT_NOISE_MULTIPLIER, 2 * privacy.MECHANISMS_PER_RELEASE * channels)
    results["epsilon_two_releases"] = acc.epsilon()
    results["channels"] = channels
    return results


def _f(v, none="—"):
    return none if v is None else str(v)


def report(results: dict) -> None:
    print("Leave one out on FEMTO condition 1 (prior from the other two; window indices of the "
          "new machine). Level-rule onsets: "
          + ", ".join(f"{k.split()[-1]} {v}" for k, v in results["onsets"].items()))
    header = ("new machine", "(a) monitored from", "(b) premature", "backed alerts before limit",
              "(c) damaged: alert at", "without prior", "judged prior/own")
    rows = [header]
    for new, row in results["runs"].items():
        r = row["plain"]
        rows.append((new, f"{_f(r['a'])} (vs 120)",
                     "none" if r.get("b") else f"FAIL {r.get('unbacked_before')}",
                     ", ".join(f"{i} {s}" for i, s in r.get("backed_before", [])) or "none",
                     _f(r["c"]), f"{_f(r['c_without'], 'never')} of {r['c_without_of']}",
                     f"{r['basis'].get('prior', 0)}/{r['basis'].get('own', 0)}"))
    evaluate.print_table(rows)
    for new, row in results["runs"].items():
        print(f"  {new}: damaged install, first alert: {row['plain']['c_summary']}")
    print("\n(d) one poisoned member (levels ×10)")
    rows = [("new machine", "members", "(a)", "(b)", "(c)", "(a)-(c) as without poison")]
    for new, row in results["runs"].items():
        for key, label in (("poison_added", "2 honest + 1 poisoned"),
                           ("poison_replaced", "1 honest + 1 poisoned (not judged)")):
            if key not in row:
                continue
            r, p = row[key], passes(row[key])
            same = all(r[k] == row["plain"][k] for k in ("a", "c")) and \
                r.get("b") == row["plain"].get("b")
            rows.append((new, label, _f(r["a"]), _f(r.get("b")), _f(r["c"]),
                         "yes" if same else ("no" if key == "poison_added" else "-")
                         + ("" if all(v is not False for v in p.values()) else " (fails)")))
    evaluate.print_table(rows)
    if any("dp" in row for row in results["runs"].values()):
        print(f"\n(e) default DP noise (noise multiplier {privacy.DEFAULT_NOISE_MULTIPLIER}, clip "
              f"{privacy.DEFAULT_CLIP} units per feature): bootstrap releases make prior v1, "
              f"exact releases against it v2, judged; ε spent by a {results['channels']}-channel "
              f"member = {results['epsilon_two_releases']:.2f} at δ = "
              f"{privacy.DEFAULT_DELTA:g}; per noise draw: (a) / (b) / (c)")
        for key, how in (("dp", "a new fleet (bootstrap v1, exact v2)"),
                         ("dp_commissioned", "exact against a commissioning prior")):
            print(f"  {how}:")
            for new, row in results["runs"].items():
                cells = [f"{_f(r['a'])}/{'pass' if r['b'] else 'FAIL'}/{_f(r['c'])}"
                         + ("" if passes(r)["c"] else " (c fails)") for r in row[key]]
                print(f"    {new}: " + "  ".join(cells) + "   (without noise "
                      f"{_f(row['plain']['a'])}/{'pass' if row['plain']['b'] else 'FAIL'}/"
                      f"{_f(row['plain']['c'])})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if not evaluate.DATA.is_dir():
        parser.exit(2, f"the shared recordings are not at {evaluate.DATA}\n")
    t = time.perf_counter()
    results = study_all()
    report(results)
    print(f"\n{time.perf_counter() - t:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
