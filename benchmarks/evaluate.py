"""Detection quality on the real recordings, edge-agent side by side with two references.

Run from the repository root (needs ../shared/data)::

    python benchmarks/evaluate.py            # table on stdout
    python benchmarks/evaluate.py --json out.json

Datasets and criteria (see benchmarks/README.md for the targets):

- CWRU 48 kHz drive end: for each fault file, the timeline normal + fault. The
  baseline is the first 60 % of the normal recording's windows; the remaining
  normal windows must raise no alert; the fault must raise an alarm within its
  first 10 windows. Windows of 0.2 s every 0.1 s (six shaft turns, 5 Hz envelope
  resolution).
- FEMTO Bearing1_2 run to failure: no alert in the first 50 % of the run; an
  alarm sustained to the end; lead time (snapshots from the start of the final,
  sustained alarm to the end of the run) against the RMS-6σ reference's.
- IMS test 1 (aggregated feature tables, one machine per bearing): first alarm
  of each bearing and every alert before it; bearings 3 and 4 failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from edge_agent.runtime.alerts import STATES, AlertPolicy  # noqa: E402
from edge_agent.runtime.inputs import InputOptions, feature_records  # noqa: E402
from edge_agent.models.detector import DetectorConfig  # noqa: E402
from edge_agent.models.selection import select_features  # noqa: E402
from edge_agent.runtime.pipeline import Pipeline  # noqa: E402
from references import RmsSixSigma, VanillaRiver  # noqa: E402

DATA = REPO.parent / "shared" / "data"
CWRU = DATA / "cwru" / "48k_drive_end_0hp"
CWRU_FAULTS = {"inner race": "48k_Drive_End_IR007_0_109.mat",
               "ball": "48k_Drive_End_B007_0_122.mat",
               "outer race": "48k_Drive_End_OR007@6_0_135.mat"}
FEMTO = DATA / "femto" / "femto_learning_Bearing1_2.npz"
IMS_TABLE = DATA / "ims" / "aggregated" / "test1_raw.csv"
IMS_BASELINE_S = 24 * 3600.0


def collect(paths, **options):
    return list(feature_records(InputOptions(recordings=tuple(paths), **options)))


NAMES = ("edge-agent", "RMS 6σ", "River HST")


class Run:
    """One detector's pass over a timeline: per-window machine state and alerts."""

    def __init__(self, name):
        self.name = name
        self.state: dict[str, dict[int, str]] = {}  # machine -> index -> worst state
        self.alerts: list[dict] = []  # {"machine", "index", "severity", "ts"}

    def set_state(self, machine, index, state):
        per = self.state.setdefault(machine, {})
        if STATES.index(state) > STATES.index(per.get(index, "normal")):
            per[index] = state

    def alerts_between(self, machine, lo, hi):
        return [a for a in self.alerts if a["machine"] == machine and lo <= a["index"] < hi
                and a["severity"] != "normal"]

    def first(self, machine, severity, lo=0):
        return next((a["index"] for a in self.alerts if a["machine"] == machine
                     and a["severity"] == severity and a["index"] >= lo), None)

    def sustained_alarm_start(self, machine, last_index):
        """Where the alarm that lasts to ``last_index`` began, as an operator saw it.

        edge-agent announces "back to normal": its alarm stands from the last alarm
        alert with no all-clear after it (a held or missing alert counts against it).
        The references have no all-clear: their final unbroken alarm episode counts.
        """
        per = self.state.get(machine, {})
        if per.get(last_index) not in ("alarm", "warning") and self.name == NAMES[0]:
            return None
        if self.name == NAMES[0]:
            start = None
            for a in (a for a in self.alerts if a["machine"] == machine):
                if a["severity"] == "alarm" and start is None:
                    start = a["index"]
                elif a["severity"] == "normal":
                    start = None
            return start
        if per.get(last_index) != "alarm":
            return None
        i = last_index
        while per.get(i - 1) == "alarm":
            i -= 1
        return i


def run_edge_agent(records, config):
    run, pipeline = Run("edge-agent"), Pipeline(config, AlertPolicy())
    for index, rec in records:
        verdict, alert = pipeline.process(rec, index)
        if verdict["state"] in STATES:
            run.set_state(rec.machine, index, verdict["state"])
        if alert is not None:
            run.alerts.append({"machine": rec.machine, "index": index,
                               "severity": alert["severity"], "ts": alert["ts"],
                               "summary": alert["summary"]})
    return run


def run_reference(name, records, baseline_windows):
    """A reference detector per channel; a machine is in alarm while any channel is."""
    from edge_agent.frame import iso_time

    run, detectors, in_alarm = Run(name), {}, {}
    for index, rec in records:
        key = (rec.machine, rec.channel)
        if key not in detectors:
            if name == "RMS 6σ":
                detectors[key] = RmsSixSigma(baseline_windows)
            else:
                numeric = [k for k, v in rec.features.items() if isinstance(v, float)]
                detectors[key] = VanillaRiver(baseline_windows, select_features(numeric)[0])
        firing = detectors[key].update(rec.features)
        was = any(in_alarm.get((rec.machine, c)) for c in ("x", "y", "de", "fe", "horizontal",
                                                         "vertical") if c != rec.channel)
        if firing and not in_alarm.get(key) and not was:
            run.alerts.append({"machine": rec.machine, "index": index, "severity": "alarm",
                               "ts": iso_time(rec.start_s), "summary": ""})
        in_alarm[key] = firing
        if firing:
            run.set_state(rec.machine, index, "alarm")
    return run


def fmt(value, none="—"):
    return none if value is None else str(value)


