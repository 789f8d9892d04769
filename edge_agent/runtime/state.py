"""Checkpoints of learned state: atomic, verified, and never read from elsewhere.

Layout under the configured state directory::

    checkpoints/MANIFEST.json          generation, agent state, one entry per machine
    checkpoints/<machine>.<gen>.ckpt   header line + pickled machine state
    quarantine/                        corrupt or incompatible files, moved aside

Writing a generation: every machine file is written to a temporary name,
fsynced and renamed; then the manifest the same way; then the directory is
fsynced and older generations are removed. A crash at any point leaves the
previous manifest and its files intact, so what is restored is always one
consistent moment (the replay position and every machine's learning agree).

Reading: the manifest and every file it names are authenticated with
HMAC-SHA256 under the agent's checkpoint key, which is kept *outside* the state
directory (:func:`checkpoint_key_path`). The manifest is checked first, then
each file *before* it is unpickled, so a file written by anyone but the agent
(who lacks the key) is refused before any of it runs. A manifest entry must
name a plain file inside ``checkpoints/``; anything else (an absolute path,
``..``) is refused without touching the file it points to. A file that is
missing, damaged, unauthenticated, of another format version or that fails to
load is moved to ``quarantine/`` with a log line saying why, and that machine
learns a new baseline; the others restore normally. A restore never stops the
agent: at worst every machine learns again.

Files are written mode 0600 and directories 0700, whatever the umask. A write
that fails (disk full, file size limit, read-only) raises
:class:`~edge_agent.errors.StorageError` and leaves the previous generation.

The alert state machine is also kept as JSON (never pickle) in the outbox, in
the same transaction as each alert (:func:`encode_state`, :func:`apply_state`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import re
import secrets
import sys
import time
from collections import deque
from dataclasses import is_dataclass
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import StorageError, UsageError

log = logging.getLogger(__name__)

#: 3: evidence, episodes and baseline coverage in the learned state; 2: HMAC-SHA256 under a
#: key outside the state directory; 1: SHA-256 only. Another format is quarantined, and that
#: machine learns its baseline again.
FORMAT = 3
#: Of the alert state kept in the outbox with each alert; another one is not resumed.
STATE_FORMAT = 1
MAGIC = b"edge-agent-checkpoint"
KEY_NAME = "checkpoint-key"  # the systemd credential's name ($CREDENTIALS_DIRECTORY/…)
ENTRY_RE = re.compile(r"[a-z0-9_.-]+\.[0-9]+\.ckpt\Z")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) so that it is either wholly old or wholly new."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(path, exc.strerror or str(exc)) from None


def private_dir(path: Path) -> Path:
    """``path`` created if missing, mode 0700 whatever the umask."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise StorageError(path, exc.strerror or str(exc)) from None
    return path


def checkpoint_key_path(config, environ=os.environ) -> Path:
    """Where the checkpoint key is: ``[agent] checkpoint_key_file`` (or
    ``EDGE_AGENT_CHECKPOINT_KEY_FILE``), else the systemd credential
    ``$CREDENTIALS_DIRECTORY/checkpoint-key``, else ``<state_dir>.checkpoint-key``
    beside the state directory (of all workers)."""
    if config.checkpoint_key_file is not None:
        return Path(config.checkpoint_key_file)
    if environ.get("CREDENTIALS_DIRECTORY"):
        return Path(environ["CREDENTIALS_DIRECTORY"]) / KEY_NAME
    root = Path(config.state_dir).parent if config.shard is not None else Path(config.state_dir)
    return root.with_name(f"{root.name}.{KEY_NAME}")


def load_key(path: Path, state_dir: Path) -> bytes:
    """The key in ``path``, created (32 random bytes, hex, mode 0600) if missing.

    A key inside the state directory would be no key at all (whoever can write a
    checkpoint could read it): that is a :class:`~edge_agent.errors.UsageError`.
    """
    path, root = Path(path).absolute(), Path(state_dir).absolute().resolve()
    if path.resolve() == root or root in path.resolve().parents:
        raise UsageError(f"checkpoint key {path} is inside the state directory {root}: keep it "
                         f"elsewhere ([agent] checkpoint_key_file or EDGE_AGENT_CHECKPOINT_KEY_FILE)")
    if not path.exists():
        # written whole under a temporary name, then linked into place: workers starting
        # together agree on one key, and none reads a half-written one
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
            log.warning("checkpoint key created", extra={"event": "checkpoint_key_created",
                                                         "path": str(path)})
        except FileExistsError:
            pass
        except OSError as exc:
            raise UsageError(f"checkpoint key {path} is missing and cannot be created "
                             f"({exc.strerror}): create it (deploy/make-site-secrets.sh) or set "
                             f"[agent] checkpoint_key_file") from None
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise UsageError(f"checkpoint key {path}: cannot read it ({exc.strerror})") from None
    if len(key) < 16:
        raise UsageError(f"checkpoint key {path}: at least 16 bytes of secret, got {len(key)}")
    return key


