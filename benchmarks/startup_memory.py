"""Peak memory of ``edge-agent replay`` for 1 and 64 machines, cold start, learned state size.

    python benchmarks/startup_memory.py [--repeat 7] [--snapshots 200]

Everything is measured on the real command line (``edge-agent`` of this
Python's environment) in child processes:

- **Peak RSS**: ``ru_maxrss`` of the finished child, from ``os.wait4`` on its
  pid (the child's own peak, not a maximum over earlier children). The 64
  machines are 64 FEMTO-format ``.npz`` recordings written to a temporary
  directory, each holding 200 consecutive real Bearing1_2 snapshots (both
  accelerometers, original times of day) from the healthy first half, starting
  5 snapshots further for each machine; their names (``femto-m00`` ...) make
  each file its own machine, and ``--rpm 1800`` (condition 1) restores the
  shaft speed that the original file name carried. The replay command reads the
  files one after the other, so the 64 machines are learned in turn; all 64
  stay in memory to the end (every machine's detectors and alerter), which is
  what the peak measures. The 1-machine figure replays the first of those files.
  References from the same run: ``edge-agent --version`` and a bare
  ``python -c "import numpy, scipy.fft"``.
- **Cold start to first verdict**: wall time from just before the child is
  started to the first line with ``"kind": "verdict"`` on its standard output,
  for ``edge-agent replay <FEMTO Bearing1_2> --jsonl - --quiet`` (the child is
  then terminated). The replay featurizes windows in batches of 256, so the
  first verdict comes after reading the recording and featurizing its first
  128 snapshots (two channels). Also ``edge-agent --help`` and ``--version``
  run to completion, and ``python -c pass`` as the floor. Median (min-max) of
  ``--repeat`` runs.
- **Learned state per machine**: ``benchmarks/state_size.py``'s child (one
  machine, FEMTO horizontal features, 120-window baseline then monitoring): the
  pickled detectors and alerter, as a checkpoint stores them, after 200 and 400
  windows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FEMTO = REPO.parent / "shared" / "data" / "femto" / "femto_learning_Bearing1_2.npz"
BIN = Path(sys.executable).parent
EDGE_AGENT = [str(BIN / "edge-agent")] if (BIN / "edge-agent").exists() else [sys.executable, "-m",
                                                                              "edge_agent"]
MACHINES = (1, 64)
HEALTHY_SNAPSHOTS = 435  # the first half of Bearing1_2's 871


def log(msg: str) -> None:
    print(f"[startup_memory] {msg}", file=sys.stderr, flush=True)


# -- recordings ------------------------------------------------------------------------------------
def write_machines(directory: Path, n: int, snapshots: int) -> list[Path]:
    """``n`` FEMTO-format recordings of real Bearing1_2 snapshots, one machine each."""
    with np.load(FEMTO) as z:
        acc, hms = z["acc_milli_g"], z["acc_start_h_m_s_us"]
        names, channels, fs = z["acc_filenames"], z["channels"], z["fs_hz"]
    paths = []
    for m in range(n):
        start = (5 * m) % (HEALTHY_SNAPSHOTS - snapshots)
        part = slice(start, start + snapshots)
        path = directory / f"femto-m{m:02d}.npz"
        np.savez(path, acc_milli_g=acc[part], acc_start_h_m_s_us=hms[part],
                 acc_filenames=names[part], channels=channels, fs_hz=fs)
        paths.append(path)
    return paths


# -- child processes -------------------------------------------------------------------------------
def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of ``cmd`` run to completion (output discarded)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]}… exited {proc.returncode}: {stderr.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, wall  # Linux: kB


def wall_time(cmd: list[str]) -> float:
    """Seconds from start to exit of ``cmd`` (output discarded)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def time_to_first_verdict(cmd: list[str]) -> float:
    """Seconds from start of ``cmd`` to its first verdict line; the child is then terminated."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if '"kind": "verdict"' in line or '"kind":"verdict"' in line:
                return time.perf_counter() - t0
        raise RuntimeError(f"no verdict from {cmd}")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def repeated(fn, cmd, repeat: int) -> dict:
    times = [fn(cmd) for _ in range(repeat)]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": len(times)}


def state_size(windows: int = 400) -> dict:
    """``benchmarks/state_size.py``'s child for one machine: state bytes after 200 and N windows."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "state_size.py"), "--child",
                          "1", "--windows", str(windows)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


