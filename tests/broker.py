"""A real Mosquitto for tests: password file, ACL, plain and TLS listeners on free loopback ports.

Everything lives in a directory the test owns: configuration, password file
(made with ``mosquitto_passwd -b``), ACL, a CA and a server certificate
generated here (``cryptography``), persistence and the broker's log. The
broker runs as the current user: started as root, Mosquitto would switch to
the ``mosquitto`` user and could not read the test's files, so the generated
configuration says ``user root`` then (a deployment keeps its key and password
files readable by the ``mosquitto`` user instead; see ``deploy/``).

``stop()`` and ``start()`` restart it on the same ports with the same
persistence, for outage tests; ``pause()`` freezes it with connections open.
``log()`` returns what it wrote.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

PREFIX = "plant"
SITE = "site1"
USERS = {"agent": "agent-pw-7f3a9c", "operator": "operator-pw-51be02", "sensor": "sensor-pw-c0ffee"}
ACL = f"""\
# the agent publishes under its site and its status topic, reads ingestion and commands
user agent
topic write {PREFIX}/{SITE}/#
topic write {PREFIX}/agents/+/status
topic read {PREFIX}/{SITE}/+/+/+/raw
topic read {PREFIX}/{SITE}/+/+/+/features
topic read {PREFIX}/{SITE}/+/+/cmd/rebaseline
topic read {PREFIX}/{SITE}/+/+/cmd/fleet-confirm
topic read {PREFIX}/{SITE}/+/+/cmd/feedback

# operators read everything and may only order a re-baseline or confirm a fleet-held baseline
user operator
topic read {PREFIX}/#
topic write {PREFIX}/+/+/+/cmd/rebaseline
topic write {PREFIX}/+/+/+/cmd/fleet-confirm
topic write {PREFIX}/+/+/+/cmd/feedback

# sensors publish frames and features only
user sensor
topic write {PREFIX}/+/+/+/+/raw
topic write {PREFIX}/+/+/+/+/features
"""


def find_program(name: str) -> str | None:
    """``name`` in PATH or in the sbin/bin directories Debian puts Mosquitto in."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("edge-agent test CA"))
          .issuer_name(name("edge-agent test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.crt"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{cn}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        save_key(key, directory / f"{cn}.key")
        return directory / f"{cn}.crt", directory / f"{cn}.key"

    paths["server_cert"], paths["server_key"] = leaf(
        "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    paths["client_cert"], paths["client_key"] = leaf("agent", ExtendedKeyUsageOID.CLIENT_AUTH)
    return paths


class Broker:
    """A Mosquitto process configured for the tests (see module docstring).

    Attributes ``port`` (plain), ``tls_port``, ``certs`` (paths) and ``users``.
    """

    def __init__(self, directory: Path, users: dict[str, str] = USERS, acl: str = ACL):
        self.mosquitto = find_program("mosquitto")
        passwd_tool = find_program("mosquitto_passwd")
        if self.mosquitto is None or passwd_tool is None:
            pytest.skip("Mosquitto is not installed (apt-get install mosquitto mosquitto-clients): "
                        "the MQTT tests need a real broker")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users)
        self.host = "127.0.0.1"
        self.port, self.tls_port = free_port(), free_port()
        while self.tls_port == self.port:
            self.tls_port = free_port()
        self.certs = make_certificates(self.dir)
        passwd = self.dir / "passwd"
        passwd.write_text("")
        for user, password in self.users.items():
            subprocess.run([passwd_tool, "-b", str(passwd), user, password], check=True,
                           capture_output=True)
        (self.dir / "acl").write_text(acl)
        (self.dir / "data").mkdir(exist_ok=True)
        self.log_path = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join([
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {self.dir / 'acl'}",
            "persistence true",
            f"persistence_location {self.dir / 'data'}/",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} {self.host}",
            f"listener {self.tls_port} {self.host}",
            f"cafile {self.certs['ca']}",
            f"certfile {self.certs['server_cert']}",
            f"keyfile {self.certs['server_key']}",
            "",
        ]))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> Broker:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.mosquitto, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
            if all(listening(self.host, p) for p in self.ports):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not open its ports in {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence file) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # in case it was paused
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is acknowledged (messages stay in flight)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    @property
    def ports(self) -> tuple[int, ...]:
        return self.port, self.tls_port

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
#: The shipped ACL's site names (deploy/mosquitto/acl) and what the tests use instead.
SHIPPED_NAMES = {"acme": PREFIX, "hamburg": SITE}
SHIPPED_USERS = {"edge-agent": "agent-pw-7f3a9c", "operator": "operator-pw-51be02",
                 "sensor": "sensor-pw-c0ffee", "healthcheck": "health-pw-0d0d0d"}


class ShippedBroker(Broker):
    """Mosquitto with deploy/mosquitto/mosquitto.conf and deploy/mosquitto/acl as shipped,
    adapted to loopback: listeners on free ports, the test's files for paths, the site's
    names (``acme``, ``hamburg``, ``gw-hamburg-1``) replaced by the tests' ones.

    ``tls_port`` is the plant listener (8883), ``agent_port`` the agents' listener (8884),
    ``port`` the plain loopback one (1883); every directive else is the shipped one.
    """

    def __init__(self, directory: Path, agent_id: str = "gw-1", *, extra_users=None,
                 extra_acl: str = ""):
        acl = (DEPLOY / "acl").read_text()
        for shipped, ours in {"gw-hamburg-1": agent_id, **SHIPPED_NAMES}.items():
            acl = acl.replace(shipped, ours)
        super().__init__(directory, users={**SHIPPED_USERS, **(extra_users or {})},
                         acl=acl + extra_acl)
        conf = (DEPLOY / "mosquitto.conf").read_text()
        # a configuration without an agents' listener (older ones): agents use the plant's
        self.agent_port = free_port() if "listener 8884" in conf.splitlines() else self.tls_port
        while "listener 8884" in conf.splitlines() and self.agent_port in (self.port, self.tls_port):
            self.agent_port = free_port()
        listeners = {"listener 8883": f"listener {self.tls_port} {self.host}",
                     "listener 8884": f"listener {self.agent_port} {self.host}",
                     "listener 1883 127.0.0.1": f"listener {self.port} {self.host}"}
        paths = {"password_file": self.dir / "passwd", "acl_file": self.dir / "acl",
                 "persistence_location": f"{self.dir / 'data'}/",
                 "certfile": self.certs["server_cert"], "keyfile": self.certs["server_key"],
                 "cafile": self.certs["ca"]}
        lines = []
        for line in conf.splitlines():
            key = line.split(" ", 1)[0]
            if line in listeners:
                line = listeners[line]
            elif key in paths:
                line = f"{key} {paths[key]}"
            elif key == "log_dest":
                line = "log_dest stderr"
            lines.append(line)
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        self.shipped_conf = "\n".join(lines) + "\n"
        self.conf.write_text(self.shipped_conf)
        self.max_packet_size = int(next(line.split()[1] for line in lines
                                        if line.startswith("max_packet_size ")))

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.port, self.tls_port, self.agent_port)))
