"""The ``edge-agent`` command line.

Each sub-command imports what it needs when it runs, so ``edge-agent --help``
and start-up stay fast on a small gateway.
"""

from __future__ import annotations

import argparse
import sys

from edge_agent import __version__
from edge_agent.errors import UsageError


def _two(text: str, sep: str, cast, form: str):
    """``text`` as two values of ``cast`` joined by ``sep``, or an error showing ``form``."""
    try:
        first, second = (cast(v) for v in text.split(sep))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}") from None
    return first, second


def _band(text: str) -> tuple[float, float]:
    lo, hi = _two(text, ",", float, "LO,HI in Hz")
    if not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"need 0 <= LO < HI, got {text!r}")
    return lo, hi


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _ranged(table: str, key: str, cast=float):
    """An argparse type: ``cast`` the text and check it against the configuration key's range
    (:mod:`edge_agent.runtime.ranges`), so the option and the key accept the same values."""
    def convert(text: str):
        from edge_agent.runtime.ranges import RANGES

        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if cast is int else 'a number'}, got {text!r}") from None
        rng = RANGES[table][key]
        if not rng.contains(float(value)):
            raise argparse.ArgumentTypeError(f"must be {rng.text()}, got {text!r}")
        return value
    return convert


def _worker(text: str) -> tuple[int, int]:
    index, count = _two(text, "/", int, "I/N")
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text!r}")
    return index, count


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("recordings", nargs="+", metavar="RECORDING",
                   help="recording files or directories, in time order (CWRU .mat, IMS "
                        "snapshots, FEMTO .npz, .npy/.npz/.wav/.csv waveforms, "
                        "feature-stream .csv)")
    p.add_argument("--channel", action="append", metavar="NAME",
                   help="only these channels (repeat, or comma-separate)")
    p.add_argument("--machine", metavar="NAME",
                   help="machine name for single-machine recordings (several files then "
                        "form one machine's timeline); a prefix for multi-machine ones")
    p.add_argument("--fs", type=_positive, metavar="HZ",
                   help="sample rate for waveforms that do not carry one (.npy, some .csv)")
    p.add_argument("--scale", type=_positive, default=1.0, metavar="G_PER_UNIT",
                   help="g per unit of generic waveforms (default 1)")
    p.add_argument("--window-s", type=_ranged("MachineConfig", "window_s"), default=1.0,
                   metavar="S",
                   help="analysis window (default 1 s; a snapshot shorter than two "
                        "windows is analysed whole)")
    p.add_argument("--hop-s", type=_ranged("MachineConfig", "hop_s"), metavar="S",
                   help="step between windows (default: the window)")
    p.add_argument("--rpm", type=_positive, help="shaft speed when the recording has none")
    p.add_argument("--bearing", metavar="SPEC",
                   help="bearing for defect frequencies: a name (6205-2RS, ZA-2115, "
                        "pronostia), 'bpfo=…,bpfi=…,bsf=…,ftf=…' orders or "
                        "'n=…,d=…,D=…[,angle=…]' geometry")
    p.add_argument("--iso-group", type=int, choices=(1, 2), default=2,
                   help="ISO 20816-3 machine group (default 2: 15-300 kW)")
    p.add_argument("--iso-foundation", choices=("rigid", "flexible"), default="rigid")
    p.add_argument("--envelope-band", type=_band, metavar="LO,HI",
                   help="band-pass before the envelope, Hz (default 1 kHz to 0.45 fs)")
    p.add_argument("--velocity-band", type=_band, default=(10.0, 1000.0), metavar="LO,HI",
                   help="ISO velocity band, Hz (default 10,1000; 2,1000 below 600 rpm)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Predictive maintenance on the plant gateway: vibration features, "
                    "per-machine online learning, alerts over MQTT.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("features", help="print the features of each window as JSON lines",
                       description="Read recordings and print one JSON object per window "
                                   "and channel: machine, channel, index, ts, source, "
                                   "features.")
    _add_input_options(p)
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser("replay", help="run the full pipeline over recordings",
                       description="Replay recordings through features, learning and alert "
                                   "logic. Files given together form one timeline per machine. "
                                   "With --jsonl, writes one JSON object per window (kind "
                                   "'verdict') and per alert (kind 'alert'); otherwise prints "
                                   "the alerts and a summary.")
    _add_input_options(p)
    baseline = p.add_mutually_exclusive_group()
    baseline.add_argument("--baseline-windows", type=_ranged("DetectorConfig", "baseline_windows",
                                                             int), metavar="N",
                          help="healthy windows per channel (and speed regime) to learn the "
                               "baseline from, whatever the cadence (default: 120 windows, and "
                               "24 h of running when they take longer than 1 h)")
    baseline.add_argument("--baseline-s", type=_positive, metavar="S",
                          help="healthy period to learn the baseline from, seconds of the "
                               "recording's clock")
    p.add_argument("--jsonl", metavar="PATH", help="write verdicts and alerts as JSON lines "
                                                   "to PATH ('-' for standard output)")
    p.add_argument("--quiet", action="store_true", help="no progress on standard error")
    p.add_argument("--prior", metavar="PRIOR.json",
                   help="a fleet prior (edge-agent fleet prior): channels are watched against "
                        "it from their first window while their own baseline is collected")
    p.add_argument("--trust-key", metavar="FILE",
                   help="the fleet public key (fleet.pub) the prior must be signed with")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="the machines' class: the prior must be for it (default: the prior's)")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("demo", help="the whole agent on sample recordings, with a broker and an "
                                    "operator (no set-up needed)",
                       description="Start a throwaway MQTT broker on loopback, run the agent "
                                   "over the sample recordings and print the alerts an operator "
                                   "subscriber receives, then a summary.")
    p.add_argument("--speed", type=float, default=0.0, metavar="X",
                   help="replay pace: 0 as fast as possible (default), 1 real time, 600 ten "
                        "minutes a second")
    p.add_argument("--state-dir", metavar="DIR", help="keep the agent's state and outbox here "
                                                      "(default: a temporary directory)")
    p.add_argument("--data", metavar="DIR", help="sample recordings (default: sample_data/ of "
                                                 "the checkout)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="run the agent from a TOML configuration",
                       description="The long-running agent: subscribes to sensor frames on the "
                                   "plant broker, learns each machine and publishes alerts and "
                                   "status. Stops cleanly on SIGTERM or Ctrl-C (checkpoint, "
                                   "offline status). Exit 0 on a clean stop, 2 on a "
                                   "configuration error.")
    p.add_argument("--config", required=True, metavar="FILE", help="agent TOML configuration")
    p.add_argument("--exit-after-replay", action="store_true",
                   help="with a [replay] table: stop once the recordings are processed")
    p.add_argument("--worker", type=_worker, metavar="I/N",
                   help="run as worker I of N (started by the agent itself when "
                        "[resources] workers = N)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("config", help="check a configuration file")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate a TOML configuration and summarise it",
                                  description="Parse and validate FILE; print what the agent "
                                              "would run, or the problem with the key and fix.")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_cmd_config_check)

    from edge_agent.mqtt.feedback_command import add_feedback_parser
    from edge_agent.mqtt.operator import add_alerts_parser
    from edge_agent.report.command import add_report_parser, report_command

    add_alerts_parser(sub).set_defaults(func=_cmd_alerts)
    add_report_parser(sub).set_defaults(func=report_command)
    from edge_agent.fleet.command import add_aggregate_parser, add_fleet_parser

    add_fleet_parser(sub, input_options=_add_input_options, ranged=_ranged,
                     extra=(add_aggregate_parser,))
    add_feedback_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-agent features … | head`
        sys.stderr.close()
        return 0
    except UsageError as exc:
        parser.exit(2, f"edge-agent {args.command}: error: {exc}\n")


def _cmd_features(args) -> int:
    from edge_agent.runtime.inputs import InputOptions, feature_records
    from edge_agent.frame import iso_time
    from edge_agent.jsonl import dumps

    options = InputOptions.from_args(args)
    out = sys.stdout
    for index, rec in feature_records(options):
        row = {"machine": rec.machine, "channel": rec.channel, "index": index,
               "ts": iso_time(rec.start_s), "source": rec.source, "features": rec.features}
        if rec.rejected:  # no features: the window cannot be analysed, and this is why
            row.update(rejected=rec.rejected, detail=rec.detail)
        out.write(dumps(row) + "\n")
    return 0


def _cmd_replay(args) -> int:
    from edge_agent.runtime.replay import replay_command

    prior = None
    if args.prior or args.trust_key:
        if not (args.prior and args.trust_key):
            raise UsageError("--prior and --trust-key go together: a prior is used only when "
                             "its signature is verified")
        from edge_agent.fleet.command import load_verified_prior

        prior = load_verified_prior(args.prior, args.trust_key, class_name=args.class_name)
    return replay_command(args, prior=prior)


def _cmd_demo(args) -> int:
    from edge_agent.demo import demo_command

    return demo_command(args)


def _cmd_run(args) -> int:
    from edge_agent.service import run_command

    return run_command(args)


def _cmd_config_check(args) -> int:
    from edge_agent.models.collection import baseline_rule
    from edge_agent.runtime.config import load_config, unreadable_files

    config = load_config(args.file)
    print(f"{args.file}: OK")
    for problem in unreadable_files(config):  # may be readable where the agent runs
        print(f"  warning: not readable here: {problem}; 'edge-agent run' refuses to start "
              f"where it cannot read it")
    from edge_agent.errors import free_bytes
    from edge_agent.runtime.state import state_dir_problem

    problem = state_dir_problem(config.state_dir, create=False)
    free = free_bytes(config.state_dir)
    space = "free space unknown" if free is None else f"{free / 2**20:.0f} MiB free"
    print(f"  agent {config.id}, state in {config.state_dir}: "
          f"{'writable' if problem is None else 'NOT writable here: ' + problem}, {space}")
    from edge_agent.runtime.state import checkpoint_key_path

    key = checkpoint_key_path(config)
    print(f"  checkpoint key {key}: " + ("present" if key.exists() else
                                         "missing: created at first start if its directory "
                                         "is writable there, else 'run' stops (exit 2)"))
    m = config.mqtt
    print(f"  broker {m.host}:{m.broker_port} MQTT {m.protocol}"
          f"{' TLS' if m.use_tls else ''}{' as ' + m.username if m.username else ''}")
    t = config.topics
    print(f"  topics under {t.prefix}/{t.site}/<area>/<machine>/...")
    for machine in config.machines:
        channels = ", ".join(c.name for c in machine.channels) or "any channel"
        print(f"  machine {machine.id}: {channels}; bearing {machine.bearing or 'unknown'}; "
              f"ISO group {machine.iso_group} {machine.iso_foundation}; baseline "
              f"{baseline_rule(machine.learning)}")
    if config.replay:
        print(f"  replay {len(config.replay.paths)} recording(s) at speed {config.replay.speed:g}")
    return 0


def _cmd_alerts(args) -> int:
    from edge_agent.mqtt.operator import alerts_command

    return alerts_command(args)