# -- measurements ----------------------------------------------------------------------------------
def measure_memory(snapshots: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        paths = write_machines(Path(tmp), max(MACHINES), snapshots)
        log(f"wrote {len(paths)} recordings of {snapshots} snapshots in {tmp}")
        out = {"version": peak_rss(EDGE_AGENT + ["--version"]),
               "numpy": peak_rss([sys.executable, "-c", "import numpy, scipy.fft"])}
        for n in MACHINES:
            log(f"replaying {n} machine(s)")
            out[n] = peak_rss(EDGE_AGENT + ["replay", *map(str, paths[:n]), "--rpm", "1800",
                                            "--quiet"])
            log(f"{n} machine(s): peak RSS {out[n][0]:.0f} MB in {out[n][1]:.1f} s")
    return out


def measure_startup(repeat: int) -> dict:
    cmds = {
        "python -c pass": (wall_time, [sys.executable, "-c", "pass"]),
        "edge-agent --version": (wall_time, EDGE_AGENT + ["--version"]),
        "edge-agent --help": (wall_time, EDGE_AGENT + ["--help"]),
        "edge-agent replay … --jsonl -: first verdict": (
            time_to_first_verdict, EDGE_AGENT + ["replay", str(FEMTO), "--jsonl", "-", "--quiet"]),
    }
    out = {}
    for name, (fn, cmd) in cmds.items():
        log(f"timing {name} ({repeat} runs)")
        out[name] = repeated(fn, cmd, repeat)
    return out


# -- report ----------------------------------------------------------------------------------------
def report(memory: dict, startup: dict, state: dict, snapshots: int) -> None:
    print(f"Peak RSS of edge-agent replay (FEMTO Bearing1_2 snapshots, {snapshots} per machine, "
          f"2 channels, default baseline 120 windows), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  {'run':<48} {'peak RSS':>9} {'wall':>7}")
    rows = [("python -c 'import numpy, scipy.fft'", memory["numpy"]),
            ("edge-agent --version", memory["version"])]
    rows += [(f"edge-agent replay, {n} machine{'s' if n > 1 else ''} ({2 * n} channels)", memory[n])
             for n in MACHINES]
    for name, (rss, wall) in rows:
        print(f"  {name:<48} {rss:>6.0f} MB {wall:>5.1f} s")
    one, many = memory[MACHINES[0]][0], memory[MACHINES[-1]][0]
    per = (many - one) / (MACHINES[-1] - MACHINES[0])
    print(f"  each further machine: {per:.2f} MB; 64 machines: {many:.0f} MB "
          f"(target ≤ 200 MB: {'met' if many <= 200 else 'NOT met'})\n")
    print(f"Start-up, median (min-max) of {next(iter(startup.values()))['runs']} runs")
    for name, r in startup.items():
        print(f"  {name:<46} {r['median_s']:>6.3f} s  ({r['min_s']:.3f}-{r['max_s']:.3f})")
    first = startup["edge-agent replay … --jsonl -: first verdict"]["median_s"]
    print(f"  cold start to first verdict: {first:.2f} s (target ≤ 2 s: "
          f"{'met' if first <= 2 else 'NOT met'})\n")
    s = {int(k): v for k, v in state["state_bytes"].items()}
    print("Learned state per machine (benchmarks/state_size.py, one channel, pickled as in a "
          "checkpoint): " + ", ".join(f"{v / 1024:.0f} kB after {k} windows"
                                      for k, v in sorted(s.items())))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per start-up timing")
    parser.add_argument("--snapshots", type=int, default=200, help="snapshots per machine")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the raw results")
    args = parser.parse_args(argv)
    log(f"edge-agent command: {' '.join(EDGE_AGENT)}")
    startup = measure_startup(args.repeat)
    memory = measure_memory(args.snapshots)
    log("learned state size (state_size.py --child 1)")
    state = state_size()
    report(memory, startup, state, args.snapshots)
    if args.json:
        args.json.write_text(json.dumps({"memory": {str(k): v for k, v in memory.items()},
                                         "startup": startup, "state": state}, indent=1))


if __name__ == "__main__":
    main()
