"""Learned state per machine and process memory, for 1 and for 64 machines, in one run.

    python benchmarks/state_size.py [--windows 400]

Each machine gets one channel of real FEMTO Bearing1_2 features (its horizontal
snapshots, the same sequence under a different machine name) and goes through
the baseline (120 windows) and then monitoring. Each count runs in a fresh
process so its resident memory is its own. Reported: the checkpoint size of one
machine (pickled, as the agent writes it) after 200 windows and after the last
one (bounded: it must not grow with time), and the process's resident set size.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEMTO = REPO.parent / "shared" / "data" / "femto" / "femto_learning_Bearing1_2.npz"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(n_machines: int, n_windows: int) -> dict:
    sys.path.insert(0, str(REPO))
    import warnings

    warnings.filterwarnings("ignore")
    from edge_agent.runtime.inputs import InputOptions, feature_records
    from edge_agent.runtime.pipeline import Pipeline

    records = [r for _, r in feature_records(InputOptions(
        recordings=(FEMTO,), channels=frozenset({"horizontal"})))][:n_windows]
    start_rss = rss_mb()
    pipeline = Pipeline()
    sizes, t0 = {}, time.perf_counter()
    for k, rec in enumerate(records):
        for m in range(n_machines):
            pipeline.process(type(rec)(f"machine-{m}", rec.channel, rec.start_s, rec.features,
                                       rec.rpm, rec.source), k)
        if k + 1 in (200, len(records)):
            sizes[k + 1] = len(pickle.dumps({"detectors": pipeline.detectors[("machine-0",
                                                                               "horizontal")],
                                             "alerter": pipeline.alerters["machine-0"]}))
    return {"machines": n_machines, "windows": len(records), "rss_start_mb": start_rss,
            "rss_end_mb": rss_mb(), "state_bytes": sizes,
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=400)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.windows)))
        return
    results = []
    for n in (1, 64):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--windows",
                              str(args.windows)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout))
    print(f"{'machines':>8}  {'state/machine @200':>18}  {'@' + str(args.windows):>8}  "
          f"{'RSS start':>9}  {'RSS end':>8}  {'RSS/machine':>11}  {'time':>7}")
    for r in results:
        s = {int(k): v for k, v in r["state_bytes"].items()}
        per = (r["rss_end_mb"] - r["rss_start_mb"]) / r["machines"]
        print(f"{r['machines']:>8}  {s[200] / 1024:>15.0f} kB  {s[r['windows']] / 1024:>5.0f} kB  "
              f"{r['rss_start_mb']:>6.0f} MB  {r['rss_end_mb']:>5.0f} MB  {per:>8.2f} MB  "
              f"{r['seconds']:>5.1f} s")
    one, many = results
    print(f"\nRSS growth for 64 machines / for 1: "
          f"{(many['rss_end_mb'] - many['rss_start_mb']) / max(one['rss_end_mb'] - one['rss_start_mb'], 1e-9):.1f}×; "
          f"state per machine after {args.windows} vs 200 windows: "
          f"{int(many['state_bytes'][str(args.windows)]) / int(many['state_bytes']['200']):.2f}×")


if __name__ == "__main__":
    main()