def evaluate_cwru(config):
    """Per fault: alerts on the held-out normal windows and the first alarm's window
    in the fault file, for each detector (in :data:`NAMES` order)."""
    normal = collect([CWRU / "normal_0_97.mat"], window_s=0.2, hop_s=0.1)
    n_normal = 1 + max(i for i, r in normal if r.channel == "de")
    baseline = int(0.6 * n_normal)
    cfg = replace(config, baseline_windows=baseline, min_baseline_windows=min(20, baseline))
    results = {"baseline_windows": baseline, "held_out_windows": n_normal - baseline, "faults": {}}
    for fault, name in CWRU_FAULTS.items():
        records = collect([CWRU / "normal_0_97.mat", CWRU / name], window_s=0.2, hop_s=0.1)
        runs = [run_edge_agent(records, cfg), run_reference("RMS 6σ", records, baseline),
                run_reference("River HST", records, baseline)]
        first = [r.first("cwru", "alarm", n_normal) for r in runs]
        results["faults"][fault] = {
            "alerts_on_normal": [len(r.alerts_between("cwru", baseline, n_normal)) for r in runs],
            "first_alarm_window": [None if f is None else f - n_normal for f in first]}
    return results


def evaluate_femto(config):
    records = collect([FEMTO])
    last = max(i for i, _ in records)
    half = (last + 1) / 2
    runs = [run_edge_agent(records, config),
            run_reference("RMS 6σ", records, config.baseline_windows),
            run_reference("River HST", records, config.baseline_windows)]
    machine = "femto-bearing1_2"
    starts = [r.sustained_alarm_start(machine, last) for r in runs]
    return {"snapshots": last + 1,
            "alerts_first_half": [len(r.alerts_between(machine, 0, half)) for r in runs],
            "first_warning": [r.first(machine, "warning") for r in runs],
            "first_alarm": [r.first(machine, "alarm") for r in runs],
            "sustained_alarm_from": starts,
            "lead_snapshots": [None if s is None else last + 1 - s for s in starts],
            "alerts": [[a for a in r.alerts if a["machine"] == machine] for r in runs]}


def evaluate_ims(config):
    records = collect([IMS_TABLE])
    cfg = replace(config, baseline_s=IMS_BASELINE_S)
    windows_per_day = sum(1 for i, r in records if r.machine == "ims1-bearing1"
                          and r.channel == "x" and r.start_s - records[0][1].start_s < IMS_BASELINE_S)
    runs = [run_edge_agent(records, cfg),
            run_reference("RMS 6σ", records, windows_per_day),
            run_reference("River HST", records, windows_per_day)]
    results = {"rows": max(i for i, _ in records) + 1, "bearings": {}}
    for bearing in (1, 2, 3, 4):
        machine = f"ims1-bearing{bearing}"
        first = [r.first(machine, "alarm") for r in runs]
        before = [[a for a in r.alerts if a["machine"] == machine
                   and (f is None or a["index"] <= f)] for r, f in zip(runs, first)]
        results["bearings"][bearing] = {"first_alarm": first, "alerts_until_first_alarm": before}
    return results


def table(cwru, femto, ims):
    rows = []
    if cwru:
        for fault, r in cwru["faults"].items():
            rows.append((f"CWRU {fault}: alerts on the last 40 % of normal "
                         f"({cwru['held_out_windows']} windows)", "0",
                         *map(str, r["alerts_on_normal"])))
            rows.append((f"CWRU {fault}: first alarm, window of the fault file", "< 10",
                         *map(fmt, r["first_alarm_window"])))
    if femto:
        n = femto["snapshots"]
        rows.append(("FEMTO: alerts in the first 50 % of the run", "0",
                     *map(str, femto["alerts_first_half"])))
        rows.append(("FEMTO: first warning / first alarm (snapshot)", "",
                     *(f"{fmt(w)} / {fmt(a)}" for w, a in zip(femto["first_warning"],
                                                              femto["first_alarm"]))))
        rows.append((f"FEMTO: sustained alarm from snapshot (of {n})", "yes",
                     *map(fmt, femto["sustained_alarm_from"])))
        ref = femto["lead_snapshots"][1]
        rows.append(("FEMTO: lead time, snapshots before end of life",
                     "≥ 2× RMS 6σ" + (f" = {2 * ref}" if ref else ""),
                     *map(fmt, femto["lead_snapshots"])))
    details = []
    if ims:
        for bearing, r in ims["bearings"].items():
            failed = bearing in (3, 4)
            rows.append((f"IMS test 1 bearing {bearing}{' (failed)' if failed else ''}: first "
                         f"alarm (row of {ims['rows']})", "before end" if failed else "none",
                         *map(fmt, r["first_alarm"])))
            for name, alerts in zip(NAMES, r["alerts_until_first_alarm"]):
                details.append(f"{name:10s} ims1-bearing{bearing}: " + ("; ".join(
                    f"row {a['index']} {a['ts'][:16]} {a['severity']}" for a in alerts)
                    or "no alerts"))
    return rows, details


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    parser.add_argument("--only", choices=("cwru", "femto", "ims"), action="append")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        parser.exit(2, f"the shared recordings are not at {DATA}\n")
    config = DetectorConfig()
    results, timings = {}, {}
    for name, fn in (("cwru", evaluate_cwru), ("femto", evaluate_femto), ("ims", evaluate_ims)):
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        results[name] = fn(config)
        timings[name] = time.perf_counter() - t
    rows, details = table(results.get("cwru"), results.get("femto"), results.get("ims"))
    header = ("criterion", "target", "edge-agent", "RMS 6σ", "River HST")
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if details:
        print("\nIMS test 1, every alert up to each bearing's first alarm:")
        print("\n".join(details))
    print("\n" + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "rows": rows,
                                               "details": details, "results": results},
                                              indent=1, default=str))


if __name__ == "__main__":
    main()
