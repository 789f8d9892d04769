"""What operators' false-alarm labels change on IMS test 1 (issue 14).

The rig is one machine (a channel per bearing and axis, ``bearing3-x``); bearings 3
(inner race) and 4 (roller) fail at the end, bearings 1 and 2 do not. The run is replayed
twice through the full pipeline with the default configuration: once as is, once with an
operator who labels the first alert led by each bearing that did not fail ``false_alarm``
as soon as it arrives (:meth:`edge_agent.runtime.pipeline.Pipeline.feedback`, what
``cmd/feedback`` does on a gateway). It prints, per run, the alerts led by bearings 1 and 2
after that first one, and the alarms led by bearings 3 and 4 (window index, severity,
channel), which must be the same.

    python benchmarks/feedback.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataclasses import replace  # noqa: E402

from edge_agent.models.detector import DetectorConfig  # noqa: E402
from edge_agent.runtime.inputs import InputOptions, feature_records  # noqa: E402
from edge_agent.runtime.pipeline import Pipeline  # noqa: E402

HEALTHY = ("bearing1", "bearing2")
FAILED = ("bearing3", "bearing4")


def bearing(channel: str) -> str:
    return channel.split("-")[0]


def run(records, label: bool, seed: int | None = None) -> dict:
    config = DetectorConfig() if seed is None else replace(DetectorConfig(), seed=seed)
    pipeline, alerts, labelled = Pipeline(config), [], {}
    for index, rec in records:
        _, alert = pipeline.process(rec, index)
        if alert is None:
            continue
        alerts.append((index, alert))
        b = bearing(alert["channel"])
        if label and b in HEALTHY and b not in labelled and alert["severity"] != "normal":
            labelled[b] = index
            _, closing = pipeline.feedback(rec.machine, {"alert_id": alert["id"],
                                                         "label": "false_alarm",
                                                         "user": "benchmark"})
            if closing is not None:
                alerts.append((index, closing))
    return {"alerts": alerts, "labelled": labelled}


def describe(result: dict, first: dict) -> dict:
    alerts = result["alerts"]
    later = {b: [(i, a["severity"]) for i, a in alerts
                 if bearing(a["channel"]) == b and a["severity"] != "normal"
                 and b in first and i > first[b]]
             for b in HEALTHY}
    failed = [(i, a["severity"], a["channel"]) for i, a in alerts
              if bearing(a["channel"]) in FAILED and a["severity"] == "alarm"]
    return {"later": later, "failed_alarms": failed,
            "total": sum(a["severity"] != "normal" for _, a in alerts)}


def compare(records, seed: int | None) -> bool:
    plain, labelled = run(records, False, seed), run(records, True, seed)
    # "later" counts from each bearing's first alert, the one the operator labels
    first = {}
    for i, a in plain["alerts"]:
        if bearing(a["channel"]) in HEALTHY and a["severity"] != "normal":
            first.setdefault(bearing(a["channel"]), i)
    print(f"\nseed {'default (42)' if seed is None else seed}: all alerts without labels: "
          + ", ".join(f"{i} {a['severity']} {a['channel']}" for i, a in plain["alerts"]))
    print(f"  first alert led by a bearing that did not fail: "
          f"{ {b: first.get(b) for b in HEALTHY} } (window index)")
    results = [describe(plain, first), describe(labelled, first)]
    for name, d in zip(("without labels", "with labels"), results):
        print(f"  {name}: {d['total']} warning/alarm alerts in all; later alerts led by "
              + ", ".join(f"{b} {len(d['later'][b])} {d['later'][b]}" for b in HEALTHY))
        print(f"    failed bearings' alarms: {d['failed_alarms']}")
    print(f"  labelled false_alarm at windows {labelled['labelled']}; all alerts with labels: "
          + ", ".join(f"{i} {a['severity']} {a['channel']}" for i, a in labelled["alerts"]))
    same = results[0]["failed_alarms"] == results[1]["failed_alarms"]
    print(f"  failed bearings' alarms unchanged: {same}")
    return same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seeds", metavar="S,S,...", default="",
                        type=lambda s: [int(x) for x in s.split(",") if x],
                        help="also with these seeds of the learners (the default's first "
                             "alerts are on the failing bearings)")
    args = parser.parse_args(argv)
    logging.getLogger("edge_agent").setLevel(logging.ERROR)  # each label logs a warning
    path = args.data / "ims" / "aggregated" / "test1_raw.csv"
    started = time.monotonic()
    records = list(feature_records(InputOptions(recordings=(path,))))
    print(f"IMS test 1: {len(records)} channel-windows, {path}")
    same = [compare(records, seed) for seed in [None, *args.seeds]]
    print(f"\nfailed bearings' alarms unchanged in {sum(same)} of {len(same)} run(s) "
          f"({time.monotonic() - started:.0f} s)")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