def _safe(machine: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "_", machine)


class StateStore:
    """Checkpoints under ``state_dir``, authenticated with ``key`` (see the module docstring)."""

    def __init__(self, state_dir, key: bytes):
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "checkpoints"
        self.quarantine_dir = self.state_dir / "quarantine"
        for d in (self.state_dir, self.dir):
            private_dir(d)
        self._key = bytes(key)
        self.generation = 0
        self.quarantined: list[str] = []

    def _mac(self, label: str, data: bytes) -> str:
        return hmac.new(self._key, label.encode() + b"\n" + data, hashlib.sha256).hexdigest()

    def _manifest_mac(self, manifest: dict) -> str:
        body = {k: v for k, v in manifest.items() if k != "hmac"}
        return self._mac("manifest", json.dumps(body, sort_keys=True, separators=(",", ":")).encode())

    @property
    def manifest_path(self) -> Path:
        return self.dir / "MANIFEST.json"

    def save(self, machines: dict[str, object], agent_state: dict) -> int:
        """Write one generation: every machine's state and the agent's; returns its number."""
        generation = self.generation + 1
        entries = {}
        for machine, state in machines.items():
            body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
            header = MAGIC + f" {FORMAT} {__version__}\n".encode()
            name = f"{_safe(machine)}.{generation}.ckpt"
            write_atomic(self.dir / name, header + body)
            entries[machine] = {"file": name, "hmac": self._mac(f"file:{name}", header + body),
                                "bytes": len(header) + len(body)}
        manifest = {"format": FORMAT, "version": __version__, "generation": generation,
                    "written_s": time.time(), "agent": agent_state, "machines": entries}
        manifest["hmac"] = self._manifest_mac(json.loads(json.dumps(manifest)))
        write_atomic(self.manifest_path, json.dumps(manifest, indent=1).encode())
        _fsync_dir(self.dir)
        self.generation = generation
        keep = {e["file"] for e in entries.values()}
        for old in self.dir.glob("*.ckpt"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return generation

    def _move_aside(self, path: Path, why: str, machine: str | None = None) -> None:
        private_dir(self.quarantine_dir)
        target = self.quarantine_dir / f"{int(time.time())}-{path.name}"
        if path.exists():
            os.replace(path, target)
        self.quarantined.append(f"{path.name}: {why}")
        log.error("checkpoint moved aside; %s", "the machine learns a new baseline" if machine
                  else "every machine learns a new baseline",
                  extra={"event": "checkpoint_quarantined", "file": str(path), "reason": why,
                         "machine": machine, "moved_to": str(target)})

    def load(self) -> tuple[dict[str, object], dict]:
        """The last consistent generation: ``({machine: state}, agent_state)``; empty when none."""
        if not self.manifest_path.exists():
            return {}, {}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT:
                raise ValueError(f"format {manifest.get('format')!r}, this agent reads {FORMAT}")
            if not hmac.compare_digest(str(manifest.get("hmac", "")),
                                       self._manifest_mac(manifest)):
                raise ValueError("authentication failed: not written by this agent, or under "
                                 "another checkpoint key")
            generation, entries = int(manifest["generation"]), dict(manifest["machines"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._move_aside(self.manifest_path, f"unreadable manifest ({exc})")
            return {}, {}
        self.generation = generation
        machines = {}
        for machine, entry in entries.items():
            name = str(entry.get("file", "")) if isinstance(entry, dict) else ""
            path = self.dir / name
            if not ENTRY_RE.match(name) or path.resolve().parent != self.dir.resolve():
                self.quarantined.append(f"{name[:80]!r}: not a file of checkpoints/")
                log.error("checkpoint entry refused: it must name a file in checkpoints/; the "
                          "machine learns a new baseline", extra={
                              "event": "checkpoint_refused", "machine": machine, "file": name[:200]})
                continue
            try:
                data = path.read_bytes()
                if not hmac.compare_digest(str(entry.get("hmac", "")),
                                           self._mac(f"file:{name}", data)):
                    raise ValueError("authentication failed (damaged, or not written by this "
                                     "agent); not loaded")
                header, _, body = data.partition(b"\n")
                parts = header.split(b" ")
                if parts[0] != MAGIC or len(parts) != 3 or parts[1] != str(FORMAT).encode():
                    raise ValueError(f"not a format-{FORMAT} checkpoint ({header[:60]!r})")
                machines[machine] = pickle.loads(body)  # noqa: S301 -- see module docstring
            except Exception as exc:  # any failure costs this machine its state, not the agent
                self._move_aside(path, f"{type(exc).__name__}: {exc}", machine)
        return machines, dict(manifest.get("agent", {}))


# -- the alert state machine as JSON ----------------------------------------------------------------
def encode_state(obj) -> str:
    """``obj`` (an alerter: plain attributes, deques, tuples, dicts and objects of its own
    module) as JSON; frozen dataclass attributes (its policy, from the configuration) are
    left out.

    >>> from edge_agent.runtime.alerts import AlertPolicy, MachineAlerter
    >>> a = MachineAlerter("pump-7", AlertPolicy())
    >>> a.announced = "alarm"
    >>> b = apply_state(MachineAlerter("pump-7", AlertPolicy()), encode_state(a))
    >>> b.announced, b.policy == a.policy
    ('alarm', True)
    """
    return json.dumps({"format": STATE_FORMAT, **_encode(obj, type(obj).__module__)},
                      separators=(",", ":"))


def _encode(value, module: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, deque):
        return {"deque": [_encode(v, module) for v in value], "maxlen": value.maxlen}
    if isinstance(value, (tuple, list)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, module) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, module), _encode(v, module)] for k, v in value.items()]}
    if type(value).__module__ == module and hasattr(value, "__dict__") and not _config(value):
        return {"object": type(value).__name__,
                "attrs": {k: _encode(v, module) for k, v in vars(value).items()
                          if not _config(v)}}
    raise TypeError(f"cannot keep {type(value).__name__} in the alert state")


