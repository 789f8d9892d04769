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

Reading: the manifest names each file with its SHA-256. A file that is missing,
damaged, of another format version or that fails to load is moved to
``quarantine/`` with a log line saying why, and that machine learns a new
baseline; the others restore normally.

Trust boundary: machine state is stored with :mod:`pickle`, which can run code
when loaded. Only files under the state directory the operator configured are
ever loaded, and only after their SHA-256 matches the manifest written by this
agent. The state directory must be writable by the agent alone (the container
image and the systemd unit make it so); anyone who can write there can make
the agent run code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import time
from pathlib import Path

from edge_agent import __version__

log = logging.getLogger(__name__)

FORMAT = 2  # 2: evidence, episodes and baseline coverage in the learned state
MAGIC = b"edge-agent-checkpoint"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it is either wholly old or wholly new."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _safe(machine: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "_", machine)


class StateStore:
    """Checkpoints under ``state_dir`` (see the module docstring)."""

    def __init__(self, state_dir):
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "checkpoints"
        self.quarantine_dir = self.state_dir / "quarantine"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.generation = 0
        self.quarantined: list[str] = []

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
            entries[machine] = {"file": name, "sha256": hashlib.sha256(header + body).hexdigest(),
                                "bytes": len(header) + len(body)}
        manifest = {"format": FORMAT, "version": __version__, "generation": generation,
                    "written_s": time.time(), "agent": agent_state, "machines": entries}
        write_atomic(self.manifest_path, json.dumps(manifest, indent=1).encode())
        _fsync_dir(self.dir)
        self.generation = generation
        keep = {e["file"] for e in entries.values()}
        for old in self.dir.glob("*.ckpt"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return generation

    def _move_aside(self, path: Path, why: str, machine: str | None = None) -> None:
        self.quarantine_dir.mkdir(exist_ok=True)
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
            generation, entries = int(manifest["generation"]), dict(manifest["machines"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._move_aside(self.manifest_path, f"unreadable manifest ({exc})")
            return {}, {}
        self.generation = generation
        machines = {}
        for machine, entry in entries.items():
            path = self.dir / str(entry.get("file", ""))
            try:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                    raise ValueError("checksum does not match the manifest (damaged file)")
                header, _, body = data.partition(b"\n")
                parts = header.split(b" ")
                if parts[0] != MAGIC or len(parts) != 3 or parts[1] != str(FORMAT).encode():
                    raise ValueError(f"not a format-{FORMAT} checkpoint ({header[:60]!r})")
                machines[machine] = pickle.loads(body)  # noqa: S301 -- see module docstring
            except Exception as exc:  # any failure costs this machine its state, not the agent
                self._move_aside(path, f"{type(exc).__name__}: {exc}", machine)
        return machines, dict(manifest.get("agent", {}))
