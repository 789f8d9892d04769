"""``edge-agent fleet ...``: the fleet's keys and priors, offline.

``fleet keygen DIR`` writes the fleet's key pair; ``fleet prior RECORDING... --class
NAME --out PRIOR.json`` aggregates healthy siblings' recordings (one member each) into
a prior, signed with ``--key``; ``fleet aggregate --config fleet.toml`` runs the
aggregator (:mod:`edge_agent.fleet.aggregator`). Each action is one ``add_*_parser(actions)`` function:
:func:`add_fleet_parser` takes further ones (``fleet aggregate``) in ``extra``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from edge_agent.errors import UsageError


def add_fleet_parser(sub, *, input_options, ranged, extra=()):
    """Register ``fleet`` and its actions on the CLI's sub-parsers; ``input_options`` adds
    the recording options and ``ranged(table, key, cast)`` makes an argparse type checked
    against a configuration key's range (both the CLI's); ``extra``: more
    ``add_*_parser(actions)`` functions."""
    p = sub.add_parser("fleet", help="fleet learning: keys, priors from healthy siblings",
                       description="Machines of one class learn from each other's baselines, "
                                   "never their data (see docs/fleet.md).")
    actions = p.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    add_keygen_parser(actions)
    add_prior_parser(actions, input_options, ranged)
    for add in extra:
        add(actions)
    return p


def add_keygen_parser(actions):
    p = actions.add_parser("keygen", help="write the fleet's Ed25519 key pair",
                           description="Write DIR/fleet.key (private, mode 0600: keep it on the "
                                       "aggregator) and DIR/fleet.pub (every agent's [fleet] "
                                       "trust_key). Refuses to replace an existing key.")
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(func=keygen_command)
    return p


def add_prior_parser(actions, input_options, ranged):
    p = actions.add_parser("prior", help="a fleet prior from recordings of healthy siblings",
                           description="Each recording is one member machine of the class; its "
                                       "first --baseline-windows running windows are its healthy "
                                       "baseline. The members' summaries are aggregated robustly "
                                       "(median) and the prior written as JSON, signed with --key.")
    input_options(p)
    p.add_argument("--class", dest="class_name", required=True, metavar="NAME",
                   help="the machine class the prior is for")
    p.add_argument("--baseline-windows", type=ranged("DetectorConfig", "baseline_windows", int),
                   metavar="N",
                   help="healthy windows per member and channel (default 120)")
    p.add_argument("--key", metavar="FILE", help="fleet private key to sign with (fleet.key); "
                                                 "without it the prior is unsigned and agents "
                                                 "refuse it")
    p.add_argument("--version", type=int, default=1, metavar="V",
                   help="prior version (agents take only a newer one than they hold)")
    p.add_argument("--method", choices=("median", "trimmed_mean"), default="median")
    p.add_argument("--out", required=True, metavar="PRIOR.json")
    p.set_defaults(func=prior_command)
    return p


def keygen_command(args) -> int:
    from edge_agent.fleet.keys import keygen

    private, public = keygen(args.directory)
    print(f"wrote {private} (private, 0600: keep it on the aggregator) and {public} "
          f"(give it to every agent as [fleet] trust_key)")
    return 0


def build_prior(args):
    """The prior of ``args.recordings`` (one member each) as ``(FleetPrior, members)``."""
    from edge_agent.fleet.aggregate import AggregationError, aggregate
    from edge_agent.fleet.offline import member_from_records
    from edge_agent.models.detector import DetectorConfig
    from edge_agent.runtime.inputs import InputOptions, feature_records
    config = DetectorConfig()
    if args.baseline_windows is not None:
        config = replace(config, baseline_windows=args.baseline_windows, baseline_running_s=0.0,
                         min_baseline_windows=min(config.min_baseline_windows,
                                                  args.baseline_windows))
    options = InputOptions.from_args(args)
    members = []
    for path in options.recordings:
        one = replace(options, recordings=(path,))
        members.append(member_from_records(feature_records(one), class_name=args.class_name,
                                           config=config, source=str(path)))
    names = [m.machine for m in members]
    if len(set(names)) != len(names):  # several files of one rig: number them
        members = [replace(m, machine=f"{m.machine}#{i + 1}") for i, m in enumerate(members)]
    try:
        prior = aggregate(members, class_name=args.class_name, version=args.version,
                          created_s=time.time(), method=args.method)
    except AggregationError as exc:
        raise UsageError(str(exc)) from None
    return prior, members


def prior_command(args) -> int:
    from edge_agent.fleet.document import prior_to_doc, sign_prior
    from edge_agent.fleet.keys import load_private_key

    key = load_private_key(args.key) if args.key else None  # a bad key fails before the work
    prior, members = build_prior(args)
    doc = sign_prior(prior, key) if key is not None else prior_to_doc(prior)
    out = Path(args.out)
    try:
        out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write it ({exc.strerror})") from None
    robust = "" if prior.provenance["robust"] else (
        "; with fewer than 3 members one faulty member can move it: add members")
    print(f"wrote {out}: class {prior.class_name!r} version {prior.version}, {prior.members} "
          f"members ({', '.join(m.machine for m in members)}), {prior.windows} windows, "
          f"{len(prior.feature_names)} features, "
          f"{'signed' if key else 'UNSIGNED (agents refuse it: give --key)'}{robust}")
    return 0


def load_verified_prior(path, trust_key, *, class_name=None):
    """The prior in file ``path`` verified against public key file ``trust_key``
    (class: ``class_name``, else the prior's own). A refusal is a UsageError (exit 2)."""
    from edge_agent.fleet.document import PriorRefused, verify_prior
    from edge_agent.fleet.keys import load_public_key

    public = load_public_key(trust_key)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--prior {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"--prior {path}: not JSON ({exc})") from None
    claimed = doc.get("class") if isinstance(doc, dict) else None
    try:
        return verify_prior(doc, public, class_name=class_name or claimed or "")
    except PriorRefused as exc:
        raise UsageError(f"--prior {path} refused ({exc.reason}): {exc.detail}") from None


def add_aggregate_parser(fleet_sub):
    """``edge-agent fleet aggregate`` under the ``fleet`` command's sub-parsers."""
    p = fleet_sub.add_parser(
        "aggregate", help="collect members' updates, publish signed priors (a service)",
        description="Collects the member updates of the site on the broker, aggregates each "
                    "class robustly, signs the prior with the fleet key and rolls it out in "
                    "stages (canaries first). MQTT is its only peer. Stops on SIGTERM or "
                    "Ctrl-C. Exit 2 on a configuration error.")
    p.add_argument("--config", required=True, metavar="FILE", help="fleet.toml (docs/fleet.md)")
    p.set_defaults(func=aggregate_command)
    return p


def aggregate_command(args) -> int:
    """``edge-agent fleet aggregate --config fleet.toml``: run until SIGTERM or SIGINT."""
    import signal
    import threading

    from edge_agent.fleet.aggregator import Aggregator, log
    from edge_agent.fleet.aggregator_config import load_fleet_config
    from edge_agent.logs import setup_logging

    config = load_fleet_config(args.config)
    setup_logging("info")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    aggregator = Aggregator(config)
    log.info("fleet aggregator starting", extra={
        "event": "start", "aggregator": config.aggregator.id,
        "broker": f"{config.mqtt.host}:{config.mqtt.broker_port}",
        "share_group": config.aggregator.share_group, "leader": aggregator.leader})
    aggregator.run(stop)
    log.info("fleet aggregator stopped", extra={"event": "stop"})
    return 0