def _config(value) -> bool:
    """A frozen dataclass instance: configuration (a policy), taken from the live object."""
    return is_dataclass(value) and not isinstance(value, type) and \
        type(value).__dataclass_params__.frozen


def apply_state(target, text: str):
    """Set ``target``'s attributes from :func:`encode_state` JSON; returns ``target``.

    Objects are rebuilt only as classes of ``target``'s own module; the attributes
    left out (its policy) are taken from ``target``.
    """
    doc = json.loads(text)
    if doc.get("format") != STATE_FORMAT:
        raise ValueError(f"alert state format {doc.get('format')!r}, this agent reads "
                         f"{STATE_FORMAT}")
    keep = {k: v for k, v in vars(target).items() if _config(v)}
    module = sys.modules[type(target).__module__]
    for name, value in doc["attrs"].items():
        setattr(target, name, _decode(value, module, keep))
    return target


def _decode(value, module, keep):
    if not isinstance(value, dict):
        return value
    if "deque" in value:
        return deque((_decode(v, module, keep) for v in value["deque"]), maxlen=value["maxlen"])
    if "tuple" in value:
        return tuple(_decode(v, module, keep) for v in value["tuple"])
    if "list" in value:
        return [_decode(v, module, keep) for v in value["list"]]
    if "dict" in value:
        return {_decode(k, module, keep): _decode(v, module, keep) for k, v in value["dict"]}
    cls = getattr(module, value["object"])
    if not isinstance(cls, type) or cls.__module__ != module.__name__:
        raise ValueError(f"{value['object']!r} is not a class of {module.__name__}")
    obj = _fresh(cls, keep)
    obj.__dict__.update({k: _decode(v, module, keep) for k, v in value["attrs"].items()})
    return obj


def _fresh(cls, keep: dict):
    """A new ``cls`` built by its own ``__init__`` from the configuration in ``keep``, so an
    attribute a later release added has its default; the saved attributes go on top."""
    import inspect

    try:
        params = inspect.signature(cls).parameters
        return cls(**{name: keep[name] for name in params if name in keep})
    except (TypeError, ValueError):  # needs more than the configuration: attributes only
        obj = cls.__new__(cls)
        obj.__dict__.update(keep)
        return obj


# -- is the state directory usable? -----------------------------------------------------------------
PROBE_BYTES = 64 * 1024  # a few outbox transactions' worth


def state_dir_problem(state_dir, *, create: bool = True) -> str | None:
    """Why ``state_dir`` cannot hold the agent's state (None when it can).

    Writes and removes a probe of :data:`PROBE_BYTES` (fsynced), so a full or
    read-only file system is found at start, not at the first alert. Without
    ``create`` a missing directory is only checked for a writable parent.
    """
    path = Path(state_dir)
    if not path.exists() and not create:
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK | os.X_OK):
            return f"does not exist, and {parent} is not writable to create it"
        return None
    probe = path / ".write-probe"
    try:
        private_dir(path)
        write_atomic(probe, b"\0" * PROBE_BYTES)
    except StorageError as exc:
        return exc.detail
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return None
